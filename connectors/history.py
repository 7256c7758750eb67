"""Versioned history of every canonical object: `hist.<object>`, kept SCD2-style from `raw.<object>`.

One responsibility: after a successful load, record what `raw.<object>` holds at the run's as-of time
as versions with `_valid_from` / `_valid_to` (null = current), so any past moment can be reconstructed
with `as_of_relation`. Any source (a file folder or a connector sync) calls it after loading.

Rules:
- A version's identity is its key and `_row_hash`, a 64-bit hash of the contract columns only: a reload
  that changes nothing but `_loaded_at`, `_source_file` or `_row_number` opens no new version. It is
  DuckDB's `hash()` (a stored MD5 text column cost several times as much to write at scale), which is
  only stable within one DuckDB version: `ops.history_log.row_hash_basis` says what the hashes were
  computed under, and a table whose basis differs (or that still holds the MD5 text of earlier releases)
  has every version's hash recomputed from its own columns first, so an upgrade opens no versions.
- New keys open a version at as-of; a changed row closes its current version at as-of and opens one;
  a key gone from raw closes its version at as-of.
- Repeating an as-of is idempotent: the versions that as-of opened are removed and the ones it closed
  reopened before it is applied again, so the history ends in the latest load's state for that moment.
- An as-of earlier than one already recorded for the object is not applied (history only moves
  forward); the report says so and the history is left as it was.
- Each object is written in its own transaction: the caller must not be inside one.
- `ops.history_log` records each as-of applied per object. After a row-diffed load (which rewrote only
  the rows it changed, see connectors/files.py) whose previous load's as-of is the last one applied, only
  the rows that load wrote and the keys gone from raw are compared: the other rows are those the last
  application recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import duckdb

from actionlayer.config import parse_as_of
from actionlayer.contract import LOAD_METADATA_COLUMNS, OBJECTS, SorObject, get_object
from actionlayer.db import run as _run
from actionlayer.db import transaction as _transaction
from connectors.files import LoadReport, ObjectLoad

HIST_SCHEMA = "hist"
_BOOKKEEPING = (
    ("_valid_from", "TIMESTAMP NOT NULL"),
    ("_valid_to", "TIMESTAMP"),
    ("_row_hash", "UBIGINT NOT NULL"),
)
# What `_row_hash` values are computed under; a change makes the next application recompute them.
ROW_HASH_BASIS = f"duckdb-hash {duckdb.__version__} v1"


@dataclass
class ObjectHistory:
    """What one history update did to one object."""

    object: str
    opened: int = 0
    closed: int = 0
    unchanged: int = 0
    message: str = ""
    applied: bool = True


@dataclass
class HistoryReport:
    as_of: datetime
    objects: dict[str, ObjectHistory] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return [f"{name}: {h.message}" for name, h in self.objects.items() if not h.applied]

    def summary_lines(self) -> list[str]:
        lines = []
        for name, h in self.objects.items():
            if h.applied:
                lines.append(
                    f"hist.{name}: {h.opened} version(s) opened, {h.closed} closed, {h.unchanged} unchanged"
                )
            else:
                lines.append(f"hist.{name}: not recorded — {h.message}")
        return lines


def hist_table(object_name: str) -> str:
    return f"{HIST_SCHEMA}.{get_object(object_name).name}"


def _hist_ddl(obj: SorObject) -> str:
    lines = [f"    {c.name} {c.duckdb_type}" for c in obj.columns]
    lines += [f"    {name} {sql_type}" for name, sql_type in (*LOAD_METADATA_COLUMNS, *_BOOKKEEPING)]
    return f"create table if not exists {hist_table(obj.name)} (\n" + ",\n".join(lines) + "\n)"


def _row_hash_sql(obj: SorObject) -> str:
    return f"hash({', '.join(obj.column_names)})"


def _raw_exists(con: duckdb.DuckDBPyConnection, obj: SorObject) -> bool:
    return bool(
        _run(
            con,
            "select count(*) from information_schema.tables where table_schema = 'raw' and table_name = ?",
            [obj.name],
        )[0][0]
    )


_HISTORY_LOG_DDL = """
create schema if not exists ops;
create table if not exists ops.history_log (object varchar not null, as_of timestamp not null);
alter table ops.history_log add column if not exists row_hash_basis varchar;
"""
_LOG_APPLIED = "insert into ops.history_log (object, as_of, row_hash_basis) values (?, ?, ?)"


def _last_applied(con: duckdb.DuckDBPyConnection, obj: SorObject) -> datetime | None:
    rows = _run(con, "select max(as_of) from ops.history_log where object = ?", [obj.name])
    return rows[0][0] if rows else None


def _rehash_if_needed(con: duckdb.DuckDBPyConnection, obj: SorObject) -> None:
    """Recompute every version's `_row_hash` from its own columns when they were computed under another
    basis than `ROW_HASH_BASIS` (an MD5 text column of an earlier release, another DuckDB version), so
    unchanged records compare equal to raw again; an empty table only gets the current column type."""
    table = hist_table(obj.name)
    dtype = _run(
        con,
        "select data_type from information_schema.columns "
        "where table_schema = ? and table_name = ? and column_name = '_row_hash'",
        [HIST_SCHEMA, obj.name],
    )[0][0]
    if dtype == "UBIGINT":
        if not _run(con, f"select count(*) from (select 1 from {table} limit 1)")[0][0]:
            return
        last = _run(
            con,
            "select row_hash_basis from ops.history_log where object = ? order by as_of desc, rowid desc limit 1",
            [obj.name],
        )
        if last and last[0][0] == ROW_HASH_BASIS:
            return
        with _transaction(con):
            _run(con, f"update {table} set _row_hash = {_row_hash_sql(obj)}")
        return
    with _transaction(con):
        _run(con, f"alter table {table} alter _row_hash set data type UBIGINT using {_row_hash_sql(obj)}")


def _open_new_versions(con: duckdb.DuckDBPyConnection, obj: SorObject, columns: str, as_of: datetime) -> int:
    """Open a version at `as_of` for each row of `_al_hist_now` that no current version holds; the count."""
    table, key = hist_table(obj.name), obj.key
    return _run(
        con,
        f"""insert into {table}
        select {columns}, ?, null, n._row_hash from _al_hist_now as n
        where not exists (
            select 1 from {table} as h
            where h._valid_to is null and h.{key} = n.{key} and h._row_hash = n._row_hash)""",
        [as_of],
    )[0][0]


def _record_changed(
    con: duckdb.DuckDBPyConnection, obj: SorObject, as_of: datetime, result: ObjectHistory
) -> None:
    """Apply a row-diffed load: raw rows written at `as_of` and keys gone from raw against the current
    versions; inside the caller's transaction."""
    table, key = hist_table(obj.name), obj.key
    columns = ", ".join([*obj.column_names, *(name for name, _ in LOAD_METADATA_COLUMNS)])
    _run(
        con,
        f"create or replace temp table _al_hist_now as select {columns}, {_row_hash_sql(obj)} as _row_hash "
        f"from raw.{obj.name} where _loaded_at = ?",
        [as_of],
    )
    result.closed = _run(
        con,
        f"""update {table} as h set _valid_to = ?
        where h._valid_to is null
          and (h.{key} in (select {key} from _al_hist_now) or h.{key} not in (select {key} from raw.{obj.name}))
          and not exists (select 1 from _al_hist_now as n where n.{key} = h.{key} and n._row_hash = h._row_hash)""",
        [as_of],
    )[0][0]
    result.opened = _open_new_versions(con, obj, columns, as_of)
    current = _run(con, f"select count(*) from {table} where _valid_to is null")[0][0]
    result.unchanged = current - result.opened
    _run(con, "drop table _al_hist_now")


def _record_one(
    con: duckdb.DuckDBPyConnection, obj: SorObject, as_of: datetime, load: ObjectLoad | None = None
) -> ObjectHistory:
    result = ObjectHistory(obj.name)
    table = hist_table(obj.name)
    if not _raw_exists(con, obj):
        result.applied = False
        result.message = f"no raw.{obj.name} table to record; {table} left as it was"
        return result
    _run(con, _hist_ddl(obj))
    latest = _run(con, f"select max(greatest(_valid_from, coalesce(_valid_to, _valid_from))) from {table}")[
        0
    ][0]
    if latest is not None and latest > as_of:
        result.applied = False
        result.message = (
            f"as-of {as_of:%Y-%m-%d %H:%M:%S} is before the latest recorded change ({latest:%Y-%m-%d %H:%M:%S}); "
            f"history only moves forward, {table} left as it was"
        )
        return result
    _run(con, _HISTORY_LOG_DDL)
    _rehash_if_needed(con, obj)
    diffed = load is not None and load.diffed_since is not None and load.diffed_since < as_of
    if diffed and load is not None and _last_applied(con, obj) == load.diffed_since:
        with _transaction(con):
            _record_changed(con, obj, as_of, result)
            _run(con, _LOG_APPLIED, [obj.name, as_of, ROW_HASH_BASIS])
        return result
    key = obj.key
    columns = ", ".join([*obj.column_names, *(name for name, _ in LOAD_METADATA_COLUMNS)])
    if latest is None:
        # an empty history (the first load): every raw row opens a version, nothing to compare with
        with _transaction(con):
            result.opened = _run(
                con,
                f"insert into {table} select {columns}, ?, null, {_row_hash_sql(obj)} from raw.{obj.name}",
                [as_of],
            )[0][0]
            _run(con, _LOG_APPLIED, [obj.name, as_of, ROW_HASH_BASIS])
        return result
    current = f"select {key} as k, _row_hash from {table} where _valid_to is null"
    with _transaction(con):
        _run(con, f"create or replace temp table _al_hist_before as {current}")
        # Undo an earlier application of this same as-of, so repeating it converges on the latest load.
        _run(con, f"delete from {table} where _valid_from = ?", [as_of])
        _run(con, f"update {table} set _valid_to = null where _valid_to = ?", [as_of])
        _run(
            con,
            f"create or replace temp table _al_hist_now as "
            f"select {columns}, {_row_hash_sql(obj)} as _row_hash from raw.{obj.name}",
        )
        _run(
            con,
            f"""update {table} as h set _valid_to = ?
            where h._valid_to is null and not exists (
                select 1 from _al_hist_now as n where n.{key} = h.{key} and n._row_hash = h._row_hash)""",
            [as_of],
        )
        _open_new_versions(con, obj, columns, as_of)
        # Counted against the state before this call, so a repeated as-of reports no change.
        before, after = "_al_hist_before", f"({current})"
        result.opened = _run(con, f"select count(*) from (from {after} except from {before})")[0][0]
        result.closed = _run(con, f"select count(*) from (from {before} except from {after})")[0][0]
        result.unchanged = _run(con, f"select count(*) from (from {before} intersect from {after})")[0][0]
        _run(con, "drop table _al_hist_now")
        _run(con, "drop table _al_hist_before")
        _run(con, _LOG_APPLIED, [obj.name, as_of, ROW_HASH_BASIS])
    return result


def ensure_hist_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create every `hist.<object>` (empty) that does not exist yet, so models reading the history (the
    outcome evaluation) build before the first load has recorded any."""
    _run(con, f"create schema if not exists {HIST_SCHEMA}")
    for obj in OBJECTS.values():
        _run(con, _hist_ddl(obj))


def record_history(
    con: duckdb.DuckDBPyConnection,
    objects: Sequence[str],
    as_of: datetime,
    loads: dict[str, ObjectLoad] | None = None,
) -> HistoryReport:
    """Record `raw.<object>` at `as_of` as versions in `hist.<object>` for each named object; `loads` (the
    load of each object at `as_of`) lets a row-diffed load compare only the rows it wrote."""
    as_of = parse_as_of(as_of)
    _run(con, f"create schema if not exists {HIST_SCHEMA}")
    report = HistoryReport(as_of=as_of)
    for name in OBJECTS:
        if name in objects:
            report.objects[name] = _record_one(con, OBJECTS[name], as_of, (loads or {}).get(name))
    unknown = [name for name in objects if name not in OBJECTS]
    if unknown:
        raise ValueError(f"unknown object(s) {', '.join(unknown)}; the contract has {', '.join(OBJECTS)}")
    return report


def record_load_history(con: duckdb.DuckDBPyConnection, load_report: LoadReport) -> HistoryReport:
    """Record history for every object a `LoadReport` (load_folder / load_frames) loaded, at its as-of.

    The file source's asset calls this right after `load_folder`. Refused, skipped and unchanged objects
    keep their history as it was: their raw tables did not change.
    """
    loaded = [name for name, result in load_report.objects.items() if result.status == "loaded"]
    return record_history(con, loaded, load_report.as_of, load_report.objects)


def as_of_relation(object_name: str, moment: datetime) -> str:
    """SQL selecting `object_name` as raw held it at `moment`: the versions valid then, raw's columns.

    Usable as a subquery: `select * from ({as_of_relation('deals', t)})`.
    """
    obj = get_object(object_name)
    when = parse_as_of(moment)
    literal = f"timestamp '{when:%Y-%m-%d %H:%M:%S.%f}'"
    columns = ", ".join([*obj.column_names, *(name for name, _ in LOAD_METADATA_COLUMNS)])
    return (
        f"select {columns} from {hist_table(obj.name)} "
        f"where _valid_from <= {literal} and (_valid_to is null or _valid_to > {literal})"
    )
