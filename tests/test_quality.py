"""Great Expectations contract checks on dataframes (one module: importing GE is slow)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from actionlayer.contract import OBJECTS
from actionlayer.quality import validate_batch
from connectors.files import load_folder
from tests.test_file_source import AS_OF, world, write_world

# small fixtures: one broken row is a large share of an object (see conftest.py)
QUALITY_GATE_OFF = True


def deals_frame() -> pd.DataFrame:
    rows = []
    for i in range(3):
        rows.append(
            {
                "deal_id": f"D{i}",
                "account_id": "A1",
                "contact_id": "C1",
                "owner_email": "owner@example.com",
                "name": f"Deal {i}",
                "stage": "lead",
                "amount": Decimal("100.00"),
                "currency": "EUR",
                "quote_sent_at": None,
                "stage_changed_at": pd.Timestamp("2026-10-01 10:00:00"),
                "closed_at": None,
                "created_at": pd.Timestamp("2026-10-01 10:00:00"),
                "updated_at": pd.Timestamp("2026-10-01 10:00:00"),
            }
        )
    return pd.DataFrame(rows, columns=list(OBJECTS["deals"].column_names))


def by_type(result, expectation_type: str, column: str | None) -> dict:
    return next(
        r for r in result.results if r["expectation_type"] == expectation_type and r["column"] == column
    )


def test_valid_frame_passes_and_metadata_is_json() -> None:
    result = validate_batch("deals", deals_frame())
    assert result.success, result.summary_lines()
    assert result.row_count == 3
    metadata = result.to_metadata()
    assert json.loads(json.dumps(metadata)) == metadata
    assert metadata["failed"] == 0
    types = {r["expectation_type"] for r in result.results}
    assert {
        "expect_table_columns_to_match_set",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_unique",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_between",
    } <= types
    # Optional columns carry no not-null expectation.
    assert not any(
        r["column"] == "closed_at" and r["expectation_type"] == "expect_column_values_to_not_be_null"
        for r in result.results
    )


def test_contract_violations_are_each_reported() -> None:
    df = deals_frame()
    df.loc[1, "deal_id"] = "D0"  # duplicate key
    df.loc[2, "stage"] = "gold"
    df.loc[2, "amount"] = Decimal("-5.00")
    df.loc[0, "name"] = None
    df["colour"] = "blue"
    result = validate_batch("deals", df)

    assert not result.success
    unique = by_type(result, "expect_column_values_to_be_unique", "deal_id")
    assert (
        not unique["success"]
        and unique["unexpected_count"] == 2
        and unique["unexpected_values"] == ["D0", "D0"]
    )
    stage = by_type(result, "expect_column_values_to_be_in_set", "stage")
    assert not stage["success"] and stage["unexpected_values"] == ["gold"]
    amount = by_type(result, "expect_column_values_to_be_between", "amount")
    assert not amount["success"] and amount["unexpected_values"] == ["-5.00"]
    assert not by_type(result, "expect_column_values_to_not_be_null", "name")["success"]
    columns = by_type(result, "expect_table_columns_to_match_set", None)
    assert not columns["success"] and columns["unexpected_values"] == ["colour"]
    assert by_type(result, "expect_column_values_to_not_be_null", "deal_id")["success"]
    json.dumps(result.to_metadata())
    assert any(
        line.startswith("deals.stage: expect_column_values_to_be_in_set failed")
        for line in result.summary_lines()
    )


def test_score_range_null_key_and_missing_column() -> None:
    df = pd.DataFrame(
        {
            "response_id": ["R1", None, "R3"],
            "contact_id": ["C1", "C1", "C2"],
            "score": [10, 11, -1],
            "comment": [None, None, "ok"],
        }
    )
    result = validate_batch("nps_responses", df)
    assert not result.success
    score = by_type(result, "expect_column_values_to_be_between", "score")
    assert score["unexpected_count"] == 2 and sorted(score["unexpected_values"]) == [-1, 11]
    assert by_type(result, "expect_column_values_to_not_be_null", "response_id")["unexpected_count"] == 1
    columns = by_type(result, "expect_table_columns_to_match_set", None)
    assert columns["missing_columns"] == ["responded_at"]


def test_raw_tables_loaded_by_the_file_source_pass(tmp_path: Path) -> None:
    data = world()
    data["accounts"][0]["tier"] = "gold"  # quarantined by the loader, so raw stays clean
    folder = write_world(tmp_path, data)
    with duckdb.connect(":memory:") as con:
        load_folder(con, folder, AS_OF)
        frames = {name: con.execute(f"select * from raw.{name}").df() for name in OBJECTS}
    for name, frame in frames.items():
        result = validate_batch(name, frame)
        assert result.success, (name, result.summary_lines())


def test_unknown_object_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown object"):
        validate_batch("leads", pd.DataFrame())


def test_one_validation_after_warm_up_is_quick() -> None:
    df = deals_frame()
    validate_batch("deals", df)
    started = time.perf_counter()
    validate_batch("deals", df)
    elapsed = time.perf_counter() - started
    print(f"one GE validation of deals after warm-up: {elapsed:.3f}s")
    assert elapsed < 5


def test_a_load_is_validated_from_arrow_columns_like_a_plain_frame() -> None:
    """validate_load hands GE Arrow-backed columns; every verdict, count and example shown (nulls as null)
    must be what the plain `.df()` frame gives, for rows the loader would never let through."""
    from actionlayer.quality import validate_load

    frame = deals_frame()
    broken = frame.copy()
    broken["deal_id"] = ["D0", "D9", "D8"]  # D0 repeats a key
    broken["account_id"] = [None, "A1", "A1"]
    broken["stage"] = ["lead", "bogus", "lead"]
    broken["amount"] = [Decimal("100.00"), Decimal("100.00"), Decimal("-5.00")]
    deal_rows = pd.concat([frame, broken], ignore_index=True)
    with duckdb.connect(":memory:") as con:
        con.execute("create schema raw")
        con.register("deal_rows", deal_rows)
        con.execute("create table raw.deals as select * from deal_rows")
        result = validate_load(con, "deals", None)
        plain = validate_batch("deals", con.execute("select * from raw.deals").df())
    assert result.results == plain.results
    assert not result.success
    failed = {(r["expectation_type"], r["column"]): r for r in result.results if not r["success"]}
    assert failed[("expect_column_values_to_not_be_null", "account_id")]["unexpected_values"] == [None]
    assert failed[("expect_column_values_to_be_unique", "deal_id")]["unexpected_count"] == 2
    assert failed[("expect_column_values_to_be_in_set", "stage")]["unexpected_values"] == ["bogus"]
    assert failed[("expect_column_values_to_be_between", "amount")]["unexpected_values"] == [-5.0]


def test_no_fingerprint_of_the_whole_frame_is_computed() -> None:
    """GE's batch fingerprint (a hash of every cell) was most of a validation's time and is never read."""
    from actionlayer.quality import _batch_definition

    batch = _batch_definition("deals").get_batch(batch_parameters={"dataframe": deals_frame()})
    assert "pandas_data_fingerprint" not in batch.batch_markers


def test_a_validation_started_while_the_validator_imports_in_the_background_waits_for_it() -> None:
    """prepare_in_background imports Great Expectations in a thread; a validation that starts at once (in a
    fresh process, so nothing is imported yet) waits for that import instead of importing it twice or
    seeing a half-made context, and gives the same result as ever."""
    import subprocess
    import sys

    script = """
import threading, sys
import pandas as pd
from actionlayer import quality
assert "great_expectations" not in sys.modules
quality.prepare_in_background()
assert any(t.name == "great-expectations-import" for t in threading.enumerate())
frame = pd.DataFrame({"account_id": ["A1", "A1"], "name": ["x", "y"], "industry": ["saas", "saas"],
                      "tier": ["smb", "smb"], "owner_email": ["o@x.io", "o@x.io"],
                      "created_at": ["2026-01-01 00:00:00"] * 2, "updated_at": ["2026-01-01 00:00:00"] * 2})
result = quality.validate_batch("accounts", frame)
failed = sorted(r["expectation_type"] for r in result.failures)
print(result.success, failed)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False ['expect_column_values_to_be_unique']"
