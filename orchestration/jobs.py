"""Asset jobs: the whole loop, acting on a fresh candidate build, and applying review decisions."""

from __future__ import annotations

import dagster as dg

from orchestration.action_assets import action_ledger, review_decisions

loop_job = dg.define_asset_job(
    "actionlayer_loop",
    selection=dg.AssetSelection.all(),
    description="SoR → raw → dbt rules → candidates → ledger → review → dispatch → outcome marts.",
)
act_on_candidates_job = dg.define_asset_job(
    "act_on_candidates",
    selection=dg.AssetSelection.assets(action_ledger).downstream(),
    description="Propose, review and dispatch from the current candidate build, then refresh the marts.",
)
review_import_job = dg.define_asset_job(
    "review_import",
    selection=dg.AssetSelection.assets(review_decisions).downstream(),
    description="Apply review files from the inbox, dispatch what was approved, refresh the marts.",
)
