-- Every rule's output in one relation, with the deterministic action id.
-- Adding a rule = models/rules/rule_<name>.sql + rule_<name>.yml (meta + unit tests) + ONE line in this list.
with unioned as (
    {{ union_rules([
        'rule_post_quote_followup',
        'rule_overdue_invoice',
        'rule_nps_detractor',
        'rule_important_inquiry',
        'rule_contract_renewal',
        'rule_dormant_customer',
        'rule_invoice_due_reminder',
        'rule_ticket_reply_nudge',
    ]) }}
),

keyed as (
    select
        {{ action_id('rule_id', 'record_type', 'record_id', 'signal_key') }} as action_id,
        *
    from unioned
),

-- the quality gate: a rule that reads an object whose latest load was refused builds no candidates
blocked_rules as (
    select rule_id from {{ ref('int_rule_gate') }} where blocked
),

gated as (
    select * from keyed
    where rule_id not in (select rule_id from blocked_rules)
)

select * from gated
