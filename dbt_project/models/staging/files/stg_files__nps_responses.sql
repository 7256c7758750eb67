-- nps_responses from the file source, typed and named as the canonical contract says (cast/rename only).
select
    cast(response_id as varchar) as response_id,
    cast(contact_id as varchar) as contact_id,
    cast(score as integer) as score,
    cast(comment as varchar) as comment,
    cast(responded_at as timestamp) as responded_at,
    _source_file,
    _row_number
from {{ source('raw', 'nps_responses') }}
