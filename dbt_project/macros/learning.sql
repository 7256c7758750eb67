{#
  Level-5 learning in SQL: the decisions the Thompson policy logged, Beta posteriors, and the off-line
  evaluation of the uniform policy. The SQL twin of actionlayer/learning.py, which documents the methods;
  tests/test_learning.py checks that both give the same numbers on a real build.

  Every number macro takes SQL expressions and returns one parenthesised double expression, null-safe and
  never dividing by zero (DuckDB 2.0 returns inf for x / 0). Pass plain columns: arguments are inlined more
  than once.
#}

{#
  One row per logged level-5 decision: the `proposed` ledger event whose details carry policy "thompson"
  (actionlayer.proposals), with its segment, arm, propensity, number of arms K and the prior it was decided with.
#}
{% macro learning_decisions(ledger_relation) -%}
    select
        action_id,
        rule_id,
        occurred_at as decided_at,
        seq,
        json_extract_string(details, '$.segment') as segment,
        json_extract_string(details, '$.arm') as arm,
        json_extract_string(details, '$.arm_channel') as arm_channel,
        json_extract_string(details, '$.arm_send_window') as arm_send_window,
        try_cast(json_extract_string(details, '$.propensity') as double) as propensity,
        cast(json_array_length(details, '$.arms') as integer) as arm_count,
        json_extract(details, '$.arms') as arms,
        try_cast(json_extract_string(details, '$.prior_alpha') as double) as prior_alpha,
        try_cast(json_extract_string(details, '$.prior_beta') as double) as prior_beta
    from {{ ledger_relation }}
    where event_type = 'proposed'
        and maturity_level = 5
        and json_extract_string(details, '$.policy') = 'thompson'
{%- endmacro %}

{# Beta posterior mean alpha / (alpha + beta); null unless both are positive. #}
{% macro beta_mean(alpha, beta) -%}
    (case when ({{ alpha }}) > 0 and ({{ beta }}) > 0 then
        cast(({{ alpha }}) as double) / (cast(({{ alpha }}) as double) + cast(({{ beta }}) as double))
    end)
{%- endmacro %}

{# The weight that reweights a logged decision to the uniform policy: (1 / K) / propensity. #}
{% macro uniform_weight(arm_count, propensity) -%}
    (case when ({{ arm_count }}) >= 1 and ({{ propensity }}) > 0 then
        (1.0 / cast(({{ arm_count }}) as double)) / cast(({{ propensity }}) as double)
    end)
{%- endmacro %}

{#
  One bound of the normal interval of a mean: mean ± z * sd / sqrt(n), clipped to [lowest, highest]
  (actionlayer.stats.normal_mean_interval). Null for fewer than 2 values (no spread to estimate).
  side: '-' for the lower bound, '+' for the upper.
#}
{% macro normal_mean_bound(mean, sd, n, side, lowest=0.0, highest=1.0, z=1.959963984540054) -%}
    (case when ({{ n }}) >= 2 and ({{ sd }}) is not null and ({{ mean }}) is not null then
        least({{ highest }}, greatest({{ lowest }},
            ({{ mean }}) {{ side }} {{ z }} * ({{ sd }}) / sqrt(cast(({{ n }}) as double))))
    end)
{%- endmacro %}

{#
  One bound of the self-normalised IPW interval (delta method): V ± z * sqrt(sum(w^2 (r - V)^2)) / sum(w),
  clipped to [0, 1] (actionlayer.learning.snips_estimate). Null for fewer than 2 decisions or sum(w) <= 0.
#}
{% macro snips_bound(value, sum_squared_residuals, sum_weights, n, side, z=1.959963984540054) -%}
    (case when ({{ n }}) >= 2 and ({{ sum_weights }}) > 0 and ({{ value }}) is not null then
        least(1.0, greatest(0.0,
            ({{ value }}) {{ side }} {{ z }} * sqrt({{ sum_squared_residuals }}) / ({{ sum_weights }})))
    end)
{%- endmacro %}


{# Generic test: within each group the column sums to 1 (traffic shares, propensities). #}
{% test learning_sums_to_one(model, column, group_by) %}
select {{ group_by | join(', ') }}, sum({{ column }}) as total
from {{ model }}
group by {{ group_by | join(', ') }}
having abs(sum({{ column }}) - 1.0) > 1e-9
{% endtest %}
