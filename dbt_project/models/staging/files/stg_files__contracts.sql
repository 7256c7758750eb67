-- contracts from the file source, typed and named as the canonical contract says (cast/rename only).
select
    cast(contract_id as varchar) as contract_id,
    cast(account_id as varchar) as account_id,
    cast(start_at as timestamp) as start_at,
    cast(end_at as timestamp) as end_at,
    cast(auto_renew as boolean) as auto_renew,
    cast(value as decimal(18,2)) as value,
    cast(status as varchar) as status,
    _source_file,
    _row_number
from {{ source('raw', 'contracts') }}
