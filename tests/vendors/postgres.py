"""A SourceHarness (tests/vendors/harness.py) backed by a real PostgreSQL 16 started by pgserver.

One responsibility: keep one schema of "application tables" in the shape a real app might have and point a
PostgresConnector at it. How the harness represents the contract:

- one table per canonical object, `<schema>.<object>`; the key column is called `id` (so the connector's
  `columns:` rename map is exercised), every other canonical column has its contract name;
- every contract column is `text`: the shared suite seeds broken rows (an impossible date, a non-numeric
  amount, an unknown enum) and a typed column would refuse them at insert. Typed columns
  (timestamptz, boolean, numeric, integer) are covered by tests/test_postgres.py on their own tables;
- `_modified_at timestamptz` is the server's modified time: set by a default on insert and by a trigger
  on every update, the way applications maintain `updated_at`. The connector pages on it, because the
  canonical `updated_at` is text that may be broken;
- `upsert` changes only the given columns and, like a CRM server, sets the canonical `updated_at` to the
  server clock (`bump_updated_at=False` keeps the given text);
- `delete` is an SQL `delete` (seen only by a full read, `deletes_need_full_read`), or with
  `soft_delete=True` sets `_deleted`, which the connector's `deleted_flag` turns into deleted keys;
- a field that is not a contract column becomes a text column of its own (vendor drift).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pgserver
import psycopg
from psycopg import sql

from actionlayer.contract import OBJECTS
from connectors.base import Record
from connectors.postgres import PostgresConnector

DSN_ENV = "ACTIONLAYER_TEST_POSTGRES_DSN"
SOURCE_KEY_COLUMN = "id"
MODIFIED_COLUMN = "_modified_at"
DELETED_COLUMN = "_deleted"
# The server clock as contract text, for `upsert`'s bump of updated_at.
SERVER_NOW_TEXT = "to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"


def start_server(data_dir: Path) -> Any:
    """A PostgreSQL 16 server of our own; stop it with `.cleanup()`.

    As root, pgserver runs initdb as a `pgserver` user that must traverse every parent folder. pytest
    resets its own temp root to mode 0700 whenever a session starts, so the cluster lives in a folder of
    its own under the system temp dir instead (named after `data_dir`, removed at exit).
    """
    home = Path(tempfile.mkdtemp(prefix=f"actionlayer-pg-{data_dir.parent.name[:40]}-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    cluster = home / data_dir.name
    cluster.mkdir()
    return pgserver.get_server(cluster, cleanup_mode="stop")


class PostgresHarness:
    """Application tables in one schema of a pgserver PostgreSQL, plus a connector pointed at them."""

    name = "postgres"

    def __init__(
        self,
        server: Any,
        *,
        owns_server: bool,
        schema: str = "crm",
        page_size: int = 10,
        overlap_seconds: float = 0,
        soft_delete: bool = False,
        bump_updated_at: bool = True,
    ) -> None:
        self.server = server
        self.owns_server = owns_server
        self.schema = schema
        self.page_size = page_size
        # No overlap by default: a test that checks what an incremental read returns should not see
        # the re-reads a production overlap adds (tests/test_postgres.py covers those).
        self.overlap_seconds = overlap_seconds
        self.soft_delete = soft_delete
        self.bump_updated_at = bump_updated_at
        self.deletes_need_full_read = not soft_delete
        self.dsn: str = server.get_uri()
        self._conn = psycopg.connect(self.dsn, autocommit=True)
        self._create_tables()

    # ------------------------------------------------------------------------------------------ layout

    def _table(self, obj: str) -> sql.Identifier:
        return sql.Identifier(self.schema, obj)

    def _source_column(self, obj: str, column: str) -> str:
        return SOURCE_KEY_COLUMN if column == OBJECTS[obj].key else column

    def _create_tables(self) -> None:
        with self._conn.transaction():
            self._conn.execute(
                sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(self.schema))
            )
            self._conn.execute(sql.SQL("create schema {}").format(sql.Identifier(self.schema)))
            # Like an application's updated_at trigger: every update moves the row's modified time.
            self._conn.execute(
                sql.SQL(
                    "create function {}() returns trigger language plpgsql as "
                    "$$ begin new._modified_at := clock_timestamp(); return new; end $$"
                ).format(sql.Identifier(self.schema, "touch_modified_at"))
            )
            for obj, contract in OBJECTS.items():
                columns = [
                    sql.SQL("{} text").format(sql.Identifier(self._source_column(obj, name)))
                    for name in contract.column_names
                ]
                columns.append(
                    sql.SQL("{} timestamptz not null default clock_timestamp()").format(
                        sql.Identifier(MODIFIED_COLUMN)
                    )
                )
                if self.soft_delete:
                    columns.append(
                        sql.SQL("{} boolean not null default false").format(sql.Identifier(DELETED_COLUMN))
                    )
                # No primary key: the suite seeds duplicate and null keys, which the sync must quarantine.
                self._conn.execute(
                    sql.SQL("create table {} ({})").format(self._table(obj), sql.SQL(", ").join(columns))
                )
                self._conn.execute(
                    sql.SQL("create index on {} ({}, {})").format(
                        self._table(obj), sql.Identifier(MODIFIED_COLUMN), sql.Identifier(SOURCE_KEY_COLUMN)
                    )
                )
                self._conn.execute(
                    sql.SQL(
                        "create trigger touch before update on {} for each row execute function {}()"
                    ).format(self._table(obj), sql.Identifier(self.schema, "touch_modified_at"))
                )

    def _ensure_columns(self, obj: str, names: Sequence[str]) -> None:
        for name in names:
            if name not in OBJECTS[obj].column_names:
                self._conn.execute(
                    sql.SQL("alter table {} add column if not exists {} text").format(
                        self._table(obj), sql.Identifier(name)
                    )
                )

    def _drop_drift_columns(self, obj: str) -> None:
        # A seed replaces the data, so drift columns of an earlier seed must not linger as all-null columns.
        keep = {self._source_column(obj, name) for name in OBJECTS[obj].column_names} | {
            MODIFIED_COLUMN,
            DELETED_COLUMN,
        }
        rows = self._conn.execute(
            "select column_name from information_schema.columns where table_schema = %s and table_name = %s",
            [self.schema, obj],
        ).fetchall()
        for (name,) in rows:
            if name not in keep:
                self._conn.execute(
                    sql.SQL("alter table {} drop column {}").format(self._table(obj), sql.Identifier(name))
                )

    def connector_config(self) -> dict[str, Any]:
        objects: dict[str, Any] = {}
        for obj, contract in OBJECTS.items():
            entry: dict[str, Any] = {
                "table": f"{self.schema}.{obj}",
                "updated_column": MODIFIED_COLUMN,
                "columns": {contract.key: SOURCE_KEY_COLUMN},
            }
            if self.soft_delete:
                entry["deleted_flag"] = DELETED_COLUMN
            objects[obj] = entry
        return {
            "dsn_env": DSN_ENV,
            "objects": objects,
            "page_size": self.page_size,
            "overlap_seconds": self.overlap_seconds,
            "connect_timeout": 5,
        }

    # ---------------------------------------------------------------------------------- SourceHarness

    def connector(self) -> PostgresConnector:
        return PostgresConnector.from_config(self.name, self.connector_config(), environ={DSN_ENV: self.dsn})

    def seed(self, records: Mapping[str, Sequence[Record]]) -> None:
        with self._conn.transaction():
            for obj in OBJECTS:
                self._conn.execute(sql.SQL("truncate {}").format(self._table(obj)))
                self._drop_drift_columns(obj)
            for obj, rows in records.items():
                if not rows:
                    continue
                names = list(dict.fromkeys(name for row in rows for name in row))
                self._ensure_columns(obj, names)
                statement = sql.SQL("insert into {} ({}) values ({})").format(
                    self._table(obj),
                    sql.SQL(", ").join(sql.Identifier(self._source_column(obj, name)) for name in names),
                    sql.SQL(", ").join(sql.Placeholder() * len(names)),
                )
                with self._conn.cursor() as cursor:
                    cursor.executemany(statement, [[row.get(name) for name in names] for row in rows])

    def upsert(self, object: str, record: Record) -> None:
        contract = OBJECTS[object]
        key = record.get(contract.key)
        if key is None:
            raise ValueError(f"upsert into {object} needs its key {contract.key}")
        bump = self.bump_updated_at and "updated_at" in contract.column_names
        given = {
            self._source_column(object, name): value
            for name, value in record.items()
            if not (bump and name == "updated_at")
        }
        columns = [sql.Identifier(name) for name in given]
        expressions: list[sql.Composable] = [sql.Placeholder()] * len(given)
        if bump:
            columns.append(sql.Identifier("updated_at"))
            expressions.append(sql.SQL(SERVER_NOW_TEXT))
        table, key_column = self._table(object), sql.Identifier(SOURCE_KEY_COLUMN)
        with self._conn.transaction():
            self._ensure_columns(object, list(record))
            exists = self._conn.execute(
                sql.SQL("select exists (select 1 from {} where {} = %s)").format(table, key_column), [key]
            ).fetchone()
            if exists and exists[0]:
                # The key is among the columns, so even a record of only its key fires the modified trigger.
                statement = sql.SQL("update {} set ({}) = row({}) where {} = %s").format(
                    table, sql.SQL(", ").join(columns), sql.SQL(", ").join(expressions), key_column
                )
                self._conn.execute(statement, [*given.values(), key])
            else:
                statement = sql.SQL("insert into {} ({}) values ({})").format(
                    table, sql.SQL(", ").join(columns), sql.SQL(", ").join(expressions)
                )
                self._conn.execute(statement, list(given.values()))

    def delete(self, object: str, key: str) -> None:
        if self.soft_delete:
            statement = sql.SQL("update {} set {} = true where {} = %s").format(
                self._table(object), sql.Identifier(DELETED_COLUMN), sql.Identifier(SOURCE_KEY_COLUMN)
            )
        else:
            statement = sql.SQL("delete from {} where {} = %s").format(
                self._table(object), sql.Identifier(SOURCE_KEY_COLUMN)
            )
        if self._conn.execute(statement, [key]).rowcount == 0:
            raise KeyError(f"postgres harness holds no {object} record {key!r}")

    def close(self) -> None:
        try:
            if not self.owns_server:
                self._conn.execute(
                    sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(self.schema))
                )
        finally:
            self._conn.close()
            if self.owns_server:
                self.server.cleanup()


def make_harness(tmp_path: Path, **options: Any) -> PostgresHarness:
    """A harness on a PostgreSQL server of its own under `tmp_path`; `close()` stops the server."""
    return PostgresHarness(start_server(tmp_path / "pgdata"), owns_server=True, **options)
