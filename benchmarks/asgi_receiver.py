"""A fast loopback webhook receiver for benchmarks: a minimal ASGI app served by uvicorn (httptools
parser, uvloop event loop) on 127.0.0.1, in one process and one thread.

Same contract as tests/webhook_receiver.py without the fault injection: each POST is checked with
`action_sinks.webhook.verify_webhook` (401 when it fails), de-duplicated by its `Idempotency-Key`
(a key seen before is answered 409 with `Idempotent-Replayed: true` and `{"status": "already_processed"}`,
which WebhookSink counts as delivered), and counted per payload `action_id`; `GET /stats` returns the
counters as JSON in the same shape as the stdlib receiver's.

    ACTIONLAYER_WEBHOOK_SECRET=... python benchmarks/asgi_receiver.py --port 0

It prints `listening <url>` once the socket accepts connections (with `--port 0`, the port the system
chose). All state lives on the event loop's thread, so no lock is taken per request.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # run as a script: the project root holds action_sinks
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from action_sinks.webhook import (
    ALREADY_PROCESSED_HEADER,
    ALREADY_PROCESSED_STATUS,
    IDEMPOTENCY_HEADER,
    WebhookVerificationError,
    verify_webhook,
)

SECRET_ENV = "ACTIONLAYER_WEBHOOK_SECRET"
PATH = "/hooks/actions"
_JSON = (b"content-type", b"application/json")
_IDEMPOTENCY = IDEMPOTENCY_HEADER.lower().encode("latin-1")


class Receiver:
    """The ASGI application: verifies, de-duplicates and counts; `stats()` is what GET /stats returns."""

    def __init__(self, secret: str, *, tolerance_seconds: float = 300, path: str = PATH) -> None:
        self.secret = secret
        self.tolerance_seconds = tolerance_seconds
        self.path = path
        self.arrivals: Counter[str] = Counter()  # requests per idempotency key
        self.deliveries: Counter[str] = Counter()  # first-time processing per payload action_id
        self.replays: Counter[str] = Counter()  # requests recognised as an already processed key
        self.rejected: list[str] = []  # verification failures, with the reason
        self.incomplete = 0  # requests whose body was cut off (the sender went away mid-request)
        self.processed: dict[str, dict[str, Any]] = {}  # key -> payload

    def stats(self) -> dict[str, Any]:
        return {
            "requests": sum(self.arrivals.values()),
            "deliveries": sum(self.deliveries.values()),
            "duplicate_deliveries": sum(n - 1 for n in self.deliveries.values() if n > 1),
            "replays": sum(self.replays.values()),
            "faults": {},  # this receiver injects none; the key keeps the stdlib receiver's shape
            "rejected": len(self.rejected),
            "incomplete": self.incomplete,
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # lifespan is switched off; nothing else is served
        method, path = scope["method"], scope["path"]
        if method == "GET" and path.rstrip("/") == "/stats":
            await _answer(send, 200, self.stats())
            return
        if method != "POST" or path != self.path:
            await _answer(send, 404, {"error": f"only POST {self.path} and GET /stats"})
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.incomplete += 1  # nothing to verify or process, and nobody to answer
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        status, document, extra = self.handle(scope["headers"], body)
        await _answer(send, status, document, extra)

    def handle(
        self, raw_headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in raw_headers}
        key = headers.get(_IDEMPOTENCY.decode("latin-1")) or ""
        self.arrivals[key] += 1
        try:
            verify_webhook(headers, body, self.secret, time.time(), self.tolerance_seconds)
        except WebhookVerificationError as exc:
            self.rejected.append(str(exc))
            return 401, {"error": str(exc)}, []
        if not key:
            return 400, {"error": f"missing {IDEMPOTENCY_HEADER}"}, []
        if key in self.processed:
            self.replays[key] += 1
            return (
                409,
                {"status": ALREADY_PROCESSED_STATUS, "idempotency_key": key},
                [(ALREADY_PROCESSED_HEADER.lower().encode("latin-1"), b"true")],
            )
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, {"error": "body is not JSON"}, []
        self.processed[key] = payload
        action_id = payload.get("action_id") if isinstance(payload, dict) else None
        self.deliveries[str(action_id)] += 1
        return 200, {"status": "processed", "idempotency_key": key}, []


async def _answer(
    send: Any, status: int, document: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(document).encode()
    headers = [_JSON, (b"content-length", str(len(payload)).encode("latin-1")), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: a free port, printed on start")
    options = parser.parse_args()
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        raise SystemExit(f"set {SECRET_ENV} to the signing secret; the receiver was not started")

    import uvicorn  # imported here so the module can be imported (for Receiver) without it

    # bound and listening before uvicorn starts, so the port is known and connections queue at once
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", options.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    config = uvicorn.Config(
        Receiver(secret),
        http="httptools",
        loop="uvloop",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        backlog=2048,
        # the bench seeds its ledger between the raw run and dispatch: idle connections must stay open
        timeout_keep_alive=120,
    )
    server = uvicorn.Server(config)
    host, port = sock.getsockname()[:2]
    print(f"listening http://{host}:{port}{PATH}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])  # uvloop, as configured above


if __name__ == "__main__":
    main()
