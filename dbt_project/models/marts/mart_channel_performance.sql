-- Per rule and channel: what was sent through it, whether it arrived (delivered, failed, unknown), how fast,
-- and how often the outcome followed a delivery (closed windows only). The acted-vs-held-out comparison lives
-- in mart_rule_performance; this mart says whether a channel delivers and converts.
with sent as (
    select *
    from {{ ref('fct_actions') }}
    where first_sent_at is not null and not holdout
),

per_channel as (
    select
        rule_id,
        channel,
        count(*) as sent,
        count(*) filter (where delivered_at is not null) as delivered,
        count(*) filter (where final_state = 'failed') as failed,
        count(*) filter (where final_state = 'unknown') as unknown,
        count(*) filter (where delivered_at is not null) / count(*) as delivery_rate,
        count(*) filter (where delivered_at is not null and outcome_window_closed) as closed,
        count(*) filter (where delivered_at is not null and outcome_window_closed and outcome_achieved)
            as converted,
        quantile_cont(latency_hours, 0.5) as p50_latency_hours
    from sent
    group by rule_id, channel
),

final as (
    select *, converted / nullif(closed, 0) as conversion
    from per_channel
)

select * from final
