"""Signals, not schedules: start work when the SoR folder changes, when review files arrive, and when
a candidate build happened outside the loop job."""

import hashlib
from datetime import UTC, datetime

import dagster as dg

from actionlayer import config
from actionlayer.db import DatabaseBusy, connect
from actionlayer.settings import SourceSettings
from connectors.files import folder_fingerprint
from connectors.sync import stored_cursors
from orchestration.action_assets import inbox_files
from orchestration.jobs import act_on_candidates_job, loop_job, review_import_job
from orchestration.resources import run_config_for
from orchestration.sor_assets import last_loaded_fingerprint, raw_key


def _now() -> datetime:
    # the boundary where "now" enters: the run then carries it as its as-of time
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def database_busy(context: dg.SensorEvaluationContext) -> bool:
    """True (with a log line) when another process holds the DuckDB file: the tick is skipped."""
    return _read_database(context, lambda con: None) is _BUSY


_BUSY = object()


def _read_database(context: dg.SensorEvaluationContext, read):
    """Run `read(con)` on a short read-only connection; `_BUSY` (with a log line) when the file is held."""
    path = config.db_path()
    if not path.exists():
        return None
    try:
        with connect(path, read_only=True) as con:
            return read(con)
    except DatabaseBusy as exc:
        context.log.info(f"database busy, trying again next tick: {exc}")
        return _BUSY


@dg.sensor(job=loop_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def sor_folder_sensor(context: dg.SensorEvaluationContext):
    """Runs the loop when the SoR contract folder's fingerprint differs from the version last loaded."""
    folder = config.sor_dir()
    if not folder.is_dir():
        return dg.SkipReason(f"SoR folder {folder} does not exist yet")
    fingerprint = folder_fingerprint(folder)
    if fingerprint == context.cursor:
        return dg.SkipReason(f"SoR folder {folder} unchanged")
    loaded = _read_database(context, lambda con: last_loaded_fingerprint(con, folder))
    if loaded is _BUSY:
        return dg.SkipReason("database busy; the change will be picked up next tick")
    context.update_cursor(fingerprint)
    if loaded == fingerprint:
        return dg.SkipReason(f"SoR folder {folder} is the version already loaded")
    return dg.RunRequest(
        run_key=f"sor-{fingerprint}",
        run_config=run_config_for(as_of=_now(), sor=folder),
        tags={"actionlayer/trigger": "sor_changed"},
    )


@dg.sensor(job=review_import_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def review_inbox_sensor(context: dg.SensorEvaluationContext):
    """Applies review files dropped into the review inbox."""
    files = inbox_files()
    if not files:
        return dg.SkipReason(f"no review files in {config.review_inbox_dir()}")
    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    if key == context.cursor:
        return dg.SkipReason("review files already requested")
    if database_busy(context):
        return dg.SkipReason("database busy; the review files will be applied next tick")
    context.update_cursor(key)
    return dg.RunRequest(
        run_key=f"review-{key}",
        run_config=run_config_for(as_of=_now()),
        tags={
            "actionlayer/trigger": "review_files",
            "actionlayer/files": ", ".join(p.name for p in files)[:200],
        },
    )


@dg.asset_sensor(
    asset_key=dg.AssetKey("action_candidates"),
    job=act_on_candidates_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def candidates_changed_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    """Acts on a candidate build made outside the loop (e.g. dbt materialized from the UI)."""
    if asset_event.job_name in {loop_job.name, act_on_candidates_job.name}:
        return dg.SkipReason(f"candidates were built by {asset_event.job_name}, which already acted on them")
    return dg.RunRequest(
        run_key=f"candidates-{asset_event.run_id}",
        run_config=run_config_for(as_of=_now()),
        tags={"actionlayer/trigger": "candidates_changed"},
    )


def _models_built(con) -> bool:
    """Whether a full loop has built the candidate models (a scoped run needs them)."""
    found = con.execute(
        "select count(*) from information_schema.tables "
        "where table_schema = 'main' and table_name = 'action_candidates'"
    ).fetchall()
    return bool(found[0][0])


def source_sensor(source: SourceSettings) -> dg.SensorDefinition:
    """A cheap probe of one connector source (Zoho If-Modified-Since, a HubSpot search since the cursor,
    Postgres max(updated_at)); a run is requested only for the objects that changed."""

    @dg.sensor(
        name=f"{source.name}_changes_sensor",
        job=loop_job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def probe(context: dg.SensorEvaluationContext):
        state = _read_database(context, lambda con: (stored_cursors(con, source.name), _models_built(con)))
        if state is _BUSY:
            return dg.SkipReason("database busy; probing again next tick")
        stored, built = state if state else ({}, False)
        cursors = {name: (stored or {}).get(name) for name in source.objects}
        connector = source.connector()
        try:
            changed = [name for name in connector.changed(cursors) if name in source.objects]
        finally:
            connector.close()
        if not changed:
            return dg.SkipReason(f"source {source.name}: nothing changed since the stored cursors")
        context.log.info(f"source {source.name}: changed objects {changed}")
        if not built:
            # a scoped run reuses the models of the objects that did not change; before the first full
            # build there are none, so the first run builds everything
            return dg.RunRequest(
                run_config=run_config_for(as_of=_now()),
                tags={
                    "actionlayer/trigger": f"source_changed:{source.name}",
                    "actionlayer/objects": ",".join(changed) + " (first build: whole loop)",
                },
            )
        scope = dg.AssetSelection.assets(*[raw_key(name) for name in changed])
        return dg.RunRequest(
            run_config=run_config_for(as_of=_now()),
            asset_selection=list(scope.downstream().resolve(context.repository_def.asset_graph))
            if context.repository_def
            else [raw_key(name) for name in changed],
            tags={
                "actionlayer/trigger": f"source_changed:{source.name}",
                "actionlayer/objects": ",".join(changed),
            },
        )

    return probe
