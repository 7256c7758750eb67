"""The one small interface every outbound channel implements: a message in, a send result out.

Also the single RFC 5322 rendering of an outbound email, so the file outbox and SMTP write the same headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Protocol, runtime_checkable

_LINE_BREAKS = re.compile(r"[\r\n]+")


class SinkError(RuntimeError):
    """A sink cannot be built or used as configured (raised before anything is sent)."""


class SinkConfigError(SinkError):
    """Channel/sink settings are wrong; the message names the file, key and value."""


@dataclass(frozen=True)
class OutboundMessage:
    """What the dispatcher hands a sink: the approved message of one action."""

    action_id: str
    channel: str
    recipient: str
    subject: str
    body: str
    owner_email: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    """The outcome of one send attempt.

    `retryable` says whether the same message may be tried again later (a transient failure);
    `external_id` is what the channel calls the delivery (Message-ID, file path, task id).
    `uncertain` says the request may have reached the channel and been acted on before the failure
    (a read timeout, a connection reset after sending): the dispatcher then records `unknown` for a
    person to check instead of `failed`, and never re-sends it on its own.
    """

    ok: bool
    detail: str
    retryable: bool = False
    external_id: str | None = None
    uncertain: bool = False


@runtime_checkable
class Sink(Protocol):
    """A channel the dispatcher can send through.

    `idempotent` is True when sending the same action twice cannot produce two deliveries
    (the dispatcher then re-sends after an interruption instead of asking a person).
    """

    name: str
    idempotent: bool

    def send(self, message: OutboundMessage) -> SendResult: ...


def single_line(value: str | None) -> str:
    """A header-safe value: CR/LF runs become one space, so a value can never inject a header."""
    return _LINE_BREAKS.sub(" ", value or "").strip()


def message_id_for(action_id: str) -> str:
    """A stable Message-ID per action, so a re-sent copy is recognisable as the same message."""
    local = re.sub(r"[^A-Za-z0-9._-]", "", action_id) or "action"
    return f"<{local}@actionlayer>"


def build_email(message: OutboundMessage, sender: str, *, date: datetime | None = None) -> EmailMessage:
    """The RFC 5322 message for an outbound email (shared by the file outbox and the SMTP sink)."""
    email = EmailMessage()
    email["From"] = single_line(sender)
    email["To"] = single_line(message.recipient)
    email["Subject"] = single_line(message.subject)
    email["Message-ID"] = message_id_for(message.action_id)
    email["X-Actionlayer-Action-Id"] = single_line(message.action_id)
    if message.owner_email:
        # replies reach the owner who is accountable for the action, not a no-reply sender
        email["Reply-To"] = single_line(message.owner_email)
    if date is not None:
        email["Date"] = format_datetime(date)
    if message.metadata.get("format") == "html":
        email.set_content(message.body or "", subtype="html")
    else:
        email.set_content(message.body or "")
    return email
