"""The embedded default sink: each message becomes a file in the outbox folder.

Layout: `<root>/<channel>/<action_id>.json`, plus `<action_id>.eml` (RFC 5322) for the email channel.
Files are written atomically (temp file + rename) and named by action id, so writing the same action
again replaces the file instead of adding a second delivery.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path

from action_sinks.base import OutboundMessage, SendResult, build_email

# channel and action id become path parts: anything else could escape the outbox folder
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

DEFAULT_FILE_SENDER = "actionlayer@localhost"


def _proposed_at(message: OutboundMessage) -> datetime | None:
    value = message.metadata.get("proposed_at")
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        # the temp file is ours alone; the target keeps its previous content (or stays absent)
        Path(temp_name).unlink(missing_ok=True)
        raise


class FileOutbox:
    """Writes each message under `root`; safe to repeat, so `idempotent` is True."""

    name = "file"
    idempotent = True

    def __init__(self, root: Path, sender: str = DEFAULT_FILE_SENDER) -> None:
        self.root = Path(root)
        self.sender = sender

    def paths_for(self, message: OutboundMessage) -> tuple[Path, Path | None]:
        folder = self.root / message.channel
        eml = folder / f"{message.action_id}.eml" if message.channel == "email" else None
        return folder / f"{message.action_id}.json", eml

    def send(self, message: OutboundMessage) -> SendResult:
        for label, value in (("channel", message.channel), ("action id", message.action_id)):
            if not _SAFE_NAME.match(value or ""):
                return SendResult(
                    ok=False,
                    retryable=False,
                    detail=f"file outbox: {label} {value!r} is not a safe file name; nothing written",
                )
        json_path, eml_path = self.paths_for(message)
        document = {
            "action_id": message.action_id,
            "channel": message.channel,
            "recipient": message.recipient,
            "subject": message.subject,
            "body": message.body,
            "owner_email": message.owner_email,
            "metadata": message.metadata,
        }
        payload = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            if eml_path is not None:
                email = build_email(message, self.sender, date=_proposed_at(message))
                _write_atomic(eml_path, email.as_bytes())
            # the JSON goes last: once it exists, the whole delivery (with its .eml) is on disk
            _write_atomic(json_path, payload.encode("utf-8"))
        except OSError as exc:
            return SendResult(
                ok=False,
                retryable=True,
                detail=f"file outbox: could not write {json_path}: {exc}",
            )
        written = ", ".join(str(p) for p in (json_path, eml_path) if p is not None)
        return SendResult(ok=True, detail=f"written to {written}", external_id=str(json_path))
