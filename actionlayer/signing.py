"""Signed review manifests: proof of what a review file was issued with, checked when the file comes back.

A manifest records the approver a review file was issued to, the action ids in it, a SHA-256 of each
issued message (subject and body) and when the file and each action's review expire. It is signed with
HMAC-SHA256 under a key that only lives in an environment variable (default `ACTIONLAYER_REVIEW_SECRET`),
so a person can edit the table but cannot add actions, move them to another approver, extend the expiry
or pass off a changed message as the issued one without the import noticing.

The signature proves what was issued to whom; it does not prove who filled the file in (that is the
job of the channel the file comes back through).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from actionlayer.review_policy import DEFAULT_SECRET_ENV, ReviewConfigError

MANIFEST_FORMAT = "actionlayer-review-manifest/1"
# 32 characters = 128 bits when random hex; shorter keys are refused so a guessable key is not used by accident
MIN_SECRET_LENGTH = 32


class ReviewSecretError(ReviewConfigError):
    """The signing key is missing or too short; the message names the variable to set."""


class ManifestError(ValueError):
    """A manifest that cannot be parsed; the caller adds the file name."""


def review_secret(env_name: str = DEFAULT_SECRET_ENV, environ: Mapping[str, str] | None = None) -> bytes:
    """The signing key from the environment; raises `ReviewSecretError` naming the variable when unusable."""
    value = (environ if environ is not None else os.environ).get(env_name, "")
    if not value.strip():
        raise ReviewSecretError(
            f"review files are signed, but the environment variable {env_name} is not set; set it to a random "
            f"string of at least {MIN_SECRET_LENGTH} characters (e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`) and use the same value for export "
            "and import; nothing was exported or imported"
        )
    if len(value.strip()) < MIN_SECRET_LENGTH:
        # the length is safe to say, the value never is
        raise ReviewSecretError(
            f"the environment variable {env_name} holds {len(value.strip())} characters; at least "
            f"{MIN_SECRET_LENGTH} are required; nothing was exported or imported"
        )
    return value.strip().encode("utf-8")


def normalise_text(value: Any) -> str:
    """Text as compared after a round trip through a spreadsheet: line ends unified, outer blanks dropped."""
    if value is None:
        return ""
    return str(value).replace("\r\n", "\n").replace("\r", "\n").strip()


# json.dumps(..., ensure_ascii=False) without building an encoder per call (one digest per exported row)
_DIGEST_JSON = json.JSONEncoder(ensure_ascii=False)


def message_digest(subject: Any, body: Any) -> str:
    """SHA-256 of a message; a JSON pair keeps 'a'+'bc' and 'ab'+'c' apart."""
    pair = _DIGEST_JSON.encode([normalise_text(subject), normalise_text(body)])
    return hashlib.sha256(pair.encode("utf-8")).hexdigest()


def _stamp(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


def _parse_stamp(value: Any, key: str) -> datetime:
    if not isinstance(value, str):
        raise ManifestError(f"{key} must be an ISO timestamp, got {value!r}")
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise ManifestError(f"{key} {value!r} is not an ISO timestamp") from exc


@dataclass(frozen=True)
class IssuedAction:
    """One action as issued in a review file."""

    action_id: str
    message_sha256: str
    review_expires_at: datetime


@dataclass(frozen=True)
class Manifest:
    """What one review file was issued with; `signature` is empty until `signed`."""

    approver: str
    issued_at: datetime
    expires_at: datetime
    actions: Mapping[str, IssuedAction] = field(default_factory=dict)
    signature: str = ""

    def payload(self) -> dict[str, Any]:
        """Everything the signature covers, in a fixed shape."""
        return {
            "format": MANIFEST_FORMAT,
            "approver": self.approver,
            "issued_at": _stamp(self.issued_at),
            "expires_at": _stamp(self.expires_at),
            "actions": {
                action_id: {
                    "message_sha256": issued.message_sha256,
                    "review_expires_at": _stamp(issued.review_expires_at),
                }
                for action_id, issued in sorted(self.actions.items())
            },
        }

    def _mac(self, key: bytes) -> str:
        # canonical JSON (sorted keys, no spaces) so the same content always signs the same bytes
        canonical = json.dumps(self.payload(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hmac.new(key, canonical.encode("ascii"), hashlib.sha256).hexdigest()

    def signed(self, key: bytes) -> Manifest:
        return replace(self, signature=self._mac(key))

    def verify(self, key: bytes) -> bool:
        """True when the signature matches this content under `key` (constant-time comparison)."""
        return bool(self.signature) and hmac.compare_digest(self.signature, self._mac(key))

    def to_json(self) -> str:
        """`json.dumps(payload + signature, sort_keys=True, indent=1)`, written without the indenting
        encoder's per-value Python calls (a manifest lists every action of its file): each action is one
        line group of JSON strings, the rest goes through json.dumps."""
        document = {**self.payload(), "signature": self.signature}
        actions = document.pop("actions")
        head = json.dumps({**document, "actions": {}}, sort_keys=True, indent=1)
        if not actions:
            return head
        quote = json.encoder.encode_basestring_ascii
        entries = ",\n".join(
            f"  {quote(action_id)}: {{\n"
            f'   "message_sha256": {quote(issued["message_sha256"])},\n'
            f'   "review_expires_at": {quote(issued["review_expires_at"])}\n'
            "  }"
            for action_id, issued in actions.items()
        )
        # "actions" sorts first among the manifest's keys, so its empty placeholder opens the document
        placeholder = '{\n "actions": {},'
        if not head.startswith(placeholder):
            raise AssertionError("manifest keys changed; update Manifest.to_json")
        return '{\n "actions": {\n' + entries + "\n }," + head[len(placeholder) :]

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse a manifest; raises `ManifestError` saying what is malformed (never whether it is signed)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"is not valid JSON ({exc.msg} at position {exc.pos})") from exc
        if not isinstance(data, dict):
            raise ManifestError("is not a JSON object")
        if data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        approver, signature, actions = data.get("approver"), data.get("signature"), data.get("actions")
        if not isinstance(approver, str) or not approver:
            raise ManifestError(f"approver must be an email, got {approver!r}")
        if not isinstance(signature, str):
            raise ManifestError("has no signature")
        if not isinstance(actions, dict):
            raise ManifestError("actions must be an object of action ids")
        issued: dict[str, IssuedAction] = {}
        for action_id, entry in actions.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("message_sha256"), str):
                raise ManifestError(f"actions.{action_id} must hold message_sha256 and review_expires_at")
            issued[action_id] = IssuedAction(
                action_id=action_id,
                message_sha256=entry["message_sha256"],
                review_expires_at=_parse_stamp(
                    entry.get("review_expires_at"), f"actions.{action_id}.review_expires_at"
                ),
            )
        return cls(
            approver=approver,
            issued_at=_parse_stamp(data.get("issued_at"), "issued_at"),
            expires_at=_parse_stamp(data.get("expires_at"), "expires_at"),
            actions=issued,
            signature=signature,
        )
