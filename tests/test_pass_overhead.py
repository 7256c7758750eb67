"""The fixed cost of a pass: dbt parses once per process, and the Dagster run history's SQLite writes keep
their WAL for the run instead of checkpointing it on every event; a pass's dbt build rewrites no JSON
artifacts and logs no debug lines to its file."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import dagster as dg

from actionlayer import transform
from actionlayer.config import dbt_project_dir
from orchestration.runner import quick_run_history


def test_the_parsed_project_is_reused_until_a_source_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTIONLAYER_DB", str(tmp_path / "parse.duckdb"))
    first = transform.parsed_manifest()
    assert transform.parsed_manifest() is first
    assert "model.actionlayer.action_candidates" in first.nodes

    macro = dbt_project_dir() / "macros" / "as_of.sql"
    before = macro.stat()
    try:
        # a later modification time than any file the parse saw: the project is parsed again
        newest_ns = int(transform._newest_source_change() * 1_000_000_000)
        os.utime(macro, ns=(before.st_atime_ns, max(before.st_mtime_ns, newest_ns) + 5_000_000_000))
        second = transform.parsed_manifest()
        assert second is not first
        assert transform.parsed_manifest() is second
    finally:
        os.utime(macro, ns=(before.st_atime_ns, before.st_mtime_ns))

    # another database is another parse (a node's database is the DuckDB file's name)
    monkeypatch.setenv("ACTIONLAYER_DB", str(tmp_path / "other.duckdb"))
    other = transform.parsed_manifest()
    assert other is not second
    assert other.nodes["model.actionlayer.action_candidates"].database == "other"


def _wal(home: Path) -> Path:
    return home / "history" / "runs" / "index.db-wal"


def test_run_history_keeps_its_wal_during_a_run_and_every_event_is_stored(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    keys = [dg.AssetKey(["raw", f"object_{i}"]) for i in range(20)]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=keys[0]))
        # without the keeper, closing the last connection checkpoints and removes the WAL after each event
        assert not _wal(home).exists()

    with quick_run_history(home), dg.DagsterInstance.from_config(str(home)) as instance:
        for key in keys:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key))
            assert _wal(home).exists(), "the WAL was checkpointed away after an event"
        from sqlalchemy import create_engine

        engine = create_engine(f"sqlite:///{home / 'history' / 'runs' / 'index.db'}")
        with engine.connect() as connection:
            synchronous = connection.exec_driver_sql("pragma synchronous").scalar()
        engine.dispose()
        assert synchronous == 1  # NORMAL

    # after the run the keepers are closed: the WAL is checkpointed into the file and removed
    assert not _wal(home).exists()
    with sqlite3.connect(home / "history" / "runs" / "index.db") as plain:
        assert plain.execute("pragma synchronous").fetchone()[0] == 2  # FULL again outside a run
    with dg.DagsterInstance.from_config(str(home)) as instance:
        stored = {key for key in keys if instance.get_latest_materialization_event(key) is not None}
    assert stored == set(keys)


def test_a_pass_build_keeps_the_parsed_manifest_and_logs_no_debug_lines(tmp_path, monkeypatch):
    from datetime import datetime

    import duckdb

    from actionlayer.demo.world import generate_world, load_demo_config, write_sor
    from connectors.files import load_folder

    day = datetime(2026, 9, 1, 9)
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("ACTIONLAYER_DATA", str(data))
    monkeypatch.setenv("ACTIONLAYER_DB", str(data / "actionlayer.duckdb"))
    monkeypatch.setenv("ACTIONLAYER_CONFIG", str(tmp_path / "none.yml"))
    logs = tmp_path / "dbt_logs"
    monkeypatch.setenv("DBT_LOG_PATH", str(logs))
    monkeypatch.delenv("DBT_LOG_LEVEL_FILE", raising=False)
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target"))
    sor = tmp_path / "sor"
    write_sor(generate_world(load_demo_config(size="small")), sor, day)
    with duckdb.connect(str(data / "actionlayer.duckdb")) as con:
        load_folder(con, sor, day)

    transform.parsed_manifest()
    manifest = transform.manifest_path()
    run_results = manifest.with_name("run_results.json")
    before = [p.stat().st_mtime_ns if p.exists() else None for p in (manifest, run_results)]
    outcome = transform.run("build", day, ["--select", "+action_candidates"])
    assert outcome.failed() == []
    assert {r.resource_type for r in outcome.results} >= {"model", "test"}
    # the build reuses the parse: it rewrites neither manifest.json nor (for nobody) run_results.json
    assert [p.stat().st_mtime_ns if p.exists() else None for p in (manifest, run_results)] == before
    assert "[debug]" not in (logs / "dbt.log").read_text(encoding="utf-8")

    # asked for, the debug lines come back
    monkeypatch.setenv("DBT_LOG_LEVEL_FILE", "debug")
    assert transform.run("build", day, ["--select", "stg_accounts"]).failed() == []
    assert "[debug]" in (logs / "dbt.log").read_text(encoding="utf-8")
