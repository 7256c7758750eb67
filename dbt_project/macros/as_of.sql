{#
  The pass's business time. Every model that compares with "now" uses this, never current_timestamp, so
  runs, unit tests and backtests are reproducible. Dagster passes --vars '{as_of: "YYYY-MM-DD HH:MM:SS"}'
  (naive UTC). A value with an offset ('...+02:00' or 'Z') is converted to naive UTC (a plain cast would drop the
  offset silently). When the var is unset (hand runs) the current UTC time is used.
#}
{% macro as_of() -%}
    {%- set value = var('as_of', none) -%}
    {%- set text = (value | string | trim) if value is not none else '' -%}
    {%- if text == '' or text | lower == 'none' -%}
        cast(timezone('UTC', current_timestamp) as timestamp)
    {%- elif modules.re.search('(Z|[+-][0-9]{2}(:?[0-9]{2})?)$', text) and modules.re.search('[T ][0-9]', text) -%}
        cast(timezone('UTC', cast('{{ text | replace("'", "''") }}' as timestamptz)) as timestamp)
    {%- else -%}
        cast('{{ text | replace("'", "''") }}' as timestamp)
    {%- endif -%}
{%- endmacro %}
