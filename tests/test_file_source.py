"""The file source: a small valid world loads whole; every kind of broken row is quarantined, not loaded."""

from __future__ import annotations

import csv
import json
import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from actionlayer.contract import OBJECT_NAMES, OBJECTS, raw_ddl
from actionlayer.reports import load_summary_lines
from actionlayer.settings import QualityPolicy
from connectors.files import LoadReport, folder_fingerprint, load_folder, object_fingerprint
from connectors.history import record_load_history
from tests.sync_support import quarantine_rows as quarantine

# small fixtures: one broken row is a large share of an object (see conftest.py)
QUALITY_GATE_OFF = True

AS_OF = datetime(2026, 11, 23, 9, 0, 0)


def world() -> dict[str, list[dict[str, str | None]]]:
    """A small valid SoR snapshot: every object, every reference resolvable."""
    ts = "2026-10-01 10:00:00"
    return {
        "accounts": [
            {
                "account_id": f"A{i}",
                "name": f"Acme {i}",
                "industry": None,
                "tier": tier,
                "owner_email": "owner@example.com",
                "created_at": ts,
                "updated_at": "2026-10-02T12:00:00+02:00",
            }
            for i, tier in ((1, "smb"), (2, "Enterprise"), (3, " mid "))
        ],
        "contacts": [
            {
                "contact_id": cid,
                "account_id": acc,
                "first_name": "Ann",
                "last_name": "Lee",
                "email": f"{cid.lower()}@example.com",
                "phone": None,
                "timezone": "Europe/Berlin",
                "do_not_contact": dnc,
                "created_at": ts,
                "updated_at": ts,
            }
            for cid, acc, dnc in (
                ("C1", "A1", "false"),
                ("C2", "A1", "TRUE"),
                ("C3", "A2", "0"),
                ("C4", "A3", "1"),
            )
        ],
        "deals": [
            {
                "deal_id": did,
                "account_id": acc,
                "contact_id": con,
                "owner_email": "owner@example.com",
                "name": f"Deal {did}",
                "stage": stage,
                "amount": amount,
                "currency": "eur",
                "quote_sent_at": None,
                "stage_changed_at": ts,
                "closed_at": None,
                "created_at": ts,
                "updated_at": ts,
            }
            for did, acc, con, stage, amount in (
                ("D1", "A1", "C1", "quote_sent", "1200.50"),
                ("D2", "A2", "C3", " Won ", "0"),
            )
        ],
        "activities": [
            {
                "activity_id": "T1",
                "contact_id": "C1",
                "deal_id": "D1",
                "owner_email": "owner@example.com",
                "kind": "email_out",
                "occurred_at": ts,
                "subject": "Your quote",
            },
            {
                "activity_id": "T2",
                "contact_id": "C3",
                "deal_id": None,
                "owner_email": "owner@example.com",
                "kind": "call",
                "occurred_at": "2026-11-24 08:59:59",
                "subject": None,
            },
        ],
        "invoices": [
            {
                "invoice_id": "I1",
                "account_id": "A1",
                "contact_id": "C1",
                "amount": "99.90",
                "currency": "EUR",
                "issued_at": ts,
                "due_at": "2027-01-31",
                "paid_at": None,
                "status": "open",
                "updated_at": ts,
            },
        ],
        "tickets": [
            {
                "ticket_id": "K1",
                "account_id": "A2",
                "contact_id": "C3",
                "priority": "high",
                "status": "open",
                "subject": "Broken <b>export</b>",
                "body": "It fails.\nSee <script>alert(1)</script>",
                "opened_at": ts,
                "updated_at": ts,
            },
        ],
        "nps_responses": [
            {
                "response_id": "R1",
                "contact_id": "C4",
                "score": "9",
                "comment": 'Great, "really"',
                "responded_at": ts,
            },
            {"response_id": "R2", "contact_id": "C1", "score": "0", "comment": None, "responded_at": ts},
        ],
        "contracts": [
            {
                "contract_id": "K-1",
                "account_id": "A3",
                "start_at": "2026-01-01",
                "end_at": "2027-12-31 00:00:00",
                "auto_renew": "true",
                "value": "12000",
                "status": "active",
            },
        ],
    }


def write_csv(
    folder: Path, name: str, rows: list[dict[str, str | None]], columns: list[str] | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    columns = columns or list(OBJECTS[name].column_names)
    path = folder / f"{name}.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return path


def write_world(folder: Path, data: dict[str, list[dict[str, str | None]]]) -> Path:
    for name, rows in data.items():
        write_csv(folder, name, rows)
    return folder


def raw_keys(con: duckdb.DuckDBPyConnection, name: str) -> set[str]:
    key = OBJECTS[name].key
    return {r[0] for r in con.execute(f"select {key} from raw.{name}").fetchall()}


@pytest.fixture
def con():
    connection = duckdb.connect(":memory:")
    yield connection
    connection.close()


def test_valid_world_loads_whole_with_typed_normalised_columns(tmp_path: Path, con) -> None:
    folder = write_world(tmp_path / "sor", world())
    report = load_folder(con, folder, AS_OF)

    assert not report.has_problems, report.summary_lines()
    for name, rows in world().items():
        assert report.objects[name].status == "loaded"
        assert report.objects[name].rows_loaded == len(rows)
        expected = [c for c in OBJECTS[name].column_names] + ["_source_file", "_row_number", "_loaded_at"]
        assert [d[0] for d in con.execute(f"select * from raw.{name} limit 0").description] == expected
    assert con.execute("select tier from raw.accounts order by account_id").fetchall() == [
        ("smb",),
        ("enterprise",),
        ("mid",),
    ]
    # Offsets are converted to naive UTC.
    assert con.execute("select updated_at from raw.accounts where account_id = 'A1'").fetchone() == (
        datetime(2026, 10, 2, 10, 0),
    )
    deal = con.execute(
        "select stage, amount, currency, typeof(amount) from raw.deals where deal_id='D2'"
    ).fetchone()
    assert deal[0] == "won" and float(deal[1]) == 0 and deal[2] == "EUR" and deal[3] == "DECIMAL(18,2)"
    assert con.execute("select do_not_contact from raw.contacts order by contact_id").fetchall() == [
        (False,),
        (True,),
        (False,),
        (True,),
    ]
    assert con.execute("select score from raw.nps_responses order by response_id").fetchall() == [(9,), (0,)]
    meta = con.execute("select _source_file, _row_number, _loaded_at from raw.invoices").fetchone()
    assert meta == (str(folder / "invoices.csv"), 1, AS_OF)
    log = con.execute(
        "select object, status, rows_read, rows_loaded from ops.load_log order by object"
    ).fetchall()
    assert ("accounts", "loaded", 3, 3) in log and len(log) == 8
    assert report.summary_lines()[0] == "accounts: 3 loaded, none quarantined"


def test_markup_and_multiline_free_text_are_kept_as_data(tmp_path: Path, con) -> None:
    load_folder(con, write_world(tmp_path, world()), AS_OF)
    subject, body = con.execute("select subject, body from raw.tickets").fetchone()
    assert subject == "Broken <b>export</b>"
    assert body == "It fails.\nSee <script>alert(1)</script>"


BROKEN_CASES = [
    # object, key (None = missing), row index, field, bad value, reason_code
    ("nps_responses", None, 0, "response_id", "  ", "missing_key"),
    ("contacts", "C2", 1, "do_not_contact", "yes", "unparseable"),
    ("deals", "D2", 1, "amount", "1,200.00", "unparseable"),
    ("deals", "D2", 1, "amount", "12.345", "unparseable"),
    ("invoices", "I1", 0, "issued_at", "yesterday", "unparseable"),
    ("accounts", "A3", 2, "name", None, "unparseable"),
    ("invoices", "I1", 0, "issued_at", "2026-02-31 10:00:00", "impossible_date"),
    ("activities", "T2", 1, "occurred_at", "2026-11-24 09:00:01", "future_timestamp"),
    ("activities", "T2", 1, "occurred_at", "2026-11-24T10:30:00+01:00", "future_timestamp"),
    ("accounts", "A3", 2, "tier", "gold", "out_of_domain"),
    ("deals", "D2", 1, "currency", "EURO", "out_of_domain"),
    ("invoices", "I1", 0, "amount", "-5.00", "negative_amount"),
    ("nps_responses", "R1", 0, "score", "11", "score_out_of_range"),
    ("nps_responses", "R2", 1, "score", "7.5", "score_out_of_range"),
    ("contacts", "C4", 3, "email", "bob@", "invalid_email"),
    ("accounts", "A3", 2, "owner_email", "owner at example.com", "invalid_email"),
    ("contacts", "C4", 3, "timezone", "Mars/Olympus", "unknown_timezone"),
    ("contacts", "C4", 3, "first_name", "Bob\r\nBcc: evil@example.com", "control_character"),
    ("activities", "T1", 0, "subject", "Hello\x00", "control_character"),
    ("activities", "T2", 1, "deal_id", "D999", "broken_reference"),
    ("contacts", "C4", 3, "account_id", "A404", "broken_reference"),
]


@pytest.mark.parametrize(
    ("name", "key", "index", "column", "value", "reason_code"),
    BROKEN_CASES,
    ids=[f"{c[5]}-{c[0]}.{c[3]}" for c in BROKEN_CASES],
)
def test_each_broken_row_kind_is_quarantined_and_never_loaded(
    tmp_path: Path,
    con,
    name: str,
    key: str | None,
    index: int,
    column: str,
    value: str | None,
    reason_code: str,
) -> None:
    data = world()
    data[name][index][column] = value
    folder = write_world(tmp_path, data)
    report = load_folder(con, folder, AS_OF)

    rows = [q for q in quarantine(con, name) if q["row_number"] == index + 1]
    assert len(rows) == 1, quarantine(con)
    q = rows[0]
    assert q["reason_code"] == reason_code
    assert q["record_key"] == key
    assert q["source_file"] == str(folder / f"{name}.csv")
    assert q["as_of"] == AS_OF and q["first_seen_at"] == AS_OF
    assert column in q["reason"]
    assert json.loads(q["raw_values"])[column] == (None if value in (None, "") else value)
    original_key = world()[name][index][OBJECTS[name].key]
    assert original_key not in raw_keys(con, name)
    assert con.execute(f"select count(*) from raw.{name} where _row_number = ?", [index + 1]).fetchone() == (
        0,
    )
    assert report.objects[name].quarantine_counts.get(reason_code, 0) >= 1
    assert report.has_problems


PLAIN_TIMESTAMPS = [
    "2026-10-01 10:00:00",
    "2026-10-01T10:00:00",
    "2024-02-29 23:59:60",  # a leap second
    "2026-02-29 10:00:00",  # not a leap year
    "2026-04-31 12:00:00",
    "2026-01-01 24:00:00",
    "2026-01-01 23:60:00",
    "2026-13-01 00:00:00",
    "2026-11-24 09:00:01",  # just past as-of + tolerance
    "2026-11-24 09:00:00",
    "0001-01-01 00:00:00",
    "1969-12-31 23:59:59",
]


def test_plain_timestamps_judged_as_the_general_pattern_judges_them(tmp_path: Path, con) -> None:
    # The plain shape is parsed on a fast path; the same instant with a fraction takes the general one.
    data = world()
    template = data["accounts"][0]
    for i, stamp in enumerate(PLAIN_TIMESTAMPS):
        for suffix, key in (("", f"P{i}"), (".0", f"P{i}g")):
            data["accounts"].append(dict(template, account_id=key, created_at=stamp + suffix))
    load_folder(con, write_world(tmp_path, data), AS_OF)

    loaded = dict(con.execute("select account_id, created_at from raw.accounts").fetchall())
    reasons = {q["record_key"]: q["reason_code"] for q in quarantine(con, "accounts")}
    for i, stamp in enumerate(PLAIN_TIMESTAMPS):
        fast, general = f"P{i}", f"P{i}g"
        assert (loaded.get(fast), reasons.get(fast)) == (loaded.get(general), reasons.get(general)), stamp
    assert loaded["P0"] == datetime(2026, 10, 1, 10) == loaded["P1"]
    assert reasons["P3"] == "impossible_date" and reasons["P8"] == "future_timestamp"
    assert "P9" in loaded and "P11" in loaded and "P2" in loaded


def test_reason_sentence_names_field_and_value(tmp_path: Path, con) -> None:
    data = world()
    data["accounts"][2]["tier"] = "gold"
    report = load_folder(con, write_world(tmp_path, data), AS_OF)
    q = quarantine(con, "accounts")[0]
    assert q["reason"] == "tier 'gold' is not one of smb, mid, enterprise"
    assert "accounts: 2 loaded, 1 quarantined (out_of_domain: 1 [A3])" in report.summary_lines()


def test_just_inside_thresholds_are_good(tmp_path: Path, con) -> None:
    data = world()
    data["activities"][0]["occurred_at"] = "2026-11-24 09:00:00"  # exactly as_of + 1 day
    data["nps_responses"][0]["score"] = "10"
    data["nps_responses"][1]["score"] = "7.0"  # spreadsheet export of an integer
    data["invoices"][0]["due_at"] = "2030-01-01 00:00:00"  # planned dates may lie in the future
    data["invoices"][0]["amount"] = "0.00"
    report = load_folder(con, write_world(tmp_path, data), AS_OF)
    assert not report.has_problems, report.summary_lines()
    assert con.execute("select score from raw.nps_responses order by response_id").fetchall() == [(10,), (7,)]


def test_broken_account_cascades_to_contacts_deals_and_their_children(tmp_path: Path, con) -> None:
    data = world()
    data["accounts"][0]["tier"] = "platinum"  # A1: parent of C1, C2, D1, I1
    report = load_folder(con, write_world(tmp_path, data), AS_OF)

    assert raw_keys(con, "accounts") == {"A2", "A3"}
    assert raw_keys(con, "contacts") == {"C3", "C4"}
    assert raw_keys(con, "deals") == {"D2"}
    assert raw_keys(con, "activities") == {"T2"}  # T1 hangs on C1 and D1
    assert raw_keys(con, "invoices") == set()
    assert raw_keys(con, "nps_responses") == {"R1"}  # R2 hangs on C1
    codes = {(q["object"], q["record_key"]): q["reason_code"] for q in quarantine(con)}
    assert codes == {
        ("accounts", "A1"): "out_of_domain",
        ("contacts", "C1"): "broken_reference",
        ("contacts", "C2"): "broken_reference",
        ("deals", "D1"): "broken_reference",
        ("activities", "T1"): "broken_reference",
        ("invoices", "I1"): "broken_reference",
        ("nps_responses", "R2"): "broken_reference",
    }
    contact = next(q for q in quarantine(con, "contacts") if q["record_key"] == "C1")
    assert contact["reason"] == "account_id 'A1' refers to a record in accounts that is itself quarantined"
    assert report.objects["contacts"].quarantined_keys == {"broken_reference": ["C1", "C2"]}


def test_conflicting_duplicates_quarantine_every_copy(tmp_path: Path, con) -> None:
    data = world()
    data["deals"].append({**data["deals"][1], "amount": "999"})
    load_folder(con, write_world(tmp_path, data), AS_OF)
    rows = quarantine(con, "deals")
    assert [(q["record_key"], q["row_number"], q["reason_code"]) for q in rows] == [
        ("D2", 2, "conflicting_duplicate"),
        ("D2", 3, "conflicting_duplicate"),
    ]
    assert "rows 2, 3" in rows[0]["reason"]
    assert raw_keys(con, "deals") == {"D1"}


def test_exact_duplicates_collapse_with_a_warning(tmp_path: Path, con) -> None:
    data = world()
    data["contacts"].append(dict(data["contacts"][2]))
    report = load_folder(con, write_world(tmp_path, data), AS_OF)
    assert not report.has_problems
    assert con.execute(
        "select count(*), min(_row_number) from raw.contacts where contact_id='C3'"
    ).fetchone() == (1, 3)
    assert any("'C3' appears 2 times with identical content" in w for w in report.warnings)


def test_missing_required_column_refuses_object_and_keeps_last_good_copy(tmp_path: Path, con) -> None:
    folder = write_world(tmp_path, world())
    load_folder(con, folder, AS_OF)
    before = con.execute("select * from raw.contacts order by contact_id").fetchall()

    data = world()
    data["contacts"] = data["contacts"][:1]
    columns = [c for c in OBJECTS["contacts"].column_names if c not in ("email", "timezone")]
    write_csv(folder, "contacts", data["contacts"], columns)
    data["deals"].append({**data["deals"][0], "deal_id": "D3", "contact_id": "C4"})
    write_csv(folder, "deals", data["deals"])
    report = load_folder(con, folder, AS_OF)

    assert report.objects["contacts"].status == "refused"
    message = report.refused["contacts"]
    assert str(folder / "contacts.csv") in message and "email, timezone" in message
    assert "kept as last loaded (4 rows)" in message
    assert con.execute("select * from raw.contacts order by contact_id").fetchall() == before
    # Children are checked against the kept copy: C4 still exists there.
    assert raw_keys(con, "deals") == {"D1", "D2", "D3"}
    assert report.has_problems
    log = con.execute(
        "select status, message from ops.load_log where object='contacts' order by status"
    ).fetchall()
    assert [s for s, _ in log] == ["loaded", "refused"]


def test_missing_object_file_is_skipped_and_references_to_nothing_are_not_checked(
    tmp_path: Path, con
) -> None:
    data = world()
    del data["tickets"]
    del data["accounts"]
    folder = write_world(tmp_path, data)
    report = load_folder(con, folder, AS_OF)
    assert report.objects["tickets"].status == "skipped"
    assert report.objects["accounts"].status == "skipped"
    assert "no tickets.csv" in report.skipped["tickets"]
    assert not con.execute(
        "select count(*) from information_schema.tables where table_schema='raw' and table_name='tickets'"
    ).fetchone()[0]
    assert raw_keys(con, "contacts") == {"C1", "C2", "C3", "C4"}
    assert any("contacts.account_id: references to accounts are not checked" in w for w in report.warnings)
    assert not report.has_problems


def test_skipped_object_keeps_its_raw_table_as_reference_target(tmp_path: Path, con) -> None:
    folder = write_world(tmp_path, world())
    load_folder(con, folder, AS_OF)
    (folder / "accounts.csv").unlink()
    data = world()
    data["contacts"][0]["account_id"] = "A77"
    write_csv(folder, "contacts", data["contacts"])
    report = load_folder(con, folder, AS_OF)
    assert report.objects["accounts"].status == "skipped"
    assert raw_keys(con, "accounts") == {"A1", "A2", "A3"}
    assert quarantine(con, "contacts")[0]["reason"] == (
        "account_id 'A77' has no matching record in raw.accounts (last good copy)"
    )


def test_extra_column_is_reported_and_not_loaded(tmp_path: Path, con) -> None:
    folder = write_world(tmp_path, world())
    rows = [{**r, "favourite_colour": "blue"} for r in world()["accounts"]]
    write_csv(folder, "accounts", rows, [*OBJECTS["accounts"].column_names, "favourite_colour"])
    report = load_folder(con, folder, AS_OF)
    assert any("favourite_colour" in w and "schema drift" in w for w in report.warnings)
    assert "favourite_colour" not in [d[0] for d in con.execute("select * from raw.accounts").description]
    assert report.objects["accounts"].rows_loaded == 3


def _snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    tables = {f"raw.{name}": f"select * from raw.{name} order by _row_number" for name in OBJECTS}
    tables["ops.quarantine"] = "select * from ops.quarantine order by object, row_number"
    return {t: con.execute(sql).fetchall() for t, sql in tables.items()}


def test_rerun_on_same_folder_and_as_of_is_idempotent(tmp_path: Path, con) -> None:
    data = world()
    data["accounts"][0]["tier"] = "gold"
    data["contacts"][3]["email"] = "nope"
    folder = write_world(tmp_path, data)
    load_folder(con, folder, AS_OF)
    first = _snapshot(con)
    load_folder(con, folder, AS_OF)
    assert _snapshot(con) == first
    assert len(first["ops.quarantine"]) > 0


def test_fixed_row_leaves_quarantine_and_first_seen_survives(tmp_path: Path, con) -> None:
    data = world()
    data["contacts"][3]["email"] = "nope"
    data["contacts"][2]["timezone"] = "Nowhere/City"
    folder = write_world(tmp_path, data)
    load_folder(con, folder, AS_OF)

    later = datetime(2026, 11, 24, 9, 0)
    data["contacts"][3]["email"] = "fixed@example.com"
    write_csv(folder, "contacts", data["contacts"])
    load_folder(con, folder, later)
    rows = quarantine(con, "contacts")
    assert [(q["record_key"], q["reason_code"], q["as_of"], q["first_seen_at"]) for q in rows] == [
        ("C3", "unknown_timezone", later, AS_OF)
    ]
    assert "C4" in raw_keys(con, "contacts")


def test_parquet_and_xlsx_load_the_same_rows_as_csv(tmp_path: Path) -> None:
    data = world()
    data["contacts"][3]["email"] = "bad@"
    csv_folder = write_world(tmp_path / "csv", data)
    pq_folder = tmp_path / "parquet"
    xlsx_folder = tmp_path / "xlsx"
    pq_folder.mkdir()
    xlsx_folder.mkdir()
    for name in data:
        frame = pl.read_csv(csv_folder / f"{name}.csv", infer_schema=False)
        frame.write_parquet(pq_folder / f"{name}.parquet")
        frame.write_excel(xlsx_folder / f"{name}.xlsx")

    def load(folder: Path) -> tuple[dict, list]:
        with duckdb.connect(":memory:") as connection:
            load_folder(connection, folder, AS_OF)
            tables = {
                name: connection.execute(
                    f"select * exclude (_source_file) from raw.{name} order by _row_number"
                ).fetchall()
                for name in OBJECTS
            }
            q = connection.execute(
                "select object, record_key, row_number, reason_code, reason from ops.quarantine order by all"
            ).fetchall()
            return tables, q

    from_csv = load(csv_folder)
    assert from_csv[1] == [
        ("contacts", "C4", 4, "invalid_email", "email 'bad@' is not a valid email address"),
        (
            "nps_responses",
            "R1",
            1,
            "broken_reference",
            "contact_id 'C4' refers to a record in contacts that is itself quarantined",
        ),
    ]
    assert load(pq_folder) == from_csv
    assert load(xlsx_folder) == from_csv


def test_typed_parquet_columns_are_read_as_contract_text(tmp_path: Path, con) -> None:
    folder = write_world(tmp_path, world())
    (folder / "contracts.csv").unlink()
    pl.DataFrame(
        {
            "contract_id": ["K-1"],
            "account_id": ["A3"],
            "start_at": [datetime(2026, 1, 1)],
            "end_at": [datetime(2027, 12, 31)],
            "auto_renew": [True],
            "value": [12000.5],
            "status": ["ACTIVE"],
        }
    ).write_parquet(folder / "contracts.parquet")
    report = load_folder(con, folder, AS_OF)
    assert not report.has_problems, report.summary_lines()
    row = con.execute("select start_at, auto_renew, value, status from raw.contracts").fetchone()
    assert (
        row[0] == datetime(2026, 1, 1) and row[1] is True and float(row[2]) == 12000.5 and row[3] == "active"
    )


def test_unreadable_file_refuses_object(tmp_path: Path, con) -> None:
    folder = write_world(tmp_path, world())
    (folder / "tickets.csv").write_bytes(b"ticket_id,account_id\n\xff\xfe broken\n")
    report = load_folder(con, folder, AS_OF)
    assert report.objects["tickets"].status == "refused"
    assert "tickets.csv" in report.refused["tickets"]


def test_objects_selection_and_unknown_object(tmp_path: Path, con) -> None:
    folder = write_world(tmp_path, world())
    report = load_folder(con, folder, AS_OF, objects=["contacts", "accounts"])
    assert list(report.objects) == ["accounts", "contacts"]
    with pytest.raises(ValueError, match="unknown object"):
        load_folder(con, folder, AS_OF, objects=["leads"])


def test_fingerprints_change_when_a_file_changes(tmp_path: Path) -> None:
    folder = write_world(tmp_path, world())
    before = folder_fingerprint(folder)
    single = object_fingerprint(folder / "deals.csv")
    assert folder_fingerprint(folder) == before
    stat = (folder / "deals.csv").stat()
    os.utime(folder / "deals.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert folder_fingerprint(folder) != before
    # the object fingerprint is the content's: a touched file is the same file, and a rewrite of the same
    # size under the same mtime (within the file system's timestamp granularity) is a different one
    assert object_fingerprint(folder / "deals.csv") == single
    content = bytearray((folder / "deals.csv").read_bytes())
    first_value = content.index(b"\n") + 1
    content[first_value] = ord("X") if content[first_value] != ord("X") else ord("Y")
    (folder / "deals.csv").write_bytes(bytes(content))
    os.utime(folder / "deals.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (folder / "deals.csv").stat().st_size == stat.st_size
    assert object_fingerprint(folder / "deals.csv") != single


def test_raw_ddl_matches_contract_order() -> None:
    ddl = raw_ddl("nps_responses")
    assert ddl.index("response_id VARCHAR") < ddl.index("score INTEGER") < ddl.index("_loaded_at TIMESTAMP")


# --------------------------------------------------------------------------- unchanged objects

DAY_AFTER = datetime(2026, 11, 24, 9, 0, 0)
DESCENDANTS = {
    "accounts": set(OBJECT_NAMES),
    "contacts": {"contacts", "deals", "activities", "invoices", "tickets", "nps_responses"},
    "deals": {"deals", "activities"},
    "activities": {"activities"},
}


def _pass(con: duckdb.DuckDBPyConnection, folder: Path, as_of: datetime, **kwargs) -> LoadReport:
    """One folder pass as the file source's asset makes it: the load, then the history of what it loaded."""
    report = load_folder(con, folder, as_of, **kwargs)
    record_load_history(con, report)
    return report


def _state(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    state = _snapshot(con)
    for name in OBJECTS:
        state[f"hist.{name}"] = con.execute(f"select * from hist.{name} order by all").fetchall()
    state["ops.drift_events"] = con.execute("select * from ops.drift_events order by all").fetchall()
    return state


def _statuses(report: LoadReport) -> dict[str, str]:
    return {name: result.status for name, result in report.objects.items()}


def _reloaded(report: LoadReport) -> set[str]:
    return {name for name, status in _statuses(report).items() if status != "unchanged"}


def test_second_pass_over_an_unchanged_folder_keeps_every_object(tmp_path: Path, con) -> None:
    data = world()
    data["contacts"][3]["email"] = "nope"  # one quarantined row, kept as it is
    folder = write_world(tmp_path / "sor", data)
    first = _pass(con, folder, AS_OF)
    assert set(_statuses(first).values()) == {"loaded"}
    before = _state(con)
    for path in folder.iterdir():  # touched, not changed: the content decides
        os.utime(path)

    second = _pass(con, folder, DAY_AFTER)
    assert _statuses(second) == dict.fromkeys(OBJECT_NAMES, "unchanged")
    assert _state(con) == before  # raw (incl. _loaded_at), quarantine, history and drift untouched
    contacts = second.objects["contacts"]
    assert contacts.rows_read == contacts.rows_loaded == contacts.rows_quarantined == 0
    assert contacts.rows_kept == 3 and contacts.unchanged_since == AS_OF
    assert "contacts: unchanged since 2026-11-23 09:00:00, 3 rows kept, 1 still quarantined" in (
        second.summary_lines()
    )
    assert not second.refused and not second.has_problems
    logged = con.execute(
        """select object, status, rows_read, rows_loaded, rows_quarantined, fingerprint, input_digest
        from ops.load_log where as_of = ? order by object""",
        [DAY_AFTER],
    ).fetchall()
    first_digests = {name: result.input_digest for name, result in first.objects.items()}
    assert [(o, s, r, lo, q) for o, s, r, lo, q, _, _ in logged] == [
        (name, "unchanged", 0, 0, 0) for name in sorted(OBJECT_NAMES)
    ]
    assert {o: d for o, _, _, _, _, _, d in logged} == first_digests
    assert all(fingerprint for *_, fingerprint, _ in logged)

    # the CLI summary reads the load log: unchanged, what is kept, and the kept quarantine still counts
    lines, problems = load_summary_lines(con, DAY_AFTER)
    assert "accounts: unchanged since 2026-11-23 09:00:00, 3 rows kept" in lines
    assert problems  # contacts still hold a quarantined row


@pytest.mark.parametrize("changed", ["activities", "deals", "contacts", "accounts"])
def test_a_changed_file_reloads_itself_and_the_objects_referencing_it(
    tmp_path: Path, con, changed: str
) -> None:
    data = world()
    folder = write_world(tmp_path / "sor", data)
    _pass(con, folder, AS_OF)
    hist_before = {
        name: con.execute(f"select count(*) from hist.{name}").fetchone()[0] for name in OBJECT_NAMES
    }
    data[changed].pop()  # its last record is gone from the source
    write_csv(folder, changed, data[changed])
    report = _pass(con, folder, DAY_AFTER)
    assert _reloaded(report) == DESCENDANTS[changed]
    assert all(report.objects[name].status == "loaded" for name in DESCENDANTS[changed])
    gone = con.execute(f"select count(*) from hist.{changed} where _valid_to = ?", [DAY_AFTER]).fetchone()[0]
    assert gone >= 1
    for name in set(OBJECT_NAMES) - DESCENDANTS[changed]:
        assert con.execute(f"select count(*) from hist.{name}").fetchone()[0] == hist_before[name]
    # and the pass after that keeps everything again
    assert set(_statuses(_pass(con, folder, DAY_AFTER)).values()) == {"unchanged"}


def test_a_removed_parent_record_orphans_children_that_a_skip_would_have_kept(tmp_path: Path, con) -> None:
    data = world()
    folder = write_world(tmp_path / "sor", data)
    _pass(con, folder, AS_OF)
    data["accounts"] = [a for a in data["accounts"] if a["account_id"] != "A3"]
    write_csv(folder, "accounts", data["accounts"])
    report = _pass(con, folder, DAY_AFTER)
    assert report.objects["contacts"].quarantine_counts == {"broken_reference": 1}
    assert "C4" not in raw_keys(con, "contacts")


def test_a_future_timestamp_quarantined_last_time_is_judged_again(tmp_path: Path, con) -> None:
    data = world()
    data["activities"][0]["occurred_at"] = "2026-11-25 12:00:00"  # more than a day after AS_OF
    folder = write_world(tmp_path / "sor", data)
    first = _pass(con, folder, AS_OF)
    assert first.objects["activities"].quarantine_counts == {"future_timestamp": 1}
    # the row stops being "in the future" once as-of + tolerance reaches it (2026-11-24 12:00); until then
    # judging it again can only give the same result, so the load is kept with the row still quarantined
    due = datetime(2026, 11, 24, 12, 0)
    assert con.execute(
        "select stable_until from ops.load_log where object = 'activities' order by rowid desc limit 1"
    ).fetchone() == (due,)
    for before in (DAY_AFTER, due - timedelta(seconds=1)):
        assert _reloaded(_pass(con, folder, before)) == set()
        assert con.execute("select count(*) from ops.quarantine where object = 'activities'").fetchone() == (
            1,
        )
    # from that moment on it is judged again: the row is good now
    report = _pass(con, folder, due)
    assert _reloaded(report) == {"activities"}
    assert report.objects["activities"].rows_quarantined == 0
    assert con.execute("select count(*) from ops.quarantine where object = 'activities'").fetchone() == (0,)
    # nothing quarantined for the future any more: the next pass keeps it
    assert _reloaded(_pass(con, folder, datetime(2026, 11, 28, 9, 0))) == set()


def test_an_earlier_as_of_than_the_last_load_reloads(tmp_path: Path, con) -> None:
    data = world()
    data["activities"][0]["occurred_at"] = "2026-11-23 12:00:00"  # fine at AS_OF, future two days earlier
    folder = write_world(tmp_path / "sor", data)
    _pass(con, folder, AS_OF)
    replay = datetime(2026, 11, 21, 9, 0)
    report = _pass(con, folder, replay)
    assert set(_statuses(report).values()) == {"loaded"}
    assert report.objects["activities"].quarantine_counts.get("future_timestamp")


def test_a_new_folder_path_a_changed_setting_or_a_refusal_in_between_reloads(tmp_path: Path, con) -> None:
    data = world()
    folder = write_world(tmp_path / "sor", data)
    _pass(con, folder, AS_OF)
    # the same files in another folder are another source
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)
    assert set(_statuses(_pass(con, moved, AS_OF)).values()) == {"loaded"}
    # a stricter limit for deals judges deals (and what references them) again
    strict = QualityPolicy(max_broken_share=1.0, per_object={"deals": 0.5})
    assert _reloaded(_pass(con, moved, AS_OF, quality=strict)) == DESCENDANTS["deals"]
    assert _reloaded(_pass(con, moved, AS_OF, quality=strict)) == set()
    # contacts refused in between (column gone), then restored byte for byte: loaded again
    original = (moved / "contacts.csv").read_bytes()
    write_csv(
        moved, "contacts", data["contacts"], [c for c in OBJECTS["contacts"].column_names if c != "email"]
    )
    assert _pass(con, moved, AS_OF, quality=strict).objects["contacts"].status == "refused"
    (moved / "contacts.csv").write_bytes(original)
    report = _pass(con, moved, AS_OF, quality=strict)
    assert report.objects["contacts"].status == "loaded"
    # deleted and restored: the file is absent for one pass (raw kept), then the same content is kept
    held = (moved / "tickets.csv").read_bytes()
    (moved / "tickets.csv").unlink()
    assert _pass(con, moved, AS_OF, quality=strict).objects["tickets"].status == "skipped"
    (moved / "tickets.csv").write_bytes(held)
    assert _pass(con, moved, AS_OF, quality=strict).objects["tickets"].status == "unchanged"
