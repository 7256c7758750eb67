-- One row per rule: the SoR objects it depends on, and whether the quality gate blocks it in this pass
-- (one of those objects failed a blocking check), with the reason. int_rule_candidates drops the candidates
-- of blocked rules, so no candidate is ever built from an object that failed a blocking check.
with inputs as (
    select * from {{ ref('int_rule_inputs') }}
),

gate as (
    select * from {{ ref('int_object_quality_gate') }}
),

per_rule as (
    select
        inputs.rule_id,
        string_agg(inputs.object_name, ', ' order by inputs.object_name) as input_objects,
        coalesce(bool_or(gate.blocked), false) as blocked,
        string_agg(case when gate.blocked then inputs.object_name end, ', ' order by inputs.object_name)
            as blocked_objects,
        string_agg(
            case when gate.blocked then
                inputs.object_name || ' (' || inputs.via || ', ' || gate.gate || ' since '
                || strftime(gate.blocked_since, '%Y-%m-%d %H:%M') || '): ' || gate.reason
            end,
            '; ' order by inputs.object_name
        ) as blocked_reason,
        min(case when gate.blocked then gate.blocked_since end) as blocked_since
    from inputs
    left join gate using (object_name)
    group by inputs.rule_id
)

select * from per_rule
