"""Backtest and tune on a real SoR history: three file loads through the real loader and history (hist.*), a real
ledger, a real live dbt pass (main.action_candidates, main.fct_outcomes), then the replay with real dbt.

The world (rule post_quote_followup, threshold followup_min_days_since_quote = 7, passes at 09:00):
  D5  quote 30 Sep 10:00, contact C34             fires 11, 12, 13 Oct; window closes 25 Oct without an outcome
  D4  quote  1 Oct 10:00, contact C2 (do_not_contact) fires 11-13 Oct, suppressed: do_not_contact
  D7  quote  2 Oct 10:00, contact C7              fires 11-13 Oct, in the rule's holdout group (bucket 0.07)
  D1  quote  5 Oct 08:00, contact C12             crosses 7 days on 12 Oct 08:00: fires 12 and 13 Oct only;
                                                 reaches negotiation on 20 Oct, seen only in the third load
  D6  quote  6 Oct 08:00, contact C5 (A3, open urgent ticket)  fires 13 Oct only, suppressed: open urgent ticket;
                                                 its window (to 27 Oct 09:00) is still open at the last load
Loads: L1 11 Oct 09:00, L2 12 Oct 09:00 (same records), L3 26 Oct 12:00 (D1 in negotiation since 20 Oct).
Real ledger: D1's action delivered on 12 Oct, D5's held out on 11 Oct (the uplift's two arms).
Holdout buckets (macros/holdout_bucket.sql) for this rule: C7 0.07, C12 0.99, C34 0.93, so D7 is held out and D1,
D5 are not, for any holdout_share between 0.08 and 0.9.
"""

from __future__ import annotations

import copy
import json
import os
from datetime import date, datetime, time
from pathlib import Path

import duckdb
import pytest
from sync_support import clean_world, write_csv_folder
from typer.testing import CliRunner

from actionlayer import ledger, transform
from actionlayer.backtest import (
    BacktestError,
    HistoryRange,
    backtest,
    parse_day,
    parse_pass_time,
    parse_values,
    tune,
)
from actionlayer.ledger import LedgerEvent, action_id_for
from connectors.files import ensure_ops_tables, load_folder
from connectors.history import ensure_hist_tables, record_load_history

pytestmark = pytest.mark.slow

RULE = "post_quote_followup"
PARAM = "followup_min_days_since_quote"
L1 = datetime(2026, 10, 11, 9)
L2 = datetime(2026, 10, 12, 9)
L3 = datetime(2026, 10, 26, 12)
FROM, TO = date(2026, 10, 11), date(2026, 10, 13)
OWNER = "owner@example.com"
QUOTES = {
    "D5": ("A2", "C34", "2026-09-30 10:00:00"),
    "D4": ("A1", "C2", "2026-10-01 10:00:00"),
    "D7": ("A2", "C7", "2026-10-02 10:00:00"),
    "D1": ("A1", "C12", "2026-10-05 08:00:00"),
    "D6": ("A3", "C5", "2026-10-06 08:00:00"),
}


def _world_versions() -> list[tuple[datetime, dict]]:
    world = clean_world()
    world["contacts"] += [
        dict(world["contacts"][3], contact_id="C5", first_name="Eva", email="c5@example.com"),
        dict(world["contacts"][2], contact_id="C7", first_name="Gil", email="c7@example.com"),
        dict(world["contacts"][0], contact_id="C12", first_name="Ida", email="c12@example.com", phone=None),
        dict(world["contacts"][2], contact_id="C34", first_name="Jon", email="c34@example.com"),
    ]
    world["deals"] = [d for d in world["deals"] if d["deal_id"] != "D1"]
    for deal_id, (account, contact, quoted) in QUOTES.items():
        world["deals"].append(
            dict(
                world["deals"][0],
                deal_id=deal_id,
                account_id=account,
                contact_id=contact,
                name=f"Deal {deal_id}",
                stage="quote_sent",
                quote_sent_at=quoted,
                stage_changed_at=quoted,
                closed_at=None,
                updated_at=quoted,
            )
        )
    # every touch before the quotes, so no touch since the quote blocks the follow-up
    for activity in world["activities"]:
        activity["occurred_at"] = "2026-09-29 10:00:00"
    for invoice in world["invoices"]:
        if invoice["paid_at"]:  # paid before the first load (a payment in the future would be quarantined)
            invoice["paid_at"] = "2026-10-08 10:00:00"
    world["tickets"].append(
        dict(world["tickets"][0], ticket_id="K3", account_id="A3", contact_id="C5", priority="urgent")
    )
    later = copy.deepcopy(world)
    d1 = next(d for d in later["deals"] if d["deal_id"] == "D1")
    d1.update(stage="negotiation", stage_changed_at="2026-10-20 10:00:00", updated_at="2026-10-20 10:00:00")
    return [(L1, world), (L2, copy.deepcopy(world)), (L3, later)]


def _action(deal_id: str) -> str:
    return action_id_for(RULE, "deal", deal_id, QUOTES[deal_id][2])


def _seed_ledger(con: duckdb.DuckDBPyConnection) -> None:
    ledger.ensure_schema(con)
    events = []
    for deal_id, at, steps in (
        (
            "D1",
            L2,
            [("proposed", {}), ("approved", {}), ("sending", {"attempt": 1}), ("delivered", {"attempt": 1})],
        ),
        ("D5", L1, [("proposed", {"holdout": True}), ("held_out", {"holdout": True})]),
    ):
        account, contact, quoted = QUOTES[deal_id]
        for event, extra in steps:
            events.append(
                LedgerEvent(
                    action_id=_action(deal_id),
                    event_type=event,
                    occurred_at=at,
                    rule_id=RULE,
                    rule_version=1,
                    maturity_level=3,
                    record_type="deal",
                    record_id=deal_id,
                    contact_id=contact,
                    account_id=account,
                    owner_email=OWNER,
                    signal_at=datetime.fromisoformat(quoted),
                    channel="email",
                    actor="pass",
                    **extra,
                )
            )
    ledger.append(con, events)


def _snapshot(db: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {
            "ledger": con.execute("select * from ops.action_ledger order by seq").fetchall(),
            "candidates": con.execute("select * from main.action_candidates order by action_id").fetchall(),
            "run_context": con.execute("select * from ops.run_context").fetchall(),
            "raw_deals": con.execute("select * from raw.deals order by deal_id").fetchall(),
            "hist_deals": con.execute("select * from hist.deals order by deal_id, _valid_from").fetchall(),
            "fct_outcomes": con.execute("select * from main.fct_outcomes order by action_id").fetchall(),
        }


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    work = tmp_path_factory.mktemp("backtest")
    db = work / "actionlayer.duckdb"
    names = ("ACTIONLAYER_DB", "ACTIONLAYER_DATA", "ACTIONLAYER_CONFIG")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(
        ACTIONLAYER_DB=str(db), ACTIONLAYER_DATA=str(work / "data"), ACTIONLAYER_CONFIG=str(work / "none.yml")
    )
    with duckdb.connect(str(db)) as con:
        ensure_ops_tables(con)
        ensure_hist_tables(con)
        for as_of, world in _world_versions():
            record_load_history(
                con, load_folder(con, write_csv_folder(work / f"sor_{as_of:%m%d}", world), as_of)
            )
        _seed_ledger(con)
    # the live loop's own tables: candidates and outcomes as of the last load
    live = transform.run("run", L3, ["--select", "+action_candidates", "fct_outcomes"])
    assert live.success, live.summary_lines()
    yield {"work": work, "db": db, "before": _snapshot(db)}
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def replay(history):
    return backtest(RULE, FROM, TO, pass_time=time(9, 0))


def test_the_rule_fires_on_the_expected_days_only(replay):
    fired = {day.day: day for day in replay.days}
    assert [day.day for day in replay.days] == [FROM, date(2026, 10, 12), TO]
    assert [(d.fired, d.new) for d in replay.days] == [(3, 3), (4, 1), (5, 1)]
    actions = {a.record_id: a for a in replay.actions}
    assert set(actions) == set(QUOTES)
    assert actions["D1"].first_fired_at == datetime(2026, 10, 12, 9) and actions["D1"].fire_days == 2
    assert actions["D6"].first_fired_at == datetime(2026, 10, 13, 9) and actions["D6"].fire_days == 1
    assert actions["D5"].action_id == _action("D5") and actions["D5"].fire_days == 3
    assert fired[FROM].held_out == 1 and replay.candidate_days == 12 and replay.fires == 5


def test_collisions_with_the_journey_context_are_reported_per_reason(replay):
    actions = {a.record_id: a for a in replay.actions}
    assert actions["D4"].collision_kind == "do_not_contact"
    assert actions["D6"].collision_kind == "open_ticket" and "K3" in actions["D6"].journey_reason
    assert actions["D7"].journey_status == "held_out"
    assert {actions[d].journey_status for d in ("D1", "D5")} == {"eligible"}
    assert replay.collisions() == {"do_not_contact": 1, "open_ticket": 1}
    assert replay.journey_counts() == {"eligible": 2, "held_out": 1, "suppressed": 2}


def test_outcomes_come_from_a_later_history_version_and_open_windows_are_not_failures(replay):
    actions = {a.record_id: a for a in replay.actions}
    assert replay.outcomes_evaluated_at == L3
    # the negotiation exists only in the third load, after the fire
    assert actions["D1"].outcome_status == "achieved" and actions["D1"].outcome_window_closed
    assert actions["D1"].outcome_at == datetime(2026, 10, 20, 10)
    assert actions["D5"].outcome_status == "not_achieved" and actions["D5"].outcome_window_closed
    # D6 first fired on 13 Oct: its 14-day window runs past the last load, so it is open, not a failure
    assert actions["D6"].outcome_status == "open" and not actions["D6"].outcome_window_closed
    assert actions["D6"].outcome_window_ends_at == datetime(2026, 10, 27, 9)
    counts = replay.outcome_counts()
    assert (counts["closed"], counts["closed_achieved"], counts["open"]) == (4, 1, 1)
    assert replay.outcome_rate == pytest.approx(1 / 4)


@pytest.fixture(scope="module")
def tuned(history):
    return tune(RULE, PARAM, [7, 10, 14], FROM, TO, pass_time=time(9, 0))


def test_tune_sweeps_the_threshold_and_builds_the_mart(history, tuned):
    rows = {row["value"]: row for row in tuned.mart_rows}
    assert set(rows) == {7.0, 10.0, 14.0}
    assert [rows[v]["fires"] for v in (7.0, 10.0, 14.0)] == [5, 3, 0]
    assert [rows[v]["is_current_value"] for v in (7.0, 10.0, 14.0)] == [True, False, False]
    seven = rows[7.0]
    assert (seven["collisions"], seven["collisions_do_not_contact"], seven["collisions_open_ticket"]) == (
        2,
        1,
        1,
    )
    assert (
        seven["held_out"],
        seven["outcomes_closed"],
        seven["outcomes_achieved"],
        seven["outcomes_open"],
    ) == (
        1,
        4,
        1,
        1,
    )
    assert seven["outcome_rate"] == pytest.approx(0.25)
    assert seven["fires_per_day"] == pytest.approx(5 / 3) and seven["replayed_days"] == 3
    # uplift on the would-be actions the real ledger holds: D1 delivered and achieved, D5 held out and not
    assert (seven["in_ledger"], seven["acted_closed"], seven["acted_achieved"]) == (2, 1, 1)
    assert (seven["held_out_closed"], seven["held_out_achieved"]) == (1, 0)
    assert seven["uplift"] == pytest.approx(1.0) and seven["uplift_verdict"] == "insufficient_data"
    assert seven["uplift_ci_lower"] < seven["uplift"] <= seven["uplift_ci_upper"]
    assert rows[10.0]["uplift"] is None and rows[14.0]["outcome_rate"] is None
    # the raw results and the mart, readable from the database
    with duckdb.connect(str(history["db"]), read_only=True) as con:
        assert con.execute("select count(*) from ops.rule_tuning_runs").fetchall() == [(3,)]
        assert con.execute("select count(*) from ops.rule_tuning_results").fetchall() == [(8,)]
        mart = con.execute(
            "select value, fires from main.mart_rule_tuning where rule_id = ? and param = ? order by value",
            [RULE, PARAM],
        ).fetchall()
        assert mart == [(7.0, 5), (10.0, 3), (14.0, 0)]
        scratch = con.execute(
            "select count(*) from information_schema.schemata where schema_name in ('backtest', 'backtest_sor')"
        ).fetchall()
        assert scratch == [(0,)]


def test_backtest_and_tune_leave_the_ledger_and_the_live_tables_untouched(history, replay, tuned):
    assert _snapshot(history["db"]) == history["before"]


def test_cli_backtest_json(history, tuned):
    from actionlayer.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "backtest",
            "--rule",
            RULE,
            "--from",
            "2026-10-12",
            "--to",
            "2026-10-13",
            "--var",
            f"{PARAM}=10",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["fires"] == 3 and report["variables"] == {PARAM: 10}
    assert [day["day"] for day in report["days"]] == ["2026-10-12", "2026-10-13"]
    assert _snapshot(history["db"]) == history["before"]


def test_cli_tune_prints_the_table_and_the_mart_keeps_the_latest_run(history, tuned):
    from actionlayer.cli import app

    result = CliRunner().invoke(
        app,
        [
            "tune",
            "--rule",
            RULE,
            "--param",
            PARAM,
            "--values",
            "7,14",
            "--from",
            "2026-10-11",
            "--to",
            "2026-10-13",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "7 ◀ current" in result.stdout and "insufficient_data" in result.stdout
    with duckdb.connect(str(history["db"]), read_only=True) as con:
        latest = con.execute(
            "select value, fires, run_id from main.mart_rule_tuning order by value"
        ).fetchall()
        runs = con.execute("select count(distinct run_id) from ops.rule_tuning_runs").fetchall()
    assert [(value, fires) for value, fires, _ in latest] == [(7.0, 5), (14.0, 0)]
    assert latest[0][2] != tuned.run_id and runs == [(2,)]
    assert _snapshot(history["db"]) == history["before"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backtest", "--rule", "no_such_rule"], "unknown rule 'no_such_rule'"),
        (["backtest", "--rule", RULE, "--from", "2026-13-01"], "--from '2026-13-01' is not a date"),
        (["backtest", "--rule", RULE, "--from", "2026-10-13", "--to", "2026-10-11"], "is after --to"),
        (["backtest", "--rule", RULE, "--at", "9 am"], "not a time of day"),
        (["backtest", "--rule", RULE, "--from", "2025-01-01", "--to", "2025-01-05"], "the history covers"),
        (["tune", "--rule", RULE, "--param", PARAM, "--values", "7,abc"], "value 'abc' is not a number"),
        (["tune", "--rule", RULE, "--param", "no_such_var", "--values", "7"], "unknown var 'no_such_var'"),
        (
            ["tune", "--rule", RULE, "--param", "overdue_invoice_min_days", "--values", "7"],
            "does not read var",
        ),
        (["backtest", "--rule", RULE, "--var", "dormant_min_days=3"], "does not read var 'dormant_min_days'"),
    ],
)
def test_cli_errors_are_clear(history, args, message):
    from actionlayer.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_error_messages_name_the_problem(history, tmp_path, monkeypatch):
    with pytest.raises(BacktestError, match=r"no SoR history between 2025-01-01 and 2025-01-05 at 09:00 UTC"):
        backtest(RULE, date(2025, 1, 1), date(2025, 1, 5))
    with pytest.raises(BacktestError, match="2026-10-11 09:00 to 2026-10-26 12:00"):
        backtest(RULE, date(2025, 1, 1), date(2025, 1, 5))
    with pytest.raises(BacktestError, match=r"--from 2026-10-13 is after --to 2026-10-11"):
        backtest(RULE, TO, FROM)
    with pytest.raises(BacktestError, match="unknown rule 'nope'.*post_quote_followup"):
        tune("nope", PARAM, [7])
    with pytest.raises(BacktestError, match="not a number"):
        parse_values(["x"])
    assert parse_values(["3..9:3", "14", "7"]) == [3, 6, 9, 14, 7]
    with pytest.raises(BacktestError, match="YYYY-MM-DD"):
        parse_day("11/10/2026", "--from")
    with pytest.raises(BacktestError, match="HH:MM"):
        parse_pass_time("25:00")
    partial = HistoryRange(first=L1, last=L3, rows={"deals": 3, "tickets": 0})
    assert "empty: hist.tickets" in partial.describe()
    # a database without any history names every empty hist table
    monkeypatch.setenv("ACTIONLAYER_DB", str(tmp_path / "empty.duckdb"))
    with pytest.raises(
        BacktestError, match=r"every hist\.\* table is empty \(hist\.accounts, .*hist\.contracts\)"
    ):
        backtest(RULE, FROM, TO)
