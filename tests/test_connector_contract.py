"""One contract suite for every System-of-Record connector, run through the real sync.

Each harness (tests/vendors/<name>.py, `make_harness(tmp_path)`) is a vendor stand-in on loopback or a real
PostgreSQL. Seeded with the same small canonical world (clean rows plus broken rows of the contract's
kinds), every source must land in raw.* exactly as the file source lands the same records from CSV, apply
an upsert to exactly that row, propagate a delete, change nothing when nothing changed, and answer the
cheap `changed()` probe truthfully. A harness whose module does not exist yet is skipped.

Optional harness attributes: `deletes_need_full_read` (a delete is seen only by a full read, e.g. an SQL
delete), `cannot_carry` (reason codes whose broken rows the vendor cannot store at all) and
`as_carried(object, record)` (the record as the vendor can hold it, e.g. date-only fields).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sync_support import (
    clean_world,
    dirty_rows,
    quarantine_rows,
    raw_rows,
    rows,
    snapshot,
    write_csv_folder,
)

from actionlayer.contract import OBJECT_NAMES, OBJECTS
from connectors.files import load_folder
from connectors.sync import mirror_table, stored_cursors, sync_source

# small fixtures: one broken row is a large share of an object (see conftest.py)
QUALITY_GATE_OFF = True

HARNESSES = ["zoho", "hubspot", "postgres"]
LEAF_FIRST = (
    "nps_responses",
    "activities",
    "contracts",
    "tickets",
    "invoices",
    "deals",
    "contacts",
    "accounts",
)


def _now() -> datetime:
    # Vendor servers stamp modified times with their own clock, so the pass runs at "now" rather than at
    # a fixed date: a server-stamped updated_at must not look like a future timestamp.
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0) + timedelta(minutes=5)


# every connector passes the same suite against its server (vendor stand-ins; a real PostgreSQL)
HARNESS_MODULES = {
    "zoho": "tests.vendors.zoho_server",
    "hubspot": "tests.vendors.hubspot_server",
    "postgres": "tests.vendors.postgres",
}


@pytest.fixture(params=HARNESSES)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    module = importlib.import_module(HARNESS_MODULES[request.param])
    made = module.make_harness(tmp_path / "harness")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(":memory:")
    yield connection
    connection.close()


def seeded_world(harness: Any, provided: list[str]) -> dict[str, list[dict]]:
    """The clean world plus the dirty rows this source can carry, restricted to what it provides."""
    world = clean_world()
    cannot = set(getattr(harness, "cannot_carry", ()))
    for name, record, code in dirty_rows():
        if code not in cannot:
            world[name].append(record)
    return {name: rows_ for name, rows_ in world.items() if name in provided}


def seed_and_sync(
    harness: Any, con: duckdb.DuckDBPyConnection, as_of: datetime
) -> tuple[Any, dict, list[str]]:
    connector = harness.connector()
    provided = [name for name in OBJECT_NAMES if name in connector.objects()]
    assert provided, f"{harness.name} provides no canonical object"
    world = seeded_world(harness, provided)
    harness.seed(world)
    report = sync_source(con, connector, as_of)
    assert set(report.objects) == set(provided)
    assert all(r.status == "synced" for r in report.objects.values()), report.summary_lines()
    return connector, world, provided


def carried(harness: Any, world: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The world as the vendor can hold it (`as_carried`, e.g. Zoho date fields keep no time of day)."""
    as_carried = getattr(harness, "as_carried", None)
    if as_carried is None:
        return world
    return {name: [as_carried(name, record) for record in records] for name, records in world.items()}


def raw_without_meta(con: duckdb.DuckDBPyConnection, name: str) -> dict[str, tuple]:
    return {row[0]: row for row in raw_rows(con, name, with_row_number=False)}


def test_contract_full_sync_lands_in_raw_like_the_file_source(harness: Any, con, tmp_path: Path) -> None:
    as_of = _now()
    connector, world, provided = seed_and_sync(harness, con, as_of)
    try:
        files = duckdb.connect(":memory:")
        load_folder(
            files, write_csv_folder(tmp_path / "csv", carried(harness, world)), as_of, objects=provided
        )
        for name in provided:
            assert raw_rows(con, name, with_row_number=False) == raw_rows(
                files, name, with_row_number=False
            ), f"{harness.name}: raw.{name} differs from the file source"
        ours = {(q["object"], q["record_key"], q["reason_code"]) for q in quarantine_rows(con)}
        theirs = {(q["object"], q["record_key"], q["reason_code"]) for q in quarantine_rows(files)}
        assert ours == theirs
        expected = {(n, r[OBJECTS[n].key], c) for n, r, c in dirty_rows() if n in world and r in world[n]}
        assert expected <= ours
        assert all(q["source_file"] == f"{connector.name}:{q['object']}" for q in quarantine_rows(con))
    finally:
        connector.close()


def test_contract_upsert_changes_exactly_that_row(harness: Any, con) -> None:
    as_of = _now()
    connector, _, provided = seed_and_sync(harness, con, as_of)
    try:
        assert connector.changed(stored_cursors(con, connector.name)) == []
        name = "accounts" if "accounts" in provided else provided[0]
        obj = OBJECTS[name]
        record = dict(clean_world()[name][1])
        changed_column = "name" if "name" in obj.column_names else obj.column_names[-1]
        record[changed_column] = "Renamed by the contract suite"
        before = {n: raw_without_meta(con, n) for n in provided}
        harness.upsert(name, record)
        probe = connector.changed(stored_cursors(con, connector.name))
        assert probe == [name], f"{harness.name}: changed() said {probe} after an upsert of {name}"

        report = sync_source(con, connector, as_of + timedelta(minutes=1))
        result = report.objects[name]
        assert not result.full and (result.inserted, result.updated) == (0, 1), report.summary_lines()
        key = record[obj.key]
        after = {n: raw_without_meta(con, n) for n in provided}
        for n in provided:
            differing = {k for k in set(before[n]) | set(after[n]) if before[n].get(k) != after[n].get(k)}
            assert differing == ({key} if n == name else set()), f"{harness.name}: {n} changed {differing}"
        position = obj.column_names.index(changed_column)
        assert after[name][key][position] == "Renamed by the contract suite"
        assert all(r.upserted == 0 for n, r in report.objects.items() if n != name)
    finally:
        connector.close()


def test_contract_delete_propagates(harness: Any, con) -> None:
    as_of = _now()
    connector, _, provided = seed_and_sync(harness, con, as_of)
    try:
        name = next(n for n in LEAF_FIRST if n in provided)
        key = clean_world()[name][0][OBJECTS[name].key]
        before = {n: raw_without_meta(con, n) for n in provided}
        harness.delete(name, key)
        full = bool(getattr(harness, "deletes_need_full_read", False))
        if not full:
            assert name in connector.changed(stored_cursors(con, connector.name))

        report = sync_source(con, connector, as_of + timedelta(minutes=1), full=full)
        assert report.objects[name].deleted == 1, report.summary_lines()
        after = raw_without_meta(con, name)
        assert key not in after and set(after) == set(before[name]) - {key}
        assert rows(
            con, f"select _deleted from {mirror_table(connector.name, name)} where _key = ?", [key]
        ) == [(True,)]
        for other in provided:
            if other != name:
                assert raw_without_meta(con, other) == before[other], f"{harness.name}: {other} changed"
    finally:
        connector.close()


def test_contract_rerun_unchanged_changes_nothing(harness: Any, con) -> None:
    as_of = _now()
    connector, _, provided = seed_and_sync(harness, con, as_of)
    try:
        before = snapshot(con)
        raw_before = {n: raw_without_meta(con, n) for n in provided}
        quarantine_before = quarantine_rows(con)
        assert connector.changed(stored_cursors(con, connector.name)) == []

        report = sync_source(con, connector, as_of)
        assert snapshot(con) == before and quarantine_rows(con) == quarantine_before
        assert all(r.upserted == 0 and r.deleted == 0 for r in report.objects.values()), (
            report.summary_lines()
        )

        later = sync_source(con, connector, as_of + timedelta(minutes=1), full=True)
        assert snapshot(con, ("src", "hist")) == {t: v for t, v in before.items() if not t.startswith("raw.")}
        assert all(r.upserted == 0 and r.deleted == 0 for r in later.objects.values()), later.summary_lines()
        # A later pass reloads raw (new _loaded_at) with the very same rows.
        assert {n: raw_without_meta(con, n) for n in provided} == raw_before
    finally:
        connector.close()
