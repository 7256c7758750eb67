-- One row per rule, straight from each rule model's YAML config.meta (read from the dbt graph at compile time).
-- Marts evaluate outcomes from here (outcome_kind/window), the journey layer reads each ledger rule's audience,
-- and Python can read the message templates from here or from the manifest.
{%- set rules = [] -%}
{%- if execute -%}
    {%- for node in graph.nodes.values() | sort(attribute='name') -%}
        {%- if node.resource_type == 'model' and node.name.startswith('rule_') and (node.config.meta or {}).get('rule_id') -%}
            {%- do rules.append(node) -%}
        {%- endif -%}
    {%- endfor -%}
{%- endif %}

with catalog as (
{%- for node in rules %}
    {%- set meta = node.config.meta %}
    {%- set outcome = meta.get('outcome') or {} %}
    {%- set template = meta.get('template') or {} %}
    select
        {{ sql_literal(meta.get('rule_id'), 'varchar') }} as rule_id,
        {{ sql_literal(meta.get('version'), 'integer') }} as rule_version,
        {{ sql_literal(node.name, 'varchar') }} as model_name,
        {{ sql_literal(meta.get('maturity_level'), 'integer') }} as maturity_level,
        {{ sql_literal(meta.get('channel'), 'varchar') }} as channel,
        {{ sql_literal(meta.get('audience'), 'varchar') }} as audience,
        {{ sql_literal(meta.get('category'), 'varchar') }} as category,
        {{ sql_literal(meta.get('priority'), 'integer') }} as priority,
        {{ sql_literal(meta.get('cooldown_days'), 'integer') }} as cooldown_days,
        {{ sql_literal(meta.get('holdout_share'), 'double') }} as holdout_share,
        {{ sql_literal(meta.get('review_expiry_days'), 'integer') }} as review_expiry_days,
        {{ sql_literal(meta.get('recommended_action'), 'varchar') }} as recommended_action,
        {{ sql_literal(outcome.get('kind'), 'varchar') }} as outcome_kind,
        {{ sql_literal(outcome.get('window_days'), 'integer') }} as outcome_window_days,
        {{ sql_literal(outcome.get('description'), 'varchar') }} as outcome_description,
        {{ sql_literal(template.get('subject'), 'varchar') }} as template_subject,
        {{ sql_literal(template.get('body'), 'varchar') }} as template_body
    {% if not loop.last %}union all{% endif %}
{%- else %}
    select
        cast(null as varchar) as rule_id, cast(null as integer) as rule_version, cast(null as varchar) as model_name,
        cast(null as integer) as maturity_level, cast(null as varchar) as channel, cast(null as varchar) as audience,
        cast(null as varchar) as category, cast(null as integer) as priority, cast(null as integer) as cooldown_days,
        cast(null as double) as holdout_share, cast(null as integer) as review_expiry_days,
        cast(null as varchar) as recommended_action, cast(null as varchar) as outcome_kind,
        cast(null as integer) as outcome_window_days, cast(null as varchar) as outcome_description,
        cast(null as varchar) as template_subject, cast(null as varchar) as template_body
    where false
{%- endfor %}
)

select * from catalog
