"""Test support for the sync: a tiny in-memory System of Record with a real Connector, a canonical world
(clean and dirty rows), CSV writing for the file-source comparison, and table snapshots."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb

from actionlayer.contract import OBJECT_NAMES, OBJECTS
from connectors.base import Page, Record, SyncPlan

AS_OF_TEXT = "2026-11-23 09:00:00"


class DictSource:
    """A System of Record held in memory: every change gets the next sequence number (its 'modified
    time'), deletions leave tombstones, so incremental reads are exact."""

    def __init__(self) -> None:
        self.seq = 0
        # object -> store key -> (seq, record); the store key is the record key, or a row id when it has none
        self.records: dict[str, dict[str, tuple[int, Record]]] = {}
        self.tombstones: dict[str, dict[str, int]] = {}
        self._anonymous = 0

    def _store_key(self, object_name: str, record: Record) -> str:
        key = record.get(OBJECTS[object_name].key)
        if key is None or not key.strip():
            self._anonymous += 1
            return f"~row{self._anonymous}"
        return key

    def seed(self, world: Mapping[str, Sequence[Record]]) -> None:
        for name, rows in world.items():
            for row in rows:
                self.upsert(name, row)

    def upsert(self, object_name: str, record: Record) -> None:
        self.seq += 1
        key = self._store_key(object_name, record)
        self.records.setdefault(object_name, {})[key] = (self.seq, dict(record))
        self.tombstones.get(object_name, {}).pop(key, None)

    def delete(self, object_name: str, key: str) -> None:
        self.seq += 1
        self.records.get(object_name, {}).pop(key)
        self.tombstones.setdefault(object_name, {})[key] = self.seq

    def live(self, object_name: str) -> list[Record]:
        """Live records in the order a full read returns them (oldest change first)."""
        items = sorted(self.records.get(object_name, {}).values(), key=lambda item: item[0])
        return [record for _, record in items]

    def max_seq(self, object_name: str) -> int:
        seqs = [seq for seq, _ in self.records.get(object_name, {}).values()]
        seqs += list(self.tombstones.get(object_name, {}).values())
        return max(seqs, default=0)

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "seq": self.seq,
                    "records": self.records,
                    "tombstones": self.tombstones,
                    "anon": self._anonymous,
                }
            )
        )

    @classmethod
    def load(cls, path: Path) -> DictSource:
        data = json.loads(path.read_text())
        source = cls()
        source.seq = data["seq"]
        source._anonymous = data["anon"]
        source.records = {
            name: {key: (seq, record) for key, (seq, record) in rows.items()}
            for name, rows in data["records"].items()
        }
        source.tombstones = data["tombstones"]
        return source


class DictConnector:
    """A Connector over a DictSource: pages of `page_size` changes, oldest first; optional sleep between
    pages so a test can kill the sync while it runs. `served` counts the records handed out."""

    def __init__(
        self,
        source: DictSource,
        *,
        name: str = "dictsrc",
        page_size: int = 3,
        sleep: float = 0.0,
        objects: Sequence[str] | None = None,
        transform: Any = None,
    ) -> None:
        self.name = name
        self.source = source
        self.page_size = page_size
        self.sleep = sleep
        self._objects = list(objects) if objects is not None else None
        self.transform = transform  # record -> record, to imitate a vendor's shape changing
        self.served: dict[str, int] = {}
        self.plans: list[SyncPlan] = []

    def objects(self) -> Sequence[str]:
        if self._objects is not None:
            return self._objects
        return [name for name in OBJECT_NAMES if name in self.source.records]

    def changed(self, cursors: Mapping[str, str | None]) -> list[str]:
        return [
            name
            for name in self.objects()
            if cursors.get(name) is None or self.source.max_seq(name) > int(cursors[name] or 0)
        ]

    def pages(self, plan: SyncPlan) -> Iterator[Page]:
        self.plans.append(plan)
        name = plan.object
        since = -1 if plan.full else int(plan.cursor or 0)
        changes: list[tuple[int, Record | None, str | None]] = [
            (seq, record, None) for seq, record in self.source.records.get(name, {}).values() if seq > since
        ]
        if not plan.full:
            changes += [
                (seq, None, key) for key, seq in self.source.tombstones.get(name, {}).items() if seq > since
            ]
        changes.sort(key=lambda change: change[0])
        final_cursor = str(max(self.source.max_seq(name), since, 0))
        if not changes:
            yield Page(object=name, cursor=final_cursor)
            return
        for start in range(0, len(changes), self.page_size):
            if start and self.sleep:
                time.sleep(self.sleep)
            chunk = changes[start : start + self.page_size]
            records = [dict(r) for _, r, _ in chunk if r is not None]
            if self.transform is not None:
                records = [self.transform(r) for r in records]
            deleted = [key for _, _, key in chunk if key is not None]
            last = start + self.page_size >= len(changes)
            cursor = final_cursor if last else str(chunk[-1][0])
            self.served[name] = self.served.get(name, 0) + len(chunk)
            yield Page(object=name, records=records, deleted_keys=deleted, cursor=cursor)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- worlds


def clean_world() -> dict[str, list[Record]]:
    """A small valid world: every object, every reference resolvable, values in canonical text."""
    ts = "2026-10-01 10:00:00"
    accounts = [
        {
            "account_id": f"A{i}",
            "name": f"Acme {i}",
            "industry": "Software" if i % 2 else None,
            "tier": tier,
            "owner_email": "owner@example.com",
            "created_at": ts,
            "updated_at": "2026-10-02 10:00:00",
        }
        for i, tier in ((1, "smb"), (2, "enterprise"), (3, "mid"))
    ]
    contacts = [
        {
            "contact_id": cid,
            "account_id": acc,
            "first_name": first,
            "last_name": "Lee",
            "email": f"{cid.lower()}@example.com",
            "phone": "+49 30 1234" if cid == "C1" else None,
            "timezone": "Europe/Berlin",
            "do_not_contact": dnc,
            "created_at": ts,
            "updated_at": ts,
        }
        for cid, acc, first, dnc in (
            ("C1", "A1", "Ann", "false"),
            ("C2", "A1", "Bob", "true"),
            ("C3", "A2", "Cem", "false"),
            ("C4", "A3", "Dan", "false"),
        )
    ]
    deals = [
        {
            "deal_id": did,
            "account_id": acc,
            "contact_id": con,
            "owner_email": "owner@example.com",
            "name": f"Deal {did}",
            "stage": stage,
            "amount": amount,
            "currency": "EUR",
            "quote_sent_at": "2026-10-05 10:00:00" if stage == "quote_sent" else None,
            "stage_changed_at": "2026-10-05 10:00:00",
            "closed_at": "2026-10-06 10:00:00" if stage == "won" else None,
            "created_at": ts,
            "updated_at": "2026-10-06 10:00:00",
        }
        for did, acc, con, stage, amount in (
            ("D1", "A1", "C1", "quote_sent", "1200.50"),
            ("D2", "A2", "C3", "won", "300.00"),
            ("D3", "A3", "C4", "qualified", "50.00"),
        )
    ]
    activities = [
        {
            "activity_id": aid,
            "contact_id": con,
            "deal_id": deal,
            "owner_email": "owner@example.com",
            "kind": kind,
            "occurred_at": "2026-10-07 10:00:00",
            "subject": subject,
        }
        for aid, con, deal, kind, subject in (
            ("T1", "C1", "D1", "email_out", "Your quote"),
            ("T2", "C3", None, "call", "Check-in"),
            ("T3", "C4", "D3", "meeting", "Demo"),
        )
    ]
    invoices = [
        {
            "invoice_id": iid,
            "account_id": acc,
            "contact_id": con,
            "amount": amount,
            "currency": "EUR",
            "issued_at": ts,
            "due_at": "2026-10-31 00:00:00",
            "paid_at": "2026-10-20 10:00:00" if status == "paid" else None,
            "status": status,
            "updated_at": ts,
        }
        for iid, acc, con, amount, status in (
            ("I1", "A1", "C1", "99.90", "open"),
            ("I2", "A2", "C3", "10.00", "paid"),
        )
    ]
    tickets = [
        {
            "ticket_id": "K1",
            "account_id": "A2",
            "contact_id": "C3",
            "priority": "high",
            "status": "open",
            "subject": "Export fails",
            "body": "It fails since Monday.",
            "opened_at": ts,
            "updated_at": ts,
        },
        {
            "ticket_id": "K2",
            "account_id": "A1",
            "contact_id": "C2",
            "priority": "low",
            "status": "closed",
            "subject": "Invoice copy",
            "body": "Please resend.",
            "opened_at": ts,
            "updated_at": ts,
        },
    ]
    nps = [
        {"response_id": "R1", "contact_id": "C4", "score": "9", "comment": "Great", "responded_at": ts},
        {"response_id": "R2", "contact_id": "C1", "score": "3", "comment": None, "responded_at": ts},
    ]
    contracts = [
        {
            "contract_id": "Q1",
            "account_id": "A3",
            "start_at": "2026-01-01 00:00:00",
            "end_at": "2027-12-31 00:00:00",
            "auto_renew": "true",
            "value": "12000.00",
            "status": "active",
        }
    ]
    return {
        "accounts": accounts,
        "contacts": contacts,
        "deals": deals,
        "activities": activities,
        "invoices": invoices,
        "tickets": tickets,
        "nps_responses": nps,
        "contracts": contracts,
    }


# (object, record, expected reason_code): broken rows any source can carry (the key is always present).
def dirty_rows() -> list[tuple[str, Record, str]]:
    world = clean_world()
    bad_contact = dict(world["contacts"][1], contact_id="C8", email="not-an-email")
    orphan_contact = dict(world["contacts"][0], contact_id="C9", account_id="A404", email="c9@example.com")
    negative_deal = dict(world["deals"][2], deal_id="D8", amount="-5.00")
    odd_stage_deal = dict(world["deals"][0], deal_id="D9", stage="pending_signature")
    score_eleven = dict(world["nps_responses"][0], response_id="R9", score="11")
    return [
        ("contacts", bad_contact, "invalid_email"),
        ("contacts", orphan_contact, "broken_reference"),
        ("deals", negative_deal, "negative_amount"),
        ("deals", odd_stage_deal, "out_of_domain"),
        ("nps_responses", score_eleven, "score_out_of_range"),
    ]


def dirty_world(objects: Sequence[str] | None = None) -> dict[str, list[Record]]:
    """The clean world plus the dirty rows, restricted to `objects`."""
    world = clean_world()
    for name, record, _ in dirty_rows():
        world[name].append(record)
    keep = OBJECT_NAMES if objects is None else objects
    return {name: rows for name, rows in world.items() if name in keep}


# --------------------------------------------------------------------------- files and tables


def write_csv_folder(folder: Path, world: Mapping[str, Sequence[Record]]) -> Path:
    """One contract CSV per object, rows in the given order (None written as an empty field)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in world.items():
        columns = list(OBJECTS[name].column_names)
        with (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in rows:
                writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return folder


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    rows = con.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, table],
    ).fetchall()
    return bool(rows[0][0])


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()


def raw_rows(con: duckdb.DuckDBPyConnection, name: str, *, with_row_number: bool = True) -> list[tuple]:
    """raw.<name>'s contract columns (and optionally _row_number), sorted by key."""
    obj = OBJECTS[name]
    columns = list(obj.column_names) + (["_row_number"] if with_row_number else [])
    return rows(con, f"select {', '.join(columns)} from raw.{name} order by {obj.key}")


def quarantine_rows(con: duckdb.DuckDBPyConnection, name: str | None = None) -> list[dict[str, Any]]:
    sql = (
        "select * from ops.quarantine"
        + (" where object = ?" if name else "")
        + " order by object, row_number"
    )
    cursor = con.execute(sql, [name] if name else [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def snapshot(
    con: duckdb.DuckDBPyConnection, schemas: Sequence[str] = ("src", "raw", "hist")
) -> dict[str, list[tuple]]:
    """Every table of the given schemas, all columns, sorted: to show that a re-run changed nothing."""
    tables = rows(
        con,
        "select table_schema, table_name from information_schema.tables "
        "where table_schema in (select unnest(?::varchar[])) and table_type = 'BASE TABLE' order by 1, 2",
        [list(schemas)],
    )
    return {f"{s}.{t}": sorted(rows(con, f"select * from {s}.{t}"), key=repr) for s, t in tables}
