"""The `actionlayer` command line: run the loop, work the review tables, dispatch, and inspect the ledger."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from actionlayer import config, ledger
from actionlayer.config import parse_as_of
from actionlayer.db import DatabaseBusy, connect

config.disable_telemetry()

app = typer.Typer(
    help="Actionlayer: records in, the right next action out, with a ledger that proves what happened.",
    no_args_is_help=True,
    add_completion=False,
)
review_app = typer.Typer(help="Review tables for approvers: export pending actions, import decisions.")
ledger_app = typer.Typer(help="Inspect the append-only action ledger.")
app.add_typer(review_app, name="review")
app.add_typer(ledger_app, name="ledger")

# piped or in CI, rich would wrap at 80 columns and squash the tables
console = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

AS_OF_HELP = "Act as of this time (ISO 8601; naive = UTC). Defaults to now."


def _as_of(value: str | None) -> datetime:
    try:
        return parse_as_of(value)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def run(
    sor: Path = typer.Option(
        None, "--sor", help="SoR contract folder (default: ACTIONLAYER_SOR or the demo's)."
    ),
    as_of: str = typer.Option(None, "--as-of", help=AS_OF_HELP),
    strict: bool = typer.Option(
        False, "--strict", help="Exit non-zero when any row was quarantined or object refused."
    ),
) -> None:
    """One pass of the loop, through the Dagster assets: load the SoR (the contract folder, or the sources
    in actionlayer.yml), build candidates, propose, dispatch, refresh the marts."""
    from actionlayer.reports import load_summary_lines, pass_summary_lines, quality_gate_lines

    sources = _sources()
    reads_folder = not sources or any(source.type == "files" for source in sources)
    folder = sor or config.sor_dir()
    if reads_folder and not folder.is_dir():
        _fail(f"SoR folder {folder} does not exist")
    when = _as_of(as_of)
    where = str(folder) if not sources else ", ".join(f"{s.name} ({s.type})" for s in sources)
    from actionlayer.progress import Progress
    from orchestration.runner import run_job

    stages = Progress(err)
    with stages.running(f"running the loop on {where} as of {when:%Y-%m-%d %H:%M:%S} …"):
        outcome = run_job("actionlayer_loop", when, sor=folder, progress=stages)
    problems = False
    try:
        with connect(read_only=True) as con:
            load_lines, problems = load_summary_lines(con, when)
            for line in load_lines:
                (err.print if problems else console.print)(line)
            gate_lines = quality_gate_lines(con)
            for line in gate_lines:
                err.print(f"[yellow]{line}[/yellow]")
            problems = problems or bool(gate_lines)
            for line in pass_summary_lines(con, when):
                console.print(line)
    except DatabaseBusy as exc:
        err.print(f"[yellow]warning:[/yellow] could not read the summary: {exc}")
    console.print(f"Dagster run {outcome.run_id} ({'succeeded' if outcome.success else 'failed'})")
    if not outcome.success:
        for failure in outcome.failures:
            err.print(f"[red]failed step[/red] {failure}")
        raise typer.Exit(1)
    if problems:
        err.print("[yellow]warning:[/yellow] some SoR rows were quarantined or objects refused (see above)")
        if strict:
            raise typer.Exit(3)


def _sources() -> list:
    from actionlayer.settings import SettingsError, load_sources

    try:
        return load_sources()
    except SettingsError as exc:
        _fail(str(exc), 2)
        raise AssertionError("unreachable") from exc


@app.command()
def sync(
    source: str = typer.Argument(..., help="A source named in actionlayer.yml (not a files source)."),
    objects: list[str] = typer.Option(None, "--object", help="Only this object (repeatable)."),
    full: bool = typer.Option(False, "--full", help="Read everything (also finds hard deletes)."),
    as_of: str = typer.Option(None, "--as-of", help=AS_OF_HELP),
) -> None:
    """Sync one configured source into DuckDB now (mirror, raw tables, quarantine, history), without
    building candidates; `actionlayer run` then acts on it."""
    from connectors.base import ConnectorError
    from connectors.sync import sync_source

    by_name = {s.name: s for s in _sources()}
    if source not in by_name:
        _fail(
            f"no source {source!r} in {config.settings_file()}; configured: {', '.join(by_name) or 'none'}", 2
        )
    settings = by_name[source]
    if settings.type == "files":
        _fail(f"source {source!r} is a files source: `actionlayer run` reads its folder", 2)
    when = _as_of(as_of)
    try:
        connector = settings.connector()
    except (ConnectorError, ValueError) as exc:
        _fail(f"source {source}: {exc}", 2)

    from actionlayer.progress import Progress

    stages = Progress(err)

    def progress(event) -> None:
        stage = f"sync {event.source}:{event.object}"
        if event.done:
            stages.finish(stage, {"pages": event.pages, "records": event.records})
        else:
            stages.start(stage, f"{event.pages} page(s), {event.records:,} record(s)")

    try:
        with stages.running(f"syncing {source} as of {when:%Y-%m-%d %H:%M:%S} …"):
            report = sync_source(
                lambda: connect(wait_seconds=30),
                connector,
                when,
                objects=objects or None,
                progress=progress,
                full=full,
            )
    except (ConnectorError, ValueError) as exc:
        _fail(f"source {source}: {exc}; every page committed before the error is kept, the next sync resumes")
    except DatabaseBusy as exc:
        _fail(str(exc))
    finally:
        connector.close()
    for line in report.summary_lines():
        (err.print if report.has_problems else console.print)(line)
    if report.refused:
        raise typer.Exit(3)


@app.command()
def demo(
    days: int = typer.Option(None, "--days", help="Simulated days (default from demo.yml)."),
    size: str = typer.Option("default", "--size", help="World size preset: small or default."),
    seed: int = typer.Option(None, "--seed", help="Random seed (default from demo.yml)."),
    fresh: bool = typer.Option(True, "--fresh/--keep", help="Start from an empty database and demo folder."),
) -> None:
    """Generate a demo company and run the loop over simulated weeks, then print what it was worth."""
    from actionlayer.demo.driver import run_demo

    run_demo(console, days=days, size=size, seed=seed, fresh=fresh)


@app.command()
def dispatch(as_of: str = typer.Option(None, "--as-of", help=AS_OF_HELP)) -> None:
    """Send approved actions through their channels (ledger first)."""
    from action_sinks.base import SinkError
    from action_sinks.dispatcher import run_dispatch

    when = _as_of(as_of)
    try:
        with connect(wait_seconds=10) as con:
            ledger.ensure_schema(con)
            report, alert_lines = run_dispatch(con, when)
    except SinkError as exc:
        _fail(f"{exc}; nothing was sent", 2)
    for line in report.summary_lines():
        console.print(line)
    for line in alert_lines:
        err.print(line)
    if report.failed:
        raise typer.Exit(1)


@review_app.command("export")
def review_export(
    out: Path = typer.Option(None, "--out", help="Folder for the review files (default data/review/outbox)."),
    as_of: str = typer.Option(None, "--as-of", help=AS_OF_HELP),
) -> None:
    """Write one XLSX and one CSV per approver with the actions waiting for their decision."""
    from actionlayer.review import ReviewConfigError, export_reviews

    when = _as_of(as_of)
    try:
        with connect(wait_seconds=10) as con:
            ledger.ensure_schema(con)
            report = export_reviews(con, out or config.review_outbox_dir(), when)
    except ReviewConfigError as exc:
        _fail(str(exc), 2)
    for line in report.summary_lines():
        console.print(line)


@review_app.command("import")
def review_import(
    files: list[Path] = typer.Argument(..., help="Filled-in review files (.xlsx or .csv)."),
    as_of: str = typer.Option(None, "--as-of", help=AS_OF_HELP),
) -> None:
    """Apply approvers' decisions; bad rows and files are refused with file, row and value."""
    from actionlayer.review import ReviewConfigError, import_reviews

    when = _as_of(as_of)
    try:
        with connect(wait_seconds=10) as con:
            ledger.ensure_schema(con)
            report = import_reviews(con, files, when)
    except ReviewConfigError as exc:
        _fail(str(exc), 2)
    for line in report.summary_lines():
        (err.print if report.has_errors else console.print)(line)
    if report.has_errors:
        raise typer.Exit(1)


@app.command()
def status() -> None:
    """Counts per ledger state, and anything stuck, failed or unknown."""
    from actionlayer.reports import status_lines

    try:
        with connect(read_only=True, wait_seconds=5) as con:
            lines, attention = status_lines(con)
    except DatabaseBusy as exc:
        _fail(str(exc), 75)
    for line in lines:
        console.print(line)
    if attention:
        raise typer.Exit(1)


@ledger_app.command("show")
def ledger_show(
    action_id: str = typer.Argument(..., help="The action id (as in the ledger or review files)."),
) -> None:
    """Print one action's whole trail."""
    try:
        with connect(read_only=True, wait_seconds=5) as con:
            events = ledger.trail(con, action_id)
    except DatabaseBusy as exc:
        _fail(str(exc), 75)
    if not events:
        _fail(f"no action {action_id!r} in the ledger at {config.db_path()}")
    first = events[0]
    console.print(
        f"[bold]{action_id}[/bold]  rule {first['rule_id']} v{first['rule_version']} (level {first['maturity_level']})"
        f"  {first['record_type']} {first['record_id']}  contact {first['contact_id']}  owner {first['owner_email']}"
    )
    console.print(f"signal at {first['signal_at']}  reason {first['reason']}")
    if first.get("message_subject"):
        console.print(f"message to {first['recipient']}: [italic]{first['message_subject']}[/italic]")
        console.print(first.get("message_body") or "", markup=False, highlight=False)
    table = Table("seq", "occurred_at", "event", "actor", "channel", "attempt", "result", "next action")
    for event in events:
        table.add_row(
            str(event["seq"]),
            str(event["occurred_at"]),
            event["event_type"],
            event["actor"],
            event["channel"] or "",
            "" if event["attempt"] is None else str(event["attempt"]),
            (event["result"] or "")[:80],
            event["next_action"] or "",
        )
    console.print(table)


def _replay_progress():
    """A rich progress display on stderr (stdout stays clean for --json) and the callback that feeds it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=err,
    )
    tasks: dict[str, object] = {}
    if not err.is_terminal:
        # piped or in CI: one plain line per finished phase instead of a live display
        def plain(phase: str, done: int, total: int, note: str) -> None:
            if done:
                print(f"{phase}: {done}/{total} {note}".rstrip(), file=sys.stderr, flush=True)

        return nullcontext(), plain

    def update(phase: str, done: int, total: int, note: str) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total, note=note)
        progress.update(tasks[phase], completed=done, total=total, note=note)

    return progress, update


def _replay_window(date_from: str | None, date_to: str | None, at: str):
    from actionlayer.backtest import BacktestError, parse_day, parse_pass_time

    try:
        start = parse_day(date_from, "--from") if date_from else None
        end = parse_day(date_to, "--to") if date_to else None
        if start and end and start > end:
            raise BacktestError(f"--from {start} is after --to {end}")
        return start, end, parse_pass_time(at)
    except BacktestError as exc:
        _fail(str(exc), 2)
        raise AssertionError("unreachable") from exc


def _number_text(value: object, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.{digits}f}"
    return str(value)


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


@app.command("backtest")
def backtest_command(
    rule: str = typer.Option(..., "--rule", help="The rule id, e.g. post_quote_followup."),
    date_from: str = typer.Option(
        None, "--from", help="First day, YYYY-MM-DD (default: 27 days before --to, within the history)."
    ),
    date_to: str = typer.Option(
        None, "--to", help="Last day, YYYY-MM-DD (default: the day of the latest load)."
    ),
    at: str = typer.Option("09:00", "--at", help="Pass time of each replayed day, HH:MM UTC."),
    variables: list[str] = typer.Option(
        None, "--var", help="Replay with a var the rule reads set to a value: NAME=VALUE (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON on stdout."),
    keep_scratch: bool = typer.Option(
        False, "--keep-scratch", help="Leave the scratch schemas backtest and backtest_sor for inspection."
    ),
) -> None:
    """Replay a rule as of each day over the SoR history: what it would have fired, its collisions with the
    journey context, and what happened afterwards. Nothing is sent; the ledger is untouched."""
    import json as jsonlib

    from actionlayer.backtest import BacktestError, parse_values
    from actionlayer.backtest import backtest as run_backtest

    start, end, pass_time = _replay_window(date_from, date_to, at)
    overrides: dict[str, int | float] = {}
    try:
        for item in variables or []:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise BacktestError(f"--var {item!r}: use NAME=VALUE, e.g. followup_min_days_since_quote=10")
            overrides[name.strip()] = parse_values([value])[0]
        progress, update = _replay_progress()
        with progress:
            report = run_backtest(
                rule,
                start,
                end,
                pass_time=pass_time,
                variables=overrides,
                progress=update,
                keep_scratch=keep_scratch,
            )
    except BacktestError as exc:
        _fail(str(exc), 2)
    except DatabaseBusy as exc:
        _fail(str(exc), 75)
    if as_json:
        print(jsonlib.dumps(report.to_dict(), indent=2))
        return
    overridden = ", ".join(f"{k}={v}" for k, v in report.variables.items())
    console.print(
        f"[bold]backtest {report.rule_id}[/bold] {report.period_from} … {report.period_to}, passes at "
        f"{report.pass_time:%H:%M} UTC{f' with {overridden}' if overridden else ''}: {len(report.days)} day(s) "
        f"replayed (compile {report.compile_seconds:.1f} s, replay {report.replay_seconds:.1f} s)"
    )
    if report.skipped_days:
        err.print(
            f"[yellow]skipped {len(report.skipped_days)} day(s) outside the history:[/yellow] "
            + ", ".join(str(day) for day in report.skipped_days[:10])
            + (" …" if len(report.skipped_days) > 10 else "")
        )
    days = Table("day", "fired", "new", "eligible", "held out", "suppressed", "quality gate")
    for day in report.days:
        days.add_row(
            str(day.day),
            str(day.fired),
            str(day.new),
            str(day.eligible),
            str(day.held_out),
            str(day.suppressed),
            f"skipped: {day.blocked_reason}" if day.blocked_reason else "",
        )
    console.print(days)
    journey = report.journey_counts()
    collisions = report.collisions()
    console.print(
        f"{report.fires} would-be action(s) ({report.candidate_days} candidate-days): "
        f"{journey.get('eligible', 0)} eligible, {journey.get('held_out', 0)} held out, "
        f"{journey.get('suppressed', 0)} suppressed on the day they first fired"
    )
    console.print(
        "collisions with the journey context: "
        + (", ".join(f"{kind} {count}" for kind, count in collisions.items()) or "none")
    )
    counts = report.outcome_counts()
    console.print(
        f"afterwards ({report.outcome_kind} within {report.outcome_window_days} days of the first fire, history as "
        f"of {report.outcomes_evaluated_at:%Y-%m-%d %H:%M}): {counts['closed']} window(s) closed, "
        f"{counts['closed_achieved']} achieved → outcome rate {_share(report.outcome_rate)}; "
        f"{report.fires - counts['closed'] - counts['not_applicable']} still open (not counted as failures)"
    )
    if report.actions:
        shown = report.actions[:20]
        table = Table("record", "first fired", "days", "journey", "outcome", "outcome at")
        for action in shown:
            table.add_row(
                f"{action.record_type} {action.record_id}",
                f"{action.first_fired_at:%Y-%m-%d %H:%M}",
                str(action.fire_days),
                action.journey_reason or action.journey_status,
                action.outcome_status,
                f"{action.outcome_at:%Y-%m-%d %H:%M}" if action.outcome_at else "",
            )
        console.print(table)
        if len(report.actions) > len(shown):
            console.print(f"… {len(report.actions) - len(shown)} more (--json lists them all)")


@app.command("tune")
def tune_command(
    rule: str = typer.Option(..., "--rule", help="The rule id, e.g. post_quote_followup."),
    param: str = typer.Option(
        ...,
        "--param",
        help="A dbt var the rule reads (dbt_project.yml vars), e.g. followup_min_days_since_quote.",
    ),
    values: list[str] = typer.Option(
        ..., "--values", help="Numbers to try: 3,7,14 or a range 3..21:3 (inclusive; repeatable)."
    ),
    date_from: str = typer.Option(
        None, "--from", help="First day, YYYY-MM-DD (default: 27 days before --to, within the history)."
    ),
    date_to: str = typer.Option(
        None, "--to", help="Last day, YYYY-MM-DD (default: the day of the latest load)."
    ),
    at: str = typer.Option("09:00", "--at", help="Pass time of each replayed day, HH:MM UTC."),
    as_json: bool = typer.Option(False, "--json", help="Print the mart rows as JSON on stdout."),
) -> None:
    """Sweep a rule threshold (a dbt var): per value the fires, collisions, historical outcome rate and the
    measured uplift where holdouts exist; writes ops.rule_tuning_* and builds main.mart_rule_tuning."""
    import json as jsonlib

    from actionlayer.backtest import BacktestError, parse_values, tune

    start, end, pass_time = _replay_window(date_from, date_to, at)
    try:
        numbers = parse_values(values)
        progress, update = _replay_progress()
        with progress:
            report = tune(rule, param, numbers, start, end, pass_time=pass_time, progress=update)
    except BacktestError as exc:
        _fail(str(exc), 2)
    except DatabaseBusy as exc:
        _fail(str(exc), 75)
    if as_json:
        print(jsonlib.dumps(report.to_dict(), indent=2, default=str))
        return
    first = report.mart_rows[0] if report.mart_rows else {}
    console.print(
        f"[bold]tune {report.rule_id} {report.param}[/bold] (now {report.current_value}) over "
        f"{first.get('period_from')} … {first.get('period_to')} at {first.get('pass_time')} UTC, "
        f"{first.get('replayed_days')} day(s); outcomes as of {first.get('outcomes_evaluated_at')}; run {report.run_id}"
    )
    from rich import box

    table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for name in ("value", "fires", "/day", "collisions", "held out", "closed", "achieved", "rate"):
        table.add_column(name, no_wrap=True)
    for name in ("acted", "held-out", "uplift", "95% CI", "verdict"):
        table.add_column(name, no_wrap=True)
    for row in report.mart_rows:
        interval = (
            "" if row["uplift"] is None else f"[{row['uplift_ci_lower']:+.0%}, {row['uplift_ci_upper']:+.0%}]"
        )
        table.add_row(
            _number_text(row["value"]) + (" ◀ current" if row["is_current_value"] else ""),
            str(row["fires"]),
            _number_text(row["fires_per_day"]),
            str(row["collisions"]),
            str(row["held_out"]),
            str(row["outcomes_closed"]),
            str(row["outcomes_achieved"]),
            _share(row["outcome_rate"]),
            str(row["acted_closed"]),
            str(row["held_out_closed"]),
            "–" if row["uplift"] is None else f"{row['uplift']:+.0%}",
            interval,
            row["uplift_verdict"],
        )
    console.print(table)
    if not report.ledger_outcomes_available:
        err.print(
            "[yellow]no uplift:[/yellow] main.fct_outcomes does not exist yet (run the loop with its marts first)"
        )
    console.print("written to ops.rule_tuning_runs, ops.rule_tuning_results and main.mart_rule_tuning")


@app.command()
def dev(
    port: int = typer.Option(3000, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
) -> None:
    """Open the Dagster UI (webserver + daemon) on this project's database."""
    from orchestration.runner import ensure_dagster_home

    home = ensure_dagster_home()
    from actionlayer.transform import ensure_manifest

    ensure_manifest()
    console.print(f"Dagster UI on http://{host}:{port}  (DAGSTER_HOME={home}, database {config.db_path()})")
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-m", "orchestration.definitions", "-h", host, "-p", str(port)]
    os.chdir(config.PROJECT_ROOT)
    raise typer.Exit(subprocess.call(command))


def main() -> None:
    """The `actionlayer` command: the CLI, then an exit that skips tearing the interpreter down.

    A pass leaves Dagster's definitions and dbt's manifest in memory, some million objects the interpreter
    would free one by one at exit: about 2 s of every `actionlayer run`. Whatever must outlive the process
    is written and closed before a command returns (databases, review files, the outbox); the atexit
    handlers (logging's flush among them) still run, and the output streams are flushed."""
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    main()
