"""The sync every non-file connector goes through: a kill-safe local mirror, then the file source's validation.

One responsibility: move one source's records into DuckDB incrementally, idempotently and recoverably,
and hand the result to `connectors.files.load_frames`, so `raw.*` and `ops.quarantine` are exactly what
the file source would give for the same records.

Per object:
1. Read the stored cursor from `ops.sync_cursors`. No cursor, or a full read that never finished, means
   a full read (`SyncPlan(object, None)`); otherwise an incremental read from the cursor.
2. For every `Page` the connector yields, ONE transaction upserts its records by key into the mirror
   `src.<source>__<object>` (every canonical column as text, unknown fields in `_extra`), marks its
   `deleted_keys` as `_deleted`, and stores the page's cursor. A sync killed between pages therefore
   resumes after the last committed page: nothing is read twice into the mirror, nothing is skipped.
3. A full read records the keys it sees (`ops.sync_full_seen`); only when the read completes are the
   mirror's other keys marked deleted. A full read that was killed restarts from the beginning (its
   start time stays in the cursor table until it completes), so a partial read never deletes anything.
4. A record whose content hash is unchanged is not touched: re-running an unchanged source changes
   nothing in the mirror, timestamps included. Connectors re-read an overlap before their cursor
   (`overlap_seconds`, connectors/base.py), so this is also what makes those re-reads idempotent: a
   re-read record counts as unchanged, a re-read deletion as nothing, and a page that changed nothing
   and keeps the stored cursor does not touch the cursor row either.
Then the live mirror rows of every object this source provides (synced now or before, so a deletion in
a parent cascades to children) are validated and loaded with `load_frames`, and the history (`hist.*`)
of every object that loaded is updated. Objects the source does not provide are left alone.

Schema drift: a field outside the contract is kept in `_extra`, reported and written to
`ops.drift_events` (kind `added`). A contract column absent from every record of a page is `removed`
drift; when it is a required column the object is refused: that page is not committed, the cursor stays
before it, `raw.<object>` keeps its last good copy and the report names the column. A value of a changed
type simply fails validation and is quarantined.

Connectors should therefore pass every canonical column they map (None for null) and leave a column out
only when the source no longer has it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import duckdb
import polars as pl
import pyarrow as pa

from actionlayer.config import parse_as_of
from actionlayer.contract import OBJECT_NAMES, OBJECTS, SorObject
from actionlayer.db import run as _run
from actionlayer.db import transaction as _transaction
from connectors.base import Connector, ConnectorError, Page, SyncPlan
from connectors.drift import DRIFT_DDL, DRIFT_TABLE, DriftEvent, record_drift
from connectors.files import LoadReport, SourceFrame, load_frames
from connectors.history import HistoryReport, record_history

MIRROR_SCHEMA = "src"
CURSOR_TABLE = "ops.sync_cursors"
SEEN_TABLE = "ops.sync_full_seen"

# Source names become part of table names (src.<source>__<object>), so they must be plain identifiers.
_SOURCE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
# A record without a usable key still has to live in the mirror (it is quarantined as missing_key, like
# a CSV row with an empty key); it is stored under a key derived from its content.
_MISSING_KEY_PREFIX = "(missing key) "
_MIRROR_META = ("_extra", "_row_hash", "_deleted", "_first_seen_at", "_synced_at", "_page_seq", "_ordinal")

_SYNC_DDL = f"""
create schema if not exists {MIRROR_SCHEMA};
create schema if not exists ops;
create table if not exists {CURSOR_TABLE} (
    source               varchar   not null,
    object               varchar   not null,
    cursor               varchar,
    synced_at            timestamp,
    pages_committed      bigint    not null,
    full_sync_started_at timestamp,
    last_full_sync_at    timestamp
);
create table if not exists {SEEN_TABLE} (
    source     varchar not null,
    object     varchar not null,
    record_key varchar not null
);
"""

ConnectionOrFactory = (
    duckdb.DuckDBPyConnection | Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]
)
SyncStatus = Literal["synced", "refused", "failed"]


# --------------------------------------------------------------------------- report


@dataclass
class ObjectSync:
    """What one sync did to one object's mirror."""

    object: str
    full: bool
    status: SyncStatus = "synced"
    pages: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    cursor: str | None = None
    drift: list[DriftEvent] = field(default_factory=list)
    message: str = ""

    @property
    def upserted(self) -> int:
        return self.inserted + self.updated


@dataclass
class SyncProgress:
    """Reported after every committed page (and once per object when it is done)."""

    source: str
    object: str
    pages: int
    records: int
    done: bool = False

    def __str__(self) -> str:
        state = "done" if self.done else "committed"
        return f"{self.source}:{self.object}: {state} {self.pages} page(s), {self.records} record(s)"


@dataclass
class SyncReport:
    """The outcome of `sync_source`: per-object mirror changes, drift, the validation load and history."""

    source: str
    as_of: datetime
    objects: dict[str, ObjectSync] = field(default_factory=dict)
    load: LoadReport | None = None
    history: HistoryReport | None = None

    @property
    def drift(self) -> list[DriftEvent]:
        return [event for result in self.objects.values() for event in result.drift]

    @property
    def refused(self) -> dict[str, str]:
        """Objects not loaded (refused or failed), with the message saying why and what was kept."""
        refused = {name: r.message for name, r in self.objects.items() if r.status != "synced"}
        if self.load is not None:
            # The load's message adds what was kept (raw.<object> and its row count).
            refused.update(self.load.refused)
        return refused

    @property
    def has_problems(self) -> bool:
        """True when an object was refused or failed, a row was quarantined, or the schema drifted."""
        load_problems = self.load is not None and self.load.has_problems
        return bool(self.refused) or load_problems or bool(self.drift)

    def summary_lines(self) -> list[str]:
        """Human sentences for the CLI and the Dagster log: mirror changes per object, then the load."""
        lines: list[str] = []
        for name, r in self.objects.items():
            read = "full read" if r.full else "incremental"
            if r.status == "synced":
                lines.append(
                    f"{self.source}:{name}: {read}, {r.pages} page(s): {r.inserted} new, {r.updated} changed, "
                    f"{r.unchanged} unchanged, {r.deleted} deleted"
                )
            else:
                lines.append(f"{self.source}:{name}: {r.status} — {r.message}")
            for event in r.drift:
                lines.append(f"{self.source}:{name}: schema drift ({event.kind}) — {event.detail}")
        if self.load is not None:
            lines += self.load.summary_lines()
        if self.history is not None:
            lines += self.history.summary_lines()
        return lines


# --------------------------------------------------------------------------- helpers


def mirror_table(source: str, object_name: str) -> str:
    """The mirror table of one source object: `src.<source>__<object>`."""
    return f"{MIRROR_SCHEMA}.{source}__{object_name}"


def _mirror_ddl(table: str, obj: SorObject) -> str:
    columns = ",\n".join(f"    {name} varchar" for name in obj.column_names)
    return f"""
create table if not exists {table} (
    _key           varchar   not null,
{columns},
    _extra         json,
    _row_hash      varchar   not null,
    _deleted       boolean   not null,
    _first_seen_at timestamp not null,
    _synced_at     timestamp not null,
    _page_seq      bigint    not null,
    _ordinal       bigint    not null
)"""


def _text(value: Any) -> str | None:
    """Contract text for one value: empty is null (as in a CSV); stray non-text values are rendered."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value != "" else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass
class _PreparedPage:
    """A page's records as mirror rows (last copy of a key wins), plus what its shape says."""

    rows: dict[str, dict[str, Any]]
    absent_columns: list[str]
    extra_fields: list[str]


def _prepare(obj: SorObject, page: Page) -> _PreparedPage:
    names = obj.column_names
    rows: dict[str, dict[str, Any]] = {}
    present: set[str] = set()
    extra_fields: dict[str, None] = {}
    for record in page.records:
        present.update(record)
        values = [_text(record.get(name)) for name in names]
        extra = {k: v for k, v in record.items() if k not in names}
        for name in extra:
            extra_fields.setdefault(name, None)
        extra_json = json.dumps(extra, sort_keys=True, ensure_ascii=False, default=str) if extra else None
        row_hash = hashlib.sha256(
            json.dumps([values, extra_json], ensure_ascii=False).encode("utf-8")
        ).hexdigest()
        key = values[0]
        if key is None or not key.strip():
            key = f"{_MISSING_KEY_PREFIX}{row_hash[:16]}"
        rows.pop(key, None)  # a key changed twice in one page keeps its latest content
        rows[key] = {
            "_key": key,
            **dict(zip(names, values, strict=True)),
            "_extra": extra_json,
            "_row_hash": row_hash,
        }
    absent = [name for name in names if page.records and name not in present]
    return _PreparedPage(rows=rows, absent_columns=absent, extra_fields=list(extra_fields))


def _page_table(obj: SorObject, rows: Sequence[dict[str, Any]]) -> pa.Table:
    columns = ["_key", *obj.column_names, "_extra", "_row_hash"]
    data = {name: pa.array([row[name] for row in rows], type=pa.string()) for name in columns}
    data["_position"] = pa.array(range(len(rows)), type=pa.int64())
    return pa.table(data)


# --------------------------------------------------------------------------- state


@dataclass
class _CursorState:
    cursor: str | None
    pages_committed: int
    full_in_progress: bool


def _read_state(con: duckdb.DuckDBPyConnection, source: str, object_name: str) -> _CursorState:
    rows = _run(
        con,
        f"select cursor, pages_committed, full_sync_started_at from {CURSOR_TABLE} where source = ? and object = ?",
        [source, object_name],
    )
    if not rows:
        _run(
            con, f"insert into {CURSOR_TABLE} values (?, ?, null, null, 0, null, null)", [source, object_name]
        )
        return _CursorState(cursor=None, pages_committed=0, full_in_progress=False)
    cursor, pages, started = rows[0]
    return _CursorState(cursor=cursor, pages_committed=int(pages), full_in_progress=started is not None)


def stored_cursors(con: duckdb.DuckDBPyConnection, source: str) -> dict[str, str | None]:
    """The cursor per object for `Connector.changed()`; None while a full read is due or unfinished.

    Only reads (a sensor calls it on a read-only connection): no cursor table yet means no cursors.
    """
    exists = _run(
        con,
        "select count(*) from information_schema.tables where table_schema = 'ops' and table_name = 'sync_cursors'",
    )[0][0]
    if not exists:
        return {}
    rows = _run(
        con,
        f"select object, case when full_sync_started_at is null then cursor end from {CURSOR_TABLE} "
        "where source = ?",
        [source],
    )
    return {name: cursor for name, cursor in rows}


# --------------------------------------------------------------------------- one page


def _commit_page(
    con: duckdb.DuckDBPyConnection,
    source: str,
    obj: SorObject,
    page: Page,
    prepared: _PreparedPage,
    page_seq: int,
    full: bool,
    as_of: datetime,
    result: ObjectSync,
) -> None:
    """Upsert the page's records, apply its deletions and store its cursor, all in one transaction."""
    table = mirror_table(source, obj.name)
    rows = list(prepared.rows.values())
    con.register("_al_sync_page", _page_table(obj, rows))
    try:
        with _transaction(con):
            existing = {
                key: (row_hash, deleted)
                for key, row_hash, deleted in _run(
                    con,
                    f"select m._key, m._row_hash, m._deleted from {table} as m "
                    "join _al_sync_page as p on m._key = p._key",
                )
            }
            inserted = updated = unchanged = 0
            for row in rows:
                before = existing.get(row["_key"])
                if before is None:
                    inserted += 1
                elif before[0] == row["_row_hash"] and not before[1]:
                    unchanged += 1
                else:
                    updated += 1
            assignments = ", ".join(
                f"{name} = p.{name}" for name in (*obj.column_names, "_extra", "_row_hash")
            )
            if updated:
                _run(
                    con,
                    f"update {table} as m set {assignments}, _deleted = false, _synced_at = ?, _page_seq = ? "
                    "from _al_sync_page as p where m._key = p._key and (m._row_hash <> p._row_hash or m._deleted)",
                    [as_of, page_seq],
                )
            if inserted:
                columns = ", ".join(f"p.{name}" for name in obj.column_names)
                # New keys get the next row numbers in the order the source delivered them, so a first full
                # read numbers rows exactly as a CSV of the same records would.
                _run(
                    con,
                    f"""
                    insert into {table}
                    select p._key, {columns}, p._extra, p._row_hash, false, ?, ?, ?,
                           (select coalesce(max(_ordinal), 0) from {table})
                             + row_number() over (order by p._position)
                    from _al_sync_page as p
                    where not exists (select 1 from {table} as m where m._key = p._key)
                    """,
                    [as_of, as_of, page_seq],
                )
            deleted = 0
            if page.deleted_keys:
                keys = sorted(set(page.deleted_keys))
                deleted = _run(
                    con,
                    f"select count(*) from {table} where not _deleted and _key in (select unnest(?::varchar[]))",
                    [keys],
                )[0][0]
                _run(
                    con,
                    f"update {table} set _deleted = true, _synced_at = ?, _page_seq = ? "
                    "where not _deleted and _key in (select unnest(?::varchar[]))",
                    [as_of, page_seq, keys],
                )
            if full and rows:
                _run(
                    con, f"insert into {SEEN_TABLE} select ?, ?, _key from _al_sync_page", [source, obj.name]
                )
            for column in prepared.extra_fields:
                detail = f"field {column!r} is not in the contract; kept in {table}._extra, not loaded"
                event = record_drift(con, source, obj.name, column, "added", detail, as_of)
                if not any(e.column == column and e.kind == "added" for e in result.drift):
                    result.drift.append(event)
            for column in prepared.absent_columns:
                detail = f"optional column {column!r} is absent from every record of a page; stored as null"
                event = record_drift(con, source, obj.name, column, "removed", detail, as_of)
                if not any(e.column == column and e.kind == "removed" for e in result.drift):
                    result.drift.append(event)
            stored = _run(
                con,
                f"select cursor from {CURSOR_TABLE} where source = ? and object = ?",
                [source, obj.name],
            )[0][0]
            # An incremental page that changed nothing and leaves the cursor where it was (an overlap
            # re-read of unchanged records) leaves the cursor row alone too: an unchanged source
            # changes nothing, timestamps included.
            if full or inserted or updated or deleted or page.cursor not in (None, stored):
                _run(
                    con,
                    f"update {CURSOR_TABLE} set cursor = coalesce(?, cursor), synced_at = ?, pages_committed = ? "
                    "where source = ? and object = ?",
                    [page.cursor, as_of, page_seq, source, obj.name],
                )
    finally:
        con.unregister("_al_sync_page")
    result.inserted += inserted
    result.updated += updated
    result.unchanged += unchanged
    result.deleted += deleted


def _start_full_read(con: duckdb.DuckDBPyConnection, source: str, object_name: str, as_of: datetime) -> None:
    with _transaction(con):
        _run(con, f"delete from {SEEN_TABLE} where source = ? and object = ?", [source, object_name])
        _run(
            con,
            f"update {CURSOR_TABLE} set full_sync_started_at = ? where source = ? and object = ?",
            [as_of, source, object_name],
        )


def _finish_full_read(
    con: duckdb.DuckDBPyConnection, source: str, obj: SorObject, page_seq: int, as_of: datetime
) -> int:
    """Mark every key the completed full read did not see as deleted; returns how many."""
    table = mirror_table(source, obj.name)
    unseen = f"""not _deleted and _key not in (
        select record_key from {SEEN_TABLE} where source = ? and object = ?)"""
    with _transaction(con):
        gone = _run(con, f"select count(*) from {table} where {unseen}", [source, obj.name])[0][0]
        if gone:
            _run(
                con,
                f"update {table} set _deleted = true, _synced_at = ?, _page_seq = ? where {unseen}",
                [as_of, page_seq, source, obj.name],
            )
        _run(con, f"delete from {SEEN_TABLE} where source = ? and object = ?", [source, obj.name])
        _run(
            con,
            f"update {CURSOR_TABLE} set full_sync_started_at = null, last_full_sync_at = ? "
            "where source = ? and object = ?",
            [as_of, source, obj.name],
        )
    return int(gone)


# --------------------------------------------------------------------------- one object


def _sync_object(
    db: Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]],
    connector: Connector,
    obj: SorObject,
    as_of: datetime,
    force_full: bool,
    progress: Callable[[SyncProgress], None] | None,
) -> ObjectSync:
    source = connector.name
    table = mirror_table(source, obj.name)
    with db() as con:
        _run(con, _mirror_ddl(table, obj))
        state = _read_state(con, source, obj.name)
        full = force_full or state.cursor is None or state.full_in_progress
        if full:
            _start_full_read(con, source, obj.name, as_of)
    result = ObjectSync(object=obj.name, full=full, cursor=state.cursor)
    plan = SyncPlan(object=obj.name, cursor=None if full else state.cursor)
    page_seq = state.pages_committed
    records = 0
    pages = connector.pages(plan)
    try:
        for page in pages:
            if page.object != obj.name:
                raise ConnectorError(
                    f"{source}: asked for {obj.name} but got a page of {page.object}; "
                    f"nothing of that page stored, {table} holds the pages committed before it"
                )
            prepared = _prepare(obj, page)
            missing = [c for c in prepared.absent_columns if obj.column(c).required]
            if missing:
                with db() as con:
                    for column in missing:
                        detail = f"required column {column!r} is absent from every record of a page"
                        result.drift.append(
                            record_drift(con, source, obj.name, column, "removed", detail, as_of)
                        )
                result.status = "refused"
                result.message = (
                    f"lacks required column(s) {', '.join(missing)} in page "
                    f"{result.pages + 1} of this sync; that page was not stored and the cursor stays before "
                    f"it ({table} keeps {result.pages} page(s) committed in this sync)"
                )
                return result
            page_seq += 1
            with db() as con:
                _commit_page(con, source, obj, page, prepared, page_seq, full, as_of, result)
            result.pages += 1
            records += len(page.records) + len(page.deleted_keys)
            if page.cursor is not None:
                result.cursor = page.cursor
            if progress is not None:
                progress(SyncProgress(source, obj.name, result.pages, records))
    except ConnectorError as exc:
        result.status = "failed"
        result.message = (
            f"{exc}; {table} keeps the {result.pages} page(s) committed in this sync and the next sync "
            "resumes from the last stored cursor" + (" (the full read restarts)" if full else "")
        )
        return result
    finally:
        close = getattr(pages, "close", None)
        if close is not None:
            close()
    if full:
        with db() as con:
            result.deleted += _finish_full_read(con, source, obj, page_seq, as_of)
    if progress is not None:
        progress(SyncProgress(source, obj.name, result.pages, records, done=True))
    return result


def _mirror_exists(con: duckdb.DuckDBPyConnection, source: str, object_name: str) -> bool:
    found = _run(
        con,
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [MIRROR_SCHEMA, f"{source}__{object_name}"],
    )
    return bool(found[0][0])


def mirror_frame(con: duckdb.DuckDBPyConnection, source: str, object_name: str) -> SourceFrame:
    """The object's live mirror rows as contract text, ready for `load_frames`."""
    obj = OBJECTS[object_name]
    table = mirror_table(source, object_name)
    names = list(obj.column_names)
    rows = _run(
        con,
        f"select {', '.join(names)}, _ordinal, _row_hash from {table} where not _deleted order by _ordinal",
    )
    data = pl.DataFrame([r[: len(names)] for r in rows], schema=dict.fromkeys(names, pl.String), orient="row")
    digest = hashlib.sha256()
    for r in rows:
        digest.update(f"{r[-2]}:{r[-1]}\n".encode())
    label = f"{source}:{object_name}"
    return SourceFrame(
        data=data,
        source_label=label,
        row_numbers=[int(r[-2]) for r in rows],
        fingerprint=digest.hexdigest()[:16],
    )


# --------------------------------------------------------------------------- the sync


def _opener(con: ConnectionOrFactory) -> Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]:
    if isinstance(con, duckdb.DuckDBPyConnection):
        return lambda: nullcontext(con)
    return con


def sync_source(
    con: ConnectionOrFactory,
    connector: Connector,
    as_of: datetime,
    objects: Sequence[str] | None = None,
    progress: Callable[[SyncProgress], None] | None = None,
    *,
    full: bool = False,
) -> SyncReport:
    """Sync one source into its mirror, then validate and load the synced objects into raw.* and hist.*.

    `con` is an open connection (not inside a transaction) or a factory such as
    `lambda: actionlayer.db.connect(path)`: with a factory the database is opened per page, so it is not
    held while the source is slow. `objects` limits the sync (default: all the connector provides);
    `full` forces a full read, which also finds deletions a source cannot report incrementally.
    Every provided object with a mirror is then validated and loaded (selected or not, so deletions
    cascade); objects the source does not provide are left alone and serve as reference targets.
    """
    as_of = parse_as_of(as_of)
    source = connector.name
    if not _SOURCE_NAME_RE.match(source or ""):
        raise ValueError(
            f"source name {source!r} is not a plain lower-case identifier; it names tables src.<source>__<object>"
        )
    provided = list(connector.objects())
    unknown = [name for name in provided if name not in OBJECTS]
    if unknown:
        raise ValueError(
            f"{source} offers unknown object(s) {', '.join(unknown)}; the contract has {', '.join(OBJECT_NAMES)}"
        )
    selected = provided if objects is None else list(objects)
    not_offered = [name for name in selected if name not in provided]
    if not_offered:
        raise ValueError(
            f"{source} does not provide {', '.join(not_offered)}; it provides {', '.join(provided) or 'nothing'}"
        )
    db = _opener(con)
    with db() as connection:
        _run(connection, _SYNC_DDL + DRIFT_DDL)

    report = SyncReport(source=source, as_of=as_of)
    for name in OBJECT_NAMES:
        if name in selected:
            report.objects[name] = _sync_object(db, connector, OBJECTS[name], as_of, full, progress)

    with db() as connection:
        frames: dict[str, SourceFrame] = {}
        for name in provided:
            result = report.objects.get(name)
            if result is not None and result.status != "synced":
                # Refusing through load_frames writes the load_log row and keeps raw.<object> as it is.
                frames[name] = SourceFrame(
                    data=pl.DataFrame(), source_label=f"{source}:{name}", read_error=result.message
                )
            elif result is not None or _mirror_exists(connection, source, name):
                # Objects outside `objects` are revalidated from their mirrors too: a deletion in a parent
                # must cascade to children this sync did not read.
                frames[name] = mirror_frame(connection, source, name)
        report.load = load_frames(connection, frames, as_of, source=source)
        loaded = [name for name, result in report.load.objects.items() if result.status == "loaded"]
        report.history = record_history(connection, loaded, as_of, report.load.objects)
    return report


def sync_cursor_rows(con: duckdb.DuckDBPyConnection, source: str) -> list[dict[str, Any]]:
    """The cursor table's rows for one source, for reports and tests."""
    cursor = con.execute(f"select * from {CURSOR_TABLE} where source = ? order by object", [source])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


__all__ = [
    "CURSOR_TABLE",
    "DRIFT_TABLE",
    "MIRROR_SCHEMA",
    "DriftEvent",
    "ObjectSync",
    "SyncProgress",
    "SyncReport",
    "mirror_frame",
    "mirror_table",
    "stored_cursors",
    "sync_cursor_rows",
    "sync_source",
]
