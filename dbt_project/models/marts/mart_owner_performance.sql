-- Per owner (the person who decides an action's review): how many reviews they got, how they decided and how
-- fast. Hours to decide run from the proposal to the first decision; undecided reviews that expired count
-- against the owner's backlog, not their speed.
with reviewed as (
    select
        owner_email,
        decision,
        date_diff('second', proposed_at, decided_at) / 3600.0 as hours_to_decide
    from {{ ref('fct_actions') }}
    where was_reviewed
),

per_owner as (
    select
        owner_email,
        count(*) as reviews,
        count(*) filter (where decision = 'approved') as approved,
        count(*) filter (where decision = 'rejected') as rejected,
        count(*) filter (where decision = 'expired') as expired_undecided,
        count(*) filter (where decision is null) as pending,
        count(*) filter (where decision = 'approved')
            / nullif(count(*) filter (where decision in ('approved', 'rejected')), 0) as approval_rate,
        quantile_cont(hours_to_decide, 0.5) filter (where decision in ('approved', 'rejected'))
            as p50_hours_to_decide,
        quantile_cont(hours_to_decide, 0.9) filter (where decision in ('approved', 'rejected'))
            as p90_hours_to_decide
    from reviewed
    group by owner_email
)

select * from per_owner
