-- Per rule: the false positives analysts tune away. Of the actions people reviewed, how many they rejected or
-- let expire undecided; of the approved ones, how many were stale by the time they were to be sent (the
-- condition no longer held: expired by the dispatcher); and how many deliveries failed or ended unknown.
with actions as (
    select * from {{ ref('fct_actions') }}
),

rules as (
    select rule_id from {{ ref('int_rule_catalog') }}
    union
    select distinct rule_id from actions
),

per_rule as (
    select
        rule_id,
        count(*) as actions,
        count(*) filter (where was_reviewed) as reviewed,
        count(*) filter (where was_reviewed and decision = 'rejected') as rejected,
        count(*) filter (where was_reviewed and decision = 'expired') as expired_undecided,
        count(*) filter (where decision = 'approved') as approved,
        count(*) filter (where decision = 'approved' and final_state = 'expired') as expired_stale,
        count(*) filter (where final_state = 'failed') as failed,
        count(*) filter (where final_state = 'unknown') as unknown
    from actions
    group by rule_id
),

health as (
    select
        rules.rule_id,
        coalesce(per_rule.actions, 0) as actions,
        coalesce(per_rule.reviewed, 0) as reviewed,
        coalesce(per_rule.rejected, 0) as rejected,
        coalesce(per_rule.expired_undecided, 0) as expired_undecided,
        coalesce(per_rule.approved, 0) as approved,
        coalesce(per_rule.expired_stale, 0) as expired_stale,
        coalesce(per_rule.failed, 0) as failed,
        coalesce(per_rule.unknown, 0) as unknown,
        per_rule.rejected / nullif(per_rule.reviewed, 0) as share_rejected,
        per_rule.expired_undecided / nullif(per_rule.reviewed, 0) as share_expired_undecided,
        per_rule.expired_stale / nullif(per_rule.approved, 0) as share_expired_stale
    from rules
    left join per_rule using (rule_id)
)

select * from health
