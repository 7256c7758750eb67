-- Backtest only (actionlayer/backtest.py): what happened after each would-be action of a replayed rule.
-- Ephemeral: never built by a pass of the loop and no Dagster asset; the backtest compiles it into its scratch
-- schema and runs the compiled SELECT itself, over the windows it wrote to <scratch schema>.backtest_windows
-- (one per distinct would-be action: the window opens at the pass that first fired it).
-- The evidence is the same as for real actions (macro outcome_evidence, as fct_outcomes): every SoR version loaded
-- up to as_of() (the backtest sets it to the latest load it knows) plus that moment's SoR.
-- outcome_status: achieved, not_achieved (the window closed without it), open (not closed yet: never a failure),
-- not_applicable (the rule declares no outcome).
{{ config(materialized='ephemeral') }}
{%- set windows_table = adapter.get_relation(database=target.database, schema=target.schema,
                                             identifier='backtest_windows') if execute else none %}

with windows as (
    {%- if windows_table is not none %}
    select window_id, outcome_kind, record_type, record_id, contact_id, window_starts_at, window_ends_at
    from {{ windows_table }}
    {%- else %}
    select
        cast(null as varchar) as window_id, cast(null as varchar) as outcome_kind, cast(null as varchar) as record_type,
        cast(null as varchar) as record_id, cast(null as varchar) as contact_id,
        cast(null as timestamp) as window_starts_at, cast(null as timestamp) as window_ends_at
    where false
    {%- endif %}
),

evidence as (
    {{ outcome_evidence('windows') }}
),

final as (
    select
        windows.window_id,
        windows.outcome_kind,
        windows.window_starts_at,
        windows.window_ends_at,
        coalesce(windows.window_ends_at <= {{ as_of() }}, false) as window_closed,
        case
            when windows.outcome_kind is null or windows.window_ends_at is null then 'not_applicable'
            when evidence.outcome_at is not null then 'achieved'
            when windows.window_ends_at <= {{ as_of() }} then 'not_achieved'
            else 'open'
        end as outcome_status,
        evidence.outcome_at,
        {{ as_of() }} as evaluated_at
    from windows
    left join evidence using (window_id)
)

select * from final
