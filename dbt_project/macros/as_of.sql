{#
  The pass's business time. Every model that compares with "now" uses this, never current_timestamp, so
  runs, unit tests and backtests are reproducible.
  1. `--vars '{as_of: "YYYY-MM-DD HH:MM:SS"}'` (naive UTC; an offset such as '+02:00' or 'Z' is converted to
     naive UTC, a plain cast would drop it silently) wins: unit tests and hand runs use it.
  2. Otherwise the one-row table ops.run_context that actionlayer.transform writes before each pass. Reading
     the time from a table rather than a var keeps dbt's partial parse valid from one pass to the next (a
     changed var forces a full re-parse, about 2 s per pass).
  3. Otherwise (a hand run with neither) the current UTC time.
  The schema of that run_context table is the var `run_context_schema` (default 'ops'): a backtest
  (actionlayer/backtest.py) replays past days with its own one-row table in its scratch schema, so the live
  loop's ops.run_context is never touched.
#}
{% macro as_of() -%}
    {%- set value = var('as_of', none) -%}
    {%- set text = (value | string | trim) if value is not none else '' -%}
    {%- if text == '' or text | lower == 'none' -%}
        {%- set context_table = adapter.get_relation(database=target.database, schema=var('run_context_schema', 'ops'), identifier='run_context') if execute else none -%}
        {%- if context_table is not none -%}
            (select max(as_of) from {{ context_table }})
        {%- else -%}
            cast(timezone('UTC', current_timestamp) as timestamp)
        {%- endif -%}
    {%- elif modules.re.search('(Z|[+-][0-9]{2}(:?[0-9]{2})?)$', text) and modules.re.search('[T ][0-9]', text) -%}
        cast(timezone('UTC', cast('{{ text | replace("'", "''") }}' as timestamptz)) as timestamp)
    {%- else -%}
        cast('{{ text | replace("'", "''") }}' as timestamp)
    {%- endif -%}
{%- endmacro %}
