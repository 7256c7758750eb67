-- invoices from the file source, typed and named as the canonical contract says (cast/rename only).
select
    cast(invoice_id as varchar) as invoice_id,
    cast(account_id as varchar) as account_id,
    cast(contact_id as varchar) as contact_id,
    cast(amount as decimal(18,2)) as amount,
    cast(currency as varchar) as currency,
    cast(issued_at as timestamp) as issued_at,
    cast(due_at as timestamp) as due_at,
    cast(paid_at as timestamp) as paid_at,
    cast(status as varchar) as status,
    cast(updated_at as timestamp) as updated_at,
    _source_file,
    _row_number
from {{ source('raw', 'invoices') }}
