"""Tampering with a returned review file: each case is refused with the file, row and field named, the
valid rows of the same file (or, when the whole file is refused, of the other files) are still applied,
and importing the same files again adds nothing to the ledger."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from test_review import (
    ALICE,
    AS_OF,
    BOB,
    MANAGER,
    T0,
    _count,
    _decisions,
    _exported,
    _messages,
    _settings,
    _state,
    con,  # noqa: F401  (the fixture)
    fill_csv,
    fill_xlsx,
)

from actionlayer import ledger
from actionlayer.review import ImportReport, export_reviews, import_reviews, manifest_path_for

TWO_FOR_QUOTES = """
approval:
  rules:
    quote_followup:
      approvers: [manager@example.com]
      four_eyes: {four_eyes}
    invoice_dunning:
      approvers: [{dunning}]
"""


def _reimport_adds_nothing(con, files: list[Path], first: ImportReport) -> None:  # noqa: F811
    before = _count(con)
    again = import_reviews(con, files, AS_OF + timedelta(hours=1))
    assert not again.applied, _messages(again)
    assert _count(con) == before
    # the same rows are refused (or recognised as already recorded) again, never applied twice
    assert {(r.file, r.row) for r in again.rejected_rows} == {(r.file, r.row) for r in first.rejected_rows}
    assert len(again.rejected_files) == len(first.rejected_files)


def _one_refusal(report: ImportReport) -> object:
    assert len(report.rejected_rows) == 1, _messages(report)
    return report.rejected_rows[0]


def test_forged_manifest_is_refused_whole(con, tmp_path: Path) -> None:  # noqa: F811
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    # Alice adds Bob's action to her CSV and to its manifest, keeping the old signature
    forged = fill_csv(
        _exported(export, ALICE, ".csv"),
        tmp_path / "inbox" / "review_alice.csv",
        {"act-followup-1": "approve"},
        extra_rows=[{"action_id": "act-dunning-1", "decision": "approve", "approver_email": ALICE}],
    )
    sidecar = manifest_path_for(forged)
    data = json.loads(sidecar.read_text(encoding="utf-8"))
    data["actions"]["act-dunning-1"] = dict(data["actions"]["act-followup-1"])
    sidecar.write_text(json.dumps(data), encoding="utf-8")
    # a forged XLSX manifest: the expiry pushed out by a year
    xlsx_manifest = json.loads(sidecar.read_text(encoding="utf-8"))
    xlsx_manifest["expires_at"] = "2027-11-27T09:00:00"
    forged_xlsx = fill_xlsx(
        _exported(export, ALICE, ".xlsx"),
        tmp_path / "inbox" / "review_alice.xlsx",
        {"act-followup-2": "approve"},
        manifest_text=json.dumps(xlsx_manifest),
    )
    valid = fill_csv(
        _exported(export, BOB, ".csv"), tmp_path / "inbox" / "review_bob.csv", {"act-dunning-2": "reject"}
    )

    report = import_reviews(con, [forged, forged_xlsx, valid], AS_OF)
    refused = {r.file.name: r.message for r in report.rejected_files}
    assert set(refused) == {"review_alice.csv", "review_alice.xlsx"}
    for name, message in refused.items():
        assert message.startswith(f"{name}: manifest signature does not match")
        assert "field signature" in message and message.endswith("nothing from this file was applied")
    assert set(_decisions(con)) == {"act-dunning-2"}
    _reimport_adds_nothing(con, [forged, forged_xlsx, valid], report)


def test_expired_file_is_refused_whole(con, tmp_path: Path) -> None:  # noqa: F811
    old = export_reviews(con, tmp_path / "old", AS_OF)
    expired = fill_csv(
        _exported(old, ALICE, ".csv"), tmp_path / "inbox" / "review_alice.csv", {"act-followup-1": "approve"}
    )
    late = T0 + timedelta(days=8)  # the file expired 2026-11-27 09:00 with its last action's review
    # a new review request for one of Bob's actions (as after a lifted suppression): his fresh file applies
    requeued = ledger.next_event(
        _state(con, "act-dunning-1"),
        "pending_review",
        late,
        "rule:invoice_dunning",
        details={"review_expires_at": str(late + timedelta(days=3))},
    )
    assert ledger.append(con, [requeued]) == 1
    fresh = export_reviews(con, tmp_path / "fresh", late)
    valid = fill_csv(
        _exported(fresh, BOB, ".csv"), tmp_path / "inbox" / "review_bob.csv", {"act-dunning-1": "approve"}
    )

    report = import_reviews(con, [expired, valid], late)
    [refused] = report.rejected_files
    assert refused.file == expired
    assert refused.message.startswith("review_alice.csv: file expired at 2026-11-27 09:00:00")
    assert "field expires_at" in refused.message
    assert set(_decisions(con)) == {"act-dunning-1"}
    assert _state(con, "act-followup-1")["event_type"] == "pending_review"
    before = _count(con)
    again = import_reviews(con, [expired, valid], late + timedelta(hours=1))
    assert not again.applied and _count(con) == before and len(again.rejected_files) == 1


def test_a_row_not_issued_to_the_approver_is_refused(con, tmp_path: Path) -> None:  # noqa: F811
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    path = fill_xlsx(
        _exported(export, ALICE, ".xlsx"),
        tmp_path / "inbox" / "review_alice.xlsx",
        {"act-followup-1": "approve"},
        # Alice pastes in Bob's action, context and all (row 4)
        extra_rows=[
            {
                "action_id": "act-dunning-1",
                "rule_id": "invoice_dunning",
                "record_type": "invoice",
                "record_id": "rec-2",
                "decision": "approve",
                "approver_email": ALICE,
            }
        ],
    )
    report = import_reviews(con, [path], AS_OF)
    refused = _one_refusal(report)
    assert (refused.file, refused.row, refused.field, refused.value) == (
        path,
        4,
        "action_id",
        "act-dunning-1",
    )
    assert refused.message.startswith(
        "review_alice.xlsx row 4: action_id 'act-dunning-1' was not issued to alice@example.com in this file"
    )
    assert set(_decisions(con)) == {"act-followup-1"}
    _reimport_adds_nothing(con, [path], report)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("recipient", "attacker@evil.example"),
        ("rule_id", "invoice_dunning"),
        ("record_id", "rec-99"),
        ("owner_email", MANAGER),
        ("approver_email", MANAGER),
    ],
)
def test_an_altered_protected_field_is_refused(con, tmp_path: Path, field: str, value: str) -> None:  # noqa: F811
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    path = fill_csv(
        _exported(export, ALICE, ".csv"),
        tmp_path / "inbox" / "review_alice.csv",
        {"act-followup-1": "approve", "act-followup-2": "approve"},
        edits={"act-followup-2": {field: value}},  # row 3
    )
    report = import_reviews(con, [path], AS_OF)
    refused = _one_refusal(report)
    assert (refused.row, refused.field, refused.value) == (3, field, value)
    assert refused.message.startswith(f"review_alice.csv row 3: {field} {value!r} differs from the")
    assert refused.message.endswith("row ignored")
    # nothing else of that row was applied; the valid row was
    assert set(_decisions(con)) == {"act-followup-1"}
    assert _state(con, "act-followup-2")["event_type"] == "pending_review"
    _reimport_adds_nothing(con, [path], report)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("comment", '=HYPERLINK("http://evil.example","ok")'),
        ("comment", "@SUM(1+1)*cmd|' /C calc'!A0"),
        ("message", "+cmd|' /C calc'!A0"),
        ("subject", "-2+3+cmd|' /C calc'!A0"),
        ("decision", "=approve"),
    ],
)
def test_a_formula_in_a_fill_in_cell_is_refused(con, tmp_path: Path, field: str, value: str) -> None:  # noqa: F811
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    decisions = {"act-dunning-1": "approve", "act-dunning-2": ("approve", "fine")}
    edits = {"act-dunning-2": {field: value}}  # row 3
    path = fill_xlsx(
        _exported(export, BOB, ".xlsx"), tmp_path / "inbox" / "review_bob.xlsx", decisions, edits
    )
    report = import_reviews(con, [path], AS_OF)
    refused = _one_refusal(report)
    assert (refused.row, refused.field, refused.value) == (3, field, value)
    assert refused.message.startswith(
        f"review_bob.xlsx row 3: {field} {value!r} starts with a formula character"
    )
    assert set(_decisions(con)) == {"act-dunning-1"}
    assert _state(con, "act-dunning-2")["event_type"] == "pending_review"
    _reimport_adds_nothing(con, [path], report)


def test_a_csv_without_its_manifest_sidecar_is_refused_whole(con, tmp_path: Path) -> None:  # noqa: F811
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    bare = fill_csv(
        _exported(export, ALICE, ".csv"),
        tmp_path / "inbox" / "review_alice.csv",
        {"act-followup-1": "approve"},
    )
    manifest_path_for(bare).unlink()
    valid = fill_xlsx(
        _exported(export, BOB, ".xlsx"), tmp_path / "inbox" / "review_bob.xlsx", {"act-dunning-1": "approve"}
    )

    report = import_reviews(con, [bare, valid], AS_OF)
    [refused] = report.rejected_files
    assert refused.file == bare
    assert refused.message.startswith(
        "review_alice.csv: no signed manifest: review_alice.manifest.json is missing next to it"
    )
    assert set(_decisions(con)) == {"act-dunning-1"}
    before = _count(con)
    again = import_reviews(con, [bare, valid], AS_OF + timedelta(hours=1))
    assert not again.applied and _count(con) == before and len(again.rejected_files) == 1


def test_conflicting_decisions_across_two_files_first_recorded_wins(con, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    _settings(tmp_path, monkeypatch, TWO_FOR_QUOTES.format(four_eyes="false", dunning=BOB))
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    manager = fill_csv(
        _exported(export, MANAGER, ".csv"),
        tmp_path / "inbox" / "review_manager.csv",
        {"act-followup-1": "approve"},
    )
    alice = fill_xlsx(
        _exported(export, ALICE, ".xlsx"),
        tmp_path / "inbox" / "review_alice.xlsx",
        {"act-followup-1": ("reject", "no, wrong customer"), "act-followup-2": "approve"},
    )
    report = import_reviews(con, [manager, alice], AS_OF)
    refused = _one_refusal(report)
    assert (refused.file, refused.row, refused.field, refused.value) == (alice, 2, "decision", "reject")
    assert refused.message.startswith(
        "review_alice.xlsx row 2: decision 'reject' conflicts with the decision"
    )
    assert "approved by manager@example.com from review_manager.csv row 2" in refused.message
    assert "the first recorded decision stands" in refused.message
    decisions = _decisions(con)
    assert decisions["act-followup-1"][:2] == ("approved", MANAGER)
    assert decisions["act-followup-2"][:2] == ("approved", ALICE)
    _reimport_adds_nothing(con, [manager, alice], report)


def test_four_eyes_needs_two_distinct_approvers(con, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    _settings(tmp_path, monkeypatch, TWO_FOR_QUOTES.format(four_eyes="true", dunning=BOB))
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    alice = fill_csv(
        _exported(export, ALICE, ".csv"),
        tmp_path / "inbox" / "review_alice.csv",
        {"act-followup-1": ("approve", "looks right"), "act-followup-2": "reject"},
    )
    first = import_reviews(con, [alice], AS_OF)
    assert not first.has_errors, _messages(first)
    assert sorted((a.action_id, a.decision) for a in first.applied) == [
        ("act-followup-1", "first_approval"),
        ("act-followup-2", "rejected"),  # one "no" is enough
    ]
    # the first approval is in the ledger, but the action is not approved (so not dispatched)
    state = _state(con, "act-followup-1")
    assert state["event_type"] == "pending_review" and state["approver_email"] == ALICE
    details = json.loads(state["details"])
    assert details["first_approval"]["approver"] == ALICE and details["first_approval"]["row"] == 2
    assert details["review_expires_at"] == "2026-11-27 09:00:00"  # the deadline is not moved
    request = next(e for e in _trail_events(con, "act-followup-1") if e[0] == "pending_review")
    assert state["event_id"] != request[1]  # its own event id, no collision with the review request

    # the same approver again (her file re-sent the same day, then the next day) does not count twice
    before = _count(con)
    for when in (AS_OF, AS_OF + timedelta(days=1)):
        again = import_reviews(con, [alice], when)
        assert not again.applied and [d.decision for d in again.duplicates] == ["first_approval", "rejected"]
    assert _count(con) == before and _state(con, "act-followup-1")["event_type"] == "pending_review"

    # Alice's next table no longer offers it; pasting it back in is refused as not issued to her
    later = export_reviews(con, tmp_path / "outbox2", AS_OF + timedelta(hours=2))
    assert ALICE not in later.rows_per_approver
    bob_next = fill_csv(
        _exported(later, BOB, ".csv"),
        tmp_path / "inbox" / "review_bob.csv",
        {"act-dunning-1": "approve"},
        extra_rows=[{"action_id": "act-followup-1", "decision": "approve", "approver_email": BOB}],
    )
    sneaked = import_reviews(con, [bob_next], AS_OF + timedelta(hours=2))
    refused = _one_refusal(sneaked)
    assert (refused.row, refused.field, refused.value) == (4, "action_id", "act-followup-1")
    assert [a.action_id for a in sneaked.applied] == ["act-dunning-1"]

    # a second, different approver completes it
    manager = fill_csv(
        _exported(later, MANAGER, ".csv"),
        tmp_path / "inbox" / "review_manager.csv",
        {"act-followup-1": "approve"},
    )
    second = import_reviews(con, [manager], AS_OF + timedelta(hours=3))
    assert [(a.action_id, a.decision) for a in second.applied] == [("act-followup-1", "approved")]
    approved = _state(con, "act-followup-1")
    assert approved["event_type"] == "approved" and approved["approver_email"] == MANAGER
    assert json.loads(approved["details"])["first_approval"]["approver"] == ALICE
    _reimport_adds_nothing(con, [alice, manager], ImportReport(as_of=AS_OF))


def _trail_events(con, action_id: str) -> list[tuple[str, str]]:  # noqa: F811
    return con.execute(
        "select event_type, event_id from ops.action_ledger where action_id = ? order by seq", [action_id]
    ).fetchall()


def test_an_approver_the_policy_no_longer_allows_is_refused(con, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    # at export the manager may decide both rules; by import time finance has taken invoice_dunning over
    _settings(tmp_path, monkeypatch, TWO_FOR_QUOTES.format(four_eyes="false", dunning=MANAGER))
    export = export_reviews(con, tmp_path / "outbox", AS_OF)
    assert export.rows_per_approver[MANAGER] == 4
    _settings(
        tmp_path,
        monkeypatch,
        TWO_FOR_QUOTES.format(four_eyes="false", dunning="fiona@example.com"),
        name="actionlayer-new.yml",
    )
    path = fill_csv(
        _exported(export, MANAGER, ".csv"),
        tmp_path / "inbox" / "review_manager.csv",
        {"act-followup-1": "approve", "act-dunning-1": "approve"},
    )
    report = import_reviews(con, [path], AS_OF)
    refused = _one_refusal(report)
    assert (refused.field, refused.value) == ("approver_email", MANAGER)
    assert refused.message.startswith(
        f"review_manager.csv row {refused.row}: approver_email 'manager@example.com' may not decide action "
        "act-dunning-1 (rule invoice_dunning; allowed: bob@example.com, fiona@example.com)"
    )
    assert set(_decisions(con)) == {"act-followup-1"}
    assert _state(con, "act-dunning-1")["event_type"] == "pending_review"
    _reimport_adds_nothing(con, [path], report)
