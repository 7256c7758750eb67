-- Per contact: what the journey context needs to know before a customer-facing action may go out.
-- Suppressions are account-wide: an open urgent ticket or an overdue invoice anywhere on the contact's account
-- makes a sales or reactivation message tone-deaf.
with contacts as (
    select contact_id, account_id, do_not_contact from {{ ref('stg_files__contacts') }}
),

open_urgent_tickets as (
    select account_id, min(ticket_id) as open_urgent_ticket_id
    from {{ ref('stg_files__tickets') }}
    where status = 'open' and priority = 'urgent' and opened_at <= {{ as_of() }}
    group by account_id
),

overdue_invoices as (
    select account_id, min(invoice_id) as overdue_invoice_id
    from {{ ref('stg_files__invoices') }}
    where status = 'open' and paid_at is null and due_at < {{ as_of() }}
    group by account_id
),

journey_state as (
    select
        contacts.contact_id,
        contacts.account_id,
        coalesce(contacts.do_not_contact, false) as do_not_contact,
        open_urgent_tickets.open_urgent_ticket_id,
        overdue_invoices.overdue_invoice_id
    from contacts
    left join open_urgent_tickets using (account_id)
    left join overdue_invoices using (account_id)
)

select * from journey_state
