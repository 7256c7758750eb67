"""The `crm_task` channel: an approved action becomes a task in the System of Record (Zoho CRM v8 or
HubSpot CRM v3), so it lands in the CRM's activity history next to the deal, account and contact.

One responsibility: create exactly one task per action id. Every task carries the action id in a custom
field (Zoho `Actionlayer_Action_Id`, HubSpot `actionlayer_action_id`; both must be created in the CRM
first). A send is:

1. search the tasks by that field; a hit means the task exists (an earlier send got through, e.g. before
   a crash left the action in `sending`) -> delivered with the existing id, nothing created;
2. create the task. Only failures where the CRM provably did not act (429, connection refused) are
   retried on the spot by the transport. A failure after the request may have been acted on (a read
   timeout, a 5xx, a dropped connection) is "ambiguous": the sink waits `settle_seconds`, searches again
   and creates only if the task is still not there (at most `create_rounds` creates per send);
3. a permanent 4xx (missing custom field, invalid id, refused token) -> failed, not retryable, with the
   vendor's error code and message in the reason.

Idempotency (`idempotent = True`, so the dispatcher re-sends an interrupted `sending` by itself):
- Zoho: the search is the guard, and with the custom field marked "Do not allow duplicate values" Zoho
  itself refuses a second task with DUPLICATE_DATA, which the sink reads as "already created" (the
  existing id is in details.duplicate_record.id). With the unique flag a duplicate is impossible; without
  it, a re-send is safe once the first create has landed (Zoho search is immediate in practice).
- HubSpot: weaker. Search reads an index that trails writes by a few seconds (HubSpot documents no bound),
  and task properties cannot be made unique. A re-send within that lag of a create that did land finds
  nothing and creates a second task. Inside one send the sink waits `settle_seconds` (default 10) before
  searching after an ambiguous failure; across dispatch passes the window is open only if the next pass
  starts within the lag of the crash or failure, which scheduled dispatch makes unlikely but not
  impossible. Operators who cannot accept that set `idempotent: false`: interrupted and uncertain sends
  then become `unknown` for a person, as for SMTP.

Record ids: the action's `record_type`/`record_id`, `contact_id` and `account_id` (message.metadata) are
used as the CRM's own ids. That holds when the canonical records were synced from this same CRM (the
Zoho and HubSpot connectors keep the vendor id as the canonical key); for records from another source the
CRM answers with an invalid-id error and the action fails with that reason. Zoho: `What_Id` links the
deal (or the account, ticket -> Cases, invoice -> Invoices; else the account), with `$se_module` naming
the module, and `Who_Id` the contact. HubSpot: the task is associated with every one of deal, company,
contact and ticket it has an id for (HubSpot-defined association types 216, 192, 204, 230).

The due date is `proposed_at` + `due_in_days` (not the wall clock), so a re-send builds the same task.
Secrets are read from the environment variables named in the settings when the sink is built and never
appear in a result, a log line, `describe()` or `repr()`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from action_sinks.base import OutboundMessage, SendResult, SinkConfigError, single_line
from connectors.base import ConnectorError
from connectors.transport import HttpTransport, RetryPolicy, TransientHTTPError
from connectors.zoho import API_PREFIX as ZOHO_API_PREFIX
from connectors.zoho import TOKEN_PATH as ZOHO_TOKEN_PATH
from connectors.zoho import ZohoOAuth

log = logging.getLogger(__name__)

SINK_NAME = "crm_task"
VENDORS = ("zoho", "hubspot")
DEFAULT_HUBSPOT_URL = "https://api.hubapi.com"
SUBJECT_MAX = 255  # Zoho's Subject and HubSpot's hs_task_subject
BODY_MAX = 30_000  # below Zoho's 32,000-character Description and HubSpot's 65,536 hs_task_body
REASON_MAX = 400
# every answer except 429 is handed back to the sink, which reads the vendor's error body itself
# (HTTPStatusError keeps only 500 characters of it); 429 and 5xx stay with the transport
ANSWERED = tuple(status for status in range(200, 500) if status != 429)
# transport errors raised before the request reached the vendor: safe to send again at once
NOT_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

ZOHO_WHAT_MODULES = {"deal": "Deals", "account": "Accounts", "ticket": "Cases", "invoice": "Invoices"}
HUBSPOT_TASK_ASSOCIATIONS = {"deals": 216, "companies": 192, "contacts": 204, "tickets": 230}
HUBSPOT_RECORD_TYPES = {"deal": "deals", "account": "companies", "contact": "contacts", "ticket": "tickets"}

COMMON_KEYS = frozenset(
    {
        "sink",
        "vendor",
        "base_url",
        "timeout",
        "rate_per_second",
        "max_attempts",
        "retry_wait",
        "settle_seconds",
        "create_rounds",
        "due_in_days",
        "status",
        "priority",
        "action_id_field",
        "idempotent",
    }
)
ZOHO_KEYS = COMMON_KEYS | {"accounts_url", "client_id_env", "client_secret_env", "refresh_token_env"}
HUBSPOT_KEYS = COMMON_KEYS | {"token_env", "search_rate_per_second"}


# ------------------------------------------------------------------------------------------ outcomes


class _SendProblem(Exception):
    """Raised inside a send; never a ConnectorError or httpx error, so the transport passes it through."""


class _Permanent(_SendProblem):
    """The CRM refused for good (4xx): sending the same request again cannot help."""


class _NotSent(_SendProblem):
    """The CRM provably did not act (rate limited, unreachable, search failed): try again later."""


class _Ambiguous(_SendProblem):
    """The request may have been acted on before it failed (read timeout, 5xx, dropped connection)."""


@dataclass(frozen=True)
class _Created:
    task_id: str
    already: str | None = None  # why the task existed already (None: created by this request)


def _trim(text: str, limit: int = REASON_MAX) -> str:
    text = single_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _transport_problem(exc: ConnectorError, what: str) -> _SendProblem:
    """Classify what HttpTransport raised for a write (it retried only what was provably not acted on)."""
    if isinstance(exc, TransientHTTPError):
        if exc.status == 429:
            return _NotSent(f"{what}: still rate limited (429) after the transport's retries")
        return _Ambiguous(f"{what}: answered {exc.status}")
    status = getattr(exc, "status", None)
    if status is not None:  # HTTPStatusError: a 5xx the write transport does not retry
        return _Ambiguous(f"{what}: answered {status}: {_trim(getattr(exc, 'body', ''), 200)}")
    cause = exc.__cause__
    if isinstance(cause, NOT_SENT_ERRORS):
        return _NotSent(f"{what}: could not connect ({type(cause).__name__})")
    return _Ambiguous(f"{what}: {type(cause or exc).__name__} after the request was sent")


# ------------------------------------------------------------------------------------------ base sink


class _CrmTaskSink:
    """Search-before-create around two vendor calls; subclasses implement `_find` and `_create`."""

    name = SINK_NAME
    vendor = ""

    def __init__(
        self,
        *,
        read: HttpTransport,
        write: HttpTransport,
        settle_seconds: float,
        create_rounds: int = 2,
        due_in_days: int = 1,
        idempotent: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.read = read
        self.write = write
        self.settle_seconds = settle_seconds
        self.create_rounds = max(1, create_rounds)
        self.due_in_days = due_in_days
        self.idempotent = idempotent
        self.sleep = sleep

    # -- subclass interface ----------------------------------------------------------------------------

    @property
    def where(self) -> str:
        raise NotImplementedError

    def _find(self, action_id: str) -> str | None:
        raise NotImplementedError

    def _create(self, message: OutboundMessage) -> _Created:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------------

    def close(self) -> None:
        self.read.close()
        self.write.close()

    def _search(self, action_id: str) -> str | None:
        try:
            return self._find(action_id)
        except ConnectorError as exc:
            # the search only reads: whatever went wrong, it created nothing
            raise _NotSent(f"searching for the task failed: {_trim(str(exc), 300)}") from exc

    def send(self, message: OutboundMessage) -> SendResult:
        action = message.action_id
        maybe_created = False  # an ambiguous create happened: the CRM may hold a task we never heard of
        try:
            existing = self._search(action)
            if existing:
                return self._delivered(existing, f"task {existing} already created for action {action}")
            last: _Ambiguous | None = None
            for round_number in range(1, self.create_rounds + 1):
                try:
                    created = self._create(message)
                except _Ambiguous as exc:
                    maybe_created, last = True, exc
                    log.warning(
                        "%s: creating the task for action %s may or may not have worked (%s); "
                        "searching again in %.1fs before creating (round %d of %d)",
                        self.where,
                        action,
                        exc,
                        self.settle_seconds,
                        round_number,
                        self.create_rounds,
                    )
                    # let a request still in flight land, and (HubSpot) the search index catch up
                    self.sleep(self.settle_seconds)
                    existing = self._search(action)
                    if existing:
                        return self._delivered(
                            existing,
                            f"task {existing} created for action {action} (confirmed by search after: {exc})",
                        )
                    continue
                if created.already:
                    return self._delivered(created.task_id, f"task {created.task_id} {created.already}")
                return self._delivered(created.task_id, f"task {created.task_id} created for action {action}")
            assert last is not None
            return SendResult(
                ok=False,
                retryable=True,
                uncertain=True,
                detail=f"{self.where}: {last}; after {self.create_rounds} tries the search still finds no task "
                f"for action {action}; the next dispatch searches again before creating",
            )
        except _Permanent as exc:
            tail = (
                "; an earlier try may have created the task: check before re-sending"
                if maybe_created
                else "; nothing created"
            )
            return SendResult(
                ok=False, retryable=False, uncertain=maybe_created, detail=f"{self.where}: {exc}{tail}"
            )
        except _NotSent as exc:
            tail = "; an earlier try may have created the task" if maybe_created else "; nothing created"
            return SendResult(
                ok=False, retryable=True, uncertain=maybe_created, detail=f"{self.where}: {exc}{tail}"
            )

    def _delivered(self, task_id: str, detail: str) -> SendResult:
        return SendResult(
            ok=True, detail=f"{self.where}: {detail}", external_id=f"{self.vendor}:task:{task_id}"
        )

    def _post(self, path: str, body: Any, what: str) -> httpx.Response:
        try:
            return self.write.request("POST", path, json=body, expected=ANSWERED)
        except ConnectorError as exc:
            raise _transport_problem(exc, what) from exc


def _due(message: OutboundMessage, days: int) -> datetime:
    """Due moment (UTC) from the action's proposal time, so every re-send builds the same task."""
    proposed = message.metadata.get("proposed_at")
    moment: datetime | None = None
    if isinstance(proposed, datetime):
        moment = proposed
    elif isinstance(proposed, str) and proposed.strip():
        try:
            moment = datetime.fromisoformat(proposed.strip())
        except ValueError:
            moment = None
    if moment is None:
        moment = datetime.now(UTC)  # no proposal time: the only honest fallback is now
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the ledger stores naive UTC
    return moment.astimezone(UTC) + timedelta(days=days)


def _subject(message: OutboundMessage) -> str:
    text = (
        single_line(message.subject) or single_line(message.metadata.get("recommended_action")) or "Follow up"
    )
    return text[:SUBJECT_MAX]


def _body(message: OutboundMessage) -> str:
    meta = message.metadata
    rule = meta.get("rule_id")
    version = meta.get("rule_version")
    footer = [f"Actionlayer action {message.action_id}"]
    if rule:
        footer.append(f"rule {rule}" + (f" v{version}" if version is not None else ""))
    if message.recipient:
        footer.append(f"for {single_line(message.recipient)}")
    text = (message.body or "").rstrip()
    footer_text = " · ".join(footer)
    room = BODY_MAX - len(footer_text) - 2
    return (text[:room] + "\n\n" + footer_text) if text else footer_text


def _meta_id(message: OutboundMessage, key: str) -> str | None:
    value = message.metadata.get(key)
    return str(value).strip() or None if value is not None else None


# ----------------------------------------------------------------------------------------------- Zoho


class ZohoTaskSink(_CrmTaskSink):
    """Creates Zoho CRM Tasks (Insert Records) after a Search Records on the action id field."""

    vendor = "zoho"

    def __init__(
        self,
        *,
        base_url: str,
        accounts_url: str,
        auth: ZohoOAuth,
        read: HttpTransport,
        write: HttpTransport,
        accounts: HttpTransport,
        env_names: Mapping[str, str],
        action_id_field: str = "Actionlayer_Action_Id",
        status: str = "Not Started",
        priority: str = "Normal",
        settle_seconds: float = 2.0,
        create_rounds: int = 2,
        due_in_days: int = 1,
        idempotent: bool = True,
    ) -> None:
        super().__init__(
            read=read,
            write=write,
            settle_seconds=settle_seconds,
            create_rounds=create_rounds,
            due_in_days=due_in_days,
            idempotent=idempotent,
        )
        self.base_url = base_url
        self.accounts_url = accounts_url
        self.auth = auth
        self.accounts = accounts
        self.env_names = dict(env_names)
        self.action_id_field = action_id_field
        self.status = status
        self.priority = priority

    @property
    def where(self) -> str:
        return f"Zoho CRM {urlsplit(self.base_url).netloc or self.base_url}"

    def __repr__(self) -> str:
        return f"ZohoTaskSink(base_url={self.base_url!r}, field={self.action_id_field!r})"

    def describe(self) -> str:
        names = ", ".join(f"{key}={value}" for key, value in sorted(self.env_names.items()))
        return (
            f"crm_task → Zoho CRM Tasks at {self.base_url} (token from {self.accounts_url}; {names}); "
            f"action id in {self.action_id_field}; {'idempotent' if self.idempotent else 'not idempotent'}"
        )

    def close(self) -> None:
        super().close()
        self.accounts.close()

    @classmethod
    def from_settings(
        cls, entry: Mapping[str, Any], where: str, environ: Mapping[str, str] | None = None
    ) -> ZohoTaskSink:
        env = os.environ if environ is None else environ
        settings = _Settings(entry, where, ZOHO_KEYS)
        base_url = settings.url("base_url")
        accounts_url = settings.url("accounts_url")
        env_names = {
            key: settings.text(key) for key in ("client_id_env", "client_secret_env", "refresh_token_env")
        }
        client_id, client_secret, refresh_token = (settings.secret(key, env) for key in env_names)
        timeout, retry, rate = settings.transport_options()
        accounts = HttpTransport(f"{where} (Zoho accounts)", accounts_url, timeout=timeout, retry=retry)
        label = where

        def fetch_token() -> tuple[str, float]:
            # form body, not query string: URLs end up in logs; values never enter a message below
            try:
                response = accounts.request(
                    "POST",
                    ZOHO_TOKEN_PATH,
                    data={
                        "grant_type": "refresh_token",
                        "client_id": client_id,
                        "client_secret": client_secret,
                        "refresh_token": refresh_token,
                    },
                )
            except ConnectorError as exc:
                raise _NotSent(f"could not refresh the Zoho access token: {_trim(str(exc), 200)}") from exc
            body = _json(response)
            token = body.get("access_token") if isinstance(body, dict) else None
            if not token:
                error = body.get("error") if isinstance(body, dict) else "answer is not JSON"
                raise _Permanent(
                    f"Zoho refused to refresh the access token ({error or 'no access_token'}); check the "
                    f"variables named by client_id_env, client_secret_env and refresh_token_env in {label}"
                )
            expires = body.get("expires_in", 3600)
            return str(token), float(expires) if isinstance(expires, int | float) else 3600.0

        auth = ZohoOAuth(fetch_token)
        read = HttpTransport(where, base_url, auth=auth, timeout=timeout, retry=retry, rate_per_second=rate)
        write = _write_transport(where, base_url, auth, timeout, retry, read)
        defaults = {"status": "Not Started", "priority": "Normal", "action_id_field": "Actionlayer_Action_Id"}
        return cls(
            base_url=base_url,
            accounts_url=accounts_url,
            auth=auth,
            read=read,
            write=write,
            accounts=accounts,
            env_names=env_names,
            action_id_field=settings.text("action_id_field", defaults["action_id_field"]),
            status=settings.text("status", defaults["status"]),
            priority=settings.text("priority", defaults["priority"]),
            settle_seconds=settings.number("settle_seconds", 2.0, minimum=0.0),
            create_rounds=settings.integer("create_rounds", 2, minimum=1),
            due_in_days=settings.integer("due_in_days", 1, minimum=0),
            idempotent=settings.flag("idempotent", True),
        )

    # -- vendor calls ----------------------------------------------------------------------------------

    def _find(self, action_id: str) -> str | None:
        # criteria values escape backslash, parentheses and commas (Zoho's search syntax)
        value = "".join("\\" + ch if ch in "\\()," else ch for ch in action_id)
        response = self.read.request(
            "GET",
            f"{ZOHO_API_PREFIX}/Tasks/search",
            params={
                "criteria": f"({self.action_id_field}:equals:{value})",
                "fields": f"id,{self.action_id_field}",
                "per_page": 200,
            },
            expected=ANSWERED,
        )
        if response.status_code == 204:
            return None
        body = _json(response)
        if response.status_code != 200:
            raise _Permanent(
                f"searching Tasks by {self.action_id_field} failed: {_zoho_error(response, body)}"
            )
        records = body.get("data") if isinstance(body, dict) else None
        # v8's `equals` matches like "contains": only an exact value is this action's task
        ids = sorted(
            str(record["id"])
            for record in records or []
            if isinstance(record, dict)
            and record.get("id")
            and str(record.get(self.action_id_field)) == action_id
        )
        if len(ids) > 1:
            log.warning("%s: %d tasks carry action id %s; using %s", self.where, len(ids), action_id, ids[0])
        return ids[0] if ids else None

    def _task(self, message: OutboundMessage) -> dict[str, Any]:
        task: dict[str, Any] = {
            "Subject": _subject(message),
            "Description": _body(message),
            "Due_Date": _due(message, self.due_in_days).date().isoformat(),
            "Status": self.status,
            "Priority": self.priority,
            self.action_id_field: message.action_id,
        }
        record_type = (message.metadata.get("record_type") or "").strip().lower()
        record_id = _meta_id(message, "record_id")
        account_id = _meta_id(message, "account_id")
        contact_id = _meta_id(message, "contact_id") or (record_id if record_type == "contact" else None)
        if record_type in ZOHO_WHAT_MODULES and record_id:
            task["What_Id"] = {"id": record_id}
            task["$se_module"] = ZOHO_WHAT_MODULES[record_type]
        elif account_id:
            # a record Zoho tasks cannot point at (NPS response, contract): the account keeps it findable
            task["What_Id"] = {"id": account_id}
            task["$se_module"] = "Accounts"
        if contact_id:
            task["Who_Id"] = {"id": contact_id}
        return task

    def _create(self, message: OutboundMessage) -> _Created:
        response = self._post(
            f"{ZOHO_API_PREFIX}/Tasks", {"data": [self._task(message)]}, "creating the task"
        )
        body = _json(response)
        entries = body.get("data") if isinstance(body, dict) else None
        entry = entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], dict) else None
        if entry is None:
            if 200 <= response.status_code < 300:
                # a 2xx we cannot read: the task may exist, and the next search will tell
                raise _Ambiguous(
                    f"creating the task answered {response.status_code} without a readable result"
                )
            raise _Permanent(f"creating the task failed: {_zoho_error(response, body)}")
        code = entry.get("code")
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        if code == "SUCCESS" and details.get("id"):
            return _Created(str(details["id"]))
        duplicate = (
            details.get("duplicate_record") if isinstance(details.get("duplicate_record"), dict) else {}
        )
        if (
            code == "DUPLICATE_DATA"
            and details.get("api_name") == self.action_id_field
            and duplicate.get("id")
        ):
            return _Created(
                str(duplicate["id"]),
                already=f"already created for action {message.action_id} (Zoho DUPLICATE_DATA on {self.action_id_field})",
            )
        raise _Permanent(f"creating the task failed: {_zoho_error(response, entry)}")


def _zoho_error(response: httpx.Response, body: Any) -> str:
    """Zoho's code, message and the field it names; falls back to the HTTP status."""
    if isinstance(body, dict) and isinstance(body.get("data"), list) and body["data"]:
        body = body["data"][0]
    if not isinstance(body, dict) or not body.get("code"):
        return f"HTTP {response.status_code}"
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    named = details.get("api_name") or details.get("param") or details.get("module")
    reason = details.get("reason")
    text = f"{body.get('code')} ({response.status_code}): {body.get('message') or ''}"
    if named:
        text += f" [{named}]"
    if reason:
        text += f" – {reason}"
    if response.status_code == 401:
        text += " (still unauthorised after refreshing the access token once)"
    return _trim(text, 300)


# -------------------------------------------------------------------------------------------- HubSpot


class _BearerToken(httpx.Auth):
    """Private-app token as a bearer header; kept out of every repr, log and error."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Iterable[httpx.Request]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "_BearerToken(***)"


class HubSpotTaskSink(_CrmTaskSink):
    """Creates HubSpot tasks (CRM v3 objects) after a search on the action id property."""

    vendor = "hubspot"

    def __init__(
        self,
        *,
        base_url: str,
        read: HttpTransport,
        write: HttpTransport,
        token_env: str,
        action_id_field: str = "actionlayer_action_id",
        status: str = "NOT_STARTED",
        priority: str = "MEDIUM",
        settle_seconds: float = 10.0,
        create_rounds: int = 2,
        due_in_days: int = 1,
        idempotent: bool = True,
    ) -> None:
        super().__init__(
            read=read,
            write=write,
            settle_seconds=settle_seconds,
            create_rounds=create_rounds,
            due_in_days=due_in_days,
            idempotent=idempotent,
        )
        self.base_url = base_url
        self.token_env = token_env
        self.action_id_field = action_id_field
        self.status = status
        self.priority = priority

    @property
    def where(self) -> str:
        return f"HubSpot {urlsplit(self.base_url).netloc or self.base_url}"

    def __repr__(self) -> str:
        return f"HubSpotTaskSink(base_url={self.base_url!r}, property={self.action_id_field!r})"

    def describe(self) -> str:
        return (
            f"crm_task → HubSpot tasks at {self.base_url} (token_env={self.token_env}); action id in "
            f"{self.action_id_field}; {'idempotent' if self.idempotent else 'not idempotent'}, "
            f"settles {self.settle_seconds:g}s for the search index"
        )

    @classmethod
    def from_settings(
        cls, entry: Mapping[str, Any], where: str, environ: Mapping[str, str] | None = None
    ) -> HubSpotTaskSink:
        env = os.environ if environ is None else environ
        settings = _Settings(entry, where, HUBSPOT_KEYS)
        base_url = settings.url("base_url", DEFAULT_HUBSPOT_URL)
        token_env = settings.text("token_env")
        token = settings.secret("token_env", env)
        timeout, retry, rate = settings.transport_options()
        auth = _BearerToken(token)
        headers = {"Accept": "application/json"}
        # HubSpot limits search far below other calls (per token, per second): reads get their own rate
        search_rate = settings.number("search_rate_per_second", 4.0, minimum=0.0) or None
        read = HttpTransport(
            where,
            base_url,
            auth=auth,
            timeout=timeout,
            retry=retry,
            rate_per_second=search_rate,
            headers=headers,
        )
        write = HttpTransport(
            where,
            base_url,
            auth=auth,
            timeout=timeout,
            retry=retry,
            rate_per_second=rate,
            headers=headers,
            retry_statuses=(429,),
            retry_transport_errors=NOT_SENT_ERRORS,
        )
        return cls(
            base_url=base_url,
            read=read,
            write=write,
            token_env=token_env,
            action_id_field=settings.text("action_id_field", "actionlayer_action_id"),
            status=settings.text("status", "NOT_STARTED"),
            priority=settings.text("priority", "MEDIUM"),
            settle_seconds=settings.number("settle_seconds", 10.0, minimum=0.0),
            create_rounds=settings.integer("create_rounds", 2, minimum=1),
            due_in_days=settings.integer("due_in_days", 1, minimum=0),
            idempotent=settings.flag("idempotent", True),
        )

    def _find(self, action_id: str) -> str | None:
        body = {
            "filterGroups": [
                {"filters": [{"propertyName": self.action_id_field, "operator": "EQ", "value": action_id}]}
            ],
            "properties": [self.action_id_field],
            "sorts": [{"propertyName": "hs_createdate", "direction": "ASCENDING"}],
            "limit": 10,
        }
        response = self.read.request("POST", "/crm/v3/objects/tasks/search", json=body, expected=ANSWERED)
        answer = _json(response)
        if response.status_code != 200 or not isinstance(answer, dict):
            raise _Permanent(
                f"searching tasks by {self.action_id_field} failed: {_hubspot_error(response, answer)}"
            )
        ids = [
            str(result["id"])
            for result in answer.get("results") or []
            if isinstance(result, dict)
            and result.get("id")
            and str((result.get("properties") or {}).get(self.action_id_field)) == action_id
        ]
        if len(ids) > 1:
            log.warning("%s: %d tasks carry action id %s; using %s", self.where, len(ids), action_id, ids[0])
        return ids[0] if ids else None

    def _task(self, message: OutboundMessage) -> dict[str, Any]:
        due = _due(message, self.due_in_days)
        properties = {
            "hs_task_subject": _subject(message),
            "hs_task_body": _body(message),
            # for tasks hs_timestamp is the due date
            "hs_timestamp": due.strftime("%Y-%m-%dT%H:%M:%S.") + f"{due.microsecond // 1000:03d}Z",
            "hs_task_status": self.status,
            "hs_task_priority": self.priority,
            self.action_id_field: message.action_id,
        }
        targets: dict[str, str] = {}
        record_type = (message.metadata.get("record_type") or "").strip().lower()
        record_id = _meta_id(message, "record_id")
        if record_type in HUBSPOT_RECORD_TYPES and record_id:
            targets[HUBSPOT_RECORD_TYPES[record_type]] = record_id
        for key, object_type in (("account_id", "companies"), ("contact_id", "contacts")):
            value = _meta_id(message, key)
            if value:
                targets.setdefault(object_type, value)
        associations = [
            {
                "to": {"id": to_id},
                "types": [
                    {
                        "associationCategory": "HUBSPOT_DEFINED",
                        "associationTypeId": HUBSPOT_TASK_ASSOCIATIONS[kind],
                    }
                ],
            }
            for kind, to_id in targets.items()
        ]
        return {"properties": properties, "associations": associations}

    def _create(self, message: OutboundMessage) -> _Created:
        response = self._post("/crm/v3/objects/tasks", self._task(message), "creating the task")
        answer = _json(response)
        if response.status_code in (200, 201):
            if isinstance(answer, dict) and answer.get("id"):
                return _Created(str(answer["id"]))
            raise _Ambiguous(f"creating the task answered {response.status_code} without an id")
        raise _Permanent(f"creating the task failed: {_hubspot_error(response, answer)}")


def _hubspot_error(response: httpx.Response, body: Any) -> str:
    """HubSpot's category, the codes of its errors and its message; falls back to the HTTP status."""
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    codes = [str(e.get("code")) for e in body.get("errors") or [] if isinstance(e, dict) and e.get("code")]
    category = body.get("category") or "error"
    text = f"{category}{' ' + ','.join(codes) if codes else ''} ({response.status_code}): {body.get('message') or ''}"
    if response.status_code == 401:
        text += " (the token in the variable named by token_env was refused)"
    return _trim(text, 400)


# ------------------------------------------------------------------------------------------- settings


def _write_transport(
    where: str,
    base_url: str,
    auth: httpx.Auth,
    timeout: float,
    retry: RetryPolicy,
    read: HttpTransport,
) -> HttpTransport:
    """A transport for creates: retries only what provably never reached the CRM (429, no connection),
    and shares the read transport's rate limiter so one per-second budget covers both."""
    write = HttpTransport(
        where,
        base_url,
        auth=auth,
        timeout=timeout,
        retry=retry,
        retry_statuses=(429,),
        retry_transport_errors=NOT_SENT_ERRORS,
    )
    write.limiter = read.limiter
    return write


class _Settings:
    """Reads one channel entry; every error names the file/channel (`where`) and the key."""

    def __init__(self, entry: Mapping[str, Any], where: str, known: frozenset[str]) -> None:
        unknown = sorted(set(entry) - known)
        if unknown:
            raise SinkConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {sorted(known)}")
        self.entry = entry
        self.where = where

    def text(self, key: str, default: str | None = None) -> str:
        value = self.entry.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise SinkConfigError(f"{self.where}.{key}: missing or empty (sink crm_task needs it)")
        return value.strip()

    def url(self, key: str, default: str | None = None) -> str:
        value = self.text(key, default)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SinkConfigError(f"{self.where}.{key}: {value!r} is not an http(s) URL")
        return value.rstrip("/")

    def secret(self, key: str, environ: Mapping[str, str]) -> str:
        variable = self.text(key)
        value = environ.get(variable)
        if not value or not value.strip():
            # the key and the variable's name, never a value
            raise SinkConfigError(
                f"{self.where}.{key}: names environment variable {variable}, which is not set"
            )
        return value.strip()

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self.entry.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise SinkConfigError(f"{self.where}.{key}: {value!r} is not a number >= {minimum:g}")
        return float(value)

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self.entry.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SinkConfigError(f"{self.where}.{key}: {value!r} is not a whole number >= {minimum}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.entry.get(key, default)
        if not isinstance(value, bool):
            raise SinkConfigError(f"{self.where}.{key}: {value!r} is not true/false")
        return value

    def transport_options(self) -> tuple[float, RetryPolicy, float | None]:
        timeout = self.number("timeout", 30.0)
        if timeout <= 0:
            raise SinkConfigError(f"{self.where}.timeout: must be more than 0 seconds")
        rate = self.number("rate_per_second", 0.0) or None  # 0 or absent: no client-side limit
        retry = RetryPolicy(
            max_attempts=self.integer("max_attempts", RetryPolicy.max_attempts, minimum=1),
            initial_wait=self.number("retry_wait", RetryPolicy.initial_wait),
        )
        return timeout, retry, rate


def crm_task_sink(
    entry: Mapping[str, Any], where: str, environ: Mapping[str, str] | None = None
) -> ZohoTaskSink | HubSpotTaskSink:
    """Build the crm_task sink a channel entry asks for (`vendor: zoho | hubspot`)."""
    vendor = entry.get("vendor")
    if vendor == "zoho":
        return ZohoTaskSink.from_settings(entry, where, environ)
    if vendor == "hubspot":
        return HubSpotTaskSink.from_settings(entry, where, environ)
    raise SinkConfigError(f"{where}.vendor: {vendor!r} is not one of {', '.join(VENDORS)}")


__all__ = ["HubSpotTaskSink", "ZohoTaskSink", "crm_task_sink", "SINK_NAME"]
