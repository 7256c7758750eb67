-- A routine support ticket has waited on the customer's answer for N hours (var ticket_reply_wait_hours): nudge the
-- customer so the question can be solved. Level 5: the channel (email or LINE) and the send window (morning or
-- afternoon, the contact's local time) are learned per account tier from the outcomes (config.meta.learning).
-- Important tickets (urgent/high or enterprise) are important_inquiry's, handled by their owner instead.
{%- set wait_hours = var('ticket_reply_wait_hours') %}

with waiting as (
    select ticket_id, account_id, contact_id, priority, subject, updated_at as waiting_since
    from {{ ref('stg_files__tickets') }}
    where status = 'pending'
        and priority in ('low', 'normal')
        and updated_at <= {{ as_of() }} - interval ({{ wait_hours }}) hour
),

accounts as (
    select account_id, name as account_name, tier, owner_email from {{ ref('stg_files__accounts') }}
),

contacts as (
    select contact_id, first_name, last_name from {{ ref('stg_files__contacts') }}
),

routed as (
    select waiting.*, accounts.account_name, accounts.tier, accounts.owner_email, contacts.first_name
    from waiting
    join accounts using (account_id)
    join contacts using (contact_id)
    where accounts.tier in ('smb', 'mid')
),

rule_output as (
    select
        {{ rule_identity_columns() }},
        'ticket' as record_type,
        ticket_id as record_id,
        contact_id,
        account_id,
        owner_email,
        waiting_since + interval ({{ wait_hours }}) hour as signal_at,
        ticket_id as signal_key,
        false as escalate,
        cast(json_object(
            'ticket_id', ticket_id,
            'subject', subject,
            'priority', priority,
            'tier', tier,
            'account_name', account_name,
            'first_name', first_name,
            'waiting_since', strftime(waiting_since, '%Y-%m-%d %H:%M:%S')
        ) as varchar) as reason,
        {{ rule_meta_columns() }}
    from routed
)

select * from rule_output
