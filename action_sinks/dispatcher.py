"""Sends approved actions through their channel's sink, ledger first, and records every outcome.

For each due action: `sending` is appended and committed before the sink is called, then `delivered`
or `failed` is appended and committed. A crash between the two leaves the action in `sending`, which
the next dispatch resolves: an idempotent sink (the file outbox) is simply used again, a
non-idempotent one (SMTP) gets an `unknown` event for a person to check, because re-sending could
put a second copy in a customer's inbox.

Due actions: current state `approved` at maturity level 3 or higher (a level-2 approval is for the
owner to act on by hand), `failed` with `retryable` and fewer than `max_attempts` attempts, and
interrupted `sending`. Dispatch assumes it is the only writer (DuckDB allows one writer process, and
the orchestration serialises writers), so a `sending` seen at the start is an interrupted one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from action_sinks.base import OutboundMessage, SendResult, Sink
from action_sinks.registry import build_sinks
from actionlayer import ledger
from actionlayer.config import parse_as_of

log = logging.getLogger(__name__)

ACTOR = "dispatcher"
MIN_DISPATCH_LEVEL = 3
NEXT_AFTER_DELIVERY = "await outcome"
NEXT_RETRY = "retry on next dispatch"
NEXT_PERSON = "needs a person"


@dataclass(frozen=True)
class DispatchFailure:
    """One action that did not go out in this pass, and why."""

    action_id: str
    channel: str
    recipient: str
    attempt: int
    reason: str
    retryable: bool
    next_action: str


@dataclass
class DispatchReport:
    """What one dispatch pass did. `retryable` counts failures the next dispatch will try again."""

    as_of: datetime
    due: int = 0
    delivered: int = 0
    failed: int = 0
    retryable: int = 0
    unknown: int = 0
    skipped: int = 0
    by_channel: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[DispatchFailure] = field(default_factory=list)

    def _count(self, channel: str, outcome: str) -> None:
        self.by_channel.setdefault(channel or "(none)", Counter())[outcome] += 1

    def summary_lines(self) -> list[str]:
        needs_person = self.failed - self.retryable
        lines = [
            f"dispatch as of {self.as_of:%Y-%m-%d %H:%M:%S}: {self.due} due, {self.delivered} delivered, "
            f"{self.failed} failed ({self.retryable} will be retried, {needs_person} need a person)"
            + (f", {self.unknown} unknown after an interrupted send" if self.unknown else "")
            + (f", {self.skipped} already handled elsewhere" if self.skipped else "")
        ]
        for channel, counts in sorted(self.by_channel.items()):
            parts = ", ".join(f"{counts[o]} {o}" for o in ("delivered", "failed", "unknown") if counts[o])
            lines.append(f"  {channel}: {parts}")
        for failure in self.failures:
            lines.append(
                f"  failed {failure.action_id} ({failure.channel} → "
                f"{failure.recipient or '(no recipient)'}, attempt {failure.attempt}): {failure.reason} "
                f"[{failure.next_action}]"
            )
        return lines


def _commit(con: duckdb.DuckDBPyConnection, event: ledger.LedgerEvent) -> int:
    """Append one event in its own transaction, so it is durable before the next step runs."""
    try:
        con.begin()
    except duckdb.TransactionException as exc:
        raise RuntimeError(
            "dispatch commits each ledger event itself and cannot run inside an open transaction; "
            f"nothing was sent for action {event.action_id}"
        ) from exc
    try:
        inserted = ledger.append(con, [event])
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return inserted


def _due(rows: list[dict[str, Any]], max_attempts: int) -> list[dict[str, Any]]:
    due = []
    for row in rows:
        level = row.get("maturity_level")
        if level is None or level < MIN_DISPATCH_LEVEL:
            continue
        state = row["event_type"]
        retry = state == "failed" and bool(row.get("retryable")) and (row.get("attempt") or 1) < max_attempts
        if state in {"approved", "sending"} or retry:
            due.append(row)
    return due


def _message(row: dict[str, Any], channel: str, recipient: str) -> OutboundMessage:
    proposed_at = row.get("proposed_at")
    metadata = {
        "rule_id": row.get("rule_id"),
        "rule_version": row.get("rule_version"),
        "maturity_level": row.get("maturity_level"),
        "record_type": row.get("record_type"),
        "record_id": row.get("record_id"),
        "contact_id": row.get("contact_id"),
        "account_id": row.get("account_id"),
        "recommended_action": row.get("recommended_action"),
        "proposed_at": proposed_at.isoformat() if isinstance(proposed_at, datetime) else proposed_at,
    }
    return OutboundMessage(
        action_id=row["action_id"],
        channel=channel,
        recipient=recipient,
        subject=row.get("proposed_subject") or "",
        body=row.get("proposed_body") or "",
        owner_email=row.get("owner_email"),
        metadata=metadata,
    )


def _call_sink(sink: Sink, message: OutboundMessage) -> SendResult:
    try:
        return sink.send(message)
    except Exception as exc:
        sink_name = getattr(sink, "name", type(sink).__name__)
        log.warning(
            "sink %s raised for action %s; recorded as failed", sink_name, message.action_id, exc_info=True
        )
        # whether a non-idempotent sink got the message out before raising is unknown: no automatic retry
        return SendResult(
            ok=False,
            retryable=bool(getattr(sink, "idempotent", False)),
            detail=f"sink {sink_name} raised {type(exc).__name__}: {exc}",
        )


class _Pass:
    """State of one dispatch pass (kept together so each step stays a short method)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        as_of: datetime,
        sinks: Mapping[str, Sink],
        max_attempts: int,
        report: DispatchReport,
    ) -> None:
        self.con = con
        self.as_of = as_of
        self.sinks = sinks
        self.max_attempts = max_attempts
        self.report = report

    def fail(self, row: dict[str, Any], attempt: int, reason: str, retryable: bool, **details: Any) -> None:
        if retryable and attempt < self.max_attempts:
            next_action = NEXT_RETRY
        elif retryable:
            next_action = f"{NEXT_PERSON}: gave up after {attempt} attempts"
        else:
            next_action = NEXT_PERSON
        event = ledger.next_event(
            row,
            "failed",
            self.as_of,
            ACTOR,
            attempt=attempt,
            result=reason,
            retryable=retryable,
            next_action=next_action,
            details=details or None,
        )
        _commit(self.con, event)
        self.report.failed += 1
        self.report.retryable += int(next_action == NEXT_RETRY)
        self.report._count(row.get("channel") or "", "failed")
        self.report.failures.append(
            DispatchFailure(
                action_id=row["action_id"],
                channel=row.get("channel") or "",
                recipient=(row.get("proposed_recipient") or row.get("recipient") or ""),
                attempt=attempt,
                reason=reason,
                retryable=retryable,
                next_action=next_action,
            )
        )

    def mark_unknown(
        self, row: dict[str, Any], sink_name: str, attempt: int | None = None, reason: str | None = None
    ) -> None:
        attempt = attempt or row.get("attempt") or 1
        event = ledger.next_event(
            row,
            "unknown",
            self.as_of,
            ACTOR,
            attempt=attempt,
            result=reason
            or (
                f"dispatch was interrupted after recording attempt {attempt} as sending through {sink_name}; "
                "whether the message went out is unknown, so it is not sent again automatically"
            ),
            next_action=f"{NEXT_PERSON}: check whether the recipient received it",
            details={"sink": sink_name},
        )
        _commit(self.con, event)
        self.report.unknown += 1
        self.report._count(row.get("channel") or "", "unknown")

    def run_one(self, row: dict[str, Any]) -> None:
        channel = (row.get("channel") or "").strip()
        recipient = (row.get("proposed_recipient") or row.get("recipient") or "").strip()
        sink = self.sinks.get(channel) if channel else None
        sink_name = getattr(sink, "name", "none")
        if row["event_type"] == "sending" and (sink is None or not sink.idempotent):
            self.mark_unknown(row, sink_name)
            return
        attempt = (row.get("attempt") or 0) + 1
        if not recipient:
            self.fail(row, attempt, f"no recipient for channel {channel or '(none)'}; nothing sent", False)
            return
        if not channel:
            self.fail(row, attempt, "action has no channel; nothing sent", False)
            return
        if row.get("proposed_subject") is None and row.get("proposed_body") is None:
            # e.g. the template failed to render at proposal time: an empty message must not go out
            self.fail(
                row, attempt, "action has no proposed message (subject and body missing); nothing sent", False
            )
            return
        if sink is None:
            self.fail(row, attempt, f"no sink configured for channel {channel!r}; nothing sent", True)
            return
        message = _message(row, channel, recipient)
        sending = ledger.next_event(
            row,
            "sending",
            self.as_of,
            ACTOR,
            attempt=attempt,
            recipient=recipient,
            message_subject=message.subject,
            message_body=message.body,
            details={"sink": sink_name},
        )
        # ledger first: once this is committed, a crash during the send is visible, never silent
        if _commit(self.con, sending) == 0:
            self.report.skipped += 1
            return
        result = _call_sink(sink, message)
        if result.ok:
            delivered = ledger.next_event(
                row,
                "delivered",
                self.as_of,
                ACTOR,
                attempt=attempt,
                recipient=recipient,
                result=result.detail,
                next_action=NEXT_AFTER_DELIVERY,
                details={"sink": sink_name, "external_id": result.external_id},
            )
            _commit(self.con, delivered)
            self.report.delivered += 1
            self.report._count(channel, "delivered")
        elif result.uncertain and not sink.idempotent:
            self.mark_unknown(
                row,
                sink_name,
                attempt,
                f"{result.detail}; the channel may have acted on it, so it is not sent again automatically",
            )
        else:
            extra = {"external_id": result.external_id} if result.external_id else {}
            self.fail(row, attempt, result.detail, result.retryable, sink=sink_name, **extra)


def dispatch(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    sinks: Mapping[str, Sink] | None = None,
    max_attempts: int = 3,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DispatchReport:
    """Send every due action once through its channel's sink; returns what happened.

    `sinks` maps channel → sink (default: `registry.build_sinks()`); `progress(done, total)` is called
    after each action. Must not be called inside an open transaction: each event is committed alone.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    as_of = parse_as_of(as_of)
    if sinks is None:
        sinks = build_sinks()
    ledger.ensure_schema(con)
    rows = ledger.states(con, event_types=["approved", "failed", "sending"])
    due = _due(rows, max_attempts)
    if limit is not None:
        due = due[: max(limit, 0)]
    report = DispatchReport(as_of=as_of, due=len(due))
    one_pass = _Pass(con, as_of, sinks, max_attempts, report)
    for done, row in enumerate(due, start=1):
        one_pass.run_one(row)
        if progress is not None:
            progress(done, len(due))
    return report
