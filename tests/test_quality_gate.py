"""The blocking quality gate on a small demo world, with real loads, real dbt builds and a real Dagster run.

An object with more than `quality.max_broken_share` of its rows broken (or a required column gone) is
refused: its last good raw copy stays, the rules that read it build no candidates (the others do), and
the reason shows in the run's checks, in `int_rule_gate` and in `mart_data_quality`. When the source is
fixed the gate opens again on the next load.
"""

from __future__ import annotations

import csv
import shutil
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from actionlayer import transform
from actionlayer.contract import OBJECT_NAMES
from actionlayer.demo.world import generate_world, load_demo_config, write_sor
from actionlayer.reports import quality_gate_lines
from actionlayer.settings import QualityPolicy, SettingsError, load_quality_policy
from connectors.files import GATE_MISSING_COLUMN, GATE_TOO_MANY_BROKEN, load_folder
from connectors.history import record_history

pytestmark = pytest.mark.slow

DAY_ONE = datetime(2026, 9, 1, 9)
DAY_TWO = datetime(2026, 9, 2, 9)
DAY_THREE = datetime(2026, 9, 3, 9)
CANDIDATE_MODELS = ["+action_candidates", "int_rule_gate"]


def _rows(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(db)) as con:
        return con.execute(sql, params or []).fetchall()


def _candidates_per_rule(db: Path) -> dict[str, int]:
    return dict(_rows(db, "select rule_id, count(*) from main.action_candidates group by 1"))


def _rewrite(path: Path, change) -> int:
    """Rewrite a contract CSV in place, passing each row (a dict) through `change(index, row)`."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    changed = [change(index, dict(row)) for index, row in enumerate(rows)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[c for c in columns if c in changed[0]])
        writer.writeheader()
        writer.writerows(changed)
    return len(rows)


def _load(db: Path, sor: Path, as_of: datetime):
    with duckdb.connect(str(db)) as con:
        return load_folder(con, sor, as_of)


@pytest.fixture
def world(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    db = data / "actionlayer.duckdb"
    monkeypatch.setenv("ACTIONLAYER_DATA", str(data))
    monkeypatch.setenv("ACTIONLAYER_DB", str(db))
    monkeypatch.setenv("ACTIONLAYER_CONFIG", str(tmp_path / "none.yml"))
    monkeypatch.setenv("ACTIONLAYER_REVIEW_SECRET", "c0de" * 16)
    sor = tmp_path / "sor"
    write_sor(generate_world(load_demo_config(size="small")), sor, DAY_ONE)
    report = _load(db, sor, DAY_ONE)
    assert not report.refused
    assert transform.run("build", DAY_ONE, ["--select", *CANDIDATE_MODELS]).failed() == []
    return db, sor


def test_too_many_broken_rows_blocks_only_the_rules_reading_that_object_until_fixed(world):
    db, sor = world
    before = _candidates_per_rule(db)
    inputs = _rows(db, "select rule_id, object_name, via from main.int_rule_inputs")
    readers = {rule for rule, obj, _ in inputs if obj == "deals"}
    others = {rule for rule, _, _ in inputs} - readers
    assert "post_quote_followup" in readers and others, inputs
    assert any(before.get(rule) for rule in readers) and any(before.get(rule) for rule in others), before
    good_deals = _rows(db, "select * from raw.deals order by deal_id")

    # 40% of the deals now carry a negative amount (a billing export gone wrong)
    deals_csv = sor / "deals.csv"
    original = deals_csv.read_text(encoding="utf-8")
    total = _rewrite(deals_csv, lambda i, row: {**row, "amount": "-100.00"} if i % 5 < 2 else row)
    broken = sum(1 for i in range(total) if i % 5 < 2)

    report = _load(db, sor, DAY_TWO)
    deals = report.objects["deals"]
    assert deals.status == "refused" and deals.gate == GATE_TOO_MANY_BROKEN
    assert f"{broken} of {total} rows broken" in deals.message and "kept as last loaded" in deals.message
    assert report.objects["contacts"].status == "loaded"
    # the last good copy stays; the quarantine shows what is broken now, and the load log why
    assert _rows(db, "select * from raw.deals order by deal_id") == good_deals
    assert _rows(db, "select count(*) from ops.quarantine where object = 'deals'") == [(broken,)]
    assert _rows(
        db, "select status, gate, source from ops.load_log where object = 'deals' and as_of = ?", [DAY_TWO]
    ) == [("refused", GATE_TOO_MANY_BROKEN, "files")]

    assert (
        transform.run("build", DAY_TWO, ["--select", *CANDIDATE_MODELS, "mart_data_quality"]).failed() == []
    )
    gate = {
        r[0]: r[1:]
        for r in _rows(db, "select rule_id, blocked, blocked_objects, blocked_reason from main.int_rule_gate")
    }
    for rule in readers:
        blocked, objects, reason = gate[rule]
        assert blocked and objects == "deals", gate[rule]
        assert (
            GATE_TOO_MANY_BROKEN in reason
            and "since 2026-09-02 09:00" in reason
            and "negative" not in objects
        )
    assert not any(gate[rule][0] for rule in others)
    after = _candidates_per_rule(db)
    assert not any(after.get(rule) for rule in readers), after
    assert any(after.get(rule) for rule in others), after
    with duckdb.connect(str(db)) as con:
        lines = quality_gate_lines(con)
    assert {line.split()[1] for line in lines} == readers and all("deals" in line for line in lines)

    [quality] = _rows(
        db,
        """select loads, refused_loads, refusal_gates, blocked_at_day_end, rows_read, rows_loaded,
                  rows_quarantined, quarantined_negative_amount, broken_share
           from main.mart_data_quality where source = 'files' and object_name = 'deals' and load_date = ?""",
        [DAY_TWO.date()],
    )
    assert quality[:8] == (1, 1, GATE_TOO_MANY_BROKEN, True, total, 0, broken, broken)
    assert quality[8] > 0.25

    # fixed upstream: the gate opens, the quarantine empties, the rules act again
    deals_csv.write_text(original, encoding="utf-8")
    report = _load(db, sor, DAY_THREE)
    assert report.objects["deals"].status == "loaded"
    assert transform.run("build", DAY_THREE, ["--select", *CANDIDATE_MODELS]).failed() == []
    assert _rows(db, "select count(*) from main.int_rule_gate where blocked") == [(0,)]
    assert _rows(db, "select count(*) from ops.quarantine where object = 'deals'") == [(0,)]
    assert any(_candidates_per_rule(db).get(rule) for rule in readers)


def test_missing_required_column_in_the_journey_context_blocks_every_rule(world):
    db, sor = world
    # contacts feed every rule's journey context (do-not-contact, cooldown, caps)
    _rewrite(sor / "contacts.csv", lambda i, row: {k: v for k, v in row.items() if k != "email"})
    report = _load(db, sor, DAY_TWO)
    assert report.objects["contacts"].gate == GATE_MISSING_COLUMN
    assert "email" in report.objects["contacts"].message
    assert _rows(
        db, "select source, kind from ops.drift_events where object = 'contacts' and column_name = 'email'"
    ) == [("files", "removed")]
    assert transform.run("build", DAY_TWO, ["--select", *CANDIDATE_MODELS]).failed() == []
    gate = _rows(db, "select rule_id, blocked, blocked_reason from main.int_rule_gate")
    assert gate and all(blocked for _, blocked, _ in gate), gate
    assert all("contacts (journey context" in reason or "contacts (rule" in reason for _, _, reason in gate)
    assert _rows(db, "select count(*) from main.action_candidates") == [(0,)]


def test_dagster_run_shows_the_gate_in_its_checks_and_still_builds_the_other_rules(world, tmp_path):
    db, sor = world
    _rewrite(sor / "deals.csv", lambda i, row: {**row, "amount": "-1"} if i % 2 == 0 else row)
    from orchestration.definitions import build_definitions
    from orchestration.resources import run_config_for

    defs = build_definitions([])
    job = defs.resolve_job_def("actionlayer_loop")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config=run_config_for(as_of=DAY_TWO, sor=sor), instance=instance, raise_on_error=False
        )
    assert result.success
    checks = {
        (
            e.asset_check_evaluation_data.asset_key.to_user_string(),
            e.asset_check_evaluation_data.check_name,
        ): (e.asset_check_evaluation_data)
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    refused = checks[("raw/deals", "contract_expectations")]
    assert not refused.passed and refused.metadata["gate"].value == GATE_TOO_MANY_BROKEN
    # a reloaded child of deals is checked on the records the load added or changed, and says how many
    validated = {
        asset: (evaluation.metadata["rows_validated"].value, evaluation.metadata["rows_in_raw"].value)
        for (asset, check), evaluation in checks.items()
        if check == "contract_expectations" and "rows_validated" in evaluation.metadata
    }
    assert validated and all(0 <= rows <= in_raw for rows, in_raw in validated.values()), validated
    assert all(checks[(asset, "contract_expectations")].passed for asset in validated)
    gate = checks[("action_candidates", "quality_gate")]
    assert not gate.passed and "post_quote_followup" in gate.metadata["blocked_rules"].value
    materialized = {
        e.asset_key.to_user_string()
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    }
    assert {"action_candidates", "action_ledger", "mart_data_quality", "ops/load_log"} <= materialized
    # raw/deals is reported, not changed: the run says it kept the last good copy and why
    [deals] = [
        e.event_specific_data.materialization
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key.to_user_string() == "raw/deals"
    ]
    assert deals.metadata["updated"].value is False and deals.metadata["status"].value == "refused"
    assert _rows(db, "select count(*) from main.action_candidates where rule_id = 'post_quote_followup'") == [
        (0,)
    ]


def test_quality_policy_settings_are_validated_naming_the_key(tmp_path):
    settings = tmp_path / "actionlayer.yml"
    settings.write_text(
        "quality:\n  max_broken_share: 0.1\n  objects:\n    invoices: {max_broken_share: 0.02}\n"
    )
    policy = load_quality_policy(settings)
    assert (policy.limit_for("invoices"), policy.limit_for("deals")) == (0.02, 0.1)
    assert QualityPolicy().limit_for("deals") == 0.25
    for text, key in (
        ("quality:\n  max_broken_share: 2\n", "quality.max_broken_share"),
        ("quality:\n  max_broken_share: lots\n", "quality.max_broken_share"),
        ("quality:\n  objects:\n    dealz: {max_broken_share: 0.1}\n", "quality.objects.dealz"),
        ("quality:\n  limit: 0.1\n", "quality.limit"),
    ):
        settings.write_text(text)
        with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
            load_quality_policy(settings)


def _record_history(db: Path, as_of: datetime) -> None:
    with duckdb.connect(str(db)) as con:
        record_history(con, list(OBJECT_NAMES), as_of)


def _candidates(db: Path) -> list[tuple]:
    return _rows(db, "select * from main.action_candidates order by all")


def test_candidates_after_an_unchanged_pass_equal_those_after_a_full_reload(world, tmp_path, monkeypatch):
    db, sor = world
    _record_history(db, DAY_ONE)
    full = tmp_path / "full.duckdb"
    shutil.copyfile(db, full)
    with duckdb.connect(str(full)) as con:  # forget what was loaded: this copy reads and judges everything
        con.execute("update ops.load_log set input_digest = null")

    report = _load(db, sor, DAY_TWO)
    assert {r.status for r in report.objects.values()} == {"unchanged"}
    assert transform.run("build", DAY_TWO, ["--select", *CANDIDATE_MODELS]).failed() == []
    kept = (_candidates(db), _rows(db, "select * from main.int_rule_gate order by all"))

    monkeypatch.setenv("ACTIONLAYER_DB", str(full))
    report = _load(full, sor, DAY_TWO)
    assert {r.status for r in report.objects.values()} == {"loaded"}
    _record_history(full, DAY_TWO)
    assert transform.run("build", DAY_TWO, ["--select", *CANDIDATE_MODELS]).failed() == []
    assert kept[0], "the small world builds candidates"
    assert (_candidates(full), _rows(full, "select * from main.int_rule_gate order by all")) == kept


def test_an_unchanged_pass_keeps_the_gate_closed_for_a_refused_object(world):
    db, sor = world
    _rewrite(sor / "deals.csv", lambda i, row: {**row, "amount": "-1"} if i % 2 == 0 else row)
    assert _load(db, sor, DAY_TWO).objects["deals"].status == "refused"
    _record_history(db, DAY_TWO)
    report = _load(db, sor, DAY_THREE)
    # a refused load is never kept: deals is judged (and refused) again, the rest is unchanged
    assert {n for n, r in report.objects.items() if r.status != "unchanged"} == {"deals", "activities"}
    assert report.objects["deals"].status == "refused"
    report = _load(db, sor, DAY_THREE)
    assert report.objects["deals"].status == "refused"
    assert transform.run("build", DAY_THREE, ["--select", *CANDIDATE_MODELS]).failed() == []
    assert _rows(db, "select object_name from main.int_object_quality_gate where blocked") == [("deals",)]


def test_dagster_reports_unchanged_objects_without_running_expectations(world):
    db, sor = world
    _record_history(db, DAY_ONE)
    from orchestration.definitions import build_definitions
    from orchestration.resources import run_config_for

    job = build_definitions([]).resolve_job_def("actionlayer_loop")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config=run_config_for(as_of=DAY_TWO, sor=sor), instance=instance, raise_on_error=False
        )
    assert result.success
    checks = [
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.asset_check_evaluation_data.asset_key.path[0] == "raw"
    ]
    assert len(checks) == 2 * len(OBJECT_NAMES)
    assert all(c.passed and c.metadata["unchanged"].value is True for c in checks)
    assert not any("expectations" in c.metadata for c in checks)  # no suite ran
    raw = [
        e.event_specific_data.materialization
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key.path[0] == "raw"
    ]
    assert len(raw) == len(OBJECT_NAMES)
    assert all(
        m.metadata["updated"].value is False and m.metadata["status"].value == "unchanged" for m in raw
    )
    assert all("unchanged since 2026-09-01 09:00:00" in m.metadata["message"].value for m in raw)
    materialized = {
        e.asset_key.to_user_string()
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    }
    assert {"action_candidates", "action_ledger", "mart_data_quality"} <= materialized
    assert _rows(db, "select distinct status from ops.load_log where as_of = ?", [DAY_TWO]) == [
        ("unchanged",)
    ]
