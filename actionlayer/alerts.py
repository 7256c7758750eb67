"""Operational alerts for people who run Actionlayer: a guardrail held a rule's automatic actions, an
action escalated. Stored in `ops.alerts` (one row per alert id, so raising it again adds nothing) and
sent through the sink of the `alerts` channel (default: the file outbox) by the dispatch pass.

Unlike the ledger, `ops.alerts` is operational state: the send result is written onto the alert row.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa

from action_sinks.base import OutboundMessage, Sink

log = logging.getLogger(__name__)

ALERTS_CHANNEL = "alerts"
_DDL = """
create schema if not exists ops;
create table if not exists ops.alerts (
    alert_id   varchar primary key,
    raised_at  timestamp not null,
    kind       varchar not null,
    rule_id    varchar,
    recipient  varchar not null,
    subject    varchar not null,
    message    varchar not null,
    sent_at    timestamp,
    send_result varchar
);
"""


@dataclass(frozen=True)
class Alert:
    kind: str  # blast_radius | daily_cap | escalation
    rule_id: str | None
    recipient: str
    subject: str
    message: str
    dedupe: str  # what makes two alerts the same (e.g. the rule and the day)

    @property
    def alert_id(self) -> str:
        return hashlib.md5(f"{self.kind}|{self.rule_id}|{self.dedupe}".encode()).hexdigest()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_DDL)


def raise_alerts(con: duckdb.DuckDBPyConnection, alerts: list[Alert], as_of: datetime) -> int:
    """Record alerts (an alert raised before is not raised again); returns how many are new."""
    ensure_schema(con)
    if not alerts:
        return 0
    columns = {
        "alert_id": [alert.alert_id for alert in alerts],
        "kind": [alert.kind for alert in alerts],
        "rule_id": [alert.rule_id for alert in alerts],
        "recipient": [alert.recipient for alert in alerts],
        "subject": [alert.subject for alert in alerts],
        "message": [alert.message for alert in alerts],
        "position": list(range(len(alerts))),
    }
    frame = pa.table(
        {
            name: pa.array(values, type=pa.int64() if name == "position" else pa.string())
            for name, values in columns.items()
        }
    )
    con.register("_alerts_batch", frame)
    try:
        # one insert for the whole batch; an alert named twice in it is raised once (the first, as before)
        inserted = con.execute(
            """insert into ops.alerts (alert_id, raised_at, kind, rule_id, recipient, subject, message)
            select alert_id, ?, kind, rule_id, recipient, subject, message
            from _alerts_batch
            qualify row_number() over (partition by alert_id order by position) = 1
            order by position
            on conflict do nothing""",
            [as_of],
        ).fetchall()
    finally:
        con.unregister("_alerts_batch")
    return int(inserted[0][0]) if inserted else 0


def send_pending(con: duckdb.DuckDBPyConnection, sinks: Mapping[str, Sink], as_of: datetime) -> list[str]:
    """Send every unsent alert through the `alerts` channel; returns one line per alert sent or failed.
    A failed alert stays unsent and is tried again by the next dispatch."""
    ensure_schema(con)
    rows = con.execute(
        "select alert_id, kind, rule_id, recipient, subject, message from ops.alerts "
        "where sent_at is null order by raised_at, alert_id"
    ).fetchall()
    if not rows:
        return []
    sink = sinks[ALERTS_CHANNEL]
    lines = []
    for alert_id, kind, rule_id, recipient, subject, message in rows:
        outbound = OutboundMessage(
            action_id=f"alert-{alert_id}",
            channel=ALERTS_CHANNEL,
            recipient=recipient,
            subject=subject,
            body=message,
            metadata={"kind": kind, "rule_id": rule_id},
        )
        try:
            result = sink.send(outbound)
        except Exception as exc:  # an alert must never stop dispatch; it is retried next pass
            log.warning("alert %s could not be sent", alert_id, exc_info=True)
            lines.append(
                f"alert {kind} for {rule_id} not sent ({type(exc).__name__}: {exc}); retried next pass"
            )
            continue
        if result.ok:
            con.execute(
                "update ops.alerts set sent_at = ?, send_result = ? where alert_id = ?",
                [as_of, result.detail, alert_id],
            )
            lines.append(f"alert sent to {recipient}: {subject}")
        else:
            con.execute("update ops.alerts set send_result = ? where alert_id = ?", [result.detail, alert_id])
            lines.append(f"alert {kind} for {rule_id} not sent: {result.detail}; retried next pass")
    return lines
