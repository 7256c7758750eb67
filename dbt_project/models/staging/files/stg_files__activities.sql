-- activities from the file source, typed and named as the canonical contract says (cast/rename only).
select
    cast(activity_id as varchar) as activity_id,
    cast(contact_id as varchar) as contact_id,
    cast(deal_id as varchar) as deal_id,
    cast(owner_email as varchar) as owner_email,
    cast(kind as varchar) as kind,
    cast(occurred_at as timestamp) as occurred_at,
    cast(subject as varchar) as subject,
    _source_file,
    _row_number
from {{ source('raw', 'activities') }}
