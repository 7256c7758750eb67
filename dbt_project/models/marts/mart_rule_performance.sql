-- Per rule: how many candidates became what, how owners decided, and whether acting beat holding out.
-- Conversions count only actions whose outcome window has closed by as_of (fct_outcomes, from the SoR history;
-- open windows are counted apart, never as failures); uplift = acted - held out, with Newcombe's 95% interval,
-- a pooled two-proportion p-value, the minimum detectable effect at this sample size, a sample-ratio-mismatch
-- check of the holdout split and a verdict (macros/performance.sql and macros/stats.sql; Python mirror in
-- actionlayer/stats.py). Escalated actions are never held out, so they are left out of both arms.
-- The same figures per week of proposal are in mart_rule_performance_weekly.
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
    select rule_id, {{ performance_counts() }}
    from actions
    group by rule_id
),

performance as (
    select
        rules.rule_id,
        {%- for column in ['candidates', 'sent', 'held_out', 'suppressed', 'reviewed', 'approved', 'rejected',
                           'expired', 'acted_closed', 'acted_converted', 'acted_open', 'held_out_closed',
                           'held_out_converted', 'held_out_open', 'assigned_acted', 'assigned_held_out'] %}
        coalesce(per_rule.{{ column }}, 0) as {{ column }},
        {%- endfor %}
        rule_catalog.holdout_share
    from rules
    left join per_rule using (rule_id)
    left join rule_catalog using (rule_id)
),

final as (
    select performance.*, {{ uplift_statistics() }}
    from performance
)

select * from final
