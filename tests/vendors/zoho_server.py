"""A small Zoho CRM v8 stand-in on 127.0.0.1 for tests, and the SourceHarness that drives it.

One responsibility: behave like the parts of Zoho CRM's published API the connector uses, and misbehave
on request. Served: POST /oauth/v2/token (refresh-token grant, form body or query string), and with an
`Authorization: Zoho-oauthtoken <token>` header GET /crm/v8/settings/fields?module=M,
GET /crm/v8/<M> (fields, page/per_page, page_token, sort_by/sort_order, If-Modified-Since -> 304,
204 for an empty module) and GET /crm/v8/<M>/deleted (type, page/per_page, If-Modified-Since).
Errors use Zoho's body shape {"code", "details", "message", "status": "error"}.

For the crm_task sink also: POST /crm/v8/<M> (Insert Records: {"data": [...]} -> 201, 202 when some
records fail, 400 when all fail; per record SUCCESS with details.id, or MANDATORY_NOT_FOUND,
INVALID_DATA for a lookup to a record that does not exist, DUPLICATE_DATA with
details.duplicate_record.id for a field marked unique) and GET /crm/v8/<M>/search?criteria=(F:equals:V)
(204 when nothing matches; `equals` matches as "contains", as Zoho documents for v8; INVALID_QUERY for a
field the module does not have). Switches: `fail_next_write` / `delay_next_write` act on writes only,
`unique_fields`, `after_insert`; `creations` counts successful inserts per external id value.

The server keeps its own clock (`clock`): every change is stamped with it and then moves it on by one
second, and the HTTP Date header shows it, so tests about modification times are exact and repeatable.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from actionlayer.contract import OBJECTS
from connectors.base import Record
from connectors.zoho import ModuleMapping, ZohoConnector, ZohoMapping, load_mapping
from tests.vendors.loopback_http import LoopbackHttpServer

ORG_TIMEZONE = timezone(timedelta(hours=5, minutes=30))  # Zoho answers in the org's offset, not UTC
PAGE_LIMIT = 2000  # Zoho refuses `page` beyond the 2000th record; `page_token` goes on from there
SYSTEM_FIELDS = {"Owner": "lookup", "Created_Time": "datetime", "Modified_Time": "datetime"}
CLIENT_ID = "1000.TESTCLIENTID"
CLIENT_SECRET = "zoho-client-secret-5f1e9a7c"
REFRESH_TOKEN = "1000.refresh-token-8d2b7e41.c0ffee"


def zoho_time(moment: datetime) -> str:
    return moment.astimezone(ORG_TIMEZONE).isoformat(timespec="seconds")


def _error(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"code": code, "details": dict(details or {}), "message": message, "status": "error"}


@dataclass(frozen=True)
class LoggedRequest:
    at: float  # time.monotonic() when it arrived
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int


class ZohoServer(LoopbackHttpServer):
    """In-memory Zoho CRM. Records are stored in Zoho's shape: module -> id -> field -> JSON value."""

    def __init__(self, start: datetime = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)) -> None:
        self.lock = threading.RLock()
        self.clock = start
        self.schema: dict[str, dict[str, str]] = {}  # module -> field API name -> Zoho data type
        self.records: dict[str, dict[str, dict[str, Any]]] = {}
        self.deleted: dict[str, list[dict[str, Any]]] = {}
        self.tokens: set[str] = set()
        self.token_grants = 0
        self.requests: list[LoggedRequest] = []
        self._token_numbers = itertools.count(1)
        self._failures: list[tuple[int, float | None]] = []
        self._delays: list[float] = []
        self.phantom_more = False  # the real last page says more_records: true; the next one is empty
        self.after_list: Callable[[str, int], None] | None = None  # (module, n-th list call) after a page
        self.list_calls: dict[str, int] = {}
        # crm_task sink support (writes and search); none of it changes the read behaviour above
        self.external_id_field = "Actionlayer_Action_Id"
        self.creations: dict[str, int] = {}  # external id value -> records created with it
        self.unique_fields: dict[str, set[str]] = {}  # module -> fields marked "do not allow duplicates"
        self.mandatory_fields: dict[str, tuple[str, ...]] = {"Tasks": ("Subject",)}
        self.after_insert: Callable[[str, dict[str, Any]], None] | None = None  # (module, stored record)
        self._write_failures: list[tuple[int, float | None]] = []
        self._write_delays: list[float] = []
        self._record_ids = itertools.count(5725767000000100001)
        self._serve(_handler_for(self), 0, "zoho-stand-in")

    # -- data --------------------------------------------------------------------------------------------

    def stamp(self) -> datetime:
        """The current server time for a change; the clock then moves on by one second."""
        with self.lock:
            moment = self.clock
            self.clock += timedelta(seconds=1)
            return moment

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.clock += timedelta(seconds=seconds)

    def define_module(self, module: str, fields: Mapping[str, str]) -> None:
        with self.lock:
            self.schema[module] = {**SYSTEM_FIELDS, **fields}
            self.records.setdefault(module, {})
            self.deleted.setdefault(module, [])

    def reset(self) -> None:
        with self.lock:
            self.schema.clear()
            self.records.clear()
            self.deleted.clear()

    def put(self, module: str, record: Mapping[str, Any], *, touch: bool = True) -> dict[str, Any]:
        """Store a record (Zoho shape). `touch` stamps Modified_Time with the server clock, as any edit
        in Zoho does; without it a Modified_Time already in the record is kept (seeding history)."""
        with self.lock:
            stored = dict(record)
            previous = self.records[module].get(str(stored["id"]))
            given = _parse_contract_time(str(stored.get("Modified_Time") or ""))
            if touch or given is None:
                # Zoho keeps Modified_Time itself: it is always a valid time
                stored["Modified_Time"] = zoho_time(self.stamp())
            else:
                self.clock = max(self.clock, given.astimezone(UTC) + timedelta(seconds=1))
            stored.setdefault("Created_Time", (previous or {}).get("Created_Time") or stored["Modified_Time"])
            self.records[module][str(stored["id"])] = stored
            return stored

    def set_field(self, module: str, record_id: str, field: str, value: Any, *, touch: bool = True) -> None:
        with self.lock:
            record = dict(self.records[module][record_id])
            record[field] = value
            self.put(module, record, touch=touch)

    def delete_record(self, module: str, record_id: str, *, at: datetime | None = None) -> None:
        """Move a record to the recycle bin, stamped with the server clock, or with `at` (a deletion
        stamped in an earlier second that only becomes visible now, like a late commit)."""
        with self.lock:
            record = self.records[module].pop(record_id)
            self.deleted[module].append(
                {
                    "id": record_id,
                    "display_name": str(record.get("Name") or record_id),
                    "type": "recycle",
                    "deleted_by": {"name": "Test User", "id": "1"},
                    "deleted_time": zoho_time(at if at is not None else self.stamp()),
                }
            )

    def add_field(
        self, module: str, field: str, data_type: str, value: Callable[[dict[str, Any]], Any]
    ) -> None:
        """A field added to the module's layout, filled in on every record (without touching them)."""
        with self.lock:
            self.schema[module][field] = data_type
            for record in self.records[module].values():
                record[field] = value(record)

    def remove_field(self, module: str, field: str) -> None:
        with self.lock:
            self.schema[module].pop(field, None)
            for record in self.records[module].values():
                record.pop(field, None)

    # -- misbehaviour ------------------------------------------------------------------------------------

    def expire_token(self) -> None:
        """Every access token issued so far stops working (Zoho tokens live an hour)."""
        with self.lock:
            self.tokens.clear()

    def fail_next(self, n: int, status: int = 429, retry_after: float | None = 1) -> None:
        with self.lock:
            self._failures.extend([(status, retry_after)] * n)

    def delay_next(self, n: int, seconds: float) -> None:
        with self.lock:
            self._delays.extend([seconds] * n)

    def fail_next_write(self, n: int, status: int = 429, retry_after: float | None = 1) -> None:
        """Like `fail_next`, for the next `n` POST requests only (reads are answered normally)."""
        with self.lock:
            self._write_failures.extend([(status, retry_after)] * n)

    def delay_next_write(self, n: int, seconds: float) -> None:
        """The next `n` POST requests are held this long, then carried out (a client that timed out
        meanwhile never hears that its record was created)."""
        with self.lock:
            self._write_delays.extend([seconds] * n)

    def api_requests(self, path_prefix: str = "/crm/v8/") -> list[LoggedRequest]:
        return [r for r in self.requests if r.path.startswith(path_prefix)]

    # -- request handling (called from the handler threads) ---------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], headers: Mapping[str, str], body: bytes):
        """-> (status, JSON body or None, extra headers)."""
        if method == "POST" and path == "/oauth/v2/token":
            form = dict(parse_qsl(body.decode("utf-8"))) if body else {}
            return self._token({**query, **form})
        if not path.startswith("/crm/v8/"):
            return (
                404,
                _error("INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one"),
                {},
            )
        with self.lock:
            failure = self._failures.pop(0) if self._failures else None
            delay = self._delays.pop(0) if self._delays else 0.0
            if method == "POST":
                failure = failure or (self._write_failures.pop(0) if self._write_failures else None)
                delay = delay or (self._write_delays.pop(0) if self._write_delays else 0.0)
        if delay:
            time.sleep(delay)
        if failure:
            status, retry_after = failure
            extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            if status == 429:
                return status, _error("TOO_MANY_REQUESTS", "too many requests continuously"), extra
            return status, _error("INTERNAL_ERROR", "Internal Server Error"), extra
        authorization = headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        with self.lock:
            valid = scheme == "Zoho-oauthtoken" and token in self.tokens
        if not valid:
            return 401, _error("INVALID_TOKEN", "invalid oauth token"), {}
        write_parts = path[len("/crm/v8/") :].strip("/").split("/")
        if method == "POST" and len(write_parts) == 1 and write_parts[0] not in ("settings", "coql"):
            return self._insert(write_parts[0], body)
        if method != "GET":
            return (
                405,
                _error("INVALID_REQUEST_METHOD", "The http request method type is not a valid one"),
                {},
            )
        parts = path[len("/crm/v8/") :].strip("/").split("/")
        if parts == ["settings", "fields"]:
            return self._fields(query)
        if len(parts) == 1:
            return self._list(parts[0], query, headers)
        if len(parts) == 2 and parts[1] == "deleted":
            return self._deleted(parts[0], query, headers)
        if len(parts) == 2 and parts[1] == "search":
            return self._search(parts[0], query)
        return (
            404,
            _error("INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one"),
            {},
        )

    def _token(self, params: Mapping[str, str]):
        if params.get("grant_type") != "refresh_token":
            return 200, {"error": "unsupported_grant_type"}, {}
        if params.get("client_id") != CLIENT_ID or params.get("client_secret") != CLIENT_SECRET:
            return 200, {"error": "invalid_client"}, {}
        if params.get("refresh_token") != REFRESH_TOKEN:
            return 200, {"error": "invalid_code"}, {}
        with self.lock:
            token = f"1000.access{next(self._token_numbers)}.x"
            self.tokens.add(token)
            self.token_grants += 1
        body = {"access_token": token, "api_domain": "", "token_type": "Bearer", "expires_in": 3600}
        return 200, body, {}

    def _fields(self, query: Mapping[str, str]):
        module = query.get("module", "")
        with self.lock:
            if module not in self.schema:
                return (
                    400,
                    _error("INVALID_MODULE", "the module name given seems to be invalid", {"module": module}),
                    {},
                )
            fields = [{"api_name": name, "data_type": kind} for name, kind in self.schema[module].items()]
        return 200, {"fields": fields}, {}

    @staticmethod
    def _since(headers: Mapping[str, str]) -> datetime | None:
        # Zoho's docs for GET records and GET deleted records: If-Modified-Since returns only what was
        # modified (deleted) AFTER the given time, and 304 Not Modified when nothing was. The callers
        # compare strictly (`>`), so a change stamped in the header's own second is not returned.
        value = headers.get("If-Modified-Since")
        return datetime.fromisoformat(value).astimezone(UTC) if value else None

    def _list(self, module: str, query: Mapping[str, str], headers: Mapping[str, str]):
        with self.lock:
            if module not in self.schema:
                return (
                    400,
                    _error("INVALID_MODULE", "the module name given seems to be invalid", {"module": module}),
                    {},
                )
            if not query.get("fields"):
                return (
                    400,
                    _error(
                        "REQUIRED_PARAM_MISSING",
                        "One of the expected parameter is missing",
                        {"param": "fields"},
                    ),
                    {},
                )
            try:
                per_page = min(int(query.get("per_page", 200)), 200)
                page = int(query.get("page", 1))
            except ValueError:
                return 400, _error("INVALID_DATA", "invalid data", {"param": "page"}), {}
            sort_by = query.get("sort_by", "id")
            sort_order = query.get("sort_order", "desc")
            token = query.get("page_token")
            offset = (page - 1) * per_page
            if token:
                offset = json.loads(base64.urlsafe_b64decode(token.encode()).decode())["offset"]
            elif page * per_page > PAGE_LIMIT:
                return (
                    400,
                    _error("DISCRETE_PAGINATION_LIMIT_EXCEEDED", "use page_token beyond 2000 records"),
                    {},
                )
            all_records = list(self.records[module].values())
            since = self._since(headers)
            if not all_records:
                return 204, None, {}
            matching = [
                r for r in all_records if since is None or datetime.fromisoformat(r["Modified_Time"]) > since
            ]
            if since is not None and not matching:
                return 304, None, {}

            def order(record: dict[str, Any]) -> Any:
                if sort_by in ("Modified_Time", "Created_Time"):
                    return (datetime.fromisoformat(record[sort_by]), record["id"])
                return record["id"]

            matching.sort(key=order, reverse=sort_order == "desc")
            chunk = matching[offset : offset + per_page]
            more = offset + per_page < len(matching)
            if not chunk and not self.phantom_more:
                return 204, None, {}
            if self.phantom_more and not more and chunk:
                more = True
            requested = [name for name in query["fields"].split(",") if name in self.schema[module]]
            data = [
                {
                    "id": r["id"],
                    **{name: r[name] for name in requested if name in r},
                    **{k: v for k, v in r.items() if k.startswith("$")},
                }
                for r in chunk
            ]
            next_token = None
            if more:
                next_token = base64.urlsafe_b64encode(
                    json.dumps({"offset": offset + per_page}).encode()
                ).decode()
            info = {
                "per_page": per_page,
                "count": len(data),
                "page": page,
                "sort_by": sort_by,
                "sort_order": sort_order,
                "more_records": more,
                "next_page_token": next_token,
                "previous_page_token": None,
                "page_token_expiry": None,
            }
            self.list_calls[module] = self.list_calls.get(module, 0) + 1
            calls = self.list_calls[module]
        if self.after_list:
            self.after_list(module, calls)
        return 200, {"data": data, "info": info}, {}

    def _deleted(self, module: str, query: Mapping[str, str], headers: Mapping[str, str]):
        with self.lock:
            if module not in self.schema:
                return (
                    400,
                    _error("INVALID_MODULE", "the module name given seems to be invalid", {"module": module}),
                    {},
                )
            since = self._since(headers)
            per_page = min(int(query.get("per_page", 200)), 200)
            page = int(query.get("page", 1))
            entries = [
                e
                for e in self.deleted[module]
                if since is None or datetime.fromisoformat(e["deleted_time"]) > since
            ]
            if not entries:
                return (304 if since else 204), None, {}
            chunk = entries[(page - 1) * per_page : page * per_page]
            more = page * per_page < len(entries)
            info = {"per_page": per_page, "count": len(chunk), "page": page, "more_records": more}
            return 200, {"data": chunk, "info": info}, {}

    # -- writes and search (crm_task sink) ----------------------------------------------------------

    def _insert(self, module: str, body: bytes):
        """Insert Records: every record is checked and stored on its own, as Zoho does."""
        with self.lock:
            if module not in self.schema:
                return (
                    400,
                    _error("INVALID_MODULE", "the module name given seems to be invalid", {"module": module}),
                    {},
                )
        try:
            document = json.loads(body.decode("utf-8")) if body else None
        except ValueError:
            document = None
        records = document.get("data") if isinstance(document, dict) else None
        if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
            return 400, _error("INVALID_DATA", "the input data is not a list of records"), {}
        if len(records) > 100:
            return 400, _error("LIMIT_EXCEEDED", "at most 100 records per request"), {}
        results = [self._insert_one(module, index, record) for index, record in enumerate(records)]
        ok = sum(1 for result in results if result["status"] == "success")
        status = 201 if ok == len(results) else 400 if ok == 0 else 202
        stored = [self.records[module][r["details"]["id"]] for r in results if r["status"] == "success"]
        if self.after_insert:
            for record in stored:
                self.after_insert(module, record)
        return status, {"data": results}, {}

    def _insert_one(self, module: str, index: int, raw: dict[str, Any]) -> dict[str, Any]:
        def failed(code: str, message: str, api_name: str, **details: Any) -> dict[str, Any]:
            where = {"api_name": api_name, "json_path": f"$.data[{index}].{api_name}", **details}
            return {"code": code, "details": where, "message": message, "status": "error"}

        with self.lock:
            fields = self.schema[module]
            for name in self.mandatory_fields.get(module, ()):
                if raw.get(name) in (None, ""):
                    return failed("MANDATORY_NOT_FOUND", "required field not found", name)
            for name, modules in (("What_Id", raw.get("$se_module")), ("Who_Id", "Contacts")):
                value = raw.get(name)
                if value is None:
                    continue
                if not isinstance(value, dict) or not value.get("id"):
                    return failed("INVALID_DATA", "invalid data", name, expected_data_type="lookup")
                if name == "What_Id" and not modules:
                    return failed("MANDATORY_NOT_FOUND", "required field not found", "$se_module")
                # lookups are checked only against modules this stand-in holds
                if modules in self.records and str(value["id"]) not in self.records[modules]:
                    return failed(
                        "INVALID_DATA", "the related id given seems to be invalid", name, id=str(value["id"])
                    )
            for name in sorted(self.unique_fields.get(module, set())):
                value = raw.get(name)
                if value in (None, ""):
                    continue
                twin = next((r for r in self.records[module].values() if r.get(name) == value), None)
                if twin is not None:
                    return failed(
                        "DUPLICATE_DATA",
                        "duplicate data",
                        name,
                        duplicate_record={"id": twin["id"], "module": {"api_name": module}},
                    )
            # Zoho ignores keys that are not fields of the module; `$se_module` is kept with What_Id
            stored = {k: v for k, v in raw.items() if k in fields or k == "$se_module"}
            stored["id"] = str(next(self._record_ids))
            stored = self.put(module, stored)
            external = stored.get(self.external_id_field)
            if external is not None:
                self.creations[str(external)] = self.creations.get(str(external), 0) + 1
            user = {"name": "API User", "id": "5725767000000411001"}
            details = {
                "Modified_Time": stored["Modified_Time"],
                "Modified_By": user,
                "Created_Time": stored["Created_Time"],
                "id": stored["id"],
                "Created_By": user,
            }
            return {"code": "SUCCESS", "details": details, "message": "record added", "status": "success"}

    def _search(self, module: str, query: Mapping[str, str]):
        with self.lock:
            if module not in self.schema:
                return (
                    400,
                    _error("INVALID_MODULE", "the module name given seems to be invalid", {"module": module}),
                    {},
                )
            criteria = query.get("criteria")
            if not criteria:
                return (
                    400,
                    _error(
                        "REQUIRED_PARAM_MISSING",
                        "One of the expected parameter is missing",
                        {"param": "criteria"},
                    ),
                    {},
                )
            conditions = _parse_criteria(criteria)
            if conditions is None:
                return (
                    400,
                    _error("INVALID_QUERY", "invalid query formed", {"reason": "invalid criteria"}),
                    {},
                )
            for name, _, _ in conditions:
                if name != "id" and name not in self.schema[module]:
                    return (
                        400,
                        _error(
                            "INVALID_QUERY",
                            "invalid query formed",
                            {"reason": "the field is not available for search", "api_name": name},
                        ),
                        {},
                    )

            def matches(record: Mapping[str, Any]) -> bool:
                for name, operator, wanted in conditions:
                    value = record.get(name)
                    if isinstance(value, dict):
                        value = value.get("id")
                    text, wanted_text = str(value or "").lower(), wanted.lower()
                    # v8: `equals` behaves like "contains"; callers must check the exact value themselves
                    ok = wanted_text in text if operator == "equals" else text.startswith(wanted_text)
                    if not ok:
                        return False
                return True

            found = [dict(r) for r in self.records[module].values() if matches(r)]
            if not found:
                return 204, None, {}
            per_page = min(int(query.get("per_page", 200)), 200)
            page = int(query.get("page", 1))
            chunk = found[(page - 1) * per_page : page * per_page]
            requested = [n for n in (query.get("fields") or "").split(",") if n]
            if requested:
                chunk = [{k: v for k, v in r.items() if k == "id" or k in requested} for r in chunk]
            info = {
                "per_page": per_page,
                "count": len(chunk),
                "page": page,
                "more_records": page * per_page < len(found),
            }
            return 200, {"data": chunk, "info": info}, {}


_CONDITION = re.compile(r"^\(?\(([A-Za-z0-9_$]+):(equals|starts_with):((?:\\.|[^\\()])*)\)\)?$")


def _parse_criteria(text: str) -> list[tuple[str, str, str]] | None:
    """One condition `(Field:equals:value)` (optionally in double parentheses); backslash escapes."""
    match = _CONDITION.match(text.strip())
    if not match:
        return None
    value = re.sub(r"\\(.)", r"\1", match.group(3))
    return [(match.group(1), match.group(2), value)]


def _handler_for(server: ZohoServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def date_time_string(self, timestamp: float | None = None) -> str:
            # the Date header shows the stand-in's own clock, which tests control
            with server.lock:
                return format_datetime(server.clock, usegmt=True)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet: requests are kept in server.requests

        def _serve(self, method: str) -> None:
            arrived = time.monotonic()
            parts = urlsplit(self.path)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name: value for name, value in self.headers.items()}
            status, document, extra = server.handle(method, parts.path, query, headers, body)
            logged_headers = {k: v for k, v in headers.items() if k in ("If-Modified-Since",)}
            with server.lock:
                server.requests.append(
                    LoggedRequest(arrived, method, parts.path, query, logged_headers, status)
                )
            payload = json.dumps(document).encode() if document is not None else b""
            try:
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                if document is not None:
                    self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if payload:
                    self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test); nothing to answer

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

    return Handler


# ------------------------------------------------------------------------------ canonical <-> Zoho shape


def _parse_contract_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _zoho_value(text: str | None, zoho_type: str) -> Any:
    """Canonical text as Zoho would hold it; text that does not parse is stored as it is (broken data
    must reach the connector unchanged)."""
    if text is None:
        return None
    if zoho_type == "boolean" and text.strip().lower() in ("true", "false", "1", "0"):
        return text.strip().lower() in ("true", "1")
    if zoho_type == "currency":
        try:
            return float(Decimal(text))
        except InvalidOperation:
            return text
    if zoho_type == "integer":
        try:
            return int(text)
        except ValueError:
            return text
    if zoho_type in ("datetime", "date"):
        moment = _parse_contract_time(text)
        if moment is None:
            return text
        return zoho_time(moment) if zoho_type == "datetime" else moment.astimezone(UTC).date().isoformat()
    return text


def _set_path(target: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for part in path[:-1]:
        existing = target.get(part)
        if not isinstance(existing, dict):
            if value is None and existing is None:
                target[part] = None  # an empty lookup is null, not {"id": null}
                return
            existing = {}
            target[part] = existing
        target = existing
    target[path[-1]] = value


def to_zoho(record: Record, module: ModuleMapping) -> dict[str, Any]:
    """The reverse of connectors.zoho.to_record for one module (constants only choose the module)."""
    raw: dict[str, Any] = {}
    for spec in module.columns:
        if spec.is_constant or spec.column not in record:
            continue
        text = record[spec.column]
        reverse = {canonical: vendor for vendor, canonical in reversed(list(spec.values.items()))}
        value = reverse.get(text, text) if text is not None else None
        if spec.path == ("id",):
            raw["id"] = text
            continue
        zoho_type = "text" if len(spec.path) > 1 else spec.zoho_type
        _set_path(raw, spec.path, _zoho_value(value, zoho_type))
        if spec.when is not None and text is not None:
            _set_path(raw, spec.when[0], spec.when[1])
    for name, value in record.items():
        if name not in OBJECTS[module.object].column_names:
            raw[name] = value  # a vendor field outside the contract stays under its own name
    return raw


def module_schema(module: ModuleMapping) -> dict[str, str]:
    fields: dict[str, str] = {}
    for spec in module.columns:
        if spec.path and spec.path != ("id",):
            fields[spec.path[0]] = "lookup" if len(spec.path) > 1 else spec.zoho_type
    return fields


def module_for(mapping: ZohoMapping, obj: str, record: Record) -> ModuleMapping:
    """The module a canonical record lives in: the one whose constant or picklist yields its values."""
    modules = mapping.objects[obj]
    if len(modules) == 1:
        return modules[0]
    for module in modules:
        if all(
            not spec.is_constant or spec.constant is None or record.get(spec.column) == spec.constant
            for spec in module.columns
        ) and any(spec.is_constant and spec.constant is not None for spec in module.columns):
            return module
    for module in modules:
        for spec in module.columns:
            if spec.values and record.get(spec.column) in spec.values.values():
                return module
    # a value no module produces (broken data): the module that passes that column through unchanged
    for module in modules:
        if any(spec.values for spec in module.columns):
            return module
    return modules[0]


# ------------------------------------------------------------------------------------------- harness


class ZohoHarness:
    """tests/vendors/harness.SourceHarness for Zoho CRM, backed by a `ZohoServer` on 127.0.0.1."""

    name = "zoho"

    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.tmp_path = tmp_path
        self.server = ZohoServer().start()
        self.mapping = load_mapping()
        # secrets live in this dict, handed to from_config, never in os.environ
        self.environ = {
            "TEST_ZOHO_CLIENT_ID": CLIENT_ID,
            "TEST_ZOHO_CLIENT_SECRET": CLIENT_SECRET,
            "TEST_ZOHO_REFRESH_TOKEN": REFRESH_TOKEN,
        }
        self.config: dict[str, Any] = {
            "api_base": self.server.base_url,
            "accounts_base": self.server.base_url,
            "client_id_env": "TEST_ZOHO_CLIENT_ID",
            "client_secret_env": "TEST_ZOHO_CLIENT_SECRET",
            "refresh_token_env": "TEST_ZOHO_REFRESH_TOKEN",
            "timeout": 2.0,
            "retry": {"max_attempts": 4, "initial_wait": 0.05, "max_wait": 0.2, "max_retry_after": 2.0},
            **config,
        }
        self._define_modules()

    def _define_modules(self) -> None:
        for modules in self.mapping.objects.values():
            for module in modules:
                self.server.define_module(module.module, module_schema(module))

    def connector(self) -> ZohoConnector:
        return ZohoConnector.from_config(self.name, self.config, self.environ)

    def _locate(self, obj: str, key: str) -> str | None:
        for module in self.mapping.objects[obj]:
            if key in self.server.records.get(module.module, {}):
                return module.module
        return None

    def seed(self, records: Mapping[str, Sequence[Record]]) -> None:
        with self.server.lock:
            self.server.reset()
            self._define_modules()
            for obj in OBJECTS:  # parents first, as Zoho would need them
                for record in records.get(obj, ()):
                    module = module_for(self.mapping, obj, record)
                    self.server.put(module.module, to_zoho(record, module), touch=False)

    def upsert(self, object: str, record: Record) -> None:  # noqa: A002
        key = str(record[OBJECTS[object].key])
        module = module_for(self.mapping, object, record)
        with self.server.lock:
            current = self._locate(object, key)
            if current is not None and current != module.module:
                # Zoho cannot move a record between modules: it is deleted there and created here
                self.server.delete_record(current, key)
            previous = self.server.records[module.module].get(key, {})
            self.server.put(module.module, {**previous, **to_zoho(record, module)}, touch=True)

    def delete(self, object: str, key: str) -> None:  # noqa: A002
        with self.server.lock:
            module = self._locate(object, key)
            if module is None:
                raise KeyError(f"{object} {key!r} is not on the Zoho stand-in")
            self.server.delete_record(module, key)

    def as_carried(self, object: str, record: Record) -> Record:  # noqa: A002
        """The record as Zoho can hold it: a date field (Invoice_Date, Due_Date, …) keeps no time of day."""
        module = module_for(self.mapping, object, record)
        carried = dict(record)
        for spec in module.columns:
            text = carried.get(spec.column)
            if spec.zoho_type == "date" and text and _TIMESTAMP_TEXT.match(text):
                carried[spec.column] = text[:10]
        return carried

    def close(self) -> None:
        self.server.stop()


_TIMESTAMP_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]")


def make_harness(tmp_path: Path, **config: Any) -> ZohoHarness:
    """A running Zoho stand-in and the settings of a connector pointed at it."""
    return ZohoHarness(tmp_path, **config)
