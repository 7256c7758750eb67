"""The demo world: a seeded B2B company that lives day by day and answers delivered actions with
planted effects, written out as a canonical SoR contract folder.

Everything is deterministic for a given seed: the world's own `random.Random` drives the natural
process, and every draw that concerns one action (does the outcome happen, on which day, what does
the approver say) is derived from a hash of the seed and the action id, so it does not depend on the
order in which the loop hands facts over. Nothing reads the clock: days and as-of times are parameters.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

DEFAULT_CONFIG_PATH = Path(__file__).with_name("demo.yml")

OBJECTS: tuple[str, ...] = (
    "accounts",
    "contacts",
    "deals",
    "activities",
    "invoices",
    "tickets",
    "nps_responses",
    "contracts",
)

COLUMNS: dict[str, tuple[str, ...]] = {
    "accounts": ("account_id", "name", "industry", "tier", "owner_email", "created_at", "updated_at"),
    "contacts": (
        "contact_id",
        "account_id",
        "first_name",
        "last_name",
        "email",
        "phone",
        "timezone",
        "do_not_contact",
        "created_at",
        "updated_at",
    ),
    "deals": (
        "deal_id",
        "account_id",
        "contact_id",
        "owner_email",
        "name",
        "stage",
        "amount",
        "currency",
        "quote_sent_at",
        "stage_changed_at",
        "closed_at",
        "created_at",
        "updated_at",
    ),
    "activities": ("activity_id", "contact_id", "deal_id", "owner_email", "kind", "occurred_at", "subject"),
    "invoices": (
        "invoice_id",
        "account_id",
        "contact_id",
        "amount",
        "currency",
        "issued_at",
        "due_at",
        "paid_at",
        "status",
        "updated_at",
    ),
    "tickets": (
        "ticket_id",
        "account_id",
        "contact_id",
        "priority",
        "status",
        "subject",
        "body",
        "opened_at",
        "updated_at",
    ),
    "nps_responses": ("response_id", "contact_id", "score", "comment", "responded_at"),
    "contracts": ("contract_id", "account_id", "start_at", "end_at", "auto_renew", "value", "status"),
}

RULE_IDS: tuple[str, ...] = (
    "post_quote_followup",
    "overdue_invoice",
    "nps_detractor",
    "important_inquiry",
    "contract_renewal",
    "dormant_customer",
    "invoice_due_reminder",
)
# Level-5 rules the world plants channel and timing effects for (demo.yml `learning`); measured by the learning
# proof (actionlayer/demo/learning_proof.py), not by the holdout coverage of RULE_IDS.
LEARNING_RULE_IDS: tuple[str, ...] = ("ticket_reply_nudge",)
# The rules' thresholds as dbt_project.yml sets them (the simulator's own view of who is a candidate).
REMINDER_DAYS_BEFORE_DUE = 14

TS_FORMAT = "%Y-%m-%d %H:%M:%S"
DAY = timedelta(days=1)
TOUCH_KINDS = ("email_out", "email_in", "call", "meeting")
INBOUND_KINDS = ("email_in", "call", "meeting")
CLOSED_STAGES = ("won", "lost")
FACT_STATUSES = ("delivered", "held_out", "not_acted")
OTHER_DAYPART = "other"
# Far enough in the future to mean "never" without special-casing None in comparisons.
NEVER = datetime(2999, 1, 1)

# ---------------------------------------------------------------------------------------------------
# Vocabulary: enough variety that the demo data reads like a real CRM export.

# fmt: off
FIRST_NAMES = (
    "Anna", "Lukas", "Sofia", "Jonas", "Emma", "Noah", "Mia", "Elias", "Lea", "Paul", "Hannah", "Felix",
    "Olivia", "Liam", "Chloe", "Lucas", "Amelia", "James", "Isabella", "Oliver", "Charlotte", "Mateo",
    "Camille", "Hugo", "Ines", "Marco", "Giulia", "Pedro", "Lucia", "Javier", "Aiko", "Kenji", "Priya",
    "Arjun", "Fatima", "Omar", "Zoë", "José", "Björn", "Agnieszka", "Siobhan", "Mehmet", "Chiara", "Nora",
)
LAST_NAMES = (
    "Müller", "Schmidt", "Fischer", "Weber", "Martin", "Bernard", "Dubois", "Rossi", "Russo", "García",
    "Fernández", "López", "Smith", "Johnson", "Brown", "Taylor", "Wilson", "Davies", "Andersson", "Nilsson",
    "Kowalski", "Nowak", "Novak", "Horvat", "Jansen", "de Vries", "Bakker", "O'Brien", "Murphy", "Tanaka",
    "Sato", "Sharma", "Patel", "Khan", "Yilmaz", "Costa", "Silva", "Nguyen", "Kim", "Lindqvist",
)
COMPANY_PREFIXES = (
    "Northwind", "Bluefin", "Alder", "Brightline", "Cobalt", "Driftwood", "Evergreen", "Falcon", "Granite",
    "Harbor", "Ironwood", "Juniper", "Keystone", "Lumen", "Meridian", "Nimbus", "Oakridge", "Pioneer",
    "Quarry", "Redwood", "Summit", "Tidewater", "Upland", "Vantage", "Willow", "Zephyr", "Aurora", "Beacon",
    "Crescent", "Delta", "Ember", "Fjord", "Helix", "Lakeside", "Orion", "Polaris", "Sierra", "Terra",
)
COMPANY_SUFFIXES = (
    ("Logistics", "Logistics"), ("Analytics", "Software"), ("Foods", "Food & Beverage"),
    ("Health", "Healthcare"), ("Manufacturing", "Manufacturing"), ("Energy", "Energy"),
    ("Retail", "Retail"), ("Labs", "Biotech"), ("Finance", "Financial Services"), ("Media", "Media"),
    ("Robotics", "Industrial Automation"), ("Travel", "Travel"), ("Systems", "Software"),
    ("Partners", "Consulting"), ("Construction", "Construction"), ("Insurance", "Insurance"),
)
LEGAL_FORMS = ("", "", "", " GmbH", " Ltd", " Inc.", " AG", " B.V.", " SAS", " AB", " S.p.A.")
EUR_ZONES = (
    ("Europe/Berlin", "+49 30"), ("Europe/Paris", "+33 1"), ("Europe/Madrid", "+34 91"),
    ("Europe/Amsterdam", "+31 20"), ("Europe/Rome", "+39 06"), ("Europe/Vienna", "+43 1"),
    ("Europe/Stockholm", "+46 8"), ("Europe/Warsaw", "+48 22"), ("Europe/Dublin", "+353 1"),
)
USD_ZONES = (
    ("America/New_York", "+1 212"), ("America/Chicago", "+1 312"), ("America/Los_Angeles", "+1 415"),
    ("America/Denver", "+1 303"), ("America/Toronto", "+1 416"), ("America/Sao_Paulo", "+55 11"),
    ("Asia/Singapore", "+65"), ("Asia/Tokyo", "+81 3"), ("Australia/Sydney", "+61 2"),
    ("Europe/London", "+44 20"), ("Asia/Kolkata", "+91 22"),
)
PRODUCTS = (
    "Analytics Suite", "Platform License", "Onboarding Package", "Data Connector", "Support Plus",
    "Team Seats", "Enterprise Upgrade", "Training Days",
)
TICKET_TEXTS = (
    ("Cannot log in", "Hi, since this morning none of our users can log in (error 403). Please help."),
    ("Request to cancel our subscription",
     "We would like to <b>cancel</b> our subscription at the end of the term. Please confirm in writing."),
    ("Refund for duplicate payment",
     "We were charged twice this month. Please refund the duplicate payment to our account."),
    ("Export is very slow", "The CSV export takes more than 10 minutes. Is there a way to speed it up?"),
    ("Question about pricing", "Could you explain the difference between the Team and Business plans?"),
    ("Integration error with our CRM",
     "The sync fails with a <i>timeout</i> since your last update. Log excerpt: <code>ERR 504</code>."),
    ("Add five new users", "Please add five seats to our plan and send the updated quote."),
    ("Change of invoice address", "Our billing address changed, see the new address below. Thanks!"),
    ("Feature request: dark mode", "Our team works late; a dark mode would be much appreciated."),
    ("URGENT: dashboard shows no data",
     "Our dashboard shows <b>no data</b> since 02:00 UTC. This blocks the whole team. "
     "If this is not fixed we will ask for a refund."),
    ("Thinking about cancelling", "Honestly we are not using the product much. Thinking about cancelling."),
    ("API rate limit", "We hit the API rate limit (429) during the nightly import. Can it be raised?"),
)
PROMOTER_COMMENTS = ("Great support team!", "Saves us hours every week.", "Easy to use.", None, None)
PASSIVE_COMMENTS = ("Good, but the reports could be faster.", "Solid product.", None, None)
DETRACTOR_COMMENTS = (
    "Too expensive for what we get.", "Support takes days to answer.",
    "The last update broke our integration.", "We are considering other vendors.", None,
)
# fmt: on
INDUSTRY_NULL_SHARE = 0.08
PHONE_NULL_SHARE = 0.2


# ---------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Effect:
    """A planted effect: the outcome happens within `window_days` with these probabilities."""

    outcome: str
    window_days: int
    baseline: float
    treated: float


@dataclass(frozen=True)
class LearningEffect:
    """A level-5 rule's planted effects: after a delivered action the outcome happens within `window_days` with
    probability treated[segment][channel][daypart], where the daypart is the local hour the message arrived in
    (`dayparts`: name → [start, end) hours; any other hour is `other`); otherwise with `baseline`."""

    outcome: str
    window_days: int
    baseline: float
    dayparts: dict[str, tuple[int, int]]
    treated: dict[str, dict[str, dict[str, float]]]
    flow_starts_days: int = 14
    reply_days: tuple[float, float] = (0.3, 12.0)

    def __post_init__(self) -> None:
        for segment, channels in self.treated.items():
            for channel, parts in channels.items():
                missing = sorted({*self.dayparts, OTHER_DAYPART} - set(parts))
                if missing:
                    raise ValueError(
                        f"demo.yml learning: treated.{segment}.{channel} lacks daypart(s) {missing}"
                    )

    def daypart(self, local_hour: int) -> str:
        for name, (start, end) in self.dayparts.items():
            if start <= local_hour < end:
                return name
        return OTHER_DAYPART

    def probability(self, segment: str, channel: str | None, daypart: str) -> float:
        """The planted outcome probability of a delivered action (baseline for an unknown segment/channel)."""
        return self.treated.get(segment, {}).get(channel or "", {}).get(daypart, self.baseline)

    def best_arm(self, segment: str) -> str:
        """The planted best `channel@daypart` of a segment (dayparts only; `other` is no send window)."""
        channels = self.treated[segment]
        return max(
            (f"{channel}@{part}" for channel in channels for part in self.dayparts),
            key=lambda arm: channels[arm.split("@")[0]][arm.split("@")[1]],
        )

    def uniform_value(self, segment: str) -> float:
        """The planted conversion of the uniform policy over channel × daypart in a segment."""
        values = [parts[part] for parts in self.treated[segment].values() for part in self.dayparts]
        return sum(values) / len(values)


@dataclass
class DemoConfig:
    """The demo world's settings (see demo.yml); fields may be overridden before `generate_world`."""

    seed: int
    size: str
    start: date
    history_days: int
    days: int
    company_domain: str
    owners: tuple[dict[str, str], ...]
    manager: dict[str, str]
    accounts: int
    contacts: int
    broken_rows: int
    day_one_minimum: int
    account_mix: dict[str, float]
    tiers: dict[str, float]
    currencies: dict[str, float]
    do_not_contact_share: float
    contracts_per_customer: dict[int, float]
    contract_auto_renew_share: float
    contract_natural_renewal_share: float
    rates: dict[str, float]
    process: dict[str, Any]
    effects: dict[str, Effect]
    approvers: dict[str, Any]
    # days the company keeps living after the last acting pass, so outcome windows can close
    observe_days: int = 0
    # per-rule exceptions to day_one_minimum
    day_one_minimum_per_rule: dict[str, int] = field(default_factory=dict)
    # level-5 rules' planted channel and timing effects (demo.yml `learning`)
    learning: dict[str, LearningEffect] = field(default_factory=dict)

    @property
    def start_at(self) -> datetime:
        return datetime.combine(self.start, time())


SIZE_KEYS = frozenset(
    {
        "accounts",
        "contacts",
        "broken_rows",
        "day_one_minimum",
        "day_one_minimum_per_rule",
        "days",
        "observe_days",
        "rates",
    }
)


def load_demo_config(path: Path | None = None, size: str = "default") -> DemoConfig:
    """Read demo.yml (or `path`) and pick a size preset (`small`, `default`, or a benchmark size).

    A preset sets accounts, contacts, broken_rows and day_one_minimum (optionally per rule in
    day_one_minimum_per_rule), and may override days and observe_days.
    """
    source = Path(path) if path else DEFAULT_CONFIG_PATH
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    sizes = raw["sizes"]
    if size not in sizes:
        raise ValueError(f"{source}: unknown size {size!r}; presets are {sorted(sizes)}")
    preset = sizes[size]
    unknown = sorted(set(preset) - SIZE_KEYS)
    if unknown:
        raise ValueError(
            f"{source}: size {size!r} has unknown key(s) {unknown}; allowed are {sorted(SIZE_KEYS)}"
        )
    start = raw["start"]
    if isinstance(start, str):
        start = date.fromisoformat(start)
    effects = {rule_id: Effect(**spec) for rule_id, spec in raw["effects"].items()}
    learning_effects = {
        rule_id: LearningEffect(
            outcome=spec["outcome"],
            window_days=int(spec["window_days"]),
            baseline=float(spec["baseline"]),
            dayparts={str(k): (int(v[0]), int(v[1])) for k, v in spec["dayparts"].items()},
            treated={
                str(segment): {
                    str(ch): {str(k): float(v) for k, v in parts.items()} for ch, parts in chans.items()
                }
                for segment, chans in spec["treated"].items()
            },
            flow_starts_days=int(spec.get("flow_starts_days", 14)),
            reply_days=(float(spec["reply_days"][0]), float(spec["reply_days"][1])),
        )
        for rule_id, spec in (raw.get("learning") or {}).items()
    }
    unknown_learners = sorted(set(learning_effects) - set(LEARNING_RULE_IDS))
    if unknown_learners:
        raise ValueError(f"{source}: learning names rule(s) the world cannot simulate: {unknown_learners}")
    rates = {**raw["rates"], **(preset.get("rates") or {})}
    unknown_rates = sorted(set(preset.get("rates") or {}) - set(raw["rates"]))
    if unknown_rates:
        raise ValueError(f"{source}: size {size!r} sets unknown rate(s) {unknown_rates}")
    unknown_rules = sorted(set(preset.get("day_one_minimum_per_rule") or {}) - set(RULE_IDS))
    if unknown_rules:
        raise ValueError(
            f"{source}: size {size!r}: day_one_minimum_per_rule names unknown rule(s) {unknown_rules}"
        )
    return DemoConfig(
        seed=int(raw["seed"]),
        size=size,
        start=start,
        history_days=int(raw["history_days"]),
        # a size may shorten or lengthen the run (the coverage benchmark's sizes do)
        days=int(preset.get("days", raw["days"])),
        observe_days=int(preset.get("observe_days", raw.get("observe_days", 0))),
        company_domain=raw["company_domain"],
        owners=tuple(dict(owner) for owner in raw["owners"]),
        manager=dict(raw["manager"]),
        accounts=int(preset["accounts"]),
        contacts=int(preset["contacts"]),
        broken_rows=int(preset.get("broken_rows", 0)),
        day_one_minimum=int(preset.get("day_one_minimum", 0)),
        day_one_minimum_per_rule={
            str(rule_id): int(count)
            for rule_id, count in (preset.get("day_one_minimum_per_rule") or {}).items()
        },
        account_mix=dict(raw["account_mix"]),
        tiers=dict(raw["tiers"]),
        currencies=dict(raw["currencies"]),
        do_not_contact_share=float(raw["do_not_contact_share"]),
        contracts_per_customer={int(k): float(v) for k, v in raw["contracts_per_customer"].items()},
        contract_auto_renew_share=float(raw["contract_auto_renew_share"]),
        contract_natural_renewal_share=float(raw["contract_natural_renewal_share"]),
        rates={str(k): float(v) for k, v in rates.items()},
        process=dict(raw["process"]),
        effects=effects,
        approvers=dict(raw["approvers"]),
        learning=learning_effects,
    )


# ---------------------------------------------------------------------------------------------------
# The world


@dataclass(frozen=True)
class ActionFact:
    """An action that reached a final state: delivered, held out, or not acted on (rejected, expired...)."""

    action_id: str
    rule_id: str
    record_type: str
    record_id: str
    contact_id: str | None
    account_id: str | None
    status: str
    at: datetime
    # the channel it went out on (a level-5 rule's chosen arm); None when not delivered
    channel: str | None = None


@dataclass
class DayReport:
    """What happened in the company on one simulated day."""

    day: date
    new_records: dict[str, int] = field(default_factory=dict)
    deal_stage_changes: int = 0
    invoices_paid: int = 0
    tickets_closed: int = 0
    facts: dict[str, int] = field(default_factory=dict)
    outcomes_scheduled: dict[str, int] = field(default_factory=dict)
    outcomes_realised: dict[str, int] = field(default_factory=dict)
    outcomes_skipped: dict[str, int] = field(default_factory=dict)
    ignored_facts: int = 0


@dataclass
class World:
    """All records of the demo company, with the state the simulator needs to keep it consistent.

    Records keep their full timeline (a deal's stage history, an invoice's paid_at, a ticket's closed_at),
    some of it in the future: `write_sor` shows each record as it looks at the as-of time, and the planted
    effects rewrite the future part of a timeline.
    """

    config: DemoConfig
    rng: random.Random
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    deals: dict[str, dict[str, Any]] = field(default_factory=dict)
    activities: list[dict[str, Any]] = field(default_factory=list)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    nps_responses: list[dict[str, Any]] = field(default_factory=list)
    contracts: dict[str, dict[str, Any]] = field(default_factory=dict)
    today: date | None = None
    contacts_by_account: dict[str, list[str]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    # Planned events by day: ("activity", spec) or ("outcome", action_id).
    planned: dict[date, list[tuple[str, Any]]] = field(default_factory=dict)
    # Contact -> (from, until): a stalled quote; nobody touches this contact in that window.
    no_touch: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    # Contact -> until: natural inbound activity is held back so inbound outcomes stay planted.
    inbound_frozen_until: dict[str, datetime] = field(default_factory=dict)
    deal_of_contact: dict[str, str] = field(default_factory=dict)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    review_first_seen: dict[str, date] = field(default_factory=dict)
    used_emails: dict[str, int] = field(default_factory=dict)
    used_names: dict[str, int] = field(default_factory=dict)

    def next_id(self, prefix: str, width: int) -> str:
        self.counters[prefix] = self.counters.get(prefix, 0) + 1
        return f"{prefix}{self.counters[prefix]:0{width}d}"


# ---------------------------------------------------------------------------------------------------
# Small helpers


def _fmt(value: datetime | None) -> str:
    # isoformat is several times faster than strftime and gives the same text at seconds precision.
    return value.isoformat(sep=" ", timespec="seconds") if value is not None else ""


def _unit(seed: int, *parts: object) -> float:
    """A uniform number in [0, 1) that depends only on the seed and the parts (order-independent draws)."""
    text = "|".join([str(seed), *(str(part) for part in parts)])
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _pick_weighted(u: float, weights: dict[Any, float]) -> Any:
    total = sum(weights.values())
    acc = 0.0
    last = None
    for key, weight in weights.items():
        acc += weight / total
        last = key
        if u < acc:
            return key
    return last


def _ascii_slug(text: str, sep: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[^a-z0-9]+", sep, plain).strip(sep)


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method is fine for the small daily means used here; large means use a normal approximation.
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, mean**0.5)))
    limit = 2.718281828459045**-mean
    count, product = 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _at(day: date, rng: random.Random, start_hour: float = 7.0, end_hour: float = 19.0) -> datetime:
    seconds = int(rng.uniform(start_hour, end_hour) * 3600)
    return datetime.combine(day, time()) + timedelta(seconds=seconds)


def _days(rng: random.Random, low: float, high: float) -> timedelta:
    return timedelta(seconds=int(rng.uniform(low, high) * 86400))


def _stage_at(deal: dict[str, Any], moment: datetime) -> tuple[str | None, datetime | None]:
    stage, changed = None, None
    for at, name in deal["timeline"]:
        if at > moment:
            break
        stage, changed = name, at
    return stage, changed


# ---------------------------------------------------------------------------------------------------
# Record factories


def _new_account(world: World, created_at: datetime, kind: str) -> dict[str, Any]:
    rng, cfg = world.rng, world.config
    prefix = rng.choice(COMPANY_PREFIXES)
    suffix, industry = rng.choice(COMPANY_SUFFIXES)
    base = f"{prefix} {suffix}"
    seen = world.used_names.get(base, 0)
    world.used_names[base] = seen + 1
    # A second company with the same words gets a distinguishing region word, like real registries do.
    if seen:
        base = f"{base} {('North', 'South', 'East', 'West', 'Central', 'International')[seen % 6]}"
        if seen >= 6:
            base = f"{base} {seen // 6 + 1}"
    name = base + rng.choice(LEGAL_FORMS)
    currency = _pick_weighted(rng.random(), cfg.currencies)
    zone, dial = rng.choice(EUR_ZONES if currency == "EUR" else USD_ZONES)
    account = {
        "account_id": world.next_id("A", 5),
        "name": name,
        "industry": None if rng.random() < INDUSTRY_NULL_SHARE else industry,
        "tier": _pick_weighted(rng.random(), cfg.tiers),
        "owner_email": rng.choice(cfg.owners)["email"],
        "created_at": created_at,
        "updated_at": created_at + _days(rng, 0, 60),
        "kind": kind,
        "quiet_from": None,
        "domain": _ascii_slug(base, "-") + ".example",
        "currency": currency,
        "zone": zone,
        "dial": dial,
    }
    world.accounts[account["account_id"]] = account
    world.contacts_by_account[account["account_id"]] = []
    return account


def _new_contact(world: World, account: dict[str, Any], created_at: datetime) -> dict[str, Any]:
    rng, cfg = world.rng, world.config
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    local = f"{_ascii_slug(first, '')}.{_ascii_slug(last, '')}"
    email = f"{local}@{account['domain']}"
    seen = world.used_emails.get(email, 0)
    world.used_emails[email] = seen + 1
    if seen:
        email = f"{local}{seen + 1}@{account['domain']}"
    # Most people share their company's zone; a few work from elsewhere.
    zone = account["zone"] if rng.random() < 0.85 else rng.choice(EUR_ZONES + USD_ZONES)[0]
    contact = {
        "contact_id": world.next_id("C", 5),
        "account_id": account["account_id"],
        "first_name": first,
        "last_name": last,
        "email": email,
        "phone": None
        if rng.random() < PHONE_NULL_SHARE
        else f"{account['dial']} {rng.randint(1000000, 9999999)}",
        "timezone": zone,
        "do_not_contact": rng.random() < cfg.do_not_contact_share,
        "created_at": created_at,
        "updated_at": created_at + _days(rng, 0, 90),
    }
    world.contacts[contact["contact_id"]] = contact
    world.contacts_by_account[account["account_id"]].append(contact["contact_id"])
    return contact


def _plan_activity(
    world: World,
    at: datetime,
    contact_id: str,
    kind: str,
    subject: str | None,
    deal_id: str | None = None,
) -> None:
    spec = {"at": at, "contact_id": contact_id, "kind": kind, "subject": subject, "deal_id": deal_id}
    world.planned.setdefault(at.date(), []).append(("activity", spec))


def _add_activity(
    world: World,
    at: datetime,
    contact_id: str,
    kind: str,
    subject: str | None,
    deal_id: str | None = None,
) -> dict[str, Any]:
    contact = world.contacts[contact_id]
    account = world.accounts[contact["account_id"]]
    activity = {
        "activity_id": world.next_id("ACT", 6),
        "contact_id": contact_id,
        "deal_id": deal_id,
        "owner_email": account["owner_email"],
        "kind": kind,
        "occurred_at": at,
        "occurred_s": _fmt(at),
        "subject": subject,
    }
    world.activities.append(activity)
    return activity


def _inbound_frozen(world: World, contact_id: str, at: datetime, frozen_accounts: dict[str, None]) -> bool:
    if world.inbound_frozen_until.get(contact_id, datetime.min) > at:
        return True
    return world.contacts[contact_id]["account_id"] in frozen_accounts


def _untouchable(world: World, contact_id: str, at: datetime) -> bool:
    window = world.no_touch.get(contact_id)
    return window is not None and window[0] <= at < window[1]


def _deal_open_for(world: World, contact_id: str, at: datetime) -> bool:
    deal_id = world.deal_of_contact.get(contact_id)
    return deal_id is not None and world.deals[deal_id]["closes_at"] > at


def _new_deal(world: World, account: dict[str, Any], contact_id: str, created_at: datetime) -> dict[str, Any]:
    """Create a deal with its whole natural path; the path is written out as the days pass."""
    rng, process = world.rng, world.config.process
    tier = account["tier"]
    low, high = {"smb": (2_000, 15_000), "mid": (10_000, 60_000), "enterprise": (50_000, 400_000)}[tier]
    product = rng.choice(PRODUCTS)
    deal_id = world.next_id("D", 5)
    timeline: list[tuple[datetime, str]] = [(created_at, "lead")]
    plans: list[tuple[datetime, str, str]] = [
        (created_at + _days(rng, 0.01, 0.2), "email_out", f"Intro: {product}")
    ]
    fate = None
    if rng.random() < 0.35:
        timeline.append((created_at + _days(rng, 5, 30), "lost"))
    else:
        qualified = created_at + _days(rng, 2, 10)
        timeline.append((qualified, "qualified"))
        plans.append((qualified - _days(rng, 0.01, 0.5), rng.choice(("call", "meeting")), "Discovery call"))
        if rng.random() < 0.15:
            timeline.append((qualified + _days(rng, 5, 20), "lost"))
        else:
            quote = qualified + _days(rng, 3, 15)
            timeline.append((quote, "quote_sent"))
            # The quote email goes out just before the stage flips, so "activity since the quote" is clean.
            plans.append((quote - _days(rng, 0.003, 0.04), "email_out", f"Your quote for {product}"))
            fate = _pick_weighted(rng.random(), process["quote_fate"])
            if fate == "fast":
                advanced = quote + _days(rng, 0.3, 6.5)
                timeline.append((advanced, "negotiation"))
                plans.append((advanced, "meeting", "Quote review"))
                _append_negotiation_end(rng, timeline, advanced)
            elif fate == "touched":
                touch = quote + _days(rng, 0.3, 6.5)
                plans.append(
                    (touch, rng.choice(("email_out", "call")), f"Checking in on the {product} quote")
                )
                if rng.random() < 0.45:
                    advanced = touch + _days(rng, 1, 20)
                    timeline.append((advanced, "negotiation"))
                    _append_negotiation_end(rng, timeline, advanced)
                else:
                    timeline.append((touch + _days(rng, 10, 40), "lost"))
            else:
                low_t, high_t = process["stalled_quote_timeout_days"]
                lost = quote + _days(rng, low_t, high_t)
                timeline.append((lost, "lost"))
                world.no_touch[contact_id] = (quote, lost)
    deal = {
        "deal_id": deal_id,
        "account_id": account["account_id"],
        "contact_id": contact_id,
        "owner_email": account["owner_email"],
        "name": f"{account['name']} – {product}",
        "amount": round(rng.uniform(low, high), -1),
        "currency": account["currency"],
        "created_at": created_at,
        "timeline": timeline,
        "closes_at": timeline[-1][0],
        "fate": fate,
        "product": product,
    }
    world.deals[deal_id] = deal
    world.deal_of_contact[contact_id] = deal_id
    for at, kind, subject in plans:
        _plan_activity(world, at, contact_id, kind, subject, deal_id)
    return deal


def _append_negotiation_end(
    rng: random.Random, timeline: list[tuple[datetime, str]], start: datetime
) -> None:
    if rng.random() < 0.6:
        timeline.append((start + _days(rng, 5, 20), "won"))
    else:
        timeline.append((start + _days(rng, 5, 25), "lost"))


def _new_contract(
    world: World, account: dict[str, Any], start_at: datetime, auto_renew: bool, value: float | None = None
) -> dict[str, Any]:
    rng = world.rng
    term_days = 730 if rng.random() < 0.15 else 365
    if value is None:
        low, high = {"smb": (3_000, 20_000), "mid": (20_000, 80_000), "enterprise": (80_000, 500_000)}[
            account["tier"]
        ]
        value = round(rng.uniform(low, high), -2)
    end_at = start_at + timedelta(days=term_days)
    cancelled_at = None
    if rng.random() < 0.03:
        cancelled_at = start_at + _days(rng, 30, term_days - 30)
    contract = {
        "contract_id": world.next_id("K", 5),
        "account_id": account["account_id"],
        "start_at": start_at,
        "end_at": end_at,
        "auto_renew": auto_renew,
        "value": value,
        "cancelled_at": cancelled_at,
        "created_at": start_at,
        "renewal_done": False,
    }
    world.contracts[contract["contract_id"]] = contract
    return contract


def _new_invoice(
    world: World,
    account: dict[str, Any],
    contact_id: str,
    issued_at: datetime,
    amount: float,
    fate: str | None = None,
) -> dict[str, Any]:
    rng, process = world.rng, world.config.process
    due_at = issued_at + timedelta(days=30)
    fate = fate or _pick_weighted(rng.random(), process["invoice_payment"])
    paid_at = void_at = None
    if fate == "on_time":
        paid_at = issued_at + _days(rng, 2, 29.5)
    elif fate == "late":
        paid_at = due_at + _days(rng, 0.5, 28)
    else:
        low, high = process["stuck_invoice_timeout_days"]
        settled = due_at + timedelta(days=30) + _days(rng, low, high)
        if rng.random() < 0.8:
            paid_at = settled
        else:
            void_at = settled
    invoice = {
        "invoice_id": world.next_id("INV", 5),
        "account_id": account["account_id"],
        "contact_id": contact_id,
        "amount": round(amount, 2),
        "currency": account["currency"],
        "issued_at": issued_at,
        "due_at": due_at,
        "paid_at": paid_at,
        "void_at": void_at,
        "fate": fate,
    }
    world.invoices[invoice["invoice_id"]] = invoice
    return invoice


def _new_ticket(
    world: World, account: dict[str, Any], contact_id: str, opened_at: datetime, priority: str | None = None
) -> dict[str, Any]:
    rng, process = world.rng, world.config.process
    priority = priority or _pick_weighted(
        rng.random(), {"low": 0.25, "normal": 0.45, "high": 0.2, "urgent": 0.1}
    )
    subject, body = rng.choice(TICKET_TEXTS)
    important = priority in ("urgent", "high") or account["tier"] == "enterprise"
    pending_at = None
    if important:
        # Important tickets wait for someone to act; the rule's planted effect decides the near future.
        low, high = process["important_ticket_timeout_days"]
        closed_at = opened_at + _days(rng, low, high)
    else:
        closed_at = opened_at + _days(rng, 0.2, 5)
        if rng.random() < 0.4:
            pending_at = opened_at + (closed_at - opened_at) * rng.uniform(0.2, 0.8)
    ticket = {
        "ticket_id": world.next_id("T", 5),
        "account_id": account["account_id"],
        "contact_id": contact_id,
        "priority": priority,
        "subject": subject,
        "body": body,
        "opened_at": opened_at,
        "pending_at": pending_at,
        "closed_at": closed_at,
        "important": important,
    }
    world.tickets[ticket["ticket_id"]] = ticket
    return ticket


WAITING_TICKET_TEXTS = (
    ("How do I export a report to PDF?", "Where can I find the PDF export for the monthly report?"),
    ("Question about user roles", "Can a viewer role edit dashboards, or only see them?"),
    (
        "Setting up single sign-on",
        "We would like to set up SSO with our identity provider. What do you need?",
    ),
    ("Changing the report schedule", "How can we move the weekly report from Monday to Friday?"),
    ("Importing historical data", "Is there a template for importing last year's data?"),
    ("Invoice copy needed", "Could you send us a copy of last month's invoice for our records?"),
)


def _waiting_tickets(world: World, day: date, customers: list[dict[str, Any]]) -> None:
    """Routine tickets of smb and mid customers where support asked a question back and waits for the answer:
    the level-5 rule ticket_reply_nudge's traffic (demo.yml `rates.waiting_tickets`, `learning`).

    Drawn from a random stream of their own (and ids of their own, TW…), so switching the flow on or off leaves
    every other record of the world as it was."""
    effect = world.config.learning.get("ticket_reply_nudge")
    rate = world.config.rates.get("waiting_tickets", 0.0)
    if effect is None or rate <= 0 or day < world.config.start - timedelta(days=effect.flow_starts_days):
        return
    rng = random.Random(f"{world.config.seed}:waiting_tickets:{day.isoformat()}")
    eligible = [a for a in customers if a["tier"] in effect.treated]
    low, high = effect.reply_days
    for _ in range(_poisson(rng, rate * len(eligible))):
        account = rng.choice(eligible)
        opened_at = _at(day, rng, 7, 19)
        contacts = [
            c
            for c in world.contacts_by_account[account["account_id"]]
            if world.contacts[c]["created_at"] <= opened_at
        ]
        if not contacts:
            continue
        subject, body = rng.choice(WAITING_TICKET_TEXTS)
        pending_at = opened_at + _days(rng, 0.05, 0.5)
        ticket = {
            "ticket_id": world.next_id("TW", 5),
            "account_id": account["account_id"],
            "contact_id": rng.choice(contacts),
            "priority": "low" if rng.random() < 0.4 else "normal",
            "subject": subject,
            "body": body,
            "opened_at": opened_at,
            "pending_at": pending_at,
            "closed_at": pending_at + _days(rng, low, high),
            "important": False,
        }
        world.tickets[ticket["ticket_id"]] = ticket


def _new_nps(
    world: World, contact_id: str, responded_at: datetime, category: str | None = None
) -> dict[str, Any]:
    rng = world.rng
    category = category or _pick_weighted(rng.random(), world.config.process["nps_scores"])
    if category == "promoter":
        score, comment = rng.randint(9, 10), rng.choice(PROMOTER_COMMENTS)
    elif category == "passive":
        score, comment = rng.randint(7, 8), rng.choice(PASSIVE_COMMENTS)
    else:
        score, comment = rng.randint(0, 6), rng.choice(DETRACTOR_COMMENTS)
        # Keep the contact's natural inbound activity quiet while the detractor rule can act on it.
        until = responded_at + timedelta(days=25)
        world.inbound_frozen_until[contact_id] = max(world.inbound_frozen_until.get(contact_id, until), until)
    response = {
        "response_id": world.next_id("N", 5),
        "contact_id": contact_id,
        "score": score,
        "comment": comment,
        "responded_at": responded_at,
        "responded_s": _fmt(responded_at),
    }
    world.nps_responses.append(response)
    return response


# ---------------------------------------------------------------------------------------------------
# Generation


def generate_world(config: DemoConfig) -> World:
    """Create the company and simulate `history_days` of natural history up to `config.start`."""
    world = World(config=config, rng=random.Random(config.seed))
    rng = world.rng
    start = config.start_at
    history_start = start - timedelta(days=config.history_days)
    kinds = ["customer", "prospect", "dormant"]
    low_q, high_q = config.process["dormant_quiet_from_days"]

    # Leads keep arriving during the history, so the initial base is smaller by their expected number.
    expected_new = round(config.rates["new_accounts"] * config.accounts * config.history_days)
    initial_accounts = max(1, config.accounts - expected_new)
    initial_contacts = max(initial_accounts, config.contacts - round(expected_new * 2.5))
    accounts = []
    for _ in range(initial_accounts):
        kind = _pick_weighted(
            rng.random(), dict(zip(kinds, [config.account_mix[k] for k in kinds], strict=True))
        )
        # Customers signed their first contract before the history starts; prospects are recent.
        if kind == "prospect":
            created = history_start - _days(rng, 1, 120)
        else:
            created = history_start - _days(rng, 400, 5 * 365)
        account = _new_account(world, created, kind)
        if kind == "dormant":
            account["quiet_from"] = start + _days(rng, low_q, high_q)
            account["created_at"] = min(created, account["quiet_from"] - timedelta(days=400))
            account["updated_at"] = account["created_at"] + _days(rng, 0, 60)
        accounts.append(account)

    # Every account gets one contact; the rest are spread with a bias towards bigger tiers.
    weights = [{"smb": 1.0, "mid": 2.0, "enterprise": 4.0}[a["tier"]] for a in accounts]
    owners_of_contacts = list(accounts) + rng.choices(
        accounts, weights=weights, k=max(0, initial_contacts - len(accounts))
    )
    for account in owners_of_contacts:
        _new_contact(world, account, account["created_at"] + _days(rng, 0, 20))

    for account in accounts:
        if account["kind"] == "customer":
            count = _pick_weighted(rng.random(), config.contracts_per_customer)
            for _ in range(count):
                end = history_start + _days(rng, 1, 365)
                auto = rng.random() < config.contract_auto_renew_share
                contract = _new_contract(world, account, end - timedelta(days=365), auto)
                contract["end_at"] = end
                if contract["cancelled_at"] and contract["cancelled_at"] >= end:
                    contract["cancelled_at"] = None
        elif account["kind"] == "dormant":
            _seed_dormant_past(world, account)

    day = history_start.date()
    while day < config.start:
        _simulate_day(world, day)
        day += DAY
    world.today = config.start - DAY
    _ensure_day_one_candidates(world)
    return world


def _seed_dormant_past(world: World, account: dict[str, Any]) -> None:
    """A dormant account was a customer once: an old won deal and its last few touches."""
    rng = world.rng
    quiet = account["quiet_from"]
    contact_ids = world.contacts_by_account[account["account_id"]]
    contact_id = rng.choice(contact_ids)
    won_at = quiet - _days(rng, 5, 60)
    deal = {
        "deal_id": world.next_id("D", 5),
        "account_id": account["account_id"],
        "contact_id": contact_id,
        "owner_email": account["owner_email"],
        "name": f"{account['name']} – {rng.choice(PRODUCTS)}",
        "amount": round(rng.uniform(2_000, 40_000), -1),
        "currency": account["currency"],
        "created_at": won_at - _days(rng, 30, 90),
        "timeline": [],
        "closes_at": won_at,
        "fate": None,
    }
    deal["timeline"] = [
        (deal["created_at"], "lead"),
        (won_at - _days(rng, 5, 20), "negotiation"),
        (won_at, "won"),
    ]
    world.deals[deal["deal_id"]] = deal
    world.deal_of_contact[contact_id] = deal["deal_id"]
    touches = sorted(quiet - _days(rng, 0.5, 40) for _ in range(rng.randint(1, 3)))
    touches[-1] = quiet - _days(rng, 0.01, 0.5)
    for at in touches:
        kind = rng.choice(("email_out", "email_in", "call"))
        _add_activity(world, at, rng.choice(contact_ids), kind, "Checking in")


def _active_accounts(world: World, at: datetime) -> list[dict[str, Any]]:
    return [
        a
        for a in world.accounts.values()
        if a["created_at"] <= at and (a["quiet_from"] is None or a["quiet_from"] > at)
    ]


def _renewal_frozen_accounts(world: World, day: date) -> dict[str, None]:
    """Accounts with a manual-renewal contract ending soon: the renewal rule owns their inbound activity."""
    day_start = datetime.combine(day, time())
    horizon = day_start + timedelta(days=62)
    frozen: dict[str, None] = {}
    for contract in world.contracts.values():
        if (
            not contract["auto_renew"]
            and contract["cancelled_at"] is None
            and day_start - DAY <= contract["end_at"] <= horizon
        ):
            frozen[contract["account_id"]] = None
    return frozen


def _simulate_day(world: World, day: date, report: DayReport | None = None) -> None:
    """The company's natural process for one day (no planted effects here, see `advance_day`)."""
    rng, cfg = world.rng, world.config
    day_start = datetime.combine(day, time())
    day_end = day_start + DAY
    new: dict[str, int] = {obj: 0 for obj in OBJECTS}
    counts_before = {
        "accounts": len(world.accounts),
        "contacts": len(world.contacts),
        "deals": len(world.deals),
        "invoices": len(world.invoices),
        "tickets": len(world.tickets),
        "nps_responses": len(world.nps_responses),
        "contracts": len(world.contracts),
        "activities": len(world.activities),
    }
    active = _active_accounts(world, day_start)
    customers = [a for a in active if a["kind"] == "customer"]
    frozen_accounts = _renewal_frozen_accounts(world, day)

    # New leads: a new prospect company with a first deal.
    for _ in range(_poisson(rng, cfg.rates["new_accounts"] * cfg.accounts)):
        created = _at(day, rng)
        account = _new_account(world, created, "prospect")
        contacts = [_new_contact(world, account, created) for _ in range(rng.randint(1, 4))]
        _new_deal(world, account, contacts[0]["contact_id"], created + _days(rng, 0.001, 0.01))
        active.append(account)

    # New deals on existing accounts, each with a person who has no other open deal. Accounts heading
    # for dormancy get none: an open deal would keep them from ever looking dormant.
    sellable = [a for a in active if a["quiet_from"] is None]
    for _ in range(_poisson(rng, cfg.rates["new_deals"] * len(sellable))):
        account = rng.choice(sellable)
        at = _at(day, rng)
        free = [
            c
            for c in world.contacts_by_account[account["account_id"]]
            if not _deal_open_for(world, c, at)
            and not _untouchable(world, c, at)
            and world.contacts[c]["created_at"] <= at
        ]
        if free:
            _new_deal(world, account, rng.choice(free), at)

    # Monthly invoices for every running contract, on the contract's billing day.
    for contract in list(world.contracts.values()):
        if not (contract["start_at"] <= day_end and contract["end_at"] > day_start):
            continue
        if contract["cancelled_at"] is not None and contract["cancelled_at"] <= day_start:
            continue
        if min(contract["start_at"].day, 28) != day.day:
            continue
        account = world.accounts[contract["account_id"]]
        if account["quiet_from"] is not None and account["quiet_from"] <= day_start:
            continue
        contact_id = world.contacts_by_account[account["account_id"]][0]
        _new_invoice(world, account, contact_id, _at(day, rng, 6, 9), contract["value"] / 12)

    # Contracts reaching their end: auto-renewals roll over, manual ones are renewed or lapse.
    for contract in list(world.contracts.values()):
        if (
            contract["renewal_done"]
            or contract["end_at"].date() != day
            or contract["cancelled_at"] is not None
        ):
            continue
        contract["renewal_done"] = True
        account = world.accounts[contract["account_id"]]
        renew = contract["auto_renew"] or rng.random() < cfg.contract_natural_renewal_share
        if renew and (account["quiet_from"] is None or account["quiet_from"] > day_start):
            auto = contract["auto_renew"] or rng.random() < cfg.contract_auto_renew_share
            _new_contract(world, account, contract["end_at"], auto, round(contract["value"] * 1.05, -2))

    # Support tickets and survey answers come from customers.
    for _ in range(_poisson(rng, cfg.rates["tickets"] * len(customers))):
        account = rng.choice(customers)
        at = _at(day, rng, 0, 24)
        contacts = [
            c
            for c in world.contacts_by_account[account["account_id"]]
            if world.contacts[c]["created_at"] <= at
        ]
        if contacts:
            _new_ticket(world, account, rng.choice(contacts), at)
    for _ in range(_poisson(rng, cfg.rates["nps_responses"] * len(customers))):
        account = rng.choice(customers)
        at = _at(day, rng, 0, 24)
        contacts = [
            c
            for c in world.contacts_by_account[account["account_id"]]
            if world.contacts[c]["created_at"] <= at
        ]
        if contacts:
            _new_nps(world, rng.choice(contacts), at)
    _waiting_tickets(world, day, customers)

    # Everyday correspondence, kept away from contacts whose quiet is part of a rule's condition.
    kind_weights = {
        "email_out": 0.35,
        "email_in": 0.2,
        "call": 0.15,
        "meeting": 0.1,
        "note": 0.15,
        "task": 0.05,
    }
    subjects = {
        "email_out": (
            "Quick question",
            "Following up",
            "Documents you asked for",
            "Invitation: product webinar",
        ),
        "email_in": ("Re: Quick question", "Question about our account", "Re: Following up", "Feedback"),
        "call": ("Check-in call", "Call about usage", "Support follow-up call"),
        "meeting": ("Quarterly business review", "Roadmap session", "Kick-off meeting"),
        "note": ("Account notes", "Internal: renewal risk", "Spoke with finance"),
        "task": ("Prepare QBR deck", "Send case study", "Update contact details"),
    }
    for _ in range(_poisson(rng, cfg.rates["generic_activities"] * len(active))):
        account = rng.choice(active)
        at = _at(day, rng)
        contact_id = rng.choice(world.contacts_by_account[account["account_id"]])
        if world.contacts[contact_id]["created_at"] > at:
            continue
        kind = _pick_weighted(rng.random(), kind_weights)
        if _untouchable(world, contact_id, at) and kind in TOUCH_KINDS:
            kind = "note"
        elif kind in INBOUND_KINDS and _inbound_frozen(world, contact_id, at, frozen_accounts):
            kind = "email_out"
        _add_activity(world, at, contact_id, kind, rng.choice(subjects[kind]))

    # Planned events of the day (deal correspondence, planted outcomes), in planning order.
    for what, spec in world.planned.pop(day, []):
        if what == "activity":
            _materialise_planned_activity(world, spec, frozen_accounts)
        else:
            _realise_outcome(world, spec, day, report)

    for obj, before in counts_before.items():
        new[obj] = (len(world.activities) if obj == "activities" else len(getattr(world, obj))) - before
    if report is not None:
        for obj, count in new.items():
            report.new_records[obj] = report.new_records.get(obj, 0) + count


def _materialise_planned_activity(
    world: World, spec: dict[str, Any], frozen_accounts: dict[str, None]
) -> None:
    kind = spec["kind"]
    contact_id = spec["contact_id"]
    if kind in INBOUND_KINDS and _inbound_frozen(world, contact_id, spec["at"], frozen_accounts):
        kind = "email_out"
    account = world.accounts[world.contacts[contact_id]["account_id"]]
    if account["quiet_from"] is not None and account["quiet_from"] <= spec["at"]:
        return
    _add_activity(world, spec["at"], contact_id, kind, spec["subject"], spec["deal_id"])


# ---------------------------------------------------------------------------------------------------
# Day-one stock: every rule has candidates when the loop starts, whatever the size.


def day_one_candidates(world: World, as_of: datetime) -> dict[str, list[str]]:
    """Record ids meeting each rule's condition at `as_of` (the simulator's own view, used for top-ups)."""
    last_touch_contact: dict[str, datetime] = {}
    last_touch_deal: dict[str, datetime] = {}
    last_any_account: dict[str, datetime] = {}
    for activity in world.activities:
        at = activity["occurred_at"]
        if at > as_of:
            continue
        account_id = world.contacts[activity["contact_id"]]["account_id"]
        if at > last_any_account.get(account_id, datetime.min):
            last_any_account[account_id] = at
        if activity["kind"] in TOUCH_KINDS:
            if at > last_touch_contact.get(activity["contact_id"], datetime.min):
                last_touch_contact[activity["contact_id"]] = at
            if activity["deal_id"] and at > last_touch_deal.get(activity["deal_id"], datetime.min):
                last_touch_deal[activity["deal_id"]] = at
    result: dict[str, list[str]] = {rule: [] for rule in RULE_IDS}
    open_deal_accounts: dict[str, None] = {}
    for deal in world.deals.values():
        if deal["created_at"] > as_of:
            continue
        stage, changed = _stage_at(deal, as_of)
        if stage not in CLOSED_STAGES:
            open_deal_accounts[deal["account_id"]] = None
        if stage == "quote_sent" and changed <= as_of - timedelta(days=7):
            touch = max(
                last_touch_contact.get(deal["contact_id"], datetime.min),
                last_touch_deal.get(deal["deal_id"], datetime.min),
            )
            if touch <= changed:
                result["post_quote_followup"].append(deal["deal_id"])
    reminder_horizon = as_of + timedelta(days=REMINDER_DAYS_BEFORE_DUE)
    for invoice in world.invoices.values():
        if invoice["issued_at"] > as_of or _invoice_status(invoice, as_of) != "open":
            continue
        if invoice["due_at"] <= as_of - timedelta(days=30):
            result["overdue_invoice"].append(invoice["invoice_id"])
        elif as_of < invoice["due_at"] <= reminder_horizon:
            result["invoice_due_reminder"].append(invoice["invoice_id"])
    for response in world.nps_responses:
        if as_of - timedelta(days=2) <= response["responded_at"] <= as_of and response["score"] < 7:
            result["nps_detractor"].append(response["response_id"])
    for ticket in world.tickets.values():
        if ticket["opened_at"] <= as_of and _ticket_status(ticket, as_of) != "closed":
            tier = world.accounts[ticket["account_id"]]["tier"]
            if ticket["priority"] in ("urgent", "high") or tier == "enterprise":
                result["important_inquiry"].append(ticket["ticket_id"])
    for contract in world.contracts.values():
        ending = not contract["auto_renew"] and contract["end_at"] <= as_of + timedelta(days=60)
        if ending and contract["created_at"] <= as_of and _contract_status(contract, as_of) == "active":
            result["contract_renewal"].append(contract["contract_id"])
    for account_id, account in world.accounts.items():
        if account["created_at"] > as_of - timedelta(days=90) or account_id in open_deal_accounts:
            continue
        if last_any_account.get(account_id, datetime.min) <= as_of - timedelta(days=90):
            result["dormant_customer"].append(account_id)
    return result


def _ensure_day_one_candidates(world: World) -> None:
    """Top up any rule with fewer than `day_one_minimum` candidates at the start.

    Matters for tiny worlds, and builds the large go-live backlog of the coverage benchmark's sizes. Where the
    backlog lands is chosen so the measurement stays clean and the arms stay large:
      * rules whose outcome is any inbound activity of a person (nps_detractor, contract_renewal) do not share
        people: two such actions on one contact share one outcome, so neither would be its own planted draw
        and the measured uplift would drift from the planted one. At most one renewal per account, and
        detractors and renewals go to different accounts;
      * sales actions (post_quote_followup, contract_renewal) are suppressed on accounts with an overdue
        invoice or an open urgent ticket, so their backlog goes to accounts without such trouble, and the
        backlog that makes trouble (overdue and soon-due invoices, urgent tickets) stays off those accounts.
    """
    cfg, rng = world.config, world.rng
    start = cfg.start_at
    # Judge the stock in the middle of day one, so a pass at any hour of that day sees it.
    found = day_one_candidates(world, start + timedelta(hours=12))
    customers = [
        a for a in world.accounts.values() if a["kind"] == "customer" and a["quiet_from"] is None
    ] or [a for a in world.accounts.values() if a["quiet_from"] is None]
    renewing = _renewal_frozen_accounts(world, start.date())
    detracting: dict[str, None] = {}
    selling: dict[str, None] = {}
    troubled = _troubled_accounts(world, start + timedelta(days=max(cfg.days, 1)))

    def pick(*avoid: dict[str, None]) -> dict[str, Any]:
        free = [a for a in customers if not any(a["account_id"] in taken for taken in avoid)]
        return rng.choice(free or customers)

    for rule_id in RULE_IDS:
        minimum = cfg.day_one_minimum_per_rule.get(rule_id, cfg.day_one_minimum)
        for _ in range(max(0, minimum - len(found[rule_id]))):
            if rule_id == "post_quote_followup":
                account = pick(troubled)
                contact_ids = world.contacts_by_account[account["account_id"]]
                free = [
                    c for c in contact_ids if not _deal_open_for(world, c, start) and c not in world.no_touch
                ]
                if not free:
                    account = _new_account(world, start - _days(rng, 200, 400), "prospect")
                    free = [_new_contact(world, account, account["created_at"])["contact_id"]]
                selling[account["account_id"]] = None
                _stalled_deal(world, account, free[0], start - _days(rng, 7.5, 20))
            elif rule_id == "overdue_invoice":
                account = pick(selling)
                troubled[account["account_id"]] = None
                contact_id = world.contacts_by_account[account["account_id"]][0]
                issued = start - _days(rng, 61, 90)
                _new_invoice(world, account, contact_id, issued, rng.uniform(500, 9000), fate="stuck")
            elif rule_id == "nps_detractor":
                account = pick(renewing)
                detracting[account["account_id"]] = None
                contact_id = rng.choice(world.contacts_by_account[account["account_id"]])
                _new_nps(world, contact_id, start - _days(rng, 0.05, 0.9), "detractor")
            elif rule_id == "important_inquiry":
                account = pick(selling)
                troubled[account["account_id"]] = None
                contact_id = rng.choice(world.contacts_by_account[account["account_id"]])
                _new_ticket(world, account, contact_id, start - _days(rng, 0.05, 1.5), "urgent")
            elif rule_id == "contract_renewal":
                free_accounts = [
                    a
                    for a in customers
                    if not any(a["account_id"] in taken for taken in (renewing, detracting, troubled))
                ] or [a for a in customers if a["account_id"] not in renewing]
                if not free_accounts:
                    break  # every customer already has a contract up for renewal
                account = rng.choice(free_accounts)
                renewing[account["account_id"]] = None
                selling[account["account_id"]] = None
                end = start + _days(rng, 5, 55)
                contract = _new_contract(world, account, end - timedelta(days=365), False)
                contract["end_at"], contract["cancelled_at"] = end, None
            elif rule_id == "dormant_customer":
                _dormant_account(world, start + _days(rng, -200, -95))
            elif rule_id == "invoice_due_reminder":
                # issued 17-29 days ago, so it falls due within the reminder window; paid late by nature
                account = pick(selling)
                troubled[account["account_id"]] = None
                contact_id = world.contacts_by_account[account["account_id"]][0]
                issued = start - _days(rng, 17, 29)
                _new_invoice(world, account, contact_id, issued, rng.uniform(500, 9000), fate="late")
            else:
                raise ValueError(f"no day-one top-up for rule {rule_id!r}")


def _troubled_accounts(world: World, until: datetime) -> dict[str, None]:
    """Accounts whose sales actions the journey context suppresses before `until`: an open invoice past due
    by then, or an open urgent ticket at the start."""
    start = world.config.start_at
    troubled: dict[str, None] = {}
    for invoice in world.invoices.values():
        if (
            invoice["issued_at"] <= start
            and invoice["due_at"] < until
            # overdue at some moment before `until`: still open once past due (and past the start)
            and _invoice_status(invoice, max(invoice["due_at"], start)) == "open"
        ):
            troubled[invoice["account_id"]] = None
    for ticket in world.tickets.values():
        if (
            ticket["priority"] == "urgent"
            and ticket["opened_at"] <= start
            and _ticket_status(ticket, start) == "open"
        ):
            troubled[ticket["account_id"]] = None
    return troubled


def _stalled_deal(world: World, account: dict[str, Any], contact_id: str, quote: datetime) -> None:
    rng = world.rng
    low, high = world.config.process["stalled_quote_timeout_days"]
    product = rng.choice(PRODUCTS)
    lost = quote + _days(rng, low, high)
    created = quote - _days(rng, 10, 30)
    deal_id = world.next_id("D", 5)
    world.deals[deal_id] = {
        "deal_id": deal_id,
        "account_id": account["account_id"],
        "contact_id": contact_id,
        "owner_email": account["owner_email"],
        "name": f"{account['name']} – {product}",
        "amount": round(rng.uniform(5_000, 80_000), -1),
        "currency": account["currency"],
        "created_at": created,
        "timeline": [
            (created, "lead"),
            (quote - _days(rng, 3, 9), "qualified"),
            (quote, "quote_sent"),
            (lost, "lost"),
        ],
        "closes_at": lost,
        "fate": "stalled",
        "product": product,
    }
    world.deal_of_contact[contact_id] = deal_id
    world.no_touch[contact_id] = (quote, lost)
    # Drop generic touches of this contact since the quote, so the stall is real.
    world.activities = [
        a
        for a in world.activities
        if not (a["contact_id"] == contact_id and a["occurred_at"] > quote and a["kind"] in TOUCH_KINDS)
    ]
    _add_activity(
        world, quote - timedelta(minutes=20), contact_id, "email_out", f"Your quote for {product}", deal_id
    )


def _dormant_account(world: World, quiet_from: datetime) -> None:
    rng = world.rng
    account = _new_account(world, quiet_from - _days(rng, 400, 900), "dormant")
    account["quiet_from"] = quiet_from
    for _ in range(rng.randint(1, 3)):
        _new_contact(world, account, account["created_at"] + _days(rng, 0, 20))
    _seed_dormant_past(world, account)


# ---------------------------------------------------------------------------------------------------
# The loop's side: facts in, planted effects out


def advance_day(world: World, day: date, facts: Sequence[ActionFact]) -> DayReport:
    """Simulate `day`: register the final-state actions (planted effects), then run the company's day.

    Days must move forward; a skipped day is simulated first without facts so the history has no gap.
    """
    if world.today is not None and day <= world.today:
        raise ValueError(f"day {day} is not after the last simulated day {world.today}")
    report = DayReport(day=day)
    while world.today is not None and world.today + DAY < day:
        _simulate_day(world, world.today + DAY, report)
        world.today += DAY
    for fact in facts:
        _register_fact(world, fact, day, report)
    _simulate_day(world, day, report)
    world.today = day
    _count_natural_changes(world, day, report)
    return report


def _count_natural_changes(world: World, day: date, report: DayReport) -> None:
    start = datetime.combine(day, time())
    end = start + DAY
    report.deal_stage_changes = sum(
        1 for deal in world.deals.values() for at, _ in deal["timeline"][1:] if start <= at < end
    )
    report.invoices_paid = sum(
        1 for inv in world.invoices.values() if inv["paid_at"] is not None and start <= inv["paid_at"] < end
    )
    report.tickets_closed = sum(
        1 for t in world.tickets.values() if t["closed_at"] is not None and start <= t["closed_at"] < end
    )


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def _register_fact(world: World, fact: ActionFact, day: date, report: DayReport) -> None:
    cfg = world.config
    effect: Effect | LearningEffect | None = cfg.effects.get(fact.rule_id) or cfg.learning.get(fact.rule_id)
    if effect is None or fact.status not in FACT_STATUSES:
        report.ignored_facts += 1
        return
    _bump(report.facts, fact.status)
    if fact.action_id in world.experiments:
        return  # one draw per action, however often the loop reports it
    contact_id = fact.contact_id or _record_contact(world, fact)
    arm = None
    if isinstance(effect, LearningEffect):
        # the customer responds to the channel and to the local hour the message arrived at
        segment = _segment_of(world, fact)
        daypart = effect.daypart(_local_hour(world, contact_id, fact.at))
        arm = f"{fact.channel}@{daypart}"
        delivered = effect.probability(segment, fact.channel, daypart)
    else:
        delivered = effect.treated
    probability = delivered if fact.status == "delivered" else effect.baseline
    happens = _unit(cfg.seed, "outcome", fact.action_id) < probability
    offset = 1 + int(_unit(cfg.seed, "offset", fact.action_id) * max(1, effect.window_days - 1))
    window_end = fact.at + timedelta(days=effect.window_days)
    experiment = {
        "action_id": fact.action_id,
        "rule_id": fact.rule_id,
        "record_type": fact.record_type,
        "record_id": fact.record_id,
        "contact_id": contact_id,
        "status": fact.status,
        "at": fact.at,
        "outcome": effect.outcome,
        "window_days": effect.window_days,
        "window_end": window_end,
        "happens": happens,
        "arm": arm if fact.status == "delivered" else None,
        "scheduled_day": (fact.at.date() + timedelta(days=offset)) if happens else None,
        "realised": None,
    }
    world.experiments[fact.action_id] = experiment
    _hold_natural_process(world, experiment)
    if fact.status == "delivered":
        _make_delivery_visible(world, experiment)
    if happens:
        scheduled = max(experiment["scheduled_day"], day)
        world.planned.setdefault(scheduled, []).append(("outcome", fact.action_id))
        _bump(report.outcomes_scheduled, fact.rule_id)


def _segment_of(world: World, fact: ActionFact) -> str:
    """The segment a level-5 effect depends on: the tier of the account the action is about."""
    account_id = fact.account_id
    if account_id is None:
        record = _lookup(world, fact.record_type, fact.record_id) or {}
        account_id = record.get("account_id")
    account = world.accounts.get(account_id or "")
    return account["tier"] if account else "unknown"


def _local_hour(world: World, contact_id: str | None, at: datetime) -> int:
    """The hour of the day at `at` (naive UTC) in the contact's timezone (UTC when unknown)."""
    contact = world.contacts.get(contact_id or "")
    zone = ZoneInfo(contact["timezone"]) if contact else UTC
    return at.replace(tzinfo=UTC).astimezone(zone).hour


def _record_contact(world: World, fact: ActionFact) -> str | None:
    record = _lookup(world, fact.record_type, fact.record_id)
    if record is None:
        return None
    if "contact_id" in record:
        return record["contact_id"]
    account_id = record.get("account_id")
    contact_ids = world.contacts_by_account.get(account_id or "", [])
    return contact_ids[0] if contact_ids else None


def _lookup(world: World, record_type: str, record_id: str) -> dict[str, Any] | None:
    if record_type == "deal":
        return world.deals.get(record_id)
    if record_type == "invoice":
        return world.invoices.get(record_id)
    if record_type == "ticket":
        return world.tickets.get(record_id)
    if record_type == "contract":
        return world.contracts.get(record_id)
    if record_type == "account":
        return world.accounts.get(record_id)
    if record_type == "nps_response":
        return next((r for r in reversed(world.nps_responses) if r["response_id"] == record_id), None)
    return None


def _hold_natural_process(world: World, experiment: dict[str, Any]) -> None:
    """Push the record's natural resolution past the window, so inside it only the planted draw acts."""
    rng = random.Random(f"{world.config.seed}:hold:{experiment['action_id']}")
    at, window_end = experiment["at"], experiment["window_end"]
    later = window_end + _days(rng, 1, 10)
    record = _lookup(world, experiment["record_type"], experiment["record_id"])
    outcome = experiment["outcome"]
    if outcome == "deal_advanced" and record is not None and experiment["record_type"] == "deal":
        timeline = record["timeline"]
        pending = [(ts, stage) for ts, stage in timeline if at < ts < window_end]
        if pending:
            shift = later - pending[0][0]
            record["timeline"] = [(ts, stage) for ts, stage in timeline if ts <= at] + [
                (ts + shift, stage) for ts, stage in timeline if ts > at
            ]
            record["closes_at"] = record["timeline"][-1][0]
            window = world.no_touch.get(record["contact_id"])
            if window is not None and window[1] < record["closes_at"]:
                world.no_touch[record["contact_id"]] = (window[0], record["closes_at"])
    elif outcome == "invoice_paid" and record is not None and experiment["record_type"] == "invoice":
        for key in ("paid_at", "void_at"):
            if record[key] is not None and at < record[key] < window_end:
                record[key] = later
    elif outcome == "ticket_closed" and record is not None and experiment["record_type"] == "ticket":
        if record["closed_at"] is not None and at < record["closed_at"] < window_end:
            record["closed_at"] = later
        if record["pending_at"] is not None and at < record["pending_at"] < window_end:
            record["pending_at"] = None
    elif outcome == "inbound_activity" and experiment["contact_id"]:
        until = window_end + DAY
        contact_id = experiment["contact_id"]
        world.inbound_frozen_until[contact_id] = max(world.inbound_frozen_until.get(contact_id, until), until)


def _make_delivered_subject(rule_id: str) -> str:
    return {
        "post_quote_followup": "Following up on your quote",
        "contract_renewal": "Your contract renewal",
        "dormant_customer": "It has been a while – what's new?",
    }.get(rule_id, "Follow-up")


def _make_delivery_visible(world: World, experiment: dict[str, Any]) -> None:
    """A delivered action leaves the traces a real company's CRM would show."""
    contact_id = experiment["contact_id"]
    if contact_id is None or contact_id not in world.contacts:
        return
    rule_id, at = experiment["rule_id"], experiment["at"]
    rng = random.Random(f"{world.config.seed}:visible:{experiment['action_id']}")
    deal_id = experiment["record_id"] if experiment["record_type"] == "deal" else None
    if rule_id in ("post_quote_followup", "contract_renewal", "dormant_customer"):
        _add_activity(world, at, contact_id, "email_out", _make_delivered_subject(rule_id), deal_id)
    elif rule_id == "overdue_invoice" and rng.random() < 0.6:
        # The owner calls about the invoice; a frozen contact gets a note so no rule's inbound is faked.
        frozen = _inbound_frozen(world, contact_id, at, _renewal_frozen_accounts(world, at.date()))
        kind = "note" if frozen else "call"
        _add_activity(world, at + _days(rng, 0.02, 0.2), contact_id, kind, "Reminder about the open invoice")
    elif rule_id == "nps_detractor" and rng.random() < 0.7:
        # A task, not a call: a call would count as the very inbound outcome this no-effect rule measures.
        _add_activity(world, at + _days(rng, 0.02, 0.2), contact_id, "task", "Follow up on NPS feedback")
    elif rule_id == "important_inquiry" and rng.random() < 0.5:
        _add_activity(world, at + _days(rng, 0.02, 0.2), contact_id, "note", "Looked into the open ticket")
    elif rule_id == "invoice_due_reminder":
        # Billing logs the reminder as a note: no touch, so no other rule's condition moves because of it.
        _add_activity(world, at, contact_id, "note", f"Payment reminder sent for {experiment['record_id']}")
    elif rule_id == "ticket_reply_nudge":
        # Support logs the nudge on the ticket's contact as a note (no touch, as above).
        _add_activity(world, at, contact_id, "note", f"Reminded about ticket {experiment['record_id']}")


def _realise_outcome(world: World, action_id: str, day: date, report: DayReport | None) -> None:
    experiment = world.experiments[action_id]
    rng = random.Random(f"{world.config.seed}:realise:{action_id}")
    at = max(_at(day, rng, 8, 18), experiment["at"] + timedelta(minutes=5))
    record = _lookup(world, experiment["record_type"], experiment["record_id"])
    outcome = experiment["outcome"]
    done = False
    if outcome == "deal_advanced" and record is not None and experiment["record_type"] == "deal":
        stage, _ = _stage_at(record, at)
        if stage in ("lead", "qualified", "quote_sent"):
            # The deal stays in negotiation well past the window, so a later snapshot still shows the advance.
            after = max(at, experiment["window_end"]) + _days(rng, 20, 45)
            end_stage = "won" if rng.random() < 0.6 else "lost"
            record["timeline"] = [(ts, s) for ts, s in record["timeline"] if ts <= at] + [
                (at, "negotiation"),
                (after, end_stage),
            ]
            record["closes_at"] = after
            # The meeting is inbound for the contact: held back where another rule owns their inbound.
            frozen = _inbound_frozen(world, record["contact_id"], at, _renewal_frozen_accounts(world, day))
            kind = "email_out" if frozen else "meeting"
            _add_activity(world, at, record["contact_id"], kind, "Quote review", record["deal_id"])
            done = True
    elif outcome == "invoice_paid" and record is not None and experiment["record_type"] == "invoice":
        if _invoice_status(record, at) == "open":
            record["paid_at"], record["void_at"] = at, None
            done = True
    elif outcome == "ticket_closed" and record is not None and experiment["record_type"] == "ticket":
        if _ticket_status(record, at) != "closed":
            record["closed_at"] = at
            if record["pending_at"] is not None and record["pending_at"] > at:
                record["pending_at"] = None
            done = True
    elif outcome == "inbound_activity" and experiment["contact_id"] in world.contacts:
        kind = _pick_weighted(rng.random(), {"email_in": 0.5, "call": 0.3, "meeting": 0.2})
        subject = {
            "email_in": "Re: your message",
            "call": "Customer called back",
            "meeting": "Meeting requested",
        }[kind]
        _add_activity(world, at, experiment["contact_id"], kind, subject)
        account = world.accounts[world.contacts[experiment["contact_id"]]["account_id"]]
        if account["quiet_from"] is not None and account["quiet_from"] <= at:
            account["quiet_from"] = None  # a dormant customer who answers is back in business
        done = True
    experiment["realised"] = at if done else False
    if report is not None:
        _bump(report.outcomes_realised if done else report.outcomes_skipped, experiment["rule_id"])


# ---------------------------------------------------------------------------------------------------
# Approvers


def approver_decisions(world: World, rows: list[dict[str, Any]], day: date) -> list[dict[str, Any]]:
    """Fill in review rows the way the owners in demo.yml would (deterministic per action_id).

    An owner may take a day or two: until then the decision stays empty. The first day a row is seen
    is remembered in the world, so calling this every day gives a stable story.
    """
    cfg = world.config
    personas = cfg.approvers
    delays = {int(k): float(v) for k, v in personas.get("decision_delay_days", {0: 1.0}).items()}
    comments = personas.get("comments", {})
    answered = []
    for row in rows:
        action_id = str(row["action_id"])
        first_seen = world.review_first_seen.setdefault(action_id, day)
        odds = personas.get("rules", {}).get(row.get("rule_id"), personas["default"])
        decision = _pick_weighted(
            _unit(cfg.seed, "approve", action_id),
            {"approve": odds["approve"], "reject": odds["reject"], "": odds["undecided"]},
        )
        delay = _pick_weighted(_unit(cfg.seed, "delay", action_id), delays)
        if day < first_seen + timedelta(days=delay):
            decision = ""
        comment = ""
        if decision:
            options = comments.get(decision) or [""]
            comment = options[int(_unit(cfg.seed, "comment", action_id) * len(options))]
        answered.append(
            {**row, "decision": decision, "approver_email": row.get("owner_email", ""), "comment": comment}
        )
    return answered


# ---------------------------------------------------------------------------------------------------
# Writing the SoR folder


def _invoice_status(invoice: dict[str, Any], as_of: datetime) -> str:
    if invoice["paid_at"] is not None and invoice["paid_at"] <= as_of:
        return "paid"
    if invoice["void_at"] is not None and invoice["void_at"] <= as_of:
        return "void"
    return "open"


def _ticket_status(ticket: dict[str, Any], as_of: datetime) -> str:
    if ticket["closed_at"] is not None and ticket["closed_at"] <= as_of:
        return "closed"
    if ticket["pending_at"] is not None and ticket["pending_at"] <= as_of:
        return "pending"
    return "open"


def _contract_status(contract: dict[str, Any], as_of: datetime) -> str:
    if contract["cancelled_at"] is not None and contract["cancelled_at"] <= as_of:
        return "cancelled"
    if contract["end_at"] <= as_of:
        return "expired"
    return "active"


def _money(value: float) -> str:
    return f"{value:.2f}"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _latest(as_of: datetime, *moments: datetime | None) -> datetime:
    return max(m for m in moments if m is not None and m <= as_of)


def _snapshot(world: World, as_of: datetime) -> dict[str, list[list[str]]]:
    as_of_s = _fmt(as_of)
    rows: dict[str, list[list[str]]] = {obj: [] for obj in OBJECTS}
    for a in world.accounts.values():
        if a["created_at"] <= as_of:
            updated = a["updated_at"] if a["updated_at"] <= as_of else a["created_at"]
            rows["accounts"].append(
                [
                    a["account_id"],
                    a["name"],
                    a["industry"] or "",
                    a["tier"],
                    a["owner_email"],
                    _fmt(a["created_at"]),
                    _fmt(updated),
                ]
            )
    for c in world.contacts.values():
        if c["created_at"] <= as_of:
            updated = c["updated_at"] if c["updated_at"] <= as_of else c["created_at"]
            rows["contacts"].append(
                [
                    c["contact_id"], c["account_id"], c["first_name"], c["last_name"], c["email"], c["phone"] or "",
                    c["timezone"], _bool(c["do_not_contact"]), _fmt(c["created_at"]), _fmt(updated),
                ]
            )  # fmt: skip
    for d in world.deals.values():
        if d["created_at"] > as_of:
            continue
        stage, changed = _stage_at(d, as_of)
        quote = next((ts for ts, s in d["timeline"] if s == "quote_sent" and ts <= as_of), None)
        closed = changed if stage in CLOSED_STAGES else None
        rows["deals"].append(
            [
                d["deal_id"], d["account_id"], d["contact_id"], d["owner_email"], d["name"], stage,
                _money(d["amount"]), d["currency"], _fmt(quote), _fmt(changed), _fmt(closed),
                _fmt(d["created_at"]), _fmt(changed),
            ]
        )  # fmt: skip
    for act in world.activities:
        if act["occurred_s"] <= as_of_s:
            rows["activities"].append(
                [
                    act["activity_id"], act["contact_id"], act["deal_id"] or "", act["owner_email"], act["kind"],
                    act["occurred_s"], act["subject"] or "",
                ]
            )  # fmt: skip
    for inv in world.invoices.values():
        if inv["issued_at"] > as_of:
            continue
        status = _invoice_status(inv, as_of)
        paid = inv["paid_at"] if status == "paid" else None
        rows["invoices"].append(
            [
                inv["invoice_id"], inv["account_id"], inv["contact_id"], _money(inv["amount"]), inv["currency"],
                _fmt(inv["issued_at"]), _fmt(inv["due_at"]), _fmt(paid), status,
                _fmt(_latest(as_of, inv["issued_at"], inv["paid_at"], inv["void_at"])),
            ]
        )  # fmt: skip
    for t in world.tickets.values():
        if t["opened_at"] > as_of:
            continue
        rows["tickets"].append(
            [
                t["ticket_id"], t["account_id"], t["contact_id"], t["priority"], _ticket_status(t, as_of),
                t["subject"], t["body"], _fmt(t["opened_at"]),
                _fmt(_latest(as_of, t["opened_at"], t["pending_at"], t["closed_at"])),
            ]
        )  # fmt: skip
    for r in world.nps_responses:
        if r["responded_s"] <= as_of_s:
            rows["nps_responses"].append(
                [r["response_id"], r["contact_id"], str(r["score"]), r["comment"] or "", r["responded_s"]]
            )
    for k in world.contracts.values():
        if k["created_at"] <= as_of:
            rows["contracts"].append(
                [
                    k["contract_id"], k["account_id"], _fmt(k["start_at"]), _fmt(k["end_at"]), _bool(k["auto_renew"]),
                    _money(k["value"]), _contract_status(k, as_of),
                ]
            )  # fmt: skip
    return rows


# Deliberately broken rows, one kind each; every one has a fresh key nothing else refers to.
BROKEN_KINDS: tuple[str, ...] = (
    "invalid_email",
    "negative_amount",
    "broken_reference",
    "out_of_domain",
    "score_out_of_range",
    "unknown_timezone",
    "impossible_date",
    "control_character",
    "future_timestamp",
    "unparseable",
)


def broken_rows_for(world: World, as_of: datetime, count: int) -> list[tuple[str, str, list[str]]]:
    """The `count` broken rows for this as-of day: (object, reason kind, row). Deterministic per day."""
    rng = random.Random(f"{world.config.seed}:broken:{as_of.date().isoformat()}")
    stamp = as_of.strftime("%Y%m%d")
    as_of_s = _fmt(as_of)
    good_accounts = [a for a in world.accounts.values() if a["created_at"] <= as_of]
    good_contacts = [c for c in world.contacts.values() if c["created_at"] <= as_of]
    start = rng.randrange(len(BROKEN_KINDS))
    out: list[tuple[str, str, list[str]]] = []
    for index in range(count):
        kind = BROKEN_KINDS[(start + index) % len(BROKEN_KINDS)]
        account = rng.choice(good_accounts)
        contact = rng.choice(good_contacts)
        owner = account["owner_email"]
        if kind == "invalid_email":
            row = [f"CX{stamp}{index:03d}", account["account_id"], "Jan", "Broken", "jan.broken(at)example",
                   "", "Europe/Berlin", "false", as_of_s, as_of_s]  # fmt: skip
            out.append(("contacts", kind, row))
        elif kind == "negative_amount":
            row = [f"INVX{stamp}{index:03d}", contact["account_id"], contact["contact_id"], "-120.00", "EUR",
                   as_of_s, _fmt(as_of + timedelta(days=30)), "", "open", as_of_s]  # fmt: skip
            out.append(("invoices", kind, row))
        elif kind == "broken_reference":
            row = [f"ACTX{stamp}{index:03d}", f"CX{stamp}999", "", owner, "email_in", as_of_s,
                   "Message from an unknown sender"]  # fmt: skip
            out.append(("activities", kind, row))
        elif kind == "out_of_domain":
            row = [f"DX{stamp}{index:03d}", contact["account_id"], contact["contact_id"], owner, "Imported deal",
                   "signed", "1000.00", "EUR", "", as_of_s, "", as_of_s, as_of_s]  # fmt: skip
            out.append(("deals", kind, row))
        elif kind == "score_out_of_range":
            row = [f"NX{stamp}{index:03d}", contact["contact_id"], "14", "Ten out of ten!", as_of_s]
            out.append(("nps_responses", kind, row))
        elif kind == "unknown_timezone":
            row = [f"CX{stamp}{index:03d}", account["account_id"], "Mara", "Spaceley", "mara.spaceley@example.org",
                   "", "Mars/Olympus_Mons", "false", as_of_s, as_of_s]  # fmt: skip
            out.append(("contacts", kind, row))
        elif kind == "impossible_date":
            row = [f"TX{stamp}{index:03d}", contact["account_id"], contact["contact_id"], "high", "open",
                   "Date from the old system", "Imported from legacy helpdesk.", "2026-02-31 10:00:00",
                   "2026-02-31 10:00:00"]  # fmt: skip
            out.append(("tickets", kind, row))
        elif kind == "control_character":
            row = [f"AX{stamp}{index:03d}", "Injected\r\nBcc: attacker@example.org", "Software", "smb",
                   "owner@demo-company.example\nBcc: attacker@example.org", as_of_s, as_of_s]  # fmt: skip
            out.append(("accounts", kind, row))
        elif kind == "future_timestamp":
            row = [f"ACTX{stamp}{index:03d}", contact["contact_id"], "", owner, "call",
                   _fmt(as_of + timedelta(days=5)), "Call logged in the future"]  # fmt: skip
            out.append(("activities", kind, row))
        else:
            row = [f"INVX{stamp}{index:03d}", contact["account_id"], contact["contact_id"], "12,50O", "EUR",
                   as_of_s, _fmt(as_of + timedelta(days=30)), "", "open", as_of_s]  # fmt: skip
            out.append(("invoices", kind, row))
    return out


def write_sor(world: World, folder: Path, as_of: datetime, broken_rows: int = 0) -> dict[str, int]:
    """Write the contract folder as the SoR looks at `as_of` (naive UTC); returns rows written per object.

    Each file is written to a temporary name and renamed, so a reader sees the old or the new file,
    never half of one. Broken rows (if asked) are appended after the good rows.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = _snapshot(world, as_of)
    for obj, _kind, row in broken_rows_for(world, as_of, broken_rows):
        rows[obj].append(row)
    counts: dict[str, int] = {}
    for obj in OBJECTS:
        target = folder / f"{obj}.csv"
        temporary = folder / f".{obj}.csv.tmp"
        with temporary.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(COLUMNS[obj])
            writer.writerows(rows[obj])
        os.replace(temporary, target)
        counts[obj] = len(rows[obj])
    return counts
