"""Measures dispatch throughput to a loopback webhook with the DuckDB ledger on, against the same
receiver's raw capacity (plain concurrent signed POSTs, no ledger), in one run.

    .venv/bin/python benchmarks/bench_dispatch.py [--actions N] [--workers 8] [--chunk-size 1024]

The receiver (tests/webhook_receiver.py, stdlib threaded http.server) runs in its own process, so it does
not share the dispatcher's interpreter lock; it may itself be the bottleneck, which is why the ratio to
its raw capacity is the figure that says how much the ledger costs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import httpx  # noqa: E402

from action_sinks.dispatcher import dispatch  # noqa: E402
from action_sinks.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSink, sign  # noqa: E402
from actionlayer import ledger  # noqa: E402

SECRET_ENV = "ACTIONLAYER_WEBHOOK_SECRET"
AS_OF = datetime(2026, 11, 23, 9, 0)


def start_receiver(port: int, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "webhook_receiver.py"), "--port", str(port)],
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


def raw_capacity(url: str, secret: str, count: int, workers: int) -> float:
    """Plain signed POSTs of the same shape as the sink's, `workers` at a time, one keep-alive client."""
    client = httpx.Client(
        timeout=30, limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    )

    def post(n: int) -> None:
        body = json.dumps(
            {
                "action_id": f"raw-{n}",
                "channel": "hook",
                "recipient": "crm",
                "subject": "S",
                "body": "B" * 120,
                "owner_email": "owner@seller.example",
                "metadata": {"rule_id": "post_quote_followup"},
            }
        ).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            IDEMPOTENCY_HEADER: f"raw-{n}",
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


def seed_approved(con: duckdb.DuckDBPyConnection, count: int) -> None:
    """`count` level-4 actions, proposed and auto-approved, written in two batches."""
    proposed_at = AS_OF - timedelta(days=1)
    proposals = [
        ledger.LedgerEvent(
            action_id=f"bench-{n:06d}",
            event_type="proposed",
            occurred_at=proposed_at,
            actor="engine",
            rule_id="post_quote_followup",
            rule_version=1,
            maturity_level=4,
            record_type="deal",
            record_id=f"deal-{n}",
            contact_id=f"contact-{n}",
            account_id="account-1",
            owner_email="owner@seller.example",
            signal_at=proposed_at,
            holdout=False,
            reason="{}",
            recommended_action="Tell the CRM",
            channel="hook",
            recipient="crm-queue",
            message_subject="Follow up",
            message_body="B" * 120,
        )
        for n in range(count)
    ]
    ledger.append(con, proposals)
    ledger.append(
        con, [ledger.next_event(asdict(p), "approved", proposed_at, "auto:bench") for p in proposals]
    )


def dispatch_rate(
    url: str, env: dict[str, str], count: int, workers: int, chunk_size: int
) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as folder:
        con = duckdb.connect(str(Path(folder) / "bench.duckdb"))
        ledger.ensure_schema(con)
        seed_approved(con, count)
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


def main() -> None:
    parser = argparse.ArgumentParser(description="dispatch throughput vs the receiver's raw capacity")
    parser.add_argument("--actions", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=8, help="concurrent requests, raw and dispatch alike")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--port", type=int, default=0, help="receiver port (default: a free one)")
    options = parser.parse_args()

    env = {**os.environ, SECRET_ENV: secrets.token_hex(24)}
    port = options.port
    if not port:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    receiver, url = start_receiver(port, env)
    try:
        raw = raw_capacity(url, env[SECRET_ENV], options.actions, options.workers)
        rate, _ = dispatch_rate(url, env, options.actions, options.workers, options.chunk_size)
        counters = stats(url)
    finally:
        receiver.terminate()
        receiver.wait(10)
    print(f"actions: {options.actions}, workers: {options.workers}, chunk size: {options.chunk_size}")
    print(f"receiver raw capacity : {raw:8.0f} requests/s (signed POSTs, no ledger)")
    print(f"dispatch with ledger  : {rate:8.0f} actions/s (sending + result committed per chunk)")
    print(f"ratio                 : {rate / raw:8.0%}")
    print(f"receiver counters     : {counters}")
    if counters["duplicate_deliveries"] or counters["rejected"]:
        raise SystemExit("the receiver saw duplicates or rejected signatures: the run is not valid")


if __name__ == "__main__":
    main()
