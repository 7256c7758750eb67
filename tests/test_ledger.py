"""The ledger is append-only and idempotent; proposals route candidates by maturity level and journey status."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pytest

from actionlayer import ledger
from actionlayer.proposals import propose
from actionlayer.rules import RuleConfigError, rule_from_meta

AS_OF = datetime(2026, 9, 10, 9)


def _meta(rule_id: str, level: int, **overrides):
    meta = {
        "rule_id": rule_id,
        "version": 2,
        "maturity_level": level,
        "channel": "email",
        "audience": "contact",
        "category": "sales",
        "priority": 50,
        "cooldown_days": 14,
        "holdout_share": 0.1,
        "review_expiry_days": 3,
        "recommended_action": "Send a follow-up",
        "template": {
            "subject": "About [[ deal_name ]]",
            "body": "Hi [[ first_name ]], [[ deal_name ]] is waiting.",
        },
        "outcome": {"kind": "deal_advanced", "window_days": 14},
    }
    meta.update(overrides)
    return meta


RULES = {
    "followup": rule_from_meta("rule_followup", _meta("followup", 3)),
    "auto": rule_from_meta("rule_auto", _meta("auto", 4)),
    "viewonly": rule_from_meta("rule_viewonly", _meta("viewonly", 1)),
    "badtemplate": rule_from_meta(
        "rule_badtemplate", _meta("badtemplate", 4, template={"subject": "x", "body": "[[ nonexistent ]]"})
    ),
}


def _candidate(action_id: str, rule_id: str, status: str = "eligible", reason: str | None = None, **extra):
    row = {
        "action_id": action_id,
        "rule_id": rule_id,
        "rule_version": 2,
        "maturity_level": RULES[rule_id].maturity_level,
        "record_type": "deal",
        "record_id": f"D-{action_id}",
        "contact_id": f"C-{action_id}",
        "account_id": "A1",
        "owner_email": "owner@example.com",
        "recipient_email": f"{action_id}@customer.example",
        "channel": "email",
        "audience": "contact",
        "category": "sales",
        "priority": 50,
        "signal_at": AS_OF - timedelta(days=1),
        "reason": '{"deal_name": "Big deal", "days_since_quote": 8}',
        "escalate": False,
        "recommended_action": "Send a follow-up",
        "holdout": status == "held_out",
        "journey_status": status,
        "journey_reason": reason,
        "contact_first_name": "Ada",
        "contact_last_name": "Lovelace",
        "account_name": "Acme",
        "as_of": AS_OF,
    }
    row.update(extra)
    return row


def _write_candidates(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    con.execute("drop table if exists main.action_candidates")
    import pandas as pd

    frame = pd.DataFrame(rows or [_candidate("template", "followup")])  # noqa: F841  (read by name below)
    con.execute("create table main.action_candidates as select * from frame")
    if not rows:
        con.execute("delete from main.action_candidates")


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
        rule_from_meta("rule_x", _meta("x", 7))
    broken = _meta("x", 3)
    del broken["channel"]
    with pytest.raises(RuleConfigError, match="rule_x: config.meta.channel is missing"):
        rule_from_meta("rule_x", broken)
