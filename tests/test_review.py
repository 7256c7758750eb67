"""Review tables: export per approver (locked, signed, summarised), import of decisions, edited messages,
four eyes, the approval policy, and every way a returned file can be unusable.

Tampering with a returned file is covered case by case in test_review_tampering.py, which reuses the
seed and the fill-in helpers of this module.
"""

from __future__ import annotations

import csv
import json
import os
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import fastexcel
import polars as pl
import pytest
import xlsxwriter

from actionlayer import config, ledger
from actionlayer.review import (
    EDITABLE_COLUMNS,
    INSTRUCTIONS_SHEET,
    MANIFEST_SHEET,
    NEEDS_CHECKING_SHEET,
    REVIEW_COLUMNS,
    REVIEW_SHEET,
    SUMMARY_SHEET,
    ExportReport,
    ImportReport,
    ReviewSecretError,
    export_reviews,
    import_reviews,
    manifest_path_for,
    read_manifest,
    read_review_rows,
    write_review_csv,
)
from actionlayer.review_policy import ReviewConfigError, load_policy

T0 = datetime(2026, 11, 20, 9, 0)
AS_OF = datetime(2026, 11, 23, 9, 0)
ALICE = "alice@example.com"
BOB = "bob@example.com"
MANAGER = "manager@example.com"
# set explicitly by every test (never a default in the code); 64 hex characters like a real one
SECRET = "3f1c9a7be2d64f0a8c5b1e97d2a4f6c03b8e1d7a9c2f5e4b6a1d0c9e8f7a6b5c"
SECRET_ENV = "ACTIONLAYER_REVIEW_SECRET"

# action_id → (rule_id, maturity_level, owner, final state)
ACTIONS = {
    "act-followup-1": ("quote_followup", 3, ALICE, "pending_review"),
    "act-followup-2": ("quote_followup", 3, ALICE, "pending_review"),
    "act-dunning-1": ("invoice_dunning", 2, BOB, "pending_review"),
    "act-dunning-2": ("invoice_dunning", 2, BOB, "pending_review"),
    "act-followup-3": ("quote_followup", 1, BOB, "proposed"),
    "act-dunning-old": ("invoice_dunning", 3, BOB, "expired"),
    "act-sent-unknown": ("invoice_dunning", 3, BOB, "unknown"),
}
# review requests expire 7 days after T0 (the default when the event carries no deadline) except this one
SHORT_EXPIRY = {"act-followup-2": T0 + timedelta(days=4)}
INJECTED_SUBJECT = '=HYPERLINK("http://evil.example","click")'
INJECTED_BODY = "+cmd|' /C calc'!A0"


def _seed(con: duckdb.DuckDBPyConnection) -> None:
    ledger.ensure_schema(con)
    events = []
    for number, (action_id, (rule_id, level, owner, final)) in enumerate(ACTIONS.items()):
        subject = INJECTED_SUBJECT if action_id == "act-followup-1" else f"About record {number}"
        body = (
            INJECTED_BODY if action_id == "act-followup-1" else f"Hi, a note about record {number}.\nThanks"
        )
        proposed = ledger.LedgerEvent(
            action_id=action_id,
            event_type="proposed",
            occurred_at=T0 + timedelta(minutes=number),
            actor=f"rule:{rule_id}",
            rule_id=rule_id,
            rule_version=1,
            maturity_level=level,
            record_type="deal" if "followup" in rule_id else "invoice",
            record_id=f"rec-{number}",
            contact_id=f"con-{number}",
            owner_email=owner,
            reason='{"days_since_quote": 8}',
            recommended_action="Follow up" if "followup" in rule_id else "Chase the invoice",
            channel="email",
            recipient=f"customer{number}@example.org",
            message_subject=subject,
            message_body=body,
        )
        events.append(proposed)
        carried = (*ledger.IDENTITY_FIELDS, "channel", "recipient", "recommended_action", "reason")
        state = {"action_id": action_id, **{name: getattr(proposed, name) for name in carried}}
        if final in {"pending_review", "expired"}:
            details = (
                {"review_expires_at": str(SHORT_EXPIRY[action_id])} if action_id in SHORT_EXPIRY else None
            )
            events.append(ledger.next_event(state, "pending_review", T0, f"rule:{rule_id}", details=details))
        if final == "expired":
            events.append(ledger.next_event(state, "expired", T0 + timedelta(days=5), "system"))
        if final == "unknown":
            events.append(ledger.next_event(state, "approved", T0, "auto", approver_email="auto"))
            events.append(ledger.next_event(state, "sending", T0, "dispatcher", attempt=1))
            events.append(
                ledger.next_event(
                    state,
                    "unknown",
                    T0 + timedelta(hours=1),
                    "dispatcher",
                    attempt=1,
                    result="dispatch was interrupted after recording attempt 1 as sending through smtp",
                    next_action="a person checks: check whether the recipient received it",
                )
            )
    ledger.append(con, events)


@pytest.fixture()
def con(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[duckdb.DuckDBPyConnection]:
    # no approval policy unless a test writes its own actionlayer.yml; the signing key set explicitly
    monkeypatch.setenv("ACTIONLAYER_CONFIG", str(tmp_path / "absent.yml"))
    monkeypatch.setenv(SECRET_ENV, SECRET)
    connection = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    _seed(connection)
    yield connection
    connection.close()


def _settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, name: str = "actionlayer.yml"
) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("ACTIONLAYER_CONFIG", str(path))
    return path


def _ledger_rows(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute("select * exclude (recorded_at) from ops.action_ledger order by seq").fetchall()


def _count(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute("select count(*) from ops.action_ledger").fetchone()[0]


def _decisions(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, str, str, str | None, str]]:
    rows = con.execute(
        "select action_id, event_type, actor, approver_email, result, next_action from ops.action_ledger "
        "where event_type in ('approved', 'rejected') and actor <> 'auto'"
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def _state(con: duckdb.DuckDBPyConnection, action_id: str) -> dict:
    return ledger.states(con, action_ids=[action_id])[0]


def _exported(export: ExportReport, person: str, suffix: str) -> Path:
    slug = person.split("@")[0]
    return next(p for p in export.files if p.name.startswith(f"review_{slug}") and p.suffix == suffix)


def _filled_rows(
    source: Path,
    decisions: Mapping[str, str | tuple[str, str]],
    edits: Mapping[str, Mapping[str, str]] | None = None,
    extra_rows: Sequence[Mapping[str, str]] = (),
) -> list[dict[str, str]]:
    """The exported rows with decisions (action → decision or (decision, comment)) and edits applied."""
    rows = read_review_rows(source)
    for row in rows:
        chosen = decisions.get(row["action_id"], "")
        decision, comment = chosen if isinstance(chosen, tuple) else (chosen, "")
        row["decision"], row["comment"] = decision, comment
        row.update((edits or {}).get(row["action_id"], {}))
    # an extra row is a person's copy of the exported row of the same action, with their changes
    by_id = {row["action_id"]: row for row in rows}
    copies = [{**by_id.get(extra.get("action_id", ""), {}), **extra} for extra in extra_rows]
    return rows + copies


def fill_csv(
    source: Path,
    dest: Path,
    decisions: Mapping[str, str | tuple[str, str]],
    edits: Mapping[str, Mapping[str, str]] | None = None,
    extra_rows: Sequence[Mapping[str, str]] = (),
) -> Path:
    """What an approver returns as CSV: the exported rows filled in, saved with the export's manifest."""
    write_review_csv(dest, _filled_rows(source, decisions, edits, extra_rows), manifest_from=source)
    return dest


def fill_xlsx(
    source: Path,
    dest: Path,
    decisions: Mapping[str, str | tuple[str, str]],
    edits: Mapping[str, Mapping[str, str]] | None = None,
    extra_rows: Sequence[Mapping[str, str]] = (),
    blank_rows_before: int = 0,
    manifest_text: str | None = None,
) -> Path:
    """What an approver returns as XLSX: Excel keeps the hidden manifest sheet as exported."""
    rows = _filled_rows(source, decisions, edits, extra_rows)
    dest.parent.mkdir(parents=True, exist_ok=True)
    workbook = xlsxwriter.Workbook(str(dest), {"strings_to_formulas": False, "strings_to_numbers": False})
    sheet = workbook.add_worksheet(REVIEW_SHEET)
    sheet.write_row(0, 0, REVIEW_COLUMNS)
    for index, row in enumerate(rows, start=1 + blank_rows_before):
        for col, name in enumerate(REVIEW_COLUMNS):
            if row.get(name):
                sheet.write_string(index, col, row[name])
    hidden = workbook.add_worksheet(MANIFEST_SHEET)
    hidden.write_string(0, 0, manifest_text if manifest_text is not None else read_manifest(source).to_json())
    hidden.very_hidden()
    workbook.close()
    return dest


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _messages(report: ImportReport) -> str:
    return "\n".join(report.summary_lines())


# ---------------------------------------------------------------------------------------------------------
# export


def test_export_writes_one_xlsx_one_csv_and_one_manifest_per_approver(con, tmp_path: Path) -> None:
    out = tmp_path / "outbox"
    report = export_reviews(con, out, AS_OF)

    stamp = "20261123T0900"
    tables = {
        f"review_{who}-example-com_{stamp}{ext}" for who in ("alice", "bob") for ext in (".xlsx", ".csv")
    }
    sidecars = {f"review_{who}-example-com_{stamp}.manifest.json" for who in ("alice", "bob")}
    assert {p.name for p in report.files} == tables
    assert {p.name for p in report.manifests} == sidecars
    assert {p.name for p in out.iterdir()} == tables | sidecars
    assert report.rows_per_approver == {ALICE: 2, BOB: 2}
    assert report.needs_checking_per_approver == {BOB: 1}
    assert report.actions == 4 and not report.unrouted
    assert any("alice@example.com: 2" in line for line in report.summary_lines())
    assert any("bob@example.com: 2 action(s), 1 send(s) to check" in line for line in report.summary_lines())

    owned = {ALICE: {"act-followup-1", "act-followup-2"}, BOB: {"act-dunning-1", "act-dunning-2"}}
    for person in (ALICE, BOB):
        xlsx = _exported(report, person, ".xlsx")
        frame = pl.read_excel(xlsx, sheet_name=REVIEW_SHEET, infer_schema_length=0)
        assert tuple(frame.columns) == REVIEW_COLUMNS
        assert set(frame["action_id"]) == owned[person]
        assert set(frame["approver_email"]) == {person}
        assert frame["decision"].null_count() == frame.height
        assert fastexcel.read_excel(xlsx).sheet_names == [
            REVIEW_SHEET,
            SUMMARY_SHEET,
            NEEDS_CHECKING_SHEET,
            INSTRUCTIONS_SHEET,
            MANIFEST_SHEET,
        ]

        csv_path = _exported(report, person, ".csv")
        csv_rows = read_review_rows(csv_path)
        assert tuple(csv_rows[0]) == REVIEW_COLUMNS
        assert {r["action_id"] for r in csv_rows} == owned[person]
        assert all(r["owner_email"] == person and r["decision"] == "" for r in csv_rows)
        assert all(r["recommended_action"] and r["subject"] and r["proposed_at"] for r in csv_rows)

        # both files carry the same signed manifest: approver, action ids, message hashes, expiry
        manifest = read_manifest(csv_path)
        assert manifest == read_manifest(xlsx)
        assert manifest.approver == person and set(manifest.actions) == owned[person]
        assert manifest.issued_at == AS_OF and manifest.expires_at == T0 + timedelta(days=7)
        assert len(manifest.signature) == 64
        assert SECRET not in manifest_path_for(csv_path).read_text(encoding="utf-8")

    # each row carries its own review expiry; the short one is the ledger's review_expires_at
    expiries = {r["action_id"]: r["expires_at"] for r in read_review_rows(_exported(report, ALICE, ".csv"))}
    assert expiries == {"act-followup-1": "2026-11-27 09:00:00", "act-followup-2": "2026-11-24 09:00:00"}

    # frozen header and the approve/reject dropdown are in the sheet XML; the manifest sheet is very hidden
    with zipfile.ZipFile(_exported(report, BOB, ".xlsx")) as archive:
        sheet_xml = archive.read("xl/worksheets/sheet1.xml").decode()
        workbook_xml = archive.read("xl/workbook.xml").decode()
        assert SECRET not in "".join(archive.read(n).decode("utf-8", "replace") for n in archive.namelist())
    assert 'state="frozen"' in sheet_xml
    assert "<dataValidation " in sheet_xml and '"approve,reject"' in sheet_xml
    assert re.search(r'<sheet name="manifest"[^>]*state="veryHidden"', workbook_xml)

    # a multi-line message survives the CSV round trip
    bob_rows = read_review_rows(_exported(report, BOB, ".csv"))
    assert any("\n" in r["message"] for r in bob_rows)

    # same as_of again: same files overwritten, nothing new
    again = export_reviews(con, out, AS_OF)
    assert [p.name for p in again.files] == [p.name for p in report.files]
    assert {p.name for p in out.iterdir()} == tables | sidecars


def _unlocked_styles(archive: zipfile.ZipFile) -> set[int]:
    styles = archive.read("xl/styles.xml").decode()
    cell_xfs = re.search(r"<cellXfs[^>]*>(.*?)</cellXfs>", styles, re.S).group(1)
    xfs = re.findall(r"<xf\b[^>]*/>|<xf\b[^>]*>.*?</xf>", cell_xfs, re.S)
    return {index for index, xf in enumerate(xfs) if 'locked="0"' in xf}


def _cells(sheet_xml: str) -> dict[str, int]:
    """Cell reference → style index (0 when the cell has none)."""
    return {
        ref: int(style or 0) for ref, style in re.findall(r'<c r="([A-Z]+\d+)"(?: s="(\d+)")?', sheet_xml)
    }


def test_only_subject_message_decision_and_comment_cells_are_unlocked(con, tmp_path: Path) -> None:
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    with zipfile.ZipFile(_exported(export, ALICE, ".xlsx")) as archive:
        unlocked = _unlocked_styles(archive)
        sheets = {
            n: archive.read(n).decode() for n in archive.namelist() if n.startswith("xl/worksheets/sheet")
        }
    assert unlocked, "no unlocked cell style at all"
    # every sheet is protected (a person cannot type over context, totals or the manifest by accident)
    assert len(sheets) == 5 and all("<sheetProtection " in xml for xml in sheets.values())

    cells = _cells(sheets["xl/worksheets/sheet1.xml"])
    letters = {name: chr(ord("A") + i) for i, name in enumerate(REVIEW_COLUMNS)}
    for data_row in (2, 3):
        for name, letter in letters.items():
            ref = f"{letter}{data_row}"
            if name in EDITABLE_COLUMNS:
                assert cells.get(ref) in unlocked, f"{name} ({ref}) should be editable"
            else:
                assert cells.get(ref, 0) not in unlocked, f"{name} ({ref}) should be locked"
    # the header stays locked too
    assert all(cells.get(f"{letter}1", 0) not in unlocked for letter in letters.values())
    for name in ("summary", "needs_checking", "instructions", "manifest"):
        index = [SUMMARY_SHEET, NEEDS_CHECKING_SHEET, INSTRUCTIONS_SHEET, MANIFEST_SHEET].index(name) + 2
        assert not set(_cells(sheets[f"xl/worksheets/sheet{index}.xml"]).values()) & unlocked


def test_summary_sheet_counts_per_rule_with_oldest_pending_and_expiry(con, tmp_path: Path) -> None:
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    reader = fastexcel.read_excel(_exported(export, ALICE, ".xlsx"))
    cells = reader.load_sheet(SUMMARY_SHEET, header_row=None, dtypes="string").to_polars().rows()
    facts = {row[0]: row[1] for row in cells if row[0]}
    assert facts["file expires at (UTC)"] == "2026-11-27 09:00:00"
    assert facts["actions to decide"] == "2"
    header_index = next(i for i, row in enumerate(cells) if row[0] == "rule_id")
    table = [dict(zip(cells[header_index], row, strict=True)) for row in cells[header_index + 1 :]]
    assert table == [
        {
            "rule_id": "quote_followup",
            "actions": "2",
            "four_eyes": "no",
            "waiting for your approval as second": "0",
            "oldest proposed_at": "2026-11-20 09:00:00",
            "earliest expiry": "2026-11-24 09:00:00",
            "latest expiry": "2026-11-27 09:00:00",
        }
    ]


def test_unknown_sends_are_listed_read_only_under_needs_checking(con, tmp_path: Path) -> None:
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    bob_xlsx = _exported(export, BOB, ".xlsx")
    cells = fastexcel.read_excel(bob_xlsx).load_sheet(NEEDS_CHECKING_SHEET, header_row=None, dtypes="string")
    rows = cells.to_polars().rows()
    header = rows[2]
    listed = [dict(zip(header, row, strict=True)) for row in rows[3:]]
    assert [r["action_id"] for r in listed] == ["act-sent-unknown"]
    assert listed[0]["recipient"] == "customer6@example.org" and listed[0]["attempt"] == "1"
    assert "interrupted" in listed[0]["result"]
    # nothing to check for Alice; and the unknown action is not offered for a decision to anyone
    alice = fastexcel.read_excel(_exported(export, ALICE, ".xlsx")).load_sheet(
        NEEDS_CHECKING_SHEET, header_row=None, dtypes="string"
    )
    assert alice.to_polars().height == 3  # title, blank, header
    assert all(
        "act-sent-unknown" not in r["action_id"] for r in read_review_rows(_exported(export, BOB, ".csv"))
    )


def test_export_and_import_refuse_without_the_secret(con, tmp_path: Path, monkeypatch) -> None:
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    filled = fill_csv(
        _exported(export, ALICE, ".csv"), tmp_path / "inbox" / "a.csv", {"act-followup-1": "approve"}
    )
    before = _count(con)

    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(ReviewSecretError, match=f"environment variable {SECRET_ENV} is not set"):
        export_reviews(con, tmp_path / "second", AS_OF)
    assert not (tmp_path / "second").exists()
    with pytest.raises(ReviewSecretError, match=SECRET_ENV):
        import_reviews(con, [filled], AS_OF)

    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(ReviewSecretError, match="at least 32") as caught:
        import_reviews(con, [filled], AS_OF)
    assert "short" not in str(caught.value)  # the value is never repeated
    assert _count(con) == before

    # a file signed under another key is refused whole
    monkeypatch.setenv(SECRET_ENV, SECRET[::-1])
    report = import_reviews(con, [filled], AS_OF)
    assert [f.file for f in report.rejected_files] == [filled]
    assert "signature does not match" in report.rejected_files[0].message
    assert _count(con) == before


def test_formula_injection_is_neutralised_in_both_exports(con, tmp_path: Path) -> None:
    report = export_reviews(con, tmp_path / "outbox", AS_OF)
    xlsx = _exported(report, ALICE, ".xlsx")
    csv_path = xlsx.with_suffix(".csv")

    frame = pl.read_excel(xlsx, sheet_name=REVIEW_SHEET, infer_schema_length=0)
    row = frame.filter(pl.col("action_id") == "act-followup-1").row(0, named=True)
    assert row["subject"] == "'" + INJECTED_SUBJECT
    assert row["message"] == "'" + INJECTED_BODY
    with zipfile.ZipFile(xlsx) as archive:
        assert "<f>" not in archive.read("xl/worksheets/sheet1.xml").decode()

    with csv_path.open(encoding="utf-8-sig", newline="") as handle:
        records = list(csv.DictReader(handle))
    injected = next(r for r in records if r["action_id"] == "act-followup-1")
    assert injected["subject"] == "'" + INJECTED_SUBJECT
    assert injected["message"] == "'" + INJECTED_BODY
    for record in records:
        assert not any(value.startswith(("=", "+", "-", "@")) for value in record.values())


# ---------------------------------------------------------------------------------------------------------
# import


def test_decisions_from_csv_and_xlsx_become_ledger_events_once(con, tmp_path: Path) -> None:
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    inbox = tmp_path / "inbox"

    # Alice fills her exported CSV through the helpers the demo's simulated approvers use
    alice_csv = fill_csv(
        _exported(export, ALICE, ".csv"),
        inbox / "review_alice.csv",
        {"act-followup-1": "approve", "act-followup-2": (" Reject ", "Customer already called")},
    )
    # Bob returns his workbook with one action decided and one left undecided
    bob_xlsx = fill_xlsx(
        _exported(export, BOB, ".xlsx"), inbox / "review_bob.xlsx", {"act-dunning-1": "approve"}
    )

    before = _count(con)
    report = import_reviews(con, [alice_csv, bob_xlsx], AS_OF)
    assert not report.has_errors, _messages(report)
    assert len(report.applied) == 3 and report.undecided == 1
    assert _count(con) == before + 3
    decisions = _decisions(con)
    assert decisions["act-followup-1"] == ("approved", ALICE, ALICE, None, "dispatch")
    assert decisions["act-followup-2"] == ("rejected", ALICE, ALICE, "Customer already called", "none")
    assert decisions["act-dunning-1"] == ("approved", BOB, BOB, None, "owner acts by hand")
    assert _state(con, "act-dunning-2")["event_type"] == "pending_review"
    approved = _state(con, "act-followup-1")
    assert approved["occurred_at"] == AS_OF
    assert approved["owner_email"] == ALICE  # identity carried from the proposal
    # an unedited approval restates no message: the dispatcher sends the proposal's
    assert approved["message_subject"] is None and approved["proposed_subject"] == INJECTED_SUBJECT

    # the same files again: everything is a duplicate, nothing is written
    again = import_reviews(con, [alice_csv, bob_xlsx], AS_OF + timedelta(hours=1))
    assert not again.has_errors, _messages(again)
    assert not again.applied and len(again.duplicates) == 3
    assert _count(con) == before + 3

    # a new export only lists what is still undecided
    later = export_reviews(con, tmp_path / "outbox", AS_OF + timedelta(hours=2))
    assert later.rows_per_approver == {BOB: 1}


def test_an_edited_message_is_recorded_on_the_approved_event(con, tmp_path: Path) -> None:
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    new_subject, new_body = "Your quote, revisited", "Hi Ann,\r\nI changed the wording.\r\nBest, Alice"
    path = fill_csv(
        _exported(export, ALICE, ".csv"),
        tmp_path / "inbox" / "review_alice.csv",
        {"act-followup-1": "approve", "act-followup-2": "approve"},
        edits={"act-followup-2": {"subject": new_subject, "message": new_body}},
    )
    report = import_reviews(con, [path], AS_OF)
    assert not report.has_errors, _messages(report)
    edited = {a.action_id: a.message_edited for a in report.applied}
    assert edited == {"act-followup-1": False, "act-followup-2": True}
    assert "1 with an edited message" in report.summary_lines()[0]

    state = _state(con, "act-followup-2")
    assert state["event_type"] == "approved"
    assert (state["message_subject"], state["message_body"]) == (new_subject, new_body.replace("\r\n", "\n"))
    assert json.loads(state["details"])["message_edited_by"] == ALICE
    # the proposal stays as it was: the ledger shows what was proposed and what was approved
    assert state["proposed_body"] == "Hi, a note about record 1.\nThanks"
    # the neutralised (apostrophe) form of an unedited message is not mistaken for an edit
    assert _state(con, "act-followup-1")["message_body"] is None
    assert len(import_reviews(con, [path], AS_OF).duplicates) == 2


def test_the_edited_message_is_what_dispatch_sends(con, tmp_path: Path) -> None:
    from action_sinks.dispatcher import dispatch
    from action_sinks.file import FileOutbox
    from action_sinks.registry import ChannelSinks

    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    path = fill_csv(
        _exported(export, ALICE, ".csv"),
        tmp_path / "inbox" / "review_alice.csv",
        {"act-followup-2": "approve"},
        edits={"act-followup-2": {"subject": "Edited subject", "message": "Edited body"}},
    )
    assert not import_reviews(con, [path], AS_OF).has_errors
    outbox = tmp_path / "sent"
    report = dispatch(con, AS_OF, ChannelSinks({}, FileOutbox(outbox)))
    assert report.delivered >= 1
    sent = json.loads((outbox / "email" / "act-followup-2.json").read_text(encoding="utf-8"))
    assert (sent["subject"], sent["body"]) == ("Edited subject", "Edited body")
    sending = [e for e in ledger.trail(con, "act-followup-2") if e["event_type"] == "sending"]
    assert [e["message_body"] for e in sending] == ["Edited body"]


def test_bad_rows_are_refused_and_valid_rows_of_the_same_file_applied(con, tmp_path: Path) -> None:
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    path = fill_csv(
        _exported(export, BOB, ".csv"),
        tmp_path / "inbox" / "review_mixed.csv",
        {"act-dunning-1": "approve", "act-dunning-2": "maybe"},  # rows 2, 3
        extra_rows=[
            {
                "action_id": "act-dunning-1",
                "decision": "reject",
                "approver_email": BOB,
            },  # row 4: contradicts 2
            {"action_id": "", "decision": "approve", "approver_email": BOB},  # row 5: no action
            {"action_id": "act-dunning-1", "decision": "approve", "approver_email": ""},  # row 6: same as 2
            {"action_id": "act-dunning-2", "decision": "", "approver_email": BOB},  # row 7: undecided
        ],
    )
    report = import_reviews(con, [path], AS_OF)

    assert [a.action_id for a in report.applied] == ["act-dunning-1"]
    assert [d.row for d in report.duplicates] == [6]
    assert report.undecided == 1 and report.has_errors
    refused = {r.row: r for r in report.rejected_rows}
    assert set(refused) == {3, 4, 5}
    assert refused[3].message == (
        "review_mixed.csv row 3: decision 'maybe' is not approve or reject (leave empty to decide later); "
        "row ignored"
    )
    assert (refused[4].field, refused[4].value) == ("decision", "reject")
    assert "conflicts with row 2" in refused[4].message
    assert (refused[5].field, refused[5].value) == ("action_id", "")
    assert all(r.message.endswith("row ignored") for r in report.rejected_rows)
    assert set(_decisions(con)) == {"act-dunning-1"}


def test_a_decision_past_the_actions_review_expiry_is_refused(con, tmp_path: Path) -> None:
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    path = fill_csv(
        _exported(export, ALICE, ".csv"),
        tmp_path / "inbox" / "review_alice.csv",
        {"act-followup-1": "approve", "act-followup-2": "approve"},
    )
    # a day after act-followup-2's review expired, before the file (and act-followup-1) expire
    report = import_reviews(con, [path], SHORT_EXPIRY["act-followup-2"] + timedelta(days=1))
    assert [a.action_id for a in report.applied] == ["act-followup-1"]
    [refused] = report.rejected_rows
    assert (refused.row, refused.field, refused.value) == (3, "expires_at", "2026-11-24 09:00:00")
    assert refused.message.startswith("review_alice.csv row 3: expires_at '2026-11-24 09:00:00' has passed")
    assert _state(con, "act-followup-2")["event_type"] == "pending_review"

    # an action already marked expired in the ledger is refused the same way
    old = export_reviews(con, tmp_path / "outbox2", AS_OF - timedelta(days=2))
    assert "act-dunning-old" not in read_manifest(_exported(old, BOB, ".csv")).actions

    # past its expiry an action is no longer exported at all
    late = export_reviews(con, tmp_path / "outbox3", SHORT_EXPIRY["act-followup-2"] + timedelta(hours=1))
    assert late.past_expiry == ["act-followup-2"]
    assert any("past their review expiry" in line for line in late.summary_lines())


def test_row_numbers_follow_the_sheet_in_an_edited_workbook(con, tmp_path: Path) -> None:
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    path = fill_xlsx(
        _exported(export, BOB, ".xlsx"),
        tmp_path / "review_bob_copy.xlsx",
        {"act-dunning-1": "approve", "act-dunning-2": "perhaps"},
        blank_rows_before=1,
    )
    report = import_reviews(con, [path], AS_OF)
    assert [a.row for a in report.applied] == [3]
    assert [(r.row, r.value) for r in report.rejected_rows] == [(4, "perhaps")]
    assert "review_bob_copy.xlsx row 4: decision 'perhaps'" in report.rejected_rows[0].message


def test_unusable_files_are_refused_whole(con, tmp_path: Path) -> None:
    garbage = tmp_path / "review_garbage.xlsx"
    garbage.write_bytes(os.urandom(2048))
    empty_csv = tmp_path / "review_empty.csv"
    empty_csv.write_bytes(b"")
    empty_xlsx = tmp_path / "review_empty.xlsx"
    empty_xlsx.write_bytes(b"")
    no_decision = _write_csv(
        tmp_path / "review_nodecision.csv", ["action_id", "approver_email"], [["act-followup-1", ALICE]]
    )
    wrong_suffix = tmp_path / "review_alice.txt"
    wrong_suffix.write_text("action_id,decision,approver_email\nact-followup-1,approve,alice@example.com\n")
    not_utf8 = tmp_path / "review_latin1.csv"
    not_utf8.write_bytes(
        "action_id,decision,approver_email,comment\nact-followup-1,approve,x,Grüße\n".encode("cp1252")
    )
    own_workbook = tmp_path / "review_own.xlsx"
    workbook = xlsxwriter.Workbook(str(own_workbook))
    workbook.add_worksheet().write_row(0, 0, ["action_id", "decision", "approver_email"])
    workbook.worksheets()[0].write_row(1, 0, ["act-followup-1", "approve", ALICE])
    workbook.close()
    bad_manifest = _write_csv(
        tmp_path / "review_badjson.csv", ["action_id", "decision"], [["act-followup-1", "approve"]]
    )
    manifest_path_for(bad_manifest).write_text("{not json", encoding="utf-8")
    files = [
        garbage,
        empty_csv,
        empty_xlsx,
        no_decision,
        wrong_suffix,
        not_utf8,
        own_workbook,
        bad_manifest,
        tmp_path / "review_gone.csv",
    ]

    before = _ledger_rows(con)
    report = import_reviews(con, files, AS_OF)

    assert _ledger_rows(con) == before
    assert not report.applied and not report.rejected_rows
    by_name = {r.file.name: r.message for r in report.rejected_files}
    assert set(by_name) == {f.name for f in files}
    assert "not a readable XLSX workbook" in by_name["review_garbage.xlsx"]
    assert "empty" in by_name["review_empty.csv"] and "empty" in by_name["review_empty.xlsx"]
    assert "missing required column(s) decision" in by_name["review_nodecision.csv"]
    assert "unsupported file type '.txt'" in by_name["review_alice.txt"]
    assert "not UTF-8" in by_name["review_latin1.csv"]
    assert "no signed manifest" in by_name["review_own.xlsx"]
    assert "manifest (review_badjson.manifest.json) is not valid JSON" in by_name["review_badjson.csv"]
    assert "no such file" in by_name["review_gone.csv"]
    for name, message in by_name.items():
        assert message.startswith(name) and message.endswith("nothing from this file was applied")


def test_a_legacy_approvers_section_still_adds_approvers(con, tmp_path: Path, monkeypatch) -> None:
    _settings(tmp_path, monkeypatch, f"approvers:\n  quote_followup: [{MANAGER.upper()}]\n")

    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    assert export.rows_per_approver == {ALICE: 2, BOB: 2, MANAGER: 2}
    manager_csv = _exported(export, MANAGER, ".csv")
    assert {r["action_id"] for r in read_review_rows(manager_csv)} == {"act-followup-1", "act-followup-2"}

    path = fill_csv(
        manager_csv, tmp_path / "inbox" / "review_manager.csv", {"act-followup-1": ("approve", "ok by me")}
    )
    report = import_reviews(con, [path], AS_OF)
    assert not report.has_errors, _messages(report)
    assert _decisions(con)["act-followup-1"] == ("approved", MANAGER, MANAGER, "ok by me", "dispatch")


def test_approval_policy_teams_owner_and_four_eyes(tmp_path: Path, monkeypatch) -> None:
    path = _settings(
        tmp_path,
        monkeypatch,
        """
approval:
  teams:
    finance: [Fiona@Example.com, frank@example.com]
  rules:
    invoice_dunning:
      approvers: [team:finance, carla@example.com]
      owner_approves: false
      four_eyes: true
    quote_followup: [manager@example.com]
""",
    )
    policy = load_policy(path)
    assert policy.approvers_for("invoice_dunning", BOB) == {
        "fiona@example.com",
        "frank@example.com",
        "carla@example.com",
    }
    assert policy.four_eyes("invoice_dunning") and not policy.four_eyes("quote_followup")
    assert policy.approvers_for("quote_followup", ALICE) == {ALICE, MANAGER}
    assert policy.approvers_for("other_rule", ALICE) == {ALICE}
    assert policy.secret_env == SECRET_ENV


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("approval: [a]\n", "approval must be a mapping"),
        ("approval:\n  teamz: {}\n", "approval.teamz is not a known key"),
        (
            "approval:\n  teams:\n    sales: [not-an-email]\n",
            "approval.teams.sales[0] 'not-an-email' is not an email",
        ),
        (
            "approval:\n  rules:\n    r1:\n      approvers: [team:sales]\n",
            "approval.rules.r1.approvers[0] 'team:sales' names an unknown team",
        ),
        (
            "approval:\n  rules:\n    r1:\n      four_eyes: 'yes'\n",
            "approval.rules.r1.four_eyes must be true or false",
        ),
        (
            "approval:\n  rules:\n    r1:\n      four_eyes: true\n",
            "approval.rules.r1.four_eyes needs two distinct approvers",
        ),
        ("approval:\n  rules:\n    r1:\n      owner_approves: false\n", "approval.rules.r1 allows nobody"),
        (
            "approval:\n  rules:\n    r1:\n      approver: [a@x.io]\n",
            "approval.rules.r1.approver is not a known key",
        ),
        (
            "approval:\n  secret_env: 'my secret'\n",
            "approval.secret_env must be an environment variable name",
        ),
        ("approvers:\n  r1: [nope]\n", "approvers.r1[0] 'nope' is not an email"),
    ],
)
def test_an_invalid_approval_policy_names_the_key(tmp_path: Path, monkeypatch, text: str, key: str) -> None:
    path = _settings(tmp_path, monkeypatch, text)
    with pytest.raises(ReviewConfigError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert key in str(caught.value)


def test_a_policys_secret_env_names_the_variable_to_read(con, tmp_path: Path, monkeypatch) -> None:
    _settings(tmp_path, monkeypatch, "approval:\n  secret_env: TEAM_REVIEW_KEY\n")
    with pytest.raises(ReviewSecretError, match="TEAM_REVIEW_KEY is not set"):
        export_reviews(con, tmp_path / "outbox", AS_OF)
    monkeypatch.setenv("TEAM_REVIEW_KEY", SECRET)
    assert export_reviews(con, tmp_path / "outbox", AS_OF).rows_per_approver == {ALICE: 2, BOB: 2}


def test_four_eyes_an_edit_by_the_first_approver_needs_a_fresh_second_look(
    con, tmp_path: Path, monkeypatch
) -> None:
    _settings(
        tmp_path,
        monkeypatch,
        "approval:\n  rules:\n    quote_followup:\n      approvers: [manager@example.com]\n      four_eyes: true\n",
    )
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    manager_csv = _exported(export, MANAGER, ".csv")
    assert all(r["approvals"] == "four eyes: needs two approvers" for r in read_review_rows(manager_csv))

    # Alice approves with a new text: recorded as the first approval, the action stays pending
    alice = fill_csv(
        _exported(export, ALICE, ".csv"),
        tmp_path / "inbox" / "review_alice.csv",
        {"act-followup-2": "approve"},
        edits={"act-followup-2": {"message": "Hi, shorter text."}},
    )
    first = import_reviews(con, [alice], AS_OF)
    assert [(a.decision, a.message_edited) for a in first.applied] == [("first_approval", True)]
    state = _state(con, "act-followup-2")
    assert state["event_type"] == "pending_review" and state["message_body"] == "Hi, shorter text."
    assert json.loads(state["details"])["first_approval"]["approver"] == ALICE

    # the manager's file was issued with the old text: the approval is refused, naming the message
    manager = fill_csv(manager_csv, tmp_path / "inbox" / "review_manager.csv", {"act-followup-2": "approve"})
    stale = import_reviews(con, [manager], AS_OF + timedelta(hours=1))
    [refused] = stale.rejected_rows
    assert refused.field == "message" and "alice@example.com changed it" in refused.message
    assert "review_alice.csv" in refused.message

    # the next export shows the manager the edited text and Alice's approval; now it goes through
    fresh = export_reviews(con, tmp_path / "outbox2", AS_OF + timedelta(hours=2))
    assert ALICE not in fresh.rows_per_approver or all(
        r["action_id"] != "act-followup-2" for r in read_review_rows(_exported(fresh, ALICE, ".csv"))
    )
    fresh_rows = {r["action_id"]: r for r in read_review_rows(_exported(fresh, MANAGER, ".csv"))}
    assert fresh_rows["act-followup-2"]["message"] == "Hi, shorter text."
    assert fresh_rows["act-followup-2"]["approvals"].startswith(
        "four eyes: approved first by alice@example.com"
    )
    second = fill_csv(
        _exported(fresh, MANAGER, ".csv"),
        tmp_path / "inbox" / "review_manager2.csv",
        {"act-followup-2": "approve"},
    )
    done = import_reviews(con, [second], AS_OF + timedelta(hours=3))
    assert not done.has_errors, _messages(done)
    approved = _state(con, "act-followup-2")
    assert approved["event_type"] == "approved" and approved["approver_email"] == MANAGER
    # the dispatcher-facing approved event carries the text both approvers saw
    assert approved["message_body"] == "Hi, shorter text."
    assert json.loads(approved["details"])["first_approval"]["approver"] == ALICE


def test_imports_only_append_to_the_ledger(con, tmp_path: Path) -> None:
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    before = _ledger_rows(con)
    first = fill_csv(
        _exported(export, ALICE, ".csv"),
        tmp_path / "review_a.csv",
        {"act-followup-1": "approve", "act-followup-2": "reject"},
    )
    second = fill_xlsx(
        _exported(export, BOB, ".xlsx"), tmp_path / "review_b.xlsx", {"act-dunning-1": ("reject", "no")}
    )
    import_reviews(con, [first, second], AS_OF)
    import_reviews(con, [first, second], AS_OF + timedelta(days=1))

    after = _ledger_rows(con)
    assert after[: len(before)] == before
    assert len(after) == len(before) + 3
    assert [row[0] for row in after] == sorted(row[0] for row in after)  # seq only grows


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_export_split_over_worker_processes_writes_the_same_files(con, tmp_path: Path, monkeypatch) -> None:
    _settings(
        tmp_path,
        monkeypatch,
        "approval:\n  rules:\n    quote_followup:\n      approvers: [manager@example.com]\n",
    )
    here = export_reviews(con, tmp_path / "here", AS_OF, workers=1)
    # threshold 0: even this small export goes to two forked workers
    forked = export_reviews(con, tmp_path / "forked", AS_OF, workers=2, parallel_min_rows=0)

    assert len(here.rows_per_approver) >= 2
    written = _tree(tmp_path / "here")
    assert len(written) == 9
    # byte for byte, the XLSX as a whole included (its zip members carry no clock time)
    assert _tree(tmp_path / "forked") == written
    assert [p.name for p in forked.files] == [p.name for p in here.files]
    assert [p.name for p in forked.manifests] == [p.name for p in here.manifests]
    here.out_dir = forked.out_dir
    here.files, here.manifests = forked.files, forked.manifests
    assert forked == here
    # the forked files are genuine review tables: the import takes a decision from one
    csv_path = _exported(forked, BOB, ".csv")
    returned = fill_csv(csv_path, tmp_path / "bob.csv", {"act-dunning-1": "approve"})
    imported = import_reviews(con, [returned], AS_OF)
    assert [d.action_id for d in imported.applied] == ["act-dunning-1"], _messages(imported)


def test_an_error_in_a_worker_process_surfaces_as_in_process(con, tmp_path: Path) -> None:
    out = tmp_path / "outbox"
    out.mkdir()
    # a folder where Bob's CSV belongs: replacing it fails with the operating system's error
    (out / "review_bob-example-com_20261123T0900.csv").mkdir()
    with pytest.raises(OSError) as here:
        export_reviews(con, out, AS_OF, workers=1)
    with pytest.raises(OSError) as forked:
        export_reviews(con, out, AS_OF, workers=2, parallel_min_rows=0)
    assert type(forked.value) is type(here.value)
    assert str(forked.value) == str(here.value)
    assert "review_bob-example-com_20261123T0900.csv" in str(forked.value)
    # no half-written file is left behind: every temporary file was renamed or removed
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_review_workers_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("ACTIONLAYER_REVIEW_WORKERS", "3")
    assert config.review_export_workers() == 3
    monkeypatch.delenv("ACTIONLAYER_REVIEW_WORKERS")
    assert config.review_export_workers() == (os.cpu_count() or 1)
    for bad in ("0", "two"):
        monkeypatch.setenv("ACTIONLAYER_REVIEW_WORKERS", bad)
        with pytest.raises(ValueError, match="ACTIONLAYER_REVIEW_WORKERS"):
            config.review_export_workers()


def test_an_approver_whose_table_did_not_change_keeps_the_earlier_files(
    con, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "outbox"
    first = export_reviews(con, out, AS_OF)
    written = _tree(out)
    assert first.unchanged == []

    # an hour later nothing changed for anyone: nothing is written, the earlier files stay current
    later = export_reviews(con, out, AS_OF + timedelta(hours=1))
    assert later.unchanged == [ALICE, BOB]
    assert _tree(out) == written
    assert [p.name for p in later.files] == [p.name for p in first.files]
    assert "2 approver(s) unchanged" in later.summary_lines()[0]
    # the kept file is still a genuine review table: a decision from it is applied
    returned = fill_csv(_exported(later, ALICE, ".csv"), tmp_path / "a.csv", {"act-followup-2": "approve"})
    assert [d.action_id for d in import_reviews(con, [returned], AS_OF + timedelta(hours=1)).applied] == [
        "act-followup-2"
    ]

    # Alice decided one row: only her table is written again, under this export's time
    again = export_reviews(con, out, AS_OF + timedelta(hours=2))
    assert again.unchanged == [BOB]
    assert _exported(again, ALICE, ".csv").name.endswith("_20261123T1100.csv")
    assert _exported(again, BOB, ".csv").name.endswith("_20261123T0900.csv")
    assert _exported(again, ALICE, ".csv").read_text(encoding="utf-8").count("act-followup-") == 1

    # a missing file, or another signing key, means the table is written again
    _exported(again, BOB, ".xlsx").unlink()
    assert export_reviews(con, out, AS_OF + timedelta(hours=3)).unchanged == [ALICE]
    monkeypatch.setenv(SECRET_ENV, "a" * 64)
    assert export_reviews(con, out, AS_OF + timedelta(hours=4)).unchanged == []
    kept = con.execute(
        "select as_of, approver, written from ops.review_exports order by as_of, approver"
    ).fetchall()
    assert [(when.hour, who[0], written) for when, who, written in kept] == [
        (9, "a", True), (9, "b", True),
        (10, "a", False), (10, "b", False),
        (11, "a", True), (11, "b", False),
        (12, "a", False), (12, "b", True),
        (13, "a", True), (13, "b", True),
    ]  # fmt: skip
