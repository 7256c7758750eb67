"""Schema drift events: one row per source, object, column and kind in `ops.drift_events`.

One responsibility: record that a source's shape changed, once per (source, object, column, kind), with
the as-of time it was first seen and the latest as-of it was seen again. Kinds:

- `added`: a field outside the contract arrived (loaded into nothing, reported);
- `removed`: a contract column is absent (a required one also refuses the object);
- `type_changed`: values of a column that parsed before no longer parse as the contract's type for the
  same records (the rows it breaks are quarantined as `unparseable`).

Both the connector sync and the file source write here, so `mart_data_quality` sees every source alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import duckdb

from actionlayer.db import run as _run

DRIFT_TABLE = "ops.drift_events"
DriftKind = Literal["added", "removed", "type_changed"]
DRIFT_KINDS: tuple[str, ...] = ("added", "removed", "type_changed")

DRIFT_DDL = f"""
create schema if not exists ops;
create table if not exists {DRIFT_TABLE} (
    source        varchar   not null,
    object        varchar   not null,
    column_name   varchar   not null,
    kind          varchar   not null,
    detail        varchar   not null,
    first_seen_at timestamp not null,
    as_of         timestamp not null
);
"""


@dataclass(frozen=True)
class DriftEvent:
    """A change in the source's shape seen in this load. `new` is False when it was recorded before."""

    object: str
    column: str
    kind: DriftKind
    detail: str
    new: bool


def record_drift(
    con: duckdb.DuckDBPyConnection,
    source: str,
    object_name: str,
    column: str,
    kind: DriftKind,
    detail: str,
    as_of: datetime,
) -> DriftEvent:
    """Write one drift event (once per source, object, column and kind; later sightings move as_of).
    The caller has run `DRIFT_DDL` (the sync and the file source do, before any load)."""
    known = _run(
        con,
        f"select count(*) from {DRIFT_TABLE} where source = ? and object = ? and column_name = ? and kind = ?",
        [source, object_name, column, kind],
    )[0][0]
    if known:
        _run(
            con,
            f"update {DRIFT_TABLE} set as_of = greatest(as_of, ?) "
            "where source = ? and object = ? and column_name = ? and kind = ?",
            [as_of, source, object_name, column, kind],
        )
    else:
        _run(
            con,
            f"insert into {DRIFT_TABLE} values (?, ?, ?, ?, ?, ?, ?)",
            [source, object_name, column, kind, detail, as_of, as_of],
        )
    return DriftEvent(object=object_name, column=column, kind=kind, detail=detail, new=not known)
