"""The file source: load a folder of canonical-contract files into `raw.*`, quarantining broken rows.

One responsibility: turn contract text (docs/sor_contract.md) into typed good rows in `raw.<object>`,
broken rows in `ops.quarantine` and one `ops.load_log` row per object, and say in words what happened.
`load_folder` reads `<object>.csv|parquet|xlsx` files; `load_frames` takes the same text as in-memory
frames (a connector sync's mirror), so every source is judged by this one validation. Each load is a
full snapshot of the objects it covers, so raw ends holding exactly its good rows; when the last load's
row digests (ops.row_digests_<object>) allow, only the rows not provably unchanged are validated and
applied to raw as deletes and inserts (connectors/row_diff.py), with the same raw, quarantine and log rows
as validating everything. A CSV or Parquet file is read in chunks (`CHUNK_ROWS`) and never held whole:
the checks that need the whole object (repeated keys, the row diff) read only each row's key and digest.

Decisions other parts rely on:
- One quarantine row per broken source row, with its most basic problem: missing_key, then
  conflicting_duplicate, then the first problem in contract column order, then broken_reference.
  Fixing that problem may reveal the next one on the following load.
- Keys and references are trimmed of surrounding white space; a key that is empty after trimming is
  missing. Enums are trimmed and lower-cased, currency upper-cased, emails and time zones trimmed.
  Free and single-line text are kept exactly as written (markup included).
- An empty required value is `unparseable` (an empty required reference is `broken_reference`).
- Money takes at most two decimals (DECIMAL(18,2)); more would be rounded silently, so it is
  `unparseable`. A score written as an integral decimal (`7.0`, as spreadsheets export it) is 7;
  a fractional score is `score_out_of_range`. A timestamp may also be a bare date (midnight UTC).
- References are checked against the parent's good rows of this load; a parent that was refused or not
  loaded in this call is checked through its existing `raw.<parent>` table; a parent with neither is not
  checked (a warning says so).
- Each object is written in its own transaction (raw table, quarantine rows, load_log row), so the
  caller's connection must not be inside a transaction already.
- A folder pass does not read an object whose inputs (file content and path, source, quality settings,
  parents' inputs) equal those of its last load and whose result could not differ at this as-of; it logs
  status `unchanged` and leaves raw, quarantine and history as they are (see `load_folder`).
- Known limits: currency is checked for shape (three letters), not against the ISO 4217 list; email
  addresses must be ASCII; a CSV with ragged rows or invalid UTF-8 refuses the whole object.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import zoneinfo
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import duckdb
import polars as pl

from actionlayer.config import parse_as_of
from actionlayer.contract import (
    LOAD_METADATA_COLUMNS,
    OBJECT_NAMES,
    OBJECTS,
    SCORE_MAX,
    SCORE_MIN,
    Column,
    Kind,
    SorObject,
)
from actionlayer.db import run as _run
from actionlayer.db import table_exists as _table_exists
from actionlayer.settings import QualityPolicy, load_quality_policy
from connectors import row_diff
from connectors.drift import DRIFT_DDL, DriftEvent, record_drift
from connectors.row_diff import DIGEST as _DIGEST
from connectors.row_diff import MAX_KEYS_SHOWN as _MAX_KEYS_SHOWN
from connectors.row_diff import MISSING_KEY as _MISSING_KEY
from connectors.row_diff import ROW as _ROW
from connectors.row_diff import ParentKeys as _ParentKeys

SOURCE_EXTENSIONS: tuple[str, ...] = ("csv", "parquet", "xlsx")

REASON_CODES: tuple[str, ...] = (
    "missing_key",
    "conflicting_duplicate",
    "unparseable",
    "impossible_date",
    "future_timestamp",
    "out_of_domain",
    "negative_amount",
    "score_out_of_range",
    "invalid_email",
    "unknown_timezone",
    "control_character",
    "broken_reference",
)

Status = Literal["loaded", "refused", "skipped", "unchanged"]

QUARANTINE_TABLE = "ops.quarantine"
LOAD_LOG_TABLE = "ops.load_log"

_OPS_DDL = """
create schema if not exists raw;
create schema if not exists ops;
create table if not exists ops.quarantine (
    object        varchar   not null,
    record_key    varchar,
    source_file   varchar   not null,
    row_number    bigint    not null,
    reason_code   varchar   not null,
    reason        varchar   not null,
    raw_values    varchar   not null,
    as_of         timestamp not null,
    first_seen_at timestamp not null
);
create table if not exists ops.load_log (
    as_of            timestamp not null,
    object           varchar   not null,
    source_file      varchar,
    fingerprint      varchar,
    rows_read        bigint    not null,
    rows_loaded      bigint    not null,
    rows_quarantined bigint    not null,
    status           varchar   not null,
    message          varchar   not null
);
-- added after the first release; existing databases gain them here
alter table ops.load_log add column if not exists source varchar;
alter table ops.load_log add column if not exists gate varchar;
alter table ops.load_log add column if not exists quarantine_counts varchar;
alter table ops.load_log add column if not exists input_digest varchar;
alter table ops.load_log add column if not exists stable_until timestamp;
alter table ops.load_log add column if not exists row_basis varchar;
"""
_LOG_COLUMNS = (
    "as_of, object, source_file, fingerprint, rows_read, rows_loaded, rows_quarantined, status, message, "
    "source, gate, quarantine_counts, input_digest, stable_until, row_basis"
)
# Why a load was refused (ops.load_log.gate); every refusal blocks the rules that read the object.
GATE_UNREADABLE = "unreadable"
GATE_MISSING_COLUMN = "missing_required_column"
GATE_TOO_MANY_BROKEN = "too_many_broken_rows"

# A future event may be up to one day ahead of as-of: clocks and time zones of source systems drift.
FUTURE_TOLERANCE = timedelta(days=1)

_CONTROL_RE = r"[\r\n\x00]"
# The plain shape most exports write, parsed without the general pattern's groups (ASCII digits only).
_PLAIN_TIMESTAMP_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}$"
_TIMESTAMP_RE = r"^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_EMAIL_RE = rf"^{_ATOM}(?:\.{_ATOM})*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.)+[A-Za-z]{{2,63}}$"
_EMAIL_MAX_LENGTH = 254
_NUMBER_RE = r"^[+-]?\d+(?:\.\d+)?$"
_MONEY_RE = r"^[+-]?\d{1,16}(?:\.\d{1,2})?$"
_INTEGRAL_RE = r"^[+-]?\d+(?:\.0+)?$"
_CURRENCY_RE = r"^[A-Za-z]{3}$"
_BOOL_VALUES = {"true": True, "1": True, "false": False, "0": False}

_CODE = "_reason_code"
_COLUMN = "_reason_column"


# --------------------------------------------------------------------------- report


@dataclass
class ObjectLoad:
    """What one load did to one object."""

    object: str
    status: Status
    source_file: str | None = None
    fingerprint: str | None = None
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    quarantine_counts: dict[str, int] = field(default_factory=dict)
    # Keys of quarantined rows per reason_code; a row without a key shows as "(row N)".
    quarantined_keys: dict[str, list[str]] = field(default_factory=dict)
    message: str = ""
    # for a refused load: which blocking check refused it (GATE_*)
    gate: str | None = None
    drift: list[DriftEvent] = field(default_factory=list)
    # what the load's outcome depends on besides as-of (file, source, quality settings, parents' inputs)
    input_digest: str | None = None
    # the first as-of at which this load's result could differ: the earliest timestamp it quarantined as
    # in the future stops being so then (None: no row depends on as-of)
    stable_until: datetime | None = None
    # for an unchanged object: the as-of of the load whose result it keeps, and the rows raw still holds
    unchanged_since: datetime | None = None
    rows_kept: int = 0
    # rows this load validated: all of them, or for a row-diffed load only the rows not already in raw
    # unchanged (new or changed content, duplicates, references to re-check, last load's broken rows)
    rows_validated: int = 0
    # what the row digests of this load were computed under (`_row_basis`); None: none were written
    row_basis: str | None = None
    # for a row-diffed load: the as-of of the load it diffed against. raw rows this load did not write
    # (`_loaded_at` before its as-of) are exactly as that load left them
    diffed_since: datetime | None = None


@dataclass
class LoadReport:
    """The outcome of `load_folder` / `load_frames`: per-object results and warnings, in dependency order."""

    folder: Path | None  # None when the frames did not come from a folder (a connector sync)
    as_of: datetime
    source: str = "files"
    objects: dict[str, ObjectLoad] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def refused(self) -> dict[str, str]:
        """Refused objects with the message saying why and what was kept."""
        return {name: o.message for name, o in self.objects.items() if o.status == "refused"}

    @property
    def skipped(self) -> dict[str, str]:
        return {name: o.message for name, o in self.objects.items() if o.status == "skipped"}

    @property
    def unchanged(self) -> dict[str, str]:
        """Objects whose file and inputs did not change since their last load: kept, not re-read."""
        return {name: o.message for name, o in self.objects.items() if o.status == "unchanged"}

    @property
    def rows_quarantined(self) -> int:
        return sum(o.rows_quarantined for o in self.objects.values())

    @property
    def has_problems(self) -> bool:
        """True when any row was quarantined or any object refused."""
        return self.rows_quarantined > 0 or bool(self.refused)

    def summary_lines(self) -> list[str]:
        """Human sentences for the CLI and the Dagster log, one per object, then the warnings."""
        lines: list[str] = []
        for name, result in self.objects.items():
            if result.status == "loaded":
                line = f"{name}: {result.rows_loaded} loaded"
                if result.rows_quarantined:
                    parts = []
                    for code, count in result.quarantine_counts.items():
                        keys = result.quarantined_keys.get(code, [])
                        shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
                        if len(keys) > _MAX_KEYS_SHOWN:
                            shown += f", … {len(keys) - _MAX_KEYS_SHOWN} more"
                        parts.append(f"{code}: {count} [{shown}]")
                    line += f", {result.rows_quarantined} quarantined ({', '.join(parts)})"
                else:
                    line += ", none quarantined"
                lines.append(line)
            elif result.status == "unchanged":
                lines.append(f"{name}: {result.message}")
            else:
                lines.append(f"{name}: {result.status} — {result.message}")
        lines += [f"warning: {w}" for w in self.warnings]
        return lines


@dataclass(frozen=True)
class SourceFrame:
    """One object's records as contract text, wherever they came from (a file, a connector's mirror).

    `data` holds only string columns named as the contract (empty string = null is the reader's job;
    unknown columns are reported and not loaded). `source_label` becomes `ops.quarantine.source_file`
    and `raw.<object>._source_file` (a file path, or e.g. `zoho:deals`); `row_numbers` are the 1-based
    positions quarantine rows point at (default 1..n). `read_error` refuses the object with that reason.
    A file's frame has `chunks` instead of rows: `data` is then its empty header and `chunks(n)` reads
    the records in consecutive chunks of about n rows, so a large file is never held whole.
    """

    data: pl.DataFrame
    source_label: str
    row_numbers: Sequence[int] | None = None
    short_label: str = ""  # how warnings name the source (a file name); default source_label
    fingerprint: str | None = None
    read_error: str | None = None
    notes: tuple[str, ...] = ()  # warnings that belong before this object's own (e.g. ignored files)
    chunks: Callable[[int], Iterator[pl.DataFrame]] | None = None

    def __post_init__(self) -> None:
        if not self.short_label:
            object.__setattr__(self, "short_label", self.source_label)


# --------------------------------------------------------------------------- fingerprints


def object_fingerprint(path: Path) -> str:
    """A fingerprint of one file's name and content: equal exactly when the same bytes are read again.

    A pass skips an object whose fingerprint matches its last load, so size and mtime are not enough: a
    file rewritten within the file system's timestamp granularity, or restored with its old mtime, would
    look unchanged. SHA-1 (not for security) hashed ~850 MB/s here (SHA-256 ~470 MB/s), so even a
    multi-GB activities file costs seconds, against minutes to re-validate it; a touched but identical
    file is recognised as unchanged.
    """
    with path.open("rb") as handle:
        content = hashlib.file_digest(handle, lambda: hashlib.sha1(usedforsecurity=False)).hexdigest()
    return hashlib.sha256(f"{path.name}\0{content}".encode()).hexdigest()[:16]


def folder_fingerprint(folder: Path) -> str:
    """A cheap fingerprint over the contract files present in `folder`, for a sensor to detect change."""
    digest = hashlib.sha256()
    for name in OBJECT_NAMES:
        for ext in SOURCE_EXTENSIONS:
            path = folder / f"{name}.{ext}"
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- reading


def _find_source(folder: Path, name: str) -> tuple[Path | None, list[Path]]:
    """The file to read for `name` (csv before parquet before xlsx) and any others that are ignored."""
    present = [folder / f"{name}.{ext}" for ext in SOURCE_EXTENSIONS if (folder / f"{name}.{ext}").is_file()]
    return (present[0] if present else None), present[1:]


def _as_strings(df: pl.DataFrame) -> pl.DataFrame:
    """Every column as text; typed Parquet columns are rendered the way the contract writes them."""
    exprs = []
    for name, dtype in df.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            col = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        exprs.append(col.cast(pl.String).alias(name))
    return df.select(exprs)


def _normalized(df: pl.DataFrame) -> pl.DataFrame:
    """Contract text as read: every column a string, header names trimmed, empty = null."""
    if any(dtype != pl.String for dtype in df.schema.values()):
        df = _as_strings(df)
    df = df.rename({c: str(c).strip() for c in df.columns})
    return df.with_columns(
        pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c) for c in df.columns
    )


def _scan(path: Path) -> pl.LazyFrame | None:
    """A lazy scan of a CSV or Parquet file (None for a type read whole: a spreadsheet)."""
    ext = path.suffix.lower().lstrip(".")
    if ext == "csv":
        return pl.scan_csv(path, infer_schema=False, encoding="utf8")
    if ext == "parquet":
        return pl.scan_parquet(path)
    return None


def read_strings(path: Path) -> pl.DataFrame:
    """Read one contract file with every value as a string (header names trimmed, empty = null)."""
    ext = path.suffix.lower().lstrip(".")
    if ext == "csv":
        df = pl.read_csv(path, infer_schema=False, encoding="utf8")
    elif ext == "parquet":
        df = pl.read_parquet(path)
    elif ext == "xlsx":
        # Empty rows are kept so that row numbers stay those of the sheet's data rows.
        df = pl.read_excel(path, sheet_id=1, engine="calamine", infer_schema_length=0, drop_empty_rows=False)
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .parquet or .xlsx")
    return _normalized(df)


def _file_chunks(path: Path, rows: int) -> Iterator[pl.DataFrame]:
    """The file's contract text in consecutive chunks of about `rows` rows, in file order."""
    scan = _scan(path)
    if scan is None:
        raise ValueError(f"{path}: only CSV and Parquet files are read in chunks")
    for batch in scan.collect_batches(chunk_size=rows, maintain_order=True):
        yield _normalized(batch)


# --------------------------------------------------------------------------- validation


@functools.cache
def _timezones() -> list[str]:
    # available_timezones() walks the tz database on disk; once per process is enough.
    return sorted(zoneinfo.available_timezones())


def _general_timestamp_stages(name: str) -> tuple[pl.Expr, list[pl.Expr]]:
    """Columns that parse one timestamp column of any contract shape, in two `with_columns` stages so the
    regex and the date parse run once per value (eager polars does not share repeated subexpressions):
    first the regex groups, then the shape flag and the local and UTC datetimes."""
    groups = pl.col(name).str.strip_chars().str.extract_groups(_TIMESTAMP_RE).alias("_groups")
    parts = pl.col("_groups")
    text = pl.concat_str(
        [
            parts.struct.field("1"),
            pl.lit(" "),
            parts.struct.field("2").fill_null("00:00"),
            pl.lit(":"),
            parts.struct.field("3").fill_null("00"),
            pl.lit("."),
            parts.struct.field("4").fill_null("0").str.slice(0, 6).str.pad_end(6, "0"),
        ]
    )
    # Non-strict parsing yields null for calendar-impossible values (2026-02-31, 24:00) of a valid shape.
    local = text.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S%.f", strict=False)
    offset = parts.struct.field("5")
    digits = offset.str.replace_all(":", "")
    minutes = pl.when(offset.str.starts_with("-")).then(-1).otherwise(1) * (
        digits.str.slice(1, 2).cast(pl.Int64, strict=False).fill_null(0) * 60
        + digits.str.slice(3, 2).cast(pl.Int64, strict=False).fill_null(0)
    )
    return groups, [
        parts.struct.field("1").is_not_null().alias("shaped"),
        local.alias("local"),
        (local - pl.duration(minutes=minutes)).alias("utc"),
    ]


def _parse_timestamps(df: pl.DataFrame, name: str) -> list[pl.Series]:
    """Parse one timestamp column into `_ts_shaped_`, `_ts_local_` and `_ts_utc_` series, which
    `_timestamp_parts` reads back.

    Most values have the plain shape `YYYY-MM-DD HH:MM:SS` (or `T` between): those are parsed directly,
    and only the others go through the general pattern's groups, which cost several times as much per
    value even when null. Both parse the same digits with the same calendar rules, so a value gets the same
    datetime (or null when impossible) either way."""
    raw = df.get_column(name)
    fast = raw.str.contains(_PLAIN_TIMESTAMP_RE).fill_null(False)
    plain = (
        pl.select(pl.when(fast).then(raw))
        .to_series()
        .str.replace("T", " ", literal=True)
        .str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False)
    )
    shaped, local, utc = fast, plain, plain.clone()
    others = (fast.not_() & raw.is_not_null()).arg_true()
    if others.len():
        groups, exprs = _general_timestamp_stages(name)
        general = raw.gather(others).to_frame().with_columns(groups).with_columns(exprs)
        for target, column in ((shaped, "shaped"), (local, "local"), (utc, "utc")):
            target.scatter(others, general.get_column(column))
    return [
        shaped.alias(f"_ts_shaped_{name}"),
        local.alias(f"_ts_local_{name}"),
        utc.alias(f"_ts_utc_{name}"),
    ]


_TIMESTAMP_STAGES = ("shaped", "local", "utc")


def _timestamp_parts(name: str) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(shape matched, local datetime or null when impossible, UTC naive datetime), from the columns
    `_parse_timestamps` added."""
    return pl.col(f"_ts_shaped_{name}"), pl.col(f"_ts_local_{name}"), pl.col(f"_ts_utc_{name}")


def _column_check(col: Column, as_of: datetime, timezones: list[str]) -> tuple[pl.Expr, pl.Expr]:
    """(reason_code or null, typed value) for one column, read from its raw string column."""
    raw = pl.col(col.name)
    text = raw.str.strip_chars()
    # Each check is evaluated on present values only; the first failing check names the problem.
    checks: list[tuple[pl.Expr, str]] = []
    if col.single_line:
        checks.append((raw.str.contains(_CONTROL_RE), "control_character"))
    value: pl.Expr = raw
    kind = col.kind
    if kind is Kind.KEY:
        value = text
        if col.references:
            # A reference of only white space is as empty as a missing one.
            checks.append((text == "", "broken_reference"))
    elif kind is Kind.ENUM:
        value = text.str.to_lowercase()
        checks.append((value.is_in(list(col.domain or ())).not_(), "out_of_domain"))
    elif kind is Kind.EMAIL:
        value = text
        too_long = text.str.len_chars() > _EMAIL_MAX_LENGTH
        checks.append((text.str.contains(_EMAIL_RE).not_() | too_long, "invalid_email"))
    elif kind is Kind.TIMEZONE:
        value = text
        checks.append((text.is_in(timezones).not_(), "unknown_timezone"))
    elif kind is Kind.CURRENCY:
        value = text.str.to_uppercase()
        checks.append((text.str.contains(_CURRENCY_RE).not_(), "out_of_domain"))
    elif kind is Kind.BOOL:
        lowered = text.str.to_lowercase()
        checks.append((lowered.is_in(list(_BOOL_VALUES)).not_(), "unparseable"))
        value = lowered.replace_strict(_BOOL_VALUES, default=None, return_dtype=pl.Boolean)
    elif kind is Kind.MONEY:
        checks.append((text.str.contains(_NUMBER_RE).not_(), "unparseable"))
        checks.append((text.cast(pl.Float64, strict=False) < 0, "negative_amount"))
        checks.append((text.str.contains(_MONEY_RE).not_(), "unparseable"))
        # Kept as text and cast to DECIMAL(18,2) by DuckDB: exact, no float rounding.
        value = text.str.strip_prefix("+")
    elif kind is Kind.SCORE:
        checks.append((text.str.contains(_NUMBER_RE).not_(), "unparseable"))
        number = text.cast(pl.Float64, strict=False)
        outside = text.str.contains(_INTEGRAL_RE).not_() | (number < SCORE_MIN) | (number > SCORE_MAX)
        checks.append((outside, "score_out_of_range"))
        value = pl.when(number.is_between(SCORE_MIN, SCORE_MAX)).then(number).cast(pl.Int32)
    elif kind in (Kind.EVENT_TS, Kind.PLANNED_TS):
        shaped, local, utc = _timestamp_parts(col.name)
        checks.append((shaped.not_(), "unparseable"))
        checks.append((local.is_null(), "impossible_date"))
        if kind is Kind.EVENT_TS:
            checks.append((utc > pl.lit(as_of + FUTURE_TOLERANCE), "future_timestamp"))
        value = utc

    code: pl.Expr = pl.lit(None, dtype=pl.String)
    for condition, reason in reversed(checks):
        code = pl.when(raw.is_not_null() & condition.fill_null(False)).then(pl.lit(reason)).otherwise(code)
    if col.required and not (kind is Kind.KEY and col.references is None):
        empty_reason = "broken_reference" if col.references else "unparseable"
        code = pl.when(raw.is_null()).then(pl.lit(empty_reason)).otherwise(code)
    return code, value


@dataclass
class _Validated:
    good: pl.DataFrame
    broken: pl.DataFrame  # raw strings + _row_number + _reason_code + _reason_column
    stable_until: datetime | None = None


def _validate(
    obj: SorObject,
    df: pl.DataFrame,
    as_of: datetime,
    parents: dict[str, _ParentKeys | None],
    dups: row_diff.Duplicates,
) -> _Validated:
    """Judge the rows of `df`, one batch of the object, whose duplicates `dups` were judged as a whole."""
    key = obj.key
    names = list(obj.column_names)
    timezones = _timezones()

    df = df.with_columns(pl.col(key).str.strip_chars().alias("_key"))
    missing_key = _MISSING_KEY
    if dups.drop_rows.len():
        df = df.filter(pl.col(_ROW).is_in(dups.drop_rows.implode()).not_())

    codes: list[pl.Expr] = [
        pl.when(missing_key).then(pl.lit("missing_key")).alias(f"_code_{key}_missing"),
        pl.when(pl.col("_key").is_in(dups.conflicting.implode()))
        .then(pl.lit("conflicting_duplicate"))
        .alias(f"_code_{key}_conflict"),
    ]
    code_columns = [(f"_code_{key}_missing", key), (f"_code_{key}_conflict", key)]
    values: list[pl.Expr] = []
    stamps = [c.name for c in obj.columns if c.kind in (Kind.EVENT_TS, Kind.PLANNED_TS)]
    if stamps:
        df = df.with_columns(series for name in stamps for series in _parse_timestamps(df, name))
    for col in obj.columns:
        code, value = _column_check(col, as_of, timezones)
        codes.append(code.alias(f"_code_{col.name}"))
        code_columns.append((f"_code_{col.name}", col.name))
        values.append(value.alias(f"_value_{col.name}"))
    df = df.with_columns(*codes, *values).drop(
        [f"_ts_{stage}_{name}" for name in stamps for stage in _TIMESTAMP_STAGES]
    )

    # References last: a row that is broken in itself says so rather than blaming its parent.
    for col in obj.references:
        parent = parents.get(col.references or "")
        ref_value = pl.col(f"_value_{col.name}")
        if parent is None:
            continue
        known = parent.has(df.get_column(f"_value_{col.name}"))
        dangling = ref_value.is_not_null() & (ref_value != "") & pl.lit(known).not_()
        df = df.with_columns(
            pl.when(dangling).then(pl.lit("broken_reference")).alias(f"_code_{col.name}_ref")
        )
        code_columns.append((f"_code_{col.name}_ref", col.name))

    # Broken rows are few: the reason and its column are picked on them only, not on every row.
    df = df.with_columns(pl.any_horizontal(pl.col(c).is_not_null() for c, _ in code_columns).alias("_broken"))
    kept = [pl.col(f"_value_{c}").alias(c) for c in names] + [pl.col(_ROW)]
    kept += [pl.col(_DIGEST)] if _DIGEST in df.columns else []
    good = df.select(*kept, "_broken").filter(pl.col("_broken").not_()).drop("_broken").sort(_ROW)
    broken = (
        df.filter(pl.col("_broken"))
        .drop("_broken")
        .with_columns(
            pl.coalesce([pl.col(c) for c, _ in code_columns]).alias(_CODE),
            pl.coalesce([pl.when(pl.col(c).is_not_null()).then(pl.lit(n)) for c, n in code_columns]).alias(
                _COLUMN
            ),
        )
        .sort(_ROW)
    )
    return _Validated(good=good, broken=broken, stable_until=_stable_until(broken, stamps))


def _stable_until(broken: pl.DataFrame, stamps: list[str]) -> datetime | None:
    """The first as-of at which validating the same rows could give another result: a row quarantined as
    `future_timestamp` (utc > as_of + tolerance) is judged again from its earliest such timestamp on."""
    future = broken.filter(pl.col(_CODE) == "future_timestamp")
    if not future.height:
        return None
    earliest = (future.filter(pl.col(_COLUMN) == name)[f"_value_{name}"].min() for name in stamps)
    moments = [moment for moment in earliest if moment is not None]
    return min(moments) - FUTURE_TOLERANCE if moments else None  # type: ignore[operator]


def _show(value: str | None) -> str:
    if value is None:
        return "empty"
    shown = value if len(value) <= 80 else value[:77] + "..."
    return repr(shown)


def _describe(
    obj: SorObject,
    code: str,
    column: str,
    raw: str | None,
    key: str | None,
    rows_of_key: list[int],
    parents: dict[str, _ParentKeys | None],
    as_of: datetime,
) -> str:
    """The human sentence for one quarantined row: the field, its value and the rule it broke."""
    col = obj.column(column)
    value = _show(raw)
    if code == "missing_key":
        return f"{column} is empty: a record without a key cannot be tracked"
    if code == "conflicting_duplicate":
        return (
            f"{column} {key!r} appears in rows {', '.join(map(str, rows_of_key))} with different content; "
            "nobody can tell which copy is true, so every copy is quarantined"
        )
    if code == "control_character":
        return f"{column} {value} contains a carriage return, line feed or NUL in a single-line field"
    if code == "unparseable":
        if raw is None:
            return f"{column} is empty but required"
        if col.kind is Kind.MONEY:
            if re.fullmatch(_NUMBER_RE, raw.strip()):
                return f"{column} {value} has more than 2 decimals or 16 digits; DECIMAL(18,2) would alter it"
            return (
                f"{column} {value} is not a plain decimal (digits, '.' as separator, no thousands separator)"
            )
        if col.kind is Kind.BOOL:
            return f"{column} {value} is not a boolean (true/false/1/0)"
        if col.kind is Kind.SCORE:
            return f"{column} {value} is not a number"
        return f"{column} {value} is not a timestamp (YYYY-MM-DD HH:MM:SS or ISO 8601 with offset)"
    if code == "impossible_date":
        return f"{column} {value} is not a real calendar date/time"
    if code == "future_timestamp":
        return f"{column} {value} is more than one day after the as-of time {as_of:%Y-%m-%d %H:%M:%S} UTC"
    if code == "out_of_domain":
        if col.kind is Kind.CURRENCY:
            return f"{column} {value} is not a three-letter ISO 4217 currency code"
        return f"{column} {value} is not one of {', '.join(col.domain or ())}"
    if code == "negative_amount":
        return f"{column} {value} is negative"
    if code == "score_out_of_range":
        return f"{column} {value} is not an integer from {SCORE_MIN} to {SCORE_MAX}"
    if code == "invalid_email":
        return f"{column} {value} is not a valid email address"
    if code == "unknown_timezone":
        return f"{column} {value} is not an IANA time zone name"
    if code == "broken_reference":
        target = col.references or "?"
        if raw is None or not raw.strip():
            return f"{column} is empty but required (a reference to {target})"
        parent = parents.get(target)
        ref = raw.strip()
        if parent is not None and ref in parent.quarantined:
            return f"{column} {ref!r} refers to a record in {target} that is itself quarantined"
        origin = parent.origin if parent is not None else target
        return f"{column} {ref!r} has no matching record in {origin}"
    raise ValueError(f"no description for reason_code {code!r}")


# --------------------------------------------------------------------------- writing


def ensure_ops_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the operational tables the loads write and the dbt project reads (quarantine, load log,
    drift events) when they do not exist yet, so a build before any load finds them empty."""
    _run(con, _OPS_DDL + DRIFT_DDL)


def _raw_row_count(con: duckdb.DuckDBPyConnection, obj: SorObject) -> int | None:
    if not _table_exists(con, "raw", obj.name):
        return None
    return int(_run(con, f"select count(*) from {obj.raw_table}")[0][0])


def _write_log(con: duckdb.DuckDBPyConnection, as_of: datetime, result: ObjectLoad, source: str) -> None:
    _run(
        con,
        f"insert into {LOAD_LOG_TABLE} ({_LOG_COLUMNS}) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            as_of,
            result.object,
            result.source_file,
            result.fingerprint,
            result.rows_read,
            result.rows_loaded,
            result.rows_quarantined,
            result.status,
            result.message,
            source,
            result.gate,
            json.dumps(result.quarantine_counts, sort_keys=True) if result.quarantine_counts else None,
            result.input_digest,
            result.stable_until,
            result.row_basis,
        ],
    )


def _begin_raw(con: duckdb.DuckDBPyConnection, obj: SorObject, gone: pl.DataFrame | None) -> None:
    """In the object's open transaction, before its good rows are appended: start raw.<object> and its row
    digests afresh, or (a row-diffed load) delete the rows of the `gone` keys: changed, now broken or no
    longer in the source."""
    table = row_diff.digests_table(obj)
    if gone is None:
        _run(con, obj.raw_ddl())
        _run(
            con,
            f"create or replace table {table} "
            "(record_key varchar not null, row_digest ubigint not null, row_number bigint not null)",
        )
        return
    con.register("_al_gone", gone.to_arrow())
    try:
        _run(con, f"delete from {obj.raw_table} where {obj.key} in (select _key from _al_gone)")
        _run(con, f"delete from {table} where record_key in (select _key from _al_gone)")
    finally:
        con.unregister("_al_gone")


def _append_good(con: duckdb.DuckDBPyConnection, obj: SorObject, good: pl.DataFrame) -> None:
    """Append one chunk's good rows (with `_source_file`, `_loaded_at` and `_row_digest`) to raw.<object>
    and its row digests; chunks come in row order, so raw holds its rows in file order."""
    casts = ", ".join(f"cast({c.name} as {c.duckdb_type}) as {c.name}" for c in obj.columns)
    meta = ", ".join(name for name, _ in LOAD_METADATA_COLUMNS)
    con.register("_al_incoming_good", good.to_arrow())
    try:
        _run(
            con,
            f"insert into {obj.raw_table} select {casts}, {meta} from _al_incoming_good order by _row_number",
        )
        _run(
            con,
            f"insert into {row_diff.digests_table(obj)} select {obj.key}, {_DIGEST}, _row_number "
            "from _al_incoming_good order by _row_number",
        )
    finally:
        con.unregister("_al_incoming_good")


def _move_rows(con: duckdb.DuckDBPyConnection, obj: SorObject, moved: pl.DataFrame | None) -> None:
    """Give kept rows of a row-diffed load their new row numbers: the file's row numbers of kept rows
    shift when rows before them come or go."""
    if moved is None or not moved.height:
        return
    con.register("_al_moved", moved.to_arrow())
    try:
        for target, column, key_column in (
            (obj.raw_table, "_row_number", obj.key),
            (row_diff.digests_table(obj), "row_number", "record_key"),
        ):
            _run(
                con,
                f"update {target} as t set {column} = m._row_number from _al_moved as m "
                f"where t.{key_column} = m._key",
            )
    finally:
        con.unregister("_al_moved")


def _write_quarantine_and_log(
    con: duckdb.DuckDBPyConnection,
    obj: SorObject,
    quarantine: pl.DataFrame,
    as_of: datetime,
    result: ObjectLoad,
    source: str,
) -> None:
    """In the object's open transaction: replace its quarantine rows and log the load."""
    con.register("_al_incoming_quarantine", quarantine.to_arrow())
    try:
        # first_seen_at survives for rows (object, key, reason) that were already quarantined.
        _run(
            con,
            f"""
            create or replace temp table _al_quarantine_next as
            with earlier as (
                select record_key, reason_code, min(first_seen_at) as first_seen_at
                from {QUARANTINE_TABLE}
                where object = ?
                group by record_key, reason_code
            )
            select q.object, q.record_key, q.source_file, q.row_number, q.reason_code, q.reason,
                   q.raw_values, q.as_of, coalesce(e.first_seen_at, q.as_of) as first_seen_at
            from _al_incoming_quarantine as q
            left join earlier as e
              on q.record_key is not distinct from e.record_key and q.reason_code = e.reason_code
            """,
            [obj.name],
        )
        _run(con, f"delete from {QUARANTINE_TABLE} where object = ?", [obj.name])
        _run(con, f"insert into {QUARANTINE_TABLE} select * from _al_quarantine_next order by row_number")
        _run(con, "drop table _al_quarantine_next")
        _write_log(con, as_of, result, source)
    finally:
        con.unregister("_al_incoming_quarantine")


def _write_refused(
    con: duckdb.DuckDBPyConnection,
    obj: SorObject,
    quarantine: pl.DataFrame,
    as_of: datetime,
    result: ObjectLoad,
    source: str,
) -> None:
    """A load the gate refused: raw.<object> keeps its last good copy while the quarantine shows what is
    broken now, so people can fix it upstream; one transaction."""
    con.begin()
    try:
        _write_quarantine_and_log(con, obj, quarantine, as_of, result, source)
        con.commit()
    except Exception:
        con.rollback()
        raise


# --------------------------------------------------------------------------- loading


def _parent_keys_from_raw(con: duckdb.DuckDBPyConnection, parent: SorObject) -> _ParentKeys | None:
    if not _table_exists(con, "raw", parent.name):
        return None
    keys = pl.from_arrow(con.sql(f"select {parent.key} from {parent.raw_table}").to_arrow_table())
    series = keys.to_series(0).cast(pl.String).alias(parent.key)  # type: ignore[union-attr]
    quarantined = set()
    if _table_exists(con, "ops", "quarantine"):
        rows = _run(
            con,
            f"select record_key from {QUARANTINE_TABLE} where object = ? and record_key is not null",
            [parent.name],
        )
        quarantined = {r[0] for r in rows}
    return _ParentKeys(good=series, quarantined=quarantined, origin=f"{parent.raw_table} (last good copy)")


def _type_changes(
    con: duckdb.DuckDBPyConnection,
    obj: SorObject,
    broken: pl.DataFrame,
    source: str,
    short: str,
    as_of: datetime,
) -> list[DriftEvent]:
    """`type_changed` drift: records whose column parsed in the last good copy now fail to parse.

    A value that never parsed is a dirty row; a value that parsed last time and no longer does for the
    same record is what a source changing a field's type looks like (e.g. a number field turned text).
    """
    if not broken.height or not _table_exists(con, "raw", obj.name):
        return []
    unparseable = broken.filter((pl.col(_CODE) == "unparseable") & pl.col("_key").is_not_null())
    events = []
    for column in sorted(set(unparseable[_COLUMN].to_list())):
        if column not in obj.column_names:
            continue
        rows = unparseable.filter(pl.col(_COLUMN) == column)
        keys = [k for k in rows["_key"].to_list() if k]
        if not keys:
            continue
        parsed_before = _run(
            con,
            f"select count(*) from {obj.raw_table} where {obj.key} in (select unnest(?)) and {column} is not null",
            [keys],
        )[0][0]
        if not parsed_before:
            continue
        example = rows.row(0, named=True)
        kind = next(c.kind for c in obj.columns if c.name == column)
        detail = (
            f"{short}: {parsed_before} record(s) whose {column} parsed as {kind} before now carry values that "
            f"do not (e.g. {_show(example.get(column))} for key {example['_key']}); those rows are quarantined"
        )
        events.append(record_drift(con, source, obj.name, column, "type_changed", detail, as_of))
    return events


# --------------------------------------------------------------------------- loading one object
#
# An object is read in chunks of CHUNK_ROWS rows and never held whole; one that fits in a chunk is read once
# (`_Rows`). `_scan_rows` first reads each row's key, digest and row number (and meets any read error before
# anything is written); `row_diff.diff` settles on those the checks that need the whole object: the rows
# unchanged since the last load and the repeated keys, whose rows `_judge_duplicates` judges. Then, in the
# object's one transaction (`_write_object`), `_write_rows` validates the rows not provably unchanged and
# appends the good ones to raw.<object>, and the broken-share gate commits or rolls back. The rows are read
# a second time for the duplicates and a third to validate them, unless they fit in a chunk: a row-diffed
# load usually validates few rows, and a repeated key's rows are always among them, so it reads them once.


def _previous_digests(
    con: duckdb.DuckDBPyConnection, obj: SorObject, basis: str, as_of: datetime
) -> tuple[datetime, pl.DataFrame] | None:
    """The as-of and good rows of the last load when this load may diff against them: its latest `loaded`
    log row wrote its digests under the same basis at an as-of no later than this one. None: validate
    every row."""
    rows = _run(
        con,
        f"""select as_of, row_basis from {LOAD_LOG_TABLE}
        where object = ? and status = 'loaded' order by rowid desc limit 1""",
        [obj.name],
    )
    if not rows or rows[0][1] != basis or rows[0][0] > as_of:
        return None
    previous = row_diff.previous_digests(con, obj)
    return (rows[0][0], previous) if previous is not None else None


# Rows read, validated and written at a time. Besides one chunk, a load keeps per row only its key, row
# number and digest (and a chunk's broken rows), so its memory does not grow with the object's width.
CHUNK_ROWS = 1_000_000


class _Unreadable(Exception):
    """The object's records could not be read (the message says why)."""


def _chunks_of(frame: SourceFrame, rows: int) -> Iterator[pl.DataFrame]:
    """The frame's records in consecutive chunks, in order; a read failure raises `_Unreadable`."""
    if frame.chunks is None:
        for offset in range(0, frame.data.height, rows):
            yield frame.data.slice(offset, rows)
        return
    try:
        for batch in frame.chunks(rows):
            # a reader's batches may be larger than asked
            for offset in range(0, batch.height, rows):
                yield batch.slice(offset, rows)
    except _READ_ERRORS as exc:  # the consumer's errors are not raised here
        raise _Unreadable(f"cannot be read ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class _Columns:
    """How a source's columns meet the contract."""

    file: list[str]
    missing: list[str]  # required and absent: the object is refused
    extra: list[str]  # not in the contract: not loaded
    absent: list[str]  # optional and absent: loaded as null

    @classmethod
    def of(cls, obj: SorObject, data: pl.DataFrame) -> _Columns:
        file = list(data.columns)
        return cls(
            file=file,
            missing=[c for c in obj.required_columns if c not in file],
            extra=[c for c in file if c not in obj.column_names],
            absent=[c for c in obj.column_names if c not in file],
        )


class _Rows:
    """An object's rows as the checks read them, in chunks, as often as the passes ask: contract text,
    absent optional columns as nulls, `_row_number`, no blank rows. An object read in one chunk is kept
    by the first pass and not read again."""

    def __init__(self, frame: SourceFrame, columns: _Columns) -> None:
        numbered = not columns.missing and frame.chunks is None and frame.row_numbers is not None
        if numbered and (count := len(frame.row_numbers or ())) != frame.data.height:
            raise ValueError(
                f"{frame.source_label}: {count} row numbers for {frame.data.height} rows; nothing loaded"
            )
        self.frame, self.absent, self.size = frame, columns.absent, max(1, CHUNK_ROWS)
        # A wholly empty line (a spreadsheet's blank row) is not a record.
        file = columns.file
        self.blank = pl.all_horizontal(pl.col(c).is_null() for c in file) if file else pl.lit(True)
        self.read = 0  # rows read, blank ones included
        self._kept: list[pl.DataFrame] | None = None

    def _prepare(self, chunk: pl.DataFrame, offset: int) -> pl.DataFrame:
        """One chunk as the checks read it; its first row is the object's row `offset` + 1."""
        if any(dtype != pl.String for dtype in chunk.schema.values()):
            # An all-null column built in memory has no string type yet; render everything as contract text.
            chunk = _as_strings(chunk)
        chunk = chunk.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in self.absent)
        if self.frame.row_numbers is None:
            chunk = chunk.with_row_index(_ROW, offset=offset + 1).with_columns(pl.col(_ROW).cast(pl.Int64))
        else:
            numbers = list(self.frame.row_numbers[offset : offset + chunk.height])
            chunk = chunk.with_columns(pl.Series(_ROW, numbers, dtype=pl.Int64))
        return chunk.filter(self.blank.not_())

    def empty(self) -> pl.DataFrame:
        return self._prepare(self.frame.data.head(0), 0)

    def __iter__(self) -> Iterator[pl.DataFrame]:
        """The chunks in row order; a read failure raises `_Unreadable`."""
        if self._kept is not None:
            yield from self._kept
            return
        kept: list[pl.DataFrame] | None = []
        offset = 0
        for chunk in _chunks_of(self.frame, self.size):
            part = self._prepare(chunk, offset)
            kept = [part] if offset == 0 else None  # a second chunk: the object is read again next time
            offset += chunk.height
            yield part
        self.read, self._kept = offset, kept


def _scan_rows(
    obj: SorObject, rows: _Rows, columns: _Columns, parents: dict[str, _ParentKeys | None] | None
) -> pl.DataFrame | None:
    """The first pass: read every row (a read error raises `_Unreadable` before anything is written) and
    keep its `row_diff.slim` (`parents` given: diffing). None when required columns are missing."""
    slims = [row_diff.slim(obj, part, parents) for part in rows if not columns.missing]  # reads every row
    if columns.missing:
        return None
    return pl.concat(slims) if slims else row_diff.slim(obj, rows.empty(), None)


def _record_columns(
    con: duckdb.DuckDBPyConnection,
    obj: SorObject,
    columns: _Columns,
    short: str,
    result: ObjectLoad,
    report: LoadReport,
    as_of: datetime,
) -> None:
    """Record as drift (and warn about) the columns the source lacks or adds to the contract."""
    for column in columns.missing:
        detail = f"{short}: required column {column} is missing"
        result.drift.append(record_drift(con, report.source, obj.name, column, "removed", detail, as_of))
    if columns.missing:
        return
    if columns.extra:
        report.warnings.append(
            f"{short}: column(s) {', '.join(columns.extra)} are not in the contract; not loaded (schema drift)"
        )
        for column in columns.extra:
            detail = f"{short}: column {column} is not in the contract; not loaded"
            result.drift.append(record_drift(con, report.source, obj.name, column, "added", detail, as_of))
    if columns.absent:
        report.warnings.append(
            f"{short}: optional column(s) {', '.join(columns.absent)} absent; loaded as null"
        )
        for column in columns.absent:
            detail = f"{short}: optional column {column} is absent; loaded as null"
            result.drift.append(record_drift(con, report.source, obj.name, column, "removed", detail, as_of))


def _judge_duplicates(
    obj: SorObject, rows: Iterable[pl.DataFrame], keys: pl.Series, short: str
) -> row_diff.Duplicates:
    """Judge the repeated `keys` over every row of `rows` that carries one."""
    if not keys.len():
        return row_diff.Duplicates.none()
    copies = [
        part.with_columns(pl.col(obj.key).str.strip_chars().alias("_key")).filter(
            pl.col("_key").is_in(keys.implode())
        )
        for part in rows
    ]
    return row_diff.judge_duplicates(obj, pl.concat(copies), short)


def _batches(rows: _Rows, diff: row_diff.RowDiff) -> Iterator[pl.DataFrame]:
    """The rows to validate, with their digests, in row order and in batches of about a chunk: a row-diffed
    load validates few rows per chunk, and validating a batch has a cost of its own."""
    pending: list[pl.DataFrame] = []
    waiting = position = 0
    for part in rows:
        height = part.height
        part = part.with_columns(diff.digests.slice(position, height).alias(_DIGEST))
        if diff.validate is not None:
            part = part.filter(diff.validate.slice(position, height))
        position += height
        pending.append(part)
        waiting += part.height
        if waiting >= rows.size:
            yield pl.concat(pending)
            pending, waiting = [], 0
    if pending:
        yield pl.concat(pending)


@dataclass
class _Written:
    """What the last pass appended to raw.<object>, and the rows it found broken."""

    good_rows: int = 0
    good_keys: list[pl.Series] = field(default_factory=list)  # kept only when children reference the object
    broken: pl.DataFrame | None = None
    stable_until: datetime | None = None


def _write_rows(
    con: duckdb.DuckDBPyConnection,
    obj: SorObject,
    batches: Iterable[pl.DataFrame],
    diff: row_diff.RowDiff,
    dups: row_diff.Duplicates,
    parents: dict[str, _ParentKeys | None],
    as_of: datetime,
    label: str,
) -> _Written:
    """The last pass, in the object's open transaction: start raw.<object> afresh (or delete the keys the
    diff says are gone), validate the `_batches` of rows not provably unchanged, append the good ones."""
    _begin_raw(con, obj, diff.gone)
    written = _Written()
    if _referenced(obj) and diff.unchanged_keys is not None:
        written.good_keys.append(diff.unchanged_keys.alias(obj.key))
    broken_parts: list[pl.DataFrame] = []
    moments: list[datetime] = []
    for part in batches:
        validated = _validate(obj, part, as_of, parents, dups)
        good = validated.good.with_columns(
            pl.lit(label).alias("_source_file"),
            pl.lit(as_of, dtype=pl.Datetime("us")).alias("_loaded_at"),
        )
        if good.height:
            _append_good(con, obj, good)
        written.good_rows += good.height
        if _referenced(obj):
            written.good_keys.append(good.get_column(obj.key))
        if validated.broken.height:
            broken_parts.append(validated.broken)
        if validated.stable_until is not None:
            moments.append(validated.stable_until)
        del part, validated, good
    written.stable_until = min(moments) if moments else None
    written.broken = pl.concat(broken_parts, how="vertical_relaxed") if broken_parts else None
    return written


def _quarantine_rows(
    obj: SorObject,
    broken: pl.DataFrame | None,
    columns: _Columns,
    label: str,
    parents: dict[str, _ParentKeys | None],
    as_of: datetime,
    result: ObjectLoad,
) -> pl.DataFrame:
    """One quarantine row per broken row, with the sentence saying why; counted in `result`."""
    rows_by_key: dict[str, list[int]] = {}
    q_rows = []
    counts: Counter[str] = Counter()
    keys_by_code: dict[str, list[str]] = {}
    if broken is not None:
        conflict_rows = broken.filter(pl.col(_CODE) == "conflicting_duplicate")
        for k, r in zip(conflict_rows["_key"].to_list(), conflict_rows[_ROW].to_list(), strict=True):
            rows_by_key.setdefault(k, []).append(r)
        for row in broken.select([*columns.file, "_key", _ROW, _CODE, _COLUMN]).iter_rows(named=True):
            code, column = row[_CODE], row[_COLUMN]
            record_key = row["_key"] or None
            raw_values = {c: row[c] for c in columns.file}
            of_key = rows_by_key.get(record_key or "", [])
            q_rows.append(
                {
                    "object": obj.name,
                    "record_key": record_key,
                    "source_file": label,
                    "row_number": row[_ROW],
                    "reason_code": code,
                    "reason": _describe(
                        obj, code, column, row.get(column), record_key, of_key, parents, as_of
                    ),
                    "raw_values": json.dumps(raw_values, ensure_ascii=False),
                    "as_of": as_of,
                }
            )
            counts[code] += 1
            keys_by_code.setdefault(code, []).append(record_key or f"(row {row[_ROW]})")
    result.rows_quarantined = len(q_rows)
    result.quarantine_counts = {c: counts[c] for c in REASON_CODES if counts[c]}
    result.quarantined_keys = {c: keys_by_code[c] for c in result.quarantine_counts}
    text = dict.fromkeys(
        ("object", "record_key", "source_file", "reason_code", "reason", "raw_values"), pl.String
    )
    schema = {**text, "row_number": pl.Int64, "as_of": pl.Datetime("us")}
    # _write_quarantine_and_log reads the columns by name
    return pl.DataFrame(q_rows, schema=schema)


def _unchecked_references(obj: SorObject, parents: dict[str, _ParentKeys | None], files: bool) -> list[str]:
    """Warnings for the references of `obj` that cannot be checked: their parent has no keys to check."""
    return [
        f"{obj.name}.{col.name}: references to {col.references} are not checked "
        f"(no {col.references}{' file' if files else ''} in this load and no raw.{col.references} table)"
        for col in obj.references
        if parents.get(col.references or "") is None
    ]


def _referenced(obj: SorObject) -> bool:
    """Whether any object references `obj` (then a load keeps its good keys for the children's checks)."""
    return any(col.references == obj.name for other in OBJECTS.values() for col in other.references)


def _refuse(
    con: duckdb.DuckDBPyConnection,
    obj: SorObject,
    result: ObjectLoad,
    reason: str,
    gate: str,
    as_of: datetime,
    source: str,
    *,
    log: bool = True,
) -> None:
    """Mark `result` refused by `gate`, saying why and what raw.<object> keeps; logged unless `log` is off."""
    kept = _raw_row_count(con, obj)
    what = (
        f"{obj.raw_table} kept as last loaded ({kept} rows)"
        if kept is not None
        else f"{obj.raw_table} does not exist yet"
    )
    result.status = "refused"
    result.gate = gate
    result.message = (
        f"{result.source_file}: {reason}; nothing loaded, {what}; rules reading {obj.name} are skipped"
    )
    if log:
        _write_log(con, as_of, result, source)


def _write_object(
    con: duckdb.DuckDBPyConnection,
    obj: SorObject,
    batches: Iterable[pl.DataFrame],
    diff: row_diff.RowDiff,
    dups: row_diff.Duplicates,
    columns: _Columns,
    parents: dict[str, _ParentKeys | None],
    as_of: datetime,
    result: ObjectLoad,
    source: str,
    short: str,
    limit: float,
) -> tuple[_Written, pl.DataFrame, bool]:
    """Write the object in one transaction: its raw rows (`_write_rows`), then its quarantine rows and log
    row unless more than `limit` of its rows are broken (True: rolled back, nothing written)."""
    label = result.source_file or ""
    con.begin()
    try:
        written = _write_rows(con, obj, batches, diff, dups, parents, as_of, label)
        quarantine = _quarantine_rows(obj, written.broken, columns, label, parents, as_of, result)
        result.stable_until = written.stable_until
        result.rows_loaded = written.good_rows + diff.unchanged
        result.message = f"{result.rows_loaded} loaded, {result.rows_quarantined} quarantined from {label}"
        if written.broken is not None:
            # judged against raw as last committed: this transaction has already replaced its rows
            reader = con.cursor()
            try:
                result.drift.extend(_type_changes(reader, obj, written.broken, source, short, as_of))
            finally:
                reader.close()
        share = result.rows_quarantined / result.rows_read if result.rows_read else 0.0
        too_broken = bool(result.rows_read) and share > limit
        if too_broken:
            con.rollback()
        else:
            _move_rows(con, obj, diff.moved)
            _write_quarantine_and_log(con, obj, quarantine, as_of, result, source)
            con.commit()
    except BaseException:
        con.rollback()
        raise
    return written, quarantine, too_broken


def _load_one(
    con: duckdb.DuckDBPyConnection,
    obj: SorObject,
    frame: SourceFrame | None,
    as_of: datetime,
    parents: dict[str, _ParentKeys | None],
    report: LoadReport,
    absent_message: Callable[[str], str],
    max_broken_share: Callable[[str], float],
    input_digest: str | None = None,
) -> _ParentKeys | None:
    """Load one object (see the section comment); returns the keys its children may reference, or None to
    fall back to raw."""
    if frame is None:
        kept = _raw_row_count(con, obj)
        what = f"{obj.raw_table} left as is ({kept} rows)" if kept is not None else f"no {obj.raw_table} yet"
        report.objects[obj.name] = ObjectLoad(
            obj.name, "skipped", message=f"{absent_message(obj.name)}; {what}"
        )
        _write_log(con, as_of, report.objects[obj.name], report.source)
        return None
    report.warnings.extend(frame.notes)
    label, short, source = frame.source_label, frame.short_label, report.source
    result = ObjectLoad(
        obj.name, "loaded", source_file=label, fingerprint=frame.fingerprint, input_digest=input_digest
    )
    report.objects[obj.name] = result
    if frame.read_error is not None:
        _refuse(con, obj, result, frame.read_error, GATE_UNREADABLE, as_of, source)
        return None
    columns = _Columns.of(obj, frame.data)
    rows = _Rows(frame, columns)
    basis = row_diff.row_basis(obj, source, label, columns.file, FUTURE_TOLERANCE)
    last = None if columns.missing else _previous_digests(con, obj, basis, as_of)
    try:
        slim = _scan_rows(obj, rows, columns, parents if last is not None else None)
    except _Unreadable as exc:
        _refuse(con, obj, result, str(exc), GATE_UNREADABLE, as_of, source)
        return None
    result.rows_read = rows.read
    _record_columns(con, obj, columns, short, result, report, as_of)
    if slim is None:
        reason = f"lacks required column(s) {', '.join(columns.missing)}"
        _refuse(con, obj, result, reason, GATE_MISSING_COLUMN, as_of, source)
        return None
    result.rows_read = slim.height
    if rows.read > slim.height:
        report.warnings.append(f"{short}: skipped {rows.read - slim.height} empty row(s)")
    report.warnings.extend(_unchecked_references(obj, parents, report.folder is not None))
    diff = row_diff.diff(slim, last[1] if last is not None else None)
    result.rows_validated = slim.height - diff.unchanged
    result.diffed_since = last[0] if last is not None else None
    del slim, last
    if diff.validate is not None and result.rows_validated <= rows.size:
        # Few rows to validate (a row-diffed load): read once, with the rows of every repeated key among them.
        batches: Iterable[pl.DataFrame] = list(_batches(rows, diff))
        dups = _judge_duplicates(obj, batches, diff.repeated_keys, short)
    else:
        dups = _judge_duplicates(obj, rows, diff.repeated_keys, short)
        batches = _batches(rows, diff)
    report.warnings.extend(dups.warnings)

    limit = max_broken_share(obj.name)
    result.row_basis = basis
    written, quarantine, too_broken = _write_object(
        con, obj, batches, diff, dups, columns, parents, as_of, result, source, short, limit
    )
    if too_broken:
        share = result.rows_quarantined / result.rows_read
        reason = (
            f"{result.rows_quarantined} of {result.rows_read} rows broken ({share:.0%}), more than the "
            f"allowed {limit:.0%} (quality.max_broken_share); the broken rows are in ops.quarantine"
        )
        _refuse(con, obj, result, reason, GATE_TOO_MANY_BROKEN, as_of, source, log=False)
        result.rows_loaded = 0  # nothing was loaded: raw keeps its last good copy
        result.row_basis = None
        _write_refused(con, obj, quarantine, as_of, result, source)
        return None
    broken = written.broken
    return _ParentKeys(
        good=pl.concat(written.good_keys) if written.good_keys else pl.Series(obj.key, [], dtype=pl.String),
        quarantined={k for k in broken["_key"].to_list() if k} if broken is not None else set(),
        origin=f"{short} (this load)",
    )


# --------------------------------------------------------------------------- unchanged objects


def _parents_of(obj: SorObject) -> list[str]:
    return sorted({col.references for col in obj.references if col.references})


def _input_digest(
    obj: SorObject,
    source: str,
    label: str,
    fingerprint: str | None,
    limit: float,
    parent_digests: Sequence[str | None],
) -> str | None:
    """Everything a load's outcome depends on besides as-of: the source and file path, the file's content,
    the contract and quality settings that judge it, and the inputs of the parents it was checked against
    (None when a parent was not loaded in the same pass). None when the frame has no fingerprint."""
    if fingerprint is None:
        return None
    parts = [source, label, fingerprint, repr(limit), str(FUTURE_TOLERANCE), repr(obj)]
    parts += [digest or "-" for digest in parent_digests]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class _LastLoad:
    """The load whose result an unchanged object keeps."""

    as_of: datetime
    input_digest: str


def _keeps_last_load(
    con: duckdb.DuckDBPyConnection, obj: SorObject, digest: str, as_of: datetime
) -> _LastLoad | None:
    """The last load of `obj` when this pass would reproduce it exactly, else None (load again).

    Its latest written load (any source) must have loaded the same inputs (`digest`), at an as-of no later
    than this one and before its `stable_until` (the future-timestamp check is the only as-of dependent one,
    and moving forward clears a quarantined timestamp only once the as-of reaches it), and its raw table
    must still be there with its history recorded.
    """
    rows = _run(
        con,
        f"""select as_of, status, input_digest, quarantine_counts, stable_until from {LOAD_LOG_TABLE}
        where object = ? and status in ('loaded', 'refused') order by rowid desc limit 1""",
        [obj.name],
    )
    if not rows:
        return None
    last_as_of, status, last_digest, counts, stable_until = rows[0]
    if status != "loaded" or last_digest != digest or last_as_of > as_of:
        return None
    if stable_until is not None and as_of >= stable_until:
        return None
    if stable_until is None and counts and json.loads(counts).get("future_timestamp"):
        return None  # logged before stable_until was recorded: when it clears is unknown
    # A crash between the load and its history write would otherwise leave hist.* behind for good.
    if not _table_exists(con, "raw", obj.name) or not _table_exists(con, "hist", obj.name):
        return None
    raw_rows, current = _run(
        con,
        f"select (select count(*) from {obj.raw_table}), "
        f"(select count(*) from hist.{obj.name} where _valid_to is null)",
    )[0]
    if raw_rows != current:
        return None
    return _LastLoad(as_of=last_as_of, input_digest=digest)


def _keep_unchanged(
    con: duckdb.DuckDBPyConnection,
    obj: SorObject,
    frame: SourceFrame,
    last: _LastLoad,
    as_of: datetime,
    report: LoadReport,
) -> None:
    """Record that `obj` keeps its last load: raw, quarantine and history stay as they are."""
    kept = _raw_row_count(con, obj) or 0
    quarantined = int(
        _run(con, f"select count(*) from {QUARANTINE_TABLE} where object = ?", [obj.name])[0][0]
    )
    message = f"unchanged since {last.as_of:%Y-%m-%d %H:%M:%S}, {kept} rows kept"
    if quarantined:
        message += f", {quarantined} still quarantined"
    result = ObjectLoad(
        obj.name,
        "unchanged",
        source_file=frame.source_label,
        fingerprint=frame.fingerprint,
        message=message,
        input_digest=last.input_digest,
        unchanged_since=last.as_of,
        rows_kept=kept,
    )
    report.objects[obj.name] = result
    report.warnings.extend(frame.notes)
    _write_log(con, as_of, result, report.source)


def load_frames(
    con: duckdb.DuckDBPyConnection,
    frames: Mapping[str, SourceFrame],
    as_of: datetime,
    objects: Sequence[str] | None = None,
    *,
    absent_message: Callable[[str], str] | None = None,
    folder: Path | None = None,
    source: str = "files",
    quality: QualityPolicy | None = None,
    unchanged: Mapping[str, _LastLoad] | None = None,
) -> LoadReport:
    """Validate in-memory contract-text frames and load them into raw.*, quarantining broken rows.

    The same validation, reason codes, cascade and writes as a folder load. `objects` (default: the
    objects in `frames`) are processed in dependency order; a selected object without a frame is skipped
    with `absent_message(object)` and keeps its raw table. Objects outside the selection are untouched;
    their existing raw tables serve as reference targets.

    The blocking quality gate (`quality`, default: the settings file's `quality:` section) refuses an
    object whose share of broken rows exceeds its limit: its raw table keeps the last good copy, its
    quarantine shows the broken rows, and `ops.load_log.gate` says why. `source` names the provider in
    `ops.load_log` and `ops.drift_events`. Objects in `unchanged` (a folder pass found their inputs equal
    to their last load's) are recorded as `unchanged` and not touched; their frames carry no data.
    """
    as_of = parse_as_of(as_of)
    policy = quality if quality is not None else load_quality_policy()
    selected = [n for n in OBJECT_NAMES if n in frames] if objects is None else list(objects)
    unknown = [name for name in [*selected, *frames] if name not in OBJECTS]
    if unknown:
        raise ValueError(
            f"unknown object(s) {', '.join(unknown)}; the contract has {', '.join(OBJECT_NAMES)}"
        )
    absent = absent_message or (lambda name: f"{name}: not provided in this load")

    ensure_ops_tables(con)
    report = LoadReport(folder=folder, as_of=as_of, source=source)
    loaded_keys: dict[str, _ParentKeys | None] = {}
    digests: dict[str, str | None] = {}
    kept = unchanged or {}
    for name in OBJECT_NAMES:
        if name not in selected:
            continue
        obj = OBJECTS[name]
        frame = frames.get(name)
        if frame is not None and name in kept:
            _keep_unchanged(con, obj, frame, kept[name], as_of, report)
            # children reloaded in this pass check their references against the kept raw copy
            loaded_keys[name] = None
            digests[name] = kept[name].input_digest
            continue
        digest = None
        if frame is not None:
            parent_digests = [digests.get(parent) for parent in _parents_of(obj)]
            limit = policy.limit_for(name)
            digest = _input_digest(obj, source, frame.source_label, frame.fingerprint, limit, parent_digests)
        parents: dict[str, _ParentKeys | None] = {}
        for col in obj.references:
            target = col.references or ""
            if target not in parents:
                known = loaded_keys.get(target)
                parents[target] = known if known is not None else _parent_keys_from_raw(con, OBJECTS[target])
        loaded_keys[name] = _load_one(
            con, obj, frame, as_of, parents, report, absent, policy.limit_for, digest
        )
        digests[name] = digest if report.objects[name].status == "loaded" else None
    return report


def _locate_frame(folder: Path, name: str) -> tuple[Path, SourceFrame] | None:
    """The file for one object in `folder` and its frame without data yet (None when there is none).
    A file that cannot even be fingerprinted is refused through the frame's read_error."""
    path, ignored = _find_source(folder, name)
    if path is None:
        return None
    notes: tuple[str, ...] = ()
    if ignored:
        notes = (
            f"{name}: read {path.name}; ignored {', '.join(p.name for p in ignored)} (one file per object)",
        )
    frame = SourceFrame(data=pl.DataFrame(), source_label=str(path), short_label=path.name, notes=notes)
    try:
        return path, dataclasses.replace(frame, fingerprint=object_fingerprint(path))
    except OSError as exc:
        return path, dataclasses.replace(frame, read_error=f"cannot be read ({type(exc).__name__}: {exc})")


_READ_ERRORS = (pl.exceptions.PolarsError, OSError, ValueError)


def _read_frame(path: Path, frame: SourceFrame) -> SourceFrame:
    """`frame` with its file's header and chunked reader; a failure to read the header refuses the object
    (one in the records does when the load first reads them)."""
    if frame.read_error is not None:
        return frame
    try:
        scan = _scan(path)
        if scan is None:  # a spreadsheet is read whole
            return dataclasses.replace(frame, data=read_strings(path))
        header = _normalized(scan.head(0).collect())
    except _READ_ERRORS as exc:
        return dataclasses.replace(frame, read_error=f"cannot be read ({type(exc).__name__}: {exc})")
    return dataclasses.replace(frame, data=header, chunks=functools.partial(_file_chunks, path))


def load_folder(
    con: duckdb.DuckDBPyConnection,
    folder: Path,
    as_of: datetime,
    objects: Sequence[str] | None = None,
    *,
    source: str = "files",
    quality: QualityPolicy | None = None,
) -> LoadReport:
    """Load the contract files in `folder` into raw.*, quarantining broken rows; see the module docstring.

    `objects` limits the load to those objects (always processed in dependency order). Objects outside
    the selection are untouched; their existing raw tables serve as reference targets.

    An object is not read at all but reported `unchanged` when loading it again could only reproduce its
    last load: same file content and path, source and quality settings (its input digest), a last load
    that was not refused, at an as-of no later than this one and with no future timestamp quarantined,
    and every parent it references unchanged in this same pass (a changed parent can orphan or un-orphan
    its rows). Its raw table, quarantine rows and history stay as they are.
    """
    folder = Path(folder)
    as_of = parse_as_of(as_of)
    if not folder.is_dir():
        raise FileNotFoundError(f"SoR folder {folder} does not exist or is not a folder")
    selected = list(OBJECT_NAMES) if objects is None else list(objects)
    unknown = [name for name in selected if name not in OBJECTS]
    if unknown:
        raise ValueError(
            f"unknown object(s) {', '.join(unknown)}; the contract has {', '.join(OBJECT_NAMES)}"
        )
    policy = quality if quality is not None else load_quality_policy()
    ensure_ops_tables(con)
    frames: dict[str, SourceFrame] = {}
    unchanged: dict[str, _LastLoad] = {}
    for name in OBJECT_NAMES:
        located = _locate_frame(folder, name) if name in selected else None
        if located is None:
            continue
        path, frame = located
        obj = OBJECTS[name]
        parents = _parents_of(obj)
        if frame.read_error is None and all(parent in unchanged for parent in parents):
            digest = _input_digest(
                obj,
                source,
                frame.source_label,
                frame.fingerprint,
                policy.limit_for(name),
                [unchanged[parent].input_digest for parent in parents],
            )
            last = _keeps_last_load(con, obj, digest, as_of) if digest is not None else None
            if last is not None:
                unchanged[name] = last
                frames[name] = frame
                continue
        frames[name] = _read_frame(path, frame)
    return load_frames(
        con,
        frames,
        as_of,
        selected,
        absent_message=lambda name: f"no {name}.csv, .parquet or .xlsx in {folder}",
        folder=folder,
        source=source,
        quality=policy,
        unchanged=unchanged,
    )
