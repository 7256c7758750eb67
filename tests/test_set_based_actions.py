"""The review export and the dispatch pass's alerts work on whole sets: the number of SQL statements they
issue does not grow with the number of actions or alerts, and what they write stays what it was."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from action_sinks.file import FileOutbox
from action_sinks.registry import ChannelSinks
from actionlayer import alerts

AS_OF = datetime(2026, 9, 10, 9)


class CountingConnection:
    """A real DuckDB connection that counts the statements sent through it (everything else passes through)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self.statements = 0

    def execute(self, sql: str, *args: Any) -> duckdb.DuckDBPyConnection:
        self.statements += 1
        return self._con.execute(sql, *args)

    def executemany(self, sql: str, params: list) -> duckdb.DuckDBPyConnection:
        self.statements += len(params)
        return self._con.executemany(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


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
