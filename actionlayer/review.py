"""Review tables: export pending actions to their approvers, and record their decisions in the ledger.

Export writes, per approver, one XLSX and one CSV listing the actions in ledger state `pending_review` that
the person may decide. Import reads such files back (CSV or XLSX, possibly edited by hand) and appends one
`approved` or `rejected` event per valid decision. Nothing here changes or deletes a ledger row.

Formula injection: every exported text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage
return gets a leading apostrophe, in the XLSX and in the CSV alike, so a spreadsheet shows it as text
and never evaluates it. The XLSX is additionally written with `write_string`, so no cell is ever a formula.
The apostrophe stays visible in the cell; only the free-text columns can start with these characters.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import fastexcel
import xlsxwriter
import yaml

from actionlayer import ledger
from actionlayer.config import settings_file

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
    "decision",
    "approver_email",
    "comment",
)
# The columns an approver fills in; the others are context and ignored on import.
FILL_IN_COLUMNS: tuple[str, ...] = ("decision", "approver_email", "comment")
REQUIRED_IMPORT_COLUMNS: tuple[str, ...] = ("action_id", "decision", "approver_email")
DECISIONS: tuple[str, ...] = ("approve", "reject")
SUPPORTED_SUFFIXES: tuple[str, ...] = (".csv", ".xlsx")

REVIEW_SHEET = "review"
INSTRUCTIONS_SHEET = "instructions"

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# Excel's hard limit for one cell; longer text would be cut by the writer without saying so.
_XLSX_CELL_LIMIT = 32_767
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
    "decision": 12,
    "approver_email": 28,
    "comment": 40,
}


class ReviewFileError(ValueError):
    """A review file that cannot be used at all; the message names the file and what is wrong."""


class ReviewConfigError(ValueError):
    """`actionlayer.yml` has an `approvers` section that cannot be understood."""


# ---------------------------------------------------------------------------------------------------------
# helpers shared by export and import


def neutralise(value: str) -> str:
    """Text a spreadsheet will show as-is: a leading formula character gets an apostrophe in front."""
    return "'" + value if value.startswith(_FORMULA_PREFIXES) else value


def approver_slug(email: str) -> str:
    """A file-name-safe form of an email address (`Bob.Smith@Example.com` → `bob-smith-example-com`)."""
    slug = re.sub(r"[^a-z0-9]+", "-", email.strip().lower()).strip("-")
    return slug or "unknown"


def _norm_email(value: Any) -> str:
    return str(value).strip().lower() if value is not None else ""


def configured_approvers(path: Path | None = None) -> dict[str, frozenset[str]]:
    """Extra approvers per rule from the `approvers:` section of `actionlayer.yml` (missing file → none)."""
    target = path if path is not None else settings_file()
    if not target.is_file():
        return {}
    try:
        settings = yaml.safe_load(target.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ReviewConfigError(f"{target}: cannot read settings: {exc}") from exc
    if not isinstance(settings, Mapping):
        raise ReviewConfigError(
            f"{target}: expected a mapping at the top level, got {type(settings).__name__}"
        )
    section = settings.get("approvers") or {}
    if not isinstance(section, Mapping):
        raise ReviewConfigError(
            f"{target}: 'approvers' must map rule ids to lists of emails, got {type(section).__name__}"
        )
    result: dict[str, frozenset[str]] = {}
    for rule_id, emails in section.items():
        if isinstance(emails, str):
            emails = [emails]
        if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
            raise ReviewConfigError(f"{target}: approvers.{rule_id} must be a list of email addresses")
        result[str(rule_id)] = frozenset(_norm_email(e) for e in emails if e.strip())
    return result


def _approvers_of(state: Mapping[str, Any], extra: Mapping[str, frozenset[str]]) -> set[str]:
    people = set(extra.get(str(state.get("rule_id")), frozenset()))
    owner = _norm_email(state.get("owner_email"))
    if owner:
        people.add(owner)
    return people


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


# ---------------------------------------------------------------------------------------------------------
# export


@dataclass
class ExportReport:
    """What one export wrote."""

    as_of: datetime
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    rows_per_approver: dict[str, int] = field(default_factory=dict)
    actions: int = 0
    unrouted: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        lines = [
            f"review export as of {self.as_of:%Y-%m-%d %H:%M}: {self.actions} action(s) pending review, "
            f"{len(self.rows_per_approver)} approver(s), {len(self.files)} file(s) in {self.out_dir}"
        ]
        for approver, count in sorted(self.rows_per_approver.items()):
            lines.append(f"  {approver}: {count} action(s)")
        if self.unrouted:
            lines.append(
                f"  {len(self.unrouted)} action(s) pending review have no owner and no configured approver, "
                f"so nobody can decide them: {', '.join(self.unrouted[:10])}"
                + (" ..." if len(self.unrouted) > 10 else "")
            )
        return lines


def _review_row(state: Mapping[str, Any], approver: str) -> dict[str, str]:
    return {
        "action_id": _text(state.get("action_id")),
        "rule_id": _text(state.get("rule_id")),
        "record_type": _text(state.get("record_type")),
        "record_id": _text(state.get("record_id")),
        "contact_id": _text(state.get("contact_id")),
        "owner_email": _text(state.get("owner_email")),
        "recommended_action": _text(state.get("recommended_action")),
        "recipient": _text(state.get("recipient") or state.get("proposed_recipient")),
        # the latest event may restate the message; the proposal's is the fallback
        "subject": _text(state.get("message_subject") or state.get("proposed_subject")),
        "message": _text(state.get("message_body") or state.get("proposed_body")),
        "reason": _text(state.get("reason")),
        "proposed_at": _text(state.get("proposed_at")),
        "decision": "",
        "approver_email": approver,
        "comment": "",
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
    # utf-8-sig: the BOM makes Excel open the file as UTF-8; csv's default \r\n line ends follow RFC 4180
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([neutralise(_text(row.get(name))) for name in columns])


def write_review_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write review rows as a CSV in the export's format (REVIEW_COLUMNS first, then any extra keys)."""
    materialised = list(rows)
    extra = [k for row in materialised for k in row if k not in REVIEW_COLUMNS]
    columns = [*REVIEW_COLUMNS, *dict.fromkeys(extra)]
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(path, lambda tmp: _write_csv(tmp, materialised, columns))


def _write_xlsx(path: Path, rows: Sequence[Mapping[str, str]], approver: str, as_of: datetime) -> None:
    workbook = xlsxwriter.Workbook(str(path), {"strings_to_formulas": False, "strings_to_numbers": False})
    try:
        header = workbook.add_format({"bold": True, "bg_color": "#DDE4EE", "border": 1})
        fill_header = workbook.add_format({"bold": True, "bg_color": "#FFF2CC", "border": 1})
        wrap = workbook.add_format({"text_wrap": True, "valign": "top"})
        top = workbook.add_format({"valign": "top"})
        fill = workbook.add_format({"valign": "top", "bg_color": "#FFFBEA"})

        sheet = workbook.add_worksheet(REVIEW_SHEET)
        for col, name in enumerate(REVIEW_COLUMNS):
            sheet.write_string(0, col, name, fill_header if name in FILL_IN_COLUMNS else header)
            cell_format = wrap if name in {"message", "reason"} else top
            sheet.set_column(
                col, col, _COLUMN_WIDTHS.get(name, 16), fill if name in FILL_IN_COLUMNS else cell_format
            )
        for row_index, row in enumerate(rows, start=1):
            for col, name in enumerate(REVIEW_COLUMNS):
                value = neutralise(row[name])[:_XLSX_CELL_LIMIT]
                if value:
                    sheet.write_string(row_index, col, value)
        sheet.freeze_panes(1, 0)
        last_row = max(len(rows), 1)
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

        notes = workbook.add_worksheet(INSTRUCTIONS_SHEET)
        notes.set_column(0, 0, 110)
        bold = workbook.add_format({"bold": True})
        notes.write_string(0, 0, f"Review table for {approver}, exported {as_of:%Y-%m-%d %H:%M} UTC", bold)
        lines = [
            "1. On the 'review' sheet, set 'decision' to approve or reject for each action you decide.",
            "2. Leave 'decision' empty for actions you do not want to decide yet; they stay pending.",
            "3. 'approver_email' is pre-filled with your address; it must be the action's owner or a",
            "   configured approver for its rule, otherwise the row is refused.",
            "4. 'comment' is optional and is stored with your decision.",
            "5. Do not change action_id or the header row. Other columns are context and are ignored.",
            "6. Save as .xlsx or .csv and hand the file back. Re-sending the same file changes nothing.",
            "",
            "Text starting with = + - or @ is shown with a leading apostrophe so it never runs as a formula.",
        ]
        for index, line in enumerate(lines, start=2):
            if line:
                notes.write_string(index, 0, line)
    finally:
        workbook.close()


def export_reviews(con: duckdb.DuckDBPyConnection, out_dir: Path, as_of: datetime) -> ExportReport:
    """Write one XLSX and one CSV per approver with every action currently pending their review."""
    extra = configured_approvers()
    pending = ledger.states(con, event_types=["pending_review"])
    pending.sort(key=lambda s: (s.get("proposed_at") or datetime.min, str(s.get("action_id"))))

    per_approver: dict[str, list[dict[str, str]]] = {}
    report = ExportReport(as_of=as_of, out_dir=out_dir, actions=len(pending))
    for state in pending:
        people = _approvers_of(state, extra)
        if not people:
            report.unrouted.append(str(state["action_id"]))
        for person in sorted(people):
            per_approver.setdefault(person, []).append(_review_row(state, person))

    # two addresses can share a slug (a.b@x vs a-b@x); a hash suffix keeps their files apart
    slugs: dict[str, list[str]] = {}
    for person in per_approver:
        slugs.setdefault(approver_slug(person), []).append(person)
    file_stem: dict[str, str] = {}
    for slug, people in slugs.items():
        for person in people:
            suffix = "" if len(people) == 1 else "-" + hashlib.sha1(person.encode()).hexdigest()[:6]
            file_stem[person] = f"review_{slug}{suffix}_{as_of:%Y%m%dT%H%M}"

    out_dir.mkdir(parents=True, exist_ok=True)
    for person in sorted(per_approver):
        rows = per_approver[person]
        xlsx_path = out_dir / f"{file_stem[person]}.xlsx"
        csv_path = out_dir / f"{file_stem[person]}.csv"
        _replace_atomically(
            xlsx_path, lambda tmp, rows=rows, person=person: _write_xlsx(tmp, rows, person, as_of)
        )
        _replace_atomically(csv_path, lambda tmp, rows=rows: _write_csv(tmp, rows, REVIEW_COLUMNS))
        report.files.extend([xlsx_path, csv_path])
        report.rows_per_approver[person] = len(rows)
    return report


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


def _xlsx_records(path: Path) -> list[list[str]]:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ReviewFileError(f"{path.name}: cannot read file: {exc}") from exc
    if size == 0:
        raise ReviewFileError(f"{path.name}: file is empty")
    try:
        reader = fastexcel.read_excel(path)
        # a person's own workbook may name the sheet differently; then its first sheet holds the table
        sheet_name = REVIEW_SHEET if REVIEW_SHEET in reader.sheet_names else 0
        # header_row=None with skip_rows=0 keeps leading and inner blank rows, so row numbers match the sheet
        sheet = reader.load_sheet(sheet_name, header_row=None, skip_rows=0, dtypes="string")
        frame = sheet.to_polars()
    except Exception as exc:  # fastexcel/calamine raise their own types for every kind of corrupt file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReviewFileError(f"{path.name}: not a readable XLSX workbook ({first_line})") from exc
    return [["" if cell is None else str(cell) for cell in row] for row in frame.iter_rows()]


def _read_table(path: Path) -> tuple[list[str], list[_SheetRow]]:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ReviewFileError(
            f"{path.name}: unsupported file type {path.suffix or '(none)'!r}; "
            f"use {' or '.join(SUPPORTED_SUFFIXES)}"
        )
    if not path.is_file():
        raise ReviewFileError(f"{path.name}: no such file ({path})")
    records = _csv_records(path) if suffix == ".csv" else _xlsx_records(path)
    return _table_from_records(path, records)


def read_review_rows(path: Path) -> list[dict[str, str]]:
    """The data rows of a review file (CSV or XLSX) as header → text; raises `ReviewFileError` if unusable."""
    header, rows = _read_table(path)
    names = [name for name in dict.fromkeys(header) if name]
    return [{name: row.values.get(name, "") for name in names} for row in rows if any(row.values.values())]


# ---------------------------------------------------------------------------------------------------------
# import


@dataclass(frozen=True)
class AppliedDecision:
    file: Path
    row: int
    action_id: str
    decision: str
    approver_email: str


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
        approved = sum(1 for a in self.applied if a.decision == "approved")
        lines = [
            f"review import as of {self.as_of:%Y-%m-%d %H:%M}: {len(self.files)} file(s) read, "
            f"{len(self.applied)} decision(s) applied ({approved} approved, {len(self.applied) - approved} "
            f"rejected), {len(self.duplicates)} already recorded, {self.undecided} undecided, "
            f"{len(self.rejected_rows)} row(s) refused, {len(self.rejected_files)} file(s) refused"
        ]
        lines.extend(f"  {f.message}" for f in self.rejected_files)
        lines.extend(f"  {r.message}" for r in self.rejected_rows)
        return lines


def _decision_events(con: duckdb.DuckDBPyConnection, action_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not action_ids:
        return {}
    placeholders = ", ".join("?" for _ in action_ids)
    cursor = con.execute(
        f"""
        select action_id, event_type, approver_email, actor, occurred_at
        from {ledger.LEDGER_TABLE}
        where event_type in ('approved', 'rejected') and action_id in ({placeholders})
        order by seq
        """,
        list(action_ids),
    )
    found: dict[str, dict[str, Any]] = {}
    for action_id, event_type, approver, actor, occurred_at in cursor.fetchall():
        # the first decision recorded is the one that counts
        found.setdefault(
            action_id,
            {"event_type": event_type, "approver": _norm_email(approver), "actor": actor, "at": occurred_at},
        )
    return found


def _next_action(decision_event: str, maturity_level: Any) -> str:
    if decision_event == "rejected":
        return "none"
    return "dispatch" if (maturity_level or 0) >= 3 else "owner acts by hand"


def _import_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    as_of: datetime,
    extra: Mapping[str, frozenset[str]],
    report: ImportReport,
) -> None:
    _, rows = _read_table(path)
    name = path.name
    action_ids = sorted({r.values.get("action_id", "") for r in rows} - {""})
    state_by_id = {s["action_id"]: s for s in ledger.states(con, action_ids=action_ids)}
    decided = _decision_events(con, action_ids)

    events: list[ledger.LedgerEvent] = []
    applied: list[AppliedDecision] = []
    in_this_file: dict[str, tuple[str, str, int]] = {}

    def refuse(row: int, field_name: str, value: str, why: str) -> None:
        message = f"{name} row {row}: {field_name} {value!r} {why}; row ignored"
        report.rejected_rows.append(RejectedRow(path, row, field_name, value, message))

    for row in rows:
        values = row.values
        action_id = values.get("action_id", "")
        raw_decision = values.get("decision", "")
        if not action_id and not raw_decision and not values.get("approver_email", ""):
            continue  # a blank line, not an action left undecided
        decision = raw_decision.strip().lower()
        if not decision:
            report.undecided += 1
            continue
        if decision not in DECISIONS:
            refuse(
                row.number, "decision", raw_decision, "is not approve or reject (leave empty to decide later)"
            )
            continue
        if not action_id:
            refuse(row.number, "action_id", action_id, "is empty")
            continue
        state = state_by_id.get(action_id)
        if state is None:
            refuse(row.number, "action_id", action_id, "is not a known action")
            continue
        raw_approver = values.get("approver_email", "")
        approver = _norm_email(raw_approver)
        if not approver:
            refuse(row.number, "approver_email", raw_approver, "is empty; fill in who decides")
            continue
        allowed = _approvers_of(state, extra)
        if approver not in allowed:
            refuse(
                row.number,
                "approver_email",
                raw_approver,
                f"may not decide action {action_id} (rule {state.get('rule_id')}; allowed: "
                f"{', '.join(sorted(allowed)) or 'nobody'})",
            )
            continue
        event_type = "approved" if decision == "approve" else "rejected"

        earlier_here = in_this_file.get(action_id)
        if earlier_here is not None:
            if earlier_here[:2] == (event_type, approver):
                report.duplicates.append(DuplicateDecision(path, row.number, action_id, event_type, approver))
            else:
                refuse(
                    row.number,
                    "decision",
                    raw_decision,
                    f"conflicts with row {earlier_here[2]} of this file for action {action_id} "
                    f"({earlier_here[0]} by {earlier_here[1]})",
                )
            continue
        earlier = decided.get(action_id)
        if earlier is not None:
            if (earlier["event_type"], earlier["approver"]) == (event_type, approver):
                report.duplicates.append(DuplicateDecision(path, row.number, action_id, event_type, approver))
            else:
                who = earlier["approver"] or earlier["actor"]
                refuse(
                    row.number,
                    "decision",
                    raw_decision,
                    f"cannot apply: action {action_id} was already {earlier['event_type']} by {who} "
                    f"at {_text(earlier['at'])}; current state {state.get('event_type')}",
                )
            continue
        if state.get("event_type") != "pending_review":
            refuse(
                row.number,
                "action_id",
                action_id,
                f"is no longer waiting for review (current state {state.get('event_type')})",
            )
            continue

        comment = values.get("comment", "").strip() or None
        events.append(
            ledger.next_event(
                state,
                event_type,
                as_of,
                actor=approver,
                approver_email=approver,
                result=comment,
                next_action=_next_action(event_type, state.get("maturity_level")),
                details={"review_file": name, "row": row.number},
            )
        )
        applied.append(AppliedDecision(path, row.number, action_id, event_type, approver))
        in_this_file[action_id] = (event_type, approver, row.number)

    # one transaction per file: either every valid decision of the file is recorded or none is
    con.begin()
    try:
        ledger.append(con, events)
        con.commit()
    except Exception:
        con.rollback()
        raise
    report.applied.extend(applied)
    report.files.append(path)


def import_reviews(con: duckdb.DuckDBPyConnection, files: Sequence[Path], as_of: datetime) -> ImportReport:
    """Turn the decisions in review files into `approved`/`rejected` ledger events.

    A file that cannot be used (unsupported type, unreadable, empty, required columns missing) is refused
    whole. Inside a usable file, bad rows are refused one by one and the valid rows are applied. Importing
    the same file again records nothing new.
    """
    extra = configured_approvers()
    report = ImportReport(as_of=as_of)
    for path in files:
        path = Path(path)
        try:
            _import_file(con, path, as_of, extra, report)
        except ReviewFileError as exc:
            report.rejected_files.append(RejectedFile(path, f"{exc}; nothing from this file was applied"))
    return report
