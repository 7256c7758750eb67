"""A configured connector source in Dagster: the loop runs on Zoho data (the vendor stand-in on
127.0.0.1), and a deal changed in Zoho becomes a candidate within one sensor evaluation plus one run."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pytest

from actionlayer.contract import OBJECT_NAMES
from actionlayer.demo.world import generate_world, load_demo_config, write_sor
from actionlayer.settings import SourceSettings
from orchestration.resources import run_config_for
from tests.vendors.zoho_server import make_harness

pytestmark = pytest.mark.slow


def _canonical_records(folder) -> dict[str, list[dict]]:
    records = {}
    for name in OBJECT_NAMES:
        with (folder / f"{name}.csv").open(newline="", encoding="utf-8") as handle:
            records[name] = [
                {k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(handle)
            ]
    return records


def test_zoho_source_feeds_the_loop_and_its_sensor_scopes_a_run_to_what_changed(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("ACTIONLAYER_DATA", str(data))
    monkeypatch.setenv("ACTIONLAYER_DB", str(data / "actionlayer.duckdb"))
    monkeypatch.setenv("ACTIONLAYER_CONFIG", str(tmp_path / "none.yml"))
    # the stand-in stamps modified times with its own clock, so the pass acts just after now
    as_of = datetime.now(UTC).replace(tzinfo=None, microsecond=0) + timedelta(minutes=5)

    world = generate_world(load_demo_config(size="small"))
    write_sor(world, tmp_path / "sor", as_of - timedelta(days=60))
    records = _canonical_records(tmp_path / "sor")
    harness = make_harness(tmp_path / "zoho")
    try:
        harness.seed(records)
        for name, value in harness.environ.items():
            monkeypatch.setenv(name, value)
        source = SourceSettings(name="crm", type="zoho", objects=tuple(OBJECT_NAMES), config=harness.config)

        from orchestration.definitions import build_definitions

        defs = build_definitions([source])
        assert "crm_changes_sensor" in {s.name for s in defs.sensors}
        assert "sor_folder_sensor" not in {s.name for s in defs.sensors}
        job = defs.resolve_job_def("actionlayer_loop")
        with dg.instance_for_test() as instance:
            first = job.execute_in_process(run_config=run_config_for(as_of=as_of), instance=instance)
            assert first.success
            db = data / "actionlayer.duckdb"
            with duckdb.connect(str(db), read_only=True) as con:
                deals = con.execute("select count(*) from raw.deals").fetchall()[0][0]
                assert deals == len(records["deals"])
                labels = {r for (r,) in con.execute("select distinct _source_file from raw.deals").fetchall()}
                assert labels == {"crm:deals"}
                assert con.execute("select count(*) from main.action_candidates").fetchall()[0][0] > 0

            sensor = next(s for s in defs.sensors if s.name == "crm_changes_sensor")
            quiet = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
            assert not quiet.run_requests, quiet.skip_message

            # a deal moves to quote_sent in Zoho, quote sent 8 days ago, nobody touched it since
            # (the seeded SoR is 60 days old, so the deal's contact has had no touch since the quote)
            deal = dict(next(d for d in records["deals"] if d["stage"] != "quote_sent"))
            quote_at = (as_of - timedelta(days=8)).strftime("%Y-%m-%d %H:%M:%S")
            deal.update(stage="quote_sent", quote_sent_at=quote_at, stage_changed_at=quote_at, closed_at=None)
            harness.upsert("deals", deal)
            tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
            assert len(tick.run_requests) == 1
            request = tick.run_requests[0]
            assert request.tags["actionlayer/objects"] == "deals"
            selected = {key.to_user_string() for key in request.asset_selection}
            assert "raw/deals" in selected and "action_candidates" in selected
            assert "raw/contacts" not in selected, "the run is scoped to the objects that changed"

            second = job.execute_in_process(
                run_config=run_config_for(as_of=as_of + timedelta(minutes=1)),
                instance=instance,
                asset_selection=list(request.asset_selection),
            )
            assert second.success
            with duckdb.connect(str(db), read_only=True) as con:
                fired = con.execute(
                    "select count(*) from main.action_candidates where rule_id = 'post_quote_followup' and record_id = ?",
                    [deal["deal_id"]],
                ).fetchall()[0][0]
            assert fired == 1
    finally:
        harness.close()
