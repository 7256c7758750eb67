"""Approval policy: who may decide which rule's actions, and which rules need two approvers (four eyes).

Read from the `approval:` section of `actionlayer.yml` (the older `approvers:` section, rule → emails,
is still read and adds approvers):

    approval:
      secret_env: ACTIONLAYER_REVIEW_SECRET   # optional: the variable holding the signing key
      teams:
        finance: [fiona@example.com, frank@example.com]
      rules:
        overdue_invoice:
          approvers: [team:finance, carla@example.com]
          owner_approves: true                # default true: the record's owner may decide too
          four_eyes: true                     # two distinct authorised approvers must approve

A rule not named under `rules` is decided by the record's owner alone (as before). Every problem is
reported with the key that holds it (e.g. `approval.rules.overdue_invoice.approvers[1]`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from actionlayer.config import settings_file

DEFAULT_SECRET_ENV = "ACTIONLAYER_REVIEW_SECRET"
TEAM_PREFIX = "team:"

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECTION_KEYS = frozenset({"secret_env", "teams", "rules"})
_RULE_KEYS = frozenset({"approvers", "owner_approves", "four_eyes"})


class ReviewConfigError(ValueError):
    """`actionlayer.yml` has an `approval`/`approvers` section that cannot be understood; names the key."""


def norm_email(value: Any) -> str:
    """Emails compare case-insensitively and without surrounding blanks."""
    return str(value).strip().lower() if value is not None else ""


@dataclass(frozen=True)
class RulePolicy:
    """Who may decide one rule's actions."""

    approvers: frozenset[str] = frozenset()
    owner_approves: bool = True
    four_eyes: bool = False


@dataclass(frozen=True)
class ApprovalPolicy:
    """The whole approval policy; `rules` holds only rules the settings name."""

    rules: Mapping[str, RulePolicy] = field(default_factory=dict)
    teams: Mapping[str, frozenset[str]] = field(default_factory=dict)
    secret_env: str = DEFAULT_SECRET_ENV

    def rule(self, rule_id: Any) -> RulePolicy:
        return self.rules.get(str(rule_id), RulePolicy())

    def approvers_for(self, rule_id: Any, owner_email: Any) -> set[str]:
        """Everyone who may decide an action of `rule_id` owned by `owner_email` (lower-cased emails)."""
        policy = self.rule(rule_id)
        people = set(policy.approvers)
        owner = norm_email(owner_email)
        if owner and policy.owner_approves:
            people.add(owner)
        return people

    def four_eyes(self, rule_id: Any) -> bool:
        return self.rule(rule_id).four_eyes


def _fail(target: Path, key: str, problem: str) -> ReviewConfigError:
    return ReviewConfigError(f"{target}: {key} {problem}")


def _email_list(target: Path, key: str, raw: Any) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise _fail(target, key, f"must be a list of email addresses, got {type(raw).__name__}")
    result = []
    for index, item in enumerate(raw):
        if not isinstance(item, str) or not item.strip():
            raise _fail(target, f"{key}[{index}]", f"must be a non-empty text, got {item!r}")
        result.append(item.strip())
    return result


def _check_email(target: Path, key: str, value: str) -> str:
    if not _EMAIL.match(value):
        raise _fail(target, key, f"{value!r} is not an email address")
    return norm_email(value)


def _teams(target: Path, raw: Any) -> dict[str, frozenset[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _fail(
            target, "approval.teams", f"must map team names to lists of emails, got {type(raw).__name__}"
        )
    teams: dict[str, frozenset[str]] = {}
    for name, members in raw.items():
        key = f"approval.teams.{name}"
        emails = _email_list(target, key, members)
        if not emails:
            raise _fail(target, key, "is empty; a team needs at least one member")
        teams[str(name)] = frozenset(_check_email(target, f"{key}[{i}]", e) for i, e in enumerate(emails))
    return teams


def _bool(target: Path, key: str, raw: Any, default: bool) -> bool:
    if raw is None:
        return default
    if not isinstance(raw, bool):
        raise _fail(target, key, f"must be true or false, got {raw!r}")
    return raw


def _rule(target: Path, rule_id: str, raw: Any, teams: Mapping[str, frozenset[str]]) -> RulePolicy:
    key = f"approval.rules.{rule_id}"
    if isinstance(raw, list | str):
        raw = {"approvers": raw}  # shorthand: a rule mapped straight to its approvers
    if not isinstance(raw, Mapping):
        raise _fail(
            target, key, f"must be a mapping (approvers, owner_approves, four_eyes), got {type(raw).__name__}"
        )
    unknown = sorted(str(k) for k in raw if k not in _RULE_KEYS)
    if unknown:
        raise _fail(
            target, f"{key}.{unknown[0]}", f"is not a known key; expected {', '.join(sorted(_RULE_KEYS))}"
        )
    people: set[str] = set()
    for index, entry in enumerate(_email_list(target, f"{key}.approvers", raw.get("approvers") or [])):
        entry_key = f"{key}.approvers[{index}]"
        if entry.lower().startswith(TEAM_PREFIX):
            team = entry[len(TEAM_PREFIX) :].strip()
            if team not in teams:
                known = ", ".join(sorted(teams)) or "none defined under approval.teams"
                raise _fail(target, entry_key, f"{entry!r} names an unknown team; teams: {known}")
            people |= teams[team]
        else:
            people.add(_check_email(target, entry_key, entry))
    policy = RulePolicy(
        approvers=frozenset(people),
        owner_approves=_bool(target, f"{key}.owner_approves", raw.get("owner_approves"), True),
        four_eyes=_bool(target, f"{key}.four_eyes", raw.get("four_eyes"), False),
    )
    if not policy.owner_approves and not policy.approvers:
        raise _fail(target, key, "allows nobody: owner_approves is false and no approvers are listed")
    # the owner counts as one possible approver; a second person must be named for four eyes to be possible
    possible = len(policy.approvers) + (1 if policy.owner_approves else 0)
    if policy.four_eyes and possible < 2:
        raise _fail(
            target,
            f"{key}.four_eyes",
            "needs two distinct approvers, but the rule lists fewer than two people who may approve",
        )
    return policy


def _legacy(target: Path, raw: Any) -> dict[str, frozenset[str]]:
    # the first release's `approvers: {rule_id: [emails]}`; kept so existing settings keep working
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _fail(target, "approvers", f"must map rule ids to lists of emails, got {type(raw).__name__}")
    return {
        str(rule_id): frozenset(
            _check_email(target, f"approvers.{rule_id}[{i}]", e)
            for i, e in enumerate(_email_list(target, f"approvers.{rule_id}", emails))
        )
        for rule_id, emails in raw.items()
    }


def load_policy(path: Path | None = None) -> ApprovalPolicy:
    """The validated approval policy from `actionlayer.yml` (no file or no section → owners decide)."""
    target = path if path is not None else settings_file()
    if not target.is_file():
        return ApprovalPolicy()
    try:
        settings = yaml.safe_load(target.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ReviewConfigError(f"{target}: cannot read settings: {exc}") from exc
    if not isinstance(settings, Mapping):
        raise ReviewConfigError(
            f"{target}: expected a mapping at the top level, got {type(settings).__name__}"
        )
    section = settings.get("approval")
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise _fail(
            target, "approval", f"must be a mapping (teams, rules, secret_env), got {type(section).__name__}"
        )
    unknown = sorted(str(k) for k in section if k not in _SECTION_KEYS)
    if unknown:
        raise _fail(
            target,
            f"approval.{unknown[0]}",
            f"is not a known key; expected {', '.join(sorted(_SECTION_KEYS))}",
        )
    secret_env = section.get("secret_env", DEFAULT_SECRET_ENV)
    if not isinstance(secret_env, str) or not _ENV_NAME.match(secret_env):
        # the key holds the variable's name, never the secret itself
        raise _fail(
            target, "approval.secret_env", f"must be an environment variable name, got {secret_env!r}"
        )
    teams = _teams(target, section.get("teams"))
    raw_rules = section.get("rules")
    if raw_rules is None:
        raw_rules = {}
    if not isinstance(raw_rules, Mapping):
        raise _fail(
            target, "approval.rules", f"must map rule ids to their policy, got {type(raw_rules).__name__}"
        )
    rules = {str(rule_id): _rule(target, str(rule_id), raw, teams) for rule_id, raw in raw_rules.items()}
    for rule_id, extra in _legacy(target, settings.get("approvers")).items():
        current = rules.get(rule_id, RulePolicy())
        rules[rule_id] = RulePolicy(
            approvers=current.approvers | extra,
            owner_approves=current.owner_approves,
            four_eyes=current.four_eyes,
        )
    return ApprovalPolicy(rules=rules, teams=teams, secret_env=secret_env)
