"""Sends approved email actions through an SMTP server with the standard library's smtplib.

Classifies every failure as retryable (server unreachable, timeout, 4xx) or permanent (5xx), so the
dispatcher knows whether to try again. The password is read from a named environment variable at send
time and never appears in a result, a log line or an exception text produced here.
"""

from __future__ import annotations

import os
import smtplib
from email.utils import formatdate

from action_sinks.base import (
    OutboundMessage,
    SendResult,
    SinkConfigError,
    build_email,
    message_id_for,
    single_line,
)


def _is_transient(code: int | None) -> bool:
    # RFC 5321: 4yz is a transient negative reply; anything else negative is permanent
    return code is not None and 400 <= code < 500


def _reply_text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return single_line(text)


class SmtpSink:
    """One SMTP server; a new short connection per message, so a dead connection is never reused."""

    name = "smtp"
    # a server may accept a message and the connection drop before we hear so: re-sending could duplicate
    idempotent = False

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        timeout: float = 10,
        starttls: bool = False,
        username: str | None = None,
        password_env: str | None = None,
    ) -> None:
        self.host = host
        self.port = int(port)
        self.sender = sender
        self.timeout = timeout
        self.starttls = starttls
        self.username = username
        self.password_env = password_env
        if username and not password_env:
            raise SinkConfigError(
                f"SMTP sink for {host}:{port}: username {username!r} is set but password_env is not; "
                "name the environment variable that holds the password"
            )

    @property
    def where(self) -> str:
        return f"SMTP server {self.host}:{self.port}"

    def __repr__(self) -> str:
        # deliberately without the password (it is never stored on the object anyway)
        return f"SmtpSink(host={self.host!r}, port={self.port}, sender={self.sender!r})"

    def _password(self) -> str | None:
        if not self.username or not self.password_env:
            return None
        return os.environ.get(self.password_env)

    def _refused(self, recipients: dict[str, tuple[int, bytes]]) -> SendResult:
        replies = "; ".join(f"{who}: {code} {_reply_text(text)}" for who, (code, text) in recipients.items())
        retryable = all(_is_transient(code) for code, _ in recipients.values())
        return SendResult(ok=False, retryable=retryable, detail=f"{self.where} refused recipient: {replies}")

    def send(self, message: OutboundMessage) -> SendResult:
        recipient = single_line(message.recipient)
        if not recipient:
            return SendResult(ok=False, retryable=False, detail=f"{self.where}: message has no recipient")
        password = self._password()
        if self.username and password is None:
            return SendResult(
                ok=False,
                retryable=True,
                detail=f"{self.where}: password variable {self.password_env} is not set; nothing sent",
            )
        email = build_email(message, self.sender)
        # Date is a transport header (when it left us), not a business time, so the wall clock is right here
        email["Date"] = formatdate(usegmt=True)
        external_id = message_id_for(message.action_id)
        # until DATA is under way the server has certainly not taken the message, so a failure is safe to
        # retry; from DATA on, a dropped connection may have delivered it (uncertain: a person checks)
        in_data = False
        refused: dict[str, tuple[int, bytes]] = {}
        flat = email.as_bytes(policy=email.policy.clone(linesep="\r\n"))
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as client:
                client.ehlo_or_helo_if_needed()
                if self.starttls:
                    client.starttls()
                    client.ehlo()
                if self.username:
                    client.login(self.username, password or "")
                code, reply = client.mail(self.sender)
                if code != 250:
                    raise smtplib.SMTPSenderRefused(code, reply, self.sender)
                code, reply = client.rcpt(recipient)
                if code not in (250, 251):
                    refused = {recipient: (code, reply)}
                else:
                    in_data = True
                    code, reply = client.data(flat)
                    in_data = False  # the server answered: whatever it said is certain
                    if code != 250:
                        raise smtplib.SMTPDataError(code, reply)
        except smtplib.SMTPRecipientsRefused as exc:
            return self._refused(exc.recipients)
        except smtplib.SMTPAuthenticationError as exc:
            # the server's reply only; the credentials themselves are never part of the text
            return SendResult(
                ok=False,
                retryable=_is_transient(exc.smtp_code),
                detail=f"{self.where} rejected login for {self.username}: {exc.smtp_code} "
                f"{_reply_text(exc.smtp_error)}",
            )
        except smtplib.SMTPResponseException as exc:
            return SendResult(
                ok=False,
                retryable=_is_transient(exc.smtp_code),
                detail=f"{self.where} replied {exc.smtp_code} {_reply_text(exc.smtp_error)}",
            )
        except smtplib.SMTPNotSupportedError as exc:
            return SendResult(ok=False, retryable=False, detail=f"{self.where} does not support it: {exc}")
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else "dropped the connection"
            if in_data:
                return SendResult(
                    ok=False,
                    retryable=False,
                    uncertain=True,
                    detail=f"{self.where} {what} during DATA ({type(exc).__name__}: {exc}); "
                    "the message may have been accepted",
                )
            # connection refused, host unreachable, DNS, TLS, a drop before DATA: nothing was accepted
            return SendResult(
                ok=False,
                retryable=True,
                detail=f"{self.where} {what} before DATA ({type(exc).__name__}: {exc})",
            )
        if refused:
            return self._refused(refused)
        return SendResult(
            ok=True,
            detail=f"accepted by {self.where} for {recipient}",
            external_id=external_id,
        )
