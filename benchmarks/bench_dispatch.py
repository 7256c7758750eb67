"""Measures dispatch throughput to a loopback webhook with the DuckDB ledger on, against the same
receiver's raw capacity (plain concurrent signed POSTs, no ledger), in one run.

    .venv/bin/python benchmarks/bench_dispatch.py [--actions N] [--workers 8] [--chunk-size 1024]
                                                  [--receiver asgi|stdlib]

The receiver runs in its own process, so it does not share the dispatcher's interpreter lock. By default
it is benchmarks/asgi_receiver.py (uvicorn with httptools and uvloop); `--receiver stdlib` uses
tests/webhook_receiver.py (threaded http.server). Both verify each signature, de-duplicate by
Idempotency-Key and count deliveries per action. The "ceiling" line (stdlib http.client, one connection
per thread) shows what the receiver itself takes; on loopback the httpx client, not the receiver, is the
limit of the other two figures.

The raw-capacity client is set up like WebhookSink's: `--workers` threads sharing one httpx.Client with
the sink's default connection limits and headers, a body of the sink's shape, signed per request, so the
ratio of the two rates is what the sink's per-request work, the dispatcher and the ledger cost.

The run is valid only if the receiver processed every dispatched action exactly once: its counters are
read before and after dispatch and compared with the number of actions.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import duckdb  # noqa: E402
import httpx  # noqa: E402
from dispatch_support import seed_bulk  # noqa: E402

from action_sinks.dispatcher import dispatch  # noqa: E402
from action_sinks.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSink, sign  # noqa: E402
from actionlayer import ledger  # noqa: E402

SECRET_ENV = "ACTIONLAYER_WEBHOOK_SECRET"
AS_OF = datetime(2026, 11, 23, 9, 0)


RECEIVERS = {
    "asgi": ROOT / "benchmarks" / "asgi_receiver.py",
    "stdlib": ROOT / "tests" / "webhook_receiver.py",
}


def start_receiver(kind: str, port: int, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start the receiver in its own process; with port 0 it binds a free port and prints its URL."""
    process = subprocess.Popen(
        [sys.executable, str(RECEIVERS[kind]), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("listening "):
        process.kill()
        raise SystemExit(f"receiver did not start (said {line!r}); nothing was measured")
    return process, line.removeprefix("listening ")


def stats(url: str) -> dict:
    base = url.split("/hooks/")[0]
    return httpx.get(f"{base}/stats", timeout=10).json()


def sink_like_client() -> httpx.Client:
    """A client configured like WebhookSink's (connectors/transport.HttpTransport): one shared by all the
    worker threads, httpx's default connection limits, the sink's default headers, no redirects."""
    return httpx.Client(
        timeout=30,
        headers={"User-Agent": "actionlayer-webhook/1", "Content-Type": "application/json"},
        follow_redirects=False,
    )


def sink_like_payload(n: int, prefix: str = "raw") -> dict:
    """A body of the same shape and size as WebhookSink.payload() for a seeded action."""
    return {
        "action_id": f"{prefix}-{n:06d}",
        "channel": "hook",
        "recipient": "crm-queue",
        "subject": "Follow up",
        "body": "B" * 120,
        "owner_email": "owner@seller.example",
        "metadata": {
            "rule_id": "post_quote_followup",
            "rule_version": 1,
            "maturity_level": 4,
            "record_type": "deal",
            "record_id": f"deal-{n}",
            "contact_id": f"contact-{n}",
            "account_id": "account-1",
            "recommended_action": "Tell the CRM",
            "proposed_at": (AS_OF - timedelta(days=1)).isoformat(),
            "format": "text",
        },
    }


def raw_capacity(url: str, secret: str, count: int, workers: int) -> float:
    """Plain signed POSTs of the sink's shape, `workers` threads sharing one sink-like client."""
    client = sink_like_client()

    def post(n: int) -> None:
        body = json.dumps(sink_like_payload(n)).encode()
        timestamp = str(int(time.time()))
        headers = {
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            IDEMPOTENCY_HEADER: f"raw-{n:06d}",
        }
        response = client.post(url, content=body, headers=headers)
        response.raise_for_status()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(post, range(-min(200, count), 0)))  # warm-up: connections, receiver threads
        started = time.perf_counter()
        list(pool.map(post, range(count)))
        elapsed = time.perf_counter() - started
    client.close()
    return count / elapsed


def receiver_ceiling(url: str, secret: str, count: int, workers: int) -> float:
    """The receiver's own limit: the same signed POSTs from `workers` threads, each on its own keep-alive
    stdlib http.client connection, which costs the sending process far less than httpx. Not the ratio's
    baseline (the sink does not use this client); it shows whether the receiver or the client limits."""
    parts = urlsplit(url)
    local = threading.local()

    def post(n: int) -> None:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        body = json.dumps(sink_like_payload(n, "ceiling")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            IDEMPOTENCY_HEADER: f"ceiling-{n:06d}",
        }
        connection.request("POST", parts.path, body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"receiver answered {response.status} to a plain POST; nothing was measured")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(post, range(-min(200, count), 0)))
        started = time.perf_counter()
        list(pool.map(post, range(count)))
        elapsed = time.perf_counter() - started
    return count / elapsed


def dispatch_rate(
    url: str, env: dict[str, str], count: int, workers: int, chunk_size: int
) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as folder:
        con = duckdb.connect(str(Path(folder) / "bench.duckdb"))
        ledger.ensure_schema(con)
        seed_bulk(con, "hook", count, "crm-queue", body="B" * 120)
        sink = WebhookSink(url, SECRET_ENV, environ=env, timeout=30)
        started = time.perf_counter()
        report = dispatch(con, AS_OF, {"hook": sink}, chunk_size=chunk_size, concurrency={"hook": workers})
        elapsed = time.perf_counter() - started
        sink.close()
        states = ledger.count_by_state(con)
        con.close()
    if report.delivered != count or states != {"delivered": count}:
        raise SystemExit(f"dispatch did not deliver everything: {states}; the numbers below are not valid")
    return count / elapsed, states


def check_exactly_once(before: dict, after: dict, count: int) -> list[str]:
    """What the receiver's counters say went wrong during dispatch (empty: each action processed once)."""
    delta = {key: after[key] - before[key] for key in ("requests", "deliveries", "replays", "incomplete")}
    problems = []
    if delta["deliveries"] != count:
        problems.append(f"the receiver processed {delta['deliveries']} new actions, not {count}")
    if after["duplicate_deliveries"]:
        problems.append(f"{after['duplicate_deliveries']} action(s) were processed more than once")
    if after["rejected"]:
        problems.append(f"{after['rejected']} request(s) failed signature verification")
    if delta["incomplete"]:
        problems.append(f"{delta['incomplete']} request(s) arrived cut off")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description="dispatch throughput vs the receiver's raw capacity")
    parser.add_argument("--actions", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=8, help="concurrent requests, raw and dispatch alike")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--receiver", choices=sorted(RECEIVERS), default="asgi", help="default: asgi")
    parser.add_argument("--port", type=int, default=0, help="receiver port (default: a free one)")
    options = parser.parse_args()

    env = {**os.environ, SECRET_ENV: secrets.token_hex(24)}
    receiver, url = start_receiver(options.receiver, options.port, env)
    try:
        ceiling = receiver_ceiling(url, env[SECRET_ENV], options.actions, options.workers)
        raw = raw_capacity(url, env[SECRET_ENV], options.actions, options.workers)
        before = stats(url)
        rate, _ = dispatch_rate(url, env, options.actions, options.workers, options.chunk_size)
        after = stats(url)
    finally:
        receiver.terminate()
        receiver.wait(10)
    problems = check_exactly_once(before, after, options.actions)
    print(
        f"receiver: {options.receiver}, actions: {options.actions}, workers: {options.workers}, "
        f"chunk size: {options.chunk_size}"
    )
    print(f"receiver ceiling      : {ceiling:8.0f} requests/s (signed POSTs, stdlib http.client per thread)")
    print(f"receiver raw capacity : {raw:8.0f} requests/s (signed POSTs, sink-like httpx client, no ledger)")
    print(f"dispatch with ledger  : {rate:8.0f} actions/s (sending + result committed per chunk)")
    print(f"ratio                 : {rate / raw:8.0%}")
    print(
        f"receiver, dispatch    : {after['deliveries'] - before['deliveries']} processed, "
        f"{after['replays'] - before['replays']} replays, "
        f"{after['requests'] - before['requests']} requests"
    )
    print(f"receiver counters     : {after}")
    if problems:
        raise SystemExit(
            "not every action was processed exactly once: " + "; ".join(problems) + "; the run is not valid"
        )


if __name__ == "__main__":
    main()
