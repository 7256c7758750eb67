{#
  The per-action columns fct_outcomes and fct_actions both take from the ledger (use inside GROUP BY action_id):
  the action's identity from its first event, and the moments that open its outcome window.
#}
{% macro action_identity_columns() -%}
        arg_min(rule_id, seq) as rule_id,
        arg_min(record_type, seq) as record_type,
        arg_min(record_id, seq) as record_id,
        arg_min(contact_id, seq) as contact_id,
        arg_min(account_id, seq) as account_id,
        arg_min(owner_email, seq) as owner_email,
        arg_min(signal_at, seq) as signal_at,
        arg_min(channel, seq) as channel,
        min(occurred_at) filter (where event_type = 'proposed') as proposed_at,
        min(occurred_at) filter (where event_type = 'delivered') as delivered_at,
        min(occurred_at) filter (where event_type = 'held_out') as held_out_at,
        -- an escalated action is never held out, so it is left out of both arms of the uplift comparison
        coalesce(bool_or(event_type = 'proposed' and json_extract_string(details, '$.escalated') = 'true'), false)
            as escalated
{%- endmacro %}
