"""Posts approved actions to Slack through the Web API's `chat.postMessage`, as the configured bot.

One responsibility: turn one OutboundMessage into at most one Slack post and tell the dispatcher what
happened. The recipient is a channel id or `#name` (used as is), a user id, or an email address, which
`users.lookupByEmail` turns into a user id so the bot writes to that person directly.

Slack has no idempotency key, so a repeated `chat.postMessage` can post twice. The sink therefore retries
only where Slack provably did not act: HTTP 429 (honouring `Retry-After`) and failures to connect. Any
failure after the request may have reached Slack (read timeout, connection reset, HTTP 5xx, and Slack's
own `internal_error` / `fatal_error`, which its documentation says may have partly succeeded) is reported
as `uncertain`, which the dispatcher records as `unknown` for a person to check, never re-sent on its own.

The bot token is read from the environment variable named in the settings, per request; it is never
stored on the sink and never appears in a result, a log line, a ledger row or an exception text.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from action_sinks.base import OutboundMessage, SendResult, single_line
from action_sinks.http_sink import EnvBearerAuth, TokenHttpSink
from connectors.base import ConnectorError
from connectors.transport import RETRY_STATUSES, HttpTransport, RetryPolicy, TransientHTTPError

DEFAULT_BASE_URL = "https://slack.com"
# chat.postMessage: about one message per second per channel (Slack's "special" rate-limit tier)
DEFAULT_RATE_PER_SECOND = 1.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_ATTEMPTS = 3
# users.lookupByEmail is a Tier 3 method: 50+ requests per minute, with bursts welcome
LOOKUP_RATE_PER_SECOND = 50 / 60
LOOKUP_BURST = 5


# Slack answered ok:false and posted nothing, and asking again later may work
NOT_POSTED_TRANSIENT = frozenset(
    {"ratelimited", "rate_limited", "service_unavailable", "request_timeout", "team_added_to_org"}
)
# Slack's documentation: "It's possible some aspect of the operation succeeded before the error was raised."
MAYBE_POSTED = frozenset({"internal_error", "fatal_error"})
# what a person should do about the usual permanent errors (any other ok:false code is permanent too)
PERMANENT_HINTS = {
    "not_authed": "no bot token was sent",
    "invalid_auth": "the bot token is not valid for this workspace",
    "account_inactive": "the bot's user or workspace was deleted",
    "token_revoked": "the bot token was revoked; install the app again",
    "token_expired": "the bot token expired",
    "no_permission": "the bot token lacks a permission for this",
    "missing_scope": "the bot token lacks a scope",
    "channel_not_found": "no such channel (or the bot cannot see it)",
    "not_in_channel": "the bot is not a member of the channel; invite it",
    "is_archived": "the channel is archived",
    "msg_too_long": "the message is longer than Slack accepts",
    "no_text": "the message has no text",
    "users_not_found": "no Slack user has this email address",
    "user_not_found": "no Slack user has this email address",
    "restricted_action": "a workspace setting prevents the bot from posting here",
    "ekm_access_denied": "administrators have suspended posting",
    "access_denied": "access to the channel is denied",
}

_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
# connecting failed, so no request reached Slack: the only transport errors safe to retry here
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
# every status comes back to the sink except 429, which the transport retries (Slack did not post)
_POST_ANSWERS = tuple(status for status in range(100, 600) if status != 429)
# a lookup only reads: the transport retries 429 and 5xx, everything else comes back to the sink
_LOOKUP_ANSWERS = tuple(status for status in range(100, 600) if status not in RETRY_STATUSES)
_JSON_UTF8 = {"Content-Type": "application/json; charset=utf-8"}


def escape_mrkdwn(text: str) -> str:
    """Slack requires &, < and > escaped in message text; unescaped they would become links or mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(message: OutboundMessage) -> str:
    """The subject as a bold first line, then the body (Slack mrkdwn)."""
    subject = escape_mrkdwn(single_line(message.subject))
    body = escape_mrkdwn(message.body or "").rstrip()
    if subject and body:
        return f"*{subject}*\n{body}"
    return f"*{subject}*" if subject else body


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        document = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _short(text: str, limit: int = 200) -> str:
    text = single_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SlackSink(TokenHttpSink):
    """One Slack workspace, as one bot. A new connection per post (`Connection: close`), so a transport
    error always belongs to this post's request and never to a stale pooled connection."""

    name = "slack"
    # no idempotency key in chat.postMessage: a retried post can appear twice
    idempotent = False
    TOKEN_LABEL = "bot token"
    ACTIONS = "posts"
    DEFAULT_BASE_URL = DEFAULT_BASE_URL
    DEFAULT_TIMEOUT = DEFAULT_TIMEOUT
    DEFAULT_RATE_PER_SECOND = DEFAULT_RATE_PER_SECOND
    DEFAULT_MAX_ATTEMPTS = DEFAULT_MAX_ATTEMPTS
    describe_extra = " on 429 or connection failure"

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
        auth = EnvBearerAuth(self._environ, token_env)
        self._post = HttpTransport(
            "slack chat.postMessage",
            self.base_url,
            auth=auth,
            timeout=self.timeout,
            retry=self.retry,
            rate_per_second=self.rate_per_second,
            sleep=sleep,
            headers={"Connection": "close"},
            retry_statuses={429},
            retry_transport_errors=_NOT_SENT,
        )
        # a lookup only reads, so every transient failure may be retried
        self._lookup = HttpTransport(
            "slack users.lookupByEmail",
            self.base_url,
            auth=auth,
            timeout=self.timeout,
            retry=self.retry,
            rate_per_second=LOOKUP_RATE_PER_SECOND,
            burst=LOOKUP_BURST,
            sleep=sleep,
        )
        self._user_ids: dict[str, str] = {}

    @property
    def where(self) -> str:
        return f"Slack at {self.base_url}"

    def close(self) -> None:
        self._post.close()
        self._lookup.close()

    # -- sending -------------------------------------------------------------------------------------

    def send(self, message: OutboundMessage) -> SendResult:
        recipient = single_line(message.recipient)
        if not recipient:
            return SendResult(ok=False, retryable=False, detail=f"{self.where}: message has no recipient")
        if not self._environ.get(self.token_env):
            return SendResult(
                ok=False,
                retryable=True,
                detail=f"{self.where}: bot token variable {self.token_env} is not set; nothing was posted",
            )
        channel = recipient
        if _EMAIL.match(recipient):
            user_id, failure = self._user_id(recipient)
            if failure is not None:
                return failure
            channel = user_id
        payload = {
            "channel": channel,
            "text": slack_text(message),
            "unfurl_links": False,
            "unfurl_media": False,
            # message metadata carries the action id, so a person checking an `unknown` can find the post
            "metadata": {
                "event_type": "actionlayer_action",
                "event_payload": {"action_id": message.action_id},
            },
        }
        before = self._post.attempts
        try:
            response = self._post.request(
                "POST", "/api/chat.postMessage", json=payload, headers=_JSON_UTF8, expected=_POST_ANSWERS
            )
        except TransientHTTPError:
            attempts = self._post.attempts - before
            return SendResult(
                ok=False,
                retryable=True,
                detail=f"{self.where} answered 429 (rate limited) to all {attempts} attempts to post to "
                f"{recipient}; Slack posted nothing",
            )
        except ConnectorError as exc:
            return self._transport_failure(exc.__cause__ or exc, recipient, self._post.attempts - before)
        except httpx.HTTPError as exc:
            return self._transport_failure(exc, recipient, self._post.attempts - before)
        return self._outcome(response, recipient, channel, self._post.attempts - before)

    def _transport_failure(self, error: BaseException, recipient: str, attempts: int) -> SendResult:
        kind = type(error).__name__
        if isinstance(error, _NOT_SENT):
            return SendResult(
                ok=False,
                retryable=True,
                detail=f"could not connect to {self.where} ({kind}: {error}) in {attempts} attempt(s); "
                f"nothing was posted to {recipient}",
            )
        # the request may have reached Slack and been posted before the connection failed
        return SendResult(
            ok=False,
            uncertain=True,
            detail=f"{self.where}: {kind} ({error}) after the post to {recipient} was sent; "
            "Slack may have posted it",
        )

    def _outcome(self, response: httpx.Response, recipient: str, channel: str, attempts: int) -> SendResult:
        status = response.status_code
        retried = f" after {attempts} attempts" if attempts > 1 else ""
        if status >= 500:
            # a 5xx can come from a proxy before Slack saw the post or from Slack after posting it
            return SendResult(
                ok=False,
                uncertain=True,
                detail=f"{self.where} answered HTTP {status} to the post to {recipient}; "
                "Slack may or may not have posted it",
            )
        if status != 200:
            return SendResult(
                ok=False,
                retryable=False,
                detail=f"{self.where} answered HTTP {status} to the post to {recipient}: "
                f"{_short(response.text)}",
            )
        document = _json(response)
        if document is None:
            return SendResult(
                ok=False,
                uncertain=True,
                detail=f"{self.where} answered 200 without a Slack JSON body to the post to {recipient}; "
                "whether it posted is unknown",
            )
        if document.get("ok") is True:
            posted_in = str(document.get("channel") or channel)
            ts = str(document.get("ts") or "")
            return SendResult(
                ok=True,
                detail=f"posted to {recipient} (channel {posted_in}, ts {ts}) by {self.where}{retried}",
                external_id=f"{posted_in}:{ts}" if ts else posted_in,
            )
        return self._error(document, recipient, "chat.postMessage")

    def _error(self, document: Mapping[str, Any], recipient: str, method: str) -> SendResult:
        code = str(document.get("error") or "unknown_error")
        text = f"{self.where} {method} for {recipient} failed: {code}"
        if code in MAYBE_POSTED:
            return SendResult(
                ok=False,
                uncertain=True,
                detail=f"{text} (Slack says part of the operation may have succeeded)",
            )
        if code in NOT_POSTED_TRANSIENT:
            return SendResult(ok=False, retryable=True, detail=f"{text} (transient; nothing was posted)")
        hint = PERMANENT_HINTS.get(code)
        if code == "missing_scope" and document.get("needed"):
            hint = f"the bot token lacks scope {document['needed']}"
        return SendResult(ok=False, retryable=False, detail=f"{text}" + (f" ({hint})" if hint else ""))

    # -- email → user id -----------------------------------------------------------------------------

    def _user_id(self, email: str) -> tuple[str, SendResult | None]:
        key = email.lower()
        if key in self._user_ids:
            return self._user_ids[key], None
        try:
            # a form POST keeps the address out of URLs and so out of the transport's log lines
            response = self._lookup.request(
                "POST", "/api/users.lookupByEmail", data={"email": email}, expected=_LOOKUP_ANSWERS
            )
        except (ConnectorError, httpx.HTTPError) as exc:
            cause = exc.__cause__ if isinstance(exc, ConnectorError) and exc.__cause__ else exc
            return "", SendResult(
                ok=False,
                retryable=True,
                detail=f"{self.where}: could not look up the Slack user for {email} "
                f"({type(cause).__name__}: {cause}); nothing was posted",
            )
        document = _json(response) if response.status_code == 200 else None
        if document is None:
            return "", SendResult(
                ok=False,
                retryable=response.status_code >= 500 or response.status_code == 200,
                detail=f"{self.where} answered HTTP {response.status_code} to users.lookupByEmail for {email}: "
                f"{_short(response.text)}; nothing was posted",
            )
        if document.get("ok") is not True:
            result = self._error(document, email, "users.lookupByEmail")
            # a lookup only reads: whatever Slack says, nothing was posted, so "uncertain" cannot apply
            if result.uncertain:
                result = SendResult(ok=False, retryable=True, detail=f"{result.detail}; nothing was posted")
            return "", result
        user = document.get("user") or {}
        user_id = str(user.get("id") or "") if isinstance(user, dict) else ""
        if not user_id:
            return "", SendResult(
                ok=False,
                retryable=False,
                detail=f"{self.where} users.lookupByEmail for {email} returned no user id",
            )
        self._user_ids[key] = user_id
        return user_id, None
