"""Dagster assets for acting on candidates: the ledger's proposals, review decisions from the inbox,
review tables for approvers, and dispatch through the action sinks."""

import shutil
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg

from action_sinks.dispatcher import run_dispatch
from actionlayer import config, ledger
from actionlayer.db import connect
from actionlayer.proposals import propose
from actionlayer.review import ReviewConfigError, export_reviews, import_reviews, manifest_path_for
from actionlayer.rules import load_rules
from actionlayer.transform import manifest_path
from orchestration.resources import ActionlayerSettings

REVIEW_SUFFIXES = {".csv", ".xlsx"}
# Every log call of a step is one event written to Dagster's event log (a database write, 10-25 ms), so a
# report goes out as one message, and a list with a line per alert is cut to its first lines and a count
# (ops.alerts keeps every alert with its send result).
ALERT_LINES_SHOWN = 20


def _log(log: Callable[[str], Any], lines: Sequence[str]) -> None:
    """A report's lines as one log message."""
    if lines:
        log("\n".join(lines))


def alert_digest(lines: Sequence[str]) -> list[str]:
    """The alert lines of a dispatch pass as logged: all of them when few, else a count, the alerts that
    were not sent first, and the first of the rest."""
    if len(lines) <= ALERT_LINES_SHOWN:
        return list(lines)
    sent = [line for line in lines if line.startswith("alert sent to ")]
    problems = [line for line in lines if not line.startswith("alert sent to ")]
    shown = (problems + sent)[:ALERT_LINES_SHOWN]
    return [
        f"{len(lines)} alert(s): {len(sent)} sent, {len(problems)} not sent (retried next pass); "
        f"the first {len(shown)}, the rest are in ops.alerts:",
        *shown,
    ]


def inbox_files(folder: Path | None = None) -> list[Path]:
    """Review files waiting in the inbox, oldest first (temporary and hidden files ignored)."""
    inbox = folder or config.review_inbox_dir()
    if not inbox.is_dir():
        return []
    files = [
        p
        for p in inbox.iterdir()
        if p.is_file() and p.suffix.lower() in REVIEW_SUFFIXES and not p.name.startswith((".", "~$"))
    ]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def _archive(files: list[Path], as_of: datetime) -> None:
    processed = config.review_processed_dir()
    processed.mkdir(parents=True, exist_ok=True)
    for path in files:
        # a CSV's signed manifest travels with it
        for part in (path, manifest_path_for(path)):
            if part.exists():
                shutil.move(str(part), processed / f"{as_of:%Y%m%dT%H%M%S}_{part.name}")


@dg.asset(
    deps=[dg.AssetKey("action_candidates")],
    group_name="actions",
    kinds={"duckdb"},
    pool="duckdb",
    description="Append-only action ledger: each new candidate proposed once, then held out, suppressed, "
    "sent for review or approved automatically by its rule's maturity level.",
)
def action_ledger(
    context: dg.AssetExecutionContext, actionlayer: ActionlayerSettings
) -> dg.MaterializeResult:
    as_of = actionlayer.resolved_as_of(context)
    rules = load_rules(manifest_path())
    with connect(wait_seconds=30) as con:
        report = propose(con, as_of, rules)
        counts = ledger.count_by_state(con)
    for line in report.summary_lines():
        context.log.info(line)
    return dg.MaterializeResult(
        metadata={
            "candidates": report.candidates,
            "new_events": report.new_events,
            "expired_reviews": report.expired,
            "actions_by_state": counts,
            "as_of": str(as_of),
        }
    )


@dg.asset(
    deps=[action_ledger],
    group_name="actions",
    kinds={"duckdb"},
    pool="duckdb",
    description="Decisions from review files dropped into the review inbox, applied to the ledger.",
)
def review_decisions(
    context: dg.AssetExecutionContext, actionlayer: ActionlayerSettings
) -> dg.MaterializeResult:
    as_of = actionlayer.resolved_as_of(context)
    files = inbox_files()
    if not files:
        context.log.info(f"no review files in {config.review_inbox_dir()}")
        return dg.MaterializeResult(metadata={"files": 0})
    try:
        with connect(wait_seconds=30) as con:
            ledger.ensure_schema(con)
            report = import_reviews(con, files, as_of)
    except ReviewConfigError as exc:
        # the files stay in the inbox for the next run; level-4 actions still go out
        context.log.error(f"review files not imported, left in {config.review_inbox_dir()}: {exc}")
        return dg.MaterializeResult(metadata={"files": len(files), "imported": 0, "refused": str(exc)})
    _log(context.log.warning if report.has_errors else context.log.info, report.summary_lines())
    _archive(files, as_of)
    return dg.MaterializeResult(
        metadata={
            "files": len(files),
            "applied": len(report.applied),
            "duplicates": len(report.duplicates),
            "rejected_rows": len(report.rejected_rows),
            "rejected_files": len(report.rejected_files),
            "archived_to": str(config.review_processed_dir()),
        }
    )


@dg.asset(
    deps=[review_decisions],
    group_name="actions",
    kinds={"xlsx", "csv"},
    pool="duckdb",
    description="One XLSX and one CSV per approver listing the actions waiting for their decision.",
)
def review_tables(
    context: dg.AssetExecutionContext, actionlayer: ActionlayerSettings
) -> dg.MaterializeResult:
    as_of = actionlayer.resolved_as_of(context)
    out_dir = config.review_outbox_dir()
    try:
        with connect(wait_seconds=30) as con:
            ledger.ensure_schema(con)
            report = export_reviews(con, out_dir, as_of)
    except ReviewConfigError as exc:
        context.log.error(f"review tables not exported: {exc}")
        return dg.MaterializeResult(metadata={"folder": str(out_dir), "files": 0, "refused": str(exc)})
    _log(context.log.info, report.summary_lines())
    return dg.MaterializeResult(
        metadata={
            "folder": str(out_dir),
            "files": len(report.files),
            # their files from an earlier export still hold exactly this content: kept, not written again
            "approvers_unchanged": len(report.unchanged),
        }
    )


@dg.asset(
    deps=[review_decisions],
    group_name="actions",
    kinds={"smtp", "file", "webhook"},
    pool="duckdb",
    description="Approved actions sent through their channel's sink; `sending` is recorded before each send "
    "and the result after.",
)
def action_dispatch(
    context: dg.AssetExecutionContext, actionlayer: ActionlayerSettings
) -> dg.MaterializeResult:
    as_of = actionlayer.resolved_as_of(context)
    with connect(wait_seconds=30) as con:
        ledger.ensure_schema(con)
        report, alert_lines = run_dispatch(
            con,
            as_of,
            progress=lambda done, total: done % 100 == 0 and context.log.info(f"{done}/{total} sent"),
        )
    _log(context.log.warning if report.failed else context.log.info, report.summary_lines())
    _log(context.log.warning, alert_digest(alert_lines))
    return dg.MaterializeResult(
        metadata={
            "due": report.due,
            "delivered": report.delivered,
            "failed": report.failed,
            "unknown": report.unknown,
            "expired_stale": report.expired,
            "waiting_for_quality_gate": report.held_by_gate,
            "circuits_open": dict(report.circuits),
            "alerts_sent": len(alert_lines),
            "as_of": str(as_of),
        }
    )
