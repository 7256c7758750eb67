"""Sends approved actions through their channel's sink, ledger first, and records every outcome.

Ledger first: the `sending` event of an attempt is committed before the sink is called, and the result
(`delivered`, `failed`, `unknown`) after. A crash between the two leaves the action in `sending`, which
the next dispatch resolves: an idempotent sink (file outbox, webhook with its Idempotency-Key) is simply
used again with the next attempt number, a non-idempotent one (SMTP) gets an `unknown` event for a
person to check, because re-sending could put a second copy in a customer's inbox.

Throughput: work goes in rounds. A round commits the `sending` events of a chunk of actions in one
transaction, sends the chunk (each channel on its own thread pool: 8 at once for idempotent sinks, 1 for
the others, configurable), then commits the chunk's results in one transaction. Rounds are pipelined: the next round's `sending`s
are committed and queued while the current round is on the wire, but only for an idempotent channel whose
last round ended healthy. A non-idempotent channel never has more `sending` events committed than it has
sends in flight, so a crash turns as few of its actions into `unknown` as per-event commits would; after a
crash an idempotent channel may have up to two rounds in `sending`, re-sent under the same keys.

Circuit breaker: after `breaker_threshold` consecutive retryable failures on one channel, that channel is
not called again in this pass. Its remaining due actions are left untouched (no `sending`), except the
ones whose `sending` was already committed (the open round, or the one queued behind it): they get a retryable `failed` event that
says they were not sent (details `not_sent`), are due again next pass whatever their attempt count, and
do not count as failures in the report. A channel's share of a round starts at the breaker's threshold
and doubles while the channel is healthy, so a channel that is dead from the start trips the breaker
with nothing committed ahead of it.

Due actions: current state `approved` at maturity level 3 or higher (a level-2 approval is for the
owner to act on by hand), `failed` with `retryable` and fewer than `max_attempts` attempts (or marked
`not_sent`), and interrupted `sending`. A level-5 action whose proposal chose a send window
(`details.not_before`, actionlayer/learning.py) later than the dispatch's as-of waits, untouched, for a
later dispatch; so does one whose daily window (`details.send_window_hours` in the contact's timezone) has
closed again by the time it is due: it goes out at the window's next opening. Dispatch assumes it is the only writer (DuckDB allows one writer process, and the
orchestration serialises writers), so a `sending` seen at the start is an interrupted one.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from action_sinks.base import OutboundMessage, SendResult, Sink
from action_sinks.breaker import CircuitBreaker
from action_sinks.registry import build_sinks
from actionlayer import freshness, ledger
from actionlayer.config import parse_as_of
from actionlayer.freshness import Freshness
from actionlayer.learning import SendWindow

log = logging.getLogger(__name__)

ACTOR = "dispatcher"
MIN_DISPATCH_LEVEL = 3
NEXT_AFTER_DELIVERY = "await outcome"
NEXT_RETRY = "retry on next dispatch"
NEXT_PERSON = "needs a person"

DEFAULT_CHUNK_SIZE = 1024
DEFAULT_BREAKER_THRESHOLD = 5
# an idempotent channel can take parallel requests safely; a non-idempotent one gets one at a time, so
# at most one of its actions is ever between `sending` and its result
DEFAULT_IDEMPOTENT_CONCURRENCY = 8
DEFAULT_OTHER_CONCURRENCY = 1


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
    """What one dispatch pass did. `retryable` counts failures the next dispatch will try again;
    `deferred` counts actions not sent because their channel's circuit opened (due again next pass)."""

    as_of: datetime
    due: int = 0
    delivered: int = 0
    failed: int = 0
    retryable: int = 0
    unknown: int = 0
    skipped: int = 0
    deferred: int = 0
    expired: int = 0  # stale: the condition no longer held right before sending
    held_by_gate: int = 0  # the rule's inputs failed the quality gate; sent once a build passes
    waiting: int = 0  # level 5: its send window opens later (details.not_before); sent by a later dispatch
    next_window_at: datetime | None = None  # the earliest not_before among the waiting ones
    by_channel: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[DispatchFailure] = field(default_factory=list)
    circuits: dict[str, str] = field(default_factory=dict)

    def _count(self, channel: str, outcome: str) -> None:
        self.by_channel.setdefault(channel or "(none)", Counter())[outcome] += 1

    def summary_lines(self) -> list[str]:
        needs_person = self.failed - self.retryable
        lines = [
            f"dispatch as of {self.as_of:%Y-%m-%d %H:%M:%S}: {self.due} due, {self.delivered} delivered, "
            f"{self.failed} failed ({self.retryable} will be retried, {needs_person} need a person)"
            + (f", {self.unknown} unknown after an interrupted send" if self.unknown else "")
            + (f", {self.skipped} already handled elsewhere" if self.skipped else "")
            + (f", {self.deferred} left for the next pass (circuit open)" if self.deferred else "")
            + (f", {self.expired} expired as stale (condition no longer holds)" if self.expired else "")
            + (f", {self.held_by_gate} waiting for the quality gate" if self.held_by_gate else "")
            + (
                f", {self.waiting} waiting for its send window (next opens {self.next_window_at:%Y-%m-%d %H:%M} UTC)"
                if self.waiting and self.next_window_at is not None
                else ""
            )
        ]
        for channel, counts in sorted(self.by_channel.items()):
            parts = ", ".join(
                f"{counts[o]} {o}" for o in ("delivered", "failed", "unknown", "deferred") if counts[o]
            )
            lines.append(f"  {channel}: {parts}")
        lines.extend(f"  {line}" for _, line in sorted(self.circuits.items()))
        for failure in self.failures:
            lines.append(
                f"  failed {failure.action_id} ({failure.channel} → "
                f"{failure.recipient or '(no recipient)'}, attempt {failure.attempt}): {failure.reason} "
                f"[{failure.next_action}]"
            )
        return lines


def _commit(
    con: duckdb.DuckDBPyConnection, events: list[ledger.LedgerEvent], *, skip_present: bool = False
) -> set[str]:
    """Append a batch of events in one transaction, so they are durable before the next step runs.

    One commit per batch instead of per event is what makes dispatch fast (a DuckDB commit syncs the
    write-ahead log). With `skip_present`, events whose id is already in the ledger are left out and
    their ids returned (a `sending` another run already recorded: that action is handled elsewhere).
    """
    if not events:
        return set()
    try:
        con.begin()
    except duckdb.TransactionException as exc:
        raise RuntimeError(
            "dispatch commits its ledger events itself and cannot run inside an open transaction; "
            f"nothing was sent for the {len(events)} action(s) of this batch (first {events[0].action_id})"
        ) from exc
    try:
        present: set[str] = set()
        inserted = ledger.append(con, events)
        if skip_present and inserted < len(events):
            # rare (another writer got there first): redo the batch without the events already present;
            # the common case pays no lookup at all
            con.rollback()
            con.begin()
            ids = [event.event_id for event in events]
            present = {
                row[0]
                for row in con.execute(
                    "select event_id from ops.action_ledger where event_id in (select unnest(?::varchar[]))",
                    [ids],
                ).fetchall()
            }
            ledger.append(con, [event for event in events if event.event_id not in present])
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return present


def _not_sent(row: dict[str, Any]) -> bool:
    details = row.get("details")
    if not details:
        return False
    try:
        return bool(json.loads(details).get("not_sent"))
    except (ValueError, AttributeError):
        return False


def _due(rows: list[dict[str, Any]], max_attempts: int) -> list[dict[str, Any]]:
    due = []
    for row in rows:
        level = row.get("maturity_level")
        if level is None or level < MIN_DISPATCH_LEVEL:
            continue
        state = row["event_type"]
        retry = (
            state == "failed"
            and bool(row.get("retryable"))
            # a send skipped by an open circuit was never tried, so it does not use up the attempts
            and ((row.get("attempt") or 1) < max_attempts or _not_sent(row))
        )
        if state in {"approved", "sending"} or retry:
            due.append(row)
    return due


def _candidates_due(con: duckdb.DuckDBPyConnection, max_attempts: int) -> list[dict[str, Any]]:
    """The current state of every action that may be due, oldest first, in one query.

    SQL leaves out what can never be due (below level 3, failed for good after its last attempt), so
    the failures that pile up over months are not read on every pass; `_due` decides exactly (a
    `not_sent` failure is kept whenever its details name it)."""
    cursor = con.execute(
        f"""select * from ops.action_state
        where event_type in ('approved', 'sending', 'failed') and maturity_level >= {MIN_DISPATCH_LEVEL}
          and (event_type <> 'failed'
               or (retryable and (coalesce(attempt, 1) < ? or contains(coalesce(details, ''), 'not_sent'))))
        order by seq""",
        [max_attempts],
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _send_windows(
    con: duckdb.DuckDBPyConnection, due: list[dict[str, Any]], as_of: datetime
) -> dict[str, datetime]:
    """Due level-5 actions whose send window is not open at `as_of`: action id → when it next opens (naive UTC).

    From the proposal's details (ops.action_state only carries the latest event's): `not_before`, the first
    opening after the decision, and `send_window_hours` in `send_timezone`, the daily window itself. An action
    approved or retried after its window closed (a suppression lifted, a reviewer approved it the next morning)
    waits for the window's next opening instead of going out at the wrong time of day. One query for all of
    them, and none at all when no level-5 action is due."""
    ids = [
        str(row["action_id"])
        for row in due
        if row.get("maturity_level") == 5 and row["event_type"] in {"approved", "failed"}
    ]
    if not ids:
        return {}
    found = con.execute(
        "select action_id, json_extract_string(details, '$.not_before'), "
        "json_extract(details, '$.send_window_hours'), json_extract_string(details, '$.send_timezone'), "
        "json_extract_string(details, '$.arm_send_window') from ops.action_ledger "
        "where event_type = 'proposed' and action_id in (select unnest(?::varchar[])) "
        "and json_extract_string(details, '$.not_before') is not null",
        [ids],
    ).fetchall()
    waiting: dict[str, datetime] = {}
    for action_id, text, hours, zone, name in found:
        try:
            opening = parse_as_of(text)
        except ValueError:
            log.warning("action %s: unreadable details.not_before %r; sent without waiting", action_id, text)
            continue
        window = _daily_window(action_id, name, hours)
        if window is not None and opening <= as_of:
            opening = window.next_opening(as_of, zone)
        if opening > as_of:
            waiting[action_id] = opening
    return waiting


def _daily_window(action_id: str, name: str | None, hours: Any) -> SendWindow | None:
    """The proposal's `send_window_hours` as a window; None (not_before alone decides) when absent or unreadable
    (proposals written before the field existed)."""
    if hours is None:
        return None
    try:
        start, end = json.loads(hours) if isinstance(hours, str) else hours
        return SendWindow(name or "send_window", int(start), int(end))
    except (TypeError, ValueError) as exc:
        log.warning(
            "action %s: unreadable details.send_window_hours %r (%s); not_before alone decides",
            action_id,
            hours,
            exc,
        )
        return None


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
        "format": row.get("message_format") or "text",
    }
    return OutboundMessage(
        action_id=row["action_id"],
        channel=channel,
        recipient=recipient,
        # what was approved is what goes out: an approver's edit, else the proposed message
        subject=row.get("send_subject") or row.get("proposed_subject") or "",
        body=row.get("send_body") or row.get("proposed_body") or "",
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


@dataclass
class _Send:
    """One planned send: the action's state row, its message and the attempt it will be."""

    row: dict[str, Any]
    message: OutboundMessage
    attempt: int
    sending: ledger.LedgerEvent


class _Lane:
    """One channel's queue, thread pool, breaker and share of a round."""

    def __init__(
        self, channel: str, sink: Sink, concurrency: int, breaker_threshold: int, chunk: int
    ) -> None:
        self.channel = channel
        self.sink = sink
        self.sink_name = getattr(sink, "name", type(sink).__name__)
        self.idempotent = bool(getattr(sink, "idempotent", False))
        self.concurrency = concurrency
        self.queue: deque[_Send] = deque()
        self.breaker = CircuitBreaker(breaker_threshold)
        self.chunk = chunk
        # slow start: a channel that fails from the first send opens its circuit with nothing left over
        self.window = min(chunk, breaker_threshold)
        self.executor: ThreadPoolExecutor | None = None
        self.in_flight = 0  # rounds of this lane sent but not yet settled
        self.closing = False  # set when the pass ends: workers take no further items
        self.proven = False  # the last settled round ended without a failure streak

    def take(self) -> list[_Send]:
        """This lane's share of the next round (empty when it must wait for its round in flight)."""
        if self.breaker.is_open:
            return []
        # a second round ahead only for a channel that is idempotent and proven healthy: a non-idempotent
        # channel would have two `sending`s to turn `unknown` after a crash, and an unproven one could
        # open its circuit with a whole round committed but not sent
        if self.in_flight and not (self.idempotent and self.proven and self.breaker.consecutive == 0):
            return []
        share = min(self.window, self.breaker.headroom() if self.breaker.consecutive else self.window)
        if not self.idempotent:
            # every committed-but-unanswered send of this channel becomes `unknown` after a crash
            share = min(share, self.concurrency)
        items = [self.queue.popleft() for _ in range(min(share, len(self.queue)))]
        self.in_flight += bool(items)
        return items

    def after_round(self) -> None:
        self.in_flight -= 1
        if self.breaker.consecutive == 0:
            self.proven = True
            self.window = min(self.chunk, self.window * 2)
        else:
            self.proven = False
            self.window = self.breaker.headroom()

    def submit(self, items: list[_Send]) -> _Sends:
        """Start sending this lane's share of a round: up to `concurrency` workers take its items in
        order, so a round costs a few pool tasks instead of one future per action."""
        if self.executor is None:
            self.executor = ThreadPoolExecutor(
                self.concurrency, thread_name_prefix=f"dispatch-{self.channel}"
            )
        sends = _Sends(items)
        sends.workers = [
            self.executor.submit(self._drain, sends) for _ in range(min(self.concurrency, len(items)))
        ]
        return sends

    def _drain(self, sends: _Sends) -> None:
        pending = sends.pending
        results = sends.results
        while not self.closing:
            try:
                index, item = pending.popleft()  # atomic: each item goes to exactly one worker
            except IndexError:
                return
            results[index] = self._send(item)

    def _send(self, item: _Send) -> SendResult | None:
        # checked per call: sends queued on this pool after the circuit opened are not made
        if self.breaker.is_open:
            return None
        result = _call_sink(self.sink, item.message)
        self.breaker.record(not result.ok and (result.retryable or result.uncertain), result.detail)
        return result

    def close(self) -> None:
        # no worker takes another item; sends already under way finish
        self.closing = True
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


class _Sends:
    """One lane's share of a round on the wire: the items, which worker takes which next, the results
    by position (None: not sent, the circuit opened first) and the pool tasks working through them."""

    def __init__(self, items: list[_Send]) -> None:
        self.items = items
        self.pending: deque[tuple[int, _Send]] = deque(enumerate(items))
        self.results: list[SendResult | None] = [None] * len(items)
        self.workers: list[Future[None]] = []

    def wait(self) -> list[SendResult | None]:
        """The results once every item is done (re-raises what a worker raised)."""
        for worker in self.workers:
            worker.result()
        return self.results


class _Pass:
    """State of one dispatch pass (kept together so each step stays a short method)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        as_of: datetime,
        sinks: Mapping[str, Sink],
        max_attempts: int,
        report: DispatchReport,
        *,
        chunk_size: int,
        concurrency: Mapping[str, int],
        breaker_threshold: int,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.con = con
        self.as_of = as_of
        self.sinks = sinks
        self.max_attempts = max_attempts
        self.report = report
        self.chunk_size = chunk_size
        self.concurrency = concurrency
        self.breaker_threshold = breaker_threshold
        self.progress = progress
        self.done = 0
        self.lanes: dict[str, _Lane] = {}

    def _advance(self, count: int = 1) -> None:
        if self.progress is None:
            self.done += count
            return
        for _ in range(count):
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.report.due)

    # ---------------------------------------------------------------- events and report entries

    def failed_event(
        self, row: dict[str, Any], attempt: int, reason: str, retryable: bool, **details: Any
    ) -> tuple[ledger.LedgerEvent, DispatchFailure]:
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
        failure = DispatchFailure(
            action_id=row["action_id"],
            channel=row.get("channel") or "",
            recipient=(row.get("proposed_recipient") or row.get("recipient") or ""),
            attempt=attempt,
            reason=reason,
            retryable=retryable,
            next_action=next_action,
        )
        return event, failure

    def count_failure(self, failure: DispatchFailure) -> None:
        self.report.failed += 1
        self.report.retryable += int(failure.next_action == NEXT_RETRY)
        self.report._count(failure.channel, "failed")
        self.report.failures.append(failure)

    def unknown_event(
        self, row: dict[str, Any], sink_name: str, attempt: int | None = None, reason: str | None = None
    ) -> ledger.LedgerEvent:
        attempt = attempt or row.get("attempt") or 1
        return ledger.next_event(
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

    def count_unknown(self, row: dict[str, Any]) -> None:
        self.report.unknown += 1
        self.report._count(row.get("channel") or "", "unknown")

    # ---------------------------------------------------------------- planning (no sink is called)

    def lane_for(self, channel: str, sink: Sink) -> _Lane:
        lane = self.lanes.get(channel)
        if lane is None:
            default = (
                DEFAULT_IDEMPOTENT_CONCURRENCY
                if getattr(sink, "idempotent", False)
                else DEFAULT_OTHER_CONCURRENCY
            )
            lane = _Lane(
                channel,
                sink,
                max(1, int(self.concurrency.get(channel, default))),
                self.breaker_threshold,
                self.chunk_size,
            )
            self.lanes[channel] = lane
        return lane

    def stale_event(self, row: dict[str, Any], reason: str) -> ledger.LedgerEvent:
        return ledger.next_event(
            row, "expired", self.as_of, ACTOR, result=reason, next_action="none: nothing was sent"
        )

    def count_expired(self, row: dict[str, Any]) -> None:
        self.report.expired += 1
        self.report._count(row.get("channel") or "", "expired")

    def plan(
        self,
        due: list[dict[str, Any]],
        freshness: Freshness | None = None,
        waiting: Mapping[str, datetime] | None = None,
    ) -> None:
        """Queue each sendable action on its channel's lane; settle the rest (unknown/failed/expired);
        leave the ones whose send window opens later (`waiting`) untouched."""
        freshness = freshness or Freshness()
        waiting = waiting or {}
        settled: list[tuple[ledger.LedgerEvent, Callable[[], None]]] = []
        for row in due:
            if row["event_type"] != "sending" and row.get("rule_id") in freshness.blocked_rules:
                self.report.held_by_gate += 1
                self._advance()
                continue
            stale = freshness.stale.get(row["action_id"]) if row["event_type"] != "sending" else None
            if stale is not None:
                settled.append((self.stale_event(row, stale), lambda row=row: self.count_expired(row)))
                continue
            not_before = waiting.get(row["action_id"]) if row["event_type"] != "sending" else None
            if not_before is not None:
                self.report.waiting += 1
                self.report.next_window_at = min(not_before, self.report.next_window_at or not_before)
                self._advance()
                continue
            channel = (row.get("channel") or "").strip()
            recipient = (row.get("proposed_recipient") or row.get("recipient") or "").strip()
            sink = self.sinks.get(channel) if channel else None
            sink_name = getattr(sink, "name", "none")
            if row["event_type"] == "sending" and (sink is None or not sink.idempotent):
                settled.append((self.unknown_event(row, sink_name), lambda row=row: self.count_unknown(row)))
                continue
            attempt = (row.get("attempt") or 0) + 1
            problem: tuple[str, bool] | None = None
            if not recipient:
                problem = (f"no recipient for channel {channel or '(none)'}; nothing sent", False)
            elif not channel:
                problem = ("action has no channel; nothing sent", False)
            elif (
                row.get("send_subject", row.get("proposed_subject")) is None
                and row.get("send_body", row.get("proposed_body")) is None
            ):
                # e.g. the template failed to render at proposal time: an empty message must not go out
                problem = ("action has no proposed message (subject and body missing); nothing sent", False)
            elif sink is None:
                problem = (f"no sink configured for channel {channel!r}; nothing sent", True)
            if problem is not None:
                event, failure = self.failed_event(row, attempt, *problem)
                settled.append((event, lambda failure=failure: self.count_failure(failure)))
                continue
            assert sink is not None
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
            self.lane_for(channel, sink).queue.append(_Send(row, message, attempt, sending))
        for start in range(0, len(settled), self.chunk_size):
            batch = settled[start : start + self.chunk_size]
            _commit(self.con, [event for event, _ in batch])
            for _, count in batch:
                count()
            self._advance(len(batch))

    # ---------------------------------------------------------------- rounds

    def run(self) -> None:
        """Rounds, pipelined: the next round's `sending`s are committed and its sends queued while the
        current round is still on the wire, and the current round's results are committed after."""
        in_flight: list[tuple[_Lane, _Sends]] | None = None
        try:
            while True:
                shares = [(lane, lane.take()) for lane in self.lanes.values()]
                launched = self.launch([(lane, items) for lane, items in shares if items])
                if in_flight is not None:
                    self.settle(in_flight)
                in_flight = launched
                if in_flight is None and not any(
                    lane.queue and not lane.breaker.is_open for lane in self.lanes.values()
                ):
                    break
        finally:
            for lane in self.lanes.values():
                lane.close()
        for channel, lane in self.lanes.items():
            if lane.breaker.is_open:
                self.report.circuits[channel] = lane.breaker.describe(channel)
                if lane.queue:
                    self.report.deferred += len(lane.queue)
                    self.report.by_channel.setdefault(channel or "(none)", Counter())["deferred"] += len(
                        lane.queue
                    )
                    lane.queue.clear()

    def launch(self, shares: list[tuple[_Lane, list[_Send]]]) -> list[tuple[_Lane, _Sends]] | None:
        """Commit the `sending` events of a round in one transaction, then queue its sends."""
        if not shares:
            return None
        sendings = [item.sending for _, items in shares for item in items]
        # ledger first: once this is committed, a crash during the sends is visible, never silent
        present = _commit(self.con, sendings, skip_present=True)
        if present:
            self.report.skipped += len(present)
            self._advance(len(present))
        planned = []
        for lane, items in shares:
            if present:
                items = [item for item in items if item.sending.event_id not in present]
            if items:
                planned.append((lane, lane.submit(items)))
            else:
                lane.in_flight -= 1  # everything of this lane was already handled elsewhere
        return planned

    def settle(self, planned: list[tuple[_Lane, _Sends]]) -> None:
        """Wait for a round's sends and commit all their results in one transaction."""
        outcomes: list[tuple[ledger.LedgerEvent, Callable[[], None]]] = []
        for lane, sends in planned:
            for item, result in zip(sends.items, sends.wait(), strict=True):
                outcomes.append(self.outcome(lane, item, result))
        _commit(self.con, [event for event, _ in outcomes])
        for _, count in outcomes:
            count()
        self._advance(len(outcomes))
        for lane, _ in planned:
            lane.after_round()

    def outcome(
        self, lane: _Lane, item: _Send, result: SendResult | None
    ) -> tuple[ledger.LedgerEvent, Callable[[], None]]:
        row, attempt, channel = item.row, item.attempt, item.message.channel
        recipient = item.message.recipient
        if result is None:
            # `sending` is committed but the circuit opened before this call: say so, and retry next pass
            event = ledger.next_event(
                row,
                "failed",
                self.as_of,
                ACTOR,
                attempt=attempt,
                recipient=recipient,
                result=f"not sent: {lane.breaker.describe(channel)}",
                retryable=True,
                next_action=NEXT_RETRY,
                details={"sink": lane.sink_name, "not_sent": True},
            )
            return event, lambda: self.count_deferred(channel)
        if result.ok:
            event = ledger.next_event(
                row,
                "delivered",
                self.as_of,
                ACTOR,
                attempt=attempt,
                recipient=recipient,
                result=result.detail,
                next_action=NEXT_AFTER_DELIVERY,
                details={"sink": lane.sink_name, "external_id": result.external_id},
            )
            return event, lambda: self.count_delivered(channel)
        if result.uncertain and not lane.idempotent:
            event = self.unknown_event(
                row,
                lane.sink_name,
                attempt,
                f"{result.detail}; the channel may have acted on it, so it is not sent again automatically",
            )
            return event, lambda: self.count_unknown(row)
        extra = {"external_id": result.external_id} if result.external_id else {}
        event, failure = self.failed_event(
            row, attempt, result.detail, result.retryable, sink=lane.sink_name, **extra
        )
        return event, lambda: self.count_failure(failure)

    def count_delivered(self, channel: str) -> None:
        self.report.delivered += 1
        self.report._count(channel, "delivered")

    def count_deferred(self, channel: str) -> None:
        self.report.deferred += 1
        self.report._count(channel, "deferred")


def dispatch(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    sinks: Mapping[str, Sink] | None = None,
    max_attempts: int = 3,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    concurrency: Mapping[str, int] | None = None,
    breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD,
    check_freshness: bool = True,
) -> DispatchReport:
    """Send every due action once through its channel's sink; returns what happened.

    With `check_freshness`, each due action is first compared with the latest candidate build
    (actionlayer/freshness.py): a stale one becomes `expired` with the reason and is not sent, and the
    actions of a rule the quality gate skipped wait for a build that passes.

    `sinks` maps channel → sink (default: `registry.build_sinks()`); `progress(done, total)` is called
    for each action once its result is committed. `chunk_size` bounds the actions per round (one commit
    for their `sending` events, one for their results); `concurrency` maps channel → parallel sends
    (default 8 for idempotent sinks, 1 otherwise); `breaker_threshold` is the number of consecutive
    retryable failures after which a channel is not called again in this pass. Must not be called
    inside an open transaction: dispatch commits its own batches.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if breaker_threshold < 1:
        raise ValueError(f"breaker_threshold must be at least 1, got {breaker_threshold}")
    for channel, workers in (concurrency or {}).items():
        if int(workers) < 1:
            raise ValueError(f"concurrency for channel {channel!r} must be at least 1, got {workers}")
    as_of = parse_as_of(as_of)
    if sinks is None:
        sinks = build_sinks()
    ledger.ensure_schema(con)
    due = _due(_candidates_due(con, max_attempts), max_attempts)
    if limit is not None:
        due = due[: max(limit, 0)]
    report = DispatchReport(as_of=as_of, due=len(due))
    one_pass = _Pass(
        con,
        as_of,
        sinks,
        max_attempts,
        report,
        chunk_size=chunk_size,
        concurrency=concurrency or {},
        breaker_threshold=breaker_threshold,
        progress=progress,
    )
    # right before sending: is the condition still true in the latest candidate build?
    one_pass.plan(due, freshness.check(con, due) if check_freshness else None, _send_windows(con, due, as_of))
    one_pass.run()
    return report


def run_dispatch(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[DispatchReport, list[str]]:
    """One dispatch pass with the configured sinks, then the pending operational alerts (guardrails,
    escalations) through the `alerts` channel; the sinks' connections are closed after."""
    from actionlayer import alerts

    sinks = build_sinks()
    try:
        report = dispatch(con, as_of, sinks, progress=progress)
        alert_lines = alerts.send_pending(con, sinks, parse_as_of(as_of))
    finally:
        sinks.close()
    return report, alert_lines
