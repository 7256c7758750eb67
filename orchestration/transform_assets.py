"""dbt models as Dagster assets: the decision layers (staging → rules → action_candidates) and the
outcome marts, run in-process through actionlayer.transform; dbt tests become asset checks."""

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, dbt_assets
from dagster_dbt.asset_utils import get_asset_check_key_for_test, get_subset_selection_for_context

from actionlayer import transform
from actionlayer.db import connect
from actionlayer.reports import blocked_rules
from orchestration.project import actionlayer_dbt
from orchestration.resources import ActionlayerSettings

MARTS = "path:models/marts path:models/learning"
# the marts read the ledger after dispatch wrote it; mapping the ledger source onto the dispatch
# asset orders them after it in every run
LEDGER_SOURCE_ASSET = dg.AssetKey("action_dispatch")


class ActionlayerTranslator(DagsterDbtTranslator):
    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: Any) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = manifest.get("sources", {}).get(unique_id)
        if props is not None:
            # hist.<object> is written by the same load as raw.<object>
            if props["source_name"] in ("raw", "hist"):
                return spec.replace_attributes(key=dg.AssetKey(["raw", props["name"]]))
            if props["source_name"] == "ledger":
                return spec.replace_attributes(key=LEDGER_SOURCE_ASSET)
            return spec
        node = manifest.get("nodes", {}).get(unique_id, {})
        fqn = node.get("fqn") or []
        group = fqn[1] if len(fqn) > 2 else "dbt"
        return spec.replace_attributes(group_name=group)


TRANSLATOR = ActionlayerTranslator()
MANIFEST: dict[str, Any] = json.loads(actionlayer_dbt.manifest_path.read_text())


def _run_dbt(
    context: dg.AssetExecutionContext, settings: ActionlayerSettings, select: str | None, exclude: str | None
) -> Iterator[Any]:
    manifest_data = MANIFEST
    selection, indirect = get_subset_selection_for_context(
        context,
        manifest_data,
        select,
        exclude,
        None,
        TRANSLATOR,
        os.environ.get("DBT_INDIRECT_SELECTION"),
    )
    if indirect:
        os.environ["DBT_INDIRECT_SELECTION"] = indirect
    as_of = settings.resolved_as_of(context)
    context.log.info(f"dbt build {' '.join(selection)} as of {as_of}")
    outcome = transform.run("build", as_of, selection)
    for line in outcome.summary_lines():
        context.log.info(line)
    selected_checks = context.selected_asset_check_keys
    for result in outcome.results:
        node = manifest_data["nodes"].get(result.unique_id, {})
        if result.resource_type == "model" and result.status == "success":
            key = TRANSLATOR.get_asset_spec(manifest_data, result.unique_id, actionlayer_dbt).key
            if key in context.selected_asset_keys:
                yield dg.MaterializeResult(
                    asset_key=key,
                    metadata={
                        "execution_seconds": round(result.execution_time, 3),
                        "rows_affected": result.rows_affected,
                        "as_of": str(as_of),
                        "relation": f"{node.get('schema')}.{node.get('alias') or node.get('name')}",
                    },
                )
        elif result.resource_type == "test":
            check_key = get_asset_check_key_for_test(
                manifest_data, TRANSLATOR, result.unique_id, actionlayer_dbt
            )
            if check_key is not None and check_key in selected_checks:
                yield dg.AssetCheckResult(
                    asset_key=check_key.asset_key,
                    check_name=check_key.name,
                    passed=result.status == "pass",
                    severity=dg.AssetCheckSeverity.WARN
                    if result.status == "warn"
                    else dg.AssetCheckSeverity.ERROR,
                    metadata={
                        "status": result.status,
                        "failures": result.failures,
                        "message": result.message,
                    },
                )
    if exclude == MARTS:
        with connect(wait_seconds=30) as con:
            for rule_id, objects, reason in blocked_rules(con):
                context.log.warning(
                    f"quality gate: rule {rule_id} built no candidates because {objects} failed a blocking "
                    f"check — {reason}"
                )
    failed = outcome.failed()
    if failed:
        raise dg.Failure(
            description="dbt build failed: "
            + "; ".join(f"{r.resource_type} {r.name}: {r.message}" for r in failed),
        )


@dbt_assets(
    manifest=MANIFEST,
    exclude=MARTS,
    name="decision_models",
    dagster_dbt_translator=TRANSLATOR,
    project=actionlayer_dbt,
    pool="duckdb",
)
def decision_models(context: dg.AssetExecutionContext, actionlayer: ActionlayerSettings):
    """Staging, intermediate, one model per rule, and action_candidates with journey context."""
    yield from _run_dbt(context, actionlayer, None, MARTS)


@dbt_assets(
    manifest=MANIFEST,
    select=MARTS,
    name="outcome_marts",
    dagster_dbt_translator=TRANSLATOR,
    project=actionlayer_dbt,
    pool="duckdb",
)
def outcome_marts(context: dg.AssetExecutionContext, actionlayer: ActionlayerSettings):
    """fct_actions and the outcome marts, read from the ledger after dispatch."""
    yield from _run_dbt(context, actionlayer, MARTS, None)


CANDIDATES_KEY = TRANSLATOR.get_asset_spec(
    MANIFEST, "model.actionlayer.action_candidates", actionlayer_dbt
).key


@dg.asset_check(
    asset=CANDIDATES_KEY,
    name="quality_gate",
    description="Fails (ERROR) when a rule built no candidates because an SoR object it reads failed a "
    "blocking check (unreadable, a required column missing, or too many broken rows); names the rules, "
    "the objects and why. The other rules' candidates were built as usual.",
)
def candidates_quality_gate() -> dg.AssetCheckResult:
    with connect(wait_seconds=30) as con:
        blocked = blocked_rules(con)
    return dg.AssetCheckResult(
        passed=not blocked,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "blocked_rules": [rule_id for rule_id, _, _ in blocked],
            "reasons": {rule_id: f"{objects}: {reason}" for rule_id, objects, reason in blocked},
        },
    )
