"""Plain-text reports read from the database: what a pass loaded and did, ledger status, rule summary."""

from __future__ import annotations

from datetime import datetime

import duckdb

QUARANTINE_KEYS_SHOWN = 8


def _table_exists(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    rows = con.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, name],
    ).fetchall()
    return rows[0][0] > 0


def load_summary_lines(con: duckdb.DuckDBPyConnection, as_of: datetime) -> tuple[list[str], bool]:
    """What the SoR load at `as_of` did, per object, naming quarantined keys; and whether anything broke."""
    if not _table_exists(con, "ops", "load_log"):
        return ["no SoR load recorded yet"], False
    rows = con.execute(
        """select object, status, rows_read, rows_loaded, rows_quarantined, message
        from ops.load_log where as_of = ?
        qualify row_number() over (partition by object order by rows_read desc nulls last) = 1
        order by object""",
        [as_of],
    ).fetchall()
    lines: list[str] = []
    problems = False
    reasons: dict[str, list[tuple[str, int, list[str]]]] = {}
    if _table_exists(con, "ops", "quarantine"):
        for obj, code, count, keys in con.execute(
            """select object, reason_code, count(*), list(coalesce(record_key, '(no key)') order by row_number)
            from ops.quarantine group by all order by all"""
        ).fetchall():
            reasons.setdefault(obj, []).append((code, count, keys))
    for obj, status, read, loaded, quarantined, message in rows:
        if status == "loaded":
            line = f"{obj}: {read} read, {loaded} loaded, {quarantined} quarantined"
            if quarantined:
                problems = True
                parts = [
                    f"{code}: {count} [{', '.join(keys[:QUARANTINE_KEYS_SHOWN])}{' …' if count > QUARANTINE_KEYS_SHOWN else ''}]"
                    for code, count, keys in reasons.get(obj, [])
                ]
                line += " (" + "; ".join(parts) + ")"
        elif status == "unchanged":
            # kept as last loaded: its still-quarantined rows are as much a problem as when they were loaded
            problems = problems or bool(reasons.get(obj))
            line = f"{obj}: {message}"
        else:
            problems = problems or status == "refused"
            line = f"{obj}: {status}: {message}"
        lines.append(line)
    return lines, problems


def pass_summary_lines(con: duckdb.DuckDBPyConnection, as_of: datetime) -> list[str]:
    """Ledger events written at this as-of time, per rule and event type."""
    if not _table_exists(con, "ops", "action_ledger"):
        return []
    rows = con.execute(
        """select rule_id, event_type, count(*) from ops.action_ledger where occurred_at = ?
        group by all order by rule_id, event_type""",
        [as_of],
    ).fetchall()
    per_rule: dict[str, list[str]] = {}
    for rule_id, event_type, count in rows:
        per_rule.setdefault(rule_id, []).append(f"{count} {event_type}")
    return [f"{rule_id}: {', '.join(parts)}" for rule_id, parts in per_rule.items()] or [
        "no new ledger events"
    ]


def status_lines(con: duckdb.DuckDBPyConnection) -> tuple[list[str], bool]:
    """Counts per current state, plus the actions that need a person; the flag says whether any do."""
    if not _table_exists(con, "ops", "action_ledger"):
        return ["the ledger is empty: run `actionlayer run` or `actionlayer demo` first"], False
    counts = con.execute(
        "select event_type, count(*) from ops.action_state group by 1 order by 2 desc"
    ).fetchall()
    lines = ["actions by current state:"] + [f"  {state:<15} {count}" for state, count in counts]
    attention = con.execute(
        """select action_id, rule_id, event_type, occurred_at, coalesce(result, '')
        from ops.action_state
        where event_type in ('sending', 'unknown') or (event_type = 'failed')
        order by occurred_at, action_id"""
    ).fetchall()
    if attention:
        lines.append("needs attention (stuck in sending, unknown, or failed):")
        lines += [f"  {a} {r} {s} since {t}: {why}" for a, r, s, t, why in attention[:50]]
        if len(attention) > 50:
            lines.append(f"  … and {len(attention) - 50} more")
    else:
        lines.append("nothing stuck, failed or unknown")
    return lines, bool(attention)


def blocked_rules(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    """Rules the quality gate skipped in the latest candidate build: (rule_id, blocked objects, reason)."""
    if not _table_exists(con, "main", "int_rule_gate"):
        return []
    return [
        (rule_id, objects or "", reason or "")
        for rule_id, objects, reason in con.execute(
            "select rule_id, blocked_objects, blocked_reason from main.int_rule_gate where blocked order by rule_id"
        ).fetchall()
    ]


def quality_gate_lines(con: duckdb.DuckDBPyConnection) -> list[str]:
    """One sentence per rule the quality gate skipped, saying which object blocked it and why."""
    return [
        f"rule {rule_id} skipped by the quality gate: no candidates built from {objects} — {reason}"
        for rule_id, objects, reason in blocked_rules(con)
    ]
