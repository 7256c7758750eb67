"""Zoho CRM (API v8) connector: reads Zoho modules and hands them to the sync as canonical records.

One responsibility: turn Zoho modules into `Page`s of canonical text records. The parts are kept apart:
- `ZohoMapping` (connectors/mappings/zoho.yml): which modules and fields make up each canonical object;
- `ZohoOAuth`: the `httpx.Auth` that caches the access token, refreshing it once on 401 INVALID_TOKEN;
- `ModuleCursor` / `ObjectCursor`: the incremental cursor, per module a watermark of modification time
  (sent as If-Modified-Since) and one of deletion time (for the `deleted` list);
- `iter_module_pages`: pagination, oldest change first;
- `to_record`: one Zoho record -> one canonical record.
All HTTP goes through `connectors.transport.HttpTransport` (retries, Retry-After, rate limit, redaction).

Decisions the sync relies on:
- Records come sorted by Modified_Time ascending (`sort_by=Modified_Time&sort_order=asc`). Pages are read
  by keyset, not by position: after a page whose last record was modified at second L, the next request
  asks for records modified since L - 1 s (page 1 again), dropping the (id, Modified_Time) pairs already
  handed over. Positional paging would skip a record whenever one on an earlier page is deleted or
  modified during the read (everything shifts left by one). Only when a whole page shares one second does
  the read advance by position (`page_token` from `info` when Zoho gives one, else `page` + 1).
- If-Modified-Since is taken to mean "modified strictly after" with one-second precision. So a page's
  cursor is L - 1 s (records at second L may continue on the next page and are re-read on resume; upserts
  are idempotent). The read's final cursor is L only when the server's `Date` shows that second L was over
  before it answered (no record can still appear at second L); otherwise L - 1 s.
- Overlap: `Date` only shows Zoho's clock, not that every change stamped before it is visible (a change
  stamped in second L may commit after the answer). So incremental reads ask for both lists from
  `overlap_seconds` (default 300) before their watermarks. Records and deletions re-read there are handed
  over again; the sync finds them unchanged (or already deleted) and changes nothing. While a read is
  still inside the overlap its pages keep the stored cursor.
- Incremental reads first hand over the module's deleted ids since the deletion watermark less the
  overlap (one Page), then the changed records. Deleted lists are unordered, so all their pages are read
  before that Page.
- A full read's deletion watermark starts DELETION_LOOKBACK before its first answer, so deletions made
  while it ran arrive with the next incremental read (some may arrive twice; deletes are idempotent).
- `changed()` sends per module one records probe (If-Modified-Since the watermark less the overlap,
  only id and Modified_Time, usually one request) and, only when that finds nothing, one deleted-list
  probe: a deletion alone is a change. A record or deletion after a watermark is a change; so is a window
  (overlap before a watermark) whose (id, time) digest differs from the one the last read stored in the
  cursor: a late or same-second change. The unchanged window every read repeats is not.
- The cursor text is JSON: {"<Module>": {"modified": iso, "deleted": iso, "window": digest,
  "deleted_window": digest}} (UTC, ISO 8601 with offset; a digest is left out when its window is empty).
- Unknown fields (in the module's field metadata, not mapped, not in `ignore_fields`) are requested and
  passed through under their Zoho names so the sync reports drift; Zoho returns at most 50 fields, mapped
  ones first.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from actionlayer.contract import OBJECT_NAMES, OBJECTS
from connectors.base import (
    DEFAULT_OVERLAP_SECONDS,
    EMPTY_WINDOW,
    ConnectorConfigError,
    ConnectorError,
    OverlapWindow,
    Page,
    Record,
    SyncPlan,
    overlap_setting,
)
from connectors.transport import HTTPStatusError, HttpTransport, RetryPolicy

log = logging.getLogger(__name__)

DEFAULT_MAPPING = Path(__file__).parent / "mappings" / "zoho.yml"
API_PREFIX = "/crm/v8"
TOKEN_PATH = "/oauth/v2/token"
MAX_PER_PAGE = 200
MAX_FIELDS = 50  # Zoho's limit on the `fields` parameter
TOKEN_EXPIRY_MARGIN = 60.0  # refresh this many seconds before Zoho says the token expires
ONE_SECOND = timedelta(seconds=1)
# A full read takes deletions from this long before its first answer as not yet seen: Zoho stamps the Date
# header after it read the data, so a deletion in between would otherwise fall behind the watermark.
# The cost is that deletions of the last few minutes may be handed over twice (deletes are idempotent).
DELETION_LOOKBACK = timedelta(minutes=5)
ZOHO_TYPES = frozenset(
    {"text", "date", "datetime", "boolean", "currency", "integer", "picklist", "lookup", "textarea"}
)


# --------------------------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class ColumnSpec:
    """Where one canonical column comes from in one module."""

    column: str
    path: tuple[str, ...] = ()
    constant: str | None = None
    is_constant: bool = False  # a module-fixed value (None allowed: a column the module cannot fill)
    zoho_type: str = "text"
    values: Mapping[str, str] = field(default_factory=dict)  # Zoho picklist value -> canonical value
    when: tuple[tuple[str, ...], str] | None = None

    @property
    def top_field(self) -> str | None:
        return self.path[0] if self.path else None


@dataclass(frozen=True)
class ModuleMapping:
    """One Zoho module feeding a canonical object."""

    object: str
    module: str
    columns: tuple[ColumnSpec, ...]
    deleted_list: bool = True

    @property
    def fields(self) -> tuple[str, ...]:
        """Top-level Zoho fields this module's mapping reads (condition fields included), in order."""
        names: list[str] = []
        for spec in self.columns:
            for path in (spec.path, spec.when[0] if spec.when else ()):
                if path and path[0] not in names:
                    names.append(path[0])
        return tuple(names)

    def column(self, name: str) -> ColumnSpec | None:
        return next((spec for spec in self.columns if spec.column == name), None)


@dataclass(frozen=True)
class ZohoMapping:
    path: Path
    ignore_fields: frozenset[str]
    objects: Mapping[str, tuple[ModuleMapping, ...]]


def _mapping_error(path: Path, where: str, problem: str) -> ConnectorConfigError:
    return ConnectorConfigError(f"Zoho mapping {path}: {where}: {problem}")


def _parse_path(text: Any, path: Path, where: str) -> tuple[str, ...]:
    if not isinstance(text, str) or not text.strip() or any(not part for part in text.split(".")):
        raise _mapping_error(path, where, f"expected a field path like 'Owner.email', got {text!r}")
    return tuple(text.strip().split("."))


def _parse_column(obj: str, column: str, raw: Any, path: Path, where: str) -> ColumnSpec:
    contract_column = OBJECTS[obj].column(column)
    if isinstance(raw, str):
        return ColumnSpec(column, path=_parse_path(raw, path, where))
    if not isinstance(raw, Mapping):
        raise _mapping_error(path, where, f"expected a field path or a mapping, got {raw!r}")
    unknown = set(raw) - {"field", "type", "values", "when", "constant"}
    if unknown:
        raise _mapping_error(path, where, f"unknown keys {sorted(unknown)}")
    if "constant" in raw:
        if "field" in raw:
            raise _mapping_error(path, where, "give either 'field' or 'constant', not both")
        value = raw["constant"]
        if contract_column.domain and value is not None and value not in contract_column.domain:
            raise _mapping_error(
                path, f"{where}.constant", f"{value!r} is not one of {contract_column.domain}"
            )
        return ColumnSpec(column, constant=None if value is None else str(value), is_constant=True)
    if "field" not in raw:
        raise _mapping_error(path, where, "needs 'field' or 'constant'")
    zoho_type = raw.get("type", "text")
    if zoho_type not in ZOHO_TYPES:
        raise _mapping_error(path, f"{where}.type", f"{zoho_type!r} is not one of {sorted(ZOHO_TYPES)}")
    values = raw.get("values") or {}
    if not isinstance(values, Mapping):
        raise _mapping_error(path, f"{where}.values", "expected a mapping of Zoho value -> canonical value")
    for vendor_value, canonical in values.items():
        if contract_column.domain is None or canonical not in contract_column.domain:
            raise _mapping_error(
                path,
                f"{where}.values.{vendor_value}",
                f"{canonical!r} is not in the domain of {obj}.{column}",
            )
    when = None
    if "when" in raw:
        condition = raw["when"]
        if not isinstance(condition, Mapping) or len(condition) != 1:
            raise _mapping_error(path, f"{where}.when", "expected one 'field path: value' pair")
        ((when_path, when_value),) = condition.items()
        when = (_parse_path(when_path, path, f"{where}.when"), str(when_value))
    return ColumnSpec(
        column,
        path=_parse_path(raw["field"], path, f"{where}.field"),
        zoho_type=zoho_type,
        values={str(k): str(v) for k, v in values.items()},
        when=when,
    )


def load_mapping(path: Path = DEFAULT_MAPPING) -> ZohoMapping:
    """Read and check the mapping file; every problem names the file and the key."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConnectorConfigError(f"Zoho mapping {path}: cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConnectorConfigError(f"Zoho mapping {path}: is not valid YAML: {exc}") from exc
    if not isinstance(document, Mapping) or not isinstance(document.get("objects"), Mapping):
        raise _mapping_error(path, "objects", "missing: expected objects.<canonical object>: [modules]")
    ignore = document.get("ignore_fields") or []
    if not isinstance(ignore, list) or not all(isinstance(name, str) for name in ignore):
        raise _mapping_error(path, "ignore_fields", "expected a list of Zoho field names")
    objects: dict[str, tuple[ModuleMapping, ...]] = {}
    for obj, modules in document["objects"].items():
        where = f"objects.{obj}"
        if obj not in OBJECTS:
            raise _mapping_error(path, where, f"unknown object; the contract has {', '.join(OBJECT_NAMES)}")
        if not isinstance(modules, list) or not modules:
            raise _mapping_error(path, where, "expected a non-empty list of modules")
        parsed: list[ModuleMapping] = []
        for index, module in enumerate(modules):
            module_where = f"{where}[{index}]"
            if not isinstance(module, Mapping) or not isinstance(module.get("module"), str):
                raise _mapping_error(path, f"{module_where}.module", "missing: the Zoho module API name")
            columns = module.get("columns")
            if not isinstance(columns, Mapping) or not columns:
                raise _mapping_error(
                    path, f"{module_where}.columns", "missing: canonical column -> Zoho field"
                )
            specs = []
            for column, raw in columns.items():
                column_where = f"{module_where}.columns.{column}"
                if column not in OBJECTS[obj].column_names:
                    raise _mapping_error(
                        path, column_where, f"not a column of {obj} ({', '.join(OBJECTS[obj].column_names)})"
                    )
                specs.append(_parse_column(obj, column, raw, path, column_where))
            key = OBJECTS[obj].key
            key_spec = next((spec for spec in specs if spec.column == key), None)
            if key_spec is None or not key_spec.path:
                raise _mapping_error(
                    path, f"{module_where}.columns.{key}", "missing: the key must map to a field"
                )
            deleted_list = module.get("deleted_list", True)
            if not isinstance(deleted_list, bool):
                raise _mapping_error(path, f"{module_where}.deleted_list", "expected true or false")
            parsed.append(ModuleMapping(obj, module["module"], tuple(specs), deleted_list))
        objects[obj] = tuple(parsed)
    return ZohoMapping(path, frozenset(ignore), objects)


# ---------------------------------------------------------------------------------------------- values


def _text(value: Any) -> str | None:
    """Contract text for a Zoho JSON value, without judging it (broken values pass through)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, Mapping) and "id" in value and len(value) <= 3:
        # an unmapped lookup: the referenced record's id is what the contract would hold
        return _text(value["id"])
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


_MISSING = object()


def _extract(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for index, part in enumerate(path):
        if not isinstance(value, Mapping):
            # the field changed type (e.g. a lookup became text): hand over what is there
            return value if index > 0 else _MISSING
        if part not in value:
            return _MISSING if index == 0 else None
        value = value[part]
    return value


def to_record(raw: Mapping[str, Any], module: ModuleMapping, ignore: frozenset[str]) -> Record:
    """One Zoho record as canonical text. A mapped field missing from the record leaves its column out
    (the sync reports the missing column); unmapped fields are passed through under their Zoho names."""
    record: Record = {}
    for spec in module.columns:
        if spec.is_constant:
            record[spec.column] = spec.constant
            continue
        value = _extract(raw, spec.path)
        if value is _MISSING:
            continue
        if spec.when is not None:
            condition = _extract(raw, spec.when[0])
            if condition is _MISSING or _text(condition) != spec.when[1]:
                value = None
        text = _text(value)
        record[spec.column] = spec.values.get(text, text) if text is not None else None
    known = set(module.fields) | ignore
    for name, value in raw.items():
        if name in known or name.startswith("$") or name in record:
            continue
        record[name] = _text(value)
    return record


# ---------------------------------------------------------------------------------------------- cursor


def parse_time(text: Any) -> datetime | None:
    """A Zoho datetime (ISO 8601 with offset) as an aware UTC datetime; None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def format_time(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment else None


def server_time(response: httpx.Response) -> datetime | None:
    """The server's clock from its Date header (used to tell whether a second is over)."""
    value = response.headers.get("Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError):
        log.warning("Zoho sent an unreadable Date header %r; cursors step back one second", value)
        return None


def settled_watermark(latest: datetime, answered_at: datetime | None) -> datetime:
    """`latest` if the server's clock shows its second is over (nothing more can be stamped with it),
    otherwise one second earlier, so a record stamped later in that same second is not skipped."""
    if answered_at is not None and latest < answered_at.replace(microsecond=0):
        return latest
    return latest - ONE_SECOND


@dataclass(frozen=True)
class ModuleCursor:
    """Per module: everything modified at or before `modified` and deleted at or before `deleted` has
    been handed to the sync, as far as Zoho showed it then. Reads ask for changes after these marks less
    the overlap (If-Modified-Since; Zoho: strictly after). `window` / `deleted_window` are digests of
    the (id, time) pairs handed over within the overlap before each mark (connectors.base.OverlapWindow),
    for `changed()`; None when that window is empty (or, in an older cursor, unknown)."""

    modified: datetime | None = None
    deleted: datetime | None = None
    window: str | None = None
    deleted_window: str | None = None


@dataclass(frozen=True)
class ObjectCursor:
    modules: Mapping[str, ModuleCursor]

    def get(self, module: str) -> ModuleCursor:
        return self.modules.get(module, ModuleCursor())

    def with_module(self, module: str, cursor: ModuleCursor) -> ObjectCursor:
        return ObjectCursor({**self.modules, module: cursor})

    def encode(self) -> str:
        return json.dumps(
            {
                name: {
                    "modified": format_time(c.modified),
                    "deleted": format_time(c.deleted),
                    **({"window": c.window} if c.window is not None else {}),
                    **({"deleted_window": c.deleted_window} if c.deleted_window is not None else {}),
                }
                for name, c in sorted(self.modules.items())
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str | None, source: str, obj: str) -> ObjectCursor:
        if text is None:
            return cls({})
        try:
            document = json.loads(text)
            modules = {
                name: ModuleCursor(
                    parse_time(value.get("modified")),
                    parse_time(value.get("deleted")),
                    _digest_text(value.get("window")),
                    _digest_text(value.get("deleted_window")),
                )
                for name, value in document.items()
            }
        except (ValueError, AttributeError) as exc:
            raise ConnectorError(
                f"{source}: the stored cursor for {obj} is not a Zoho cursor ({exc}); run a full read"
            ) from exc
        return cls(modules)


def _digest_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def earlier(moment: datetime | None, overlap: timedelta) -> datetime | None:
    """The If-Modified-Since of a read that re-reads `overlap` before its mark (None: no mark)."""
    return moment - overlap if moment is not None else None


# ------------------------------------------------------------------------------------------------ auth


class ZohoOAuth(httpx.Auth):
    """`Authorization: Zoho-oauthtoken <token>`; the token is cached until shortly before it expires and
    refreshed once when Zoho answers 401 INVALID_TOKEN, after which the request is sent once more."""

    requires_response_body = True

    def __init__(
        self, fetch_token: Callable[[], tuple[str, float]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch_token = fetch_token
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.refreshes = 0  # tokens obtained (for reports and tests)

    def _current(self, stale: str | None = None) -> str:
        with self._lock:
            # another thread may have refreshed already; only refresh if the token is still the stale one
            if self._token is None or self._token == stale or self._clock() >= self._expires_at:
                token, expires_in = self._fetch_token()
                self._token = token
                self._expires_at = self._clock() + max(0.0, expires_in - TOKEN_EXPIRY_MARGIN)
                self.refreshes += 1
            return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._current()
        request.headers["Authorization"] = f"Zoho-oauthtoken {token}"
        response = yield request
        if response.status_code == 401 and _error_code(response) in {
            "INVALID_TOKEN",
            "AUTHENTICATION_FAILURE",
        }:
            token = self._current(stale=token)
            request.headers["Authorization"] = f"Zoho-oauthtoken {token}"
            yield request


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


# ------------------------------------------------------------------------------------------ pagination


@dataclass(frozen=True)
class ApiPage:
    records: list[dict[str, Any]]
    number: int  # 1-based count of requests in this read, for error messages
    answered_at: datetime | None
    last: bool  # Zoho said more_records: false (or answered 204/304)
    latest: datetime | None = None  # latest Modified_Time in Zoho's answer, re-read records included


def _decode(response: httpx.Response) -> dict[str, Any]:
    # Decimal keeps money exactly as Zoho wrote it
    document = json.loads(response.text, parse_float=Decimal)
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object")
    return document


def iter_module_pages(
    get: Callable[[Mapping[str, Any], Mapping[str, str]], httpx.Response],
    fields: Sequence[str],
    since: datetime | None,
    per_page: int = MAX_PER_PAGE,
) -> Iterator[ApiPage]:
    """Records of one module modified after `since`, oldest change first, by keyset on Modified_Time
    (see the module docstring). `get(params, headers)` sends one GET and returns 200, 204 or 304."""
    seen: set[tuple[str, str]] = set()
    page_number, page_token, requests = 1, None, 0
    while True:
        params: dict[str, Any] = {
            "fields": ",".join(fields),
            "per_page": per_page,
            "sort_by": "Modified_Time",
            "sort_order": "asc",
        }
        if page_token:
            params["page_token"] = page_token
        else:
            params["page"] = page_number
        headers = {"If-Modified-Since": format_time(since)} if since else {}
        requests += 1
        response = get(params, headers)
        answered_at = server_time(response)
        if response.status_code in (204, 304):
            yield ApiPage([], requests, answered_at, last=True)
            return
        document = _decode(response)
        data = document.get("data") or []
        info = document.get("info") or {}
        fresh = []
        for raw in data:
            identity = (str(raw.get("id")), str(raw.get("Modified_Time")))
            if identity not in seen:
                seen.add(identity)
                fresh.append(raw)
        times = [parse_time(raw.get("Modified_Time")) for raw in data]
        known = [t for t in times if t is not None]
        if known != sorted(known):
            raise ValueError("records are not sorted by Modified_Time ascending; cannot keep a safe cursor")
        more = bool(info.get("more_records")) and bool(data)
        yield ApiPage(fresh, requests, answered_at, last=not more, latest=known[-1] if known else None)
        if not more:
            return
        last_time = known[-1] if known else None
        next_since = last_time - ONE_SECOND if last_time else None
        if next_since is not None and (since is None or next_since > since):
            since, page_number, page_token = next_since, 1, None
        else:
            # a whole page within one second: move on by position inside that second
            page_token = info.get("next_page_token") or None
            page_number += 1


def iter_deleted(
    get: Callable[[Mapping[str, Any], Mapping[str, str]], httpx.Response],
    since: datetime | None,
    per_page: int = MAX_PER_PAGE,
) -> tuple[list[tuple[str, datetime | None]], datetime | None, datetime | None]:
    """All (id, deleted_time) deleted after `since` (every page: the list is unordered), the latest
    deleted_time and the server time of the last answer."""
    ids: list[tuple[str, datetime | None]] = []
    latest: datetime | None = None
    answered_at: datetime | None = None
    page_number = 1
    while True:
        headers = {"If-Modified-Since": format_time(since)} if since else {}
        response = get({"type": "all", "page": page_number, "per_page": per_page}, headers)
        answered_at = server_time(response)
        if response.status_code in (204, 304):
            return ids, latest, answered_at
        document = _decode(response)
        data = document.get("data") or []
        for entry in data:
            moment = parse_time(entry.get("deleted_time"))
            ids.append((str(entry.get("id")), moment))
            if moment and (latest is None or moment > latest):
                latest = moment
        if not (document.get("info") or {}).get("more_records") or not data:
            return ids, latest, answered_at
        page_number += 1


def _deleted_window(
    entries: Sequence[tuple[str, datetime | None]], mark: datetime, overlap: timedelta
) -> str:
    window = OverlapWindow(overlap)
    for key, moment in entries:
        if moment is not None:
            window.add(key, format_time(moment) or "", moment)
    return _stored(window.digest(mark))


def _stored(digest: str) -> str | None:
    """An empty window is kept as no digest, so cursors of quiet modules stay as they always were."""
    return None if digest == EMPTY_WINDOW else digest


# ------------------------------------------------------------------------------------------- connector


def _require_str(config: Mapping[str, Any], key: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConnectorConfigError(f"Zoho source: config key {key!r} is missing or empty")
    return value.strip()


def _require_url(config: Mapping[str, Any], key: str) -> str:
    value = _require_str(config, key)
    if not value.startswith(("http://", "https://")):
        raise ConnectorConfigError(f"Zoho source: config key {key!r} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _secret(config: Mapping[str, Any], key: str, environ: Mapping[str, str]) -> str:
    variable = _require_str(config, key)
    value = environ.get(variable)
    if not value:
        # name the key and the variable, never a value
        raise ConnectorConfigError(
            f"Zoho source: config key {key!r} names environment variable {variable!r}, which is not set"
        )
    return value


def _positive(config: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConnectorConfigError(
            f"Zoho source: config key {key!r} must be a positive number, got {value!r}"
        )
    return float(value)


class ZohoConnector:
    """Reads canonical objects from Zoho CRM; see the module docstring for paging and cursor rules."""

    def __init__(
        self,
        name: str,
        api: HttpTransport,
        accounts: HttpTransport,
        auth: ZohoOAuth,
        mapping: ZohoMapping,
        objects: Sequence[str],
        per_page: int = MAX_PER_PAGE,
        overlap: timedelta = timedelta(seconds=DEFAULT_OVERLAP_SECONDS),
    ) -> None:
        self.name = name
        self.api = api
        self.accounts = accounts
        self.auth = auth
        self.mapping = mapping
        self._objects = tuple(objects)
        self.per_page = per_page
        self.overlap = overlap

    @classmethod
    def from_config(
        cls, name: str, config: Mapping[str, Any], environ: Mapping[str, str] = os.environ
    ) -> ZohoConnector:
        """Build from a source's config; secrets are read from the environment variables it names."""
        api_base = _require_url(config, "api_base")
        accounts_base = _require_url(config, "accounts_base")
        client_id = _secret(config, "client_id_env", environ)
        client_secret = _secret(config, "client_secret_env", environ)
        refresh_token = _secret(config, "refresh_token_env", environ)
        if config.get("mapping") is not None and not isinstance(config["mapping"], str | os.PathLike):
            raise ConnectorConfigError(
                f"Zoho source: config key 'mapping' must be a path, got {config['mapping']!r}"
            )
        mapping_path = Path(config["mapping"]) if config.get("mapping") else DEFAULT_MAPPING
        mapping = load_mapping(mapping_path)
        objects = config.get("objects") or [obj for obj in OBJECT_NAMES if obj in mapping.objects]
        if isinstance(objects, str) or not isinstance(objects, Sequence):
            raise ConnectorConfigError(f"Zoho source: config key 'objects' must be a list, got {objects!r}")
        for obj in objects:
            if obj not in mapping.objects:
                raise ConnectorConfigError(
                    f"Zoho source: config key 'objects' lists {obj!r}, which {mapping_path} does not map"
                )
        objects = [obj for obj in OBJECT_NAMES if obj in objects]  # contract (dependency) order
        timeout = _positive(config, "timeout", 30.0)
        rate = _positive(config, "rate_per_second", None)
        per_page = config.get("per_page", MAX_PER_PAGE)
        if isinstance(per_page, bool) or not isinstance(per_page, int) or not 1 <= per_page <= MAX_PER_PAGE:
            raise ConnectorConfigError(f"Zoho source: config key 'per_page' must be 1..200, got {per_page!r}")
        overlap = overlap_setting(config, "Zoho source: config key 'overlap_seconds'")
        retry_config = config.get("retry") or {}
        if not isinstance(retry_config, Mapping):
            raise ConnectorConfigError("Zoho source: config key 'retry' must be a mapping")
        try:
            retry = RetryPolicy(**retry_config)
        except TypeError as exc:
            raise ConnectorConfigError(
                f"Zoho source: config key 'retry' has an unknown setting: {exc}"
            ) from exc
        accounts = HttpTransport(f"{name} (Zoho accounts)", accounts_base, timeout=timeout, retry=retry)

        def fetch_token() -> tuple[str, float]:
            response = accounts.request(
                "POST",
                TOKEN_PATH,
                # form body, not the query string Zoho also accepts: URLs end up in logs
                data={
                    "grant_type": "refresh_token",
                    "client_id": client_id,
                    "client_secret": client_secret,
                    "refresh_token": refresh_token,
                },
            )
            try:
                body = response.json()
            except ValueError as exc:
                raise ConnectorError(
                    f"{name}: Zoho token endpoint answered with something that is not JSON"
                ) from exc
            token = body.get("access_token") if isinstance(body, dict) else None
            if not token:
                # Zoho answers 200 with {"error": "invalid_client"} and the like
                error = body.get("error") if isinstance(body, dict) else None
                raise ConnectorError(
                    f"{name}: Zoho refused to refresh the access token ({error or 'no access_token'}); "
                    f"check the client id, secret and refresh token in the environment variables named by "
                    f"client_id_env, client_secret_env and refresh_token_env"
                )
            expires_in = body.get("expires_in", 3600)
            return str(token), float(expires_in) if isinstance(expires_in, int | float) else 3600.0

        auth = ZohoOAuth(fetch_token)
        api = HttpTransport(name, api_base, auth=auth, timeout=timeout, retry=retry, rate_per_second=rate)
        return cls(name, api, accounts, auth, mapping, objects, per_page, overlap)

    # -- Connector interface --------------------------------------------------------------------------

    def objects(self) -> Sequence[str]:
        return self._objects

    def close(self) -> None:
        self.api.close()
        self.accounts.close()

    def changed(self, cursors: Mapping[str, str | None]) -> list[str]:
        """Per module one If-Modified-Since probe of the overlap window (usually one request), plus one
        of the deleted list's window when the records probe found nothing (a deletion alone is a change
        too). See `_module_changed`."""
        changed = []
        for obj in self._objects:
            text = cursors.get(obj)
            if text is None:
                changed.append(obj)
                continue
            cursor = ObjectCursor.decode(text, self.name, obj)
            if any(
                module.module not in cursor.modules or self._module_changed(module, cursor.get(module.module))
                for module in self.mapping.objects[obj]
            ):
                changed.append(obj)
        return changed

    def pages(self, plan: SyncPlan) -> Iterator[Page]:
        if plan.object not in self._objects:
            raise ConnectorError(f"{self.name}: object {plan.object!r} is not read from this source")
        cursor = ObjectCursor.decode(plan.cursor, self.name, plan.object)
        yielded = False
        for module in self.mapping.objects[plan.object]:
            for page in self._module_pages(plan, module, cursor):
                cursor = ObjectCursor.decode(page.cursor, self.name, plan.object)
                yielded = True
                yield page
        if plan.full and not yielded:
            # an empty object still needs one page: it tells the sync every stored key is gone
            yield Page(plan.object, [], [], cursor.encode())

    # -- reading one module ---------------------------------------------------------------------------

    def _get(self, path: str, what: str) -> Callable[[Mapping[str, Any], Mapping[str, str]], httpx.Response]:
        def get(params: Mapping[str, Any], headers: Mapping[str, str]) -> httpx.Response:
            try:
                return self.api.request("GET", path, params=params, headers=headers, expected=(200, 204, 304))
            except HTTPStatusError as exc:
                if exc.status == 401:
                    raise ConnectorError(
                        f"{exc} ({what}: still unauthorised after refreshing the access token once)"
                    ) from exc
                raise

        return get

    def _module_changed(self, module: ModuleMapping, cursor: ModuleCursor) -> bool:
        """Anything after the module's marks, or a window before a mark that differs from what the last
        read handed over (a late or same-second change the next read's overlap will pick up). The
        overlap re-reads unchanged records every time, so "anything in the window" would fire forever."""
        get = self._get(f"{API_PREFIX}/{module.module}", f"probing {module.module}")
        if cursor.modified is None:
            # the module was read and was empty, so any record at all is a change
            response = get({"fields": "Modified_Time", "per_page": 1, "sort_by": "Modified_Time"}, {})
            if response.status_code == 200 and _decode(response).get("data"):
                return True
        else:
            window = OverlapWindow(self.overlap)
            since = earlier(cursor.modified, self.overlap)
            for api_page in iter_module_pages(get, ["Modified_Time"], since, MAX_PER_PAGE):
                for raw in api_page.records:
                    moment = parse_time(raw.get("Modified_Time"))
                    if moment is None:
                        continue
                    if moment > cursor.modified:
                        return True
                    window.add(str(raw.get("id")), format_time(moment) or "", moment)
            if _stored(window.digest(cursor.modified)) != cursor.window:
                return True
        if not module.deleted_list:
            return False
        get_deleted = self._get(f"{API_PREFIX}/{module.module}/deleted", f"probing {module.module} deletions")
        entries, _, _ = iter_deleted(get_deleted, earlier(cursor.deleted, self.overlap), MAX_PER_PAGE)
        if cursor.deleted is None:
            return bool(entries)
        if any(moment is not None and moment > cursor.deleted for _, moment in entries):
            return True
        return _deleted_window(entries, cursor.deleted, self.overlap) != cursor.deleted_window

    def _request_fields(self, module: ModuleMapping) -> list[str]:
        """Mapped fields that the module still has, then unmapped ones (for drift), at most 50."""
        get = self._get(f"{API_PREFIX}/settings/fields", f"reading {module.module} field metadata")
        response = get({"module": module.module}, {})
        available = [
            str(entry.get("api_name"))
            for entry in (_decode(response).get("fields") or [])
            if isinstance(entry, Mapping) and entry.get("api_name")
        ]
        mapped = [name for name in module.fields if name in available and not name.startswith("$")]
        extra = [
            name
            for name in available
            if name not in mapped and name not in self.mapping.ignore_fields and not name.startswith("$")
        ]
        fields = ["Modified_Time", *[name for name in mapped if name != "Modified_Time"]]
        room = MAX_FIELDS - len(fields)
        if len(extra) > room:
            log.warning(
                "%s: %s has %d unmapped fields; Zoho returns at most %d fields, so %s are not read",
                self.name,
                module.module,
                len(extra),
                MAX_FIELDS,
                ", ".join(extra[room:]),
            )
        return fields + extra[: max(0, room)]

    def _module_pages(self, plan: SyncPlan, module: ModuleMapping, cursor: ObjectCursor) -> Iterator[Page]:
        start = cursor.get(module.module)
        obj, name = plan.object, module.module
        step = "field metadata"
        try:
            if not plan.full and module.deleted_list:
                step = "deleted list"
                get_deleted = self._get(f"{API_PREFIX}/{name}/deleted", f"reading {name} deletions")
                since = earlier(start.deleted, self.overlap)
                entries, latest, answered_at = iter_deleted(get_deleted, since, self.per_page)
                mark = start.deleted
                if latest is not None:
                    settled = settled_watermark(latest, answered_at)
                    mark = max(settled, mark) if mark else settled
                if mark is not None:
                    # the list covers everything after the old mark less the overlap, so the new mark's window
                    start = replace(
                        start, deleted=mark, deleted_window=_deleted_window(entries, mark, self.overlap)
                    )
                # ids re-read from the overlap are deleted already; the sync counts them as nothing
                ids = list(dict.fromkeys(key for key, _ in entries))
                if ids or start != cursor.get(name):
                    cursor = cursor.with_module(name, start)
                    yield Page(obj, [], ids, cursor.encode())
            fields = self._request_fields(module)
            get = self._get(f"{API_PREFIX}/{name}", f"reading {name}")
            watermark = start.modified
            window_digest = start.window
            deleted_mark = start.deleted
            latest: datetime | None = None
            window = OverlapWindow(self.overlap)
            step = "page 1"
            since = earlier(start.modified, self.overlap)
            for api_page in iter_module_pages(get, fields, since, self.per_page):
                if plan.full and deleted_mark is None and api_page.answered_at is not None:
                    # deletions from the start of a full read on are fetched by the next incremental read
                    deleted_mark = api_page.answered_at.replace(microsecond=0) - DELETION_LOOKBACK
                if api_page.latest is not None:
                    latest = max(latest, api_page.latest) if latest else api_page.latest
                if latest is not None:
                    # mid-read, records at the latest second may continue on the next page
                    candidate = (
                        settled_watermark(latest, api_page.answered_at)
                        if api_page.last
                        else latest - ONE_SECOND
                    )
                    watermark = max(candidate, watermark) if watermark else candidate
                for raw in api_page.records:
                    moment = parse_time(raw.get("Modified_Time"))
                    if moment is not None:
                        window.add(str(raw.get("id")), format_time(moment) or "", moment)
                if watermark is not None and (api_page.last or (latest is not None and latest > watermark)):
                    # everything up to the watermark has been seen, so the digest of its window is whole;
                    # before that (re-reading the overlap) the stored digest still stands
                    window_digest = _stored(window.digest(watermark))
                records = [to_record(raw, module, self.mapping.ignore_fields) for raw in api_page.records]
                new = ModuleCursor(watermark, deleted_mark, window_digest, start.deleted_window)
                if records or new != cursor.get(name) or (plan.full and api_page.number == 1):
                    cursor = cursor.with_module(name, new)
                    log.info("%s: %s from %s, %s: %d records", self.name, obj, name, step, len(records))
                    yield Page(obj, records, [], cursor.encode())
                step = f"page {api_page.number + 1}"
        except ConnectorError as exc:
            raise ConnectorError(
                f"{self.name}: reading {obj} from Zoho module {name} failed at {step}: {exc}. "
                f"Pages handed over before it stand; nothing of this step was kept."
            ) from exc
        except ValueError as exc:
            raise ConnectorError(
                f"{self.name}: reading {obj} from Zoho module {name} failed at {step}: Zoho's answer "
                f"could not be read ({exc}). Pages handed over before it stand."
            ) from exc
