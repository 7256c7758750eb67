"""The crm_task sink against the Zoho and HubSpot stand-ins, through the real dispatcher and a DuckDB ledger:
task fields and links, duplicate safety after an interrupted send, HubSpot's search lag, and faults
(429 with Retry-After, 5xx, timeouts after the vendor acted, token expiry, permanent 4xx)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dispatch_support import AS_OF, event_types, ledger_rows, seed, state_of

from action_sinks.base import OutboundMessage, SinkConfigError
from action_sinks.crm_task import HubSpotTaskSink, ZohoTaskSink, crm_task_sink
from action_sinks.dispatcher import dispatch
from actionlayer import ledger
from tests.vendors.hubspot_server import HubSpotServer
from tests.vendors.zoho_server import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, ZohoServer

CHANNEL = "crm_task"
FIELD_ZOHO = "Actionlayer_Action_Id"
FIELD_HUBSPOT = "actionlayer_action_id"
# fast retries and a short timeout keep the fault tests quick; settle waits out in-flight requests
FAST = {"timeout": 0.6, "max_attempts": 4, "retry_wait": 0.05, "settle_seconds": 0.6}


# ---------------------------------------------------------------- vendors


class ZohoVendor:
    name = "zoho"

    def __init__(self) -> None:
        self.server = ZohoServer().start()
        self.server.define_module(
            "Tasks",
            {
                "Subject": "text",
                "Description": "textarea",
                "Due_Date": "date",
                "Status": "picklist",
                "Priority": "picklist",
                "What_Id": "lookup",
                "Who_Id": "lookup",
                FIELD_ZOHO: "text",
            },
        )
        for module in ("Deals", "Accounts", "Contacts"):
            self.server.define_module(module, {"Name": "text"})
        self.server.put("Accounts", {"id": "account-1", "Name": "Atlas"})
        self.server.put("Contacts", {"id": "contact-1", "Name": "Ada"})
        self.environ = {"ZOHO_ID": CLIENT_ID, "ZOHO_SECRET": CLIENT_SECRET, "ZOHO_REFRESH": REFRESH_TOKEN}
        self.secrets = [CLIENT_SECRET, REFRESH_TOKEN]

    def entry(self, **overrides: Any) -> dict[str, Any]:
        return {
            "sink": "crm_task",
            "vendor": "zoho",
            "base_url": self.server.base_url,
            "accounts_url": self.server.base_url,
            "client_id_env": "ZOHO_ID",
            "client_secret_env": "ZOHO_SECRET",
            "refresh_token_env": "ZOHO_REFRESH",
            **FAST,
            **overrides,
        }

    def sink(self, **overrides: Any) -> ZohoTaskSink:
        return ZohoTaskSink.from_settings(self.entry(**overrides), "test: channels.crm_task", self.environ)

    def add_deal(self, action_id: str) -> None:
        self.server.put("Deals", {"id": f"deal-{action_id}", "Name": "Atlas quote"})

    def tasks(self, action_id: str) -> list[dict[str, Any]]:
        return [t for t in self.server.records["Tasks"].values() if t.get(FIELD_ZOHO) == action_id]

    def creations(self, action_id: str) -> int:
        return self.server.creations.get(action_id, 0)

    def fail_search(self, n: int, status: int, retry_after: float | None) -> None:
        self.server.fail_next(n, status, retry_after)

    def fail_create(self, n: int, status: int, retry_after: float | None, after: int = 1) -> None:
        self.server.fail_next_write(n, status, retry_after)

    def delay_create(self, seconds: float, after: int = 1) -> None:
        self.server.delay_next_write(1, seconds)

    def create_requests(self) -> int:
        return sum(1 for r in self.server.api_requests() if r.method == "POST")

    def check_task(self, task: dict[str, Any], action_id: str) -> None:
        assert task["Subject"] == "Following up on the Atlas quote"
        assert task["Description"].startswith("Hi Ada,\n\nDid the quote work for you?")
        assert f"Actionlayer action {action_id}" in task["Description"]
        assert "rule post_quote_followup v1" in task["Description"]
        # proposed 2026-11-22 09:00 (AS_OF - 1 day) + due_in_days 1
        assert task["Due_Date"] == "2026-11-23"
        assert (task["Status"], task["Priority"]) == ("Not Started", "Normal")
        assert task["What_Id"] == {"id": f"deal-{action_id}"} and task["$se_module"] == "Deals"
        assert task["Who_Id"] == {"id": "contact-1"}

    def close(self) -> None:
        self.server.stop()


class HubSpotVendor:
    name = "hubspot"

    def __init__(self) -> None:
        token = f"pat-na1-{uuid.uuid4()}"
        self.server = HubSpotServer(token=token, search_per_second=50).start()
        self.server.define_property("tasks", FIELD_HUBSPOT)
        self.server.put("companies", "account-1", {"name": "Atlas"})
        self.server.put("contacts", "contact-1", {"email": "ada@customer.example"})
        self.environ = {"HUBSPOT_TOKEN": token}
        self.secrets = [token]

    def entry(self, **overrides: Any) -> dict[str, Any]:
        return {
            "sink": "crm_task",
            "vendor": "hubspot",
            "base_url": self.server.url,
            "token_env": "HUBSPOT_TOKEN",
            "search_rate_per_second": 50,
            **FAST,
            **overrides,
        }

    def sink(self, **overrides: Any) -> HubSpotTaskSink:
        return HubSpotTaskSink.from_settings(self.entry(**overrides), "test: channels.crm_task", self.environ)

    def add_deal(self, action_id: str) -> None:
        self.server.put("deals", f"deal-{action_id}", {"dealname": "Atlas quote"})

    def tasks(self, action_id: str) -> list[Any]:
        return [
            t
            for t in self.server.records.get("tasks", {}).values()
            if t.properties.get(FIELD_HUBSPOT) == action_id
        ]

    def creations(self, action_id: str) -> int:
        return self.server.creations.get(action_id, 0)

    def fail_search(self, n: int, status: int, retry_after: float | None) -> None:
        self.server.fail_next(n, status, retry_after, path_contains="/search")

    def fail_create(self, n: int, status: int, retry_after: float | None, after: int = 1) -> None:
        # HubSpot's fault switch has no method filter: arm it once the `after` searches are answered
        self.server.after_requests(after, lambda: self.server.fail_next(n, status, retry_after))

    def delay_create(self, seconds: float, after: int = 1) -> None:
        self.server.after_requests(after, lambda: self.server.delay_next(1, seconds))

    def create_requests(self) -> int:
        return sum(
            1 for r in self.server.requests if r.method == "POST" and r.path == "/crm/v3/objects/tasks"
        )

    def check_task(self, task: Any, action_id: str) -> None:
        props = task.properties
        assert props["hs_task_subject"] == "Following up on the Atlas quote"
        assert props["hs_task_body"].startswith("Hi Ada,\n\nDid the quote work for you?")
        assert f"Actionlayer action {action_id}" in props["hs_task_body"]
        assert props["hs_timestamp"] == "2026-11-23T09:00:00.000Z"
        assert (props["hs_task_status"], props["hs_task_priority"]) == ("NOT_STARTED", "MEDIUM")
        assert task.associations == {
            "deals": [f"deal-{action_id}"],
            "companies": ["account-1"],
            "contacts": ["contact-1"],
        }
        create = next(r for r in self.server.requests if r.path == "/crm/v3/objects/tasks")
        types = {a["to"]["id"]: a["types"][0]["associationTypeId"] for a in create.body["associations"]}
        assert types == {f"deal-{action_id}": 216, "account-1": 192, "contact-1": 204}

    def close(self) -> None:
        self.server.stop()


Vendor = ZohoVendor | HubSpotVendor


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    ledger.ensure_schema(connection)
    yield connection
    connection.close()


@pytest.fixture(params=["zoho", "hubspot"])
def vendor(request: pytest.FixtureRequest) -> Iterator[Vendor]:
    made: Vendor = ZohoVendor() if request.param == "zoho" else HubSpotVendor()
    yield made
    made.close()


@pytest.fixture
def zoho() -> Iterator[ZohoVendor]:
    made = ZohoVendor()
    yield made
    made.close()


@pytest.fixture
def hubspot() -> Iterator[HubSpotVendor]:
    made = HubSpotVendor()
    yield made
    made.close()


def _seed(con: duckdb.DuckDBPyConnection, vendor: Vendor, *action_ids: str) -> None:
    for action_id in action_ids:
        vendor.add_deal(action_id)
        seed(con, action_id, channel=CHANNEL)


def _settled(con: duckdb.DuckDBPyConnection, *action_ids: str) -> dict[str, str]:
    """Final state per action; nothing may be left in `sending`."""
    states = {action_id: state_of(con, action_id)["event_type"] for action_id in action_ids}
    assert "sending" not in states.values(), states
    return states


def _delivered_detail(con: duckdb.DuckDBPyConnection, action_id: str) -> tuple[str, str]:
    row = state_of(con, action_id)
    assert row["event_type"] == "delivered", row["result"]
    return row["result"], json.loads(row["details"])["external_id"]


def _no_secrets(con: duckdb.DuckDBPyConnection, vendor: Vendor, *texts: str) -> None:
    written = repr(ledger_rows(con)) + "".join(texts)
    for secret in vendor.secrets:
        assert secret not in written


def _crash_after_send(
    con: duckdb.DuckDBPyConnection, sink: ZohoTaskSink | HubSpotTaskSink, action_id: str
) -> None:
    """A dispatch that died after the CRM created the task and before `delivered` was recorded: the
    ledger holds a committed `sending`, the CRM holds the task."""
    row = state_of(con, action_id)
    message = OutboundMessage(
        action_id,
        CHANNEL,
        row["recipient"],
        row["message_subject"],
        row["message_body"],
        metadata={k: row.get(k) for k in ("record_type", "record_id", "contact_id", "account_id", "rule_id")}
        | {"proposed_at": AS_OF - timedelta(days=1)},
    )
    assert sink.send(message).ok
    ledger.append(con, [ledger.next_event(row, "sending", AS_OF, "dispatcher", attempt=1)])


# ---------------------------------------------------------------- happy path and crash recovery


def test_task_created_with_fields_and_links(con: duckdb.DuckDBPyConnection, vendor: Vendor) -> None:
    _seed(con, vendor, "t1")
    sink = vendor.sink()

    report = dispatch(con, AS_OF, {CHANNEL: sink})

    assert (report.delivered, report.failed) == (1, 0)
    [task] = vendor.tasks("t1")
    vendor.check_task(task, "t1")
    result, external_id = _delivered_detail(con, "t1")
    assert external_id.startswith(f"{vendor.name}:task:") and external_id.endswith(str(_task_id(task)))
    assert "created for action t1" in result
    assert event_types(con, "t1") == ["proposed", "approved", "sending", "delivered"]
    _no_secrets(con, vendor, sink.describe(), repr(sink), result)
    sink.close()


def _task_id(task: Any) -> str:
    return task["id"] if isinstance(task, dict) else task.id


def test_redispatch_after_interrupted_send_finds_existing_task(
    con: duckdb.DuckDBPyConnection, vendor: Vendor
) -> None:
    _seed(con, vendor, "c1")
    sink = vendor.sink()

    _crash_after_send(con, sink, "c1")
    assert state_of(con, "c1")["event_type"] == "sending"  # the crash left the send unrecorded
    assert vendor.creations("c1") == 1

    report = dispatch(con, AS_OF, {CHANNEL: sink})

    assert report.delivered == 1 and report.unknown == 0
    assert vendor.creations("c1") == 1 and len(vendor.tasks("c1")) == 1
    result, external_id = _delivered_detail(con, "c1")
    assert "already created for action c1" in result
    assert external_id.endswith(_task_id(vendor.tasks("c1")[0]))
    assert [(r["event_type"], r["attempt"]) for r in ledger.trail(con, "c1")][2:] == [
        ("sending", 1),
        ("sending", 2),
        ("delivered", 2),
    ]
    sink.close()


def test_hubspot_search_lag_limitation_redispatch_within_lag_duplicates(
    con: duckdb.DuckDBPyConnection, hubspot: HubSpotVendor
) -> None:
    """The documented weakness: a re-send within HubSpot's index lag cannot see the first task."""
    hubspot.server.search_lag = 1.0
    _seed(con, hubspot, "lag1")
    sink = hubspot.sink()
    _crash_after_send(con, sink, "lag1")

    dispatch(con, AS_OF, {CHANNEL: sink})  # at once: the first task is not searchable yet

    assert hubspot.creations("lag1") == 2  # a duplicate task in HubSpot
    assert _settled(con, "lag1") == {"lag1": "delivered"}
    # once the index has caught up, another re-send finds a task and creates nothing more
    time.sleep(1.05)
    assert sink.send(_message("lag1")).ok
    assert hubspot.creations("lag1") == 2
    sink.close()


def _message(action_id: str) -> OutboundMessage:
    return OutboundMessage(action_id, CHANNEL, "ada@customer.example", "Subject", "Body", metadata={})


def test_hubspot_search_lag_fault_timeout_settles_before_recreating(
    con: duckdb.DuckDBPyConnection, hubspot: HubSpotVendor
) -> None:
    # the create times out, lands at HubSpot after 0.8 s, becomes searchable 0.4 s later; settling 1.4 s
    # before the second search sees it, so no second task is created
    hubspot.server.search_lag = 0.4
    _seed(con, hubspot, "lag2")
    hubspot.delay_create(0.8)
    sink = hubspot.sink(settle_seconds=1.4)

    report = dispatch(con, AS_OF, {CHANNEL: sink})

    assert report.delivered == 1
    assert hubspot.creations("lag2") == 1
    result, _ = _delivered_detail(con, "lag2")
    assert "confirmed by search" in result
    sink.close()


# ---------------------------------------------------------------- faults


def test_crm_task_rate_limit_fault_honours_retry_after(
    con: duckdb.DuckDBPyConnection, vendor: Vendor
) -> None:
    _seed(con, vendor, "r1")
    vendor.fail_search(1, 429, 0.3)
    vendor.fail_create(1, 429, 0.3, after=2)  # HubSpot: after the refused and the retried search
    sink = vendor.sink()
    started = time.monotonic()

    report = dispatch(con, AS_OF, {CHANNEL: sink})

    assert time.monotonic() - started >= 0.55  # both Retry-After waits were honoured
    assert report.delivered == 1
    assert _settled(con, "r1") == {"r1": "delivered"}
    assert vendor.creations("r1") == 1 and vendor.create_requests() == 2
    sink.close()


def test_crm_task_server_error_fault_delivered_once(con: duckdb.DuckDBPyConnection, vendor: Vendor) -> None:
    _seed(con, vendor, "e1")
    vendor.fail_search(2, 503, None)  # the search is retried by the transport
    vendor.fail_create(1, 500, None, after=3)  # the create is not: search again, then create
    sink = vendor.sink(settle_seconds=0.05)

    report = dispatch(con, AS_OF, {CHANNEL: sink})

    assert report.delivered == 1
    assert vendor.creations("e1") == 1
    assert vendor.create_requests() == 2
    assert _settled(con, "e1") == {"e1": "delivered"}
    sink.close()


def test_crm_task_timeout_fault_after_vendor_acted(con: duckdb.DuckDBPyConnection, vendor: Vendor) -> None:
    # the vendor creates the task after our 0.6 s timeout; we settle, search, find it, create nothing more
    _seed(con, vendor, "o1")
    vendor.delay_create(0.9)
    sink = vendor.sink(settle_seconds=0.8)

    report = dispatch(con, AS_OF, {CHANNEL: sink})

    assert report.delivered == 1
    assert vendor.creations("o1") == 1 and vendor.create_requests() == 1
    assert "confirmed by search" in _delivered_detail(con, "o1")[0]
    assert _settled(con, "o1") == {"o1": "delivered"}
    sink.close()


def test_crm_task_server_error_fault_unresolved_is_retried_next_dispatch(
    con: duckdb.DuckDBPyConnection, zoho: ZohoVendor
) -> None:
    # both creates of the first pass answer 503: ambiguous, so it fails retryable and the next pass
    # searches again before creating
    _seed(con, zoho, "u1")
    zoho.server.fail_next_write(2, 503, None)
    sink = zoho.sink(settle_seconds=0.05)

    first = dispatch(con, AS_OF, {CHANNEL: sink})

    assert (first.failed, first.retryable, first.unknown) == (1, 1, 0)
    failed = state_of(con, "u1")
    assert failed["retryable"] is True and "searches again before creating" in failed["result"]
    second = dispatch(con, AS_OF, {CHANNEL: sink})
    assert second.delivered == 1 and zoho.creations("u1") == 1
    sink.close()


def test_zoho_unique_field_fault_duplicate_data_means_already_created(
    con: duckdb.DuckDBPyConnection, zoho: ZohoVendor
) -> None:
    # with the field marked unique in Zoho, even a create racing a lost one cannot make a second task:
    # create 1 times out (0.6 s) and lands at 0.8 s; create 2 is sent at ~0.6 s and lands at ~1.05 s
    zoho.server.unique_fields["Tasks"] = {FIELD_ZOHO}
    _seed(con, zoho, "d1")
    zoho.server.delay_next_write(1, 0.8)
    zoho.server.delay_next_write(1, 0.45)
    sink = zoho.sink(settle_seconds=0)

    report = dispatch(con, AS_OF, {CHANNEL: sink})

    assert report.delivered == 1
    assert zoho.creations("d1") == 1
    result, external_id = _delivered_detail(con, "d1")
    assert "DUPLICATE_DATA" in result and external_id == f"zoho:task:{zoho.tasks('d1')[0]['id']}"
    sink.close()


def test_zoho_token_expiry_fault_mid_batch(con: duckdb.DuckDBPyConnection, zoho: ZohoVendor) -> None:
    _seed(con, zoho, "k1", "k2", "k3")
    expired: list[str] = []

    def expire_once(module: str, record: dict[str, Any]) -> None:
        if not expired:
            expired.append(record["id"])
            zoho.server.expire_token()  # every token issued so far stops working

    zoho.server.after_insert = expire_once
    sink = zoho.sink()

    report = dispatch(con, AS_OF, {CHANNEL: sink})

    assert report.delivered == 3
    assert zoho.server.token_grants == 2 and sink.auth.refreshes == 2
    assert [zoho.creations(a) for a in ("k1", "k2", "k3")] == [1, 1, 1]
    assert _settled(con, "k1", "k2", "k3") == {"k1": "delivered", "k2": "delivered", "k3": "delivered"}
    _no_secrets(con, zoho)
    sink.close()


def test_crm_task_permanent_4xx_fault_fails_with_vendor_reason(
    con: duckdb.DuckDBPyConnection, vendor: Vendor
) -> None:
    _seed(con, vendor, "p1")
    seed(con, "p2", channel=CHANNEL)  # its deal is not in the CRM
    sink = vendor.sink()

    report = dispatch(con, AS_OF, {CHANNEL: sink})

    assert (report.delivered, report.failed, report.retryable) == (1, 1, 0)
    assert _settled(con, "p1", "p2") == {"p1": "delivered", "p2": "failed"}
    failed = state_of(con, "p2")
    assert failed["retryable"] is False and failed["next_action"] == "needs a person"
    expected = "INVALID_DATA" if vendor.name == "zoho" else "VALIDATION_ERROR"
    assert expected in failed["result"] and "nothing created" in failed["result"]
    assert "deal-p2" in failed["result"] or "What_Id" in failed["result"]
    assert vendor.creations("p2") == 0
    sink.close()


def test_crm_task_missing_custom_field_fault_fails_before_creating(
    con: duckdb.DuckDBPyConnection, vendor: Vendor
) -> None:
    # the custom field was never created in the CRM: the search (Zoho) or the create (HubSpot) says so
    if isinstance(vendor, ZohoVendor):
        vendor.server.remove_field("Tasks", FIELD_ZOHO)
    else:
        vendor.server.custom_properties.clear()
    _seed(con, vendor, "m1")
    sink = vendor.sink()

    report = dispatch(con, AS_OF, {CHANNEL: sink})

    assert (report.failed, report.retryable) == (1, 0)
    failed = state_of(con, "m1")
    expected = ("INVALID_QUERY", FIELD_ZOHO) if isinstance(vendor, ZohoVendor) else ("PROPERTY_DOESNT_EXIST",)
    assert all(text in failed["result"] for text in expected), failed["result"]
    assert not vendor.tasks("m1")
    sink.close()


def test_zoho_refused_refresh_token_fault_is_permanent(
    con: duckdb.DuckDBPyConnection, zoho: ZohoVendor
) -> None:
    _seed(con, zoho, "x1")
    zoho.environ["ZOHO_REFRESH"] = "1000.not-the-refresh-token"
    sink = zoho.sink()

    report = dispatch(con, AS_OF, {CHANNEL: sink})

    assert (report.failed, report.retryable) == (1, 0)
    failed = state_of(con, "x1")
    assert "invalid_code" in failed["result"] and "refresh_token_env" in failed["result"]
    assert "not-the-refresh-token" not in repr(ledger_rows(con))
    sink.close()


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vendor": "salesforce"}, "channels.crm_task.vendor"),
        ({"base_url": None}, "channels.crm_task.base_url"),
        ({"base_url": "ftp://x"}, "channels.crm_task.base_url"),
        ({"client_secret_env": "NOT_SET_ANYWHERE"}, "client_secret_env: names environment variable NOT_SET"),
        ({"timeout": "slow"}, "channels.crm_task.timeout"),
        ({"max_attempts": 0}, "channels.crm_task.max_attempts"),
        ({"colour": "red"}, "unknown key(s) colour"),
        ({"idempotent": "yes"}, "channels.crm_task.idempotent"),
    ],
)
def test_crm_task_settings_errors_name_the_key(
    zoho: ZohoVendor, change: dict[str, Any], message: str
) -> None:
    entry = {k: v for k, v in {**zoho.entry(), **change}.items() if v is not None}
    with pytest.raises(SinkConfigError) as caught:
        crm_task_sink(entry, "actionlayer.yml: channels.crm_task", zoho.environ)
    assert message in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)


def test_crm_task_settings_build_and_describe_without_secrets(zoho: ZohoVendor) -> None:
    hubspot_env = {"HS": "pat-secret-value"}
    hubspot_sink = crm_task_sink(
        {"sink": "crm_task", "vendor": "hubspot", "token_env": "HS", "idempotent": False},
        "where",
        hubspot_env,
    )
    zoho_sink = crm_task_sink(zoho.entry(), "where", zoho.environ)
    try:
        assert isinstance(hubspot_sink, HubSpotTaskSink) and hubspot_sink.base_url == "https://api.hubapi.com"
        assert hubspot_sink.idempotent is False and hubspot_sink.settle_seconds == 10.0
        assert isinstance(zoho_sink, ZohoTaskSink) and zoho_sink.idempotent is True
        assert zoho_sink.name == hubspot_sink.name == "crm_task"
        texts = [hubspot_sink.describe(), repr(hubspot_sink), zoho_sink.describe(), repr(zoho_sink)]
        assert "token_env=HS" in texts[0] and "client_secret_env=ZOHO_SECRET" in texts[2]
        for text in texts:
            assert "pat-secret-value" not in text and CLIENT_SECRET not in text and REFRESH_TOKEN not in text
    finally:
        hubspot_sink.close()
        zoho_sink.close()
