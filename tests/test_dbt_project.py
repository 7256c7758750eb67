"""The dbt project end to end on a small hand-made SoR: rules, journey context, ledger-fed marts.

One `dbt build` (models, data tests and the rules' unit tests) on a temporary DuckDB file whose raw.* tables and
ledger are seeded here, then one `dbt run` of the candidates to show the holdout and ids are stable across builds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from actionlayer import ledger, stats
from actionlayer.ledger import LedgerEvent, action_id_for
from connectors.files import ensure_ops_tables

pytestmark = pytest.mark.slow

PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_project"
AS_OF = datetime(2026, 11, 1, 12, 0, 0)
AS_OF_VAR = json.dumps({"as_of": AS_OF.strftime("%Y-%m-%d %H:%M:%S")})

META_COLUMNS = "_source_file varchar, _row_number bigint, _loaded_at timestamp"
RAW_DDL = {
    "accounts": "account_id varchar, name varchar, industry varchar, tier varchar, owner_email varchar, "
    "created_at timestamp, updated_at timestamp",
    "contacts": "contact_id varchar, account_id varchar, first_name varchar, last_name varchar, email varchar, "
    "phone varchar, timezone varchar, do_not_contact boolean, created_at timestamp, updated_at timestamp",
    "deals": "deal_id varchar, account_id varchar, contact_id varchar, owner_email varchar, name varchar, "
    "stage varchar, amount decimal(18,2), currency varchar, quote_sent_at timestamp, stage_changed_at timestamp, "
    "closed_at timestamp, created_at timestamp, updated_at timestamp",
    "activities": "activity_id varchar, contact_id varchar, deal_id varchar, owner_email varchar, kind varchar, "
    "occurred_at timestamp, subject varchar",
    "invoices": "invoice_id varchar, account_id varchar, contact_id varchar, amount decimal(18,2), "
    "currency varchar, issued_at timestamp, due_at timestamp, paid_at timestamp, status varchar, "
    "updated_at timestamp",
    "tickets": "ticket_id varchar, account_id varchar, contact_id varchar, priority varchar, status varchar, "
    "subject varchar, body varchar, opened_at timestamp, updated_at timestamp",
    "nps_responses": "response_id varchar, contact_id varchar, score integer, comment varchar, "
    "responded_at timestamp",
    "contracts": "contract_id varchar, account_id varchar, start_at timestamp, end_at timestamp, "
    "auto_renew boolean, value decimal(18,2), status varchar",
}

O1, O2 = "o1@owners.example", "o2@owners.example"
T0 = "2025-01-01 00:00:00"
ROWS = {
    "accounts": [
        ("A1", "Acme", None, "mid", O1, T0, T0),
        ("A2", "Beta", "retail", "enterprise", O2, T0, T0),
        ("A3", "Dormant Co", None, "smb", O1, T0, T0),
        ("A4", "Renew Co", None, "mid", O2, T0, T0),
        ("A5", "Blocked Co", None, "smb", O1, T0, T0),
        ("A6", "Cooled Co", None, "smb", O2, T0, T0),
        ("A7", "Held Co", None, "smb", O1, T0, T0),
        ("A8", "Finished Co", None, "mid", O1, T0, T0),
    ],
    "contacts": [
        (
            "C1",
            "A1",
            "Ann",
            "Able",
            "ann@a1.example",
            None,
            "Europe/Berlin",
            False,
            "2025-01-01 00:00:00",
            T0,
        ),
        (
            "C2",
            "A1",
            "Bob",
            "Baker",
            "bob@a1.example",
            None,
            "Europe/Berlin",
            True,
            "2025-02-01 00:00:00",
            T0,
        ),
        ("C3", "A2", "Cat", "Cole", "cat@a2.example", None, "UTC", False, T0, T0),
        ("C4", "A3", "Dee", "Dunn", "dee@a3.example", None, "UTC", False, T0, T0),
        ("C5", "A4", "Eve", "Eddy", "eve@a4.example", None, "UTC", False, T0, T0),
        ("C6", "A5", "Fay", "Fox", "fay@a5.example", None, "UTC", False, T0, T0),
        ("C7", "A7", "Gus", "Gray", "gus@a7.example", None, "UTC", False, T0, T0),
        ("C8", "A6", "Hal", "Hunt", "hal@a6.example", None, "UTC", False, T0, T0),
        ("C9", "A8", "Ida", "Irwin", "ida@a8.example", None, "UTC", False, T0, T0),
    ],
    "deals": [
        # quote 12 days old, untouched since: fires; C1 also gets the renewal (higher priority) -> frequency cap
        (
            "D1",
            "A1",
            "C1",
            O1,
            "Acme upgrade",
            "quote_sent",
            1000,
            "EUR",
            "2026-10-20 10:00:00",
            "2026-10-20 10:00:00",
            None,
            T0,
            T0,
        ),
        (
            "D2",
            "A1",
            "C2",
            O1,
            "Acme add-on",
            "quote_sent",
            500,
            "EUR",
            "2026-10-20 10:00:00",
            "2026-10-20 10:00:00",
            None,
            T0,
            T0,
        ),  # do_not_contact
        (
            "D3",
            "A5",
            "C6",
            O1,
            "Blocked deal",
            "quote_sent",
            800,
            "EUR",
            "2026-10-20 10:00:00",
            "2026-10-20 10:00:00",
            None,
            T0,
            T0,
        ),  # open urgent ticket T5 on A5
        (
            "D7",
            "A7",
            "C7",
            O1,
            "Held deal",
            "quote_sent",
            300,
            "EUR",
            "2026-10-20 10:00:00",
            "2026-10-20 10:00:00",
            None,
            T0,
            T0,
        ),  # C7 is in post_quote_followup's holdout group
        (
            "D8",
            "A1",
            "C1",
            O1,
            "Too young",
            "quote_sent",
            100,
            "EUR",
            "2026-10-30 10:00:00",
            "2026-10-30 10:00:00",
            None,
            T0,
            T0,
        ),
        # C9's renewal K8 was delivered by an earlier pass: it no longer takes C9's frequency-cap slot
        (
            "D88",
            "A8",
            "C9",
            O1,
            "Done",
            "quote_sent",
            300,
            "EUR",
            "2026-10-20 10:00:00",
            "2026-10-20 10:00:00",
            None,
            T0,
            T0,
        ),
        (
            "D9",
            "A2",
            "C3",
            O2,
            "Advanced",
            "negotiation",
            900,
            "EUR",
            "2026-09-20 10:00:00",
            "2026-10-05 10:00:00",
            None,
            T0,
            T0,
        ),
        (
            "D10",
            "A2",
            "C3",
            O2,
            "Lost",
            "lost",
            900,
            "EUR",
            "2026-09-20 10:00:00",
            "2026-10-20 10:00:00",
            "2026-10-20 10:00:00",
            T0,
            T0,
        ),
    ],
    "activities": [
        ("ACT1", "C1", "D1", O1, "email_out", "2026-10-15 09:00:00", "intro"),
        ("ACT2", "C4", None, O1, "note", "2026-07-01 09:00:00", None),
        ("ACT3", "C5", None, O2, "call", "2026-10-25 09:00:00", None),
        ("ACT4", "C8", None, O2, "email_out", "2026-06-01 09:00:00", None),
        ("ACT5", "C3", None, O2, "call", "2026-10-28 09:00:00", None),
        ("ACT6", "C6", None, O1, "meeting", "2026-10-01 09:00:00", None),
        ("ACT7", "C7", None, O1, "email_out", "2026-10-01 09:00:00", None),
        ("ACT8", "C9", None, O1, "call", "2026-10-10 09:00:00", None),
    ],
    "invoices": [
        ("I1", "A2", "C3", 250, "EUR", "2026-08-01 00:00:00", "2026-09-01 00:00:00", None, "open", T0),
        (
            "I2",
            "A2",
            "C3",
            250,
            "EUR",
            "2026-07-01 00:00:00",
            "2026-08-01 00:00:00",
            "2026-09-05 00:00:00",
            "paid",
            T0,
        ),
    ],
    "tickets": [
        (
            "T1",
            "A2",
            "C3",
            "normal",
            "open",
            "Question",
            "body",
            "2026-10-31 09:00:00",
            "2026-10-31 09:00:00",
        ),
        (
            "T2",
            "A1",
            "C2",
            "high",
            "open",
            "Slow",
            "body <b>x</b>",
            "2026-10-31 09:00:00",
            "2026-10-31 09:00:00",
        ),
        ("T5", "A5", "C6", "urgent", "open", "Down", "body", "2026-10-30 09:00:00", "2026-10-30 09:00:00"),
    ],
    "nps_responses": [
        ("R1", "C3", 2, "bad", "2026-11-01 08:00:00"),
        ("R2", "C2", 5, None, "2026-11-01 08:00:00"),
    ],
    "contracts": [
        ("K1", "A1", "2025-12-01 00:00:00", "2026-12-01 00:00:00", False, 12000, "active"),
        ("K2", "A4", "2025-12-15 00:00:00", "2026-12-15 00:00:00", False, 6000, "active"),
        ("K8", "A8", "2025-12-10 00:00:00", "2026-12-10 00:00:00", False, 6000, "active"),
        ("K3", "A2", "2025-12-15 00:00:00", "2026-12-15 00:00:00", True, 6000, "active"),
    ],
}

# (rule_id, record_id) -> (journey_status, journey_reason prefix)
EXPECTED_JOURNEY = {
    ("post_quote_followup", "D1"): ("suppressed", "frequency_cap: lost to contract_renewal"),
    ("post_quote_followup", "D2"): ("suppressed", "do_not_contact"),
    ("post_quote_followup", "D3"): ("suppressed", "suppressed: open urgent ticket T5"),
    ("post_quote_followup", "D7"): ("held_out", "holdout"),
    ("overdue_invoice", "I1"): ("eligible", None),
    ("nps_detractor", "R1"): ("eligible", None),
    ("nps_detractor", "R2"): ("held_out", "holdout"),
    ("important_inquiry", "T1"): ("eligible", None),
    ("important_inquiry", "T2"): ("eligible", None),  # internal: do_not_contact of C2 does not apply
    ("important_inquiry", "T5"): ("eligible", None),
    ("contract_renewal", "K1"): ("eligible", None),
    ("contract_renewal", "K2"): (
        "suppressed",
        "frequency_cap: lost to dormant_customer (delivered 2026-11-01",
    ),
    ("post_quote_followup", "D88"): ("eligible", None),
    ("contract_renewal", "K8"): ("eligible", None),  # already delivered: Python skips it, the cap ignores it
    ("dormant_customer", "A3"): ("held_out", "holdout"),
    ("dormant_customer", "A6"): ("suppressed", "cooldown: acted on 2026-10-22"),
}


def ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def holdout_bucket(rule_id: str, contact_id: str | None) -> float:
    """Python mirror of macros/holdout_bucket.sql."""
    digest = hashlib.md5(f"{rule_id}:{contact_id or ''}".encode()).digest()
    return (int.from_bytes(digest[8:16], "little") % 10000) / 10000


def trail(action_id: str, identity: dict, steps: list[tuple[str, str, dict]]) -> list[LedgerEvent]:
    return [
        LedgerEvent(action_id=action_id, event_type=event_type, occurred_at=ts(at), **identity, **extra)
        for event_type, at, extra in steps
    ]


def seed_ledger(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    ledger.ensure_schema(con)
    ids = {
        "m1": action_id_for("post_quote_followup", "deal", "D9", "2026-09-20 10:00:00"),
        "m2": action_id_for("post_quote_followup", "deal", "D10", "2026-09-20 10:00:00"),
        "m3": action_id_for("post_quote_followup", "deal", "D99", "2026-09-20 10:00:00"),
        "m4": action_id_for("overdue_invoice", "invoice", "I2", "2026-08-01"),
        "cap": action_id_for("dormant_customer", "account", "A4", "2026-01-01"),
        "cool": action_id_for("dormant_customer", "account", "A6", "2026-01-01"),
        "done": action_id_for("contract_renewal", "contract", "K8", "2026-12-10"),
    }

    def ident(
        rule_id, record_type, record_id, contact_id, account_id, owner, signal_at, channel, actor, level
    ):
        return {
            "rule_id": rule_id,
            "rule_version": 1,
            "maturity_level": level,
            "record_type": record_type,
            "record_id": record_id,
            "contact_id": contact_id,
            "account_id": account_id,
            "owner_email": owner,
            "signal_at": ts(signal_at),
            "channel": channel,
            "actor": actor,
        }

    pq = ("post_quote_followup", "deal")
    events = []
    events += trail(
        ids["m1"],
        ident(*pq, "D9", "C3", "A2", O2, "2026-09-27 10:00:00", "email", "pass", 3),
        [
            ("proposed", "2026-09-28 09:00:00", {}),
            ("pending_review", "2026-09-28 09:00:00", {}),
            ("approved", "2026-09-28 15:00:00", {"approver_email": O2}),
            ("sending", "2026-09-28 15:05:00", {"attempt": 1}),
            ("delivered", "2026-09-28 15:06:00", {"attempt": 1, "result": "ok"}),
        ],
    )
    events += trail(
        ids["m2"],
        ident(*pq, "D10", "C3", "A2", O2, "2026-09-27 10:00:00", "email", "pass", 3),
        [
            ("proposed", "2026-09-28 09:00:00", {"holdout": True}),
            ("held_out", "2026-09-28 09:00:00", {"holdout": True}),
        ],
    )
    events += trail(
        ids["m3"],
        ident(*pq, "D99", "C3", "A2", O1, "2026-09-27 10:00:00", "email", "pass", 3),
        [
            ("proposed", "2026-09-28 09:00:00", {}),
            ("pending_review", "2026-09-28 09:00:00", {}),
            ("rejected", "2026-09-29 09:00:00", {"approver_email": O1}),
        ],
    )
    inv = ident(
        "overdue_invoice",
        "invoice",
        "I2",
        "C3",
        "A2",
        O2,
        "2026-08-31 00:00:00",
        "task",
        "auto:overdue_invoice",
        4,
    )
    events += trail(
        ids["m4"],
        inv,
        [
            ("proposed", "2026-08-31 12:00:00", {}),
            ("approved", "2026-08-31 12:00:00", {}),
            ("sending", "2026-08-31 12:00:30", {"attempt": 1}),
            ("delivered", "2026-08-31 12:01:00", {"attempt": 1, "result": "ok"}),
        ],
    )
    dormant = ("dormant_customer", "account")
    for key, record, contact, account, at in (
        ("cap", "A4", "C5", "A4", "2026-11-01 02:00:00"),  # delivered to C5 10 h before as_of
        ("cool", "A6", "C8", "A6", "2026-10-22 08:00:00"),  # same rule and record 10 days ago
    ):
        identity = ident(*dormant, record, contact, account, O2, at, "email", "auto:dormant_customer", 4)
        events += trail(
            ids[key],
            identity,
            [
                ("proposed", at, {}),
                ("approved", at, {}),
                ("sending", at, {"attempt": 1}),
                ("delivered", at, {"attempt": 1, "result": "ok"}),
            ],
        )
    renewal = ident(
        "contract_renewal", "contract", "K8", "C9", "A8", O1, "2026-10-11 00:00:00", "email", "pass", 3
    )
    events += trail(
        ids["done"],
        renewal,
        [
            ("proposed", "2026-10-28 09:00:00", {}),
            ("pending_review", "2026-10-28 09:00:00", {}),
            ("approved", "2026-10-28 10:00:00", {"approver_email": O1}),
            ("sending", "2026-10-28 10:01:00", {"attempt": 1}),
            ("delivered", "2026-10-28 10:02:00", {"attempt": 1, "result": "ok"}),
        ],
    )
    ledger.append(con, events)
    return ids


def create_raw(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists raw")
    for table, columns in RAW_DDL.items():
        con.execute(f"create or replace table raw.{table} ({columns}, {META_COLUMNS})")
        width = len(columns.split(", "))
        placeholders = ", ".join(["?"] * (width + 3))
        rows = [[*row, f"{table}.csv", number, AS_OF] for number, row in enumerate(ROWS[table], start=1)]
        con.executemany(f"insert into raw.{table} values ({placeholders})", rows)


def run_dbt(args: list[str], work_dir: Path):
    """One in-process dbt invocation; target and logs go to work_dir, not into the repository."""
    from dbt.cli.main import dbtRunner

    started = time.monotonic()
    paths = ["--target-path", str(work_dir / "target"), "--log-path", str(work_dir / "logs")]
    result = dbtRunner().invoke(
        [*args, "--project-dir", str(PROJECT_DIR), "--profiles-dir", str(PROJECT_DIR), *paths]
    )
    return result, time.monotonic() - started


def generic_test_results(result) -> dict[tuple[str, str], Any]:
    """Each generic data test a dbt invocation ran, by (test name, model it checks): dbt's result for it."""
    return {
        (r.node.test_metadata.name, r.node.attached_node.split(".")[-1]): r
        for r in result.result.results
        if r.node.resource_type == "test" and r.node.test_metadata is not None
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dbt")
    db_file = tmp / "actionlayer.duckdb"
    saved = {name: os.environ.get(name) for name in ("ACTIONLAYER_DB", "DBT_SEND_ANONYMOUS_USAGE_STATS")}
    os.environ["ACTIONLAYER_DB"] = str(db_file)
    os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    with duckdb.connect(str(db_file)) as con:
        create_raw(con)
        ensure_ops_tables(con)
        ids = seed_ledger(con)
    result, seconds = run_dbt(["build", "--vars", AS_OF_VAR], tmp)
    with duckdb.connect(str(db_file)) as con:
        first = con.execute("select * from main.action_candidates order by action_id").fetchall()
    # a second pass on the same data: same ids, same holdout assignment
    rerun, _ = run_dbt(
        ["run", "--select", "int_rule_candidates", "action_candidates", "--vars", AS_OF_VAR], tmp
    )
    yield {"result": result, "seconds": seconds, "db": db_file, "ids": ids, "first": first, "rerun": rerun}
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(tmp, ignore_errors=True)


def query(db_file: Path, sql: str) -> list[dict]:
    with duckdb.connect(str(db_file)) as con:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_build_succeeds_with_unit_tests(built):
    result = built["result"]
    failures = [
        f"{r.node.unique_id}: {r.status} {r.message}"
        for r in result.result.results
        if str(r.status) not in ("success", "pass")
    ]
    assert result.success, failures
    unit_tests = [r for r in result.result.results if r.node.resource_type == "unit_test"]
    assert {r.node.name.split("_")[0] for r in unit_tests} >= {
        "post",
        "overdue",
        "nps",
        "important",
        "contract",
        "dormant",
    }
    assert all(str(r.status) == "pass" for r in unit_tests)
    print(f"dbt build on the test data: {built['seconds']:.1f} s, {len(result.result.results)} nodes")


def test_candidates_per_rule_and_journey(built):
    rows = query(built["db"], "select * from main.action_candidates")
    got = {(r["rule_id"], r["record_id"]): r for r in rows}
    assert set(got) == set(EXPECTED_JOURNEY)
    for key, (status, reason) in EXPECTED_JOURNEY.items():
        row = got[key]
        assert row["journey_status"] == status, (key, row["journey_reason"])
        if reason is None:
            assert row["journey_reason"] is None, key
        else:
            assert row["journey_reason"].startswith(reason), (key, row["journey_reason"])
    # meta reached SQL from YAML
    renewal = got[("contract_renewal", "K1")]
    assert (renewal["maturity_level"], renewal["channel"], renewal["audience"], renewal["category"]) == (
        3,
        "email",
        "contact",
        "sales",
    )
    assert renewal["recipient_email"] == "ann@a1.example" and renewal["contact_first_name"] == "Ann"
    assert json.loads(renewal["reason"])["account_name"] == "Acme"
    assert got[("important_inquiry", "T2")]["recipient_email"] == O1
    # escalation raises the priority
    assert got[("nps_detractor", "R1")]["escalate"] is True
    assert got[("nps_detractor", "R1")]["priority"] == 70 + 20
    assert got[("important_inquiry", "T5")]["escalate"] is True
    assert all(r["as_of"] == AS_OF for r in rows)


def test_action_id_and_holdout_are_deterministic(built):
    rows = query(
        built["db"],
        """
        select c.*, r.signal_key, r.holdout_share
        from main.action_candidates c join main.int_rule_candidates r using (action_id)
    """,
    )
    assert rows
    for row in rows:
        assert row["action_id"] == action_id_for(
            row["rule_id"], row["record_type"], row["record_id"], row["signal_key"]
        )
        assert row["holdout"] == (holdout_bucket(row["rule_id"], row["contact_id"]) < row["holdout_share"])
    assert built["rerun"].success
    second = query(built["db"], "select * from main.action_candidates order by action_id")
    assert [tuple(r.values()) for r in second] == built["first"]


def test_marts_on_seeded_ledger(built):
    db, ids = built["db"], built["ids"]
    facts = {r["action_id"]: r for r in query(db, "select * from main.fct_actions")}
    assert set(facts) == set(ids.values())
    m1 = facts[ids["m1"]]
    assert m1["decision"] == "approved" and m1["approver_email"] == O2 and m1["final_state"] == "delivered"
    assert m1["outcome_achieved"] is True and m1["outcome_at"] == ts("2026-10-05 10:00:00")
    assert m1["latency_hours"] == pytest.approx(29.1)
    assert facts[ids["m2"]]["holdout"] is True and facts[ids["m2"]]["outcome_achieved"] is False
    assert facts[ids["m3"]]["decision"] == "rejected" and facts[ids["m3"]]["outcome_achieved"] is None
    assert facts[ids["m4"]]["outcome_achieved"] is True and facts[ids["m4"]]["approver_email"] == (
        "auto:overdue_invoice"
    )

    perf = {r["rule_id"]: r for r in query(db, "select * from main.mart_rule_performance")}
    assert set(perf) == {
        "post_quote_followup",
        "overdue_invoice",
        "nps_detractor",
        "important_inquiry",
        "contract_renewal",
        "dormant_customer",
        "invoice_due_reminder",
        "ticket_reply_nudge",
    }
    pq = perf["post_quote_followup"]
    assert (pq["candidates"], pq["sent"], pq["held_out"], pq["reviewed"]) == (3, 1, 1, 2)
    assert pq["approval_rate"] == pytest.approx(0.5)
    assert (pq["conversion_acted"], pq["conversion_held_out"], pq["uplift"]) == (1.0, 0.0, 1.0)
    assert perf["nps_detractor"]["candidates"] == 0 and perf["nps_detractor"]["uplift"] is None
    # the interval, p-value, MDE, SRM and verdict agree with the Python mirror (actionlayer/stats.py)
    for row in perf.values():
        counts = (
            row["acted_converted"],
            row["acted_closed"],
            row["held_out_converted"],
            row["held_out_closed"],
        )
        diff, lower, upper = stats.newcombe_difference(*counts)
        assert (
            row["uplift_ci_lower"] == pytest.approx(lower, abs=1e-9)
            if lower is not None
            else row["uplift_ci_lower"] is None
        )
        assert (
            row["uplift_ci_upper"] == pytest.approx(upper, abs=1e-9)
            if upper is not None
            else row["uplift_ci_upper"] is None
        )
        assert row["verdict"] == stats.verdict(row["acted_closed"], row["held_out_closed"], lower, upper)
    assert pq["verdict"] == "insufficient_data"
    assert -1.0 <= pq["uplift_ci_lower"] < pq["uplift"] < pq["uplift_ci_upper"] + 1e-12 <= 1.0 + 1e-12
    assert perf["post_quote_followup"]["p_value"] == pytest.approx(stats.two_proportion_p_value(1, 1, 0, 1))

    # health, owners and channels agree with the facts they summarise
    health = {r["rule_id"]: r for r in query(db, "select * from main.mart_rule_health")}
    assert set(health) == set(perf)
    for rule_id, row in health.items():
        rows = [f for f in facts.values() if f["rule_id"] == rule_id]
        reviewed = [f for f in rows if f["was_reviewed"]]
        assert (row["actions"], row["reviewed"]) == (len(rows), len(reviewed))
        assert row["rejected"] == sum(f["decision"] == "rejected" for f in reviewed)
    assert health["post_quote_followup"]["share_rejected"] == pytest.approx(0.5)
    owners = {r["owner_email"]: r for r in query(db, "select * from main.mart_owner_performance")}
    o2_reviews = [f for f in facts.values() if f["was_reviewed"] and f["owner_email"] == O2]
    assert owners[O2]["reviews"] == len(o2_reviews) and owners[O2]["approved"] == sum(
        f["decision"] == "approved" for f in o2_reviews
    )
    channels = {
        (r["rule_id"], r["channel"]): r for r in query(db, "select * from main.mart_channel_performance")
    }
    sent = [f for f in facts.values() if f["first_sent_at"] is not None and not f["holdout"]]
    assert sum(r["sent"] for r in channels.values()) == len(sent)
    assert all(0 <= r["delivery_rate"] <= 1 for r in channels.values())

    latency = {
        (r["rule_id"], r["owner_email"], r["week_start"]): r
        for r in query(db, "select * from main.mart_action_latency")
    }
    weeks = {(rule, owner): [] for rule, owner, _ in latency}
    for rule, owner, week in latency:
        weeks[(rule, owner)].append(week)
        assert week.weekday() == 0  # ISO weeks start on Monday
    delivered = [f for f in facts.values() if f["delivered_at"] is not None]
    assert sum(r["actions"] for r in latency.values()) == len(delivered)
    (pq_week,) = weeks[("post_quote_followup", O2)]
    assert latency[("post_quote_followup", O2, pq_week)]["actions"] == 1
    assert latency[("post_quote_followup", O2, pq_week)]["p50_latency_hours"] == pytest.approx(29.1)
    assert sum(latency[("dormant_customer", O2, w)]["actions"] for w in weeks[("dormant_customer", O2)]) == 2

    # fct_outcomes: every action has an outcome row; open windows are not failures; the weekly mart adds up
    outcomes = {r["action_id"]: r for r in query(db, "select * from main.fct_outcomes")}
    assert set(outcomes) == set(facts)
    for action_id, row in outcomes.items():
        fact = facts[action_id]
        expected_group = "held_out" if fact["holdout"] else "acted" if fact["delivered_at"] else "not_acted"
        assert row["arm_group"] == expected_group
        assert row["outcome_status"] in {"achieved", "not_achieved", "open", "not_applicable"}
        assert (row["outcome_status"] == "open") == (
            row["outcome_achieved"] is None and row["outcome_kind"] is not None
        )
        if expected_group != "not_acted":
            assert row["outcome_achieved"] == fact["outcome_achieved"]
    weekly = query(db, "select * from main.mart_rule_performance_weekly")
    for rule_id, row in perf.items():
        rows = [w for w in weekly if w["rule_id"] == rule_id]
        for column in ("candidates", "sent", "held_out", "acted_closed", "held_out_converted"):
            assert sum(w[column] for w in rows) == row[column], (rule_id, column)


def test_parse_needs_no_database(tmp_path):
    env = {"ACTIONLAYER_DB": str(tmp_path / "missing" / "nowhere.duckdb")}
    saved = os.environ.get("ACTIONLAYER_DB")
    os.environ.update(env)
    try:
        result, _ = run_dbt(["parse"], tmp_path)
    finally:
        if saved is None:
            os.environ.pop("ACTIONLAYER_DB", None)
        else:
            os.environ["ACTIONLAYER_DB"] = saved
    assert result.success
    assert (tmp_path / "target" / "manifest.json").exists()
    assert not (tmp_path / "missing").exists()


def test_the_key_and_not_null_checks_catch_a_broken_model_and_name_what_broke(built, tmp_path, monkeypatch):
    """primary_key and columns_not_null, the project's own generic tests: a null key, a repeated key and nulls
    in two required columns each fail, with one row per offending key or column."""
    db_file = tmp_path / "broken.duckdb"
    with duckdb.connect(str(built["db"])) as con:
        con.execute("checkpoint")  # the copy must hold every table, not leave some in the write-ahead log
    shutil.copy(built["db"], db_file)
    with duckdb.connect(str(db_file)) as con:
        [first, second] = [
            row[0]
            for row in con.execute(
                "select action_id from main.action_candidates order by action_id limit 2"
            ).fetchall()
        ]
        con.execute("update main.action_candidates set action_id = null where action_id = ?", [first])
        con.execute(
            "insert into main.action_candidates select * from main.action_candidates where action_id = ?",
            [second],
        )
        con.execute(
            "update main.action_candidates set contact_id = null, owner_email = null where action_id = ?",
            [second],
        )
    monkeypatch.setenv("ACTIONLAYER_DB", str(db_file))
    result, _ = run_dbt(
        ["test", "--select", "action_candidates", "--exclude", "test_type:unit", "--vars", AS_OF_VAR],
        tmp_path,
    )
    failed = {name: r for (name, _), r in generic_test_results(result).items() if r.status == "fail"}
    assert {name: r.failures for name, r in failed.items()} == {"primary_key": 2, "columns_not_null": 2}
    compiled = {name: r.node.compiled_code for name, r in failed.items()}
    with duckdb.connect(str(db_file)) as con:
        keys = con.execute(compiled["primary_key"]).fetchall()
        columns = con.execute(compiled["columns_not_null"]).fetchall()
    assert sorted(keys, key=str) == sorted([(None, 1), (second, 2)], key=str)
    assert sorted(columns) == [("contact_id", 2), ("owner_email", 2)]
