{#
  The counts and the uplift statistics of mart_rule_performance, shared by its per-rule and per-week versions.
  performance_counts(): aggregates over fct_actions rows (use inside a GROUP BY).
  uplift_statistics(): the columns computed from those counts (needs holdout_share for the SRM check).
#}
{% macro performance_counts() -%}
        count(*) as candidates,
        count(*) filter (where delivered_at is not null) as sent,
        count(*) filter (where holdout) as held_out,
        count(*) filter (where final_state = 'suppressed') as suppressed,
        count(*) filter (where was_reviewed) as reviewed,
        count(*) filter (where was_reviewed and decision = 'approved') as approved,
        count(*) filter (where was_reviewed and decision = 'rejected') as rejected,
        count(*) filter (where was_reviewed and decision = 'expired') as expired,
        count(*) filter (where delivered_at is not null and not holdout and not escalated
                         and outcome_window_closed) as acted_closed,
        count(*) filter (where delivered_at is not null and not holdout and not escalated and outcome_window_closed
                         and outcome_achieved) as acted_converted,
        count(*) filter (where delivered_at is not null and not holdout and not escalated
                         and not outcome_window_closed) as acted_open,
        count(*) filter (where holdout and outcome_window_closed) as held_out_closed,
        count(*) filter (where holdout and outcome_window_closed and outcome_achieved) as held_out_converted,
        count(*) filter (where holdout and not outcome_window_closed) as held_out_open,
        -- the split at assignment (candidates that reached the holdout step), for the SRM check
        count(*) filter (where not holdout and not escalated and final_state <> 'suppressed') as assigned_acted,
        count(*) filter (where holdout) as assigned_held_out
{%- endmacro %}

{% macro uplift_statistics() -%}
        approved / nullif(approved + rejected, 0) as approval_rate,
        acted_converted / nullif(acted_closed, 0) as conversion_acted,
        held_out_converted / nullif(held_out_closed, 0) as conversion_held_out,
        {{ uplift_columns('acted_converted', 'acted_closed', 'held_out_converted', 'held_out_closed') }},
        {{ minimum_detectable_effect(
            'held_out_converted / nullif(held_out_closed, 0)', 'acted_closed', 'held_out_closed'
        ) }} as minimum_detectable_effect,
        {{ srm_p_value('assigned_acted', 'assigned_held_out', 'holdout_share') }} as srm_p_value,
        {{ srm_flag('assigned_acted', 'assigned_held_out', 'holdout_share') }} as srm_flag
{%- endmacro %}

{#
  Acted vs held out: uplift (absolute difference), Newcombe's 95% interval, the pooled two-proportion p-value and
  the verdict, from converted/closed counts per arm. mart_rule_performance(_weekly) and mart_rule_tuning use it;
  `prefix` names the p-value and verdict columns (e.g. 'uplift_' gives uplift_p_value, uplift_verdict).
#}
{% macro uplift_columns(converted1, n1, converted0, n0, prefix='') -%}
        {{ proportion_difference(converted1, n1, converted0, n0) }} as uplift,
        {{ newcombe_lower(converted1, n1, converted0, n0) }} as uplift_ci_lower,
        {{ newcombe_upper(converted1, n1, converted0, n0) }} as uplift_ci_upper,
        {{ two_proportion_p_value(converted1, n1, converted0, n0) }} as {{ prefix }}p_value,
        {{ uplift_verdict(n1, n0, newcombe_lower(converted1, n1, converted0, n0),
                          newcombe_upper(converted1, n1, converted0, n0)) }} as {{ prefix }}verdict
{%- endmacro %}
