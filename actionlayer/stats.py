"""Outcome statistics for a rule: acted vs held out, uplift with a confidence interval, and a verdict.

One responsibility: turn four counts per rule (converted and closed, acted and held out) into the numbers a
person needs to decide whether a rule works. Pure Python (stdlib only), so Python reports and benchmarks can use
it and so it is the reference the SQL macros in `dbt_project/macros/stats.sql` are tested against
(`tests/test_stats.py`); the two must give the same numbers.

Conventions: arm 1 = treated (acted on), arm 0 = control (held out); every difference is p1 - p0. Counts must
be whole numbers with 0 <= successes <= n (a ValueError otherwise); an arm with n = 0 gives None, never a
division error.

Methods (formulas from the literature, written here from the formulas):
  * Wilson, E. B. (1927). Probable inference, the law of succession, and statistical inference. JASA 22, 209-212:
    the score interval for one proportion.
  * Newcombe, R. G. (1998). Interval estimation for the difference between independent proportions: comparison of
    eleven methods. Statistics in Medicine 17, 873-890, method 10: the hybrid score interval built from the two
    Wilson intervals. Good coverage near 0 and 1 and with small arms, unlike the Wald interval.
  * The pooled two-proportion z-test, two-sided (e.g. Agresti, Categorical Data Analysis, 3rd ed., §3.1.3).
  * Minimum detectable effect for two proportions (normal approximation, variance at the baseline rate in both
    arms; e.g. Chow, Shao & Wang, Sample Size Calculations in Clinical Research, §4.2):
    MDE = (z_{1-alpha/2} + z_{power}) * sqrt(p0 (1 - p0) (1/n1 + 1/n0)).
  * Sample ratio mismatch: Pearson's chi-square goodness-of-fit test of the observed split against the configured
    holdout share, 1 degree of freedom (Kohavi, Tang & Xu, Trustworthy Online Controlled Experiments, 2020, ch. 21).

Verdict rule (`verdict`), decided on the 95% Newcombe interval of p1 - p0:
  insufficient_data  either arm has fewer than `min_per_arm` (default 30) closed outcomes, or no interval;
  works              the whole interval is above zero (lo > 0): acting raised conversion;
  harmful            the whole interval is below zero (hi < 0): acting lowered conversion;
  no_evidence        otherwise (the interval contains zero).
A sample ratio mismatch (SRM p-value < 0.001) does not change the verdict; it is a separate flag (`srm_flag`)
saying the split itself is suspect, so the verdict should not be trusted until the cause is found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

#: z_{0.975}: the two-sided 95% normal quantile. The SQL macros use the same literal.
Z_95 = 1.959963984540054
#: z_{0.8}: the normal quantile for 80% power. The SQL macros use the same literal.
Z_POWER_80 = 0.8416212335729143
#: Fewer closed outcomes than this in either arm: insufficient_data.
MIN_PER_ARM = 30
#: SRM p-values below this flag the split (a strict threshold: the test runs on every rule at every pass).
SRM_THRESHOLD = 0.001

Verdict = Literal["works", "harmful", "no_evidence", "insufficient_data"]
VERDICTS: tuple[Verdict, ...] = ("works", "harmful", "no_evidence", "insufficient_data")


def _check_counts(successes: int, n: int, name: str) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"{name}: need 0 <= successes <= n, got successes={successes}, n={n}")


def _normal_two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z: erfc(|z| / sqrt 2)."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float | None, float | None]:
    """Wilson (1927) score interval for a proportion: (lo, hi), or (None, None) when n = 0.

    centre = (p + z^2 / 2n) / (1 + z^2 / n), half width = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2),
    with p = successes / n. lo is exactly 0 when successes = 0 and hi exactly 1 when successes = n.
    """
    _check_counts(successes, n, "wilson_interval")
    if n == 0:
        return None, None
    return _wilson(successes, n, z)


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half_width = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    lo = 0.0 if successes == 0 else max(0.0, centre - half_width)
    hi = 1.0 if successes == n else min(1.0, centre + half_width)
    return lo, hi


def newcombe_difference(
    s1: int, n1: int, s0: int, n0: int, z: float = Z_95
) -> tuple[float | None, float | None, float | None]:
    """Difference p1 - p0 with Newcombe's (1998, method 10) hybrid score interval: (diff, lo, hi).

    With (l1, u1) and (l0, u0) the Wilson intervals of p1 = s1/n1 and p0 = s0/n0:
      lo = diff - sqrt((p1 - l1)^2 + (u0 - p0)^2),  hi = diff + sqrt((u1 - p1)^2 + (p0 - l0)^2).
    (None, None, None) when either arm is empty. Example from the paper: 56/70 vs 48/80 gives
    0.2000 (0.0524, 0.3339).
    """
    _check_counts(s1, n1, "newcombe_difference (treated)")
    _check_counts(s0, n0, "newcombe_difference (control)")
    if n1 == 0 or n0 == 0:
        return None, None, None
    p1, p0 = s1 / n1, s0 / n0
    l1, u1 = _wilson(s1, n1, z)
    l0, u0 = _wilson(s0, n0, z)
    diff = p1 - p0
    lo = diff - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    hi = diff + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return diff, lo, hi


def two_proportion_p_value(s1: int, n1: int, s0: int, n0: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test of p1 = p0; None when either arm is empty.

    z = (p1 - p0) / sqrt(p (1 - p) (1/n1 + 1/n0)) with the pooled p = (s1 + s0) / (n1 + n0);
    p-value = erfc(|z| / sqrt 2). When the pooled rate is 0 or 1 both arms are identical (all fail or all
    convert): no difference to test, p-value 1.
    """
    _check_counts(s1, n1, "two_proportion_p_value (treated)")
    _check_counts(s0, n0, "two_proportion_p_value (control)")
    if n1 == 0 or n0 == 0:
        return None
    pooled = (s1 + s0) / (n1 + n0)
    if pooled <= 0.0 or pooled >= 1.0:
        return 1.0
    standard_error = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n0))
    return _normal_two_sided_p((s1 / n1 - s0 / n0) / standard_error)


def minimum_detectable_effect(
    p0: float | None, n1: int, n0: int, alpha: float = 0.05, power: float = 0.8
) -> float | None:
    """Smallest absolute uplift a two-sided test at `alpha` detects with `power` at these arm sizes.

    MDE = (z_{1-alpha/2} + z_{power}) * sqrt(p0 (1 - p0) (1/n1 + 1/n0)), p0 the control (held-out) rate.
    None when p0 is None, an arm is empty, or p0 is 0 or 1 (no variance at the baseline: the normal
    approximation says nothing there, and 0 would wrongly read as "detects any effect").
    """
    if p0 is None or n1 <= 0 or n0 <= 0:
        return None
    if not 0.0 <= p0 <= 1.0:
        raise ValueError(f"minimum_detectable_effect: p0 must be in [0, 1], got {p0}")
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ValueError(
            f"minimum_detectable_effect: alpha and power must be in (0, 1), got {alpha}, {power}"
        )
    if p0 in (0.0, 1.0):
        return None
    if alpha == 0.05 and power == 0.8:
        multiplier = Z_95 + Z_POWER_80  # the literals the SQL macro uses
    else:
        standard_normal = NormalDist()
        multiplier = standard_normal.inv_cdf(1.0 - alpha / 2.0) + standard_normal.inv_cdf(power)
    return multiplier * math.sqrt(p0 * (1.0 - p0) * (1.0 / n1 + 1.0 / n0))


def srm_p_value(n_treated: int, n_control: int, expected_control_share: float | None) -> float | None:
    """Sample-ratio-mismatch p-value: chi-square goodness of fit (1 df) of the split against the expected share.

    With N = n_treated + n_control and q the expected control (holdout) share:
      chi2 = (n_control - N q)^2 / (N q) + (n_treated - N (1 - q))^2 / (N (1 - q)) = (n_control - N q)^2 / (N q (1 - q)),
    and for 1 df P(X >= chi2) = erfc(sqrt(chi2 / 2)). None when N = 0 or q is None, 0 or 1 (no split to check).
    Use the counts at assignment (every candidate that reached the holdout step), not outcome counts: a review
    rejecting actions legitimately shrinks the acted arm.
    """
    if n_treated < 0 or n_control < 0:
        raise ValueError(f"srm_p_value: counts must be >= 0, got {n_treated}, {n_control}")
    if expected_control_share is None:
        return None
    if not 0.0 <= expected_control_share <= 1.0:
        raise ValueError(
            f"srm_p_value: expected_control_share must be in [0, 1], got {expected_control_share}"
        )
    total = n_treated + n_control
    if total == 0 or expected_control_share in (0.0, 1.0):
        return None
    q = expected_control_share
    chi_square = (n_control - total * q) ** 2 / (total * q * (1.0 - q))
    return math.erfc(math.sqrt(chi_square / 2.0))


def srm_flag(
    n_treated: int, n_control: int, expected_control_share: float | None, threshold: float = SRM_THRESHOLD
) -> bool | None:
    """True when the split mismatches the expected share (SRM p-value < threshold); None when untestable."""
    p_value = srm_p_value(n_treated, n_control, expected_control_share)
    return None if p_value is None else p_value < threshold


def verdict(
    n1: int | None, n0: int | None, lo: float | None, hi: float | None, min_per_arm: int = MIN_PER_ARM
) -> Verdict:
    """The rule's verdict from the arm sizes and the uplift interval (see the module docstring for the rule)."""
    if n1 is None or n0 is None or lo is None or hi is None or n1 < min_per_arm or n0 < min_per_arm:
        return "insufficient_data"
    if lo > 0.0:
        return "works"
    if hi < 0.0:
        return "harmful"
    return "no_evidence"


@dataclass(frozen=True)
class UpliftEvidence:
    """Everything the statistics say about one rule; the Python twin of a mart row."""

    conversion_acted: float | None
    conversion_held_out: float | None
    uplift: float | None
    uplift_lower: float | None
    uplift_upper: float | None
    p_value: float | None
    minimum_detectable_effect: float | None
    srm_p_value: float | None
    srm_flag: bool | None
    verdict: Verdict


def uplift_evidence(
    s1: int,
    n1: int,
    s0: int,
    n0: int,
    expected_control_share: float | None = None,
    assigned_treated: int | None = None,
    assigned_control: int | None = None,
    min_per_arm: int = MIN_PER_ARM,
) -> UpliftEvidence:
    """All statistics for one rule. SRM uses assigned_* counts when given, else n1 and n0."""
    diff, lo, hi = newcombe_difference(s1, n1, s0, n0)
    conversion_held_out = s0 / n0 if n0 else None
    srm_treated = n1 if assigned_treated is None else assigned_treated
    srm_control = n0 if assigned_control is None else assigned_control
    srm_p = srm_p_value(srm_treated, srm_control, expected_control_share)
    return UpliftEvidence(
        conversion_acted=s1 / n1 if n1 else None,
        conversion_held_out=conversion_held_out,
        uplift=diff,
        uplift_lower=lo,
        uplift_upper=hi,
        p_value=two_proportion_p_value(s1, n1, s0, n0),
        minimum_detectable_effect=minimum_detectable_effect(conversion_held_out, n1, n0),
        srm_p_value=srm_p,
        srm_flag=None if srm_p is None else srm_p < SRM_THRESHOLD,
        verdict=verdict(n1, n0, lo, hi, min_per_arm),
    )


def normal_mean_interval(
    values: Sequence[float], z: float = Z_95
) -> tuple[float | None, float | None, float | None]:
    """Mean of `values` with the normal-approximation interval mean ± z * s / sqrt(n): (mean, lo, hi).

    s is the sample standard deviation (n - 1 in the denominator). (None, None, None) when there are no values;
    (mean, None, None) for a single value (no spread to estimate). The SQL twin is `avg(x)` ± z * `stddev_samp(x)`
    / sqrt(n) (dbt_project/macros/learning.sql).
    """
    n = len(values)
    if n == 0:
        return None, None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None, None
    variance = math.fsum((value - mean) ** 2 for value in values) / (n - 1)
    half_width = z * math.sqrt(variance / n)
    return mean, mean - half_width, mean + half_width
