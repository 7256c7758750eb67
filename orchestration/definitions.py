"""Assembles the Dagster code location; nothing else lives here."""

from __future__ import annotations

import dagster as dg

from actionlayer.config import disable_telemetry

disable_telemetry()

from actionlayer.settings import SourceSettings, load_sources  # noqa: E402
from orchestration import action_assets, sensors  # noqa: E402
from orchestration.jobs import act_on_candidates_job, loop_job, review_import_job  # noqa: E402
from orchestration.resources import ActionlayerSettings  # noqa: E402
from orchestration.schedules import daily_loop_schedule  # noqa: E402
from orchestration.sor_assets import source_assets  # noqa: E402
from orchestration.transform_assets import (  # noqa: E402
    candidates_quality_gate,
    decision_models,
    outcome_marts,
)


def build_definitions(sources: list[SourceSettings] | None = None) -> dg.Definitions:
    """The code location for the configured sources (actionlayer.yml; none = the contract folder)."""
    sources = load_sources() if sources is None else sources
    connector_sources = [source for source in sources if source.type != "files"]
    folder_sensors = (
        [sensors.sor_folder_sensor] if not sources or len(connector_sources) < len(sources) else []
    )
    return dg.Definitions(
        assets=[
            *source_assets(sources),
            decision_models,
            action_assets.action_ledger,
            action_assets.review_decisions,
            action_assets.review_tables,
            action_assets.action_dispatch,
            outcome_marts,
        ],
        asset_checks=[candidates_quality_gate],
        jobs=[loop_job, act_on_candidates_job, review_import_job],
        sensors=[
            *folder_sensors,
            *[sensors.source_sensor(source) for source in connector_sources],
            sensors.review_inbox_sensor,
            sensors.candidates_changed_sensor,
        ],
        schedules=[daily_loop_schedule],
        resources={"actionlayer": ActionlayerSettings()},
        executor=dg.in_process_executor,
    )


defs = build_definitions()
