"""Dagster assets for the Systems of Record: one raw table per canonical object, loaded by the source
that provides it (the contract folder, or a connector synced through connectors/sync.py), with per object
an expectation check (Great Expectations) and a broken-rows check; and the quality tables they share
(ops.quarantine, ops.load_log, ops.drift_events)."""

from collections.abc import Iterator, Sequence
from pathlib import Path

import dagster as dg

from actionlayer import quality
from actionlayer.contract import OBJECT_NAMES, raw_ddl
from actionlayer.db import connect
from actionlayer.settings import SourceSettings
from connectors.files import LoadReport, ensure_ops_tables, folder_fingerprint, load_folder
from connectors.history import HistoryReport, record_load_history
from orchestration.resources import ActionlayerSettings

QUARANTINE_KEY = dg.AssetKey(["ops", "quarantine"])


def raw_key(object_name: str) -> dg.AssetKey:
    return dg.AssetKey(["raw", object_name])


SOR_LOADS_DDL = """
create schema if not exists ops;
create table if not exists ops.sor_loads (
    folder varchar not null, fingerprint varchar, as_of timestamp not null, run_id varchar
)
"""


def record_folder_load(con, folder, fingerprint, as_of, run_id) -> None:
    """Remember which version of the folder was loaded, so the sensor does not start a run for it again."""
    con.execute(SOR_LOADS_DDL)
    con.execute("insert into ops.sor_loads values (?, ?, ?, ?)", [str(folder), fingerprint, as_of, run_id])


def last_loaded_fingerprint(con, folder) -> str | None:
    exists = con.execute(
        "select count(*) from information_schema.tables where table_schema = 'ops' and table_name = 'sor_loads'"
    ).fetchall()[0][0]
    if not exists:
        return None
    rows = con.execute(
        "select fingerprint from ops.sor_loads where folder = ? order by as_of desc, rowid desc limit 1",
        [str(folder)],
    ).fetchall()
    return rows[0][0] if rows else None


def _ensure_every_raw_table(con) -> None:
    """An object never delivered still gets an empty raw table, so the rules that need it find nothing
    instead of failing the whole dbt build."""
    existing = {
        name
        for (name,) in con.execute(
            "select table_name from information_schema.tables where table_schema = 'raw'"
        ).fetchall()
    }
    for name in OBJECT_NAMES:
        if name not in existing:
            con.execute(raw_ddl(name).replace("create or replace table", "create table if not exists"))


def _object_specs(objects: Sequence[str], origin: str) -> list[dg.AssetSpec]:
    return [
        dg.AssetSpec(
            raw_key(name),
            group_name="sor",
            description=f"Good `{name}` rows from {origin} (raw.{name}); history in hist.{name}.",
            kinds={"duckdb"},
            skippable=True,
        )
        for name in objects
    ]


def _check_specs(objects: Sequence[str]) -> list[dg.AssetCheckSpec]:
    return [
        spec
        for name in objects
        for spec in (
            dg.AssetCheckSpec(
                "contract_expectations",
                asset=raw_key(name),
                description="Great Expectations suite from SOR_CONTRACT.md over the loaded batch. Fails "
                "(ERROR) when the blocking quality gate refused the object: unreadable, a required column "
                "missing, or more than quality.max_broken_share of its rows broken. The last good copy "
                "stays and the rules that read the object build no candidates until a load passes.",
            ),
            dg.AssetCheckSpec(
                "no_broken_rows",
                asset=raw_key(name),
                description="Warns when rows of this object were quarantined.",
            ),
        )
    ]


def _log_load(context: dg.AssetExecutionContext, report: LoadReport) -> None:
    lines = report.summary_lines()
    for (_, result), line in zip(report.objects.items(), lines, strict=False):
        troubled = result.rows_quarantined or result.status == "refused"
        (context.log.warning if troubled else context.log.info)(line)
    for line in lines[len(report.objects) :]:
        context.log.warning(line)


def _object_results(
    context: dg.AssetExecutionContext,
    report: LoadReport,
    objects: Sequence[str],
    as_of,
    history: HistoryReport | None = None,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """A materialization and both checks per object this step owns, from one load report; the expectation
    suite runs over the records the load added or changed when `history` recorded them at the load's
    as-of, else over the whole raw table."""
    selected = context.selected_asset_keys
    for name in objects:
        if raw_key(name) not in selected:
            continue
        obj = report.objects.get(name)
        if obj is not None and obj.status == "loaded":
            recorded = history is not None and name in history.objects and history.objects[name].applied
            yield dg.MaterializeResult(
                asset_key=raw_key(name),
                metadata={
                    "rows_read": obj.rows_read,
                    "rows_validated": obj.rows_validated,
                    "rows_loaded": obj.rows_loaded,
                    "rows_quarantined": obj.rows_quarantined,
                    "as_of": str(as_of),
                    "source": str(obj.source_file or ""),
                },
            )
            with connect(wait_seconds=30) as con:
                result = quality.validate_load(con, name, report.as_of if recorded else None)
            yield dg.AssetCheckResult(
                asset_key=raw_key(name),
                check_name="contract_expectations",
                passed=result.success,
                metadata=result.to_metadata(),
            )
            yield dg.AssetCheckResult(
                asset_key=raw_key(name),
                check_name="no_broken_rows",
                passed=obj.rows_quarantined == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"rows_quarantined": obj.rows_quarantined, "by_reason": dict(obj.quarantine_counts)},
            )
        elif obj is not None and obj.status == "unchanged":
            # Same inputs as the last load: raw, quarantine and history are as that load left them and were
            # checked then, so no batch is read and no expectation suite runs. Reporting the object lets
            # the decision models run; the quality gate for it stays what the last load made it.
            unchanged = {
                "status": "unchanged",
                "updated": False,
                "unchanged": True,
                "unchanged_since": str(obj.unchanged_since),
                "rows_kept": obj.rows_kept,
                "message": obj.message,
                "as_of": str(as_of),
            }
            yield dg.MaterializeResult(asset_key=raw_key(name), metadata=unchanged)
            for check_name in ("contract_expectations", "no_broken_rows"):
                yield dg.AssetCheckResult(
                    asset_key=raw_key(name),
                    check_name=check_name,
                    passed=True,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata=unchanged,
                )
        else:
            message = obj.message if obj is not None else "not loaded"
            status = obj.status if obj is not None else "skipped"
            gate = (obj.gate if obj is not None else None) or ""
            # The step reports the object without changing it: raw keeps its last good copy. Reporting it
            # (instead of emitting nothing) lets the decision models run for the rules that do not read it;
            # the gate in int_rule_candidates keeps the ones that do from building candidates.
            yield dg.MaterializeResult(
                asset_key=raw_key(name),
                metadata={
                    "status": status,
                    "updated": False,
                    "gate": gate,
                    "message": message,
                    "as_of": str(as_of),
                },
            )
            # a refused object keeps its last good copy and the rules reading it are skipped (the
            # quality_gate check on action_candidates names them); this check failing says why in the UI
            yield dg.AssetCheckResult(
                asset_key=raw_key(name),
                check_name="contract_expectations",
                passed=status == "skipped",
                severity=dg.AssetCheckSeverity.ERROR if status == "refused" else dg.AssetCheckSeverity.WARN,
                metadata={
                    "status": status,
                    "gate": gate,
                    "message": message,
                    "rows_read": obj.rows_read if obj is not None else 0,
                    "rows_quarantined": obj.rows_quarantined if obj is not None else 0,
                },
            )
            yield dg.AssetCheckResult(
                asset_key=raw_key(name),
                check_name="no_broken_rows",
                passed=status == "skipped",
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"status": status, "message": message},
            )


def files_source_asset(
    objects: Sequence[str] = OBJECT_NAMES, folder: str | None = None
) -> dg.AssetsDefinition:
    """The contract folder (ACTIONLAYER_SOR, or the source's `folder`) as the provider of `objects`."""

    @dg.multi_asset(
        name="sor_files",
        specs=_object_specs(objects, "the SoR contract folder"),
        check_specs=_check_specs(objects),
        pool="duckdb",
    )
    def sor_files(context: dg.AssetExecutionContext, actionlayer: ActionlayerSettings):
        """Load the contract folder, quarantine broken rows, record history, validate every loaded batch;
        objects whose file and inputs are unchanged since their last load are kept without reading them."""
        as_of = actionlayer.resolved_as_of(context)
        path = Path(folder) if folder and not actionlayer.sor_dir else actionlayer.sor_path()
        context.log.info(f"loading SoR folder {path} as of {as_of:%Y-%m-%d %H:%M:%S}")
        fingerprint = folder_fingerprint(path) if path.is_dir() else None
        with connect(wait_seconds=30) as con:
            if fingerprint is not None and fingerprint != last_loaded_fingerprint(con, path):
                # something will be loaded and validated: import the validator while the load works
                quality.prepare_in_background()
            report = load_folder(con, path, as_of, objects=list(objects))
            _ensure_every_raw_table(con)
            history = record_load_history(con, report)
            record_folder_load(con, path, fingerprint, as_of, context.run_id)
        _log_load(context, report)
        yield from _object_results(context, report, objects, as_of, history)

    return sor_files


def connector_source_asset(source: SourceSettings) -> dg.AssetsDefinition:
    """One connector source: an incremental, page-atomic sync of the objects it provides (subsettable,
    so a sensor can scope a run to the objects that changed)."""

    @dg.multi_asset(
        name=f"sync_{source.name}",
        specs=_object_specs(source.objects, f"source `{source.name}` ({source.type})"),
        check_specs=_check_specs(source.objects),
        can_subset=True,
        pool="duckdb",
    )
    def sync_asset(context: dg.AssetExecutionContext, actionlayer: ActionlayerSettings):
        from connectors.sync import sync_source

        as_of = actionlayer.resolved_as_of(context)
        scope = [name for name in source.objects if raw_key(name) in context.selected_asset_keys]
        context.log.info(f"syncing {source.name} ({source.type}): {', '.join(scope)} as of {as_of}")
        connector = source.connector()
        quality.prepare_in_background()  # a sync's waits on the vendor overlap the validator's import
        try:
            report = sync_source(lambda: connect(wait_seconds=30), connector, as_of, objects=scope)
        finally:
            connector.close()
        for line in report.summary_lines():
            (context.log.warning if report.has_problems else context.log.info)(line)
        with connect(wait_seconds=30) as con:
            _ensure_every_raw_table(con)
        if report.load is None:
            raise dg.Failure(description=f"source {source.name}: nothing was loaded: {report.refused}")
        yield from _object_results(context, report.load, scope, as_of, report.history)

    return sync_asset


OPS_TABLES = {
    "quarantine": "Broken SoR rows with object, key, source, row number, reason and raw values (ops.quarantine).",
    "load_log": "One row per object per SoR load: rows read, loaded, quarantined by reason, and for a "
    "refused load the blocking check that refused it (ops.load_log).",
    "drift_events": "Schema drift per source, object, column and kind: added, removed, type_changed "
    "(ops.drift_events).",
}


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            dg.AssetKey(["ops", name]),
            deps=[raw_key(o) for o in OBJECT_NAMES],
            group_name="sor",
            kinds={"duckdb"},
            description=description,
        )
        for name, description in OPS_TABLES.items()
    ],
    name="sor_quality_tables",
    pool="duckdb",
)
def sor_quality_tables(context: dg.AssetExecutionContext):
    """The operational tables every SoR load writes; the quality gate models and mart_data_quality read them."""
    with connect(wait_seconds=30) as con:
        ensure_ops_tables(con)
        by_reason = con.execute(
            "select object, reason_code, count(*) from ops.quarantine group by all order by all"
        ).fetchall()
        refused = con.execute(
            """select object, gate from ops.load_log where status in ('loaded', 'refused')
            qualify row_number() over (partition by object order by as_of desc, rowid desc) = 1
            and status = 'refused' order by object"""
        ).fetchall()
        drift = con.execute("select kind, count(*) from ops.drift_events group by 1 order by 1").fetchall()
    yield dg.MaterializeResult(
        asset_key=QUARANTINE_KEY,
        metadata={
            "rows": sum(count for _, _, count in by_reason),
            "by_object_and_reason": {f"{o}.{r}": c for o, r, c in by_reason},
        },
    )
    yield dg.MaterializeResult(
        asset_key=dg.AssetKey(["ops", "load_log"]),
        metadata={"objects_refused_now": {o: g or "" for o, g in refused}},
    )
    yield dg.MaterializeResult(
        asset_key=dg.AssetKey(["ops", "drift_events"]), metadata={"by_kind": dict(drift)}
    )


def source_assets(sources: Sequence[SourceSettings]) -> list[dg.AssetsDefinition]:
    """The SoR assets for the configured sources; with none configured, the contract folder provides all."""
    if not sources:
        return [files_source_asset(), sor_quality_tables]
    assets = []
    for source in sources:
        if source.type == "files":
            assets.append(files_source_asset(source.objects, source.config.get("folder")))
        else:
            assets.append(connector_source_asset(source))
    return [*assets, sor_quality_tables]
