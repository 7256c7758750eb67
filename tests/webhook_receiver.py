"""A loopback webhook receiver (stdlib http.server on 127.0.0.1) that verifies, de-duplicates and counts
deliveries, and injects faults on demand: a share of 5xx, 429 with Retry-After, slow answers, connection
resets, and "accept then reset" (processed, then the connection dropped before the answer).

Fault choice is a hash of (seed, idempotency key, how many times that key arrived), not a shared random
stream, so a run injects the same faults whatever order the threads happen to serve requests in.

Run standalone for benchmarks: `python tests/webhook_receiver.py --port 8750` (secret from
`ACTIONLAYER_WEBHOOK_SECRET`); `GET /stats` returns the counters as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # run as a script: the project root holds action_sinks
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from action_sinks.webhook import (
    ALREADY_PROCESSED_STATUS,
    IDEMPOTENCY_HEADER,
    WebhookVerificationError,
    verify_webhook,
)

SECRET_ENV = "ACTIONLAYER_WEBHOOK_SECRET"


@dataclass(frozen=True)
class Faults:
    """Shares (0..1) of requests that get each fault; at most one fault per request."""

    server_error: float = 0.0  # answered 503
    throttle: float = 0.0  # answered 429 with Retry-After
    retry_after: str = "1"
    slow: float = 0.0  # answered only after `slow_seconds` (processed then, the client has given up)
    slow_seconds: float = 1.0
    reset: float = 0.0  # connection reset before anything is processed
    accept_then_reset: float = 0.0  # processed, then the connection reset before the answer
    latency: float = 0.0  # every request waits this long before processing (a slower receiver)
    fixed_status: int | None = None  # every request answered with this status (a broken endpoint)
    fixed_body: str = ""
    max_per_key: int | None = None  # after this many faults on one key it is served normally
    seed: int = 0

    def pick(self, key: str, arrival: int, faults_so_far: int) -> str | None:
        if self.max_per_key is not None and faults_so_far >= self.max_per_key:
            return None
        digest = hashlib.sha256(f"{self.seed}|{key}|{arrival}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        for name in ("server_error", "throttle", "slow", "reset", "accept_then_reset"):
            share = getattr(self, name)
            if draw < share:
                return name
            draw -= share
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # a burst of concurrent connections must queue, not be refused
    request_queue_size = 256
    receiver: WebhookReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that timed out or a connection we reset on purpose is expected here, not a bug
        if isinstance(sys.exc_info()[1], OSError | ValueError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # keep-alive: a connection per request would measure TCP set-up, not the receiver
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: with Nagle on, the second waits for a delayed ACK (~40 ms)
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.rstrip("/") != "/stats":
            self.answer(404, {"error": "only /stats"})
            return
        self.answer(200, self.server.receiver.stats())

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        expected = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(expected)
        if len(body) < expected:
            # the sender died mid-request: nothing to verify or process, and nobody to answer
            self.server.receiver.count_incomplete()
            self.close_connection = True
            return
        self.server.receiver.handle(self, body)

    def answer(self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def reset(self) -> None:
        # SO_LINGER 0 makes close() send RST: the client sees a reset, not a clean end of stream
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        # the buffered reader holds a reference to the socket; the RST only goes out on the last close
        self.rfile.close()
        self.connection.close()


class WebhookReceiver:
    """Threaded receiver; `url` once started. Counters are safe to read while it runs."""

    def __init__(
        self,
        secret: str,
        faults: Faults | None = None,
        *,
        port: int = 0,
        tolerance_seconds: float = 300,
        path: str = "/hooks/actions",
    ) -> None:
        self.secret = secret
        self.faults = faults or Faults()
        self.tolerance_seconds = tolerance_seconds
        self.path = path
        self.lock = threading.Lock()
        self.arrivals: Counter[str] = Counter()  # requests per idempotency key, faulted ones included
        self.faulted: Counter[str] = Counter()  # faults injected per key
        self.deliveries: Counter[str] = Counter()  # first-time processing per payload action_id
        self.replays: Counter[str] = Counter()  # requests recognised as an already processed key
        self.fault_kinds: Counter[str] = Counter()
        self.rejected: list[str] = []  # verification failures, with the reason
        self.incomplete = 0  # requests whose body was cut off (the sender died mid-request)
        self.processed: dict[str, dict[str, Any]] = {}  # key -> payload
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.receiver = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on the calling thread (the standalone receiver)."""
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": sum(self.arrivals.values()),
                "deliveries": sum(self.deliveries.values()),
                "duplicate_deliveries": sum(n - 1 for n in self.deliveries.values() if n > 1),
                "replays": sum(self.replays.values()),
                "faults": dict(self.fault_kinds),
                "rejected": len(self.rejected),
                "incomplete": self.incomplete,
            }

    def count_incomplete(self) -> None:
        with self.lock:
            self.incomplete += 1

    def handle(self, request: _Handler, body: bytes) -> None:
        key = request.headers.get(IDEMPOTENCY_HEADER) or ""
        with self.lock:
            self.arrivals[key] += 1
            fault = self.faults.pick(key, self.arrivals[key], self.faulted[key])
            if fault:
                self.faulted[key] += 1
                self.fault_kinds[fault] += 1
        if self.faults.fixed_status is not None:
            request.answer(self.faults.fixed_status, {"error": self.faults.fixed_body})
            return
        if fault == "reset":
            request.reset()
            return
        if fault == "server_error":
            request.answer(503, {"error": "injected outage"})
            return
        if fault == "throttle":
            request.answer(429, {"error": "slow down"}, {"Retry-After": self.faults.retry_after})
            return
        try:
            verify_webhook(request.headers, body, self.secret, time.time(), self.tolerance_seconds)
        except WebhookVerificationError as exc:
            with self.lock:
                self.rejected.append(str(exc))
            request.answer(401, {"error": str(exc)})
            return
        if not key:
            request.answer(400, {"error": f"missing {IDEMPOTENCY_HEADER}"})
            return
        if fault == "slow":
            time.sleep(self.faults.slow_seconds)
        if self.faults.latency:
            time.sleep(self.faults.latency)
        payload = json.loads(body)
        with self.lock:
            replay = key in self.processed
            if replay:
                self.replays[key] += 1
            else:
                self.processed[key] = payload
                self.deliveries[str(payload.get("action_id"))] += 1
        if replay:
            request.answer(409, {"status": ALREADY_PROCESSED_STATUS, "idempotency_key": key})
            return
        if fault == "accept_then_reset":
            request.reset()
            return
        request.answer(200, {"status": "processed", "idempotency_key": key})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    options = parser.parse_args()
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        raise SystemExit(f"set {SECRET_ENV} to the signing secret; the receiver was not started")
    receiver = WebhookReceiver(secret, Faults(latency=options.latency), port=options.port)
    print(f"listening {receiver.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        receiver.serve_forever()


if __name__ == "__main__":
    main()
