"""Runs the demo: a generated company lives through simulated days while the real loop (Dagster job,
dbt rules, ledger, review files, dispatch) acts on it; approvers answer through real review files."""

from __future__ import annotations

import os
import secrets
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actionlayer import config
from actionlayer.db import connect
from actionlayer.demo.learning_proof import LATE_PASSES, read_learning
from actionlayer.demo.world import (
    ActionFact,
    DemoConfig,
    advance_day,
    approver_decisions,
    generate_world,
    load_demo_config,
    write_sor,
)
from actionlayer.review import manifest_path_for, read_review_rows, write_review_csv
from actionlayer.rules import load_rules

PASS_HOUR = 9
# level-5 send windows: extra dispatch passes every this many hours between two loop passes (windows are 4 h)
WINDOW_PASS_HOURS = 3
FINAL_STATES = {
    "delivered": "delivered",
    "held_out": "held_out",
    "rejected": "not_acted",
    "expired": "not_acted",
}
MART_PREFIXES = ("fct_", "mart_")
# built on every acting day: level-5 rules read their posteriors from it (actionlayer/proposals.py)
DAILY_MARTS = ("fct_outcomes",)


def _reset(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _answer_reviews(world: Any, day: date) -> int:
    """Approvers open yesterday's review tables, decide, and drop the files into the inbox."""
    outbox, inbox = config.review_outbox_dir(), config.review_inbox_dir()
    inbox.mkdir(parents=True, exist_ok=True)
    answered = 0
    for exported in sorted(outbox.glob("review_*.csv")):
        rows = read_review_rows(exported)
        decided = approver_decisions(world, rows, day)
        if any(row.get("decision") for row in decided):
            # the answer carries the signed manifest the export issued, as a real approver's file would
            write_review_csv(inbox / exported.name, decided, manifest_from=exported)
            answered += 1
        exported.unlink()
        manifest_path_for(exported).unlink(missing_ok=True)
        exported.with_suffix(".xlsx").unlink(missing_ok=True)
    return answered


def _facts(as_of: datetime) -> list[ActionFact]:
    """Actions that reached a final state in this pass, as the world needs them to respond (with the channel a
    delivered one went out on: a level-5 rule's chosen arm)."""
    with connect() as con:
        rows = con.execute(
            """select action_id, rule_id, record_type, record_id, contact_id, account_id, event_type, occurred_at,
                      channel
            from ops.action_ledger
            where occurred_at = ? and event_type in ('delivered', 'held_out', 'rejected', 'expired')
            order by seq""",
            [as_of],
        ).fetchall()
    return [
        ActionFact(
            action_id=a,
            rule_id=r,
            record_type=rt,
            record_id=rid,
            contact_id=c,
            account_id=acc,
            status=FINAL_STATES[event],
            at=at,
            channel=channel if event == "delivered" else None,
        )
        for a, r, rt, rid, c, acc, event, at, channel in rows
    ]


def _window_passes(as_of: datetime) -> list[ActionFact]:
    """Level-5 actions wait for their send window (details.not_before, in the contact's local time). Between two
    daily loop passes the demo runs the same dispatch `actionlayer dispatch` runs, every WINDOW_PASS_HOURS hours
    while anything waits, so each message goes out within that many hours of its window opening (inside the
    window: they are longer) and the world sees the hour it arrived. Returns the facts of those passes."""
    from action_sinks.dispatcher import run_dispatch

    facts: list[ActionFact] = []
    moment = as_of + timedelta(hours=WINDOW_PASS_HOURS)
    next_pass = as_of + timedelta(days=1)
    while moment < next_pass:
        with connect(wait_seconds=10) as con:
            report, _ = run_dispatch(con, moment)
        facts.extend(_facts(moment))
        if not report.waiting or report.next_window_at is None or report.next_window_at >= next_pass:
            break
        # the next grid time at or after the earliest window that opens
        steps = -(-(report.next_window_at - as_of) // timedelta(hours=WINDOW_PASS_HOURS))
        moment = max(
            moment + timedelta(hours=WINDOW_PASS_HOURS), as_of + steps * timedelta(hours=WINDOW_PASS_HOURS)
        )
    return facts


def run_demo(
    console: Console,
    days: int | None = None,
    size: str = "default",
    seed: int | None = None,
    fresh: bool = True,
) -> None:
    """Generate the demo company, run the loop once per simulated day, let the outcome windows close,
    then print the outcome summary."""
    # review files are signed; the demo signs with a key of its own unless one is configured (never stored)
    os.environ.setdefault("ACTIONLAYER_REVIEW_SECRET", secrets.token_hex(32))
    demo_config = load_demo_config(size=size)
    if seed is not None:
        demo_config.seed = seed
    if days is not None:
        demo_config.days = days
    sor = config.demo_sor_dir()
    if fresh:
        _reset([config.db_path(), sor, config.outbox_dir(), config.review_dir()])
    console.print(
        f"Generating the demo company (seed {demo_config.seed}, size {size}); "
        f"then {demo_config.days} simulated days of the loop from {demo_config.start:%Y-%m-%d} and "
        f"{demo_config.observe_days} days for outcomes to arrive."
    )
    world = generate_world(demo_config)
    start: date = demo_config.start if isinstance(demo_config.start, date) else demo_config.start.date()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("acting", total=demo_config.days, note="")
        for offset in range(demo_config.days):
            day = start + timedelta(days=offset)
            delivered, answered = _acting_day(world, demo_config, sor, day, marts=False)
            progress.update(
                task,
                advance=1,
                note=f"{day:%Y-%m-%d}: {delivered} delivered, {answered} review files answered",
            )
        observe = progress.add_task("observing", total=demo_config.observe_days, note="")
        for offset in range(demo_config.days, demo_config.days + demo_config.observe_days):
            # the company goes on without new actions, so the outcome windows of the last actions close
            day = start + timedelta(days=offset)
            advance_day(world, day, [])
            progress.update(observe, advance=1, note=f"{day:%Y-%m-%d}")
        final = progress.add_task("final pass and outcome marts", total=1, note="")
        _acting_day(
            world,
            demo_config,
            sor,
            start + timedelta(days=demo_config.days + demo_config.observe_days),
            marts=True,
        )
        progress.update(final, advance=1)
    print_summary(console, demo_config)


def _acting_day(world: Any, demo_config: Any, sor: Path, day: date, marts: bool) -> tuple[int, int]:
    """One simulated day with a loop pass: the SoR as of 09:00, approvers answer, the loop runs."""
    from orchestration.runner import run_job

    as_of = datetime(day.year, day.month, day.day, PASS_HOUR)
    write_sor(world, sor, as_of, broken_rows=demo_config.broken_rows)
    answered = _answer_reviews(world, day)
    outcome = run_job(
        "actionlayer_loop",
        as_of,
        sor=sor,
        asset_names=None if marts else _assets_without_marts(),
        tags={"actionlayer/trigger": "demo"},
    )
    if not outcome.success:
        raise RuntimeError(
            f"the loop failed on simulated day {day} (Dagster run {outcome.run_id}): "
            + "; ".join(outcome.failures)
        )
    facts = _facts(as_of)
    if not marts:
        facts.extend(_window_passes(as_of))
    advance_day(world, day, facts)
    return sum(f.status == "delivered" for f in facts), answered


def _assets_without_marts() -> list[str]:
    from orchestration.definitions import defs

    keys = defs.resolve_all_asset_keys()
    # the outcome marts (fct_*, mart_*) wait for the final pass, except the outcomes level-5 rules learn from
    daily = DAILY_MARTS if any(rule.maturity_level == 5 for rule in load_rules().values()) else ()
    return [
        key.to_user_string()
        for key in keys
        if not key.path[-1].startswith(MART_PREFIXES) or key.path[-1] in daily
    ]


def print_summary(console: Console, demo_config: DemoConfig | None = None) -> None:
    """Per rule: candidates, sent, held out, approval rate, conversion acted vs held out, latency; then, when
    the world plants level-5 effects, what each learning rule learned against the planted truth."""
    with connect(read_only=True) as con:
        performance = con.execute(
            """select p.rule_id, p.candidates, p.sent, p.held_out, p.approval_rate,
                      p.conversion_acted, p.conversion_held_out, p.uplift_ci_lower, p.uplift_ci_upper,
                      p.verdict, l.p50_hours, l.p90_hours
            from main.mart_rule_performance p
            left join (
                -- signals found on the first pass are a go-live backlog; latency is measured on new signals
                select rule_id,
                       quantile_cont(latency_hours, 0.5) as p50_hours,
                       quantile_cont(latency_hours, 0.9) as p90_hours
                from main.fct_actions
                where latency_hours is not null
                  and signal_at >= (select min(proposed_at) from main.fct_actions)
                group by rule_id
            ) l using (rule_id)
            order by p.rule_id"""
        ).fetchall()
        quarantined = con.execute("select count(*) from ops.quarantine").fetchall()[0][0]
        events = con.execute("select count(*) from ops.action_ledger").fetchall()[0][0]

    def pct(value: Any) -> str:
        return "–" if value is None else f"{float(value):.0%}"

    def hours(value: Any) -> str:
        return "–" if value is None else f"{float(value):.1f} h"

    table = Table(title="What each rule did and what it was worth")
    headings = ("rule", "cand.", "sent", "held", "approved", "conv. acted/held", "uplift CI", "verdict")
    for heading in (*headings, "latency p50/p90"):
        table.add_column(heading, justify="left" if heading in ("rule", "verdict") else "right", no_wrap=True)

    def interval(lower: Any, upper: Any) -> str:
        if lower is None or upper is None:
            return "–"
        return f"{float(lower) * 100:+.0f}…{float(upper) * 100:+.0f} pts"

    for (
        rule_id,
        candidates,
        sent,
        held_out,
        approval,
        acted,
        held,
        lower,
        upper,
        verdict,
        p50,
        p90,
    ) in performance:
        table.add_row(
            rule_id,
            str(candidates),
            str(sent),
            str(held_out),
            pct(approval),
            f"{pct(acted)} / {pct(held)}",
            interval(lower, upper),
            verdict or "–",
            f"{hours(p50)} / {hours(p90)}",
        )
    console.print(table)
    console.print(
        "Latency: signal → first delivery, for signals that arose after the first pass (the backlog found"
    )
    console.print(
        "on day one is in main.mart_action_latency). Conversion counts only closed outcome windows."
    )
    console.print(
        "Uplift: acted minus held out, with Newcombe's 95% interval; verdict works / harmful / no_evidence /"
    )
    console.print(
        "insufficient_data (fewer than 30 closed outcomes in an arm). Details in main.mart_rule_performance."
    )
    if demo_config is not None and demo_config.learning:
        print_learning(console, demo_config)
    console.print(f"{events} ledger events; {quarantined} SoR rows in quarantine (see ops.quarantine).")
    console.print(f"Database: {config.db_path()}")
    console.print(
        "Next: `make dev` opens the Dagster UI on http://127.0.0.1:3000 with every asset, check and sensor;"
    )
    console.print("      `.venv/bin/actionlayer status`, `.venv/bin/actionlayer ledger show <action_id>`.")


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _estimate(values: tuple[float | None, float | None, float | None]) -> str:
    value, lower, upper = values
    if value is None:
        return "–"
    if lower is None or upper is None:
        return f"{value:.0%}"
    return f"{value:.0%} ({lower:.0%}–{upper:.0%})"


def print_learning(console: Console, demo_config: DemoConfig) -> None:
    """Per level-5 rule and segment: the planted best arm, the arm the posteriors favour, the share of the last
    passes' decisions on the best arm; then the logged conversion against the uniform policy's off-line estimate."""
    measured = read_learning(config.db_path(), demo_config)
    for rule_id, result in measured.items():
        table = Table(title=f"Level 5: what {rule_id} learned (channel × send window, per segment)")
        for heading in ("segment", "planted best arm", "favoured now", "decisions", "best arm, last passes"):
            table.add_column(heading, justify="left" if heading != "decisions" else "right", no_wrap=True)
        table.add_column("its propensity now", justify="right", no_wrap=True)
        for seg in result.segments:
            table.add_row(
                seg.segment,
                f"{seg.best_arm} ({seg.planted_best:.0%}; uniform {seg.planted_uniform:.0%})",
                seg.favoured_arm or "–",
                str(seg.decisions),
                f"{_share(seg.late_best_share)} of {seg.late_decisions}",
                _share(seg.final_best_propensity),
            )
        console.print(table)
        difference = result.uplift_vs_uniform
        console.print(
            f"Logged conversion {_estimate(result.logged)} on {result.closed_outcomes} closed outcomes; the uniform "
            f"policy, estimated off-line from the same log: IPW {_estimate(result.uniform_ipw)}, SNIPS "
            f"{_estimate(result.uniform_snips)}."
        )
        console.print(
            "Learned minus uniform: "
            + (
                "–"
                if difference[0] is None
                else f"{difference[0] * 100:+.1f} pts"
                + (
                    f" ({difference[1] * 100:+.1f}…{difference[2] * 100:+.1f})"
                    if difference[1] is not None and difference[2] is not None
                    else ""
                )
            )
            + f", verdict {result.verdict or '–'}. Deliveries inside their chosen send window (local time): "
            f"{_share(result.in_window_share)} of {result.delivered}."
        )
        console.print(
            f"'Last passes' = the last {LATE_PASSES} loop passes. Details in main.mart_learning_arms and "
            "main.mart_policy_evaluation."
        )
