"""Runs the dbt project in-process (one dbt import per process, no subprocess per step) and keeps its
manifest current; orchestration and the CLI both go through here."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from actionlayer.config import db_path, dbt_project_dir, dbt_target_dir, disable_telemetry


class TransformError(RuntimeError):
    """dbt could not run, or a model or test failed; the message lists which and why."""


@dataclass
class NodeResult:
    unique_id: str
    resource_type: str
    name: str
    status: str
    message: str
    failures: int | None
    execution_time: float
    rows_affected: int | None


@dataclass
class TransformRun:
    args: list[str]
    success: bool
    results: list[NodeResult]

    def failed(self) -> list[NodeResult]:
        return [r for r in self.results if r.status in {"error", "fail", "runtime error"}]

    def summary_lines(self) -> list[str]:
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.status] = counts.get(result.status, 0) + 1
        lines = [
            f"dbt {' '.join(self.args[:1])}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        ]
        lines += [f"  {r.resource_type} {r.name}: {r.status}: {r.message}" for r in self.failed()]
        return lines


def manifest_path() -> Path:
    return dbt_target_dir() / "manifest.json"


def _project_files() -> list[Path]:
    """Every model, macro and config file of the project: what a parse reads."""
    project = dbt_project_dir()
    watched = [project / "dbt_project.yml", project / "profiles.yml"]
    for folder in ("models", "macros", "tests", "seeds", "snapshots"):
        watched += sorted(p for p in (project / folder).rglob("*") if p.is_file())
    return [p for p in watched if p.exists()]


def _newest_source_change() -> float:
    """The latest modification time of any model, macro or config file of the project."""
    return max((p.stat().st_mtime for p in _project_files()), default=0.0)


def _project_digest() -> str:
    """The project's files by name and content: a file added, removed, renamed or edited (whatever its
    modification time says) gives another digest. Some 100 small files: a few milliseconds."""
    project = dbt_project_dir()
    digest = hashlib.sha256()
    for path in _project_files():
        digest.update(str(path.relative_to(project)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _sources_newer_than(stamp: float) -> bool:
    return _newest_source_change() > stamp


def _dbt_env() -> None:
    disable_telemetry()
    os.environ.setdefault("DBT_PROFILES_DIR", str(dbt_project_dir()))
    # the profile reads ACTIONLAYER_DB; pass the path Python resolved so ACTIONLAYER_DATA is honoured too
    os.environ["ACTIONLAYER_DB"] = str(db_path())


def invoke(args: Sequence[str], manifest: Any = None) -> Any:
    """One in-process dbt invocation against the project; returns dbt's own result object.

    `manifest`: a Manifest an earlier `parse` returned, reused instead of parsing again (the backtest compiles
    one parsed project with several var values this way)."""
    _dbt_env()
    from dbt.cli.main import dbtRunner  # lazy: importing dbt costs seconds

    project = str(dbt_project_dir())
    full = [*args, "--project-dir", project, "--profiles-dir", project]
    callbacks: list[Callable[[Any], None]] = []
    if not any(os.environ.get(name) for name in ("DBT_LOG_LEVEL", "DBT_LOG_LEVEL_FILE")):
        # dbt formats (and scrubs of secrets) every one of its ~20 log lines per node for each of its
        # loggers, even those the level then drops: about 1 s of CPU per small pass. Its loggers are off
        # and one callback keeps what they showed: warnings and errors in logs/dbt.log, errors on stdout.
        # Setting DBT_LOG_LEVEL or DBT_LOG_LEVEL_FILE (e.g. debug) gives dbt's own loggers back.
        full += ["--log-level", "none", "--log-level-file", "none"]
        callbacks.append(_WarningLog(Path(os.environ.get("DBT_LOG_PATH") or Path(project) / "logs")))
    try:
        return dbtRunner(manifest=manifest, callbacks=callbacks).invoke(full)
    finally:
        _release_database()


class _WarningLog:
    """A dbt event callback: warnings and errors to `<log path>/dbt.log`, errors also to stdout."""

    LEVELS = frozenset({"warn", "error"})

    def __init__(self, folder: Path) -> None:
        self.path = folder / "dbt.log"

    def __call__(self, event: Any) -> None:
        info = event.info
        if info.level not in self.LEVELS:
            return
        from dbt_common.events.functions import env_scrubber

        text = env_scrubber(info.msg)
        stamp = info.ts.ToDatetime().strftime("%H:%M:%S.%f")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as log:
            log.write(f"{stamp} [{info.level:<5}] {text}\n")
        if info.level == "error":
            print(text, flush=True)


def _release_database() -> None:
    """Close the DuckDB handle dbt-duckdb caches for the life of the process.

    Without this the file stays open after an in-process dbt run, so a read-only connection from this
    process and any connection from another process (a sensor, the CLI) would be refused.
    """
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # adapter not loaded: nothing is held
        return
    with DuckDBConnectionManager._LOCK:
        environment = DuckDBConnectionManager._ENV
        if environment is not None:
            environment.close()
            DuckDBConnectionManager._ENV = None


# one parsed project per process and setting: (newest source change it saw, dbt's Manifest)
_PARSED: dict[tuple[str, str, str], tuple[float, Any]] = {}


def _parse_key() -> tuple[str, str, str]:
    # a node's database is the DuckDB file's name (its stem), so a parse serves every file of that name and
    # no other: the suite's passes, each on its own actionlayer.duckdb, share one
    return (db_path().stem, str(dbt_target_dir()), os.environ.get("DBT_PROFILES_DIR", ""))


def _parse(write_json: bool) -> Any:
    stamp = _newest_source_change()
    outcome = invoke(["parse", "--quiet", *([] if write_json else ["--no-write-json"])])
    if not outcome.success or outcome.result is None:
        raise TransformError(f"dbt parse failed: {outcome.exception or 'see the dbt log above'}")
    _PARSED[_parse_key()] = (stamp, outcome.result)
    _store_parse(outcome.result)
    return outcome.result


# The parse a pass reuses, kept between processes: a CLI pass or a sensor's run is a new process, and even
# dbt's partial parse (it still reads every file and rewrites its state) costs about 2 s of each, a full
# parse 8 s. The pickle is written by this module only, into the project's own target folder, and is used
# only when everything the parse depended on is the same: the key below, project files' names and content.
PARSE_CACHE = "actionlayer_parse.pickle"


def _parse_cache_key() -> tuple[Any, ...]:
    from dbt.version import __version__ as dbt_version

    # dbt's own settings from the environment (a target, a profile) can change what parses; its log ones cannot
    dbt_settings = sorted(
        (name, value)
        for name, value in os.environ.items()
        if name.startswith("DBT_") and not name.startswith("DBT_LOG")
    )
    return (*_parse_key(), str(dbt_project_dir()), dbt_version, sys.version, dbt_settings, _project_digest())


# Caches a Manifest rebuilds on first use (its lookups, macros by name and package); its lock is made anew.
_REBUILT = ("_macros_by_name", "_macros_by_package")


def _manifest_state(manifest: Any) -> dict[str, Any]:
    """The Manifest's attributes, without what is rebuilt on load. dbt's own pickling of a Manifest
    (`__reduce_ex__`, dbt 1.11) leaves out its `fixtures`, which shifts every later field by one: a manifest
    restored that way fails every `ref`. Its attributes are stored and set back by name instead."""
    return {
        name: None if name.endswith("_lookup") or name in _REBUILT else value
        for name, value in vars(manifest).items()
        if name != "_lock"
    }


def _manifest_from_state(state: dict[str, Any]) -> Any:
    from dbt.contracts.graph.manifest import Manifest
    from dbt.mp_context import get_mp_context

    manifest = Manifest.__new__(Manifest)
    manifest.__dict__.update(state)
    manifest._lock = get_mp_context().Lock()
    return manifest


def _store_parse(manifest: Any) -> None:
    path = dbt_target_dir() / PARSE_CACHE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(pickle.dumps((_parse_cache_key(), _manifest_state(manifest)), protocol=5))
        os.replace(temporary, path)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        # the cache only saves time: without it the next process parses again
        return


def _stored_parse() -> tuple[float, Any] | None:
    path = dbt_target_dir() / PARSE_CACHE
    stamp = _newest_source_change()
    try:
        key, state = pickle.loads(path.read_bytes())
        if key != _parse_cache_key():
            return None
        return stamp, _manifest_from_state(state)
    except Exception:  # absent, half-written by a killed process, or from another dbt: parse instead
        return None


def ensure_manifest(force: bool = False) -> Path:
    """Parse the project when the manifest is missing or older than any model, macro or config file."""
    target = manifest_path()
    if force or not target.exists() or _sources_newer_than(target.stat().st_mtime):
        _parse(write_json=True)
    return target


def parsed_manifest() -> Any:
    """The project as dbt parsed it, once per process and kept between processes (`PARSE_CACHE`): every
    later dbt command reuses it instead of parsing again (dbt's partial parse still reads and rewrites its
    state and the manifest, about 2 s per invocation). Parsed again when a model, macro or config file
    changed since."""
    _dbt_env()
    key = _parse_key()
    cached = _PARSED.get(key)
    if cached is not None and not _sources_newer_than(cached[0]):
        return cached[1]
    stored = _stored_parse()
    if stored is not None:
        _PARSED[key] = stored
        return stored[1]
    target = manifest_path()
    # manifest.json is what Dagster reads; rewrite it only when it is behind the sources
    fresh = target.exists() and not _sources_newer_than(target.stat().st_mtime)
    return _parse(write_json=not fresh)


def write_run_context(as_of: datetime) -> None:
    """Record the pass's as-of time where the dbt macro `as_of()` reads it (ops.run_context), and make
    sure the operational tables the project reads exist."""
    from actionlayer.db import connect
    from connectors.files import ensure_ops_tables
    from connectors.history import ensure_hist_tables

    with connect(wait_seconds=30) as con:
        # the quality gate's and the outcome evaluation's sources must exist even before the first load
        ensure_ops_tables(con)
        ensure_hist_tables(con)
        con.execute(
            "create or replace table ops.run_context as select cast(? as timestamp) as as_of", [as_of]
        )


def run(
    command: str, as_of: datetime, select: Sequence[str] = (), extra_vars: dict[str, Any] | None = None
) -> TransformRun:
    """Run a dbt command (build, run, test) for one as-of time and collect per-node results.

    Unit tests are left to `make test`: they check rule logic on fixed rows, not this pass's data.
    """
    write_run_context(as_of)
    args = [command, *select, "--quiet"]
    if command == "build":
        args += ["--exclude-resource-type", "unit_test"]
    if extra_vars:
        args += ["--vars", json.dumps(extra_vars)]
    else:
        # manifest.json is the parse's (parsed_manifest keeps it current) and nothing here reads
        # run_results.json: the results come back in-process. Rewriting both after every build costs
        # about 0.5 s per build even on a small project.
        args += ["--no-write-json"]
    # a var can change what parses (sources' schema), so only a run without extra vars reuses the parse
    outcome = invoke(args, manifest=None if extra_vars else parsed_manifest())
    results: list[NodeResult] = []
    execution = outcome.result
    for item in getattr(execution, "results", None) or []:
        node = item.node
        response = getattr(item, "adapter_response", None) or {}
        results.append(
            NodeResult(
                unique_id=node.unique_id,
                resource_type=str(node.resource_type),
                name=node.name,
                status=str(item.status),
                message=str(item.message or ""),
                failures=getattr(item, "failures", None),
                execution_time=float(item.execution_time or 0.0),
                rows_affected=response.get("rows_affected") if isinstance(response, dict) else None,
            )
        )
    if outcome.exception is not None:
        raise TransformError(f"dbt {command} could not run: {outcome.exception}")
    return TransformRun(args=args, success=bool(outcome.success), results=results)
