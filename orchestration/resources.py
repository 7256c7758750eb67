"""The one Dagster resource: which SoR folder a run reads and which as-of time it acts at."""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from actionlayer.config import parse_as_of, sor_dir


class ActionlayerSettings(dg.ConfigurableResource):
    """Per-run settings. Leave `as_of` empty to act at the moment the run was created."""

    as_of: str | None = None
    sor_dir: str | None = None

    def sor_path(self) -> Path:
        return Path(self.sor_dir) if self.sor_dir else sor_dir()

    def resolved_as_of(self, context: dg.OpExecutionContext) -> datetime:
        if self.as_of:
            return parse_as_of(self.as_of)
        # every asset of one run must see the same "now": the run's creation time
        record = context.instance.get_run_record_by_id(context.run_id)
        created = record.create_timestamp if record else datetime.now(UTC)
        return parse_as_of(created.replace(microsecond=0))


def run_config_for(
    as_of: datetime | None = None, sor: Path | None = None, log_level: str | None = None
) -> dict:
    """Run config that pins a run's as-of time and SoR folder (and, for terminal runs, the log level)."""
    config: dict[str, str] = {}
    if as_of is not None:
        config["as_of"] = as_of.strftime("%Y-%m-%d %H:%M:%S")
    if sor is not None:
        config["sor_dir"] = str(sor)
    run_config: dict = {"resources": {"actionlayer": {"config": config}}} if config else {}
    if log_level:
        run_config["loggers"] = {"console": {"config": {"log_level": log_level}}}
    return run_config
