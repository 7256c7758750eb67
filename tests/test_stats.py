"""The outcome statistics: actionlayer.stats against references, and the dbt macros against actionlayer.stats.

References: the worked examples of Newcombe (1998, table II, method 10), scipy (Wilson interval, chi-square tests,
normal quantiles) as an independent implementation, and a seeded simulation for the interval's coverage. The SQL
macros (dbt_project/macros/stats.sql) are rendered by one in-process `dbt compile --inline` and the compiled SQL
is run in an in-memory DuckDB over many random cases, so the mart and the Python reports give the same numbers.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from scipy import stats as scipy_stats

from actionlayer import stats

PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_project"


def scipy_wilson(successes: int, n: int) -> tuple[float, float]:
    ci = scipy_stats.binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def random_cases(count: int, seed: int) -> list[tuple[int, int, int, int]]:
    """(s1, n1, s0, n0) with small and large arms, rates near 0 and 1 included."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        n1, n0 = (int(rng.choice([rng.integers(1, 40), rng.integers(40, 5000)])) for _ in range(2))
        p1, p0 = rng.choice([rng.uniform(0, 1), rng.uniform(0, 0.05), rng.uniform(0.95, 1)], size=2)
        cases.append((int(rng.binomial(n1, p1)), n1, int(rng.binomial(n0, p0)), n0))
    return cases


# --- Python functions against references -------------------------------------------------------------------------


def test_wilson_interval_matches_scipy():
    rng = np.random.default_rng(7)
    pairs = [(0, 1), (1, 1), (0, 50), (50, 50), (1, 2)]
    for _ in range(300):
        n = int(rng.integers(1, 3000))
        pairs.append((int(rng.integers(0, n + 1)), n))
    for s, n in pairs:
        lo, hi = stats.wilson_interval(s, n)
        ref_lo, ref_hi = scipy_wilson(s, n)
        assert lo == pytest.approx(ref_lo, abs=1e-12), (s, n)
        assert hi == pytest.approx(ref_hi, abs=1e-12), (s, n)
        assert 0.0 <= lo <= s / n <= hi <= 1.0


def test_wilson_interval_edges():
    assert stats.wilson_interval(0, 0) == (None, None)
    lo, hi = stats.wilson_interval(0, 20)
    assert lo == 0.0 and 0 < hi < 0.2
    lo, hi = stats.wilson_interval(20, 20)
    assert hi == 1.0 and 0.8 < lo < 1
    for bad in [(-1, 5), (6, 5), (0, -1)]:
        with pytest.raises(ValueError, match="successes"):
            stats.wilson_interval(*bad)


@pytest.mark.parametrize(
    ("s1", "n1", "s0", "n0", "diff", "lo", "hi"),
    [
        # Newcombe (1998), table II, method 10 (hybrid score)
        (56, 70, 48, 80, 0.2000, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.6000, 0.1705, 0.8090),
        (5, 56, 0, 29, 0.0893, -0.0381, 0.1926),
        (0, 10, 0, 20, 0.0, -0.1611, 0.2775),
        (0, 10, 0, 10, 0.0, -0.2775, 0.2775),
        (10, 10, 0, 20, 1.0, 0.6791, 1.0),
        (10, 10, 0, 10, 1.0, 0.6075, 1.0),
    ],
)
def test_newcombe_paper_examples(s1, n1, s0, n0, diff, lo, hi):
    got = stats.newcombe_difference(s1, n1, s0, n0)
    assert got == pytest.approx((diff, lo, hi), abs=5e-5)


def test_newcombe_matches_formula_on_scipy_wilson():
    for s1, n1, s0, n0 in random_cases(300, seed=11):
        l1, u1 = scipy_wilson(s1, n1)
        l0, u0 = scipy_wilson(s0, n0)
        p1, p0 = s1 / n1, s0 / n0
        expected = (
            p1 - p0,
            p1 - p0 - math.hypot(p1 - l1, u0 - p0),
            p1 - p0 + math.hypot(u1 - p1, p0 - l0),
        )
        assert stats.newcombe_difference(s1, n1, s0, n0) == pytest.approx(expected, abs=1e-12)


def test_newcombe_edges():
    assert stats.newcombe_difference(0, 0, 3, 10) == (None, None, None)
    assert stats.newcombe_difference(3, 10, 0, 0) == (None, None, None)
    diff, lo, hi = stats.newcombe_difference(40, 40, 40, 40)  # all converted in both arms
    assert diff == 0.0 and lo < 0 < hi
    with pytest.raises(ValueError, match="control"):
        stats.newcombe_difference(1, 2, 3, 2)


def test_two_proportion_p_value_matches_pearson_chi_square():
    """The pooled z-test squared is Pearson's chi-square on the 2x2 table (no continuity correction)."""
    for s1, n1, s0, n0 in random_cases(300, seed=13):
        got = stats.two_proportion_p_value(s1, n1, s0, n0)
        table = np.array([[s1, n1 - s1], [s0, n0 - s0]])
        if s1 + s0 in (0, n1 + n0):
            assert got == 1.0
            continue
        expected = scipy_stats.chi2_contingency(table, correction=False).pvalue
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-14), (s1, n1, s0, n0)


def test_two_proportion_p_value_example_and_edges():
    # 56/70 vs 48/80: pooled 104/150, z = 2.651
    pooled = 104 / 150
    z = (0.8 - 0.6) / math.sqrt(pooled * (1 - pooled) * (1 / 70 + 1 / 80))
    expected = 2 * scipy_stats.norm.sf(z)
    assert stats.two_proportion_p_value(56, 70, 48, 80) == pytest.approx(expected, rel=1e-12)
    assert stats.two_proportion_p_value(5, 50, 10, 100) == pytest.approx(1.0)
    assert stats.two_proportion_p_value(0, 50, 0, 30) == 1.0
    assert stats.two_proportion_p_value(50, 50, 30, 30) == 1.0
    assert stats.two_proportion_p_value(3, 10, 0, 0) is None


def test_minimum_detectable_effect_matches_scipy_quantiles():
    for p0, n1, n0, alpha, power in [
        (0.2, 1000, 100, 0.05, 0.8),
        (0.05, 30, 30, 0.05, 0.8),
        (0.5, 10_000, 1_000, 0.01, 0.9),
        (0.9, 200, 50, 0.1, 0.5),
    ]:
        multiplier = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)
        expected = multiplier * math.sqrt(p0 * (1 - p0) * (1 / n1 + 1 / n0))
        got = stats.minimum_detectable_effect(p0, n1, n0, alpha=alpha, power=power)
        assert got == pytest.approx(expected, rel=1e-9)
    # textbook check: 80% power at the MDE means the expected z statistic is z_0.975 + z_0.8 = 2.8016
    assert abs(stats.Z_95 + stats.Z_POWER_80 - 2.8015852) < 1e-7
    assert stats.minimum_detectable_effect(None, 10, 10) is None
    assert stats.minimum_detectable_effect(0.0, 10, 10) is None
    assert stats.minimum_detectable_effect(1.0, 10, 10) is None
    assert stats.minimum_detectable_effect(0.3, 0, 10) is None
    with pytest.raises(ValueError, match="p0"):
        stats.minimum_detectable_effect(1.5, 10, 10)


def test_srm_p_value_matches_scipy_chisquare():
    rng = np.random.default_rng(17)
    for _ in range(200):
        share = float(rng.choice([0.1, 0.05, 0.5, rng.uniform(0.01, 0.99)]))
        n_control = int(rng.integers(0, 2000))
        n_treated = int(rng.integers(1, 20000))
        total = n_treated + n_control
        expected = scipy_stats.chisquare(
            [n_treated, n_control], f_exp=[total * (1 - share), total * share]
        ).pvalue
        got = stats.srm_p_value(n_treated, n_control, share)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_srm_flag_and_edges():
    assert stats.srm_p_value(900, 100, 0.1) == pytest.approx(1.0)
    assert stats.srm_flag(1000, 105, 0.1) is False  # chance wobble
    assert stats.srm_flag(1000, 150, 0.1) is True  # p = 0.0006: the split is broken
    assert stats.srm_p_value(0, 0, 0.1) is None
    assert stats.srm_p_value(10, 1, None) is None
    assert stats.srm_p_value(10, 1, 0.0) is None
    assert stats.srm_flag(0, 0, 0.1) is None
    with pytest.raises(ValueError, match="expected_control_share"):
        stats.srm_p_value(10, 1, 1.5)


@pytest.mark.parametrize(
    ("n1", "n0", "lo", "hi", "expected"),
    [
        (100, 100, 0.01, 0.2, "works"),
        (100, 100, -0.2, -0.01, "harmful"),
        (100, 100, -0.05, 0.1, "no_evidence"),
        (100, 100, 0.0, 0.1, "no_evidence"),  # touching zero is not evidence
        (29, 100, 0.1, 0.3, "insufficient_data"),
        (100, 29, -0.3, -0.1, "insufficient_data"),
        (30, 30, 0.1, 0.3, "works"),
        (0, 0, None, None, "insufficient_data"),
        (None, 50, 0.1, 0.2, "insufficient_data"),
    ],
)
def test_verdict_rule(n1, n0, lo, hi, expected):
    assert stats.verdict(n1, n0, lo, hi) == expected
    assert expected in stats.VERDICTS


def test_verdict_min_per_arm_is_a_parameter():
    assert stats.verdict(10, 10, 0.1, 0.3, min_per_arm=10) == "works"
    assert stats.verdict(10, 10, 0.1, 0.3) == "insufficient_data"


def test_uplift_evidence_bundles_everything():
    evidence = stats.uplift_evidence(56, 70, 48, 80, expected_control_share=0.5)
    assert evidence.uplift == pytest.approx(0.2)
    assert (evidence.uplift_lower, evidence.uplift_upper) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert evidence.verdict == "works"
    assert evidence.srm_flag is False and evidence.p_value < 0.01
    assert evidence.minimum_detectable_effect == pytest.approx(
        2.8015852 * math.sqrt(0.6 * 0.4 * (1 / 70 + 1 / 80)), rel=1e-6
    )
    # SRM on the assignment counts, not on the closed outcomes
    skewed = stats.uplift_evidence(56, 70, 48, 80, 0.1, assigned_treated=900, assigned_control=100)
    assert skewed.srm_p_value == pytest.approx(1.0) and skewed.srm_flag is False
    empty = stats.uplift_evidence(0, 0, 0, 0, expected_control_share=0.1)
    assert empty.verdict == "insufficient_data"
    assert empty.uplift is None and empty.p_value is None and empty.srm_p_value is None


def test_newcombe_interval_coverage_simulation():
    """Seeded: 2000 experiments per setting; the 95% interval should cover the true difference ~95% of the time."""
    rng = np.random.default_rng(20261101)
    for p1, n1, p0, n0 in [(0.25, 300, 0.15, 120), (0.06, 400, 0.03, 100), (0.5, 40, 0.5, 35)]:
        s1 = rng.binomial(n1, p1, size=2000)
        s0 = rng.binomial(n0, p0, size=2000)
        covered = 0
        for a, b in zip(s1.tolist(), s0.tolist(), strict=True):
            _, lo, hi = stats.newcombe_difference(a, n1, b, n0)
            covered += lo <= p1 - p0 <= hi
        coverage = covered / 2000
        assert 0.93 <= coverage <= 0.97, (p1, n1, p0, n0, coverage)


# --- the SQL macros against the Python mirror ----------------------------------------------------------------------

SPLIT = "-- @@next-query@@"

CASES_SQL = """
select
    case_id,
    {{ proportion('s1', 'n1') }} as rate1,
    {{ wilson_lower('s1', 'n1') }} as wilson1_lo,
    {{ wilson_upper('s1', 'n1') }} as wilson1_hi,
    {{ proportion_difference('s1', 'n1', 's0', 'n0') }} as diff,
    {{ newcombe_lower('s1', 'n1', 's0', 'n0') }} as newcombe_lo,
    {{ newcombe_upper('s1', 'n1', 's0', 'n0') }} as newcombe_hi,
    {{ two_proportion_p_value('s1', 'n1', 's0', 'n0') }} as p_value,
    {{ minimum_detectable_effect('p0', 'n1', 'n0') }} as mde,
    {{ srm_p_value('n1', 'n0', 'share') }} as srm_p,
    {{ srm_flag('n1', 'n0', 'share') }} as srm_flagged,
    {{ uplift_verdict('n1', 'n0', newcombe_lower('s1', 'n1', 's0', 'n0'), newcombe_upper('s1', 'n1', 's0', 'n0')) }}
        as verdict
from cases
order by case_id
"""

ERFC_SQL = """
select x, {{ stats_erfc('x') }} as erfc, {{ stats_normal_cdf('x') }} as phi from grid order by x
"""

# mart-shaped: counts straight from aggregates, the whole evidence from uplift_columns
MART_SQL = """
select
    rule_id,
    {{ uplift_columns(
        'count(*) filter (where acted and converted)', 'count(*) filter (where acted)',
        'count(*) filter (where not acted and converted)', 'count(*) filter (where not acted)', 'uplift_') }},
    {{ minimum_detectable_effect(
        proportion('count(*) filter (where not acted and converted)', 'count(*) filter (where not acted)'),
        'count(*) filter (where acted)', 'count(*) filter (where not acted)') }} as minimum_detectable_effect,
    {{ srm_p_value('count(*) filter (where acted)', 'count(*) filter (where not acted)', 'max(holdout_share)') }}
        as srm_p_value
from events
group by rule_id
order by rule_id
"""


@pytest.fixture(scope="module")
def compiled_sql(tmp_path_factory) -> list[str]:
    """One in-process `dbt compile --inline` renders every query (joined by a marker comment)."""
    from dbt.cli.main import dbtRunner

    work_dir = tmp_path_factory.mktemp("stats_dbt")
    inline = f"\n{SPLIT}\n".join([CASES_SQL, ERFC_SQL, MART_SQL])
    with pytest.MonkeyPatch.context() as patch:
        # compile does not need the database; the profile still names one, keep it out of the repository
        patch.setenv("ACTIONLAYER_DB", str(work_dir / "unused.duckdb"))
        patch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        started = time.monotonic()
        result = dbtRunner().invoke(
            [
                "compile",
                "--inline",
                inline,
                "--quiet",
                "--project-dir",
                str(PROJECT_DIR),
                "--profiles-dir",
                str(PROJECT_DIR),
                "--target-path",
                str(work_dir / "target"),
                "--log-path",
                str(work_dir / "logs"),
            ]
        )
    assert result.success, result.exception
    print(f"dbt compile --inline: {time.monotonic() - started:.1f} s")
    queries = result.result.results[0].node.compiled_code.split(SPLIT)
    assert len(queries) == 3
    return queries


def fetch(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def close(got: float | None, expected: float | None, tolerance: float = 1e-9) -> bool:
    if got is None or expected is None:
        return got is None and expected is None
    return abs(got - expected) <= tolerance


@pytest.mark.slow
def test_sql_macros_agree_with_python(compiled_sql):
    rng = np.random.default_rng(23)
    rows = []
    for case_id, (s1, n1, s0, n0) in enumerate(random_cases(2000, seed=19)):
        share = float(rng.choice([0.1, 0.5, rng.uniform(0.01, 0.99)]))
        rows.append((case_id, s1, n1, s0, n0, s0 / n0, share))
    # edges: empty arms, all/none converted, out-of-range counts and nulls (SQL gives null, Python raises)
    edges = [
        (0, 0, 5, 10, 0.5, 0.1),
        (5, 10, 0, 0, None, 0.1),
        (0, 30, 0, 30, 0.0, 0.5),
        (30, 30, 30, 30, 1.0, 0.5),
        (30, 30, 0, 30, 0.0, 0.5),
        (0, 1, 1, 1, 1.0, 0.5),
        (12, 10, 3, 10, 0.3, 0.5),
        (-1, 10, 3, 10, 0.3, 0.5),
        (None, 10, 3, 10, 0.3, None),
        (3, None, 3, 10, 0.3, 0.0),
        (1, 10, 3, 10, None, 1.0),
    ]
    for offset, edge in enumerate(edges):
        rows.append((10_000 + offset, *edge))

    with duckdb.connect() as con:
        con.execute(
            "create table cases (case_id integer, s1 bigint, n1 bigint, s0 bigint, n0 bigint, p0 double, share double)"
        )
        con.executemany("insert into cases values (?, ?, ?, ?, ?, ?, ?)", rows)
        got = fetch(con, compiled_sql[0])
    assert len(got) == len(rows)

    mismatches = []
    for row, (case_id, s1, n1, s0, n0, p0, share) in zip(got, rows, strict=True):
        assert row["case_id"] == case_id
        valid = all(v is not None for v in (s1, n1, s0, n0)) and 0 <= s1 <= n1 and 0 <= s0 <= n0
        if valid:
            w_lo, w_hi = stats.wilson_interval(s1, n1)
            diff, lo, hi = stats.newcombe_difference(s1, n1, s0, n0)
            expected = {
                "rate1": s1 / n1 if n1 else None,
                "wilson1_lo": w_lo,
                "wilson1_hi": w_hi,
                "diff": diff,
                "newcombe_lo": lo,
                "newcombe_hi": hi,
                "p_value": stats.two_proportion_p_value(s1, n1, s0, n0),
                "mde": stats.minimum_detectable_effect(p0, n1, n0),
                "srm_p": stats.srm_p_value(n1, n0, share) if share is not None else None,
            }
            expected_flag = stats.srm_flag(n1, n0, share)
            expected_verdict = stats.verdict(n1, n0, lo, hi)
        else:
            expected = dict.fromkeys(
                ["rate1", "wilson1_lo", "wilson1_hi", "diff", "newcombe_lo", "newcombe_hi", "p_value"]
            )
            expected["mde"] = None if None in (p0, n1, n0) or not 0 < p0 < 1 else "skip"
            expected["srm_p"] = "skip"
            expected_flag = "skip"
            expected_verdict = "insufficient_data"
        for key, value in expected.items():
            if value != "skip" and not close(row[key], value):
                mismatches.append((case_id, key, row[key], value))
        if expected_flag != "skip" and row["srm_flagged"] != expected_flag:
            mismatches.append((case_id, "srm_flagged", row["srm_flagged"], expected_flag))
        if row["verdict"] != expected_verdict:
            mismatches.append((case_id, "verdict", row["verdict"], expected_verdict))
    assert not mismatches, mismatches[:20]
    verdicts = {row["verdict"] for row in got}
    assert verdicts == set(stats.VERDICTS)  # the random cases reach every verdict


@pytest.mark.slow
def test_sql_erfc_matches_math_erfc(compiled_sql):
    grid = [i / 100 for i in range(-1000, 3001)] + [0.46875, -0.46875, 4.0, -4.0, 1e-20, 26.5]
    with duckdb.connect() as con:
        con.execute("create table grid (x double)")
        con.executemany("insert into grid values (?)", [(x,) for x in grid])
        con.execute("insert into grid values (null)")
        rows = fetch(con, compiled_sql[1])
    for row in rows:
        x = row["x"]
        if x is None:
            assert row["erfc"] is None and row["phi"] is None
            continue
        assert row["erfc"] == pytest.approx(math.erfc(x), rel=1e-12, abs=1e-300), x
        assert row["phi"] == pytest.approx(scipy_stats.norm.cdf(x), rel=1e-11, abs=1e-300), x


@pytest.mark.slow
def test_sql_uplift_columns_on_aggregates(compiled_sql):
    """The mart-shaped call: counts from aggregate expressions inline, grouped by rule."""
    arms = {  # rule: (acted converted, acted, held-out converted, held out, holdout share)
        "big_win": (300, 1000, 10, 100, 0.1),
        "harmful": (50, 1000, 25, 100, 0.1),
        "flat": (100, 1000, 10, 100, 0.1),
        "tiny": (3, 10, 0, 2, 0.1),
        "no_holdout": (5, 40, 0, 0, 0.0),
    }
    events = []
    for rule_id, (s1, n1, s0, n0, share) in arms.items():
        events += [(rule_id, True, i < s1, share) for i in range(n1)]
        events += [(rule_id, False, i < s0, share) for i in range(n0)]
    with duckdb.connect() as con:
        con.execute(
            "create table events (rule_id varchar, acted boolean, converted boolean, holdout_share double)"
        )
        con.executemany("insert into events values (?, ?, ?, ?)", events)
        rows = {row["rule_id"]: row for row in fetch(con, compiled_sql[2])}
    assert set(rows) == set(arms)
    for rule_id, (s1, n1, s0, n0, share) in arms.items():
        row = rows[rule_id]
        evidence = stats.uplift_evidence(s1, n1, s0, n0, expected_control_share=share)
        assert row["uplift_verdict"] == evidence.verdict, rule_id
        for column, value in [
            ("uplift", evidence.uplift),
            ("uplift_ci_lower", evidence.uplift_lower),
            ("uplift_ci_upper", evidence.uplift_upper),
            ("uplift_p_value", evidence.p_value),
            ("minimum_detectable_effect", evidence.minimum_detectable_effect),
            ("srm_p_value", evidence.srm_p_value),
        ]:
            assert close(row[column], value), (rule_id, column, row[column], value)
    assert [rows[r]["uplift_verdict"] for r in arms] == [
        "works",
        "harmful",
        "no_evidence",
        "insufficient_data",
        "insufficient_data",
    ]


def test_python_defaults_match_sql_literals():
    """The constants the SQL hard-codes are the Python defaults (and the true quantiles)."""
    macros = (PROJECT_DIR / "macros" / "stats.sql").read_text(encoding="utf-8")
    assert repr(stats.Z_95) in macros and repr(stats.Z_POWER_80) in macros
    assert abs(stats.Z_95 - scipy_stats.norm.ppf(0.975)) < 1e-14
    assert abs(stats.Z_POWER_80 - scipy_stats.norm.ppf(0.8)) < 1e-14
    assert f"min_per_arm={stats.MIN_PER_ARM}" in macros and f"threshold={stats.SRM_THRESHOLD}" in macros
