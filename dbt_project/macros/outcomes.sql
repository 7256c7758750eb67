{#
  The outcome evidence for a set of windows, read from every version the System of Record has shown.

  `windows` names a relation or CTE with columns window_id, outcome_kind, record_type, record_id, contact_id,
  window_starts_at, window_ends_at. The macro expands to a SELECT of (window_id, outcome_at): the first moment
  the outcome happened in (window_starts_at, window_ends_at], as far as the SoR had told us by as_of().

  Evidence comes from hist.* (every version loaded up to as_of, so a deal that reached negotiation and was later
  lost still counts, and an outcome recorded late counts once it arrives, at the time it happened) and from the
  current staged load (so a load without history still has evidence). Outcome kinds:
    deal_advanced     the deal's stage is negotiation or won, changed inside the window
    invoice_paid      the invoice's paid_at is inside the window
    inbound_activity  an email_in, call or meeting with the contact inside the window
    ticket_closed     the ticket is closed and its updated_at (the contract's closing time) is inside the window
#}
{% macro outcome_evidence(windows) -%}
select window_id, min(outcome_at) as outcome_at
from (
    select w.window_id, d.stage_changed_at as outcome_at
    from {{ windows }} as w
    join (
        {{ _hist_versions('deals', 'deal_id, stage, stage_changed_at', '') }}
        select deal_id, stage, stage_changed_at from {{ ref('stg_files__deals') }}
    ) as d on d.deal_id = w.record_id
    where w.outcome_kind = 'deal_advanced' and w.record_type = 'deal'
        and d.stage in ('negotiation', 'won')
        and d.stage_changed_at > w.window_starts_at and d.stage_changed_at <= w.window_ends_at

    union all

    select w.window_id, i.paid_at as outcome_at
    from {{ windows }} as w
    join (
        {{ _hist_versions('invoices', 'invoice_id, paid_at', 'and paid_at is not null') }}
        select invoice_id, paid_at from {{ ref('stg_files__invoices') }} where paid_at is not null
    ) as i on i.invoice_id = w.record_id
    where w.outcome_kind = 'invoice_paid' and w.record_type = 'invoice'
        and i.paid_at > w.window_starts_at and i.paid_at <= w.window_ends_at

    union all

    select w.window_id, a.occurred_at as outcome_at
    from {{ windows }} as w
    join (
        {{ _hist_versions('activities', 'contact_id, kind, occurred_at', '') }}
        select contact_id, kind, occurred_at from {{ ref('stg_files__activities') }}
    ) as a on a.contact_id = w.contact_id
    where w.outcome_kind = 'inbound_activity'
        and a.kind in ('email_in', 'call', 'meeting')
        and a.occurred_at > w.window_starts_at and a.occurred_at <= w.window_ends_at

    union all

    select w.window_id, t.updated_at as outcome_at
    from {{ windows }} as w
    join (
        {{ _hist_versions('tickets', 'ticket_id, status, updated_at', '') }}
        select ticket_id, status, updated_at from {{ ref('stg_files__tickets') }}
    ) as t on t.ticket_id = w.record_id
    where w.outcome_kind = 'ticket_closed' and w.record_type = 'ticket'
        and t.status = 'closed'
        and t.updated_at > w.window_starts_at and t.updated_at <= w.window_ends_at
) as evidence
where outcome_at <= {{ as_of() }}
group by window_id
{%- endmacro %}


{#- Versions of a hist.* object loaded up to as_of, followed by UNION ALL; nothing when the history table does
    not exist (a build that never went through a load, e.g. a hand run on raw tables only). -#}
{% macro _hist_versions(object_name, columns, extra_condition) -%}
    {%- set relation = adapter.get_relation(database=target.database, schema='hist', identifier=object_name)
        if execute else none -%}
    {%- if relation is not none or not execute -%}
        select {{ columns }} from {{ source('hist', object_name) }}
        where _valid_from <= {{ as_of() }} {{ extra_condition }}
        union all
    {%- endif -%}
{%- endmacro %}
