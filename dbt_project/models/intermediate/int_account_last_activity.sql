-- Per account: the latest activity of any kind with any of its contacts (up to as_of), and its open deals.
with accounts as (
    select account_id, created_at from {{ ref('stg_files__accounts') }}
),

contacts as (
    select contact_id, account_id from {{ ref('stg_files__contacts') }}
),

activities as (
    select contact_id, occurred_at
    from {{ ref('stg_files__activities') }}
    where occurred_at <= {{ as_of() }}
),

-- per contact first, then per account: the join to contacts sees one row per contact, not every activity
last_activity_by_contact as (
    select contact_id, max(occurred_at) as last_activity_at
    from activities
    group by contact_id
),

last_activity as (
    select contacts.account_id, max(last_activity_by_contact.last_activity_at) as last_activity_at
    from last_activity_by_contact
    join contacts using (contact_id)
    group by contacts.account_id
),

open_deals as (
    select account_id, count(*) as open_deal_count
    from {{ ref('stg_files__deals') }}
    where stage not in ('won', 'lost')
    group by account_id
),

account_activity as (
    select
        accounts.account_id,
        last_activity.last_activity_at,
        coalesce(open_deals.open_deal_count, 0) as open_deal_count
    from accounts
    left join last_activity using (account_id)
    left join open_deals using (account_id)
)

select * from account_activity
