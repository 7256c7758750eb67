-- An open ticket that matters (priority urgent or high, or from an enterprise account): notify the account owner.
with open_tickets as (
    select ticket_id, account_id, contact_id, priority, subject, opened_at
    from {{ ref('stg_files__tickets') }}
    where status = 'open' and opened_at <= {{ as_of() }}
),

accounts as (
    select account_id, name as account_name, tier, owner_email from {{ ref('stg_files__accounts') }}
),

important as (
    select open_tickets.*, accounts.account_name, accounts.tier, accounts.owner_email
    from open_tickets
    join accounts using (account_id)
    where open_tickets.priority in ('urgent', 'high') or accounts.tier = 'enterprise'
),

rule_output as (
    select
        {{ rule_identity_columns() }},
        'ticket' as record_type,
        ticket_id as record_id,
        contact_id,
        account_id,
        owner_email,
        opened_at as signal_at,
        ticket_id as signal_key,
        priority = 'urgent' as escalate,
        cast(json_object(
            'ticket_id', ticket_id,
            'subject', subject,
            'priority', priority,
            'tier', tier,
            'account_name', account_name,
            'opened_at', strftime(opened_at, '%Y-%m-%d %H:%M:%S'),
            'escalate', priority = 'urgent'
        ) as varchar) as reason,
        {{ rule_meta_columns() }}
    from important
)

select * from rule_output
