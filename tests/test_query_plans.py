"""No model of the dbt project may need a quadratic join: DuckDB's physical plan of every compiled model is checked.

How: the project is compiled once (dbt, in-process) against a temporary DuckDB file that holds every relation the
models read (raw.*, hist.*, the ledger, ops.*), empty; each model's relation is then created from its compiled SQL
in dependency order (empty, so this is quick), and `EXPLAIN (FORMAT JSON)` of each compiled model (staging,
intermediate, rules, quality, candidates, marts, learning, the ephemeral backtest model) and of the SoR views a
backtest replays over (`connectors.history.as_of_relation`) is walked operator by operator.

What fails: a NESTED_LOOP_JOIN, BLOCKWISE_NL_JOIN or CROSS_PRODUCT whose both inputs can grow with the data. Such
a join compares every row of one side with every row of the other (an `or` join condition, `<>`, a cross join),
so its time grows with the product of the sides: minutes at 100k deals, hours at a million. One is allowed when a
side is bounded:
- structurally one row: the side is an ungrouped aggregate (`(select max(as_of) from ops.run_context)`, the scalar
  subquery the macro `as_of()` renders in nearly every model, is one), a constant row (DUMMY_SCAN), or a cross
  product of such rows, seen through projections, filters and limits;
- or every table the side scans is named for that model in ALLOWED_BOUNDED_SIDES, with the reason it stays small
  (a vocabulary of the project, not a table of the customer's records). An entry names the model AND the bounded
  table; the model's other joins are still checked.
PIECEWISE_MERGE_JOIN and IE_JOIN (and ASOF_JOIN) are accepted: DuckDB picks them for joins on one or two range
conditions (`<`, `<=`, `>`, `>=`); they sort both inputs and cost O((n + m) log(n + m)) plus the rows they return,
which is the size of the answer the SQL asks for, not an artefact of the plan.

Why the plans of this small, empty database are the plans of a large one: DuckDB always plans an equality
condition as a HASH_JOIN, whatever the sizes; a condition with no equality (an `or`, `<>`) can only ever be a
nested loop or blockwise loop; a cross join is a CROSS_PRODUCT. The one size-dependent choice is for range
conditions: below `nested_loop_join_threshold` (5 rows) or `merge_join_threshold` (1000 rows) estimated on a side,
DuckDB takes a nested loop instead of a merge or IE join. Both thresholds are set to 0 here, so the planner
chooses as it would on large tables. Statistics propagation is switched off, so empty tables cannot let the
optimizer prune a subtree (and the join in it) as "always empty".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

pytestmark = pytest.mark.slow

AS_OF = datetime(2026, 11, 1, 12, 0, 0)

QUADRATIC_OPERATORS = {"NESTED_LOOP_JOIN", "BLOCKWISE_NL_JOIN", "CROSS_PRODUCT"}
# operators that pass rows through unchanged in number (or fewer): a one-row input stays one row
ROW_PRESERVING = {"PROJECTION", "FILTER", "STREAMING_LIMIT", "LIMIT"}

# (model, schema.table the bounded side scans) -> why that table stays small whatever the size of the SoR.
# Empty: since int_last_touch_by_deal joins by two equi-joins, every loop join of the project has a one-row side
# (the as_of() subquery), which the walker proves bounded by itself. Add an entry only with its reason, e.g.
# ("some_model", "main.int_rule_catalog"): "one row per rule model of the project, not per SoR record".
ALLOWED_BOUNDED_SIDES: dict[tuple[str, str], str] = {}

PLANNER_SETTINGS = (
    # plan range joins as on large inputs (merge / IE join), never as the small-input nested loop
    "set nested_loop_join_threshold = 0",
    "set merge_join_threshold = 0",
    # empty tables must not let the optimizer prove a subtree empty and drop the join in it
    "set disabled_optimizers = 'statistics_propagation'",
)


@dataclass(frozen=True)
class CompiledModel:
    name: str
    path: str
    materialized: str
    relation: str | None
    sql: str
    parents: tuple[str, ...]


def _create_inputs(con: duckdb.DuckDBPyConnection) -> None:
    """Every relation a model reads before the project builds anything, created empty by the code that owns it."""
    from actionlayer import ledger
    from actionlayer.backtest import ensure_tuning_tables
    from actionlayer.contract import OBJECTS, get_object
    from connectors.files import ensure_ops_tables
    from connectors.history import ensure_hist_tables

    con.execute("create schema if not exists raw")
    for name in OBJECTS:
        con.execute(get_object(name).raw_ddl())
    ensure_ops_tables(con)
    ensure_hist_tables(con)
    ledger.ensure_schema(con)
    ensure_tuning_tables(con)
    # as_of() then renders the production form, a scalar subquery on ops.run_context
    con.execute("create or replace table ops.run_context as select cast(? as timestamp) as as_of", [AS_OF])
    # backtest_outcomes reads <target schema>.backtest_windows (actionlayer.backtest writes it during a replay)
    con.execute(
        """create table main.backtest_windows (
            window_id varchar, outcome_kind varchar, record_type varchar, record_id varchar, contact_id varchar,
            window_starts_at timestamp, window_ends_at timestamp)"""
    )


def _compile(work: Path) -> list[CompiledModel]:
    from actionlayer.transform import invoke

    outcome = invoke(
        [
            "compile",
            # the ephemeral backtest model is compiled (and returned) only when selected by name or path
            "--select",
            "path:models/backtest",
            "path:models",
            "--exclude",
            "resource_type:test",
            "resource_type:unit_test",
            "--target-path",
            str(work / "target"),
            "--log-path",
            str(work / "logs"),
            "--quiet",
        ]
    )
    assert outcome.success and outcome.exception is None, f"dbt compile failed: {outcome.exception}"
    models = []
    for item in outcome.result.results:
        node = item.node
        if node.resource_type != "model":
            continue
        models.append(
            CompiledModel(
                name=node.name,
                path=str(node.original_file_path),
                materialized=str(node.config.materialized),
                relation=node.relation_name,
                sql=node.compiled_code or "",
                parents=tuple(p.split(".")[-1] for p in node.depends_on.nodes if p.startswith("model.")),
            )
        )
    return models


def _in_dependency_order(models: list[CompiledModel]) -> list[CompiledModel]:
    by_name = {m.name: m for m in models}
    ordered: list[CompiledModel] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done or name not in by_name:
            return
        done.add(name)
        for parent in by_name[name].parents:
            visit(parent)
        ordered.append(by_name[name])

    for name in sorted(by_name):
        visit(name)
    return ordered


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """model name (or `backtest_sor.<object>`) -> its EXPLAIN (FORMAT JSON) plan."""
    from connectors.history import as_of_relation

    work = tmp_path_factory.mktemp("query_plans")
    db_file = work / "actionlayer.duckdb"
    with duckdb.connect(str(db_file)) as con:
        _create_inputs(con)
    saved = {k: os.environ.get(k) for k in ("ACTIONLAYER_DB", "ACTIONLAYER_DATA")}
    os.environ["ACTIONLAYER_DB"] = str(db_file)
    os.environ["ACTIONLAYER_DATA"] = str(work)
    try:
        models = _compile(work)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    plans: dict[str, Any] = {}
    with duckdb.connect(str(db_file)) as con:
        for setting in PLANNER_SETTINGS:
            con.execute(setting)
        for model in _in_dependency_order(models):
            plans[model.name] = json.loads(con.execute("explain (format json) " + model.sql).fetchall()[0][1])
            if model.materialized in {"view", "table"}:
                con.execute(f"create {model.materialized} {model.relation} as {model.sql}")
        from actionlayer.contract import OBJECTS

        for name in OBJECTS:
            sql = as_of_relation(name, AS_OF)
            plans[f"backtest_sor.{name}"] = json.loads(
                con.execute("explain (format json) " + sql).fetchall()[0][1]
            )
    plans["_models"] = {m.name: m for m in models}
    return plans


# --------------------------------------------------------------------------- reading a plan


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("children", []):
        yield from _walk(child)


def _ctes(roots: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """CTE index -> the plan that materializes it (a CTE node's first child)."""
    found = {}
    for root in roots:
        for node in _walk(root):
            if node["name"] == "CTE" and node.get("children"):
                found[str(node["extra_info"].get("Table Index"))] = node["children"][0]
    return found


def _resolve(node: dict[str, Any], ctes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if node["name"] == "CTE_SCAN":
        return ctes.get(str(node["extra_info"].get("CTE Index")), node)
    return node


def _one_row(node: dict[str, Any], ctes: dict[str, dict[str, Any]]) -> bool:
    node = _resolve(node, ctes)
    while node["name"] in ROW_PRESERVING and len(node.get("children", [])) == 1:
        node = _resolve(node["children"][0], ctes)
    if node["name"] == "CROSS_PRODUCT":  # one row times one row (two scalar subqueries side by side)
        return all(_one_row(child, ctes) for child in node.get("children", []))
    return node["name"] in {"UNGROUPED_AGGREGATE", "DUMMY_SCAN"}


def _tables(
    node: dict[str, Any], ctes: dict[str, dict[str, Any]], seen: frozenset[str] = frozenset()
) -> set[str]:
    """The tables (schema.table) a subtree scans, through the CTEs it reads."""
    found: set[str] = set()
    for inner in _walk(node):
        if inner["name"] == "CTE_SCAN":
            index = str(inner["extra_info"].get("CTE Index"))
            if index in ctes and index not in seen:
                found |= _tables(ctes[index], ctes, seen | {index})
        table = inner.get("extra_info", {}).get("Table")
        if table and inner["name"].endswith("_SCAN"):
            found.add(".".join(str(table).split(".")[-2:]))
    if not found and not _one_row(node, ctes):
        found.add("<unnamed rows>")
    return found


def quadratic_joins(
    model: str, roots: list[dict[str, Any]], allowed: dict[tuple[str, str], str] = ALLOWED_BOUNDED_SIDES
) -> list[str]:
    """Each join of the plan whose both sides can grow with the data, described for the failure message."""
    ctes = _ctes(roots)
    flagged = []
    for root in roots:
        for node in _walk(root):
            if node["name"] not in QUADRATIC_OPERATORS:
                continue
            sides = node.get("children", [])
            bounded = False
            described = []
            for side in sides:
                if _one_row(side, ctes):
                    bounded = True
                    continue
                tables = _tables(side, ctes)
                described.append(" + ".join(sorted(tables)))
                if all((model, table) in allowed for table in tables):
                    bounded = True
            if not bounded:
                info = node.get("extra_info", {})
                condition = info.get("Condition") or info.get("Conditions") or "(no condition)"
                flagged.append(f"{model}: {node['name']} on {condition} over [{'] x ['.join(described)}]")
    return flagged


# --------------------------------------------------------------------------- the checks


def test_every_layer_is_explained(explained: dict[str, Any]) -> None:
    models = explained["_models"]
    folders = {Path(m.path).parts[1] for m in models.values()}
    assert {
        "staging",
        "intermediate",
        "rules",
        "quality",
        "candidates",
        "marts",
        "learning",
        "backtest",
    } <= folders
    assert all(name in explained for name in models)
    assert "int_last_touch_by_deal" in models and "backtest_outcomes" in models


def test_no_model_plan_holds_a_quadratic_join(explained: dict[str, Any]) -> None:
    flagged = [
        line
        for name, plan in sorted(explained.items())
        if name != "_models"
        for line in quadratic_joins(name, plan)
    ]
    assert not flagged, "joins that grow with the product of both sides:\n" + "\n".join(flagged)


def test_allow_list_entries_are_used(explained: dict[str, Any]) -> None:
    """An entry whose join is gone must go too, or it would silently exempt a future join over that table."""
    models = explained["_models"]
    for model, table in ALLOWED_BOUNDED_SIDES:
        assert model in models, f"allow-list names {model}, which the project no longer has"
        ctes = _ctes(explained[model])
        sides = [
            _tables(side, ctes)
            for root in explained[model]
            for node in _walk(root)
            if node["name"] in QUADRATIC_OPERATORS
            for side in node.get("children", [])
        ]
        assert any(table in side for side in sides), (
            f"{model} no longer joins {table} by a loop: drop the entry"
        )


def test_the_guard_sees_an_or_join_and_a_cross_join() -> None:
    """The walker flags the shapes it exists for, and lets a one-row side and a range join through."""
    with duckdb.connect() as con:
        for setting in PLANNER_SETTINGS:
            con.execute(setting)
        con.execute("create table deals (deal_id varchar, contact_id varchar, seen_at timestamp)")
        con.execute("create table touches (deal_id varchar, contact_id varchar, seen_at timestamp)")
        con.execute("create table run_context (as_of timestamp)")

        def plan(sql: str) -> list[dict[str, Any]]:
            return json.loads(con.execute("explain (format json) " + sql).fetchall()[0][1])

        or_join = (
            "select * from deals d join touches t on t.deal_id = d.deal_id or t.contact_id = d.contact_id"
        )
        assert quadratic_joins("m", plan(or_join))
        assert quadratic_joins("m", plan("select * from deals cross join touches"))
        assert quadratic_joins("m", plan("select * from deals d join touches t on t.deal_id <> d.deal_id"))
        assert not quadratic_joins(
            "m", plan("select * from deals where seen_at <= (select max(as_of) from run_context)")
        )
        assert not quadratic_joins("m", plan("select * from deals d join touches t on t.seen_at < d.seen_at"))
        assert not quadratic_joins("m", plan("select * from deals d join touches t using (deal_id)"))
        # an allow-list entry exempts its table for its model only
        con.execute("create table stages (stage varchar)")
        crossed = plan("select * from deals cross join stages")
        allowed = {("m", "main.stages"): "a vocabulary"}
        assert not quadratic_joins("m", crossed, allowed)
        assert quadratic_joins("other", crossed, allowed)
        assert quadratic_joins("m", plan("select * from deals cross join touches"), allowed)
