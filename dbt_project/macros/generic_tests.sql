{#
  The project's generic data tests. Each is one query per model, however many columns it checks: a pass runs
  every test, and dbt's cost per test node (compile, run, report, a Dagster check event) outweighs the query
  itself on all but the largest tables. A failing test's rows say which column or key broke and how often.
#}

{# The column is the model's key: never null and never repeated. Rows: the offending key values. #}
{% test primary_key(model, column_name) %}
select {{ column_name }} as key_value, count(*) as occurrences
from {{ model }}
group by {{ column_name }}
having count(*) > 1 or {{ column_name }} is null
{% endtest %}

{# None of the columns holds a null. Rows: each column that does, with how many nulls. #}
{% test columns_not_null(model, columns) %}
{%- set violations = {} -%}
{%- for column in columns -%}
    {%- do violations.update({column: column ~ ' is null'}) -%}
{%- endfor -%}
{{ column_violations(model, violations) }}
{% endtest %}

{# Every value of each column lies in its [min, max] (nulls pass). Rows: each column out of range, with how often. #}
{% test columns_in_range(model, ranges) %}
{%- set violations = {} -%}
{%- for column, bounds in ranges.items() -%}
    {%- do violations.update({column: column ~ ' < ' ~ bounds[0] ~ ' or ' ~ column ~ ' > ' ~ bounds[1]}) -%}
{%- endfor -%}
{{ column_violations(model, violations) }}
{% endtest %}

{# The given columns together are unique (no dbt hub here, so no dbt_utils). Rows: the repeated combinations. #}
{% test unique_combination(model, columns) %}
select {{ columns | join(', ') }}, count(*) as occurrences
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}

{#
  One scan of the model counting, per column, the rows where its violation predicate holds; one result row per
  column with at least one such row.
#}
{% macro column_violations(model, violation_by_column) %}
with violation_counts as (
    select
    {%- for column, violated in violation_by_column.items() %}
        sum(case when {{ violated }} then 1 else 0 end) as violations_{{ loop.index }}{{ "," if not loop.last }}
    {%- endfor %}
    from {{ model }}
)
{%- for column in violation_by_column %}
select '{{ column }}' as column_name, violations_{{ loop.index }} as violating_rows
from violation_counts
where violations_{{ loop.index }} > 0
{{ "union all" if not loop.last }}
{%- endfor %}
{% endmacro %}
