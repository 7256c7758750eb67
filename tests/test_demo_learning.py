"""One seed of the learning benchmark (benchmarks/bench_learning.py): the level-5 rule ticket_reply_nudge in the
real demo loop (the session fixture `quick_demo`, tests/conftest.py: Dagster job, dbt, ledger, dispatch with
the send windows honoured, outcomes from the SoR history), against the channel and timing effects demo.yml
plants per segment.

The world converts a delivered nudge with a probability that depends on the account's tier, the channel and the
local part of the day the message ARRIVES in; the best arm is smb line@afternoon and mid email@morning (65 %
against about a third for a uniformly random arm). Checked here:
  * every delivery arrived inside the send window its arm chose, in the contact's local time (a dispatcher that
    sent on the next pass regardless would break this, and with it the timing effect);
  * after the simulated period the posteriors favour the planted best arm in each segment, and more than 60 %
    of the last passes' decisions went to it (the exploration floor keeps the rest);
  * the logged policy's conversion beats the uniform policy's off-line (IPW) estimate: the paired difference's
    95 % interval is above 0 (verdict beats_uniform), and the learning marts agree with the Python estimators.
These fail when the world plants no arm differences (the policy then has nothing to find: shares stay near the
floor-mixed uniform and the difference covers 0).
"""

from __future__ import annotations

import duckdb
import pytest
from conftest import QuickDemo

from actionlayer import learning
from actionlayer.demo.learning_proof import LATE_PASSES, TARGET_SHARE, LearningMeasurement, read_learning
from actionlayer.demo.world import LEARNING_RULE_IDS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def measured(quick_demo: QuickDemo) -> dict[str, LearningMeasurement]:
    return read_learning(quick_demo.db, quick_demo.config)


def test_the_learning_rule_ran_and_every_delivery_arrived_inside_its_send_window(
    measured: dict[str, LearningMeasurement],
) -> None:
    assert set(measured) == set(LEARNING_RULE_IDS)
    for result in measured.values():
        assert result.decisions >= 300 and result.closed_outcomes >= 150, result
        assert {seg.segment for seg in result.segments} == {"smb", "mid"}
        assert result.delivered >= 200 and result.delivered_in_window == result.delivered, result


def test_the_policy_ends_on_the_planted_best_arm_in_every_segment(
    measured: dict[str, LearningMeasurement],
) -> None:
    for result in measured.values():
        for seg in result.segments:
            assert seg.favoured_arm == seg.best_arm, seg
            assert seg.late_decisions >= 20, seg
            assert seg.late_best_share is not None and seg.late_best_share > TARGET_SHARE, (
                f"{seg.segment}: {seg.late_best_share:.0%} of the last {LATE_PASSES} passes on {seg.best_arm}"
            )


def test_the_learned_policy_beats_the_uniform_policy_off_line(
    measured: dict[str, LearningMeasurement], quick_demo: QuickDemo
) -> None:
    for result in measured.values():
        assert result.verdict == "beats_uniform", result
        value, lower, upper = result.uplift_vs_uniform
        assert value is not None and lower is not None and upper is not None and 0 < lower < value < upper
        assert result.logged[0] is not None and result.uniform_ipw[0] is not None
        assert result.logged[0] > result.uniform_ipw[0]
        assert result.problems() == []
    # the mart's estimates are the Python estimators' on the same logged decisions
    with duckdb.connect(str(quick_demo.db), read_only=True) as con:
        rows = con.execute(
            """select propensity, arm_count, closed_outcome_achieved, arm, segment
            from main.fct_learning_decisions
            where rule_id = 'ticket_reply_nudge' and closed_outcome_achieved is not null"""
        ).fetchall()
    logged = [
        learning.LoggedDecision(arm, float(p), int(k), 1.0 if achieved else 0.0, segment)
        for p, k, achieved, arm, segment in rows
    ]
    result = measured["ticket_reply_nudge"]
    assert learning.uniform_ipw(logged).value == pytest.approx(result.uniform_ipw[0], abs=1e-9)
    assert learning.uniform_difference(logged).lower == pytest.approx(result.uplift_vs_uniform[1], abs=1e-9)
    assert learning.logged_value(logged).value == pytest.approx(result.logged[0], abs=1e-9)


def test_the_demo_summary_shows_what_the_rule_learned(quick_demo: QuickDemo) -> None:
    out = quick_demo.stdout
    assert "Level 5: what ticket_reply_nudge learned" in out
    assert "verdict beats_uniform" in out and "Deliveries inside their chosen send window" in out
