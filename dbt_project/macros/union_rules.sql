{#
  union_rules(['rule_a', 'rule_b']): one union all over the rule models, every one selected with the same column
  list (rule_output_columns) so a rule with a column out of order or missing fails loudly at build time.
#}
{% macro union_rules(rule_models) -%}
    {%- set columns = rule_output_columns() -%}
    {%- for name in rule_models %}
    select {{ columns | join(', ') }} from {{ ref(name) }}
    {% if not loop.last %}union all{% endif %}
    {%- endfor %}
{%- endmacro %}
