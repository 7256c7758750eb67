"""A small Slack Web API stand-in on 127.0.0.1 for tests.

One responsibility: behave like the parts of Slack's published Web API the Slack sink uses, and misbehave
on request. Served, with `Authorization: Bearer <bot token>` (or a `token` form field):
POST /api/chat.postMessage (JSON with `charset=utf-8`, or a form; `channel` as an id, `#name` or a user id
for a direct message; `text` and/or `blocks`; optional `metadata`) and GET or POST
/api/users.lookupByEmail (`email`). As on Slack, method errors are HTTP 200 with
`{"ok": false, "error": "<code>"}` (not_authed, invalid_auth, token_revoked, channel_not_found,
not_in_channel, is_archived, no_text, msg_too_long, users_not_found, unknown_method), and rate limiting is
HTTP 429 with `Retry-After` and `{"ok": false, "error": "ratelimited"}`.

Faults (for chat.postMessage unless a method is named): 429 bursts, 5xx before or after posting, a seeded
share of 5xx, slow answers (posted, then answered late), a connection reset before or after posting, and
injected `ok: false` error codes. Every post is recorded with the action id from its metadata, so tests
can count posts per action.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.vendors.loopback_http import LoopbackHttpServer

BOT_TOKEN = "xoxb-1234567890-0987654321-StandInSlackBotToken"
TEAM_ID = "T0STANDIN"
BOT_ID = "B0STANDIN"
MAX_TEXT = 40_000  # Slack truncates or refuses text beyond this: msg_too_long


@dataclass(frozen=True)
class Channel:
    id: str
    name: str
    member: bool = True  # is the bot in it (else not_in_channel)
    archived: bool = False


@dataclass(frozen=True)
class Post:
    channel: str
    ts: str
    text: str
    action_id: str | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class LoggedRequest:
    method: str  # Slack API method, e.g. "chat.postMessage"
    authorization: str
    content_type: str
    outcome: str  # "ok", an error code, "http <status>", "reset", "late"


@dataclass
class Fault:
    """One injected misbehaviour for the next call of `method`."""

    kind: str  # "status", "reset", "delay", "error"
    method: str = "chat.postMessage"
    status: int = 500
    retry_after: float | None = None
    after_post: bool = False  # act first (post), then misbehave
    seconds: float = 0.0
    error: str = ""


@dataclass
class Reply:
    status: int = 200
    document: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    reset: bool = False
    delay: float = 0.0


def _ok_false(error: str, **extra: Any) -> Reply:
    return Reply(200, {"ok": False, "error": error, **extra})


class SlackServer(LoopbackHttpServer):
    """In-memory Slack workspace: channels, users (email → id) and the posts the bot made."""

    def __init__(self, token: str = BOT_TOKEN, port: int = 0) -> None:
        self.lock = threading.RLock()
        self.tokens = {token}
        self.revoked: set[str] = set()
        self.channels: dict[str, Channel] = {}
        self.users: dict[str, str] = {}  # email (lower case) -> user id
        self.posts: list[Post] = []
        self.requests: list[LoggedRequest] = []
        self._faults: list[Fault] = []
        self._share = 0.0
        self._share_after_post = 0.0
        self._share_status = 500
        self._random = random.Random(0)
        self._ts = itertools.count(1)
        self._serve(_handler_for(self), port, "slack-stand-in")

    # -- workspace ---------------------------------------------------------------------------------

    def add_channel(self, channel_id: str, name: str, *, member: bool = True, archived: bool = False) -> None:
        with self.lock:
            self.channels[channel_id] = Channel(channel_id, name.lstrip("#"), member, archived)

    def add_user(self, email: str, user_id: str) -> None:
        with self.lock:
            self.users[email.lower()] = user_id

    def revoke(self, token: str) -> None:
        with self.lock:
            self.revoked.add(token)

    def posts_by_action(self) -> Counter[str | None]:
        with self.lock:
            return Counter(post.action_id for post in self.posts)

    def calls(self, method: str) -> list[LoggedRequest]:
        with self.lock:
            return [r for r in self.requests if r.method == method]

    # -- misbehaviour ------------------------------------------------------------------------------

    def rate_limit_next(self, n: int, retry_after: float = 1, method: str = "chat.postMessage") -> None:
        """The next n calls get 429 with Retry-After (nothing is posted)."""
        with self.lock:
            self._faults.extend(Fault("status", method, 429, retry_after) for _ in range(n))

    def fail_next(self, n: int, status: int = 500, *, after_post: bool = False) -> None:
        """The next n posts get an HTTP error, either instead of posting or after posting."""
        with self.lock:
            self._faults.extend(Fault("status", status=status, after_post=after_post) for _ in range(n))

    def fail_share(
        self, share: float, seed: int, *, after_post_share: float = 0.5, status: int = 500
    ) -> None:
        """A seeded share of posts answer `status`; `after_post_share` of those had posted first."""
        with self.lock:
            self._share, self._share_after_post, self._share_status = share, after_post_share, status
            self._random = random.Random(seed)

    def delay_next(self, n: int, seconds: float) -> None:
        """The next n posts are made, then answered only after `seconds` (a client timeout)."""
        with self.lock:
            self._faults.extend(Fault("delay", seconds=seconds, after_post=True) for _ in range(n))

    def reset_next(self, n: int, *, after_post: bool = False) -> None:
        """The next n posts get their connection reset, without posting or after posting."""
        with self.lock:
            self._faults.extend(Fault("reset", after_post=after_post) for _ in range(n))

    def error_next(self, n: int, error: str, *, after_post: bool = False) -> None:
        """The next n posts answer `{"ok": false, "error": error}` (after posting, for fatal_error)."""
        with self.lock:
            self._faults.extend(Fault("error", error=error, after_post=after_post) for _ in range(n))

    def _next_fault(self, method: str) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.method == method:
                    self._faults.remove(fault)
                    return fault
            if method == "chat.postMessage" and self._share and self._random.random() < self._share:
                after = self._random.random() < self._share_after_post
                return Fault("status", status=self._share_status, after_post=after)
        return None

    # -- request handling (called from the handler threads) ----------------------------------------

    def handle(
        self, http_method: str, path: str, query: dict[str, str], headers: Mapping[str, str], body: bytes
    ):
        if not path.startswith("/api/"):
            return Reply(404, text="Not Found"), "http 404"
        method = path[len("/api/") :]
        content_type = headers.get("Content-Type", "")
        params: dict[str, Any] = dict(query)
        if http_method == "POST" and body:
            if content_type.startswith("application/json"):
                try:
                    params.update(json.loads(body.decode("utf-8")))
                except (ValueError, UnicodeDecodeError):
                    return _ok_false("invalid_json"), "invalid_json"
            else:
                params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        fault = self._next_fault(method)
        if fault and not fault.after_post:
            if fault.kind == "status":
                return self._status_reply(fault), f"http {fault.status}"
            if fault.kind == "reset":
                return Reply(reset=True), "reset"
            if fault.kind == "error":
                return _ok_false(fault.error), fault.error
        reply = self._method(method, params, headers)
        outcome = "ok" if (reply.document or {}).get("ok") else str((reply.document or {}).get("error"))
        if fault and fault.after_post:
            if fault.kind == "status":
                return self._status_reply(fault), f"http {fault.status} after {outcome}"
            if fault.kind == "reset":
                return Reply(reset=True), f"reset after {outcome}"
            if fault.kind == "delay":
                reply.delay = fault.seconds
                return reply, f"late {outcome}"
            if fault.kind == "error":
                return _ok_false(fault.error), f"{fault.error} after {outcome}"
        return reply, outcome

    @staticmethod
    def _status_reply(fault: Fault) -> Reply:
        if fault.status == 429:
            extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            return Reply(429, {"ok": False, "error": "ratelimited"}, extra)
        return Reply(fault.status, text=f"<html><body>{fault.status} Server Error</body></html>")

    def _auth(self, params: Mapping[str, Any], headers: Mapping[str, str]) -> Reply | None:
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            token = str(params.get("token") or "")
        if not token:
            return _ok_false("not_authed")
        with self.lock:
            if token in self.revoked:
                return _ok_false("token_revoked")
            if token not in self.tokens:
                return _ok_false("invalid_auth")
        return None

    def _method(self, method: str, params: Mapping[str, Any], headers: Mapping[str, str]) -> Reply:
        if method not in ("chat.postMessage", "users.lookupByEmail"):
            return _ok_false("unknown_method")
        denied = self._auth(params, headers)
        if denied:
            return denied
        if method == "users.lookupByEmail":
            return self._lookup(str(params.get("email") or ""))
        return self._post(params, headers.get("Content-Type", ""))

    def _lookup(self, email: str) -> Reply:
        with self.lock:
            user_id = self.users.get(email.lower())
        if not user_id:
            return _ok_false("users_not_found")
        user = {
            "id": user_id,
            "team_id": TEAM_ID,
            "name": email.split("@")[0],
            "deleted": False,
            "is_bot": False,
            "profile": {"email": email, "real_name": email.split("@")[0]},
        }
        return Reply(200, {"ok": True, "user": user})

    def _resolve(self, target: str) -> tuple[str, Reply | None]:
        with self.lock:
            if target.startswith("#"):
                match = next((c for c in self.channels.values() if c.name == target[1:]), None)
                if match is None:
                    return "", _ok_false("channel_not_found")
                target = match.id
            if target in self.users.values():
                return "D" + target[1:], None  # the bot's direct-message conversation with that user
            channel = self.channels.get(target)
            if channel is None:
                return "", _ok_false("channel_not_found")
            if channel.archived:
                return "", _ok_false("is_archived")
            if not channel.member:
                return "", _ok_false("not_in_channel")
            return channel.id, None

    def _post(self, params: Mapping[str, Any], content_type: str) -> Reply:
        channel_id, refused = self._resolve(str(params.get("channel") or ""))
        if refused:
            return refused
        text = str(params.get("text") or "")
        if not text.strip() and not params.get("blocks"):
            return _ok_false("no_text")
        if len(text) > MAX_TEXT:
            return _ok_false("msg_too_long")
        metadata = params.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        payload = (metadata or {}).get("event_payload") or {}
        with self.lock:
            n = next(self._ts)
            ts = f"{1_790_000_000 + n}.{n:06d}"
            self.posts.append(Post(channel_id, ts, text, payload.get("action_id"), dict(params)))
        message = {"type": "message", "bot_id": BOT_ID, "text": text, "ts": ts}
        if metadata:
            message["metadata"] = metadata
        document: dict[str, Any] = {"ok": True, "channel": channel_id, "ts": ts, "message": message}
        if content_type.startswith("application/json") and "charset" not in content_type.lower():
            document["warning"] = "missing_charset"
            document["response_metadata"] = {"warnings": ["missing_charset"]}
        return Reply(200, document)


def _handler_for(server: SlackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet: requests are kept in server.requests

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name: value for name, value in self.headers.items()}
            reply, outcome = server.handle(method, parts.path, query, headers, body)
            with server.lock:
                server.requests.append(
                    LoggedRequest(
                        parts.path.removeprefix("/api/"),
                        headers.get("Authorization", ""),
                        headers.get("Content-Type", ""),
                        outcome,
                    )
                )
            if reply.reset:
                reset_connection(self)
                return
            if reply.delay:
                time.sleep(reply.delay)
            if reply.document is not None:
                payload = json.dumps(reply.document).encode()
                content_type = "application/json; charset=utf-8"
            else:
                payload = (reply.text or "").encode()
                content_type = "text/html; charset=utf-8"
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
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


def reset_connection(handler: BaseHTTPRequestHandler) -> None:
    """Drop the connection with a TCP reset and no answer (SO_LINGER 0, then close every reference)."""
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.rfile.close()
    handler.wfile.close()
    handler.connection.close()
    # the server's own clean-up still flushes and closes these: give it harmless stand-ins
    handler.rfile = io.BytesIO()
    handler.wfile = io.BytesIO()
    handler.close_connection = True
