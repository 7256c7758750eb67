"""The Slack sink through the real dispatcher and a DuckDB ledger, against the Slack stand-in on 127.0.0.1:
delivery, error mapping, and faults where a retried post could duplicate a message."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from dispatch_support import AS_OF, event_details, event_types, seed, state_of, token_sinks
from loopback import free_port

from action_sinks.base import OutboundMessage, SinkConfigError
from action_sinks.dispatcher import dispatch
from action_sinks.slack import SlackSink
from actionlayer import ledger
from tests.vendors.slack_server import BOT_TOKEN, SlackServer

TOKEN_ENV = "TEST_SLACK_BOT_TOKEN"
ADA = "ada@customer.example"

# ---------------------------------------------------------------- fixtures


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    ledger.ensure_schema(connection)
    yield connection
    connection.close()


@pytest.fixture
def server() -> Iterator[SlackServer]:
    with SlackServer() as running:
        running.add_channel("C0SALES", "sales")
        running.add_channel("C0OUTSIDE", "outside", member=False)
        running.add_channel("C0OLD", "old-deals", archived=True)
        running.add_user(ADA, "U0ADA")
        yield running


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_sink(sleeps: list[float]) -> Iterator[Callable[..., SlackSink]]:
    with token_sinks(SlackSink, TOKEN_ENV, BOT_TOKEN, sleeps.append) as build:
        yield build


details = event_details


# ---------------------------------------------------------------- delivery


def test_slack_delivery_end_to_end(con, server: SlackServer, make_sink) -> None:
    seed(con, "s1", channel="slack", recipient="C0SALES", subject="Atlas <quote> & terms")
    seed(con, "s2", channel="slack", recipient="#sales")
    seed(con, "s3", channel="slack", recipient=ADA)

    report = dispatch(con, AS_OF, {"slack": make_sink(server.base_url)})

    assert (report.due, report.delivered, report.failed, report.unknown) == (3, 3, 0, 0)
    by_action = {post.action_id: post for post in server.posts}
    assert by_action["s1"].channel == "C0SALES" and by_action["s2"].channel == "C0SALES"
    # an email address becomes the bot's direct message with that user
    assert by_action["s3"].channel == "D0ADA"
    assert [r.outcome for r in server.calls("users.lookupByEmail")] == ["ok"]
    # subject bold on the first line; &, <, > escaped as Slack requires
    assert by_action["s1"].text == (
        "*Atlas &lt;quote&gt; &amp; terms*\nHi Ada,\n\nDid the quote work for you?"
    )
    assert by_action["s1"].payload["metadata"]["event_payload"] == {"action_id": "s1"}
    assert all(r.authorization == f"Bearer {BOT_TOKEN}" for r in server.requests)
    assert all(r.content_type == "application/json; charset=utf-8" for r in server.calls("chat.postMessage"))

    delivered = state_of(con, "s1")
    assert event_types(con, "s1") == ["proposed", "approved", "sending", "delivered"]
    assert details(delivered) == {"sink": "slack", "external_id": f"C0SALES:{by_action['s1'].ts}"}
    assert "posted to C0SALES" in delivered["result"]
    assert details(state_of(con, "s3"))["external_id"].startswith("D0ADA:")

    again = dispatch(con, AS_OF + timedelta(hours=1), {"slack": make_sink(server.base_url)})
    assert (again.due, len(server.posts)) == (0, 3)


def test_slack_lookup_is_cached_per_sink(server: SlackServer, make_sink) -> None:
    sink = make_sink(server.base_url)
    for n in range(3):
        assert sink.send(OutboundMessage(f"c{n}", "slack", ADA, "Hi", "Body")).ok
    assert len(server.calls("users.lookupByEmail")) == 1 and len(server.posts) == 3


# ---------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("recipient", "subject", "body", "setup", "state", "retryable", "expected"),
    [
        ("C0NOPE", "Hi", "Body", None, "failed", False, "channel_not_found"),
        ("C0OUTSIDE", "Hi", "Body", None, "failed", False, "not_in_channel (the bot is not a member"),
        ("#old-deals", "Hi", "Body", None, "failed", False, "is_archived"),
        ("C0SALES", "", "  \n", None, "failed", False, "no_text"),
        ("C0SALES", "Hi", "x" * 40_001, None, "failed", False, "msg_too_long"),
        ("nobody@customer.example", "Hi", "Body", None, "failed", False, "users_not_found"),
        ("C0SALES", "Hi", "Body", "wrong-token", "failed", False, "invalid_auth"),
        ("C0SALES", "Hi", "Body", "revoked", "failed", False, "token_revoked"),
        (
            ADA,
            "Hi",
            "Body",
            "wrong-token",
            "failed",
            False,
            "users.lookupByEmail for ada@customer.example failed",
        ),
        (
            "C0SALES",
            "Hi",
            "Body",
            "ratelimited",
            "failed",
            True,
            "ratelimited (transient; nothing was posted)",
        ),
        ("C0SALES", "Hi", "Body", "service_unavailable", "failed", True, "service_unavailable"),
        ("C0SALES", "Hi", "Body", "internal_error", "unknown", None, "internal_error"),
    ],
    ids=[
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "no_text",
        "msg_too_long",
        "users_not_found",
        "invalid_auth",
        "token_revoked",
        "lookup-invalid_auth",
        "ratelimited-code",
        "service_unavailable",
        "internal_error-uncertain",
    ],
)
def test_slack_error_mapping(
    con, server: SlackServer, make_sink, recipient, subject, body, setup, state, retryable, expected
) -> None:
    token = "xoxb-not-the-right-one" if setup == "wrong-token" else BOT_TOKEN
    if setup == "revoked":
        server.revoke(BOT_TOKEN)
    elif setup in ("ratelimited", "service_unavailable"):
        server.error_next(1, setup)
    elif setup == "internal_error":
        server.error_next(1, setup, after_post=True)
    seed(con, "e1", channel="slack", recipient=recipient, subject=subject, body=body)

    report = dispatch(con, AS_OF, {"slack": make_sink(server.base_url, token=token)})

    final = state_of(con, "e1")
    assert final["event_type"] == state
    assert expected in final["result"]
    if state == "failed":
        assert final["retryable"] is retryable
        assert final["next_action"] == ("retry on next dispatch" if retryable else "needs a person")
        # Slack answered ok:false: nothing was posted
        assert server.posts_by_action()["e1"] == 0
    else:
        assert report.unknown == 1
        assert final["next_action"] == "needs a person: check whether the recipient received it"


def test_slack_missing_token_variable_sends_nothing(con, server: SlackServer) -> None:
    seed(con, "m1", channel="slack", recipient="C0SALES")
    with SlackSink(TOKEN_ENV, server.base_url, environ={}) as sink:
        dispatch(con, AS_OF, {"slack": sink})
    final = state_of(con, "m1")
    assert final["event_type"] == "failed" and final["retryable"] is True
    assert f"variable {TOKEN_ENV} is not set" in final["result"]
    assert server.requests == []


# ---------------------------------------------------------------- faults


def test_slack_429_retry_after_honoured_fault(con, server: SlackServer, make_sink, sleeps) -> None:
    server.rate_limit_next(2, retry_after=0.25)
    seed(con, "r1", channel="slack", recipient="C0SALES")

    report = dispatch(con, AS_OF, {"slack": make_sink(server.base_url)})

    assert report.delivered == 1
    assert sleeps.count(0.25) == 2  # waited exactly what Slack asked, twice
    assert [r.outcome for r in server.calls("chat.postMessage")] == ["http 429", "http 429", "ok"]
    assert server.posts_by_action()["r1"] == 1
    assert "after 3 attempts" in state_of(con, "r1")["result"]


def test_slack_429_to_every_attempt_is_retryable_fault(con, server: SlackServer, make_sink) -> None:
    server.rate_limit_next(3, retry_after=0.1)
    seed(con, "r2", channel="slack", recipient="C0SALES")
    sink = make_sink(server.base_url)

    dispatch(con, AS_OF, {"slack": sink})
    first = state_of(con, "r2")
    assert (first["event_type"], first["retryable"]) == ("failed", True)
    assert "Slack posted nothing" in first["result"]

    dispatch(con, AS_OF + timedelta(hours=1), {"slack": sink})
    assert state_of(con, "r2")["event_type"] == "delivered"
    assert server.posts_by_action()["r2"] == 1


@pytest.mark.parametrize(
    ("inject", "posted"),
    [
        (lambda s: s.fail_next(1, 503), 0),
        (lambda s: s.fail_next(1, 500, after_post=True), 1),
        (lambda s: s.reset_next(1), 0),
        (lambda s: s.reset_next(1, after_post=True), 1),
        (lambda s: s.delay_next(1, 0.8), 1),
        (lambda s: s.error_next(1, "fatal_error", after_post=True), 1),
    ],
    ids=["5xx-before-post", "5xx-after-post", "reset", "accept-then-reset", "timeout", "fatal_error"],
)
def test_slack_uncertain_send_becomes_unknown_fault(
    con, server: SlackServer, make_sink, inject, posted: int
) -> None:
    inject(server)
    seed(con, "u1", channel="slack", recipient="C0SALES")
    sink = make_sink(server.base_url, timeout=0.3)

    report = dispatch(con, AS_OF, {"slack": sink})

    # the sink cannot tell these apart from the client side: each may have posted, so none is retried
    assert (report.unknown, report.delivered, report.failed) == (1, 0, 0)
    assert len(server.calls("chat.postMessage")) == 1
    final = state_of(con, "u1")
    assert final["event_type"] == "unknown"
    assert "may" in final["result"] and "not sent again automatically" in final["result"]
    again = dispatch(con, AS_OF + timedelta(hours=1), {"slack": sink})
    assert again.due == 0
    assert server.posts_by_action()["u1"] == posted


def test_slack_connection_refused_then_up_fault(con, make_sink, sleeps) -> None:
    port = free_port()  # nothing listens: connection refused, so Slack provably posted nothing
    seed(con, "c1", channel="slack", recipient="C0SALES")
    sink = make_sink(f"http://127.0.0.1:{port}")

    dispatch(con, AS_OF, {"slack": sink})

    first = state_of(con, "c1")
    assert (first["event_type"], first["retryable"]) == ("failed", True)
    assert "ConnectError" in first["result"] and "in 3 attempt(s); nothing was posted" in first["result"]
    with SlackServer(port=port) as server:
        server.add_channel("C0SALES", "sales")
        dispatch(con, AS_OF + timedelta(hours=1), {"slack": sink})
        assert state_of(con, "c1")["event_type"] == "delivered"
        assert server.posts_by_action()["c1"] == 1


def test_slack_mixed_faults_never_duplicate_fault(con, server: SlackServer, make_sink, sleeps) -> None:
    recipients = ["C0SALES", "#sales", ADA]
    ids = [f"x{n:02d}" for n in range(30)]
    for n, action_id in enumerate(ids):
        seed(con, action_id, channel="slack", recipient=recipients[n % 3], body=f"Message {n}")
    server.rate_limit_next(3, retry_after=0.05)  # retried in the sink (3 attempts would be exhausted)
    server.rate_limit_next(1, retry_after=0.05, method="users.lookupByEmail")
    server.delay_next(2, 0.6)
    server.reset_next(2)
    server.reset_next(1, after_post=True)
    server.error_next(1, "ratelimited")
    server.error_next(1, "fatal_error", after_post=True)
    server.fail_share(0.1, seed=11, after_post_share=0.5)
    sink = make_sink(server.base_url, timeout=0.3, max_attempts=4)

    passes = 0
    for hour in range(6):
        passes += 1
        if dispatch(con, AS_OF + timedelta(hours=hour), {"slack": sink}, max_attempts=5).due == 0:
            break

    assert passes < 6, "dispatch kept finding due actions"
    states = {action_id: state_of(con, action_id) for action_id in ids}
    outcomes = {s["event_type"] for s in states.values()}
    assert outcomes <= {"delivered", "failed", "unknown"}  # nothing stuck in sending or approved
    posts = server.posts_by_action()
    assert max(posts.values()) == 1, "an automatic retry duplicated a Slack post"
    for action_id, state in states.items():
        if state["event_type"] == "delivered":
            assert posts[action_id] == 1
        elif state["event_type"] == "failed":
            assert state["result"] and posts[action_id] == 0
        else:
            assert posts[action_id] <= 1 and state["result"]
    # exactly the posts that misbehaved after the request was sent became unknown: two timeouts, two
    # resets, an accept-then-reset, fatal_error and the seeded 5xx share (before or after posting)
    uncertain_calls = [
        r
        for r in server.calls("chat.postMessage")
        if r.outcome.startswith(("http 5", "late", "reset", "fatal_error"))
    ]
    unknown = [a for a, s in states.items() if s["event_type"] == "unknown"]
    assert len(unknown) == len(uncertain_calls) >= 9
    assert sum(s["event_type"] == "delivered" for s in states.values()) == 30 - len(unknown)
    assert 0.05 in sleeps


# ---------------------------------------------------------------- secrets and settings


def test_slack_token_never_leaks(con, server: SlackServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "xoxb-wrong-0000-SecretValueThatMustNotLeak"
    server.rate_limit_next(1, retry_after=0.01)
    seed(con, "t1", channel="slack", recipient="C0SALES")
    seed(con, "t2", channel="slack", recipient="C0NOPE")
    seed(con, "t3", channel="slack", recipient=ADA)
    results = []
    with SlackSink(TOKEN_ENV, server.base_url, environ={TOKEN_ENV: BOT_TOKEN}, sleep=lambda s: None) as sink:
        report = dispatch(con, AS_OF, {"slack": sink})
        server.reset_next(1)
        results.append(sink.send(OutboundMessage("t4", "slack", "C0SALES", "Hi", "Body")))
        texts = [repr(sink), sink.describe()]
    with SlackSink(TOKEN_ENV, server.base_url, environ={TOKEN_ENV: wrong}, sleep=lambda s: None) as bad:
        results.append(bad.send(OutboundMessage("t5", "slack", "C0SALES", "Hi", "Body")))
        results.append(bad.send(OutboundMessage("t6", "slack", ADA, "Hi", "Body")))
        texts += [repr(bad), bad.describe()]

    assert report.delivered == 2 and report.failed == 1
    assert "invalid_auth" in results[1].detail  # the wrong token reached Slack and was refused
    texts += [r.detail for r in results] + [str(r) for r in results] + report.summary_lines()
    texts += [str(row) for row in con.execute("select * from ops.action_ledger").fetchall()]
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
    assert caplog.records, "expected the retry to be logged"
    for secret in (BOT_TOKEN, wrong):
        assert not [text for text in texts if secret in text]


def test_slack_from_settings_and_describe() -> None:
    environ = {"SLACK_BOT_TOKEN": BOT_TOKEN}
    entry = {"sink": "slack", "token_env": "SLACK_BOT_TOKEN", "timeout": "5", "max_attempts": 2}
    with SlackSink.from_settings(entry, "actionlayer.yml: channels.slack", environ) as sink:
        assert (sink.base_url, sink.timeout, sink.max_attempts, sink.rate_per_second) == (
            "https://slack.com",
            5.0,
            2,
            1.0,
        )
        assert (sink.name, sink.idempotent) == ("slack", False)
        described = sink.describe()
    assert "https://slack.com" in described and "$SLACK_BOT_TOKEN" in described
    assert BOT_TOKEN not in described and BOT_TOKEN not in repr(sink)


@pytest.mark.parametrize(
    ("entry", "environ", "key"),
    [
        ({"token_env": "T", "channel": "#x"}, {"T": "s3cret"}, "unknown key(s) channel"),
        ({}, {}, "channels.slack.token_env: missing"),
        ({"token_env": "NOT_SET"}, {}, "channels.slack.token_env: the variable NOT_SET is not set"),
        ({"token_env": "T", "base_url": "slack.com"}, {"T": "s3cret"}, "channels.slack.base_url"),
        ({"token_env": "T", "timeout": "soon"}, {"T": "s3cret"}, "channels.slack.timeout"),
        ({"token_env": "T", "rate_per_second": 0}, {"T": "s3cret"}, "channels.slack.rate_per_second"),
        ({"token_env": "T", "max_attempts": 0}, {"T": "s3cret"}, "channels.slack.max_attempts"),
        ({"token_env": "T", "sink": "line"}, {"T": "s3cret"}, "channels.slack.sink"),
    ],
)
def test_slack_settings_errors_name_the_key(entry: dict, environ: dict, key: str) -> None:
    with pytest.raises(SinkConfigError) as error:
        SlackSink.from_settings(entry, "actionlayer.yml: channels.slack", environ)
    assert key in str(error.value)
    assert "s3cret" not in str(error.value)
