-- One row per canonical object that has been loaded or refused: whether the blocking quality gate is closed
-- for it now (its latest non-skipped load as of the pass was refused), since when and why. A refused object
-- keeps its last good raw copy; the rules that read it are skipped until a load passes again.
with loads as (
    select
        object as object_name,
        source,
        as_of,
        status,
        gate,
        message,
        row_number() over (partition by object order by as_of desc, rowid desc) as recency
    from {{ source('ops', 'load_log') }}
    where status in ('loaded', 'refused')
      and as_of <= {{ as_of() }}
),

last_good as (
    select object_name, max(as_of) as last_loaded_at
    from loads
    where status = 'loaded'
    group by object_name
),

refusals_since_good as (
    select loads.object_name, min(loads.as_of) as blocked_since, count(*) as refused_loads
    from loads
    left join last_good using (object_name)
    where loads.status = 'refused'
      and (last_good.last_loaded_at is null or loads.as_of > last_good.last_loaded_at)
    group by loads.object_name
),

latest as (
    select * from loads where recency = 1
),

gate as (
    select
        latest.object_name,
        latest.source,
        latest.status = 'refused' as blocked,
        case when latest.status = 'refused' then latest.gate end as gate,
        case when latest.status = 'refused' then latest.message end as reason,
        case when latest.status = 'refused' then refusals_since_good.blocked_since end as blocked_since,
        coalesce(refusals_since_good.refused_loads, 0) as refused_loads_since_last_good,
        last_good.last_loaded_at,
        latest.as_of as last_attempt_at
    from latest
    left join last_good using (object_name)
    left join refusals_since_good using (object_name)
)

select * from gate
