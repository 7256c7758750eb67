{#
  The built-in `unique` test, same result rows (each duplicated value and how often it occurs), cheaper on big
  relations: grouping 5 million text keys (stg_files__activities.activity_id at size M) keeps every string in the
  hash table. A 64-bit hash of the key is grouped first; a value that occurs twice has the same hash twice, so the
  duplicated hashes hold every duplicated value, and only the rows with those hashes are grouped on the value
  itself (which also drops a mere hash collision between two different values). Overrides dbt's
  default__test_unique: dbt dispatches its own macros to the root project first.
#}
{% macro default__test_unique(model, column_name) %}

with duplicated_hashes as (
    select hash({{ column_name }}) as key_hash
    from {{ model }}
    where {{ column_name }} is not null
    group by key_hash
    having count(*) > 1
)

select
    {{ column_name }} as unique_field,
    count(*) as n_records

from {{ model }}
where {{ column_name }} is not null
    and hash({{ column_name }}) in (select key_hash from duplicated_hashes)
group by {{ column_name }}
having count(*) > 1

{% endmacro %}
