-- Per deal: the latest real touch (email, call, meeting) on the deal or with the deal's contact, up to as_of.
-- Notes and tasks are not touches: the customer never saw them.
-- Two equi-joins (by deal, by contact) on per-key maxima, never one join on `deal_id = .. or contact_id = ..`:
-- DuckDB can run an `or` condition only as a nested loop (deals x touches), hours at a million deals.
with deals as (
    select deal_id, contact_id from {{ ref('stg_files__deals') }}
),

touches as (
    select activity_id, contact_id, deal_id, occurred_at
    from {{ ref('stg_files__activities') }}
    where kind in ('email_out', 'email_in', 'call', 'meeting') and occurred_at <= {{ as_of() }}
),

last_touch_on_deal as (
    select deal_id, max(occurred_at) as touched_at
    from touches
    where deal_id is not null
    group by deal_id
),

last_touch_with_contact as (
    select contact_id, max(occurred_at) as touched_at
    from touches
    where contact_id is not null
    group by contact_id
),

-- greatest() skips nulls: a deal touched on one path only keeps that touch, an untouched deal stays null
last_touch as (
    select deals.deal_id, greatest(on_deal.touched_at, with_contact.touched_at) as last_touch_at
    from deals
    left join last_touch_on_deal as on_deal on on_deal.deal_id = deals.deal_id
    left join last_touch_with_contact as with_contact on with_contact.contact_id = deals.contact_id
)

select * from last_touch
