-- An account nobody has had any activity with for N days (var dormant_min_days) and with no open deal: propose a
-- reactivation email to its primary contact (automatic, level 4). An account without any activity counts from
-- its creation.
{%- set min_days = var('dormant_min_days') %}

with account_activity as (
    select account_id, last_activity_at, open_deal_count from {{ ref('int_account_last_activity') }}
),

accounts as (
    select account_id, name as account_name, owner_email, created_at from {{ ref('stg_files__accounts') }}
),

primary_contacts as (
    select account_id, primary_contact_id as contact_id from {{ ref('int_account_primary_contact') }}
),

contacts as (
    select contact_id, first_name, last_name from {{ ref('stg_files__contacts') }}
),

dormant as (
    select
        accounts.account_id, accounts.account_name, accounts.owner_email,
        coalesce(account_activity.last_activity_at, accounts.created_at) as last_activity_at,
        primary_contacts.contact_id, contacts.first_name, contacts.last_name
    from accounts
    join account_activity using (account_id)
    join primary_contacts using (account_id)
    join contacts using (contact_id)
    where account_activity.open_deal_count = 0
        and coalesce(account_activity.last_activity_at, accounts.created_at)
            <= {{ as_of() }} - interval ({{ min_days }}) day
),

rule_output as (
    select
        {{ rule_identity_columns() }},
        'account' as record_type,
        account_id as record_id,
        contact_id,
        account_id,
        owner_email,
        last_activity_at + interval ({{ min_days }}) day as signal_at,
        strftime(last_activity_at, '%Y-%m-%d') as signal_key,
        false as escalate,
        cast(json_object(
            'account_name', account_name,
            'first_name', first_name,
            'last_name', last_name,
            'last_activity_at', strftime(last_activity_at, '%Y-%m-%d'),
            'days_dormant', date_diff('day', last_activity_at, {{ as_of() }})
        ) as varchar) as reason,
        {{ rule_meta_columns() }}
    from dormant
)

select * from rule_output
