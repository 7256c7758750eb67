"""The Zoho CRM connector against the Zoho stand-in on 127.0.0.1: mapping, paging, cursors, faults."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from actionlayer.contract import OBJECTS, Kind
from connectors.base import Connector, ConnectorConfigError, ConnectorError, Page, Record, SyncPlan
from connectors.sync import stored_cursors, sync_source
from connectors.zoho import ZohoConnector
from tests.vendors.zoho_server import CLIENT_SECRET, REFRESH_TOKEN, ZohoHarness, make_harness

# small fixtures: one broken row is a large share of an object (see conftest.py)
QUALITY_GATE_OFF = True

OWNER = "owner@example.com"

SEED: dict[str, list[Record]] = {
    "accounts": [
        {"account_id": "A1", "name": "Acme <b>GmbH</b>", "industry": "Manufacturing", "tier": "enterprise",
         "owner_email": OWNER, "created_at": "2026-01-01 08:00:00", "updated_at": "2026-03-01 08:00:00"},
        {"account_id": "A2", "name": "Bolt", "industry": None, "tier": "smb",
         "owner_email": OWNER, "created_at": "2026-01-02 08:00:00", "updated_at": "2026-03-02T10:00:00+02:00"},
    ],
    "contacts": [
        {"contact_id": "C1", "account_id": "A1", "first_name": "Ada", "last_name": "Byron", "email": "ada@acme.test",
         "phone": "+49 30 1234", "timezone": "Europe/Berlin", "do_not_contact": "false",
         "created_at": "2026-01-03 08:00:00", "updated_at": "2026-03-03 08:00:00"},
        {"contact_id": "C2", "account_id": "A2", "first_name": "Bo", "last_name": "Lt", "email": "bo@bolt.test",
         "phone": None, "timezone": "America/New_York", "do_not_contact": "true",
         "created_at": "2026-01-04 08:00:00", "updated_at": "2026-03-04 08:00:00"},
    ],
    "deals": [
        {"deal_id": "D1", "account_id": "A1", "contact_id": "C1", "owner_email": OWNER, "name": "Big one",
         "stage": "quote_sent", "amount": "12000.50", "currency": "EUR", "quote_sent_at": "2026-02-01 09:00:00",
         "stage_changed_at": "2026-02-01 09:00:00", "closed_at": None,
         "created_at": "2026-01-05 08:00:00", "updated_at": "2026-03-05 08:00:00"},
        {"deal_id": "D2", "account_id": "A2", "contact_id": "C2", "owner_email": OWNER, "name": "Small one",
         "stage": "won", "amount": "300", "currency": "USD", "quote_sent_at": None,
         "stage_changed_at": "2026-02-02 09:00:00", "closed_at": "2026-02-02 09:00:00",
         "created_at": "2026-01-06 08:00:00", "updated_at": "2026-03-06 08:00:00"},
    ],
    "activities": [
        {"activity_id": "T1", "contact_id": "C1", "deal_id": "D1", "owner_email": OWNER, "kind": "call",
         "occurred_at": "2026-02-03 10:00:00", "subject": "Intro call"},
        {"activity_id": "T2", "contact_id": "C1", "deal_id": None, "owner_email": OWNER, "kind": "meeting",
         "occurred_at": "2026-02-04 10:00:00", "subject": "Demo"},
        {"activity_id": "T3", "contact_id": "C2", "deal_id": "D2", "owner_email": OWNER, "kind": "task",
         "occurred_at": "2026-02-05 00:00:00", "subject": "Send contract"},
        {"activity_id": "T4", "contact_id": "C2", "deal_id": None, "owner_email": OWNER, "kind": "note",
         "occurred_at": "2026-02-06 10:00:00", "subject": "Prefers mail"},
        {"activity_id": "T5", "contact_id": "C1", "deal_id": "D1", "owner_email": OWNER, "kind": "email_out",
         "occurred_at": "2026-02-07 10:00:00", "subject": "Your quote"},
        {"activity_id": "T6", "contact_id": "C1", "deal_id": None, "owner_email": OWNER, "kind": "email_in",
         "occurred_at": "2026-02-08 10:00:00", "subject": "Re: Your quote"},
    ],
    "invoices": [
        {"invoice_id": "I1", "account_id": "A2", "contact_id": "C2", "amount": "300.00", "currency": "USD",
         "issued_at": "2026-02-10 00:00:00", "due_at": "2026-03-10 00:00:00", "paid_at": None, "status": "open",
         "updated_at": "2026-03-07 08:00:00"},
    ],
    "tickets": [
        {"ticket_id": "K1", "account_id": "A1", "contact_id": "C1", "priority": "normal", "status": "pending",
         "subject": "Login broken", "body": "Line one\nline <i>two</i>", "opened_at": "2026-02-11 08:00:00",
         "updated_at": "2026-03-08 08:00:00"},
    ],
    "nps_responses": [
        {"response_id": "N1", "contact_id": "C1", "score": "9", "comment": "Great", "responded_at": "2026-02-12 08:00:00"},
    ],
    "contracts": [
        {"contract_id": "K-1", "account_id": "A1", "start_at": "2026-01-01 00:00:00", "end_at": "2027-01-01 00:00:00",
         "auto_renew": "true", "value": "24000", "status": "active"},
    ],
}  # fmt: skip


def normalise(obj: str, record: Record) -> Record:
    """Compare canonical text by meaning: timestamps in UTC, money as decimals, booleans lower case."""
    out: Record = {}
    for name, value in record.items():
        kind = OBJECTS[obj].column(name).kind if name in OBJECTS[obj].column_names else Kind.TEXT
        if value is not None and kind in (Kind.EVENT_TS, Kind.PLANNED_TS):
            moment = datetime.fromisoformat(value)
            value = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
        elif value is not None and kind is Kind.MONEY:
            value = str(Decimal(value).normalize())
        elif value is not None and kind is Kind.BOOL:
            value = value.lower()
        out[name] = value
    return out


def read(connector: Connector, obj: str, cursor: str | None = None) -> list[Page]:
    return list(connector.pages(SyncPlan(obj, cursor)))


def records_of(pages: list[Page]) -> list[Record]:
    return [record for page in pages for record in page.records]


def accounts(n: int, start: int = 0) -> list[Record]:
    return [
        {"account_id": f"A{i:04d}", "name": f"Account {i}", "industry": "Retail", "tier": "mid",
         "owner_email": OWNER, "created_at": "2026-01-01 00:00:00",
         "updated_at": f"2026-01-{1 + i // 86400:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}+00:00"}
        for i in range(start, start + n)
    ]  # fmt: skip


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ZohoHarness]:
    h = make_harness(tmp_path)
    yield h
    h.close()


@pytest.fixture
def exact(tmp_path: Path) -> Iterator[ZohoHarness]:
    """Incremental reads start exactly after the cursor (no overlap re-read), to see only new changes."""
    h = make_harness(tmp_path, overlap_seconds=0)
    yield h
    h.close()


@pytest.fixture
def small_pages(tmp_path: Path) -> Iterator[ZohoHarness]:
    h = make_harness(tmp_path, per_page=10, objects=["accounts"])
    yield h
    h.close()


def test_full_read_maps_every_object_to_the_seeded_records(harness: ZohoHarness) -> None:
    harness.seed(SEED)
    connector = harness.connector()
    assert isinstance(connector, Connector)
    assert list(connector.objects()) == list(OBJECTS)
    for obj, seeded in SEED.items():
        got = {r[OBJECTS[obj].key]: normalise(obj, r) for r in records_of(read(connector, obj))}
        want = {r[OBJECTS[obj].key]: normalise(obj, r) for r in seeded}
        assert got == want, obj
    connector.close()


def test_records_carry_zoho_text_forms(harness: ZohoHarness) -> None:
    harness.seed(SEED)
    connector = harness.connector()
    deals = {r["deal_id"]: r for r in records_of(read(connector, "deals"))}
    assert deals["D1"]["amount"] == "12000.5"  # a plain decimal string, as Zoho's JSON number reads
    assert deals["D1"]["updated_at"] == "2026-03-05T13:30:00+05:30"  # ISO 8601 with the org's offset
    assert harness.server.records["Deals"]["D1"]["Stage"] == "Proposal/Price Quote"
    contacts = {r["contact_id"]: r for r in records_of(read(connector, "contacts"))}
    assert contacts["C2"]["do_not_contact"] == "true"
    assert harness.server.records["Contacts"]["C2"]["Email_Opt_Out"] is True
    connector.close()


def test_broken_and_unmapped_values_pass_through_unchanged(harness: ZohoHarness) -> None:
    harness.seed({"accounts": SEED["accounts"], "contacts": SEED["contacts"], "deals": SEED["deals"]})
    harness.server.set_field("Deals", "D1", "Stage", "On Ice")  # a picklist value an org added
    harness.server.set_field("Deals", "D2", "Amount", "1.200,00")  # a field whose type changed to text
    harness.server.set_field("Deals", "D2", "Account_Name", "A2")  # a lookup that became plain text
    connector = harness.connector()
    deals = {r["deal_id"]: r for r in records_of(read(connector, "deals"))}
    assert deals["D1"]["stage"] == "On Ice"
    assert deals["D2"]["amount"] == "1.200,00"
    assert deals["D2"]["account_id"] == "A2"
    connector.close()


def test_page_of_exactly_200_is_one_request(harness: ZohoHarness) -> None:
    harness.seed({"accounts": accounts(200)})
    connector = harness.connector()
    pages = read(connector, "accounts")
    assert len(records_of(pages)) == 200
    assert len([r for r in harness.server.api_requests("/crm/v8/Accounts") if r.method == "GET"]) == 1
    connector.close()


def test_paging_across_several_pages_oldest_change_first(harness: ZohoHarness) -> None:
    harness.seed({"accounts": accounts(450)})
    connector = harness.connector()
    pages = read(connector, "accounts")
    keys = [r["account_id"] for r in records_of(pages)]
    assert sorted(keys) == [f"A{i:04d}" for i in range(450)] and len(set(keys)) == 450
    updated = [datetime.fromisoformat(r["updated_at"]) for r in records_of(pages)]
    assert updated == sorted(updated)
    assert len(pages) >= 3
    # each page's cursor is behind or at the last record it carries, never past an unread one
    for page in pages[:-1]:
        mark = datetime.fromisoformat(__import__("json").loads(page.cursor)["Accounts"]["modified"])
        assert mark < datetime.fromisoformat(page.records[-1]["updated_at"])
    connector.close()


def test_fault_empty_last_page(small_pages: ZohoHarness) -> None:
    small_pages.seed({"accounts": accounts(25)})
    small_pages.server.phantom_more = True
    connector = small_pages.connector()
    keys = [r["account_id"] for r in records_of(read(connector, "accounts"))]
    assert sorted(keys) == [f"A{i:04d}" for i in range(25)] and len(keys) == 25
    assert any(r.status == 200 for r in small_pages.server.api_requests("/crm/v8/Accounts"))
    connector.close()


def test_incremental_read_uses_if_modified_since_and_returns_only_changes(exact: ZohoHarness) -> None:
    harness = exact
    harness.seed(SEED)
    connector = harness.connector()
    cursor = read(connector, "accounts")[-1].cursor
    assert "accounts" not in connector.changed({"accounts": cursor})
    assert read(connector, "accounts", cursor) == []  # 304: nothing, and no new cursor
    probe = [r for r in harness.server.api_requests("/crm/v8/Accounts") if "deleted" not in r.path][-1]
    assert probe.status == 304 and probe.headers["If-Modified-Since"]

    changed = dict(SEED["accounts"][1], name="Bolt Inc")
    harness.upsert("accounts", changed)
    assert connector.changed({"accounts": cursor, "contacts": None})[:2] == ["accounts", "contacts"]
    pages = read(connector, "accounts", cursor)
    assert [r["name"] for r in records_of(pages)] == ["Bolt Inc"]
    assert pages[-1].cursor != cursor
    assert read(connector, "accounts", pages[-1].cursor) == []
    connector.close()


def test_incremental_read_rereads_the_overlap_and_keeps_its_cursor(harness: ZohoHarness) -> None:
    harness.seed(SEED)
    connector = harness.connector()
    cursor = read(connector, "accounts")[-1].cursor
    assert "accounts" not in connector.changed({"accounts": cursor})
    pages = read(connector, "accounts", cursor)
    # A2 (the newest change) lies inside the 300 s overlap and is read again; A1 (a day older) is not
    assert [r["account_id"] for r in records_of(pages)] == ["A2"]
    since = [r.headers.get("If-Modified-Since") for r in harness.server.api_requests("/crm/v8/Accounts")][-1]
    assert datetime.fromisoformat(since) == datetime(2026, 3, 2, 7, 55, tzinfo=UTC)
    assert "accounts" not in connector.changed({"accounts": pages[-1].cursor})
    again = read(connector, "accounts", pages[-1].cursor)
    assert records_of(again) == records_of(pages) and again[-1].cursor == pages[-1].cursor
    connector.close()


def test_deletes_arrive_as_deleted_keys(exact: ZohoHarness) -> None:
    harness = exact
    harness.seed(SEED)
    connector = harness.connector()
    cursor = read(connector, "activities")[-1].cursor
    harness.delete("activities", "T1")
    harness.delete("activities", "T5")
    assert "activities" in connector.changed({"activities": cursor})
    pages = read(connector, "activities", cursor)
    assert sorted(key for page in pages for key in page.deleted_keys) == ["T1", "T5"]
    assert records_of(pages) == []
    assert read(connector, "activities", pages[-1].cursor) == []
    connector.close()


def test_fault_record_deleted_and_changed_between_pages_skips_nothing(small_pages: ZohoHarness) -> None:
    small_pages.seed({"accounts": accounts(30)})
    server = small_pages.server

    def meddle(module: str, call: int) -> None:
        if call == 1:  # after the first page went out
            server.delete_record("Accounts", "A0003")
            server.set_field("Accounts", "A0005", "Account_Name", "Renamed")

    server.after_list = meddle
    connector = small_pages.connector()
    pages = read(connector, "accounts")
    server.after_list = None
    got = records_of(pages)
    assert {r["account_id"] for r in got} == {f"A{i:04d}" for i in range(30)}  # A0003 was read before
    assert got[-1] == {**got[-1], "account_id": "A0005", "name": "Renamed"}  # the newer version, last
    later = read(connector, "accounts", pages[-1].cursor)
    assert [k for p in later for k in p.deleted_keys] == ["A0003"]
    connector.close()


def test_fault_token_expiry_mid_sync_refreshes_once(small_pages: ZohoHarness) -> None:
    small_pages.seed({"accounts": accounts(30)})
    server = small_pages.server
    server.after_list = lambda module, call: server.expire_token() if call == 2 else None
    connector = small_pages.connector()
    assert isinstance(connector, ZohoConnector)
    assert len({r["account_id"] for r in records_of(read(connector, "accounts"))}) == 30
    assert connector.auth.refreshes == 2 and server.token_grants == 2
    assert sum(r.status == 401 for r in server.requests) == 1
    connector.close()


def test_fault_429_retry_after_is_honoured(harness: ZohoHarness) -> None:
    harness.seed(SEED)
    connector = harness.connector()
    read(connector, "tickets")  # token and metadata settled
    harness.server.fail_next(1, status=429, retry_after=1)
    assert len(records_of(read(connector, "tickets"))) == 1
    api = harness.server.api_requests()
    failed = next(i for i, r in enumerate(api) if r.status == 429)
    assert api[failed + 1].at - api[failed].at >= 0.95
    connector.close()


def test_fault_5xx_is_retried_then_succeeds(harness: ZohoHarness) -> None:
    harness.seed(SEED)
    harness.server.fail_next(2, status=503, retry_after=None)
    connector = harness.connector()
    assert len(records_of(read(connector, "deals"))) == 2
    assert [r.status for r in harness.server.api_requests()][:3] == [503, 503, 200]
    connector.close()


def test_fault_persistent_5xx_names_module_and_page_without_secrets(
    small_pages: ZohoHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    small_pages.seed({"accounts": accounts(30)})
    server = small_pages.server
    server.after_list = lambda module, call: (
        server.fail_next(50, status=500, retry_after=None) if call == 1 else None
    )
    connector = small_pages.connector()
    pages = connector.pages(SyncPlan("accounts", None))
    assert len(next(pages).records) == 10
    with pytest.raises(ConnectorError) as caught:
        next(pages)
    message = str(caught.value)
    assert "Accounts" in message and "page 2" in message and "500" in message
    for secret in (CLIENT_SECRET, REFRESH_TOKEN, *server.tokens):
        assert secret not in message and secret not in caplog.text
    connector.close()


def test_fault_timeout_is_retried(tmp_path: Path) -> None:
    h = make_harness(tmp_path, timeout=0.5, objects=["nps_responses"])
    try:
        h.seed(SEED)
        connector = h.connector()
        read(connector, "nps_responses")
        h.server.delay_next(1, 1.0)
        assert len(records_of(read(connector, "nps_responses"))) == 1
        connector.close()
    finally:
        h.close()


def test_fault_field_added_passes_through_and_removed_field_leaves_column_out(harness: ZohoHarness) -> None:
    harness.seed(SEED)
    harness.server.add_field("Accounts", "Region", "picklist", lambda record: "EMEA")
    harness.server.remove_field("Accounts", "Industry")
    connector = harness.connector()
    got = records_of(read(connector, "accounts"))
    assert all(r["Region"] == "EMEA" for r in got)
    assert all("industry" not in r for r in got)
    assert all("Modified_Time" not in r and "Created_By" not in r for r in got)  # bookkeeping, not drift
    connector.close()


def test_bad_credentials_fail_without_leaking_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h = make_harness(tmp_path)
    try:
        h.environ["TEST_ZOHO_CLIENT_SECRET"] = "wrong-secret-value-123"
        connector = h.connector()
        with pytest.raises(ConnectorError) as caught:
            read(connector, "accounts")
        assert "invalid_client" in str(caught.value)
        for secret in ("wrong-secret-value-123", REFRESH_TOKEN):
            assert secret not in str(caught.value) and secret not in caplog.text
        connector.close()
    finally:
        h.close()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"api_base": None}, "api_base"),
        ({"accounts_base": "accounts.zoho.com"}, "accounts_base"),
        ({"client_id_env": None}, "client_id_env"),
        ({"client_secret_env": "NOT_SET_ANYWHERE"}, "client_secret_env"),
        ({"refresh_token_env": ""}, "refresh_token_env"),
        ({"objects": ["leads"]}, "objects"),
        ({"rate_per_second": 0}, "rate_per_second"),
        ({"timeout": "soon"}, "timeout"),
        ({"per_page": 500}, "per_page"),
        ({"retry": {"attempts": 3}}, "retry"),
        ({"overlap_seconds": -1}, "overlap_seconds"),
        ({"overlap_seconds": "5m"}, "overlap_seconds"),
        ({"overlap_seconds": True}, "overlap_seconds"),
    ],
)
def test_config_errors_name_the_key(harness: ZohoHarness, change: dict, key: str) -> None:
    config = {**harness.config, **change}
    with pytest.raises(ConnectorConfigError) as caught:
        ZohoConnector.from_config("zoho", config, harness.environ)
    assert repr(key) in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)


def test_mapping_errors_name_the_file_and_key(harness: ZohoHarness, tmp_path: Path) -> None:
    bad = tmp_path / "zoho.yml"
    bad.write_text(
        "objects:\n  deals:\n    - module: Deals\n      columns:\n        deal_id: id\n        colour: Colour\n"
    )
    with pytest.raises(ConnectorConfigError) as caught:
        ZohoConnector.from_config("zoho", {**harness.config, "mapping": str(bad)}, harness.environ)
    assert str(bad) in str(caught.value) and "objects.deals[0].columns.colour" in str(caught.value)
    bad.write_text(
        "objects:\n  deals:\n    - module: Deals\n      columns:\n        deal_id: id\n"
        "        stage: {field: Stage, values: {Won: victorious}}\n"
    )
    with pytest.raises(ConnectorConfigError, match=r"columns\.stage\.values\.Won"):
        ZohoConnector.from_config("zoho", {**harness.config, "mapping": str(bad)}, harness.environ)


def test_fault_field_changing_type_quarantines_the_rows_it_breaks_and_reports_drift(
    harness: ZohoHarness,
) -> None:
    import duckdb

    from connectors.sync import sync_source

    harness.seed({"accounts": SEED["accounts"], "contacts": SEED["contacts"], "deals": SEED["deals"]})
    connector = harness.connector()
    con = duckdb.connect(":memory:")
    try:
        first = sync_source(con, connector, datetime(2026, 11, 2, 10, 0))
        assert first.load is not None and first.load.objects["deals"].rows_quarantined == 0
        # the org turns Amount into a text field; D2 is edited in the new format
        harness.server.set_field("Deals", "D2", "Amount", "1.200,00 EUR")
        harness.server.advance(60)
        second = sync_source(con, connector, datetime(2026, 11, 2, 11, 0))
        assert second.load is not None and second.load.objects["deals"].status == "loaded"
        quarantined = con.execute(
            "select record_key, reason_code from ops.quarantine where object = 'deals'"
        ).fetchall()
        assert quarantined == [("D2", "unparseable")]
        assert "D2" not in {k for (k,) in con.execute("select deal_id from raw.deals").fetchall()}
        drift = con.execute(
            "select source, column_name, kind, detail from ops.drift_events where object = 'deals'"
        ).fetchall()
        [(source, column, kind, detail)] = drift
        assert (source, column, kind) == (connector.name, "amount", "type_changed")
        assert "D2" in detail and "1.200,00 EUR" in detail
        assert any(e.kind == "type_changed" for e in second.load.objects["deals"].drift)
    finally:
        con.close()
        connector.close()


@pytest.mark.parametrize("overlap", [300, 0], ids=["overlap-300s", "overlap-0-misses"])
def test_fault_change_and_deletion_in_the_cursors_second_land_exactly_once(
    tmp_path: Path, overlap: int
) -> None:
    """A deal edited, and a case deleted, in the same second as the newest change the previous sync saw,
    visible only after that sync (Zoho stamps the time before the change commits). Zoho's
    If-Modified-Since is strictly after, so only the overlap re-read finds them; with overlap 0 they
    are lost, which shows this test can fail."""
    harness = make_harness(
        tmp_path, overlap_seconds=overlap, objects=["accounts", "contacts", "deals", "tickets"]
    )
    server = harness.server
    tickets = [dict(SEED["tickets"][0], ticket_id=f"K{i}", subject=f"Case {i}") for i in (1, 2, 3)]
    harness.seed({**SEED, "tickets": tickets})
    connector = harness.connector()
    as_of = datetime(2026, 11, 3)
    con = duckdb.connect(str(tmp_path / "mirror.duckdb"))
    sync_source(con, connector, as_of)
    # the previous sync's newest changes: a deal edit at second S, a case deletion at second S2
    harness.upsert("deals", dict(SEED["deals"][1], name="Small one, renamed"))
    harness.delete("tickets", "K1")
    previous = sync_source(con, connector, as_of + timedelta(hours=1))
    assert previous.objects["deals"].updated == 1 and previous.objects["tickets"].deleted == 1
    seen_at = datetime.fromisoformat(server.records["Deals"]["D2"]["Modified_Time"])
    deleted_at = datetime.fromisoformat(server.deleted["Cases"][-1]["deleted_time"])

    # now visible: D1 edited and K2 deleted, stamped in those very seconds
    d1 = dict(
        server.records["Deals"]["D1"], Deal_Name="Big one, late edit", Modified_Time=seen_at.isoformat()
    )
    server.put("Deals", d1, touch=False)
    server.delete_record("Cases", "K2", at=deleted_at)
    cursors = stored_cursors(con, "zoho")
    changed = connector.changed(cursors)
    report = sync_source(con, connector, as_of + timedelta(hours=2))

    def mirror(sql: str) -> list[tuple]:
        return con.execute(sql).fetchall()

    names = mirror("select deal_id, name from src.zoho__deals where not _deleted order by 1")
    live_tickets = mirror("select ticket_id from src.zoho__tickets where not _deleted order by 1")
    if overlap == 0:
        # the old behaviour: both answer 304, the changes are never read and the probe sees nothing
        assert changed == []
        assert names == [("D1", "Big one"), ("D2", "Small one, renamed")]
        assert live_tickets == [("K2",), ("K3",)]
        con.close()
        connector.close()
        harness.close()
        return

    assert changed == ["deals", "tickets"]
    assert names == [("D1", "Big one, late edit"), ("D2", "Small one, renamed")]
    assert live_tickets == [("K3",)]
    deals, cases = report.objects["deals"], report.objects["tickets"]
    # D2 (re-read, unchanged) is unchanged, not updated; K1's deletion, re-read, is not counted again
    assert (deals.inserted, deals.updated, deals.unchanged, deals.deleted) == (0, 1, 1, 0)
    assert (cases.inserted, cases.updated, cases.deleted) == (0, 0, 1)
    assert mirror("select count(*), count(distinct _key) from src.zoho__deals") == [(2, 2)]
    assert mirror("select name from raw.deals where deal_id = 'D1'") == [("Big one, late edit",)]

    # the probe stops reporting once the change is read, and a re-run changes nothing at all
    assert connector.changed(stored_cursors(con, "zoho")) == []
    tables = ["ops.sync_cursors", "src.zoho__deals", "src.zoho__tickets", "hist.deals", "hist.tickets"]
    before = {table: mirror(f"select * from {table} order by all") for table in tables}
    again = sync_source(con, connector, as_of + timedelta(hours=3))
    assert all(r.upserted == 0 and r.deleted == 0 for r in again.objects.values())
    assert {table: mirror(f"select * from {table} order by all") for table in tables} == before
    con.close()
    connector.close()
    harness.close()
