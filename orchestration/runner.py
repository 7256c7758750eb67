"""Runs this code location's jobs in-process on the project's Dagster instance, so the CLI and the demo
go through the same assets, checks and run history that `make dev` shows."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from actionlayer import config
from actionlayer.progress import Progress

INSTANCE_TEMPLATE = Path(__file__).with_name("dagster.yaml")


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME with our instance settings (telemetry off, one run at a time)."""
    home = config.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists() or target.read_text() != INSTANCE_TEMPLATE.read_text():
        shutil.copyfile(INSTANCE_TEMPLATE, target)
    os.environ["DAGSTER_HOME"] = str(home)
    config.disable_telemetry()
    return home


@contextmanager
def quick_run_history(home: Path) -> Iterator[None]:
    """While a run executes here, make the instance's SQLite writes cheap.

    Dagster's SQLite storages open a connection for every event they store (about 750 in a pass: every dbt
    model and test is an asset event) and close it again. Closing the last connection to a WAL database
    checkpoints and deletes the WAL, and every commit syncs it: about 10 ms per event on a busy disk, some
    20 s per pass. For the run's duration we keep one idle connection open to each database file under
    `home` (so the WAL stays and no close is the last) and commit with `synchronous=NORMAL`, which in WAL
    mode never corrupts the file; a power cut can lose the run history's last commits, never the ledger,
    which lives in DuckDB."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    root = os.path.join(os.path.realpath(home), "")
    keepers: dict[str, sqlite3.Connection] = {}
    under_home: dict[str, bool] = {}  # database path → whether it is one of the instance's files
    wal_held: set[str] = set()
    lock = threading.Lock()

    def on_connect(dbapi_connection: object, _record: object) -> None:
        # runs for every connection Dagster opens (about 1,300 in a small pass), so what is known is kept
        if not isinstance(dbapi_connection, sqlite3.Connection):
            return
        rows = dbapi_connection.execute("pragma database_list").fetchall()
        path = next((row[2] for row in rows if row[1] == "main"), "")
        if not path:
            return
        inside = under_home.get(path)
        if inside is None:
            inside = under_home[path] = os.path.realpath(path).startswith(root)
        if not inside:
            return
        dbapi_connection.execute("pragma synchronous=NORMAL")
        if path in wal_held:
            return
        with lock:
            keeper = keepers.get(path)
            if keeper is None:
                keeper = keepers[path] = sqlite3.connect(path, check_same_thread=False, timeout=30)
            # a read maps the WAL index once the file is in WAL mode, which is what keeps the WAL alive
            keeper.execute("pragma schema_version").fetchone()
            if keeper.execute("pragma journal_mode").fetchone()[0] == "wal":
                wal_held.add(path)

    event.listen(Engine, "connect", on_connect)
    try:
        with _engine_per_shard():
            yield
    finally:
        event.remove(Engine, "connect", on_connect)
        with lock:
            for keeper in keepers.values():
                keeper.close()


@contextmanager
def _engine_per_shard() -> Iterator[None]:
    """While a run executes here, Dagster's SQLite event log reuses one SQLAlchemy engine per database file.

    Out of the box it creates (and disposes) an engine for every event it stores, and again for every
    `has_table` it asks while storing an asset check's result: some 2,400 engines in a small pass. A new
    engine also starts with an empty statement cache, so each event's INSERTs are compiled again, about
    5 s per pass in all. The reused engines keep Dagster's own settings (a new SQLite connection per use,
    its busy timeout, its lock around each use) and are disposed when the run ends."""
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
        INDEX_SHARD_NAME,
        SqliteEventLogStorage,
    )
    from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engines: dict[tuple[int, str], Any] = {}
    engines_lock = threading.Lock()
    original_connect = SqliteEventLogStorage._connect
    original_has_table = SqliteEventLogStorage.has_table

    def engine_for(storage: SqliteEventLogStorage, shard: str) -> Any:
        with engines_lock:
            engine = engines.get((id(storage), shard))
            if engine is None:
                engine = engines[(id(storage), shard)] = create_engine(
                    storage.conn_string_for_shard(shard),
                    poolclass=NullPool,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                )
            return engine

    @contextmanager
    def connect(self: SqliteEventLogStorage, shard: str) -> Iterator[Any]:
        with self._db_lock:
            engine = engine_for(self, shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as connection, connection.begin():
                yield connection

    tables_seen: set[tuple[int, str]] = set()

    def has_table(self: SqliteEventLogStorage, table_name: str) -> bool:
        # asked again for every asset check event; a table that exists stays for the run, so a yes is kept
        if (id(self), table_name) in tables_seen:
            return True
        # like Dagster's: outside the storage's lock, since it is asked while a connection is open
        engine = engine_for(self, INDEX_SHARD_NAME)
        with engine.connect() as connection:
            present = bool(engine.dialect.has_table(connection, table_name))
        if present:
            tables_seen.add((id(self), table_name))
        return present

    SqliteEventLogStorage._connect = connect  # type: ignore[method-assign]
    SqliteEventLogStorage.has_table = has_table  # type: ignore[method-assign]
    try:
        yield
    finally:
        SqliteEventLogStorage._connect = original_connect  # type: ignore[method-assign]
        SqliteEventLogStorage.has_table = original_has_table  # type: ignore[method-assign]
        for engine in engines.values():
            engine.dispose()


@dataclass
class JobOutcome:
    run_id: str
    success: bool
    failures: list[str]


def run_job(
    job_name: str,
    as_of: datetime,
    sor: Path | None = None,
    asset_names: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> JobOutcome:
    """Execute one job in this process; `asset_names` narrows it to those assets (by key path).
    With `progress`, every step is reported as a stage when it starts and ends."""
    home = ensure_dagster_home()
    import dagster as dg

    from orchestration.definitions import defs
    from orchestration.progress import StepProgress
    from orchestration.resources import run_config_for

    job = defs.resolve_job_def(job_name)
    selection = [dg.AssetKey.from_user_string(name) for name in asset_names] if asset_names else None
    run_id = str(uuid.uuid4())  # known before the run starts, so the listener can subscribe to it
    with quick_run_history(home), dg.DagsterInstance.get() as instance:
        listener = StepProgress(progress) if progress is not None else None
        if listener is not None:
            instance.add_event_listener(run_id, listener)
        result = job.execute_in_process(
            run_id=run_id,
            # the full event log is in the instance (and the UI); the CLI prints its own summary from the database
            run_config=run_config_for(
                as_of=as_of, sor=sor, log_level=os.environ.get("ACTIONLAYER_LOG_LEVEL", "ERROR")
            ),
            instance=instance,
            raise_on_error=False,
            asset_selection=selection,
            tags={"actionlayer/as_of": as_of.isoformat(), "actionlayer/trigger": "cli", **(tags or {})},
        )
        if listener is not None:
            listener.settle(result.all_events)
        failures = [
            f"{event.step_key}: {event.event_specific_data.error.message.strip()}"
            for event in result.all_events
            if event.event_type_value == "STEP_FAILURE"
        ]
    return JobOutcome(run_id=result.run_id, success=result.success, failures=failures)
