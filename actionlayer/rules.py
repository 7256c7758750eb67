"""Rule metadata as analysts declare it in each rule model's YAML `config.meta`, read from dbt's manifest."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actionlayer import learning
from actionlayer.config import dbt_target_dir

LEVELS = {1: "view", 2: "recommend", 3: "approve then execute", 4: "auto", 5: "learn"}
CHANNELS = ("email", "task", "notify")
AUDIENCES = ("contact", "owner")
#: Channels a level-5 rule may learn over: the rule channels plus those with a dedicated sink in
#: action_sinks/registry.py (SINK_NAMES: line, slack, webhook, crm_task; smtp serves email, file any channel).
LEARNING_CHANNELS = (*CHANNELS, "line", "slack", "webhook", "crm_task")
_LEARNING_KEYS = {"segment_by", "arms", "windows", "exploration_floor", "prior"}


class RuleConfigError(ValueError):
    """A rule's YAML meta is missing a key or holds a value outside its domain."""


@dataclass(frozen=True)
class Guardrails:
    """What lets a level-4/5 rule act without a person: at most `daily_cap` automatic actions per day,
    and the blast-radius guard: when a pass brings more than `blast_factor` × the trailing median of the
    rule's last `blast_window` passes (and more than `blast_floor`), its automatic actions are held for
    review and an alert goes out. Declared in the rule's YAML:

        guardrails:
          daily_cap: 100
          blast_radius: {factor: 3, floor: 20, window: 7}
    """

    daily_cap: int
    blast_factor: float
    blast_floor: int
    blast_window: int = 7


@dataclass(frozen=True)
class EscalationRule:
    """When an action goes to a named human first (`escalate_when` in the rule's YAML):

    escalate_when:
      severity: true                       # the rule SQL's `escalate` column (its severity threshold)
      keywords: [cancel, refund, lawyer, complaint]
      patterns: ['charge ?back']           # regular expressions, case-insensitive
      fields: [comment]                    # reason fields whose text is searched
      to: manager                          # owner | manager (actionlayer.yml escalation.managers)
    """

    severity: bool = True
    keywords: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    to: str = "owner"


@dataclass(frozen=True)
class Rule:
    rule_id: str
    model_name: str
    version: int
    maturity_level: int
    channel: str
    audience: str
    category: str
    priority: int
    cooldown_days: int
    holdout_share: float
    review_expiry_days: int
    recommended_action: str
    template_subject: str
    template_body: str
    outcome: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    guardrails: Guardrails | None = None
    escalation: EscalationRule = field(default_factory=EscalationRule)
    template_format: str = "text"  # text | html (the body is rendered with autoescaping)
    learning: learning.LearningConfig | None = None  # level 5 only: what the policy learns over

    @property
    def mode(self) -> str:
        return LEVELS[self.maturity_level]

    @property
    def needs_review(self) -> bool:
        return self.maturity_level in (2, 3)

    @property
    def dispatchable(self) -> bool:
        return self.maturity_level >= 3


def manifest_path() -> Path:
    return dbt_target_dir() / "manifest.json"


def _require(meta: dict[str, Any], key: str, model: str, kind: type) -> Any:
    if key not in meta or meta[key] is None:
        raise RuleConfigError(f"rule model {model}: config.meta.{key} is missing")
    value = meta[key]
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise RuleConfigError(
            f"rule model {model}: config.meta.{key} = {value!r} is not a {kind.__name__}"
        ) from exc


def rule_from_meta(model_name: str, meta: dict[str, Any], description: str = "") -> Rule:
    """Validate one rule's meta block; errors name the model, the key and the value."""
    level = _require(meta, "maturity_level", model_name, int)
    if level not in LEVELS:
        raise RuleConfigError(f"rule model {model_name}: maturity_level {level} is not one of 1–5")
    channel = _require(meta, "channel", model_name, str)
    if channel not in CHANNELS:
        raise RuleConfigError(f"rule model {model_name}: channel {channel!r} is not one of {CHANNELS}")
    audience = _require(meta, "audience", model_name, str)
    if audience not in AUDIENCES:
        raise RuleConfigError(f"rule model {model_name}: audience {audience!r} is not one of {AUDIENCES}")
    holdout = _require(meta, "holdout_share", model_name, float)
    if not 0 <= holdout < 1:
        raise RuleConfigError(f"rule model {model_name}: holdout_share {holdout} must be in [0, 1)")
    template = meta.get("template") or {}
    if not template.get("subject") or not template.get("body"):
        raise RuleConfigError(f"rule model {model_name}: config.meta.template needs a subject and a body")
    template_format = str(template.get("format", "text"))
    if template_format not in ("text", "html"):
        raise RuleConfigError(
            f"rule model {model_name}: config.meta.template.format = {template_format!r} is not text or html"
        )
    guardrails = _guardrails(model_name, meta.get("guardrails"), level)
    escalation = _escalation(model_name, meta.get("escalate_when"))
    learning_config = _learning(model_name, meta.get("learning"), level, channel)
    return Rule(
        rule_id=_require(meta, "rule_id", model_name, str),
        model_name=model_name,
        version=_require(meta, "version", model_name, int),
        maturity_level=level,
        channel=channel,
        audience=audience,
        category=_require(meta, "category", model_name, str),
        priority=_require(meta, "priority", model_name, int),
        cooldown_days=_require(meta, "cooldown_days", model_name, int),
        holdout_share=holdout,
        review_expiry_days=int(meta.get("review_expiry_days") or 7),
        recommended_action=_require(meta, "recommended_action", model_name, str),
        template_subject=str(template["subject"]),
        template_body=str(template["body"]),
        outcome=dict(meta.get("outcome") or {}),
        description=description,
        guardrails=guardrails,
        escalation=escalation,
        template_format=template_format,
        learning=learning_config,
    )


def _number(model: str, key: str, value: Any, kind: type, minimum: float) -> Any:
    if isinstance(value, bool):
        raise RuleConfigError(f"rule model {model}: config.meta.{key} = {value!r} is not a number")
    try:
        number = kind(value)
    except (TypeError, ValueError) as exc:
        raise RuleConfigError(
            f"rule model {model}: config.meta.{key} = {value!r} is not a {kind.__name__}"
        ) from exc
    if number < minimum:
        raise RuleConfigError(f"rule model {model}: config.meta.{key} = {value!r} must be at least {minimum}")
    return number


def _guardrails(model: str, raw: Any, level: int) -> Guardrails | None:
    """Level 4 and 5 act without a person, so their guardrails must be declared, not defaulted."""
    if raw is None:
        if level >= 4:
            raise RuleConfigError(
                f"rule model {model}: a level-{level} rule acts automatically and must declare its guardrails: "
                "config.meta.guardrails.daily_cap and config.meta.guardrails.blast_radius {factor, floor}; "
                "the rule was refused"
            )
        return None
    if not isinstance(raw, dict):
        raise RuleConfigError(f"rule model {model}: config.meta.guardrails must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - {"daily_cap", "blast_radius"})
    if unknown:
        raise RuleConfigError(
            f"rule model {model}: unknown key(s) config.meta.guardrails.{', '.join(unknown)}"
        )
    missing = [key for key in ("daily_cap", "blast_radius") if raw.get(key) is None]
    blast = raw.get("blast_radius") or {}
    if not isinstance(blast, dict):
        raise RuleConfigError(f"rule model {model}: config.meta.guardrails.blast_radius must be a mapping")
    missing += [f"blast_radius.{key}" for key in ("factor", "floor") if blast and blast.get(key) is None]
    if missing:
        raise RuleConfigError(
            f"rule model {model}: config.meta.guardrails lacks {', '.join(missing)}; the rule was refused"
        )
    unknown = sorted(set(blast) - {"factor", "floor", "window"})
    if unknown:
        raise RuleConfigError(
            f"rule model {model}: unknown key(s) config.meta.guardrails.blast_radius.{', '.join(unknown)}"
        )
    return Guardrails(
        daily_cap=_number(model, "guardrails.daily_cap", raw["daily_cap"], int, 1),
        blast_factor=_number(model, "guardrails.blast_radius.factor", blast["factor"], float, 1),
        blast_floor=_number(model, "guardrails.blast_radius.floor", blast["floor"], int, 0),
        blast_window=_number(model, "guardrails.blast_radius.window", blast.get("window", 7), int, 1),
    )


def _texts(model: str, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise RuleConfigError(f"rule model {model}: config.meta.escalate_when.{key} must be a list of texts")
    return tuple(item.strip() for item in value)


def _escalation(model: str, raw: Any) -> EscalationRule:
    if raw is None:
        return EscalationRule()
    if not isinstance(raw, dict):
        raise RuleConfigError(f"rule model {model}: config.meta.escalate_when must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - {"severity", "keywords", "patterns", "fields", "to"})
    if unknown:
        raise RuleConfigError(
            f"rule model {model}: unknown key(s) config.meta.escalate_when.{', '.join(unknown)}"
        )
    patterns = _texts(model, "patterns", raw.get("patterns"))
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise RuleConfigError(
                f"rule model {model}: config.meta.escalate_when.patterns: {pattern!r} is not a valid "
                f"regular expression ({exc})"
            ) from exc
    keywords = _texts(model, "keywords", raw.get("keywords"))
    fields = _texts(model, "fields", raw.get("fields"))
    if (keywords or patterns) and not fields:
        raise RuleConfigError(
            f"rule model {model}: config.meta.escalate_when has keywords or patterns but no fields to search"
        )
    to = str(raw.get("to", "owner"))
    if to not in ("owner", "manager"):
        raise RuleConfigError(
            f"rule model {model}: config.meta.escalate_when.to = {to!r} is not owner or manager"
        )
    severity = raw.get("severity", True)
    if not isinstance(severity, bool):
        raise RuleConfigError(f"rule model {model}: config.meta.escalate_when.severity must be true or false")
    return EscalationRule(severity=severity, keywords=keywords, patterns=patterns, fields=fields, to=to)


def _learning(model: str, raw: Any, level: int, rule_channel: str) -> learning.LearningConfig | None:
    """A level-5 rule learns its channel and send window, so it must say over which arms:

    learning:
      segment_by: tier                       # candidate column or reason key (optional)
      arms:
        channel: [email, line]               # optional: default the rule's channel
        send_window: [morning, afternoon]    # optional: default anytime
      windows: {morning: [8, 12], afternoon: [13, 17]}   # optional: defaults in learning.DEFAULT_WINDOWS
      exploration_floor: 0.1                 # optional, in [0, 1)
      prior: {alpha: 1, beta: 1}             # optional, both > 0
    """
    where = f"rule model {model}: config.meta.learning"
    if raw is None:
        if level == 5:
            raise RuleConfigError(
                f"rule model {model}: a level-5 rule learns its channel and send time and must declare "
                "config.meta.learning with at least learning.arms (channel and/or send_window); the rule was refused"
            )
        return None
    if level != 5:
        raise RuleConfigError(
            f"{where} is only for level-5 rules (this one is level {level}); remove it or raise maturity_level"
        )
    if not isinstance(raw, dict):
        raise RuleConfigError(f"{where} must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - _LEARNING_KEYS)
    if unknown:
        raise RuleConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {sorted(_LEARNING_KEYS)}"
        )
    segment_by = raw.get("segment_by")
    if segment_by is not None and (not isinstance(segment_by, str) or not segment_by.strip()):
        raise RuleConfigError(f"{where}.segment_by must be a column or reason key name, got {segment_by!r}")

    arms = raw.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise RuleConfigError(
            f"{where}.arms must be a mapping with channel and/or send_window lists, got {arms!r}"
        )
    unknown = sorted(set(arms) - {"channel", "send_window"})
    if unknown:
        raise RuleConfigError(
            f"{where}.arms: unknown key(s) {', '.join(unknown)}; expected channel and/or send_window"
        )
    channels = _arm_list(where, "channel", arms.get("channel", [rule_channel]))
    bad = [name for name in channels if name not in LEARNING_CHANNELS]
    if bad:
        raise RuleConfigError(
            f"{where}.arms.channel: {', '.join(map(repr, bad))} is not a channel the sink registry knows "
            f"({', '.join(LEARNING_CHANNELS)})"
        )
    window_names = _arm_list(where, "send_window", arms.get("send_window", [learning.ANYTIME]))

    declared = raw.get("windows") or {}
    if not isinstance(declared, dict):
        raise RuleConfigError(
            f"{where}.windows must map window name → [start hour, end hour], got {declared!r}"
        )
    hours = {**learning.DEFAULT_WINDOWS, **{str(k): v for k, v in declared.items()}}
    windows = []
    for name in window_names:
        if name not in hours:
            raise RuleConfigError(
                f"{where}.arms.send_window: window {name!r} is neither declared in learning.windows nor one of "
                f"the defaults ({', '.join(learning.DEFAULT_WINDOWS)})"
            )
        windows.append(_window(where, name, hours[name]))
    for name in declared:  # a declared but unused window is still checked: it is probably about to be used
        _window(where, str(name), declared[name])

    floor = raw.get("exploration_floor", 0.1)
    if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0 <= floor < 1:
        raise RuleConfigError(f"{where}.exploration_floor = {floor!r} must be a number in [0, 1)")
    prior = raw.get("prior") or {}
    if not isinstance(prior, dict):
        raise RuleConfigError(f"{where}.prior must be a mapping {{alpha, beta}}, got {prior!r}")
    unknown = sorted(set(prior) - {"alpha", "beta"})
    if unknown:
        raise RuleConfigError(f"{where}.prior: unknown key(s) {', '.join(unknown)}; expected alpha and beta")
    alpha, beta = prior.get("alpha", 1), prior.get("beta", 1)
    for key, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise RuleConfigError(f"{where}.prior.{key} = {value!r} must be a number > 0")
    return learning.LearningConfig(
        channels=channels,
        windows=tuple(windows),
        segment_by=segment_by.strip() if segment_by else None,
        exploration_floor=float(floor),
        prior_alpha=float(alpha),
        prior_beta=float(beta),
    )


def _arm_list(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise RuleConfigError(f"{where}.arms.{key} must be a non-empty list, got {value!r}")
    if not all(isinstance(item, str) and item.strip() and "@" not in item for item in value):
        raise RuleConfigError(f"{where}.arms.{key} must list names (texts without '@'), got {value!r}")
    names = tuple(item.strip() for item in value)
    if len(set(names)) != len(names):
        raise RuleConfigError(f"{where}.arms.{key} lists a name twice: {value!r}")
    return names


def _window(where: str, name: str, value: Any) -> learning.SendWindow:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(h, int) and not isinstance(h, bool) for h in value)
        or not 0 <= value[0] < value[1] <= 24
    ):
        raise RuleConfigError(
            f"{where}.windows.{name} = {value!r} must be [start hour, end hour] with whole hours "
            "0 <= start < end <= 24 (local time; windows across midnight are not supported)"
        )
    return learning.SendWindow(name, int(value[0]), int(value[1]))


def load_rules(path: Path | None = None) -> dict[str, Rule]:
    """Every rule model in the manifest, keyed by rule_id."""
    target = path or manifest_path()
    if not target.exists():
        raise FileNotFoundError(f"dbt manifest {target} not found: run `dbt parse` (the CLI does it for you)")
    manifest = json.loads(target.read_text())
    rules: dict[str, Rule] = {}
    for node in manifest.get("nodes", {}).values():
        if node.get("resource_type") != "model":
            continue
        meta = (node.get("config") or {}).get("meta") or node.get("meta") or {}
        if "rule_id" not in meta:
            continue
        rule = rule_from_meta(node["name"], meta, node.get("description") or "")
        if rule.rule_id in rules:
            raise RuleConfigError(
                f"rule_id {rule.rule_id!r} is declared by both {rules[rule.rule_id].model_name} and {node['name']}"
            )
        rules[rule.rule_id] = rule
    return rules
