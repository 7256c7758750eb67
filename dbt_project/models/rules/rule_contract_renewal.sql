-- An active contract that does not renew by itself ends within N days (var renewal_window_days): propose a renewal
-- notice to the account's primary contact, for the account owner to approve.
{%- set window_days = var('renewal_window_days') %}

with ending_contracts as (
    select contract_id, account_id, start_at, end_at, value
    from {{ ref('stg_files__contracts') }}
    where status = 'active'
        and auto_renew = false
        and end_at >= {{ as_of() }}
        and end_at <= {{ as_of() }} + interval ({{ window_days }}) day
),

accounts as (
    select account_id, name as account_name, owner_email from {{ ref('stg_files__accounts') }}
),

primary_contacts as (
    select account_id, primary_contact_id as contact_id from {{ ref('int_account_primary_contact') }}
),

contacts as (
    select contact_id, first_name, last_name from {{ ref('stg_files__contacts') }}
),

routed as (
    select ending_contracts.*, accounts.account_name, accounts.owner_email,
           primary_contacts.contact_id, contacts.first_name, contacts.last_name
    from ending_contracts
    join accounts using (account_id)
    join primary_contacts using (account_id)
    join contacts using (contact_id)
),

rule_output as (
    select
        {{ rule_identity_columns() }},
        'contract' as record_type,
        contract_id as record_id,
        contact_id,
        account_id,
        owner_email,
        end_at - interval ({{ window_days }}) day as signal_at,
        strftime(end_at, '%Y-%m-%d') as signal_key,
        false as escalate,
        cast(json_object(
            'contract_id', contract_id,
            'account_name', account_name,
            'first_name', first_name,
            'last_name', last_name,
            'value', value,
            'end_at', strftime(end_at, '%Y-%m-%d'),
            'days_to_end', date_diff('day', {{ as_of() }}, end_at)
        ) as varchar) as reason,
        {{ rule_meta_columns() }}
    from routed
)

select * from rule_output
