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
    lock = threading.Lock()

    def on_connect(dbapi_connection: object, _record: object) -> None:
        if not isinstance(dbapi_connection, sqlite3.Connection):
            return
        rows = dbapi_connection.execute("pragma database_list").fetchall()
        path = next((row[2] for row in rows if row[1] == "main"), "")
        if not path or not os.path.realpath(path).startswith(root):
            return
        dbapi_connection.execute("pragma synchronous=NORMAL")
        with lock:
            keeper = keepers.get(path)
            if keeper is None:
                keeper = keepers[path] = sqlite3.connect(path, check_same_thread=False, timeout=30)
            # a read maps the WAL index (once the file is in WAL mode), which is what keeps the WAL alive
            keeper.execute("pragma schema_version").fetchone()

    event.listen(Engine, "connect", on_connect)
    try:
        yield
    finally:
        event.remove(Engine, "connect", on_connect)
        with lock:
            for keeper in keepers.values():
                keeper.close()


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
