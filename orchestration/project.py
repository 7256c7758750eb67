"""The dbt project as Dagster sees it; kept apart from the dbt assets, which need the manifest at import."""

from __future__ import annotations

from dagster_dbt import DbtProject

from actionlayer.config import dbt_project_dir, dbt_target_dir
from actionlayer.transform import ensure_manifest

ensure_manifest()
actionlayer_dbt = DbtProject(
    project_dir=dbt_project_dir(), target_path=dbt_target_dir(), profiles_dir=dbt_project_dir()
)
