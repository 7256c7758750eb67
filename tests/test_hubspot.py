"""HubSpot connector against the loopback HubSpot stand-in: mapping, paging, incremental cursor,
deletions, associations, retries, rate limits, secrecy and config errors."""

from __future__ import annotations

import json
import logging
import time
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from connectors.base import ConnectorConfigError, ConnectorError, Page, Record, SyncPlan
from connectors.hubspot import HubSpotConnector, hubspot_timezone, load_mapping, timezone_text
from connectors.sync import mirror_table, stored_cursors, sync_source
from tests.vendors.hubspot_server import TOKEN_ENV, HubSpotHarness, HubSpotServer, make_harness

# small fixtures: one broken row is a large share of an object (see conftest.py)
QUALITY_GATE_OFF = True
AS_OF = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[HubSpotHarness]:
    harness = make_harness(tmp_path, search_cap=50)
    yield harness
    harness.close()


def connect(harness: HubSpotHarness, **overrides: Any) -> HubSpotConnector:
    config = {**harness.config, **overrides}
    return HubSpotConnector.from_config("hubspot", config, environ=harness.environ)


def read(connector: HubSpotConnector, obj: str, cursor: str | None = None) -> list[Page]:
    return list(connector.pages(SyncPlan(obj, cursor)))


def records(pages: list[Page]) -> list[Record]:
    return [record for page in pages for record in page.records]


def account(key: str, **changes: str | None) -> Record:
    base: Record = {
        "account_id": key,
        "name": f"Account {key}",
        "industry": "Retail",
        "tier": "mid",
        "owner_email": "owner@example.com",
        "created_at": "2026-01-02 09:00:00",
        "updated_at": "2026-01-03 09:00:00",
    }
    return {**base, **changes}


CONTACT: Record = {
    "contact_id": "C1",
    "account_id": "A1",
    "first_name": "Ann",
    "last_name": "Lee",
    "email": "ann@example.com",
    "phone": "+49 30 1234",
    "timezone": "America/New_York",
    "do_not_contact": "1",
    "created_at": "2026-01-02 09:00:00",
    "updated_at": "2026-01-03 09:00:00",
}


def deal(key: str, **changes: str | None) -> Record:
    base: Record = {
        "deal_id": key,
        "account_id": "A1",
        "contact_id": "C1",
        "owner_email": "seller@example.com",
        "name": f"Deal {key}",
        "stage": "quote_sent",
        "amount": "1200.50",
        "currency": "EUR",
        "quote_sent_at": "2026-01-04 10:00:00",
        "stage_changed_at": "2026-01-04 10:00:00",
        "closed_at": None,
        "created_at": "2026-01-02 09:00:00",
        "updated_at": "2026-01-04 10:00:00",
    }
    return {**base, **changes}


def test_full_read_maps_seeded_records(harness: HubSpotHarness) -> None:
    harness.seed(
        {
            "accounts": [account("A1", tier="enterprise", industry=None)],
            "contacts": [CONTACT],
            "deals": [deal("D1"), deal("D2", stage="won", closed_at="2026-01-05 11:30:00", contact_id="C1")],
            "activities": [
                {
                    "activity_id": "E1",
                    "contact_id": "C1",
                    "deal_id": "D1",
                    "owner_email": "seller@example.com",
                    "kind": "email_in",
                    "occurred_at": "2026-01-04 08:00:00",
                    "subject": "Re: <b>quote</b>",
                },
                {
                    "activity_id": "N1",
                    "contact_id": "C1",
                    "deal_id": None,
                    "owner_email": "seller@example.com",
                    "kind": "note",
                    "occurred_at": "2026-01-04 08:30:00",
                    "subject": None,
                },
            ],
            "tickets": [
                {
                    "ticket_id": "T1",
                    "account_id": "A1",
                    "contact_id": "C1",
                    "priority": "urgent",
                    "status": "pending",
                    "subject": "Broken",
                    "body": "line one\nline two",
                    "opened_at": "2026-01-03 12:00:00",
                    "updated_at": "2026-01-03 13:00:00",
                }
            ],
            "contracts": [
                {
                    "contract_id": "K1",
                    "account_id": "A1",
                    "start_at": "2026-01-01",
                    "end_at": "2027-01-01",
                    "auto_renew": "true",
                    "value": "24000.00",
                    "status": "active",
                }
            ],
        }
    )
    # what HubSpot holds is HubSpot's shape, not the canonical one
    stored = harness.server.records["deals"]["D2"]
    assert stored.properties["dealstage"] == "closedwon"
    assert stored.properties["hs_is_closed"] == "true"
    assert stored.associations == {"companies": ["A1"], "contacts": ["C1"]}
    assert harness.server.records["contacts"]["C1"].properties["hs_timezone"] == "america_slash_new_york"

    connector = connect(harness)
    assert records(read(connector, "accounts")) == [
        {
            "account_id": "A1",
            "name": "Account A1",
            "industry": None,
            "tier": "enterprise",
            "owner_email": "owner@example.com",
            "created_at": "2026-01-02T09:00:00+00:00",
            "updated_at": "2026-01-03T09:00:00+00:00",
        }
    ]
    contact = records(read(connector, "contacts"))[0]
    assert contact["account_id"] == "A1"
    assert contact["timezone"] == "America/New_York"
    assert contact["do_not_contact"] == "true"
    deals = {r["deal_id"]: r for r in records(read(connector, "deals"))}
    assert deals["D1"] == {
        "deal_id": "D1",
        "account_id": "A1",
        "contact_id": "C1",
        "owner_email": "seller@example.com",
        "name": "Deal D1",
        "stage": "quote_sent",
        "amount": "1200.50",
        "currency": "EUR",
        "quote_sent_at": "2026-01-04T10:00:00+00:00",
        "stage_changed_at": "2026-01-04T10:00:00+00:00",
        "closed_at": None,
        "created_at": "2026-01-02T09:00:00+00:00",
        "updated_at": "2026-01-04T10:00:00+00:00",
    }
    assert deals["D2"]["stage"] == "won"
    assert deals["D2"]["closed_at"] == "2026-01-05T11:30:00+00:00"
    activities = {r["activity_id"]: r for r in records(read(connector, "activities"))}
    assert activities["E1"]["kind"] == "email_in"
    assert activities["E1"]["subject"] == "Re: <b>quote</b>"
    assert activities["E1"]["deal_id"] == "D1"
    assert activities["N1"] == {
        "activity_id": "N1",
        "contact_id": "C1",
        "deal_id": None,
        "owner_email": "seller@example.com",
        "kind": "note",
        "occurred_at": "2026-01-04T08:30:00+00:00",
        "subject": None,
    }
    ticket = records(read(connector, "tickets"))[0]
    assert (ticket["priority"], ticket["status"], ticket["body"]) == (
        "urgent",
        "pending",
        "line one\nline two",
    )
    contract = records(read(connector, "contracts"))[0]
    assert contract["auto_renew"] == "true"
    assert contract["start_at"] == "2026-01-01T00:00:00+00:00"
    assert records(read(connector, "invoices")) == []


def test_full_read_pages_across_list_pages_and_resumes(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account(f"A{i:03d}") for i in range(25)]})
    connector = connect(harness, page_size=10)
    pages = read(connector, "accounts")
    assert [len(page.records) for page in pages] == [10, 10, 5]
    keys = [r["account_id"] for r in records(pages)]
    assert sorted(keys) == sorted(f"A{i:03d}" for i in range(25)) and len(set(keys)) == 25
    lists = [
        r for r in harness.server.requests if r.path == "/crm/v3/objects/companies" and r.method == "GET"
    ]
    assert [r.query.get("after") for r in lists if r.query.get("archived") == ["false"]][1:] == [
        ["11"],
        ["21"],
    ]
    # a sync killed after the first page resumes from its cursor: the rest, nothing twice
    rest = read(connector, "accounts", pages[0].cursor)
    assert sorted(r["account_id"] for r in records(rest)) == sorted(keys[10:])


def test_full_read_empty_last_page_fault(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account(f"A{i}") for i in range(10)]})
    harness.server.empty_last_page = True
    pages = read(connect(harness, page_size=5), "accounts")
    assert [len(p.records) for p in pages] == [5, 5, 0]
    assert pages[-1].cursor is not None
    assert len({r["account_id"] for r in records(pages)}) == 10


def test_incremental_moves_window_past_small_cap_without_skips_or_repeats(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account(f"OLD{i}") for i in range(5)]})
    connector = connect(harness, page_size=10)  # search pages of 20, the stand-in's cap is 50
    cursor = read(connector, "accounts")[-1].cursor
    server = harness.server
    # 120 changes, 25 of which share one millisecond (HubSpot bulk edits do that): more than a page
    for i in range(120):
        harness.upsert("accounts", account(f"NEW{i:03d}"))
        if i == 40:
            tie = server.clock_ms
        if 40 <= i < 65:
            server.records["companies"][f"NEW{i:03d}"].modified_ms = tie
            server.clock_ms = tie
    changed_during_read = "NEW005"
    # an edit while we page: the edited record moves to the end of the results
    server.after_requests(2, lambda: server.touch("companies", changed_during_read, name="edited"))
    pages = read(connector, "accounts", cursor)
    keys = [r["account_id"] for r in records(pages)]
    assert sorted(set(keys)) == sorted(f"NEW{i:03d}" for i in range(120))
    assert keys.count(changed_during_read) == 2  # once as it was, once edited: a new change, not a repeat
    assert len(keys) == 121
    assert [r for r in server.requests if r.status == 400] == []
    searches = [r.body for r in server.requests if r.path.endswith("/search")]
    assert not any(b.get("after") for b in searches)  # keyset only: no query pages toward the cap
    # the 25 ties (more than a page of 20) were walked by id within their millisecond
    assert any(b["sorts"][0]["propertyName"] == "hs_object_id" for b in searches)
    # nothing more: the next read returns nothing and the cursor did not skip the edited record
    assert records(read(connector, "accounts", pages[-1].cursor)) == []
    assert "accounts" not in connector.changed({"accounts": pages[-1].cursor})


def test_more_ties_than_the_search_cap_complete_with_every_record_once(
    harness: HubSpotHarness, tmp_path: Path
) -> None:
    assert HubSpotServer(token="t").search_cap == 10_000  # the stand-in's default is HubSpot's own cap
    server = harness.server  # this one caps at 50
    connector = connect(harness, objects=["accounts"], page_size=10)
    con = duckdb.connect(str(tmp_path / "ties.duckdb"))
    sync_source(con, connector, AS_OF)
    before = server.tick()
    tie = server.tick()
    # a bulk edit: 120 records in one millisecond (numeric ids like HubSpot's: 9 < 10 < 100), around others
    server.put("companies", "5000", {"name": "before"}, modified_ms=before)
    for i in range(1, 121):
        server.put("companies", str(i), {"name": f"T{i}"}, modified_ms=tie)
    server.put("companies", "6000", {"name": "after"}, modified_ms=server.tick())
    pages = read(connector, "accounts", stored_cursors(con, "hubspot")["accounts"])
    keys = [r["account_id"] for r in records(pages)]
    assert sorted(keys) == sorted(["5000", "6000", *(str(i) for i in range(1, 121))])  # each exactly once
    assert keys[0] == "5000" and keys[-1] == "6000"
    assert [r for r in server.requests if r.status == 400] == []  # nothing paged toward the cap
    report = sync_source(con, connector, AS_OF + HOUR).objects["accounts"]
    assert (report.status, report.inserted, report.updated) == ("synced", 122, 0)
    again = sync_source(con, connector, AS_OF + 2 * HOUR).objects["accounts"]
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 0)


def test_archived_records_become_deleted_keys(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account("A1")], "deals": [deal("D1"), deal("D2"), deal("D3")]})
    connector = connect(harness)
    cursor = read(connector, "deals")[-1].cursor
    harness.delete("deals", "D2")
    harness.upsert("deals", deal("D3", name="renamed"))
    pages = read(connector, "deals", cursor)
    assert [r["deal_id"] for r in records(pages)] == ["D3"]
    assert [key for page in pages for key in page.deleted_keys] == ["D2"]
    assert pages[-1].deleted_keys == ["D2"]  # deletions come after the upserts
    again = read(connector, "deals", pages[-1].cursor)
    assert again == []


def test_fault_record_archived_between_full_read_pages_is_deleted_next(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account(f"A{i:02d}") for i in range(25)]})
    server = harness.server
    connector = connect(harness, page_size=10)
    # requests of a full read: newest-modified search, archived list, then list pages
    server.after_requests(3, lambda: server.archive("companies", "A02"))
    pages = read(connector, "accounts")
    assert "A02" in [r["account_id"] for r in records(pages)]  # listed before it was archived
    later = read(connector, "accounts", pages[-1].cursor)
    assert [key for page in later for key in page.deleted_keys] == ["A02"]


def test_associations_resolve_in_incremental_reads(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account("A1"), account("A2")], "contacts": [CONTACT], "deals": [deal("D1")]})
    connector = connect(harness)
    cursor = read(connector, "deals")[-1].cursor
    harness.upsert("deals", deal("D1", account_id="A2"))
    harness.upsert("deals", deal("D9", contact_id=None))
    changed = {r["deal_id"]: r for r in records(read(connector, "deals", cursor))}
    assert (changed["D1"]["account_id"], changed["D1"]["contact_id"]) == ("A2", "C1")
    assert (changed["D9"]["account_id"], changed["D9"]["contact_id"]) == ("A1", None)
    batch = [r for r in harness.server.requests if r.path.startswith("/crm/v4/associations/deals/")]
    assert {r.status for r in batch} == {200, 207}  # 207: D9 has no contact


def test_drift_and_broken_values_pass_through(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account("A1")], "deals": [deal("D1", stage="bogus", amount="12,50")]})
    server = harness.server
    server.add_property("deals", "hs_new_field", "surprise")
    server.set_raw("deals", "D1", "deal_currency_code", 978)  # a property changing type
    server.remove_property("deals", "hs_v2_date_entered_contractsent")
    record = records(read(connect(harness), "deals"))[0]
    assert record["stage"] == "bogus"  # unmapped picklist value, unchanged
    assert record["amount"] == "12,50"  # not a number: passes through for the sync to quarantine
    assert record["currency"] == "978"
    assert record["hs_new_field"] == "surprise"
    assert "quote_sent_at" not in record  # the property is gone: the column is missing, not null


def test_changed_probes_with_one_small_search_per_object(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account("A1")], "deals": [deal("D1")]})
    connector = connect(harness, objects=["accounts", "deals"])
    cursors = {obj: read(connector, obj)[-1].cursor for obj in ("accounts", "deals")}
    before = len(harness.server.requests)
    assert connector.changed(cursors) == []
    harness.upsert("deals", deal("D1", name="changed"))
    assert connector.changed(cursors) == ["deals"]
    assert connector.changed({"accounts": None, "deals": cursors["deals"]}) == ["accounts", "deals"]
    probes = harness.server.requests[before:]
    # a limit-1 search, the look-back window's ids and modified times only, or the archived list
    assert all(
        (
            r.path.endswith("/search")
            and (r.body["limit"] == 1 or r.body["properties"] == ["hs_lastmodifieddate"])
        )
        or r.query.get("archived") == ["true"]
        for r in probes
    )
    harness.delete("accounts", "A1")
    assert connector.changed(cursors) == ["accounts", "deals"]  # an archive is a change too


def test_fault_429_retry_after_is_honoured(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account("A1")]})
    harness.server.fail_next(1, status=429, retry_after=1, path_contains="/crm/v3/objects/companies")
    started = time.monotonic()
    assert len(records(read(connect(harness), "accounts"))) == 1
    assert time.monotonic() - started >= 1.0
    logged = harness.server.requests
    rejected = next(i for i, r in enumerate(logged) if r.status == 429)
    assert logged[rejected + 1].at - logged[rejected].at >= 0.95


def test_search_rate_limit_is_respected(harness: HubSpotHarness) -> None:
    # the stand-in does enforce its limit: a burst gets HubSpot's 429 RATE_LIMITS
    with httpx.Client(
        base_url=harness.server.url, headers={"Authorization": f"Bearer {harness.server.token}"}
    ) as c:
        answers = [c.post("/crm/v3/objects/companies/search", json={"limit": 1}) for _ in range(7)]
    assert 429 in [a.status_code for a in answers]
    assert next(a for a in answers if a.status_code == 429).json()["category"] == "RATE_LIMITS"
    time.sleep(1.0)
    harness.server.requests.clear()

    harness.seed({"accounts": [account(f"A{i:02d}") for i in range(3)]})
    connector = connect(harness, page_size=1)  # two records per search page: many searches
    cursor = read(connector, "accounts")[-1].cursor
    for i in range(10):
        harness.upsert("accounts", account(f"B{i:02d}"))
    assert len(records(read(connector, "accounts", cursor))) == 10
    times = harness.server.search_times()
    assert len(times) >= 6
    assert all(r.status != 429 for r in harness.server.requests)
    assert all(later - earlier >= 0.2 for earlier, later in zip(times, times[1:], strict=False))


def test_fault_5xx_is_retried_then_succeeds(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account("A1")]})
    harness.server.fail_next(2, status=503, retry_after=None)
    assert len(records(read(connect(harness), "accounts"))) == 1
    assert [r.status for r in harness.server.requests][:3] == [503, 503, 200]


def test_fault_timeout_is_retried(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account("A1")]})
    harness.server.delay_next(1, 1.0)
    assert len(records(read(connect(harness, timeout=0.3), "accounts"))) == 1


def test_fault_persistent_failure_names_object_and_request_not_token(
    harness: HubSpotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    harness.seed({"deals": [deal("D1")]})
    harness.server.fail_next(10, status=500, retry_after=None, path_contains="/crm/v3/objects/deals")
    with pytest.raises(ConnectorError) as caught:
        read(connect(harness, max_attempts=3), "deals")
    message = str(caught.value)
    assert "deals" in message and "/crm/v3/objects/deals" in message and "500" in message
    token = harness.server.token
    assert token not in message and token not in caplog.text
    assert harness.server.requests[0].authorization == f"Bearer {token}"  # it was sent, only as a header


def test_fault_bad_token_is_refused_without_revealing_it(
    harness: HubSpotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    harness.seed({"accounts": [account("A1")]})
    wrong = "pat-na1-wrong-secret-value"
    connector = HubSpotConnector.from_config("hubspot", harness.config, environ={TOKEN_ENV: wrong})
    with pytest.raises(ConnectorError) as caught:
        read(connector, "accounts")
    message = str(caught.value)
    assert "401" in message and TOKEN_ENV in message and "INVALID_AUTHENTICATION" in message
    for secret in (wrong, harness.server.token):
        assert (
            secret not in message
            and secret not in caplog.text
            and secret not in repr(connector.http.client.auth)
        )


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"token_env": None}, "token_env"),
        ({"token_env": "NOT_SET_ANYWHERE"}, "NOT_SET_ANYWHERE"),
        ({"api_base": "ftp://example.com"}, "api_base"),
        ({"objects": ["accounts", "planets"]}, "objects"),
        ({"search_rate_per_second": 0}, "search_rate_per_second"),
        ({"timeout": "soon"}, "timeout"),
        ({"object_types": {"nps_responses": 5}}, "object_types"),
        ({"object_types": None}, "object_types"),  # contracts listed, its custom object id not set
        ({"tokne_env": "X"}, "tokne_env"),
        ({"mapping": "/nonexistent/hubspot.yml"}, "mapping"),
    ],
)
def test_config_errors_name_the_key(harness: HubSpotHarness, change: dict[str, Any], key: str) -> None:
    config = {k: v for k, v in {**harness.config, **change}.items() if v is not None}
    with pytest.raises(ConnectorConfigError, match=key):
        HubSpotConnector.from_config("hubspot", config, environ=harness.environ)


def test_mapping_errors_name_file_and_key(tmp_path: Path) -> None:
    bundled = Path(load_mapping().path).read_text(encoding="utf-8")
    broken = tmp_path / "hubspot.yml"
    broken.write_text(bundled.replace("closedwon: won", "closedwon: victory"), encoding="utf-8")
    with pytest.raises(ConnectorConfigError) as caught:
        load_mapping(broken)
    assert str(broken) in str(
        caught.value
    ) and "objects.deals.sources[0].columns.stage.values.closedwon" in str(caught.value)
    broken.write_text(
        bundled.replace("name: {property: dealname}", "nom: {property: dealname}"), encoding="utf-8"
    )
    with pytest.raises(ConnectorConfigError, match=r"columns\.nom"):
        load_mapping(broken)


def test_custom_object_types_come_from_config(harness: HubSpotHarness) -> None:
    connector = connect(harness, objects=["contracts"], object_types={"contracts": "2-7654321"})
    assert connector.mapping.objects["contracts"].sources[0].object_type == "2-7654321"
    default = HubSpotConnector.from_config(
        "hubspot", {"token_env": TOKEN_ENV, "api_base": harness.server.url}, environ=harness.environ
    )
    assert "contracts" not in default.objects() and "deals" in default.objects()  # customer-defined: opt in


# ------------------------------------------------------------------ search index lag (look-back)


@pytest.mark.parametrize("overlap", [300, 0], ids=["look-back-300s", "no-look-back-misses"])
def test_fault_search_index_lag_late_visible_edit_lands_exactly_once(
    harness: HubSpotHarness, tmp_path: Path, overlap: int
) -> None:
    harness.seed({"accounts": [account("A1")], "contacts": [CONTACT], "deals": [deal("D1"), deal("D2")]})
    server = harness.server
    connector = connect(harness, objects=["deals"], overlap_seconds=overlap)
    con = duckdb.connect(str(tmp_path / "lag.duckdb"))
    sync_source(con, connector, AS_OF)
    # D1 is edited, but HubSpot's search index shows its old version for 40 s; D2's later edit is visible
    server.freeze_search("deals", "D1")
    harness.upsert("deals", deal("D1", name="late"))
    server.tick(server.clock_ms + 40_000)
    harness.upsert("deals", deal("D2", name="on time"))
    first = sync_source(con, connector, AS_OF + HOUR).objects["deals"]
    assert (first.inserted, first.updated, first.unchanged) == (0, 1, 0)  # D2; D1 not searchable yet
    cursor = stored_cursors(con, "hubspot")["deals"]
    assert connector.changed({"deals": cursor}) == []  # the look-back re-reads only what it delivered
    server.thaw_search()  # the index catches up: D1's edit is visible, older than the cursor
    assert connector.changed({"deals": cursor}) == (["deals"] if overlap else [])
    second = sync_source(con, connector, AS_OF + 2 * HOUR).objects["deals"]
    (name,) = con.execute(f"select name from {mirror_table('hubspot', 'deals')} where _key = 'D1'").fetchone()
    if overlap:
        assert (second.inserted, second.updated, second.unchanged) == (0, 1, 0)  # D1, once; D2 not again
        assert name == "late"
    else:  # the miss the look-back exists for: D1's edit never arrives without a full read
        assert (second.inserted, second.updated, second.unchanged) == (0, 0, 0)
        assert name == "Deal D1"
    # an unchanged source: the probe stays quiet and a sync changes nothing
    assert connector.changed({"deals": stored_cursors(con, "hubspot")["deals"]}) == []
    third = sync_source(con, connector, AS_OF + 3 * HOUR).objects["deals"]
    assert (third.pages, third.inserted, third.updated, third.unchanged, third.deleted) == (0, 0, 0, 0, 0)


def test_fault_edit_in_the_cursor_millisecond_and_late_archive_land_once(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account("A1")], "contacts": [CONTACT], "deals": [deal("D1"), deal("D2")]})
    server = harness.server
    connector = connect(harness, objects=["deals"])
    cursor = read(connector, "deals")[-1].cursor
    # D3 is created in the very millisecond of D2's edit, but reaches the search index late
    server.freeze_search("deals", "D3")
    edited = harness.server.tick()
    server.put(
        "deals", "D2", dict(server.records["deals"]["D2"].properties, dealname="x"), modified_ms=edited
    )
    server.put("deals", "D3", dict(server.records["deals"]["D1"].properties), modified_ms=edited)
    pages = read(connector, "deals", cursor)
    assert [r["deal_id"] for r in records(pages)] == ["D2"]
    server.thaw_search()
    later = read(connector, "deals", pages[-1].cursor)
    assert [r["deal_id"] for r in records(later)] == ["D3"]
    # an archive re-read inside the look-back is not reported twice
    harness.delete("deals", "D1")
    gone = read(connector, "deals", later[-1].cursor)
    assert [k for p in gone for k in p.deleted_keys] == ["D1"]
    assert read(connector, "deals", gone[-1].cursor) == []


@pytest.mark.parametrize("value", [-1, "300", float("nan"), True])
def test_overlap_seconds_config_error_names_key_and_value(harness: HubSpotHarness, value: Any) -> None:
    with pytest.raises(ConnectorConfigError, match="overlap_seconds") as caught:
        connect(harness, overlap_seconds=value)
    assert repr(value) in str(caught.value)
    assert connect(harness, overlap_seconds=0).overlap_ms == 0
    assert connect(harness).overlap_ms == 300_000


def test_cursor_version_1_still_loads(harness: HubSpotHarness) -> None:
    harness.seed({"accounts": [account("A1")], "contacts": [CONTACT], "deals": [deal("D1")]})
    mark = harness.server.records["deals"]["D1"].modified_ms
    state = {"after": None, "del": [0, []], "mod": [mark, ["D1"]], "phase": "search"}
    old = json.dumps({"sources": {"deals": state}, "v": 1})
    connector = connect(harness, objects=["deals"])
    assert read(connector, "deals", old) == [] and connector.changed({"deals": old}) == []


# ---------------------------------------------------------------------------------------- time zones


def test_every_iana_zone_round_trips_through_hubspots_encoding() -> None:
    zones = zoneinfo.available_timezones()
    assert len(zones) > 400
    assert [z for z in zones if timezone_text(hubspot_timezone(z)) != z] == []
    # option values as HubSpot's hs_timezone property lists them
    assert {
        value: timezone_text(value)
        for value in (
            "america_slash_port_hyphen_au_hyphen_prince",
            "america_slash_blanc_hyphen_sablon",
            "africa_slash_porto_hyphen_novo",
            "asia_slash_ust_hyphen_nera",
            "us_slash_east_hyphen_indiana",
            "us_slash_indiana_hyphen_starke",
            "us_slash_pacific_hyphen_new",  # left the tz database; it was a link to Los Angeles
            "america_slash_argentina_slash_comodrivadavia",
            "america_slash_north_dakota_slash_new_salem",
            "brazil_slash_denoronha",
            "australia_slash_act",
            "antarctica_slash_dumontdurville",
            "navajo",
        )
    } == {
        "america_slash_port_hyphen_au_hyphen_prince": "America/Port-au-Prince",
        "america_slash_blanc_hyphen_sablon": "America/Blanc-Sablon",
        "africa_slash_porto_hyphen_novo": "Africa/Porto-Novo",
        "asia_slash_ust_hyphen_nera": "Asia/Ust-Nera",
        "us_slash_east_hyphen_indiana": "US/East-Indiana",
        "us_slash_indiana_hyphen_starke": "US/Indiana-Starke",
        "us_slash_pacific_hyphen_new": "America/Los_Angeles",
        "america_slash_argentina_slash_comodrivadavia": "America/Argentina/ComodRivadavia",
        "america_slash_north_dakota_slash_new_salem": "America/North_Dakota/New_Salem",
        "brazil_slash_denoronha": "Brazil/DeNoronha",
        "australia_slash_act": "Australia/ACT",
        "antarctica_slash_dumontdurville": "Antarctica/DumontDUrville",
        "navajo": "Navajo",
    }
    assert hubspot_timezone("Etc/GMT+5") == "etc_slash_gmt_plus_5"
    assert timezone_text("etc_slash_gmt_minus_3") == "Etc/GMT-3"
    assert timezone_text("America/New_York") == "America/New_York"
    assert timezone_text("mars_slash_olympus") == "mars_slash_olympus"  # not a zone: passes through


def test_encoded_time_zones_load_not_quarantined(harness: HubSpotHarness, tmp_path: Path) -> None:
    zones = {"C1": "America/Port-au-Prince", "C2": "Asia/Ust-Nera", "C3": "America/Argentina/Buenos_Aires"}
    harness.seed(
        {
            "accounts": [account("A1")],
            "contacts": [{**CONTACT, "contact_id": key, "timezone": zone} for key, zone in zones.items()],
        }
    )
    stored = harness.server.records["contacts"]["C1"].properties["hs_timezone"]
    assert stored == "america_slash_port_hyphen_au_hyphen_prince"
    con = duckdb.connect(str(tmp_path / "tz.duckdb"))
    report = sync_source(con, connect(harness, objects=["accounts", "contacts"]), AS_OF)
    assert report.load is not None and not report.load.has_problems
    assert con.execute("select count(*) from ops.quarantine where object = 'contacts'").fetchone() == (0,)
    assert dict(con.execute("select contact_id, timezone from raw.contacts").fetchall()) == zones


# ------------------------------------------------------------------------------------------- owners


def test_deactivated_owner_resolves_to_email_and_is_named(
    harness: HubSpotHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness.seed(
        {
            "accounts": [account("A1", owner_email="gone@example.com")],
            "contacts": [CONTACT],
            "deals": [deal("D1", owner_email="gone@example.com"), deal("D2")],
        }
    )
    server = harness.server
    gone = server.deactivate_owner("gone@example.com")
    # like HubSpot: the default owners list leaves deactivated owners out, archived=true lists only them
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}) as client:
        active = [o["id"] for o in client.get("/crm/v3/owners").json()["results"]]
        archived = client.get("/crm/v3/owners", params={"archived": "true"}).json()["results"]
    assert gone not in active and [(o["id"], o["archived"]) for o in archived] == [(gone, True)]
    assert server.records["deals"]["D1"].properties["hubspot_owner_id"] == gone

    caplog.set_level(logging.WARNING, logger="connectors.hubspot")
    con = duckdb.connect(str(tmp_path / "owners.duckdb"))
    connector = connect(harness, objects=["accounts", "contacts", "deals"])
    report = sync_source(con, connector, AS_OF)
    assert con.execute("select count(*) from ops.quarantine").fetchone() == (0,)
    owners = dict(con.execute("select deal_id, owner_email from raw.deals").fetchall())
    assert owners == {"D1": "gone@example.com", "D2": "seller@example.com"}
    assert report.load is not None and not report.load.has_problems
    named = [r.getMessage() for r in caplog.records if "deactivated" in r.getMessage()]
    assert any("deals" in m and "gone@example.com (1 record(s))" in m for m in named), named
    assert any("accounts" in m and "gone@example.com" in m for m in named), named
    assert not any("seller@example.com" in m for m in named)
