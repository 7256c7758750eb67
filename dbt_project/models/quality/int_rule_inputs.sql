-- One row per rule and SoR object it depends on: the objects its own model reads (via = 'rule') and the
-- objects the journey context of action_candidates reads for every rule (via = 'journey context').
-- Computed from the dbt graph, so a new rule or a new join is covered without editing this model.
{%- set rows = [] -%}
{%- if execute -%}
    {%- set candidates_id = 'model.actionlayer.int_rule_candidates' -%}
    {%- set journey = sor_inputs('model.actionlayer.action_candidates', stop_at=[candidates_id]) -%}
    {%- for node in graph.nodes.values() | sort(attribute='name') -%}
        {%- set meta = node.config.meta or {} -%}
        {%- if node.resource_type == 'model' and node.name.startswith('rule_') and meta.get('rule_id') -%}
            {%- set own = sor_inputs(node.unique_id) -%}
            {%- for object in own -%}
                {%- do rows.append((meta.get('rule_id'), object, 'rule')) -%}
            {%- endfor -%}
            {%- for object in journey if object not in own -%}
                {%- do rows.append((meta.get('rule_id'), object, 'journey context')) -%}
            {%- endfor -%}
        {%- endif -%}
    {%- endfor -%}
{%- endif %}

with inputs as (
{%- for rule_id, object, via in rows %}
    select {{ sql_literal(rule_id, 'varchar') }} as rule_id, {{ sql_literal(object, 'varchar') }} as object_name,
           {{ sql_literal(via, 'varchar') }} as via
    {% if not loop.last %}union all{% endif %}
{%- else %}
    select cast(null as varchar) as rule_id, cast(null as varchar) as object_name, cast(null as varchar) as via
    where false
{%- endfor %}
)

select * from inputs
