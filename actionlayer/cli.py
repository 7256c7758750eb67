"""The `actionlayer` command line: run the loop, work the review tables, dispatch, and inspect the ledger."""

from __future__ import annotations

import os
import subprocess
import sys
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
    with console.status(f"running the loop on {where} as of {when:%Y-%m-%d %H:%M:%S} …"):
        from orchestration.runner import run_job

        outcome = run_job("actionlayer_loop", when, sor=folder)
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

    def progress(event) -> None:
        status.update(f"syncing {event} …")

    try:
        with console.status(f"syncing {source} as of {when:%Y-%m-%d %H:%M:%S} …") as status:
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


if __name__ == "__main__":
    app()
