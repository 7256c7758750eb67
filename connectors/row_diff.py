"""The checks a file load settles over a whole object: repeated keys, the row diff (which rows are
provably unchanged since the last load) and the keys its children's references are checked against.

A load of a large object usually changes few of its rows. The contract text of each good row is kept as a
digest (ops.row_digests_<object>: key, digest, row number), written in the same transaction as raw. The
next load whose digests were computed the same way (`row_basis`) validates only the rows that are not
provably unchanged and applies them to raw as deletes and inserts. A row is unchanged when its key and
digest equal a good row of the last load, no other row in this load carries its key, and every parent
it references is among the parents' good keys of this load: the column checks are pure functions of the
row's text, except the future-timestamp check, which a row that passed at an earlier as-of still passes
(the last load's as-of must not be later than this one). So the rows this load quarantines are all among
the validated ones and the quarantine is exactly what a full validation would write.

The first two read only each row's key, row number and digest (`slim`) and the rows of keys that repeat, so
an object far larger than memory allows in full can be judged; connectors/files.py reads, validates and
writes.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import duckdb
import polars as pl

from actionlayer.contract import SorObject
from actionlayer.db import run, table_exists

# Columns the load adds to each row: its 1-based row number in the source, its digest, and the row
# number raw holds for it from the last load.
ROW = "_row_number"
DIGEST = "_row_digest"
PREV_ROW = "_previous_row_number"
# on rows carrying `_key` (the key trimmed)
MISSING_KEY = pl.col("_key").is_null() | (pl.col("_key") == "")
# how many keys a message names before "… n more"
MAX_KEYS_SHOWN = 5


@dataclass
class ParentKeys:
    """The keys a child may reference, and where they came from (for messages)."""

    good: pl.Series
    quarantined: set[str]
    origin: str

    @functools.cached_property
    def _by_hash(self) -> pl.DataFrame:
        keys = self.good.drop_nulls()
        return pl.DataFrame({"key": keys, "hash": keys.hash(seed=1)}).sort("hash")

    def has(self, values: pl.Series) -> pl.Series:
        """Whether each of `values` is a good key (null for a null value), by a binary search among the
        keys' hashes, sorted once: `is_in` builds its hash set on every call, a chunked load's main cost."""
        keys, hashes = self._by_hash.get_column("key"), self._by_hash.get_column("hash")
        if not keys.len():
            return pl.Series(values.name, [False] * values.len(), dtype=pl.Boolean) & values.is_not_null()
        wanted = values.hash(seed=1)
        at = hashes.search_sorted(wanted).clip(0, keys.len() - 1)
        found = keys.gather(at) == values
        # keys whose hashes collide: only the first is compared above, so those values are looked up whole
        unsure = ((hashes.gather(at) == wanted) & found.not_()).fill_null(False)
        if unsure.any():
            found = found | (unsure & values.is_in(keys.implode()))
        return found.alias(values.name)


def row_basis(obj: SorObject, source: str, label: str, columns: Sequence[str], tolerance: timedelta) -> str:
    """What the row digests depend on besides the rows: the contract, the future tolerance, the source and
    file (raw._source_file), the columns the file has and the digest function (polars' row hash, whose
    values are only stable within one polars version)."""
    parts = [repr(obj), str(tolerance), source, label, "\x1f".join(columns), pl.__version__, "v1"]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def digests_table(obj: SorObject) -> str:
    return f"ops.row_digests_{obj.name}"


def previous_digests(con: duckdb.DuckDBPyConnection, obj: SorObject) -> pl.DataFrame | None:
    """The good rows (`_key`, digest, row number) the object's last load wrote, or None when raw.<object>
    does not hold exactly as many rows (then every row is validated). Whether that load's digests may be
    diffed against (same basis, as-of) is the caller's to check in its load log."""
    table = digests_table(obj)
    if not table_exists(con, "raw", obj.name) or not table_exists(con, "ops", table.split(".")[1]):
        return None
    raw_rows, digests = run(
        con, f"select (select count(*) from {obj.raw_table}), (select count(*) from {table})"
    )[0]
    if raw_rows != digests:
        return None
    sql = f"select record_key as _key, row_digest as {DIGEST}, row_number as {PREV_ROW} from {table}"
    return pl.from_arrow(con.sql(sql).to_arrow_table())  # type: ignore[return-value]


def slim(obj: SorObject, part: pl.DataFrame, parents: Mapping[str, ParentKeys | None] | None) -> pl.DataFrame:
    """What the load keeps of each row of one chunk to judge the whole object: the trimmed `_key`, the row
    number, the row digest and (when diffing: `parents` given) whether every parent it references is among
    the parents' good keys (`_refs_ok`)."""
    # A 64-bit hash: a changed row is taken for unchanged only if its hash collides with the previous
    # content of the same key, about 1 in 1.8e19 per changed row.
    digest = part.select(obj.column_names).hash_rows(seed=1)
    refs_ok: pl.Expr = pl.lit(True)
    for col in obj.references if parents is not None else ():
        parent = parents.get(col.references or "")  # type: ignore[union-attr]
        if parent is None:
            continue
        ref = part.get_column(col.name).str.strip_chars()
        refs_ok = refs_ok & pl.lit(ref.is_null() | (ref == "") | parent.has(ref))
    return part.select(
        pl.col(obj.key).str.strip_chars().alias("_key"),
        pl.col(ROW),
        digest.alias(DIGEST),
        refs_ok.alias("_refs_ok"),
    )


def _except_positions(frame: pl.DataFrame, positions: pl.Series) -> pl.DataFrame:
    """`frame` without the rows at `positions` (cheaper than an anti join on a key)."""
    keep = pl.repeat(True, frame.height, dtype=pl.Boolean, eager=True).scatter(positions, False)
    return frame.filter(keep)


@dataclass
class Duplicates:
    """The rows that share a key with others: exact copies to drop (all but the first) and the keys whose
    copies differ (every copy is quarantined), with the warnings about the exact copies."""

    drop_rows: pl.Series  # _row_number
    conflicting: pl.Series  # _key
    warnings: list[str]

    @classmethod
    def none(cls) -> Duplicates:
        empty = pl.Series(ROW, [], dtype=pl.Int64)
        return cls(drop_rows=empty, conflicting=pl.Series("_key", [], dtype=pl.String), warnings=[])


def judge_duplicates(obj: SorObject, df: pl.DataFrame, file_label: str) -> Duplicates:
    """Judge repeated keys among the rows of `df` (with `_key`): only those rows matter, so `df` may hold
    just the rows of keys known to repeat."""
    # Duplicates are judged on the written content (key trimmed), before any value check. Only keys that
    # occur more than once can be duplicates: comparing content per key over every row cost most of a
    # large load.
    warnings: list[str] = []
    keyed = df.filter(MISSING_KEY.not_() & pl.col("_key").is_duplicated())
    content = [c for c in obj.column_names if c != obj.key]
    per_key = keyed.group_by("_key").agg(
        pl.len().alias("copies"),
        pl.struct(content).n_unique().alias("versions") if content else pl.lit(1).alias("versions"),
        pl.col(ROW).sort().alias("rows"),
    )
    conflicting = per_key.filter(pl.col("versions") > 1)
    exact = per_key.filter((pl.col("copies") > 1) & (pl.col("versions") == 1))
    drop_rows: list[int] = []
    for number, row in enumerate(exact.sort(pl.col("rows").list.first()).iter_rows(named=True)):
        rows = row["rows"]
        drop_rows += rows[1:]
        if number < MAX_KEYS_SHOWN:
            warnings.append(
                f"{file_label}: key {row['_key']!r} appears {row['copies']} times with identical content "
                f"(rows {', '.join(map(str, rows))}); kept row {rows[0]}, dropped the exact duplicates"
            )
    if exact.height > MAX_KEYS_SHOWN:
        warnings.append(
            f"{file_label}: {exact.height - MAX_KEYS_SHOWN} more keys had exact duplicates; "
            "each kept its first row"
        )
    return Duplicates(
        drop_rows=pl.Series(ROW, drop_rows, dtype=pl.Int64),
        conflicting=conflicting.get_column("_key"),
        warnings=warnings,
    )


@dataclass
class RowDiff:
    """What the whole object settles before any row is validated: which rows to validate, which keys
    repeat, and (when diffed against the last load) how raw changes besides the validated rows."""

    digests: pl.Series  # every row's digest, in row order
    repeated_keys: pl.Series  # keys carried by more than one row: their rows are judged as duplicates
    validate: pl.Series | None = None  # per row: not provably unchanged (None: validate every row)
    unchanged_keys: pl.Series | None = None  # keys of the rows kept in raw as they are
    gone: pl.DataFrame | None = None  # `_key`s to delete from raw: changed, now broken or gone
    moved: pl.DataFrame | None = None  # unchanged rows whose row number moved: `_key`, row number

    @property
    def unchanged(self) -> int:
        return self.unchanged_keys.len() if self.unchanged_keys is not None else 0


def diff(slim: pl.DataFrame, previous: pl.DataFrame | None) -> RowDiff:
    """Judge the object's `slim` rows as a whole: its repeated keys and, with the last load's digests
    (`previous`), the rows that are provably unchanged (see the module docstring)."""
    # A key's 64-bit hash stands in for its text when looking for repeats (several times cheaper): a
    # collision only sends both rows to validation, which judges them as if diffed against nothing.
    repeated = pl.col("_key").hash(seed=1).is_duplicated()
    slim = slim.with_columns(repeated.alias("_repeated"))
    candidates = slim.filter(MISSING_KEY.not_() & pl.col("_repeated"))
    result = RowDiff(
        digests=slim.get_column(DIGEST),
        repeated_keys=candidates.filter(pl.col("_key").is_duplicated()).get_column("_key").unique(),
    )
    if previous is None:
        return result
    rows = slim.with_row_index("_pos").filter(
        MISSING_KEY.not_() & pl.col("_repeated").not_() & pl.col("_refs_ok")
    )
    # joined on the 64-bit digest alone (much faster than on the key text), then the keys compared
    indexed = previous.with_row_index("_prev_pos")
    rows = rows.join(indexed, on=DIGEST, how="inner", suffix="_previous")
    unchanged = rows.filter(pl.col("_key") == pl.col("_key_previous"))
    result.validate = pl.repeat(True, slim.height, dtype=pl.Boolean, eager=True).scatter(
        unchanged["_pos"], False
    )
    result.unchanged_keys = unchanged.get_column("_key")
    result.gone = _except_positions(previous.select("_key"), unchanged["_prev_pos"])
    result.moved = unchanged.filter(pl.col(ROW) != pl.col(PREV_ROW)).select("_key", ROW)
    return result
