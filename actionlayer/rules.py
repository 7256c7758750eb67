"""Rule metadata as analysts declare it in each rule model's YAML `config.meta`, read from dbt's manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actionlayer.config import dbt_project_dir

LEVELS = {1: "view", 2: "recommend", 3: "approve then execute", 4: "auto", 5: "learn"}
CHANNELS = ("email", "task", "notify")
AUDIENCES = ("contact", "owner")


class RuleConfigError(ValueError):
    """A rule's YAML meta is missing a key or holds a value outside its domain."""


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
    return dbt_project_dir() / "target" / "manifest.json"


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
    )


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
