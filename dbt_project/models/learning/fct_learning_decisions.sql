-- Every decision a level-5 rule's Thompson policy logged (the `proposed` ledger events whose details carry policy
-- "thompson", macro learning_decisions), with what it taught: the outcome of the acted action once its window
-- has closed (fct_outcomes; null while open, held out or never acted). Both learning marts read this.
with ledger as (
    select * from {{ source('ledger', 'action_ledger') }}
    where occurred_at <= {{ as_of() }}
),

decisions as (
    {{ learning_decisions('ledger') }}
),

closed_outcomes as (
    select action_id, outcome_achieved as closed_outcome_achieved
    from {{ ref('fct_outcomes') }}
    where arm_group = 'acted' and outcome_window_closed and outcome_achieved is not null
)

select decisions.*, closed_outcomes.closed_outcome_achieved
from decisions
left join closed_outcomes using (action_id)
