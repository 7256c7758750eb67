"""A DuckDB connection wrapper for tests that a pass's statement count does not grow with its rows."""

from __future__ import annotations

from typing import Any

import duckdb


class CountingConnection:
    """A real DuckDB connection that counts the statements sent through it (everything else passes through)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self.statements = 0

    def execute(self, sql: str, *args: Any) -> duckdb.DuckDBPyConnection:
        self.statements += 1
        return self._con.execute(sql, *args)

    def executemany(self, sql: str, params: list) -> duckdb.DuckDBPyConnection:
        self.statements += len(params)
        return self._con.executemany(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)
