"""fct_outcomes on the SoR history: the rule's outcome is evaluated for every candidate (acted, held out, never
acted) from every version the SoR has shown (hist.*), so evidence a later load overwrote still counts, an
outcome recorded late counts once it arrives, and an open window is `open`, never a failure.

Real file loads (connectors.files.load_folder) with history (connectors.history), a real ledger and a real dbt
build of the outcome marts."""

from __future__ import annotations

import copy
import os
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
from sync_support import clean_world, write_csv_folder
from test_dbt_project import run_dbt

from actionlayer import ledger
from actionlayer.ledger import LedgerEvent, action_id_for
from connectors.files import ensure_ops_tables, load_folder
from connectors.history import ensure_hist_tables, record_load_history

# the small world has a few rows per object: one broken row would be a large share of it
QUALITY_GATE_OFF = True

L1 = datetime(2026, 10, 21, 9)  # first load; the actions start here
L2 = datetime(2026, 10, 22, 9)  # D1 reached negotiation; C3 called in
L3 = datetime(2026, 10, 23, 9)  # D1 lost: the current snapshot no longer shows the negotiation
L4 = datetime(2026, 11, 2, 9)  # I1 shows as paid on 25 Oct: recorded a week after its window closed
BEFORE_LATE = datetime(2026, 11, 1, 9)  # a pass before that load arrived
OWNER = "owner@example.com"


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _world_versions() -> list[tuple[datetime, dict]]:
    day1 = clean_world()
    day2 = copy.deepcopy(day1)
    d1 = next(d for d in day2["deals"] if d["deal_id"] == "D1")
    d1.update(stage="negotiation", stage_changed_at="2026-10-22 08:00:00", updated_at="2026-10-22 08:00:00")
    day2["activities"].append(
        {
            "activity_id": "T9",
            "contact_id": "C3",
            "deal_id": None,
            "owner_email": OWNER,
            "kind": "call",
            "occurred_at": "2026-10-22 07:00:00",
            "subject": "Called in",
        }
    )
    day3 = copy.deepcopy(day2)
    d1 = next(d for d in day3["deals"] if d["deal_id"] == "D1")
    d1.update(
        stage="lost",
        stage_changed_at="2026-10-23 08:00:00",
        closed_at="2026-10-23 08:00:00",
        updated_at="2026-10-23 08:00:00",
    )
    day4 = copy.deepcopy(day3)
    i1 = next(i for i in day4["invoices"] if i["invoice_id"] == "I1")
    i1.update(status="paid", paid_at="2026-10-25 10:00:00", updated_at="2026-11-01 18:00:00")
    return [(L1, day1), (L2, day2), (L3, day3), (L4, day4)]


def _identity(rule_id: str, record_type: str, record_id: str, contact_id: str, channel: str) -> dict:
    return {
        "rule_id": rule_id,
        "rule_version": 1,
        "maturity_level": 3,
        "record_type": record_type,
        "record_id": record_id,
        "contact_id": contact_id,
        "account_id": "A1",
        "owner_email": OWNER,
        "signal_at": L1,
        "channel": channel,
        "actor": "pass",
    }


def _trail(name: str, rule_id: str, record: tuple[str, str, str], channel: str, steps: list) -> list:
    record_type, record_id, contact_id = record
    action_id = action_id_for(rule_id, record_type, record_id, name)
    identity = _identity(rule_id, record_type, record_id, contact_id, channel)
    return [
        LedgerEvent(action_id=action_id, event_type=event, occurred_at=at, **identity, **extra)
        for event, at, extra in steps
    ]


def _seed_ledger(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    ledger.ensure_schema(con)
    delivered = [
        ("proposed", L1, {}),
        ("approved", L1, {}),
        ("sending", L1, {"attempt": 1}),
        ("delivered", L1, {"attempt": 1}),
    ]
    events = {
        # acted; D1 advanced on 22 Oct (seen only in the L2 version) and was lost on 23 Oct
        "advanced_then_lost": _trail(
            "advanced_then_lost", "post_quote_followup", ("deal", "D1", "C1"), "email", delivered
        ),
        # held out; I1 was paid on 25 Oct (inside the window) but the SoR said so only on 2 Nov
        "paid_late": _trail(
            "paid_late",
            "overdue_invoice",
            ("invoice", "I1", "C1"),
            "email",
            [("proposed", L1, {"holdout": True}), ("held_out", L1, {"holdout": True})],
        ),
        # acted on 30 Oct, inbound-activity window of 7 days: still open on 2 Nov
        "open_window": _trail(
            "open_window",
            "nps_detractor",
            ("nps_response", "R2", "C1"),
            "email",
            [(event, datetime(2026, 10, 30, 9), extra) for event, _, extra in delivered],
        ),
        # acted on 21 Oct, C4 never got in touch again: the window closed without the outcome
        "missed": _trail("missed", "nps_detractor", ("nps_response", "R1", "C4"), "email", delivered),
        # rejected: never acted on, its window opens at the proposal; C3 called in on 22 Oct
        "rejected": _trail(
            "rejected",
            "nps_detractor",
            ("nps_response", "R7", "C3"),
            "email",
            [("proposed", L1, {}), ("pending_review", L1, {}), ("rejected", L1, {})],
        ),
    }
    for trail in events.values():
        ledger.append(con, trail)
    return {name: trail[0].action_id for name, trail in events.items()}


def _build(work: Path, as_of: datetime) -> None:
    result, _ = run_dbt(
        [
            "build",
            "--select",
            "+fct_outcomes",
            "fct_actions",
            "mart_rule_performance",
            "mart_rule_performance_weekly",
            "--exclude",
            "test_type:unit",
            "--vars",
            f"{{as_of: '{as_of:%Y-%m-%d %H:%M:%S}'}}",
        ],
        work,
    )
    failures = [
        f"{r.node.unique_id}: {r.message}" for r in result.result.results if r.status in ("error", "fail")
    ]
    assert result.success, failures


def _rows(db: Path, sql: str) -> list[dict]:
    with duckdb.connect(str(db)) as con:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    work = tmp_path_factory.mktemp("outcomes")
    db = work / "actionlayer.duckdb"
    saved = os.environ.get("ACTIONLAYER_DB")
    os.environ["ACTIONLAYER_DB"] = str(db)
    versions = _world_versions()
    with duckdb.connect(str(db)) as con:
        ensure_ops_tables(con)
        ensure_hist_tables(con)
        ids = _seed_ledger(con)
        # the first three loads, then a pass before the late payment arrives
        for as_of, world in versions[:3]:
            record_load_history(
                con, load_folder(con, write_csv_folder(work / f"sor_{as_of:%m%d}", world), as_of)
            )
    yield {"work": work, "db": db, "ids": ids, "late_load": versions[3]}
    if saved is None:
        os.environ.pop("ACTIONLAYER_DB", None)
    else:
        os.environ["ACTIONLAYER_DB"] = saved


def _outcomes(db: Path) -> dict[str, dict]:
    return {r["action_id"]: r for r in _rows(db, "select * from main.fct_outcomes")}


def test_outcomes_come_from_the_history_and_late_outcomes_count_when_they_arrive(history):
    db, ids, work = history["db"], history["ids"], history["work"]
    assert _rows(db, "select stage from raw.deals where deal_id = 'D1'") == [{"stage": "lost"}]

    _build(work, BEFORE_LATE)
    before = _outcomes(db)
    assert set(before) == set(ids.values())
    advanced = before[ids["advanced_then_lost"]]
    # the negotiation exists only in an earlier version: the current snapshot says lost
    assert (advanced["arm_group"], advanced["outcome_status"]) == ("acted", "achieved")
    assert advanced["outcome_at"] == _ts("2026-10-22 08:00:00")
    assert advanced["hours_to_outcome"] == pytest.approx(23.0)
    late = before[ids["paid_late"]]
    assert (late["arm_group"], late["outcome_status"], late["outcome_achieved"]) == (
        "held_out",
        "not_achieved",
        False,
    )
    still_open = before[ids["open_window"]]
    assert (still_open["outcome_status"], still_open["outcome_achieved"]) == ("open", None)
    assert still_open["outcome_window_closed"] is False
    assert before[ids["missed"]]["outcome_status"] == "not_achieved"
    rejected = before[ids["rejected"]]
    assert (rejected["arm_group"], rejected["outcome_status"]) == ("not_acted", "achieved")
    assert rejected["outcome_window_starts_at"] == L1 and rejected["outcome_at"] == _ts("2026-10-22 07:00:00")

    # the open window is counted apart in the performance mart, not as a failure
    perf = {r["rule_id"]: r for r in _rows(db, "select * from main.mart_rule_performance")}
    nps = perf["nps_detractor"]
    assert (nps["acted_closed"], nps["acted_converted"], nps["acted_open"]) == (1, 0, 1)
    weekly = _rows(db, "select * from main.mart_rule_performance_weekly where rule_id = 'nps_detractor'")
    assert {(r["week_start"].isoformat(), r["candidates"]) for r in weekly} == {
        ("2026-10-19", 2),
        ("2026-10-26", 1),
    }

    # the late load arrives: the payment on 25 Oct is inside the closed window and now counts
    as_of, world = history["late_load"]
    with duckdb.connect(str(db)) as con:
        record_load_history(con, load_folder(con, write_csv_folder(work / "sor_late", world), as_of))
    _build(work, L4)
    after = _outcomes(db)
    late = after[ids["paid_late"]]
    assert (late["outcome_status"], late["outcome_achieved"]) == ("achieved", True)
    assert late["outcome_at"] == _ts("2026-10-25 10:00:00")
    assert after[ids["open_window"]]["outcome_status"] == "open"
    perf = {r["rule_id"]: r for r in _rows(db, "select * from main.mart_rule_performance")}
    assert (perf["overdue_invoice"]["held_out_closed"], perf["overdue_invoice"]["held_out_converted"]) == (
        1,
        1,
    )
    facts = {r["action_id"]: r for r in _rows(db, "select * from main.fct_actions")}
    assert facts[ids["paid_late"]]["outcome_achieved"] is True
    assert facts[ids["rejected"]]["outcome_achieved"] is None  # fct_actions keeps outcomes to the two arms


def test_a_pass_as_of_an_earlier_moment_ignores_versions_loaded_after_it(history):
    db, ids, work = history["db"], history["ids"], history["work"]
    # as of L1 + 12 h only the first load is known: D1 had not advanced yet, its window is open
    _build(work, datetime(2026, 10, 21, 21))
    early = _outcomes(db)
    assert early[ids["advanced_then_lost"]]["outcome_status"] == "open"
    assert early[ids["rejected"]]["outcome_status"] == "open"
