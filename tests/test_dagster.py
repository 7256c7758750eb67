"""Dagster: a real `actionlayer dev` (webserver + daemon) lists every asset, check, sensor and schedule
over GraphQL; each sensor is evaluated against real files and a real instance."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from actionlayer.config import PROJECT_ROOT

pytestmark = pytest.mark.slow

OBJECTS = ["accounts", "contacts", "deals", "activities", "invoices", "tickets", "nps_responses", "contracts"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


REPOSITORY_QUERY = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    name
    jobs { name }
    sensors { name sensorState { status } }
    schedules { name scheduleState { status } }
    assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } }
} } } }
"""


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTIONLAYER_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("ACTIONLAYER_DB", str(tmp_path / "data" / "actionlayer.duckdb"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "data" / "dagster_home"))
    monkeypatch.setenv("ACTIONLAYER_SOR", str(tmp_path / "sor"))
    monkeypatch.setenv("ACTIONLAYER_REVIEW_SECRET", "5a17" * 16)
    return tmp_path


def test_dagster_dev_lists_assets_checks_sensors_and_schedule_over_graphql(isolated_data):
    port = _free_port()
    log = (isolated_data / "dev.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("actionlayer")), "dev", "--port", str(port)],
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # dagster dev started in the background ignores SIGINT unless it is reset to the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 120
        data = None
        while time.monotonic() < deadline:
            assert process.poll() is None, (isolated_data / "dev.log").read_text()[-3000:]
            try:
                data = _graphql(port, REPOSITORY_QUERY)
                nodes = data["data"]["repositoriesOrError"]["nodes"]
                if nodes and nodes[0]["assetNodes"]:
                    break
            except (OSError, KeyError, TypeError):
                pass
            time.sleep(1)
        assert data is not None, "the Dagster webserver never answered"
        repo = data["data"]["repositoriesOrError"]["nodes"][0]
        assets = {"/".join(node["assetKey"]["path"]) for node in repo["assetNodes"]}
        for name in OBJECTS:
            assert f"raw/{name}" in assets
        for name in (
            "ops/quarantine",
            "action_candidates",
            "rule_post_quote_followup",
            "action_ledger",
            "review_decisions",
            "review_tables",
            "action_dispatch",
            "fct_actions",
            "mart_rule_performance",
            "mart_action_latency",
        ):
            assert name in assets, name
        checks = {
            ("/".join(node["assetKey"]["path"]), check["name"])
            for node in repo["assetNodes"]
            for check in (node["assetChecksOrError"].get("checks") or [])
        }
        assert ("raw/contacts", "contract_expectations") in checks
        assert ("raw/contacts", "no_broken_rows") in checks
        assert any(asset == "action_candidates" for asset, _ in checks), "dbt tests are asset checks"
        sensors = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
        assert sensors == {
            "sor_folder_sensor": "RUNNING",
            "review_inbox_sensor": "RUNNING",
            "candidates_changed_sensor": "RUNNING",
        }
        assert [s["name"] for s in repo["schedules"]] == ["daily_loop_schedule"]
        assert {j["name"] for j in repo["jobs"]} >= {"actionlayer_loop", "act_on_candidates", "review_import"}
        telemetry = (isolated_data / "data" / "dagster_home" / "dagster.yaml").read_text()
        assert "enabled: false" in telemetry
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()
    assert process.returncode is not None


def _write_contract_file(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.csv").write_text(text)


def test_sor_folder_sensor_runs_on_change_only_and_skips_when_the_database_is_busy(isolated_data):
    from orchestration.sensors import sor_folder_sensor

    sor = isolated_data / "sor"
    instance = dg.DagsterInstance.ephemeral()
    missing = sor_folder_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(missing, dg.SkipReason) and "does not exist" in missing.skip_message

    _write_contract_file(sor, "accounts", "account_id,name\nA1,Acme\n")
    context = dg.build_sensor_context(instance=instance)
    first = sor_folder_sensor(context)
    assert isinstance(first, dg.RunRequest)
    assert first.run_config["resources"]["actionlayer"]["config"]["sor_dir"] == str(sor)
    unchanged = sor_folder_sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor))
    assert isinstance(unchanged, dg.SkipReason) and "unchanged" in unchanged.skip_message

    time.sleep(0.01)
    _write_contract_file(sor, "accounts", "account_id,name\nA1,Acme\nA2,Globex\n")
    changed = sor_folder_sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor))
    assert isinstance(changed, dg.RunRequest) and changed.run_key != first.run_key

    # another process holds the database: the tick is skipped, not crashed, and retried later
    db = Path(os.environ["ACTIONLAYER_DB"])
    db.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = sor_folder_sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor))
        assert isinstance(busy, dg.SkipReason) and "busy" in busy.skip_message
    finally:
        holder.kill()
        holder.wait()
    retried = sor_folder_sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor))
    assert isinstance(retried, dg.RunRequest)

    # a folder version the database already loaded (e.g. by the CLI or the demo) starts no run
    import duckdb

    from connectors.files import folder_fingerprint
    from orchestration.sor_assets import record_folder_load

    with duckdb.connect(str(db)) as con:
        record_folder_load(con, sor, folder_fingerprint(sor), datetime(2026, 9, 1), "cli")
    loaded = sor_folder_sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor))
    assert isinstance(loaded, dg.SkipReason) and "already loaded" in loaded.skip_message


def test_review_inbox_sensor_requests_an_import_for_dropped_files(isolated_data):
    from orchestration.sensors import review_inbox_sensor

    instance = dg.DagsterInstance.ephemeral()
    empty = review_inbox_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(empty, dg.SkipReason)
    inbox = isolated_data / "data" / "review" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "review_bob.csv").write_text("action_id,decision,approver_email\n")
    (inbox / "~$review_bob.xlsx").write_text("lock file of an open workbook")
    context = dg.build_sensor_context(instance=instance)
    request = review_inbox_sensor(context)
    assert isinstance(request, dg.RunRequest)
    assert request.tags["actionlayer/files"] == "review_bob.csv"
    again = review_inbox_sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor))
    assert isinstance(again, dg.SkipReason)


def test_candidates_changed_sensor_acts_on_builds_outside_the_loop(isolated_data):
    from orchestration.sensors import candidates_changed_sensor

    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="action_candidates"))
        context = dg.build_sensor_context(instance=instance)
        result = candidates_changed_sensor.evaluate_tick(context)
        assert len(result.run_requests) == 1
        assert result.run_requests[0].tags["actionlayer/trigger"] == "candidates_changed"
