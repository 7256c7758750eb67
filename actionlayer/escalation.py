"""Decides whether a candidate escalates to a named human, and to whom.

One responsibility: evaluate a rule's `escalate_when` (the SQL severity flag, keywords and regular
expressions over chosen text fields of the candidate's reason) and resolve the person it goes to (the
record's owner, or the owner's manager from `actionlayer.yml`). What an escalated action then does is
the proposal's business (actionlayer/proposals.py): it is never sent to a customer automatically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actionlayer.rules import EscalationRule
from actionlayer.settings import EscalationRoutes

# an escalated action outranks every ordinary one in review tables and frequency caps
ESCALATED_PRIORITY = 1000


@dataclass(frozen=True)
class Escalation:
    """Why a candidate escalated, who receives it, and how long after its signal that happened."""

    reasons: tuple[str, ...]
    to: str
    routed_by: str  # "owner" or "manager" (or "owner (no manager configured)")
    latency_seconds: float | None

    def details(self) -> dict[str, Any]:
        return {
            "escalated": True,
            "escalation_reasons": list(self.reasons),
            "escalated_to": self.to,
            "escalation_routed_by": self.routed_by,
            "escalation_latency_seconds": self.latency_seconds,
        }


def _reason_values(candidate: Mapping[str, Any]) -> dict[str, Any]:
    reason = candidate.get("reason")
    if isinstance(reason, str) and reason:
        try:
            parsed = json.loads(reason)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def matched_terms(rule: EscalationRule, candidate: Mapping[str, Any]) -> list[str]:
    """The keywords and patterns of `rule` found in the candidate's searched fields (reason included)."""
    if not rule.fields or not (rule.keywords or rule.patterns):
        # nothing to search for (most rules): skip reading the reason of every candidate of a large pass
        return []
    values = {**_reason_values(candidate), **{k: v for k, v in candidate.items() if k != "reason"}}
    found: list[str] = []
    for field in rule.fields:
        text = values.get(field)
        if not isinstance(text, str) or not text:
            continue
        lowered = text.lower()
        for keyword in rule.keywords:
            if re.search(rf"\b{re.escape(keyword.lower())}", lowered):
                found.append(f"keyword {keyword!r} in {field}")
        for pattern in rule.patterns:
            if re.search(pattern, text, flags=re.IGNORECASE):
                found.append(f"pattern {pattern!r} in {field}")
    return found


def evaluate(
    rule: EscalationRule, candidate: Mapping[str, Any], routes: EscalationRoutes, as_of: datetime
) -> Escalation | None:
    """The escalation of one candidate under its rule, or None when it does not escalate."""
    reasons = []
    if rule.severity and candidate.get("escalate"):
        reasons.append("severity threshold of the rule's condition")
    reasons += matched_terms(rule, candidate)
    if not reasons:
        return None
    owner = (candidate.get("owner_email") or "").strip().lower()
    to, routed_by = owner, "owner"
    if rule.to == "manager":
        manager = routes.manager_of(owner)
        to, routed_by = (manager, "manager") if manager else (owner, "owner (no manager configured)")
    signal_at = candidate.get("signal_at")
    latency = (as_of - signal_at).total_seconds() if isinstance(signal_at, datetime) else None
    return Escalation(reasons=tuple(reasons), to=to, routed_by=routed_by, latency_seconds=latency)
