"""Crash safety of dispatch: a real dispatcher process is SIGKILLed 50 times at random moments while it
sends to a webhook (idempotent) and an SMTP server (not idempotent), then run once to the end.

The receivers live in this test process, so they survive every kill and count what really arrived.
The dispatcher runs in processes forked from one pre-imported parent (`ZYGOTE`), so a restart costs a
fork instead of a ~1 s interpreter start; each child opens the DuckDB file itself, like a fresh process,
and its parent kills it with SIGKILL (a zombie keeps its pid, so the kill can never hit another process).
"""

from __future__ import annotations

import os
import random
import select
import subprocess
import sys
from collections import Counter
from pathlib import Path

import duckdb
from dispatch_support import AS_OF, seed_bulk
from loopback import RecordingHandler, SmtpServer
from webhook_receiver import Faults, WebhookReceiver

from actionlayer import ledger

ROOT = Path(__file__).resolve().parents[1]
SECRET = "crash-test-secret-5d1c"
HOOKS, MAILS, KILLS = 150, 150, 50
TERMINAL = {"delivered", "failed", "unknown"}

# Reads "run <delay>" lines: forks a dispatcher child, SIGKILLs it `delay` seconds after it has opened
# the database (0 = let it finish), reports "exit <code>". The child dispatches until nothing is due.
ZYGOTE = r"""
import os, signal, sys, time, traceback
from datetime import datetime, timedelta
import duckdb
from action_sinks.dispatcher import dispatch
from action_sinks.smtp import SmtpSink
from action_sinks.webhook import WebhookSink

AS_OF = datetime.fromisoformat(os.environ["CRASH_AS_OF"])

# warm up before forking: the first ledger write imports modules lazily (DuckDB's Arrow/pandas glue,
# about a second), which every child would otherwise pay again before its first send
from actionlayer import ledger
warm = duckdb.connect()
ledger.ensure_schema(warm)
ledger.append(warm, [ledger.LedgerEvent("warm", "proposed", AS_OF, "warm-up", "warm", details={"a": 1})])
ledger.states(warm)
warm.close()

def child(ready_fd):
    con = duckdb.connect(os.environ["CRASH_DB"])
    sinks = {
        "hook": WebhookSink(os.environ["CRASH_HOOK_URL"], "CRASH_SECRET", timeout=5, initial_wait=0.05,
                            max_wait=0.2),
        "email": SmtpSink("127.0.0.1", int(os.environ["CRASH_SMTP_PORT"]), "sales@example.com", timeout=5),
    }
    os.write(ready_fd, b"r")
    for hour in range(10):
        report = dispatch(con, AS_OF + timedelta(hours=hour), sinks, chunk_size=16, max_attempts=10,
                          concurrency={"hook": 2})
        if report.due == 0:
            break
    con.close()

for line in sys.stdin:
    command, _, delay = line.partition(" ")
    if command != "run":
        break
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            child(write_fd)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    os.close(write_fd)
    os.read(read_fd, 1)  # the child has the database open
    os.close(read_fd)
    if float(delay) > 0:
        time.sleep(float(delay))
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
"""


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"dispatcher parent said nothing for {timeout}s"
    return process.stdout.readline().strip()


def test_kill_dispatcher_50_times_nothing_lost_nothing_sent_twice(tmp_path: Path) -> None:
    db = tmp_path / "ledger.duckdb"
    with duckdb.connect(str(db)) as con:
        ledger.ensure_schema(con)
        hooks = seed_bulk(con, "hook", HOOKS, "crm-queue")
        mails = seed_bulk(con, "email", MAILS, "ada@customer.example")

    rng = random.Random(20261123)
    smtp = RecordingHandler()
    with WebhookReceiver(SECRET, Faults(latency=0.02)) as receiver, SmtpServer(smtp) as smtp_server:
        env = {
            **os.environ,
            "CRASH_DB": str(db),
            "CRASH_AS_OF": AS_OF.isoformat(),
            "CRASH_HOOK_URL": receiver.url,
            "CRASH_SMTP_PORT": str(smtp_server.port),
            "CRASH_SECRET": SECRET,
        }
        with (tmp_path / "dispatcher.stderr").open("w") as stderr:
            parent = subprocess.Popen(
                [sys.executable, "-c", ZYGOTE],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
            assert parent.stdin is not None
            try:
                exits = []
                for _ in range(KILLS):
                    parent.stdin.write(f"run {rng.uniform(0.02, 0.25):.3f}\n")
                    parent.stdin.flush()
                    exits.append(read_line(parent, 60))
                parent.stdin.write("run 0\n")  # the final, clean run
                parent.stdin.flush()
                final = read_line(parent, 60)
                parent.stdin.write("quit\n")
                parent.stdin.flush()
                parent.wait(10)
            finally:
                if parent.poll() is None:
                    parent.kill()
        errors = (tmp_path / "dispatcher.stderr").read_text()
        assert final == "exit 0", f"the final dispatch failed: {final}\n{errors[-3000:]}"
        assert exits.count("exit -9") >= KILLS * 0.8, f"most runs must really be killed: {Counter(exits)}"
        assert "Traceback" not in errors, errors[-3000:]

    with duckdb.connect(str(db), read_only=True) as con:
        states = {row["action_id"]: row for row in ledger.states(con)}
        trails = {
            action_id: [(r["event_type"], r["attempt"]) for r in ledger.trail(con, action_id)]
            for action_id in hooks + mails
        }

    # nothing lost, nothing stuck: every action ends in exactly one terminal state
    assert sorted(states) == sorted(hooks + mails)
    stuck = {a: s["event_type"] for a, s in states.items() if s["event_type"] not in TERMINAL}
    assert stuck == {}, f"not in a terminal state: {stuck}"
    for action_id, trail in trails.items():
        results = [kind for kind, _ in trail if kind in TERMINAL]
        assert results.count("delivered") + results.count("unknown") <= 1, (action_id, trail)
        sendings = [attempt for kind, attempt in trail if kind == "sending"]
        assert sendings == list(range(1, len(sendings) + 1)), (action_id, trail)

    # webhook: delivered once per action, whatever the number of interrupted attempts
    assert {a: states[a]["event_type"] for a in hooks} == dict.fromkeys(hooks, "delivered")
    assert dict(receiver.deliveries) == dict.fromkeys(hooks, 1)
    assert receiver.rejected == []
    resent = [a for a in hooks if len([k for k, _ in trails[a] if k == "sending"]) > 1]
    assert resent, "no kill interrupted a webhook round; the test did not exercise the re-send path"
    assert sum(receiver.replays.values()) >= 1, "a re-sent key should have reached the receiver again"

    # SMTP: never sent twice; an interrupted send became `unknown`, never a second attempt
    received = Counter(message["Message-ID"] for message in smtp.messages)
    assert max(received.values()) == 1, f"SMTP messages sent twice: {received.most_common(3)}"
    unknown_mails = [a for a in mails if states[a]["event_type"] == "unknown"]
    assert unknown_mails, "no kill interrupted an SMTP send; the test did not exercise that path"
    for action_id in mails:
        trail, copies = trails[action_id], received[f"<{action_id}@actionlayer>"]
        assert [k for k, _ in trail].count("sending") == 1, (action_id, trail)
        if states[action_id]["event_type"] == "delivered":
            assert copies == 1, (action_id, trail)
        else:
            assert states[action_id]["event_type"] == "unknown" and copies <= 1, (action_id, trail, copies)
            assert trail[-2:] == [("sending", 1), ("unknown", 1)], (action_id, trail)
