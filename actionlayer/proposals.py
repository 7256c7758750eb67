"""Turns the candidate build into ledger events: each new candidate is proposed once, then routed by its
rule's maturity level (held out, suppressed, sent for review, or approved automatically); review
requests left undecided past their rule's expiry become `expired`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import duckdb

from action_sinks.templates import TemplateError, render_message
from actionlayer import ledger
from actionlayer.rules import Rule

CANDIDATES_TABLE = "main.action_candidates"


@dataclass
class ProposalReport:
    as_of: datetime
    candidates: int = 0
    new_events: int = 0
    by_outcome: Counter[tuple[str, str]] = field(default_factory=Counter)
    template_failures: list[str] = field(default_factory=list)
    expired: int = 0
    unknown_rules: set[str] = field(default_factory=set)

    def summary_lines(self) -> list[str]:
        lines = [f"{self.candidates} candidates in this build, {self.new_events} new ledger events"]
        per_rule: dict[str, list[str]] = {}
        for (rule_id, outcome), count in sorted(self.by_outcome.items()):
            per_rule.setdefault(rule_id, []).append(f"{count} {outcome}")
        lines += [f"  {rule_id}: {', '.join(parts)}" for rule_id, parts in per_rule.items()]
        if self.expired:
            lines.append(f"{self.expired} review requests expired undecided")
        lines += [f"template failure: {failure}" for failure in self.template_failures]
        if self.unknown_rules:
            lines.append(
                f"candidates of rules missing from the manifest were skipped: {sorted(self.unknown_rules)}"
            )
        return lines


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def template_variables(candidate: Mapping[str, Any]) -> dict[str, Any]:
    """What a rule's message template may use: the candidate's columns, short names, and its reason values."""
    variables: dict[str, Any] = {k: v for k, v in candidate.items() if k != "reason"}
    variables["first_name"] = candidate.get("contact_first_name")
    variables["last_name"] = candidate.get("contact_last_name")
    reason = candidate.get("reason")
    if isinstance(reason, str) and reason:
        try:
            parsed = json.loads(reason)
        except json.JSONDecodeError:
            parsed = {}
        if isinstance(parsed, dict):
            variables.update(parsed)
    return variables


def _proposal(
    candidate: dict[str, Any], rule: Rule, as_of: datetime
) -> tuple[ledger.LedgerEvent, str | None]:
    failure = None
    try:
        subject, body = render_message(
            rule.template_subject, rule.template_body, template_variables(candidate)
        )
        if candidate.get("escalate"):
            subject = f"[ESCALATED] {subject}"
    except TemplateError as exc:
        subject, body, failure = None, None, str(exc)
    event = ledger.LedgerEvent(
        action_id=candidate["action_id"],
        event_type="proposed",
        occurred_at=as_of,
        actor=f"rule:{rule.rule_id}@v{rule.version}",
        rule_id=rule.rule_id,
        rule_version=rule.version,
        maturity_level=rule.maturity_level,
        record_type=candidate["record_type"],
        record_id=candidate["record_id"],
        contact_id=candidate.get("contact_id"),
        account_id=candidate.get("account_id"),
        owner_email=candidate.get("owner_email"),
        signal_at=candidate.get("signal_at"),
        holdout=bool(candidate.get("holdout")),
        reason=candidate.get("reason"),
        recommended_action=candidate.get("recommended_action") or rule.recommended_action,
        channel=rule.channel,
        recipient=candidate.get("recipient_email"),
        message_subject=subject,
        message_body=body,
        next_action=_next_step(candidate, rule),
        details={
            "priority": candidate.get("priority"),
            "escalate": bool(candidate.get("escalate")),
            "journey_status": candidate.get("journey_status"),
            "journey_reason": candidate.get("journey_reason"),
            "audience": rule.audience,
            "category": rule.category,
            "outcome": rule.outcome,
            "mode": rule.mode,
        },
    )
    return event, failure


def _next_step(candidate: Mapping[str, Any], rule: Rule) -> str:
    status = candidate.get("journey_status")
    if status == "held_out":
        return "none: held out to measure uplift"
    if status == "suppressed":
        return "re-evaluate on the next pass"
    return {
        1: "none: view only",
        2: f"owner {candidate.get('owner_email')} reviews the recommendation",
        3: f"owner {candidate.get('owner_email')} approves or rejects in the review table",
        4: f"dispatch via {rule.channel}",
        5: f"dispatch via {rule.channel}",
    }[rule.maturity_level]


def _continue_flow(
    state: dict[str, Any], candidate: Mapping[str, Any], rule: Rule, as_of: datetime, why: str
) -> list[ledger.LedgerEvent]:
    """Events that follow an eligible proposal, by maturity level."""
    if rule.needs_review:
        return [
            ledger.next_event(
                state,
                "pending_review",
                as_of,
                f"rule:{rule.rule_id}@v{rule.version}",
                approver_email=None,
                next_action=f"decide by {(as_of + timedelta(days=rule.review_expiry_days)):%Y-%m-%d %H:%M}",
                details={
                    "why": why,
                    "review_expires_at": str(as_of + timedelta(days=rule.review_expiry_days)),
                },
            )
        ]
    if rule.maturity_level >= 4:
        return [
            ledger.next_event(
                state,
                "approved",
                as_of,
                f"auto:{rule.rule_id}",
                approver_email="auto",
                next_action=f"dispatch via {rule.channel}",
                details={"why": why, "policy": f"level {rule.maturity_level} rule, journey context passed"},
            )
        ]
    return []


def _state_of(event: ledger.LedgerEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in ("action_id", *ledger.IDENTITY_FIELDS)} | {
        "channel": event.channel,
        "recipient": event.recipient,
        "recommended_action": event.recommended_action,
        "reason": event.reason,
    }


def propose(con: duckdb.DuckDBPyConnection, as_of: datetime, rules: Mapping[str, Rule]) -> ProposalReport:
    """Write this pass's ledger events for the current candidate build (idempotent)."""
    ledger.ensure_schema(con)
    report = ProposalReport(as_of=as_of)
    candidates = _rows(con, f"select * from {CANDIDATES_TABLE} order by priority desc, action_id")
    report.candidates = len(candidates)
    known = {
        row["action_id"]: row for row in ledger.states(con, action_ids=[c["action_id"] for c in candidates])
    }
    events: list[ledger.LedgerEvent] = []
    for candidate in candidates:
        rule = rules.get(candidate["rule_id"])
        if rule is None:
            report.unknown_rules.add(candidate["rule_id"])
            continue
        status = candidate.get("journey_status")
        state = known.get(candidate["action_id"])
        if state is None:
            proposal, failure = _proposal(candidate, rule, as_of)
            events.append(proposal)
            state = _state_of(proposal)
            if failure:
                report.template_failures.append(f"{rule.rule_id} {candidate['record_id']}: {failure}")
                events.append(
                    ledger.next_event(
                        state,
                        "failed",
                        as_of,
                        "system:templates",
                        attempt=0,
                        result=f"message could not be rendered: {failure}",
                        retryable=False,
                        next_action="fix the rule's template",
                    )
                )
                report.by_outcome[(rule.rule_id, "template_failed")] += 1
                continue
            if status == "held_out":
                events.append(ledger.next_event(state, "held_out", as_of, "system:journey", result="holdout"))
            elif status == "suppressed":
                events.append(
                    ledger.next_event(
                        state, "suppressed", as_of, "system:journey", result=candidate["journey_reason"]
                    )
                )
            else:
                events += _continue_flow(state, candidate, rule, as_of, "new candidate")
            report.by_outcome[(rule.rule_id, status or "eligible")] += 1
        elif state["event_type"] == "suppressed":
            # suppression is context, not a verdict: when it lifts, the action goes on
            if status == "eligible":
                events += _continue_flow(
                    state, candidate, rule, as_of, f"suppression lifted ({state['result']})"
                )
                report.by_outcome[(rule.rule_id, "released")] += 1
            elif status == "suppressed" and candidate["journey_reason"] != state["result"]:
                events.append(
                    ledger.next_event(
                        state, "suppressed", as_of, "system:journey", result=candidate["journey_reason"]
                    )
                )
    report.expired = _expire_reviews(con, as_of, rules, events)
    con.execute("begin transaction")
    try:
        report.new_events = ledger.append(con, events)
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    return report


def _review_deadline(state: Mapping[str, Any], expiry_days: int) -> datetime:
    """The deadline the review request carries (a four-eyes first approval keeps it, so a half-approved
    action cannot outlive its review), else `expiry_days` after the latest pending_review event."""
    try:
        details = json.loads(state.get("details") or "{}")
    except (TypeError, ValueError):
        details = {}
    stored = details.get("review_expires_at") if isinstance(details, dict) else None
    if stored:
        try:
            return datetime.fromisoformat(str(stored))
        except ValueError:
            pass
    return state["occurred_at"] + timedelta(days=expiry_days)


def _expire_reviews(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    rules: Mapping[str, Rule],
    events: list[ledger.LedgerEvent],
) -> int:
    expired = 0
    for state in ledger.states(con, ["pending_review"]):
        rule = rules.get(state["rule_id"])
        expiry_days = rule.review_expiry_days if rule else 7
        deadline = _review_deadline(state, expiry_days)
        if as_of >= deadline:
            events.append(
                ledger.next_event(
                    state,
                    "expired",
                    as_of,
                    "system:review_expiry",
                    result=f"undecided {expiry_days} days after review was requested",
                    next_action="none",
                )
            )
            expired += 1
    return expired
