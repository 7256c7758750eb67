-- tickets from the file source, typed and named as the canonical contract says (cast/rename only).
select
    cast(ticket_id as varchar) as ticket_id,
    cast(account_id as varchar) as account_id,
    cast(contact_id as varchar) as contact_id,
    cast(priority as varchar) as priority,
    cast(status as varchar) as status,
    cast(subject as varchar) as subject,
    cast(body as varchar) as body,
    cast(opened_at as timestamp) as opened_at,
    cast(updated_at as timestamp) as updated_at,
    _source_file,
    _row_number
from {{ source('raw', 'tickets') }}
