"""Where things live: every path and setting the project reads, resolved in one place."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The data folder (`ACTIONLAYER_DATA`, default `<root>/data`)."""
    return Path(os.environ.get("ACTIONLAYER_DATA") or PROJECT_ROOT / "data")


def db_path() -> Path:
    """The DuckDB file (`ACTIONLAYER_DB`, default `<data>/actionlayer.duckdb`)."""
    env = os.environ.get("ACTIONLAYER_DB")
    return Path(env) if env else data_dir() / "actionlayer.duckdb"


def outbox_dir() -> Path:
    return data_dir() / "outbox"


def review_dir() -> Path:
    return data_dir() / "review"


def review_outbox_dir() -> Path:
    return review_dir() / "outbox"


def review_inbox_dir() -> Path:
    return review_dir() / "inbox"


def review_processed_dir() -> Path:
    return review_dir() / "processed"


def dbt_project_dir() -> Path:
    return PROJECT_ROOT / "dbt_project"


def dbt_target_dir() -> Path:
    """Where dbt writes the manifest and compiled SQL: DBT_TARGET_PATH (dbt's own setting, relative to the
    project) or dbt_project/target. Parallel test workers each set their own, so none reads another's
    half-written manifest."""
    return dbt_project_dir() / os.environ.get("DBT_TARGET_PATH", "target")


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or data_dir() / "dagster_home")


def demo_sor_dir() -> Path:
    return data_dir() / "demo_sor"


def sor_dir() -> Path:
    """The System-of-Record contract folder the loop reads (`ACTIONLAYER_SOR`, default the demo's)."""
    env = os.environ.get("ACTIONLAYER_SOR")
    return Path(env) if env else demo_sor_dir()


def settings_file() -> Path:
    """Optional `actionlayer.yml` (`ACTIONLAYER_CONFIG`, default `<root>/actionlayer.yml`)."""
    return Path(os.environ.get("ACTIONLAYER_CONFIG") or PROJECT_ROOT / "actionlayer.yml")


def disable_telemetry() -> None:
    """Telemetry off for every tool we embed, before any of them is imported."""
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def parse_as_of(value: str | datetime | None) -> datetime:
    """An as-of timestamp as naive UTC. `None` means now: only the CLI/sensor boundary may pass None."""
    if value is None:
        return datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    if isinstance(value, datetime):
        dt = value
    else:
        text = value.strip().replace("Z", "+00:00")
        try:
            dt = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(
                f"as-of timestamp {value!r} is not ISO 8601 (e.g. 2026-11-23 or 2026-11-23T09:00:00+01:00)"
            ) from exc
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def review_export_workers() -> int:
    """Processes that write review tables (`ACTIONLAYER_REVIEW_WORKERS`, default one per CPU; 1 writes
    them in the exporting process)."""
    env = os.environ.get("ACTIONLAYER_REVIEW_WORKERS", "").strip()
    if env:
        try:
            workers = int(env)
        except ValueError:
            raise ValueError(f"ACTIONLAYER_REVIEW_WORKERS must be a whole number, got {env!r}") from None
        if workers < 1:
            raise ValueError(f"ACTIONLAYER_REVIEW_WORKERS must be at least 1, got {workers}")
        return workers
    return os.cpu_count() or 1
