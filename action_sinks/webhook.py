"""Delivers approved actions as signed JSON POSTs to one configured HTTPS endpoint (the `webhook` sink).

Each request carries `Idempotency-Key: <action_id>`, so a re-sent action (after a retry, a timeout or a
crashed dispatch) is recognisable to the receiver as the same delivery; that is what makes the sink
idempotent. The body is signed with HMAC-SHA256 over `f"{timestamp}.{body}"`; receivers check it with
`verify_webhook`. The secret is read from a named environment variable at send time and never appears
in a result, a log line, `describe()` or an exception text produced here.

Classification: 2xx → delivered; 409 with a receiver saying the key was already processed → delivered;
408/429/5xx, timeouts and connection errors are retried (tenacity, Retry-After honoured) and, once the
retries are spent, reported as a retryable failure; any other 4xx (and 3xx, since redirects are not
followed with a signed body) is a permanent failure whose reason holds the status and the trimmed body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from action_sinks.base import OutboundMessage, SendResult, SinkConfigError, single_line
from connectors.base import ConnectorError
from connectors.transport import HTTPStatusError, HttpTransport, RetryPolicy, TransientHTTPError, redact_url

SIGNATURE_HEADER = "X-Actionlayer-Signature"
TIMESTAMP_HEADER = "X-Actionlayer-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_VERSION = "v1"
# a receiver that already processed the key answers 409 with one of these; anything else is a conflict
ALREADY_PROCESSED_HEADER = "Idempotent-Replayed"
ALREADY_PROCESSED_STATUS = "already_processed"

# 408 (request timeout) joins the usual transient set: the receiver asks us to try again
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SETTINGS_KEYS = frozenset({"sink", "url", "secret_env", "timeout", "rate_per_second", "max_attempts"})
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_ATTEMPTS = 4
REASON_BODY_CHARS = 200
EXPECTED_STATUSES = frozenset({*range(200, 300), 409})
# the body encoding httpx uses for `json=` (compact, UTF-8, no NaN); `default=str` for non-JSON values
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)


class WebhookVerificationError(ValueError):
    """A received webhook failed verification; the message says which check failed (never the secret)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Actionlayer-Signature` value for a body sent at `timestamp` (seconds since the epoch)."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={digest.hexdigest()}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # plain dicts from users are case-sensitive; HTTP header names are not
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def verify_webhook(
    headers: Mapping[str, str], body: bytes, secret: str, now: float, tolerance_seconds: float = 300
) -> None:
    """Check a received webhook: signature over the exact body bytes and a timestamp inside the replay
    window. Returns None when it is genuine; raises `WebhookVerificationError` naming the failed check."""
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if timestamp is None:
        raise WebhookVerificationError(f"missing header {TIMESTAMP_HEADER}; the request was not processed")
    if signature is None:
        raise WebhookVerificationError(f"missing header {SIGNATURE_HEADER}; the request was not processed")
    try:
        sent_at = float(timestamp)
    except ValueError as exc:
        raise WebhookVerificationError(
            f"header {TIMESTAMP_HEADER} {timestamp[:40]!r} is not a number of seconds; not processed"
        ) from exc
    if abs(now - sent_at) > tolerance_seconds:
        raise WebhookVerificationError(
            f"timestamp {timestamp} is {now - sent_at:+.0f}s from now, outside the {tolerance_seconds:g}s "
            "replay window; not processed"
        )
    expected = sign(secret, timestamp.strip(), body)
    # several signatures may be sent during a secret rotation: any valid one is enough
    offered = [part.strip() for part in signature.split(",") if part.strip()]
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise WebhookVerificationError(
            f"header {SIGNATURE_HEADER} does not match the body (expected scheme {SIGNATURE_VERSION}=<hex>); "
            "wrong secret or a modified body; not processed"
        )


class _SecretMissing(RuntimeError):
    pass


def _trimmed(text: str, limit: int = REASON_BODY_CHARS) -> str:
    flat = single_line(text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _already_processed(response: httpx.Response) -> bool:
    if (response.headers.get(ALREADY_PROCESSED_HEADER) or "").strip().lower() == "true":
        return True
    try:
        document = response.json()
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("status") == ALREADY_PROCESSED_STATUS


class WebhookSink:
    """One webhook endpoint. Thread-safe: the dispatcher may call `send` from several threads at once."""

    name = "webhook"
    idempotent = True

    def __init__(
        self,
        url: str,
        secret_env: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        rate_per_second: float | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        initial_wait: float = 0.5,
        max_wait: float = 30.0,
        max_retry_after: float = 120.0,
        environ: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`max_attempts` counts HTTP requests within one send (tenacity retries); the dispatcher's own
        `max_attempts` counts dispatch passes on top of that. `environ` is where the secret is looked up
        at send time (default `os.environ`); only the variable's name is kept on the object."""
        self.url = url
        self.secret_env = secret_env
        self.timeout = timeout
        self.rate_per_second = rate_per_second
        self.max_attempts = max_attempts
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._where_for: tuple[str, str] | None = None  # (url, how results name it), see `_where`
        self.transport = HttpTransport(
            "webhook",
            url,
            timeout=timeout,
            retry=RetryPolicy(
                max_attempts=max_attempts,
                initial_wait=initial_wait,
                max_wait=max_wait,
                max_retry_after=max_retry_after,
            ),
            rate_per_second=rate_per_second,
            # a burst of one would serialise the dispatcher's worker threads behind the bucket
            burst=max(1, int(rate_per_second or 1)),
            headers={"User-Agent": "actionlayer-webhook/1", "Content-Type": "application/json"},
            sleep=sleep,
            retry_statuses=RETRY_STATUSES,
            # every transport error may be retried: the Idempotency-Key makes a repeat harmless
            retry_transport_errors=(httpx.TransportError,),
        )

    @classmethod
    def from_settings(cls, entry: Mapping[str, Any], where: str, environ: Mapping[str, str]) -> WebhookSink:
        """Build from a `channels.<name>` entry; raises `SinkConfigError` naming the key at fault."""
        unknown = sorted(set(entry) - SETTINGS_KEYS)
        if unknown:
            raise SinkConfigError(
                f"{where}: unknown key(s) {', '.join(map(str, unknown))}; expected {sorted(SETTINGS_KEYS)}"
            )
        if entry.get("sink", "webhook") != "webhook":
            raise SinkConfigError(f"{where}.sink: {entry.get('sink')!r} is not 'webhook'")
        url = str(entry.get("url") or "").strip()
        if not url:
            raise SinkConfigError(f"{where}.url: sink webhook needs the endpoint URL (key 'url')")
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise SinkConfigError(
                f"{where}.url: {redact_url(url)!r} is not an http(s) URL with a host; nothing was sent"
            )
        secret_env = str(entry.get("secret_env") or "").strip()
        if not secret_env:
            raise SinkConfigError(
                f"{where}.secret_env: sink webhook needs the name of the environment variable holding the "
                "signing secret (key 'secret_env')"
            )
        if not environ.get(secret_env):
            raise SinkConfigError(
                f"{where}.secret_env: the variable {secret_env} is not set or empty; nothing was sent"
            )
        timeout = _positive(entry.get("timeout", DEFAULT_TIMEOUT), f"{where}.timeout", "a number of seconds")
        rate = entry.get("rate_per_second")
        rate_per_second = None if rate is None else _positive(rate, f"{where}.rate_per_second", "a rate")
        attempts_value = entry.get("max_attempts", DEFAULT_MAX_ATTEMPTS)
        if isinstance(attempts_value, bool) or not isinstance(attempts_value, int | str):
            raise SinkConfigError(f"{where}.max_attempts: {attempts_value!r} is not a whole number")
        try:
            max_attempts = int(str(attempts_value).strip())
        except ValueError as exc:
            raise SinkConfigError(f"{where}.max_attempts: {attempts_value!r} is not a whole number") from exc
        if max_attempts < 1:
            raise SinkConfigError(f"{where}.max_attempts: {max_attempts} must be at least 1")
        return cls(
            url,
            secret_env,
            timeout=timeout,
            rate_per_second=rate_per_second,
            max_attempts=max_attempts,
            environ=environ,
        )

    def describe(self) -> str:
        """One line for status output: where it posts and how, never the secret."""
        rate = f", at most {self.rate_per_second:g}/s" if self.rate_per_second else ""
        return (
            f"webhook POST {redact_url(self.url)} signed with ${self.secret_env}, timeout {self.timeout:g}s, "
            f"{self.max_attempts} HTTP attempts{rate}"
        )

    def __repr__(self) -> str:
        return f"WebhookSink(url={redact_url(self.url)!r}, secret_env={self.secret_env!r})"

    def close(self) -> None:
        self.transport.close()

    def _secret(self) -> str:
        secret = self._environ.get(self.secret_env)
        if not secret:
            raise _SecretMissing(self.secret_env)
        return secret

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        return {
            "action_id": message.action_id,
            "channel": message.channel,
            "recipient": message.recipient,
            "subject": message.subject,
            "body": message.body,
            "owner_email": message.owner_email,
            "metadata": message.metadata,
        }

    def _where(self) -> str:
        """How results name the endpoint (secrets in its query redacted), worked out once per URL."""
        cached = self._where_for
        if cached is None or cached[0] is not self.url:
            cached = self._where_for = (self.url, f"webhook {redact_url(self.url)}")
        return cached[1]

    def _signed_headers(self, body: bytes, key: str) -> Callable[[], dict[str, str]]:
        """The headers of one HTTP attempt, built right before it leaves: a retry after a long
        Retry-After gets a fresh timestamp and signature, and the secret is read at that moment."""

        def headers() -> dict[str, str]:
            timestamp = str(int(self._clock()))
            return {
                IDEMPOTENCY_HEADER: key,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(self._secret(), timestamp, body),
            }

        return headers

    def send(self, message: OutboundMessage) -> SendResult:
        where = self._where()
        # encoded once, as the exact bytes that are signed and sent (the same bytes httpx's `json=` makes);
        # values that are not JSON types (a date in metadata) are sent as text
        body = _ENCODER.encode(self.payload(message)).encode("utf-8")
        try:
            response = self.transport.request(
                "POST",
                self.url,
                content=body,
                attempt_headers=self._signed_headers(body, message.action_id),
                expected=EXPECTED_STATUSES,
            )
        except _SecretMissing as exc:
            return SendResult(
                ok=False,
                retryable=True,
                detail=f"{where}: secret variable {exc} is not set; nothing sent",
            )
        except TransientHTTPError as exc:
            return SendResult(
                ok=False,
                retryable=True,
                detail=f"{where} answered {exc.status} on the last of {self.max_attempts} attempts: "
                f"{_trimmed(str(exc).split(': ', 2)[-1])}",
            )
        except HTTPStatusError as exc:
            return SendResult(
                ok=False,
                retryable=False,
                detail=f"{where} rejected the request with {exc.status}: {_trimmed(exc.body)}",
            )
        except ConnectorError as exc:
            # transport errors after the last retry; the receiver may have acted on one of them
            cause = exc.__cause__
            uncertain = not isinstance(cause, httpx.ConnectError)
            return SendResult(
                ok=False,
                retryable=True,
                uncertain=uncertain,
                detail=f"{where}: no answer after {self.max_attempts} attempts: "
                f"{type(cause).__name__ if cause else 'error'}: {_trimmed(str(cause or exc))}",
            )
        if response.status_code == 409:
            if _already_processed(response):
                return SendResult(
                    ok=True,
                    detail=f"{where}: key {message.action_id} was already processed (409)",
                    external_id=message.action_id,
                )
            # Stripe-style meaning: the same key is being processed right now; the next pass asks again
            return SendResult(
                ok=False,
                retryable=True,
                detail=f"{where} answered 409 conflict for key {message.action_id}: "
                f"{_trimmed(response.text)}",
            )
        return SendResult(
            ok=True,
            detail=f"{where} accepted with {response.status_code}",
            external_id=response.headers.get("X-Request-Id") or message.action_id,
        )


def _positive(value: object, where: str, what: str) -> float:
    if isinstance(value, bool):
        raise SinkConfigError(f"{where}: {value!r} is not {what}")
    try:
        number = float(str(value).strip())
    except ValueError as exc:
        raise SinkConfigError(f"{where}: {value!r} is not {what}") from exc
    if not number > 0:
        raise SinkConfigError(f"{where}: {value!r} must be greater than zero")
    return number
