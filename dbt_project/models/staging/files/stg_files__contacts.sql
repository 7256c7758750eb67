-- contacts from the file source, typed and named as the canonical contract says (cast/rename only).
select
    cast(contact_id as varchar) as contact_id,
    cast(account_id as varchar) as account_id,
    cast(first_name as varchar) as first_name,
    cast(last_name as varchar) as last_name,
    cast(email as varchar) as email,
    cast(phone as varchar) as phone,
    cast(timezone as varchar) as timezone,
    cast(do_not_contact as boolean) as do_not_contact,
    cast(created_at as timestamp) as created_at,
    cast(updated_at as timestamp) as updated_at,
    _source_file,
    _row_number
from {{ source('raw', 'contacts') }}
