"""Sinks and dispatch against real parts: a DuckDB ledger file and an aiosmtpd server on loopback."""

from __future__ import annotations

import email
import json
from collections.abc import Iterator
from datetime import timedelta
from email import policy
from pathlib import Path

import duckdb
import pytest
from aiosmtpd.smtp import AuthResult
from dispatch_support import AS_OF, event_types, ledger_rows, seed, state_of
from loopback import SENDER, RecordingHandler, SmtpServer, free_port

from action_sinks.base import OutboundMessage, SendResult, SinkConfigError
from action_sinks.dispatcher import dispatch
from action_sinks.file import FileOutbox
from action_sinks.registry import ChannelSinks, build_sinks
from action_sinks.smtp import SmtpSink
from action_sinks.templates import TemplateError, render_message
from actionlayer import ledger

# ---------------------------------------------------------------- fixtures


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    ledger.ensure_schema(connection)
    yield connection
    connection.close()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with SmtpServer(RecordingHandler()) as server:
        yield server


# ---------------------------------------------------------------- SMTP through dispatch


def test_smtp_delivery_end_to_end(con: duckdb.DuckDBPyConnection, smtp_server: SmtpServer) -> None:
    # a CR/LF in the subject must not become a header of its own
    seed(con, "a1", subject="Following up\r\nBcc: attacker@evil.example")
    seen: list[tuple[int, int]] = []

    report = dispatch(con, AS_OF, {"email": smtp_server.sink()}, progress=lambda d, t: seen.append((d, t)))

    assert (report.due, report.delivered, report.failed) == (1, 1, 0)
    assert seen == [(1, 1)]
    [(rcpt_tos, message)] = smtp_server.handler.received
    assert rcpt_tos == ["ada@customer.example"]
    assert message["To"] == "ada@customer.example"
    assert message["From"] == SENDER
    assert message["Subject"] == "Following up Bcc: attacker@evil.example"
    assert message["Bcc"] is None
    assert message["Message-ID"] == "<a1@actionlayer>"
    assert message["X-Actionlayer-Action-Id"] == "a1"
    assert message["Reply-To"] == "owner@seller.example"
    assert message.get_content().replace("\r\n", "\n") == "Hi Ada,\n\nDid the quote work for you?\n"

    trail = ledger.trail(con, "a1")
    assert [row["event_type"] for row in trail] == ["proposed", "approved", "sending", "delivered"]
    sending, delivered = trail[2], trail[3]
    assert (sending["attempt"], sending["actor"], delivered["attempt"]) == (1, "dispatcher", 1)
    assert sending["message_subject"] == "Following up\r\nBcc: attacker@evil.example"
    assert json.loads(delivered["details"])["external_id"] == "<a1@actionlayer>"
    assert delivered["next_action"] == "await outcome"
    assert delivered["rule_id"] == "post_quote_followup" and delivered["maturity_level"] == 4
    assert any("1 delivered" in line for line in report.summary_lines())


def test_smtp_down_then_up_fault_nothing_lost(con: duckdb.DuckDBPyConnection) -> None:
    seed(con, "a2")
    port = free_port()  # nothing listens here: connection refused
    sink = SmtpSink("127.0.0.1", port, SENDER, timeout=5)

    first = dispatch(con, AS_OF, {"email": sink})

    assert (first.delivered, first.failed, first.retryable) == (0, 1, 1)
    failed = state_of(con, "a2")
    assert failed["event_type"] == "failed" and failed["retryable"] is True and failed["attempt"] == 1
    assert f"127.0.0.1:{port}" in failed["result"]
    assert failed["next_action"] == "retry on next dispatch"
    assert f"127.0.0.1:{port}" in first.failures[0].reason
    before = ledger_rows(con)

    with SmtpServer(RecordingHandler(), port=port) as server:
        second = dispatch(con, AS_OF + timedelta(hours=1), {"email": server.sink()})
        assert second.delivered == 1
        assert len(server.handler.received) == 1

    trail = ledger.trail(con, "a2")
    assert [(r["event_type"], r["attempt"]) for r in trail] == [
        ("proposed", None),
        ("approved", None),
        ("sending", 1),
        ("failed", 1),
        ("sending", 2),
        ("delivered", 2),
    ]
    # append-only: every earlier row is still there, unchanged, in the same order
    assert ledger_rows(con)[: len(before)] == before


@pytest.mark.parametrize(
    ("handler", "retryable", "code"),
    [
        (RecordingHandler(data_reply="550 5.7.1 rejected by policy"), False, "550"),
        (RecordingHandler(rcpt_reply="451 4.3.0 mailbox busy, try later"), True, "451"),
    ],
    ids=["5xx-permanent", "4xx-transient"],
)
def test_smtp_rejection_fault_classified(
    con: duckdb.DuckDBPyConnection, handler: RecordingHandler, retryable: bool, code: str
) -> None:
    seed(con, "a3")
    with SmtpServer(handler) as server:
        report = dispatch(con, AS_OF, {"email": server.sink()})
        state = state_of(con, "a3")
        assert state["event_type"] == "failed"
        assert state["retryable"] is retryable
        assert code in state["result"]
        assert report.retryable == int(retryable)
        assert state["next_action"] == ("retry on next dispatch" if retryable else "needs a person")
        again = dispatch(con, AS_OF + timedelta(hours=1), {"email": server.sink()})
    assert again.due == int(retryable)
    assert handler.received == []


class DisconnectMidData(RecordingHandler):
    """Takes the whole message, then drops the connection before answering the end of DATA."""

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        parsed = email.message_from_bytes(envelope.content, policy=policy.default)
        self.received.append((list(envelope.rcpt_tos), parsed))
        server.transport.abort()
        return "250 2.0.0 never heard"


def test_smtp_disconnect_mid_data_fault_is_unknown_and_never_resent(con: duckdb.DuckDBPyConnection) -> None:
    seed(con, "mid")
    handler = DisconnectMidData()
    with SmtpServer(handler) as server:
        report = dispatch(con, AS_OF, {"email": server.sink()})
        assert (report.unknown, report.failed, report.delivered) == (1, 0, 0)
        state = state_of(con, "mid")
        assert state["event_type"] == "unknown" and "during DATA" in state["result"]
        assert state["next_action"].startswith("needs a person")
        again = dispatch(con, AS_OF + timedelta(hours=1), {"email": server.sink()})
    assert again.due == 0 and len(handler.received) == 1


def test_smtp_disconnect_before_data_fault_is_retried() -> None:
    class DropAtRcpt(RecordingHandler):
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
            server.transport.abort()
            return "250 OK"

    with SmtpServer(DropAtRcpt()) as server:
        result = server.sink().send(
            OutboundMessage(action_id="x", channel="email", recipient="a@b.example", subject="s", body="b")
        )
    assert not result.ok and result.retryable and not result.uncertain
    assert "before DATA" in result.detail


def test_retries_stop_after_max_attempts_fault(con: duckdb.DuckDBPyConnection) -> None:
    seed(con, "a4")
    sink = SmtpSink("127.0.0.1", free_port(), SENDER, timeout=5)
    for hour in range(4):
        dispatch(con, AS_OF + timedelta(hours=hour), {"email": sink}, max_attempts=2)
    state = state_of(con, "a4")
    assert (state["event_type"], state["attempt"], state["retryable"]) == ("failed", 2, True)
    assert state["next_action"] == "needs a person: gave up after 2 attempts"
    assert event_types(con, "a4").count("sending") == 2


def test_smtp_login_failure_never_reveals_password(monkeypatch: pytest.MonkeyPatch) -> None:
    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
        return AuthResult(success=False, handled=False)

    monkeypatch.setenv("TEST_SMTP_PASSWORD", "s3cret-value")
    with SmtpServer(RecordingHandler(), authenticator=authenticator, auth_require_tls=False) as server:
        sink = server.sink(username="sales", password_env="TEST_SMTP_PASSWORD")
        message = OutboundMessage("a5", "email", "ada@customer.example", "Hi", "Body", None, {})
        result = sink.send(message)
    assert result.ok is False and result.retryable is False
    assert "535" in result.detail and "sales" in result.detail
    assert "s3cret-value" not in result.detail and "s3cret-value" not in repr(sink)


# ---------------------------------------------------------------- file outbox and selection


def test_file_outbox_writes_json_and_eml_and_redispatch_sends_nothing(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    seed(con, "f1", channel="email", body="Hello Ada — grüße\n")
    seed(con, "f2", channel="task", recipient="owner@seller.example", subject="Call Ada", body="Call her")
    sinks = build_sinks(settings_path=tmp_path / "absent.yml", environ={}, outbox_root=tmp_path / "outbox")

    report = dispatch(con, AS_OF, sinks)

    assert (report.delivered, report.failed) == (2, 0)
    assert {channel: counts["delivered"] for channel, counts in report.by_channel.items()} == {
        "email": 1,
        "task": 1,
    }
    outbox = tmp_path / "outbox"
    document = json.loads((outbox / "email" / "f1.json").read_text(encoding="utf-8"))
    assert document["recipient"] == "ada@customer.example"
    assert document["body"] == "Hello Ada — grüße\n"
    assert document["metadata"]["rule_id"] == "post_quote_followup"
    eml = email.message_from_bytes((outbox / "email" / "f1.eml").read_bytes(), policy=policy.default)
    assert eml["Message-ID"] == "<f1@actionlayer>" and eml["To"] == "ada@customer.example"
    assert eml["Date"] is not None and eml.get_content() == "Hello Ada — grüße\n"
    assert (outbox / "task" / "f2.json").exists() and not (outbox / "task" / "f2.eml").exists()
    assert not list(outbox.rglob("*.tmp"))
    delivered = state_of(con, "f1")
    assert json.loads(delivered["details"])["external_id"] == str(outbox / "email" / "f1.json")

    snapshot = {path: path.read_bytes() for path in outbox.rglob("*") if path.is_file()}
    rows = ledger_rows(con)
    again = dispatch(con, AS_OF + timedelta(hours=1), sinks)
    assert (again.due, again.delivered) == (0, 0)
    assert ledger_rows(con) == rows
    assert {path: path.read_bytes() for path in outbox.rglob("*") if path.is_file()} == snapshot


def test_file_outbox_rewrite_is_identical(tmp_path: Path) -> None:
    outbox = FileOutbox(tmp_path)
    message = OutboundMessage(
        "x1", "email", "a@b.example", "S", "B", "o@b.example", {"proposed_at": "2026-11-22"}
    )
    first = outbox.send(message)
    content = (tmp_path / "email" / "x1.eml").read_bytes(), (tmp_path / "email" / "x1.json").read_bytes()
    second = outbox.send(message)
    assert first == second and first.ok
    assert (
        (tmp_path / "email" / "x1.eml").read_bytes(),
        (tmp_path / "email" / "x1.json").read_bytes(),
    ) == content
    escaped = outbox.send(OutboundMessage("../evil", "email", "a@b.example", "S", "B"))
    assert not escaped.ok and not escaped.retryable and "../evil" in escaped.detail
    assert not (tmp_path / "evil.json").exists()


def test_only_level_three_and_up_are_dispatched(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    seed(con, "l2", level=2)
    seed(con, "l3", level=3)
    seed(con, "l3-pending", level=3, approve=False)
    report = dispatch(con, AS_OF, {"email": FileOutbox(tmp_path)})
    assert (report.due, report.delivered) == (1, 1)
    assert state_of(con, "l2")["event_type"] == "approved"
    assert state_of(con, "l3-pending")["event_type"] == "pending_review"
    assert event_types(con, "l3") == ["proposed", "pending_review", "approved", "sending", "delivered"]
    assert not (tmp_path / "email" / "l2.json").exists()


class RaisingSink:
    name = "raising"
    idempotent = False

    def send(self, message: OutboundMessage) -> SendResult:
        raise RuntimeError(f"task API exploded for {message.action_id}")


def test_raising_sink_fault_recorded_and_dispatch_continues(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    seed(con, "r1", channel="task", recipient="owner@seller.example")
    seed(con, "r2", channel="email")
    report = dispatch(con, AS_OF, {"task": RaisingSink(), "email": FileOutbox(tmp_path)})
    assert (report.delivered, report.failed) == (1, 1)
    failed = state_of(con, "r1")
    assert failed["event_type"] == "failed"
    assert failed["result"] == "sink raising raised RuntimeError: task API exploded for r1"
    # a non-idempotent sink may have sent before raising: a person decides, no automatic resend
    assert failed["retryable"] is False
    assert state_of(con, "r2")["event_type"] == "delivered"
    assert report.failures[0].action_id == "r1"


def test_missing_recipient_and_missing_sink_fail(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    seed(con, "n1", recipient=None)
    seed(con, "n2", channel="slack")
    seed(con, "n3", subject=None, body=None)
    report = dispatch(con, AS_OF, {"email": FileOutbox(tmp_path / "outbox")})
    no_recipient = state_of(con, "n1")
    assert (no_recipient["event_type"], no_recipient["retryable"]) == ("failed", False)
    assert "no recipient" in no_recipient["result"]
    no_sink = state_of(con, "n2")
    assert (no_sink["retryable"], no_sink["next_action"]) == (True, "retry on next dispatch")
    assert "'slack'" in no_sink["result"]
    no_message = state_of(con, "n3")
    assert (no_message["retryable"], no_message["next_action"]) == (False, "needs a person")
    assert "no proposed message" in no_message["result"]
    assert report.failed == 3 and not (tmp_path / "outbox").exists()
    # with the registry, any unknown channel falls back to the file outbox
    sinks = build_sinks(settings_path=tmp_path / "absent.yml", environ={}, outbox_root=tmp_path / "out")
    assert dispatch(con, AS_OF + timedelta(hours=1), sinks).delivered == 1
    assert (tmp_path / "out" / "slack" / "n2.json").exists()


def test_interrupted_send_crash_recovery(
    con: duckdb.DuckDBPyConnection, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    # the process died after committing `sending` and before recording the result
    for action_id, channel in (("c1", "email"), ("c2", "task")):
        seed(con, action_id, channel=channel)
        ledger.append(
            con, [ledger.next_event(state_of(con, action_id), "sending", AS_OF, "dispatcher", attempt=1)]
        )
    report = dispatch(
        con, AS_OF + timedelta(hours=1), {"email": smtp_server.sink(), "task": FileOutbox(tmp_path)}
    )
    assert smtp_server.handler.received == []
    unknown = state_of(con, "c1")
    assert (unknown["event_type"], unknown["attempt"]) == ("unknown", 1)
    assert unknown["next_action"].startswith("needs a person")
    assert [(r["event_type"], r["attempt"]) for r in ledger.trail(con, "c2")][-2:] == [
        ("sending", 2),
        ("delivered", 2),
    ]
    assert (report.unknown, report.delivered) == (1, 1)


def test_limit_and_open_transaction(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    for action_id in ("t1", "t2", "t3"):
        seed(con, action_id)
    assert dispatch(con, AS_OF, {"email": FileOutbox(tmp_path)}, limit=2).delivered == 2
    con.begin()
    with pytest.raises(RuntimeError, match="open transaction"):
        dispatch(con, AS_OF, {"email": FileOutbox(tmp_path)})
    con.rollback()
    assert state_of(con, "t3")["event_type"] == "approved"
    assert not (tmp_path / "email" / "t3.json").exists()


# ---------------------------------------------------------------- templates


def test_render_message_strict_and_single_line_subject() -> None:
    subject, body = render_message(
        "Following up on [[ deal_name ]]\r\nBcc: x@evil.example",
        "Hi [[ first_name ]],[% if amount %] about [[ amount ]] EUR[% endif %] {{ untouched }}",
        {"deal_name": "Atlas & Co", "first_name": "Ada", "amount": 1200},
    )
    assert subject == "Following up on Atlas & Co Bcc: x@evil.example"
    assert body == "Hi Ada, about 1200 EUR {{ untouched }}"
    with pytest.raises(TemplateError, match="first_name"):
        render_message("Hi", "Hi [[ first_name ]]", {"deal_name": "Atlas"})
    with pytest.raises(TemplateError, match="subject"):
        render_message("[[ missing_in_subject ]]", "", {})
    with pytest.raises(TemplateError, match="unsafe"):
        render_message("[[ x.__class__.__mro__ ]]", "", {"x": 1})


# ---------------------------------------------------------------- registry


def test_registry_defaults_and_configured_channels(tmp_path: Path) -> None:
    defaults = build_sinks(settings_path=tmp_path / "absent.yml", environ={}, outbox_root=tmp_path / "out")
    for channel in ("email", "task", "notify", "carrier_pigeon"):
        assert isinstance(defaults[channel], FileOutbox) and defaults[channel].root == tmp_path / "out"

    settings = tmp_path / "actionlayer.yml"
    settings.write_text(
        "channels:\n"
        "  email: {sink: smtp, host: mail.example.com, port: 587, from: sales@example.com, starttls: true}\n"
        "  task: {sink: file, root: " + str(tmp_path / "tasks") + "}\n"
    )
    configured = build_sinks(settings_path=settings, environ={}, outbox_root=tmp_path / "out")
    assert isinstance(configured, ChannelSinks)
    email_sink = configured["email"]
    assert isinstance(email_sink, SmtpSink)
    assert (email_sink.host, email_sink.port, email_sink.sender, email_sink.starttls) == (
        "mail.example.com",
        587,
        "sales@example.com",
        True,
    )
    assert configured["task"].root == tmp_path / "tasks"
    assert configured["notify"].root == tmp_path / "out"

    env = {"ACTIONLAYER_SMTP_HOST": "relay.local", "ACTIONLAYER_SMTP_PORT": "2525"}
    from_env = build_sinks(settings_path=settings, environ=env, outbox_root=tmp_path / "out")
    assert (from_env["email"].host, from_env["email"].port, from_env["email"].sender) == (
        "relay.local",
        2525,
        "sales@example.com",
    )


@pytest.mark.parametrize(
    ("yaml_text", "environ", "expected"),
    [
        ("channels:\n  email: {sink: pigeon}\n", {}, r"channels\.email\.sink: unknown sink 'pigeon'"),
        (
            "channels:\n  email: {sink: smtp, from: a@b.example}\n",
            {},
            r"channels\.email: sink smtp needs a host",
        ),
        (
            "channels:\n  email: {sink: smtp, host: h, port: twenty-five, from: a@b.example}\n",
            {},
            r"channels\.email\.port: port 'twenty-five' is not a number",
        ),
        (
            "",
            {"ACTIONLAYER_SMTP_HOST": "h", "ACTIONLAYER_SMTP_PORT": "x"},
            r"ACTIONLAYER_SMTP_PORT: port 'x'",
        ),
        ("", {"ACTIONLAYER_SMTP_HOST": "h"}, r"needs a sender address"),
        ("", {"ACTIONLAYER_SMTP_PORT": "25"}, r"ACTIONLAYER_SMTP_HOST is not"),
        (
            "channels:\n  email: {sink: smtp, host: h, from: a@b.example, username: u}\n",
            {},
            r"password variable ACTIONLAYER_SMTP_PASSWORD is not",
        ),
        ("channels: [email]\n", {}, r"'channels' must be a mapping"),
    ],
    ids=[
        "unknown-sink",
        "missing-host",
        "port-nan",
        "env-port-nan",
        "env-no-from",
        "env-no-host",
        "no-pw",
        "shape",
    ],
)
def test_registry_config_errors(
    tmp_path: Path, yaml_text: str, environ: dict[str, str], expected: str
) -> None:
    settings = tmp_path / "actionlayer.yml"
    settings.write_text(yaml_text)
    with pytest.raises(SinkConfigError, match=expected) as caught:
        build_sinks(settings_path=settings, environ=environ, outbox_root=tmp_path / "out")
    if yaml_text:
        assert str(settings) in str(caught.value) or "ACTIONLAYER_SMTP" in str(caught.value)
