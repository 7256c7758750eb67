"""Dagster assets for the System-of-Record file source: one raw table per canonical object, the
quarantine, and per object an expectation check (Great Expectations) and a broken-rows check."""

import dagster as dg

from actionlayer.contract import OBJECT_NAMES, raw_ddl
from actionlayer.db import connect
from connectors.files import folder_fingerprint, load_folder
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


@dg.multi_asset(
    name="sor_files",
    specs=[
        dg.AssetSpec(
            raw_key(name),
            group_name="sor",
            description=f"Good `{name}` rows from the SoR contract folder (raw.{name}).",
            kinds={"duckdb"},
            skippable=True,
        )
        for name in OBJECT_NAMES
    ]
    + [
        dg.AssetSpec(
            QUARANTINE_KEY,
            group_name="sor",
            description="Broken SoR rows with object, key, file, row number, reason and raw values.",
            kinds={"duckdb"},
        )
    ],
    check_specs=[
        spec
        for name in OBJECT_NAMES
        for spec in (
            dg.AssetCheckSpec(
                "contract_expectations",
                asset=raw_key(name),
                description="Great Expectations suite from SOR_CONTRACT.md over the loaded batch; "
                "fails when the object was refused (a required column missing); the last good copy stays.",
            ),
            dg.AssetCheckSpec(
                "no_broken_rows",
                asset=raw_key(name),
                description="Warns when rows of this object were quarantined.",
            ),
        )
    ],
    pool="duckdb",
)
def sor_files(context: dg.AssetExecutionContext, actionlayer: ActionlayerSettings):
    """Load the contract folder, quarantine broken rows, and validate every loaded batch."""
    from actionlayer.quality import validate_batch  # lazy: Great Expectations takes seconds to import

    as_of = actionlayer.resolved_as_of(context)
    folder = actionlayer.sor_path()
    context.log.info(f"loading SoR folder {folder} as of {as_of:%Y-%m-%d %H:%M:%S}")
    fingerprint = folder_fingerprint(folder) if folder.is_dir() else None
    with connect(wait_seconds=30) as con:
        report = load_folder(con, folder, as_of)
        _ensure_every_raw_table(con)
        record_folder_load(con, folder, fingerprint, as_of, context.run_id)
        batches = {
            name: con.execute(f"select * from raw.{name}").df()
            for name, obj in report.objects.items()
            if obj.status == "loaded"
        }
        quarantined = con.execute(
            "select object, reason_code, count(*) from ops.quarantine group by all order by all"
        ).fetchall()
    lines = report.summary_lines()
    for (_, result), line in zip(report.objects.items(), lines, strict=False):
        troubled = result.rows_quarantined or result.status == "refused"
        (context.log.warning if troubled else context.log.info)(line)
    for line in lines[len(report.objects) :]:
        context.log.warning(line)

    for name in OBJECT_NAMES:
        obj = report.objects.get(name)
        if obj is not None and obj.status == "loaded":
            yield dg.MaterializeResult(
                asset_key=raw_key(name),
                metadata={
                    "rows_read": obj.rows_read,
                    "rows_loaded": obj.rows_loaded,
                    "rows_quarantined": obj.rows_quarantined,
                    "as_of": str(as_of),
                    "source_file": str(obj.source_file or ""),
                },
            )
            result = validate_batch(name, batches[name])
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
                metadata={
                    "rows_quarantined": obj.rows_quarantined,
                    "by_reason": dict(obj.quarantine_counts),
                },
            )
        else:
            message = obj.message if obj is not None else "not loaded"
            status = obj.status if obj is not None else "skipped"
            # a refused object keeps its last good copy; the blocking check stops the rules that read it
            yield dg.AssetCheckResult(
                asset_key=raw_key(name),
                check_name="contract_expectations",
                passed=status == "skipped",
                severity=dg.AssetCheckSeverity.ERROR if status == "refused" else dg.AssetCheckSeverity.WARN,
                metadata={"status": status, "message": message},
            )
            yield dg.AssetCheckResult(
                asset_key=raw_key(name),
                check_name="no_broken_rows",
                passed=status == "skipped",
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"status": status, "message": message},
            )
    yield dg.MaterializeResult(
        asset_key=QUARANTINE_KEY,
        metadata={
            "rows": sum(count for _, _, count in quarantined),
            "by_object_and_reason": {f"{o}.{r}": c for o, r, c in quarantined},
        },
    )
