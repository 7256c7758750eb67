"""The oracle for every rule: its condition stated once more as one plain DuckDB query over the raw files.

One job: given a contract folder written by scale_world.py, answer "which records should rule X fire for
as of T, routed to whom" without the dbt project: no staging, no intermediate models, no macros. Each
query reads the files itself, types the contract text with plain casts and drops the rows the generator
planted as broken (the world's clean rows are exactly the file's rows minus planted_broken.parquet). The
thresholds come from dbt_project.yml's vars, the only thing shared with the rule models.

The same queries, timed, are the benchmark's floor: the least work any engine must do to evaluate the rules
on these files. Their results are compared record for record with the `main.rule_<name>` relations a pass
built (the rule models, before journey context): record_id, contact_id, account_id, owner_email, signal_at,
signal_key and escalate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import yaml

from actionlayer.config import dbt_project_dir
from actionlayer.contract import OBJECTS, Kind

RULE_IDS = (
    "contract_renewal",
    "dormant_customer",
    "important_inquiry",
    "invoice_due_reminder",
    "nps_detractor",
    "overdue_invoice",
    "post_quote_followup",
    "ticket_reply_nudge",
)
COMPARED_COLUMNS = (
    "record_id",
    "contact_id",
    "account_id",
    "owner_email",
    "signal_at",
    "signal_key",
    "escalate",
)


def rule_vars() -> dict[str, Any]:
    """The rule thresholds from dbt_project.yml (the rule models read the same vars)."""
    project = yaml.safe_load((dbt_project_dir() / "dbt_project.yml").read_text(encoding="utf-8"))
    return dict(project.get("vars") or {})


def _clean(folder: Path, name: str) -> str:
    """A subquery: one object's clean rows from its file, typed with plain casts."""
    obj = OBJECTS[name]
    fmt = "parquet" if (folder / f"{name}.parquet").is_file() else "csv"
    path = folder / f"{name}.{fmt}"
    reader = (
        f"read_parquet('{path}')"
        if fmt == "parquet"
        else f"read_csv('{path}', all_varchar = true, header = true)"
    )
    planted = folder.parent / "planted_broken.parquet"
    # try_cast: DuckDB may evaluate the casts before the filter drops the planted rows; a clean row that
    # failed to cast would show up as a difference against the rule model, so nothing is hidden
    casts = ", ".join(
        f"try_cast({c.name} as {c.duckdb_type}) as {c.name}" for c in obj.columns if c.kind is not Kind.KEY
    )
    keys = ", ".join(c.name for c in obj.columns if c.kind is Kind.KEY)
    return (
        f"(select {keys}, {casts} from {reader} where {obj.key} is not null and {obj.key} not in "
        f"(select record_key from read_parquet('{planted}') where object = '{name}' and record_key is not null))"
    )


def _primary_contacts(folder: Path) -> str:
    # the account's earliest created contact, ties broken by contact_id
    return f"(select account_id, first(contact_id order by created_at, contact_id) as contact_id from {_clean(folder, 'contacts')} group by account_id)"


def oracle_queries(folder: Path, as_of: datetime) -> dict[str, str]:
    """rule_id -> one SQL statement returning COMPARED_COLUMNS for that rule's records."""
    v = rule_vars()
    t = f"timestamp '{as_of:%Y-%m-%d %H:%M:%S}'"

    def f(name: str) -> str:
        return _clean(folder, name)

    return {
        "contract_renewal": f"""
            select k.contract_id as record_id, p.contact_id, k.account_id, a.owner_email,
                k.end_at - interval ({v["renewal_window_days"]}) day as signal_at,
                strftime(k.end_at, '%Y-%m-%d') as signal_key, false as escalate
            from {f("contracts")} k
            join {f("accounts")} a on a.account_id = k.account_id
            join {_primary_contacts(folder)} p on p.account_id = k.account_id
            where k.status = 'active' and not k.auto_renew
              and k.end_at between {t} and {t} + interval ({v["renewal_window_days"]}) day""",
        "dormant_customer": f"""
            with last_seen as (
                select c.account_id, max(x.occurred_at) as at
                from {f("activities")} x join {f("contacts")} c on c.contact_id = x.contact_id
                where x.occurred_at <= {t} group by c.account_id
            )
            select a.account_id as record_id, p.contact_id, a.account_id, a.owner_email,
                coalesce(l.at, a.created_at) + interval ({v["dormant_min_days"]}) day as signal_at,
                strftime(coalesce(l.at, a.created_at), '%Y-%m-%d') as signal_key, false as escalate
            from {f("accounts")} a
            left join last_seen l on l.account_id = a.account_id
            join {_primary_contacts(folder)} p on p.account_id = a.account_id
            where coalesce(l.at, a.created_at) <= {t} - interval ({v["dormant_min_days"]}) day
              and a.account_id not in (select account_id from {f("deals")} where stage not in ('won', 'lost'))""",
        "important_inquiry": f"""
            select x.ticket_id as record_id, x.contact_id, x.account_id, a.owner_email,
                x.opened_at as signal_at, x.ticket_id as signal_key, x.priority = 'urgent' as escalate
            from {f("tickets")} x join {f("accounts")} a on a.account_id = x.account_id
            where x.status = 'open' and x.opened_at <= {t}
              and (x.priority in ('urgent', 'high') or a.tier = 'enterprise')""",
        "invoice_due_reminder": f"""
            select i.invoice_id as record_id, i.contact_id, i.account_id, a.owner_email,
                i.due_at - interval ({v["invoice_reminder_days_before_due"]}) day as signal_at,
                strftime(i.due_at, '%Y-%m-%d') as signal_key, false as escalate
            from {f("invoices")} i
            join {f("accounts")} a on a.account_id = i.account_id
            join {f("contacts")} c on c.contact_id = i.contact_id
            where i.status = 'open' and i.paid_at is null
              and i.due_at > {t} and i.due_at <= {t} + interval ({v["invoice_reminder_days_before_due"]}) day""",
        "nps_detractor": f"""
            select r.response_id as record_id, r.contact_id, c.account_id, a.owner_email,
                r.responded_at as signal_at, r.response_id as signal_key,
                r.score <= {v["nps_escalation_max_score"]} as escalate
            from {f("nps_responses")} r
            join {f("contacts")} c on c.contact_id = r.contact_id
            join {f("accounts")} a on a.account_id = c.account_id
            where r.score <= {v["nps_detractor_max_score"]}
              and r.responded_at > {t} - interval ({v["nps_lookback_days"]}) day and r.responded_at <= {t}""",
        "overdue_invoice": f"""
            select i.invoice_id as record_id, i.contact_id, i.account_id, a.owner_email,
                i.due_at + interval ({v["overdue_invoice_min_days"]}) day as signal_at,
                strftime(i.due_at, '%Y-%m-%d') as signal_key, false as escalate
            from {f("invoices")} i join {f("accounts")} a on a.account_id = i.account_id
            where i.status = 'open' and i.paid_at is null
              and i.due_at <= {t} - interval ({v["overdue_invoice_min_days"]}) day""",
        "post_quote_followup": f"""
            with touches as (
                select contact_id, deal_id, occurred_at from {f("activities")}
                where kind in ('email_out', 'email_in', 'call', 'meeting') and occurred_at <= {t}
            ),
            on_deal as (select deal_id, max(occurred_at) as at from touches where deal_id is not null group by deal_id),
            with_contact as (select contact_id, max(occurred_at) as at from touches group by contact_id)
            select d.deal_id as record_id, d.contact_id, d.account_id, d.owner_email,
                d.quote_sent_at + interval ({v["followup_min_days_since_quote"]}) day as signal_at,
                strftime(d.quote_sent_at, '%Y-%m-%d %H:%M:%S') as signal_key, false as escalate
            from {f("deals")} d
            left join on_deal od on od.deal_id = d.deal_id
            left join with_contact wc on wc.contact_id = d.contact_id
            where d.stage = 'quote_sent' and d.quote_sent_at is not null
              and d.quote_sent_at <= {t} - interval ({v["followup_min_days_since_quote"]}) day
              and (od.at is null or od.at <= d.quote_sent_at)
              and (wc.at is null or wc.at <= d.quote_sent_at)""",
        "ticket_reply_nudge": f"""
            select x.ticket_id as record_id, x.contact_id, x.account_id, a.owner_email,
                x.updated_at + interval ({v["ticket_reply_wait_hours"]}) hour as signal_at,
                x.ticket_id as signal_key, false as escalate
            from {f("tickets")} x
            join {f("accounts")} a on a.account_id = x.account_id
            join {f("contacts")} c on c.contact_id = x.contact_id
            where x.status = 'pending' and x.priority in ('low', 'normal')
              and x.updated_at <= {t} - interval ({v["ticket_reply_wait_hours"]}) hour
              and a.tier in ('smb', 'mid')""",
    }


@dataclass
class OracleRun:
    """The floor: seconds per rule query (each reading its files), and rows per rule."""

    seconds: dict[str, float]
    rows: dict[str, int]

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def run_oracles(folder: Path, as_of: datetime, store: duckdb.DuckDBPyConnection, tag: str) -> OracleRun:
    """Evaluate every oracle over `folder` into tables `oracle_<tag>_<rule>` of `store`, timing each."""
    seconds: dict[str, float] = {}
    rows: dict[str, int] = {}
    for rule_id, sql in oracle_queries(folder, as_of).items():
        started = time.perf_counter()
        store.execute(f"create or replace table oracle_{tag}_{rule_id} as {sql}")
        seconds[rule_id] = time.perf_counter() - started
        rows[rule_id] = store.execute(f"select count(*) from oracle_{tag}_{rule_id}").fetchone()[0]
    return OracleRun(seconds=seconds, rows=rows)


def rule_differences(
    store: duckdb.DuckDBPyConnection, tag: str, relation_schema: str
) -> dict[str, tuple[int, int]]:
    """rule_id -> (rows of the rule model, records in one and not the other), against `<schema>.rule_<id>`."""
    cols = ", ".join(COMPARED_COLUMNS)
    out: dict[str, tuple[int, int]] = {}
    for rule_id in RULE_IDS:
        model = f"{relation_schema}.rule_{rule_id}"
        oracle = f"oracle_{tag}_{rule_id}"
        rows = store.execute(f"select count(*) from {model}").fetchone()[0]
        diff = store.execute(
            f"select count(*) from ((select {cols} from {oracle} except all select {cols} from {model}) "
            f"union all (select {cols} from {model} except all select {cols} from {oracle}))"
        ).fetchone()[0]
        out[rule_id] = (rows, diff)
    return out
