"""The ledger is append-only and idempotent; proposals route candidates by maturity level and journey status."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pytest
from proposal_support import AS_OF, candidate, rule_meta, write_candidates

from actionlayer import ledger
from actionlayer.proposals import propose
from actionlayer.rules import RuleConfigError, rule_from_meta

RULES = {
    "followup": rule_from_meta("rule_followup", rule_meta("followup", 3)),
    "auto": rule_from_meta("rule_auto", rule_meta("auto", 4)),
    "viewonly": rule_from_meta("rule_viewonly", rule_meta("viewonly", 1)),
    "badtemplate": rule_from_meta(
        "rule_badtemplate",
        rule_meta("badtemplate", 4, template={"subject": "x", "body": "[[ nonexistent ]]"}),
    ),
}


def _candidate(action_id: str, rule_id: str, status: str = "eligible", reason: str | None = None, **extra):
    return candidate(action_id, rule_id, status, reason, level=RULES[rule_id].maturity_level, **extra)


def _write_candidates(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    write_candidates(con, rows)


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "t.duckdb"))
    ledger.ensure_schema(connection)
    yield connection
    connection.close()


def _snapshot(con):
    return con.execute("select * from ops.action_ledger order by seq").fetchall()


def test_proposals_route_by_level_and_journey_and_rerun_adds_nothing(con):
    _write_candidates(
        con,
        [
            _candidate("a1", "followup"),
            _candidate("a2", "auto"),
            _candidate("a3", "auto", "held_out", "holdout"),
            _candidate("a4", "auto", "suppressed", "do_not_contact"),
            _candidate("a5", "viewonly"),
        ],
    )
    report = propose(con, AS_OF, RULES)
    states = {row["action_id"]: row["event_type"] for row in ledger.states(con)}
    assert states == {
        "a1": "pending_review",
        "a2": "approved",
        "a3": "held_out",
        "a4": "suppressed",
        "a5": "proposed",
    }
    assert report.new_events == 9
    trail = ledger.trail(con, "a1")
    assert trail[0]["message_subject"] == "About Big deal"
    assert trail[0]["message_body"] == "Hi Ada, Big deal is waiting."
    assert trail[0]["actor"] == "rule:followup@v2"
    assert trail[0]["rule_version"] == 2 and trail[0]["reason"].startswith("{")
    assert ledger.trail(con, "a2")[-1]["actor"] == "auto:auto"

    before = _snapshot(con)
    again = propose(con, AS_OF, RULES)
    assert again.new_events == 0
    assert _snapshot(con) == before


def test_suppression_lifts_and_the_flow_continues_without_rewriting_history(con):
    _write_candidates(con, [_candidate("s1", "auto", "suppressed", "suppressed: open urgent ticket T1")])
    propose(con, AS_OF, RULES)
    first = _snapshot(con)
    later = AS_OF + timedelta(days=1)
    _write_candidates(con, [_candidate("s1", "auto")])
    propose(con, later, RULES)
    assert [e["event_type"] for e in ledger.trail(con, "s1")] == ["proposed", "suppressed", "approved"]
    # append-only: every earlier row is still there, unchanged
    assert _snapshot(con)[: len(first)] == first


def test_a_suppression_is_recorded_again_only_when_its_kind_changes(con):
    _write_candidates(con, [_candidate("f1", "auto", "suppressed", "frequency_cap: lost to other_rule")])
    propose(con, AS_OF, RULES)
    # the same pass again, after the winner was delivered: the same suppression in other words adds nothing
    _write_candidates(
        con,
        [
            _candidate(
                "f1", "auto", "suppressed", "frequency_cap: lost to other_rule (delivered 2026-09-10 09:00)"
            )
        ],
    )
    assert propose(con, AS_OF, RULES).new_events == 0
    # a different kind of suppression later is recorded, with its reason
    _write_candidates(con, [_candidate("f1", "auto", "suppressed", "cooldown: acted on 2026-09-09")])
    assert propose(con, AS_OF + timedelta(days=1), RULES).new_events == 1
    trail = ledger.trail(con, "f1")
    assert [e["event_type"] for e in trail] == ["proposed", "suppressed", "suppressed"]
    assert trail[-1]["result"] == "cooldown: acted on 2026-09-09"


def test_undecided_reviews_expire_after_the_rules_window(con):
    _write_candidates(con, [_candidate("r1", "followup")])
    propose(con, AS_OF, RULES)
    _write_candidates(con, [])
    assert propose(con, AS_OF + timedelta(days=2), RULES).expired == 0
    assert propose(con, AS_OF + timedelta(days=3), RULES).expired == 1
    assert ledger.states(con, action_ids=["r1"])[0]["event_type"] == "expired"


def test_a_missing_template_variable_fails_the_action_with_the_reason_not_a_blank_message(con):
    _write_candidates(con, [_candidate("t1", "badtemplate")])
    report = propose(con, AS_OF, RULES)
    state = ledger.states(con, action_ids=["t1"])[0]
    assert state["event_type"] == "failed" and state["retryable"] is False
    assert "nonexistent" in state["result"]
    assert report.template_failures


def test_ledger_events_are_idempotent_by_id_and_reject_unknown_types(con):
    event = ledger.LedgerEvent(
        action_id="x", event_type="proposed", occurred_at=AS_OF, actor="t", rule_id="r"
    )
    assert ledger.append(con, [event, event]) == 1
    assert ledger.append(con, [event]) == 0
    with pytest.raises(ValueError, match="unknown ledger event type"):
        ledger.LedgerEvent(action_id="x", event_type="sent", occurred_at=AS_OF, actor="t", rule_id="r")


def test_action_id_is_md5_of_rule_record_and_signal():
    import hashlib

    assert (
        ledger.action_id_for("r", "deal", "D1", "2026-09-01")
        == hashlib.md5(b"r|deal|D1|2026-09-01").hexdigest()
    )


def test_rule_meta_errors_name_the_model_and_key():
    with pytest.raises(RuleConfigError, match="rule_x: maturity_level 7"):
        rule_from_meta("rule_x", rule_meta("x", 7))
    broken = rule_meta("x", 3)
    del broken["channel"]
    with pytest.raises(RuleConfigError, match="rule_x: config.meta.channel is missing"):
        rule_from_meta("rule_x", broken)


@pytest.mark.parametrize("probe_max", [0, ledger.PROBE_MAX_EVENTS])
def test_a_small_batch_looked_up_first_is_appended_as_the_anti_join_appends_it(
    tmp_path, monkeypatch, probe_max
):
    """Both ways of skipping events already present (a lookup of a small batch's ids, or the anti-join)
    write the same rows with the same numbers, gaps for the skipped ones included."""
    monkeypatch.setattr(ledger, "PROBE_MAX_EVENTS", probe_max)
    con = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    ledger.ensure_schema(con)

    def event(n: int, event_type: str = "proposed") -> ledger.LedgerEvent:
        return ledger.LedgerEvent(
            action_id=f"a{n}",
            event_type=event_type,
            occurred_at=AS_OF,
            actor="t",
            rule_id="r",
            record_id=f"R{n}",
        )

    assert ledger.append(con, [event(1), event(2)]) == 2
    # a2 is already there, a3 twice: a2 is skipped (its number unused), a3 written once
    assert ledger.append(con, [event(3), event(2), event(4), event(3)]) == 2
    assert ledger.append(con, [event(2), event(4)]) == 0
    rows = con.execute("select seq, action_id from ops.action_ledger order by seq").fetchall()
    assert rows == [(1, "a1"), (2, "a2"), (3, "a3"), (5, "a4")]
