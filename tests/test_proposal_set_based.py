"""The set-based proposal path writes exactly the ledger the per-candidate Python route writes: the same events,
ids, order, messages and details, over awkward values (doubles, huge integers, HTML, line breaks, non-ASCII,
broken or odd reasons, missing variables), every maturity level, escalation, learning and the guardrails."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import duckdb
from proposal_support import AS_OF, rule_meta

from actionlayer import ledger, proposals
from actionlayer.proposals import propose
from actionlayer.rules import rule_from_meta
from actionlayer.settings import EscalationRoutes

ROUTES = EscalationRoutes(
    managers={"owner1@seller.example": "boss@seller.example"}, alerts_to="ops@example.com"
)
SUBJECT = "[% if urgent %]URGENT: [% endif %] Offer [[ amount ]] for [[ name ]]\r\n[[ count ]] "
BODY = "Hi [[ first_name ]] [[ last_name ]],\n[[ name ]] / [[ amount ]] / [[ flag ]] / [[ count ]] / [[ nothing ]]\n"


def _rules() -> dict:
    template = {"subject": SUBJECT, "body": BODY}
    metas = [
        rule_meta("view", 1, template=template),
        rule_meta("recommend", 2, template=template),
        rule_meta("review", 3, template=template),
        rule_meta(
            "html",
            3,
            template={"subject": "[[ name ]]", "body": "<p>[[ name ]] [[ amount ]]</p>", "format": "html"},
        ),
        rule_meta("filtered", 3, template={"subject": "[[ name | upper ]]", "body": "x"}),
        rule_meta(
            "auto",
            4,
            template=template,
            guardrails={"daily_cap": 7, "blast_radius": {"factor": 3, "floor": 5}},
        ),
        rule_meta(
            "care",
            4,
            template=template,
            audience="owner",
            escalate_when={
                "keywords": ["refund"],
                "patterns": ["o'?brien"],
                "fields": ["name"],
                "to": "manager",
            },
        ),
        rule_meta(
            "learn",
            5,
            template=template,
            learning={
                "segment_by": "tier",
                "arms": {"channel": ["email", "line"], "send_window": ["morning", "afternoon"]},
                "windows": {"morning": [8, 12], "afternoon": [13, 17]},
            },
        ),
    ]
    return {m["rule_id"]: rule_from_meta(f"rule_{m['rule_id']}", m) for m in metas}


NAMES = [
    'O\'Brien & <Co> "x"',
    "  spaced \r\n out\t",
    "Chloé",
    "wants a REFUND now",
    "",
    "plain",
    "\u3000wide\u3000",
]
AMOUNTS: list[Any] = [
    19352.83,
    1e16,
    1e-05,
    100,
    0.1,
    -2.5,
    12345678901234567890,
    True,
    None,
    [1, 2],
    {"a": 1},
]
ODD_REASONS = [
    "not json",
    "[1, 2]",
    "",
    None,
    '{"name": "a", "name": "b", "amount": 1}',
    '{"name": "\\u00e9t\\u00e9"}',
]


def _reason(n: int) -> str | None:
    if n % 13 == 5:
        return ODD_REASONS[(n // 13) % len(ODD_REASONS)]
    values: dict[str, Any] = {"name": NAMES[n % len(NAMES)], "amount": AMOUNTS[n % len(AMOUNTS)], "count": n}
    if n % 10:
        values["flag"] = n % 3 == 0
        values["nothing"] = None
    values["urgent"] = [0, 1, "", "yes", None][n % 5]
    if n % 6 == 1:
        values["tier"] = "gold"
    if n % 9 == 0:
        values["first_name"] = "Override"
    return json.dumps(values, ensure_ascii=n % 2 == 0)


def _build(con: duckdb.DuckDBPyConnection, count: int, variant: int = 0) -> None:
    rule_ids = list(_rules())
    rows = []
    for n in range(count):
        status = ["eligible", "eligible", "held_out", "suppressed"][n % 4]
        if variant and status == "suppressed" and n % 3:
            status = "eligible" if n % 3 == 1 else status
        reason = "cooldown: 2 days ago" if status == "suppressed" and variant and n % 3 == 2 else None
        rows.append(
            (
                f"a{n:04d}",
                rule_ids[n % len(rule_ids)],
                "deal",
                f"D-{n}",
                f"C-{n}",
                f"owner{n % 3}@seller.example" if n % 11 else None,
                f"c{n}@customer.example",
                n % 5,
                AS_OF - timedelta(hours=n % 30),
                _reason(n),
                n % 17 == 3,
                None if n % 7 == 0 else "Call them",
                status == "held_out",
                status,
                reason or ("frequency_cap: 3 in 7 days" if status == "suppressed" else None),
                "Ada" if n % 10 else None,
                "Lovelace",
                ["Asia/Tokyo", None, "Not/AZone", "Europe/Paris"][n % 4],
            )
        )
    con.execute("drop table if exists main.action_candidates")
    con.execute(
        """create table main.action_candidates (
            action_id varchar, rule_id varchar, record_type varchar, record_id varchar, contact_id varchar,
            owner_email varchar, recipient_email varchar, priority integer, signal_at timestamp, reason varchar,
            escalate boolean, recommended_action varchar, holdout boolean, journey_status varchar,
            journey_reason varchar, contact_first_name varchar, contact_last_name varchar,
            contact_timezone varchar)"""
    )
    con.executemany("insert into main.action_candidates values (" + ", ".join("?" * 18) + ")", rows)


def _ledger(tmp_path, name: str, set_based: bool) -> list:
    con = duckdb.connect(str(tmp_path / f"{name}.duckdb"))
    rules = _rules()
    out: list = []
    for as_of, count, variant in [
        (AS_OF, 400, 0),
        (AS_OF, 400, 0),
        (AS_OF + timedelta(hours=2), 400, 1),
        (AS_OF + timedelta(days=1), 480, 1),
        (AS_OF + timedelta(days=5), 480, 1),
    ]:
        _build(con, count, variant)
        out.append(propose(con, as_of, rules, ROUTES, set_based=set_based).summary_lines())
    out += con.execute("select * exclude (recorded_at) from ops.action_ledger order by seq").fetchall()
    out += con.execute("select * exclude (raised_at) from ops.alerts order by all").fetchall()
    con.close()
    return out


def test_the_set_based_path_writes_the_ledger_the_python_route_writes(tmp_path, monkeypatch):
    reference = _ledger(tmp_path, "python", set_based=False)
    calls = []
    real = proposals._proposal
    monkeypatch.setattr(proposals, "_proposal", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert _ledger(tmp_path, "sql", set_based=True) == reference
    # both paths were taken: the awkward values (about half of these candidates) were rendered in Python
    proposed = sum(1 for row in reference if isinstance(row, tuple) and row[3] == "proposed")
    assert 0 < len(calls) < proposed * 3 / 4


def test_pending_reviews_are_read_only_when_their_own_rules_deadline_may_have_passed(tmp_path):
    # rule "quick" expires reviews after 1 day, "slow" after 7; an unknown rule falls back to 7 days
    con = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    ledger.ensure_schema(con)
    requested = AS_OF - timedelta(days=2)
    events = []
    for action_id, rule_id, stored in (
        ("quick-stored", "quick", requested + timedelta(days=1)),
        ("slow-stored", "slow", requested + timedelta(days=7)),
        ("quick-bare", "quick", None),
        ("slow-bare", "slow", None),
        ("other-bare", "gone", None),
        ("slow-odd", "slow", "next tuesday"),
    ):
        proposed = ledger.LedgerEvent(
            action_id=action_id,
            event_type="proposed",
            occurred_at=requested,
            actor=f"rule:{rule_id}",
            rule_id=rule_id,
            rule_version=1,
            maturity_level=3,
            record_type="deal",
            record_id=action_id,
        )
        state = {"action_id": action_id, **{k: getattr(proposed, k) for k in ledger.IDENTITY_FIELDS}}
        details = {} if stored is None else {"review_expires_at": str(stored)}
        events += [proposed, ledger.next_event(state, "pending_review", requested, "rule", details=details)]
    ledger.append(con, events)

    due = proposals._pending_reviews_due(con, AS_OF, {"quick": 1, "slow": 7})
    # the slow rule's reviews (stored or fallback deadline five days ahead) are not read at all; a deadline
    # SQL cannot read is left to Python
    assert [row["action_id"] for row in due] == ["quick-stored", "quick-bare", "slow-odd"]
    # and what is read is exactly what expires
    rules = {
        rule_id: rule_from_meta(f"rule_{rule_id}", rule_meta(rule_id, 3, review_expiry_days=days))
        for rule_id, days in (("quick", 1), ("slow", 7))
    }
    written: list = []
    assert proposals._expire_reviews(con, AS_OF, rules, written) == 2
    assert sorted(event.action_id for event in written) == ["quick-bare", "quick-stored"]


def test_the_sql_renderer_strips_exactly_the_characters_python_strips():
    from actionlayer import template_sql

    every_space = "".join(c for c in map(chr, range(0x110000)) if c.isspace())
    assert every_space == template_sql.PYTHON_WHITESPACE
