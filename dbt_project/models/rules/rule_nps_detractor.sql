-- A detractor (score <= var nps_detractor_max_score) answered within the last N days (var nps_lookback_days):
-- task for the account owner to call back. A score <= var nps_escalation_max_score escalates.
{%- set lookback_days = var('nps_lookback_days') %}

with recent_detractors as (
    select response_id, contact_id, score, comment, responded_at
    from {{ ref('stg_files__nps_responses') }}
    where score <= {{ var('nps_detractor_max_score') }}
        and responded_at > {{ as_of() }} - interval ({{ lookback_days }}) day
        and responded_at <= {{ as_of() }}
),

contacts as (
    select contact_id, account_id, first_name, last_name from {{ ref('stg_files__contacts') }}
),

accounts as (
    select account_id, name as account_name, owner_email from {{ ref('stg_files__accounts') }}
),

routed as (
    select recent_detractors.*, contacts.account_id, contacts.first_name, contacts.last_name,
           accounts.account_name, accounts.owner_email
    from recent_detractors
    join contacts using (contact_id)
    join accounts using (account_id)
),

rule_output as (
    select
        {{ rule_identity_columns() }},
        'nps_response' as record_type,
        response_id as record_id,
        contact_id,
        account_id,
        owner_email,
        responded_at as signal_at,
        response_id as signal_key,
        score <= {{ var('nps_escalation_max_score') }} as escalate,
        cast(json_object(
            'score', score,
            'comment', comment,
            'first_name', first_name,
            'last_name', last_name,
            'account_name', account_name,
            'responded_at', strftime(responded_at, '%Y-%m-%d %H:%M:%S'),
            'escalate', score <= {{ var('nps_escalation_max_score') }}
        ) as varchar) as reason,
        {{ rule_meta_columns() }}
    from routed
)

select * from rule_output
