"""What the token-authenticated HTTP channels (Slack, LINE) share: a bearer token read from an
environment variable on every request, their common settings keys with errors that name the key, and the
construction, description and lifetime every such sink has.

Each channel module keeps what is its own: endpoints, the meaning of the vendor's answers, and which
failures are safe to retry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Mapping
from typing import Any, ClassVar

import httpx

from action_sinks.base import SinkConfigError
from connectors.transport import RetryPolicy

SETTINGS_KEYS = frozenset({"sink", "base_url", "token_env", "timeout", "rate_per_second", "max_attempts"})


class EnvBearerAuth(httpx.Auth):
    """`Authorization: Bearer <token>` with the token read from an environment mapping on every request,
    so the token lives in no attribute of the sink or its HTTP client."""

    def __init__(self, environ: Mapping[str, str], variable: str) -> None:
        self.environ = environ
        self.variable = variable

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.environ.get(self.variable, '')}"
        yield request

    def __repr__(self) -> str:
        return f"EnvBearerAuth(variable={self.variable!r})"


class TokenHttpSink:
    """Base of a sink that talks to one vendor API with a bearer token from an environment variable.

    Subclasses set `name`, `idempotent`, `TOKEN_LABEL` (what the token is, for messages), `ACTIONS`
    (what one call does, e.g. "posts"), the `DEFAULT_*` values and `describe_extra`; their `__init__`
    takes `token_env, base_url, timeout, rate_per_second, max_attempts, *, environ`.
    """

    name: ClassVar[str]
    TOKEN_LABEL: ClassVar[str] = "token"
    ACTIONS: ClassVar[str] = "requests"
    DEFAULT_BASE_URL: ClassVar[str]
    DEFAULT_TIMEOUT: ClassVar[float] = 10.0
    DEFAULT_RATE_PER_SECOND: ClassVar[float] = 1.0
    DEFAULT_MAX_ATTEMPTS: ClassVar[int] = 3
    describe_extra: ClassVar[str] = ""

    token_env: str
    base_url: str
    timeout: float
    rate_per_second: float
    max_attempts: int
    retry: RetryPolicy
    _environ: Mapping[str, str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - subclasses define it
        raise NotImplementedError

    def _settle(
        self,
        token_env: str,
        base_url: str,
        timeout: float,
        rate_per_second: float,
        max_attempts: int,
        environ: Mapping[str, str] | None,
        retry: RetryPolicy | None,
    ) -> None:
        """The attributes every such sink has; subclasses call it first in `__init__`."""
        self.token_env = token_env
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.rate_per_second = float(rate_per_second)
        self.retry = retry or RetryPolicy(max_attempts=max_attempts)
        self.max_attempts = self.retry.max_attempts
        self._environ = os.environ if environ is None else environ

    @classmethod
    def from_settings(cls, entry: Mapping[str, Any], where: str, environ: Mapping[str, str] | None = None):
        """Build from one `channels.<name>` entry; raises SinkConfigError naming the key at fault."""
        env = os.environ if environ is None else environ
        check_keys(entry, where, cls.name)
        return cls(
            token_env=token_env_setting(entry, where, env, cls.TOKEN_LABEL),
            base_url=base_url_setting(entry, where, cls.DEFAULT_BASE_URL),
            timeout=positive_setting(entry, "timeout", cls.DEFAULT_TIMEOUT, where),
            rate_per_second=positive_setting(entry, "rate_per_second", cls.DEFAULT_RATE_PER_SECOND, where),
            max_attempts=attempts_setting(entry, where, cls.DEFAULT_MAX_ATTEMPTS),
            environ=env,
        )

    def describe(self) -> str:
        """One line for status output: where, which variable holds the token (never the token)."""
        return (
            f"{self.name} {self.base_url} ({self.TOKEN_LABEL} from ${self.token_env}, up to "
            f"{self.rate_per_second:g} {self.ACTIONS}/s, {self.max_attempts} attempts{self.describe_extra})"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, token_env={self.token_env!r})"

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_keys(entry: Mapping[str, Any], where: str, sink: str) -> None:
    unknown = sorted(set(entry) - SETTINGS_KEYS)
    if unknown:
        raise SinkConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; expected {sorted(SETTINGS_KEYS)}"
        )
    if entry.get("sink", sink) != sink:
        raise SinkConfigError(f"{where}.sink: {entry.get('sink')!r} is not {sink!r}")


def token_env_setting(entry: Mapping[str, Any], where: str, environ: Mapping[str, str], what: str) -> str:
    name = str(entry.get("token_env") or "").strip()
    if not name:
        raise SinkConfigError(
            f"{where}.token_env: missing; name the environment variable that holds the {what}"
        )
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise SinkConfigError(f"{where}.token_env: {name!r} is not an environment variable name")
    if not environ.get(name):
        raise SinkConfigError(f"{where}.token_env: the variable {name} is not set; it must hold the {what}")
    return name


def base_url_setting(entry: Mapping[str, Any], where: str, default: str) -> str:
    value = str(entry.get("base_url") or default).strip()
    if not re.match(r"^https?://[^/\s]+", value):
        raise SinkConfigError(f"{where}.base_url: {value!r} is not an http(s) URL")
    return value.rstrip("/")


def positive_setting(entry: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise SinkConfigError(f"{where}.{key}: {value!r} is not a number") from None
    if not number > 0 or number == float("inf"):
        raise SinkConfigError(f"{where}.{key}: {value!r} must be a positive number")
    return number


def attempts_setting(entry: Mapping[str, Any], where: str, default: int) -> int:
    value = entry.get("max_attempts", default)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SinkConfigError(f"{where}.max_attempts: {value!r} is not a whole number")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SinkConfigError(f"{where}.max_attempts: {value!r} is not a whole number") from None
    if number < 1:
        raise SinkConfigError(f"{where}.max_attempts: {number} must be at least 1")
    return number
