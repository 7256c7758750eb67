"""Reads `actionlayer.yml` (path from ACTIONLAYER_CONFIG): the sources and which canonical object each
one provides. Secrets are never in this file, only the names of the environment variables that hold them.

    sources:
      crm:
        type: hubspot            # files | zoho | hubspot | postgres
        token_env: HUBSPOT_TOKEN
        objects: [accounts, contacts, deals, activities, tickets]
      billing:
        type: postgres
        dsn_env: BILLING_DSN
        objects:
          invoices: {table: public.invoices, updated_column: updated_at}

With no file, or no `sources:` section, the loop reads the contract folder (ACTIONLAYER_SOR) as before.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from actionlayer.config import settings_file
from actionlayer.contract import OBJECT_NAMES

# type → "module:Class" whose `from_config(name, config, environ)` builds the connector
CONNECTOR_TYPES = {
    "zoho": "connectors.zoho:ZohoConnector",
    "hubspot": "connectors.hubspot:HubSpotConnector",
    "postgres": "connectors.postgres:PostgresConnector",
}
SOURCE_TYPES = ("files", *CONNECTOR_TYPES)


class SettingsError(ValueError):
    """The settings file is unreadable or a key is missing or invalid; the message names the key."""


@dataclass(frozen=True)
class SourceSettings:
    name: str
    type: str
    objects: tuple[str, ...]
    config: Mapping[str, Any]

    def connector(self, environ: Mapping[str, str] | None = None) -> Any:
        """Build this source's connector (not for `files`, which is read by connectors/files.py)."""
        if self.type == "files":
            raise SettingsError(
                f"sources.{self.name}: a files source has no connector; it is read as a folder"
            )
        module_name, class_name = CONNECTOR_TYPES[self.type].split(":")
        factory = getattr(importlib.import_module(module_name), class_name)
        # `type` chose the connector; the connector validates only its own keys
        config = {key: value for key, value in self.config.items() if key != "type"}
        return factory.from_config(self.name, config, environ if environ is not None else os.environ)


def read_settings(path: Path | None = None) -> dict[str, Any]:
    """The whole settings file as a mapping ({} when there is none)."""
    target = path or settings_file()
    if not target.exists():
        return {}
    try:
        loaded = yaml.safe_load(target.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{target}: cannot read settings: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise SettingsError(f"{target}: expected a mapping at the top level, got {type(loaded).__name__}")
    return dict(loaded)


def _objects_of(name: str, raw: Mapping[str, Any], target: Path) -> tuple[str, ...]:
    objects = raw.get("objects")
    if objects is None:
        return tuple(OBJECT_NAMES) if raw.get("type") == "files" else ()
    names = list(objects) if isinstance(objects, Mapping | list | tuple) else None
    if names is None:
        raise SettingsError(
            f"{target}: sources.{name}.objects must be a list or a mapping of canonical objects"
        )
    unknown = [o for o in names if o not in OBJECT_NAMES]
    if unknown:
        raise SettingsError(
            f"{target}: sources.{name}.objects names unknown objects {unknown}; canonical objects are {list(OBJECT_NAMES)}"
        )
    return tuple(names)


def load_sources(path: Path | None = None) -> list[SourceSettings]:
    """The configured sources, validated: known types, canonical objects, each object from one source."""
    target = path or settings_file()
    section = read_settings(target).get("sources")
    if section is None:
        return []
    if not isinstance(section, Mapping) or not section:
        raise SettingsError(f"{target}: sources must be a mapping of source name to its settings")
    sources: list[SourceSettings] = []
    provider: dict[str, str] = {}
    for name, raw in section.items():
        if not isinstance(raw, Mapping):
            raise SettingsError(f"{target}: sources.{name} must be a mapping")
        kind = raw.get("type")
        if kind not in SOURCE_TYPES:
            raise SettingsError(
                f"{target}: sources.{name}.type is {kind!r}; expected one of {list(SOURCE_TYPES)}"
            )
        objects = _objects_of(str(name), raw, target)
        if not objects:
            raise SettingsError(
                f"{target}: sources.{name}.objects is missing: name the canonical objects it provides"
            )
        for obj in objects:
            if obj in provider:
                raise SettingsError(
                    f"{target}: sources.{name}.objects: {obj} is already provided by source {provider[obj]}"
                )
            provider[obj] = str(name)
        sources.append(SourceSettings(name=str(name), type=str(kind), objects=objects, config=dict(raw)))
    return sources


DEFAULT_MAX_BROKEN_SHARE = 0.25


@dataclass(frozen=True)
class QualityPolicy:
    """The blocking quality gate: an object whose share of broken rows in one load exceeds its limit is
    refused (its last good copy stays) and the rules that read it are skipped until a load passes.

        quality:
          max_broken_share: 0.25      # default for every object (0 < share <= 1)
          objects:
            invoices: {max_broken_share: 0.05}
    """

    max_broken_share: float = DEFAULT_MAX_BROKEN_SHARE
    per_object: Mapping[str, float] | None = None

    def limit_for(self, object_name: str) -> float:
        return (self.per_object or {}).get(object_name, self.max_broken_share)


def _share(value: Any, key: str, target: Path) -> float:
    if isinstance(value, bool):
        raise SettingsError(f"{target}: {key} must be a share between 0 and 1, got {value!r}")
    try:
        share = float(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{target}: {key} must be a share between 0 and 1, got {value!r}") from exc
    if not 0 < share <= 1:
        raise SettingsError(f"{target}: {key} must be a share above 0 and at most 1, got {value!r}")
    return share


def load_quality_policy(path: Path | None = None) -> QualityPolicy:
    """The `quality:` section of the settings file (defaults when there is none); errors name the key."""
    target = path or settings_file()
    raw = read_settings(target).get("quality")
    if raw is None:
        return QualityPolicy()
    if not isinstance(raw, Mapping):
        raise SettingsError(f"{target}: key 'quality' must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - {"max_broken_share", "objects"})
    if unknown:
        raise SettingsError(
            f"{target}: unknown key(s) quality.{', quality.'.join(unknown)}; expected max_broken_share, objects"
        )
    default = _share(
        raw.get("max_broken_share", DEFAULT_MAX_BROKEN_SHARE), "quality.max_broken_share", target
    )
    objects = raw.get("objects") or {}
    if not isinstance(objects, Mapping):
        raise SettingsError(f"{target}: key 'quality.objects' must be a mapping of object → settings")
    per_object: dict[str, float] = {}
    for name, entry in objects.items():
        where = f"quality.objects.{name}"
        if name not in OBJECT_NAMES:
            raise SettingsError(
                f"{target}: {where}: unknown object; the contract has {', '.join(OBJECT_NAMES)}"
            )
        if not isinstance(entry, Mapping) or set(entry) - {"max_broken_share"}:
            raise SettingsError(
                f"{target}: {where} must be a mapping with max_broken_share only, got {entry!r}"
            )
        if "max_broken_share" in entry:
            per_object[str(name)] = _share(entry["max_broken_share"], f"{where}.max_broken_share", target)
    return QualityPolicy(default, per_object)


@dataclass(frozen=True)
class EscalationRoutes:
    """Who an escalated action goes to when its rule says `to: manager`, and who receives alerts.

    escalation:
      managers: {alice@example.com: head.sales@example.com}
      default_manager: head.sales@example.com    # owners without an entry
    alerts:
      to: data-team@example.com                  # blast-radius and daily-cap alerts
    """

    managers: Mapping[str, str] | None = None
    default_manager: str | None = None
    alerts_to: str = "actionlayer-alerts"

    def manager_of(self, owner: str | None) -> str | None:
        key = (owner or "").strip().lower()
        return (self.managers or {}).get(key) or self.default_manager


def _email(value: Any, key: str, target: Path) -> str:
    text = str(value or "").strip().lower()
    if "@" not in text or any(ch.isspace() for ch in text):
        raise SettingsError(f"{target}: {key} = {value!r} is not an email address")
    return text


def load_escalation_routes(path: Path | None = None) -> EscalationRoutes:
    """The `escalation:` and `alerts:` sections (defaults when absent); errors name the key."""
    target = path or settings_file()
    settings = read_settings(target)
    raw = settings.get("escalation") or {}
    if not isinstance(raw, Mapping):
        raise SettingsError(f"{target}: key 'escalation' must be a mapping")
    unknown = sorted(set(raw) - {"managers", "default_manager"})
    if unknown:
        raise SettingsError(f"{target}: unknown key(s) escalation.{', escalation.'.join(unknown)}")
    managers_raw = raw.get("managers") or {}
    if not isinstance(managers_raw, Mapping):
        raise SettingsError(f"{target}: key 'escalation.managers' must map owner email → manager email")
    managers = {
        _email(owner, f"escalation.managers key {owner!r}", target): _email(
            manager, f"escalation.managers.{owner}", target
        )
        for owner, manager in managers_raw.items()
    }
    default = raw.get("default_manager")
    alerts = settings.get("alerts") or {}
    if not isinstance(alerts, Mapping) or set(alerts) - {"to"}:
        raise SettingsError(f"{target}: key 'alerts' must be a mapping with 'to' only, got {alerts!r}")
    return EscalationRoutes(
        managers=managers,
        default_manager=_email(default, "escalation.default_manager", target) if default else None,
        alerts_to=_email(alerts["to"], "alerts.to", target) if alerts.get("to") else "actionlayer-alerts",
    )
