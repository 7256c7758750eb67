"""Execution guardrails end to end on a real DuckDB ledger, the real proposal pass and the real dispatcher
with the file outbox: level-4 rules must declare guardrails, the daily cap and the blast-radius guard hold
automatic actions for review and alert, escalations go to a named person and never to a customer on their
own, stale actions expire right before sending, and a failed template never sends a blank message."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from proposal_support import AS_OF, candidate, rule_meta, write_candidates

from action_sinks.dispatcher import dispatch
from action_sinks.file import FileOutbox
from action_sinks.registry import ChannelSinks
from actionlayer import alerts, ledger
from actionlayer.proposals import propose
from actionlayer.review import export_reviews
from actionlayer.rules import RuleConfigError, rule_from_meta
from actionlayer.settings import EscalationRoutes

OWNER = "owner@example.com"
MANAGER = "head.sales@example.com"
ROUTES = EscalationRoutes(managers={OWNER: MANAGER}, alerts_to="ops@example.com")


def _rule(rule_id: str, level: int = 4, **meta):
    return rule_from_meta(f"rule_{rule_id}", rule_meta(rule_id, level, **meta))


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "actionlayer.duckdb"))
    ledger.ensure_schema(connection)
    yield connection
    connection.close()


@pytest.fixture
def outbox(tmp_path) -> ChannelSinks:
    return ChannelSinks({}, FileOutbox(tmp_path / "outbox"))


def _states(con) -> dict[str, dict]:
    return {row["action_id"]: row for row in ledger.states(con)}


def _details(row: dict) -> dict:
    return json.loads(row.get("details") or "{}")


def _sent(outbox: ChannelSinks, channel: str) -> set[str]:
    folder = Path(outbox.default.root) / channel
    return {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()


def test_a_level_4_rule_without_guardrails_is_refused_at_load_naming_what_is_missing():
    meta = rule_meta("auto", 4)
    del meta["guardrails"]
    with pytest.raises(RuleConfigError, match=r"rule_auto: a level-4 rule .* must declare its guardrails"):
        rule_from_meta("rule_auto", meta)
    with pytest.raises(RuleConfigError, match=r"guardrails lacks blast_radius\.floor"):
        rule_from_meta(
            "rule_auto", rule_meta("auto", 4, guardrails={"daily_cap": 5, "blast_radius": {"factor": 3}})
        )
    with pytest.raises(RuleConfigError, match=r"guardrails\.daily_cap = 0 must be at least 1"):
        rule_from_meta(
            "rule_auto",
            rule_meta("auto", 4, guardrails={"daily_cap": 0, "blast_radius": {"factor": 3, "floor": 1}}),
        )
    with pytest.raises(RuleConfigError, match="escalate_when.patterns"):
        _rule("auto", escalate_when={"patterns": ["(unclosed"], "fields": ["comment"]})
    # a level-3 rule needs none: a person approves every action
    assert rule_from_meta("rule_review", rule_meta("review", 3)).guardrails is None


def test_daily_cap_holds_the_rest_for_review_and_alerts_once(con, outbox):
    rules = {"auto": _rule("auto", guardrails={"daily_cap": 3, "blast_radius": {"factor": 3, "floor": 50}})}
    write_candidates(con, [candidate(f"a{i}", "auto", level=4) for i in range(5)])
    report = propose(con, AS_OF, rules, ROUTES)
    states = _states(con)
    approved = [a for a, s in states.items() if s["event_type"] == "approved"]
    held = [a for a, s in states.items() if s["event_type"] == "pending_review"]
    assert (len(approved), len(held)) == (3, 2)
    assert all("daily cap of 3" in _details(states[a])["held_by"] for a in held)
    assert "daily cap" in report.held["auto"]
    assert con.execute("select kind, recipient from ops.alerts").fetchall() == [
        ("daily_cap", "ops@example.com")
    ]
    # a re-run of the pass adds nothing: no new events, no second alert
    before = con.execute("select count(*) from ops.action_ledger").fetchall()
    assert propose(con, AS_OF, rules, ROUTES).new_events == 0
    assert con.execute("select count(*) from ops.action_ledger").fetchall() == before
    assert con.execute("select count(*) from ops.alerts").fetchall() == [(1,)]
    # the next day the cap starts again
    write_candidates(con, [candidate(f"b{i}", "auto", level=4) for i in range(2)])
    propose(con, AS_OF + timedelta(days=1), rules, ROUTES)
    assert {_states(con)[f"b{i}"]["event_type"] for i in range(2)} == {"approved"}

    report = dispatch(con, AS_OF + timedelta(days=1), outbox, check_freshness=False)
    assert report.delivered == 5 and not set(held) & _sent(outbox, "email")
    lines = alerts.send_pending(con, outbox, AS_OF + timedelta(days=1))
    assert len(lines) == 1 and len(_sent(outbox, "alerts")) == 1
    assert alerts.send_pending(con, outbox, AS_OF + timedelta(days=1)) == []


def test_blast_radius_holds_a_sudden_surge_for_review_and_alerts(con, outbox):
    rules = {
        "auto": _rule("auto", guardrails={"daily_cap": 1000, "blast_radius": {"factor": 3, "floor": 10}})
    }
    for day in range(4):  # a quiet rule: 4 new candidates a day
        write_candidates(con, [candidate(f"d{day}-{i}", "auto", level=4) for i in range(4)])
        report = propose(con, AS_OF + timedelta(days=day), rules, ROUTES)
        assert not report.held
    surge_day = AS_OF + timedelta(days=4)
    write_candidates(con, [candidate(f"surge-{i}", "auto", level=4) for i in range(40)])
    report = propose(con, surge_day, rules, ROUTES)
    assert (
        "40 new candidates in this pass, more than 3 × the median 4 of its last 4 passes"
        in report.held["auto"]
    )
    states = _states(con)
    surge = [states[f"surge-{i}"] for i in range(40)]
    assert {s["event_type"] for s in surge} == {"pending_review"}
    assert "blast radius" in _details(surge[0])["held_by"]
    [(kind, subject)] = con.execute(
        "select kind, subject from ops.alerts where raised_at = ?", [surge_day]
    ).fetchall()
    assert kind == "blast_radius" and "auto" in subject

    result = dispatch(con, surge_day, outbox, check_freshness=False)
    assert not {f"surge-{i}" for i in range(40)} & _sent(outbox, "email")
    assert result.delivered == 16  # the quiet days' actions only
    assert alerts.send_pending(con, outbox, surge_day) and _sent(outbox, "alerts")


def test_escalation_goes_to_the_manager_and_never_to_the_customer_on_its_own(
    con, outbox, tmp_path, monkeypatch
):
    monkeypatch.setenv("ACTIONLAYER_REVIEW_SECRET", "ab12" * 16)
    monkeypatch.setenv("ACTIONLAYER_CONFIG", str(tmp_path / "none.yml"))
    escalate = {
        "keywords": ["refund", "lawyer"],
        "patterns": ["charge ?back"],
        "fields": ["comment"],
        "to": "manager",
    }
    rules = {
        "winback": _rule("winback", escalate_when=escalate),
        "callback": _rule("callback", audience="owner", channel="task", escalate_when=escalate),
    }
    write_candidates(
        con,
        [
            candidate("calm", "winback", level=4, reason='{"deal_name": "X", "comment": "all fine"}'),
            candidate(
                "angry",
                "winback",
                level=4,
                reason='{"deal_name": "X", "comment": "I want a REFUND or my lawyer calls"}',
            ),
            candidate(
                "severe",
                "callback",
                level=4,
                audience="owner",
                channel="task",
                escalate=True,
                recipient_email=OWNER,
                reason='{"deal_name": "Y", "comment": "chargeback filed"}',
            ),
            # escalated candidates are not withheld to measure uplift: a person must hear about them
            candidate(
                "angry-holdout",
                "winback",
                "held_out",
                "holdout",
                level=4,
                reason='{"deal_name": "Z", "comment": "refund now"}',
            ),
        ],
    )
    report = propose(con, AS_OF, rules, ROUTES)
    assert report.escalated == 3
    states = _states(con)
    assert states["calm"]["event_type"] == "approved"
    for action_id in ("angry", "angry-holdout"):
        state = states[action_id]
        details = _details(state)
        assert state["event_type"] == "pending_review" and state["approver_email"] == MANAGER
        assert details["escalated_to"] == MANAGER and details["escalation_latency_seconds"] == 86400
        assert "keyword 'refund' in comment" in details["escalation_reasons"]
    proposal = ledger.trail(con, "angry")[0]
    assert json.loads(proposal["details"])["priority"] == 1000
    assert proposal["message_subject"].startswith("[ESCALATED]")
    # an internal task that escalates goes to the manager automatically
    assert states["severe"]["event_type"] == "approved" and states["severe"]["proposed_recipient"] == MANAGER

    result = dispatch(con, AS_OF, outbox, check_freshness=False)
    assert _sent(outbox, "email") == {"calm"} and _sent(outbox, "task") == {"severe"}
    assert result.delivered == 2
    recipients = {
        r for (r,) in con.execute("select recipient from ops.alerts where kind = 'escalation'").fetchall()
    }
    assert recipients == {MANAGER}
    # the manager, and only the manager, gets the escalated actions in a review table
    export = export_reviews(con, tmp_path / "review", AS_OF)
    assert export.rows_per_approver == {MANAGER: 2}


def test_stale_actions_expire_right_before_sending_and_gated_rules_wait(con, outbox):
    rules = {"auto": _rule("auto")}
    write_candidates(con, [candidate(f"s{i}", "auto", level=4) for i in range(4)])
    propose(con, AS_OF, rules, ROUTES)
    # the next build: s1's invoice was paid (its candidate is gone), s2's contact opted out
    write_candidates(
        con,
        [
            candidate("s0", "auto", level=4),
            candidate("s2", "auto", "suppressed", "do_not_contact", level=4),
            candidate("s3", "auto", level=4),
        ],
    )
    report = dispatch(con, AS_OF, outbox)
    assert report.expired == 2 and report.delivered == 2
    states = _states(con)
    assert (
        states["s1"]["event_type"] == "expired" and "no longer holds for deal D-s1" in states["s1"]["result"]
    )
    assert states["s2"]["event_type"] == "expired" and "opted out" in states["s2"]["result"]
    assert _sent(outbox, "email") == {"s0", "s3"}

    # a rule skipped by the quality gate has no candidates at all: its actions wait, they are not stale
    write_candidates(con, [candidate("g0", "auto", level=4)])
    propose(con, AS_OF + timedelta(hours=1), rules, ROUTES)
    write_candidates(con, [])
    con.execute(
        "create or replace table main.int_rule_gate as select 'auto' as rule_id, true as blocked, "
        "'deals' as blocked_objects, 'deals (rule, too_many_broken_rows)' as blocked_reason"
    )
    waiting = dispatch(con, AS_OF + timedelta(hours=1), outbox)
    assert (waiting.held_by_gate, waiting.expired, waiting.delivered) == (1, 0, 0)
    assert _states(con)["g0"]["event_type"] == "approved"


def test_a_failed_template_never_sends_a_blank_message(con, outbox):
    rules = {
        "auto": _rule("auto", template={"subject": "Hi [[ first_name ]]", "body": "[[ missing_value ]]"})
    }
    write_candidates(con, [candidate("t1", "auto", level=4)])
    report = propose(con, AS_OF, rules, ROUTES)
    assert report.template_failures and "missing_value" in report.template_failures[0]
    state = _states(con)["t1"]
    assert state["event_type"] == "failed" and "missing_value" in state["result"]
    assert dispatch(con, AS_OF, outbox).due == 0
    assert _sent(outbox, "email") == set()


def test_html_template_escapes_record_text_and_goes_out_as_html_email(con):
    from loopback import RecordingHandler, SmtpServer

    from action_sinks.templates import TemplateError, render_message

    subject, body = render_message(
        "Re: [[ name ]]\r\nBcc: x@evil.example",
        "<p>Hello [[ name ]]</p>",
        {"name": "<script>alert(1)</script> & Co"},
        "html",
    )
    assert body == "<p>Hello &lt;script&gt;alert(1)&lt;/script&gt; &amp; Co</p>"
    assert "\n" not in subject and "<script>" in subject  # the subject is a plain-text header, one line
    with pytest.raises(TemplateError, match="format 'pdf'"):
        render_message("s", "b", {}, "pdf")

    template = {
        "subject": "About [[ deal_name ]]",
        "body": "<p>Hi [[ first_name ]], [[ deal_name ]]</p>",
        "format": "html",
    }
    rules = {"auto": _rule("auto", template=template)}
    write_candidates(con, [candidate("h1", "auto", level=4, contact_first_name="<b>Ada</b>")])
    propose(con, AS_OF, rules, ROUTES)
    with SmtpServer(RecordingHandler()) as server:
        assert dispatch(con, AS_OF, {"email": server.sink()}).delivered == 1
        [message] = server.handler.messages
    assert message.get_content_type() == "text/html"
    assert "&lt;b&gt;Ada&lt;/b&gt;" in message.get_content()
    with pytest.raises(RuleConfigError, match="template.format = 'pdf'"):
        _rule("auto", template={**template, "format": "pdf"})
