"""Operational alerts for people who run Actionlayer: a guardrail held a rule's automatic actions, an
action escalated. Stored in `ops.alerts` (one row per alert id, so raising it again adds nothing) and
sent through the sink of the `alerts` channel (default: the file outbox) by the dispatch pass.

Unlike the ledger, `ops.alerts` is operational state: the send result is written onto the alert row.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa

from action_sinks.base import OutboundMessage, SendResult, Sink

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


# alerts sent before their results are written in one statement; a crash in between re-sends at most
# one chunk, which an idempotent sink (the file outbox replaces the same file) absorbs
SEND_CHUNK = 1024
# parallel sends for an idempotent alerts sink, as the dispatcher does for its channels; one otherwise
IDEMPOTENT_WORKERS = 8


def _send_one(sink: Sink, outbound: OutboundMessage) -> SendResult | Exception:
    try:
        return sink.send(outbound)
    except Exception as exc:  # an alert must never stop dispatch; it is retried next pass
        log.warning("alert %s could not be sent", outbound.action_id.removeprefix("alert-"), exc_info=True)
        return exc


def _record_results(
    con: duckdb.DuckDBPyConnection, results: list[tuple[str, bool, str]], as_of: datetime
) -> None:
    """One update for a chunk of send results: a sent alert gets `sent_at` and its result, a failed one only
    its result (it stays unsent and is tried again next pass)."""
    if not results:
        return
    frame = pa.table(
        {
            "alert_id": pa.array([alert_id for alert_id, _, _ in results], type=pa.string()),
            "ok": pa.array([ok for _, ok, _ in results], type=pa.bool_()),
            "detail": pa.array([detail for _, _, detail in results], type=pa.string()),
        }
    )
    con.register("_alert_results", frame)
    try:
        con.execute(
            """update ops.alerts
            set sent_at = case when r.ok then ?::timestamp else ops.alerts.sent_at end, send_result = r.detail
            from _alert_results as r
            where ops.alerts.alert_id = r.alert_id""",
            [as_of],
        )
    finally:
        con.unregister("_alert_results")


def send_pending(con: duckdb.DuckDBPyConnection, sinks: Mapping[str, Sink], as_of: datetime) -> list[str]:
    """Send every unsent alert through the `alerts` channel; returns one line per alert sent or failed.
    A failed alert stays unsent and is tried again by the next dispatch.

    An idempotent sink gets the alerts in chunks, several at once, and each chunk's results are written in
    one statement; a non-idempotent one gets them one at a time, each result written before the next send
    (a crash can then repeat at most one alert)."""
    ensure_schema(con)
    rows = con.execute(
        "select alert_id, kind, rule_id, recipient, subject, message from ops.alerts "
        "where sent_at is null order by raised_at, alert_id"
    ).fetchall()
    if not rows:
        return []
    sink = sinks[ALERTS_CHANNEL]
    idempotent = bool(getattr(sink, "idempotent", False))
    chunk = SEND_CHUNK if idempotent else 1
    lines: list[str] = []
    with ThreadPoolExecutor(IDEMPOTENT_WORKERS if idempotent else 1, thread_name_prefix="alerts") as pool:
        for start in range(0, len(rows), chunk):
            batch = rows[start : start + chunk]
            outbound = [
                OutboundMessage(
                    action_id=f"alert-{alert_id}",
                    channel=ALERTS_CHANNEL,
                    recipient=recipient,
                    subject=subject,
                    body=message,
                    metadata={"kind": kind, "rule_id": rule_id},
                )
                for alert_id, kind, rule_id, recipient, subject, message in batch
            ]
            sent = list(pool.map(lambda message: _send_one(sink, message), outbound))
            results: list[tuple[str, bool, str]] = []
            for (alert_id, kind, rule_id, recipient, subject, _), result in zip(batch, sent, strict=True):
                if isinstance(result, Exception):
                    lines.append(
                        f"alert {kind} for {rule_id} not sent ({type(result).__name__}: {result}); "
                        "retried next pass"
                    )
                    continue
                results.append((alert_id, result.ok, result.detail))
                if result.ok:
                    lines.append(f"alert sent to {recipient}: {subject}")
                else:
                    lines.append(f"alert {kind} for {rule_id} not sent: {result.detail}; retried next pass")
            _record_results(con, results, as_of)
    return lines
