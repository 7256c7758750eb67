"""Level-5 rules that learn their channel and send window: the Thompson sampler and its exploration floor,
the rule config's validation, the proposal pass writing each decision (arm, propensity, send window) to a real
DuckDB ledger, the dispatcher holding an action until its window opens (real file outbox), off-line evaluation
against the uniform policy, and a simulated environment where the policy must find the best arm."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest
from proposal_support import AS_OF, candidate, rule_meta, write_candidates
from sync_support import clean_world, write_csv_folder
from test_dbt_project import generic_test_results, run_dbt

from action_sinks.dispatcher import dispatch
from action_sinks.file import FileOutbox
from action_sinks.registry import SINK_NAMES, ChannelSinks
from actionlayer import learning, ledger
from actionlayer.learning import (
    ArmCounts,
    LearningConfig,
    LoggedDecision,
    Posterior,
    SendWindow,
    ThompsonPolicy,
)
from actionlayer.proposals import _learning_counts, propose
from actionlayer.rules import CHANNELS, LEARNING_CHANNELS, RuleConfigError, rule_from_meta
from actionlayer.settings import EscalationRoutes
from connectors.files import ensure_ops_tables, load_folder
from connectors.history import ensure_hist_tables, record_load_history

ROUTES = EscalationRoutes(managers={}, alerts_to="ops@example.com")
OWNER_REVIEW = "owner@example.com"
LEARNING = {
    "segment_by": "tier",
    "arms": {"channel": ["email", "line"], "send_window": ["morning", "afternoon"]},
    "windows": {"morning": [8, 12], "afternoon": [13, 17]},
    "exploration_floor": 0.2,
    "prior": {"alpha": 1, "beta": 1},
}
ARM_IDS = ["email@morning", "email@afternoon", "line@morning", "line@afternoon"]


def _config(floor: float = 0.1) -> LearningConfig:
    return LearningConfig(
        channels=("email", "line"),
        windows=(SendWindow("morning", 8, 12), SendWindow("afternoon", 13, 17)),
        segment_by="tier",
        exploration_floor=floor,
    )


def _learning_rule(rule_id: str = "learn", **learning_overrides):
    block = {**LEARNING, **learning_overrides}
    return rule_from_meta(f"rule_{rule_id}", rule_meta(rule_id, 5, learning=block))


# ----------------------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("floor", [0.0, 0.1, 0.5])
def test_propensities_sum_to_one_and_every_arm_keeps_the_floor(floor):
    cases = [
        [Posterior(1, 1)] * 4,
        [Posterior(50, 10), Posterior(2, 40), Posterior(3, 30), Posterior(1, 60)],
        [Posterior(200, 800), Posterior(210, 790)],
        [Posterior(5, 5)],
    ]
    for posteriors in cases:
        probabilities = learning.propensities(posteriors, floor, seed=7)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-12)
        assert min(probabilities) >= floor / len(posteriors) - 1e-12
        assert max(probabilities) <= 1.0 + 1e-12
    # a hopeless arm still gets exactly floor / K: the exploration floor is what keeps IPW possible
    hopeless = learning.propensities([Posterior(500, 10), Posterior(1, 500), Posterior(1, 500)], 0.3, seed=1)
    assert hopeless[1] == pytest.approx(0.1, abs=1e-9) and hopeless[2] == pytest.approx(0.1, abs=1e-9)
    assert hopeless[0] == pytest.approx(0.8, abs=1e-9)


def test_propensities_favour_a_clearly_better_arm_and_split_equal_ones_evenly():
    policy = ThompsonPolicy(
        "learn",
        _config(floor=0.1),
        {
            ("gold", "line@afternoon"): ArmCounts(45, 15),
            ("gold", "email@morning"): ArmCounts(15, 45),
            ("gold", "email@afternoon"): ArmCounts(12, 48),
            ("gold", "line@morning"): ArmCounts(10, 50),
        },
    )
    gold = dict(zip(ARM_IDS, policy.propensities("gold"), strict=True))
    assert gold["line@afternoon"] > 0.9
    assert max(v for arm, v in gold.items() if arm != "line@afternoon") < 0.05
    # a segment without outcomes is decided by the prior: every arm about 1/4 (Monte Carlo, 4000 draws)
    silver = policy.propensities("silver")
    assert all(abs(p - 0.25) < 0.03 for p in silver)
    # P_TS agrees with the exact two-arm value: P(Beta(3,1) > Beta(1,3)) = 1 - 3 B(3, 4) = 1 - 36/720 = 0.95
    two = learning.probability_best([Posterior(3, 1), Posterior(1, 3)], draws=40_000, seed=3)
    assert two[0] == pytest.approx(0.95, abs=0.005)


def test_the_choice_is_deterministic_per_action_id_and_follows_the_propensities():
    counts = {("gold", "line@afternoon"): ArmCounts(8, 4), ("gold", "email@morning"): ArmCounts(4, 8)}
    first = ThompsonPolicy("learn", _config(floor=0.2), counts)
    again = ThompsonPolicy("learn", _config(floor=0.2), counts)  # a re-run of the same pass
    assert first.propensities("gold") == again.propensities("gold")
    for n in range(50):
        assert first.decide(f"a{n}", "gold") == again.decide(f"a{n}", "gold")
    decision = first.decide("a1", "gold")
    assert decision.propensity == decision.propensities[decision.arms.index(decision.arm)]
    # over many action ids the arms are drawn in proportion to the recorded propensities
    chosen = [first.decide(f"id-{n}", "gold").arm.id for n in range(6000)]
    for arm, propensity in zip(ARM_IDS, first.propensities("gold"), strict=True):
        assert chosen.count(arm) / len(chosen) == pytest.approx(propensity, abs=0.02)
    # the draw itself depends on nothing but the action id
    assert learning.draw_arm("x", [0.5, 0.5]) == learning.draw_arm("x", [0.5, 0.5])
    assert learning.draw_arm("x", [0.0, 1.0]) == 1 and learning.draw_arm("y", [1.0, 0.0]) == 0


def test_send_window_opens_in_the_contacts_local_time():
    morning = SendWindow("morning", 8, 12)
    nine_utc = AS_OF  # 2026-09-10 09:00 UTC
    assert morning.next_opening(nine_utc, None) == nine_utc  # inside the window: right away
    assert morning.next_opening(nine_utc.replace(hour=13), None) == nine_utc.replace(day=11, hour=8)
    assert morning.next_opening(nine_utc.replace(hour=3), "UTC") == nine_utc.replace(hour=8)
    # 09:00 UTC is 18:00 in Tokyo: the next morning there opens at 08:00 JST = 23:00 UTC the same day
    assert morning.next_opening(nine_utc, "Asia/Tokyo") == nine_utc.replace(hour=23)
    # 09:00 UTC is 05:00 in New York (EDT): the window opens at 12:00 UTC
    assert morning.next_opening(nine_utc, "America/New_York") == nine_utc.replace(hour=12)
    assert morning.next_opening(nine_utc, "Not/AZone") == nine_utc  # unknown zone: UTC
    assert learning.contact_timezone({"contact_timezone": "Asia/Tokyo"}) == "Asia/Tokyo"
    assert learning.contact_timezone({"timezone": "Mars/Olympus"}) is None
    assert learning.segment_of({"tier": "gold"}, "tier") == "gold"
    assert learning.segment_of({"reason": '{"tier": "silver"}'}, "tier") == "silver"
    assert learning.segment_of({"reason": "{}"}, "tier") == learning.UNKNOWN_SEGMENT
    assert learning.segment_of({"tier": "gold"}, None) == learning.ALL_SEGMENTS


# ----------------------------------------------------------------------------------------------- config


def test_a_level_5_rule_declares_its_arms_and_the_config_is_validated_naming_rule_and_key():
    rule = _learning_rule()
    assert rule.learning is not None and rule.guardrails is not None
    assert [arm.id for arm in rule.learning.arms] == ARM_IDS
    assert rule.learning.segment_by == "tier" and rule.learning.exploration_floor == 0.2
    # dimensions not listed fall back to the rule's channel and to a window that is always open
    only_windows = rule_from_meta(
        "rule_w", rule_meta("w", 5, learning={"arms": {"send_window": ["evening", "morning"]}})
    )
    assert [arm.id for arm in only_windows.learning.arms] == ["email@evening", "email@morning"]
    assert only_windows.learning.window("evening") == SendWindow("evening", 17, 20)
    only_channels = rule_from_meta("rule_c", rule_meta("c", 5, learning={"arms": {"channel": ["task"]}}))
    assert [arm.id for arm in only_channels.learning.arms] == ["task@anytime"]
    assert set(LEARNING_CHANNELS) - set(CHANNELS) <= set(SINK_NAMES)

    meta = rule_meta("learn", 5)
    with pytest.raises(
        RuleConfigError, match=r"rule model rule_learn: a level-5 rule .* config\.meta\.learning"
    ):
        rule_from_meta("rule_learn", meta)
    no_guardrails = rule_meta("learn", 5, learning=LEARNING)
    del no_guardrails["guardrails"]
    with pytest.raises(RuleConfigError, match=r"rule_learn: a level-5 rule .* must declare its guardrails"):
        rule_from_meta("rule_learn", no_guardrails)
    with pytest.raises(RuleConfigError, match=r"rule_l4: config\.meta\.learning is only for level-5 rules"):
        rule_from_meta("rule_l4", rule_meta("l4", 4, learning=LEARNING))

    bad = {
        r"learning: unknown key\(s\) explore": {"explore": 0.1},
        r"learning\.arms\.channel must be a non-empty list": {"arms": {"channel": []}},
        r"learning\.arms\.send_window must be a non-empty list": {"arms": {"send_window": []}},
        r"learning\.arms must be a mapping": {"arms": {}},
        r"learning\.arms: unknown key\(s\) tone": {"arms": {"tone": ["warm"]}},
        r"learning\.arms\.channel: 'fax' is not a channel the sink registry knows": {
            "arms": {"channel": ["email", "fax"]}
        },
        r"learning\.arms\.send_window: window 'night' is neither declared": {
            "arms": {"send_window": ["night"]}
        },
        r"learning\.exploration_floor = 1 must be a number in \[0, 1\)": {"exploration_floor": 1},
        r"learning\.exploration_floor = -0\.1 must be": {"exploration_floor": -0.1},
        r"learning\.windows\.morning = \[12, 8\] must be \[start hour, end hour\]": {
            "windows": {"morning": [12, 8], "afternoon": [13, 17]}
        },
        r"learning\.windows\.afternoon = \[13, 25\]": {
            "windows": {"morning": [8, 12], "afternoon": [13, 25]}
        },
        r"learning\.windows\.morning = \['8', 12\]": {
            "windows": {"morning": ["8", 12], "afternoon": [13, 17]}
        },
        r"learning\.prior\.beta = 0 must be a number > 0": {"prior": {"alpha": 1, "beta": 0}},
        r"learning\.prior: unknown key\(s\) gamma": {"prior": {"alpha": 1, "gamma": 2}},
        r"learning\.segment_by must be": {"segment_by": ""},
    }
    for message, override in bad.items():
        with pytest.raises(RuleConfigError, match=r"rule model rule_learn: config\.meta\." + message):
            _learning_rule(**override)


# ----------------------------------------------------------------------------------------------- proposals


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect(str(tmp_path / "actionlayer.duckdb"))
    ledger.ensure_schema(connection)
    yield connection
    connection.close()


@pytest.fixture
def outbox(tmp_path) -> ChannelSinks:
    return ChannelSinks({}, FileOutbox(tmp_path / "outbox"))


def _proposed(con, action_id: str) -> dict:
    [row] = [r for r in ledger.trail(con, action_id) if r["event_type"] == "proposed"]
    return row | {"details": json.loads(row["details"])}


def _learning_candidates(prefix: str, count: int, tier: str, **extra) -> list[dict]:
    return [candidate(f"{prefix}{n}", "learn", level=5, tier=tier, **extra) for n in range(count)]


def _write_outcomes(con, rows: list[tuple]) -> None:
    """main.fct_outcomes as the outcome mart's contract has it (one row per ledger action)."""
    con.execute(
        """create or replace table main.fct_outcomes (action_id varchar, rule_id varchar, arm_group varchar,
        outcome_status varchar, outcome_achieved boolean, outcome_at timestamp, outcome_window_closed boolean)"""
    )
    con.executemany("insert into main.fct_outcomes values (?, ?, ?, ?, ?, ?, ?)", rows)


def test_a_proposal_pass_writes_the_arm_its_propensity_and_send_window_to_the_ledger(con):
    rules = {"learn": _learning_rule()}
    rows = _learning_candidates("g", 30, "gold") + [
        # its contact lives in Tokyo: 09:00 UTC is 18:00 there, both windows open the next local day
        candidate("tokyo", "learn", level=5, tier="silver", contact_timezone="Asia/Tokyo"),
        candidate("held", "learn", "held_out", "holdout", level=5, tier="gold"),
    ]
    write_candidates(con, rows)
    report = propose(con, AS_OF, rules, ROUTES)
    assert report.learning_source.startswith("priors only (main.fct_outcomes does not exist yet)")
    assert sum(report.learned.values()) == 31  # the held-out one gets no arm

    proposal = _proposed(con, "g0")
    details = proposal["details"]
    assert details["policy"] == "thompson" and details["segment"] == "gold"
    assert details["arms"] == ARM_IDS and details["arm"] in ARM_IDS
    assert details["arm"] == f"{details['arm_channel']}@{details['arm_send_window']}"
    assert proposal["channel"] == details["arm_channel"]
    # no outcomes yet: the prior alone, every arm about 1/4 (and never below the floor 0.2 / 4)
    assert details["propensity"] == pytest.approx(0.25, abs=0.03) and details["propensity"] >= 0.05
    assert sum(details["arm_propensities"].values()) == pytest.approx(1.0)
    assert details["arm_propensities"][details["arm"]] == details["propensity"]
    # as_of is 09:00 UTC and the contact's timezone is unknown: morning is open now, afternoon opens at 13:00
    expected = {"morning": "2026-09-10T09:00:00Z", "afternoon": "2026-09-10T13:00:00Z"}
    assert details["not_before"] == expected[details["arm_send_window"]]
    assert details["send_timezone"] == "UTC" and details["send_timezone_known"] is False
    tokyo = _proposed(con, "tokyo")["details"]
    assert tokyo["segment"] == "silver" and tokyo["send_timezone"] == "Asia/Tokyo"
    # morning in Tokyo opens 23:00 UTC; afternoon (13:00 JST) opens 04:00 UTC on the 11th
    assert (
        tokyo["not_before"]
        == {"morning": "2026-09-10T23:00:00Z", "afternoon": "2026-09-11T04:00:00Z"}[tokyo["arm_send_window"]]
    )
    assert "policy" not in _proposed(con, "held")["details"]
    assert _proposed(con, "held")["channel"] == "email"
    # the arms are all used, and the automatic approval says where and when the action goes
    assert len({_proposed(con, f"g{n}")["details"]["arm"] for n in range(30)}) == 4
    states = {row["action_id"]: row for row in ledger.states(con)}
    assert states["g0"]["event_type"] == "approved" and states["g0"]["channel"] == details["arm_channel"]
    assert states["tokyo"]["next_action"].startswith(
        f"dispatch via {tokyo['arm_channel']}, not before 2026-09-"
    )
    # a re-run of the pass writes nothing new, and the arms stay what they were
    assert propose(con, AS_OF, rules, ROUTES).new_events == 0
    assert _proposed(con, "g0")["details"] == details


def test_the_next_pass_learns_from_closed_outcomes_of_acted_actions_only(con):
    rules = {"learn": _learning_rule()}
    write_candidates(con, _learning_candidates("p", 60, "gold"))
    propose(con, AS_OF, rules, ROUTES)
    first = {f"p{n}": _proposed(con, f"p{n}")["details"]["arm"] for n in range(60)}
    closed_at = AS_OF + timedelta(days=5)
    # only line@afternoon converts among the closed outcomes of acted actions
    outcomes = [
        (action_id, "learn", "acted", "achieved" if arm == "line@afternoon" else "not_achieved",
         arm == "line@afternoon", closed_at, True)
        for action_id, arm in first.items()
        if action_id != "p0"
    ]  # fmt: skip
    # p0 achieved early while its window is still open: not counted until the window closes
    outcomes.append(("p0", "learn", "acted", "achieved", True, closed_at, False))
    extra = _learning_candidates("x", 3, "gold")
    write_candidates(con, extra)
    propose(con, AS_OF + timedelta(hours=1), rules, ROUTES)
    x_arms = {f"x{n}": _proposed(con, f"x{n}")["details"]["arm"] for n in range(3)}
    outcomes += [  # none of these may count: an open window, a held-out and a never-acted action
        ("x0", "learn", "acted", "open", None, None, False),
        ("x1", "learn", "held_out", "achieved", True, closed_at, True),
        ("x2", "learn", "not_acted", "achieved", True, closed_at, True),
    ]
    _write_outcomes(con, outcomes)

    write_candidates(con, _learning_candidates("q", 5, "gold") + _learning_candidates("s", 5, "silver"))
    report = propose(con, AS_OF + timedelta(days=6), rules, ROUTES)
    assert report.learning_source == "main.fct_outcomes, 59 closed outcomes"
    gold = _proposed(con, "q0")["details"]["arm_propensities"]
    # line@afternoon: Beta(1 + s, 1) against Beta(1, 1 + f) elsewhere → P_TS ≈ 1, so (1 - 0.2) + 0.2 / 4
    assert gold["line@afternoon"] == pytest.approx(0.85, abs=0.01)
    assert all(gold[arm] == pytest.approx(0.05, abs=0.01) for arm in ARM_IDS if arm != "line@afternoon")
    silver = _proposed(con, "s0")["details"]["arm_propensities"]  # no outcomes in this segment yet
    assert all(abs(p - 0.25) < 0.03 for p in silver.values())
    assert sum(_proposed(con, f"q{n}")["details"]["arm"] == "line@afternoon" for n in range(5)) >= 3
    assert set(x_arms.values()) <= set(ARM_IDS)


# ----------------------------------------------------------------------------------------------- dispatch


def _sent(outbox: ChannelSinks, channel: str) -> set[str]:
    folder = Path(outbox.default.root) / channel
    return {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()


def test_the_dispatcher_holds_an_action_until_its_send_window_opens_then_sends_it(con, outbox):
    rules = {
        "learn": _learning_rule(arms={"channel": ["email", "line"], "send_window": ["afternoon"]}),
        "auto": rule_from_meta("rule_auto", rule_meta("auto", 4)),
    }
    write_candidates(
        con,
        [
            candidate("w1", "learn", level=5, tier="gold"),
            candidate("w2", "learn", level=5, tier="gold", contact_id="C-other"),
            candidate("now", "auto", level=4, contact_id="C-now"),
        ],
    )
    propose(con, AS_OF, rules, ROUTES)
    channels = {a: _proposed(con, a)["details"]["arm_channel"] for a in ("w1", "w2")}
    assert {_proposed(con, a)["details"]["not_before"] for a in ("w1", "w2")} == {"2026-09-10T13:00:00Z"}
    before = con.execute("select count(*) from ops.action_ledger").fetchall()

    morning = dispatch(con, AS_OF, outbox)  # 09:00: the afternoon window is closed
    assert (morning.waiting, morning.delivered) == (2, 1)
    assert "2 waiting for its send window (next opens 2026-09-10 13:00 UTC)" in morning.summary_lines()[0]
    assert _sent(outbox, "email") | _sent(outbox, "line") == {"now"}
    # nothing was appended for the waiting ones (the level-4 action's sending + delivered only)
    assert con.execute("select count(*) from ops.action_ledger").fetchall() == [(before[0][0] + 2,)]
    assert {ledger.states(con, action_ids=[a])[0]["event_type"] for a in ("w1", "w2")} == {"approved"}

    still = dispatch(con, AS_OF.replace(hour=12, minute=59), outbox)
    assert (still.waiting, still.delivered) == (2, 0)

    afternoon = dispatch(con, AS_OF.replace(hour=13), outbox)
    assert (afternoon.waiting, afternoon.delivered) == (0, 2)
    for action_id, channel in channels.items():
        assert action_id in _sent(outbox, channel)
        assert ledger.states(con, action_ids=[action_id])[0]["event_type"] == "delivered"
    assert dispatch(con, AS_OF.replace(hour=14), outbox).due == 0


def test_an_action_approved_after_its_window_closed_waits_for_the_next_opening(con, outbox):
    """not_before is only the first opening: a suppression lifted or a late review can approve the action the
    next morning, and it must still arrive in the afternoon window it was chosen for."""
    rules = {"learn": _learning_rule(arms={"channel": ["line"], "send_window": ["afternoon"]})}
    write_candidates(
        con, [candidate("late", "learn", level=5, tier="gold", contact_timezone="Europe/Berlin")]
    )
    propose(con, AS_OF, rules, ROUTES)
    details = _proposed(con, "late")["details"]
    # 13:00 in Berlin (CEST) is 11:00 UTC
    assert details["not_before"] == "2026-09-10T11:00:00Z" and details["send_window_hours"] == [13, 17]

    next_morning = AS_OF + timedelta(days=1)  # 09:00 UTC = 11:00 in Berlin: past not_before, window closed
    report = dispatch(con, next_morning, outbox)
    assert (report.waiting, report.delivered) == (1, 0)
    assert report.next_window_at == next_morning.replace(hour=11)
    assert dispatch(con, next_morning.replace(hour=14, minute=59), outbox).delivered == 1  # 16:59 in Berlin
    assert "late" in _sent(outbox, "line")
    # inside the window at the last minute it is open; a retry after 15:00 UTC would wait again
    assert ledger.states(con, action_ids=["late"])[0]["event_type"] == "delivered"


# ----------------------------------------------------------------------------------------------- evaluation


def test_off_line_estimates_match_the_formulas_on_a_hand_computed_log():
    # K = 2; logged propensities 0.8 / 0.2
    logged = [
        LoggedDecision("a", 0.8, 2, 1.0),
        LoggedDecision("a", 0.8, 2, 0.0),
        LoggedDecision("a", 0.8, 2, 1.0),
        LoggedDecision("b", 0.2, 2, 1.0),
        LoggedDecision("b", 0.2, 2, 0.0),
    ]
    # weights (1/2)/p: 0.625, 0.625, 0.625, 2.5, 2.5; weighted rewards 0.625, 0, 0.625, 2.5, 0
    ipw = learning.uniform_ipw(logged)
    assert ipw.value == pytest.approx(3.75 / 5)
    terms = np.array([0.625, 0, 0.625, 2.5, 0])
    half = 1.959963984540054 * terms.std(ddof=1) / np.sqrt(5)
    assert ipw.lower == pytest.approx(max(0.0, 0.75 - half)) and ipw.upper == pytest.approx(
        min(1.0, 0.75 + half)
    )
    snips = learning.uniform_snips(logged)
    value = 3.75 / 6.875
    assert snips.value == pytest.approx(value)
    weights = np.array([0.625, 0.625, 0.625, 2.5, 2.5])
    rewards = np.array([1, 0, 1, 1, 0])
    spread = np.sqrt(np.sum((weights * (rewards - value)) ** 2)) / weights.sum()
    assert snips.lower == pytest.approx(value - 1.959963984540054 * spread)
    own = learning.logged_value(logged)
    assert own.value == pytest.approx(0.6) and own.lower == pytest.approx(0.2307, abs=1e-4)
    diff = learning.uniform_difference(logged)
    assert diff.value == pytest.approx(0.6 - 0.75)
    assert learning.uniform_ipw([]).value is None and learning.uniform_snips([]).value is None
    with pytest.raises(ValueError, match="propensity must be in"):
        LoggedDecision("a", 0.0, 2, 1.0)


def test_simulation_the_policy_finds_the_best_arm_per_segment_and_ipw_recovers_the_uniform_value():
    """A pure-Python world with known conversion rates per segment and arm, run for many rounds: each
    round's decisions use the posteriors of every earlier round's outcomes, as the passes do."""
    rates = {
        "smb": {"email@morning": 0.30, "email@afternoon": 0.18, "line@morning": 0.12, "line@afternoon": 0.08},
        "enterprise": {
            "email@morning": 0.10,
            "email@afternoon": 0.12,
            "line@morning": 0.15,
            "line@afternoon": 0.36,
        },
    }
    best = {segment: max(arms, key=arms.get) for segment, arms in rates.items()}
    config = _config(floor=0.1)
    environment = np.random.default_rng(20260910)
    counts: dict[tuple[str, str], ArmCounts] = {}
    logged: list[LoggedDecision] = []
    late_on_best, late_total = 0, 0
    rounds, per_segment = 40, 30
    for round_number in range(rounds):
        policy = ThompsonPolicy("sim", config, dict(counts))
        outcomes: list[tuple[str, str, bool]] = []
        for segment in rates:
            for n in range(per_segment):
                decision = policy.decide(f"r{round_number}-{segment}-{n}", segment)
                converted = bool(environment.random() < rates[segment][decision.arm.id])
                outcomes.append((segment, decision.arm.id, converted))
                logged.append(
                    LoggedDecision(
                        decision.arm.id, decision.propensity, len(decision.arms), float(converted), segment
                    )
                )
                if round_number >= rounds // 2:
                    late_total += 1
                    late_on_best += decision.arm.id == best[segment]
        for segment, arm, converted in outcomes:  # outcome windows close before the next round
            old = counts.get((segment, arm), ArmCounts())
            counts[(segment, arm)] = ArmCounts(old.successes + converted, old.failures + (not converted))

    assert late_on_best / late_total > 0.6
    true_uniform = sum(sum(arms.values()) / len(arms) for arms in rates.values()) / len(rates)
    ipw = learning.uniform_ipw(logged)
    snips = learning.uniform_snips(logged)
    own = learning.logged_value(logged)
    assert ipw.lower <= true_uniform <= ipw.upper
    assert snips.lower <= true_uniform <= snips.upper
    assert ipw.value < own.value and snips.value < own.value
    difference = learning.uniform_difference(logged)
    assert difference.lower > 0  # learning beat uniform, and the interval says so
    # without the propensities (every weight 1) the same log would claim the uniform policy is as good as
    # the learned one: the weighting is what moves the estimate back to the truth
    unweighted = learning.ipw_estimate(logged, lambda d: d.propensity)
    assert unweighted.value == pytest.approx(own.value) and unweighted.lower > true_uniform


# ----------------------------------------------------------------------------------------------- dbt marts


@pytest.mark.slow
def test_the_learning_marts_build_with_dbt_and_agree_with_the_python_policy(tmp_path, monkeypatch):
    """A small world and ledger: 48 level-5 decisions of nps_detractor (outcome: the contact calls within 7
    days) made by the real policy, delivered 10 days before as_of, plus decisions that must not count (a
    rejected one, one whose window is still open) and a held-out action without an arm. Real dbt build of the
    learning marts (with fct_outcomes and their data tests); the marts must match learning.py, and the next
    proposal pass must read the same counts from the built fct_outcomes."""
    decided_at = AS_OF.replace(month=10, day=21)
    as_of = decided_at + timedelta(days=10)
    db = tmp_path / "actionlayer.duckdb"
    monkeypatch.setenv("ACTIONLAYER_DB", str(db))
    monkeypatch.setenv("ACTIONLAYER_CONFIG", str(tmp_path / "no_settings.yml"))
    monkeypatch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")

    config = LearningConfig(
        channels=("email",),
        windows=(SendWindow("morning", 8, 12), SendWindow("afternoon", 13, 17)),
        segment_by="tier",
        exploration_floor=0.2,
        prior_alpha=2.0,
        prior_beta=3.0,
    )
    # the policy had already seen some outcomes: smb favours mornings, enterprise is undecided
    policy = ThompsonPolicy(
        "nps_detractor",
        config,
        {("smb", "email@morning"): ArmCounts(12, 4), ("smb", "email@afternoon"): ArmCounts(3, 12)},
    )
    world = clean_world()
    contact = dict(world["contacts"][0])
    identity = {"rule_id": "nps_detractor", "rule_version": 1, "maturity_level": 5, "record_type": "nps_response",
                "account_id": "A1", "owner_email": "owner@example.com", "signal_at": decided_at}  # fmt: skip
    events: list[ledger.LedgerEvent] = []
    truth: dict[str, tuple[str, str, bool | None]] = {}  # action id → (segment, arm, counted reward)

    def decided(action_id: str, contact_id: str, segment: str, at) -> dict:
        decision = policy.decide(action_id, segment)
        details = decision.details(config) | {"not_before": learning.iso_utc(at)}
        events.append(
            ledger.LedgerEvent(
                action_id=action_id,
                event_type="proposed",
                occurred_at=at,
                actor="rule:nps",
                record_id=f"R-{action_id}",
                contact_id=contact_id,
                channel="email",
                details=details,
                **identity,
            )  # fmt: skip
        )
        return details

    def acted(action_id: str, at) -> None:
        state = {"action_id": action_id, **identity, "channel": "email"}
        for event_type in ("approved", "sending", "delivered"):
            events.append(ledger.next_event(state, event_type, at, "auto:nps_detractor", attempt=1))

    for n in range(48):
        action_id, contact_id, segment = f"L{n:02d}", f"M{n:02d}", "smb" if n % 2 else "enterprise"
        world["contacts"].append(dict(contact, contact_id=contact_id, email=f"m{n:02d}@example.com"))
        arm = decided(action_id, contact_id, segment, decided_at)["arm"]
        acted(action_id, decided_at)
        # mornings convert 2 in 3 in smb, afternoons 1 in 3 everywhere, enterprise mornings 1 in 4
        converts = (
            n % 3 != 0
            if (segment, arm) == ("smb", "email@morning")
            else n % (3 if "afternoon" in arm else 4) == 0
        )
        truth[action_id] = (segment, arm, converts)
        if converts:
            world["activities"].append(
                {"activity_id": f"T-{action_id}", "contact_id": contact_id, "deal_id": None,
                 "owner_email": "owner@example.com", "kind": "call",
                 "occurred_at": f"{decided_at + timedelta(days=2):%Y-%m-%d %H:%M:%S}", "subject": "Called back"}
            )  # fmt: skip
    # not counted: rejected (never acted), still open (delivered yesterday; it even converted), held out
    decided("rejected", "C1", "smb", decided_at)
    events += [ledger.next_event({"action_id": "rejected", **identity}, "rejected", decided_at, OWNER_REVIEW)]
    decided("open", "C3", "smb", as_of - timedelta(days=1))
    acted("open", as_of - timedelta(days=1))
    events.append(
        ledger.LedgerEvent(
            action_id="held",
            event_type="proposed",
            occurred_at=decided_at,
            actor="rule:nps",
            record_id="R-held",
            contact_id="C4",
            holdout=True,
            **identity,
        )  # fmt: skip
    )
    events.append(
        ledger.next_event({"action_id": "held", **identity}, "held_out", decided_at, "system:journey")
    )
    world["activities"].append(
        {"activity_id": "T-open", "contact_id": "C3", "deal_id": None, "owner_email": "owner@example.com",
         "kind": "call", "occurred_at": f"{as_of - timedelta(hours=12):%Y-%m-%d %H:%M:%S}", "subject": "Hi"}
    )  # fmt: skip

    with duckdb.connect(str(db)) as con:
        ensure_ops_tables(con)
        ensure_hist_tables(con)
        ledger.ensure_schema(con)
        ledger.append(con, events)
        record_load_history(con, load_folder(con, write_csv_folder(tmp_path / "sor", world), as_of))
    result, _ = run_dbt(
        ["build", "--select", "+mart_learning_arms", "+mart_policy_evaluation", "--exclude", "test_type:unit",
         "--vars", f"{{as_of: '{as_of:%Y-%m-%d %H:%M:%S}'}}"],
        tmp_path,
    )  # fmt: skip
    failures = [
        f"{r.node.unique_id}: {r.status} {r.message}"
        for r in result.result.results
        if r.status in ("error", "fail")
    ]
    assert result.success, failures
    ran = {key: r.status for key, r in generic_test_results(result).items()}
    for mart in ("mart_learning_arms", "mart_policy_evaluation"):
        assert ran[("columns_not_null", mart)] == ran[("columns_in_range", mart)] == "pass"

    with duckdb.connect(str(db)) as con:
        cursor = con.execute("select * from main.mart_learning_arms order by segment, arm")
        names = [d[0] for d in cursor.description]
        arms = {
            (row["segment"], row["arm"]): row
            for row in (dict(zip(names, r, strict=True)) for r in cursor.fetchall())
        }
        cursor = con.execute("select * from main.mart_policy_evaluation")
        names = [d[0] for d in cursor.description]
        [evaluation] = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
        counts, source = _learning_counts(con, ["nps_detractor"], as_of)

    # per segment and arm: decisions, outcomes and the posterior, as Python counts them
    expected: dict[tuple[str, str], ArmCounts] = {}
    for segment, arm, converts in truth.values():
        old = expected.get((segment, arm), ArmCounts())
        expected[(segment, arm)] = ArmCounts(old.successes + converts, old.failures + (not converts))
    assert counts["nps_detractor"] == expected and source == "main.fct_outcomes, 48 closed outcomes"
    assert set(arms) == {(s, a) for s in ("enterprise", "smb") for a in ("email@morning", "email@afternoon")}
    for (segment, arm), row in arms.items():
        got = expected[(segment, arm)]
        decisions = sum(1 for s, a, _ in truth.values() if (s, a) == (segment, arm))
        decisions += sum(1 for a in ("rejected", "open") if segment == "smb" and _arm_of(events, a) == arm)
        assert (row["decisions"], row["successes"], row["failures"]) == (
            decisions,
            got.successes,
            got.failures,
        )
        post = learning.posterior(config, got)
        assert (row["posterior_alpha"], row["posterior_beta"]) == (post.alpha, post.beta)
        assert row["posterior_mean"] == pytest.approx(post.mean)
        assert (row["arm_channel"], row["arm_send_window"]) == tuple(arm.split("@"))
    for segment in ("enterprise", "smb"):
        best = max(
            ("email@morning", "email@afternoon"), key=lambda a: (arms[(segment, a)]["posterior_mean"], a)
        )
        assert (
            arms[(segment, best)]["is_best_arm"]
            and sum(arms[(segment, a)]["is_best_arm"] for a in ("email@morning", "email@afternoon")) == 1
        )
    assert arms[("smb", "email@morning")]["is_best_arm"]

    # the policy evaluation equals the Python estimates on the same logged decisions
    logged = [
        LoggedDecision(arm, _details_of(events, action_id)["propensity"], 2, float(converts), segment)
        for action_id, (segment, arm, converts) in truth.items()
    ]
    own, ipw, snips, diff = (learning.logged_value(logged), learning.uniform_ipw(logged),
                             learning.uniform_snips(logged), learning.uniform_difference(logged))  # fmt: skip
    assert evaluation["closed_outcomes"] == 48 and evaluation["decisions"] == 50
    assert None not in (own.lower, ipw.lower, snips.lower, diff.lower, diff.upper)
    for column, value in {
        "logged_conversion": own.value, "logged_conversion_lower": own.lower, "logged_conversion_upper": own.upper,
        "uniform_ipw": ipw.value, "uniform_ipw_lower": ipw.lower, "uniform_ipw_upper": ipw.upper,
        "uniform_snips": snips.value, "uniform_snips_lower": snips.lower, "uniform_snips_upper": snips.upper,
        "uplift_vs_uniform": diff.value, "uplift_vs_uniform_lower": diff.lower,
        "uplift_vs_uniform_upper": diff.upper,
    }.items():  # fmt: skip
        assert evaluation[column] == pytest.approx(value, abs=1e-9), column
    assert evaluation["verdict"] == learning.policy_verdict(diff)
    on_best = sum(arms[key]["decisions"] for key in arms if arms[key]["is_best_arm"])
    assert evaluation["best_arm_traffic_share"] == pytest.approx(on_best / 50)

    # the range and not-null checks catch a broken mart, and say which columns broke
    with duckdb.connect(str(db)) as con:
        con.execute(
            "update main.mart_learning_arms set traffic_share = 1.5, posterior_mean = -0.1, arm = null"
        )
        con.execute("update main.mart_policy_evaluation set verdict = null, logged_conversion = 2")
    result, _ = run_dbt(
        ["test", "--select", "mart_learning_arms", "mart_policy_evaluation", "--exclude", "test_type:unit",
         "--vars", f"{{as_of: '{as_of:%Y-%m-%d %H:%M:%S}'}}"],
        tmp_path,
    )  # fmt: skip
    failed = {key: r.failures for key, r in generic_test_results(result).items() if r.status == "fail"}
    assert failed == {
        ("columns_in_range", "mart_learning_arms"): 2,  # traffic_share, posterior_mean
        ("columns_not_null", "mart_learning_arms"): 1,  # arm
        ("learning_sums_to_one", "mart_learning_arms"): 2,  # each segment's shares now sum to 3
        ("unique_combination", "mart_learning_arms"): 2,  # two arms per segment, both now null
        ("columns_in_range", "mart_policy_evaluation"): 1,  # logged_conversion
        ("columns_not_null", "mart_policy_evaluation"): 1,  # verdict
    }


def _details_of(events: list[ledger.LedgerEvent], action_id: str) -> dict:
    return next(e.details for e in events if e.action_id == action_id and e.event_type == "proposed")


def _arm_of(events: list[ledger.LedgerEvent], action_id: str) -> str:
    return _details_of(events, action_id)["arm"]
