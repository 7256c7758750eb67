-- mart_rule_performance per rule and ISO week (Monday) of proposal: the weekly trend of what each rule did and
-- what it was worth. A week's outcomes keep arriving until its last window closes (acted_open, held_out_open).
with actions as (
    select *, cast(date_trunc('week', proposed_at) as date) as week_start
    from {{ ref('fct_actions') }}
    where proposed_at is not null
),

rule_catalog as (
    select rule_id, holdout_share from {{ ref('int_rule_catalog') }}
),

per_week as (
    select rule_id, week_start, {{ performance_counts() }}
    from actions
    group by rule_id, week_start
),

final as (
    select per_week.*, rule_catalog.holdout_share, {{ uplift_statistics() }}
    from per_week
    left join rule_catalog using (rule_id)
)

select * from final
