"""Review tables: export per approver, import of decisions, and every way a returned file can be wrong."""

from __future__ import annotations

import csv
import os
import zipfile
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import fastexcel
import polars as pl
import pytest
import xlsxwriter

from actionlayer import ledger
from actionlayer.review import (
    INSTRUCTIONS_SHEET,
    REVIEW_COLUMNS,
    REVIEW_SHEET,
    ImportReport,
    export_reviews,
    import_reviews,
    read_review_rows,
    write_review_csv,
)

T0 = datetime(2026, 11, 20, 9, 0)
AS_OF = datetime(2026, 11, 23, 9, 0)
ALICE = "alice@example.com"
BOB = "bob@example.com"
MANAGER = "manager@example.com"

# action_id → (rule_id, maturity_level, owner, final state)
ACTIONS = {
    "act-followup-1": ("quote_followup", 3, ALICE, "pending_review"),
    "act-followup-2": ("quote_followup", 3, ALICE, "pending_review"),
    "act-dunning-1": ("invoice_dunning", 2, BOB, "pending_review"),
    "act-dunning-2": ("invoice_dunning", 2, BOB, "pending_review"),
    "act-followup-3": ("quote_followup", 1, BOB, "proposed"),
    "act-dunning-old": ("invoice_dunning", 3, BOB, "expired"),
}
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
            events.append(ledger.next_event(state, "pending_review", T0, f"rule:{rule_id}"))
        if final == "expired":
            events.append(ledger.next_event(state, "expired", T0 + timedelta(days=5), "system"))
    ledger.append(con, events)


@pytest.fixture()
def con(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[duckdb.DuckDBPyConnection]:
    # no approvers configured unless a test writes its own actionlayer.yml
    monkeypatch.setenv("ACTIONLAYER_CONFIG", str(tmp_path / "absent.yml"))
    connection = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    _seed(connection)
    yield connection
    connection.close()


def _ledger_rows(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute("select * exclude (recorded_at) from ops.action_ledger order by seq").fetchall()


def _count(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute("select count(*) from ops.action_ledger").fetchone()[0]


def _decisions(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, str, str, str | None, str]]:
    rows = con.execute(
        "select action_id, event_type, actor, approver_email, result, next_action from ops.action_ledger "
        "where event_type in ('approved', 'rejected')"
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_xlsx(path: Path, header: Sequence[str], rows: Sequence[Sequence[str] | None]) -> Path:
    """A person's edited copy: a fresh workbook, default sheet name; None leaves a blank row."""
    workbook = xlsxwriter.Workbook(str(path))
    sheet = workbook.add_worksheet()
    sheet.write_row(0, 0, header)
    for index, row in enumerate(rows, start=1):
        if row is not None:
            for col, value in enumerate(row):
                sheet.write_string(index, col, value)
    workbook.close()
    return path


def _decision_file(path: Path, rows: Sequence[tuple[str, str, str, str]]) -> Path:
    """Rows of (action_id, decision, approver_email, comment) as CSV or XLSX by suffix."""
    header = ["action_id", "decision", "approver_email", "comment"]
    writer = _write_xlsx if path.suffix == ".xlsx" else _write_csv
    return writer(path, header, [list(r) for r in rows])


def _messages(report: ImportReport) -> str:
    return "\n".join(report.summary_lines())


# ---------------------------------------------------------------------------------------------------------


def test_export_writes_one_xlsx_and_one_csv_per_approver(con, tmp_path: Path) -> None:
    out = tmp_path / "outbox"
    report = export_reviews(con, out, AS_OF)

    stamp = "20261123T0900"
    expected = {
        f"review_alice-example-com_{stamp}.xlsx",
        f"review_alice-example-com_{stamp}.csv",
        f"review_bob-example-com_{stamp}.xlsx",
        f"review_bob-example-com_{stamp}.csv",
    }
    assert {p.name for p in report.files} == expected
    assert {p.name for p in out.iterdir()} == expected
    assert report.rows_per_approver == {ALICE: 2, BOB: 2}
    assert report.actions == 4 and not report.unrouted
    assert any("alice@example.com: 2" in line for line in report.summary_lines())

    owned = {ALICE: {"act-followup-1", "act-followup-2"}, BOB: {"act-dunning-1", "act-dunning-2"}}
    for person, slug in ((ALICE, "alice-example-com"), (BOB, "bob-example-com")):
        xlsx = out / f"review_{slug}_{stamp}.xlsx"
        frame = pl.read_excel(xlsx, sheet_name=REVIEW_SHEET, infer_schema_length=0)
        assert tuple(frame.columns) == REVIEW_COLUMNS
        assert set(frame["action_id"]) == owned[person]
        assert set(frame["approver_email"]) == {person}
        assert frame["decision"].null_count() == frame.height
        assert INSTRUCTIONS_SHEET in fastexcel.read_excel(xlsx).sheet_names

        csv_rows = read_review_rows(out / f"review_{slug}_{stamp}.csv")
        assert tuple(csv_rows[0]) == REVIEW_COLUMNS
        assert {r["action_id"] for r in csv_rows} == owned[person]
        assert all(r["owner_email"] == person and r["decision"] == "" for r in csv_rows)
        assert all(r["recommended_action"] and r["subject"] and r["proposed_at"] for r in csv_rows)

    # bold frozen header and the approve/reject dropdown are in the sheet XML
    with zipfile.ZipFile(out / f"review_bob-example-com_{stamp}.xlsx") as archive:
        sheet_xml = archive.read("xl/worksheets/sheet1.xml").decode()
    assert 'state="frozen"' in sheet_xml
    assert "<dataValidation " in sheet_xml and '"approve,reject"' in sheet_xml

    # a multi-line message survives the CSV round trip
    bob_rows = read_review_rows(out / f"review_bob-example-com_{stamp}.csv")
    assert any("\n" in r["message"] for r in bob_rows)

    # same as_of again: same files overwritten, nothing new
    again = export_reviews(con, out, AS_OF)
    assert [p.name for p in again.files] == [p.name for p in report.files]
    assert {p.name for p in out.iterdir()} == expected


def test_formula_injection_is_neutralised_in_both_exports(con, tmp_path: Path) -> None:
    out = tmp_path / "outbox"
    report = export_reviews(con, out, AS_OF)
    xlsx = next(p for p in report.files if p.name.startswith("review_alice") and p.suffix == ".xlsx")
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


def test_decisions_from_csv_and_xlsx_become_ledger_events_once(con, tmp_path: Path) -> None:
    out = tmp_path / "outbox"
    export = export_reviews(con, out, AS_OF)
    alice_csv = next(p for p in export.files if p.name.startswith("review_alice") and p.suffix == ".csv")

    # Alice fills her exported CSV through the helpers the demo's simulated approvers use
    rows = read_review_rows(alice_csv)
    for row in rows:
        if row["action_id"] == "act-followup-1":
            row["decision"] = "approve"
        else:
            row["decision"] = " Reject "
            row["comment"] = "Customer already called"
    filled_csv = tmp_path / "inbox" / alice_csv.name
    write_review_csv(filled_csv, rows)

    # Bob returns an edited copy as a fresh workbook with the same columns, one action left undecided
    bob_rows = read_review_rows(next(p for p in export.files if p.name.startswith("review_bob")))
    for row in bob_rows:
        row["decision"] = "approve" if row["action_id"] == "act-dunning-1" else ""
    bob_xlsx = _write_xlsx(
        tmp_path / "inbox" / "review_bob_edited.xlsx",
        REVIEW_COLUMNS,
        [[row[c] for c in REVIEW_COLUMNS] for row in bob_rows],
    )

    before = _count(con)
    report = import_reviews(con, [filled_csv, bob_xlsx], AS_OF)
    assert not report.has_errors, _messages(report)
    assert len(report.applied) == 3 and report.undecided == 1
    assert _count(con) == before + 3
    decisions = _decisions(con)
    assert decisions["act-followup-1"] == ("approved", ALICE, ALICE, None, "dispatch")
    assert decisions["act-followup-2"] == ("rejected", ALICE, ALICE, "Customer already called", "none")
    assert decisions["act-dunning-1"] == ("approved", BOB, BOB, None, "owner acts by hand")
    state = {s["action_id"]: s for s in ledger.states(con)}
    assert state["act-dunning-2"]["event_type"] == "pending_review"
    assert state["act-followup-1"]["occurred_at"] == AS_OF
    assert state["act-followup-1"]["owner_email"] == ALICE  # identity carried from the proposal

    # the same files again: everything is a duplicate, nothing is written
    again = import_reviews(con, [filled_csv, bob_xlsx], AS_OF + timedelta(hours=1))
    assert not again.has_errors, _messages(again)
    assert not again.applied and len(again.duplicates) == 3
    assert _count(con) == before + 3

    # a new export only lists what is still undecided
    later = export_reviews(con, out, AS_OF + timedelta(hours=2))
    assert later.rows_per_approver == {BOB: 1}


def test_bad_rows_are_refused_and_valid_rows_of_the_same_file_applied(con, tmp_path: Path) -> None:
    path = _decision_file(
        tmp_path / "review_mixed.csv",
        [
            ("act-followup-1", "approve", ALICE, ""),  # row 2: valid
            ("act-dunning-1", "approve", ALICE, ""),  # row 3: alice does not own it
            ("act-nope", "approve", ALICE, ""),  # row 4: unknown action
            ("act-followup-2", "maybe", ALICE, ""),  # row 5: not a decision
            ("act-dunning-2", "", BOB, ""),  # row 6: undecided
            ("act-dunning-old", "approve", BOB, ""),  # row 7: expired already
            ("act-dunning-2", "reject", "", ""),  # row 8: nobody named
            ("act-followup-1", "reject", ALICE, ""),  # row 9: contradicts row 2
        ],
    )
    report = import_reviews(con, [path], AS_OF)

    assert [a.action_id for a in report.applied] == ["act-followup-1"]
    assert report.undecided == 1 and report.has_errors
    refused = {r.row: r for r in report.rejected_rows}
    assert set(refused) == {3, 4, 5, 7, 8, 9}
    assert (refused[3].field, refused[3].value) == ("approver_email", ALICE)
    assert "review_mixed.csv row 3: approver_email 'alice@example.com'" in refused[3].message
    assert "bob@example.com" in refused[3].message  # says who may decide
    assert (refused[4].field, refused[4].value) == ("action_id", "act-nope")
    assert refused[4].message.startswith("review_mixed.csv row 4: action_id 'act-nope'")
    assert refused[5].message == (
        "review_mixed.csv row 5: decision 'maybe' is not approve or reject (leave empty to decide later); "
        "row ignored"
    )
    assert "current state expired" in refused[7].message and "row 7" in refused[7].message
    assert refused[8].field == "approver_email" and "row 8" in refused[8].message
    assert "conflicts with row 2" in refused[9].message
    assert all(r.message.endswith("row ignored") for r in report.rejected_rows)

    decisions = _decisions(con)
    assert set(decisions) == {"act-followup-1"}
    assert decisions["act-followup-1"][0] == "approved"


def test_row_numbers_follow_the_sheet_in_a_hand_edited_workbook(con, tmp_path: Path) -> None:
    path = _write_xlsx(
        tmp_path / "review_bob_copy.xlsx",
        ["action_id", "decision", "approver_email"],
        [["act-dunning-1", "approve", BOB], None, ["act-dunning-2", "perhaps", BOB]],
    )
    report = import_reviews(con, [path], AS_OF)
    assert [a.row for a in report.applied] == [2]
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
    files = [
        garbage,
        empty_csv,
        empty_xlsx,
        no_decision,
        wrong_suffix,
        not_utf8,
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
    assert "no such file" in by_name["review_gone.csv"]
    for name, message in by_name.items():
        assert message.startswith(name) and message.endswith("nothing from this file was applied")


def test_a_conflicting_decision_after_one_was_applied_is_refused(con, tmp_path: Path) -> None:
    first = _decision_file(tmp_path / "review_first.xlsx", [("act-followup-1", "approve", ALICE, "")])
    assert len(import_reviews(con, [first], AS_OF).applied) == 1

    second = _decision_file(
        tmp_path / "review_second.csv", [("act-followup-1", "reject", ALICE, "changed mind")]
    )
    report = import_reviews(con, [second], AS_OF + timedelta(hours=1))
    assert not report.applied
    [refused] = report.rejected_rows
    assert (refused.row, refused.field, refused.value) == (2, "decision", "reject")
    assert "already approved by alice@example.com" in refused.message
    assert [e["event_type"] for e in ledger.trail(con, "act-followup-1")] == [
        "proposed",
        "pending_review",
        "approved",
    ]


def test_a_configured_extra_approver_may_decide(con, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tmp_path / "actionlayer.yml"
    settings.write_text(f"approvers:\n  quote_followup: [{MANAGER.upper()}]\n", encoding="utf-8")
    monkeypatch.setenv("ACTIONLAYER_CONFIG", str(settings))

    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    assert export.rows_per_approver == {ALICE: 2, BOB: 2, MANAGER: 2}
    manager_csv = next(p for p in export.files if p.name.startswith("review_manager") and p.suffix == ".csv")
    assert {r["action_id"] for r in read_review_rows(manager_csv)} == {"act-followup-1", "act-followup-2"}

    path = _decision_file(
        tmp_path / "review_manager.csv",
        [("act-followup-1", "approve", MANAGER, "ok by me"), ("act-dunning-1", "approve", MANAGER, "")],
    )
    report = import_reviews(con, [path], AS_OF)
    assert [a.action_id for a in report.applied] == ["act-followup-1"]
    assert [r.row for r in report.rejected_rows] == [3]  # not an approver of invoice_dunning
    assert _decisions(con)["act-followup-1"] == ("approved", MANAGER, MANAGER, "ok by me", "dispatch")


def test_imports_only_append_to_the_ledger(con, tmp_path: Path) -> None:
    before = _ledger_rows(con)
    first = _decision_file(
        tmp_path / "review_a.csv",
        [("act-followup-1", "approve", ALICE, ""), ("act-followup-2", "reject", ALICE, "")],
    )
    second = _decision_file(tmp_path / "review_b.xlsx", [("act-dunning-1", "reject", BOB, "no")])
    import_reviews(con, [first, second], AS_OF)
    import_reviews(con, [first, second], AS_OF + timedelta(days=1))

    after = _ledger_rows(con)
    assert after[: len(before)] == before
    assert len(after) == len(before) + 3
    assert [row[0] for row in after] == sorted(row[0] for row in after)  # seq only grows
