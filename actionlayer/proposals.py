"""Turns the candidate build into ledger events: each new candidate is proposed once, then routed by its
rule's maturity level (held out, suppressed, sent for review, or approved automatically); review
requests left undecided past their rule's expiry become `expired`."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import duckdb

from action_sinks.templates import TemplateError, render_message
from actionlayer import alerts, learning, ledger
from actionlayer.escalation import ESCALATED_PRIORITY, Escalation, evaluate
from actionlayer.rules import Rule
from actionlayer.settings import EscalationRoutes, load_escalation_routes

CANDIDATES_TABLE = "main.action_candidates"
OUTCOMES_TABLE = "main.fct_outcomes"
RULE_RUNS_DDL = """
create schema if not exists ops;
create table if not exists ops.rule_runs (
    rule_id        varchar   not null,
    as_of          timestamp not null,
    candidates     bigint    not null,
    new_candidates bigint    not null,
    primary key (rule_id, as_of)
);
"""


@dataclass
class ProposalReport:
    as_of: datetime
    candidates: int = 0
    new_events: int = 0
    by_outcome: Counter[tuple[str, str]] = field(default_factory=Counter)
    template_failures: list[str] = field(default_factory=list)
    expired: int = 0
    unknown_rules: set[str] = field(default_factory=set)
    held: dict[str, str] = field(default_factory=dict)  # rule_id → why its automatic actions were held
    escalated: int = 0
    alerts: int = 0
    learned: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule_id, arm) → decisions
    learning_source: str | None = None  # where this pass's level-5 posteriors came from

    def summary_lines(self) -> list[str]:
        lines = [f"{self.candidates} candidates in this build, {self.new_events} new ledger events"]
        per_rule: dict[str, list[str]] = {}
        for (rule_id, outcome), count in sorted(self.by_outcome.items()):
            per_rule.setdefault(rule_id, []).append(f"{count} {outcome}")
        lines += [f"  {rule_id}: {', '.join(parts)}" for rule_id, parts in per_rule.items()]
        if self.expired:
            lines.append(f"{self.expired} review requests expired undecided")
        for rule_id, why in sorted(self.held.items()):
            lines.append(f"guardrail: {rule_id}: automatic actions held for review — {why}")
        if self.escalated:
            lines.append(f"{self.escalated} action(s) escalated to a named person")
        per_arm: dict[str, list[str]] = {}
        for (rule_id, arm), count in sorted(self.learned.items()):
            per_arm.setdefault(rule_id, []).append(f"{count} {arm}")
        lines += [
            f"learning: {rule_id}: {', '.join(parts)} (posteriors: {self.learning_source})"
            for rule_id, parts in per_arm.items()
        ]
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
    candidate: dict[str, Any],
    rule: Rule,
    as_of: datetime,
    escalation: Escalation | None = None,
    learned: dict[str, Any] | None = None,
) -> tuple[ledger.LedgerEvent, str | None]:
    failure = None
    try:
        subject, body = render_message(
            rule.template_subject, rule.template_body, template_variables(candidate), rule.template_format
        )
        if candidate.get("escalate") or escalation is not None:
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
        channel=learned["arm_channel"] if learned else rule.channel,
        # an internal action that escalates goes to the person it escalated to
        recipient=escalation.to
        if escalation is not None and rule.audience == "owner"
        else candidate.get("recipient_email"),
        message_subject=subject,
        message_body=body,
        next_action=_next_step(candidate, rule, learned),
        details={
            "priority": ESCALATED_PRIORITY if escalation is not None else candidate.get("priority"),
            "escalate": bool(candidate.get("escalate")) or escalation is not None,
            **(escalation.details() if escalation is not None else {}),
            "journey_status": candidate.get("journey_status"),
            "journey_reason": candidate.get("journey_reason"),
            "audience": rule.audience,
            "category": rule.category,
            "outcome": rule.outcome,
            "mode": rule.mode,
            "format": rule.template_format,
            **(learned or {}),
        },
    )
    return event, failure


def _next_step(candidate: Mapping[str, Any], rule: Rule, learned: Mapping[str, Any] | None = None) -> str:
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
        5: _dispatch_hint(learned["arm_channel"], learned["not_before"])
        if learned
        else f"dispatch via {rule.channel}",
    }[rule.maturity_level]


def _dispatch_hint(channel: str, not_before: str | None) -> str:
    return f"dispatch via {channel}" + (f", not before {not_before}" if not_before else "")


def _learning_counts(
    con: duckdb.DuckDBPyConnection, rule_ids: list[str], as_of: datetime
) -> tuple[dict[str, dict[tuple[str, str], learning.ArmCounts]], str]:
    """Closed outcomes of the level-5 rules' earlier acted decisions, per rule, segment and arm: one query
    per pass. Before the outcome mart main.fct_outcomes exists (the first passes), the priors alone decide."""
    exists = con.execute(
        "select count(*) from information_schema.tables where table_schema = 'main' and table_name = 'fct_outcomes'"
    ).fetchall()[0][0]
    if not exists:
        return {}, f"priors only ({OUTCOMES_TABLE} does not exist yet)"
    rows = con.execute(
        f"""select proposed.rule_id,
               json_extract_string(proposed.details, '$.segment') as segment,
               json_extract_string(proposed.details, '$.arm') as arm,
               count(*) filter (where outcomes.outcome_achieved) as successes,
               count(*) filter (where not outcomes.outcome_achieved) as failures
        from {OUTCOMES_TABLE} as outcomes
        join {ledger.LEDGER_TABLE} as proposed
            on proposed.action_id = outcomes.action_id and proposed.event_type = 'proposed'
        -- acted only (held-out and never-sent actions say nothing about an arm); closed windows only: an
        -- early success counted before the failures of the same window would favour the most recent arm
        where outcomes.arm_group = 'acted'
            and outcomes.outcome_window_closed
            and outcomes.outcome_achieved is not null
            and proposed.rule_id in (select unnest(?::varchar[]))
            and json_extract_string(proposed.details, '$.policy') = ?
            and proposed.occurred_at < ?
        group by all""",
        [rule_ids, learning.POLICY, as_of],
    ).fetchall()
    counts: dict[str, dict[tuple[str, str], learning.ArmCounts]] = {}
    for rule_id, segment, arm, successes, failures in rows:
        counts.setdefault(rule_id, {})[(segment, arm)] = learning.ArmCounts(int(successes), int(failures))
    return counts, f"{OUTCOMES_TABLE}, {sum(s + f for *_, s, f in rows)} closed outcomes"


def _decide(policy: learning.ThompsonPolicy, candidate: Mapping[str, Any], as_of: datetime) -> dict[str, Any]:
    """The arm of one level-5 action and the ledger fields that record it (see learning.Decision)."""
    config = policy.config
    decision = policy.decide(candidate["action_id"], learning.segment_of(candidate, config.segment_by))
    # action_candidates carries the contact's IANA zone (contact_timezone); without one the window is read in
    # UTC, and the ledger says so
    zone = learning.contact_timezone(candidate)
    window = config.window(decision.arm.send_window)
    opening = window.next_opening(as_of, zone)
    return decision.details(config) | {
        "not_before": learning.iso_utc(opening),
        # the dispatcher sends only inside this daily window, however late the action is approved or retried
        "send_window_hours": [window.start_hour, window.end_hour],
        "send_timezone": zone or "UTC",
        "send_timezone_known": zone is not None,
    }


def _review_request(
    state: dict[str, Any], rule: Rule, as_of: datetime, why: str, **extra: Any
) -> ledger.LedgerEvent:
    expires = as_of + timedelta(days=rule.review_expiry_days)
    approver = extra.pop("approver_email", None)
    next_action = extra.pop("next_action", None) or f"decide by {expires:%Y-%m-%d %H:%M}"
    return ledger.next_event(
        state,
        "pending_review",
        as_of,
        f"rule:{rule.rule_id}@v{rule.version}",
        approver_email=approver,
        next_action=next_action,
        details={"why": why, "review_expires_at": str(expires), **extra},
    )


class _Guard:
    """The guardrails of automatic (level 4/5) rules in one pass: the blast-radius verdict per rule,
    computed once from its recent passes, and the daily cap, counted as approvals are made."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        as_of: datetime,
        rules: Mapping[str, Rule],
        new_counts: Counter[str],
        routes: EscalationRoutes,
        report: ProposalReport,
    ) -> None:
        self.as_of = as_of
        self.rules = rules
        self.routes = routes
        self.report = report
        self.alerts: list[alerts.Alert] = []
        self.blast: dict[str, str] = {}
        day = as_of.replace(hour=0, minute=0, second=0, microsecond=0)
        self.approved_today: Counter[str] = Counter(
            dict(
                con.execute(
                    """select rule_id, count(*) from ops.action_ledger
                    where event_type = 'approved' and actor like 'auto:%'
                      and occurred_at >= ? and occurred_at < ?
                    group by 1""",
                    [day, day + timedelta(days=1)],
                ).fetchall()
            )
        )
        for rule_id, count in new_counts.items():
            rule = rules.get(rule_id)
            if rule is None or rule.guardrails is None or rule.maturity_level < 4:
                continue
            why = self._blast_radius(con, rule, count)
            if why:
                self.blast[rule_id] = why
                self.hold(rule, "blast_radius", why)

    def _blast_radius(self, con: duckdb.DuckDBPyConnection, rule: Rule, count: int) -> str | None:
        limits = rule.guardrails
        assert limits is not None
        history = [
            n
            for (n,) in con.execute(
                "select new_candidates from ops.rule_runs where rule_id = ? and as_of < ? "
                "order by as_of desc limit ?",
                [rule.rule_id, self.as_of, limits.blast_window],
            ).fetchall()
        ]
        if len(history) < min(3, limits.blast_window) or count <= limits.blast_floor:
            # too little history to call a pass unusual; the daily cap still applies
            return None
        median = statistics.median(history)
        if count <= limits.blast_factor * median:
            return None
        return (
            f"{count} new candidates in this pass, more than {limits.blast_factor:g} × the median "
            f"{median:g} of its last {len(history)} passes (floor {limits.blast_floor})"
        )

    def hold(self, rule: Rule, kind: str, why: str) -> None:
        if rule.rule_id not in self.report.held:
            self.report.held[rule.rule_id] = why
            self.alerts.append(
                alerts.Alert(
                    kind=kind,
                    rule_id=rule.rule_id,
                    recipient=self.routes.alerts_to,
                    subject=f"[Actionlayer] {rule.rule_id}: automatic actions held for review ({kind})",
                    message=f"Rule {rule.rule_id} (level {rule.maturity_level}) would have acted automatically "
                    f"as of {self.as_of:%Y-%m-%d %H:%M}, but {why}. Its actions wait in the review tables "
                    "for a person to approve or reject them.",
                    dedupe=f"{self.as_of:%Y-%m-%d}",
                )
            )

    def automatic(self, rule: Rule) -> tuple[bool, str | None]:
        """May this action be approved automatically now? (False, why) when a guardrail holds it."""
        if rule.rule_id in self.blast:
            return False, f"blast radius: {self.blast[rule.rule_id]}"
        limits = rule.guardrails
        if limits is not None and self.approved_today[rule.rule_id] >= limits.daily_cap:
            why = f"daily cap of {limits.daily_cap} automatic actions reached for {self.as_of:%Y-%m-%d}"
            self.hold(rule, "daily_cap", why)
            return False, f"daily cap: {why}"
        self.approved_today[rule.rule_id] += 1
        return True, None


def _continue_flow(
    state: dict[str, Any],
    candidate: Mapping[str, Any],
    rule: Rule,
    as_of: datetime,
    why: str,
    guard: _Guard,
    escalation: Escalation | None = None,
) -> list[ledger.LedgerEvent]:
    """Events that follow an eligible proposal, by maturity level, escalation and guardrails."""
    if escalation is not None and rule.audience == "contact":
        # a customer-facing action that escalated is never sent automatically: a named person decides
        return [
            _review_request(
                state,
                rule,
                as_of,
                f"{why}; escalated ({'; '.join(escalation.reasons)})",
                approver_email=escalation.to,
                next_action=f"escalated to {escalation.to}: decide with priority",
                **escalation.details(),
            )
        ]
    if rule.needs_review:
        return [_review_request(state, rule, as_of, why)]
    if rule.maturity_level >= 4:
        allowed, held_because = guard.automatic(rule)
        if not allowed:
            return [
                _review_request(
                    state,
                    rule,
                    as_of,
                    f"{why}; held for review by a guardrail",
                    held_by=held_because,
                    next_action=f"held by a guardrail ({held_because}): approve or reject in the review table",
                )
            ]
        return [
            ledger.next_event(
                state,
                "approved",
                as_of,
                f"auto:{rule.rule_id}",
                approver_email="auto",
                next_action=_dispatch_hint(state.get("channel") or rule.channel, state.get("not_before")),
                details={"why": why, "policy": f"level {rule.maturity_level} rule, journey context passed"},
            )
        ]
    return []


def _escalation_alert(state: Mapping[str, Any], rule: Rule, escalation: Escalation) -> alerts.Alert:
    return alerts.Alert(
        kind="escalation",
        rule_id=rule.rule_id,
        recipient=escalation.to,
        subject=f"[Actionlayer] escalated: {rule.rule_id} {state.get('record_type')} {state.get('record_id')}",
        message=f"Action {state['action_id']} of rule {rule.rule_id} escalated to you "
        f"({'; '.join(escalation.reasons)}). It is not sent to the customer automatically"
        + (": decide it in your review table." if rule.audience == "contact" else ".")
        + (
            f" Signal to escalation: {escalation.latency_seconds / 3600:.1f} h."
            if escalation.latency_seconds is not None
            else ""
        ),
        dedupe=str(state["action_id"]),
    )


def _suppression_kind(reason: str | None) -> str:
    """The kind of a journey reason: `frequency_cap`, `cooldown`, `do_not_contact`, `suppressed`... (the text
    before the first colon)."""
    return (reason or "").split(":", 1)[0].strip()


def _state_of(event: ledger.LedgerEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in ("action_id", *ledger.IDENTITY_FIELDS)} | {
        "channel": event.channel,
        "recipient": event.recipient,
        "recommended_action": event.recommended_action,
        "reason": event.reason,
        "not_before": (event.details or {}).get("not_before"),
    }


_STATE_PREFIX = "_state__"


def _work(con: duckdb.DuckDBPyConnection) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The candidates this pass has something to write for, in the pass's order (priority, then action id),
    and the latest ledger event of those already in the ledger, in one query over the whole set.

    A candidate comes back when the ledger has no event of its action (it is new), or when its action's latest
    event is a suppression and the candidate is now eligible (the suppression lifted) or suppressed for what may
    be another kind (the exact kind test is `_suppression_kind`; SQL only narrows). An unchanged candidate build
    therefore returns no rows at all.
    """
    candidate_columns = [
        name
        for (name,) in con.execute(f"select name from pragma_table_info('{CANDIDATES_TABLE}')").fetchall()
    ]
    ledger_columns = [
        name
        for (name,) in con.execute(f"select name from pragma_table_info('{ledger.LEDGER_TABLE}')").fetchall()
    ]
    state_columns = ", ".join(f'latest."{name}" as "{_STATE_PREFIX}{name}"' for name in ledger_columns)
    kind = "trim(split_part(coalesce({}, ''), ':', 1))"
    cursor = con.execute(
        f"""with latest as (
            -- narrow: only the latest event's seq, type and result of each candidate's action
            select action_id, max(seq) as seq, arg_max(event_type, seq) as event_type,
                   arg_max(result, seq) as result
            from {ledger.LEDGER_TABLE}
            where action_id in (select action_id from {CANDIDATES_TABLE})
            group by action_id
        ),
        work as (
            select candidates.*, latest.seq as _latest_seq
            from {CANDIDATES_TABLE} as candidates
            left join latest using (action_id)
            where latest.seq is null
                or (latest.event_type = 'suppressed'
                    and (candidates.journey_status = 'eligible'
                         or (candidates.journey_status = 'suppressed'
                             and {kind.format("candidates.journey_reason")} <> {kind.format("latest.result")})))
        )
        select work.* exclude (_latest_seq), {state_columns}
        from work
        left join {ledger.LEDGER_TABLE} as latest
            on latest.action_id = work.action_id and latest.seq = work._latest_seq
        order by work.priority desc, work.action_id"""
    )
    width = len(candidate_columns)
    names = [d[0] for d in cursor.description]
    if names[:width] != candidate_columns:
        raise RuntimeError(f"{CANDIDATES_TABLE} changed while this pass read it; run the pass again")
    candidates: list[dict[str, Any]] = []
    known: dict[str, dict[str, Any]] = {}
    for row in cursor.fetchall():
        candidate = dict(zip(candidate_columns, row[:width], strict=True))
        candidates.append(candidate)
        if row[width] is not None:  # the latest event's seq: the action is in the ledger
            known[candidate["action_id"]] = dict(zip(ledger_columns, row[width:], strict=True))
    return candidates, known


def propose(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    rules: Mapping[str, Rule],
    routes: EscalationRoutes | None = None,
) -> ProposalReport:
    """Write this pass's ledger events for the current candidate build (idempotent).

    Escalation (`escalate_when`) routes a candidate to a named person; the guardrails of automatic rules
    (daily cap, blast radius) hold their actions for review and raise an alert (`ops.alerts`).
    """
    ledger.ensure_schema(con)
    alerts.ensure_schema(con)
    con.execute(RULE_RUNS_DDL)
    routes = routes if routes is not None else load_escalation_routes()
    report = ProposalReport(as_of=as_of)
    totals: Counter[str] = Counter(
        dict(con.execute(f"select rule_id, count(*) from {CANDIDATES_TABLE} group by 1").fetchall())
    )
    report.candidates = sum(totals.values())
    report.unknown_rules = {rule_id for rule_id in totals if rule_id not in rules}
    # one anti-join decides the pass: only candidates that are new or whose suppression changed come back
    candidates, known = _work(con)
    new_counts = Counter(
        c["rule_id"]
        for c in candidates
        if c["action_id"] not in known and c.get("journey_status") in (None, "eligible")
    )
    guard = _Guard(con, as_of, rules, new_counts, routes, report)
    policies = _policies(con, as_of, rules, candidates, known, report)
    events: list[ledger.LedgerEvent] = []
    for candidate in candidates:
        rule = rules.get(candidate["rule_id"])
        if rule is None:
            continue
        status = candidate.get("journey_status")
        state = known.get(candidate["action_id"])
        if state is None:
            escalation = evaluate(rule.escalation, candidate, routes, as_of)
            if escalation is not None and status == "held_out":
                # a person must hear about an escalation: it is not withheld to measure uplift
                # (outcome marts leave escalated actions out of both arms)
                status = "eligible"
            policy = policies.get(rule.rule_id)
            learned = (
                _decide(policy, candidate, as_of) if policy is not None and status != "held_out" else None
            )
            if learned is not None:
                report.learned[(rule.rule_id, learned["arm"])] += 1
            proposal, failure = _proposal(candidate, rule, as_of, escalation, learned)
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
                events += _continue_flow(state, candidate, rule, as_of, "new candidate", guard, escalation)
                if escalation is not None:
                    report.escalated += 1
                    guard.alerts.append(_escalation_alert(state, rule, escalation))
            report.by_outcome[(rule.rule_id, status or "eligible")] += 1
        elif state["event_type"] == "suppressed":
            # suppression is context, not a verdict: when it lifts, the action goes on
            if status == "eligible":
                events += _continue_flow(
                    state, candidate, rule, as_of, f"suppression lifted ({state['result']})", guard
                )
                report.by_outcome[(rule.rule_id, "released")] += 1
            elif status == "suppressed" and _suppression_kind(
                candidate["journey_reason"]
            ) != _suppression_kind(state["result"]):
                # a new kind of suppression is news; the same kind in other words (the cap's winner now shows
                # as delivered when the same pass runs again) is not, so a re-run appends nothing
                events.append(
                    ledger.next_event(
                        state, "suppressed", as_of, "system:journey", result=candidate["journey_reason"]
                    )
                )
    report.expired = _expire_reviews(con, as_of, rules, events)
    con.execute("begin transaction")
    try:
        report.new_events = ledger.append(con, events)
        report.alerts = alerts.raise_alerts(con, guard.alerts, as_of)
        # the first pass at an as-of time is what the blast-radius guard remembers (a re-run adds nothing)
        con.executemany(
            "insert into ops.rule_runs values (?, ?, ?, ?) on conflict do nothing",
            [
                [rule_id, as_of, totals[rule_id], new_counts[rule_id]]
                for rule_id in sorted(set(rules) | set(totals))
            ],
        )
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    return report


def _policies(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    rules: Mapping[str, Rule],
    candidates: list[dict[str, Any]],
    known: Mapping[str, Any],
    report: ProposalReport,
) -> dict[str, learning.ThompsonPolicy]:
    """This pass's Thompson policy of every level-5 rule with a new candidate (posteriors read once)."""
    learners = sorted(
        {
            c["rule_id"]
            for c in candidates
            if c["action_id"] not in known
            and (rule := rules.get(c["rule_id"])) is not None
            and rule.learning is not None
        }
    )
    if not learners:
        return {}
    counts, report.learning_source = _learning_counts(con, learners, as_of)
    policies = {}
    for rule_id in learners:
        config = rules[rule_id].learning
        assert config is not None
        policies[rule_id] = learning.ThompsonPolicy(rule_id, config, counts.get(rule_id, {}))
    return policies


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


def _pending_reviews_due(
    con: duckdb.DuckDBPyConnection, as_of: datetime, shortest_expiry_days: int
) -> list[dict[str, Any]]:
    """The latest event of every action waiting for review whose deadline may have passed, oldest first.

    SQL narrows by the deadline the request carries (with a day's slack for one written with a UTC offset),
    keeps every request whose deadline it cannot read, and every one old enough to be due by the fallback
    deadline of any rule; `_review_deadline` decides exactly."""
    stored = "try_cast(json_extract_string(details, '$.review_expires_at') as timestamp)"
    return _rows(
        con,
        f"""with latest as (
            select action_id, max(seq) as seq, arg_max(event_type, seq) as event_type
            from {ledger.LEDGER_TABLE}
            where action_id in (select action_id from {ledger.LEDGER_TABLE} where event_type = 'pending_review')
            group by action_id
        )
        select events.* from {ledger.LEDGER_TABLE} as events
        semi join latest
            on latest.action_id = events.action_id and latest.seq = events.seq
            and latest.event_type = 'pending_review'
        where {stored} is null or {stored} <= ?::timestamp + interval 1 day
            or occurred_at + to_days(?) <= ?::timestamp
        order by seq""",
        [as_of, shortest_expiry_days, as_of],
    )


def _expire_reviews(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    rules: Mapping[str, Rule],
    events: list[ledger.LedgerEvent],
) -> int:
    expired = 0
    shortest = min([rule.review_expiry_days for rule in rules.values()] + [7])
    for state in _pending_reviews_due(con, as_of, shortest):
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
