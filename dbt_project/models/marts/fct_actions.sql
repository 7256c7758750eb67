-- One row per action in the ledger (up to as_of): who/what/when, the decision, delivery, and the outcome.
-- Outcomes come from fct_outcomes (the rule's outcome evaluated on the SoR history). The window starts at delivery
-- (acted) or at the held_out event (control group) and counts only evidence up to as_of. outcome_achieved: true
-- once the evidence is in the window, false when the window has closed without it, null while it is still open
-- (or when the action was never delivered/held out).
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
        {{ action_identity_columns() }},
        arg_min(rule_version, seq) as rule_version,
        arg_min(maturity_level, seq) as maturity_level,
        bool_or(event_type = 'pending_review') as was_reviewed,
        min(occurred_at) filter (where event_type = 'sending') as first_sent_at,
        bool_or(event_type = 'held_out') as holdout,
        arg_max(event_type, seq) as final_state,
        arg_max(result, seq) as result
    from ledger
    group by action_id
),

decisions as (
    select action_id, event_type as decision, occurred_at as decided_at,
           coalesce(approver_email, actor) as approver_email
    from ledger
    where event_type in ('approved', 'rejected', 'expired')
    qualify row_number() over (partition by action_id order by seq) = 1
),

outcomes as (
    -- evaluated once, for every candidate, in fct_outcomes (from the SoR history); here only the acted and the
    -- held-out arms carry an outcome, as before
    select * from {{ ref('fct_outcomes') }} where arm_group in ('acted', 'held_out')
),

bounded as (
    select
        per_action.*,
        decisions.decision,
        decisions.decided_at,
        decisions.approver_email,
        rule_catalog.outcome_kind,
        rule_catalog.outcome_window_days,
        outcomes.outcome_window_starts_at,
        outcomes.outcome_window_ends_at,
        outcomes.outcome_achieved,
        outcomes.outcome_at
    from per_action
    left join decisions using (action_id)
    left join rule_catalog using (rule_id)
    left join outcomes using (action_id)
),

final as (
    select
        bounded.action_id,
        bounded.rule_id,
        bounded.rule_version,
        bounded.maturity_level,
        bounded.record_type,
        bounded.record_id,
        bounded.contact_id,
        bounded.account_id,
        bounded.owner_email,
        bounded.channel,
        bounded.signal_at,
        bounded.proposed_at,
        bounded.was_reviewed,
        bounded.decided_at,
        bounded.approver_email,
        bounded.decision,
        bounded.first_sent_at,
        bounded.delivered_at,
        bounded.final_state,
        bounded.result,
        bounded.holdout,
        bounded.escalated,
        bounded.outcome_kind,
        bounded.outcome_window_days,
        bounded.outcome_window_starts_at,
        bounded.outcome_window_ends_at,
        coalesce(bounded.outcome_window_ends_at <= {{ as_of() }}, false) as outcome_window_closed,
        bounded.outcome_achieved,
        bounded.outcome_at,
        date_diff('second', bounded.signal_at, bounded.delivered_at) / 3600.0 as latency_hours,
        {{ as_of() }} as as_of
    from bounded
)

select * from final
