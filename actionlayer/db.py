"""Short-lived DuckDB connections, with a clear "database busy" error when another process holds the file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from actionlayer.config import db_path


class DatabaseBusy(RuntimeError):
    """Another process holds the DuckDB file; callers that poll treat this as "try next tick"."""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "being used by another process" in text or "conflicting" in text


@contextmanager
def connect(
    path: Path | str | None = None, *, read_only: bool = False, wait_seconds: float = 0.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the project database for one unit of work and close it afterwards.

    `wait_seconds` retries a held lock for that long before raising `DatabaseBusy`.
    """
    target = Path(path) if path is not None else db_path()
    if not read_only:
        target.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            con = duckdb.connect(str(target), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise
            if time.monotonic() >= deadline:
                raise DatabaseBusy(f"database {target} is busy (held by another process): {exc}") from exc
            time.sleep(0.2)
    try:
        yield con
    finally:
        con.close()


def run(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[tuple]:
    """Execute and read the whole result: DuckDB 2.0 refuses further work on a connection while a
    statement's result is unread."""
    return con.execute(sql, params or []).fetchall()


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """Whether `schema.table` exists in the connected database."""
    found = run(
        con,
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, table],
    )
    return bool(found and found[0][0])


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One transaction: committed when the block ends, rolled back (and re-raised) on any error."""
    con.begin()
    try:
        yield
    except BaseException:
        con.rollback()
        raise
    con.commit()
