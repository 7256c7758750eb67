"""Real loopback servers for tests: an aiosmtpd SMTP server that records what it accepted."""

from __future__ import annotations

import email
import socket
from email import policy
from typing import Any

from aiosmtpd.controller import Controller

from action_sinks.smtp import SmtpSink

SENDER = "sales@example.com"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RecordingHandler:
    """Keeps every message the server accepted; `reply` makes DATA or RCPT answer with that reply."""

    def __init__(self, data_reply: str | None = None, rcpt_reply: str | None = None) -> None:
        self.data_reply = data_reply
        self.rcpt_reply = rcpt_reply
        self.received: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if self.data_reply:
            return self.data_reply
        parsed = email.message_from_bytes(envelope.content, policy=policy.default)
        self.received.append((list(envelope.rcpt_tos), parsed))
        return "250 2.0.0 queued"

    @property
    def messages(self) -> list[email.message.EmailMessage]:
        return [message for _, message in self.received]


class SmtpServer:
    def __init__(self, handler: RecordingHandler, port: int | None = None, **options: Any) -> None:
        self.handler = handler
        self.port = port or free_port()
        self.controller = Controller(handler, hostname="127.0.0.1", port=self.port, **options)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.controller.stop()

    def sink(self, **options: Any) -> SmtpSink:
        return SmtpSink("127.0.0.1", self.port, SENDER, timeout=5, **options)
