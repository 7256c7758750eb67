-- One row per action in the ledger (up to as_of): whether the rule's outcome happened, evaluated from the SoR
-- history (macro outcome_evidence: every version loaded up to as_of, plus the current load).
-- The window opens when the action took effect or would have: at delivery for an acted action, at the
-- held_out event for the control group, and at the proposal for a candidate that was never acted on (rejected,
-- expired, suppressed, failed, still pending), so every candidate has an outcome to compare.
-- outcome_status: achieved (evidence in the window, even when it arrived late), not_achieved (the window closed
-- without it), open (the window has not closed and nothing happened yet: never counted as a failure),
-- not_applicable (the rule declares no outcome).
with ledger as (
    select * from {{ source('ledger', 'action_ledger') }}
    where occurred_at <= {{ as_of() }}
),

rule_catalog as (
    select rule_id, outcome_kind, outcome_window_days from {{ ref('int_rule_catalog') }}
),

per_action as (
    select
        action_id,
        {{ action_identity_columns() }}
    from ledger
    group by action_id
),

windows as (
    select
        per_action.*,
        case
            when per_action.held_out_at is not null then 'held_out'
            when per_action.delivered_at is not null then 'acted'
            else 'not_acted'
        end as arm_group,
        rule_catalog.outcome_kind,
        rule_catalog.outcome_window_days,
        coalesce(per_action.held_out_at, per_action.delivered_at, per_action.proposed_at, per_action.signal_at)
            as window_starts_at
    from per_action
    left join rule_catalog using (rule_id)
),

bounded as (
    select
        *,
        action_id as window_id,
        window_starts_at + to_days(cast(outcome_window_days as integer)) as window_ends_at
    from windows
),

evidence as (
    {{ outcome_evidence('bounded') }}
),

final as (
    select
        bounded.action_id,
        bounded.rule_id,
        bounded.record_type,
        bounded.record_id,
        bounded.contact_id,
        bounded.account_id,
        bounded.owner_email,
        bounded.channel,
        bounded.signal_at,
        bounded.proposed_at,
        bounded.arm_group,
        bounded.escalated,
        bounded.outcome_kind,
        bounded.outcome_window_days,
        bounded.window_starts_at as outcome_window_starts_at,
        bounded.window_ends_at as outcome_window_ends_at,
        coalesce(bounded.window_ends_at <= {{ as_of() }}, false) as outcome_window_closed,
        case
            when bounded.outcome_kind is null or bounded.window_ends_at is null then 'not_applicable'
            when evidence.outcome_at is not null then 'achieved'
            when bounded.window_ends_at <= {{ as_of() }} then 'not_achieved'
            else 'open'
        end as outcome_status,
        case
            when bounded.outcome_kind is null or bounded.window_ends_at is null then null
            when evidence.outcome_at is not null then true
            when bounded.window_ends_at <= {{ as_of() }} then false
        end as outcome_achieved,
        evidence.outcome_at,
        date_diff('second', bounded.window_starts_at, evidence.outcome_at) / 3600.0 as hours_to_outcome,
        {{ as_of() }} as as_of
    from bounded
    left join evidence using (window_id)
)

select * from final
