"""The proposal pass works on whole candidate sets: the number of SQL statements it issues does not grow with
the number of candidates, and an unchanged candidate build costs one anti-join that returns nothing."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pytest
from proposal_support import AS_OF, candidate, rule_meta, write_candidates
from statement_counting import CountingConnection

from actionlayer import ledger, proposals
from actionlayer.proposals import _plan, _slow_work, _work, propose
from actionlayer.rules import rule_from_meta
from actionlayer.settings import EscalationRoutes

ROUTES = EscalationRoutes(managers={}, alerts_to="ops@example.com")
GUARDRAILS = {"daily_cap": 100_000, "blast_radius": {"factor": 3, "floor": 100_000}}
RULES = {
    "review": rule_from_meta("rule_review", rule_meta("review", 3)),
    "auto": rule_from_meta("rule_auto", rule_meta("auto", 4, guardrails=GUARDRAILS)),
    "care": rule_from_meta(
        "rule_care",
        rule_meta(
            "care", 4, guardrails=GUARDRAILS, escalate_when={"keywords": ["refund"], "fields": ["deal_name"]}
        ),
    ),
}
STATUSES = [("eligible", None), ("held_out", "holdout"), ("suppressed", "frequency_cap: 3 in 7 days")]


def _build(
    con: duckdb.DuckDBPyConnection, count: int, suppression: str = "frequency_cap: 3 in 7 days"
) -> None:
    rows = []
    for n in range(count):
        rule_id = ("review", "auto", "care")[n % 3]
        status, reason = STATUSES[(n // 3) % len(STATUSES)]
        if status == "suppressed":
            reason = suppression
        deal = "wants a refund" if n % 10 == 2 else f"Deal {n}"
        rows.append(
            candidate(
                f"{rule_id}-{n:05d}",
                rule_id,
                status,
                reason,
                level=RULES[rule_id].maturity_level,
                priority=n % 7,
                reason=f'{{"deal_name": "{deal}"}}',
            )
        )
    write_candidates(con, rows)


def _passes(tmp_path, count: int) -> tuple[CountingConnection, list[int]]:
    raw = duckdb.connect(str(tmp_path / f"scale-{count}.duckdb"))
    ledger.ensure_schema(raw)
    _build(raw, count)
    con = CountingConnection(raw)
    counts, appended = [], []
    for as_of in (AS_OF, AS_OF, AS_OF.replace(hour=10)):
        before = con.statements
        appended.append(propose(con, as_of, RULES, ROUTES).new_events)
        counts.append(con.statements - before)
    # the same suppressions in other words (spacing): not news, so nothing is written
    _build(raw, count, suppression="\tfrequency_cap :  4 in 7 days")
    before = con.statements
    appended.append(propose(con, AS_OF.replace(hour=11), RULES, ROUTES).new_events)
    counts.append(con.statements - before)
    raw.close()
    return con, counts + appended


def test_statements_per_pass_do_not_grow_with_the_candidates_and_unchanged_reruns_append_nothing(tmp_path):
    _, small = _passes(tmp_path, 60)
    _, large = _passes(tmp_path, 900)
    small_counts, small_appended = small[:4], small[4:]
    large_counts, large_appended = large[:4], large[4:]
    # first pass, identical re-run, the same build an hour later, the same suppressions reworded
    assert small_counts == large_counts
    assert small_appended[0] > 0 and large_appended[0] > small_appended[0]
    assert small_appended[1:] == large_appended[1:] == [0, 0, 0]


def test_only_candidates_that_escalate_are_routed_one_by_one_in_python(tmp_path, monkeypatch):
    routed: list[str] = []
    real = proposals._proposal
    monkeypatch.setattr(
        proposals, "_proposal", lambda *a, **k: routed.append(a[0]["action_id"]) or real(*a, **k)
    )
    con = duckdb.connect(str(tmp_path / "routed.duckdb"))
    ledger.ensure_schema(con)
    _build(con, 900)
    report = propose(con, AS_OF, RULES, ROUTES)
    # the care rule's "refund" deals escalate (a person is named, an alert raised): those alone go through
    # the per-candidate route; the other 870 candidates are written by one set-based insert
    assert sorted(routed) == [f"care-{n:05d}" for n in range(900) if n % 30 == 2]
    assert report.escalated > 0 and report.new_events > 900
    con.close()


def _work_rows(con: duckdb.DuckDBPyConnection) -> tuple[list[tuple[str, bool]], list]:
    """This pass's work (action id, written set-based?) and the rows the Python route gets."""
    plan = _plan(con, RULES)
    _work(con, plan)
    rows = con.execute("select action_id, _fast from _proposal_work order by _ordinal").fetchall()
    return rows, _slow_work(con, plan)


def test_an_unchanged_build_fetches_no_candidate_rows(tmp_path):
    con = duckdb.connect(str(tmp_path / "rows.duckdb"))
    ledger.ensure_schema(con)
    _build(con, 300)
    propose(con, AS_OF, RULES, ROUTES)
    first = con.execute("select count(*) from ops.action_ledger").fetchall()[0][0]
    assert _work_rows(con) == ([], [])
    # lifting one suppression brings back that candidate alone, for the Python route, with its latest event
    con.execute(
        "update main.action_candidates set journey_status = 'eligible', journey_reason = null "
        "where action_id = 'review-00006'"
    )
    rows, slow = _work_rows(con)
    assert rows == [("review-00006", False)]
    [(_, candidate_row, state)] = slow
    assert candidate_row["action_id"] == "review-00006" and "_state__seq" not in candidate_row
    assert "_fast" not in candidate_row and state["event_type"] == "suppressed"
    assert propose(con, AS_OF.replace(hour=10), RULES, ROUTES).new_events == 1
    assert con.execute("select count(*) from ops.action_ledger").fetchall()[0][0] == first + 1
    con.close()


@pytest.mark.parametrize("status", ["held_out", "suppressed"])
def test_a_known_candidate_that_stays_withheld_is_not_fetched(tmp_path, status):
    con = duckdb.connect(str(tmp_path / "withheld.duckdb"))
    ledger.ensure_schema(con)
    write_candidates(con, [candidate("x1", "review", status, "cooldown: 2 days ago")])
    propose(con, AS_OF, RULES, ROUTES)
    assert _work_rows(con) == ([], [])
    con.close()


def test_review_expiry_reads_the_stored_deadline_and_falls_back_when_it_is_unreadable(tmp_path):
    con = duckdb.connect(str(tmp_path / "expiry.duckdb"))
    ledger.ensure_schema(con)
    write_candidates(con, [candidate(f"r{n}", "review") for n in range(4)])
    propose(con, AS_OF, RULES, ROUTES)  # four review requests, due AS_OF + 3 days (the rule's expiry)
    states = {s["action_id"]: s for s in ledger.states(con)}
    # r1's request was re-issued with a later deadline; r2's deadline cannot be read (the rule's expiry applies)
    later = ledger.next_event(
        states["r1"],
        "pending_review",
        AS_OF + timedelta(days=1),
        "test",
        details={"review_expires_at": "2026-09-20 09:00:00"},
    )
    unreadable = ledger.next_event(
        states["r2"],
        "pending_review",
        AS_OF + timedelta(days=1, hours=1),
        "test",
        details={"review_expires_at": "soon"},
    )
    # r3's deadline reads as 2026-09-20 in SQL but not in Python, which falls back to the rule's expiry
    foreign = ledger.next_event(
        states["r3"],
        "pending_review",
        AS_OF + timedelta(days=1, hours=1),
        "test",
        details={"review_expires_at": "2026-09-20 09:00:00 UTC"},
    )
    ledger.append(con, [later, unreadable, foreign])
    assert propose(con, AS_OF + timedelta(days=3, minutes=59), RULES, ROUTES).expired == 1  # r0 only
    assert (
        propose(con, AS_OF + timedelta(days=4, hours=1), RULES, ROUTES).expired == 2
    )  # r2 and r3: 3 days after
    assert propose(con, datetime(2026, 9, 20, 8, 59), RULES, ROUTES).expired == 0
    assert propose(con, datetime(2026, 9, 20, 9), RULES, ROUTES).expired == 1
    assert {s["action_id"] for s in ledger.states(con, ["expired"])} == {"r0", "r1", "r2", "r3"}
    con.close()
