"""A small HubSpot CRM v3 stand-in on 127.0.0.1 for tests, and the HubSpot `SourceHarness`.

One responsibility: answer the HubSpot calls the connector makes the way HubSpot documents them, with
switches for the ways HubSpot misbehaves. Supported: bearer auth (401 with HubSpot's error body), list
objects with `after` paging (limit capped at 100), `archived=true` with `archivedAt`, inline associations,
search (filterGroups with EQ/NEQ/GT/GTE/LT/LTE/IN/NOT_IN/HAS_PROPERTY, one sort, `after` offsets,
limit <= 200, and a configurable result cap, `search_cap`, default HubSpot's 10,000: nothing past it is
returned and an `after` at it answers 400), v4 batch association reads (207 when some ids have none),
owners (`archived=true` lists only deactivated owners, as HubSpot does; `deactivate_owner`), and a
per-second limit on search answered with 429 RATE_LIMITS. Search index lag: `freeze_search` keeps search
answering with a record's current version (or without it, for a record not yet stored) until
`thaw_search`, while the list endpoint shows every write at once, as HubSpot's search index trails writes.
Switches: `fail_next` (429 with Retry-After, or 5xx), `delay_next` (timeouts), `empty_last_page`,
`add_property` / `remove_property` / `set_raw` (schema drift), `after_requests` (e.g. archive a record
between pages). Every request is recorded with its time.

For the crm_task sink also: POST /crm/v3/objects/tasks (properties checked against the task properties
and the custom ones added with `define_property`: 400 VALIDATION_ERROR with PROPERTY_DOESNT_EXIST,
REQUIRED_FIELD for hs_timestamp, INVALID_OPTION for status/priority; `associations` with HubSpot-defined
type ids to contacts 204, companies 192, deals 216, tickets 230, each target checked when this stand-in
holds records of its type) -> 201 with the task. `search_lag` seconds: a created task is not found by
search until that long after its creation (HubSpot's search index trails writes); `creations` counts
created tasks per value of `external_id_property`.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from actionlayer.contract import OBJECTS, Kind
from connectors.base import Record
from connectors.hubspot import (
    ColumnSpec,
    HubSpotConnector,
    HubSpotMapping,
    SourceSpec,
    hubspot_timezone,
    load_mapping,
    timestamp_ms,
    timezone_text,
)

BASE_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
DATE_PROPERTIES = frozenset({"createdate", "hs_lastmodifieddate", "lastmodifieddate"})
TOKEN_ENV = "HUBSPOT_TEST_TOKEN"
# Objects the stand-in can create, with their built-in writable properties (custom ones: define_property)
CREATABLE = {
    "tasks": frozenset(
        {
            "hs_task_subject",
            "hs_task_body",
            "hs_timestamp",
            "hs_task_status",
            "hs_task_priority",
            "hs_task_type",
            "hubspot_owner_id",
        }
    ),
}
REQUIRED = {"tasks": ("hs_timestamp",)}
OPTIONS = {
    "tasks": {
        "hs_task_status": frozenset({"NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED"}),
        "hs_task_priority": frozenset({"NONE", "LOW", "MEDIUM", "HIGH"}),
    }
}
# HubSpot-defined association type ids from a task to the records it hangs off
ASSOCIATION_TYPES = {"tasks": {204: "contacts", 192: "companies", 216: "deals", 230: "tickets"}}


def iso_ms(ms: int) -> str:
    """HubSpot's datetime form: UTC with milliseconds and Z."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def modified_property(object_type: str) -> str:
    return "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"


@dataclass
class StoredRecord:
    id: str
    seq: int
    properties: dict[str, Any]
    associations: dict[str, list[str]]  # to-object type -> ids, primary first
    created_ms: int
    modified_ms: int
    archived_ms: int | None = None


@dataclass
class LoggedRequest:
    at: float  # time.monotonic()
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int = 0
    authorization: str | None = None


@dataclass
class _Fault:
    status: int
    retry_after: float | None
    path_contains: str | None


@dataclass
class HubSpotServer:
    """State and behaviour; `start()` serves it on a free loopback port."""

    token: str
    search_cap: int = 10_000
    search_per_second: int = 5
    records: dict[str, dict[str, StoredRecord]] = field(default_factory=dict)
    owners: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[LoggedRequest] = field(default_factory=list)
    empty_last_page: bool = False
    search_lag: float = 0.0  # seconds a created record stays invisible to search (index lag)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.clock_ms = BASE_MS
        self._seq = 0
        self._faults: list[_Fault] = []
        self._delays: list[float] = []
        self._hooks: list[tuple[int, Callable[[], None]]] = []
        self._search_window: list[float] = []
        self.removed: dict[str, set[str]] = {}
        self.extra: dict[str, dict[str, Any]] = {}
        # crm_task sink support: created records, custom properties and the search index lag
        self.external_id_property = "actionlayer_action_id"
        self.creations: dict[str, int] = {}  # external id value -> tasks created with it
        self.custom_properties: dict[str, set[str]] = {}
        self._indexed_at: dict[tuple[str, str], float] = {}  # (type, id) -> monotonic time searchable
        self._search_view: dict[tuple[str, str], StoredRecord | None] = {}  # frozen by freeze_search
        self._next_id = 9_100_000_000
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> HubSpotServer:
        server = self

        class Handler(_Handler):
            state = server

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="hubspot-stand-in", daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        assert self.httpd is not None, "server not started"
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    # --------------------------------------------------------------------------------------- data

    def tick(self, at_least: int | None = None) -> int:
        """The server's clock: strictly increasing milliseconds, never behind `at_least`."""
        with self.lock:
            self.clock_ms = max(self.clock_ms + 1, at_least or 0)
            return self.clock_ms

    def clear(self) -> None:
        with self.lock:
            self.records.clear()
            self.owners.clear()

    def put(
        self,
        object_type: str,
        record_id: str,
        properties: Mapping[str, Any],
        associations: Mapping[str, Sequence[str]] | None = None,
        *,
        modified_ms: int | None = None,
    ) -> StoredRecord:
        """Create or replace a record; its modified time is `modified_ms` or the next clock tick."""
        with self.lock:
            modified = self.tick() if modified_ms is None else modified_ms
            self.clock_ms = max(self.clock_ms, modified)
            table = self.records.setdefault(object_type, {})
            old = table.get(record_id)
            if old is None:
                self._seq += 1
            record = StoredRecord(
                record_id,
                old.seq if old else self._seq,
                dict(properties),
                {k: list(v) for k, v in (associations or {}).items()},
                old.created_ms if old else modified,
                modified,
            )
            table[record_id] = record
            return record

    def touch(self, object_type: str, record_id: str, **changes: Any) -> None:
        """Change some properties of a record and bump its modified time, as an edit in HubSpot does."""
        with self.lock:
            record = self.records[object_type][record_id]
            record.properties.update(changes)
            record.modified_ms = self.tick()

    def archive(self, object_type: str, record_id: str) -> None:
        with self.lock:
            record = self.records[object_type][record_id]
            record.archived_ms = self.tick()

    def add_owner(self, email: str) -> str:
        with self.lock:
            for owner_id, owner in self.owners.items():
                if owner["email"] == email:
                    return owner_id
            owner_id = str(1000 + len(self.owners))
            self.owners[owner_id] = {
                "id": owner_id,
                "email": email,
                "firstName": "",
                "lastName": "",
                "archived": False,
            }
            return owner_id

    def deactivate_owner(self, email: str) -> str:
        """The user leaves: HubSpot archives the owner, its records keep the owner id."""
        with self.lock:
            owner_id = self.add_owner(email)
            self.owners[owner_id]["archived"] = True
            return owner_id

    def freeze_search(self, object_type: str, record_id: str) -> None:
        """Search keeps answering with the record as it is now (absent, if it does not exist yet) until
        `thaw_search`: later writes are not yet indexed."""
        with self.lock:
            current = self.records.get(object_type, {}).get(record_id)
            self._search_view[(object_type, record_id)] = None if current is None else copy.deepcopy(current)

    def thaw_search(self) -> None:
        """The search index catches up with every write."""
        with self.lock:
            self._search_view.clear()

    # ------------------------------------------------------------------------------------ switches

    def fail_next(
        self, n: int, status: int = 429, retry_after: float | None = 1, path_contains: str | None = None
    ) -> None:
        """The next `n` requests (whose path contains `path_contains`, if given) answer `status`."""
        with self.lock:
            self._faults.extend(_Fault(status, retry_after, path_contains) for _ in range(n))

    def delay_next(self, n: int, seconds: float) -> None:
        with self.lock:
            self._delays.extend([seconds] * n)

    def after_requests(self, n: int, action: Callable[[], None]) -> None:
        """Run `action` once `n` more requests have been answered (e.g. archive a record between pages)."""
        with self.lock:
            self._hooks.append((len(self.requests) + n, action))

    def add_property(self, object_type: str, name: str, value: Any) -> None:
        """A property that appears on every record and is returned unasked (drift: a field added)."""
        with self.lock:
            self.extra.setdefault(object_type, {})[name] = value

    def remove_property(self, object_type: str, name: str) -> None:
        """The property is deleted from the portal: HubSpot omits it even when asked for."""
        with self.lock:
            self.removed.setdefault(object_type, set()).add(name)

    def set_raw(self, object_type: str, record_id: str, name: str, value: Any) -> None:
        """Store any JSON value (a number, a bool, an object) to imitate a property changing type."""
        with self.lock:
            self.records[object_type][record_id].properties[name] = value

    def define_property(self, object_type: str, name: str) -> None:
        """A custom property created in the portal (Settings > Properties), writable from then on."""
        with self.lock:
            self.custom_properties.setdefault(object_type, set()).add(name)

    def search_times(self) -> list[float]:
        return [r.at for r in self.requests if r.path.endswith("/search")]

    # ------------------------------------------------------------------------------------ handling

    def handle(self, request: LoggedRequest, headers: Mapping[str, str]) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            self.requests.append(request)
            delay = self._delays.pop(0) if self._delays else 0.0
        if delay:
            time.sleep(delay)
        try:
            status, extra_headers, body = self._dispatch(request, headers)
        finally:
            self._run_hooks()
        request.status = status
        return status, extra_headers, body

    def _run_hooks(self) -> None:
        with self.lock:
            due = [hook for hook in self._hooks if hook[0] <= len(self.requests)]
            self._hooks = [hook for hook in self._hooks if hook[0] > len(self.requests)]
        for _, action in due:
            action()

    def _dispatch(
        self, request: LoggedRequest, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], Any]:
        if headers.get("authorization") != f"Bearer {self.token}":
            return (
                401,
                {},
                _error(
                    "Authentication credentials not found. This API supports OAuth 2.0 authentication and "
                    "you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                    "INVALID_AUTHENTICATION",
                ),
            )
        with self.lock:
            fault = next(
                (f for f in self._faults if f.path_contains is None or f.path_contains in request.path), None
            )
            if fault is not None:
                self._faults.remove(fault)
        if fault is not None:
            return _fault_response(fault)
        parts = [p for p in request.path.split("/") if p]
        if request.method == "POST" and request.path.endswith("/search"):
            limited = self._search_limited(request.at)
            if limited:
                return limited
        try:
            if request.method == "GET" and parts[:3] == ["crm", "v3", "owners"]:
                return self._owners(request.query)
            if request.method == "GET" and parts[:3] == ["crm", "v3", "objects"] and len(parts) == 4:
                return self._list(parts[3], request.query)
            if request.method == "POST" and parts[:3] == ["crm", "v3", "objects"] and parts[4:] == ["search"]:
                return self._search(parts[3], request.body or {})
            if (
                request.method == "POST"
                and parts[:3] == ["crm", "v4", "associations"]
                and parts[5:] == ["batch", "read"]
            ):
                return self._batch_associations(parts[3], parts[4], request.body or {})
            if (
                request.method == "POST"
                and parts[:3] == ["crm", "v3", "objects"]
                and len(parts) == 4
                and parts[3] in CREATABLE
            ):
                return self._create(parts[3], request.body or {})
        except _BadRequest as exc:
            return 400, {}, _error(str(exc), "VALIDATION_ERROR")
        return 404, {}, _error(f"No route for {request.method} {request.path}", "OBJECT_NOT_FOUND")

    def _search_limited(self, at: float) -> tuple[int, dict[str, str], Any] | None:
        with self.lock:
            self._search_window = [t for t in self._search_window if at - t < 1.0]
            if len(self._search_window) >= self.search_per_second:
                return (
                    429,
                    {"Retry-After": "1"},
                    _error("You have reached your secondly limit.", "RATE_LIMITS", policyName="SECONDLY"),
                )
            self._search_window.append(at)
        return None

    # ---------------------------------------------------------------------------------- endpoints

    def _owners(self, query: Mapping[str, list[str]]) -> tuple[int, dict[str, str], Any]:
        limit = min(int(_one(query, "limit", "100")), 100)
        start = int(_one(query, "after", "0"))
        archived = _one(query, "archived", "false") == "true"  # true: only the deactivated owners
        with self.lock:
            owners = [o for o in self.owners.values() if o.get("archived", False) == archived]
        page = owners[start : start + limit]
        body: dict[str, Any] = {"results": [dict(o, userId=int(o["id"])) for o in page]}
        if start + limit < len(owners):
            body["paging"] = {"next": {"after": str(start + limit)}}
        return 200, {}, body

    def _list(self, object_type: str, query: Mapping[str, list[str]]) -> tuple[int, dict[str, str], Any]:
        limit = min(int(_one(query, "limit", "10")), 100)
        after = int(_one(query, "after", "0"))
        archived = _one(query, "archived", "false") == "true"
        properties = _csv(query, "properties")
        associations = _csv(query, "associations")
        with self.lock:
            rows = sorted(
                (
                    r
                    for r in self.records.get(object_type, {}).values()
                    if (r.archived_ms is not None) == archived and r.seq >= after
                ),
                key=lambda r: r.seq,
            )
            page = rows[:limit]
            results = [self._shape(object_type, r, properties, associations) for r in page]
        body: dict[str, Any] = {"results": results}
        if len(rows) > limit:
            body["paging"] = {
                "next": {"after": str(rows[limit].seq), "link": "?after=" + str(rows[limit].seq)}
            }
        elif self.empty_last_page and page:
            # HubSpot sometimes offers one more page that turns out empty
            body["paging"] = {"next": {"after": str(page[-1].seq + 1)}}
        return 200, {}, body

    def _search(self, object_type: str, body: Mapping[str, Any]) -> tuple[int, dict[str, str], Any]:
        limit = int(body.get("limit", 10))
        if limit > 200:
            raise _BadRequest(f"limit must be at most 200, got {limit}")
        after = int(body.get("after") or 0)
        if after >= self.search_cap:
            raise _BadRequest(f"Search results are limited to {self.search_cap}; cannot page past them")
        groups = body.get("filterGroups") or []
        with self.lock:
            now = time.monotonic()
            indexed = [
                self._search_view.get((object_type, r.id), r)
                for r in self.records.get(object_type, {}).values()
                if r.archived_ms is None and self._indexed_at.get((object_type, r.id), 0.0) <= now
            ]
            rows = [
                r
                for r in indexed
                if r is not None and (not groups or any(self._matches(object_type, r, g) for g in groups))
            ]
            rows.sort(key=lambda r: r.seq)
            sorts = body.get("sorts") or []
            if sorts:
                sort = sorts[0]
                name = sort["propertyName"] if isinstance(sort, dict) else str(sort)
                descending = isinstance(sort, dict) and sort.get("direction") == "DESCENDING"
                rows.sort(
                    key=lambda r: _sort_key(name, self._value(object_type, r, name)), reverse=descending
                )
            end = min(after + limit, self.search_cap)  # nothing past the cap is ever returned
            page = rows[after:end]
            results = [self._shape(object_type, r, body.get("properties"), []) for r in page]
        answer: dict[str, Any] = {"total": len(rows), "results": results}
        if end < min(len(rows), self.search_cap):
            answer["paging"] = {"next": {"after": str(end)}}
        return 200, {}, answer

    def _create(self, object_type: str, body: Mapping[str, Any]) -> tuple[int, dict[str, str], Any]:
        """Create one record (tasks), checked the way HubSpot checks it; 201 with the new record."""
        properties = body.get("properties")
        if not isinstance(properties, dict):
            return 400, {}, _error("Invalid input JSON: properties must be an object", "VALIDATION_ERROR")
        allowed = CREATABLE[object_type] | self.custom_properties.get(object_type, set())
        problems = [
            {
                "isValid": False,
                "message": f'Property "{name}" does not exist',
                "error": "PROPERTY_DOESNT_EXIST",
                "name": name,
            }
            for name in properties
            if name not in allowed
        ]
        for name in REQUIRED.get(object_type, ()):
            if properties.get(name) in (None, ""):
                problems.append(
                    {
                        "isValid": False,
                        "message": f"{name} is required",
                        "error": "REQUIRED_FIELD",
                        "name": name,
                    }
                )
        for name, options in OPTIONS.get(object_type, {}).items():
            value = properties.get(name)
            if value not in (None, "") and value not in options:
                problems.append(
                    {
                        "isValid": False,
                        "message": f"{value} was not one of the allowed options: {sorted(options)}",
                        "error": "INVALID_OPTION",
                        "name": name,
                    }
                )
        if problems:
            return (
                400,
                {},
                _error(
                    f"Property values were not valid: {json.dumps(problems)}",
                    "VALIDATION_ERROR",
                    errors=[
                        {
                            "message": p["message"],
                            "code": p["error"],
                            "context": {"propertyName": [p["name"]]},
                        }
                        for p in problems
                    ],
                ),
            )
        links: dict[str, list[str]] = {}
        with self.lock:
            for association in body.get("associations") or []:
                to_id = str((association.get("to") or {}).get("id") or "")
                for kind in association.get("types") or []:
                    to_type = ASSOCIATION_TYPES.get(object_type, {}).get(kind.get("associationTypeId"))
                    if kind.get("associationCategory") != "HUBSPOT_DEFINED" or to_type is None:
                        return (
                            400,
                            {},
                            _error(
                                f"association type {kind} is not valid from {object_type}", "VALIDATION_ERROR"
                            ),
                        )
                    # targets are checked only for object types this stand-in holds
                    if to_type in self.records and to_id not in self.records[to_type]:
                        return (
                            400,
                            {},
                            _error(
                                f"One or more associations are invalid: no {to_type} record with id {to_id}",
                                "VALIDATION_ERROR",
                                subCategory="INVALID_ASSOCIATION",
                            ),
                        )
                    links.setdefault(to_type, []).append(to_id)
            self._next_id += 1
            record_id = str(self._next_id)
            record = self.put(object_type, record_id, properties, links)
            self._indexed_at[(object_type, record_id)] = time.monotonic() + self.search_lag
            external = properties.get(self.external_id_property)
            if external is not None:
                self.creations[str(external)] = self.creations.get(str(external), 0) + 1
            shaped = self._shape(object_type, record, None, [])
        return 201, {}, shaped

    def _batch_associations(
        self, from_type: str, to_type: str, body: Mapping[str, Any]
    ) -> tuple[int, dict[str, str], Any]:
        results, errors = [], []
        with self.lock:
            table = self.records.get(from_type, {})
            for item in body.get("inputs", []):
                record = table.get(str(item["id"]))
                ids = record.associations.get(to_type, []) if record else []
                if not ids:
                    errors.append(
                        {
                            "status": "error",
                            "category": "OBJECT_NOT_FOUND",
                            "context": {"fromObjectId": [item["id"]]},
                        }
                    )
                    continue
                results.append(
                    {
                        "from": {"id": record.id},
                        "to": [
                            {
                                "toObjectId": to_id,
                                "associationTypes": [
                                    {
                                        "category": "HUBSPOT_DEFINED",
                                        "typeId": 1,
                                        "label": "Primary" if i == 0 else None,
                                    }
                                ],
                            }
                            for i, to_id in enumerate(ids)
                        ],
                    }
                )
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if errors:
            answer["errors"] = errors
            answer["numErrors"] = len(errors)
        return (207 if errors else 200), {}, answer

    # ----------------------------------------------------------------------------------- shaping

    def _value(self, object_type: str, record: StoredRecord, name: str) -> Any:
        if name == "hs_object_id":
            return record.id
        if name in self.removed.get(object_type, set()):
            return None
        if name in record.properties:
            return record.properties[name]
        if name == modified_property(object_type):
            return iso_ms(record.modified_ms)
        if name == "createdate":
            return iso_ms(record.created_ms)
        return self.extra.get(object_type, {}).get(name)

    def _matches(self, object_type: str, record: StoredRecord, group: Mapping[str, Any]) -> bool:
        for flt in group.get("filters", []):
            name, operator = flt["propertyName"], flt["operator"]
            value = self._value(object_type, record, name)
            if operator == "HAS_PROPERTY":
                ok = value not in (None, "")
            elif operator == "NOT_HAS_PROPERTY":
                ok = value in (None, "")
            elif operator in ("IN", "NOT_IN"):
                ok = (str(value) in {str(v) for v in flt.get("values", [])}) == (operator == "IN")
            elif name == "hs_object_id" and operator in ("GT", "GTE", "LT", "LTE"):
                # ids compare as HubSpot's numbers; the stand-in's text ids sort after them, as in sorts
                left, right = _sort_key(name, value), _sort_key(name, flt.get("value"))
                ok = {"GT": left > right, "GTE": left >= right, "LT": left < right, "LTE": left <= right}[
                    operator
                ]
            else:
                left, right = _comparable(name, value), _comparable(name, flt.get("value"))
                if left is None or right is None or type(left) is not type(right):
                    ok = operator == "NEQ"
                else:
                    ok = {
                        "EQ": left == right,
                        "NEQ": left != right,
                        "GT": left > right,
                        "GTE": left >= right,
                        "LT": left < right,
                        "LTE": left <= right,
                    }.get(operator, False)
            if not ok:
                return False
        return True

    def _shape(
        self,
        object_type: str,
        record: StoredRecord,
        properties: Sequence[str] | None,
        associations: Sequence[str],
    ) -> dict[str, Any]:
        removed = self.removed.get(object_type, set())
        names = list(properties) if properties else list(record.properties)
        names += ["hs_object_id", "createdate", modified_property(object_type)]
        props = {name: self._value(object_type, record, name) for name in names if name not in removed}
        for name, value in self.extra.get(object_type, {}).items():
            props.setdefault(name, record.properties.get(name, value))
        shaped: dict[str, Any] = {
            "id": record.id,
            "properties": props,
            "createdAt": iso_ms(record.created_ms),
            "updatedAt": iso_ms(record.modified_ms),
            "archived": record.archived_ms is not None,
        }
        if record.archived_ms is not None:
            shaped["archivedAt"] = iso_ms(record.archived_ms)
        links = {}
        for to_type in associations:
            ids = record.associations.get(to_type)
            if ids:
                singular = f"{object_type.rstrip('s')}_to_{to_type.rstrip('s')}"
                links[to_type] = {
                    "results": [
                        {"id": to_id, "type": singular if i == 0 else f"{singular}_unlabeled"}
                        for i, to_id in enumerate(ids)
                    ]
                }
        if links:
            shaped["associations"] = links
        return shaped


class _BadRequest(Exception):
    pass


def _error(message: str, category: str, **extra: Any) -> dict[str, Any]:
    return {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
        **extra,
    }


def _fault_response(fault: _Fault) -> tuple[int, dict[str, str], Any]:
    headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
    if fault.status == 429:
        return (
            429,
            headers,
            _error(
                "You have reached your ten_secondly_rolling limit.",
                "RATE_LIMITS",
                policyName="TEN_SECONDLY_ROLLING",
            ),
        )
    return fault.status, headers, _error("internal error", "INTERNAL_ERROR")


def _one(query: Mapping[str, list[str]], name: str, default: str) -> str:
    values = query.get(name)
    return values[0] if values else default


def _csv(query: Mapping[str, list[str]], name: str) -> list[str]:
    return [item for value in query.get(name, []) for item in value.split(",") if item]


def _comparable(name: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if name in DATE_PROPERTIES:
        # filter values are epoch milliseconds; stored values are ISO text
        return int(value) if str(value).isdigit() else timestamp_ms(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _sort_key(name: str, value: Any) -> tuple[int, Any]:
    """Dates sort as their ISO text, ids as numbers (text ids after them); nulls last."""
    if value is None:
        return (2, "")
    if name == "hs_object_id":
        text = str(value)
        return (0, int(text)) if text.isdigit() else (1, text)
    return (0, str(value))


class _Handler(BaseHTTPRequestHandler):
    state: HubSpotServer

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = LoggedRequest(
            time.monotonic(),
            self.command,
            parts.path,
            parse_qs(parts.query),
            body,
            authorization=self.headers.get("Authorization"),
        )
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra_headers, answer = self.state.handle(request, headers)
        payload = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra_headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to answer

    do_GET = _serve  # noqa: N815
    do_POST = _serve  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # keep test output quiet; requests are in HubSpotServer.requests


# ---------------------------------------------------------------------------------------------- harness


class HubSpotHarness:
    """`tests/vendors/harness.SourceHarness` for HubSpot: canonical text in, HubSpot's shape stored."""

    name = "hubspot"

    def __init__(self, server: HubSpotServer, mapping: HubSpotMapping, config: Mapping[str, Any]) -> None:
        self.server = server
        self.mapping = mapping
        self.config = dict(config)
        self.environ = {TOKEN_ENV: server.token}

    def connector(self) -> HubSpotConnector:
        return HubSpotConnector.from_config(self.name, self.config, environ=self.environ)

    def seed(self, records: Mapping[str, Sequence[Record]]) -> None:
        self.server.clear()
        for obj in OBJECTS:  # parents first, as HubSpot would hold them
            for record in records.get(obj, []):
                self._store(obj, record, bump=False)

    def upsert(self, object: str, record: Record) -> None:  # noqa: A002
        self._store(object, record, bump=True)

    def delete(self, object: str, key: str) -> None:  # noqa: A002
        for source in self.mapping.objects[object].sources:
            if key in self.server.records.get(source.object_type, {}):
                self.server.archive(source.object_type, key)
                return
        raise KeyError(f"hubspot stand-in holds no {object} record {key!r}")

    def close(self) -> None:
        self.server.stop()

    # ---------------------------------------------------------------------------- reverse mapping

    def _store(self, obj: str, record: Record, *, bump: bool) -> None:
        source = self._source_for(obj, record)
        key = record[OBJECTS[obj].key]
        assert key is not None, f"{obj} record without key"
        properties: dict[str, Any] = {}
        associations: dict[str, list[str]] = {}
        modified_ms: int | None = None
        for spec in source.columns:
            value = record.get(spec.column)
            if spec.association:
                if value is not None:
                    associations[spec.association] = [value]
            elif spec.property:
                for name, required in spec.when.items():
                    properties[name] = required if value is not None else None
                if spec.property == source.modified_property:
                    modified_ms = timestamp_ms(value)
                    if modified_ms is None and value is not None:
                        properties[spec.property] = value  # broken on purpose: pass it through as stored
                    continue
                properties[spec.property] = self._vendor_value(spec, value)
        # other sources of the same object may hold the key (an activity changing kind)
        for other in self.mapping.objects[obj].sources:
            if other.object_type != source.object_type:
                self.server.records.get(other.object_type, {}).pop(key, None)
        if bump:
            modified_ms = self.server.tick(modified_ms)
        self.server.put(source.object_type, key, properties, associations, modified_ms=modified_ms)

    def _source_for(self, obj: str, record: Record) -> SourceSpec:
        sources = self.mapping.objects[obj].sources
        if len(sources) == 1:
            return sources[0]
        for source in sources:
            for spec in source.columns:
                value = (record.get(spec.column) or "").strip().lower()
                if spec.column == "kind" and (spec.constant == value or value in spec.values.values()):
                    return source
        # an unknown kind goes where kind is a property, so the broken value reaches the sync as written
        return next(
            (s for s in sources if any(c.column == "kind" and c.property for c in s.columns)), sources[0]
        )

    def _vendor_value(self, spec: ColumnSpec, value: str | None) -> Any:
        if value is None:
            return None
        if spec.owner:
            return self.server.add_owner(value)
        if spec.transform == "timezone":
            return hubspot_timezone(value) if timezone_text(hubspot_timezone(value)) == value else value
        if spec.values:
            wanted = value.strip().lower()
            return next((vendor for vendor, canonical in spec.values.items() if canonical == wanted), value)
        if spec.kind in (Kind.EVENT_TS, Kind.PLANNED_TS):
            ms = timestamp_ms(value)
            return value if ms is None else iso_ms(ms)
        if spec.kind == Kind.BOOL:
            lowered = value.strip().lower()
            return {"1": "true", "true": "true", "0": "false", "false": "false"}.get(lowered, value)
        return value


def make_harness(tmp_path: Path, **server_options: Any) -> HubSpotHarness:
    """A started stand-in and a harness whose connector reads every canonical object from it."""
    server = HubSpotServer(token=f"pat-na1-{uuid.uuid4()}", **server_options).start()
    config = {
        "api_base": server.url,
        "token_env": TOKEN_ENV,
        "objects": list(OBJECTS),
        # the stand-in's custom objects for the customer-defined NPS responses and contracts
        "object_types": {"nps_responses": "2-1000001", "contracts": "2-1000002"},
        "rate_per_second": 200,
        "search_rate_per_second": 4,
        "timeout": 5,
        "max_attempts": 4,
        "retry_wait": 0.05,
    }
    if "search_cap" in server_options:
        config["search_cap"] = server_options["search_cap"]
    return HubSpotHarness(server, load_mapping().with_object_types(config["object_types"]), config)
