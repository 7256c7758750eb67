"""The LINE sink through the real dispatcher and a DuckDB ledger, against the LINE stand-in on 127.0.0.1:
delivery, the retry-key contract (409 = already accepted), error mapping, and faults that must end in
exactly one delivery per action."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from dispatch_support import AS_OF, event_details, event_types, seed, state_of, token_sinks
from loopback import free_port

from action_sinks.base import OutboundMessage, SinkConfigError
from action_sinks.dispatcher import dispatch
from action_sinks.line import LineSink, retry_key_for
from actionlayer import ledger
from tests.vendors.line_server import CHANNEL_ACCESS_TOKEN, LineServer

TOKEN_ENV = "TEST_LINE_CHANNEL_TOKEN"
ADA = "U" + "0123456789abcdef" * 2
BO = "U" + "fedcba9876543210" * 2
GROUP = "C" + "00112233445566778899aabbccddeeff"
STRANGER = "U" + "ffffffffffffffffffffffffffffffff"

# ---------------------------------------------------------------- fixtures


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    ledger.ensure_schema(connection)
    yield connection
    connection.close()


@pytest.fixture
def server() -> Iterator[LineServer]:
    with LineServer() as running:
        for recipient in (ADA, BO, GROUP):
            running.add_recipient(recipient)
        yield running


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_sink(sleeps: list[float]) -> Iterator[Callable[..., LineSink]]:
    with token_sinks(LineSink, TOKEN_ENV, CHANNEL_ACCESS_TOKEN, sleeps.append) as build:
        yield build


details = event_details


# ---------------------------------------------------------------- delivery and the retry key


def test_line_delivery_end_to_end(con, server: LineServer, make_sink) -> None:
    seed(con, "l1", channel="line", recipient=ADA)
    seed(con, "l2", channel="line", recipient=GROUP, subject=None, body="Team: the Atlas quote is out")

    report = dispatch(con, AS_OF, {"line": make_sink(server.base_url)})

    assert (report.due, report.delivered, report.failed) == (2, 2, 0)
    first = server.pushes_for(retry_key_for("l1"))
    assert len(first) == 1
    assert first[0].to == ADA
    assert first[0].messages == [
        {"type": "text", "text": "Following up on the Atlas quote\n\nHi Ada,\n\nDid the quote work for you?"}
    ]
    assert server.pushes_for(retry_key_for("l2"))[0].messages[0]["text"] == "Team: the Atlas quote is out"
    assert all(r.authorization == f"Bearer {CHANNEL_ACCESS_TOKEN}" for r in server.requests)
    assert {r.retry_key for r in server.requests} == {retry_key_for("l1"), retry_key_for("l2")}

    assert event_types(con, "l1") == ["proposed", "approved", "sending", "delivered"]
    delivered = state_of(con, "l1")
    assert details(delivered)["sink"] == "line"
    assert details(delivered)["external_id"].isdigit()  # LINE's sent message id
    assert f"pushed to {ADA}" in delivered["result"]

    again = dispatch(con, AS_OF + timedelta(hours=1), {"line": make_sink(server.base_url)})
    assert again.due == 0 and len(server.pushes) == 2


def test_line_retry_key_is_the_same_in_every_process() -> None:
    key = retry_key_for("action-42")
    assert uuid.UUID(key).version == 5 and key == retry_key_for("action-42") != retry_key_for("action-43")
    elsewhere = subprocess.run(
        [
            sys.executable,
            "-c",
            "from action_sinks.line import retry_key_for; print(retry_key_for('action-42'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert elsewhere.stdout.strip() == key


def test_line_long_message_is_split_into_several_text_messages(con, server: LineServer, make_sink) -> None:
    body = "é" * 9_000 + "😀" * 1_000  # an emoji counts two UTF-16 units, as LINE counts it
    seed(con, "long", channel="line", recipient=ADA, subject="Quote", body=body)

    dispatch(con, AS_OF, {"line": make_sink(server.base_url)})

    [push] = server.pushes_for(retry_key_for("long"))
    texts = [message["text"] for message in push.messages]
    assert len(texts) == 3 and "".join(texts) == "Quote\n\n" + body
    assert state_of(con, "long")["event_type"] == "delivered"


def test_line_409_for_an_accepted_key_is_delivered(con, server: LineServer, make_sink) -> None:
    # an earlier attempt was accepted, but its answer never arrived
    server.accept(retry_key_for("k1"), ADA)
    seed(con, "k1", channel="line", recipient=ADA)

    report = dispatch(con, AS_OF, {"line": make_sink(server.base_url)})

    assert report.delivered == 1
    assert [r.outcome for r in server.requests] == ["duplicate"]
    assert server.deliveries[retry_key_for("k1")] == 1
    final = state_of(con, "k1")
    assert "already accepted this push" in final["result"] and "not sent again" in final["result"]
    assert details(final)["external_id"] == "461230966842064897"


@pytest.mark.parametrize("accepted_before", [True, False], ids=["answer-lost", "never-sent"])
def test_line_interrupted_sending_is_resent_safely_fault(
    con, server: LineServer, make_sink, accepted_before: bool
) -> None:
    seed(con, "i1", channel="line", recipient=ADA)
    approved = state_of(con, "i1")
    # a dispatcher crashed after recording `sending` (and maybe after LINE accepted the push)
    ledger.append(
        con, [ledger.next_event(approved, "sending", AS_OF, "dispatcher", attempt=1, recipient=ADA)]
    )
    if accepted_before:
        server.accept(retry_key_for("i1"), ADA)

    report = dispatch(con, AS_OF + timedelta(minutes=5), {"line": make_sink(server.base_url)})

    # an idempotent sink is simply used again; the retry key keeps it to one delivery
    assert (report.delivered, report.unknown) == (1, 0)
    assert server.deliveries[retry_key_for("i1")] == 1
    assert event_types(con, "i1")[-3:] == ["sending", "sending", "delivered"]


# ---------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("recipient", "body", "setup", "status", "expected"),
    [
        (STRANGER, "Body", None, 400, "HTTP 400: Failed to send messages"),
        (ADA, "", None, 400, "The request body has 1 error(s) [messages[0].text: May not be empty]"),
        (ADA, "Body", "wrong-token", 401, "HTTP 401: Authentication failed"),
        (ADA, "Body", "forbidden", 403, "HTTP 403: Access to this API is not available for your account"),
        (ADA, "Body", "quota", 429, "You have reached your monthly limit."),
        ("ada@customer.example", "Body", None, None, "is not a LINE user, group or room id"),
        (ADA, "x" * 25_001, None, None, "longer than 5 LINE text messages"),
    ],
    ids=[
        "unknown-user",
        "empty-text",
        "bad-token",
        "forbidden",
        "monthly-limit",
        "not-a-line-id",
        "too-long",
    ],
)
def test_line_error_mapping(
    con, server: LineServer, make_sink, recipient, body, setup, status, expected
) -> None:
    token = "not-the-channel-token" if setup == "wrong-token" else CHANNEL_ACCESS_TOKEN
    server.forbidden = setup == "forbidden"
    server.quota = 0 if setup == "quota" else None
    seed(con, "e1", channel="line", recipient=recipient, subject="" if not body else "Hi", body=body)

    report = dispatch(con, AS_OF, {"line": make_sink(server.base_url, token=token)})

    final = state_of(con, "e1")
    assert (final["event_type"], final["retryable"], final["next_action"]) == (
        "failed",
        False,
        "needs a person",
    )
    assert expected in final["result"]
    assert report.retryable == 0
    assert server.pushes == []
    if status is None:
        assert server.requests == []  # refused before anything was sent
    else:
        assert {r.status for r in server.requests} == {status}
    if status == 401:
        assert TOKEN_ENV in final["result"]


def test_line_missing_token_variable_sends_nothing(con, server: LineServer) -> None:
    seed(con, "m1", channel="line", recipient=ADA)
    with LineSink(TOKEN_ENV, server.base_url, environ={}) as sink:
        dispatch(con, AS_OF, {"line": sink})
    final = state_of(con, "m1")
    assert (final["event_type"], final["retryable"]) == ("failed", True)
    assert f"variable {TOKEN_ENV} is not set" in final["result"]
    assert server.requests == []


# ---------------------------------------------------------------- faults


def test_line_429_retry_after_honoured_fault(con, server: LineServer, make_sink, sleeps) -> None:
    server.rate_limit_next(2, retry_after=0.25)
    seed(con, "r1", channel="line", recipient=ADA)

    dispatch(con, AS_OF, {"line": make_sink(server.base_url)})

    assert sleeps.count(0.25) == 2
    assert [r.outcome for r in server.requests] == ["http 429", "http 429", "delivered"]
    assert {r.retry_key for r in server.requests} == {retry_key_for("r1")}
    assert state_of(con, "r1")["event_type"] == "delivered"
    assert "after 3 attempts" in state_of(con, "r1")["result"]


@pytest.mark.parametrize(
    ("inject", "outcomes"),
    [
        (lambda s: s.delay_next(1, 0.8), ["late delivered", "duplicate"]),
        (lambda s: s.reset_next(1), ["reset", "delivered"]),
        (lambda s: s.reset_next(1, after_accept=True), ["reset after delivered", "duplicate"]),
        (lambda s: s.fail_next(1, 500), ["http 500", "delivered"]),
        (lambda s: s.fail_next(1, 503, after_accept=True), ["http 503 after delivered", "duplicate"]),
    ],
    ids=["timeout", "reset", "accept-then-reset", "5xx", "accept-then-5xx"],
)
def test_line_retried_in_the_sink_without_duplicates_fault(
    con, server: LineServer, make_sink, inject, outcomes: list[str]
) -> None:
    inject(server)
    seed(con, "f1", channel="line", recipient=ADA)

    report = dispatch(con, AS_OF, {"line": make_sink(server.base_url, timeout=0.3)})

    assert report.delivered == 1
    assert [r.outcome for r in server.requests] == outcomes
    assert server.deliveries[retry_key_for("f1")] == 1
    if outcomes[-1] == "duplicate":
        assert "already accepted" in state_of(con, "f1")["result"]


def test_line_down_then_up_fault(con, make_sink) -> None:
    port = free_port()  # nothing listens: every attempt is refused
    seed(con, "d1", channel="line", recipient=ADA)
    sink = make_sink(f"http://127.0.0.1:{port}")

    first = dispatch(con, AS_OF, {"line": sink})
    assert (first.failed, first.retryable) == (1, 1)
    assert "ConnectError" in state_of(con, "d1")["result"]

    with LineServer(port=port) as server:
        server.add_recipient(ADA)
        dispatch(con, AS_OF + timedelta(hours=1), {"line": sink})
        assert state_of(con, "d1")["event_type"] == "delivered"
        assert server.deliveries[retry_key_for("d1")] == 1


def test_line_mixed_faults_all_delivered_once_fault(con, server: LineServer, make_sink, sleeps) -> None:
    recipients = [ADA, BO, GROUP]
    ids = [f"x{n:02d}" for n in range(30)]
    for n, action_id in enumerate(ids):
        seed(con, action_id, channel="line", recipient=recipients[n % 3], body=f"Message {n}")
    server.rate_limit_next(4, retry_after=0.05)  # more than one send's attempts: a dispatch pass fails it
    server.delay_next(2, 0.6)
    server.reset_next(2)
    server.reset_next(2, after_accept=True)
    server.fail_next(2, 503, after_accept=True)
    server.fail_share(0.1, seed=5, after_accept_share=0.5)
    sink = make_sink(server.base_url, timeout=0.3)

    passes = []
    for hour in range(8):
        report = dispatch(con, AS_OF + timedelta(hours=hour), {"line": sink}, max_attempts=8)
        passes.append(report)
        if report.due == 0:
            break

    assert passes[-1].due == 0 and len(passes) >= 2  # some actions needed a later pass
    states = {action_id: state_of(con, action_id) for action_id in ids}
    assert {s["event_type"] for s in states.values()} == {"delivered"}  # nothing stuck in sending
    for action_id in ids:
        assert server.deliveries[retry_key_for(action_id)] == 1, action_id
    assert len(server.pushes) == 30
    assert sum(r.outcome == "duplicate" for r in server.requests) >= 6  # 409s that were not re-delivered
    assert sum("already accepted" in s["result"] for s in states.values()) >= 6
    assert 0.05 in sleeps


# ---------------------------------------------------------------- secrets and settings


def test_line_token_never_leaks(con, server: LineServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "WrongLineTokenValue+ThatMustNotLeak/9zY="
    server.rate_limit_next(1, retry_after=0.01)
    server.reset_next(1)
    seed(con, "t1", channel="line", recipient=ADA)
    seed(con, "t2", channel="line", recipient=STRANGER)
    with LineSink(
        TOKEN_ENV, server.base_url, environ={TOKEN_ENV: CHANNEL_ACCESS_TOKEN}, sleep=lambda s: None
    ) as sink:
        report = dispatch(con, AS_OF, {"line": sink})
        texts = [repr(sink), sink.describe()]
    with LineSink(TOKEN_ENV, server.base_url, environ={TOKEN_ENV: wrong}, sleep=lambda s: None) as bad:
        result = bad.send(OutboundMessage("t3", "line", ADA, "Hi", "Body"))
        texts += [repr(bad), bad.describe(), result.detail, str(result)]

    assert (report.delivered, report.failed) == (1, 1)
    assert "HTTP 401" in result.detail
    texts += report.summary_lines()
    texts += [str(row) for row in con.execute("select * from ops.action_ledger").fetchall()]
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
    assert caplog.records, "expected the retries to be logged"
    for secret in (CHANNEL_ACCESS_TOKEN, wrong):
        assert not [text for text in texts if secret in text]


def test_line_from_settings_and_describe() -> None:
    environ = {"LINE_CHANNEL_ACCESS_TOKEN": CHANNEL_ACCESS_TOKEN}
    entry = {"sink": "line", "token_env": "LINE_CHANNEL_ACCESS_TOKEN", "rate_per_second": 50, "timeout": 3}
    with LineSink.from_settings(entry, "actionlayer.yml: channels.line", environ) as sink:
        assert (sink.base_url, sink.timeout, sink.rate_per_second, sink.max_attempts) == (
            "https://api.line.me",
            3.0,
            50.0,
            5,
        )
        assert (sink.name, sink.idempotent) == ("line", True)
        described = sink.describe()
    assert "https://api.line.me" in described and "$LINE_CHANNEL_ACCESS_TOKEN" in described
    assert CHANNEL_ACCESS_TOKEN not in described and CHANNEL_ACCESS_TOKEN not in repr(sink)


@pytest.mark.parametrize(
    ("entry", "environ", "key"),
    [
        ({"token_env": "T", "retry_key": "x"}, {"T": "s3cret"}, "unknown key(s) retry_key"),
        ({}, {}, "channels.line.token_env: missing"),
        ({"token_env": "NOT_SET"}, {}, "channels.line.token_env: the variable NOT_SET is not set"),
        ({"token_env": "T", "base_url": "ftp://api.line.me"}, {"T": "s3cret"}, "channels.line.base_url"),
        ({"token_env": "T", "timeout": -1}, {"T": "s3cret"}, "channels.line.timeout"),
        ({"token_env": "T", "rate_per_second": "fast"}, {"T": "s3cret"}, "channels.line.rate_per_second"),
        ({"token_env": "T", "max_attempts": "many"}, {"T": "s3cret"}, "channels.line.max_attempts"),
    ],
)
def test_line_settings_errors_name_the_key(entry: dict, environ: dict, key: str) -> None:
    with pytest.raises(SinkConfigError) as error:
        LineSink.from_settings(entry, "actionlayer.yml: channels.line", environ)
    assert key in str(error.value)
    assert "s3cret" not in str(error.value)
