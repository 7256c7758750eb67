"""Great Expectations checks of one object's dataframe against the canonical contract.

One responsibility: build an expectation suite from `actionlayer.contract` for an object and run it on a
pandas dataframe (GE 1.24 cannot validate a DuckDB SQL datasource, see CONVENTIONS.md), returning a
small JSON-friendly result. Great Expectations takes 5-20 s to import, so it is imported on the first
validation only (or in the background, `prepare_in_background`, by a caller that knows validations will
follow), and one ephemeral context is kept per process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actionlayer.config import disable_telemetry
from actionlayer.contract import LOAD_METADATA_COLUMNS, SCORE_MAX, SCORE_MIN, Kind, get_object

if TYPE_CHECKING:
    import duckdb
    import pandas

_MAX_UNEXPECTED_SHOWN = 5
# rows per pandas frame handed to Great Expectations by validate_load
VALIDATION_CHUNK_ROWS = 1_000_000

_lock = threading.Lock()
_datasource: Any = None
_batch_definitions: dict[str, Any] = {}


@dataclass
class QualityResult:
    """The outcome of one validation: overall success and one entry per expectation."""

    object_name: str
    success: bool
    row_count: int
    # rows of the object in raw when only part of it was validated (validate_load), else None
    rows_in_raw: int | None = None
    # Each: expectation_type, column (None for table-level), success, unexpected_count,
    # unexpected_values (a few, as JSON-safe values) and, for failures GE could not even evaluate, error.
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["success"]]

    def summary_lines(self) -> list[str]:
        """One sentence per failed expectation, for logs."""
        lines = []
        for failure in self.failures:
            where = f"{self.object_name}.{failure['column']}" if failure["column"] else self.object_name
            detail = failure.get("error") or (
                f"{failure['unexpected_count']} unexpected, e.g. {failure['unexpected_values']}"
            )
            lines.append(f"{where}: {failure['expectation_type']} failed ({detail})")
        return lines

    def to_metadata(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for Dagster asset-check metadata)."""
        return {
            "object": self.object_name,
            "success": self.success,
            "row_count": self.row_count,
            "rows_validated": self.row_count,
            **({"rows_in_raw": self.rows_in_raw} if self.rows_in_raw is not None else {}),
            "expectations": len(self.results),
            "failed": len(self.failures),
            "results": [dict(r) for r in self.results],
        }


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if type(value).__name__ in ("NAType", "NaTType"):
        # pandas' missing markers (Arrow-backed columns hand out pd.NA): shown as null, like None
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _exception_message(info: Any) -> str | None:
    """The message of an exception GE caught while evaluating an expectation, if any."""
    if not isinstance(info, dict):
        return None
    # GE reports either one {raised_exception, exception_message} dict or one such dict per metric.
    candidates = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    messages = [str(c.get("exception_message")) for c in candidates if c.get("raised_exception")]
    return "; ".join(messages) or None


def prepare_in_background() -> None:
    """Start importing Great Expectations and creating its context in a daemon thread, for a caller that
    knows validations will follow: the import is seconds of Python that can overlap a load's DuckDB and
    polars work (which release the GIL) instead of following it. A validation that comes first waits for
    it; a failure here is left for that validation to meet and report."""
    if _datasource is not None:
        return

    def prepare() -> None:
        with contextlib.suppress(Exception):
            _ensure_datasource()

    threading.Thread(target=prepare, name="great-expectations-import", daemon=True).start()


def _ensure_datasource() -> Any:
    """The pandas datasource of the process's one ephemeral context (importing GE and creating it first)."""
    global _datasource
    with _lock:
        if _datasource is None:
            # Analytics off before the import: GE reads the variable at import time.
            disable_telemetry()
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig
            from great_expectations.execution_engine import pandas_execution_engine

            # GE fingerprints every frame under this many bytes (an MD5 over a hash of every cell) as a
            # batch marker nothing here reads; it was three quarters of the time of validating a million
            # rows. Zero turns the fingerprint off.
            pandas_execution_engine.HASH_THRESHOLD = 0
            context = gx.get_context(mode="ephemeral")
            # Progress bars would flood the Dagster log with one line per metric.
            context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            _datasource = context.data_sources.add_pandas("actionlayer_frames")
        return _datasource


def _batch_definition(object_name: str) -> Any:
    """The cached whole-dataframe batch definition for an object (creating the context on first use)."""
    datasource = _ensure_datasource()
    with _lock:
        if object_name not in _batch_definitions:
            asset = datasource.add_dataframe_asset(name=object_name)
            _batch_definitions[object_name] = asset.add_batch_definition_whole_dataframe("whole")
        return _batch_definitions[object_name]


def build_suite(object_name: str, columns: list[str]) -> Any:
    """The contract's expectation suite for `object_name`, limited to `columns` that are present.

    Columns the frame lacks are reported by the column-set expectation alone, rather than by one
    error per expectation on a column that does not exist.
    """
    disable_telemetry()
    import great_expectations as gx

    obj = get_object(object_name)
    present = set(columns)
    suite = gx.ExpectationSuite(name=f"{object_name}_contract")
    expect = gx.expectations
    suite.add_expectation(
        expect.ExpectTableColumnsToMatchSet(column_set=list(obj.column_names), exact_match=True)
    )
    for col in obj.columns:
        if col.name not in present:
            continue
        if col.name == obj.key:
            suite.add_expectation(expect.ExpectColumnValuesToNotBeNull(column=col.name))
            suite.add_expectation(expect.ExpectColumnValuesToBeUnique(column=col.name))
            continue
        if col.required:
            suite.add_expectation(expect.ExpectColumnValuesToNotBeNull(column=col.name))
        if col.kind is Kind.ENUM:
            suite.add_expectation(
                expect.ExpectColumnValuesToBeInSet(column=col.name, value_set=list(col.domain or ()))
            )
        elif col.kind is Kind.SCORE:
            suite.add_expectation(
                expect.ExpectColumnValuesToBeBetween(
                    column=col.name, min_value=SCORE_MIN, max_value=SCORE_MAX
                )
            )
        elif col.kind is Kind.MONEY:
            suite.add_expectation(expect.ExpectColumnValuesToBeBetween(column=col.name, min_value=0))
    return suite


def validate_batch(object_name: str, df: pandas.DataFrame) -> QualityResult:
    """Validate one object's rows (e.g. `raw.<object>` as pandas) against the contract.

    The load metadata columns (`_source_file`, `_row_number`, `_loaded_at`) are not part of the
    contract and are dropped before validation, so a raw table can be passed as it is.
    """
    get_object(object_name)  # fail fast on an unknown object, before the slow import
    batch_definition = _batch_definition(object_name)
    metadata = [name for name, _ in LOAD_METADATA_COLUMNS if name in df.columns]
    frame = df.drop(columns=metadata) if metadata else df
    suite = build_suite(object_name, [str(c) for c in frame.columns])
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    outcome = batch.validate(suite)

    results: list[dict[str, Any]] = []
    for item in outcome.results:
        config = item.expectation_config
        kwargs = config.kwargs if config is not None else {}
        detail = item.result or {}
        entry: dict[str, Any] = {
            "expectation_type": config.type if config is not None else "unknown",
            "column": kwargs.get("column"),
            "success": bool(item.success),
            "unexpected_count": int(detail.get("unexpected_count") or 0),
            "unexpected_values": [
                _json_safe(v) for v in (detail.get("partial_unexpected_list") or [])[:_MAX_UNEXPECTED_SHOWN]
            ],
        }
        if "observed_value" in detail and entry["column"] is None:
            observed = detail["observed_value"]
            entry["observed_columns"] = (
                [_json_safe(v) for v in observed] if isinstance(observed, list) else None
            )
            if not item.success:
                expected = set(kwargs.get("column_set") or [])
                seen = set(observed or [])
                entry["unexpected_values"] = sorted(seen - expected)
                entry["missing_columns"] = sorted(expected - seen)
                entry["unexpected_count"] = len(seen ^ expected)
        error = _exception_message(item.exception_info)
        if error:
            entry["error"] = error
        results.append(entry)
    return QualityResult(
        object_name=object_name,
        success=bool(outcome.success),
        row_count=len(frame),
        results=results,
    )


def merge_results(object_name: str, parts: list[QualityResult]) -> QualityResult:
    """One result from the validations of disjoint parts of a table by the same suite: an expectation
    holds when it held in every part; unexpected counts add up, the examples shown come from the first
    parts that had any."""
    merged: list[dict[str, Any]] = []
    for entries in zip(*(part.results for part in parts), strict=True):
        entry = dict(entries[0])
        entry["success"] = all(e["success"] for e in entries)
        if entry["column"] is not None:
            # table-level entries (the column set) are the same in every part and are kept as they are
            entry["unexpected_count"] = sum(e["unexpected_count"] for e in entries)
            shown = [v for e in entries for v in e["unexpected_values"]]
            entry["unexpected_values"] = shown[:_MAX_UNEXPECTED_SHOWN]
        errors = [e["error"] for e in entries if e.get("error")]
        if errors:
            entry["error"] = "; ".join(dict.fromkeys(errors))
        merged.append(entry)
    return QualityResult(
        object_name=object_name,
        success=all(part.success for part in parts),
        row_count=sum(part.row_count for part in parts),
        results=merged,
    )


def _frame(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> pandas.DataFrame:
    """A query's rows as pandas columns backed by Arrow: about a third of the time of `.df()`, which converts
    every text column; the expectations give the same results on either."""
    import pandas

    return con.sql(sql, params=params or None).to_arrow_table().to_pandas(types_mapper=pandas.ArrowDtype)


def validate_load(
    con: duckdb.DuckDBPyConnection,
    object_name: str,
    as_of: dt.datetime | None,
    chunk_rows: int = VALIDATION_CHUNK_ROWS,
) -> QualityResult:
    """Validate what one load put into `raw.<object>`: with `as_of`, only the rows of the records whose
    history (`hist.<object>`) opened a version at that as-of, i.e. the records the load added or changed;
    with None, the whole raw table (history was not recorded for this load).

    Unchanged records were validated by the load that wrote them and are the same rows now, so validating
    them again only costs time and memory (a whole raw table as pandas was gigabytes at scale). The
    frame holds the contract columns only, money as DOUBLE (the checks compare it with 0; Python Decimal
    objects are slow and large), and every raw row of a touched key: a second row for a key the load added
    or changed (a duplicate the loader failed to drop or quarantine) is in the frame with it, so the key
    uniqueness expectation still checks the loader's work for every record this load wrote.

    More than `chunk_rows` rows are validated in parts of at most about that many (a first load of
    millions of records as one pandas frame set the pass's memory peak).
    """
    obj = get_object(object_name)
    columns = ", ".join(
        f"cast({c.name} as double) as {c.name}" if c.kind is Kind.MONEY else c.name for c in obj.columns
    )
    sql = f"select {columns} from raw.{obj.name}"
    params: list[Any] = []
    kept = f"select 1 from hist.{obj.name} where _valid_to is null and _valid_from <> ?"
    if as_of is not None and con.execute(f"select exists ({kept})", [as_of]).fetchall()[0][0]:
        # some records kept a version from an earlier load; on a first load every one is new (whole raw)
        sql += f" where {obj.key} in (select {obj.key} from hist.{obj.name} where _valid_from = ?)"
        params.append(as_of)
    rows = int(con.execute(f"select count(*) from ({sql})", params).fetchall()[0][0])
    parts = max(1, -(-rows // chunk_rows))
    if parts == 1:
        result = validate_batch(object_name, _frame(con, sql, params))
    else:
        # Every row of one key lands in the same part (split by the key's hash), so the uniqueness
        # expectation stays exact; the parts' results are summed into one.
        where = " and " if params else " where "
        result = merge_results(
            object_name,
            [
                validate_batch(
                    object_name,
                    _frame(con, f"{sql}{where}hash({obj.key}) % {parts} = {part}", params),
                )
                for part in range(parts)
            ],
        )
    if as_of is not None:
        result.rows_in_raw = int(con.execute(f"select count(*) from raw.{obj.name}").fetchall()[0][0])
    return result
