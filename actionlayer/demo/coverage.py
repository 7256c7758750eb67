"""Does the measured uplift tell the truth? The demo world's planted effects against main.mart_rule_performance.

The demo world plants, per rule, the probability of the outcome with and without the action (demo.yml
`effects`), so the true uplift of every rule is known: treated - baseline. After a run of the real loop, each
rule's row in `main.mart_rule_performance` has the measured uplift and its 95% Newcombe interval. This module
reads both and says, per rule, whether the interval covers the planted effect; benchmarks/bench_coverage.py
repeats that over many seeds and tests/test_demo_coverage.py checks one seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from actionlayer.demo.world import DemoConfig

# Interval bounds are doubles computed in SQL; a planted effect exactly on a bound counts as covered.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class RuleMeasurement:
    """One rule's measured uplift after a run, next to the effect the world planted."""

    rule_id: str
    planted: float | None
    holdout_share: float | None
    acted_closed: int
    acted_converted: int
    held_out_closed: int
    held_out_converted: int
    uplift: float | None
    lower: float | None
    upper: float | None
    verdict: str | None

    @property
    def measured(self) -> bool:
        """An interval exists (both arms have at least one closed outcome)."""
        return self.lower is not None and self.upper is not None

    def covers(self, value: float | None) -> bool | None:
        """Whether the 95% interval contains `value`; None when there is no interval or no value."""
        if not self.measured or value is None:
            return None
        assert self.lower is not None and self.upper is not None
        return self.lower - TOLERANCE <= value <= self.upper + TOLERANCE

    @property
    def width(self) -> float | None:
        if not self.measured:
            return None
        assert self.lower is not None and self.upper is not None
        return self.upper - self.lower


def planted_effects(config: DemoConfig) -> dict[str, float]:
    """Per rule, the planted effect on its outcome: treated - baseline (percentage points as a fraction)."""
    return {rule_id: effect.treated - effect.baseline for rule_id, effect in config.effects.items()}


def harmful_rules(config: DemoConfig) -> list[str]:
    """Rules the world plants as harmful (the action lowers the outcome's probability)."""
    return sorted(rule_id for rule_id, effect in config.effects.items() if effect.treated < effect.baseline)


def no_effect_rules(config: DemoConfig) -> list[str]:
    """Rules the world plants with no effect at all (treated == baseline)."""
    return sorted(rule_id for rule_id, effect in config.effects.items() if effect.treated == effect.baseline)


def read_measurements(db: Path, config: DemoConfig) -> dict[str, RuleMeasurement]:
    """Every rule's row of main.mart_rule_performance in the database `db`, with its planted effect."""
    if not Path(db).exists():
        raise FileNotFoundError(f"no database at {db}: run the demo first")
    planted = planted_effects(config)
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            """select rule_id, holdout_share, acted_closed, acted_converted, held_out_closed, held_out_converted,
                      uplift, uplift_ci_lower, uplift_ci_upper, verdict
            from main.mart_rule_performance
            order by rule_id"""
        ).fetchall()
    return {
        rule_id: RuleMeasurement(
            rule_id=rule_id,
            planted=planted.get(rule_id),
            holdout_share=None if share is None else float(share),
            acted_closed=int(acted or 0),
            acted_converted=int(acted_won or 0),
            held_out_closed=int(held or 0),
            held_out_converted=int(held_won or 0),
            uplift=None if uplift is None else float(uplift),
            lower=None if lower is None else float(lower),
            upper=None if upper is None else float(upper),
            verdict=verdict,
        )
        for rule_id, share, acted, acted_won, held, held_won, uplift, lower, upper, verdict in rows
    }
