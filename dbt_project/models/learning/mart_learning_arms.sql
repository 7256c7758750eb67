-- Per level-5 rule, segment and arm: what the Thompson policy decided (decisions, traffic share, mean
-- propensity) and what it has learned (closed outcomes of acted actions, successes, Beta posterior).
-- Decisions are the `proposed` ledger events whose details carry policy "thompson" (actionlayer/proposals.py);
-- outcomes come from fct_outcomes: acted actions whose outcome window has closed by as_of (open windows and
-- held-out or never-acted actions teach nothing about an arm). The posterior is the one the next pass uses:
-- Beta(prior_alpha + successes, prior_beta + failures), the prior taken from the rule's latest decision.
-- Every arm the rule offers (its latest decision's arm list) has a row in every segment it has seen, chosen or
-- not; an arm no longer offered keeps its rows (is_offered false). Python mirror: actionlayer/learning.py.
with decisions as (
    select * exclude (closed_outcome_achieved) from {{ ref('fct_learning_decisions') }}
),

outcomes as (
    select action_id, closed_outcome_achieved as outcome_achieved
    from {{ ref('fct_learning_decisions') }}
    where closed_outcome_achieved is not null
),

latest as (
    select
        rule_id,
        arg_max(arms, seq) as arms,
        arg_max(prior_alpha, seq) as prior_alpha,
        arg_max(prior_beta, seq) as prior_beta
    from decisions
    group by rule_id
),

offered as (
    select segments.rule_id, segments.segment, unnest(json_transform(latest.arms, '["VARCHAR"]')) as arm
    from (select distinct rule_id, segment from decisions) as segments
    join latest using (rule_id)
),

per_arm as (
    select
        decisions.rule_id,
        decisions.segment,
        decisions.arm,
        count(*) as decisions,
        avg(decisions.propensity) as mean_propensity,
        count(outcomes.action_id) as closed_outcomes,
        count(*) filter (where outcomes.outcome_achieved) as successes
    from decisions
    left join outcomes using (action_id)
    group by decisions.rule_id, decisions.segment, decisions.arm
),

arms as (
    select rule_id, segment, arm from offered
    union
    select rule_id, segment, arm from per_arm
),

combined as (
    select
        arms.rule_id,
        arms.segment,
        arms.arm,
        split_part(arms.arm, '@', 1) as arm_channel,
        split_part(arms.arm, '@', 2) as arm_send_window,
        exists (
            select 1 from offered
            where offered.rule_id = arms.rule_id and offered.segment = arms.segment and offered.arm = arms.arm
        ) as is_offered,
        coalesce(per_arm.decisions, 0) as decisions,
        per_arm.mean_propensity,
        coalesce(per_arm.closed_outcomes, 0) as closed_outcomes,
        coalesce(per_arm.successes, 0) as successes,
        coalesce(per_arm.closed_outcomes, 0) - coalesce(per_arm.successes, 0) as failures,
        latest.prior_alpha,
        latest.prior_beta
    from arms
    left join per_arm using (rule_id, segment, arm)
    left join latest using (rule_id)
),

posteriors as (
    select
        *,
        prior_alpha + successes as posterior_alpha,
        prior_beta + failures as posterior_beta,
        {{ beta_mean('prior_alpha + successes', 'prior_beta + failures') }} as posterior_mean
    from combined
),

final as (
    select
        rule_id,
        segment,
        arm,
        arm_channel,
        arm_send_window,
        is_offered,
        decisions,
        case when sum(decisions) over segment_window > 0
            then decisions / sum(decisions) over segment_window
        end as traffic_share,
        mean_propensity,
        closed_outcomes,
        successes,
        failures,
        prior_alpha,
        prior_beta,
        posterior_alpha,
        posterior_beta,
        posterior_mean,
        -- the arm the posteriors currently favour in this segment (offered arms only; ties by arm name)
        is_offered and row_number() over (
            partition by rule_id, segment order by is_offered desc, posterior_mean desc nulls last, arm
        ) = 1 as is_best_arm,
        {{ as_of() }} as as_of
    from posteriors
    window segment_window as (partition by rule_id, segment)
)

select * from final
