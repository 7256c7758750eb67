-- Per level-5 rule: is the learned policy better than choosing an arm uniformly at random?
-- The logged policy's own conversion (closed outcomes of its acted decisions, Wilson 95% interval) against the
-- uniform policy's conversion estimated off-line from the same log by inverse propensity weighting (IPW,
-- normal 95% interval) and self-normalised IPW (SNIPS, delta-method 95% interval); each decision is weighted by
-- w = (1 / K) / propensity, the propensity it was chosen with (ledger details). uplift_vs_uniform = logged -
-- uniform (IPW), paired per decision: mean(r (1 - w)) with its normal interval. best_arm_traffic_share: the
-- share of all decisions that went to the arm the posteriors now favour in their segment (mart_learning_arms).
-- Formulas and their Python twins: actionlayer/learning.py; SQL macros: macros/learning.sql, macros/stats.sql.
with decisions as (
    select * exclude (closed_outcome_achieved) from {{ ref('fct_learning_decisions') }}
),

outcomes as (
    select action_id, closed_outcome_achieved as outcome_achieved
    from {{ ref('fct_learning_decisions') }}
    where closed_outcome_achieved is not null
),

logged as (
    select
        decisions.rule_id,
        case when outcomes.outcome_achieved then 1.0 else 0.0 end as reward,
        {{ uniform_weight('decisions.arm_count', 'decisions.propensity') }} as weight
    from decisions
    join outcomes using (action_id)
    where decisions.propensity > 0 and decisions.propensity <= 1 and decisions.arm_count >= 1
),

sums as (
    select
        rule_id,
        count(*) as closed_outcomes,
        count(*) filter (where reward = 1.0) as successes,
        avg(weight * reward) as uniform_ipw,
        stddev_samp(weight * reward) as uniform_ipw_sd,
        sum(weight) as sum_weights,
        case when sum(weight) > 0 then sum(weight * reward) / sum(weight) end as uniform_snips,
        avg(reward * (1.0 - weight)) as uplift_vs_uniform,
        stddev_samp(reward * (1.0 - weight)) as uplift_vs_uniform_sd
    from logged
    group by rule_id
),

snips_residuals as (
    select logged.rule_id, sum(power(logged.weight * (logged.reward - sums.uniform_snips), 2)) as squared_residuals
    from logged
    join sums using (rule_id)
    group by logged.rule_id
),

per_rule as (
    select
        rule_id,
        count(*) as decisions,
        count(distinct segment) as segments,
        max(arm_count) as arm_count,
        avg(propensity) as mean_propensity
    from decisions
    group by rule_id
),

best_arms as (
    select
        rule_id,
        case when sum(decisions) > 0 then sum(decisions) filter (where is_best_arm) / sum(decisions) end
            as best_arm_traffic_share
    from {{ ref('mart_learning_arms') }}
    group by rule_id
),

combined as (
    select
        per_rule.rule_id,
        per_rule.decisions,
        per_rule.segments,
        per_rule.arm_count,
        per_rule.mean_propensity,
        coalesce(sums.closed_outcomes, 0) as closed_outcomes,
        coalesce(sums.successes, 0) as successes,
        sums.uniform_ipw,
        sums.uniform_ipw_sd,
        sums.sum_weights,
        sums.uniform_snips,
        snips_residuals.squared_residuals,
        sums.uplift_vs_uniform,
        sums.uplift_vs_uniform_sd,
        coalesce(best_arms.best_arm_traffic_share, 0) as best_arm_traffic_share
    from per_rule
    left join sums using (rule_id)
    left join snips_residuals using (rule_id)
    left join best_arms using (rule_id)
),

final as (
    select
        rule_id,
        decisions,
        segments,
        arm_count,
        mean_propensity,
        closed_outcomes,
        successes,
        {{ proportion('successes', 'closed_outcomes') }} as logged_conversion,
        {{ wilson_lower('successes', 'closed_outcomes') }} as logged_conversion_lower,
        {{ wilson_upper('successes', 'closed_outcomes') }} as logged_conversion_upper,
        uniform_ipw,
        {{ normal_mean_bound('uniform_ipw', 'uniform_ipw_sd', 'closed_outcomes', '-') }} as uniform_ipw_lower,
        {{ normal_mean_bound('uniform_ipw', 'uniform_ipw_sd', 'closed_outcomes', '+') }} as uniform_ipw_upper,
        uniform_snips,
        {{ snips_bound('uniform_snips', 'squared_residuals', 'sum_weights', 'closed_outcomes', '-') }}
            as uniform_snips_lower,
        {{ snips_bound('uniform_snips', 'squared_residuals', 'sum_weights', 'closed_outcomes', '+') }}
            as uniform_snips_upper,
        uplift_vs_uniform,
        {{ normal_mean_bound('uplift_vs_uniform', 'uplift_vs_uniform_sd', 'closed_outcomes', '-', -1.0, 1.0) }}
            as uplift_vs_uniform_lower,
        {{ normal_mean_bound('uplift_vs_uniform', 'uplift_vs_uniform_sd', 'closed_outcomes', '+', -1.0, 1.0) }}
            as uplift_vs_uniform_upper,
        best_arm_traffic_share,
        {{ as_of() }} as as_of
    from combined
),

verdicts as (
    select
        *,
        case
            when closed_outcomes < 30 or uplift_vs_uniform_lower is null then 'insufficient_data'
            when uplift_vs_uniform_lower > 0 then 'beats_uniform'
            when uplift_vs_uniform_upper < 0 then 'worse_than_uniform'
            else 'no_evidence'
        end as verdict
    from final
)

select * from verdicts
