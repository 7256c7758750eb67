"""The canonical System-of-Record contract (docs/sor_contract.md) as Python data.

Every source maps onto these eight objects; the file source validates against them, the demo world
generator writes them and the dbt sources describe them. `OBJECTS` lists the objects in dependency
order (a parent always comes before the objects that reference it), each with its columns in contract
order, their kind, whether they are required, enum domains and references.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """What a column holds; decides how it is parsed, validated and typed in `raw.<object>`."""

    KEY = "key"  # a record key (own key or a reference to another object's key)
    TEXT = "text"  # free text: may span lines, markup is data
    LINE = "line"  # single-line text: CR, LF or NUL in it are header-injection material
    EVENT_TS = "event_timestamp"  # something that happened: may not lie in the future
    PLANNED_TS = "planned_timestamp"  # a planned date: may lie in the future
    BOOL = "bool"
    MONEY = "money"
    SCORE = "score"  # integer 0-10
    ENUM = "enum"
    EMAIL = "email"
    TIMEZONE = "timezone"  # IANA zone name
    CURRENCY = "currency"  # ISO 4217 code


# DuckDB type of each kind in raw.<object> (docs/design.md, "raw.<object>").
DUCKDB_TYPES: dict[Kind, str] = {
    Kind.KEY: "VARCHAR",
    Kind.TEXT: "VARCHAR",
    Kind.LINE: "VARCHAR",
    Kind.EVENT_TS: "TIMESTAMP",
    Kind.PLANNED_TS: "TIMESTAMP",
    Kind.BOOL: "BOOLEAN",
    Kind.MONEY: "DECIMAL(18,2)",
    Kind.SCORE: "INTEGER",
    Kind.ENUM: "VARCHAR",
    Kind.EMAIL: "VARCHAR",
    Kind.TIMEZONE: "VARCHAR",
    Kind.CURRENCY: "VARCHAR",
}

# Kinds in which CR, LF or NUL make the value broken (names, emails, subjects, owner_email, phone,
# currency and keys): these values end up in mail headers, ids and file names.
SINGLE_LINE_KINDS: frozenset[Kind] = frozenset({Kind.KEY, Kind.LINE, Kind.EMAIL, Kind.CURRENCY})

SCORE_MIN = 0
SCORE_MAX = 10

# Columns every raw table carries after the contract's own columns.
LOAD_METADATA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("_source_file", "VARCHAR"),
    ("_row_number", "BIGINT"),
    ("_loaded_at", "TIMESTAMP"),
)

RAW_SCHEMA = "raw"


@dataclass(frozen=True)
class Column:
    """One contract column. `references` names the object whose key this column holds."""

    name: str
    kind: Kind
    required: bool = True
    domain: tuple[str, ...] | None = None
    references: str | None = None

    @property
    def duckdb_type(self) -> str:
        return DUCKDB_TYPES[self.kind]

    @property
    def single_line(self) -> bool:
        return self.kind in SINGLE_LINE_KINDS


@dataclass(frozen=True)
class SorObject:
    """One canonical object: its name, key column and columns in contract order (key first)."""

    name: str
    key: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    @property
    def references(self) -> tuple[Column, ...]:
        """Columns that reference another object, in contract order."""
        return tuple(c for c in self.columns if c.references is not None)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.name} has no column {name!r}; its columns are {', '.join(self.column_names)}")

    @property
    def raw_table(self) -> str:
        return f"{RAW_SCHEMA}.{self.name}"

    def raw_ddl(self, table: str | None = None) -> str:
        """`create or replace table` for raw.<object>: contract columns in order, then load metadata."""
        target = table or self.raw_table
        lines = [f"    {c.name} {c.duckdb_type}" for c in self.columns]
        lines += [f"    {name} {sql_type}" for name, sql_type in LOAD_METADATA_COLUMNS]
        return f"create or replace table {target} (\n" + ",\n".join(lines) + "\n)"


def _key(name: str) -> Column:
    return Column(name, Kind.KEY)


def _ref(name: str, target: str, *, required: bool = True) -> Column:
    return Column(name, Kind.KEY, required=required, references=target)


def _enum(name: str, *values: str) -> Column:
    return Column(name, Kind.ENUM, domain=values)


def _event(name: str, *, required: bool = True) -> Column:
    return Column(name, Kind.EVENT_TS, required=required)


def _planned(name: str) -> Column:
    return Column(name, Kind.PLANNED_TS)


TIERS = ("smb", "mid", "enterprise")
DEAL_STAGES = ("lead", "qualified", "quote_sent", "negotiation", "won", "lost")
ACTIVITY_KINDS = ("email_out", "email_in", "call", "meeting", "note", "task")
INVOICE_STATUSES = ("open", "paid", "void")
TICKET_PRIORITIES = ("low", "normal", "high", "urgent")
TICKET_STATUSES = ("open", "pending", "closed")
CONTRACT_STATUSES = ("active", "expired", "cancelled")

_OBJECT_LIST: tuple[SorObject, ...] = (
    SorObject(
        "accounts",
        "account_id",
        (
            _key("account_id"),
            Column("name", Kind.LINE),
            Column("industry", Kind.TEXT, required=False),
            _enum("tier", *TIERS),
            Column("owner_email", Kind.EMAIL),
            _event("created_at"),
            _event("updated_at"),
        ),
    ),
    SorObject(
        "contacts",
        "contact_id",
        (
            _key("contact_id"),
            _ref("account_id", "accounts"),
            Column("first_name", Kind.LINE),
            Column("last_name", Kind.LINE),
            Column("email", Kind.EMAIL),
            Column("phone", Kind.LINE, required=False),
            Column("timezone", Kind.TIMEZONE),
            Column("do_not_contact", Kind.BOOL),
            _event("created_at"),
            _event("updated_at"),
        ),
    ),
    SorObject(
        "deals",
        "deal_id",
        (
            _key("deal_id"),
            _ref("account_id", "accounts"),
            _ref("contact_id", "contacts"),
            Column("owner_email", Kind.EMAIL),
            Column("name", Kind.LINE),
            _enum("stage", *DEAL_STAGES),
            Column("amount", Kind.MONEY),
            Column("currency", Kind.CURRENCY),
            _event("quote_sent_at", required=False),
            _event("stage_changed_at"),
            _event("closed_at", required=False),
            _event("created_at"),
            _event("updated_at"),
        ),
    ),
    SorObject(
        "activities",
        "activity_id",
        (
            _key("activity_id"),
            _ref("contact_id", "contacts"),
            _ref("deal_id", "deals", required=False),
            Column("owner_email", Kind.EMAIL),
            _enum("kind", *ACTIVITY_KINDS),
            _event("occurred_at"),
            Column("subject", Kind.LINE, required=False),
        ),
    ),
    SorObject(
        "invoices",
        "invoice_id",
        (
            _key("invoice_id"),
            _ref("account_id", "accounts"),
            _ref("contact_id", "contacts"),
            Column("amount", Kind.MONEY),
            Column("currency", Kind.CURRENCY),
            _event("issued_at"),
            _planned("due_at"),
            _event("paid_at", required=False),
            _enum("status", *INVOICE_STATUSES),
            _event("updated_at"),
        ),
    ),
    SorObject(
        "tickets",
        "ticket_id",
        (
            _key("ticket_id"),
            _ref("account_id", "accounts"),
            _ref("contact_id", "contacts"),
            _enum("priority", *TICKET_PRIORITIES),
            _enum("status", *TICKET_STATUSES),
            Column("subject", Kind.LINE),
            Column("body", Kind.TEXT),
            _event("opened_at"),
            _event("updated_at"),
        ),
    ),
    SorObject(
        "nps_responses",
        "response_id",
        (
            _key("response_id"),
            _ref("contact_id", "contacts"),
            Column("score", Kind.SCORE),
            Column("comment", Kind.TEXT, required=False),
            _event("responded_at"),
        ),
    ),
    SorObject(
        "contracts",
        "contract_id",
        (
            _key("contract_id"),
            _ref("account_id", "accounts"),
            _planned("start_at"),
            _planned("end_at"),
            Column("auto_renew", Kind.BOOL),
            Column("value", Kind.MONEY),
            _enum("status", *CONTRACT_STATUSES),
        ),
    ),
)

# Objects by name, in dependency order (dicts keep insertion order).
OBJECTS: dict[str, SorObject] = {obj.name: obj for obj in _OBJECT_LIST}
OBJECT_NAMES: tuple[str, ...] = tuple(OBJECTS)


def get_object(name: str) -> SorObject:
    """The contract object called `name`, or a KeyError listing the known objects."""
    try:
        return OBJECTS[name]
    except KeyError:
        raise KeyError(f"unknown object {name!r}; the contract has {', '.join(OBJECT_NAMES)}") from None


def raw_ddl(name: str, table: str | None = None) -> str:
    """DuckDB DDL (`create or replace table raw.<name> (...)`) for one object's raw table."""
    return get_object(name).raw_ddl(table)


def _check_dependency_order() -> None:
    # Loaders rely on parents coming first, so a contract edit that breaks the order fails at import.
    seen: set[str] = set()
    for obj in _OBJECT_LIST:
        for col in obj.references:
            if col.references not in seen:
                raise AssertionError(f"{obj.name}.{col.name} references {col.references}, listed after it")
        seen.add(obj.name)


_check_dependency_order()
