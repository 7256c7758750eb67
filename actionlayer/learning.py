"""Level-5 rules: choose the channel and the send-time window per segment from observed outcomes.

One responsibility: the policy and its evaluation, as pure functions (no database, no Dagster). The proposal
pass (actionlayer/proposals.py) reads the outcome counts once per pass and asks a `ThompsonPolicy` for each
new action's arm; the dbt models in dbt_project/models/learning/ compute the same posteriors and off-line
estimates in SQL.

Arms. A rule's YAML declares the dimensions it may vary (`learning.arms.channel`, `learning.arms.send_window`);
the arms are their cartesian product, named `<channel>@<window>` (e.g. `email@morning`). A dimension that is
not listed keeps the rule's own channel, or the window `anytime` (0-24 h, i.e. send right away).

Posteriors. Per (rule, segment, arm): Beta(prior_alpha + successes, prior_beta + failures), where successes
and failures count the outcomes of the rule's earlier *acted* actions (delivered, not held out) whose outcome
window has *closed*. Open windows are ignored on purpose, early successes included: counting a success as soon
as it arrives but a failure only when the window closes would favour whichever arm got the most recent
traffic.

Propensities (Thompson sampling with an exploration floor). For K arms with posteriors Beta(a_k, b_k):

    P_TS(k) = P(theta_k is the largest of theta_1..theta_K),  theta_j ~ Beta(a_j, b_j) independently,
    propensity(k) = (1 - floor) * P_TS(k) + floor / K.

P_TS is estimated by Monte Carlo (`THOMPSON_DRAWS` joint draws, seeded from the rule, segment and
posteriors, so the same pass computes the same numbers). The chosen arm is then drawn *from those
propensities* with a uniform number derived from the action id (sha-256), so a re-run of the pass picks the
same arm and the ledger stays idempotent. Because the arm is drawn from exactly the propensities written to
the ledger, they are the true assignment probabilities, whatever the Monte Carlo error in P_TS: inverse
propensity weighting on the logged decisions is unbiased. Every arm keeps at least floor / K.

Off-line evaluation. From logged (arm, propensity, reward) with rewards in [0, 1]:
  * the logged policy's own value: the mean reward, with the Wilson interval for binary rewards;
  * the uniform policy (each of the K arms with probability 1/K) by inverse propensity weighting,
    V_IPW = mean(w_i r_i), w_i = (1/K) / p_i (Horvitz & Thompson 1952), with a normal 95 % interval from the
    sample variance of w_i r_i;
  * the self-normalised estimate V_SNIPS = sum(w_i r_i) / sum(w_i) (Swaminathan & Joachims 2015), with the
    delta-method standard error sqrt(sum(w_i^2 (r_i - V_SNIPS)^2)) / sum(w_i);
  * the difference logged - uniform, paired per decision: mean(r_i (1 - w_i)), with a normal interval.
Interval bounds are clipped to the range the value can take ([0, 1], or [-1, 1] for the difference). The
normal intervals treat decisions as independent; under adaptive assignment they are approximate.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from actionlayer.stats import MIN_PER_ARM, Z_95, normal_mean_interval, wilson_interval

#: The policy name written to the ledger (`details.policy`) and matched by the learning marts.
POLICY = "thompson"
#: Monte Carlo draws for P(arm is best); the standard error of each probability is at most 0.008.
THOMPSON_DRAWS = 4000
#: Named send windows a rule may use without declaring them: [start hour, end hour) in local time.
DEFAULT_WINDOWS: Mapping[str, tuple[int, int]] = {
    "morning": (8, 12),
    "afternoon": (13, 17),
    "evening": (17, 20),
    "anytime": (0, 24),
}
#: The window used when a rule does not vary the send time.
ANYTIME = "anytime"
#: The segment of every action when the rule declares no `segment_by`.
ALL_SEGMENTS = "all"
#: The segment of an action whose `segment_by` value is missing or null.
UNKNOWN_SEGMENT = "unknown"
#: Candidate columns that may carry the contact's IANA timezone (first non-empty wins).
TIMEZONE_COLUMNS = ("contact_timezone", "timezone")


@dataclass(frozen=True)
class SendWindow:
    """A named daily window [start_hour, end_hour) in the contact's local time (UTC when unknown)."""

    name: str
    start_hour: int
    end_hour: int

    def __post_init__(self) -> None:
        if not (0 <= self.start_hour < self.end_hour <= 24):
            raise ValueError(
                f"send window {self.name!r}: hours [{self.start_hour}, {self.end_hour}) must satisfy "
                "0 <= start < end <= 24 (windows across midnight are not supported)"
            )

    def contains(self, local: datetime) -> bool:
        return self.start_hour <= local.hour < self.end_hour

    def next_opening(self, as_of: datetime, timezone: str | None = None) -> datetime:
        """The earliest moment at or after `as_of` (naive UTC) inside this window, as naive UTC.

        `as_of` itself when it is inside the window; else the window's next start in `timezone` (an IANA
        name; None or an unknown name means UTC)."""
        zone = _zone(timezone)
        local = as_of.replace(tzinfo=UTC).astimezone(zone)
        if self.contains(local):
            return as_of
        day = local.date() if local.hour < self.start_hour else local.date() + timedelta(days=1)
        opening = datetime.combine(day, time(self.start_hour), tzinfo=zone)
        return opening.astimezone(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Arm:
    """One combination the policy can choose: a channel and a send window."""

    channel: str
    send_window: str

    @property
    def id(self) -> str:
        return f"{self.channel}@{self.send_window}"


@dataclass(frozen=True)
class LearningConfig:
    """A level-5 rule's `learning:` block (validated by actionlayer/rules.py)."""

    channels: tuple[str, ...]
    windows: tuple[SendWindow, ...]
    segment_by: str | None = None
    exploration_floor: float = 0.1
    prior_alpha: float = 1.0
    prior_beta: float = 1.0

    def __post_init__(self) -> None:
        if not self.channels or not self.windows:
            raise ValueError("a learning config needs at least one channel and one send window")
        if not 0.0 <= self.exploration_floor < 1.0:
            raise ValueError(f"exploration_floor {self.exploration_floor} must be in [0, 1)")
        if self.prior_alpha <= 0 or self.prior_beta <= 0:
            raise ValueError(f"prior alpha and beta must be > 0, got {self.prior_alpha}, {self.prior_beta}")

    @property
    def arms(self) -> tuple[Arm, ...]:
        """The cartesian product channel × send window, in declaration order."""
        return tuple(Arm(c, w.name) for c, w in itertools.product(self.channels, self.windows))

    def window(self, name: str) -> SendWindow:
        for window in self.windows:
            if window.name == name:
                return window
        raise KeyError(f"no send window named {name!r}")


@dataclass(frozen=True)
class ArmCounts:
    """Closed outcomes of acted actions on one arm."""

    successes: int = 0
    failures: int = 0


@dataclass(frozen=True)
class Posterior:
    alpha: float
    beta: float

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)


def posterior(config: LearningConfig, counts: ArmCounts | None) -> Posterior:
    """Beta(prior_alpha + successes, prior_beta + failures)."""
    counts = counts or ArmCounts()
    if counts.successes < 0 or counts.failures < 0:
        raise ValueError(f"outcome counts must be >= 0, got {counts}")
    return Posterior(config.prior_alpha + counts.successes, config.prior_beta + counts.failures)


def _uniform(key: str) -> float:
    """A number in [0, 1) derived from `key` alone (the same on every machine and every run)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16) / 16**15


def _seed(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16)


def probability_best(
    posteriors: Sequence[Posterior], draws: int = THOMPSON_DRAWS, seed: int = 0
) -> tuple[float, ...]:
    """P(arm k has the largest success rate) under independent Beta posteriors, by Monte Carlo."""
    if not posteriors:
        raise ValueError("probability_best needs at least one arm")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    if len(posteriors) == 1:
        return (1.0,)
    rng = np.random.default_rng(seed)
    alphas = np.array([p.alpha for p in posteriors], dtype=float)
    betas = np.array([p.beta for p in posteriors], dtype=float)
    samples = rng.beta(alphas, betas, size=(draws, len(posteriors)))
    wins = np.bincount(np.argmax(samples, axis=1), minlength=len(posteriors))
    return tuple(float(w) / draws for w in wins)


def propensities(
    posteriors: Sequence[Posterior], floor: float, draws: int = THOMPSON_DRAWS, seed: int = 0
) -> tuple[float, ...]:
    """(1 - floor) * P_TS(k) + floor / K for each arm k; they sum to 1 and each is at least floor / K."""
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"exploration floor {floor} must be in [0, 1)")
    best = probability_best(posteriors, draws, seed)
    k = len(best)
    return tuple((1.0 - floor) * p + floor / k for p in best)


def draw_arm(action_id: str, probabilities: Sequence[float]) -> int:
    """The index drawn from `probabilities` with a uniform number derived from the action id alone."""
    if not probabilities:
        raise ValueError("draw_arm needs at least one probability")
    u = _uniform(f"actionlayer.learning|{action_id}") * math.fsum(probabilities)
    cumulative = 0.0
    for index, p in enumerate(probabilities):
        cumulative += p
        if u < cumulative:
            return index
    # rounding at the top end: the last arm with a positive probability
    return max(i for i, p in enumerate(probabilities) if p > 0)


@dataclass(frozen=True)
class Decision:
    """The arm chosen for one action, with what the ledger needs for off-line evaluation."""

    segment: str
    arm: Arm
    propensity: float
    arms: tuple[Arm, ...]
    propensities: tuple[float, ...]
    posteriors: tuple[Posterior, ...]

    def details(self, config: LearningConfig) -> dict[str, Any]:
        """The `details` fields of the proposed ledger event (not_before is added by the caller)."""
        return {
            "policy": POLICY,
            "segment": self.segment,
            "arm": self.arm.id,
            "arm_channel": self.arm.channel,
            "arm_send_window": self.arm.send_window,
            "propensity": self.propensity,
            "arms": [arm.id for arm in self.arms],
            "arm_propensities": dict(zip((a.id for a in self.arms), self.propensities, strict=True)),
            "exploration_floor": config.exploration_floor,
            "prior_alpha": config.prior_alpha,
            "prior_beta": config.prior_beta,
        }


@dataclass
class ThompsonPolicy:
    """One rule's policy for one pass: posteriors per segment from `counts` ((segment, arm id) → counts),
    propensities computed once per segment and reused for every action of the pass."""

    rule_id: str
    config: LearningConfig
    counts: Mapping[tuple[str, str], ArmCounts] = field(default_factory=dict)
    draws: int = THOMPSON_DRAWS
    _cache: dict[str, tuple[tuple[Posterior, ...], tuple[float, ...]]] = field(
        default_factory=dict, init=False, repr=False
    )

    def posteriors(self, segment: str) -> tuple[Posterior, ...]:
        return tuple(posterior(self.config, self.counts.get((segment, arm.id))) for arm in self.config.arms)

    def propensities(self, segment: str) -> tuple[float, ...]:
        return self._segment(segment)[1]

    def _segment(self, segment: str) -> tuple[tuple[Posterior, ...], tuple[float, ...]]:
        if segment not in self._cache:
            posteriors = self.posteriors(segment)
            # seeded by what determines the answer, so a re-run of the pass gets the same numbers
            key = json.dumps([self.rule_id, segment, [(p.alpha, p.beta) for p in posteriors], self.draws])
            self._cache[segment] = (
                posteriors,
                propensities(posteriors, self.config.exploration_floor, self.draws, _seed(key)),
            )
        return self._cache[segment]

    def decide(self, action_id: str, segment: str) -> Decision:
        posteriors, probabilities = self._segment(segment)
        index = draw_arm(action_id, probabilities)
        return Decision(
            segment=segment,
            arm=self.config.arms[index],
            propensity=probabilities[index],
            arms=self.config.arms,
            propensities=probabilities,
            posteriors=posteriors,
        )


def segment_of(candidate: Mapping[str, Any], segment_by: str | None) -> str:
    """The action's segment: the candidate column `segment_by`, else that key of its reason JSON."""
    if segment_by is None:
        return ALL_SEGMENTS
    value = candidate.get(segment_by)
    if value is None:
        reason = candidate.get("reason")
        if isinstance(reason, str) and reason:
            try:
                parsed = json.loads(reason)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                value = parsed.get(segment_by)
        elif isinstance(reason, Mapping):
            value = reason.get(segment_by)
    if value is None or str(value).strip() == "":
        return UNKNOWN_SEGMENT
    return str(value).strip()


def _zone(name: str | None) -> ZoneInfo:
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def contact_timezone(candidate: Mapping[str, Any]) -> str | None:
    """The contact's IANA timezone from the candidate row (`TIMEZONE_COLUMNS`), or None when it has none
    or names no known zone."""
    for column in TIMEZONE_COLUMNS:
        value = candidate.get(column)
        if isinstance(value, str) and value.strip():
            try:
                ZoneInfo(value.strip())
            except (ZoneInfoNotFoundError, ValueError):
                return None
            return value.strip()
    return None


def iso_utc(moment: datetime) -> str:
    """A naive-UTC datetime as ISO 8601 with a Z (what the ledger stores in `not_before`)."""
    return moment.replace(microsecond=0).isoformat() + "Z"


# ------------------------------------------------------------------------------------ off-line evaluation


@dataclass(frozen=True)
class LoggedDecision:
    """One logged decision with a closed outcome: its arm, the propensity it was chosen with, the number
    of arms it was chosen among, and the reward (1 achieved, 0 not)."""

    arm: str
    propensity: float
    arm_count: int
    reward: float
    segment: str = ALL_SEGMENTS

    def __post_init__(self) -> None:
        if not 0.0 < self.propensity <= 1.0:
            raise ValueError(f"logged propensity must be in (0, 1], got {self.propensity} for arm {self.arm}")
        if self.arm_count < 1:
            raise ValueError(f"arm_count must be at least 1, got {self.arm_count}")
        if not 0.0 <= self.reward <= 1.0:
            raise ValueError(f"reward must be in [0, 1], got {self.reward}")


@dataclass(frozen=True)
class Estimate:
    """A policy value with its 95 % interval (None when there is too little data for it)."""

    value: float | None
    lower: float | None
    upper: float | None
    n: int


def _clip(value: float | None, lo: float, hi: float) -> float | None:
    return None if value is None else min(hi, max(lo, value))


def uniform_weight(decision: LoggedDecision) -> float:
    """(1 / K) / p: the weight that reweights a logged decision to the uniform policy."""
    return (1.0 / decision.arm_count) / decision.propensity


def ipw_estimate(
    logged: Sequence[LoggedDecision], target: Callable[[LoggedDecision], float], z: float = Z_95
) -> Estimate:
    """Inverse propensity weighting: mean(target(d) / p_d * r_d), with a normal interval (bounds in [0, 1]).

    `target(d)` is the probability the evaluated policy gives to d's logged arm in d's situation."""
    terms = [target(d) / d.propensity * d.reward for d in logged]
    mean, lower, upper = normal_mean_interval(terms, z)
    return Estimate(mean, _clip(lower, 0.0, 1.0), _clip(upper, 0.0, 1.0), len(terms))


def snips_estimate(
    logged: Sequence[LoggedDecision], target: Callable[[LoggedDecision], float], z: float = Z_95
) -> Estimate:
    """Self-normalised IPW: sum(w r) / sum(w), w = target / p, with the delta-method interval
    V ± z * sqrt(sum(w^2 (r - V)^2)) / sum(w) (bounds in [0, 1]; none for fewer than 2 decisions)."""
    weights = [target(d) / d.propensity for d in logged]
    total = math.fsum(weights)
    if not logged or total <= 0.0:
        return Estimate(None, None, None, len(logged))
    value = math.fsum(w * d.reward for w, d in zip(weights, logged, strict=True)) / total
    if len(logged) < 2:
        return Estimate(value, None, None, len(logged))
    spread = math.sqrt(math.fsum((w * (d.reward - value)) ** 2 for w, d in zip(weights, logged, strict=True)))
    half = z * spread / total
    return Estimate(value, _clip(value - half, 0.0, 1.0), _clip(value + half, 0.0, 1.0), len(logged))


def uniform_ipw(logged: Sequence[LoggedDecision], z: float = Z_95) -> Estimate:
    """The uniform policy's value by IPW."""
    return ipw_estimate(logged, lambda d: 1.0 / d.arm_count, z)


def uniform_snips(logged: Sequence[LoggedDecision], z: float = Z_95) -> Estimate:
    """The uniform policy's value by self-normalised IPW."""
    return snips_estimate(logged, lambda d: 1.0 / d.arm_count, z)


def logged_value(logged: Sequence[LoggedDecision], z: float = Z_95) -> Estimate:
    """The logged policy's own value: the mean reward, with the Wilson interval (binary rewards)."""
    rewards = [d.reward for d in logged]
    if any(r not in (0.0, 1.0) for r in rewards):
        raise ValueError("logged_value: the Wilson interval needs rewards of 0 or 1")
    successes = int(sum(rewards))
    lower, upper = wilson_interval(successes, len(rewards), z)
    return Estimate(successes / len(rewards) if rewards else None, lower, upper, len(rewards))


def policy_verdict(difference: Estimate, min_outcomes: int = MIN_PER_ARM) -> str:
    """mart_policy_evaluation.verdict from `uniform_difference`: insufficient_data below `min_outcomes` closed
    outcomes or without an interval; beats_uniform / worse_than_uniform when the interval excludes 0;
    no_evidence otherwise."""
    if difference.n < min_outcomes or difference.lower is None or difference.upper is None:
        return "insufficient_data"
    if difference.lower > 0:
        return "beats_uniform"
    if difference.upper < 0:
        return "worse_than_uniform"
    return "no_evidence"


def uniform_difference(logged: Sequence[LoggedDecision], z: float = Z_95) -> Estimate:
    """Logged policy minus uniform (IPW), paired per decision: mean(r (1 - w)), normal interval in [-1, 1]."""
    terms = [d.reward * (1.0 - uniform_weight(d)) for d in logged]
    mean, lower, upper = normal_mean_interval(terms, z)
    return Estimate(mean, _clip(lower, -1.0, 1.0), _clip(upper, -1.0, 1.0), len(terms))
