"""The whole loop from the command line on a small demo world: SoR folder with broken rows → quarantine,
dbt rules → candidates → ledger → review files → SMTP (aiosmtpd) and file outbox → outcome marts;
re-runs add nothing, `--strict` fails on broken rows, a missing required column refuses its object."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
from loopback import RecordingHandler, SmtpServer

from actionlayer.config import PROJECT_ROOT
from actionlayer.demo.world import LEARNING_RULE_IDS, RULE_IDS, generate_world, load_demo_config, write_sor
from actionlayer.review import read_review_rows, write_review_csv

pytestmark = pytest.mark.slow

RULES = set(RULE_IDS) | set(LEARNING_RULE_IDS)
DAY_ONE = datetime(2026, 9, 1, 9)
DAY_TWO = datetime(2026, 9, 2, 9)
BROKEN_ROWS = 6


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("actionlayer")), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _query(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.fixture
def world_env(tmp_path):
    data = tmp_path / "data"
    smtp = SmtpServer(RecordingHandler())
    env = {
        **os.environ,
        "ACTIONLAYER_DATA": str(data),
        "ACTIONLAYER_DB": str(data / "actionlayer.duckdb"),
        "DAGSTER_HOME": str(data / "dagster_home"),
        "ACTIONLAYER_CONFIG": str(tmp_path / "no-settings.yml"),
        "ACTIONLAYER_SMTP_HOST": "127.0.0.1",
        "ACTIONLAYER_SMTP_PORT": str(smtp.port),
        "ACTIONLAYER_SMTP_FROM": "actions@demo-company.example",
        "COLUMNS": "200",
        "ACTIONLAYER_REVIEW_SECRET": "9f2c" * 16,
    }
    config = load_demo_config(size="small")
    world = generate_world(config)
    sor = tmp_path / "sor"
    write_sor(world, sor, DAY_ONE, broken_rows=BROKEN_ROWS)
    with smtp:
        yield env, sor, data / "actionlayer.duckdb", data, smtp, world


def test_whole_loop_from_the_cli(world_env):
    env, sor, db, data, smtp, world = world_env

    # pass one: broken rows are quarantined and named, good rows act, exit 0 with a warning
    first = _cli(env, "run", "--sor", str(sor), "--as-of", DAY_ONE.isoformat())
    assert first.returncode == 0, first.stdout + first.stderr
    assert "quarantined" in first.stderr
    # a pass of minutes is never silent: piped, every stage is one plain line with its time and rows
    for stage in (
        "load + quality gate",
        "decision models",
        "proposals / ledger",
        "review export",
        "dispatch",
        "marts",
    ):
        # on failure show every stage line (the whole stderr is cut short in pytest's report)
        assert re.search(rf"^{re.escape(stage)}: done in \d+\.\d s", first.stderr, re.M), (
            stage,
            [
                line
                for line in first.stderr.splitlines()
                if ": done in" in line or ": FAILED" in line or ": skipped" in line
            ],
            first.stderr[-3000:],
        )
    assert re.search(
        r"^load \+ quality gate: .*\(\d[\d,]* rows loaded, [1-9]\d* rows quarantined\)", first.stderr, re.M
    )
    quarantined = _query(
        db, "select object, record_key, source_file, row_number, reason_code from ops.quarantine"
    )
    assert len(quarantined) >= BROKEN_ROWS
    assert all(source and row_number for _, _, source, row_number, _ in quarantined)
    broken_keys = {key for _, key, _, _, _ in quarantined if key}
    for key in broken_keys:
        assert key in first.stderr or "…" in first.stderr, f"broken key {key} not named in the run's output"
    built_on = _query(db, "select record_id, contact_id, account_id from main.action_candidates")
    assert not broken_keys & {value for row in built_on for value in row}, (
        "a candidate was built on a broken record"
    )

    assert {r for (r,) in _query(db, "select distinct rule_id from main.action_candidates")} == RULES

    # auto (level 4) email actions went out over SMTP; tasks and notifications went to the file outbox
    delivered_email = _query(
        db,
        "select action_id, recipient from ops.action_ledger where event_type = 'delivered' and channel = 'email'",
    )
    assert delivered_email, "no email was delivered"
    received = {message["X-Actionlayer-Action-Id"] for message in smtp.handler.messages}
    assert received == {action_id for action_id, _ in delivered_email}
    internal = _query(
        db,
        "select action_id, channel from ops.action_ledger where event_type = 'delivered' and channel <> 'email'",
    )
    assert internal
    for action_id, channel in internal:
        assert (data / "outbox" / channel / f"{action_id}.json").exists()
    held_out = _query(db, "select count(*) from ops.action_state where event_type = 'held_out'")[0][0]
    pending = _query(
        db, "select action_id, owner_email from ops.action_state where event_type = 'pending_review'"
    )
    assert pending, "no level-3 action waits for review"
    assert held_out + len(pending) > 0

    # the marts are built and readable
    rules_in_mart = {r for (r,) in _query(db, "select rule_id from main.mart_rule_performance")}
    assert rules_in_mart == RULES
    fct = _query(db, "select count(*), count(distinct action_id) from main.fct_actions")[0]
    ledger_actions = _query(db, "select count(distinct action_id) from ops.action_ledger")[0][0]
    assert fct == (ledger_actions, ledger_actions)
    assert _query(db, "select count(*) from main.mart_action_latency")[0][0] > 0

    # review tables: one CSV and one XLSX per approver with pending actions
    exported = sorted((data / "review" / "outbox").glob("review_*.csv"))
    owners = {owner for _, owner in pending}
    assert len(exported) == len(owners)
    assert len(list((data / "review" / "outbox").glob("review_*.xlsx"))) == len(owners)

    # each approver fills in their file (CSV with its signed manifest): all approve, but one row says "maybe"
    filled_files, rows = [], []
    for index, path in enumerate(exported):
        answers = read_review_rows(path)
        for row in answers:
            row["decision"] = "approve"
        if index == 0:
            answers[0]["decision"] = "maybe"
        filled = data / f"filled_{index}.csv"
        write_review_csv(filled, answers, manifest_from=path)
        filled_files.append(str(filled))
        rows += answers
    assert len(rows) >= 2
    imported = _cli(env, "review", "import", *filled_files, "--as-of", DAY_ONE.replace(hour=10).isoformat())
    assert imported.returncode == 1
    assert "filled_0.csv row 2" in imported.stderr and "maybe" in imported.stderr
    approved_ids = {row["action_id"] for row in rows[1:]}
    states = dict(_query(db, "select action_id, event_type from ops.action_state"))
    assert states[rows[0]["action_id"]] == "pending_review", "the rejected row must not be applied"
    assert all(states[a] == "approved" for a in approved_ids)

    before_dispatch = len(smtp.handler.messages)
    delivered_before = {
        a for a, e in _query(db, "select action_id, event_type from ops.action_state") if e == "delivered"
    }
    dispatched = _cli(env, "dispatch", "--as-of", DAY_ONE.replace(hour=11).isoformat())
    assert dispatched.returncode == 0, dispatched.stdout + dispatched.stderr
    states = dict(_query(db, "select action_id, event_type from ops.action_state"))
    assert all(states[a] == "delivered" for a in approved_ids)
    channels = dict(_query(db, "select action_id, channel from ops.action_state"))
    # the approved ones, and level-5 nudges whose send window opened by 11:00 (each email reaches aiosmtpd once)
    newly = {a for a, e in states.items() if e == "delivered"} - delivered_before
    assert approved_ids <= newly
    assert len(smtp.handler.messages) - before_dispatch == sum(channels[a] == "email" for a in newly)

    one = next(iter(approved_ids))
    shown = _cli(env, "ledger", "show", one)
    assert shown.returncode == 0
    for event in ("proposed", "pending_review", "approved", "sending", "delivered"):
        assert event in shown.stdout
    assert "approve" in shown.stdout

    # re-running the same pass adds nothing and rewrites nothing; --strict fails on the broken rows
    ledger_before = _query(db, "select * from ops.action_ledger order by seq")
    quarantine_before = _query(db, "select * exclude (first_seen_at) from ops.quarantine order by all")
    again = _cli(env, "run", "--sor", str(sor), "--as-of", DAY_ONE.isoformat(), "--strict")
    assert again.returncode == 3, again.stdout + again.stderr
    assert _query(db, "select * from ops.action_ledger order by seq") == ledger_before
    assert (
        _query(db, "select * exclude (first_seen_at) from ops.quarantine order by all") == quarantine_before
    )

    status = _cli(env, "status")
    assert "delivered" in status.stdout and "pending_review" in status.stdout

    # day two: tickets lose a required column; that object is refused by name, the last good copy stays
    write_sor(world, sor, DAY_TWO)
    with (sor / "tickets.csv").open(newline="", encoding="utf-8") as handle:
        tickets = list(csv.DictReader(handle))
    with (sor / "tickets.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=[c for c in tickets[0] if c != "priority"], extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(tickets)
    tickets_before = _query(db, "select count(*) from raw.tickets")[0][0]
    second = _cli(env, "run", "--sor", str(sor), "--as-of", DAY_TWO.isoformat())
    assert second.returncode == 0, second.stdout + second.stderr
    assert "tickets" in second.stderr and "priority" in second.stderr
    assert _query(db, "select count(*) from raw.tickets")[0][0] == tickets_before
    # everything earlier in the ledger is still there, unchanged
    assert _query(db, "select * from ops.action_ledger order by seq")[: len(ledger_before)] == ledger_before
