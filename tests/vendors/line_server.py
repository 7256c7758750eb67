"""A small LINE Messaging API stand-in on 127.0.0.1 for tests.

One responsibility: behave like LINE's published push-message endpoint and its retry-key contract, and
misbehave on request. Served: POST /v2/bot/message/push with `Authorization: Bearer <channel access
token>`, a JSON body `{"to": <U/C/R id>, "messages": [1-5 message objects]}` and an optional
`X-Line-Retry-Key` (a UUID). Answers as LINE does: 200 `{"sentMessages": [{"id", "quoteToken"}]}` with an
`x-line-request-id` header; errors as `{"message": ..., "details": [{"message", "property"}]}` with 400
(invalid body, unknown recipient), 401 (bad token), 403, 429 (rate or monthly limit); and for a retry key
that was already accepted, 409 `{"message": "The retry key is already accepted", "sentMessages": [...]}`
with `x-line-accepted-request-id`, without delivering again. A key is accepted only by a 200.

Faults: 429 bursts with `Retry-After`, 5xx before or after accepting, a seeded share of 5xx, slow answers
(accepted, then answered late), and a connection reset before or after accepting. `deliveries` counts
deliveries per retry key, so tests can prove nothing was delivered twice.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.vendors.loopback_http import LoopbackHttpServer
from tests.vendors.slack_server import reset_connection

CHANNEL_ACCESS_TOKEN = "line-channel-access-token-StandIn+k9Q/2x7vJ0aLmN4pR8sT="
PUSH_PATH = "/v2/bot/message/push"
MAX_TEXT_UNITS = 5000
_LINE_ID = re.compile(r"^[UCR][0-9a-f]{32}$")


@dataclass(frozen=True)
class Push:
    to: str
    messages: list[dict[str, Any]]
    retry_key: str | None
    request_id: str


@dataclass(frozen=True)
class LoggedRequest:
    authorization: str
    retry_key: str | None
    status: int
    outcome: str  # "delivered", "duplicate", an error message, "reset", ...


@dataclass
class Fault:
    kind: str  # "status", "reset", "delay"
    status: int = 500
    retry_after: float | None = None
    after_accept: bool = False
    seconds: float = 0.0


@dataclass
class Reply:
    status: int = 200
    document: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False
    delay: float = 0.0


def _error(status: int, message: str, details: list[dict[str, str]] | None = None) -> Reply:
    document: dict[str, Any] = {"message": message}
    if details:
        document["details"] = details
    return Reply(status, document)


def _units(text: str) -> int:
    return sum(2 if ord(char) > 0xFFFF else 1 for char in text)


class LineServer(LoopbackHttpServer):
    """In-memory LINE channel: known recipients, accepted retry keys and delivered pushes."""

    def __init__(self, token: str = CHANNEL_ACCESS_TOKEN, port: int = 0) -> None:
        self.lock = threading.RLock()
        self.tokens = {token}
        self.recipients: set[str] = set()
        self.pushes: list[Push] = []
        self.deliveries: Counter[str | None] = Counter()  # retry key -> deliveries
        self.accepted: dict[str, tuple[str, list[dict[str, str]]]] = {}  # key -> (request id, sentMessages)
        self.requests: list[LoggedRequest] = []
        self.quota: int | None = None  # messages left this month; None = unlimited
        self.forbidden = False  # the account's plan does not allow this API
        self._faults: list[Fault] = []
        self._share = 0.0
        self._share_after_accept = 0.0
        self._share_status = 500
        self._random = random.Random(0)
        self._message_ids = itertools.count(461230966842064897)
        self._serve(_handler_for(self), port, "line-stand-in")

    # -- channel state -----------------------------------------------------------------------------

    def add_recipient(self, line_id: str) -> None:
        with self.lock:
            self.recipients.add(line_id)

    def accept(self, retry_key: str, to: str, text: str = "(sent earlier)") -> None:
        """Record a push as accepted earlier under `retry_key` (an attempt whose answer was lost)."""
        with self.lock:
            self._deliver(to, [{"type": "text", "text": text}], retry_key)

    def pushes_for(self, retry_key: str) -> list[Push]:
        with self.lock:
            return [push for push in self.pushes if push.retry_key == retry_key]

    # -- misbehaviour ------------------------------------------------------------------------------

    def rate_limit_next(self, n: int, retry_after: float | None = 1) -> None:
        with self.lock:
            self._faults.extend(Fault("status", 429, retry_after) for _ in range(n))

    def fail_next(self, n: int, status: int = 500, *, after_accept: bool = False) -> None:
        with self.lock:
            self._faults.extend(Fault("status", status, after_accept=after_accept) for _ in range(n))

    def fail_share(
        self, share: float, seed: int, *, after_accept_share: float = 0.5, status: int = 500
    ) -> None:
        """A seeded share of pushes answer `status`; `after_accept_share` of those were accepted first."""
        with self.lock:
            self._share, self._share_after_accept, self._share_status = share, after_accept_share, status
            self._random = random.Random(seed)

    def delay_next(self, n: int, seconds: float) -> None:
        """The next n pushes are accepted, then answered only after `seconds` (a client timeout)."""
        with self.lock:
            self._faults.extend(Fault("delay", seconds=seconds, after_accept=True) for _ in range(n))

    def reset_next(self, n: int, *, after_accept: bool = False) -> None:
        with self.lock:
            self._faults.extend(Fault("reset", after_accept=after_accept) for _ in range(n))

    def _next_fault(self) -> Fault | None:
        with self.lock:
            if self._faults:
                return self._faults.pop(0)
            if self._share and self._random.random() < self._share:
                after = self._random.random() < self._share_after_accept
                return Fault("status", self._share_status, after_accept=after)
        return None

    # -- request handling (called from the handler threads) ----------------------------------------

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> tuple[Reply, str]:
        if path != PUSH_PATH:
            return _error(404, "Not found"), "not found"
        if method != "POST":
            return _error(405, "Method not allowed"), "method not allowed"
        fault = self._next_fault()
        if fault and not fault.after_accept:
            if fault.kind == "reset":
                return Reply(reset=True), "reset"
            return self._status_reply(fault), f"http {fault.status}"
        reply, outcome = self._push(headers, body)
        if fault and fault.after_accept:
            if fault.kind == "reset":
                return Reply(reset=True), f"reset after {outcome}"
            if fault.kind == "delay":
                reply.delay = fault.seconds
                return reply, f"late {outcome}"
            return self._status_reply(fault), f"http {fault.status} after {outcome}"
        return reply, outcome

    @staticmethod
    def _status_reply(fault: Fault) -> Reply:
        if fault.status == 429:
            reply = _error(429, "The API rate limit has been exceeded. Try again later.")
            if fault.retry_after is not None:
                reply.headers["Retry-After"] = f"{fault.retry_after:g}"
            return reply
        return _error(fault.status, "Internal server error")

    def _push(self, headers: Mapping[str, str], body: bytes) -> tuple[Reply, str]:
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        with self.lock:
            valid = scheme.lower() == "bearer" and token in self.tokens
        if not valid:
            message = (
                "Authentication failed. Confirm that the access token in the authorization header is valid."
            )
            return _error(401, message), "unauthorized"
        if self.forbidden:
            return _error(403, "Access to this API is not available for your account"), "forbidden"
        key = headers.get("X-Line-Retry-Key")
        if key is not None:
            try:
                uuid.UUID(key)
            except ValueError:
                return _error(400, "The value for the 'X-Line-Retry-Key' header is invalid"), "bad retry key"
        if not headers.get("Content-Type", "").startswith("application/json"):
            return _error(415, "Unsupported Media Type"), "unsupported media type"
        try:
            document = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return _error(400, "The request body could not be parsed as JSON"), "bad json"
        with self.lock:
            if key is not None and key in self.accepted:
                # LINE's contract: a key is executed once; repeats are refused and point at the original
                accepted_id, sent = self.accepted[key]
                reply = Reply(409, {"message": "The retry key is already accepted", "sentMessages": sent})
                reply.headers["x-line-accepted-request-id"] = accepted_id
                return reply, "duplicate"
        invalid = self._validate(document)
        if invalid:
            return invalid, invalid.document["message"]
        to, messages = document["to"], document["messages"]
        with self.lock:
            if to not in self.recipients:
                return _error(400, "Failed to send messages"), "unknown recipient"
            if self.quota is not None and self.quota < len(messages):
                return _error(429, "You have reached your monthly limit."), "monthly limit"
            if self.quota is not None:
                self.quota -= len(messages)
            request_id, sent = self._deliver(to, messages, key)
        reply = Reply(200, {"sentMessages": sent})
        reply.headers["x-line-request-id"] = request_id
        return reply, "delivered"

    def _deliver(
        self, to: str, messages: list[dict[str, Any]], key: str | None
    ) -> tuple[str, list[dict[str, str]]]:
        request_id = str(uuid.uuid4())
        sent = [{"id": str(next(self._message_ids)), "quoteToken": uuid.uuid4().hex} for _ in messages]
        self.pushes.append(Push(to, list(messages), key, request_id))
        self.deliveries[key] += 1
        if key is not None:
            self.accepted[key] = (request_id, sent)
        return request_id, sent

    @staticmethod
    def _validate(document: Any) -> Reply | None:
        if not isinstance(document, dict):
            return _error(400, "The request body could not be parsed as JSON")
        to = document.get("to")
        if not isinstance(to, str) or not _LINE_ID.match(to):
            return _error(400, "The property, 'to', in the request body is invalid (line: -, column: -)")
        messages = document.get("messages")
        details: list[dict[str, str]] = []
        if not isinstance(messages, list) or not 1 <= len(messages) <= 5:
            details.append({"message": "Size must be between 1 and 5", "property": "messages"})
        else:
            for i, message in enumerate(messages):
                text = message.get("text") if isinstance(message, dict) else None
                if not isinstance(message, dict) or message.get("type") != "text":
                    details.append(
                        {
                            "message": "Must be one of the following values: [text]",
                            "property": f"messages[{i}].type",
                        }
                    )
                elif not isinstance(text, str) or not text:
                    details.append({"message": "May not be empty", "property": f"messages[{i}].text"})
                elif _units(text) > MAX_TEXT_UNITS:
                    details.append(
                        {"message": "Length must be between 0 and 5000", "property": f"messages[{i}].text"}
                    )
        if details:
            return _error(400, f"The request body has {len(details)} error(s)", details)
        return None


def _handler_for(server: LineServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet: requests are kept in server.requests

        def _serve(self, method: str) -> None:
            path = urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name: value for name, value in self.headers.items()}
            reply, outcome = server.handle(method, path, headers, body)
            with server.lock:
                server.requests.append(
                    LoggedRequest(
                        headers.get("Authorization", ""),
                        headers.get("X-Line-Retry-Key"),
                        reply.status,
                        outcome,
                    )
                )
            if reply.reset:
                reset_connection(self)
                return
            if reply.delay:
                time.sleep(reply.delay)
            payload = json.dumps(reply.document).encode() if reply.document is not None else b""
            try:
                self.send_response(reply.status)
                # every LINE answer names its request, errors included
                self.send_header(
                    "x-line-request-id", reply.headers.pop("x-line-request-id", str(uuid.uuid4()))
                )
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test); nothing to answer

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

    return Handler
