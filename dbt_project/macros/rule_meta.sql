{#
  Rule metadata lives once, in the rule's YAML `config.meta` (models/rules/rule_<name>.yml). These macros turn it
  into literal SQL columns so a rule model never repeats it.

  How the meta reaches SQL (checked on dbt-core 1.11): at execution time `config.get('meta')` inside a model
  returns the YAML config.meta merged onto the node, so the compiled model carries the values as literals.
  Two exceptions, both handled here:
    * at parse time (execute is false) the YAML is not merged yet: columns render as typed nulls, nothing is checked;
    * inside a dbt unit test, `config` is the unit test's config and `graph` is empty, so the meta is not reachable:
      rule_id is derived from the tested model's name (rule_<rule_id>, enforced below for real runs) and every other
      meta column is null. Unit tests therefore assert rule_id and the rule's own columns, not the meta columns.
#}

{% macro rule_meta_keys() -%}
    {{ return([
        ('maturity_level', 'integer'),
        ('channel', 'varchar'),
        ('audience', 'varchar'),
        ('category', 'varchar'),
        ('priority', 'integer'),
        ('cooldown_days', 'integer'),
        ('holdout_share', 'double'),
        ('recommended_action', 'varchar'),
        ('review_expiry_days', 'integer'),
        ('outcome_kind', 'varchar'),
        ('outcome_window_days', 'integer'),
    ]) }}
{%- endmacro %}

{% macro rule_meta() -%}
    {#- The current rule model's meta as a flat dict (outcome.kind -> outcome_kind, ...). -#}
    {%- set raw = {} -%}
    {%- set is_unit_test = model is defined and model.get('resource_type') == 'unit_test' -%}
    {%- if execute and not is_unit_test -%}
        {%- set raw = config.get('meta') or {} -%}
    {%- endif -%}
    {%- set meta = {} -%}
    {%- for key, value in raw.items() -%}
        {%- do meta.update({key: value}) -%}
    {%- endfor -%}
    {%- set outcome = raw.get('outcome') or {} -%}
    {%- do meta.update({'outcome_kind': outcome.get('kind'), 'outcome_window_days': outcome.get('window_days'),
                        'outcome_description': outcome.get('description')}) -%}
    {%- if is_unit_test -%}
        {%- set tested = (model.get('tested_node_unique_id') or '').split('.')[-1] -%}
        {%- do meta.update({'rule_id': tested[5:] if tested.startswith('rule_') else tested}) -%}
    {%- elif execute -%}
        {%- set required = ['rule_id', 'version', 'maturity_level', 'channel', 'audience', 'category', 'priority',
                            'cooldown_days', 'holdout_share', 'review_expiry_days', 'recommended_action',
                            'outcome', 'template'] -%}
        {%- for key in required -%}
            {%- if raw.get(key) is none -%}
                {{ exceptions.raise_compiler_error("rule model " ~ model.name ~ ": config.meta." ~ key ~ " is missing in its YAML") }}
            {%- endif -%}
        {%- endfor -%}
        {%- if model.name != 'rule_' ~ raw['rule_id'] -%}
            {{ exceptions.raise_compiler_error("rule model " ~ model.name ~ " must be named rule_" ~ raw['rule_id']) }}
        {%- endif -%}
        {%- if raw['audience'] not in ['contact', 'owner'] or raw['channel'] not in ['email', 'task', 'notify'] -%}
            {{ exceptions.raise_compiler_error("rule model " ~ model.name ~ ": audience must be contact|owner and channel email|task|notify") }}
        {%- endif -%}
        {%- if outcome.get('kind') not in ['deal_advanced', 'invoice_paid', 'inbound_activity', 'ticket_closed'] -%}
            {{ exceptions.raise_compiler_error("rule model " ~ model.name ~ ": unknown outcome kind " ~ outcome.get('kind')) }}
        {%- endif -%}
    {%- endif -%}
    {{ return(meta) }}
{%- endmacro %}

{% macro rule_identity_columns() -%}
    {%- set meta = rule_meta() -%}
    {{ sql_literal(meta.get('rule_id'), 'varchar') }} as rule_id,
    {{ sql_literal(meta.get('version'), 'integer') }} as rule_version
{%- endmacro %}

{% macro rule_meta_columns() -%}
    {%- set meta = rule_meta() -%}
    {%- for key, data_type in rule_meta_keys() %}
    {{ sql_literal(meta.get(key), data_type) }} as {{ key }}{{ ',' if not loop.last }}
    {%- endfor %}
{%- endmacro %}

{% macro rule_output_columns() -%}
    {#- Every rule model selects exactly these, in this order (core columns, then meta columns). -#}
    {%- set columns = ['rule_id', 'rule_version', 'record_type', 'record_id', 'contact_id', 'account_id',
                       'owner_email', 'signal_at', 'signal_key', 'escalate', 'reason'] -%}
    {%- for key, data_type in rule_meta_keys() -%}
        {%- do columns.append(key) -%}
    {%- endfor -%}
    {{ return(columns) }}
{%- endmacro %}
