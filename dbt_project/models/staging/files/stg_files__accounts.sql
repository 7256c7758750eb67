-- accounts from the file source, typed and named as the canonical contract says (cast/rename only).
select
    cast(account_id as varchar) as account_id,
    cast(name as varchar) as name,
    cast(industry as varchar) as industry,
    cast(tier as varchar) as tier,
    cast(owner_email as varchar) as owner_email,
    cast(created_at as timestamp) as created_at,
    cast(updated_at as timestamp) as updated_at,
    _source_file,
    _row_number
from {{ source('raw', 'accounts') }}
