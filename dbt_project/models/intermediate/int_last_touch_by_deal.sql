-- Per deal: the latest real touch (email, call, meeting) on the deal or with the deal's contact, up to as_of.
-- Notes and tasks are not touches: the customer never saw them.
with deals as (
    select deal_id, contact_id from {{ ref('stg_files__deals') }}
),

touches as (
    select activity_id, contact_id, deal_id, occurred_at
    from {{ ref('stg_files__activities') }}
    where kind in ('email_out', 'email_in', 'call', 'meeting') and occurred_at <= {{ as_of() }}
),

touches_by_deal as (
    select deals.deal_id, touches.occurred_at
    from deals
    join touches on touches.deal_id = deals.deal_id or touches.contact_id = deals.contact_id
),

last_touch as (
    select deals.deal_id, max(touches_by_deal.occurred_at) as last_touch_at
    from deals
    left join touches_by_deal using (deal_id)
    group by deals.deal_id
)

select * from last_touch
