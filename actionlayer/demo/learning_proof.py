"""Does the level-5 rule learn? The demo world's planted channel and timing effects against what the policy did.

The demo world plants, per segment (account tier), the conversion of a delivered nudge for every channel and
every part of the day it arrives in (demo.yml `learning`), so the best arm of each segment is known. After a run
of the real loop this module reads the policy's logged decisions (main.fct_learning_decisions), its off-line
evaluation (main.mart_policy_evaluation) and the ledger's deliveries, and says:

  * per segment: the planted best arm, the arm the posteriors favour now, and the share of the decisions of the
    last `LATE_PASSES` loop passes (the last acting days and the final pass, i.e. the policy as the simulated
    period leaves it) that went to the planted best arm (target: above `TARGET_SHARE`);
  * the logged policy's conversion (closed outcomes of acted decisions, Wilson 95 % interval) against the
    uniform policy's, estimated off-line from the same log by IPW and SNIPS with their intervals, and the paired
    difference logged - uniform with its interval (target: above 0, verdict `beats_uniform`);
  * the share of deliveries that arrived inside the send window their arm chose (contact's local time): the
    timing effect is only learnable when the dispatcher honours the windows.

benchmarks/bench_learning.py repeats this over seeds; tests/test_demo_learning.py checks one seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from actionlayer.demo.world import DemoConfig, LearningEffect

#: The decisions of the last this-many loop passes measure where the policy ended up.
LATE_PASSES = 3
#: Required share of those decisions on the planted best arm, per segment.
TARGET_SHARE = 0.6


@dataclass(frozen=True)
class SegmentLearning:
    """One segment of a level-5 rule after a run, next to the world's planted truth."""

    segment: str
    best_arm: str
    planted_best: float
    planted_uniform: float
    decisions: int
    late_decisions: int
    late_best: int
    favoured_arm: str | None
    final_best_propensity: float | None

    @property
    def late_best_share(self) -> float | None:
        return self.late_best / self.late_decisions if self.late_decisions else None


@dataclass(frozen=True)
class LearningMeasurement:
    """A level-5 rule's learning after a run: per segment, the policy evaluation, and the send-window check."""

    rule_id: str
    segments: tuple[SegmentLearning, ...]
    decisions: int
    closed_outcomes: int
    logged: tuple[float | None, float | None, float | None]
    uniform_ipw: tuple[float | None, float | None, float | None]
    uniform_snips: tuple[float | None, float | None, float | None]
    uplift_vs_uniform: tuple[float | None, float | None, float | None]
    verdict: str | None
    delivered: int
    delivered_in_window: int

    @property
    def in_window_share(self) -> float | None:
        return self.delivered_in_window / self.delivered if self.delivered else None

    def problems(self) -> list[str]:
        """What falls short of the proof's criteria (empty when the rule learned)."""
        found = []
        for seg in self.segments:
            share = seg.late_best_share
            if share is None or share <= TARGET_SHARE:
                shown = "no decisions" if share is None else f"{share:.0%}"
                found.append(
                    f"{self.rule_id}/{seg.segment}: {shown} of the last {LATE_PASSES} passes' decisions on the "
                    f"best arm {seg.best_arm} (needs > {TARGET_SHARE:.0%})"
                )
        lower = self.uplift_vs_uniform[1]
        if self.verdict != "beats_uniform" or lower is None or lower <= 0:
            found.append(
                f"{self.rule_id}: logged conversion does not beat the uniform policy (verdict {self.verdict}, "
                f"difference interval from {_pts(lower)})"
            )
        return found


def _pts(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f} pts"


def _acting_pass_days(config: DemoConfig) -> list[date]:
    """The days the demo runs a loop pass: every acting day, then the final pass after the observed days."""
    start = config.start if isinstance(config.start, date) else config.start.date()
    days = [start + timedelta(days=n) for n in range(config.days)]
    return [*days, start + timedelta(days=config.days + config.observe_days)]


def _local_hour(moment: datetime, zone: str | None) -> int:
    try:
        tz = ZoneInfo(zone) if zone else UTC
    except (ValueError, KeyError):
        tz = UTC
    return moment.replace(tzinfo=UTC).astimezone(tz).hour


def read_learning(db: Path, config: DemoConfig) -> dict[str, LearningMeasurement]:
    """Every level-5 rule the world plants effects for, measured in the database `db` after a demo run."""
    if not Path(db).exists():
        raise FileNotFoundError(f"no database at {db}: run the demo first")
    late_from = _acting_pass_days(config)[-LATE_PASSES]
    result = {}
    with duckdb.connect(str(db), read_only=True) as con:
        for rule_id, effect in sorted(config.learning.items()):
            result[rule_id] = _measure(con, rule_id, effect, late_from)
    return result


def _measure(
    con: duckdb.DuckDBPyConnection, rule_id: str, effect: LearningEffect, late_from: date
) -> LearningMeasurement:
    decisions = con.execute(
        """select segment, arm, cast(decided_at as date) as day, arms, seq
        from main.fct_learning_decisions where rule_id = ? order by seq""",
        [rule_id],
    ).fetchall()
    favoured = dict(
        con.execute(
            "select segment, arm from main.mart_learning_arms where rule_id = ? and is_best_arm", [rule_id]
        ).fetchall()
    )
    # the propensities of each segment's latest decision: how the policy splits traffic as the period ends
    last_propensities = dict(
        con.execute(
            """select json_extract_string(details, '$.segment'), json_extract_string(details, '$.arm_propensities')
            from ops.action_ledger
            where event_type = 'proposed' and rule_id = ? and json_extract_string(details, '$.policy') is not null
            qualify row_number() over (partition by json_extract_string(details, '$.segment') order by seq desc) = 1""",
            [rule_id],
        ).fetchall()
    )
    segments = []
    for segment in sorted(effect.treated):
        best = effect.best_arm(segment)
        own = [row for row in decisions if row[0] == segment]
        late = [row for row in own if row[2] >= late_from]
        propensities = json.loads(last_propensities[segment]) if last_propensities.get(segment) else {}
        segments.append(
            SegmentLearning(
                segment=segment,
                best_arm=best,
                planted_best=effect.probability(segment, *best.split("@")),
                planted_uniform=effect.uniform_value(segment),
                decisions=len(own),
                late_decisions=len(late),
                late_best=sum(row[1] == best for row in late),
                favoured_arm=favoured.get(segment),
                final_best_propensity=propensities.get(best),
            )
        )
    evaluation = con.execute(
        """select decisions, closed_outcomes, logged_conversion, logged_conversion_lower, logged_conversion_upper,
                  uniform_ipw, uniform_ipw_lower, uniform_ipw_upper, uniform_snips, uniform_snips_lower,
                  uniform_snips_upper, uplift_vs_uniform, uplift_vs_uniform_lower, uplift_vs_uniform_upper, verdict
        from main.mart_policy_evaluation where rule_id = ?""",
        [rule_id],
    ).fetchall()
    row: list[Any] = list(evaluation[0]) if evaluation else [0, 0, *([None] * 12), None]
    delivered = con.execute(
        """select delivered.occurred_at, json_extract_string(proposed.details, '$.send_timezone'),
                  json_extract(proposed.details, '$.send_window_hours')
        from ops.action_ledger as delivered
        join ops.action_ledger as proposed
            on proposed.action_id = delivered.action_id and proposed.event_type = 'proposed'
        where delivered.event_type = 'delivered' and delivered.rule_id = ?
            and json_extract_string(proposed.details, '$.policy') is not null""",
        [rule_id],
    ).fetchall()
    in_window = 0
    for at, zone, hours in delivered:
        if hours is None:
            continue  # a decision without its window cannot prove it arrived inside one: counted as outside
        start, end = json.loads(hours) if isinstance(hours, str) else hours
        # the zone the dispatcher used (UTC when the contact had none), as the proposal recorded it
        in_window += start <= _local_hour(at, zone) < end
    return LearningMeasurement(
        rule_id=rule_id,
        segments=tuple(segments),
        decisions=int(row[0] or 0),
        closed_outcomes=int(row[1] or 0),
        logged=(row[2], row[3], row[4]),
        uniform_ipw=(row[5], row[6], row[7]),
        uniform_snips=(row[8], row[9], row[10]),
        uplift_vs_uniform=(row[11], row[12], row[13]),
        verdict=row[14],
        delivered=len(delivered),
        delivered_in_window=in_window,
    )
