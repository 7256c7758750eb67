"""Turns the candidate build into ledger events: each new candidate is proposed once, then routed by its
rule's maturity level (held out, suppressed, sent for review, or approved automatically); review
requests left undecided past their rule's expiry become `expired`.

Most candidates are written set-based: one SQL statement renders their messages (`template_sql`) and builds
their events; only those that need a per-candidate decision in Python (an escalation, a template SQL cannot
render exactly, an action already in the ledger) go through `_Pass.route`. Both produce the same events."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from action_sinks.templates import TemplateError, render_message
from actionlayer import alerts, learning, ledger, template_sql
from actionlayer.escalation import ESCALATED_PRIORITY, Escalation, evaluate, matched_terms
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
        details=_proposal_details(candidate, rule, escalation, learned),
    )
    return event, failure


def _proposal_details(
    candidate: Mapping[str, Any],
    rule: Rule,
    escalation: Escalation | None = None,
    learned: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
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
    }


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
            return [_held_request(state, rule, as_of, why, held_because)]
        return [_auto_approval(state, rule, as_of, why)]
    return []


def _held_request(
    state: dict[str, Any], rule: Rule, as_of: datetime, why: str, held_because: str | None
) -> ledger.LedgerEvent:
    return _review_request(
        state,
        rule,
        as_of,
        f"{why}; held for review by a guardrail",
        held_by=held_because,
        next_action=f"held by a guardrail ({held_because}): approve or reject in the review table",
    )


def _auto_approval(state: dict[str, Any], rule: Rule, as_of: datetime, why: str) -> ledger.LedgerEvent:
    return ledger.next_event(
        state,
        "approved",
        as_of,
        f"auto:{rule.rule_id}",
        approver_email="auto",
        next_action=_dispatch_hint(state.get("channel") or rule.channel, state.get("not_before")),
        details={"why": why, "policy": f"level {rule.maturity_level} rule, journey context passed"},
    )


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


_INTERNAL = ("_ordinal", "_known", "_fast", "_detail_key", "_subject", "_body")
# candidate columns the set-based path copies into the ledger, with the DuckDB type it handles
_FAST_TYPES = {
    "action_id": "VARCHAR",
    "rule_id": "VARCHAR",
    "record_type": "VARCHAR",
    "record_id": "VARCHAR",
    "contact_id": "VARCHAR",
    "account_id": "VARCHAR",
    "owner_email": "VARCHAR",
    "recipient_email": "VARCHAR",
    "reason": "VARCHAR",
    "recommended_action": "VARCHAR",
    "journey_status": "VARCHAR",
    "journey_reason": "VARCHAR",
    "signal_at": "TIMESTAMP",
    "holdout": "BOOLEAN",
    "escalate": "BOOLEAN",
}
_MARK = "\x00owner\x00"


@dataclass
class _Plan:
    """How this pass writes the candidates of the set-based path: per rule, the rendering SQL and the
    fields every one of its events shares (taken from the same functions the Python path calls)."""

    columns: dict[str, str]
    rules: dict[str, Rule]
    rendered: dict[str, template_sql.Rendered]
    variables: template_sql.Variables

    def column(self, name: str, kind: str = "varchar") -> str:
        return f'"{name}"' if name in self.columns else f"null::{kind}"

    def fast(self) -> str:
        """SQL: is this work row one the set-based path writes?"""
        if not self.rendered:
            return "false"
        cases = []
        for rule_id, rendered in self.rendered.items():
            condition = rendered.renderable
            if self.rules[rule_id].escalation.severity:
                condition += f" and not coalesce({self.column('escalate', 'boolean')}, false)"
            cases.append(f"when {template_sql.literal(rule_id)} then {condition}")
        return f"(not _known and coalesce(case rule_id {' '.join(cases)} else false end, false))"

    def by_rule(self, attribute: str) -> str:
        if not self.rendered:
            return "null::varchar"
        cases = " ".join(
            f"when {template_sql.literal(rule_id)} then {getattr(rendered, attribute)}"
            for rule_id, rendered in self.rendered.items()
        )
        return f"case rule_id {cases} end"


def _plan(con: duckdb.DuckDBPyConnection, rules: Mapping[str, Rule], set_based: bool = True) -> _Plan:
    columns = {
        name: kind
        for name, kind in con.execute(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'main' and table_name = 'action_candidates' order by ordinal_position"
        ).fetchall()
    }
    plan = _Plan(columns=columns, rules=dict(rules), rendered={}, variables=template_sql.Variables(columns))
    required = {"action_id", "rule_id", "record_type", "record_id", "priority"}
    if (
        not set_based
        or not required <= columns.keys()
        or any(name in columns and columns[name] != kind for name, kind in _FAST_TYPES.items())
    ):
        return plan  # a build of another shape: every candidate goes the Python way
    for rule_id, rule in rules.items():
        if rule.learning is not None and rule.learning.segment_by == "reason":
            continue
        if rule.maturity_level not in (1, 2, 3, 4, 5) or rule.template_format not in ("text", "html"):
            continue
        subject = template_sql.parse(rule.template_subject)
        body = template_sql.parse(rule.template_body, html=rule.template_format == "html")
        if subject is None or body is None:
            continue
        plan.rendered[rule_id] = template_sql.render_sql(
            subject, body, rule.template_format == "html", plan.variables
        )
    return plan


def _escalating(con: duckdb.DuckDBPyConnection, plan: _Plan) -> None:
    """Hand the candidates whose keywords or patterns escalate to the Python route. The search is Python's own
    (`escalation.matched_terms`, regular expressions included), over the reason and the searched columns only."""
    ordinals: list[int] = []
    for rule_id in plan.rendered:
        rule = plan.rules[rule_id].escalation
        if not rule.fields or not (rule.keywords or rule.patterns):
            continue
        names = ["reason"] if "reason" in plan.columns else []
        names += [name for name in dict.fromkeys(rule.fields) if name in plan.columns and name != "reason"]
        cursor = con.execute(
            f"select _ordinal{''.join(f', {chr(34)}{name}{chr(34)}' for name in names)} from _proposal_work "
            "where _fast and rule_id = ?",
            [rule_id],
        )
        ordinals += [
            ordinal
            for ordinal, *values in cursor.fetchall()
            if matched_terms(rule, dict(zip(names, values, strict=True)))
        ]
    if ordinals:
        con.execute(
            "update _proposal_work set _fast = false where _ordinal in (select unnest(?::bigint[]))",
            [ordinals],
        )


def _work(con: duckdb.DuckDBPyConnection, plan: _Plan) -> None:
    """This pass's work as the temporary table `_proposal_work`: the candidates it has something to write
    for, numbered in the pass's order (priority, then action id), each marked for the set-based path or not.

    A candidate is work when the ledger has no event of its action (it is new), or when its action's latest
    event is a suppression and the candidate is now eligible (the suppression lifted) or suppressed for what may
    be another kind (the exact kind test is `_suppression_kind`; SQL only narrows). An unchanged candidate build
    therefore has no work at all.
    """
    kind = "trim(split_part(coalesce({}, ''), ':', 1))"
    # the template variables, each read from the reason once per row (see template_sql.Variables)
    layers = "".join(
        f", layer{i + 1} as (select *, {columns} from {'work' if i == 0 else f'layer{i}'})"
        for i, columns in enumerate(plan.variables.layers())
    )
    detail_key = ", ".join(
        plan.column(name, kind)
        for name, kind in (
            ("rule_id", "varchar"),
            ("priority", "integer"),
            ("escalate", "boolean"),
            ("journey_status", "varchar"),
            ("journey_reason", "varchar"),
        )
    )
    con.execute(
        f"""create or replace temp table _proposal_work as
        with latest as (
            -- narrow: only the latest event's seq, type and result of each candidate's action
            select action_id, max(seq) as seq, arg_max(event_type, seq) as event_type,
                   arg_max(result, seq) as result
            from {ledger.LEDGER_TABLE}
            where action_id in (select action_id from {CANDIDATES_TABLE})
            group by action_id
        ),
        work as (
            select candidates.*, latest.seq is not null as _known,
                   row_number() over (order by candidates.priority desc, candidates.action_id) as _ordinal,
                   -- ranked here, before the template columns widen every row the window sorts
                   dense_rank() over (order by {detail_key}) as _detail_key
            from {CANDIDATES_TABLE} as candidates
            left join latest using (action_id)
            where latest.seq is null
                or (latest.event_type = 'suppressed'
                    and (candidates.journey_status = 'eligible'
                         or (candidates.journey_status = 'suppressed'
                             and {kind.format("candidates.journey_reason")} <> {kind.format("latest.result")})))
        ){layers}
        select * exclude ({", ".join(plan.variables.internal())}),
               case when _fast then {plan.by_rule("subject")} end as _subject,
               case when _fast then {plan.by_rule("body")} end as _body
        from (select *, {plan.fast()} as _fast from layer{len(plan.variables.layers())})"""
    )


def _slow_work(
    con: duckdb.DuckDBPyConnection, plan: _Plan
) -> list[tuple[int, dict[str, Any], dict[str, Any] | None]]:
    """The work rows the Python path writes: (ordinal, candidate, latest ledger event or None), in order."""
    ledger_columns = [
        name
        for (name,) in con.execute(f"select name from pragma_table_info('{ledger.LEDGER_TABLE}')").fetchall()
    ]
    candidate_columns = list(plan.columns)
    state_columns = ", ".join(f'latest."{name}" as "{_STATE_PREFIX}{name}"' for name in ledger_columns)
    cursor = con.execute(
        f"""select work.* exclude ({", ".join(_INTERNAL)}), work._ordinal, {state_columns}
        from _proposal_work as work
        left join (
            select action_id, max(seq) as seq from {ledger.LEDGER_TABLE}
            where action_id in (select action_id from _proposal_work where _known and not _fast)
            group by action_id
        ) as newest on newest.action_id = work.action_id and work._known
        left join {ledger.LEDGER_TABLE} as latest
            on latest.action_id = newest.action_id and latest.seq = newest.seq
        where not work._fast
        order by work._ordinal"""
    )
    width = len(candidate_columns)
    names = [d[0] for d in cursor.description]
    if names[:width] != candidate_columns:
        raise RuntimeError(f"{CANDIDATES_TABLE} changed while this pass read it; run the pass again")
    work = []
    for row in cursor.fetchall():
        candidate = dict(zip(candidate_columns, row[:width], strict=True))
        state = (
            dict(zip(ledger_columns, row[width + 1 :], strict=True)) if row[width + 1] is not None else None
        )
        work.append((row[width], candidate, state))
    return work


class _Pass:
    """One pass's routing of the work rows the Python path writes (new or changed candidates)."""

    def __init__(
        self,
        as_of: datetime,
        rules: Mapping[str, Rule],
        routes: EscalationRoutes,
        guard: _Guard,
        policies: Mapping[str, learning.ThompsonPolicy],
        report: ProposalReport,
    ) -> None:
        self.as_of = as_of
        self.rules = rules
        self.routes = routes
        self.guard = guard
        self.policies = policies
        self.report = report

    def route(self, candidate: dict[str, Any], state: dict[str, Any] | None) -> list[ledger.LedgerEvent]:
        rule = self.rules.get(candidate["rule_id"])
        if rule is None:
            return []
        as_of, report, guard = self.as_of, self.report, self.guard
        status = candidate.get("journey_status")
        events: list[ledger.LedgerEvent] = []
        if state is None:
            escalation = evaluate(rule.escalation, candidate, self.routes, as_of)
            if escalation is not None and status == "held_out":
                # a person must hear about an escalation: it is not withheld to measure uplift
                # (outcome marts leave escalated actions out of both arms)
                status = "eligible"
            policy = self.policies.get(rule.rule_id)
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
                return events
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
        return events


_AFTER_ALL = 2**62  # the ordinal of the pass's review expiries: after every candidate's events
_ELIGIBLE = "coalesce(journey_status not in ('held_out', 'suppressed'), true)"


_RULE_COLUMN_TYPES = {
    "_r_version": pa.int64(),
    "_r_level": pa.int64(),
    "_r_review": pa.bool_(),
    "_r_automatic": pa.bool_(),
}


def _rule_table(plan: _Plan, as_of: datetime) -> pa.Table:
    """Per rule of the set-based path, the fields its events share, made by the Python path's own functions
    from a stand-in action (so both paths word them alike)."""
    rows = []
    for rule_id in plan.rendered:
        rule = plan.rules[rule_id]
        stand_in = {"action_id": "", "channel": rule.channel, "not_before": None}
        next_step = _next_step({"owner_email": _MARK, "journey_status": "eligible"}, rule)
        before, _, after = next_step.partition(_MARK)
        review = _review_request(stand_in, rule, as_of, "new candidate")
        approval = _auto_approval(stand_in, rule, as_of, "new candidate")
        rows.append(
            {
                "rule_id": rule_id,
                "_r_actor": f"rule:{rule.rule_id}@v{rule.version}",
                "_r_version": rule.version,
                "_r_level": rule.maturity_level,
                "_r_channel": rule.channel,
                "_r_recommended_action": rule.recommended_action,
                "_r_next_before": before,
                "_r_next_after": after if _MARK in next_step else None,
                "_r_review": rule.needs_review,
                "_r_automatic": not rule.needs_review and rule.maturity_level >= 4,
                "_r_review_actor": review.actor,
                "_r_review_next": review.next_action,
                "_r_review_details": ledger.encode_details(review.details),
                "_r_approved_actor": approval.actor,
                "_r_approved_next": approval.next_action,
                "_r_approved_details": ledger.encode_details(approval.details),
            }
        )
    if not rows:
        return pa.table({"rule_id": pa.array([], pa.string())})
    # column by column (Table.from_pylist would import pandas, seconds in a fresh process)
    return pa.table(
        {
            name: pa.array([row[name] for row in rows], _RULE_COLUMN_TYPES.get(name, pa.string()))
            for name in rows[0]
        }
    )


def _fast_events_sql(plan: _Plan) -> str:
    """SQL for the events of the set-based path's work rows, with the ledger's columns and the sort key; the
    parameters are the pass's as-of time (four times) and its date (twice)."""
    col = plan.column
    identity = (
        "rule_id, _r_version::integer as rule_version, _r_level::integer as maturity_level, record_type, "
        "record_id, contact_id, account_id, owner_email, signal_at, holdout, reason, recommended_action, "
        "coalesce(_l_channel, _r_channel) as channel, recipient"
    )
    event_id = "substr(sha256(action_id || '|' || {} || '|' || {}), 1, 32)"
    nothing = (
        "null::varchar as message_subject, null::varchar as message_body, null::varchar as approver_email, "
        "null::integer as attempt, null::varchar as result, null::boolean as retryable"
    )
    return f"""with rows as (
            select _ordinal, action_id, rule_id, record_type, record_id,
                   {col("contact_id")} as contact_id, {col("account_id")} as account_id,
                   {col("owner_email")} as owner_email, {col("signal_at", "timestamp")} as signal_at,
                   coalesce({col("holdout", "boolean")}, false) as holdout, {col("reason")} as reason,
                   {col("recommended_action")} as candidate_action,
                   {col("recipient_email")} as recipient, {col("journey_status")} as journey_status,
                   {col("journey_reason")} as journey_reason,
                   coalesce({col("escalate", "boolean")}, false) as escalate,
                   _subject as subject, _body as body, _detail_key
            from _proposal_work where _fast
        ),
        fast as (
            select rows.* exclude (candidate_action),
                   coalesce(nullif(candidate_action, ''), _r_recommended_action) as recommended_action,
                   rules.* exclude (rule_id), details.details as proposed_details,
                   held.next_action as held_next, held.details as held_details,
                   learned.* exclude (_ordinal)
            from rows
            join _proposal_rules as rules using (rule_id)
            join _proposal_details as details using (_detail_key)
            left join _proposal_held as held using (_ordinal)
            left join _proposal_learned as learned using (_ordinal)
        )
        select _ordinal, 0 as _sub, {event_id.format("'proposed'", "''")} as event_id, action_id,
               'proposed' as event_type, ?::timestamp as occurred_at, _r_actor as actor, {identity},
               case when escalate then '[ESCALATED] ' || subject else subject end as message_subject,
               body as message_body, null::varchar as approver_email, null::integer as attempt,
               null::varchar as result, null::boolean as retryable,
               coalesce(_l_next, case when journey_status = 'held_out' then 'none: held out to measure uplift'
                    when journey_status = 'suppressed' then 're-evaluate on the next pass'
                    when _r_next_after is null then _r_next_before
                    else _r_next_before || coalesce(owner_email, 'None') || _r_next_after end) as next_action,
               coalesce(_l_details, proposed_details) as details
        from fast
        union all by name
        select _ordinal, 1 as _sub, {event_id.format("'held_out'", "''")} as event_id, action_id,
               'held_out' as event_type, ?::timestamp as occurred_at, 'system:journey' as actor, {identity},
               {nothing.replace("null::varchar as result", "'holdout' as result")},
               null::varchar as next_action, null::varchar as details
        from fast where journey_status = 'held_out'
        union all by name
        select _ordinal, 1 as _sub,
               {
        event_id.format("'suppressed'", "?::varchar || '|' || coalesce(journey_reason, '')")
    } as event_id,
               action_id, 'suppressed' as event_type, ?::timestamp as occurred_at, 'system:journey' as actor,
               {identity}, {nothing.replace("null::varchar as result", "journey_reason as result")},
               null::varchar as next_action, null::varchar as details
        from fast where journey_status = 'suppressed'
        union all by name
        select _ordinal, 1 as _sub,
               case when _r_review or held_next is not null
                   then {event_id.format("'pending_review'", "?::varchar")}
                   else {event_id.format("'approved'", "''")} end as event_id,
               action_id, case when _r_review or held_next is not null then 'pending_review' else 'approved' end
                   as event_type,
               ?::timestamp as occurred_at,
               case when _r_review or held_next is not null then _r_review_actor else _r_approved_actor end
                   as actor,
               {identity},
               {
        nothing.replace(
            "null::varchar as approver_email",
            "case when _r_review or held_next is not null then null else 'auto' end as approver_email",
        )
    },
               case when _r_review then _r_review_next when held_next is not null then held_next
                    else coalesce(_l_approved_next, _r_approved_next) end as next_action,
               case when _r_review then _r_review_details when held_next is not null then held_details
                    else _r_approved_details end as details
        from fast where {_ELIGIBLE} and (_r_review or _r_automatic)"""


def propose(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    rules: Mapping[str, Rule],
    routes: EscalationRoutes | None = None,
    *,
    set_based: bool = True,
) -> ProposalReport:
    """Write this pass's ledger events for the current candidate build (idempotent).

    Escalation (`escalate_when`) routes a candidate to a named person; the guardrails of automatic rules
    (daily cap, blast radius) hold their actions for review and raise an alert (`ops.alerts`).

    Candidates whose rule decides nothing per candidate in Python (no arm draw, no keyword search) and whose
    message renders in SQL (see `template_sql`) are written set-based, in SQL; the others, and every action
    already in the ledger, go through `_Pass.route`. Both write the same events: one numbering in the pass's
    order interleaves them. `set_based=False` sends every candidate through `_Pass.route` (the reference the
    set-based path is tested against).
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
    plan = _plan(con, rules, set_based)
    # one anti-join decides the pass: only candidates that are new or whose suppression changed are work
    _work(con, plan)
    try:
        return _write(con, as_of, rules, routes, report, totals, plan)
    finally:
        con.execute("drop table if exists _proposal_work; drop table if exists _proposal_first")


def _write(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    rules: Mapping[str, Rule],
    routes: EscalationRoutes,
    report: ProposalReport,
    totals: Counter[str],
    plan: _Plan,
) -> ProposalReport:
    new_counts: Counter[str] = Counter(
        dict(
            con.execute(
                "select rule_id, count(*) from _proposal_work where not _known "
                f"and coalesce({plan.column('journey_status')}, 'eligible') = 'eligible' group by 1"
            ).fetchall()
        )
    )
    guard = _Guard(con, as_of, rules, new_counts, routes, report)
    learners = sorted(
        rule_id
        for (rule_id,) in con.execute(
            "select distinct rule_id from _proposal_work where not _known"
        ).fetchall()
        if (rule := rules.get(rule_id)) is not None and rule.learning is not None
    )
    policies = _policies(con, as_of, rules, learners, report)
    router = _Pass(as_of, rules, routes, guard, policies, report)
    _escalating(con, plan)
    if not con.execute("select count(*) from _proposal_work where _fast").fetchall()[0][0]:
        plan.rendered.clear()  # nothing set-based this pass (an unchanged build): skip its statements
    slow = _slow_work(con, plan)
    automatic_rules = [rule_id for rule_id in plan.rendered if plan.rules[rule_id].maturity_level >= 4]
    automatic_rules = [r for r in automatic_rules if not plan.rules[r].needs_review]
    automatic = con.execute(
        f"select _ordinal, rule_id from _proposal_work where _fast and {_ELIGIBLE.replace('journey_status', plan.column('journey_status'))} "
        "and rule_id in (select unnest(?::varchar[])) order by _ordinal",
        [automatic_rules],
    ).fetchall()
    events: list[ledger.LedgerEvent] = []
    ordinals: list[int] = []
    held: dict[tuple[str, str | None], list[int]] = {}

    subs: list[int] = []

    def route(ordinal: int, candidate: dict[str, Any], state: dict[str, Any] | None) -> None:
        routed = router.route(candidate, state)
        events.extend(routed)
        ordinals.extend([ordinal] * len(routed))
        subs.extend(range(len(routed)))

    # the guardrails count in the pass's order over both paths
    position = 0
    for ordinal, rule_id in automatic:
        while position < len(slow) and slow[position][0] < ordinal:
            route(*slow[position])
            position += 1
        allowed, held_because = guard.automatic(rules[rule_id])
        if not allowed:
            held.setdefault((rule_id, held_because), []).append(ordinal)
    for item in slow[position:]:
        route(*item)
    for rule_id, outcome, count in con.execute(
        f"select rule_id, coalesce(nullif({plan.column('journey_status')}, ''), 'eligible'), count(*) "
        "from _proposal_work where _fast group by all"
    ).fetchall():
        report.by_outcome[(rule_id, outcome)] += count
    report.expired = _expire_reviews(con, as_of, rules, events)
    slow_counts = Counter(ordinals)
    expiries = len(events) - len(ordinals)
    ordinals += [_AFTER_ALL] * expiries  # expiries come last, in order
    subs += range(expiries)
    details = [
        (
            key,
            ledger.encode_details(_proposal_details(dict(zip(names, values, strict=True)), rules[values[0]])),
        )
        for key, *values in con.execute(
            f"""select _detail_key, any_value(rule_id), any_value(priority), any_value({plan.column("escalate", "boolean")}),
                   any_value({plan.column("journey_status")}), any_value({plan.column("journey_reason")})
            from _proposal_work where _fast group by 1"""
        ).fetchall()
        for names in [("rule_id", "priority", "escalate", "journey_status", "journey_reason")]
    ]
    learned_rows = _learned(con, as_of, plan, policies, report)
    held_rows = []
    for (rule_id, held_because), held_ordinals in held.items():
        rule = rules[rule_id]
        event = _held_request({"action_id": ""}, rule, as_of, "new candidate", held_because)
        held_rows += [(o, event.next_action, ledger.encode_details(event.details)) for o in held_ordinals]
    tables = {
        "_proposal_rules": _rule_table(plan, as_of),
        "_proposal_details": pa.table(
            {
                "_detail_key": pa.array([k for k, _ in details], pa.int64()),
                "details": pa.array([d for _, d in details], pa.string()),
            }
        ),
        "_proposal_held": pa.table(
            {
                "_ordinal": pa.array([o for o, _, _ in held_rows], pa.int64()),
                "next_action": pa.array([n for _, n, _ in held_rows], pa.string()),
                "details": pa.array([d for _, _, d in held_rows], pa.string()),
            }
        ),
        "_proposal_learned": pa.table(
            {
                name: pa.array([row[i] for row in learned_rows], kind)
                for i, (name, kind) in enumerate(
                    [
                        ("_ordinal", pa.int64()),
                        ("_l_channel", pa.string()),
                        ("_l_next", pa.string()),
                        ("_l_details", pa.string()),
                        ("_l_approved_next", pa.string()),
                    ]
                )
            }
        ),
        "_proposal_slow": ledger.event_table(events, _ordinal=ordinals, _sub=subs),
        "_proposal_counts": pa.table(
            {
                "_ordinal": pa.array(list(slow_counts), pa.int64()),
                "n": pa.array(list(slow_counts.values()), pa.int64()),
            }
        ),
    }
    day = f"{as_of:%Y-%m-%d}"
    for name, table in tables.items():
        con.register(name, table)
    con.execute("begin transaction")
    try:
        source = "select * from _proposal_slow"
        params: list[Any] = []
        if plan.rendered:
            source = f"({_fast_events_sql(plan)}) union all by name ({source})"
            params = [as_of, as_of, day, as_of, day, as_of]
        # each work row's first place in the batch, from the number of events of the rows before it (a narrow
        # running sum instead of numbering the wide events)
        fast_counts = (
            f"""select _ordinal, case when coalesce({plan.column("journey_status")} in ('held_out', 'suppressed'),
                                                  false) or _r_review or _r_automatic then 2 else 1 end as n
            from _proposal_work join _proposal_rules using (rule_id) where _fast union all """
            if plan.rendered
            else ""
        )
        con.execute(
            f"""create or replace temp table _proposal_first as
            select _ordinal, sum(n) over (order by _ordinal) - n as _before, n
            from ({fast_counts}select _ordinal, n from _proposal_counts)"""
        )
        total = con.execute("select coalesce(sum(n), 0) from _proposal_first").fetchall()[0][0]
        distinct = (
            len({event.event_id for event in events}) == len(events)
            and con.execute("select count(*) = count(distinct action_id) from _proposal_work").fetchall()[0][
                0
            ]
        )
        report.new_events = ledger.append_query(
            con,
            f"""select events.* exclude (_ordinal, _sub), coalesce(first._before, ?) + events._sub as _position
            from ({source}) as events left join _proposal_first as first on first._ordinal = events._ordinal""",
            [total, *params],
            distinct=distinct,
        )
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
    finally:
        for name in tables:
            con.unregister(name)
    return report


def _learned(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    plan: _Plan,
    policies: Mapping[str, learning.ThompsonPolicy],
    report: ProposalReport,
) -> list[tuple[int, str, str, str | None, str]]:
    """The arm of every level-5 action of the set-based path, as (ordinal, channel, the proposal's next action
    and details, the approval's next action). The arm is drawn per action id (`learning.draw_arm`); what
    follows from it depends only on the segment, the arm and the contact's zone, so `_decide` runs once per
    such combination."""
    rows: list[tuple[int, str, str, str | None, str]] = []
    wanted = [
        name
        for name in ("action_id", "journey_status", "priority", "escalate", "journey_reason", "reason")
        + learning.TIMEZONE_COLUMNS
        if name in plan.columns
    ]
    for rule_id, policy in policies.items():
        if rule_id not in plan.rendered:
            continue
        rule = plan.rules[rule_id]
        segment_by = policy.config.segment_by
        names = wanted + (
            [segment_by] if segment_by and segment_by in plan.columns and segment_by not in wanted else []
        )
        cursor = con.execute(
            f"select _ordinal, {', '.join(f'{chr(34)}{n}{chr(34)}' for n in names)} from _proposal_work "
            f"where _fast and rule_id = ? and coalesce({plan.column('journey_status')} <> 'held_out', true) "
            "order by _ordinal",
            [rule_id],
        )
        cache: dict[tuple[Any, ...], tuple[str, str, str | None, str, str]] = {}
        for ordinal, *values in cursor.fetchall():
            candidate = dict(zip(names, values, strict=True))
            segment = learning.segment_of(candidate, segment_by)
            zone = learning.contact_timezone(candidate)
            index = learning.draw_arm(candidate["action_id"], policy._segment(segment)[1])
            key = (
                segment,
                index,
                zone,
                candidate.get("journey_status"),
                candidate.get("priority"),
                candidate.get("escalate"),
                candidate.get("journey_reason"),
            )
            if key not in cache:
                # the real decision of this action: every field but its id is the combination's
                learned = _decide(policy, candidate, as_of)
                state_like = {"channel": learned["arm_channel"], "not_before": learned["not_before"]}
                cache[key] = (
                    learned["arm"],
                    learned["arm_channel"],
                    _next_step(candidate, rule, learned),
                    ledger.encode_details(_proposal_details(candidate, rule, None, learned)),
                    _dispatch_hint(state_like["channel"] or rule.channel, state_like["not_before"]),
                )
            arm, channel, next_action, details, approved_next = cache[key]
            report.learned[(rule_id, arm)] += 1
            rows.append((ordinal, channel, next_action, details, approved_next))
    return rows


def _policies(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    rules: Mapping[str, Rule],
    learners: list[str],
    report: ProposalReport,
) -> dict[str, learning.ThompsonPolicy]:
    """This pass's Thompson policy of every level-5 rule with a new candidate (posteriors read once)."""
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
    con: duckdb.DuckDBPyConnection, as_of: datetime, expiry_days: Mapping[str, int]
) -> list[dict[str, Any]]:
    """The latest event of every action waiting for review whose deadline may have passed, oldest first.

    SQL narrows by the deadline the request carries (with a day's slack for one written with a UTC offset),
    keeps every request whose stored deadline it cannot read, and every one old enough to be due by its
    rule's fallback deadline (`expiry_days` per rule, 7 for any other); `_review_deadline` decides exactly.
    A request that carries no deadline is due by the fallback alone, which SQL decides as Python would."""
    raw = "json_extract_string(events.details, '$.review_expires_at')"
    stored = f"try_cast({raw} as timestamp)"
    fallback = "events.occurred_at + to_days(coalesce(days.expiry_days, 7)) <= ?::timestamp"
    return _rows(
        con,
        f"""with latest as (
            select action_id, max(seq) as seq, arg_max(event_type, seq) as event_type
            from {ledger.LEDGER_TABLE}
            where action_id in (select action_id from {ledger.LEDGER_TABLE} where event_type = 'pending_review')
            group by action_id
        ),
        days as (
            select unnest(?::varchar[]) as rule_id, unnest(?::integer[]) as expiry_days
        )
        select events.* from {ledger.LEDGER_TABLE} as events
        semi join latest
            on latest.action_id = events.action_id and latest.seq = events.seq
            and latest.event_type = 'pending_review'
        left join days on days.rule_id = events.rule_id
        where coalesce({raw}, '') = '' and {fallback}
            or coalesce({raw}, '') <> ''
                and ({stored} is null or {stored} <= ?::timestamp + interval 1 day or {fallback})
        order by seq""",
        [list(expiry_days), list(expiry_days.values()), as_of, as_of, as_of],
    )


def _expire_reviews(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    rules: Mapping[str, Rule],
    events: list[ledger.LedgerEvent],
) -> int:
    expired = 0
    days = {rule_id: rule.review_expiry_days for rule_id, rule in rules.items()}
    for state in _pending_reviews_due(con, as_of, days):
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
