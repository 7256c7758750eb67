"""The demo world: deterministic, contract-shaped, every rule has candidates, planted effects come true."""

from __future__ import annotations

import csv
import re
import zoneinfo
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from actionlayer.demo.world import (
    DEFAULT_CONFIG_PATH,
    RULE_IDS,
    ActionFact,
    World,
    advance_day,
    approver_decisions,
    day_one_candidates,
    generate_world,
    load_demo_config,
    write_sor,
)

# The contract, restated from SOR_CONTRACT.md on purpose: the test must not trust the module's own copy.
CONTRACT: dict[str, dict[str, tuple[str, ...]]] = {
    "accounts": {
        "required": ("account_id", "name", "tier", "owner_email", "created_at", "updated_at"),
        "optional": ("industry",),
    },
    "contacts": {
        "required": (
            "contact_id", "account_id", "first_name", "last_name", "email", "timezone", "do_not_contact",
            "created_at", "updated_at",
        ),
        "optional": ("phone",),
    },
    "deals": {
        "required": (
            "deal_id", "account_id", "contact_id", "owner_email", "name", "stage", "amount", "currency",
            "stage_changed_at", "created_at", "updated_at",
        ),
        "optional": ("quote_sent_at", "closed_at"),
    },
    "activities": {
        "required": ("activity_id", "contact_id", "owner_email", "kind", "occurred_at"),
        "optional": ("deal_id", "subject"),
    },
    "invoices": {
        "required": (
            "invoice_id", "account_id", "contact_id", "amount", "currency", "issued_at", "due_at", "status",
            "updated_at",
        ),
        "optional": ("paid_at",),
    },
    "tickets": {
        "required": (
            "ticket_id", "account_id", "contact_id", "priority", "status", "subject", "body", "opened_at",
            "updated_at",
        ),
        "optional": (),
    },
    "nps_responses": {"required": ("response_id", "contact_id", "score", "responded_at"), "optional": ("comment",)},
    "contracts": {
        "required": ("contract_id", "account_id", "start_at", "end_at", "auto_renew", "value", "status"),
        "optional": (),
    },
}  # fmt: skip
REFERENCES = {
    ("contacts", "account_id"): "accounts",
    ("deals", "account_id"): "accounts",
    ("deals", "contact_id"): "contacts",
    ("activities", "contact_id"): "contacts",
    ("activities", "deal_id"): "deals",
    ("invoices", "account_id"): "accounts",
    ("invoices", "contact_id"): "contacts",
    ("tickets", "account_id"): "accounts",
    ("tickets", "contact_id"): "contacts",
    ("nps_responses", "contact_id"): "contacts",
    ("contracts", "account_id"): "accounts",
}
DOMAINS = {
    "tier": {"smb", "mid", "enterprise"},
    "stage": {"lead", "qualified", "quote_sent", "negotiation", "won", "lost"},
    "kind": {"email_out", "email_in", "call", "meeting", "note", "task"},
    ("invoices", "status"): {"open", "paid", "void"},
    "priority": {"low", "normal", "high", "urgent"},
    ("tickets", "status"): {"open", "pending", "closed"},
    ("contracts", "status"): {"active", "expired", "cancelled"},
}
EVENT_TIMESTAMPS = {
    "created_at", "updated_at", "quote_sent_at", "stage_changed_at", "closed_at", "occurred_at", "issued_at",
    "paid_at", "responded_at", "opened_at",
}  # fmt: skip
PLANNED_TIMESTAMPS = {"due_at", "end_at", "start_at"}
SINGLE_LINE = {"name", "first_name", "last_name", "email", "subject", "owner_email"}
EMAIL = re.compile(r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
MONEY = re.compile(r"^\d+(\.\d+)?$")
ZONES = zoneinfo.available_timezones()
INBOUND = ("email_in", "call", "meeting")


def _read(folder: Path) -> dict[str, list[dict[str, str]]]:
    tables = {}
    for obj in CONTRACT:
        with (folder / f"{obj}.csv").open(encoding="utf-8", newline="") as handle:
            tables[obj] = list(csv.DictReader(handle))
    return tables


def _header(folder: Path, obj: str) -> list[str]:
    with (folder / f"{obj}.csv").open(encoding="utf-8", newline="") as handle:
        return next(csv.reader(handle))


def _ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%d %H:%M:%S")


def _violations(folder: Path, as_of: datetime) -> list[tuple[str, str, str]]:
    """Every (object, key, reason) that breaks the contract; an empty list means a clean folder."""
    tables = _read(folder)
    problems: list[tuple[str, str, str]] = []
    keys: dict[str, set[str]] = {}
    for obj, spec in CONTRACT.items():
        key_column = spec["required"][0]
        keys[obj] = set()
        seen: dict[str, int] = defaultdict(int)
        for row in tables[obj]:
            seen[row[key_column]] += 1
        for row in tables[obj]:
            key = row[key_column]
            reasons = []
            if seen[key] > 1:
                reasons.append("duplicate key")
            for column in spec["required"]:
                if row[column] == "":
                    reasons.append(f"{column} missing")
            for column, value in row.items():
                if value == "":
                    continue
                if column in SINGLE_LINE and any(ch in value for ch in "\r\n\x00"):
                    reasons.append(f"{column} control character")
                if column in EVENT_TIMESTAMPS or column in PLANNED_TIMESTAMPS:
                    try:
                        moment = _ts(value)
                    except ValueError:
                        reasons.append(f"{column} unparseable")
                        continue
                    if column in EVENT_TIMESTAMPS and moment > as_of + timedelta(days=1):
                        reasons.append(f"{column} in the future")
                if column in ("email", "owner_email") and not EMAIL.match(value):
                    reasons.append(f"{column} invalid email")
                if column == "timezone" and value not in ZONES:
                    reasons.append("unknown timezone")
                if column in ("amount", "value") and not MONEY.match(value):
                    reasons.append(f"{column} not a non-negative decimal")
                if column in ("do_not_contact", "auto_renew") and value.lower() not in (
                    "true",
                    "false",
                    "1",
                    "0",
                ):
                    reasons.append(f"{column} not a boolean")
                if column == "currency" and value not in ("EUR", "USD"):
                    reasons.append("currency")
                if column == "score" and not (value.isdigit() and 0 <= int(value) <= 10):
                    reasons.append("score out of range")
                domain = DOMAINS.get((obj, column)) or DOMAINS.get(column)
                if domain is not None and value.strip().lower() not in domain:
                    reasons.append(f"{column} out of domain")
            if reasons:
                problems.extend((obj, key, reason) for reason in reasons)
            else:
                keys[obj].add(key)
    # References resolve to good rows only; breakage cascades once (enough for this world's shape).
    for (obj, column), target in REFERENCES.items():
        key_column = CONTRACT[obj]["required"][0]
        for row in tables[obj]:
            if row[column] and row[column] not in keys[target]:
                problems.append((obj, row[key_column], f"{column} -> {target} unresolved"))
    return problems


@pytest.fixture(scope="module")
def small_world() -> World:
    return generate_world(load_demo_config(size="small"))


@pytest.fixture(scope="module")
def day_one_folder(small_world: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datetime]:
    folder = tmp_path_factory.mktemp("sor_day_one")
    as_of = small_world.config.start_at + timedelta(hours=9)
    write_sor(small_world, folder, as_of)
    return folder, as_of


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    config = load_demo_config(size="small")
    as_of = config.start_at + timedelta(hours=9)
    outputs = []
    for run in ("a", "b"):
        world = generate_world(load_demo_config(size="small"))
        write_sor(world, tmp_path / run / "day1", as_of, broken_rows=4)
        fact = ActionFact(
            "act-1", "dormant_customer", "account", "A00001", "C00001", "A00001", "delivered", as_of
        )
        for offset in range(3):
            advance_day(world, config.start + timedelta(days=offset), [fact] if offset == 0 else [])
        write_sor(world, tmp_path / run / "day4", as_of + timedelta(days=3))
        outputs.append(
            {p.relative_to(tmp_path / run): p.read_bytes() for p in (tmp_path / run).rglob("*.csv")}
        )
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 16

    other = load_demo_config(size="small")
    other.seed += 1
    write_sor(generate_world(other), tmp_path / "other", as_of)
    assert (tmp_path / "other" / "contacts.csv").read_bytes() != outputs[0][Path("day1/contacts.csv")]


def test_folder_follows_the_contract(day_one_folder: tuple[Path, datetime]) -> None:
    folder, as_of = day_one_folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{obj}.csv" for obj in CONTRACT)
    for obj, spec in CONTRACT.items():
        assert set(_header(folder, obj)) == set(spec["required"]) | set(spec["optional"]), obj
    assert _violations(folder, as_of) == []

    tables = _read(folder)
    assert 30 <= len(tables["accounts"]) <= 60
    assert 90 <= len(tables["contacts"]) <= 160
    for obj in CONTRACT:
        assert tables[obj], f"{obj} is empty"
    contacts = tables["contacts"]
    dnc_share = sum(row["do_not_contact"] == "true" for row in contacts) / len(contacts)
    assert dnc_share < 0.15
    assert {row["currency"] for row in tables["invoices"]} <= {"EUR", "USD"}
    bodies = " ".join(row["body"] for row in tables["tickets"])
    assert "<b>" in bodies and "cancel" in bodies and "refund" in bodies
    assert all(row["owner_email"].endswith("@demo-company.example") for row in tables["accounts"])


def test_default_size_is_the_promised_company() -> None:
    config = load_demo_config()
    assert (config.accounts, config.contacts, config.days, config.observe_days, config.history_days) == (
        600,
        3000,
        12,
        14,
        200,
    )
    assert len(config.owners) == 8 and config.manager["email"].endswith("@demo-company.example")
    effects = config.effects
    assert set(effects) == set(RULE_IDS)
    assert effects["nps_detractor"].baseline == effects["nps_detractor"].treated
    for rule_id in ("post_quote_followup", "overdue_invoice", "important_inquiry", "contract_renewal"):
        assert effects[rule_id].treated > effects[rule_id].baseline
    # the planted harmful rule: the reminder lowers the share of invoices paid by their due date
    assert effects["invoice_due_reminder"].treated < effects["invoice_due_reminder"].baseline


def test_sizes_may_set_their_own_days(tmp_path: Path) -> None:
    coverage = load_demo_config(size="coverage")
    assert (coverage.days, coverage.observe_days) == (4, 14)
    assert coverage.day_one_minimum > load_demo_config().day_one_minimum
    # the observation period outlasts every planted outcome window, so every window closes before the final pass
    assert coverage.observe_days >= max(effect.window_days for effect in coverage.effects.values())
    broken = tmp_path / "demo.yml"
    text = DEFAULT_CONFIG_PATH.read_text(encoding="utf-8")
    broken.write_text(
        text.replace("day_one_minimum: 3}", "day_one_minimum: 3, weeks: 2}", 1), encoding="utf-8"
    )
    with pytest.raises(ValueError, match="unknown key.*weeks"):
        load_demo_config(broken, size="small")


def test_every_rule_has_candidates_on_day_one(day_one_folder: tuple[Path, datetime]) -> None:
    folder, as_of = day_one_folder
    read = {obj: pl.read_csv(folder / f"{obj}.csv", infer_schema=False) for obj in CONTRACT}
    ts = pl.col  # readability in the expressions below

    def parse(frame: pl.DataFrame, *columns: str) -> pl.DataFrame:
        return frame.with_columns(ts(c).str.strptime(pl.Datetime, "%Y-%m-%d %H:%M:%S") for c in columns)

    deals = parse(read["deals"], "quote_sent_at")
    activities = parse(read["activities"], "occurred_at")
    touches = activities.filter(ts("kind").is_in(["email_out", "email_in", "call", "meeting"]))
    quoted = deals.filter((ts("stage") == "quote_sent") & (ts("quote_sent_at") <= as_of - timedelta(days=7)))
    by_deal = quoted.join(touches.select("deal_id", "occurred_at"), on="deal_id", how="left")
    by_contact = quoted.join(touches.select("contact_id", "occurred_at"), on="contact_id", how="left")
    touched = (
        pl.concat([by_deal.select("deal_id", "quote_sent_at", "occurred_at"),
                   by_contact.select("deal_id", "quote_sent_at", "occurred_at")])
        .filter(ts("occurred_at") > ts("quote_sent_at"))
        .get_column("deal_id")
    )  # fmt: skip
    followups = quoted.filter(~ts("deal_id").is_in(touched.implode()))

    invoices = parse(read["invoices"], "due_at")
    overdue = invoices.filter((ts("status") == "open") & (ts("due_at") <= as_of - timedelta(days=30)))
    due_soon = invoices.filter(
        (ts("status") == "open") & (ts("due_at") > as_of) & (ts("due_at") <= as_of + timedelta(days=14))
    )

    nps = parse(read["nps_responses"], "responded_at").with_columns(ts("score").cast(pl.Int64))
    detractors = nps.filter((ts("score") < 7) & (ts("responded_at") >= as_of - timedelta(days=2)))

    tickets = read["tickets"].join(read["accounts"].select("account_id", "tier"), on="account_id")
    inquiries = tickets.filter(
        ts("status").is_in(["open", "pending"])
        & (ts("priority").is_in(["urgent", "high"]) | (ts("tier") == "enterprise"))
    )

    contracts = parse(read["contracts"], "end_at")
    renewals = contracts.filter(
        (ts("status") == "active")
        & (ts("auto_renew") == "false")
        & (ts("end_at") <= as_of + timedelta(days=60))
    )

    recent = activities.filter(ts("occurred_at") > as_of - timedelta(days=90)).join(
        read["contacts"].select("contact_id", "account_id"), on="contact_id"
    )
    open_deals = read["deals"].filter(~ts("stage").is_in(["won", "lost"]))
    dormant = read["accounts"].filter(
        ~ts("account_id").is_in(recent.get_column("account_id").implode())
        & ~ts("account_id").is_in(open_deals.get_column("account_id").implode())
    )

    counts = {
        "post_quote_followup": followups.height,
        "overdue_invoice": overdue.height,
        "nps_detractor": detractors.height,
        "important_inquiry": inquiries.height,
        "contract_renewal": renewals.height,
        "dormant_customer": dormant.height,
        "invoice_due_reminder": due_soon.height,
    }
    assert all(count >= 1 for count in counts.values()), counts


def _fact_for(
    world: World, rule_id: str, record_id: str, status: str, at: datetime, action_id: str
) -> ActionFact:
    if rule_id == "post_quote_followup":
        record_type, contact_id = "deal", world.deals[record_id]["contact_id"]
    elif rule_id in ("overdue_invoice", "invoice_due_reminder"):
        record_type, contact_id = "invoice", world.invoices[record_id]["contact_id"]
    elif rule_id == "nps_detractor":
        record_type = "nps_response"
        contact_id = next(r["contact_id"] for r in world.nps_responses if r["response_id"] == record_id)
    elif rule_id == "important_inquiry":
        record_type, contact_id = "ticket", world.tickets[record_id]["contact_id"]
    elif rule_id == "contract_renewal":
        record_type = "contract"
        contact_id = world.contacts_by_account[world.contracts[record_id]["account_id"]][0]
    else:
        record_type, contact_id = "account", world.contacts_by_account[record_id][0]
    return ActionFact(action_id, rule_id, record_type, record_id, contact_id, None, status, at)


def test_planted_draws_match_the_configured_rates() -> None:
    world = generate_world(load_demo_config(size="small"))
    config = world.config
    at = config.start_at + timedelta(hours=9)
    pools = {
        "post_quote_followup": list(world.deals),
        "overdue_invoice": list(world.invoices),
        "nps_detractor": [r["response_id"] for r in world.nps_responses],
        "important_inquiry": list(world.tickets),
        "contract_renewal": list(world.contracts),
        "dormant_customer": list(world.accounts),
        "invoice_due_reminder": list(world.invoices),
    }
    facts = []
    for rule_id, pool in pools.items():
        for index in range(600):
            status = ("delivered", "held_out", "not_acted")[index % 3] if index % 2 else "delivered"
            facts.append(_fact_for(world, rule_id, pool[index % len(pool)], status, at, f"{rule_id}-{index}"))
    advance_day(world, config.start, facts)
    for rule_id, effect in config.effects.items():
        for treated in (True, False):
            drawn = [
                e["happens"]
                for e in world.experiments.values()
                if e["rule_id"] == rule_id and (e["status"] == "delivered") == treated
            ]
            expected = effect.treated if treated else effect.baseline
            assert len(drawn) >= 200
            assert abs(sum(drawn) / len(drawn) - expected) < 0.09, (rule_id, treated, sum(drawn) / len(drawn))
            windows = [
                (e["scheduled_day"] - e["at"].date()).days
                for e in world.experiments.values()
                if e["rule_id"] == rule_id and e["happens"]
            ]
            assert min(windows) >= 1 and max(windows) <= effect.window_days - 1 or effect.window_days == 1


def test_the_loop_sees_the_planted_effects_in_the_records(tmp_path: Path) -> None:
    """Run a loop (half the candidates acted, half held out) and measure outcomes from the SoR."""
    config = load_demo_config(size="small")
    # A few times the small world, so every rule gets a couple of dozen facts and the run stays quick.
    config.accounts, config.contacts = 160, 480
    world = generate_world(config)
    config = world.config
    seen: set[tuple[str, str]] = set()
    facts_all: list[ActionFact] = []
    days = 21
    for offset in range(days):
        day = config.start + timedelta(days=offset)
        as_of = datetime.combine(day, datetime.min.time()) + timedelta(hours=9)
        facts = []
        for rule_id, record_ids in day_one_candidates(world, as_of).items():
            for record_id in record_ids:
                if (rule_id, record_id) in seen:
                    continue
                seen.add((rule_id, record_id))
                status = "held_out" if len(seen) % 2 else "delivered"
                facts.append(_fact_for(world, rule_id, record_id, status, as_of, f"{rule_id}:{record_id}"))
        facts_all.extend(facts)
        report = advance_day(world, day, facts)
        assert report.new_records["activities"] > 0
    for offset in range(days, days + 15):
        advance_day(world, config.start + timedelta(days=offset), [])
    final_as_of = datetime.combine(config.start + timedelta(days=days + 15), datetime.min.time())
    write_sor(world, tmp_path, final_as_of)
    tables = _read(tmp_path)
    assert _violations(tmp_path, final_as_of) == []

    deals = {row["deal_id"]: row for row in tables["deals"]}
    invoices = {row["invoice_id"]: row for row in tables["invoices"]}
    tickets = {row["ticket_id"]: row for row in tables["tickets"]}
    inbound: dict[str, list[datetime]] = defaultdict(list)
    touches_by_deal: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    for row in tables["activities"]:
        if row["kind"] in INBOUND:
            inbound[row["contact_id"]].append(_ts(row["occurred_at"]))
        if row["deal_id"]:
            touches_by_deal[row["deal_id"]].append((row["kind"], _ts(row["occurred_at"])))

    agree = disagree = 0
    by_rule: dict[str, int] = defaultdict(int)
    for fact in facts_all:
        experiment = world.experiments[fact.action_id]
        end = fact.at + timedelta(days=experiment["window_days"])
        if fact.rule_id == "post_quote_followup":
            row = deals[fact.record_id]
            changed = _ts(row["stage_changed_at"])
            happened = row["stage"] in ("negotiation", "won") and fact.at < changed <= end
            if fact.status == "delivered":
                emails = [at for kind, at in touches_by_deal[fact.record_id] if kind == "email_out"]
                assert fact.at in emails, "a delivered follow-up shows as an email_out on the deal"
        elif fact.rule_id in ("overdue_invoice", "invoice_due_reminder"):
            paid = invoices[fact.record_id]["paid_at"]
            happened = bool(paid) and fact.at < _ts(paid) <= end
        elif fact.rule_id == "important_inquiry":
            row = tickets[fact.record_id]
            happened = row["status"] == "closed" and fact.at < _ts(row["updated_at"]) <= end
        else:
            happened = any(fact.at < at <= end for at in inbound[fact.contact_id])
        by_rule[fact.rule_id] += 1
        if happened == experiment["happens"]:
            agree += 1
        else:
            disagree += 1
            # Only inbound outcomes may pick up another rule's planted activity on a shared contact.
            assert fact.rule_id in ("nps_detractor", "contract_renewal", "dormant_customer"), fact
            assert happened and not experiment["happens"], fact
    assert set(by_rule) == set(config.effects) and min(by_rule.values()) >= 5, by_rule
    assert disagree <= 0.05 * (agree + disagree), (agree, disagree)


def test_broken_rows_are_added_and_good_rows_untouched(small_world: World, tmp_path: Path) -> None:
    as_of = small_world.config.start_at + timedelta(hours=9)
    clean = write_sor(small_world, tmp_path / "clean", as_of)
    dirty = write_sor(small_world, tmp_path / "dirty", as_of, broken_rows=12)
    assert sum(dirty.values()) - sum(clean.values()) == 12
    for obj in CONTRACT:
        clean_bytes = (tmp_path / "clean" / f"{obj}.csv").read_bytes()
        assert (tmp_path / "dirty" / f"{obj}.csv").read_bytes().startswith(clean_bytes), obj
    assert _violations(tmp_path / "clean", as_of) == []
    problems = _violations(tmp_path / "dirty", as_of)
    broken_keys = {(obj, key) for obj, key, _ in problems}
    assert len(broken_keys) == 12, problems
    good_keys = {
        (obj, row[CONTRACT[obj]["required"][0]])
        for obj, rows in _read(tmp_path / "clean").items()
        for row in rows
    }
    assert not broken_keys & good_keys
    reasons = " ".join(reason for _, _, reason in problems)
    for word in ("invalid email", "not a non-negative decimal", "unresolved", "out of domain", "timezone"):
        assert word in reasons
    again = write_sor(small_world, tmp_path / "again", as_of, broken_rows=12)
    assert again == dirty
    assert (tmp_path / "again" / "invoices.csv").read_bytes() == (
        tmp_path / "dirty" / "invoices.csv"
    ).read_bytes()
    assert not list((tmp_path / "dirty").glob(".*.tmp"))


def test_delivered_actions_leave_traces_and_held_out_do_not() -> None:
    world = generate_world(load_demo_config(size="small"))
    start = world.config.start
    at = world.config.start_at + timedelta(hours=9)
    dormant = day_one_candidates(world, at)["dormant_customer"]
    assert len(dormant) >= 2
    delivered = _fact_for(world, "dormant_customer", dormant[0], "delivered", at, "trace-1")
    held = _fact_for(world, "dormant_customer", dormant[1], "held_out", at, "trace-2")
    before = len(world.activities)
    report = advance_day(world, start, [delivered, held, delivered])
    assert report.facts == {"delivered": 2, "held_out": 1}
    traces = [a for a in world.activities[before:] if a["occurred_at"] == at]
    assert [(a["contact_id"], a["kind"]) for a in traces] == [(delivered.contact_id, "email_out")]
    with pytest.raises(ValueError):
        advance_day(world, start, [])


def test_approver_decisions_follow_the_personas() -> None:
    world = generate_world(load_demo_config(size="small"))
    day = date(2026, 9, 1)
    rows = [
        {
            "action_id": f"a{index}",
            "rule_id": "dormant_customer",
            "owner_email": "anna.keller@demo-company.example",
        }
        for index in range(2000)
    ]
    first = approver_decisions(world, rows, day)
    assert [r["action_id"] for r in first] == [r["action_id"] for r in rows]
    assert all(r["approver_email"] == "anna.keller@demo-company.example" for r in first)
    later = approver_decisions(world, rows, day + timedelta(days=5))
    assert later == approver_decisions(world, rows, day + timedelta(days=5))
    shares = {d: sum(r["decision"] == d for r in later) / len(later) for d in ("approve", "reject", "")}
    persona = world.config.approvers["rules"]["dormant_customer"]
    assert abs(shares["approve"] - persona["approve"]) < 0.05
    assert abs(shares["reject"] - persona["reject"]) < 0.05
    # Some owners take a day or two: fewer decisions on the first day, none lost later.
    assert sum(bool(r["decision"]) for r in first) < sum(bool(r["decision"]) for r in later)
    assert all(not a["decision"] or a["decision"] == b["decision"] for a, b in zip(first, later, strict=True))
    assert all(r["comment"] == "" for r in later if not r["decision"])


# ----------------------------------------------------------------------------------------------- level 5


def test_the_learning_effects_and_the_size_rates_load_from_demo_yml(tmp_path: Path) -> None:
    config = load_demo_config()
    effect = config.learning["ticket_reply_nudge"]
    assert (effect.outcome, effect.window_days, effect.baseline) == ("ticket_closed", 2, 0.2)
    # the planted best arm differs per segment, in channel and in time of day
    assert effect.best_arm("smb") == "line@afternoon" and effect.best_arm("mid") == "email@morning"
    assert effect.probability("smb", "line", "afternoon") > effect.uniform_value("smb") + 0.2
    assert (
        effect.daypart(8) == "morning" and effect.daypart(12) == "other" and effect.daypart(16) == "afternoon"
    )
    assert config.rates["waiting_tickets"] > 0
    # the coverage benchmark's world leaves the flow out; a size may only set rates demo.yml knows
    assert load_demo_config(size="coverage").rates["waiting_tickets"] == 0
    assert load_demo_config(size="coverage").rates["tickets"] == config.rates["tickets"]
    text = DEFAULT_CONFIG_PATH.read_text(encoding="utf-8")
    bad = tmp_path / "demo.yml"
    bad.write_text(
        text.replace("rates: {waiting_tickets: 0}}", "rates: {waiting_tickts: 0}}"), encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"size 'coverage' sets unknown rate\(s\) \['waiting_tickts'\]"):
        load_demo_config(bad, size="coverage")
    bad.write_text(text.replace("  treated:\n      smb:\n        email: {morning: 0.25, afternoon: 0.20, other: 0.15}",
                                "  treated:\n      smb:\n        email: {morning: 0.25, afternoon: 0.20}"),
                   encoding="utf-8")  # fmt: skip
    with pytest.raises(ValueError, match=r"treated.smb.email lacks daypart\(s\) \['other'\]"):
        load_demo_config(bad)


def test_the_waiting_ticket_flow_has_its_own_stream_and_leaves_the_rest_of_the_world_alone() -> None:
    busy = load_demo_config(size="small")
    busy.rates["waiting_tickets"] = 1.0  # every eligible customer writes one a day: plenty to look at
    with_flow = generate_world(busy)
    config = load_demo_config(size="small")
    config.rates["waiting_tickets"] = 0.0
    without = generate_world(config)
    waiting = {k: t for k, t in with_flow.tickets.items() if k.startswith("TW")}
    assert len(waiting) >= 20 and not any(k.startswith("TW") for k in without.tickets)
    # every other record is exactly what it was without the flow
    assert {k: t for k, t in with_flow.tickets.items() if not k.startswith("TW")} == without.tickets
    assert with_flow.deals == without.deals and with_flow.invoices == without.invoices
    assert with_flow.nps_responses == without.nps_responses
    start = config.start_at
    for ticket in waiting.values():
        account = with_flow.accounts[ticket["account_id"]]
        assert account["tier"] in ("smb", "mid") and ticket["priority"] in ("low", "normal")
        assert ticket["opened_at"] >= start - timedelta(
            days=busy.learning["ticket_reply_nudge"].flow_starts_days
        )
        assert ticket["opened_at"] < ticket["pending_at"] < ticket["closed_at"]


def test_a_nudge_converts_by_segment_channel_and_the_local_hour_it_arrived() -> None:
    config = load_demo_config(size="small")
    config.rates["waiting_tickets"] = 1.0
    world = generate_world(config)
    effect = world.config.learning["ticket_reply_nudge"]
    tickets = [t for t in world.tickets.values() if t["ticket_id"].startswith("TW")]
    facts, expected = [], {}
    for n, ticket in enumerate(tickets * 30):
        # arrival hours spread over the day: the part of the day is read in the contact's own zone
        at = world.config.start_at + timedelta(hours=(7 + 5 * n) % 24)
        zone = zoneinfo.ZoneInfo(world.contacts[ticket["contact_id"]]["timezone"])
        hour = at.replace(tzinfo=zoneinfo.ZoneInfo("UTC")).astimezone(zone).hour
        part = "morning" if 8 <= hour < 12 else "afternoon" if 13 <= hour < 17 else "other"
        channel = "line" if n % 3 else "email"
        status = "held_out" if n % 5 == 0 else "delivered"
        action_id = f"nudge-{n}"
        facts.append(
            ActionFact(action_id, "ticket_reply_nudge", "ticket", ticket["ticket_id"], ticket["contact_id"],
                       ticket["account_id"], status, at, channel if status == "delivered" else None)
        )  # fmt: skip
        tier = world.accounts[ticket["account_id"]]["tier"]
        delivered = status == "delivered"
        expected[action_id] = (
            effect.probability(tier, channel, part) if delivered else effect.baseline,
            f"{channel}@{part}" if delivered else None,
        )
    advance_day(world, world.config.start, facts)
    by_probability: dict[float, list[bool]] = defaultdict(list)
    for action_id, (probability, arm) in expected.items():
        experiment = world.experiments[action_id]
        assert experiment["arm"] == arm
        assert experiment["window_days"] == 2 and experiment["outcome"] == "ticket_closed"
        by_probability[probability].append(experiment["happens"])
    # each planted probability comes true at its own rate (several distinct ones, each well populated)
    populated = {p: drawn for p, drawn in by_probability.items() if len(drawn) >= 60}
    assert len(populated) >= 4, {p: len(d) for p, d in by_probability.items()}
    for probability, drawn in populated.items():
        assert abs(sum(drawn) / len(drawn) - probability) < 0.15, (probability, sum(drawn) / len(drawn))
