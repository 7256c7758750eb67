"""Row-diffed loads: a changed file is validated only where its rows are not provably unchanged, and
raw, quarantine and history end exactly as a load that validated every row; Great Expectations then
checks only the records the load added or changed."""

from __future__ import annotations

import copy
import shutil
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from actionlayer.contract import OBJECT_NAMES, OBJECTS
from actionlayer.quality import validate_load
from connectors import files
from connectors.files import LoadReport, load_folder
from connectors.history import record_load_history
from tests.test_file_source import AS_OF, write_world
from tests.test_file_source import world as small_world

# small fixtures: one broken row is a large share of an object (see conftest.py)
QUALITY_GATE_OFF = True

DAY_AFTER = datetime(2026, 11, 24, 9, 0, 0)
TS = "2026-10-01 10:00:00"


def world() -> dict[str, list[dict[str, str | None]]]:
    """The small world with enough activities that a few changes leave most rows unchanged."""
    data = small_world()
    data["activities"] += [
        {
            "activity_id": f"T{i}",
            "contact_id": "C1" if i % 2 else "C4",
            "deal_id": "D1" if i % 3 == 0 else None,
            "owner_email": "owner@example.com",
            "kind": "call",
            "occurred_at": TS,
            "subject": f"Call {i}",
        }
        for i in range(3, 41)
    ]
    data["activities"].append({**data["activities"][2], "activity_id": "BAD1", "kind": "fax"})  # broken
    return data


def day_two(data: dict[str, list[dict[str, str | None]]]) -> dict[str, list[dict[str, str | None]]]:
    """The next day's folder: every kind of row change a source makes, on an otherwise equal file."""
    data = copy.deepcopy(data)
    acts = data["activities"]
    by_id = {row["activity_id"]: row for row in acts}
    by_id["T3"]["subject"] = "Call 3, rescheduled"  # changed
    by_id["T4"]["kind"] = "telepathy"  # changed into a broken row
    by_id["BAD1"]["kind"] = "call"  # a broken row fixed
    by_id["T6"]["activity_id"] = " T6 "  # same key once trimmed: unchanged content, new text
    acts.remove(by_id["T7"])  # gone from the source
    acts.insert(0, {**by_id["T11"], "activity_id": "T0"})  # new, at the top: every row number shifts
    acts.append({**by_id["T9"], "subject": "another T9"})  # a conflicting copy of an unchanged row
    acts.append(dict(by_id["T10"]))  # an exact copy of an unchanged row
    # contact C4 is gone, so its unchanged activities now refer to nothing
    data["contacts"] = [c for c in data["contacts"] if c["contact_id"] != "C4"]
    data["nps_responses"] = [r for r in data["nps_responses"] if r["contact_id"] != "C4"]
    return data


def _pass(con: duckdb.DuckDBPyConnection, folder: Path, as_of: datetime) -> LoadReport:
    report = load_folder(con, folder, as_of)
    record_load_history(con, report)
    return report


def _state(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    """Everything a load writes, but raw's `_loaded_at` (a row-diffed load keeps it for kept rows)."""
    state = {}
    for name in OBJECT_NAMES:
        columns = ", ".join([*OBJECTS[name].column_names, "_source_file", "_row_number"])
        state[f"raw.{name}"] = con.execute(f"select {columns} from raw.{name} order by all").fetchall()
        state[f"hist.{name}"] = con.execute(f"select * from hist.{name} order by all").fetchall()
    state["quarantine"] = con.execute("select * from ops.quarantine order by all").fetchall()
    state["load_log"] = con.execute(
        "select as_of, object, rows_read, rows_loaded, rows_quarantined, status, message, "
        "quarantine_counts, stable_until from ops.load_log order by all"
    ).fetchall()
    return state


def test_a_row_diffed_load_ends_exactly_as_a_full_validation(tmp_path: Path) -> None:
    folder = write_world(tmp_path / "sor", world())
    diffed = duckdb.connect(str(tmp_path / "diffed.duckdb"))
    full = duckdb.connect(str(tmp_path / "full.duckdb"))
    for con in (diffed, full):
        first = _pass(con, folder, AS_OF)
        assert first.objects["activities"].rows_validated == 41
    # without the last load's row digests a load validates every row, as before row diffing existed
    for name in OBJECT_NAMES:
        full.execute(f"drop table ops.row_digests_{name}")
    write_world(folder, day_two(world()))  # the next day's files replace the folder's
    report = load_folder(diffed, folder, DAY_AFTER)
    reference = load_folder(full, folder, DAY_AFTER)
    # the diffed load's history compares only the rows it wrote and the keys gone from raw
    assert report.objects["activities"].diffed_since == AS_OF
    assert reference.objects["activities"].diffed_since is None
    history = record_load_history(diffed, report)
    assert history.summary_lines() == record_load_history(full, reference).summary_lines()
    assert "hist.activities: 3 version(s) opened, 22 closed, 18 unchanged" in history.summary_lines()

    assert _state(diffed) == _state(full)
    assert report.summary_lines() == reference.summary_lines()
    acts = report.objects["activities"]
    assert reference.objects["activities"].rows_validated == acts.rows_read == 43
    # validated: T0 (new), T3, T4, T6 (changed text), BAD1 (broken before), T9 and its copy, T10 and its
    # copy, and the unchanged rows of contact C4 (T4 is among them), whose parent is gone
    c4_rows = {f"T{i}" for i in range(3, 41) if i % 2 == 0} - {"T4", "T6", "T10"}
    assert acts.rows_validated == 9 + len(c4_rows) == 25
    assert acts.quarantine_counts == {
        "conflicting_duplicate": 2,
        "out_of_domain": 1,
        "broken_reference": len(c4_rows) + 2,  # and T6, T10; T4 is out of domain first
    }
    # kept rows keep the as-of of the load that wrote them; rows this load wrote carry its as-of
    written = dict(diffed.execute("select activity_id, _loaded_at from raw.activities").fetchall())
    assert written["T5"] == AS_OF
    assert written["T0"] == written["T3"] == written["BAD1"] == DAY_AFTER
    assert "T7" not in written and "T9" not in written and "T6" not in written
    # the new top row shifted every kept row's row number, in raw and in the digests the next load uses
    assert diffed.execute("select _row_number from raw.activities where activity_id = 'T5'").fetchone() == (
        6,
    )
    assert diffed.execute(
        "select row_number from ops.row_digests_activities where record_key = 'T5'"
    ).fetchone() == (6,)


def test_a_diffed_load_is_kept_when_unchanged_and_another_source_file_validates_every_row(
    tmp_path: Path,
) -> None:
    folder = write_world(tmp_path / "sor", world())
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    _pass(con, folder, AS_OF)
    _pass(con, write_world(folder, day_two(world())), DAY_AFTER)
    before = _state(con)
    # the same folder and as-of again: every object unchanged
    assert {o.status for o in _pass(con, folder, DAY_AFTER).objects.values()} == {"unchanged"}
    # the same rows from another folder: another source label, so every row is validated again, and the
    # rows end the same
    again = _pass(con, write_world(tmp_path / "copy", day_two(world())), DAY_AFTER)
    assert again.objects["activities"].rows_validated == 43
    after = _state(con)
    for name in OBJECT_NAMES:
        assert [r[:-2] for r in after[f"raw.{name}"]] == [r[:-2] for r in before[f"raw.{name}"]]
    # and a load after that diffs again
    later = datetime(2026, 11, 25, 9, 0, 0)
    data = day_two(world())
    data["activities"][1]["subject"] = "changed on day three"
    third = _pass(con, write_world(tmp_path / "copy", data), later).objects["activities"]
    assert third.rows_validated == 1 + 18 + 4  # the changed row, C4's, the duplicates
    assert _pass(con, tmp_path / "copy", later).objects["activities"].status == "unchanged"


def test_expectations_run_on_the_records_a_load_added_or_changed(tmp_path: Path) -> None:
    folder = write_world(tmp_path / "sor", world())
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    _pass(con, folder, AS_OF)
    first = validate_load(con, "activities", AS_OF)
    assert first.success and first.row_count == 40 and first.rows_in_raw == 40
    _pass(con, write_world(folder, day_two(world())), DAY_AFTER)
    changed = con.execute(
        "select count(*) from hist.activities where _valid_from = ?", [DAY_AFTER]
    ).fetchone()[0]
    result = validate_load(con, "activities", DAY_AFTER)
    assert result.success, result.summary_lines()
    assert result.row_count == changed == 3  # T0 new, T3 changed, BAD1 fixed
    metadata = result.to_metadata()
    assert metadata["rows_validated"] == 3 and metadata["rows_in_raw"] == 21
    assert validate_load(con, "activities", None).row_count == metadata["rows_in_raw"]

    # a broken value in a changed record is caught ...
    con.execute("update raw.activities set kind = 'fax' where activity_id = 'T3'")
    failed = validate_load(con, "activities", DAY_AFTER)
    assert not failed.success
    assert any(f["expectation_type"] == "expect_column_values_to_be_in_set" for f in failed.failures)
    con.execute("update raw.activities set kind = 'call' where activity_id = 'T3'")
    # ... and so is a second raw row for a key the load wrote: every raw row of such a key is validated
    con.execute("insert into raw.activities select * from raw.activities where activity_id = 'T0'")
    duplicate = validate_load(con, "activities", DAY_AFTER)
    assert [f["expectation_type"] for f in duplicate.failures] == ["expect_column_values_to_be_unique"]


def test_expectations_in_parts_equal_one_validation(tmp_path: Path) -> None:
    folder = write_world(tmp_path / "sor", world())
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    _pass(con, folder, AS_OF)
    # two broken values and a duplicate key, so the parts must add up failures and still see the duplicate
    con.execute(
        "update raw.activities set kind = 'fax' where activity_id in (select activity_id from raw.activities limit 2)"
    )
    con.execute("insert into raw.activities select * from raw.activities limit 1")
    whole = validate_load(con, "activities", None)
    parts = validate_load(con, "activities", None, chunk_rows=7)
    assert parts.row_count == whole.row_count == 41
    assert not parts.success and not whole.success
    assert [
        (r["expectation_type"], r["column"], r["success"], r["unexpected_count"]) for r in parts.results
    ] == [(r["expectation_type"], r["column"], r["success"], r["unexpected_count"]) for r in whole.results]
    assert sorted(parts.failures[0]["unexpected_values"]) == sorted(whole.failures[0]["unexpected_values"])


def _written(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    """Everything a load writes (`_state`), with raw's load times, the row digests and drift events."""
    state = _state(con)
    for name in OBJECT_NAMES:
        state[f"raw.{name}._loaded_at"] = con.execute(
            f"select {OBJECTS[name].key}, _loaded_at from raw.{name} order by all"
        ).fetchall()
        state[f"digests.{name}"] = con.execute(
            f"select * from ops.row_digests_{name} order by all"
        ).fetchall()
    state["drift"] = con.execute("select * exclude (as_of) from ops.drift_events order by all").fetchall()
    return state


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_load_in_many_chunks_writes_what_one_chunk_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Each object is read, validated and written a few rows at a time; duplicates, broken references and
    moved rows span chunks, and every table ends as when the object is read whole."""

    def folder_of(data: dict[str, list[dict[str, str | None]]], name: str) -> Path:
        folder = write_world(tmp_path / f"{name}-csv", data)
        if kind == "csv":
            return folder
        target = tmp_path / f"{name}-parquet"
        target.mkdir(exist_ok=True)
        for path in folder.glob("*.csv"):
            pl.read_csv(path, infer_schema=False).write_parquet(target / f"{path.stem}.parquet")
        return target

    day_one = folder_of(world(), "one")
    day_two_folder = folder_of(day_two(world()), "two")
    results = {}
    # 30: the second load's 25 rows to validate are read once, from two chunks
    for chunk_rows in (1_000_000, 30, 3):
        monkeypatch.setattr(files, "CHUNK_ROWS", chunk_rows)
        # both days from one folder: the second load diffs against the first
        folder = tmp_path / f"sor-{chunk_rows}"
        shutil.copytree(day_one, folder)
        con = duckdb.connect(str(tmp_path / f"chunks-{chunk_rows}.duckdb"))
        first = _pass(con, folder, AS_OF)
        shutil.rmtree(folder)
        shutil.copytree(day_two_folder, folder)
        second = _pass(con, folder, DAY_AFTER)
        lines = [line.replace(str(folder), "SOR") for r in (first, second) for line in r.summary_lines()]
        state = {k: str(v).replace(str(folder), "SOR") for k, v in _written(con).items()}
        results[chunk_rows] = (lines, state, second.objects["activities"])
    whole, chunked = results[1_000_000], results[3]
    for other in (results[30], chunked):
        assert other[0] == whole[0]
        assert other[1] == whole[1]
    assert results[30][2].rows_validated == 25
    # the second load diffed, judged duplicates across chunks, and found C4's orphans in every chunk
    acts = chunked[2]
    assert acts.diffed_since == AS_OF and acts.rows_validated == 25
    assert acts.quarantine_counts == {"conflicting_duplicate": 2, "out_of_domain": 1, "broken_reference": 18}
    assert "key 'T10' appears 2 times with identical content" in " ".join(whole[0])
    # an activities file of 43 rows really was read in more than one chunk
    path = next(day_two_folder.glob("activities.*"))
    sizes = [chunk.height for chunk in files._chunks_of(files._read_frame(path, _frame(path)), 3)]
    assert len(sizes) > 1 and max(sizes) <= 3 and sum(sizes) == 43


def _frame(path: Path) -> files.SourceFrame:
    return files.SourceFrame(data=pl.DataFrame(), source_label=str(path))
