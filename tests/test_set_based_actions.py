"""The review export and the dispatch pass's alerts work on whole sets: the number of SQL statements they
issue does not grow with the number of actions or alerts, and what they write stays what it was."""

from __future__ import annotations

import json
import zipfile
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
import xlsxwriter
from statement_counting import CountingConnection

from action_sinks.file import FileOutbox
from action_sinks.registry import ChannelSinks
from actionlayer import alerts, ledger, review
from actionlayer.signing import IssuedAction, Manifest

AS_OF = datetime(2026, 9, 10, 9)


def _alerts(count: int) -> list[alerts.Alert]:
    return [
        alerts.Alert(
            kind="escalation",
            rule_id="care",
            recipient=f"manager{n % 3}@example.com",
            subject=f"[Actionlayer] escalated: care deal D{n}",
            message=f"Action A{n} of rule care escalated to you.",
            dedupe=f"A{n}",
        )
        for n in range(count)
    ]


def _send_alerts(tmp_path: Path, count: int) -> tuple[int, list[str], duckdb.DuckDBPyConnection]:
    raw = duckdb.connect(str(tmp_path / f"alerts-{count}.duckdb"))
    alerts.raise_alerts(raw, _alerts(count), AS_OF)
    con = CountingConnection(raw)
    lines = alerts.send_pending(con, ChannelSinks({}, FileOutbox(tmp_path / f"outbox-{count}")), AS_OF)
    return con.statements, lines, raw


def test_sending_alerts_issues_as_many_statements_for_many_as_for_few(tmp_path):
    few, few_lines, _ = _send_alerts(tmp_path, 5)
    many, many_lines, raw = _send_alerts(tmp_path, 400)
    assert few == many
    assert len(few_lines) == 5 and len(many_lines) == 400
    # every alert is written once, marked sent with its file, and not sent again
    rows = raw.execute(
        "select alert_id, sent_at, send_result from ops.alerts order by raised_at, alert_id"
    ).fetchall()
    files = {p.stem for p in (tmp_path / "outbox-400" / "alerts").glob("*.json")}
    assert files == {f"alert-{alert_id}" for alert_id, _, _ in rows}
    assert all(sent_at == AS_OF and result.startswith("written to ") for _, sent_at, result in rows)
    document = json.loads((tmp_path / "outbox-400" / "alerts" / f"alert-{rows[0][0]}.json").read_text())
    assert document["channel"] == "alerts" and document["metadata"] == {
        "kind": "escalation",
        "rule_id": "care",
    }
    assert many_lines[0].startswith("alert sent to manager")
    assert alerts.send_pending(raw, ChannelSinks({}, FileOutbox(tmp_path / "outbox-400")), AS_OF) == []


def test_an_alert_that_cannot_be_written_stays_unsent_with_the_reason(tmp_path):
    raw = duckdb.connect(str(tmp_path / "alerts.duckdb"))
    alerts.raise_alerts(raw, _alerts(3), AS_OF)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the outbox folder should be")
    lines = alerts.send_pending(raw, ChannelSinks({}, FileOutbox(blocked)), AS_OF)
    assert len(lines) == 3 and all("not sent" in line and "retried next pass" in line for line in lines)
    rows = raw.execute("select sent_at, send_result from ops.alerts").fetchall()
    assert all(sent_at is None and "could not write" in result for sent_at, result in rows)
    # the next pass, with a usable outbox, sends them
    lines = alerts.send_pending(raw, ChannelSinks({}, FileOutbox(tmp_path / "outbox")), AS_OF)
    assert len(lines) == 3
    assert raw.execute("select count(*) from ops.alerts where sent_at is null").fetchall() == [(0,)]


# ---------------------------------------------------------------------------------------------------------
# review export

TRICKY = [
    "plain",
    "",
    "=SUM(A1)",
    "  leading and trailing  ",
    "line one\nline two\r\n",
    "<r>looks rich</r>",
    'quotes " & <tags>',
    "control \x01 char and _x0041_ escape",
    "astral \U0001f600 ok",
    "\ufffe non-character",
    "\u3000ideographic space first",
    "no-break space last\xa0",
    "line separator\u2028",
    "_x00e9_ looks escaped",
]


def _rows(count: int) -> list[list[str]]:
    # 4 columns; the second has no format and is sometimes empty, the last has a format and is often empty
    return [
        [f"id-{n}", TRICKY[n % len(TRICKY)], TRICKY[(n * 3) % len(TRICKY)], "" if n % 3 else "x" * 40_000]
        for n in range(count)
    ]


def _workbook_parts(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 40])
def test_the_review_sheets_block_writer_writes_exactly_what_per_cell_calls_write(tmp_path, count):
    rows = _rows(count)

    def build(path: Path, block: bool) -> None:
        options = {"strings_to_formulas": False, "strings_to_numbers": False, "in_memory": True}
        # the reference is xlsxwriter on its own: its Workbook, its Worksheet, one call per cell
        workbook = (review._ReviewWorkbook if block else xlsxwriter.Workbook)(str(path), options)
        workbook.set_properties({"created": AS_OF})  # as the export does: no clock in the file
        head = workbook.add_format({"bold": True})
        wrap = workbook.add_format({"text_wrap": True})
        fill = workbook.add_format({"bg_color": "#FFFBEA", "locked": False})
        sheet = workbook.add_worksheet("review", review._StringRowsSheet if block else None)
        for col in range(4):
            sheet.write_string(0, col, f"column {col}", head)
        sheet.set_column(2, 2, 30, wrap)
        formats = [None, None, None, fill]
        _write_rows(sheet, rows, formats, 32_767, block)
        other = workbook.add_worksheet("other")
        other.write_string(0, 0, "plain")  # a string shared with the first sheet, and one of its own
        other.write_string(1, 0, "only here")
        workbook.close()

    build(tmp_path / "block.xlsx", block=True)
    build(tmp_path / "cells.xlsx", block=False)
    assert _workbook_parts(tmp_path / "block.xlsx") == _workbook_parts(tmp_path / "cells.xlsx")


def _write_rows(sheet, rows: list[list[str]], formats: list, limit: int, block: bool) -> None:
    """Rows from row 1 on: by the block writer, or (the reference) by xlsxwriter's per-cell calls."""
    if block:
        sheet.write_string_rows(1, rows, formats, limit)
        return
    for number, values in enumerate(rows, start=1):
        for col, value in enumerate(values):
            if value:
                sheet.write_string(number, col, value[:limit], formats[col])
            elif formats[col] is not None:
                sheet.write_blank(number, col, None, formats[col])


@pytest.mark.parametrize(
    "rows",
    [
        # no control character, escape look-alike or rich text anywhere: only edge whitespace is special
        [["a & b", " edge", "plain"], ["tail\u3000", "", "a & b"], ["", "", ""], ["x"]],
        # rows of different lengths and shapes, the same shape again, a row with nothing to write
        [
            ["one"],
            ["", "two", "", "three"],
            ["one", "", "", ""],
            [],
            ["", "", "", ""],
            ["four", "x" * 20_000],
        ],
    ],
)
def test_the_block_writer_matches_per_cell_calls_for_any_row_shape(tmp_path, rows):
    def build(path: Path, block: bool) -> None:
        options = {"strings_to_formulas": False, "strings_to_numbers": False, "in_memory": True}
        workbook = (review._ReviewWorkbook if block else xlsxwriter.Workbook)(str(path), options)
        workbook.set_properties({"created": AS_OF})
        fill = workbook.add_format({"bg_color": "#FFFBEA", "locked": False})
        sheet = workbook.add_worksheet("review", review._StringRowsSheet if block else None)
        sheet.write_string(0, 0, "head")
        formats = [None, fill, None, fill]
        _write_rows(sheet, rows, formats, 10_000, block)
        workbook.close()

    build(tmp_path / "block.xlsx", block=True)
    build(tmp_path / "cells.xlsx", block=False)
    assert _workbook_parts(tmp_path / "block.xlsx") == _workbook_parts(tmp_path / "cells.xlsx")


def _pending_ledger(path: Path, count: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    ledger.ensure_schema(con)
    events = []
    for n in range(count):
        proposed = ledger.LedgerEvent(
            action_id=f"act-{n:05d}",
            event_type="proposed",
            occurred_at=AS_OF,
            actor="rule:followup",
            rule_id="followup",
            rule_version=1,
            maturity_level=3,
            record_type="deal",
            record_id=f"D{n}",
            contact_id=f"C{n}",
            owner_email=f"owner{n % 4}@example.com",
            recommended_action="Follow up",
            channel="email",
            recipient=f"c{n}@customer.example",
            message_subject=f"About deal {n}",
            message_body=f"Hi, deal {n} is waiting.",
        )
        state = {"action_id": proposed.action_id, **{k: getattr(proposed, k) for k in ledger.IDENTITY_FIELDS}}
        events += [proposed, ledger.next_event(state, "pending_review", AS_OF, "rule:followup")]
    ledger.append(con, events)
    return con


def test_review_export_statements_do_not_grow_with_the_actions(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTIONLAYER_CONFIG", str(tmp_path / "absent.yml"))
    monkeypatch.setenv("ACTIONLAYER_REVIEW_SECRET", "k" * 40)
    counts = []
    for count in (8, 400):
        con = CountingConnection(_pending_ledger(tmp_path / f"review-{count}.duckdb", count))
        report = review.export_reviews(con, tmp_path / f"out-{count}", AS_OF)
        assert report.actions == count and sum(report.rows_per_approver.values()) == count
        counts.append(con.statements)
    assert counts[0] == counts[1]


@pytest.mark.parametrize("count", [0, 1, 5])
def test_a_manifests_json_is_what_json_dumps_writes(count):
    ids = [f'act-{n}-"é\u2028' for n in (3, 1, 4, 0, 2)[:count]]
    issued = {
        action_id: IssuedAction(action_id, f"{n:064x}", datetime(2026, 9, 12 + n, 9))
        for n, action_id in enumerate(ids)
    }
    manifest = Manifest("Bob.Smith@Example.com", AS_OF, datetime(2026, 9, 20), issued).signed(b"k" * 40)
    reference = json.dumps({**manifest.payload(), "signature": manifest.signature}, sort_keys=True, indent=1)
    assert manifest.to_json() == reference
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_a_pass_logs_its_alerts_as_one_digest_with_the_unsent_first():
    from orchestration.action_assets import ALERT_LINES_SHOWN, alert_digest

    few = [f"alert sent to ops@example.com: escalated {n}" for n in range(3)]
    assert alert_digest(few) == few
    failed = "alert escalation for care not sent: file outbox: could not write; retried next pass"
    many = [f"alert sent to ops@example.com: escalated {n}" for n in range(500)] + [failed]
    digest = alert_digest(many)
    assert digest[0].startswith("501 alert(s): 500 sent, 1 not sent")
    assert digest[1] == failed and digest[2:] == many[: ALERT_LINES_SHOWN - 1]
