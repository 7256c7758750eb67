-- Per rule: how many candidates became what, how owners decided, and whether acting beat holding out.
-- Conversions count only actions whose outcome window has closed by as_of; uplift = acted - held out, with
-- Newcombe's 95% interval, a pooled two-proportion p-value, the minimum detectable effect at this sample size,
-- a sample-ratio-mismatch check of the holdout split and a verdict (macros/stats.sql; Python mirror in
-- actionlayer/stats.py). Escalated actions are never held out, so they are left out of both arms.
with actions as (
    select * from {{ ref('fct_actions') }}
),

rule_catalog as (
    select rule_id, holdout_share from {{ ref('int_rule_catalog') }}
),

rules as (
    select rule_id from rule_catalog
    union
    select distinct rule_id from actions
),

per_rule as (
    select
        rule_id,
        count(*) as candidates,
        count(*) filter (where delivered_at is not null) as sent,
        count(*) filter (where holdout) as held_out,
        count(*) filter (where final_state = 'suppressed') as suppressed,
        count(*) filter (where was_reviewed) as reviewed,
        count(*) filter (where was_reviewed and decision = 'approved') as approved,
        count(*) filter (where was_reviewed and decision = 'rejected') as rejected,
        count(*) filter (where was_reviewed and decision = 'expired') as expired,
        count(*) filter (where delivered_at is not null and not holdout and not escalated
                         and outcome_window_closed) as acted_closed,
        count(*) filter (where delivered_at is not null and not holdout and not escalated and outcome_window_closed
                         and outcome_achieved) as acted_converted,
        count(*) filter (where holdout and outcome_window_closed) as held_out_closed,
        count(*) filter (where holdout and outcome_window_closed and outcome_achieved) as held_out_converted,
        -- the split at assignment (candidates that reached the holdout step), for the SRM check
        count(*) filter (where not holdout and not escalated and final_state <> 'suppressed') as assigned_acted,
        count(*) filter (where holdout) as assigned_held_out
    from actions
    group by rule_id
),

performance as (
    select
        rules.rule_id,
        coalesce(per_rule.candidates, 0) as candidates,
        coalesce(per_rule.sent, 0) as sent,
        coalesce(per_rule.held_out, 0) as held_out,
        coalesce(per_rule.suppressed, 0) as suppressed,
        coalesce(per_rule.reviewed, 0) as reviewed,
        coalesce(per_rule.approved, 0) as approved,
        coalesce(per_rule.rejected, 0) as rejected,
        coalesce(per_rule.expired, 0) as expired,
        per_rule.approved / nullif(per_rule.approved + per_rule.rejected, 0) as approval_rate,
        coalesce(per_rule.acted_closed, 0) as acted_closed,
        coalesce(per_rule.acted_converted, 0) as acted_converted,
        coalesce(per_rule.held_out_closed, 0) as held_out_closed,
        coalesce(per_rule.held_out_converted, 0) as held_out_converted,
        per_rule.acted_converted / nullif(per_rule.acted_closed, 0) as conversion_acted,
        per_rule.held_out_converted / nullif(per_rule.held_out_closed, 0) as conversion_held_out,
        coalesce(per_rule.assigned_acted, 0) as assigned_acted,
        coalesce(per_rule.assigned_held_out, 0) as assigned_held_out,
        rule_catalog.holdout_share
    from rules
    left join per_rule using (rule_id)
    left join rule_catalog using (rule_id)
),

final as (
    select
        performance.*,
        {{ proportion_difference('acted_converted', 'acted_closed', 'held_out_converted', 'held_out_closed') }}
            as uplift,
        {{ newcombe_lower('acted_converted', 'acted_closed', 'held_out_converted', 'held_out_closed') }}
            as uplift_ci_lower,
        {{ newcombe_upper('acted_converted', 'acted_closed', 'held_out_converted', 'held_out_closed') }}
            as uplift_ci_upper,
        {{ two_proportion_p_value('acted_converted', 'acted_closed', 'held_out_converted', 'held_out_closed') }}
            as p_value,
        {{ minimum_detectable_effect('conversion_held_out', 'acted_closed', 'held_out_closed') }}
            as minimum_detectable_effect,
        {{ srm_p_value('assigned_acted', 'assigned_held_out', 'holdout_share') }} as srm_p_value,
        {{ srm_flag('assigned_acted', 'assigned_held_out', 'holdout_share') }} as srm_flag,
        {{ uplift_verdict(
            'acted_closed', 'held_out_closed',
            newcombe_lower('acted_converted', 'acted_closed', 'held_out_converted', 'held_out_closed'),
            newcombe_upper('acted_converted', 'acted_closed', 'held_out_converted', 'held_out_closed'),
        ) }} as verdict
    from performance
)

select * from final
