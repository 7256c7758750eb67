"""Does the level-5 rule learn? The demo's ticket_reply_nudge against its planted best arms, over many seeds.

The demo world plants, per segment (account tier), the conversion of a delivered nudge for every channel and
part of the day it arrives in (demo.yml `learning`), so each segment's best arm (`channel@daypart`) is known.
Each seed runs the real demo loop (world, SoR folder, Dagster job, dbt rules and marts, ledger, review files,
dispatch with the send windows) in its own process and its own temporary ACTIONLAYER_DATA / ACTIONLAYER_DB /
DAGSTER_HOME, then reads the policy's logged decisions, its off-line evaluation and the ledger's deliveries
(actionlayer.demo.learning_proof.read_learning) and prints, over the seeds:

  * per segment: the planted best arm, in how many seeds the posteriors favour it at the end, and the share of
    the last LATE_PASSES loop passes' decisions that went to it (median, minimum, seeds above TARGET_SHARE), and
    the best arm's final propensity;
  * per rule: the logged policy's conversion against the uniform policy's off-line IPW and SNIPS estimates, the
    paired difference logged - uniform with its 95% interval, the verdicts, and the share of deliveries that
    arrived inside the send window their arm chose.

Criterion: a seed passes when every segment's late best-arm share is above 60% (TARGET_SHARE) and the verdict
is `beats_uniform` (the difference's interval above 0), i.e. `LearningMeasurement.problems()` is empty for
every level-5 rule. PASS when at least 90% of the seeds pass (9 of 10) and every delivery of every seed arrived
inside its chosen send window (the timing effect is only learnable when the dispatcher honours the windows).

    .venv/bin/python benchmarks/bench_learning.py [--seeds 10] [--first-seed 20260901] [--size default]
                                                  [--jobs 1] [--json results.json] [--keep]

Exit code 0 on PASS, 1 on FAIL, 2 when a seed could not be run (after one retry).
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo_seeds import bench_main  # noqa: E402

from actionlayer.demo.learning_proof import (  # noqa: E402
    LATE_PASSES,
    TARGET_SHARE,
    LearningMeasurement,
    SegmentLearning,
    read_learning,
)

REQUIRED_SHARE = 0.9  # 9 of 10
TMP_PREFIX = "actionlayer-learning-"


def measurement_from_dict(row: dict[str, Any]) -> LearningMeasurement:
    """A `LearningMeasurement` back from `dataclasses.asdict` after a JSON round trip (tuples came back lists)."""
    interval_fields = ("logged", "uniform_ipw", "uniform_snips", "uplift_vs_uniform")
    return LearningMeasurement(
        **{
            **row,
            "segments": tuple(SegmentLearning(**seg) for seg in row["segments"]),
            **{name: tuple(row[name]) for name in interval_fields},
        }
    )


def _pct(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}%}"


def _pts(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f}"


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _minimum(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _print_table(headings: tuple[str, ...], lines: list[tuple[str, ...]]) -> None:
    """First column left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headings)]

    def row(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(row(headings))
    for line in lines:
        print(row(line))


def _seed_line(result: dict[str, Any]) -> str:
    """One finished seed: its seconds, per rule the late best-arm share per segment and the verdict."""
    if "rules" not in result:
        return f"  seed {result['seed']}: FAILED\n{result['error']}"
    parts = []
    for rule_id, row in sorted(result["rules"].items()):
        m = measurement_from_dict(row)
        shares = ", ".join(f"{seg.segment} {_pct(seg.late_best_share)}" for seg in m.segments)
        parts.append(f"{rule_id} late best-arm share {shares}; verdict {m.verdict or '–'}")
    line = f"  seed {result['seed']}: {result['seconds']:.0f} s; " + "; ".join(parts)
    for failure in result.get("retried_after", []):
        line += f"\n    (retried; {failure.splitlines()[-1][:300]})"
    return line


def _segment_lines(rows: list[LearningMeasurement]) -> list[tuple[str, ...]]:
    n = len(rows)
    lines = []
    for name in sorted({seg.segment for m in rows for seg in m.segments}):
        segs = [seg for m in rows for seg in m.segments if seg.segment == name]
        first = segs[0]
        shares = [seg.late_best_share for seg in segs]
        lines.append(
            (
                name,
                first.best_arm,
                f"{first.planted_best:.0%} / {first.planted_uniform:.0%}",
                f"{sum(seg.favoured_arm == seg.best_arm for seg in segs)}/{n}",
                f"{_median([seg.late_decisions for seg in segs]):.0f}",
                _pct(_median(shares)),
                _pct(_minimum(shares)),
                f"{sum(s is not None and s > TARGET_SHARE for s in shares)}/{n}",
                _pct(_median([seg.final_best_propensity for seg in segs])),
            )
        )
    return lines


def _policy_line(rule_id: str, rows: list[LearningMeasurement]) -> tuple[str, ...]:
    verdicts: dict[str, int] = {}
    for m in rows:
        verdicts[m.verdict or "–"] = verdicts.get(m.verdict or "–", 0) + 1

    def med(pick: Callable[[LearningMeasurement], float | None]) -> float | None:
        return _median([pick(m) for m in rows])

    lower, upper = med(lambda m: m.uplift_vs_uniform[1]), med(lambda m: m.uplift_vs_uniform[2])
    return (
        rule_id,
        f"{med(lambda m: m.decisions):.0f} / {med(lambda m: m.closed_outcomes):.0f}",
        _pct(med(lambda m: m.logged[0]), 1),
        _pct(med(lambda m: m.uniform_ipw[0]), 1),
        _pct(med(lambda m: m.uniform_snips[0]), 1),
        _pts(med(lambda m: m.uplift_vs_uniform[0])),
        f"[{_pts(lower)}, {_pts(upper)}]",
        ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())),
        _pct(_minimum([m.in_window_share for m in rows]), 1),
    )


def _report(results: list[dict[str, Any]], size: str) -> int:
    done = [r for r in results if "rules" in r]
    failed = [r for r in results if "rules" not in r]
    n = len(done)
    if not done:
        print("FAIL: no seed ran; the first error:\n" + failed[0]["error"])
        return 2
    required = math.ceil(REQUIRED_SHARE * len(results))
    per_rule: dict[str, list[LearningMeasurement]] = {}
    per_seed: dict[int, list[LearningMeasurement]] = {}
    for result in done:
        for rule_id, row in sorted(result["rules"].items()):
            m = measurement_from_dict(row)
            per_rule.setdefault(rule_id, []).append(m)
            per_seed.setdefault(result["seed"], []).append(m)
    if not per_rule:
        print(
            f"FAIL: size {size!r} plants no level-5 rule (demo.yml `learning` is empty): nothing to measure"
        )
        return 1

    for rule_id, rows in sorted(per_rule.items()):
        print()
        print(
            f"{rule_id}: decisions of the last {LATE_PASSES} passes on the planted best arm, per segment, "
            f"{n} seed(s), size {size!r}"
        )
        _print_table(
            (
                "segment",
                "planted best arm",
                "planted conv. best/uniform",
                "favoured = best",
                "late decisions",
                "median late share",
                "min late share",
                f"seeds > {TARGET_SHARE:.0%}",
                "median final propensity",
            ),
            _segment_lines(rows),
        )
    print()
    print(
        f"The policy against the uniform policy (off-line, from the same log), medians over {n} seed(s) "
        "(differences in percentage points)"
    )
    _print_table(
        (
            "rule",
            "decisions / closed",
            "logged conv.",
            "uniform IPW",
            "uniform SNIPS",
            "logged - uniform",
            "median 95% interval",
            "verdicts",
            "min in-window",
        ),
        [_policy_line(rule_id, rows) for rule_id, rows in sorted(per_rule.items())],
    )
    print()

    seed_problems = {seed: [p for m in rows for p in m.problems()] for seed, rows in sorted(per_seed.items())}
    passing = sum(not found for found in seed_problems.values())
    problems: list[str] = []
    print(
        f"Criterion: a seed passes when, for every level-5 rule, more than {TARGET_SHARE:.0%} of the last "
        f"{LATE_PASSES} passes' decisions in each segment went to the planted best arm and the verdict is "
        f"beats_uniform (the difference's interval above 0); PASS when at least {required} of {len(results)} seeds "
        f"({REQUIRED_SHARE:.0%}) pass and every delivery arrived inside its chosen send window."
    )
    print(f"seeds passing: {passing}/{len(results)}")
    for seed, found in seed_problems.items():
        if found:
            print(f"  seed {seed}: " + "; ".join(found))
    for result in failed:
        print(f"  seed {result['seed']}: did not run (error above)")
    if passing < required:
        problems.append(f"only {passing} of {len(results)} seeds pass (needs {required})")
    for seed, rows in sorted(per_seed.items()):
        for m in rows:
            share = m.in_window_share
            if share is not None and share < 1:
                problems.append(
                    f"seed {seed}: {m.rule_id} delivered {m.delivered - m.delivered_in_window} of {m.delivered} "
                    f"messages outside the send window their arm chose ({share:.1%} in window; the dispatcher "
                    "must honour the send windows)"
                )
    for result in failed:
        problems.append(f"seed {result['seed']} did not run: {result['error'].splitlines()[-1][:300]}")
    if problems:
        print("FAIL: " + "; ".join(problems))
    else:
        print("PASS")
    if failed:
        return 2
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        argv,
        script=Path(__file__),
        description=__doc__.split("\n\n")[0],
        default_seeds=10,
        default_size="default",
        prefix=TMP_PREFIX,
        measure=read_learning,
        seed_line=lambda _config: _seed_line,
        report=_report,
    )


if __name__ == "__main__":
    sys.exit(main())
