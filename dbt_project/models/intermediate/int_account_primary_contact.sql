-- Per account: the one contact account-level messages go to, chosen deterministically: the earliest created
-- contact, ties broken by contact_id. Do-not-contact is NOT filtered here: the journey layer suppresses it with a
-- visible reason instead of silently picking somebody else.
with contacts as (
    select contact_id, account_id, created_at from {{ ref('stg_files__contacts') }}
),

ranked as (
    select
        account_id,
        contact_id,
        row_number() over (partition by account_id order by created_at, contact_id) as contact_rank
    from contacts
)

select account_id, contact_id as primary_contact_id
from ranked
where contact_rank = 1
