-- An open invoice is at least N days past due (var overdue_invoice_min_days) and unpaid: create an internal task
-- for the account owner to confirm the payment status with the customer (automatic, level 4).
{%- set min_days = var('overdue_invoice_min_days') %}

with overdue_invoices as (
    select invoice_id, account_id, contact_id, amount, currency, issued_at, due_at
    from {{ ref('stg_files__invoices') }}
    where status = 'open'
        and paid_at is null
        and due_at <= {{ as_of() }} - interval ({{ min_days }}) day
),

accounts as (
    select account_id, name as account_name, owner_email from {{ ref('stg_files__accounts') }}
),

routed as (
    select overdue_invoices.*, accounts.account_name, accounts.owner_email
    from overdue_invoices
    join accounts using (account_id)
),

rule_output as (
    select
        {{ rule_identity_columns() }},
        'invoice' as record_type,
        invoice_id as record_id,
        contact_id,
        account_id,
        owner_email,
        due_at + interval ({{ min_days }}) day as signal_at,
        strftime(due_at, '%Y-%m-%d') as signal_key,
        false as escalate,
        cast(json_object(
            'invoice_id', invoice_id,
            'account_name', account_name,
            'amount', amount,
            'currency', currency,
            'due_at', strftime(due_at, '%Y-%m-%d'),
            'days_overdue', date_diff('day', due_at, {{ as_of() }})
        ) as varchar) as reason,
        {{ rule_meta_columns() }}
    from routed
)

select * from rule_output
