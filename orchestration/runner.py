"""Runs this code location's jobs in-process on the project's Dagster instance, so the CLI and the demo
go through the same assets, checks and run history that `make dev` shows."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
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
    ensure_dagster_home()
    import dagster as dg

    from orchestration.definitions import defs
    from orchestration.progress import StepProgress
    from orchestration.resources import run_config_for

    job = defs.resolve_job_def(job_name)
    selection = [dg.AssetKey.from_user_string(name) for name in asset_names] if asset_names else None
    run_id = str(uuid.uuid4())  # known before the run starts, so the listener can subscribe to it
    with dg.DagsterInstance.get() as instance:
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
