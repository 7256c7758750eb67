-- deals from the file source, typed and named as the canonical contract says (cast/rename only).
select
    cast(deal_id as varchar) as deal_id,
    cast(account_id as varchar) as account_id,
    cast(contact_id as varchar) as contact_id,
    cast(owner_email as varchar) as owner_email,
    cast(name as varchar) as name,
    cast(stage as varchar) as stage,
    cast(amount as decimal(18,2)) as amount,
    cast(currency as varchar) as currency,
    cast(quote_sent_at as timestamp) as quote_sent_at,
    cast(stage_changed_at as timestamp) as stage_changed_at,
    cast(closed_at as timestamp) as closed_at,
    cast(created_at as timestamp) as created_at,
    cast(updated_at as timestamp) as updated_at,
    _source_file,
    _row_number
from {{ source('raw', 'deals') }}
