"""Is an approved action still right to send? Checked by the dispatcher right before sending.

One responsibility: compare due actions with the latest candidate build (`main.action_candidates`).
An action whose candidate is gone (the invoice was paid, the deal moved, the ticket closed) or whose
contact opted out since is stale: it becomes `expired` with that reason and nothing is sent. A rule the
quality gate skipped in that build has no candidates at all, so its actions are neither stale nor sent:
they wait for a build the gate lets through.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from actionlayer.reports import blocked_rules


@dataclass(frozen=True)
class Freshness:
    """Stale actions (action id → reason) and rules whose candidates cannot be judged now."""

    stale: Mapping[str, str] = field(default_factory=dict)
    blocked_rules: frozenset[str] = frozenset()
    build_as_of: datetime | None = None
    checked: bool = False


def _exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        con.execute(
            "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
            [schema, table],
        ).fetchall()[0][0]
    )


def check(con: duckdb.DuckDBPyConnection, rows: Iterable[Mapping[str, Any]]) -> Freshness:
    """Freshness of the given due actions against the latest candidate build (unchecked when there is
    no build yet, e.g. a ledger without a dbt project)."""
    rows = [row for row in rows if row.get("event_type") != "sending"]  # in flight: resolved by key/person
    if not rows or not _exists(con, "main", "action_candidates"):
        return Freshness()
    build_as_of = None
    if _exists(con, "ops", "run_context"):
        found = con.execute("select max(as_of) from ops.run_context").fetchall()
        build_as_of = found[0][0] if found else None
    ids = [str(row["action_id"]) for row in rows]
    current = {
        action_id: (status, reason)
        for action_id, status, reason in con.execute(
            "select action_id, journey_status, journey_reason from main.action_candidates "
            "where action_id in (select unnest(?))",
            [ids],
        ).fetchall()
    }
    blocked = frozenset(rule_id for rule_id, _, _ in blocked_rules(con))
    when = f" as of {build_as_of:%Y-%m-%d %H:%M}" if isinstance(build_as_of, datetime) else ""
    stale: dict[str, str] = {}
    for row in rows:
        action_id = str(row["action_id"])
        if row.get("rule_id") in blocked:
            continue
        what = f"{row.get('record_type')} {row.get('record_id')}"
        if action_id not in current:
            stale[action_id] = (
                f"stale: the condition of rule {row.get('rule_id')} no longer holds for {what} in the "
                f"candidate build{when}; nothing sent"
            )
        elif current[action_id][1] == "do_not_contact":
            stale[action_id] = (
                f"stale: the contact of {what} opted out (do_not_contact) since approval; nothing sent"
            )
    return Freshness(stale=stale, blocked_rules=blocked, build_as_of=build_as_of, checked=True)
