"""Candidates and rules for proposal and dispatch tests: rule meta as analysts write it, and candidate
rows in the shape of main.action_candidates, written into a real DuckDB file."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb

AS_OF = datetime(2026, 9, 10, 9)


def rule_meta(rule_id: str, level: int, **overrides):
    meta = {
        "rule_id": rule_id,
        "version": 2,
        "maturity_level": level,
        "channel": "email",
        "audience": "contact",
        "category": "sales",
        "priority": 50,
        "cooldown_days": 14,
        "holdout_share": 0.1,
        "review_expiry_days": 3,
        "recommended_action": "Send a follow-up",
        "template": {
            "subject": "About [[ deal_name ]]",
            "body": "Hi [[ first_name ]], [[ deal_name ]] is waiting.",
        },
        "outcome": {"kind": "deal_advanced", "window_days": 14},
    }
    if level >= 4:
        meta["guardrails"] = {"daily_cap": 100, "blast_radius": {"factor": 3, "floor": 20}}
    meta.update(overrides)
    return meta


def candidate(
    action_id: str,
    rule_id: str,
    status: str = "eligible",
    journey_reason: str | None = None,
    level: int = 3,
    **extra,
):
    row = {
        "action_id": action_id,
        "rule_id": rule_id,
        "rule_version": 2,
        "maturity_level": level,
        "record_type": "deal",
        "record_id": f"D-{action_id}",
        "contact_id": f"C-{action_id}",
        "account_id": "A1",
        "owner_email": "owner@example.com",
        "recipient_email": f"{action_id}@customer.example",
        "channel": "email",
        "audience": "contact",
        "category": "sales",
        "priority": 50,
        "signal_at": AS_OF - timedelta(days=1),
        "reason": '{"deal_name": "Big deal", "days_since_quote": 8}',
        "escalate": False,
        "recommended_action": "Send a follow-up",
        "holdout": status == "held_out",
        "journey_status": status,
        "journey_reason": journey_reason,
        "contact_first_name": "Ada",
        "contact_last_name": "Lovelace",
        "account_name": "Acme",
        "as_of": AS_OF,
    }
    row.update(extra)
    return row


def write_candidates(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    con.execute("drop table if exists main.action_candidates")
    import pandas as pd

    frame = pd.DataFrame(rows or [candidate("template", "followup")])  # noqa: F841  (read by name below)
    con.execute("create table main.action_candidates as select * from frame")
    if not rows:
        con.execute("delete from main.action_candidates")
