"""HTTP transport shared by the REST connectors: timeouts, retries with exponential backoff and jitter
that honour `Retry-After` (tenacity), a per-source rate limit, and error messages that never carry a secret.

Pagination and incremental cursors live in each connector; authentication is passed in as an `httpx.Auth`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import tenacity

from connectors.base import ConnectorError

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
SECRET_WORDS = ("token", "secret", "password", "key", "code", "auth")


class TransientHTTPError(ConnectorError):
    """A response worth retrying (429 or 5xx); carries the server's Retry-After when it sent one."""

    def __init__(self, message: str, status: int, retry_after: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class HTTPStatusError(ConnectorError):
    """A final, non-retryable error response; `status` and `body` (trimmed) are kept for the caller."""

    def __init__(self, message: str, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def redact_url(url: str | httpx.URL) -> str:
    """The URL with the values of secret-looking query parameters replaced, for logs and errors."""
    parts = urlsplit(str(url))
    query = [
        (name, "***" if any(word in name.lower() for word in SECRET_WORDS) else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (now if now is not None else time.time()))


class RateLimiter:
    """Token bucket: at most `rate` requests per second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int = 1, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"rate limit must be positive, got {rate}")
        self.rate = rate
        self.capacity = max(1, burst)
        self.tokens = float(self.capacity)
        self.updated = time.monotonic()
        self.sleep = sleep
        self.lock = threading.Lock()

    def acquire(self) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens < 1:
                wait = (1 - self.tokens) / self.rate
                self.sleep(wait)
                self.tokens = 0.0
                self.updated = time.monotonic()
            else:
                self.tokens -= 1


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_wait: float = 0.5
    max_wait: float = 30.0
    # never wait longer than this for one Retry-After, whatever the server asks
    max_retry_after: float = 120.0


class HttpTransport:
    """One source's HTTP client. Use `request()` for every call; it raises `ConnectorError` subclasses."""

    def __init__(
        self,
        source: str,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        rate_per_second: float | None = None,
        burst: int = 1,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        retry_statuses: Iterable[int] = RETRY_STATUSES,
        retry_transport_errors: tuple[type[Exception], ...] = (httpx.TransportError,),
    ) -> None:
        """`retry_statuses` and `retry_transport_errors` say what is worth trying again. A caller whose
        request must not run twice (a non-idempotent send) narrows them, e.g. to 429 and
        `httpx.ConnectError`, where the server provably did not act on the request."""
        self.source = source
        self.retry_statuses = frozenset(retry_statuses)
        self.retry_transport_errors = retry_transport_errors
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.limiter = RateLimiter(rate_per_second, burst, sleep) if rate_per_second else None
        self.client = httpx.Client(
            base_url=base_url, auth=auth, timeout=timeout, headers=dict(headers or {}), follow_redirects=False
        )
        self.attempts = 0  # requests sent, retries included (for reports and tests)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> HttpTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, TransientHTTPError) and error.retry_after is not None:
            return min(error.retry_after, self.retry.max_retry_after)
        backoff = tenacity.wait_exponential_jitter(initial=self.retry.initial_wait, max=self.retry.max_wait)
        return backoff(state)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.1fs", self.source, state.attempt_number, error, wait
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        attempt_headers: Callable[[], Mapping[str, str]] | None = None,
        expected: Iterable[int] = (200,),
    ) -> httpx.Response:
        """Send with retries on 429, 5xx, timeouts and connection errors; other statuses not in
        `expected` raise `HTTPStatusError` at once (the caller decides, e.g. 401 → refresh a token).

        `content` is a body already encoded; `attempt_headers()` is called right before every attempt and
        its headers are added to `headers` (e.g. a signature over `content` with a fresh timestamp, so a
        retry after a long Retry-After is not signed with a stale one)."""
        allowed = frozenset(expected)

        def once() -> httpx.Response:
            return self._send_once(
                method, path, params, json, data, content, headers, attempt_headers, allowed
            )

        try:
            # the first attempt runs without building a tenacity loop: most requests succeed at once
            try:
                return once()
            except (TransientHTTPError, *self.retry_transport_errors) as exc:
                first_failure = exc
            return self._retry(once, first_failure)
        except httpx.TransportError as exc:
            url = redact_url(self.client.base_url.join(path))
            raise ConnectorError(
                f"{self.source}: {method} {url} failed after {self.retry.max_attempts} attempts: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _retry(self, once: Callable[[], httpx.Response], first_failure: Exception) -> httpx.Response:
        """The tenacity loop after a retryable first attempt: that failure is attempt 1 of the loop, so the
        attempt count, the stop, the backoff (or Retry-After) before attempt 2 and the log lines are what
        they would be had the loop run from the start."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retry.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type((TransientHTTPError, *self.retry_transport_errors)),
            sleep=self.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        pending: Exception | None = first_failure
        for attempt in retrying:
            with attempt:
                if pending is not None:
                    failure, pending = pending, None
                    raise failure  # attempt 1, already made: its outcome, not a second request
                return once()
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _send_once(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        data: Mapping[str, Any] | None,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        attempt_headers: Callable[[], Mapping[str, str]] | None,
        allowed: frozenset[int],
    ) -> httpx.Response:
        if self.limiter:
            self.limiter.acquire()
        self.attempts += 1
        if attempt_headers is not None:
            headers = {**headers, **attempt_headers()} if headers else attempt_headers()
        response = self.client.request(
            method, path, params=params, json=json, data=data, content=content, headers=headers
        )
        if response.status_code in allowed:
            return response
        url = redact_url(response.request.url)
        body = response.text[:500]
        if response.status_code in self.retry_statuses:
            raise TransientHTTPError(
                f"{self.source}: {method} {url} answered {response.status_code}: {body}",
                response.status_code,
                retry_after_seconds(response.headers.get("Retry-After")),
            )
        raise HTTPStatusError(
            f"{self.source}: {method} {url} answered {response.status_code}: {body}",
            response.status_code,
            body,
        )
