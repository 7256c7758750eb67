"""The PostgreSQL source: read canonical objects from tables or queries in a PostgreSQL database.

One responsibility: page through one configured table or query per canonical object and hand back its
rows as canonical contract text (connectors/base.py). Validation, quarantine and the mirror belong to
the sync. The module keeps three concerns apart:

- transport (`PgTransport`): one psycopg connection, session settings, Arrow conversion of a result and
  error messages that never carry the DSN's password;
- paging (`page_query`, `tie_query`, `null_key_query`): SQL built with `psycopg.sql` (identifiers
  quoted, every value a bound parameter), ordered by (updated column, key) and paged by keyset;
- cursor (`KeysetCursor`): the position after the last row of a page, as a JSON string.

Decisions other parts rely on:
- Cursor: `{"updated": <text of the updated column>, "key": <text of the key>}` of the page's last row
  (plus `"window"`, below). Values go back to PostgreSQL as untyped parameters, so the server casts
  them to the column's own type: timestamps, dates and integer versions all round-trip exactly. A
  cursor is valid once its page is stored.
- Overlap: an incremental read restarts at `updated >= cursor.updated - overlap_seconds` (default 300 s,
  connectors/base.py; `lookback_seconds` is its older name) to catch rows committed late with an older
  or equal updated value. Rows read again are upserted again by key, which the sync makes idempotent
  (unchanged content is counted unchanged). While a read is still inside that overlap its pages keep
  the stored cursor, so re-reading an unchanged table changes nothing. The overlap applies when the
  updated column holds timestamps or dates; with any other type (an integer version) reading resumes
  exactly after the cursor.
- Rows whose updated value is null come first (`nulls first`) and are read by full reads only.
  Rows whose key is null cannot be paged by key: a full read returns them in one last page (at most
  `page_size`, with a warning when there may be more) so the sync can quarantine them.
- Deletes: a table has no list of deleted keys. A full read (cursor None) returns every key, so the
  sync deletes the keys it did not see. An optional `deleted_flag` column per object turns soft-deleted
  rows (flag true, or for a non-boolean column any value other than null/false/0/no) into
  `deleted_keys`, which incremental reads see too. Hard deletes are only seen by a full read.
- Text out: timestamptz as ISO 8601 in UTC with `+00:00`; `timestamp without time zone` is UTC; a date
  is midnight UTC; booleans 'true'/'false'; numerics as PostgreSQL prints them (plain decimal, never
  an exponent); text unchanged. Values PostgreSQL can hold but the contract cannot ('infinity', 'NaN',
  BC dates) pass through as text for the sync to quarantine.
- Column mapping: a record's columns are the source columns (`select *`), renamed by the object's
  `columns:` map (canonical name -> source column). Source columns without a canonical name pass under
  their own names (the sync reports them as drift), except the updated column and the deleted flag,
  which are paging machinery.
- `changed()` asks per object whether any row has a later updated value than the cursor (`exists`, an
  index probe), then reads the (key, updated) pairs of the overlap window and compares their digest
  with the cursor's `window` (connectors.base.OverlapWindow): a late commit in the window, or one at
  the cursor's own updated value, is a change; the unchanged rows every read repeats are not. Without
  an overlap (or a temporal updated column) it asks for any row after the cursor's (updated, key).
  Hard deletes are seen by neither.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.string import TextLoader

from actionlayer.contract import OBJECT_NAMES, OBJECTS
from connectors.base import (
    DEFAULT_OVERLAP_SECONDS,
    EMPTY_WINDOW,
    ConnectorConfigError,
    ConnectorError,
    OverlapWindow,
    Page,
    Record,
    SyncPlan,
    overlap_setting,
)

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 5000
DEFAULT_CONNECT_TIMEOUT = 10

# The contract has no updated_at for these objects; their event time is the best default change marker.
# contracts has none either: its default, `updated_at`, must exist in the source table (or be configured).
DEFAULT_UPDATED_COLUMNS: dict[str, str] = {"activities": "occurred_at", "nps_responses": "responded_at"}

OBJECT_KEYS = frozenset({"table", "query", "updated_column", "key_column", "columns", "deleted_flag"})
SOURCE_KEYS = frozenset(
    {"dsn_env", "objects", "overlap_seconds", "lookback_seconds", "page_size", "connect_timeout"}
)
# Keys the surrounding config may add to every source entry.
IGNORED_SOURCE_KEYS = frozenset({"type", "kind", "connector"})

# Loaded as PostgreSQL's own text so that values Python cannot hold (infinity, BC dates, NaN, numerics
# beyond float range) survive to the sync instead of failing the whole page.
TEXT_LOADED_TYPES = ("timestamptz", "timestamp", "date", "numeric")
INTEGER_TYPES = frozenset({"int2", "int4", "int8", "oid"})
FLOAT_TYPES = frozenset({"float4", "float8"})
TIMESTAMP_TYPES = frozenset({"timestamptz", "timestamp", "date"})
FALSE_WORDS = frozenset({"", "false", "f", "0", "no", "n", "off"})

# PostgreSQL's ISO output: '2026-01-31 09:05:00.123456+00' (timestamptz) or without offset (timestamp).
_PG_TIMESTAMP = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2}) (?P<time>\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)"
    r"(?:(?P<hours>[+-]\d{2})(?::(?P<minutes>\d{2}))?(?::\d{2})?)?$"
)
_PG_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ObjectSpec:
    """Where one canonical object lives in the database and how it is paged."""

    object: str
    table: tuple[str, ...] | None
    query: str | None
    updated_column: str
    key_column: str
    columns: Mapping[str, str] = field(default_factory=dict)  # canonical name -> source column
    deleted_flag: str | None = None

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise ValueError(f"{self.object}: exactly one of table and query is needed")

    @property
    def described(self) -> str:
        """How errors name the object's SQL source."""
        if self.table is not None:
            return "table " + ".".join(self.table)
        return f"query for {self.object}"

    def source(self) -> sql.Composable:
        if self.table is not None:
            return sql.Identifier(*self.table)
        # '%' in the configured text is literal SQL, not a placeholder: the page query binds parameters.
        assert self.query is not None
        return sql.SQL("({}) as configured_query").format(sql.SQL(self.query.replace("%", "%%")))

    def output_name(self, source_column: str) -> str | None:
        """The record column for a source column, or None for paging machinery that is not data."""
        canonical = {source: name for name, source in self.columns.items()}
        if source_column in canonical:
            return canonical[source_column]
        if source_column in (self.updated_column, self.deleted_flag) and source_column not in (
            OBJECTS[self.object].column_names
        ):
            return None
        return source_column


def _fail(key: str, problem: str) -> ConnectorConfigError:
    return ConnectorConfigError(f"{key}: {problem}")


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _number(value: Any, key: str, *, minimum: float, integer: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        kind = "an integer" if integer else "a number"
        raise _fail(key, f"must be {kind}, got {value!r}")
    if value < minimum or not math.isfinite(value):
        raise _fail(key, f"must be at least {minimum:g}, got {value!r}")
    return value


def _object_spec(obj: str, raw: Any, prefix: str) -> ObjectSpec:
    if obj not in OBJECTS:
        raise _fail(prefix, f"unknown object {obj!r}; the contract has {', '.join(OBJECT_NAMES)}")
    if not isinstance(raw, Mapping):
        raise _fail(prefix, f"must be a mapping with `table` or `query`, got {raw!r}")
    unknown = sorted(set(raw) - OBJECT_KEYS)
    if unknown:
        raise _fail(f"{prefix}.{unknown[0]}", f"unknown key; known keys are {', '.join(sorted(OBJECT_KEYS))}")
    contract = OBJECTS[obj]

    table: tuple[str, ...] | None = None
    query: str | None = None
    if ("table" in raw) == ("query" in raw):
        raise _fail(f"{prefix}.table", "give exactly one of `table` (schema.name) or `query` (select ...)")
    if "table" in raw:
        parts = tuple(part.strip() for part in _text(raw["table"], f"{prefix}.table").split("."))
        if len(parts) > 2 or not all(parts):
            raise _fail(f"{prefix}.table", f"must be `name` or `schema.name`, got {raw['table']!r}")
        table = parts
    else:
        query = _text(raw["query"], f"{prefix}.query").rstrip(";").strip()
        if not re.match(r"(?is)^(select|with|values|table)\b", query):
            raise _fail(f"{prefix}.query", "must be a single select (or with ... select) statement")

    columns_raw = raw.get("columns") or {}
    if not isinstance(columns_raw, Mapping):
        raise _fail(
            f"{prefix}.columns", f"must map canonical column names to source columns, got {columns_raw!r}"
        )
    columns: dict[str, str] = {}
    for canonical, source_column in columns_raw.items():
        if canonical not in contract.column_names:
            raise _fail(
                f"{prefix}.columns.{canonical}",
                f"{obj} has no column {canonical!r}; its columns are {', '.join(contract.column_names)}",
            )
        columns[canonical] = _text(source_column, f"{prefix}.columns.{canonical}")
    sources = list(columns.values())
    if len(set(sources)) != len(sources):
        raise _fail(f"{prefix}.columns", "two canonical columns come from the same source column")

    if "key_column" in raw:
        key_column = _text(raw["key_column"], f"{prefix}.key_column")
        if columns.get(contract.key, key_column) != key_column:
            raise _fail(
                f"{prefix}.key_column", f"contradicts columns.{contract.key} ({columns[contract.key]!r})"
            )
        columns[contract.key] = key_column
    key_column = columns.get(contract.key, contract.key)

    default_updated = DEFAULT_UPDATED_COLUMNS.get(obj, "updated_at")
    if "updated_column" in raw:
        updated_column = _text(raw["updated_column"], f"{prefix}.updated_column")
    else:
        updated_column = columns.get(default_updated, default_updated)
    deleted_flag = _text(raw["deleted_flag"], f"{prefix}.deleted_flag") if "deleted_flag" in raw else None
    return ObjectSpec(obj, table, query, updated_column, key_column, columns, deleted_flag)


def redact_dsn(dsn: str) -> str:
    """`user@host:port/dbname` for logs and errors: never the password, never an unparsed DSN."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparseable DSN>"
    host = parts.get("host") or "localhost"
    where = f"{host}:{parts['port']}" if parts.get("port") else str(host)
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"{user}{where}/{parts.get('dbname', '')}"


# ---------------------------------------------------------------------------------------------- cursor


@dataclass(frozen=True)
class KeysetCursor:
    """The position after a page: the last row's updated value (None: null section) and key, as text."""

    updated: str | None
    key: str
    window: str | None = None  # digest of the overlap window before `updated`; None: empty or unknown

    def encode(self) -> str:
        document: dict[str, Any] = {"updated": self.updated, "key": self.key}
        if self.window is not None:
            document["window"] = self.window
        return json.dumps(document, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str, where: str) -> KeysetCursor:
        try:
            data = json.loads(text)
            updated, key = data["updated"], data["key"]
            window = data.get("window")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConnectorError(f"{where}: stored cursor {text!r} is not a Postgres keyset cursor") from exc
        if not isinstance(key, str) or not (updated is None or isinstance(updated, str)):
            raise ConnectorError(f"{where}: stored cursor {text!r} is not a Postgres keyset cursor")
        return cls(updated, key, window if isinstance(window, str) else None)

    def moment(self) -> datetime | None:
        """The updated value as a datetime; None in the null section or for a non-temporal column."""
        if self.updated is None:
            return None
        try:
            return datetime.fromisoformat(self.updated)
        except ValueError:
            return None  # an integer version or another non-temporal updated column

    def lookback_start(self, lookback: timedelta) -> str | None:
        """The updated value `lookback` before this cursor, or None when none applies (no overlap,
        null section, or an updated column that does not hold timestamps)."""
        moment = self.moment()
        if moment is None or lookback <= timedelta(0):
            return None
        return (moment - lookback).isoformat()


# ---------------------------------------------------------------------------------------------- paging


def _order(spec: ObjectSpec) -> sql.Composed:
    return sql.SQL("order by {u} asc nulls first, {k} asc").format(
        u=sql.Identifier(spec.updated_column), k=sql.Identifier(spec.key_column)
    )


def after_condition(spec: ObjectSpec, after: KeysetCursor) -> tuple[sql.Composed, list[Any]]:
    """Rows strictly after `after` in (updated nulls first, key) order."""
    u, k = sql.Identifier(spec.updated_column), sql.Identifier(spec.key_column)
    if after.updated is None:
        return sql.SQL("(({u} is null and {k} > %s) or {u} is not null)").format(u=u, k=k), [after.key]
    # A row comparison skips null updated values, which sort first and so lie before any such cursor.
    return sql.SQL("({u}, {k}) > (%s, %s)").format(u=u, k=k), [after.updated, after.key]


def page_query(
    spec: ObjectSpec, after: KeysetCursor | None, lower_bound: str | None, limit: int
) -> tuple[sql.Composed, list[Any]]:
    """One page: rows after `after` (or from `lower_bound` on, for a lookback), oldest change first."""
    conditions = [sql.SQL("{} is not null").format(sql.Identifier(spec.key_column))]
    params: list[Any] = []
    if lower_bound is not None:
        conditions.append(sql.SQL("{} >= %s").format(sql.Identifier(spec.updated_column)))
        params.append(lower_bound)
    elif after is not None:
        condition, values = after_condition(spec, after)
        conditions.append(condition)
        params.extend(values)
    query = sql.SQL("select * from {src} where {where} {order} limit %s").format(
        src=spec.source(), where=sql.SQL(" and ").join(conditions), order=_order(spec)
    )
    return query, [*params, limit]


def tie_query(spec: ObjectSpec, last: KeysetCursor) -> tuple[sql.Composed, list[Any]]:
    """Every row at exactly the page's last position: duplicates there must not be split by the limit."""
    u, k = sql.Identifier(spec.updated_column), sql.Identifier(spec.key_column)
    if last.updated is None:
        where, params = sql.SQL("{u} is null and {k} = %s").format(u=u, k=k), [last.key]
    else:
        where, params = sql.SQL("{u} = %s and {k} = %s").format(u=u, k=k), [last.updated, last.key]
    return sql.SQL("select * from {src} where {where}").format(src=spec.source(), where=where), params


def null_key_query(spec: ObjectSpec, limit: int) -> tuple[sql.Composed, list[Any]]:
    """Rows without a key, for the sync to quarantine (full reads only: they cannot be paged by key)."""
    return sql.SQL("select * from {src} where {k} is null {order} limit %s").format(
        src=spec.source(), k=sql.Identifier(spec.key_column), order=_order(spec)
    ), [limit]


def later_query(spec: ObjectSpec, after: KeysetCursor) -> tuple[sql.Composed, list[Any]]:
    """Whether any keyed row has an updated value later than the cursor's (an index probe)."""
    query = sql.SQL("select exists (select 1 from {src} where {k} is not null and {u} > %s)").format(
        src=spec.source(), k=sql.Identifier(spec.key_column), u=sql.Identifier(spec.updated_column)
    )
    return query, [after.updated]


def window_query(spec: ObjectSpec, after: KeysetCursor, lower_bound: str) -> tuple[sql.Composed, list[Any]]:
    """The (key, updated) pairs of the overlap window up to the cursor's updated value."""
    k, u = sql.Identifier(spec.key_column), sql.Identifier(spec.updated_column)
    query = sql.SQL("select {k}, {u} from {src} where {k} is not null and {u} >= %s and {u} <= %s").format(
        k=k, u=u, src=spec.source()
    )
    return query, [lower_bound, after.updated]


def _window_entry(position: KeysetCursor) -> str:
    return f"{position.key}\x1f{position.updated}"


def probe_query(spec: ObjectSpec, after: KeysetCursor) -> tuple[sql.Composed, list[Any]]:
    condition, params = after_condition(spec, after)
    query = sql.SQL("select exists (select 1 from {src} where {k} is not null and {cond})").format(
        src=spec.source(), k=sql.Identifier(spec.key_column), cond=condition
    )
    return query, params


# ------------------------------------------------------------------------------------------- transport


def _arrow_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    if isinstance(value, memoryview | bytes):
        return "\\x" + bytes(value).hex()  # PostgreSQL's own bytea text form
    return str(value)


class PgTransport:
    """One lazily opened, read-only, autocommit psycopg connection; results come back as Arrow tables
    whose fields carry the PostgreSQL type name in their metadata (`pg_type`)."""

    def __init__(self, source: str, dsn: str, connect_timeout: float) -> None:
        self.source = source
        self._dsn = dsn
        self._password = conninfo_to_dict(dsn).get("password") or ""
        self.connect_timeout = connect_timeout
        self.where = redact_dsn(dsn)
        self._conn: psycopg.Connection[Any] | None = None

    def scrub(self, message: str) -> str:
        """A driver message without the DSN or its password (libpq does not print them, but a future
        version or an odd DSN should not be able to leak them either)."""
        message = message.replace(self._dsn, self.where)
        if self._password:
            message = message.replace(self._password, "***")
        return message.strip()

    def _connection(self, what: str) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        log.info("source %s: connecting to PostgreSQL at %s", self.source, self.where)
        try:
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,  # each page is its own statement: no long-held snapshot or locks
                connect_timeout=max(2, math.ceil(self.connect_timeout)),  # libpq's minimum is 2 s
            )
            # UTC and ISO make timestamp text deterministic; read-only because a source is never written.
            conn.execute("set time zone 'UTC'")
            conn.execute("set datestyle = 'ISO, YMD'")
            conn.execute("set default_transaction_read_only = on")
        except psycopg.Error as exc:
            # `from None`: the driver's exception (and its traceback) is not passed on, only the scrubbed text.
            raise ConnectorError(
                f"source {self.source}, {what}: cannot connect to PostgreSQL at {self.where}: "
                f"{self.scrub(str(exc))}; nothing was read"
            ) from None
        for type_name in TEXT_LOADED_TYPES:
            conn.adapters.register_loader(type_name, TextLoader)
        self._conn = conn
        return conn

    def fetch(self, query: sql.Composable, params: Sequence[Any], *, what: str) -> pa.Table:
        """Run one select and return its rows as an Arrow table; `what` names object and SQL source."""
        conn = self._connection(what)
        try:
            cursor = conn.execute(query, params)
            rows = cursor.fetchall()
        except psycopg.Error as exc:
            statement = self.scrub(query.as_string(conn))
            primary = exc.diag.message_primary or str(exc).splitlines()[0]
            if isinstance(exc, psycopg.OperationalError):
                self.close()  # a broken connection is reopened on the next call
            raise ConnectorError(
                f"source {self.source}, {what}: PostgreSQL at {self.where} refused the read: "
                f"{self.scrub(primary)} (SQLSTATE {exc.sqlstate}); nothing from this page was kept. "
                f"SQL: {statement}"
            ) from None
        description = cursor.description or []
        fields, arrays = [], []
        for index, column in enumerate(description):
            info = conn.adapters.types.get(column.type_code)
            pg_type = info.name if info is not None else str(column.type_code)
            values = [row[index] for row in rows]
            if pg_type == "bool":
                arrow_type = pa.bool_()
            elif pg_type in INTEGER_TYPES:
                arrow_type = pa.int64()
            elif pg_type in FLOAT_TYPES:
                arrow_type = pa.float64()
            else:
                arrow_type = pa.string()
                values = [v if v is None or isinstance(v, str) else _arrow_value(v) for v in values]
            fields.append(pa.field(column.name, arrow_type, metadata={"pg_type": pg_type}))
            arrays.append(pa.array(values, type=arrow_type))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error as exc:
                log.warning("source %s: closing the connection failed: %s", self.source, self.scrub(str(exc)))
            self._conn = None


# ------------------------------------------------------------------------------------------ conversion


def contract_text(value: Any, pg_type: str) -> str | None:
    """One PostgreSQL value (as PgTransport loads it) as contract text."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        try:
            return format(Decimal(repr(value)), "f")
        except InvalidOperation:
            return repr(value)  # nan/inf: broken money, the sync says so
    if pg_type in ("timestamptz", "timestamp"):
        match = _PG_TIMESTAMP.match(value)
        if match is None:
            return value  # infinity, BC or year > 9999: kept as written for the quarantine
        hours, minutes = match["hours"] or "+00", match["minutes"] or "00"
        return f"{match['date']}T{match['time']}{hours}:{minutes}"
    if pg_type == "date":
        return f"{value}T00:00:00+00:00" if _PG_DATE.match(value) else value
    return str(value)


def _is_deleted(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return str(value).strip().lower() not in FALSE_WORDS


def to_page_rows(spec: ObjectSpec, table: pa.Table) -> tuple[list[Record], list[str], list[KeysetCursor]]:
    """Records, soft-deleted keys and each row's keyset position, from one page's Arrow table."""
    for needed, role in ((spec.updated_column, "updated_column"), (spec.key_column, "key_column")):
        if needed not in table.column_names:
            raise ConnectorError(f"{spec.described} returned no column {needed!r} ({role})")
    columns = []
    for arrow_field, column in zip(table.schema, table.columns, strict=True):
        pg_type = (arrow_field.metadata or {}).get(b"pg_type", b"").decode()
        columns.append((arrow_field.name, spec.output_name(arrow_field.name), pg_type, column.to_pylist()))
    by_name = {name: values for name, _, _, values in columns}
    updated_values, key_values = by_name[spec.updated_column], by_name[spec.key_column]
    flags = by_name.get(spec.deleted_flag) if spec.deleted_flag else None
    if spec.deleted_flag and flags is None:
        raise ConnectorError(f"{spec.described} returned no column {spec.deleted_flag!r} (deleted_flag)")

    records: list[Record] = []
    deleted: list[str] = []
    positions: list[KeysetCursor] = []
    for row in range(table.num_rows):
        key = key_values[row]
        updated = updated_values[row]
        positions.append(
            KeysetCursor(None if updated is None else str(updated), "" if key is None else str(key))
        )
        if flags is not None and key is not None and _is_deleted(flags[row]):
            deleted.append(str(key))
            continue
        records.append(
            {
                out: contract_text(values[row], pg_type)
                for _, out, pg_type, values in columns
                if out is not None
            }
        )
    return records, deleted, positions


def _stored(digest: str) -> str | None:
    """An empty window is kept as no digest, so cursors of quiet objects stay as they always were."""
    return None if digest == EMPTY_WINDOW else digest


# ---------------------------------------------------------------------------------------------- connector


class PostgresConnector:
    """A connectors.base.Connector over tables or queries in one PostgreSQL database."""

    def __init__(
        self,
        name: str,
        dsn: str,
        specs: Mapping[str, ObjectSpec],
        *,
        overlap: timedelta = timedelta(seconds=DEFAULT_OVERLAP_SECONDS),
        page_size: int = DEFAULT_PAGE_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.name = name
        self.specs = dict(specs)
        self.overlap = overlap
        self.page_size = page_size
        self.transport = PgTransport(name, dsn, connect_timeout)

    @classmethod
    def from_config(
        cls, name: str, config: Mapping[str, Any], environ: Mapping[str, str] = os.environ
    ) -> PostgresConnector:
        """Build from a `sources.<name>` entry; the DSN is read from the environment variable `dsn_env`."""
        prefix = f"sources.{name}"
        if not isinstance(config, Mapping):
            raise _fail(prefix, f"must be a mapping, got {config!r}")
        unknown = sorted(set(config) - SOURCE_KEYS - IGNORED_SOURCE_KEYS)
        if unknown:
            raise _fail(
                f"{prefix}.{unknown[0]}", f"unknown key; known keys are {', '.join(sorted(SOURCE_KEYS))}"
            )
        if "dsn_env" not in config:
            raise _fail(
                f"{prefix}.dsn_env", "missing: name the environment variable that holds the connection URI"
            )
        dsn_env = _text(config["dsn_env"], f"{prefix}.dsn_env")
        dsn = environ.get(dsn_env, "").strip()
        if not dsn:
            raise _fail(f"{prefix}.dsn_env", f"environment variable {dsn_env} is not set or empty")
        try:
            conninfo_to_dict(dsn)
        except psycopg.Error:
            # The driver's message may quote parts of the DSN, password included: it is not repeated.
            raise _fail(
                f"{prefix}.dsn_env", f"the value of {dsn_env} is not a valid PostgreSQL URI or DSN"
            ) from None

        objects = config.get("objects")
        if not isinstance(objects, Mapping) or not objects:
            raise _fail(f"{prefix}.objects", "must map at least one canonical object to a table or query")
        specs = {obj: _object_spec(str(obj), raw, f"{prefix}.objects.{obj}") for obj, raw in objects.items()}

        if "overlap_seconds" in config and "lookback_seconds" in config:
            raise _fail(
                f"{prefix}.lookback_seconds",
                "is the older name of overlap_seconds; give only overlap_seconds",
            )
        older = "lookback_seconds" in config
        key = "lookback_seconds" if older else "overlap_seconds"
        overlap = overlap_setting(
            {"overlap_seconds": config[key]} if key in config else {}, f"{prefix}.{key}: config key {key!r}"
        )
        page_size = _number(
            config.get("page_size", DEFAULT_PAGE_SIZE), f"{prefix}.page_size", minimum=1, integer=True
        )
        timeout = _number(
            config.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT), f"{prefix}.connect_timeout", minimum=1
        )
        return cls(
            name,
            dsn,
            specs,
            overlap=overlap,
            page_size=int(page_size),
            connect_timeout=timeout,
        )

    def objects(self) -> Sequence[str]:
        # Contract order keeps parents before children for the sync.
        return [obj for obj in OBJECT_NAMES if obj in self.specs]

    def _spec(self, obj: str) -> ObjectSpec:
        try:
            return self.specs[obj]
        except KeyError:
            raise ConnectorError(
                f"source {self.name} has no object {obj!r}; it provides {', '.join(self.objects())}"
            ) from None

    def _what(self, spec: ObjectSpec) -> str:
        return f"object {spec.object} ({spec.described})"

    def changed(self, cursors: Mapping[str, str | None]) -> list[str]:
        result = []
        for obj in self.objects():
            cursor = cursors.get(obj)
            if cursor is None:
                result.append(obj)
                continue
            spec = self.specs[obj]
            after = KeysetCursor.decode(cursor, f"source {self.name}, object {obj}")
            if self._changed(spec, after):
                result.append(obj)
        return result

    def _changed(self, spec: ObjectSpec, after: KeysetCursor) -> bool:
        what = self._what(spec)
        lower_bound = after.lookback_start(self.overlap)
        moment = after.moment()
        if lower_bound is None or moment is None:
            query, params = probe_query(spec, after)
            return bool(self.transport.fetch(query, params, what=what).column(0)[0].as_py())
        query, params = later_query(spec, after)
        if self.transport.fetch(query, params, what=what).column(0)[0].as_py():
            return True
        query, params = window_query(spec, after, lower_bound)
        table = self.transport.fetch(query, params, what=what)
        window = OverlapWindow(self.overlap)
        for key, updated in zip(*(column.to_pylist() for column in table.columns), strict=True):
            self._remember(window, KeysetCursor(None if updated is None else str(updated), str(key)))
        return _stored(window.digest(moment)) != after.window

    @staticmethod
    def _remember(window: OverlapWindow, position: KeysetCursor) -> None:
        moment = position.moment()
        if moment is not None:
            window.add(_window_entry(position), "", moment)

    def _page_cursor(
        self, start: KeysetCursor | None, last: KeysetCursor, window: OverlapWindow, final: bool
    ) -> KeysetCursor:
        """The cursor stored with a page: the stored one while the read is still inside its overlap
        (nothing new is past it yet), else the page's last row; with the digest of its window once
        everything up to it has been read."""
        last_moment = last.moment()
        if last_moment is None or self.overlap <= timedelta(0):
            return replace(last, window=None)
        start_moment = start.moment() if start is not None else None
        if start is not None and start_moment is not None and last_moment <= start_moment:
            if not final:
                return start
            return replace(start, window=_stored(window.digest(start_moment)))
        return replace(last, window=_stored(window.digest(last_moment)))

    def pages(self, plan: SyncPlan) -> Iterator[Page]:
        spec = self._spec(plan.object)
        what = self._what(spec)
        start = (
            None if plan.cursor is None else KeysetCursor.decode(plan.cursor, f"source {self.name}, {what}")
        )
        after = start
        lower_bound = start.lookback_start(self.overlap) if start is not None else None
        if lower_bound is not None:
            log.info(
                "source %s, %s: re-reading from %s (overlap %s)", self.name, what, lower_bound, self.overlap
            )
        window = OverlapWindow(self.overlap)
        last: KeysetCursor | None = None
        handed: str | None = plan.cursor
        final = False
        while True:
            query, params = page_query(spec, after, lower_bound, self.page_size)
            table = self.transport.fetch(query, params, what=what)
            if table.num_rows == 0:
                break
            records, deleted, positions = to_page_rows(spec, table)
            last = positions[-1]
            if table.num_rows >= self.page_size:
                table = self._with_ties(spec, table, positions, last, what)
                records, deleted, positions = to_page_rows(spec, table)
            for position in positions:
                self._remember(window, position)
            final = table.num_rows < self.page_size
            cursor = self._page_cursor(start, last, window, final).encode()
            log.info(
                "source %s, %s: page of %d records, %d deleted keys, up to %s",
                self.name,
                what,
                len(records),
                len(deleted),
                last.encode(),
            )
            yield Page(plan.object, records, deleted, cursor)
            handed = cursor
            if final:
                break
            after, lower_bound = last, None
        if last is not None and not final:
            # the last page was exactly full: its cursor still needs the digest of a finished read
            cursor = self._page_cursor(start, last, window, True).encode()
            if cursor != handed:
                yield Page(plan.object, [], [], cursor)
                handed = cursor
        if plan.full:
            yield from self._null_key_page(spec, what, handed)

    def _with_ties(
        self, spec: ObjectSpec, table: pa.Table, positions: list[KeysetCursor], last: KeysetCursor, what: str
    ) -> pa.Table:
        # Rows sharing the last (updated, key) may straddle the limit; the next page starts strictly after
        # that position, so all of them are read here (duplicate keys are the sync's to judge).
        keep = next(i for i in range(len(positions) + 1) if i == len(positions) or positions[i] == last)
        query, params = tie_query(spec, last)
        ties = self.transport.fetch(query, params, what=what)
        if ties.schema != table.schema:
            ties = ties.cast(table.schema)
        return pa.concat_tables([table.slice(0, keep), ties])

    def _null_key_page(self, spec: ObjectSpec, what: str, last: str | None) -> Iterator[Page]:
        query, params = null_key_query(spec, self.page_size)
        table = self.transport.fetch(query, params, what=what)
        if table.num_rows == 0:
            return
        records, _, _ = to_page_rows(spec, table)
        log.warning(
            "source %s, %s: %d rows have no key %s%s; they are passed on to be quarantined",
            self.name,
            what,
            table.num_rows,
            spec.key_column,
            " (only the first page of them was read)" if table.num_rows >= self.page_size else "",
        )
        # The cursor stays where the keyed rows ended: these rows have no position of their own.
        yield Page(spec.object, records, [], last)

    def close(self) -> None:
        self.transport.close()
