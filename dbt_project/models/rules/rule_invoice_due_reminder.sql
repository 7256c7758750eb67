-- An open invoice falls due within the next N days (var invoice_reminder_days_before_due): send its billing contact
-- a friendly payment reminder before the due date (automatic, level 4). The demo world plants this rule as HARMFUL
-- (customers who would have paid on time take offence and pay later), so its holdout measures the damage.
{%- set days_before = var('invoice_reminder_days_before_due') %}

with invoices_due_soon as (
    select invoice_id, account_id, contact_id, amount, currency, issued_at, due_at
    from {{ ref('stg_files__invoices') }}
    where status = 'open'
        and paid_at is null
        and due_at > {{ as_of() }}
        and due_at <= {{ as_of() }} + interval ({{ days_before }}) day
),

accounts as (
    select account_id, name as account_name, owner_email from {{ ref('stg_files__accounts') }}
),

contacts as (
    select contact_id, first_name, last_name from {{ ref('stg_files__contacts') }}
),

routed as (
    select invoices_due_soon.*, accounts.account_name, accounts.owner_email, contacts.first_name, contacts.last_name
    from invoices_due_soon
    join accounts using (account_id)
    join contacts using (contact_id)
),

rule_output as (
    select
        {{ rule_identity_columns() }},
        'invoice' as record_type,
        invoice_id as record_id,
        contact_id,
        account_id,
        owner_email,
        due_at - interval ({{ days_before }}) day as signal_at,
        strftime(due_at, '%Y-%m-%d') as signal_key,
        false as escalate,
        cast(json_object(
            'invoice_id', invoice_id,
            'account_name', account_name,
            'first_name', first_name,
            'last_name', last_name,
            'amount', amount,
            'currency', currency,
            'due_at', strftime(due_at, '%Y-%m-%d'),
            'days_to_due', date_diff('day', {{ as_of() }}, due_at)
        ) as varchar) as reason,
        {{ rule_meta_columns() }}
    from routed
)

select * from rule_output
