-- Per rule, tuned var and value of the LATEST `actionlayer tune` run for that rule and var (actionlayer/backtest.py):
-- what the rule would have fired over the replayed period with that value, how often it would have collided with
-- the journey context, what happened afterwards (the rule's outcome after the first fire, from the SoR history;
-- open windows are counted apart, never as failures), and, where the same would-be actions really were acted on
-- or held out (main.fct_outcomes at tuning time), the measured uplift acted - held out with Newcombe's interval.
-- Reads ops.rule_tuning_runs / ops.rule_tuning_results written by `actionlayer tune`; no graph edge (they are not
-- built by dbt), and an empty mart before the first tuning run.
{%- set runs_table = adapter.get_relation(database=target.database, schema='ops', identifier='rule_tuning_runs')
    if execute else none %}
{%- set results_table = adapter.get_relation(database=target.database, schema='ops', identifier='rule_tuning_results')
    if execute else none %}

with runs as (
    {%- if runs_table is not none and results_table is not none %}
    select * from {{ runs_table }}
    {%- else %}
    select
        cast(null as varchar) as run_id, cast(null as timestamp) as tuned_at, cast(null as varchar) as rule_id,
        cast(null as varchar) as param, cast(null as double) as value, cast(null as double) as current_value,
        cast(null as boolean) as is_current_value, cast(null as date) as period_from, cast(null as date) as period_to,
        cast(null as varchar) as pass_time, cast(null as integer) as replayed_days,
        cast(null as integer) as skipped_days, cast(null as integer) as blocked_days,
        cast(null as integer) as candidate_days, cast(null as timestamp) as outcomes_evaluated_at,
        cast(null as boolean) as ledger_outcomes_available
    where false
    {%- endif %}
),

results as (
    {%- if runs_table is not none and results_table is not none %}
    select * from {{ results_table }}
    {%- else %}
    select
        cast(null as varchar) as run_id, cast(null as varchar) as rule_id, cast(null as varchar) as param,
        cast(null as double) as value, cast(null as varchar) as action_id, cast(null as varchar) as journey_status,
        cast(null as varchar) as collision_kind, cast(null as boolean) as outcome_window_closed,
        cast(null as varchar) as outcome_status, cast(null as boolean) as ledger_action_found,
        cast(null as varchar) as ledger_arm_group, cast(null as boolean) as ledger_escalated,
        cast(null as boolean) as ledger_outcome_window_closed, cast(null as varchar) as ledger_outcome_status
    where false
    {%- endif %}
),

latest_runs as (
    select rule_id, param, arg_max(run_id, tuned_at) as run_id
    from runs
    group by rule_id, param
),

tuned_values as (
    select runs.*
    from runs
    join latest_runs using (rule_id, param, run_id)
),

per_value as (
    select
        run_id,
        value,
        count(*) as fires,
        count(*) filter (where journey_status = 'eligible') as eligible,
        count(*) filter (where journey_status = 'held_out') as held_out,
        count(*) filter (where journey_status = 'suppressed') as suppressed,
        count(*) filter (where collision_kind = 'do_not_contact') as collisions_do_not_contact,
        count(*) filter (where collision_kind = 'no_email') as collisions_no_email,
        count(*) filter (where collision_kind = 'open_ticket') as collisions_open_ticket,
        count(*) filter (where collision_kind = 'overdue_invoice') as collisions_overdue_invoice,
        count(*) filter (where collision_kind = 'cooldown') as collisions_cooldown,
        count(*) filter (where collision_kind = 'frequency_cap') as collisions_frequency_cap,
        count(*) filter (where collision_kind = 'other') as collisions_other,
        -- only closed windows count for the rate; an open window is neither a success nor a failure yet
        count(*) filter (where outcome_window_closed) as outcomes_closed,
        count(*) filter (where outcome_window_closed and outcome_status = 'achieved') as outcomes_achieved,
        count(*) filter (where not outcome_window_closed and outcome_status <> 'not_applicable') as outcomes_open,
        count(*) filter (where ledger_action_found) as in_ledger,
        -- the same would-be actions in the real ledger: delivered and not held out vs held out, closed windows,
        -- escalations left out of both arms (as in mart_rule_performance)
        count(*) filter (where ledger_arm_group = 'acted' and not coalesce(ledger_escalated, false)
                         and ledger_outcome_window_closed) as acted_closed,
        count(*) filter (where ledger_arm_group = 'acted' and not coalesce(ledger_escalated, false)
                         and ledger_outcome_window_closed and ledger_outcome_status = 'achieved') as acted_achieved,
        count(*) filter (where ledger_arm_group = 'held_out' and ledger_outcome_window_closed) as held_out_closed,
        count(*) filter (where ledger_arm_group = 'held_out' and ledger_outcome_window_closed
                         and ledger_outcome_status = 'achieved') as held_out_achieved
    from results
    group by run_id, value
),

counts as (
    select
        tuned_values.run_id,
        tuned_values.tuned_at,
        tuned_values.rule_id,
        tuned_values.param,
        tuned_values.value,
        tuned_values.current_value,
        tuned_values.is_current_value,
        tuned_values.period_from,
        tuned_values.period_to,
        tuned_values.pass_time,
        tuned_values.replayed_days,
        tuned_values.skipped_days,
        tuned_values.blocked_days,
        tuned_values.candidate_days,
        tuned_values.outcomes_evaluated_at,
        tuned_values.ledger_outcomes_available,
        coalesce(per_value.fires, 0) as fires,
        coalesce(per_value.eligible, 0) as eligible,
        coalesce(per_value.held_out, 0) as held_out,
        coalesce(per_value.suppressed, 0) as collisions,
        coalesce(per_value.collisions_do_not_contact, 0) as collisions_do_not_contact,
        coalesce(per_value.collisions_no_email, 0) as collisions_no_email,
        coalesce(per_value.collisions_open_ticket, 0) as collisions_open_ticket,
        coalesce(per_value.collisions_overdue_invoice, 0) as collisions_overdue_invoice,
        coalesce(per_value.collisions_cooldown, 0) as collisions_cooldown,
        coalesce(per_value.collisions_frequency_cap, 0) as collisions_frequency_cap,
        coalesce(per_value.collisions_other, 0) as collisions_other,
        coalesce(per_value.outcomes_closed, 0) as outcomes_closed,
        coalesce(per_value.outcomes_achieved, 0) as outcomes_achieved,
        coalesce(per_value.outcomes_open, 0) as outcomes_open,
        coalesce(per_value.in_ledger, 0) as in_ledger,
        coalesce(per_value.acted_closed, 0) as acted_closed,
        coalesce(per_value.acted_achieved, 0) as acted_achieved,
        coalesce(per_value.held_out_closed, 0) as held_out_closed,
        coalesce(per_value.held_out_achieved, 0) as held_out_achieved
    from tuned_values
    left join per_value using (run_id, value)
),

final as (
    select
        counts.*,
        case when replayed_days > 0 then fires / replayed_days end as fires_per_day,
        {{ proportion('collisions', 'fires') }} as collision_rate,
        {{ proportion('outcomes_achieved', 'outcomes_closed') }} as outcome_rate,
        {{ wilson_lower('outcomes_achieved', 'outcomes_closed') }} as outcome_rate_ci_lower,
        {{ wilson_upper('outcomes_achieved', 'outcomes_closed') }} as outcome_rate_ci_upper,
        {{ proportion('acted_achieved', 'acted_closed') }} as conversion_acted,
        {{ proportion('held_out_achieved', 'held_out_closed') }} as conversion_held_out,
        {{ uplift_columns('acted_achieved', 'acted_closed', 'held_out_achieved', 'held_out_closed', 'uplift_') }}
    from counts
)

select * from final
