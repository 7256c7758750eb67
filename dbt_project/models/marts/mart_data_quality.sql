-- Data quality per source, object and day: what the SoR loads read, loaded and quarantined (by reason), how
-- often the blocking gate refused the object, and the schema drift first seen that day. Row counts are the
-- day's last load (every load validates the object's full current copy, so summing loads would double count).
{%- set reason_codes = [
    'missing_key', 'conflicting_duplicate', 'unparseable', 'impossible_date', 'future_timestamp', 'out_of_domain',
    'negative_amount', 'score_out_of_range', 'invalid_email', 'unknown_timezone', 'control_character',
    'broken_reference',
] %}
with loads as (
    select
        coalesce(source, 'files') as source,
        object as object_name,
        cast(as_of as date) as load_date,
        as_of,
        status,
        gate,
        rows_read,
        rows_loaded,
        rows_quarantined,
        quarantine_counts,
        row_number() over (
            partition by coalesce(source, 'files'), object, cast(as_of as date) order by as_of desc, rowid desc
        ) as recency
    from {{ source('ops', 'load_log') }}
    where status in ('loaded', 'refused')
),

per_day as (
    select
        source,
        object_name,
        load_date,
        count(*) as loads,
        count(*) filter (where status = 'refused') as refused_loads,
        string_agg(distinct gate, ', ') filter (where status = 'refused') as refusal_gates
    from loads
    group by all
),

last_of_day as (
    select * from loads where recency = 1
),

drift as (
    select
        source,
        object as object_name,
        cast(first_seen_at as date) as load_date,
        count(*) filter (where kind = 'added') as drift_columns_added,
        count(*) filter (where kind = 'removed') as drift_columns_removed,
        count(*) filter (where kind = 'type_changed') as drift_types_changed
    from {{ source('ops', 'drift_events') }}
    group by all
),

joined as (
    select
        per_day.source,
        per_day.object_name,
        per_day.load_date,
        per_day.loads,
        per_day.refused_loads,
        per_day.refusal_gates,
        last_of_day.status = 'refused' as blocked_at_day_end,
        last_of_day.rows_read,
        last_of_day.rows_loaded,
        last_of_day.rows_quarantined,
        case when last_of_day.rows_read > 0
            then round(last_of_day.rows_quarantined / last_of_day.rows_read, 4) end as broken_share,
    {%- for code in reason_codes %}
        coalesce(cast(json_extract_string(last_of_day.quarantine_counts, '$.{{ code }}') as bigint), 0)
            as quarantined_{{ code }},
    {%- endfor %}
        coalesce(drift.drift_columns_added, 0) as drift_columns_added,
        coalesce(drift.drift_columns_removed, 0) as drift_columns_removed,
        coalesce(drift.drift_types_changed, 0) as drift_types_changed
    from per_day
    inner join last_of_day using (source, object_name, load_date)
    left join drift using (source, object_name, load_date)
)

select * from joined
