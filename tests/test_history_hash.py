"""History row hashes: a database whose hist.* hashes were computed another way (the MD5 text of earlier
releases, another DuckDB version's hash) records the next as-of exactly as one that always used the
current hash: no version is opened for an unchanged record."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import pytest

from actionlayer.contract import OBJECT_NAMES, OBJECTS
from connectors.history import ROW_HASH_BASIS
from tests.test_file_source import AS_OF, write_world
from tests.test_row_diff import DAY_AFTER, _pass, day_two, world

# small fixtures: one broken row is a large share of an object (see conftest.py)
QUALITY_GATE_OFF = True


def _as_earlier_release(con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite the history as an earlier release kept it: `_row_hash` the MD5 of the contract columns as
    JSON text, and no `row_hash_basis` in ops.history_log."""
    for name in OBJECT_NAMES:
        fields = ", ".join(f"{c} := {c}" for c in OBJECTS[name].column_names)
        md5 = f"md5(cast(to_json(struct_pack({fields})) as varchar))"
        con.execute(f"alter table hist.{name} alter _row_hash set data type varchar using {md5}")
    con.execute("alter table ops.history_log drop column row_hash_basis")


def _as_other_duckdb(con: duckdb.DuckDBPyConnection) -> None:
    """Hashes as another DuckDB version's hash() might have computed them."""
    for name in OBJECT_NAMES:
        con.execute(f"update hist.{name} set _row_hash = _row_hash // 3")
    con.execute("update ops.history_log set row_hash_basis = 'duckdb-hash 0.9.0 v1'")


def _history(
    con: duckdb.DuckDBPyConnection, names: Sequence[str] = OBJECT_NAMES, hashes: bool = True
) -> dict:
    columns = "*" if hashes else "* exclude (_row_hash)"
    return {name: con.execute(f"select {columns} from hist.{name} order by all").fetchall() for name in names}


@pytest.mark.parametrize("rewrite", [_as_earlier_release, _as_other_duckdb], ids=["md5-text", "other-duckdb"])
def test_history_hashed_another_way_records_the_next_as_of_like_the_current_hash(
    tmp_path: Path, rewrite: Callable[[duckdb.DuckDBPyConnection], None]
) -> None:
    folder = tmp_path / "sor"
    upgraded = duckdb.connect(str(tmp_path / "upgraded.duckdb"))
    reference = duckdb.connect(str(tmp_path / "reference.duckdb"))
    write_world(folder, world())
    for con in (upgraded, reference):
        _pass(con, folder, AS_OF)
    rewrite(upgraded)
    assert _history(upgraded) != _history(reference)

    write_world(folder, day_two(world()))
    for con in (upgraded, reference):
        _pass(con, folder, DAY_AFTER)

    # Objects whose files did not change keep their history untouched (hashes included) until they load.
    applied = [
        name
        for (name,) in upgraded.execute(
            "select distinct object from ops.history_log where as_of = ? order by all", [DAY_AFTER]
        ).fetchall()
    ]
    assert "activities" in applied and "accounts" not in applied
    assert _history(upgraded, hashes=False) == _history(reference, hashes=False)
    assert _history(upgraded, applied) == _history(reference, applied)
    # a version opened per changed, new or fixed record, none for the unchanged ones
    opened = upgraded.execute(
        "select count(*) from hist.activities where _valid_from = ?", [DAY_AFTER]
    ).fetchone()
    assert opened == (3,)  # T3 changed, T0 new, BAD1 fixed
    types = upgraded.execute(
        "select distinct data_type from information_schema.columns "
        "where table_schema = 'hist' and column_name = '_row_hash' and table_name in (select unnest(?))",
        [applied],
    ).fetchall()
    assert types == [("UBIGINT",)]
    basis = upgraded.execute(
        "select row_hash_basis from ops.history_log order by rowid desc limit 1"
    ).fetchone()
    assert basis == (ROW_HASH_BASIS,)
    upgraded.close()
    reference.close()
