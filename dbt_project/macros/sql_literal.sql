{# A Python/YAML value as a typed SQL literal (none -> typed null). #}
{% macro sql_literal(value, data_type) -%}
    {%- if value is none -%}
        cast(null as {{ data_type }})
    {%- elif value is sameas true -%}
        true
    {%- elif value is sameas false -%}
        false
    {%- elif value is number -%}
        cast({{ value }} as {{ data_type }})
    {%- else -%}
        cast('{{ value | string | replace("'", "''") }}' as {{ data_type }})
    {%- endif -%}
{%- endmacro %}
