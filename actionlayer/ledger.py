"""The action ledger: append-only events that prove what was proposed, decided, sent and what came of it.

Nothing here updates or deletes a ledger row. Every event has a deterministic id, so writing the same
event twice (a re-run, a re-imported review file) inserts nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import duckdb
import pyarrow as pa

EVENT_TYPES = (
    "proposed",
    "held_out",
    "suppressed",
    "pending_review",
    "approved",
    "rejected",
    "expired",
    "sending",
    "delivered",
    "failed",
    "unknown",
)
TERMINAL_TYPES = frozenset({"held_out", "rejected", "expired", "delivered", "unknown"})

LEDGER_TABLE = "ops.action_ledger"

_DDL = """
create schema if not exists ops;
create sequence if not exists ops.action_ledger_seq start 1;
create table if not exists ops.action_ledger (
    seq              bigint    not null default nextval('ops.action_ledger_seq'),
    event_id         varchar   primary key,
    action_id        varchar   not null,
    event_type       varchar   not null,
    occurred_at      timestamp not null,
    recorded_at      timestamp not null,
    actor            varchar   not null,
    rule_id          varchar   not null,
    rule_version     integer,
    maturity_level   integer,
    record_type      varchar,
    record_id        varchar,
    contact_id       varchar,
    account_id       varchar,
    owner_email      varchar,
    signal_at        timestamp,
    holdout          boolean,
    reason           varchar,
    recommended_action varchar,
    channel          varchar,
    recipient        varchar,
    message_subject  varchar,
    message_body     varchar,
    approver_email   varchar,
    attempt          integer,
    result           varchar,
    retryable        boolean,
    next_action      varchar,
    details          varchar
);
create or replace view ops.action_state as
with latest as (
    -- each action's newest seq, joined back: far cheaper than ranking whole rows with a window
    select action_id, max(seq) as seq from ops.action_ledger group by action_id
),
ranked as (
    select events.* from ops.action_ledger as events
    semi join latest on latest.action_id = events.action_id and latest.seq = events.seq
),
proposals as (
    select action_id, message_subject as proposed_subject, message_body as proposed_body,
           recipient as proposed_recipient, occurred_at as proposed_at,
           coalesce(json_extract_string(details, '$.format'), 'text') as message_format
    from ops.action_ledger
    where event_type = 'proposed'
),
-- an approver may edit the message in the review table; the approved event carries the edited text
-- (an action is approved at most once, so this join cannot duplicate rows)
approved_messages as (
    select action_id, message_subject as approved_subject, message_body as approved_body
    from ops.action_ledger
    where event_type = 'approved' and (message_subject is not null or message_body is not null)
)
select ranked.*, proposals.proposed_subject, proposals.proposed_body,
       proposals.proposed_recipient, proposals.proposed_at, proposals.message_format,
       coalesce(approved_messages.approved_subject, proposals.proposed_subject) as send_subject,
       coalesce(approved_messages.approved_body, proposals.proposed_body) as send_body
from ranked
left join proposals using (action_id)
left join approved_messages using (action_id);
"""

# Identity fields are copied from the proposal onto every later event of the same action.
IDENTITY_FIELDS = (
    "rule_id",
    "rule_version",
    "maturity_level",
    "record_type",
    "record_id",
    "contact_id",
    "account_id",
    "owner_email",
    "signal_at",
    "holdout",
)


@dataclass(frozen=True)
class LedgerEvent:
    """One immutable ledger row. `event_id` is derived unless given."""

    action_id: str
    event_type: str
    occurred_at: datetime
    actor: str
    rule_id: str
    rule_version: int | None = None
    maturity_level: int | None = None
    record_type: str | None = None
    record_id: str | None = None
    contact_id: str | None = None
    account_id: str | None = None
    owner_email: str | None = None
    signal_at: datetime | None = None
    holdout: bool | None = None
    reason: str | None = None
    recommended_action: str | None = None
    channel: str | None = None
    recipient: str | None = None
    message_subject: str | None = None
    message_body: str | None = None
    approver_email: str | None = None
    attempt: int | None = None
    result: str | None = None
    retryable: bool | None = None
    next_action: str | None = None
    details: dict[str, Any] | None = None
    event_id: str = field(default="")

    def __post_init__(self) -> None:
        if self.event_type not in EVENT_TYPES:
            raise ValueError(f"unknown ledger event type {self.event_type!r}; expected one of {EVENT_TYPES}")
        if not self.event_id:
            object.__setattr__(
                self, "event_id", event_id_for(self.action_id, self.event_type, self.discriminator)
            )

    @property
    def discriminator(self) -> str:
        """What makes two events of one type on one action different.

        Attempts differ by number; a re-evaluated suppression differs by day and reason; everything
        else happens at most once per action.
        """
        if self.event_type in {"sending", "delivered", "failed", "unknown"}:
            return f"attempt={self.attempt or 1}"
        if self.event_type == "suppressed":
            return f"{self.occurred_at:%Y-%m-%d}|{self.result or ''}"
        if self.event_type in {"pending_review", "approved"}:
            # after a lifted suppression an action may be re-queued; a decision happens once
            return "" if self.event_type == "approved" else f"{self.occurred_at:%Y-%m-%d}"
        return ""


def event_id_for(action_id: str, event_type: str, discriminator: str = "") -> str:
    return hashlib.sha256(f"{action_id}|{event_type}|{discriminator}".encode()).hexdigest()[:32]


def action_id_for(rule_id: str, record_type: str, record_id: str, signal_key: str) -> str:
    """The deterministic action id; dbt computes the same value as md5 of the same string."""
    return hashlib.md5(f"{rule_id}|{record_type}|{record_id}|{signal_key}".encode()).hexdigest()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the ledger table, sequence and views if they are missing (safe to call every pass)."""
    con.execute(_DDL)


def _wall_clock() -> datetime:
    # audit only: when the row was physically written, never used for business decisions
    return datetime.now(UTC).replace(tzinfo=None)


_COLUMNS = [f.name for f in fields(LedgerEvent)]
_ARROW_TYPES: dict[str, pa.DataType] = {name: pa.string() for name in _COLUMNS} | {
    "occurred_at": pa.timestamp("us"),
    "signal_at": pa.timestamp("us"),
    "recorded_at": pa.timestamp("us"),
    "rule_version": pa.int32(),
    "maturity_level": pa.int32(),
    "attempt": pa.int32(),
    "holdout": pa.bool_(),
    "retryable": pa.bool_(),
    "seq": pa.int64(),
}
_ROW_OF = attrgetter(*_COLUMNS)
# up to this many events, `append` looks their ids up in the ledger first instead of anti-joining all of it
PROBE_MAX_EVENTS = 1_000
# what json.dumps(details, sort_keys=True, default=str) writes, without building an encoder per event
_DETAILS_JSON = json.JSONEncoder(sort_keys=True, default=str)


def event_table(events: Sequence[LedgerEvent], **extra: list[Any]) -> pa.Table:
    """Events as an Arrow table of the ledger's columns (details as JSON text), no `seq` or `recorded_at`;
    `extra` adds columns (e.g. a sort key) given as lists as long as `events`."""
    # one C call per event for all its fields, then one transpose into columns
    rows = [_ROW_OF(event) for event in events]
    transposed = zip(*rows, strict=True) if rows else ([] for _ in _COLUMNS)
    columns: dict[str, list[Any]] = {
        name: list(values) for name, values in zip(_COLUMNS, transposed, strict=True)
    }
    columns["details"] = [
        _DETAILS_JSON.encode(details) if details else None for details in columns["details"]
    ]
    arrays = {name: pa.array(values, type=_ARROW_TYPES[name]) for name, values in columns.items()}
    return pa.table(arrays | {name: pa.array(values) for name, values in extra.items()})


def encode_details(details: dict[str, Any] | None) -> str | None:
    """A `details` value as the ledger stores it."""
    return _DETAILS_JSON.encode(details) if details else None


def append(con: duckdb.DuckDBPyConnection, events: Iterable[LedgerEvent]) -> int:
    """Append events in the order given; events whose id is already present are skipped.

    Returns the number of rows inserted. The caller owns the transaction: a single writer is
    assumed (see CONVENTIONS), which is what makes the explicit `seq` numbering safe.
    """
    batch = list(events)
    if not batch:
        return 0
    ids = [event.event_id for event in batch]
    present = None
    if len(ids) <= PROBE_MAX_EVENTS:
        # a small batch (a dispatch round): its ids looked up as a list of values filter the ledger's ids
        # as they are read, cheaper than hashing every id of a large ledger for the anti-join
        present = [
            row[0]
            for row in con.execute(
                f"select event_id from ops.action_ledger where event_id in ({', '.join('?' * len(ids))})", ids
            ).fetchall()
        ]
    frame = event_table(batch, _position=list(range(len(batch))))
    con.register("_ledger_batch", frame)
    try:
        distinct = len(set(ids)) == len(batch)
        return append_query(con, "select * from _ledger_batch", distinct=distinct, present=present)
    finally:
        con.unregister("_ledger_batch")


def append_query(
    con: duckdb.DuckDBPyConnection,
    query: str,
    params: list[Any] | None = None,
    *,
    distinct: bool = False,
    present: list[str] | None = None,
) -> int:
    """Append the events a query returns (the ledger's columns but `seq` and `recorded_at`, plus `_position`,
    their distinct 0-based places in the batch): `seq` is the ledger's next number plus the position, events
    whose id is already present are skipped (their numbers stay unused), and of one id named twice only the
    first is written (`distinct=True` says the caller knows no id is named twice). Returns the number of
    rows inserted.

    `present`: the ids of the query's events already in the ledger, when the caller has looked them up
    (they are skipped as the anti-join would skip them).

    The caller owns the transaction, as for `append`."""
    names = ", ".join(name for name in _COLUMNS)
    first_seq = con.execute("select coalesce(max(seq), 0) + 1 from ops.action_ledger").fetchall()[0][0]
    first_only = (
        "" if distinct else "qualify row_number() over (partition by batch.event_id order by _position) = 1"
    )
    # an anti-join, then a plain insert: twice as fast as ON CONFLICT on the primary key's index, same rows
    skip = (
        "anti join ops.action_ledger as present on present.event_id = batch.event_id"
        if present is None
        else "where batch.event_id not in (select unnest(?::varchar[]))"
    )
    inserted = con.execute(
        f"""insert into ops.action_ledger ({names}, seq, recorded_at)
        select {", ".join(f"batch.{name}" for name in _COLUMNS)}, ? + _position as seq, ?::timestamp
        from ({query}) as batch
        {skip}
        {first_only}
        order by seq""",
        [first_seq, _wall_clock(), *(params or []), *([] if present is None else [present])],
    ).fetchall()
    return int(inserted[0][0]) if inserted else 0


def next_event(
    state: dict[str, Any], event_type: str, occurred_at: datetime, actor: str, **values: Any
) -> LedgerEvent:
    """The next event of an action, its identity copied from the action's current state row."""
    if not values.keys() <= _NEXT_EVENT_VALUES:
        # an identity field or an unknown name among the values: the constructor says what is wrong
        identity = {name: state.get(name) for name in IDENTITY_FIELDS}
        for carried in _CARRIED_FIELDS:
            values.setdefault(carried, state.get(carried))
        return LedgerEvent(
            action_id=state["action_id"],
            event_type=event_type,
            occurred_at=occurred_at,
            actor=actor,
            **identity,
            **values,
        )
    # the dispatcher makes two of these per action: every field set in one dict, no per-field __init__
    event = dict(_FIELD_DEFAULTS)
    for name in IDENTITY_FIELDS:
        event[name] = state.get(name)
    for name in _CARRIED_FIELDS:
        event[name] = state.get(name)
    event.update(values)
    event["action_id"] = state["action_id"]
    event["event_type"] = event_type
    event["occurred_at"] = occurred_at
    event["actor"] = actor
    return _event_from(event)


# fields a later event takes from the action's state unless the caller gives them
_CARRIED_FIELDS = ("channel", "recipient", "recommended_action", "reason")
_FIELD_DEFAULTS = {f.name: f.default for f in fields(LedgerEvent) if f.default is not MISSING}
_NEXT_EVENT_VALUES = frozenset(_FIELD_DEFAULTS) - frozenset(IDENTITY_FIELDS)
if set(_FIELD_DEFAULTS) | {"action_id", "event_type", "occurred_at", "actor", "rule_id"} != set(_COLUMNS):
    # next_event's fast path sets every field from these defaults; a new field without one needs it there
    raise TypeError("LedgerEvent's required fields changed; update next_event in actionlayer/ledger.py")


def _event_from(values: dict[str, Any]) -> LedgerEvent:
    """A LedgerEvent from a dict holding every one of its fields: the instance's attributes are set in
    one step instead of the frozen dataclass's one call per field, then it is checked and its id derived
    by the same `__post_init__` as any other event (LedgerEvent has no slots, so it has a `__dict__`)."""
    event = object.__new__(LedgerEvent)
    event.__dict__.update(values)
    event.__post_init__()
    return event


def _rows(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def states(
    con: duckdb.DuckDBPyConnection,
    event_types: Sequence[str] | None = None,
    action_ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Each action's latest event (plus its proposed message), optionally filtered by state or id."""
    clauses, params = [], []
    if event_types:
        clauses.append(f"event_type in ({', '.join('?' for _ in event_types)})")
        params.extend(event_types)
    if action_ids is not None:
        if not action_ids:
            return []
        # one list parameter joined as a set: a placeholder per id makes a long IN list slow to bind and plan
        clauses.append("action_id in (select unnest(?::varchar[]))")
        params.append(list(action_ids))
    where = f"where {' and '.join(clauses)}" if clauses else ""
    return _rows(con.execute(f"select * from ops.action_state {where} order by seq", params))


def trail(con: duckdb.DuckDBPyConnection, action_id: str) -> list[dict[str, Any]]:
    """Every event of one action, oldest first."""
    return _rows(con.execute("select * from ops.action_ledger where action_id = ? order by seq", [action_id]))


def count_by_state(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    rows = con.execute("select event_type, count(*) from ops.action_state group by 1 order by 1").fetchall()
    return {event_type: count for event_type, count in rows}
