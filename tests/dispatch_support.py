"""Ledger set-up shared by the dispatch and channel tests: actions seeded the way the engine and the
reviewers write them, into a real DuckDB ledger."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

import duckdb

from actionlayer import ledger

AS_OF = datetime(2026, 11, 23, 9, 0)


def seed(
    con: duckdb.DuckDBPyConnection,
    action_id: str,
    *,
    level: int = 4,
    channel: str = "email",
    recipient: str | None = "ada@customer.example",
    subject: str | None = "Following up on the Atlas quote",
    body: str | None = "Hi Ada,\n\nDid the quote work for you?\n",
    approve: bool = True,
) -> None:
    """proposed (→ pending_review for levels 2-3) → approved, as the engine and reviewers write them."""
    proposed_at = AS_OF - timedelta(days=1)
    proposed = ledger.LedgerEvent(
        action_id=action_id,
        event_type="proposed",
        occurred_at=proposed_at,
        actor="engine",
        rule_id="post_quote_followup",
        rule_version=1,
        maturity_level=level,
        record_type="deal",
        record_id=f"deal-{action_id}",
        contact_id="contact-1",
        account_id="account-1",
        owner_email="owner@seller.example",
        signal_at=proposed_at - timedelta(days=3),
        holdout=False,
        reason=json.dumps({"days_since_quote": 3}),
        recommended_action="Send a follow-up email about the quote",
        channel=channel,
        recipient=recipient,
        message_subject=subject,
        message_body=body,
    )
    ledger.append(con, [proposed])
    state = ledger.states(con, action_ids=[action_id])[0]
    if level in (2, 3):
        ledger.append(con, [ledger.next_event(state, "pending_review", proposed_at, "engine")])
        state = ledger.states(con, action_ids=[action_id])[0]
    if approve:
        actor = "owner@seller.example" if level in (2, 3) else "auto:post_quote_followup"
        ledger.append(con, [ledger.next_event(state, "approved", proposed_at, actor)])


def event_types(con: duckdb.DuckDBPyConnection, action_id: str) -> list[str]:
    return [row["event_type"] for row in ledger.trail(con, action_id)]


def ledger_rows(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute("select * from ops.action_ledger order by seq").fetchall()


def state_of(con: duckdb.DuckDBPyConnection, action_id: str) -> dict[str, Any]:
    return ledger.states(con, action_ids=[action_id])[0]


def seed_bulk(
    con: duckdb.DuckDBPyConnection, channel: str, count: int, recipient: str, *, body: str | None = None
) -> list[str]:
    """`count` level-4 actions on one channel, proposed and auto-approved, in two ledger batches
    (per-action seeding is slow); used by the crash test and the dispatch benchmark."""
    proposed_at = AS_OF - timedelta(days=1)
    proposals = [
        ledger.LedgerEvent(
            action_id=f"{channel}-{n:03d}",
            event_type="proposed",
            occurred_at=proposed_at,
            actor="engine",
            rule_id="post_quote_followup",
            rule_version=1,
            maturity_level=4,
            record_type="deal",
            record_id=f"deal-{channel}-{n}",
            contact_id=f"contact-{n}",
            account_id="account-1",
            owner_email="owner@seller.example",
            signal_at=proposed_at - timedelta(days=3),
            holdout=False,
            reason="{}",
            recommended_action="Follow up",
            channel=channel,
            recipient=recipient,
            message_subject=f"Following up {n}",
            message_body=body or "Hi,\n\nDid the quote work for you?\n",
        )
        for n in range(count)
    ]
    ledger.append(con, proposals)
    ledger.append(
        con,
        [
            ledger.next_event(asdict(p), "approved", proposed_at, "auto:post_quote_followup")
            for p in proposals
        ],
    )
    return [p.action_id for p in proposals]


def event_details(state: dict) -> dict:
    """An event's `details` JSON as a dict (empty when it has none)."""
    return json.loads(state["details"]) if state.get("details") else {}


@contextmanager
def token_sinks(
    sink_class: type, token_env: str, token: str, sleep: Callable[[float], None]
) -> Iterator[Callable]:
    """A builder of token-HTTP sinks (Slack, LINE) with a recorded sleep, so backoff and Retry-After cost
    no test time; every sink built is closed afterwards."""
    made: list = []

    def build(base_url: str, *, token: str = token, **options: object):
        options = {"timeout": 2.0, "max_attempts": 3, **options}
        sink = sink_class(token_env, base_url, environ={token_env: token}, sleep=sleep, **options)
        made.append(sink)
        return sink

    yield build
    for sink in made:
        sink.close()
