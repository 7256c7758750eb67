-- This pass's candidate actions with their journey context. Order of the checks (first that applies wins):
--   do_not_contact -> suppression (sales/reactivation while the account has an open urgent ticket or an overdue
--   invoice) -> cooldown (same rule and record acted on within cooldown_days) -> holdout (deterministic)
--   -> frequency cap (one customer-facing action per contact per frequency_cap_hours, already delivered ones
--   included; within this pass the highest priority wins, ties by action_id; actions an earlier pass already
--   finished do not compete).
-- Internal actions (audience owner) only go through the holdout step.
-- Prior passes are read through ledger_relation() (no graph edge: see macros/ledger_relation.sql).
{%- set cap_hours = var('frequency_cap_hours') %}

with candidates as (
    select
        *,
        priority + case when escalate then {{ var('escalation_priority_boost') }} else 0 end as effective_priority,
        audience = 'contact' as is_customer_facing
    from {{ ref('int_rule_candidates') }}
),

contacts as (
    select contact_id, first_name, last_name, email, timezone from {{ ref('stg_files__contacts') }}
),

accounts as (
    select account_id, name as account_name from {{ ref('stg_files__accounts') }}
),

journey_state as (
    select contact_id, do_not_contact, open_urgent_ticket_id, overdue_invoice_id
    from {{ ref('int_contact_journey_state') }}
),

rule_catalog as (
    select rule_id, audience from {{ ref('int_rule_catalog') }}
),

prior_events as (
    select ledger.action_id, ledger.event_type, ledger.occurred_at, ledger.rule_id, ledger.record_id,
           ledger.contact_id, ledger.channel, rule_catalog.audience
    from {{ ledger_relation() }} as ledger
    left join rule_catalog using (rule_id)
    where ledger.occurred_at <= {{ as_of() }}
),

finished_actions as (
    -- actions an earlier pass already finished (delivered, held out, decided against): they may still show up as
    -- candidates while their condition lasts, but must not take a contact's frequency-cap slot from new ones
    select distinct action_id
    from prior_events
    where event_type in ('delivered', 'held_out', 'rejected', 'expired', 'unknown')
),

cooldowns as (
    -- the same rule already acted on this record under another signal window, recently enough
    select candidates.action_id, max(prior_events.occurred_at) as last_acted_at
    from candidates
    join prior_events
        on prior_events.rule_id = candidates.rule_id
        and prior_events.record_id = candidates.record_id
        and prior_events.action_id <> candidates.action_id
        and prior_events.event_type in ('delivered', 'sending', 'approved', 'pending_review')
        and prior_events.occurred_at > {{ as_of() }} - to_days(cast(candidates.cooldown_days as integer))
    group by candidates.action_id
),

recent_deliveries as (
    -- customer-facing deliveries to the same person in the last frequency_cap_hours (by another action)
    select candidates.action_id,
           arg_max(prior_events.rule_id, prior_events.occurred_at) as delivered_rule_id,
           max(prior_events.occurred_at) as delivered_at
    from candidates
    join prior_events
        on prior_events.contact_id = candidates.contact_id
        and prior_events.action_id <> candidates.action_id
        and prior_events.event_type = 'delivered'
        and coalesce(prior_events.audience, case when prior_events.channel = 'email' then 'contact' end) = 'contact'
        and prior_events.occurred_at > {{ as_of() }} - interval ({{ cap_hours }}) hour
    where candidates.is_customer_facing
    group by candidates.action_id
),

with_context as (
    select
        candidates.*,
        {{ holdout_bucket('candidates.rule_id', 'candidates.contact_id') }} < candidates.holdout_share as holdout,
        coalesce(journey_state.do_not_contact, false) as do_not_contact,
        journey_state.open_urgent_ticket_id,
        journey_state.overdue_invoice_id,
        cooldowns.last_acted_at,
        finished_actions.action_id is not null as is_finished,
        recent_deliveries.delivered_rule_id,
        recent_deliveries.delivered_at,
        contacts.first_name as contact_first_name,
        contacts.last_name as contact_last_name,
        contacts.email as contact_email,
        contacts.timezone as contact_timezone,
        accounts.account_name
    from candidates
    left join journey_state on journey_state.contact_id = candidates.contact_id
    left join cooldowns on cooldowns.action_id = candidates.action_id
    left join finished_actions on finished_actions.action_id = candidates.action_id
    left join recent_deliveries on recent_deliveries.action_id = candidates.action_id
    left join contacts on contacts.contact_id = candidates.contact_id
    left join accounts on accounts.account_id = candidates.account_id
),

first_checks as (
    select
        *,
        case
            when is_customer_facing and do_not_contact
                then 'do_not_contact'
            when is_customer_facing and contact_email is null
                then 'suppressed: contact has no email'
            when is_customer_facing and category in ('sales', 'reactivation') and open_urgent_ticket_id is not null
                then 'suppressed: open urgent ticket ' || open_urgent_ticket_id
            when is_customer_facing and category in ('sales', 'reactivation') and overdue_invoice_id is not null
                then 'suppressed: overdue invoice ' || overdue_invoice_id
            when is_customer_facing and last_acted_at is not null
                then 'cooldown: acted on ' || strftime(last_acted_at, '%Y-%m-%d')
            when holdout
                then 'holdout'
            when is_customer_facing and delivered_at is not null
                then 'frequency_cap: lost to ' || delivered_rule_id
                    || ' (delivered ' || strftime(delivered_at, '%Y-%m-%d %H:%M') || ')'
        end as pre_cap_reason
    from with_context
),

pass_cap as (
    -- within this pass: one customer-facing action per contact, highest priority first, ties by action_id
    select
        action_id,
        row_number() over contact_window as contact_rank,
        first_value(rule_id) over contact_window as winning_rule_id
    from first_checks
    where is_customer_facing and pre_cap_reason is null and not is_finished
    window contact_window as (partition by contact_id order by effective_priority desc, action_id)
),

journey as (
    select
        first_checks.*,
        coalesce(
            first_checks.pre_cap_reason,
            case when pass_cap.contact_rank > 1 then 'frequency_cap: lost to ' || pass_cap.winning_rule_id end
        ) as journey_reason
    from first_checks
    left join pass_cap using (action_id)
),

final as (
    select
        action_id,
        rule_id,
        rule_version,
        maturity_level,
        record_type,
        record_id,
        contact_id,
        account_id,
        owner_email,
        case when audience = 'contact' then contact_email else owner_email end as recipient_email,
        channel,
        audience,
        category,
        effective_priority as priority,
        signal_at,
        reason,
        escalate,
        recommended_action,
        holdout,
        case
            when journey_reason is null then 'eligible'
            when journey_reason = 'holdout' then 'held_out'
            else 'suppressed'
        end as journey_status,
        journey_reason,
        contact_first_name,
        contact_last_name,
        contact_timezone,
        account_name,
        {{ as_of() }} as as_of
    from journey
)

select * from final
