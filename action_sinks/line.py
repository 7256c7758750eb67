"""Pushes approved actions to LINE users, groups or rooms through the Messaging API's push endpoint.

One responsibility: turn one OutboundMessage into one LINE push that is executed at most once, and tell
the dispatcher what happened. Every request carries `X-Line-Retry-Key`, a UUID derived from the action id
alone, so every attempt of an action, in any process, uses the same key: LINE executes a key once and
answers a repeat with 409 (`x-line-accepted-request-id` names the accepted request). That makes retries
safe, so 429, 5xx, timeouts and dropped connections are retried with backoff that honours `Retry-After`,
and a 409 for our key means an earlier attempt got through: the action is delivered, not sent twice.

Limits of that guarantee: LINE keeps a retry key for 24 hours after the first request, so an action must
not be retried (by a later dispatch pass) more than a day after its first attempt; and 409 is only ever
read as "already accepted" when LINE says so (header or message), otherwise it is a retryable failure.

The channel access token is read from the environment variable named in the settings, per request; it is
never stored on the sink and never appears in a result, a log line, a ledger row or an exception text.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from action_sinks.base import OutboundMessage, SendResult, single_line
from action_sinks.http_sink import EnvBearerAuth, TokenHttpSink
from connectors.base import ConnectorError
from connectors.transport import RETRY_STATUSES, HttpTransport, RetryPolicy, TransientHTTPError

DEFAULT_BASE_URL = "https://api.line.me"
# LINE allows 2,000 push requests per second per channel; far below that keeps a runaway loop polite
DEFAULT_RATE_PER_SECOND = 100.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_ATTEMPTS = 5
PUSH_PATH = "/v2/bot/message/push"
MAX_TEXT_UNITS = 5000  # per text message, counted in UTF-16 code units as LINE counts them
MAX_MESSAGES = 5  # per push request
MONTHLY_LIMIT = "monthly limit"

# fixed forever: changing it would give every action a new retry key and lose the duplicate protection
RETRY_KEY_NAMESPACE = uuid.UUID("6f1c1d4e-3b0a-5d3e-9a51-0c8f7f2b6a11")
# a user (U), group (C) or room (R) id: one letter and 32 lowercase hex digits
_LINE_ID = re.compile(r"^[UCR][0-9a-f]{32}$")
# every status comes back to the sink except those the transport retries
_ANSWERS = tuple(status for status in range(100, 600) if status not in RETRY_STATUSES)


def retry_key_for(action_id: str) -> str:
    """The `X-Line-Retry-Key` of an action: a name-based UUID, the same in every process and attempt."""
    return str(uuid.uuid5(RETRY_KEY_NAMESPACE, action_id))


def _units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


def text_messages(message: OutboundMessage) -> list[dict[str, str]] | None:
    """Subject and body as LINE text messages of at most 5,000 UTF-16 units each (a character is never
    split); None when even five messages cannot hold it."""
    subject = single_line(message.subject)
    body = (message.body or "").rstrip()
    text = f"{subject}\n\n{body}" if subject and body else subject or body
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for char in text:
        if used + _units(char) > MAX_TEXT_UNITS:
            chunks.append("".join(current))
            current, used = [], 0
        current.append(char)
        used += _units(char)
    chunks.append("".join(current))
    if len(chunks) > MAX_MESSAGES:
        return None
    return [{"type": "text", "text": chunk} for chunk in chunks]


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _line_error(document: Mapping[str, Any], fallback: str) -> str:
    """LINE's `message` plus each `details` entry as `property: message`."""
    text = single_line(str(document.get("message") or fallback))
    details = document.get("details")
    if isinstance(details, list) and details:
        parts = [
            f"{d.get('property')}: {d.get('message')}" if d.get("property") else str(d.get("message"))
            for d in details
            if isinstance(d, dict)
        ]
        text += f" [{'; '.join(single_line(p) for p in parts)}]"
    return text


def _sent_ids(document: Mapping[str, Any]) -> list[str]:
    sent = document.get("sentMessages")
    if not isinstance(sent, list):
        return []
    return [str(item["id"]) for item in sent if isinstance(item, dict) and item.get("id")]


class LineSink(TokenHttpSink):
    """One LINE Messaging API channel (one LINE Official Account)."""

    name = "line"
    # the retry key makes a repeated push a no-op on LINE's side
    idempotent = True
    TOKEN_LABEL = "channel access token"
    ACTIONS = "pushes"
    DEFAULT_BASE_URL = DEFAULT_BASE_URL
    DEFAULT_TIMEOUT = DEFAULT_TIMEOUT
    DEFAULT_RATE_PER_SECOND = DEFAULT_RATE_PER_SECOND
    DEFAULT_MAX_ATTEMPTS = DEFAULT_MAX_ATTEMPTS
    describe_extra = " per push, X-Line-Retry-Key"

    def __init__(
        self,
        token_env: str,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT,
        rate_per_second: float = DEFAULT_RATE_PER_SECOND,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        *,
        environ: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._settle(token_env, base_url, timeout, rate_per_second, max_attempts, environ, retry)
        # default retry set (429, 5xx, every transport error): safe because of the retry key
        self._transport = HttpTransport(
            "line push",
            self.base_url,
            auth=EnvBearerAuth(self._environ, token_env),
            timeout=self.timeout,
            retry=self.retry,
            rate_per_second=self.rate_per_second,
            sleep=sleep,
        )

    @property
    def where(self) -> str:
        return f"LINE at {self.base_url}"

    def close(self) -> None:
        self._transport.close()

    def send(self, message: OutboundMessage) -> SendResult:
        recipient = single_line(message.recipient)
        if not _LINE_ID.match(recipient):
            return SendResult(
                ok=False,
                retryable=False,
                detail=f"{self.where}: recipient {recipient or '(none)'!r} is not a LINE user, group or room "
                "id (U/C/R and 32 hex digits); nothing was sent",
            )
        if not self._environ.get(self.token_env):
            return SendResult(
                ok=False,
                retryable=True,
                detail=f"{self.where}: channel access token variable {self.token_env} is not set; "
                "nothing was sent",
            )
        messages = text_messages(message)
        if messages is None:
            return SendResult(
                ok=False,
                retryable=False,
                detail=f"{self.where}: the message is longer than {MAX_MESSAGES} LINE text messages of "
                f"{MAX_TEXT_UNITS} characters; nothing was sent",
            )
        key = retry_key_for(message.action_id)
        before = self._transport.attempts
        try:
            response = self._transport.request(
                "POST",
                PUSH_PATH,
                json={"to": recipient, "messages": messages},
                headers={"X-Line-Retry-Key": key},
                expected=_ANSWERS,
            )
        except TransientHTTPError as exc:
            return self._gave_up(exc, recipient, key, self._transport.attempts - before)
        except (ConnectorError, httpx.HTTPError) as exc:
            cause = exc.__cause__ if isinstance(exc, ConnectorError) and exc.__cause__ else exc
            return SendResult(
                ok=False,
                retryable=True,
                detail=f"{self.where}: push to {recipient} failed after {self._transport.attempts - before} "
                f"attempt(s) ({type(cause).__name__}: {cause}); safe to retry with retry key {key}",
            )
        return self._outcome(response, recipient, key, self._transport.attempts - before)

    def _gave_up(self, exc: TransientHTTPError, recipient: str, key: str, attempts: int) -> SendResult:
        # the transport's message ends with the (trimmed) response body, LINE's JSON error
        raw = str(exc).split(f"answered {exc.status}: ", 1)[-1]
        try:
            document = json.loads(raw)
        except ValueError:
            document = {}
        reason = _line_error(document if isinstance(document, dict) else {}, raw or f"HTTP {exc.status}")
        if exc.status == 429 and MONTHLY_LIMIT in reason.lower():
            # the quota resets monthly or when someone raises it: later dispatch passes cannot help
            return SendResult(
                ok=False,
                retryable=False,
                detail=f"{self.where} refused the push to {recipient}: 429 {reason} "
                "(the channel's monthly message quota is used up); nothing was sent",
            )
        return SendResult(
            ok=False,
            retryable=True,
            detail=f"{self.where} answered {exc.status} to all {attempts} attempts to push to {recipient}: "
            f"{reason}; safe to retry with retry key {key}",
        )

    def _outcome(self, response: httpx.Response, recipient: str, key: str, attempts: int) -> SendResult:
        status = response.status_code
        document = _body(response)
        request_id = response.headers.get("x-line-request-id") or "?"
        retried = f" after {attempts} attempts" if attempts > 1 else ""
        if status == 200:
            ids = _sent_ids(document)
            return SendResult(
                ok=True,
                detail=f"pushed to {recipient} by {self.where} (request {request_id}){retried}",
                external_id=",".join(ids) or request_id,
            )
        accepted_id = response.headers.get("x-line-accepted-request-id")
        if status == 409 and (accepted_id or "already accepted" in str(document.get("message", "")).lower()):
            ids = _sent_ids(document)
            return SendResult(
                ok=True,
                detail=f"LINE had already accepted this push to {recipient} under retry key {key} "
                f"(request {accepted_id or '?'}): an earlier attempt got through, so it was not sent again",
                external_id=",".join(ids) or accepted_id or request_id,
            )
        reason = _line_error(document, single_line(response.text)[:200] or f"HTTP {status}")
        if status == 409 or status >= 500:
            # a 409 that does not confirm acceptance (e.g. the first request still in progress) or a 5xx
            # outside the transport's retry set: trying again later with the same key stays safe
            return SendResult(
                ok=False,
                retryable=True,
                detail=f"{self.where} answered {status} to the push to {recipient}: {reason} "
                f"(request {request_id}); safe to retry with retry key {key}",
            )
        if status == 401:
            reason += f" (check the channel access token in {self.token_env})"
        return SendResult(
            ok=False,
            retryable=False,
            detail=f"{self.where} rejected the push to {recipient} with HTTP {status}: {reason} "
            f"(request {request_id}); nothing was sent",
        )
