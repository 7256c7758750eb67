"""The PostgreSQL connector against a real PostgreSQL 16 (pgserver, one server for the module)."""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import duckdb
import psycopg
import pytest

from actionlayer.contract import OBJECTS
from connectors.base import Connector, ConnectorConfigError, ConnectorError, Page, SyncPlan
from connectors.postgres import KeysetCursor, PostgresConnector
from connectors.sync import stored_cursors, sync_source
from tests.loopback import free_port
from tests.vendors.postgres import PostgresHarness, start_server

# small fixtures: one broken row is a large share of an object (see conftest.py)
QUALITY_GATE_OFF = True

DSN_ENV = "TEST_BILLING_DSN"
PASSWORD = "Pg-s3cret-Pa55"

SEED: dict[str, list[dict[str, str | None]]] = {
    "accounts": [
        {
            "account_id": "acc-1",
            "name": "Acme <b>GmbH</b>",
            "industry": None,
            "tier": "enterprise",
            "owner_email": "olga@example.com",
            "created_at": "2026-01-05 09:00:00",
            "updated_at": "2026-02-31 10:00:00",  # impossible date: passed on for the sync to quarantine
        }
    ],
    "contacts": [
        {
            "contact_id": "con-1",
            "account_id": "acc-1",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email": "ada@example.com",
            "phone": None,
            "timezone": "Europe/Berlin",
            "do_not_contact": "false",
            "created_at": "2026-01-05T09:00:00+01:00",
            "updated_at": "2026-01-06T09:00:00+01:00",
        }
    ],
    "deals": [
        {
            "deal_id": "deal-1",
            "account_id": "acc-1",
            "contact_id": "con-1",
            "owner_email": "olga@example.com",
            "name": "Renewal",
            "stage": "quote_sent",
            "amount": "twelve",  # not a number: passed on unchanged
            "currency": "EUR",
            "quote_sent_at": "2026-01-10 10:00:00",
            "stage_changed_at": "2026-01-10 10:00:00",
            "closed_at": None,
            "created_at": "2026-01-02 10:00:00",
            "updated_at": "2026-01-10 10:00:00",
        }
    ],
    "activities": [
        {
            "activity_id": "act-1",
            "contact_id": "con-1",
            "deal_id": None,
            "owner_email": "olga@example.com",
            "kind": "call",
            "occurred_at": "2026-01-11 10:00:00",
            "subject": "Intro",
        }
    ],
    "invoices": [
        {
            "invoice_id": "inv-1",
            "account_id": "acc-1",
            "contact_id": "con-1",
            "amount": "1200.50",
            "currency": "EUR",
            "issued_at": "2026-01-01 00:00:00",
            "due_at": "2026-01-31 00:00:00",
            "paid_at": None,
            "status": "open",
            "updated_at": "2026-01-01 00:00:00",
        }
    ],
    "tickets": [
        {
            "ticket_id": "tic-1",
            "account_id": "acc-1",
            "contact_id": "con-1",
            "priority": "high",
            "status": "open",
            "subject": "Broken export",
            "body": "line one\nline two",
            "opened_at": "2026-01-12 08:00:00",
            "updated_at": "2026-01-12 08:00:00",
        }
    ],
    "nps_responses": [
        {
            "response_id": "nps-1",
            "contact_id": "con-1",
            "score": "9",
            "comment": None,
            "responded_at": "2026-01-13 08:00:00",
        }
    ],
    "contracts": [
        {
            "contract_id": "ctr-1",
            "account_id": "acc-1",
            "start_at": "2026-01-01 00:00:00",
            "end_at": "2027-01-01 00:00:00",
            "auto_renew": "true",
            "value": "50000.00",
            "status": "active",
        }
    ],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pg = start_server(tmp_path_factory.mktemp("pg") / "data")
    yield pg
    pg.cleanup()


@pytest.fixture
def db(server: Any) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("drop schema if exists billing cascade")
        conn.execute("create schema billing")
        yield conn


def make_connector(server: Any, objects: dict[str, Any], **options: Any) -> PostgresConnector:
    config = {"dsn_env": DSN_ENV, "objects": objects, **options}
    return PostgresConnector.from_config("billing", config, environ={DSN_ENV: server.get_uri()})


def read_all(connector: Connector, obj: str, cursor: str | None = None) -> list[Page]:
    return list(connector.pages(SyncPlan(obj, cursor)))


def keys_of(pages: list[Page], key: str) -> list[str | None]:
    return [record[key] for page in pages for record in page.records]


def create_invoices(
    conn: psycopg.Connection[Any], rows: int, updated_at: str = "2026-03-01 12:00:00+00"
) -> None:
    """A typed invoices table; every row has the same updated_at unless told otherwise."""
    conn.execute(
        "create table billing.invoices (invoice_no integer primary key, account_id text, contact_id text,"
        " amount numeric(18,2), currency text, issued_at timestamptz, due_at date, paid_at timestamp,"
        " status text, updated_at timestamptz, is_deleted boolean not null default false)"
    )
    with conn.cursor() as cursor:
        cursor.executemany(
            "insert into billing.invoices values (%s, 'acc-1', 'con-1', %s, 'EUR', '2026-01-01 10:00:00+01',"
            " '2026-01-31', null, 'open', %s)",
            [(number, f"{number}.50", updated_at) for number in range(1, rows + 1)],
        )


INVOICES_CONFIG = {
    "table": "billing.invoices",
    "columns": {"invoice_id": "invoice_no"},
    "deleted_flag": "is_deleted",
}


def test_full_read_maps_every_object_to_the_seeded_records(server: Any) -> None:
    harness = PostgresHarness(server, owns_server=False, schema="suite")
    try:
        harness.seed(SEED)
        connector = harness.connector()
        assert isinstance(connector, Connector)
        assert list(connector.objects()) == list(OBJECTS)
        for obj, records in SEED.items():
            pages = read_all(connector, obj)
            assert [record for page in pages for record in page.records] == records, obj
            assert all(page.cursor for page in pages)
        connector.close()
    finally:
        harness.close()


def test_harness_upsert_bumps_updated_at_and_delete_needs_a_full_read(server: Any) -> None:
    harness = PostgresHarness(server, owns_server=False, schema="suite")
    try:
        harness.seed(SEED)
        connector = harness.connector()
        cursors = {obj: read_all(connector, obj)[-1].cursor for obj in OBJECTS}
        assert connector.changed(cursors) == []
        assert connector.changed({**cursors, "deals": None}) == ["deals"]
        cursor = cursors["accounts"]

        harness.upsert(
            "accounts", {"account_id": "acc-1", "tier": "mid", "updated_at": "2026-01-01 00:00:00"}
        )
        harness.upsert("accounts", {"account_id": "acc-2", "name": "New", "extra_field": "drift"})
        assert connector.changed(cursors) == ["accounts"]
        changed = read_all(connector, "accounts", cursor)
        records = {record["account_id"]: record for page in changed for record in page.records}
        assert set(records) == {"acc-1", "acc-2"}
        assert records["acc-1"]["tier"] == "mid" and records["acc-1"]["name"] == "Acme <b>GmbH</b>"
        assert records["acc-1"]["updated_at"] > "2026-03"  # the server clock, not the given text
        assert records["acc-2"]["extra_field"] == "drift"

        harness.delete("accounts", "acc-2")
        assert harness.deletes_need_full_read
        assert read_all(connector, "accounts", changed[-1].cursor) == []
        assert keys_of(read_all(connector, "accounts"), "account_id") == ["acc-1"]
        connector.close()
    finally:
        harness.close()


def test_harness_soft_delete_is_seen_incrementally(server: Any) -> None:
    harness = PostgresHarness(server, owns_server=False, schema="suite_soft", soft_delete=True)
    try:
        harness.seed(SEED)
        connector = harness.connector()
        cursor = read_all(connector, "tickets")[-1].cursor
        harness.delete("tickets", "tic-1")
        pages = read_all(connector, "tickets", cursor)
        assert [(page.records, page.deleted_keys) for page in pages] == [([], ["tic-1"])]
        connector.close()
    finally:
        harness.close()


def test_keyset_paging_neither_skips_nor_repeats_rows_with_equal_updated_at(server: Any, db: Any) -> None:
    create_invoices(db, 53)
    db.execute("update billing.invoices set updated_at = '2026-03-02 00:00:00+00' where invoice_no > 40")
    db.execute("update billing.invoices set updated_at = null where invoice_no between 7 and 12")
    connector = make_connector(server, {"invoices": INVOICES_CONFIG}, page_size=5, overlap_seconds=0)
    pages = read_all(connector, "invoices")
    keys = keys_of(pages, "invoice_id")
    assert len(pages) == 11
    assert sorted(keys, key=int) == [str(n) for n in range(1, 54)] and len(set(keys)) == 53
    # Null updated values first (the first page ends inside them), then by (updated, key) numerically.
    assert keys[:9] == ["7", "8", "9", "10", "11", "12", "1", "2", "3"] and keys[-1] == "53"

    # Resuming from any page's cursor yields exactly the rest: no gap, no duplicate.
    for index, page in enumerate(pages[:-1]):
        rest = keys_of(read_all(connector, "invoices", page.cursor), "invoice_id")
        assert rest == keys[sum(len(p.records) for p in pages[: index + 1]) :]
    connector.close()


def test_duplicate_rows_at_a_page_boundary_stay_on_one_page(server: Any, db: Any) -> None:
    db.execute("create table billing.tickets_raw (ticket_id text, subject text, updated_at timestamptz)")
    db.execute(
        "insert into billing.tickets_raw select 't' || n, 's' || n, '2026-03-01+00' from generate_series(1, 4) n"
    )
    db.execute("insert into billing.tickets_raw values ('t3', 'other copy', '2026-03-01+00')")
    connector = make_connector(server, {"tickets": {"table": "billing.tickets_raw"}}, page_size=3)
    pages = read_all(connector, "tickets")
    assert [[r["ticket_id"] for r in page.records] for page in pages] == [["t1", "t2", "t3", "t3"], ["t4"]]
    connector.close()


def test_incremental_read_returns_changed_rows_and_lookback_rereads(server: Any, db: Any) -> None:
    create_invoices(db, 6, updated_at="2026-03-01 12:00:00+00")
    db.execute("update billing.invoices set updated_at = '2026-03-01 11:58:00+00' where invoice_no = 2")
    db.execute("update billing.invoices set updated_at = '2026-03-01 10:00:00+00' where invoice_no = 1")
    exact = make_connector(server, {"invoices": INVOICES_CONFIG}, overlap_seconds=0)
    with_lookback = make_connector(server, {"invoices": INVOICES_CONFIG}, overlap_seconds=300)
    cursor = read_all(exact, "invoices")[-1].cursor
    assert cursor is not None
    assert KeysetCursor.decode(cursor, "test") == KeysetCursor("2026-03-01 12:00:00+00", "6")
    assert read_all(exact, "invoices", cursor) == []
    assert exact.changed({"invoices": cursor}) == []

    db.execute(
        "update billing.invoices set status = 'paid', updated_at = '2026-03-01 13:00:00+00' where invoice_no = 4"
    )
    assert exact.changed({"invoices": cursor}) == ["invoices"]
    changed = read_all(exact, "invoices", cursor)
    assert [(r["invoice_id"], r["status"]) for p in changed for r in p.records] == [("4", "paid")]

    # Lookback: everything updated within 300 s before the cursor is read again (invoice 2 at 11:58 and
    # the 12:00 rows), invoice 1 (two hours older) is not; re-reads are upserts the sync makes idempotent.
    reread = keys_of(read_all(with_lookback, "invoices", cursor), "invoice_id")
    assert reread == ["2", "3", "5", "6", "4"]
    exact.close()
    with_lookback.close()


def test_soft_delete_flag_becomes_deleted_keys(server: Any, db: Any) -> None:
    create_invoices(db, 4)
    db.execute("update billing.invoices set is_deleted = true where invoice_no = 2")
    connector = make_connector(server, {"invoices": INVOICES_CONFIG}, overlap_seconds=0)
    pages = read_all(connector, "invoices")
    assert keys_of(pages, "invoice_id") == ["1", "3", "4"]
    assert [key for page in pages for key in page.deleted_keys] == ["2"]
    assert all("is_deleted" not in record for page in pages for record in page.records)

    db.execute(
        "update billing.invoices set is_deleted = true, updated_at = '2026-03-05 00:00:00+00' where invoice_no = 3"
    )
    later = read_all(connector, "invoices", pages[-1].cursor)
    assert [(page.records, page.deleted_keys) for page in later] == [([], ["3"])]
    connector.close()


def test_query_defined_object(server: Any, db: Any) -> None:
    db.execute("create table billing.people (pid int, first text, last text, mail text, changed timestamptz)")
    db.execute(
        "insert into billing.people values (1, 'Ada', 'L', 'ada@example.com', '2026-03-01+00'),"
        " (2, 'Bob', 'M', 'bob@other.org', '2026-03-02+00')"
    )
    query = (
        "select 'c-' || pid as contact_id, 'acc-1' as account_id, first as first_name, last as last_name,"
        " mail as email, null::text as phone, 'UTC' as timezone, false as do_not_contact,"
        " changed as created_at, changed as updated_at from billing.people where mail like '%@example.com';"
    )
    connector = make_connector(server, {"contacts": {"query": query}}, overlap_seconds=0)
    records = [record for page in read_all(connector, "contacts") for record in page.records]
    assert records == [
        {
            "contact_id": "c-1",
            "account_id": "acc-1",
            "first_name": "Ada",
            "last_name": "L",
            "email": "ada@example.com",
            "phone": None,
            "timezone": "UTC",
            "do_not_contact": "false",
            "created_at": "2026-03-01T00:00:00+00:00",
            "updated_at": "2026-03-01T00:00:00+00:00",
        }
    ]
    assert connector.changed({"contacts": None}) == ["contacts"]
    connector.close()


def test_typed_columns_convert_to_contract_text(server: Any, db: Any) -> None:
    db.execute(
        "create table billing.contracts (contract_id bigint, account_id text, start_at date, end_at timestamp,"
        " auto_renew boolean, value numeric, status text, modified timestamptz, score real)"
    )
    db.execute(
        "insert into billing.contracts values"
        " (1, 'acc-1', '2026-01-01', '2027-01-01 12:30:00', true, 50000.00, 'active',"
        "  '2026-03-01 10:00:00.123456+02', 0.1),"
        " (2, 'acc-1', '2026-01-01', 'infinity', false, 'NaN', 'expired', '2026-03-01 10:00:00+00', null),"
        " (3, 'acc-1', null, null, null, 1e20, 'active', '2026-03-01 11:00:00+00', 1e20)"
    )
    connector = make_connector(
        server,
        {"contracts": {"table": "billing.contracts", "updated_column": "modified"}},
        overlap_seconds=0,
    )
    records = [record for page in read_all(connector, "contracts") for record in page.records]
    assert records == [
        {
            "contract_id": "1",
            "account_id": "acc-1",
            "start_at": "2026-01-01T00:00:00+00:00",
            "end_at": "2027-01-01T12:30:00+00:00",  # timestamp without time zone is UTC
            "auto_renew": "true",
            "value": "50000.00",
            "status": "active",
            "score": "0.1",  # a column outside the contract passes under its own name (drift)
        },
        {
            "contract_id": "2",
            "account_id": "acc-1",
            "start_at": "2026-01-01T00:00:00+00:00",
            "end_at": "infinity",  # no contract form: passed on for the quarantine
            "auto_renew": "false",
            "value": "NaN",
            "status": "expired",
            "score": None,
        },
        {
            "contract_id": "3",
            "account_id": "acc-1",
            "start_at": None,
            "end_at": None,
            "auto_renew": None,
            "value": "100000000000000000000",
            "status": "active",
            "score": "100000000000000000000",
        },
    ]
    page_cursor = KeysetCursor.decode(read_all(connector, "contracts")[-1].cursor or "", "test")
    assert page_cursor == KeysetCursor("2026-03-01 11:00:00+00", "3")
    connector.close()


def test_fault_connection_refused_never_shows_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    dsn = f"postgresql://billing_reader:{PASSWORD}@127.0.0.1:{free_port()}/billing"
    connector = PostgresConnector.from_config(
        "billing",
        {"dsn_env": DSN_ENV, "objects": {"invoices": {"table": "billing.invoices"}}, "connect_timeout": 2},
        environ={DSN_ENV: dsn},
    )
    with pytest.raises(ConnectorError) as caught:
        list(connector.pages(SyncPlan("invoices", None)))
    message = str(caught.value)
    assert "Connection refused" in message and "billing.invoices" in message and "source billing" in message
    assert "billing_reader@127.0.0.1" in message
    rendered = "".join(traceback.format_exception(caught.value))
    assert (
        PASSWORD not in rendered and PASSWORD not in caplog.text and PASSWORD not in repr(connector.__dict__)
    )
    with pytest.raises(ConnectorError):
        connector.changed({"invoices": KeysetCursor("2026-01-01", "1").encode()})
    connector.close()


def test_fault_unknown_role_is_a_connector_error(server: Any) -> None:
    dsn = server.get_uri().replace("postgres:@", f"intruder:{PASSWORD}@")
    connector = PostgresConnector.from_config(
        "billing", {"dsn_env": DSN_ENV, "objects": {"invoices": {"table": "x"}}}, environ={DSN_ENV: dsn}
    )
    with pytest.raises(ConnectorError, match='role "intruder" does not exist') as caught:
        list(connector.pages(SyncPlan("invoices", None)))
    assert PASSWORD not in str(caught.value)


def test_fault_missing_table_and_column_are_named(server: Any, db: Any) -> None:
    connector = make_connector(server, {"invoices": {"table": "billing.no_such_invoices"}})
    with pytest.raises(ConnectorError, match=r"table billing\.no_such_invoices.*does not exist") as caught:
        list(connector.pages(SyncPlan("invoices", None)))
    assert "object invoices" in str(caught.value) and '"billing"."no_such_invoices"' in str(caught.value)

    create_invoices(db, 1)
    connector = make_connector(server, {"invoices": {**INVOICES_CONFIG, "updated_column": "modified_at"}})
    with pytest.raises(ConnectorError, match='column "modified_at" does not exist'):
        list(connector.pages(SyncPlan("invoices", None)))
    # The connection survives a failed statement: the next read works.
    with pytest.raises(ConnectorError, match="modified_at"):
        connector.changed({"invoices": KeysetCursor("2026-01-01", "1").encode()})
    with pytest.raises(ConnectorError, match="not a Postgres keyset cursor"):
        list(connector.pages(SyncPlan("invoices", "page-2")))
    connector.close()


@pytest.mark.parametrize(
    ("config", "environ", "key"),
    [
        ({"objects": {"invoices": {"table": "t"}}}, {}, "sources.billing.dsn_env"),
        ({"dsn_env": "MISSING", "objects": {"invoices": {"table": "t"}}}, {}, "sources.billing.dsn_env"),
        ({"dsn_env": DSN_ENV, "objects": {}}, None, "sources.billing.objects"),
        ({"dsn_env": DSN_ENV, "objects": {"orders": {"table": "t"}}}, None, "sources.billing.objects.orders"),
        ({"dsn_env": DSN_ENV, "objects": {"invoices": {}}}, None, "sources.billing.objects.invoices.table"),
        (
            {"dsn_env": DSN_ENV, "objects": {"invoices": {"table": "a.b.c"}}},
            None,
            "sources.billing.objects.invoices.table",
        ),
        (
            {"dsn_env": DSN_ENV, "objects": {"invoices": {"table": "t", "query": "select 1"}}},
            None,
            "sources.billing.objects.invoices.table",
        ),
        (
            {"dsn_env": DSN_ENV, "objects": {"invoices": {"query": "delete from t"}}},
            None,
            "sources.billing.objects.invoices.query",
        ),
        (
            {"dsn_env": DSN_ENV, "objects": {"invoices": {"table": "t", "columns": {"amout": "x"}}}},
            None,
            "sources.billing.objects.invoices.columns.amout",
        ),
        (
            {"dsn_env": DSN_ENV, "objects": {"invoices": {"table": "t", "updated_colum": "x"}}},
            None,
            "sources.billing.objects.invoices.updated_colum",
        ),
        (
            {"dsn_env": DSN_ENV, "objects": {"invoices": {"table": "t"}}, "page_size": 0},
            None,
            "sources.billing.page_size",
        ),
        (
            {"dsn_env": DSN_ENV, "objects": {"invoices": {"table": "t"}}, "lookback_seconds": "5m"},
            None,
            "sources.billing.lookback_seconds",
        ),
        (
            {"dsn_env": DSN_ENV, "objects": {"invoices": {"table": "t"}}, "overlap_seconds": -5},
            None,
            "sources.billing.overlap_seconds",
        ),
        (
            {"dsn_env": DSN_ENV, "objects": {"invoices": {"table": "t"}}, "overlap_seconds": "5m"},
            None,
            "sources.billing.overlap_seconds",
        ),
        (
            {"dsn_env": DSN_ENV, "objects": {"invoices": {"table": "t"}}, "connect_timeot": 3},
            None,
            "sources.billing.connect_timeot",
        ),
    ],
)
def test_config_errors_name_the_key(config: dict[str, Any], environ: dict[str, str] | None, key: str) -> None:
    environ = {DSN_ENV: "postgresql://u@localhost/db"} if environ is None else environ
    with pytest.raises(ConnectorConfigError, match="^" + re.escape(key) + ":"):
        PostgresConnector.from_config("billing", config, environ=environ)


def test_an_unparseable_dsn_is_not_quoted(caplog: pytest.LogCaptureFixture) -> None:
    bad = f"host=localhost password={PASSWORD} =oops"
    with pytest.raises(ConnectorConfigError, match="sources.billing.dsn_env") as caught:
        PostgresConnector.from_config(
            "billing", {"dsn_env": DSN_ENV, "objects": {"invoices": {"table": "t"}}}, environ={DSN_ENV: bad}
        )
    assert PASSWORD not in "".join(traceback.format_exception(caught.value)) and PASSWORD not in caplog.text


@pytest.mark.parametrize("overlap", [300, 0], ids=["overlap-300s", "overlap-0-misses"])
def test_fault_same_second_edit_and_late_commit_land_exactly_once(
    server: Any, db: Any, tmp_path: Any, overlap: int
) -> None:
    """Rows committed after a sync read past them: invoice 2 edited with the cursor's own updated_at (a
    smaller key than the cursor's row), invoice 4 inserted with an updated_at two minutes before the
    cursor. Only the overlap re-read finds them; with overlap 0 they are lost, so this test can fail."""
    create_invoices(db, 3, updated_at="2026-03-01 12:00:00+00")
    connector = make_connector(server, {"invoices": INVOICES_CONFIG}, overlap_seconds=overlap)
    con = duckdb.connect(str(tmp_path / "mirror.duckdb"))
    as_of = datetime(2026, 3, 2)
    sync_source(con, connector, as_of)
    with psycopg.connect(server.get_uri()) as late:  # one transaction, still open during the next sync
        late.execute("update billing.invoices set status = 'paid' where invoice_no = 2")
        late.execute(
            "insert into billing.invoices values (4, 'acc-1', 'con-1', 4.50, 'EUR', '2026-01-01 10:00:00+01',"
            " '2026-01-31', null, 'open', '2026-03-01 11:58:00+00')"
        )
        quiet = sync_source(con, connector, as_of + timedelta(hours=1))
        late.commit()
    assert quiet.objects["invoices"].upserted == 0
    changed = connector.changed(stored_cursors(con, "billing"))
    report = sync_source(con, connector, as_of + timedelta(hours=2))

    def mirror() -> list[tuple]:
        return con.execute(
            "select invoice_id, status from src.billing__invoices where not _deleted order by 1"
        ).fetchall()

    if overlap == 0:
        # the old behaviour: strictly after the cursor (12:00, '3') finds neither row
        assert changed == []
        assert mirror() == [("1", "open"), ("2", "open"), ("3", "open")]
        con.close()
        connector.close()
        return

    assert changed == ["invoices"]
    assert mirror() == [("1", "open"), ("2", "paid"), ("3", "open"), ("4", "open")]
    result = report.objects["invoices"]
    # invoices 1 and 3, re-read unchanged, are unchanged and not updated
    assert (result.inserted, result.updated, result.unchanged, result.deleted) == (1, 1, 2, 0)
    assert con.execute("select count(*) - count(distinct _key) from src.billing__invoices").fetchall() == [
        (0,)
    ]

    # the probe is quiet again, and a re-run changes nothing, timestamps and cursor included
    assert connector.changed(stored_cursors(con, "billing")) == []
    tables = ["ops.sync_cursors", "src.billing__invoices", "hist.invoices"]
    before = {table: con.execute(f"select * from {table} order by all").fetchall() for table in tables}
    again = sync_source(con, connector, as_of + timedelta(hours=3))
    result = again.objects["invoices"]
    assert (result.inserted, result.updated, result.unchanged, result.deleted) == (0, 0, 4, 0)
    assert {
        table: con.execute(f"select * from {table} order by all").fetchall() for table in tables
    } == before
    con.close()
    connector.close()
