-- Per rule, owner and ISO week (Monday) of delivery: hours from the signal to the first touch (the first delivery
-- of the action), over delivered acted actions. The weekly health metric: publish p50/p90 per rule and owner.
with delivered as (
    select rule_id, owner_email, cast(date_trunc('week', delivered_at) as date) as week_start, latency_hours
    from {{ ref('fct_actions') }}
    where delivered_at is not null and latency_hours is not null
),

latency as (
    select
        rule_id,
        owner_email,
        week_start,
        count(*) as actions,
        quantile_cont(latency_hours, 0.5) as p50_latency_hours,
        quantile_cont(latency_hours, 0.9) as p90_latency_hours,
        max(latency_hours) as max_latency_hours
    from delivered
    group by rule_id, owner_email, week_start
)

select * from latency
