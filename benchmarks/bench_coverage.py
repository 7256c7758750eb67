"""Coverage of the uplift intervals on the demo world, over many seeds.

Each seed runs the real demo loop (world, SoR folder, Dagster job, dbt rules and marts, ledger, review files,
dispatch) in its own process and its own temporary ACTIONLAYER_DATA / ACTIONLAYER_DB / DAGSTER_HOME, then reads
main.mart_rule_performance and compares every rule's 95% interval with the effect demo.yml planted
(treated - baseline). Prints the coverage table and a PASS/FAIL line against issue 6's criteria:

  * every rule with a held-out arm: its interval covers the planted effect in at least 90% of the seeds
    (18 of 20; a seed whose run gives that rule no interval counts as not covered);
  * the no-effect rule(s) (treated == baseline, nps_detractor): the interval covers 0 in at least 90% of seeds;
  * the harmful rule(s) (treated < baseline): verdict `harmful` in at least 90% of the seeds.

A rule with holdout_share 0 has no control arm and so no interval; it is listed and left out of the criteria.

    .venv/bin/python benchmarks/bench_coverage.py [--seeds 20] [--first-seed 20260901] [--size coverage]
                                                  [--jobs 1] [--json results.json] [--keep]

Exit code 0 on PASS, 1 on FAIL, 2 when a seed could not be run (after one retry).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_seeds import bench_main  # noqa: E402

from actionlayer.demo.coverage import (  # noqa: E402
    RuleMeasurement,
    harmful_rules,
    no_effect_rules,
    planted_effects,
    read_measurements,
)
from actionlayer.demo.world import DemoConfig, load_demo_config  # noqa: E402

REQUIRED_SHARE = 0.9  # 18 of 20
TMP_PREFIX = "actionlayer-coverage-"


def _fmt_pts(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f}"


def _pooled(rows: list[RuleMeasurement], effect: Any) -> str:
    """Conversion per arm over all seeds next to the planted probabilities: a bias shows here first."""

    def rate(converted: int, closed: int) -> str:
        return "–" if closed == 0 else f"{converted / closed:.0%}"

    acted = rate(sum(r.acted_converted for r in rows), sum(r.acted_closed for r in rows))
    held = rate(sum(r.held_out_converted for r in rows), sum(r.held_out_closed for r in rows))
    if effect is None:
        return f"{acted} / {held}"
    return f"{acted} / {held} vs {effect.treated:.0%} / {effect.baseline:.0%}"


def _report(results: list[dict[str, Any]], size: str) -> int:
    config = load_demo_config(size=size)
    planted = planted_effects(config)
    harmful, no_effect = harmful_rules(config), no_effect_rules(config)
    done = [r for r in results if "rules" in r]
    failed = [r for r in results if "rules" not in r]
    n = len(done)
    if not done:
        print("FAIL: no seed ran; the first error:\n" + failed[0]["error"])
        return 2
    required = math.ceil(REQUIRED_SHARE * len(results))
    per_rule: dict[str, list[RuleMeasurement]] = {}
    for result in done:
        for rule_id, row in result["rules"].items():
            per_rule.setdefault(rule_id, []).append(RuleMeasurement(**row))

    headings = (
        "rule",
        "planted",
        "covers",
        "mean uplift",
        "mean CI width",
        "closed acted/held",
        "pooled acted/held vs planted",
        "verdicts",
    )
    lines: list[tuple[str, ...]] = []
    problems: list[str] = []
    unmeasurable: list[str] = []
    for rule_id in sorted(per_rule):
        rows = per_rule[rule_id]
        effect = planted.get(rule_id)
        measured = [r for r in rows if r.measured]
        covered = sum(bool(r.covers(effect)) for r in rows)
        uplifts = [r.uplift for r in measured if r.uplift is not None]
        widths = [r.width for r in measured if r.width is not None]
        verdicts: dict[str, int] = {}
        for r in rows:
            verdicts[r.verdict or "–"] = verdicts.get(r.verdict or "–", 0) + 1
        no_holdout = all((r.holdout_share or 0) == 0 for r in rows)
        lines.append(
            (
                rule_id,
                _fmt_pts(effect),
                "no holdout" if no_holdout else f"{covered}/{n}",
                _fmt_pts(sum(uplifts) / len(uplifts)) if uplifts else "–",
                _fmt_pts(sum(widths) / len(widths)).lstrip("+") if widths else "–",
                f"{sum(r.acted_closed for r in rows) / max(n, 1):.0f} / "
                f"{sum(r.held_out_closed for r in rows) / max(n, 1):.0f}",
                _pooled(rows, config.effects.get(rule_id)),
                ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())),
            )
        )
        if effect is None:
            continue
        if no_holdout:
            unmeasurable.append(rule_id)
        elif covered < required:
            problems.append(f"{rule_id}: covers its planted effect in {covered}/{len(results)} seeds")

    widths_col = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headings)]

    def row(cells: tuple[str, ...]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths_col, strict=True))
        ]
        return "  ".join(padded)

    print()
    print(f"Coverage of the 95% uplift interval, {n} seed(s), size {size!r} (effects in percentage points)")
    print(row(headings))
    for line in lines:
        print(row(line))
    print()
    for rule_id in harmful:
        flagged = sum(r.verdict == "harmful" for r in per_rule.get(rule_id, []))
        print(f"harmful rule {rule_id}: verdict harmful in {flagged}/{len(results)} seeds")
        if flagged < required:
            problems.append(f"{rule_id}: flagged harmful in only {flagged}/{len(results)} seeds")
    for rule_id in no_effect:
        zero = sum(bool(r.covers(0.0)) for r in per_rule.get(rule_id, []))
        print(f"no-effect rule {rule_id}: interval covers 0 in {zero}/{len(results)} seeds")
        if zero < required:
            problems.append(f"{rule_id}: covers 0 in only {zero}/{len(results)} seeds")
    for rule_id in unmeasurable:
        print(f"not measurable: {rule_id} has holdout_share 0 (no control arm), left out of the criteria")
    for result in failed:
        problems.append(f"seed {result['seed']} did not run: {result['error'].splitlines()[-1][:300]}")
    print(
        f"Criterion: each rule with a holdout covers its planted effect, the no-effect rule covers 0 and the "
        f"harmful rule is flagged harmful, each in at least {required} of {len(results)} seeds "
        f"({REQUIRED_SHARE:.0%})."
    )
    if problems:
        print("FAIL: " + "; ".join(problems))
    else:
        print("PASS")
    if failed:
        return 2
    return 1 if problems else 0


def _seed_line(config: DemoConfig) -> Callable[[dict[str, Any]], str]:
    harmful = harmful_rules(config)

    def line(result: dict[str, Any]) -> str:
        if "rules" not in result:
            return f"  seed {result['seed']}: FAILED\n{result['error']}"
        verdicts = ", ".join(
            f"{rule_id} {row['verdict']}"
            for rule_id, row in sorted(result["rules"].items())
            if rule_id in harmful
        )
        return f"  seed {result['seed']}: {result['seconds']:.0f} s; {verdicts}"

    return line


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        argv,
        script=Path(__file__),
        description=__doc__.split("\n\n")[0],
        default_seeds=20,
        default_size="coverage",
        prefix=TMP_PREFIX,
        measure=read_measurements,
        seed_line=_seed_line,
        report=_report,
    )


if __name__ == "__main__":
    sys.exit(main())
