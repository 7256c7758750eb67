-- A quote went out at least N days ago (var followup_min_days_since_quote) and nobody has emailed, called or met
-- the deal's contact since: propose a follow-up email to the contact, for the deal owner to approve.
{%- set min_days = var('followup_min_days_since_quote') %}

with quoted_deals as (
    select deal_id, account_id, contact_id, owner_email, name as deal_name, amount, currency, quote_sent_at
    from {{ ref('stg_files__deals') }}
    where stage = 'quote_sent'
        and quote_sent_at is not null
        and quote_sent_at <= {{ as_of() }} - interval ({{ min_days }}) day
),

last_touch as (
    select deal_id, last_touch_at from {{ ref('int_last_touch_by_deal') }}
),

contacts as (
    select contact_id, first_name, last_name from {{ ref('stg_files__contacts') }}
),

untouched_since_quote as (
    select quoted_deals.*, last_touch.last_touch_at, contacts.first_name, contacts.last_name
    from quoted_deals
    left join last_touch using (deal_id)
    left join contacts using (contact_id)
    -- a touch at the very moment of the quote is the quote itself, not a follow-up
    where last_touch.last_touch_at is null or last_touch.last_touch_at <= quoted_deals.quote_sent_at
),

rule_output as (
    select
        {{ rule_identity_columns() }},
        'deal' as record_type,
        deal_id as record_id,
        contact_id,
        account_id,
        owner_email,
        quote_sent_at + interval ({{ min_days }}) day as signal_at,
        strftime(quote_sent_at, '%Y-%m-%d %H:%M:%S') as signal_key,
        false as escalate,
        cast(json_object(
            'deal_name', deal_name,
            'first_name', first_name,
            'last_name', last_name,
            'amount', amount,
            'currency', currency,
            'quote_sent_at', strftime(quote_sent_at, '%Y-%m-%d %H:%M:%S'),
            'days_since_quote', date_diff('day', quote_sent_at, {{ as_of() }}),
            'last_touch_at', strftime(last_touch_at, '%Y-%m-%d %H:%M:%S')
        ) as varchar) as reason,
        {{ rule_meta_columns() }}
    from untouched_since_quote
)

select * from rule_output
