"""HubSpot CRM (API v3) as a source of canonical objects.

One responsibility: read HubSpot records and hand them to the sync as canonical contract text. The parts
are kept apart: `HttpTransport` (retries, Retry-After, rate limits; one transport for the search endpoint's
own low per-second limit), paging (`after` tokens), the incremental cursor (`SourceState`) and the mapping
(`HubSpotMapping`, loaded from connectors/mappings/hubspot.yml and validated at start).

Reads:
- Full read (cursor None): one cheap search for the newest modified time (the watermark the next
  incremental read starts from), then the list endpoint page by page with associations inline.
- Incremental read: the search endpoint filtered on modified time >= the watermark minus
  `overlap_seconds` (default 300), sorted ascending. HubSpot's search index trails writes, so an edit can
  become searchable after a newer one was already read; the look-back re-reads that window and the cursor
  remembers which (id, modified time) pairs it already delivered, so a late edit lands once and a re-read
  one not at all. After every page the query restarts from the newest modified time seen (keyset paging),
  so a record modified while we page cannot shift the result window and make us skip another one, and no
  query comes near HubSpot's 10,000-result cap. More records sharing one millisecond than a page holds
  are walked by `hs_object_id` within that millisecond (search takes one sort only, so the id is a filter
  bound), so any number of ties completes. Search results carry no associations: they are read with the
  v4 batch associations endpoint.
- Deletions: HubSpot archives records; archived records with `archivedAt` after the deletion watermark
  (minus the same look-back, de-duplicated the same way) become `deleted_keys`, after the upserts.
- Owners: active and deactivated (archived) owners both resolve to their email; a read that meets records
  of deactivated owners says so in a warning naming them.

Values are converted to contract text but never validated: whatever does not parse passes through as
text for the sync to quarantine, and unmapped picklist values pass through unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from actionlayer.contract import OBJECTS, Kind, SorObject
from connectors.base import (
    DEFAULT_OVERLAP_SECONDS,
    ConnectorConfigError,
    ConnectorError,
    Page,
    Record,
    SyncPlan,
    overlap_setting,
)
from connectors.transport import HTTPStatusError, HttpTransport, RetryPolicy

log = logging.getLogger(__name__)

DEFAULT_MAPPING = Path(__file__).parent / "mappings" / "hubspot.yml"
DEFAULT_API_BASE = "https://api.hubapi.com"
LIST_PAGE_MAX = 100  # HubSpot's maximum `limit` for list endpoints
SEARCH_PAGE_MAX = 200  # and for the search endpoint
SEARCH_RESULT_CAP = 10_000  # a search query cannot page past this many results (400 beyond)
ASSOCIATION_BATCH = 100
CURSOR_VERSION = 2  # 2: the watermark keeps (id -> modified time) for the look-back window; 1 still loads
# Properties HubSpot returns whether asked or not; they are not drift.
ALWAYS_RETURNED = frozenset(
    {"hs_object_id", "createdate", "hs_createdate", "hs_lastmodifieddate", "lastmodifieddate"}
)
TRANSFORMS = frozenset({"timezone"})
CONFIG_KEYS = frozenset(
    {
        "api_base",
        "token_env",
        "objects",
        "object_types",
        "mapping",
        "search_rate_per_second",
        "rate_per_second",
        "timeout",
        "page_size",
        "search_cap",
        "max_attempts",
        "retry_wait",
        "overlap_seconds",
    }
)


# --------------------------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class ColumnSpec:
    """Where one canonical column comes from (exactly one of id, property, association, constant)."""

    column: str
    kind: Kind
    id: bool = False
    property: str | None = None
    association: str | None = None
    constant: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)
    owner: bool = False
    transform: str | None = None
    when: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceSpec:
    """One HubSpot object type feeding a canonical object."""

    object_type: str
    modified_property: str
    columns: tuple[ColumnSpec, ...]
    customer_defined: bool = False

    @property
    def properties(self) -> list[str]:
        """Properties to request: mapped ones, `when` conditions and the modified time."""
        names = {self.modified_property}
        for spec in self.columns:
            if spec.property:
                names.add(spec.property)
            names.update(spec.when)
        return sorted(names)

    @property
    def associations(self) -> list[str]:
        return sorted({spec.association for spec in self.columns if spec.association})

    @property
    def needs_owners(self) -> bool:
        return any(spec.owner for spec in self.columns)


@dataclass(frozen=True)
class ObjectSpec:
    name: str
    sources: tuple[SourceSpec, ...]

    @property
    def customer_defined(self) -> bool:
        return any(source.customer_defined for source in self.sources)


@dataclass(frozen=True)
class HubSpotMapping:
    path: Path
    objects: dict[str, ObjectSpec]

    def with_object_types(self, object_types: Mapping[str, str]) -> HubSpotMapping:
        """A copy whose single-source objects read the given object types (custom object ids)."""
        objects = dict(self.objects)
        for name, object_type in object_types.items():
            spec = objects[name]
            objects[name] = ObjectSpec(
                name, tuple(_replace_type(source, object_type) for source in spec.sources)
            )
        return HubSpotMapping(self.path, objects)


def _replace_type(source: SourceSpec, object_type: str) -> SourceSpec:
    return SourceSpec(object_type, source.modified_property, source.columns, customer_defined=False)


class _MappingError(ConnectorConfigError):
    def __init__(self, path: Path, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")


def load_mapping(path: str | Path = DEFAULT_MAPPING) -> HubSpotMapping:
    """Read and validate a HubSpot mapping file; errors name the file and the key."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConnectorConfigError(f"mapping: cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConnectorConfigError(f"mapping: {path} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("objects"), dict):
        raise _MappingError(path, "objects", "missing or not a mapping of canonical object -> sources")
    objects: dict[str, ObjectSpec] = {}
    for name, body in document["objects"].items():
        key = f"objects.{name}"
        if name not in OBJECTS:
            raise _MappingError(path, key, f"not a canonical object (known: {', '.join(OBJECTS)})")
        if not isinstance(body, dict) or not isinstance(body.get("sources"), list) or not body["sources"]:
            raise _MappingError(path, f"{key}.sources", "missing or not a non-empty list")
        sources = tuple(
            _load_source(path, f"{key}.sources[{index}]", OBJECTS[name], source)
            for index, source in enumerate(body["sources"])
        )
        objects[name] = ObjectSpec(name, sources)
    return HubSpotMapping(path, objects)


def _load_source(path: Path, key: str, obj: SorObject, body: Any) -> SourceSpec:
    if not isinstance(body, dict):
        raise _MappingError(path, key, "not a mapping")
    for required in ("object_type", "modified_property"):
        if not isinstance(body.get(required), str) or not body[required].strip():
            raise _MappingError(path, f"{key}.{required}", "missing or not a non-empty string")
    unknown = set(body) - {"object_type", "modified_property", "columns", "customer_defined"}
    if unknown:
        raise _MappingError(path, f"{key}.{sorted(unknown)[0]}", "unknown key")
    columns = body.get("columns")
    if not isinstance(columns, dict):
        raise _MappingError(path, f"{key}.columns", "missing or not a mapping of column -> spec")
    specs = []
    for column, raw in columns.items():
        ckey = f"{key}.columns.{column}"
        if column not in obj.column_names:
            raise _MappingError(path, ckey, f"{obj.name} has no such column ({', '.join(obj.column_names)})")
        specs.append(_load_column(path, ckey, obj, column, raw))
    missing = [name for name in obj.required_columns if name not in columns]
    if missing:
        raise _MappingError(path, f"{key}.columns", f"required column(s) not mapped: {', '.join(missing)}")
    key_specs = [spec for spec in specs if spec.column == obj.key]
    if not key_specs or not key_specs[0].id:
        raise _MappingError(path, f"{key}.columns.{obj.key}", "the key must be mapped with `id: true`")
    return SourceSpec(
        body["object_type"], body["modified_property"], tuple(specs), bool(body.get("customer_defined"))
    )


def _load_column(path: Path, key: str, obj: SorObject, column: str, raw: Any) -> ColumnSpec:
    kind = obj.column(column).kind
    if raw is None:  # explicitly always null (e.g. notes have no subject)
        return ColumnSpec(column, kind, constant=None)
    if not isinstance(raw, dict):
        raise _MappingError(path, key, "not a mapping")
    unknown = set(raw) - {"id", "property", "association", "constant", "values", "owner", "transform", "when"}
    if unknown:
        raise _MappingError(path, f"{key}.{sorted(unknown)[0]}", "unknown key")
    sources = [name for name in ("id", "property", "association", "constant") if name in raw]
    if len(sources) != 1:
        raise _MappingError(path, key, "needs exactly one of id, property, association, constant")
    for name in ("property", "association"):
        if name in raw and (not isinstance(raw[name], str) or not raw[name].strip()):
            raise _MappingError(path, f"{key}.{name}", "not a non-empty string")
    domain = obj.column(column).domain
    values = raw.get("values") or {}
    if not isinstance(values, dict):
        raise _MappingError(path, f"{key}.values", "not a mapping of vendor value -> canonical value")
    for vendor, canonical in values.items():
        if domain is not None and str(canonical) not in domain:
            raise _MappingError(
                path, f"{key}.values.{vendor}", f"{canonical!r} is not in {column}'s domain {domain}"
            )
    constant = raw.get("constant")
    if constant is not None and domain is not None and str(constant) not in domain:
        raise _MappingError(path, f"{key}.constant", f"{constant!r} is not in {column}'s domain {domain}")
    transform = raw.get("transform")
    if transform is not None and transform not in TRANSFORMS:
        raise _MappingError(path, f"{key}.transform", f"unknown transform (known: {', '.join(TRANSFORMS)})")
    when = raw.get("when") or {}
    if not isinstance(when, dict):
        raise _MappingError(path, f"{key}.when", "not a mapping of property -> value")
    return ColumnSpec(
        column,
        kind,
        id=bool(raw.get("id")),
        property=raw.get("property"),
        association=raw.get("association"),
        constant=None if constant is None else str(constant),
        values={str(k): str(v) for k, v in values.items()},
        owner=bool(raw.get("owner")),
        transform=transform,
        when={str(k): str(v) for k, v in when.items()},
    )


# ------------------------------------------------------------------------------------ value conversion


def text(value: Any) -> str | None:
    """Any JSON value as text; a property that changed type still reaches the sync as text."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def timestamp_text(value: Any) -> str | None:
    """HubSpot datetimes (ISO with Z, epoch milliseconds, bare dates) as ISO 8601 with an offset."""
    raw = text(value)
    if raw is None:
        return None
    stripped = raw.strip()
    moment: datetime
    try:
        if stripped.isdigit() and len(stripped) >= 11:
            moment = datetime.fromtimestamp(int(stripped) / 1000, UTC)
        elif len(stripped) == 10:
            moment = datetime.combine(date.fromisoformat(stripped), datetime.min.time(), UTC)
        else:
            moment = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return raw  # not a timestamp: the sync quarantines it with the raw value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the contract reads a timestamp without offset as UTC
    return moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")


def timestamp_ms(value: Any) -> int | None:
    """Epoch milliseconds of a HubSpot datetime, or None when it does not parse."""
    converted = timestamp_text(value)
    if converted is None:
        return None
    try:
        return int(datetime.fromisoformat(converted).timestamp() * 1000)
    except ValueError:
        return None


def bool_text(value: Any) -> str | None:
    raw = text(value)
    if raw is not None and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower()
    return raw


def money_text(value: Any) -> str | None:
    """A plain decimal (no exponent); anything that does not parse passes through."""
    raw = text(value)
    if raw is None:
        return None
    try:
        number = Decimal(raw.strip())
    except InvalidOperation:
        return raw
    if not number.is_finite():
        return raw
    return format(number, "f")


# HubSpot spells an IANA name in lower case with its punctuation written out: "/" as _slash_ and "-" as
# _hyphen_ (america_slash_port_hyphen_au_hyphen_prince). Its option list holds no "+"; an Etc/GMT+n zone
# is written with _plus_ by the same rule, and _minus_ is read as "-" too. Underscores stay underscores.
_TZ_CODES = (("/", "_slash_"), ("-", "_hyphen_"), ("+", "_plus_"))
# Options HubSpot still offers whose zone left the tz database: the zone they were a link to.
_TZ_RETIRED = {"us/pacific-new": "America/Los_Angeles"}


@cache
def _zones_by_lower() -> dict[str, str]:
    zones = {zone.lower(): zone for zone in zoneinfo.available_timezones()}
    return {**{k: v for k, v in _TZ_RETIRED.items() if v in zones.values()}, **zones}


def timezone_text(value: Any) -> str | None:
    """HubSpot's time zone option (america_slash_port_hyphen_au_hyphen_prince) as the IANA name
    (America/Port-au-Prince); an IANA name passes as itself, anything else passes through unchanged."""
    raw = text(value)
    if raw is None:
        return None
    candidate = raw.strip().lower().replace("_minus_", "-")
    for char, code in _TZ_CODES:
        candidate = candidate.replace(code, char)
    return _zones_by_lower().get(candidate, raw)


def hubspot_timezone(zone: str) -> str:
    """The reverse of `timezone_text`: an IANA name as HubSpot's option value."""
    encoded = zone.lower()
    for char, code in _TZ_CODES:
        encoded = encoded.replace(char, code)
    return encoded


# --------------------------------------------------------------------------------------------- cursor


@dataclass
class Watermark:
    """Newest time seen (`ms`) and, per id, the newest time it was delivered at (`recent`).

    A read re-reads from `ms` minus the look-back; a record is new unless `recent` holds its id at the
    same or a later time, so a late-visible change lands once and a re-read one not at all. Entries older
    than the look-back are dropped when the cursor is written (nothing older is re-read)."""

    ms: int = 0
    recent: dict[str, int] = field(default_factory=dict)

    def floor(self, overlap_ms: int) -> int:
        """Where a read starts: the look-back before the newest time seen."""
        return max(self.ms - overlap_ms, 0)

    def delivered(self, ms: int, record_id: str, floor: int) -> bool:
        return ms < floor or self.recent.get(record_id, -1) >= ms

    def note(self, ms: int, record_id: str) -> None:
        """Remember a delivered (id, time) without moving the watermark (a full read's listed records)."""
        if ms > self.recent.get(record_id, -1):
            self.recent[record_id] = ms

    def advance(self, ms: int, record_id: str) -> None:
        self.note(ms, record_id)
        self.ms = max(self.ms, ms)

    def at_mark(self) -> list[str]:
        return sorted(record_id for record_id, ms in self.recent.items() if ms == self.ms)

    def dump(self, overlap_ms: int) -> list[Any]:
        floor = self.floor(overlap_ms)
        return [self.ms, {k: v for k, v in sorted(self.recent.items()) if v >= floor}]

    @classmethod
    def load(cls, raw: Any) -> Watermark:
        ms, recent = raw
        if isinstance(recent, list):  # cursor version 1: the ids seen at exactly `ms`
            return cls(int(ms), {str(i): int(ms) for i in recent})
        return cls(int(ms), {str(k): int(v) for k, v in recent.items()})


@dataclass
class SourceState:
    """Where one HubSpot object type stands: still listing (full read, `after` token) or searching."""

    phase: str = "list"
    after: str | None = None
    modified: Watermark = field(default_factory=Watermark)
    archived: Watermark = field(default_factory=Watermark)

    def dump(self, overlap_ms: int = 0) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "after": self.after,
            "mod": self.modified.dump(overlap_ms),
            "del": self.archived.dump(overlap_ms),
        }

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> SourceState:
        phase = raw["phase"]
        if phase not in ("list", "search"):
            raise ValueError(f"unknown phase {phase!r}")
        return cls(phase, raw.get("after"), Watermark.load(raw["mod"]), Watermark.load(raw["del"]))


def encode_cursor(states: Mapping[str, SourceState], overlap_ms: int = 0) -> str:
    return json.dumps(
        {"v": CURSOR_VERSION, "sources": {name: state.dump(overlap_ms) for name, state in states.items()}},
        sort_keys=True,
        separators=(",", ":"),
    )


def decode_cursor(cursor: str) -> dict[str, SourceState]:
    document = json.loads(cursor)
    if document.get("v") not in (1, CURSOR_VERSION):
        raise ValueError(f"cursor version {document.get('v')!r}, expected {CURSOR_VERSION}")
    return {name: SourceState.load(raw) for name, raw in document["sources"].items()}


# ------------------------------------------------------------------------------------------ connector


class _BearerAuth(httpx.Auth):
    """Private-app token as a bearer header; kept out of every repr, log and error."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


@dataclass(frozen=True)
class _HubSpotRecord:
    id: str
    properties: dict[str, Any]
    associations: dict[str, list[str]]  # to-object type -> ids, primary first
    modified_ms: int | None
    archived_ms: int | None = None


class HubSpotConnector:
    """Reads canonical objects from one HubSpot portal (see the module docstring for how)."""

    def __init__(
        self,
        name: str,
        *,
        api_base: str,
        token: str,
        token_env: str,
        mapping: HubSpotMapping,
        objects: Sequence[str] | None = None,
        rate_per_second: float = 10.0,
        search_rate_per_second: float = 4.0,
        timeout: float = 30.0,
        page_size: int = LIST_PAGE_MAX,
        search_cap: int = SEARCH_RESULT_CAP,
        retry: RetryPolicy | None = None,
        overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    ) -> None:
        self.name = name
        self.mapping = mapping
        self.token_env = token_env
        default = [name for name, spec in mapping.objects.items() if not spec.customer_defined]
        self._objects = list(objects) if objects is not None else default
        self.page_size = page_size
        self.search_cap = search_cap
        self.overlap_ms = round(overlap_seconds * 1000)
        auth = _BearerAuth(token)
        headers = {"Accept": "application/json"}
        self.http = HttpTransport(
            name,
            api_base,
            auth=auth,
            timeout=timeout,
            retry=retry,
            rate_per_second=rate_per_second,
            headers=headers,
        )
        # HubSpot limits search far below other calls (per token, per second): its own limiter.
        self.search_http = HttpTransport(
            name,
            api_base,
            auth=auth,
            timeout=timeout,
            retry=retry,
            rate_per_second=search_rate_per_second,
            headers=headers,
        )
        self._owners: dict[str, str] | None = None
        self._deactivated: set[str] = set()  # ids of archived owners
        self._deactivated_met: dict[str, int] = {}  # email -> records of this read owned by them

    @classmethod
    def from_config(
        cls, name: str, config: Mapping[str, Any], environ: Mapping[str, str] = os.environ
    ) -> HubSpotConnector:
        """Build from a source's config block; the token is read from `environ[config['token_env']]`."""
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ConnectorConfigError(
                f"{name}: unknown config key {unknown[0]!r} (known: {', '.join(sorted(CONFIG_KEYS))})"
            )
        api_base = config.get("api_base", DEFAULT_API_BASE)
        parts = urlsplit(api_base) if isinstance(api_base, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConnectorConfigError(f"{name}: api_base must be an http(s) URL, got {api_base!r}")
        token_env = config.get("token_env")
        if not isinstance(token_env, str) or not token_env.strip():
            raise ConnectorConfigError(
                f"{name}: token_env is missing (the name of the env var holding the token)"
            )
        token = environ.get(token_env, "")
        if not token.strip():
            raise ConnectorConfigError(f"{name}: token_env names {token_env}, which is not set or empty")
        mapping = load_mapping(config.get("mapping") or DEFAULT_MAPPING)
        object_types = config.get("object_types") or {}
        if not isinstance(object_types, Mapping) or any(
            key not in mapping.objects or len(mapping.objects[key].sources) != 1 or not isinstance(value, str)
            for key, value in object_types.items()
        ):
            raise ConnectorConfigError(
                f"{name}: object_types must map single-source canonical objects to HubSpot object type ids"
            )
        mapping = mapping.with_object_types(object_types)
        objects = config.get("objects")
        if objects is not None:
            if isinstance(objects, str) or not isinstance(objects, Sequence) or not objects:
                raise ConnectorConfigError(f"{name}: objects must be a non-empty list of canonical objects")
            bad = [obj for obj in objects if obj not in mapping.objects]
            if bad:
                raise ConnectorConfigError(
                    f"{name}: objects lists {bad[0]!r}, which the mapping does not provide "
                    f"({', '.join(mapping.objects)})"
                )
            # a placeholder custom object id would only fail later, against the portal
            unset = [obj for obj in objects if mapping.objects[obj].customer_defined]
            if unset:
                raise ConnectorConfigError(
                    f"{name}: objects lists {unset[0]!r}, a customer-defined HubSpot object: set its object "
                    f"type id under object_types (e.g. object_types: {{{unset[0]}: '2-1234567'}})"
                )
        retry = RetryPolicy(
            max_attempts=_int(name, config, "max_attempts", RetryPolicy.max_attempts, 1),
            initial_wait=_number(name, config, "retry_wait", RetryPolicy.initial_wait),
        )
        return cls(
            name,
            api_base=api_base,
            token=token,
            token_env=token_env,
            mapping=mapping,
            objects=list(objects) if objects is not None else None,
            rate_per_second=_number(name, config, "rate_per_second", 10.0),
            search_rate_per_second=_number(name, config, "search_rate_per_second", 4.0),
            timeout=_number(name, config, "timeout", 30.0),
            page_size=min(_int(name, config, "page_size", LIST_PAGE_MAX, 1), LIST_PAGE_MAX),
            search_cap=_int(name, config, "search_cap", SEARCH_RESULT_CAP, 1),
            retry=retry,
            overlap_seconds=overlap_setting(
                config,
                f"{name}: overlap_seconds (the look-back before the cursor for HubSpot's search index lag)",
            ).total_seconds(),
        )

    # ------------------------------------------------------------------------------ Connector protocol

    def objects(self) -> Sequence[str]:
        return list(self._objects)

    def close(self) -> None:
        self.http.close()
        self.search_http.close()

    def changed(self, cursors: Mapping[str, str | None]) -> list[str]:
        """Per object type: one limit-1 search for records modified after the watermark (or at exactly its
        millisecond but not among the ids stored there); then, with a look-back, the look-back window's
        (id, modified time) pairs against those already delivered (a late-visible edit), one search page
        of ids and times per 200 records in the window; then the archived list for new deletions. A window
        holding only what was delivered reports nothing."""
        changed = []
        for obj in self._objects:
            cursor = cursors.get(obj)
            if cursor is None:
                changed.append(obj)
                continue
            states = self._decode(obj, cursor)
            for source in self.mapping.objects[obj].sources:
                state = states.get(source.object_type)
                if state is None or state.phase == "list":
                    changed.append(obj)
                    break
                if (
                    int(
                        self._post_search(obj, source, self._probe_body(source, state.modified)).get(
                            "total", 0
                        )
                    )
                    or self._late_in_window(obj, source, state.modified)
                    or self._archived_after(obj, source, state.archived)
                ):
                    changed.append(obj)
                    break
        return changed

    def _late_in_window(self, obj: str, source: SourceSpec, mark: Watermark) -> bool:
        if self.overlap_ms <= 0 or mark.ms <= 0:
            return False
        floor = mark.floor(self.overlap_ms)
        return any(
            record.modified_ms is not None and not mark.delivered(record.modified_ms, record.id, floor)
            for records in self._search_window(
                obj, source, floor, until_ms=mark.ms, properties=[source.modified_property]
            )
            for record in records
        )

    def _archived_after(self, obj: str, source: SourceSpec, mark: Watermark) -> bool:
        # Search never returns archived records and the archived list cannot be filtered by time, so
        # the probe pages through the archived list (HubSpot keeps it for 90 days) until it finds one.
        floor = mark.floor(self.overlap_ms)
        return any(
            record.archived_ms is not None and not mark.delivered(record.archived_ms, record.id, floor)
            for record in self._archived_records(obj, source)
        )

    def _probe_body(self, source: SourceSpec, mark: Watermark) -> dict[str, Any]:
        newer = {"propertyName": source.modified_property, "operator": "GT", "value": str(mark.ms)}
        groups: list[dict[str, Any]] = [{"filters": [newer]}]
        # HubSpot takes at most 100 values in NOT_IN; beyond that a tie is noticed with the next change
        at_mark = mark.at_mark()
        if at_mark and len(at_mark) <= 100:
            same = {"propertyName": source.modified_property, "operator": "EQ", "value": str(mark.ms)}
            others = {"propertyName": "hs_object_id", "operator": "NOT_IN", "values": at_mark}
            groups.append({"filters": [same, others]})
        return {"filterGroups": groups, "properties": ["hs_object_id"], "limit": 1}

    def pages(self, plan: SyncPlan) -> Iterator[Page]:
        if plan.object not in self._objects:
            raise ConnectorError(
                f"{self.name}: {plan.object} is not read from this source ({', '.join(self._objects)})"
            )
        spec = self.mapping.objects[plan.object]
        states = {} if plan.full else self._decode(plan.object, plan.cursor or "")
        self._owners = None  # owners change: read them again once per object read
        self._deactivated_met = {}
        for source in spec.sources:
            state = states.get(source.object_type)
            if state is None:
                state = self._start_full(plan.object, source)
            states[source.object_type] = state
            if state.phase == "list":
                for records in self._list_pages(plan.object, source, state):
                    yield Page(plan.object, records, [], encode_cursor(states, self.overlap_ms))
            else:
                for records in self._search_pages(plan.object, source, state):
                    yield Page(plan.object, records, [], encode_cursor(states, self.overlap_ms))
                for deleted in self._archived_since(plan.object, source, state):
                    yield Page(plan.object, [], deleted, encode_cursor(states, self.overlap_ms))
        if self._deactivated_met:
            named = ", ".join(
                f"{email} ({n} record(s))" for email, n in sorted(self._deactivated_met.items())
            )
            log.warning(
                "%s: %s: owned by deactivated HubSpot owner(s), resolved to their email: %s",
                self.name,
                plan.object,
                named,
            )

    def deactivated_owners(self) -> dict[str, int]:
        """Emails of deactivated (archived) owners met by the last object read, with their record counts."""
        return dict(self._deactivated_met)

    # ------------------------------------------------------------------------------------- full reads

    def _start_full(self, obj: str, source: SourceSpec) -> SourceState:
        """Watermarks taken before listing: anything modified or archived later is read incrementally."""
        body = {
            "sorts": [{"propertyName": source.modified_property, "direction": "DESCENDING"}],
            "properties": [source.modified_property],
            "limit": 1,
        }
        data = self._post_search(obj, source, body)
        state = SourceState(phase="list")
        for raw in data.get("results", []):
            record = self._parse(source, raw)
            if record.modified_ms is not None:
                state.modified = Watermark(record.modified_ms)
        for record in self._archived_records(obj, source):
            if record.archived_ms is not None:
                state.archived.advance(record.archived_ms, record.id)
        return state

    def _list_pages(self, obj: str, source: SourceSpec, state: SourceState) -> Iterator[list[Record]]:
        """The list endpoint, one API page at a time; `state.after` is the resume point."""
        while True:
            params: dict[str, Any] = {
                "limit": self.page_size,
                "properties": ",".join(source.properties),
                "archived": "false",
            }
            if source.associations:
                params["associations"] = ",".join(source.associations)
            if state.after:
                params["after"] = state.after
            data = self._get(obj, source, f"/crm/v3/objects/{source.object_type}", params)
            records = [self._parse(source, raw) for raw in data.get("results", [])]
            floor = state.modified.floor(self.overlap_ms)
            for record in records:
                # listed records inside the look-back are stored: the next search must not repeat them
                if record.modified_ms is not None and record.modified_ms >= floor:
                    state.modified.note(record.modified_ms, record.id)
            after = _next_after(data)
            state.after = after
            if after is None:
                state.phase = "search"
            yield [self._canonical(obj, source, record) for record in records]
            if after is None:
                return

    # ------------------------------------------------------------------------------ incremental reads

    def _search_body(
        self,
        source: SourceSpec,
        filters: list[dict[str, Any]],
        sort: str,
        *,
        limit: int,
        properties: list[str] | None = None,
    ) -> dict[str, Any]:
        return {
            "filterGroups": [{"filters": filters}],
            "sorts": [{"propertyName": sort, "direction": "ASCENDING"}],
            "properties": properties if properties is not None else source.properties,
            "limit": limit,
        }

    def _search_window(
        self,
        obj: str,
        source: SourceSpec,
        since_ms: int,
        *,
        until_ms: int | None = None,
        properties: list[str] | None = None,
    ) -> Iterator[list[_HubSpotRecord]]:
        """Every record modified at or after `since_ms` (and at or before `until_ms`), each once, oldest
        first, one search page at a time.

        Keyset paging on the modified time: each query restarts at the newest time read, skipping the ids
        already read at exactly that millisecond. When a whole page is such ids (more ties than a page),
        that millisecond is walked in `hs_object_id` order with an id bound (HubSpot search sorts on one
        property only), then reading goes on strictly after it. No query pages with `after`, so none
        meets the result cap."""
        mod = source.modified_property
        limit = min(self.page_size * 2, SEARCH_PAGE_MAX, self.search_cap)
        pos_ms = since_ms
        pos_ids: set[str] = set()
        strict = False  # every record at pos_ms has been read
        tie = False  # walking the records at pos_ms by id
        last_id: str | None = None
        while True:
            if tie:
                filters = [{"propertyName": mod, "operator": "EQ", "value": str(pos_ms)}]
                if last_id is not None:
                    filters.append({"propertyName": "hs_object_id", "operator": "GT", "value": last_id})
                body = self._search_body(source, filters, "hs_object_id", limit=limit, properties=properties)
            else:
                operator = "GT" if strict else "GTE"
                filters = [{"propertyName": mod, "operator": operator, "value": str(pos_ms)}]
                if until_ms is not None:
                    filters.append({"propertyName": mod, "operator": "LTE", "value": str(until_ms)})
                body = self._search_body(source, filters, mod, limit=limit, properties=properties)
            data = self._post_search(obj, source, body)
            results = [self._parse(source, raw) for raw in data.get("results", [])]
            fresh = []
            for record in results:
                ms = record.modified_ms
                if ms is not None and ms == pos_ms and record.id in pos_ids:
                    continue
                fresh.append(record)
                if ms is not None and ms > pos_ms and not tie:
                    pos_ms, pos_ids, strict = ms, {record.id}, False
                elif ms == pos_ms:
                    pos_ids.add(record.id)
            if fresh:
                yield fresh
            complete = _next_after(data) is None and int(data.get("total", 0)) <= len(results)
            if tie:
                if complete:
                    tie, strict, last_id = False, True, None
                elif results:
                    last_id = results[-1].id
                else:
                    raise self._stuck(obj, source, pos_ms)
            elif complete:
                return
            elif not fresh:
                if not results:
                    raise self._stuck(obj, source, pos_ms)
                tie, last_id = True, None

    def _stuck(self, obj: str, source: SourceSpec, ms: int) -> ConnectorError:
        return ConnectorError(
            f"{self.name}: {obj} ({source.object_type}): the search reports more records from modified time "
            f"{ms} but returns none; kept: every page before this one"
        )

    def _search_pages(self, obj: str, source: SourceSpec, state: SourceState) -> Iterator[list[Record]]:
        floor = state.modified.floor(self.overlap_ms)
        for records in self._search_window(obj, source, floor):
            fresh = [
                record
                for record in records
                if record.modified_ms is None
                or not state.modified.delivered(record.modified_ms, record.id, floor)
            ]
            if not fresh:
                continue  # the look-back re-read only what was delivered
            self._add_associations(obj, source, fresh)
            for record in fresh:
                if record.modified_ms is not None:
                    state.modified.advance(record.modified_ms, record.id)
            yield [self._canonical(obj, source, record) for record in fresh]

    def _archived_records(self, obj: str, source: SourceSpec) -> Iterator[_HubSpotRecord]:
        after: str | None = None
        while True:
            params: dict[str, Any] = {
                "limit": LIST_PAGE_MAX,
                "archived": "true",
                "properties": "hs_object_id",
            }
            if after:
                params["after"] = after
            data = self._get(obj, source, f"/crm/v3/objects/{source.object_type}", params)
            for raw in data.get("results", []):
                yield self._parse(source, raw)
            after = _next_after(data)
            if after is None:
                return

    def _archived_since(self, obj: str, source: SourceSpec, state: SourceState) -> Iterator[list[str]]:
        """Keys archived after the deletion watermark, oldest first. The archived list is not ordered by
        archive time, so it is read whole before the watermark moves."""
        floor = state.archived.floor(self.overlap_ms)
        found = sorted(
            (record.archived_ms, record.id)
            for record in self._archived_records(obj, source)
            if record.archived_ms is not None
            and not state.archived.delivered(record.archived_ms, record.id, floor)
        )
        for start in range(0, len(found), self.page_size):
            chunk = found[start : start + self.page_size]
            for archived_ms, record_id in chunk:
                state.archived.advance(archived_ms, record_id)
            yield [record_id for _, record_id in chunk]

    def _add_associations(self, obj: str, source: SourceSpec, records: list[_HubSpotRecord]) -> None:
        """Search results carry no associations: read them with the v4 batch endpoint."""
        for to_type in source.associations:
            for start in range(0, len(records), ASSOCIATION_BATCH):
                chunk = records[start : start + ASSOCIATION_BATCH]
                path = f"/crm/v4/associations/{source.object_type}/{to_type}/batch/read"
                body = {"inputs": [{"id": record.id} for record in chunk]}
                # 207: some ids have no associations of this type (listed under "errors")
                data = self._call(obj, source, "POST", path, json_body=body, expected=(200, 207))
                by_id = {
                    str(result["from"]["id"]): result.get("to", []) for result in data.get("results", [])
                }
                for record in chunk:
                    record.associations[to_type] = _primary_first_v4(by_id.get(record.id, []))

    # --------------------------------------------------------------------------------------- mapping

    def _parse(self, source: SourceSpec, raw: Mapping[str, Any]) -> _HubSpotRecord:
        properties = dict(raw.get("properties") or {})
        modified = timestamp_ms(properties.get(source.modified_property)) or timestamp_ms(
            raw.get("updatedAt")
        )
        associations = {
            to_type: _primary_first_v3((value or {}).get("results", []))
            for to_type, value in (raw.get("associations") or {}).items()
        }
        archived_ms = timestamp_ms(raw.get("archivedAt")) if raw.get("archived") else None
        return _HubSpotRecord(str(raw["id"]), properties, associations, modified, archived_ms)

    def _canonical(self, obj: str, source: SourceSpec, record: _HubSpotRecord) -> Record:
        out: Record = {}
        used = set(ALWAYS_RETURNED) | {source.modified_property}
        for spec in source.columns:
            used.update(spec.when)
            if spec.id:
                out[spec.column] = record.id
            elif spec.association:
                ids = record.associations.get(spec.association) or []
                out[spec.column] = ids[0] if ids else None
            elif spec.property:
                used.add(spec.property)
                if spec.property not in record.properties:
                    continue  # the property is gone from the portal: leave the column out, the sync sees it
                if any(text(record.properties.get(k)) != v for k, v in spec.when.items()):
                    out[spec.column] = None
                    continue
                out[spec.column] = self._convert(obj, spec, record.properties[spec.property])
            else:
                out[spec.column] = spec.constant
        for name, value in record.properties.items():
            if name not in used:
                out.setdefault(name, text(value))  # drift: passed through under its own name
        return out

    def _convert(self, obj: str, spec: ColumnSpec, value: Any) -> str | None:
        if spec.owner:
            raw = text(value)
            if raw is None:
                return None
            email = self._owner_emails(obj).get(raw.strip())
            if email is None:
                return raw
            if raw.strip() in self._deactivated:
                self._deactivated_met[email] = self._deactivated_met.get(email, 0) + 1
            return email
        if spec.transform == "timezone":
            return timezone_text(value)
        if spec.values:
            raw = text(value)
            return None if raw is None else spec.values.get(raw.strip(), raw)
        if spec.kind in (Kind.EVENT_TS, Kind.PLANNED_TS):
            return timestamp_text(value)
        if spec.kind == Kind.BOOL:
            return bool_text(value)
        if spec.kind == Kind.MONEY:
            return money_text(value)
        return text(value)

    def _owner_emails(self, obj: str) -> dict[str, str]:
        """Owner id -> email, active owners and deactivated ones (HubSpot lists those only with
        archived=true; their records still carry their id)."""
        if self._owners is None:
            owners: dict[str, str] = {}
            deactivated: set[str] = set()
            for archived in ("true", "false"):  # active last: an id in both lists is active
                after: str | None = None
                while True:
                    params: dict[str, Any] = {"limit": LIST_PAGE_MAX, "archived": archived}
                    if after:
                        params["after"] = after
                    data = self._call(obj, None, "GET", "/crm/v3/owners", params=params)
                    for owner in data.get("results", []):
                        if owner.get("email"):
                            owner_id = str(owner["id"])
                            owners[owner_id] = str(owner["email"])
                            if archived == "true":
                                deactivated.add(owner_id)
                            else:
                                deactivated.discard(owner_id)
                    after = _next_after(data)
                    if after is None:
                        break
            self._owners, self._deactivated = owners, deactivated
        return self._owners

    # ------------------------------------------------------------------------------------------- http

    def _decode(self, obj: str, cursor: str) -> dict[str, SourceState]:
        try:
            return decode_cursor(cursor)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConnectorError(
                f"{self.name}: {obj}: the stored cursor is not a HubSpot cursor ({exc}); run a full read"
            ) from exc

    def _get(self, obj: str, source: SourceSpec, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        return self._call(obj, source, "GET", path, params=params)

    def _post_search(self, obj: str, source: SourceSpec, body: Mapping[str, Any]) -> dict[str, Any]:
        path = f"/crm/v3/objects/{source.object_type}/search"
        return self._call(obj, source, "POST", path, json_body=body, search=True)

    def _call(
        self,
        obj: str,
        source: SourceSpec | None,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        expected: tuple[int, ...] = (200,),
        search: bool = False,
    ) -> dict[str, Any]:
        where = f"{obj} ({source.object_type})" if source else obj
        transport = self.search_http if search else self.http
        try:
            response = transport.request(method, path, params=params, json=json_body, expected=expected)
        except HTTPStatusError as exc:
            hint = f"; the token in {self.token_env} was refused" if exc.status == 401 else ""
            raise ConnectorError(
                f"{self.name}: reading {where} failed{hint}: {exc}. Kept: pages stored so far."
            ) from exc
        except ConnectorError as exc:
            raise ConnectorError(
                f"{self.name}: reading {where} failed: {exc}. Kept: pages stored so far."
            ) from exc
        try:
            data = response.json()
        except ValueError as exc:
            raise ConnectorError(
                f"{self.name}: reading {where}: {method} {path} answered with a body that is not JSON"
            ) from exc
        if not isinstance(data, dict):
            raise ConnectorError(
                f"{self.name}: reading {where}: {method} {path} answered {type(data).__name__}, not an object"
            )
        return data


def _next_after(data: Mapping[str, Any]) -> str | None:
    after = ((data.get("paging") or {}).get("next") or {}).get("after")
    return None if after in (None, "") else str(after)


def _primary_first_v3(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """v3 inline associations: a type naming 'primary' first, then labelled, then unlabelled ones."""

    def rank(item: Mapping[str, Any]) -> int:
        kind = str(item.get("type", "")).lower()
        return 0 if "primary" in kind else 2 if kind.endswith("unlabeled") else 1

    ordered = sorted(results, key=rank)  # stable: HubSpot's order within a rank is kept
    return list(dict.fromkeys(str(item["id"]) for item in ordered))


def _primary_first_v4(results: Sequence[Mapping[str, Any]]) -> list[str]:
    def is_primary(item: Mapping[str, Any]) -> bool:
        return any("primary" in str(t.get("label") or "").lower() for t in item.get("associationTypes", []))

    ordered = sorted(results, key=lambda item: 0 if is_primary(item) else 1)
    return list(dict.fromkeys(str(item["toObjectId"]) for item in ordered))


def _number(name: str, config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConnectorConfigError(f"{name}: {key} must be a positive number, got {value!r}")
    return float(value)


def _int(name: str, config: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConnectorConfigError(f"{name}: {key} must be an integer >= {minimum}, got {value!r}")
    return value
