"""Backtest a rule on the SoR history, and tune one of its thresholds.

`backtest` replays a rule as of each day of a period: the SoR as it was known at that day's pass time
(`hist.*` through `connectors.history.as_of_relation`), the rule and the whole journey context of
`action_candidates` (suppression, cooldown, frequency cap, holdout, the quality gate; prior ledger state read
only), and reports what the rule would have fired, how it collided with the journey context, and what happened
to those records afterwards (the rule's outcome in the window after the day it first fired, from the history).
Nothing is sent, nothing is proposed, the ledger and every table of the live loop stay as they were.

`tune` runs the same replay once per value of a dbt var the rule reads, stores the raw results in
`ops.rule_tuning_runs` / `ops.rule_tuning_results` and builds `main.mart_rule_tuning`.

How a replay works (fast path, no dbt run per day):
1. The dbt project is compiled ONCE per set of vars into the scratch schema `backtest` (profile target
   `backtest`) with `sor_schema = backtest_sor` (the `raw` source then reads views of `hist.*`) and
   `run_context_schema = backtest` (the macro `as_of()` then reads `backtest.run_context`, never ops.run_context).
2. For each day: `backtest.run_context` is set to the day's pass time, `backtest_sor.<object>` is re-pointed at
   `as_of_relation(object, pass time)`, and the compiled SQL of the nodes `action_candidates` needs is executed
   in dependency order with DuckDB directly (views once, tables per day; tables that depend neither on the SoR
   nor on the pass time once). The rule's rows of `backtest.action_candidates` are kept in `backtest.backtest_fires`.
3. After the last day, one outcome window per distinct would-be action (opening at the pass that first fired
   it) goes to `backtest.backtest_windows`, and the ephemeral model `backtest_outcomes` (the macro
   `outcome_evidence`, the same evidence as `fct_outcomes`) evaluates them as of the latest load the history
   knows. Windows still open then are reported as open, not as failures.
The scratch schemas are dropped at the end (unless asked to keep them).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb

from actionlayer import config
from actionlayer.contract import OBJECTS
from actionlayer.db import connect, transaction
from actionlayer.db import run as _run

SCRATCH_SCHEMA = "backtest"
SOR_VIEWS_SCHEMA = "backtest_sor"
DBT_TARGET = "backtest"
OUTCOMES_MODEL = "backtest_outcomes"
CANDIDATES_MODEL = "action_candidates"
RULE_CANDIDATES_MODEL = "int_rule_candidates"
RULE_GATE_MODEL = "int_rule_gate"
DEFAULT_PASS_TIME = time(9, 0)
DEFAULT_PERIOD_DAYS = 28
TUNING_RUNS = "ops.rule_tuning_runs"
TUNING_RESULTS = "ops.rule_tuning_results"
TUNING_MART = "main.mart_rule_tuning"

# (phase, done, total, note): called before a phase starts (done 0) and after each replayed day
ProgressFn = Callable[[str, int, int, str], None]

# journey_reason of action_candidates -> collision kind (held_out is the holdout, not a collision)
COLLISION_KIND_SQL = """case
    when journey_status = 'eligible' then null
    when journey_status = 'held_out' then 'held_out'
    when journey_reason like 'do_not_contact%' then 'do_not_contact'
    when journey_reason like 'suppressed: contact has no email%' then 'no_email'
    when journey_reason like 'suppressed: open urgent ticket%' then 'open_ticket'
    when journey_reason like 'suppressed: overdue invoice%' then 'overdue_invoice'
    when journey_reason like 'cooldown%' then 'cooldown'
    when journey_reason like 'frequency_cap%' then 'frequency_cap'
    else 'other'
end"""
COLLISION_KINDS = (
    "do_not_contact",
    "no_email",
    "open_ticket",
    "overdue_invoice",
    "cooldown",
    "frequency_cap",
    "other",
)

_VAR_USE = re.compile(r"""\bvar\(\s*['"]([A-Za-z_][A-Za-z0-9_]*)['"]""")
_RANGE = re.compile(r"^\s*(-?[0-9.]+)\s*\.\.\s*(-?[0-9.]+)\s*(?::\s*([0-9.]+))?\s*$")


class BacktestError(ValueError):
    """The backtest or tuning cannot run as asked; the message says why and what would work."""


# --------------------------------------------------------------------------- what the project offers


@dataclass(frozen=True)
class RuleModel:
    """A rule model as the dbt manifest describes it."""

    rule_id: str
    model: str
    unique_id: str
    outcome_kind: str | None
    outcome_window_days: int | None
    outcome_description: str | None
    vars_used: tuple[str, ...]
    in_candidates: bool


def rule_models(manifest: dict[str, Any] | None = None) -> dict[str, RuleModel]:
    """Every rule model of the project (meta rule_id), from the dbt manifest (parsed when stale)."""
    if manifest is None:
        from actionlayer.transform import ensure_manifest

        manifest = json.loads(ensure_manifest().read_text(encoding="utf-8"))
    nodes = manifest.get("nodes", {})
    union = nodes.get(f"model.actionlayer.{RULE_CANDIDATES_MODEL}", {})
    in_union = set((union.get("depends_on") or {}).get("nodes") or [])
    rules: dict[str, RuleModel] = {}
    for unique_id, node in nodes.items():
        meta = (node.get("config") or {}).get("meta") or node.get("meta") or {}
        if node.get("resource_type") != "model" or not node.get("name", "").startswith("rule_"):
            continue
        if not meta.get("rule_id"):
            continue
        outcome = meta.get("outcome") or {}
        window = outcome.get("window_days")
        rules[meta["rule_id"]] = RuleModel(
            rule_id=meta["rule_id"],
            model=node["name"],
            unique_id=unique_id,
            outcome_kind=outcome.get("kind"),
            outcome_window_days=int(window) if window is not None else None,
            outcome_description=outcome.get("description"),
            vars_used=tuple(sorted(set(_VAR_USE.findall(node.get("raw_code") or "")))),
            in_candidates=unique_id in in_union,
        )
    return rules


def project_vars() -> dict[str, Any]:
    """The vars declared in dbt_project.yml, with their values."""
    import yaml

    text = (config.dbt_project_dir() / "dbt_project.yml").read_text(encoding="utf-8")
    return dict((yaml.safe_load(text) or {}).get("vars") or {})


def resolve_rule(rule_id: str, rules: dict[str, RuleModel] | None = None) -> RuleModel:
    rules = rule_models() if rules is None else rules
    rule = rules.get(rule_id)
    if rule is None:
        raise BacktestError(
            f"unknown rule {rule_id!r}; the project has: {', '.join(sorted(rules)) or 'none'}"
        )
    if not rule.in_candidates:
        raise BacktestError(
            f"rule {rule_id!r} ({rule.model}) is not in the candidates union "
            f"(models/candidates/{RULE_CANDIDATES_MODEL}.sql), so no pass would ever act on it"
        )
    return rule


def resolve_param(rule: RuleModel, param: str) -> Any:
    """The var's current value in dbt_project.yml; refuses a var the project or the rule does not have."""
    declared = project_vars()
    if param not in declared:
        raise BacktestError(
            f"unknown var {param!r}: dbt_project.yml declares {', '.join(sorted(declared)) or 'no vars'}"
        )
    if param not in rule.vars_used:
        uses = ", ".join(rule.vars_used) or "no var"
        raise BacktestError(
            f"rule {rule.rule_id!r} does not read var {param!r} (models/rules/{rule.model}.sql uses {uses})"
        )
    return declared[param]


# --------------------------------------------------------------------------- parsing user input


def parse_day(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError as exc:
        raise BacktestError(f"{flag} {text!r} is not a date: use YYYY-MM-DD, e.g. 2026-11-02") from exc


def parse_pass_time(text: str) -> time:
    try:
        moment = time.fromisoformat(text.strip())
    except ValueError as exc:
        raise BacktestError(f"--at {text!r} is not a time of day: use HH:MM (UTC), e.g. 09:00") from exc
    if moment.tzinfo is not None:
        raise BacktestError(f"--at {text!r}: give the pass time in UTC without an offset, e.g. 09:00")
    return moment


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise BacktestError(f"value {text.strip()!r} is not a number") from exc
    if not math.isfinite(value):
        raise BacktestError(f"value {text.strip()!r} is not a finite number")
    return value


def _clean_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def parse_values(items: Sequence[str]) -> list[int | float]:
    """`--values` as numbers: '3,7,14', repeated options, or a range 'A..B' / 'A..B:step' (inclusive)."""
    values: list[int | float] = []
    for item in items:
        for part in (p for p in item.split(",") if p.strip()):
            match = _RANGE.match(part)
            if match:
                low, high = _number(match.group(1)), _number(match.group(2))
                step = _number(match.group(3)) if match.group(3) else 1.0
                if step <= 0 or high < low:
                    raise BacktestError(f"range {part.strip()!r} must go upwards with a positive step")
                count = int(math.floor((high - low) / step + 1e-9)) + 1
                if count > 200:
                    raise BacktestError(f"range {part.strip()!r} gives {count} values; at most 200")
                values += [_clean_number(round(low + i * step, 10)) for i in range(count)]
            else:
                values.append(_clean_number(_number(part)))
    unique = list(dict.fromkeys(values))
    if not unique:
        raise BacktestError("no values given: e.g. --values 3,7,14 or --values 3..21:3")
    return unique


# --------------------------------------------------------------------------- the history and the period


@dataclass(frozen=True)
class HistoryRange:
    """What the SoR history covers: the first and the latest moment a load recorded."""

    first: datetime | None
    last: datetime | None
    rows: dict[str, int]

    @property
    def empty_tables(self) -> list[str]:
        return [f"hist.{name}" for name, count in self.rows.items() if count == 0]

    def describe(self) -> str:
        if self.first is None or self.last is None:
            return (
                "every hist.* table is empty ("
                + ", ".join(self.empty_tables)
                + "); run the loop or a sync first"
            )
        text = f"the history covers {self.first:%Y-%m-%d %H:%M} to {self.last:%Y-%m-%d %H:%M}"
        if self.empty_tables:
            text += f" (empty: {', '.join(self.empty_tables)})"
        return text


def history_range(con: duckdb.DuckDBPyConnection) -> HistoryRange:
    existing = {
        name
        for (name,) in _run(
            con, "select table_name from information_schema.tables where table_schema = 'hist'"
        )
    }
    first: datetime | None = None
    last: datetime | None = None
    rows: dict[str, int] = {}
    for name in OBJECTS:
        if name not in existing:
            rows[name] = 0
            continue
        low, high, count = _run(
            con,
            f"select min(_valid_from), max(greatest(_valid_from, coalesce(_valid_to, _valid_from))), count(*) "
            f"from hist.{name}",
        )[0]
        rows[name] = int(count)
        if low is not None:
            first = low if first is None else min(first, low)
            last = high if last is None else max(last, high)
    loaded = _run(
        con,
        "select count(*) from information_schema.tables where table_schema = 'ops' and table_name = 'load_log'",
    )[0][0]
    if loaded and first is not None:
        latest_load = _run(
            con, "select max(as_of) from ops.load_log where status in ('loaded', 'unchanged')"
        )[0][0]
        if latest_load is not None and last is not None:
            last = max(last, latest_load)
    return HistoryRange(first=first, last=last, rows=rows)


@dataclass(frozen=True)
class Period:
    start: date
    end: date
    pass_time: time
    moments: tuple[datetime, ...]
    skipped: tuple[date, ...]

    @property
    def days(self) -> int:
        return len(self.moments)


def resolve_period(history: HistoryRange, start: date | None, end: date | None, pass_time: time) -> Period:
    """The days to replay: every day of [start, end] whose pass time the history covers (from the first load
    to one day after the latest). Defaults: the last DEFAULT_PERIOD_DAYS days of the history."""
    if start is not None and end is not None and start > end:
        raise BacktestError(f"--from {start} is after --to {end}")
    if history.first is None or history.last is None:
        raise BacktestError(f"no SoR history to replay: {history.describe()}")
    if end is None:
        end = history.last.date()
        if start is not None and start > end:
            raise BacktestError(
                f"--from {start} is after the day of the latest load ({end}): {history.describe()}"
            )
    start = start or max(history.first.date(), end - timedelta(days=DEFAULT_PERIOD_DAYS - 1))
    if start > end:
        raise BacktestError(f"--to {end} is before the first load ({history.first:%Y-%m-%d %H:%M})")
    moments, skipped = [], []
    day = start
    while day <= end:
        moment = datetime.combine(day, pass_time)
        if history.first <= moment < history.last + timedelta(days=1):
            moments.append(moment)
        else:
            skipped.append(day)
        day += timedelta(days=1)
    if not moments:
        raise BacktestError(
            f"no SoR history between {start} and {end} at {pass_time:%H:%M} UTC: {history.describe()}"
        )
    return Period(start, end, pass_time, tuple(moments), tuple(skipped))


# --------------------------------------------------------------------------- compiling the replay


@dataclass(frozen=True)
class CompiledNode:
    unique_id: str
    name: str
    materialized: str
    relation: str
    sql: str
    parents: tuple[str, ...]


@dataclass
class ReplayPlan:
    """The compiled SQL of every node a replayed pass needs, in dependency order."""

    variables: dict[str, Any]
    nodes: list[CompiledNode]
    outcomes_sql: str
    per_day: set[str]
    compile_seconds: float = 0.0

    def relation(self, name: str) -> str:
        return next(node.relation for node in self.nodes if node.name == name)


def _scratch_target_dir() -> Path:
    return config.data_dir() / "backtest" / "dbt_target"


def _replay_vars(variables: dict[str, Any]) -> dict[str, Any]:
    return {"sor_schema": SOR_VIEWS_SCHEMA, "run_context_schema": SCRATCH_SCHEMA, **variables}


def parse_replay_project(variables: dict[str, Any]) -> Any:
    """Parse the project once for the backtest target; `compile_plan` can then compile it with other values of
    a threshold var without parsing again (about 0.5 s instead of 2 s per value). A var only changes the SQL a
    model renders at compile time; one that changed refs or configs would need its own parse."""
    from actionlayer.transform import invoke

    outcome = invoke(
        [
            "parse",
            "--target",
            DBT_TARGET,
            "--target-path",
            str(_scratch_target_dir()),
            "--vars",
            json.dumps(_replay_vars(variables)),
            "--quiet",
        ]
    )
    if outcome.exception is not None or not outcome.success or outcome.result is None:
        raise BacktestError(f"dbt could not parse the project: {outcome.exception or 'see the dbt log'}")
    return outcome.result


def compile_plan(variables: dict[str, Any], manifest: Any = None) -> ReplayPlan:
    """Compile the decision layers (+action_candidates) and the outcome model into the scratch schema, with
    these vars on top of the backtest's own (sor_schema, run_context_schema). One dbt invocation; with a
    `manifest` from `parse_replay_project`, without parsing."""
    import time as clock

    from actionlayer.transform import invoke

    all_vars = _replay_vars(variables)
    started = clock.monotonic()
    # path:models/backtest comes first: dbt compile prints the SQL of nodes named in its first selector
    outcome = invoke(
        [
            "compile",
            "--select",
            "path:models/backtest",
            f"+{CANDIDATES_MODEL}",
            "--exclude",
            "resource_type:test",
            "resource_type:unit_test",
            "--target",
            DBT_TARGET,
            "--target-path",
            str(_scratch_target_dir()),
            "--vars",
            json.dumps(all_vars),
            "--quiet",
        ],
        manifest=manifest,
    )
    results = list(getattr(outcome.result, "results", None) or [])
    failed = [f"{r.node.name}: {r.message}" for r in results if str(r.status) in {"error", "fail"}]
    if outcome.exception is not None or not outcome.success or failed:
        detail = "; ".join(failed) or str(outcome.exception or "see the dbt log")
        raise BacktestError(f"dbt could not compile the replay: {detail}")
    found: dict[str, CompiledNode] = {}
    outcomes_sql = ""
    for item in results:
        node = item.node
        if node.resource_type != "model":
            continue
        materialized = str(node.config.materialized)
        if node.name == OUTCOMES_MODEL:
            outcomes_sql = node.compiled_code or ""
            continue
        if materialized not in {"view", "table"}:
            raise BacktestError(
                f"model {node.name} is materialized as {materialized}; the replay runs views and tables"
            )
        found[node.unique_id] = CompiledNode(
            unique_id=node.unique_id,
            name=node.name,
            materialized=materialized,
            relation=str(node.relation_name),
            sql=node.compiled_code or "",
            parents=tuple(p for p in node.depends_on.nodes if p.startswith("model.")),
        )
    if not outcomes_sql or not any(n.name == CANDIDATES_MODEL for n in found.values()):
        raise BacktestError(
            f"dbt compiled no {OUTCOMES_MODEL} / {CANDIDATES_MODEL}; is the project complete?"
        )
    ordered = _topological(found)
    markers = (f'"{SOR_VIEWS_SCHEMA}".', f'"{SCRATCH_SCHEMA}"."run_context"')
    per_day: set[str] = set()
    for node in ordered:
        if any(marker in node.sql for marker in markers) or any(p in per_day for p in node.parents):
            per_day.add(node.unique_id)
    return ReplayPlan(all_vars, ordered, outcomes_sql, per_day, clock.monotonic() - started)


def _topological(nodes: dict[str, CompiledNode]) -> list[CompiledNode]:
    ordered: list[CompiledNode] = []
    done: set[str] = set()

    def visit(unique_id: str, path: tuple[str, ...]) -> None:
        if unique_id in done or unique_id not in nodes:
            return
        if unique_id in path:
            raise BacktestError(f"dependency cycle at {unique_id}")
        for parent in nodes[unique_id].parents:
            visit(parent, (*path, unique_id))
        done.add(unique_id)
        ordered.append(nodes[unique_id])

    for unique_id in sorted(nodes):
        visit(unique_id, ())
    return ordered


# --------------------------------------------------------------------------- the scratch schemas


def _scratch(name: str) -> str:
    return f"{SCRATCH_SCHEMA}.{name}"


def _prepare_scratch(con: duckdb.DuckDBPyConnection, moment: datetime) -> None:
    """Empty scratch schemas with what compiling needs to find (run_context, the windows table, SoR views)."""
    from connectors.files import ensure_ops_tables
    from connectors.history import ensure_hist_tables

    ensure_ops_tables(con)
    ensure_hist_tables(con)
    _run(con, f"drop schema if exists {SCRATCH_SCHEMA} cascade")
    _run(con, f"drop schema if exists {SOR_VIEWS_SCHEMA} cascade")
    _run(con, f"create schema {SCRATCH_SCHEMA}")
    _run(con, f"create schema {SOR_VIEWS_SCHEMA}")
    _set_moment(con, moment)
    _run(
        con,
        f"""create table {_scratch("backtest_windows")} (
            window_id varchar, outcome_kind varchar, record_type varchar, record_id varchar, contact_id varchar,
            window_starts_at timestamp, window_ends_at timestamp)""",
    )
    _run(
        con,
        f"""create table {_scratch("backtest_fires")} (
            day date, as_of timestamp, action_id varchar, record_type varchar, record_id varchar,
            contact_id varchar, signal_key varchar, signal_at timestamp, journey_status varchar,
            journey_reason varchar, collision_kind varchar)""",
    )


def _set_moment(con: duckdb.DuckDBPyConnection, moment: datetime) -> None:
    """Point the replay at `moment`: the run_context as_of() reads, and the SoR as the history knew it then."""
    from connectors.history import as_of_relation

    _run(
        con,
        f"create or replace table {_scratch('run_context')} as select cast(? as timestamp) as as_of",
        [moment],
    )
    for name in OBJECTS:
        _run(con, f"create or replace view {SOR_VIEWS_SCHEMA}.{name} as {as_of_relation(name, moment)}")


def _drop_scratch(con: duckdb.DuckDBPyConnection) -> None:
    _run(con, f"drop schema if exists {SCRATCH_SCHEMA} cascade")
    _run(con, f"drop schema if exists {SOR_VIEWS_SCHEMA} cascade")


# --------------------------------------------------------------------------- one replay


@dataclass
class DayResult:
    day: date
    as_of: datetime
    fired: int
    new: int
    eligible: int
    held_out: int
    suppressed: int
    blocked_reason: str | None = None


@dataclass
class WouldBeAction:
    action_id: str
    record_type: str
    record_id: str
    contact_id: str | None
    signal_key: str | None
    first_fired_at: datetime
    last_fired_at: datetime
    fire_days: int
    journey_status: str
    journey_reason: str | None
    collision_kind: str | None
    outcome_window_ends_at: datetime | None
    outcome_window_closed: bool
    outcome_status: str
    outcome_at: datetime | None


@dataclass
class BacktestReport:
    rule_id: str
    variables: dict[str, Any]
    period_from: date
    period_to: date
    pass_time: time
    skipped_days: list[date]
    outcome_kind: str | None
    outcome_window_days: int | None
    outcomes_evaluated_at: datetime
    days: list[DayResult] = field(default_factory=list)
    actions: list[WouldBeAction] = field(default_factory=list)
    compile_seconds: float = 0.0
    replay_seconds: float = 0.0

    @property
    def fires(self) -> int:
        """Distinct would-be actions (one proposal each), however many days they fired."""
        return len(self.actions)

    @property
    def candidate_days(self) -> int:
        return sum(day.fired for day in self.days)

    @property
    def blocked_days(self) -> int:
        return sum(1 for day in self.days if day.blocked_reason)

    def journey_counts(self) -> dict[str, int]:
        return dict(Counter(action.journey_status for action in self.actions))

    def collisions(self) -> dict[str, int]:
        counts = Counter(a.collision_kind for a in self.actions if a.collision_kind not in (None, "held_out"))
        return {kind: counts[kind] for kind in COLLISION_KINDS if counts[kind]}

    def outcome_counts(self) -> dict[str, int]:
        """Per outcome status (as fct_outcomes: achieved, not_achieved, open, not_applicable), plus `closed`
        (windows closed by outcomes_evaluated_at) and `closed_achieved`: the outcome rate's two counts."""
        counts = Counter(action.outcome_status for action in self.actions)
        result = {status: counts[status] for status in ("achieved", "not_achieved", "open", "not_applicable")}
        closed = [a for a in self.actions if a.outcome_window_closed]
        result["closed"] = len(closed)
        result["closed_achieved"] = sum(1 for a in closed if a.outcome_status == "achieved")
        return result

    @property
    def outcome_rate(self) -> float | None:
        """Achieved among closed windows only: an open window is neither a success nor a failure yet."""
        counts = self.outcome_counts()
        return counts["closed_achieved"] / counts["closed"] if counts["closed"] else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            fires=self.fires,
            candidate_days=self.candidate_days,
            replayed_days=len(self.days),
            blocked_days=self.blocked_days,
            journey=self.journey_counts(),
            collisions=self.collisions(),
            outcomes=self.outcome_counts(),
            outcome_rate=self.outcome_rate,
        )
        return _jsonable(data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return value


def _replay(
    con: duckdb.DuckDBPyConnection,
    plan: ReplayPlan,
    rule: RuleModel,
    period: Period,
    label: str,
    progress: ProgressFn | None,
) -> list[DayResult]:
    candidates = plan.relation(CANDIDATES_MODEL)
    rule_candidates = plan.relation(RULE_CANDIDATES_MODEL)
    gate = plan.relation(RULE_GATE_MODEL)
    days: list[DayResult] = []
    seen: set[str] = set()
    for index, moment in enumerate(period.moments):
        with transaction(con):
            _set_moment(con, moment)
            for node in plan.nodes:
                # views bind at query time: created once; tables per day when they read the SoR or the pass time
                if index and (node.materialized == "view" or node.unique_id not in plan.per_day):
                    continue
                kind = "view" if node.materialized == "view" else "table"
                _run(con, f"create or replace {kind} {node.relation} as (\n{node.sql}\n)")
            _run(
                con,
                f"""insert into {_scratch("backtest_fires")}
                select cast(? as date), cast(? as timestamp), c.action_id, c.record_type, c.record_id, c.contact_id,
                       r.signal_key, c.signal_at, c.journey_status, c.journey_reason, {COLLISION_KIND_SQL}
                from {candidates} as c
                join {rule_candidates} as r using (action_id)
                where c.rule_id = ?""",
                [moment.date(), moment, rule.rule_id],
            )
            fired = _run(
                con,
                f"select action_id, journey_status from {_scratch('backtest_fires')} where as_of = ?",
                [moment],
            )
            blocked = _run(
                con, f"select blocked_reason from {gate} where rule_id = ? and blocked", [rule.rule_id]
            )
        statuses = Counter(status for _, status in fired)
        new = {action_id for action_id, _ in fired} - seen
        seen |= new
        days.append(
            DayResult(
                day=moment.date(),
                as_of=moment,
                fired=len(fired),
                new=len(new),
                eligible=statuses["eligible"],
                held_out=statuses["held_out"],
                suppressed=statuses["suppressed"],
                blocked_reason=blocked[0][0] if blocked else None,
            )
        )
        if progress:
            progress(label, index + 1, period.days, f"{moment:%Y-%m-%d}: {len(fired)} fired, {len(new)} new")
    return days


def _evaluate_outcomes(
    con: duckdb.DuckDBPyConnection, plan: ReplayPlan, rule: RuleModel, evaluated_at: datetime
) -> None:
    """One window per distinct would-be action, evaluated by the backtest_outcomes model as of `evaluated_at`."""
    _run(
        con,
        f"""create or replace table {_scratch("backtest_actions")} as
        select action_id,
               arg_min(record_type, as_of) as record_type,
               arg_min(record_id, as_of) as record_id,
               arg_min(contact_id, as_of) as contact_id,
               arg_min(signal_key, as_of) as signal_key,
               min(as_of) as first_fired_at,
               max(as_of) as last_fired_at,
               count(*) as fire_days,
               arg_min(journey_status, as_of) as journey_status,
               arg_min(journey_reason, as_of) as journey_reason,
               arg_min(collision_kind, as_of) as collision_kind
        from {_scratch("backtest_fires")}
        group by action_id""",
    )
    _run(con, f"delete from {_scratch('backtest_windows')}")
    _run(
        con,
        f"""insert into {_scratch("backtest_windows")}
        select action_id, cast(? as varchar), record_type, record_id, contact_id, first_fired_at,
               first_fired_at + to_days(cast(? as integer))
        from {_scratch("backtest_actions")}""",
        [rule.outcome_kind, rule.outcome_window_days],
    )
    with transaction(con):
        _set_moment(con, evaluated_at)
        _run(
            con,
            f"create or replace table {_scratch('backtest_action_outcomes')} as (\n{plan.outcomes_sql}\n)",
        )


def _read_actions(con: duckdb.DuckDBPyConnection) -> list[WouldBeAction]:
    cursor = con.execute(
        f"""select a.action_id, a.record_type, a.record_id, a.contact_id, a.signal_key, a.first_fired_at,
                   a.last_fired_at, a.fire_days, a.journey_status, a.journey_reason, a.collision_kind,
                   o.window_ends_at, coalesce(o.window_closed, false), coalesce(o.outcome_status, 'not_applicable'),
                   o.outcome_at
            from {_scratch("backtest_actions")} as a
            left join {_scratch("backtest_action_outcomes")} as o on o.window_id = a.action_id
            order by a.first_fired_at, a.record_id, a.action_id"""
    )
    return [WouldBeAction(*row) for row in cursor.fetchall()]


def _run_one(
    con_factory: Callable[[], Any],
    rule: RuleModel,
    period: Period,
    history: HistoryRange,
    variables: dict[str, Any],
    label: str,
    progress: ProgressFn | None,
    after_replay: Callable[[duckdb.DuckDBPyConnection, BacktestReport], None] | None = None,
    manifest: Any = None,
) -> BacktestReport:
    import time as clock

    if progress:
        progress(label, 0, period.days, "compiling")
    with con_factory() as con:
        _prepare_scratch(con, period.moments[0])
    # no connection is held while dbt compiles (dbt opens the file itself)
    plan = compile_plan(variables, manifest)
    assert history.last is not None
    report = BacktestReport(
        rule_id=rule.rule_id,
        variables=dict(variables),
        period_from=period.start,
        period_to=period.end,
        pass_time=period.pass_time,
        skipped_days=list(period.skipped),
        outcome_kind=rule.outcome_kind,
        outcome_window_days=rule.outcome_window_days,
        outcomes_evaluated_at=history.last,
        compile_seconds=plan.compile_seconds,
    )
    started = clock.monotonic()
    with con_factory() as con:
        report.days = _replay(con, plan, rule, period, label, progress)
        _evaluate_outcomes(con, plan, rule, history.last)
        report.actions = _read_actions(con)
        if after_replay is not None:
            after_replay(con, report)
    report.replay_seconds = clock.monotonic() - started
    return report


def _connection_factory() -> Callable[[], Any]:
    return lambda: connect(wait_seconds=30)


def backtest(
    rule_id: str,
    start: date | None = None,
    end: date | None = None,
    *,
    pass_time: time = DEFAULT_PASS_TIME,
    variables: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    keep_scratch: bool = False,
) -> BacktestReport:
    """Replay `rule_id` as of each day of [start, end] at `pass_time` (UTC) over the SoR history.

    Reads the ledger and the history, writes only the scratch schemas (dropped at the end unless
    `keep_scratch`); nothing is proposed or sent.
    """
    rule = resolve_rule(rule_id)
    for name in variables or {}:
        resolve_param(rule, name)
    factory = _connection_factory()
    with factory() as con:
        history = history_range(con)
    period = resolve_period(history, start, end, pass_time)
    try:
        return _run_one(factory, rule, period, history, dict(variables or {}), f"replay {rule_id}", progress)
    finally:
        if not keep_scratch:
            with factory() as con:
                _drop_scratch(con)


# --------------------------------------------------------------------------- tuning


@dataclass
class TuningReport:
    run_id: str
    rule_id: str
    param: str
    current_value: Any
    values: list[int | float]
    reports: dict[int | float, BacktestReport]
    mart_rows: list[dict[str, Any]]
    ledger_outcomes_available: bool

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "run_id": self.run_id,
                "rule_id": self.rule_id,
                "param": self.param,
                "current_value": self.current_value,
                "values": self.values,
                "ledger_outcomes_available": self.ledger_outcomes_available,
                "mart_rule_tuning": self.mart_rows,
            }
        )


def ensure_tuning_tables(con: duckdb.DuckDBPyConnection) -> None:
    _run(con, "create schema if not exists ops")
    _run(
        con,
        f"""create table if not exists {TUNING_RUNS} (
            run_id varchar not null,
            tuned_at timestamp not null,
            rule_id varchar not null,
            param varchar not null,
            value double not null,
            current_value double,
            is_current_value boolean not null,
            period_from date not null,
            period_to date not null,
            pass_time varchar not null,
            replayed_days integer not null,
            skipped_days integer not null,
            blocked_days integer not null,
            candidate_days integer not null,
            outcomes_evaluated_at timestamp,
            ledger_outcomes_available boolean not null
        )""",
    )
    _run(
        con,
        f"""create table if not exists {TUNING_RESULTS} (
            run_id varchar not null,
            rule_id varchar not null,
            param varchar not null,
            value double not null,
            action_id varchar not null,
            record_type varchar,
            record_id varchar,
            contact_id varchar,
            signal_key varchar,
            first_fired_at timestamp,
            last_fired_at timestamp,
            fire_days integer,
            journey_status varchar,
            journey_reason varchar,
            collision_kind varchar,
            outcome_kind varchar,
            outcome_window_ends_at timestamp,
            outcome_window_closed boolean,
            outcome_status varchar,
            outcome_at timestamp,
            ledger_action_found boolean,
            ledger_arm_group varchar,
            ledger_escalated boolean,
            ledger_outcome_window_closed boolean,
            ledger_outcome_status varchar
        )""",
    )


def _table_exists(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    return bool(
        _run(
            con,
            "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
            [schema, name],
        )[0][0]
    )


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _store_value(
    run_id: str, tuned_at: datetime, param: str, value: int | float, current: Any, ledger: bool
) -> Callable[[duckdb.DuckDBPyConnection, BacktestReport], None]:
    """After one value's replay: its per-action results (joined with the real ledger's outcomes of the same
    action ids from main.fct_outcomes, when that mart exists) and its run row, in one transaction."""

    def store(con: duckdb.DuckDBPyConnection, report: BacktestReport) -> None:
        ensure_tuning_tables(con)
        real = (
            "(select action_id, arm_group, escalated, outcome_window_closed, outcome_status "
            "from main.fct_outcomes where rule_id = ?)"
            if ledger
            else "(select cast(null as varchar) as action_id, cast(null as varchar) as arm_group, "
            "cast(null as boolean) as escalated, cast(null as boolean) as outcome_window_closed, "
            "cast(null as varchar) as outcome_status where ? is null)"
        )
        current_value = _as_float(current)
        with transaction(con):
            _run(
                con,
                f"""insert into {TUNING_RESULTS}
                select ?, ?, ?, ?, a.action_id, a.record_type, a.record_id, a.contact_id, a.signal_key,
                       a.first_fired_at, a.last_fired_at, a.fire_days, a.journey_status, a.journey_reason,
                       a.collision_kind, cast(? as varchar), o.window_ends_at, coalesce(o.window_closed, false),
                       coalesce(o.outcome_status, 'not_applicable'), o.outcome_at,
                       real.action_id is not null, real.arm_group, real.escalated, real.outcome_window_closed,
                       real.outcome_status
                from {_scratch("backtest_actions")} as a
                left join {_scratch("backtest_action_outcomes")} as o on o.window_id = a.action_id
                left join {real} as real on real.action_id = a.action_id""",
                [run_id, report.rule_id, param, float(value), report.outcome_kind, report.rule_id],
            )
            _run(
                con,
                f"insert into {TUNING_RUNS} values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run_id,
                    tuned_at,
                    report.rule_id,
                    param,
                    float(value),
                    current_value,
                    current_value is not None and float(value) == current_value,
                    report.period_from,
                    report.period_to,
                    f"{report.pass_time:%H:%M}",
                    len(report.days),
                    len(report.skipped_days),
                    report.blocked_days,
                    report.candidate_days,
                    report.outcomes_evaluated_at,
                    ledger,
                ],
            )

    return store


def build_tuning_mart() -> None:
    """Build main.mart_rule_tuning (and run its tests) with the live project's target and vars."""
    from actionlayer.transform import invoke

    outcome = invoke(["build", "--select", "mart_rule_tuning", "--quiet"])
    results = list(getattr(outcome.result, "results", None) or [])
    failed = [f"{r.node.name}: {r.message}" for r in results if str(r.status) in {"error", "fail"}]
    if outcome.exception is not None or not outcome.success or failed:
        detail = "; ".join(failed) or str(outcome.exception or "see the dbt log")
        raise BacktestError(f"dbt could not build mart_rule_tuning: {detail}")


def read_tuning_mart(run_id: str) -> list[dict[str, Any]]:
    with connect(read_only=True, wait_seconds=30) as con:
        cursor = con.execute(f"select * from {TUNING_MART} where run_id = ? order by value", [run_id])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def tune(
    rule_id: str,
    param: str,
    values: Iterable[int | float],
    start: date | None = None,
    end: date | None = None,
    *,
    pass_time: time = DEFAULT_PASS_TIME,
    progress: ProgressFn | None = None,
) -> TuningReport:
    """Replay `rule_id` once per value of the dbt var `param` over the same period, store the raw results in
    ops.rule_tuning_runs / ops.rule_tuning_results and build main.mart_rule_tuning."""
    rule = resolve_rule(rule_id)
    current = resolve_param(rule, param)
    values = list(values)
    if not values:
        raise BacktestError("no values given: e.g. --values 3,7,14 or --values 3..21:3")
    factory = _connection_factory()
    with factory() as con:
        history = history_range(con)
        ledger = _table_exists(con, "main", "fct_outcomes")
    period = resolve_period(history, start, end, pass_time)
    run_id = uuid.uuid4().hex[:16]
    tuned_at = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    reports: dict[int | float, BacktestReport] = {}
    if progress:
        progress("parsing the dbt project", 0, 1, "")
    manifest = parse_replay_project({param: current})
    if progress:
        progress("parsing the dbt project", 1, 1, "done")
    try:
        for value in values:
            label = f"{param}={value}" + (" (current)" if _as_float(current) == float(value) else "")
            reports[value] = _run_one(
                factory,
                rule,
                period,
                history,
                {param: value},
                label,
                progress,
                after_replay=_store_value(run_id, tuned_at, param, value, current, ledger),
                manifest=manifest,
            )
    except BaseException:
        # a run is stored whole or not at all: the mart shows the latest complete run
        with factory() as con:
            if _table_exists(con, "ops", "rule_tuning_runs"):
                with transaction(con):
                    _run(con, f"delete from {TUNING_RESULTS} where run_id = ?", [run_id])
                    _run(con, f"delete from {TUNING_RUNS} where run_id = ?", [run_id])
        raise
    finally:
        with factory() as con:
            _drop_scratch(con)
    if progress:
        progress("mart_rule_tuning", 0, 1, "dbt build")
    build_tuning_mart()
    if progress:
        progress("mart_rule_tuning", 1, 1, "built")
    return TuningReport(
        run_id=run_id,
        rule_id=rule_id,
        param=param,
        current_value=current,
        values=values,
        reports=reports,
        mart_rows=read_tuning_mart(run_id),
        ledger_outcomes_available=ledger,
    )
