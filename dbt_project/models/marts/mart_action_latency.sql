-- Per rule and owner: how long from the signal to the first delivery (hours), over delivered acted actions.
with delivered as (
    select rule_id, owner_email, latency_hours
    from {{ ref('fct_actions') }}
    where delivered_at is not null and latency_hours is not null
),

latency as (
    select
        rule_id,
        owner_email,
        count(*) as actions,
        quantile_cont(latency_hours, 0.5) as p50_latency_hours,
        quantile_cont(latency_hours, 0.9) as p90_latency_hours,
        max(latency_hours) as max_latency_hours
    from delivered
    group by rule_id, owner_email
)

select * from latency
