"""Scale benchmark: a full and an incremental pass of `actionlayer run` over a synthetic company, per stage
wall time and peak RSS, against a floor of plain DuckDB evaluating every rule's condition on the same files.

    .venv/bin/python benchmarks/bench_scale.py [--size XS|S|M|L] [--format parquet|csv] [--seed N]
                                               [--workdir DIR] [--keep] [--pass-timeout SECONDS]
                                               [--no-overhead] [--no-readme]

1. generates the world (scale_world.py): base and 1 %-changed folders, CSV and Parquet, with 0.1 % broken rows;
2. the floor: every rule's oracle query (scale_oracles.py) over the base files, timed, one query per rule;
3. the full pass: `actionlayer run --sor … --as-of …` (the Dagster job the CLI runs) in its own data folder,
   its process tree's RSS sampled every 0.2 s, per stage times from the run's step events in the Dagster
   instance; then every rule model against its oracle (differences must be 0) and every planted broken row
   against ops.quarantine;
4. the incremental pass: the changed files replace the folder's, one day later; the same checks, and the
   history (hist.*) must hold exactly one new version per changed or new record;
5. the fixed overhead: the median of three passes over an unchanged XS folder (after a first pass over it);
6. prints the table, ratios and PASS/FAIL per target (reported, not asserted), and writes the results into
   benchmarks/README.md between the bench_scale markers.

Exit code: 0 when every correctness check holds (oracle differences, quarantine, history) and both passes
succeeded; 1 otherwise. The performance targets are printed, not part of the exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import duckdb  # noqa: E402
import psutil  # noqa: E402
import scale_oracles  # noqa: E402
import scale_world  # noqa: E402

from actionlayer.contract import OBJECTS  # noqa: E402

README = ROOT / "benchmarks" / "README.md"
BEGIN, END = "<!-- bench_scale:begin -->", "<!-- bench_scale:end -->"  # size M; other sizes add ":<size>"
GIB = 1024**3
SAMPLE_SECONDS = 0.2
PROGRESS_LINES_PER_STEP = 14

# Dagster steps of the actionlayer_loop job, grouped into the stages the issue names.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("load + quality gate", ("sor_files", "sor_quality_tables")),
    ("decision models", ("decision_models", "action_candidates_quality_gate")),
    ("proposals / ledger", ("action_ledger",)),
    ("review export", ("review_decisions", "review_tables")),
    ("dispatch (file outbox)", ("action_dispatch",)),
    ("marts", ("outcome_marts",)),
)
OUTSIDE = "process start, imports, summary"

TARGET_FLOOR_RATIO = 10.0
TARGET_RSS_GIB = 6.0
TARGET_INCREMENTAL_SHARE = 0.25
TARGET_OVERHEAD_SECONDS = 20.0
OVERHEAD_REPEATS = 3
TARGET_L_RSS_GIB = 24.0


def say(line: str) -> None:
    print(line, flush=True)


# --------------------------------------------------------------------------- one pass


@dataclass
class StageFigure:
    seconds: float = 0.0
    peak_rss: int = 0


@dataclass
class PassResult:
    label: str
    success: bool
    wall: float
    peak_rss: int
    run_id: str | None
    stages: dict[str, StageFigure] = field(default_factory=dict)
    message: str = ""


class RssSampler(threading.Thread):
    """Samples the memory of a process and its descendants until stopped: the RSS of a lone process; with
    children (the review export's forked writers), the sum of their PSS, since their RSS each count the
    pages they share with the parent (at L, three 8.7 GiB RSS processes used 14 GiB of the machine)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._halt.is_set():
            total = 0
            try:
                tree = [root, *root.children(recursive=True)]
                for proc in tree:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        total += _shared_fairly(proc) if len(tree) > 1 else proc.memory_info().rss
            except psutil.NoSuchProcess:
                break
            self.samples.append((time.time(), total))
            self._halt.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _shared_fairly(proc: psutil.Process) -> int:
    """A process's proportional set size (its shared pages split among their sharers) where the system
    reports it, else its RSS."""
    try:
        return int(proc.memory_full_info().pss)
    except (AttributeError, psutil.AccessDenied):
        return proc.memory_info().rss


def pass_env(data: Path) -> dict[str, str]:
    """An isolated data folder, database, Dagster home and no settings file (the quick_demo pattern)."""
    return {
        # PYTHONDONTWRITEBYTECODE would make every pass compile all of dbt and Dagster again (about 6 s of
        # CPU): an installed command caches its bytecode after the first start
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ACTIONLAYER_") and k != "PYTHONDONTWRITEBYTECODE"
        },
        "ACTIONLAYER_DATA": str(data),
        "ACTIONLAYER_DB": str(data / "actionlayer.duckdb"),
        "DAGSTER_HOME": str(data / "dagster_home"),
        "ACTIONLAYER_CONFIG": str(data / "no-settings.yml"),
        "ACTIONLAYER_REVIEW_SECRET": secrets.token_hex(32),
        "ACTIONLAYER_LOG_LEVEL": "INFO",
        "COLUMNS": "200",
    }


def _progress_line(line: str) -> str | None:
    """The child's log lines worth showing while a pass runs: step starts/ends and the steps' own lines."""
    if " - " not in line:
        return None
    # "<time> - dagster - <level> - <job> - <run id> - <step> - <message>"
    parts = [p.strip() for p in line.split(" - ")]
    if len(parts) < 7 or parts[1] != "dagster":
        return None
    step, message = parts[5], " - ".join(parts[6:])
    if message.startswith(("STEP_START", "STEP_SUCCESS", "STEP_FAILURE")):
        return f"{step}: {message.split(' - ')[0].lower().replace('_', ' ')}"
    event_types = (
        "ASSET_",
        "STEP_",
        "LOADED_",
        "HANDLED_",
        "RESOURCE_",
        "LOGS_",
        "ENGINE_",
        "RUN_",
        "PIPELINE_",
    )
    if message.startswith(event_types) or message.startswith(("Started execution", "Finished execution")):
        return None
    return f"{step}: {message[:160]}"


def run_pass(
    env: dict[str, str], folder: Path, as_of: datetime, label: str, timeout: float | None
) -> PassResult:
    """`actionlayer run` in a child process; per stage seconds and peak RSS from its step events."""
    Path(env["ACTIONLAYER_DATA"]).mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("actionlayer")),
        "run",
        "--sor",
        str(folder),
        "--as-of",
        as_of.isoformat(sep=" "),
    ]
    say(f"[{label}] actionlayer run --sor {folder} --as-of {as_of:%Y-%m-%d %H:%M:%S}")
    started = time.time()
    child = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    sampler = RssSampler(child.pid)
    sampler.start()
    timer = None
    timed_out = threading.Event()
    if timeout:

        def stop_child() -> None:
            timed_out.set()
            os.killpg(child.pid, signal.SIGTERM)

        timer = threading.Timer(timeout, stop_child)
        timer.start()
    run_id = None
    tail: list[str] = []
    assert child.stdout is not None
    shown_per_step: dict[str, int] = {}
    for raw in child.stdout:
        line = raw.rstrip("\n")
        tail = (tail + [line])[-40:]
        shown = _progress_line(line)
        step = shown.split(":", 1)[0] if shown else ""
        # the first lines of each step carry the row counts; per-owner and per-alert lines would flood
        if shown and shown_per_step.get(step, 0) < PROGRESS_LINES_PER_STEP:
            shown_per_step[step] = shown_per_step.get(step, 0) + 1
            say(f"[{label} {time.time() - started:7.1f}s] {shown}")
        if line.startswith("Dagster run "):
            run_id = line.split()[2]
    child.wait()
    wall = time.time() - started
    if timer is not None:
        timer.cancel()
    sampler.stop()
    samples = sampler.samples
    result = PassResult(
        label=label,
        success=child.returncode == 0 and not timed_out.is_set(),
        wall=wall,
        peak_rss=max((rss for _, rss in samples), default=0),
        run_id=run_id,
    )
    if timed_out.is_set():
        result.message = f"stopped after {timeout:.0f} s (--pass-timeout)"
    elif child.returncode != 0:
        result.message = f"exit code {child.returncode}:\n" + "\n".join(tail)
    if run_id is None:
        # a stopped pass printed no run id; its steps so far are still in the instance
        run_id = _latest_run_id(Path(env["DAGSTER_HOME"]))
        result.run_id = run_id
    if run_id:
        result.stages = _stage_figures(Path(env["DAGSTER_HOME"]), run_id, samples, wall)
    say(
        f"[{label}] {'done' if result.success else 'FAILED'} in {wall:.1f} s, peak RSS {result.peak_rss / GIB:.2f} GiB"
    )
    return result


def _latest_run_id(home: Path) -> str | None:
    import dagster as dg

    if not (home / "dagster.yaml").is_file():
        return None
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(limit=1)
    return runs[0].run_id if runs else None


def _stage_figures(
    home: Path, run_id: str, samples: list[tuple[float, int]], wall: float
) -> dict[str, StageFigure]:
    """Seconds and peak RSS per stage: each step's window from its STEP_START to its STEP_SUCCESS/FAILURE."""
    import dagster as dg

    windows: dict[str, list[float]] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or entry.step_key is None:
                continue
            kind = event.event_type_value
            if kind == "STEP_START":
                windows.setdefault(entry.step_key, [entry.timestamp, entry.timestamp])
            elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and entry.step_key in windows:
                windows[entry.step_key][1] = entry.timestamp
    stage_of = {step: stage for stage, steps in STAGES for step in steps}
    figures = {stage: StageFigure() for stage, _ in STAGES}
    inside = 0.0
    for step, (start, end) in windows.items():
        stage = stage_of.get(step, f"other: {step}")
        figure = figures.setdefault(stage, StageFigure())
        figure.seconds += end - start
        inside += end - start
        peak = max((rss for t, rss in samples if start <= t <= end), default=0)
        figure.peak_rss = max(figure.peak_rss, peak)
    figures[OUTSIDE] = StageFigure(
        seconds=max(0.0, wall - inside), peak_rss=max((r for _, r in samples), default=0)
    )
    return figures


# --------------------------------------------------------------------------- checks after a pass


def check_rules(store: duckdb.DuckDBPyConnection, tag: str) -> dict[str, tuple[int, int]]:
    diffs = scale_oracles.rule_differences(store, tag, "pass.main")
    for rule_id, (rows, diff) in diffs.items():
        say(f"  rule_{rule_id}: {rows:,} records, {diff} different from the oracle")
    return diffs


def check_quarantine(store: duckdb.DuckDBPyConnection, planted: Path) -> tuple[bool, list[str]]:
    """Every planted broken row quarantined with its reason and key, nothing else quarantined."""
    rows = store.execute(
        f"""
        with planted as (select * from read_parquet('{planted}')),
        got as (select object, record_key, row_number, reason_code from pass.ops.quarantine)
        select coalesce(p.object, g.object) as object,
            count(p.object) as planted,
            count(g.object) as quarantined,
            count(*) filter (where p.reason = g.reason_code and p.record_key is not distinct from g.record_key) as named,
            count(*) filter (where p.object is null) as unexpected
        from planted p full join got g on g.object = p.object and g.row_number = p.row_number
        group by 1 order by 1
        """
    ).fetchall()
    by_reason = store.execute(
        f"select object, reason, count(*) from read_parquet('{planted}') group by all order by all"
    ).fetchall()
    reasons: dict[str, list[str]] = {}
    for obj, reason, count in by_reason:
        reasons.setdefault(obj, []).append(f"{reason} {count}")
    ok = True
    lines = []
    for obj, n_planted, n_quarantined, named, unexpected in rows:
        good = named == n_planted and unexpected == 0 and n_quarantined == n_planted
        ok = ok and good
        lines.append(
            f"  {obj}: planted {n_planted}, quarantined {n_quarantined}, named (key + reason) {named}, "
            f"unexpected {unexpected} {'OK' if good else 'MISMATCH'} ({', '.join(reasons.get(obj, []))})"
        )
    return ok, lines


def check_history(
    store: duckdb.DuckDBPyConnection, changes: Path, as_of_changed: datetime
) -> tuple[bool, list[str]]:
    """After the incremental pass: a changed record has 2 versions, a new one 1, every other record 1."""
    ok = True
    lines = []
    for name, obj in OBJECTS.items():
        changed, changed_ok, new, new_ok, others_off, opened = store.execute(
            f"""
            with versions as (select {obj.key} as k, count(*) as n from pass.hist.{name} group by 1),
            ch as (select record_key, change from read_parquet('{changes}') where object = '{name}')
            select
                (select count(*) from ch where change = 'changed'),
                count(*) filter (where ch.change = 'changed' and v.n = 2),
                (select count(*) from ch where change = 'new'),
                count(*) filter (where ch.change = 'new' and v.n = 1),
                count(*) filter (where ch.change is null and v.n <> 1),
                (select count(*) from pass.hist.{name} where _valid_from = ?)
            from versions v left join ch on ch.record_key = v.k
            """,
            [as_of_changed],
        ).fetchone()
        good = changed_ok == changed and new_ok == new and others_off == 0 and opened == changed + new
        ok = ok and good
        lines.append(
            f"  hist.{name}: {changed:,} changed with 2 versions: {changed_ok:,}; {new:,} new with 1: {new_ok:,}; "
            f"unchanged with more than 1: {others_off}; versions opened now {opened:,} "
            f"{'OK' if good else 'MISMATCH'}"
        )
    return ok, lines


def attach(store: duckdb.DuckDBPyConnection, data: Path) -> None:
    store.execute("detach database if exists pass")
    store.execute(f"attach '{data / 'actionlayer.duckdb'}' as pass (read_only)")


# --------------------------------------------------------------------------- report


def _gib(value: int) -> str:
    return f"{value / GIB:.2f}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def build_report(
    size: str,
    fmt: str,
    info: scale_world.WorldInfo,
    floor: scale_oracles.OracleRun,
    full: PassResult,
    incremental: PassResult | None,
    overhead: list[PassResult] | None,
    diffs: dict[str, dict[str, tuple[int, int]]],
    checks: dict[str, bool],
) -> list[str]:
    lines = [
        f"size {size} ({info.rows['accounts']:,} accounts, {sum(info.rows.values()):,} records), {fmt}, seed {info.seed}, "
        f"as of {info.as_of}; generated in {info.seconds:.0f} s",
        f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / GIB:.0f} GiB, "
        f"load average at the end {os.getloadavg()[0]:.1f}, {platform.python_implementation()} {platform.python_version()}",
        "",
        f"{'stage':<34}{'full s':>9}{'full GiB':>10}{'incr. s':>9}{'incr. GiB':>10}",
    ]
    names = list(full.stages) or [stage for stage, _ in STAGES]
    for stage in names:
        f_fig = full.stages.get(stage, StageFigure())
        i_fig = incremental.stages.get(stage, StageFigure()) if incremental else None
        lines.append(
            f"{stage:<34}{f_fig.seconds:>9.1f}{_gib(f_fig.peak_rss):>10}"
            + (f"{i_fig.seconds:>9.1f}{_gib(i_fig.peak_rss):>10}" if i_fig else f"{'–':>9}{'–':>10}")
        )
    lines.append(
        f"{'whole pass':<34}{full.wall:>9.1f}{_gib(full.peak_rss):>10}"
        + (
            f"{incremental.wall:>9.1f}{_gib(incremental.peak_rss):>10}"
            if incremental
            else f"{'–':>9}{'–':>10}"
        )
    )
    lines.append(f"{'floor (plain DuckDB, 8 rule queries)':<34}{floor.total_seconds:>9.1f}")
    lines += ["", f"{'rule':<24}{'floor s':>9}{'oracle rows':>13}{'diff full':>11}{'diff incr.':>12}"]
    for rule_id, seconds in floor.seconds.items():
        d_full = diffs.get("full", {}).get(rule_id)
        d_incr = diffs.get("incremental", {}).get(rule_id)
        lines.append(
            f"{rule_id:<24}{seconds:>9.2f}{floor.rows[rule_id]:>13,}"
            f"{d_full[1] if d_full else '–':>11}{d_incr[1] if d_incr else '–':>12}"
        )
    ratio = full.wall / floor.total_seconds if floor.total_seconds else float("inf")
    fixed = overhead_seconds(overhead) if overhead else None
    if overhead is None:
        overhead_text = "not measured"
    elif fixed is None:
        overhead_text = "a pass failed"
    else:
        overhead_text = f"{fixed:.1f} s, the median of {', '.join(f'{p.wall:.1f}' for p in overhead)} s"
    share = incremental.wall / full.wall if incremental and incremental.success and full.wall else None
    at_m = "" if size == "M" else f" (the target is for M; this is {size})"
    lines += [
        "",
        f"full pass / floor: {ratio:.1f}x (target <= {TARGET_FLOOR_RATIO:.0f}x){at_m}: "
        f"{_verdict(full.success and ratio <= TARGET_FLOOR_RATIO)}",
        f"peak RSS full pass: {_gib(full.peak_rss)} GiB (target <= {TARGET_RSS_GIB:.0f} GiB){at_m}: "
        f"{_verdict(full.success and full.peak_rss <= TARGET_RSS_GIB * GIB)}",
        "incremental / full pass: "
        + (f"{share:.0%}" if share is not None else "–")
        + f" (target <= {TARGET_INCREMENTAL_SHARE:.0%}){at_m}: "
        + _verdict(None if share is None else share <= TARGET_INCREMENTAL_SHARE),
        f"fixed overhead (pass over an unchanged XS folder): {overhead_text} "
        f"(target <= {TARGET_OVERHEAD_SECONDS:.0f} s): "
        + _verdict(None if overhead is None else fixed is not None and fixed <= TARGET_OVERHEAD_SECONDS),
    ]
    if size == "L":
        lines.append(
            f"L from {fmt}: {'completed' if full.success else 'did not complete'}, peak {_gib(full.peak_rss)} GiB "
            f"(target: completes from Parquet inside {TARGET_L_RSS_GIB:.0f} GiB), ratio {ratio:.1f}x: "
            f"{_verdict(full.success and fmt == 'parquet' and full.peak_rss <= TARGET_L_RSS_GIB * GIB)}"
        )
    for name, ok in checks.items():
        lines.append(f"{name}: {_verdict(ok)}")
    if not full.success:
        lines.append(f"full pass did not succeed: {full.message.splitlines()[0] if full.message else ''}")
    if incremental is not None and not incremental.success:
        lines.append(
            f"incremental pass did not succeed: {incremental.message.splitlines()[0] if incremental.message else ''}"
        )
    return lines


def write_readme(lines: list[str], size: str) -> None:
    """Replace this size's block in benchmarks/README.md (M's is the main one; L keeps its own beside it)."""
    begin, end = (BEGIN, END) if size == "M" else (BEGIN[:-4] + f":{size} -->", END[:-4] + f":{size} -->")
    text = README.read_text(encoding="utf-8")
    block = (
        f"{begin}\nLatest run (`bench_scale.py --size {size}`, {datetime.now():%Y-%m-%d}):\n\n```\n"
        + "\n".join(lines)
        + f"\n```\n{end}"
    )
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    README.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- main


def replace_folder(target: Path, source: Path) -> None:
    """Put `source`'s contract files into `target`, each renamed into place (a reader never sees half a file)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        temporary = target / f".{path.name}.tmp"
        shutil.copyfile(path, temporary)
        os.replace(temporary, target / path.name)


def _reusable_world(out: Path, size: str, seed: int, fmt: str) -> scale_world.WorldInfo | None:
    """The world already under `out` when it was generated for this size and seed in this format, else None."""
    if not (out / "world.json").exists() or not (out / "base" / fmt).is_dir():
        return None
    info = scale_world.read_info(out)
    return info if (info.size, info.seed) == (size, seed) else None


def measure_overhead(work: Path, fmt: str, seed: int, timeout: float | None) -> list[PassResult]:
    """Passes over an unchanged XS folder, an hour apart, after a first pass over the same folder.

    The figure is their median: one pass takes about 20 s, and on a shared machine a single one varies by a
    few seconds. Dirty pages the large passes before it left behind are written out first (`os.sync`), so
    their write-back is not counted as this pass's overhead."""
    xs = scale_world.generate(work / "xs_world", "XS", seed=seed, formats=(fmt,))
    env = pass_env(work / "xs_data")
    folder = work / "xs_world" / "base" / fmt
    first = run_pass(env, folder, xs.as_of_dt, "XS first pass", timeout)
    if not first.success:
        return [first]
    os.sync()
    unchanged = []
    for hours in range(1, OVERHEAD_REPEATS + 1):
        result = run_pass(env, folder, xs.as_of_dt + timedelta(hours=hours), f"XS unchanged {hours}", timeout)
        unchanged.append(result)
        if not result.success:
            break
    return unchanged


def overhead_seconds(passes: list[PassResult]) -> float | None:
    """The median wall time of the unchanged passes; None when one failed."""
    if not passes or not all(p.success for p in passes):
        return None
    return statistics.median(p.wall for p in passes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(scale_world.SIZES), default="M")
    parser.add_argument("--format", choices=list(scale_world.FORMATS), default="parquet")
    parser.add_argument("--seed", type=int, default=scale_world.DEFAULT_SEED)
    parser.add_argument(
        "--workdir", type=Path, help="where the world and the data go (default: a new temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--pass-timeout", type=float, default=None, help="stop a pass after this many seconds"
    )
    parser.add_argument("--no-overhead", action="store_true", help="skip the fixed-overhead measurement")
    parser.add_argument("--no-readme", action="store_true", help="do not write benchmarks/README.md")
    parser.add_argument(
        "--reuse-world",
        action="store_true",
        help="use the world already in WORKDIR/world when its size and seed match (generating L takes long)",
    )
    parser.add_argument(
        "--full-only",
        action="store_true",
        help="skip the incremental pass (for L: one full pass is the figure)",
    )
    args = parser.parse_args(argv)
    if args.reuse_world and args.workdir is None:
        parser.error("--reuse-world needs --workdir")

    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"actionlayer-scale-{args.size}-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"work folder {work}")
    base, changed = work / "world" / "base" / args.format, work / "world" / "changed" / args.format
    info = _reusable_world(work / "world", args.size, args.seed, args.format) if args.reuse_world else None
    if info is None:
        # L's CSV copy would be tens of GiB that no L pass reads: L is measured from one format only.
        formats = (args.format,) if args.size == "L" else scale_world.FORMATS
        info = scale_world.generate(work / "world", args.size, seed=args.seed, formats=formats, progress=say)
        say(f"generated in {info.seconds:.1f} s")
    else:
        say(f"reusing the size {args.size} world in {work / 'world'} (generated in {info.seconds:.1f} s)")

    # a reused work folder keeps the world only: the full pass starts from no database, no review files and
    # no Dagster history, as a first pass does
    for leftover in ("data", "sor", "overhead", "oracles.duckdb", "oracles.duckdb.wal"):
        path = work / leftover
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    store = duckdb.connect(str(work / "oracles.duckdb"))
    say("floor: one plain DuckDB query per rule over the base files")
    floor = scale_oracles.run_oracles(base, info.as_of_dt, store, "full")
    for rule_id, seconds in floor.seconds.items():
        say(f"  {rule_id}: {floor.rows[rule_id]:,} records in {seconds:.2f} s")
    say(f"floor: {floor.total_seconds:.1f} s")

    data = work / "data"
    env = pass_env(data)
    sor = work / "sor"
    replace_folder(sor, base)
    diffs: dict[str, dict[str, tuple[int, int]]] = {}
    checks: dict[str, bool] = {}
    full = run_pass(env, sor, info.as_of_dt, "full pass", args.pass_timeout)
    incremental = None
    if full.success:
        attach(store, data)
        say("oracles against the rule models after the full pass:")
        diffs["full"] = check_rules(store, "full")
        checks["oracle differences after the full pass = 0"] = all(d == 0 for _, d in diffs["full"].values())
        ok, lines = check_quarantine(store, base.parent / "planted_broken.parquet")
        say("quarantine after the full pass (per object):")
        for line in lines:
            say(line)
        checks["every planted broken row quarantined and named (full)"] = ok
        store.execute("detach pass")

    if full.success and not args.full_only:
        say("incremental: oracles over the changed files")
        scale_oracles.run_oracles(changed, info.as_of_changed_dt, store, "incremental")
        replace_folder(sor, changed)
        incremental = run_pass(env, sor, info.as_of_changed_dt, "incremental pass", args.pass_timeout)
        if incremental.success:
            attach(store, data)
            say("oracles against the rule models after the incremental pass:")
            diffs["incremental"] = check_rules(store, "incremental")
            checks["oracle differences after the incremental pass = 0"] = all(
                d == 0 for _, d in diffs["incremental"].values()
            )
            ok, lines = check_quarantine(store, changed.parent / "planted_broken.parquet")
            for line in lines:
                say(line)
            checks["every planted broken row quarantined and named (incremental)"] = ok
            ok, lines = check_history(store, work / "world" / "changes.parquet", info.as_of_changed_dt)
            say("history after the incremental pass:")
            for line in lines:
                say(line)
            checks["hist: one new version per changed or new record"] = ok
            store.execute("detach pass")
    overhead = (
        None
        if args.no_overhead
        else measure_overhead(work / "overhead", args.format, args.seed, args.pass_timeout)
    )
    store.close()

    report = build_report(args.size, args.format, info, floor, full, incremental, overhead, diffs, checks)
    say("")
    for line in report:
        say(line)
    if not args.no_readme:
        write_readme(report, args.size)
        say(f"results written to {README.relative_to(ROOT)}")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    incremental_ok = args.full_only or (incremental is not None and incremental.success)
    passed = full.success and incremental_ok and all(checks.values())
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
