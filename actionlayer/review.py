"""Review tables: export pending actions to their approvers, and record their decisions in the ledger.

Export writes, per approver, one XLSX and one CSV listing the actions in ledger state `pending_review`
that the person may decide (per the approval policy in `actionlayer.yml`, see `review_policy.py`), plus
a signed manifest (`signing.py`): in a very hidden, protected sheet of the XLSX and in a sidecar
`<name>.manifest.json` next to the CSV. The XLSX also has a decision dropdown, worksheet protection
that leaves only `subject`, `message`, `decision` and `comment` editable, a summary sheet and a read-only
`needs_checking` sheet with the approver's actions whose send ended `unknown`.

Import reads such files back (CSV or XLSX, possibly edited) and appends `approved`/`rejected` events,
or for four-eyes rules a `pending_review` event recording the first approval. A file whose manifest is
missing, forged or expired is refused whole; inside a verified file each row is checked on its own
(issued to this approver, protected fields unchanged, no formula in a fill-in cell, approver allowed by
the policy, review not expired, no earlier conflicting decision) and valid rows are applied.
Nothing here changes or deletes a ledger row.

Formula injection: every exported text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage
return gets a leading apostrophe, in the XLSX and in the CSV alike, so a spreadsheet shows it as text
and never evaluates it; the XLSX is additionally written with `write_string`, so no cell is a formula.
On import, a fill-in cell that starts with one of these characters is refused (the exported, apostrophe-
prefixed form is accepted and read back without the apostrophe).
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
import multiprocessing as mp
import operator
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any

import duckdb
import fastexcel
import xlsxwriter
from xlsxwriter.format import Format
from xlsxwriter.packager import Packager
from xlsxwriter.sharedstrings import SharedStrings
from xlsxwriter.utility import (
    _utf16_len,
    _utf16_truncate,
    xl_col_to_name,
)
from xlsxwriter.worksheet import Worksheet

from actionlayer import config, ledger, review_reuse
from actionlayer.review_policy import ApprovalPolicy, ReviewConfigError, load_policy, norm_email
from actionlayer.signing import (
    IssuedAction,
    Manifest,
    ManifestError,
    ReviewSecretError,
    message_digest,
    normalise_text,
    review_secret,
)

__all__ = [
    "DECISIONS",
    "EDITABLE_COLUMNS",
    "FILL_IN_COLUMNS",
    "INSTRUCTIONS_SHEET",
    "MANIFEST_SHEET",
    "NEEDS_CHECKING_COLUMNS",
    "NEEDS_CHECKING_SHEET",
    "PROTECTED_COLUMNS",
    "REVIEW_COLUMNS",
    "REVIEW_SHEET",
    "SUMMARY_SHEET",
    "AppliedDecision",
    "DuplicateDecision",
    "ExportReport",
    "ImportReport",
    "RejectedFile",
    "RejectedRow",
    "ReviewConfigError",
    "ReviewFileError",
    "ReviewSecretError",
    "approver_slug",
    "export_reviews",
    "import_reviews",
    "manifest_path_for",
    "neutralise",
    "read_manifest",
    "read_review_rows",
    "write_review_csv",
]

REVIEW_COLUMNS: tuple[str, ...] = (
    "action_id",
    "rule_id",
    "record_type",
    "record_id",
    "contact_id",
    "owner_email",
    "recommended_action",
    "recipient",
    "subject",
    "message",
    "reason",
    "proposed_at",
    "expires_at",
    "approvals",
    "decision",
    "approver_email",
    "comment",
)
# Cells the approver is expected to fill in (highlighted) and every cell left unlocked in the XLSX.
FILL_IN_COLUMNS: tuple[str, ...] = ("decision", "comment")
EDITABLE_COLUMNS: tuple[str, ...] = ("subject", "message", "decision", "comment")
# Context that decides what happens to whom: changed on the way back → the row is refused. `reason`,
# `proposed_at`, `expires_at` and `approvals` are shown only and ignored (a spreadsheet may reformat them).
PROTECTED_COLUMNS: tuple[str, ...] = (
    "rule_id",
    "record_type",
    "record_id",
    "contact_id",
    "owner_email",
    "recommended_action",
    "recipient",
)
# approver_email is not required: the signed manifest says whom the file was issued to
REQUIRED_IMPORT_COLUMNS: tuple[str, ...] = ("action_id", "decision")
DECISIONS: tuple[str, ...] = ("approve", "reject")
SUPPORTED_SUFFIXES: tuple[str, ...] = (".csv", ".xlsx")
MANIFEST_SUFFIX = ".manifest.json"

REVIEW_SHEET = "review"
SUMMARY_SHEET = "summary"
NEEDS_CHECKING_SHEET = "needs_checking"
INSTRUCTIONS_SHEET = "instructions"
MANIFEST_SHEET = "manifest"

NEEDS_CHECKING_COLUMNS: tuple[str, ...] = (
    "action_id",
    "rule_id",
    "record_type",
    "record_id",
    "channel",
    "recipient",
    "subject",
    "attempt",
    "marked_unknown_at",
    "result",
    "next_action",
)

# proposals.py expires a review after this many days when the rule is unknown; used when an old
# pending_review event does not carry its own `review_expires_at`
DEFAULT_REVIEW_EXPIRY_DAYS = 7

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# a review row's values in column order, in one call
_REVIEW_VALUES = operator.itemgetter(*REVIEW_COLUMNS)
# Excel's hard limit for one cell; longer text would be cut by the writer without saying so.
_XLSX_CELL_LIMIT = 32_767
# a shared string xlsxwriter writes with more than plain escaping: one with control characters or
# non-characters, or text that looks like their _xHHHH_ escape (both escaped), or with leading or trailing
# whitespace (xml:space="preserve"; re's \s for str patterns is str.isspace)
_SST_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\ufffe\uffff]")
_SST_ESCAPE_LOOKALIKE = re.compile(r"_x[0-9a-fA-F]{4}_")


def _sst_special(string: str) -> bool:
    return bool(
        string[:1].isspace()
        or string[-1:].isspace()
        or _SST_CONTROL.search(string)
        or ("_x" in string and _SST_ESCAPE_LOOKALIKE.search(string))
        or (string.startswith("<r>") and string.endswith("</r>"))
    )


# below this many rows (review + needs_checking) an export is written in-process: starting worker
# processes would cost more than they save
PARALLEL_MIN_ROWS = 5_000
# the manifest JSON is split over cells below that limit
_MANIFEST_CHUNK = 30_000
_COLUMN_WIDTHS = {
    "action_id": 34,
    "rule_id": 22,
    "record_type": 12,
    "record_id": 14,
    "contact_id": 14,
    "owner_email": 26,
    "recommended_action": 36,
    "recipient": 26,
    "subject": 36,
    "message": 60,
    "reason": 40,
    "proposed_at": 19,
    "expires_at": 19,
    "approvals": 30,
    "decision": 12,
    "approver_email": 28,
    "comment": 40,
    "channel": 10,
    "attempt": 8,
    "marked_unknown_at": 19,
    "result": 60,
    "next_action": 40,
}


class ReviewFileError(ValueError):
    """A review file that cannot be used at all; the message names the file and what is wrong."""


# ---------------------------------------------------------------------------------------------------------
# helpers shared by export and import


def neutralise(value: str) -> str:
    """Text a spreadsheet will show as-is: a leading formula character gets an apostrophe in front."""
    return "'" + value if value.startswith(_FORMULA_PREFIXES) else value


def _unneutralise(value: str) -> str:
    # undo exactly what `neutralise` added, nothing else ("'Tis" keeps its apostrophe)
    return value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA_PREFIXES) else value


def approver_slug(email: str) -> str:
    """A file-name-safe form of an email address (`Bob.Smith@Example.com` → `bob-smith-example-com`)."""
    slug = re.sub(r"[^a-z0-9]+", "-", email.strip().lower()).strip("-")
    return slug or "unknown"


def _deciders(policy: ApprovalPolicy, state: Mapping[str, Any]) -> set[str]:
    """Who may decide this pending action: the person it escalated to, when it escalated (a named
    human decides it), else the approval policy's approvers for its rule and owner."""
    raw = state.get("details") or "{}"
    if isinstance(raw, str) and "escalated_to" not in raw and "\\u" not in raw:
        # the key cannot be in there (not even \u-escaped): skip parsing, once per exported action
        details = {}
    else:
        try:
            details = json.loads(raw)
        except (TypeError, ValueError):
            details = {}
    escalated_to = norm_email(details.get("escalated_to")) if isinstance(details, dict) else ""
    if escalated_to:
        return {escalated_to}
    return policy.approvers_for(state.get("rule_id"), state.get("owner_email"))


def manifest_path_for(path: Path) -> Path:
    """Where a review CSV's signed manifest lives: `review_x.csv` → `review_x.manifest.json` beside it."""
    path = Path(path)
    return path.with_name(path.stem + MANIFEST_SUFFIX)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if value.__class__ is str:  # the usual case, first
        return value
    if isinstance(value, datetime):
        # an aware one is formatted each time: equal instants in two zones are equal keys, not equal texts
        return _naive_stamp(value) if value.tzinfo is None else value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


@lru_cache(maxsize=4096)
def _naive_stamp(value: datetime) -> str:
    # an export shows the same few timestamps (proposed at, review expiry) on thousands of rows
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _details(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value.strip():
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


@dataclass
class _History:
    """What the ledger says about one action's review: current message, first approval, decision, expiry."""

    proposal_subject: str | None = None
    proposal_body: str | None = None
    subject: str | None = None
    body: str | None = None
    requested_at: datetime | None = None
    expires_at: datetime | None = None
    first_approval: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None

    @property
    def digest(self) -> str:
        return message_digest(self.subject, self.body)

    @property
    def message_changed(self) -> bool:
        """True when an approver's edit replaced the proposal's message."""
        return self.digest != message_digest(self.proposal_subject, self.proposal_body)

    def review_expires_at(self) -> datetime:
        if self.expires_at is not None:
            return self.expires_at
        start = self.requested_at or datetime.min
        return start + timedelta(days=DEFAULT_REVIEW_EXPIRY_DAYS)


def _histories(con: duckdb.DuckDBPyConnection, action_ids: Sequence[str]) -> dict[str, _History]:
    """One pass over the review-related events of the given actions, oldest first."""
    found: dict[str, _History] = {action_id: _History() for action_id in action_ids}
    if not action_ids:
        return found
    cursor = con.execute(
        f"""
        select action_id, event_type, occurred_at, actor, approver_email, message_subject, message_body, details
        from {ledger.LEDGER_TABLE}
        where action_id in (select unnest(?::varchar[]))
          and event_type in ('proposed', 'pending_review', 'approved', 'rejected')
        order by seq
        """,
        [list(action_ids)],
    )
    for action_id, event_type, occurred_at, actor, approver, subject, body, raw_details in cursor.fetchall():
        history = found[action_id]
        if event_type == "proposed":
            history.proposal_subject, history.proposal_body = subject, body
            history.subject, history.body = subject, body
            continue
        # parsed only for the review events: a proposal's details say nothing about its review
        details = _details(raw_details)
        has_message = subject is not None or body is not None
        if event_type == "pending_review":
            first = details.get("first_approval")
            if isinstance(first, dict):
                history.first_approval = first
            else:
                # a fresh review request (e.g. after a lifted suppression) starts the review again
                history.first_approval = None
                history.requested_at = occurred_at
            expires = _as_datetime(details.get("review_expires_at"))
            if expires is not None:
                history.expires_at = expires
        elif history.decision is None:
            # the first recorded decision is the one that counts
            approvers = {norm_email(approver)}
            first = details.get("first_approval")
            if isinstance(first, dict):
                approvers.add(norm_email(first.get("approver")))
            history.decision = {
                "event_type": event_type,
                "approver": norm_email(approver) or actor,
                "approvers": approvers,
                "at": occurred_at,
                "file": details.get("review_file"),
                "row": details.get("row"),
            }
        if has_message:
            history.subject, history.body = subject, body
    return found


# ---------------------------------------------------------------------------------------------------------
# export


@dataclass
class ExportReport:
    """What one export wrote."""

    as_of: datetime
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)
    rows_per_approver: dict[str, int] = field(default_factory=dict)
    needs_checking_per_approver: dict[str, int] = field(default_factory=dict)
    actions: int = 0
    unrouted: list[str] = field(default_factory=list)
    unrouted_unknown: list[str] = field(default_factory=list)
    past_expiry: list[str] = field(default_factory=list)
    # approvers whose files from an earlier export still hold exactly this content: kept, not rewritten
    unchanged: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        lines = [
            f"review export as of {self.as_of:%Y-%m-%d %H:%M}: {self.actions} action(s) pending review, "
            f"{len(self.rows_per_approver)} approver(s), {len(self.files)} file(s) in {self.out_dir}"
            + (
                f" ({len(self.unchanged)} approver(s) unchanged: their files from an earlier export are "
                "still current and were kept)"
                if self.unchanged
                else ""
            )
        ]
        for approver, count in sorted(self.rows_per_approver.items()):
            checking = self.needs_checking_per_approver.get(approver, 0)
            extra = f", {checking} send(s) to check" if checking else ""
            lines.append(f"  {approver}: {count} action(s){extra}")
        if self.unrouted:
            lines.append(
                f"  {len(self.unrouted)} action(s) pending review have no owner and no configured approver, "
                f"so nobody can decide them: {', '.join(self.unrouted[:10])}"
                + (" ..." if len(self.unrouted) > 10 else "")
            )
        if self.unrouted_unknown:
            lines.append(
                f"  {len(self.unrouted_unknown)} action(s) with an unknown send outcome have nobody to check "
                f"them: {', '.join(self.unrouted_unknown[:10])}"
                + (" ..." if len(self.unrouted_unknown) > 10 else "")
            )
        if self.past_expiry:
            lines.append(
                f"  {len(self.past_expiry)} action(s) are past their review expiry and were not exported "
                "(the next pass records them as expired)"
            )
        return lines


# what the export reads of a pending action's state: its review row, its approvers (details: escalated_to)
_PENDING_STATE_COLUMNS = (
    "action_id",
    "seq",
    "rule_id",
    "record_type",
    "record_id",
    "contact_id",
    "owner_email",
    "recommended_action",
    "recipient",
    "proposed_recipient",
    "reason",
    "proposed_at",
    "details",
)


def _pending_states(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The state rows of the actions waiting for review, with only the columns the export reads (a
    whole state row is some forty values, most of which a review table never shows)."""
    names = ", ".join(_PENDING_STATE_COLUMNS)
    rows = con.execute(
        f"select {names} from ops.action_state where event_type = 'pending_review' order by seq"
    ).fetchall()
    return [dict(zip(_PENDING_STATE_COLUMNS, row, strict=True)) for row in rows]


def _review_row(
    state: Mapping[str, Any], history: _History, approver: str, four_eyes: bool
) -> dict[str, str]:
    approvals = ""
    if four_eyes:
        first = history.first_approval
        approvals = (
            f"four eyes: approved first by {first.get('approver')} at {first.get('at')}; needs your approval too"
            if first
            else "four eyes: needs two approvers"
        )
    return {
        "action_id": _text(state.get("action_id")),
        "rule_id": _text(state.get("rule_id")),
        "record_type": _text(state.get("record_type")),
        "record_id": _text(state.get("record_id")),
        "contact_id": _text(state.get("contact_id")),
        "owner_email": _text(state.get("owner_email")),
        "recommended_action": _text(state.get("recommended_action")),
        "recipient": _protected_value(state, "recipient"),
        # the message as it stands: the proposal's, or a first approver's edit of it
        "subject": _text(history.subject),
        "message": _text(history.body),
        "reason": _text(state.get("reason")),
        "proposed_at": _text(state.get("proposed_at")),
        "expires_at": _text(history.review_expires_at()),
        "approvals": approvals,
        "decision": "",
        "approver_email": approver,
        "comment": "",
    }


def _protected_value(state: Mapping[str, Any], name: str) -> str:
    if name == "recipient":
        return _text(state.get("recipient") or state.get("proposed_recipient"))
    return _text(state.get(name))


def _needs_checking_row(state: Mapping[str, Any]) -> dict[str, str]:
    return {
        "action_id": _text(state.get("action_id")),
        "rule_id": _text(state.get("rule_id")),
        "record_type": _text(state.get("record_type")),
        "record_id": _text(state.get("record_id")),
        "channel": _text(state.get("channel")),
        "recipient": _protected_value(state, "recipient"),
        "subject": _text(state.get("message_subject") or state.get("proposed_subject")),
        "attempt": _text(state.get("attempt")),
        "marked_unknown_at": _text(state.get("occurred_at")),
        "result": _text(state.get("result")),
        "next_action": _text(state.get("next_action")),
    }


def _replace_atomically(target: Path, write: Any) -> None:
    # a half-written review file must never be picked up, so write beside it and rename
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    _write_csv_cells(path, columns, [[neutralise(_text(row.get(name))) for name in columns] for row in rows])


def _write_csv_cells(path: Path, columns: Sequence[str], cells: Sequence[Sequence[str]]) -> None:
    # cells already neutralised; utf-8-sig: the BOM makes Excel open the file as UTF-8; csv's default \r\n
    # line ends follow RFC 4180
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(columns)
        writer.writerows(cells)


def _write_manifest(path: Path, manifest: Manifest, text: str | None = None) -> None:
    # `text`: the manifest's JSON when the caller already has it (it is the slow part for a long manifest)
    text = manifest.to_json() if text is None else text
    _replace_atomically(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def write_review_csv(
    path: Path, rows: Iterable[Mapping[str, Any]], manifest_from: Path | None = None
) -> None:
    """Write review rows as a CSV in the export's format (REVIEW_COLUMNS first, then any extra keys).

    `manifest_from` names the exported review file (CSV or XLSX) the rows came from; its signed manifest
    is written beside `path` as `<name>.manifest.json`, which an import of the CSV needs.
    """
    materialised = list(rows)
    extra = [k for row in materialised for k in row if k not in REVIEW_COLUMNS]
    columns = [*REVIEW_COLUMNS, *dict.fromkeys(extra)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the manifest first: an inbox watcher that sees the CSV must find its manifest already there
    if manifest_from is not None:
        _write_manifest(manifest_path_for(path), read_manifest(manifest_from))
    _replace_atomically(path, lambda tmp: _write_csv(tmp, materialised, columns))


@dataclass
class _Issue:
    """Everything one approver's files hold."""

    approver: str
    # (state, history, four eyes) of each action to decide; `build_rows` turns them into `rows` where the
    # files are written (a forked writer), not in the exporting process
    entries: list[tuple[Mapping[str, Any], _History, bool]] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    needs_checking: list[dict[str, str]] = field(default_factory=list)
    unknown_states: list[Mapping[str, Any]] = field(default_factory=list)  # the rows above came from these
    four_eyes_rules: set[str] = field(default_factory=set)

    def build_rows(self) -> None:
        self.rows = [
            _review_row(state, history, self.approver, four_eyes)
            for state, history, four_eyes in self.entries
        ]


def _file_expiry(expiries: Sequence[datetime], as_of: datetime) -> datetime:
    # the file is useful until its last action's review expires; each row still expires on its own date
    return max(expiries) if expiries else as_of + timedelta(days=DEFAULT_REVIEW_EXPIRY_DAYS)


def _approver_files(out_dir: Path, stem: str) -> tuple[Path, Path, Path]:
    """An approver's workbook, CSV and the CSV's manifest sidecar."""
    csv_path = out_dir / f"{stem}.csv"
    return out_dir / f"{stem}.xlsx", csv_path, manifest_path_for(csv_path)


def _manifest_for(issue: _Issue, as_of: datetime, key: bytes) -> Manifest:
    actions = {
        row["action_id"]: IssuedAction(
            action_id=row["action_id"],
            message_sha256=message_digest(row["subject"], row["message"]),
            review_expires_at=datetime.fromisoformat(row["expires_at"]),
        )
        for row in issue.rows
    }
    return Manifest(
        approver=issue.approver,
        issued_at=as_of,
        expires_at=_file_expiry(
            [datetime.fromisoformat(row["expires_at"]) for row in issue.rows if row.get("expires_at")], as_of
        ),
        actions=actions,
    ).signed(key)


def _summary_by_rule(rows: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    per_rule: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = per_rule.setdefault(
            row["rule_id"],
            {"rule_id": row["rule_id"], "actions": 0, "second": 0, "proposed": [], "expires": []},
        )
        entry["actions"] += 1
        entry["second"] += int(row["approvals"].startswith("four eyes: approved first"))
        if row["proposed_at"]:
            entry["proposed"].append(row["proposed_at"])
        entry["expires"].append(row["expires_at"])
    return [per_rule[rule_id] for rule_id in sorted(per_rule)]


class _StringRowsSheet(Worksheet):
    """A worksheet that takes a block of text rows in one call and writes their XML in one pass.

    xlsxwriter spends most of a large review table's export in its per-cell code (a tuple stored per cell
    on write, an attribute list and escaping per cell on close). The rows here are plain text or blank, so
    their `<row>`/`<c>` elements are built directly, with exactly the markup xlsxwriter writes for them
    (same shared-string indices, styles, spans and dimensions): the workbook is byte for byte the one the
    per-cell calls would write. Cells written the ordinary way (the header) are written by xlsxwriter.

    A row's markup depends only on which of its cells are text, blank or absent (its shape) and on the
    numbers in it, so each shape becomes one format string and a row is one `str.format` call.
    """

    def __init__(self) -> None:
        super().__init__()
        # per written row: its number, its shape and the shared-string indices of its text cells
        self._string_rows: list[tuple[int, tuple[int, ...], list[int]]] = []
        self._string_formats: list[Format | None] = []

    def write_string_rows(
        self,
        first_row: int,
        rows: Sequence[Sequence[str]],
        formats: Sequence[Format | None],
        max_chars: int,
    ) -> None:
        """Like `write_string` for every non-empty value of `rows` (row `first_row` onwards, column 0
        onwards), cut to `max_chars`, with the column's format from `formats`, and `write_blank` for an
        empty value whose column has a format. Call once, after the rows above and before any row below."""
        if self._string_rows:
            raise ValueError("write_string_rows takes all its rows in one call")
        self._string_formats = list(formats)
        formatted = [cell_format is not None for cell_format in self._string_formats]
        limit = self.xls_strmax
        # below this length a value is neither cut nor too long in UTF-16: one test per row for the usual one
        short = min(max_chars, limit // 2)

        def cut(value: str) -> str:
            if len(value) > max_chars:
                value = value[:max_chars]
            if len(value) > limit // 2 and _utf16_len(value) > limit:
                value = _utf16_truncate(value, limit)
            return value

        rows = [
            row if max(map(len, row), default=0) <= short else [cut(value) for value in row] for row in rows
        ]
        # shared strings are numbered in write order (row by row, left to right), as write_string numbers
        # them: the first sight of each new text, in order, gets the next number
        strings = self.str_table
        indices = strings.string_table
        texts = list(filter(None, chain.from_iterable(rows)))
        fresh = [text for text in dict.fromkeys(texts) if text not in indices]
        indices.update(
            zip(fresh, range(strings.unique_count, strings.unique_count + len(fresh)), strict=True)
        )
        strings.unique_count += len(fresh)
        strings.count += len(texts)
        # a cell's shape code: col + 1 for text, -(col + 1) for a blank with a format; absent cells left out
        shapes: dict[tuple[bool, ...], tuple[int, ...]] = {}
        written: list[tuple[int, tuple[int, ...], list[int]]] = []
        for row_number, values in enumerate(rows, start=first_row):
            present = tuple(map(bool, values))
            shape = shapes.get(present)
            if shape is None:
                shape = shapes[present] = tuple(
                    col + 1 if text else -(col + 1)
                    for col, text in enumerate(present)
                    if text or formatted[col]
                )
            if shape:
                written.append((row_number, shape, [indices[text] for text in values if text]))
                self._check_dimensions(row_number, abs(shape[0]) - 1)
                self._check_dimensions(row_number, abs(shape[-1]) - 1)
        self._string_rows = written

    def _calculate_spans(self) -> None:
        # xlsxwriter's spans cover the cells it stores; the block's rows given here widen them, as their
        # cells would have
        super()._calculate_spans()
        for row_number, shape, _ in self._string_rows:
            block = row_number // 16
            low, high = abs(shape[0]), abs(shape[-1])
            if block in self.row_spans:
                old_low, old_high = (int(part) for part in self.row_spans[block].split(":"))
                low, high = min(low, old_low), max(high, old_high)
            self.row_spans[block] = f"{low}:{high}"

    def _write_rows(self) -> None:
        super()._write_rows()
        if not self._string_rows:
            return
        if self.row_info or self.comments or self.excel_version != 2007:
            raise ValueError(
                "write_string_rows supports plain rows only (no row formats, comments or 2010 markup)"
            )
        if any(self.table.get(row_number) for row_number, _, _ in self._string_rows):
            raise ValueError("a row given to write_string_rows was also written cell by cell")
        # the style of a cell: its own format, else its column's (indices taken in the order xlsxwriter's
        # close takes them: the first data row, left to right)
        styles: dict[int, str] = {}
        for _, shape, _ in self._string_rows:
            for code in shape:
                col = abs(code) - 1
                if col not in styles:
                    styles[col] = self._style_of(col)
        spans = self.row_spans
        templates: dict[tuple[int, ...], str] = {}
        parts: list[str] = []
        for row_number, shape, numbers in self._string_rows:
            template = templates.get(shape)
            if template is None:
                template = templates[shape] = self._row_template(shape, styles)
            parts.append(template.format(row_number + 1, spans[row_number // 16], *numbers))
        self.fh.write("".join(parts))

    @staticmethod
    def _row_template(shape: tuple[int, ...], styles: Mapping[int, str]) -> str:
        # {0}: the row's number, {1}: its spans, {2}…: the shared-string indices of its text cells
        cells = []
        text_cells = 0
        for code in shape:
            col = abs(code) - 1
            where = f'<c r="{xl_col_to_name(col)}{{0}}"{styles[col]}'
            if code > 0:
                cells.append(f'{where} t="s"><v>{{{text_cells + 2}}}</v></c>')
                text_cells += 1
            else:
                cells.append(f"{where}/>")
        return '<row r="{0}" spans="{1}">' + "".join(cells) + "</row>"

    def _style_of(self, col: int) -> str:
        cell_format = self._string_formats[col]
        if cell_format is None and col in self.col_info:
            cell_format = self.col_info[col].column_format
        return f' s="{cell_format._get_xf_index()}"' if cell_format is not None else ""


class _SharedStringsPackager(Packager):
    """xlsxwriter's packager, with the shared-strings part written in one pass: a string that needs no
    special markup (control characters, edge whitespace, rich text) becomes `<si><t>…</t></si>` directly,
    any other goes through xlsxwriter's own writer, so the part is byte for byte xlsxwriter's.

    Runs of plain strings are escaped and joined as one text: NUL, a control character, can only be in a
    special string, so it separates them."""

    def _write_shared_strings_file(self) -> None:
        table = self.workbook.str_table
        if not table.count:
            return
        sst = SharedStrings()
        sst.string_table = table
        sst._set_xml_writer(self._filename("xl/sharedStrings.xml"))
        sst._xml_declaration()
        sst._write_sst()
        strings = table.string_array
        joined = "\n".join(strings)
        # "\n" is neither a control character here nor part of an escape look-alike, so neither can span
        # two strings of the joined text: when it has none, only edge whitespace makes a string special
        maybe_special = bool(
            _SST_CONTROL.search(joined) or _SST_ESCAPE_LOOKALIKE.search(joined) or "<r>" in joined
        )
        run: list[str] = []
        for string in strings:
            if string.strip() != string or (maybe_special and _sst_special(string)):
                _write_plain_strings(sst, run)
                run.clear()
                sst._write_si(string)
            else:
                run.append(string)
        _write_plain_strings(sst, run)
        sst._xml_end_tag("sst")
        sst._xml_close()


def _write_plain_strings(sst: SharedStrings, strings: Sequence[str]) -> None:
    if not strings:
        return
    # xlsxwriter's _escape_data: & < > only
    text = "\x00".join(strings).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    sst.fh.write("<si><t>" + text.replace("\x00", "</t></si><si><t>") + "</t></si>")


class _ReviewWorkbook(xlsxwriter.Workbook):
    """A workbook packaged by `_SharedStringsPackager`."""

    def _get_packager(self) -> Packager:
        return _SharedStringsPackager()


def _write_xlsx(
    path: Path,
    issue: _Issue,
    as_of: datetime,
    manifest: Manifest,
    manifest_text: str,
    cells: Sequence[Sequence[str]],
) -> None:
    """`cells`: the review rows' values in REVIEW_COLUMNS order, neutralised (the CSV's cells)."""
    # in memory: the parts are zipped from memory instead of temporary files written and removed one by one
    workbook = _ReviewWorkbook(
        str(path), {"strings_to_formulas": False, "strings_to_numbers": False, "in_memory": True}
    )
    try:
        # a stable creation date: the same export as of the same time writes the same workbook
        workbook.set_properties({"created": as_of, "title": f"Review table for {issue.approver}"})
        header = workbook.add_format({"bold": True, "bg_color": "#DDE4EE", "border": 1})
        fill_header = workbook.add_format({"bold": True, "bg_color": "#FFF2CC", "border": 1})
        edit_header = workbook.add_format({"bold": True, "bg_color": "#E2EFDA", "border": 1})
        locked_top = workbook.add_format({"valign": "top"})
        locked_wrap = workbook.add_format({"text_wrap": True, "valign": "top"})
        # unlocked: the only cells a person can change while the sheet is protected
        fill = workbook.add_format({"valign": "top", "bg_color": "#FFFBEA", "locked": False})
        edit = workbook.add_format(
            {"valign": "top", "text_wrap": True, "bg_color": "#F3F9EF", "locked": False}
        )
        bold = workbook.add_format({"bold": True})
        # protection guards against slips, not attackers (it has no password); the import checks the rest
        protection = {"autofilter": True, "format_columns": True, "format_rows": True}

        sheet = workbook.add_worksheet(REVIEW_SHEET, worksheet_class=_StringRowsSheet)
        for col, name in enumerate(REVIEW_COLUMNS):
            head = (
                fill_header
                if name in FILL_IN_COLUMNS
                else edit_header
                if name in EDITABLE_COLUMNS
                else header
            )
            sheet.write_string(0, col, name, head)
            sheet.set_column(
                col,
                col,
                _COLUMN_WIDTHS.get(name, 16),
                locked_wrap if name in {"message", "reason"} else locked_top,
            )
        sheet.write_string_rows(
            1,
            cells,
            [
                fill if name in FILL_IN_COLUMNS else edit if name in EDITABLE_COLUMNS else None
                for name in REVIEW_COLUMNS
            ],
            _XLSX_CELL_LIMIT,
        )
        sheet.freeze_panes(1, 0)
        last_row = max(len(issue.rows), 1)
        sheet.autofilter(0, 0, last_row, len(REVIEW_COLUMNS) - 1)
        decision_col = REVIEW_COLUMNS.index("decision")
        sheet.data_validation(
            1,
            decision_col,
            last_row,
            decision_col,
            {
                "validate": "list",
                "source": list(DECISIONS),
                "ignore_blank": True,
                "input_title": "Decision",
                "input_message": "approve, reject, or leave empty to decide later",
                "error_title": "Not a decision",
                "error_message": "Choose approve or reject (or leave the cell empty).",
            },
        )
        sheet.protect("", protection)

        summary = workbook.add_worksheet(SUMMARY_SHEET)
        summary.set_column(0, 0, 30)
        summary.set_column(1, 6, 22)
        summary.write_string(0, 0, f"Review summary for {issue.approver}", bold)
        facts = [
            ("exported at (UTC)", _text(as_of)),
            ("file expires at (UTC)", _text(manifest.expires_at)),
            ("actions to decide", str(len(issue.rows))),
            ("sends to check (needs_checking sheet)", str(len(issue.needs_checking))),
        ]
        for index, (label, value) in enumerate(facts, start=2):
            summary.write_string(index, 0, label)
            summary.write_string(index, 1, value)
        table_row = len(facts) + 3
        columns = (
            "rule_id",
            "actions",
            "four_eyes",
            "waiting for your approval as second",
            "oldest proposed_at",
            "earliest expiry",
            "latest expiry",
        )
        for col, name in enumerate(columns):
            summary.write_string(table_row, col, name, header)
        for offset, entry in enumerate(_summary_by_rule(issue.rows), start=1):
            values = (
                entry["rule_id"],
                str(entry["actions"]),
                "yes" if entry["rule_id"] in issue.four_eyes_rules else "no",
                str(entry["second"]),
                min(entry["proposed"], default=""),
                min(entry["expires"], default=""),
                max(entry["expires"], default=""),
            )
            for col, value in enumerate(values):
                summary.write_string(table_row + offset, col, neutralise(value))
        summary.protect("", protection)

        checking = workbook.add_worksheet(NEEDS_CHECKING_SHEET)
        checking.write_string(
            0,
            0,
            "Sends interrupted on a channel that cannot safely repeat them: check with the recipient whether "
            "the message arrived. These rows are read-only and are not imported.",
            bold,
        )
        for col, name in enumerate(NEEDS_CHECKING_COLUMNS):
            checking.write_string(2, col, name, header)
            checking.set_column(col, col, _COLUMN_WIDTHS.get(name, 16), locked_top)
        for row_index, row in enumerate(issue.needs_checking, start=3):
            for col, name in enumerate(NEEDS_CHECKING_COLUMNS):
                value = neutralise(row[name])[:_XLSX_CELL_LIMIT]
                if value:
                    checking.write_string(row_index, col, value)
        checking.protect("", protection)

        notes = workbook.add_worksheet(INSTRUCTIONS_SHEET)
        notes.set_column(0, 0, 110)
        notes.write_string(
            0, 0, f"Review table for {issue.approver}, exported {as_of:%Y-%m-%d %H:%M} UTC", bold
        )
        lines = [
            "1. On the 'review' sheet, set 'decision' to approve or reject for each action you decide.",
            "2. Leave 'decision' empty for actions you do not want to decide yet; they stay pending.",
            "3. You may edit 'subject' and 'message' before approving; your edited text is what gets sent.",
            "4. 'comment' is optional and is stored with your decision.",
            "5. Every other cell is locked: the import refuses a row whose action, record, recipient or",
            "   approver was changed, a row not issued to you, and any decided row past its 'expires_at'.",
            f"6. This file expires {manifest.expires_at:%Y-%m-%d %H:%M} UTC; after that it is refused whole.",
            "7. Rules marked 'four eyes' need two different approvers; your approval may be the first of two.",
            "8. Hand the workbook back as .xlsx; a .csv only together with its .manifest.json file.",
            "   Re-sending the same file changes nothing.",
            "",
            "Text starting with = + - or @ is shown with a leading apostrophe so it never runs as a formula;",
            "a filled-in cell that starts with one of these characters is refused on import.",
        ]
        for index, line in enumerate(lines, start=2):
            if line:
                notes.write_string(index, 0, line)
        notes.protect("", protection)

        # very hidden: not offered by Excel's "Unhide"; the signature makes it tamper-evident anyway
        hidden = workbook.add_worksheet(MANIFEST_SHEET)
        text = manifest_text
        for index, start in enumerate(range(0, len(text), _MANIFEST_CHUNK)):
            hidden.write_string(index, 0, text[start : start + _MANIFEST_CHUNK])
        hidden.protect("", {})
        hidden.very_hidden()
    finally:
        workbook.close()


def export_reviews(
    con: duckdb.DuckDBPyConnection,
    out_dir: Path,
    as_of: datetime,
    *,
    workers: int | None = None,
    parallel_min_rows: int = PARALLEL_MIN_ROWS,
) -> ExportReport:
    """Write one XLSX and one CSV (+ signed manifest) per approver with the actions pending their review.

    The files are written by `workers` processes (default `config.review_export_workers()`; 1 writes
    them in this process), but only when the export has at least `parallel_min_rows` rows: a small one
    is written here, where it costs less than starting workers.

    Raises `ReviewSecretError` (nothing written) when the signing key's environment variable is unset,
    and `ReviewConfigError` when the approval policy in `actionlayer.yml` is invalid.
    """
    policy = load_policy()
    key = review_secret(policy.secret_env)
    pending = _pending_states(con)
    pending.sort(key=lambda s: (s.get("proposed_at") or datetime.min, str(s.get("action_id"))))
    unknown = ledger.states(con, event_types=["unknown"])
    histories = _histories(con, [str(s["action_id"]) for s in pending])

    issues: dict[str, _Issue] = {}
    report = ExportReport(as_of=as_of, out_dir=out_dir, actions=len(pending))
    four_eyes_of: dict[Any, bool] = {}
    for state in pending:
        action_id = str(state["action_id"])
        history = histories[action_id]
        if as_of >= history.review_expires_at():
            # a decision on it would be refused; the next proposals pass records `expired`
            report.past_expiry.append(action_id)
            continue
        people = _deciders(policy, state)
        if not people:
            report.unrouted.append(action_id)
        first = history.first_approval
        rule_id = state.get("rule_id")
        four_eyes = four_eyes_of.get(rule_id)
        if four_eyes is None:
            four_eyes = four_eyes_of[rule_id] = policy.four_eyes(rule_id)
        for person in sorted(people):
            if first and norm_email(first.get("approver")) == person:
                continue  # four eyes: the first approver has done their part
            issue = issues.setdefault(person, _Issue(approver=person))
            issue.entries.append((state, history, four_eyes))
            if four_eyes:
                issue.four_eyes_rules.add(str(rule_id))
    for state in unknown:
        people = _deciders(policy, state)
        if not people:
            report.unrouted_unknown.append(str(state["action_id"]))
        for person in sorted(people):
            issue = issues.setdefault(person, _Issue(approver=person))
            issue.needs_checking.append(_needs_checking_row(state))
            issue.unknown_states.append(state)

    # two addresses can share a slug (a.b@x vs a-b@x); a hash suffix keeps their files apart
    slugs: dict[str, list[str]] = {}
    for person in issues:
        slugs.setdefault(approver_slug(person), []).append(person)
    file_stem: dict[str, str] = {}
    for slug, people in slugs.items():
        for person in people:
            suffix = "" if len(people) == 1 else "-" + hashlib.sha1(person.encode()).hexdigest()[:6]
            file_stem[person] = f"review_{slug}{suffix}_{as_of:%Y%m%dT%H%M}"

    out_dir.mkdir(parents=True, exist_ok=True)
    exports, unchanged = _reusable_files(con, issues, file_stem, out_dir, as_of, key)
    changed = {person: issue for person, issue in issues.items() if person not in unchanged}
    _write_issues(changed, file_stem, out_dir, as_of, key, workers, parallel_min_rows)
    review_reuse.record(con, out_dir, as_of, exports, written=changed)
    report.unchanged = sorted(unchanged)
    for person in sorted(issues):
        issue = issues[person]
        xlsx_path, csv_path, manifest_path = _approver_files(out_dir, file_stem[person])
        report.files.extend([xlsx_path, csv_path])
        report.manifests.append(manifest_path)
        report.rows_per_approver[person] = len(issue.entries)
        if issue.needs_checking:
            report.needs_checking_per_approver[person] = len(issue.needs_checking)
    return report


def _reusable_files(
    con: duckdb.DuckDBPyConnection,
    issues: Mapping[str, _Issue],
    file_stem: dict[str, str],
    out_dir: Path,
    as_of: datetime,
    key: bytes,
) -> tuple[dict[str, review_reuse.Export], set[str]]:
    """Each approver's files after this export, and the approvers whose files from an earlier export are
    still current (same content, all three files there, not expired): `file_stem` is pointed at those."""
    earlier = review_reuse.latest(con, out_dir)
    exports: dict[str, review_reuse.Export] = {}
    unchanged: set[str] = set()
    for person, issue in issues.items():
        digest = review_reuse.fingerprint(person, issue.entries, issue.unknown_states, key)
        before = earlier.get(person)
        if (
            before is not None
            and before.fingerprint == digest
            and as_of < before.expires_at
            and all(path.is_file() for path in _approver_files(out_dir, before.file_stem))
        ):
            unchanged.add(person)
            file_stem[person] = before.file_stem
            exports[person] = before
            continue
        expires = _file_expiry([history.review_expires_at() for _, history, _ in issue.entries], as_of)
        exports[person] = review_reuse.Export(file_stem[person], digest, expires)
    return exports, unchanged


def _write_issue(issue: _Issue, stem: str, out_dir: Path, as_of: datetime, key: bytes) -> None:
    """One approver's XLSX, manifest sidecar and CSV, each replaced atomically."""
    issue.build_rows()
    manifest = _manifest_for(issue, as_of, key)
    text = manifest.to_json()
    # one neutralised copy of every cell (`neutralise`, inlined), for the CSV and the XLSX alike
    cells = [
        ["'" + value if value.startswith(_FORMULA_PREFIXES) else value for value in _REVIEW_VALUES(row)]
        for row in issue.rows
    ]
    xlsx_path, csv_path, manifest_path = _approver_files(out_dir, stem)
    _replace_atomically(xlsx_path, lambda tmp: _write_xlsx(tmp, issue, as_of, manifest, text, cells))
    _write_manifest(manifest_path, manifest, text)
    _replace_atomically(csv_path, lambda tmp: _write_csv_cells(tmp, REVIEW_COLUMNS, cells))


# What forked writers inherit instead of receiving it through a pipe: the approvers' issues and the
# signing key, which so never leaves memory (nothing pickled, logged or written). Set only while a pool
# runs; the lock keeps two threads' exports from sharing it.
_FORKED: dict[str, Any] = {}
_FORKED_LOCK = threading.Lock()


def _write_forked(person: str) -> None:
    job = _FORKED
    _write_issue(job["issues"][person], job["stems"][person], job["out_dir"], job["as_of"], job["key"])


def _write_issues(
    issues: Mapping[str, _Issue],
    file_stem: Mapping[str, str],
    out_dir: Path,
    as_of: datetime,
    key: bytes,
    workers: int | None,
    parallel_min_rows: int,
) -> None:
    """Write every approver's files: in this process, or split over forked worker processes when the
    export is large enough to repay starting them. The files are the same either way."""
    wanted = config.review_export_workers() if workers is None else workers
    rows = sum(len(issue.entries) + len(issue.needs_checking) for issue in issues.values())
    processes = min(wanted, len(issues))
    # fork: the workers get the issues and the key from this process's memory; without it, write here
    if processes <= 1 or rows < parallel_min_rows or "fork" not in mp.get_all_start_methods():
        for person in sorted(issues):
            _write_issue(issues[person], file_stem[person], out_dir, as_of, key)
        return
    # the largest files first, so no worker is left with a big one at the end
    order = sorted(issues, key=lambda p: (-len(issues[p].entries) - len(issues[p].needs_checking), p))
    with _FORKED_LOCK:
        _FORKED.update(issues=issues, stems=file_stem, out_dir=out_dir, as_of=as_of, key=key)
        # frozen objects are never scanned by the collector: a worker's collections would otherwise walk
        # (and so copy, page by page) every inherited row
        gc.freeze()
        try:
            with ProcessPoolExecutor(processes, mp_context=mp.get_context("fork")) as pool:
                futures = [pool.submit(_write_forked, person) for person in order]
                try:
                    # the first failure is raised as the worker raised it (same type and message)
                    for future in as_completed(futures):
                        future.result()
                except BaseException:
                    # files not yet started are not written; ones being written finish whole (their tmp
                    # files are renamed or removed), since shutdown waits and never kills a writer
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        finally:
            gc.unfreeze()
            _FORKED.clear()


# ---------------------------------------------------------------------------------------------------------
# reading review files


@dataclass(frozen=True)
class _SheetRow:
    number: int  # the spreadsheet row the person sees; the header is row 1
    values: dict[str, str]


def _table_from_records(path: Path, records: list[list[str]]) -> tuple[list[str], list[_SheetRow]]:
    """Header = first non-empty record; row numbers count every record, blank ones included."""
    header_index = next((i for i, rec in enumerate(records) if any(cell.strip() for cell in rec)), None)
    if header_index is None:
        raise ReviewFileError(f"{path.name}: file is empty (no header row, no data)")
    header = [cell.strip().lower() for cell in records[header_index]]
    missing = [name for name in REQUIRED_IMPORT_COLUMNS if name not in header]
    if missing:
        raise ReviewFileError(
            f"{path.name}: missing required column(s) {', '.join(missing)} in the header row "
            f"(row {header_index + 1}); found {', '.join(h for h in header if h) or 'no column names'}"
        )
    rows = []
    for index in range(header_index + 1, len(records)):
        record = records[index]
        values = {}
        for col, name in enumerate(header):
            # the first column of a name wins if a person duplicated a header
            if name and name not in values:
                values[name] = record[col].strip() if col < len(record) else ""
        rows.append(_SheetRow(number=index + 1, values=values))
    return header, rows


def _csv_records(path: Path) -> list[list[str]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ReviewFileError(f"{path.name}: cannot read file: {exc}") from exc
    if not raw.strip():
        raise ReviewFileError(f"{path.name}: file is empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReviewFileError(
            f"{path.name}: not UTF-8 text (byte {exc.start}); save it as CSV UTF-8 and send it again"
        ) from exc
    if "\x00" in text:
        raise ReviewFileError(f"{path.name}: contains NUL bytes, not a CSV text file")
    try:
        return [list(rec) for rec in csv.reader(io.StringIO(text, newline=""), strict=True)]
    except csv.Error as exc:
        raise ReviewFileError(f"{path.name}: malformed CSV: {exc}") from exc


def _sheet_cells(reader: Any, sheet: str | int) -> list[list[str]]:
    # header_row=None with skip_rows=0 keeps leading and inner blank rows, so row numbers match the sheet
    frame = reader.load_sheet(sheet, header_row=None, skip_rows=0, dtypes="string").to_polars()
    return [["" if cell is None else str(cell) for cell in row] for row in frame.iter_rows()]


def _xlsx_records(path: Path) -> tuple[list[list[str]], str | None]:
    """The review sheet's cells and the manifest sheet's text (None when the workbook has none)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ReviewFileError(f"{path.name}: cannot read file: {exc}") from exc
    if size == 0:
        raise ReviewFileError(f"{path.name}: file is empty")
    try:
        reader = fastexcel.read_excel(path)
        # a person's own workbook may name the sheet differently; then its first sheet holds the table
        records = _sheet_cells(reader, REVIEW_SHEET if REVIEW_SHEET in reader.sheet_names else 0)
        manifest = None
        if MANIFEST_SHEET in reader.sheet_names:
            manifest = "".join(cell for row in _sheet_cells(reader, MANIFEST_SHEET) for cell in row[:1])
    except Exception as exc:  # fastexcel/calamine raise their own types for every kind of corrupt file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReviewFileError(f"{path.name}: not a readable XLSX workbook ({first_line})") from exc
    return records, manifest


def _check_path(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ReviewFileError(
            f"{path.name}: unsupported file type {path.suffix or '(none)'!r}; "
            f"use {' or '.join(SUPPORTED_SUFFIXES)}"
        )
    if not path.is_file():
        raise ReviewFileError(f"{path.name}: no such file ({path})")
    return suffix


def _read_table(path: Path) -> tuple[list[str], list[_SheetRow], str | None]:
    """Header, data rows and the embedded manifest text (XLSX only; a CSV's manifest is its sidecar)."""
    if _check_path(path) == ".csv":
        records, manifest = _csv_records(path), None
    else:
        records, manifest = _xlsx_records(path)
    header, rows = _table_from_records(path, records)
    return header, rows, manifest


def read_review_rows(path: Path) -> list[dict[str, str]]:
    """The data rows of a review file (CSV or XLSX) as header → text; raises `ReviewFileError` if unusable."""
    header, rows, _ = _read_table(Path(path))
    names = [name for name in dict.fromkeys(header) if name]
    return [{name: row.values.get(name, "") for name in names} for row in rows if any(row.values.values())]


def _parse_manifest(path: Path, text: str, where: str) -> Manifest:
    try:
        return Manifest.from_json(text)
    except ManifestError as exc:
        raise ReviewFileError(f"{path.name}: manifest ({where}) {exc}") from exc


def _manifest_of(path: Path, embedded: str | None) -> Manifest:
    if path.suffix.lower() == ".xlsx":
        if not embedded:
            raise ReviewFileError(
                f"{path.name}: no signed manifest (the workbook has no {MANIFEST_SHEET!r} sheet); only review "
                "workbooks exported by Actionlayer can be imported: hand back the exported file"
            )
        return _parse_manifest(path, embedded, f"sheet {MANIFEST_SHEET!r}")
    sidecar = manifest_path_for(path)
    try:
        text = sidecar.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ReviewFileError(
            f"{path.name}: no signed manifest: {sidecar.name} is missing next to it; a review CSV is only "
            "imported together with the manifest exported with it"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ReviewFileError(f"{path.name}: cannot read manifest {sidecar.name}: {exc}") from exc
    return _parse_manifest(path, text, sidecar.name)


def read_manifest(path: Path) -> Manifest:
    """The (unverified) manifest of a review file: the XLSX's hidden sheet or the CSV's sidecar."""
    path = Path(path)
    _check_path(path)
    embedded = _xlsx_records(path)[1] if path.suffix.lower() == ".xlsx" else None
    return _manifest_of(path, embedded)


# ---------------------------------------------------------------------------------------------------------
# import


@dataclass(frozen=True)
class AppliedDecision:
    """A decision written to the ledger; `decision` is approved, rejected or first_approval (four eyes)."""

    file: Path
    row: int
    action_id: str
    decision: str
    approver_email: str
    message_edited: bool = False


@dataclass(frozen=True)
class DuplicateDecision(AppliedDecision):
    """A decision the ledger already holds from the same approver: nothing is written again."""


@dataclass(frozen=True)
class RejectedRow:
    file: Path
    row: int
    field: str
    value: str
    message: str


@dataclass(frozen=True)
class RejectedFile:
    file: Path
    message: str


@dataclass
class ImportReport:
    """What one import did, file by file and row by row."""

    as_of: datetime
    files: list[Path] = field(default_factory=list)
    applied: list[AppliedDecision] = field(default_factory=list)
    duplicates: list[DuplicateDecision] = field(default_factory=list)
    undecided: int = 0
    rejected_rows: list[RejectedRow] = field(default_factory=list)
    rejected_files: list[RejectedFile] = field(default_factory=list)

    @property
    def has_errors(self) -> bool:
        return bool(self.rejected_rows or self.rejected_files)

    def summary_lines(self) -> list[str]:
        counts = {
            kind: sum(1 for a in self.applied if a.decision == kind) for kind in ("approved", "rejected")
        }
        first = sum(1 for a in self.applied if a.decision == "first_approval")
        edited = sum(1 for a in self.applied if a.message_edited)
        lines = [
            f"review import as of {self.as_of:%Y-%m-%d %H:%M}: {len(self.files)} file(s) read, "
            f"{len(self.applied)} decision(s) applied ({counts['approved']} approved, {counts['rejected']} "
            f"rejected, {first} first of two approvals), {edited} with an edited message, "
            f"{len(self.duplicates)} already recorded, {self.undecided} undecided, "
            f"{len(self.rejected_rows)} row(s) refused, {len(self.rejected_files)} file(s) refused"
        ]
        lines.extend(f"  {f.message}" for f in self.rejected_files)
        lines.extend(f"  {r.message}" for r in self.rejected_rows)
        return lines


def _next_action(decision_event: str, maturity_level: Any) -> str:
    if decision_event == "rejected":
        return "none"
    return "dispatch" if (maturity_level or 0) >= 3 else "owner acts by hand"


class _Refuse(Exception):
    """One row refused: the field and value at fault and why (internal control flow of `_FileImport`)."""

    def __init__(self, field_name: str, value: str, why: str) -> None:
        super().__init__(why)
        self.field_name, self.value, self.why = field_name, value, why


def _message_in_row(values: Mapping[str, str], history: _History) -> tuple[str | None, str | None]:
    """The row's subject and body as the approver left them (a missing column keeps the current text)."""
    subject = _unneutralise(values["subject"]) if "subject" in values else history.subject
    body = _unneutralise(values["message"]) if "message" in values else history.body
    return subject, body


def _matches_issued(values: Mapping[str, str], history: _History, issued_digest: str) -> bool:
    # the row may carry the text with or without our protective apostrophe; either form is "as issued"
    subjects = (
        {values["subject"], _unneutralise(values["subject"])} if "subject" in values else {history.subject}
    )
    bodies = {values["message"], _unneutralise(values["message"])} if "message" in values else {history.body}
    return any(message_digest(s, b) == issued_digest for s in subjects for b in bodies)


@dataclass
class _FileImport:
    """The checks and events of one verified review file."""

    con: duckdb.DuckDBPyConnection
    path: Path
    as_of: datetime
    policy: ApprovalPolicy
    manifest: Manifest
    report: ImportReport
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    histories: dict[str, _History] = field(default_factory=dict)
    events: list[ledger.LedgerEvent] = field(default_factory=list)
    applied: list[AppliedDecision] = field(default_factory=list)
    in_this_file: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def approver(self) -> str:
        return norm_email(self.manifest.approver)

    def load(self, rows: Sequence[_SheetRow]) -> None:
        action_ids = sorted({r.values.get("action_id", "") for r in rows} & set(self.manifest.actions))
        self.states = {s["action_id"]: s for s in ledger.states(self.con, action_ids=action_ids)}
        self.histories = _histories(self.con, action_ids)

    def refuse(self, row: int, refusal: _Refuse) -> None:
        message = (
            f"{self.path.name} row {row}: {refusal.field_name} {refusal.value!r} {refusal.why}; row ignored"
        )
        self.report.rejected_rows.append(
            RejectedRow(self.path, row, refusal.field_name, refusal.value, message)
        )

    def row(self, row: _SheetRow) -> None:
        values = row.values
        if not any(values.values()):
            return  # a blank line, not an action left undecided
        raw_decision = values.get("decision", "")
        if not raw_decision.strip():
            self.report.undecided += 1
            return
        try:
            self._decide(row.number, values, raw_decision)
        except _Refuse as refusal:
            self.refuse(row.number, refusal)

    def _decide(self, number: int, values: Mapping[str, str], raw_decision: str) -> None:
        # formulas first: nothing from a cell that would run in a spreadsheet is taken at face value
        for name in (*EDITABLE_COLUMNS, "approver_email"):
            if values.get(name, "").startswith(_FORMULA_PREFIXES):
                raise _Refuse(
                    name,
                    values[name],
                    "starts with a formula character (= + - @); spreadsheet formulas are refused in review "
                    "files, write plain text (nothing of this row was applied)",
                )
        decision = raw_decision.strip().lower()
        if decision not in DECISIONS:
            raise _Refuse("decision", raw_decision, "is not approve or reject (leave empty to decide later)")
        action_id = values.get("action_id", "")
        if not action_id:
            raise _Refuse("action_id", action_id, "is empty")
        issued = self.manifest.actions.get(action_id)
        if issued is None:
            raise _Refuse(
                "action_id",
                action_id,
                f"was not issued to {self.approver} in this file (its signed manifest lists "
                f"{len(self.manifest.actions)} action(s))",
            )
        raw_approver = values.get("approver_email", "")
        if raw_approver and norm_email(raw_approver) != self.approver:
            raise _Refuse(
                "approver_email",
                raw_approver,
                f"differs from the approver this file was issued to ({self.approver})",
            )
        state = self.states.get(action_id)
        if state is None:
            raise _Refuse("action_id", action_id, "is not in the ledger")
        for name in PROTECTED_COLUMNS:
            if name in values and normalise_text(_unneutralise(values[name])) != normalise_text(
                _protected_value(state, name)
            ):
                raise _Refuse(
                    name,
                    values[name],
                    f"differs from the issued value {_protected_value(state, name)!r} for action {action_id}; "
                    "this column is protected and cannot be changed",
                )
        rule_id = state.get("rule_id")
        allowed = _deciders(self.policy, state)
        if self.approver not in allowed:
            raise _Refuse(
                "approver_email",
                raw_approver or self.approver,
                f"may not decide action {action_id} (rule {rule_id}; allowed: {', '.join(sorted(allowed)) or 'nobody'})",
            )
        event_type = "approved" if decision == "approve" else "rejected"
        history = self.histories[action_id]

        earlier_here = self.in_this_file.get(action_id)
        if earlier_here is not None:
            if earlier_here[0] == event_type:
                self.report.duplicates.append(
                    DuplicateDecision(self.path, number, action_id, event_type, self.approver)
                )
                return
            raise _Refuse(
                "decision",
                raw_decision,
                f"conflicts with row {earlier_here[1]} of this file for action {action_id} ({earlier_here[0]})",
            )
        recorded = history.decision
        if recorded is not None:
            if recorded["event_type"] == event_type and self.approver in recorded["approvers"]:
                self.report.duplicates.append(
                    DuplicateDecision(self.path, number, action_id, event_type, self.approver)
                )
                return
            source = f" from {recorded['file']} row {recorded['row']}" if recorded.get("file") else ""
            raise _Refuse(
                "decision",
                raw_decision,
                f"conflicts with the decision already recorded for action {action_id}: {recorded['event_type']} "
                f"by {recorded['approver']}{source} at {_text(recorded['at'])}; the first recorded decision "
                f"stands (current state {state.get('event_type')})",
            )
        expires = history.review_expires_at()
        if state.get("event_type") == "expired" or self.as_of >= expires:
            raise _Refuse(
                "expires_at",
                _text(expires),
                f"has passed: the review of action {action_id} expired, so its decision is refused "
                f"(current state {state.get('event_type')})",
            )
        if state.get("event_type") != "pending_review":
            raise _Refuse(
                "action_id",
                action_id,
                f"is no longer waiting for review (current state {state.get('event_type')})",
            )
        comment = values.get("comment", "").strip() or None
        if event_type == "rejected":
            # a "no" needs no second opinion and no message; a stale or edited message does not matter
            self._record(number, state, "rejected", comment, {}, edited=False)
            return

        four_eyes = self.policy.four_eyes(rule_id)
        first = history.first_approval
        if (
            four_eyes
            and first
            and norm_email(first.get("approver")) == self.approver
            and _matches_issued(values, history, str(first.get("message_sha256", "")))
        ):
            # this approver's first approval of this very text is already recorded (a re-sent file)
            self.report.duplicates.append(
                DuplicateDecision(self.path, number, action_id, "first_approval", self.approver)
            )
            return
        if issued.message_sha256 != history.digest:
            changed_by = first or {}
            raise _Refuse(
                "message",
                normalise_text(values.get("message", ""))[:60],
                f"is not the current message of action {action_id}: "
                f"{changed_by.get('approver', 'another approver')} changed it (from "
                f"{changed_by.get('file', 'another file')}) after this file was issued; decide it "
                "in the next review table",
            )
        edited = not _matches_issued(values, history, issued.message_sha256)
        subject, body = _message_in_row(values, history) if edited else (history.subject, history.body)
        if edited and not normalise_text(body):
            raise _Refuse(
                "message", values.get("message", ""), "is empty; write the message or leave it as issued"
            )
        carry = {}
        if edited or history.message_changed:
            # the dispatcher must send the approved text, not the proposal's
            carry = {"message_subject": normalise_text(subject), "message_body": normalise_text(body)}

        if not four_eyes:
            self._record(number, state, "approved", comment, carry, edited=edited)
            return
        if edited or first is None:
            # four eyes: this approval is the first of two (an edit restarts the count: the earlier
            # approver did not see the new text)
            self._first_approval(number, state, history, comment, carry, edited)
            return
        if norm_email(first.get("approver")) == self.approver:
            self.report.duplicates.append(
                DuplicateDecision(self.path, number, action_id, "first_approval", self.approver)
            )
            return
        self._record(number, state, "approved", comment, carry, edited=False, first_approval=first)

    def _record(
        self,
        number: int,
        state: dict[str, Any],
        event_type: str,
        comment: str | None,
        carry: Mapping[str, str],
        edited: bool,
        first_approval: Mapping[str, Any] | None = None,
    ) -> None:
        details: dict[str, Any] = {"review_file": self.path.name, "row": number}
        if edited:
            details["message_edited_by"] = self.approver
        if first_approval:
            details["first_approval"] = dict(first_approval)
        self.events.append(
            ledger.next_event(
                state,
                event_type,
                self.as_of,
                actor=self.approver,
                approver_email=self.approver,
                result=comment,
                next_action=_next_action(event_type, state.get("maturity_level")),
                details=details,
                **carry,
            )
        )
        self._applied(number, state["action_id"], event_type, edited)

    def _first_approval(
        self,
        number: int,
        state: dict[str, Any],
        history: _History,
        comment: str | None,
        carry: Mapping[str, str],
        edited: bool,
    ) -> None:
        action_id = state["action_id"]
        digest = message_digest(
            carry.get("message_subject", history.subject), carry.get("message_body", history.body)
        )
        first = {
            "approver": self.approver,
            "file": self.path.name,
            "row": number,
            "at": _text(self.as_of),
            "message_sha256": digest,
            "comment": comment,
        }
        self.events.append(
            ledger.next_event(
                state,
                "pending_review",
                self.as_of,
                actor=self.approver,
                approver_email=self.approver,
                result=comment,
                next_action=f"a second approver (not {self.approver}) approves or rejects in the review table",
                # pending_review's default id is one per day; a first approval gets its own, stable per
                # approver and message, so it neither collides with the review request nor repeats
                event_id=ledger.event_id_for(
                    action_id, "pending_review", f"first_approval|{self.approver}|{digest}"
                ),
                details={
                    "first_approval": first,
                    # carried so the review's deadline stays the one set when it was requested
                    "review_expires_at": _text(history.review_expires_at()),
                    **({"message_edited_by": self.approver} if edited else {}),
                },
                **carry,
            )
        )
        self._applied(number, action_id, "first_approval", edited)

    def _applied(self, number: int, action_id: str, decision: str, edited: bool) -> None:
        self.applied.append(AppliedDecision(self.path, number, action_id, decision, self.approver, edited))
        self.in_this_file[action_id] = ("rejected" if decision == "rejected" else "approved", number)


def _import_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    as_of: datetime,
    policy: ApprovalPolicy,
    key: bytes,
    report: ImportReport,
) -> None:
    _, rows, embedded = _read_table(path)
    manifest = _manifest_of(path, embedded)
    if not manifest.verify(key):
        raise ReviewFileError(
            f"{path.name}: manifest signature does not match its content (forged or altered manifest, or "
            f"signed with another {policy.secret_env}); field signature"
        )
    if as_of >= manifest.expires_at:
        raise ReviewFileError(
            f"{path.name}: file expired at {_text(manifest.expires_at)} (issued to {manifest.approver} at "
            f"{_text(manifest.issued_at)}); field expires_at; ask for a fresh review table"
        )
    work = _FileImport(con=con, path=path, as_of=as_of, policy=policy, manifest=manifest, report=report)
    work.load(rows)
    for row in rows:
        work.row(row)

    # one transaction per file: either every valid decision of the file is recorded or none is
    con.begin()
    try:
        ledger.append(con, work.events)
        con.commit()
    except Exception:
        con.rollback()
        raise
    report.applied.extend(work.applied)
    report.files.append(path)


def import_reviews(con: duckdb.DuckDBPyConnection, files: Sequence[Path], as_of: datetime) -> ImportReport:
    """Turn the decisions in review files into ledger events (`approved`, `rejected`, or a four-eyes
    first approval recorded as `pending_review`).

    Raises `ReviewSecretError` before reading any file when the signing key is not set, and
    `ReviewConfigError` when the approval policy is invalid. A file that cannot be used (unsupported type,
    unreadable, empty, required columns missing, manifest missing, forged or expired) is refused whole.
    Inside a usable file, bad rows are refused one by one and the valid rows are applied. Importing the
    same file again records nothing new.
    """
    policy = load_policy()
    key = review_secret(policy.secret_env)
    report = ImportReport(as_of=as_of)
    for path in files:
        path = Path(path)
        try:
            _import_file(con, path, as_of, policy, key, report)
        except ReviewFileError as exc:
            report.rejected_files.append(RejectedFile(path, f"{exc}; nothing from this file was applied"))
    return report
