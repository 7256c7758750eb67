"""Running the real demo once per seed, each seed in its own process: shared by the demo benchmarks.

bench_coverage.py and bench_learning.py both run the whole demo loop (world, SoR folder, Dagster job, dbt rules
and marts, ledger, review files, dispatch) for many seeds and then read the seed's database. This module holds
what they share:

  * `seed_env`: the environment of one seed's process, with its own ACTIONLAYER_DATA / ACTIONLAYER_DB /
    DAGSTER_HOME / dbt target directory under a temporary directory, so parallel seeds never share a file;
  * `run_demo_to_log`: what the worker process does first: run the demo into a log file and return the
    world's `DemoConfig` with the seed applied (to read the database against);
  * `run_seed`: one seed in a subprocess of a benchmark script (`SCRIPT --worker SEED --size SIZE --workdir
    DIR`, which must write DIR/result.json), with one retry;
  * `run_seeds`: all seeds in a thread pool of `jobs` subprocesses, after parsing the dbt manifest once, with a
    callback per finished seed.

A seed's result is the worker's result.json plus `seconds`, `attempts`, `workdir` (kept directories only) and,
when the first attempt failed, `retried_after` (its error); or `{"seed", "size", "error"}` when the seed could
not be run even after the retry.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from actionlayer.demo.world import DemoConfig, load_demo_config  # noqa: E402

#: A seed's process is stopped (and the attempt counts as failed) after this long.
SEED_TIMEOUT_SECONDS = 1800
#: The file a worker writes into its work directory; `run_seed` reads it.
RESULT_FILE = "result.json"

SeedResult = dict[str, Any]


def seed_env(workdir: Path) -> dict[str, str]:
    """The environment of one seed's process: nothing of the caller's Actionlayer settings leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONLAYER_") and k != "DAGSTER_HOME"}
    data = workdir / "data"
    env.update(
        {
            "ACTIONLAYER_DATA": str(data),
            "ACTIONLAYER_DB": str(data / "actionlayer.duckdb"),
            "DAGSTER_HOME": str(data / "dagster_home"),
            # a settings file that does not exist: defaults only (file outbox, no SMTP, default quality gate)
            "ACTIONLAYER_CONFIG": str(workdir / "no-settings.yml"),
            # dbt writes its target files (compiled SQL, run results, partial parse) here, not into the shared
            # dbt_project/target that parallel seeds would overwrite under each other; the manifest the loop
            # reads was parsed once by the parent before any seed started.
            "DBT_TARGET_PATH": str(workdir / "dbt_target"),
            # and its log here: parallel seeds appending to (and rotating) one dbt_project/logs/dbt.log would
            # interleave their lines and rotate the file under each other
            "DBT_LOG_PATH": str(workdir / "dbt_logs"),
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            "DAGSTER_DISABLE_TELEMETRY": "1",
            "GX_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
    )
    return env


def run_demo_to_log(seed: int, size: str, workdir: Path) -> DemoConfig:
    """In the seed's own process: the whole demo loop, its console output to `workdir`/demo.log.

    Returns the world's config for `size` with `seed` applied, as the run used it.
    """
    from rich.console import Console

    from actionlayer.demo.driver import run_demo

    with (workdir / "demo.log").open("w", encoding="utf-8") as log:
        run_demo(Console(file=log, width=160, force_terminal=False), size=size, seed=seed)
    demo_config = load_demo_config(size=size)
    demo_config.seed = seed
    return demo_config


def write_result(workdir: Path, result: SeedResult) -> None:
    """In the seed's own process: hand `result` (JSON-serialisable) back to `run_seed`."""
    (workdir / RESULT_FILE).write_text(json.dumps(result, indent=1), encoding="utf-8")


def run_worker(
    seed: int, size: str, workdir: Path, measure: Callable[[Path, DemoConfig], Mapping[str, Any]]
) -> None:
    """In the seed's own process: the whole demo loop, then `measure(db, config)` (rule id → dataclass) written
    back as this seed's result."""
    from actionlayer import config

    demo_config = run_demo_to_log(seed, size, workdir)
    measured = measure(config.db_path(), demo_config)
    write_result(
        workdir,
        {"seed": seed, "size": size, "rules": {rule_id: asdict(m) for rule_id, m in measured.items()}},
    )


def run_seed(
    script: Path,
    seed: int,
    size: str,
    keep: bool,
    prefix: str,
    timeout: float = SEED_TIMEOUT_SECONDS,
) -> SeedResult:
    """One seed in a fresh temporary directory (named `prefix`SEED-…); one retry when the run itself fails.

    Runs `script --worker SEED --size SIZE --workdir DIR` with `seed_env(DIR)` from the project root. The
    directory is removed after a successful attempt unless `keep`; a failed attempt's directory stays for
    inspection and is named in the error.
    """
    attempts: list[str] = []
    for attempt in (1, 2):
        workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}{seed}-"))
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, str(Path(script).resolve()), "--worker", str(seed), "--size", size,
                 "--workdir", str(workdir)],
                cwd=ROOT,
                env=seed_env(workdir),
                capture_output=True,
                text=True,
                timeout=timeout,
            )  # fmt: skip
            failure = None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()[-2000:]
        except subprocess.TimeoutExpired:
            failure = f"timed out after {timeout:g} s"
        elapsed = time.monotonic() - started
        result_file = workdir / RESULT_FILE
        if failure is None and result_file.exists():
            result = json.loads(result_file.read_text(encoding="utf-8"))
            result.update(seconds=round(elapsed, 1), attempts=attempt, workdir=str(workdir) if keep else None)
            if attempts:
                result["retried_after"] = attempts  # the failed attempt's error, or it would be lost
            if not keep:
                shutil.rmtree(workdir, ignore_errors=True)
            return result
        attempts.append(f"attempt {attempt} ({workdir}): {failure or 'no result.json written'}")
    return {"seed": seed, "size": size, "error": "\n".join(attempts)}


def run_seeds(
    script: Path,
    seeds: Iterable[int],
    size: str,
    *,
    jobs: int,
    keep: bool,
    prefix: str,
    on_result: Callable[[SeedResult], None] | None = None,
    timeout: float = SEED_TIMEOUT_SECONDS,
) -> list[SeedResult]:
    """Every seed through `run_seed`, `jobs` at a time; the results sorted by seed.

    Parses the dbt manifest once first (the seeds only read it), calls `on_result` with each result as its seed
    finishes (in the calling thread, in order of completion), and prints the total wall time at the end.
    """
    from actionlayer.transform import ensure_manifest

    seeds = list(seeds)
    ensure_manifest()  # once, before the seeds: they only read it
    started = time.monotonic()
    results: list[SeedResult] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_seed, script, seed, size, keep, prefix, timeout): seed for seed in seeds}
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            if on_result is not None:
                on_result(result)
    results.sort(key=lambda r: r["seed"])
    print(f"{len(seeds)} seed(s) in {time.monotonic() - started:.0f} s")
    return results


def bench_main(
    argv: list[str] | None,
    *,
    script: Path,
    description: str,
    default_seeds: int,
    default_size: str,
    prefix: str,
    measure: Callable[[Path, DemoConfig], Mapping[str, Any]],
    seed_line: Callable[[DemoConfig], Callable[[SeedResult], str]],
    report: Callable[[list[SeedResult], str], int],
) -> int:
    """The command line both demo benchmarks share: parse the options, run as a seed's worker when asked,
    else run every seed (printing `seed_line(config)(result)` as each finishes) and return `report`'s exit code."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--seeds", type=int, default=default_seeds, help=f"number of seeds (default {default_seeds})"
    )
    parser.add_argument("--first-seed", type=int, default=None, help="first seed (default demo.yml's seed)")
    parser.add_argument("--size", default=default_size, help=f"demo.yml size preset (default {default_size})")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel (default 1; 2 cores here)")
    parser.add_argument(
        "--json", type=Path, default=None, help="also write every seed's results to this file"
    )
    parser.add_argument("--keep", action="store_true", help="keep each seed's temporary directory")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        run_worker(args.worker, args.size, args.workdir, measure)
        return 0
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")
    config = load_demo_config(size=args.size)  # fails early on an unknown size
    first = config.seed if args.first_seed is None else args.first_seed
    seeds = list(range(first, first + args.seeds))
    print(
        f"{len(seeds)} seed(s) from {first}, size {args.size!r} ({config.accounts} accounts, {config.days} acting "
        f"days, {config.observe_days} observe days), {args.jobs} in parallel; each runs the whole demo loop."
    )
    line = seed_line(config)
    results = run_seeds(
        script,
        seeds,
        args.size,
        jobs=args.jobs,
        keep=args.keep,
        prefix=prefix,
        on_result=lambda result: print(line(result), flush=True),
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return report(results, args.size)
