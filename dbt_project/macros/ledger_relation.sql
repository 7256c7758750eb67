{#
  Prior ledger state for the candidates layer, WITHOUT a graph edge: the ledger holds earlier passes' output,
  and a source()/ref() edge would make a cycle (candidates -> ledger -> candidates). Marts use source('ledger', ...).
  When ops.action_ledger does not exist yet (first pass on a fresh database, or at parse time) this returns an
  empty relation with the ledger's columns, i.e. an empty ledger.
#}
{% macro ledger_relation() -%}
    {%- if execute -%}
        {%- set relation = adapter.get_relation(database=target.database, schema='ops', identifier='action_ledger') -%}
        {%- if relation is not none -%}
            {{ return(relation) }}
        {%- endif -%}
    {%- endif -%}
    {{ return(empty_ledger()) }}
{%- endmacro %}

{% macro empty_ledger() -%}
    (select
        cast(null as bigint) as seq,
        cast(null as varchar) as event_id,
        cast(null as varchar) as action_id,
        cast(null as varchar) as event_type,
        cast(null as timestamp) as occurred_at,
        cast(null as varchar) as actor,
        cast(null as varchar) as rule_id,
        cast(null as integer) as rule_version,
        cast(null as integer) as maturity_level,
        cast(null as varchar) as record_type,
        cast(null as varchar) as record_id,
        cast(null as varchar) as contact_id,
        cast(null as varchar) as account_id,
        cast(null as varchar) as owner_email,
        cast(null as timestamp) as signal_at,
        cast(null as boolean) as holdout,
        cast(null as varchar) as channel,
        cast(null as varchar) as recipient,
        cast(null as varchar) as result,
        cast(null as varchar) as details
    where false)
{%- endmacro %}
