{#
  Outcome statistics in SQL: acted (arm 1, treated) vs held out (arm 0, control), from column expressions.
  The SQL twin of actionlayer/stats.py, which documents the methods and the verdict rule; tests/test_stats.py
  checks that both give the same numbers. Differences are always p1 - p0.

  Every macro takes SQL expressions (column names, or expressions) and returns one parenthesised expression of
  type double (varchar for the verdict, boolean for the SRM flag). Null-safe: a null input, an empty arm
  (n <= 0), counts out of range (s < 0 or s > n) or a share outside (0, 1) give null, never an error or inf
  (DuckDB 2.0 returns inf for x / 0, so every division is guarded). The Python mirror raises ValueError on
  out-of-range counts instead; here a bad row must not fail a whole mart.
  Arguments are inlined several times: pass plain columns (aggregate the counts in an earlier CTE).

  DuckDB 2.0 has no erf/erfc or normal CDF (checked: duckdb_functions() lists only gamma/lgamma), so stats_erfc
  implements W. J. Cody's rational Chebyshev approximations (Cody 1969, "Rational Chebyshev approximations for
  the error function", Math. Comp. 23, 631-637; the coefficients of his SPECFUN routine CALERF, ACM TOMS
  Algorithm 715, 1993), relative error below 1e-13 against Python's math.erfc over [0, 30]: far inside the
  1e-6 the p-values must match. Its argument is bound once through a one-element list lambda, because the
  approximation uses it about fifty times.

  Defaults match actionlayer/stats.py: z = 1.959963984540054 (95%), MDE at alpha 0.05 two-sided and power 0.8
  (z = 0.8416212335729143), min_per_arm 30, SRM threshold 0.001.
#}

{% macro _stats_double(expression) -%}
    cast(({{ expression }}) as double)
{%- endmacro %}

{# successes and trials form a usable arm: 0 <= s <= n and n > 0 (null when either is null). #}
{% macro _stats_valid_arm(s, n) -%}
    ({{ _stats_double(n) }} > 0 and {{ _stats_double(s) }} >= 0 and {{ _stats_double(s) }} <= {{ _stats_double(n) }})
{%- endmacro %}

{# s / n as double; only used inside a branch where n > 0. #}
{% macro _stats_rate(s, n) -%}
    ({{ _stats_double(s) }} / {{ _stats_double(n) }})
{%- endmacro %}

{# Horner's rule: ((leading * x + c0) * x + c1) ... * x + c_last; leading none means a monic polynomial. #}
{% macro _stats_horner(x, leading, coefficients) -%}
    {%- set ns = namespace(text=(leading ~ ' * ' ~ x) if leading is not none else x) -%}
    {%- for c in coefficients -%}
        {%- if not loop.last -%}
            {%- set ns.text = '(' ~ ns.text ~ ' + ' ~ c ~ ') * ' ~ x -%}
        {%- else -%}
            {%- set ns.text = '(' ~ ns.text ~ ' + ' ~ c ~ ')' -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(ns.text) }}
{%- endmacro %}

{#
  erfc(x) for any real x (Cody 1969), in three ranges of y = |x|:
    y <= 0.46875     erfc = 1 - x * A(y^2) / B(y^2)
    0.46875 < y <= 4 erfc(y) = exp(-y^2) * C(y) / D(y)
    y > 4            erfc(y) = exp(-y^2) / y * (1/sqrt(pi) - t * P(t) / Q(t)), t = 1 / y^2
  and erfc(-y) = 2 - erfc(y).
#}
{% macro stats_erfc(x) -%}
    {%- set a = ['3.16112374387056560e00', '1.13864154151050156e02', '3.77485237685302021e02', '3.20937758913846947e03'] -%}
    {%- set b = ['2.36012909523441209e01', '2.44024637934444173e02', '1.28261652607737228e03', '2.84423683343917062e03'] -%}
    {%- set c = ['5.64188496988670089e-1', '8.88314979438837594e00', '6.61191906371416295e01', '2.98635138197400131e02',
                 '8.81952221241769090e02', '1.71204761263407058e03', '2.05107837782607147e03', '1.23033935479799725e03'] -%}
    {%- set d = ['1.57449261107098347e01', '1.17693950891312499e02', '5.37181101862009858e02', '1.62138957456669019e03',
                 '3.29079923573345963e03', '4.36261909014324716e03', '3.43936767414372164e03', '1.23033935480374942e03'] -%}
    {%- set p = ['3.05326634961232344e-1', '3.60344899949804439e-1', '1.25781726111229246e-1', '1.60837851487422766e-2',
                 '6.58749161529837803e-4'] -%}
    {%- set q = ['2.56852019228982242e00', '1.87295284992346725e00', '5.27905102951428412e-1', '6.05183413124413191e-2',
                 '2.33520497626869185e-3'] -%}
    {%- set y = 'abs(erfc_x)' -%}
    {%- set ysq = '(erfc_x * erfc_x)' -%}
    {%- set t = '(1.0 / (erfc_x * erfc_x))' -%}
    (list_transform([{{ _stats_double(x) }}], lambda erfc_x: case
        when erfc_x is null or isnan(erfc_x) then null
        when {{ y }} <= 0.46875 then
            1.0 - erfc_x * {{ _stats_horner(ysq, '1.85777706184603153e-1', a) }} / {{ _stats_horner(ysq, none, b) }}
        else (case when erfc_x < 0 then -1.0 else 1.0 end) * (exp(-{{ ysq }}) * case
                when {{ y }} <= 4.0 then
                    {{ _stats_horner(y, '2.15311535474403846e-8', c) }} / {{ _stats_horner(y, none, d) }}
                else
                    (5.6418958354775628695e-1 - {{ t }} * {{ _stats_horner(t, '1.63153871373020978e-2', p) }}
                        / {{ _stats_horner(t, none, q) }}) / {{ y }}
            end) + (case when erfc_x < 0 then 2.0 else 0.0 end)
    end)[1])
{%- endmacro %}

{# Standard normal CDF: Phi(x) = erfc(-x / sqrt 2) / 2. #}
{% macro stats_normal_cdf(x) -%}
    (0.5 * {{ stats_erfc('-(' ~ _stats_double(x) ~ ') / sqrt(2.0)') }})
{%- endmacro %}

{# s / n, null when n <= 0 or s is out of [0, n]. #}
{% macro proportion(s, n) -%}
    (case when {{ _stats_valid_arm(s, n) }} then {{ _stats_rate(s, n) }} end)
{%- endmacro %}

{# Wilson (1927) score interval for s / n. The lower bound is exactly 0 when s = 0, the upper exactly 1 when s = n. #}
{% macro _stats_wilson(s, n, z, sign) -%}
    {%- set nd = _stats_double(n) -%}
    {%- set p = _stats_rate(s, n) -%}
    {%- set z2 = '(' ~ z ~ ' * ' ~ z ~ ')' -%}
    (({{ p }} + {{ z2 }} / (2.0 * {{ nd }}) {{ sign }} {{ z }} * sqrt({{ p }} * (1.0 - {{ p }}) / {{ nd }}
        + {{ z2 }} / (4.0 * {{ nd }} * {{ nd }}))) / (1.0 + {{ z2 }} / {{ nd }}))
{%- endmacro %}

{% macro wilson_lower(s, n, z=1.959963984540054) -%}
    (case when {{ _stats_valid_arm(s, n) }} then
        case when {{ _stats_double(s) }} = 0 then 0.0 else greatest(0.0, {{ _stats_wilson(s, n, z, '-') }}) end
    end)
{%- endmacro %}

{% macro wilson_upper(s, n, z=1.959963984540054) -%}
    (case when {{ _stats_valid_arm(s, n) }} then
        case when {{ _stats_double(s) }} = {{ _stats_double(n) }} then 1.0 else least(1.0, {{ _stats_wilson(s, n, z, '+') }}) end
    end)
{%- endmacro %}

{# p1 - p0, null unless both arms are usable. #}
{% macro proportion_difference(s1, n1, s0, n0) -%}
    (case when {{ _stats_valid_arm(s1, n1) }} and {{ _stats_valid_arm(s0, n0) }} then
        {{ _stats_rate(s1, n1) }} - {{ _stats_rate(s0, n0) }}
    end)
{%- endmacro %}

{#
  Newcombe (1998) method 10, hybrid score interval for p1 - p0:
    lower = (p1 - p0) - sqrt((p1 - l1)^2 + (u0 - p0)^2),  upper = (p1 - p0) + sqrt((u1 - p1)^2 + (p0 - l0)^2)
  with (l, u) the Wilson intervals of each arm.
#}
{% macro newcombe_lower(s1, n1, s0, n0, z=1.959963984540054) -%}
    (case when {{ _stats_valid_arm(s1, n1) }} and {{ _stats_valid_arm(s0, n0) }} then
        {{ _stats_rate(s1, n1) }} - {{ _stats_rate(s0, n0) }}
        - sqrt(power({{ _stats_rate(s1, n1) }} - {{ wilson_lower(s1, n1, z) }}, 2)
               + power({{ wilson_upper(s0, n0, z) }} - {{ _stats_rate(s0, n0) }}, 2))
    end)
{%- endmacro %}

{% macro newcombe_upper(s1, n1, s0, n0, z=1.959963984540054) -%}
    (case when {{ _stats_valid_arm(s1, n1) }} and {{ _stats_valid_arm(s0, n0) }} then
        {{ _stats_rate(s1, n1) }} - {{ _stats_rate(s0, n0) }}
        + sqrt(power({{ wilson_upper(s1, n1, z) }} - {{ _stats_rate(s1, n1) }}, 2)
               + power({{ _stats_rate(s0, n0) }} - {{ wilson_lower(s0, n0, z) }}, 2))
    end)
{%- endmacro %}

{#
  Pooled two-proportion z-test, two-sided: erfc(|z| / sqrt 2) with z = (p1 - p0) / sqrt(p (1 - p) (1/n1 + 1/n0)),
  p = (s1 + s0) / (n1 + n0). A pooled rate of 0 or 1 (both arms identical) gives 1.
#}
{% macro two_proportion_p_value(s1, n1, s0, n0) -%}
    {%- set pooled = '((' ~ _stats_double(s1) ~ ' + ' ~ _stats_double(s0) ~ ') / (' ~ _stats_double(n1) ~ ' + ' ~ _stats_double(n0) ~ '))' -%}
    (case when {{ _stats_valid_arm(s1, n1) }} and {{ _stats_valid_arm(s0, n0) }} then
        case when {{ pooled }} <= 0 or {{ pooled }} >= 1 then 1.0
        else {{ stats_erfc('abs(' ~ _stats_rate(s1, n1) ~ ' - ' ~ _stats_rate(s0, n0) ~ ') / sqrt(' ~ pooled ~ ' * (1.0 - '
                           ~ pooled ~ ') * (1.0 / ' ~ _stats_double(n1) ~ ' + 1.0 / ' ~ _stats_double(n0) ~ ')) / sqrt(2.0)') }}
        end
    end)
{%- endmacro %}

{#
  Minimum detectable effect at alpha 0.05 (two-sided) and power 0.8:
    (z_0.975 + z_0.8) * sqrt(p0 (1 - p0) (1/n1 + 1/n0)), p0 = the control (held-out) rate.
  Null when p0 is not strictly between 0 and 1 (no baseline variance to work from) or an arm is empty.
#}
{% macro minimum_detectable_effect(p0, n1, n0) -%}
    {%- set p = _stats_double(p0) -%}
    (case when {{ p }} > 0 and {{ p }} < 1 and {{ _stats_double(n1) }} > 0 and {{ _stats_double(n0) }} > 0 then
        (1.959963984540054 + 0.8416212335729143)
        * sqrt({{ p }} * (1.0 - {{ p }}) * (1.0 / {{ _stats_double(n1) }} + 1.0 / {{ _stats_double(n0) }}))
    end)
{%- endmacro %}

{#
  Sample ratio mismatch: chi-square goodness of fit (1 df) of the split n1 (treated) / n0 (control) against
  expected_share = the expected control (holdout) share q. chi2 = (n0 - N q)^2 / (N q (1 - q)), N = n1 + n0,
  p = erfc(sqrt(chi2 / 2)). Feed it the counts at assignment, not outcome counts.
#}
{% macro srm_p_value(n1, n0, expected_share) -%}
    {%- set total = '(' ~ _stats_double(n1) ~ ' + ' ~ _stats_double(n0) ~ ')' -%}
    {%- set q = _stats_double(expected_share) -%}
    (case when {{ _stats_double(n1) }} >= 0 and {{ _stats_double(n0) }} >= 0 and {{ total }} > 0
              and {{ q }} > 0 and {{ q }} < 1 then
        {{ stats_erfc('abs(' ~ _stats_double(n0) ~ ' - ' ~ total ~ ' * ' ~ q ~ ') / sqrt(2.0 * ' ~ total ~ ' * ' ~ q
                      ~ ' * (1.0 - ' ~ q ~ '))') }}
    end)
{%- endmacro %}

{# True when the split mismatches (SRM p-value < threshold), null when untestable. Does not change the verdict. #}
{% macro srm_flag(n1, n0, expected_share, threshold=0.001) -%}
    ({{ srm_p_value(n1, n0, expected_share) }} < {{ threshold }})
{%- endmacro %}

{#
  The verdict (actionlayer.stats.verdict): insufficient_data when either arm is below min_per_arm or the interval
  is missing; works when lo > 0; harmful when hi < 0; otherwise no_evidence.
#}
{% macro uplift_verdict(n1, n0, lo, hi, min_per_arm=30) -%}
    (case
        when ({{ n1 }}) is null or ({{ n0 }}) is null or ({{ lo }}) is null or ({{ hi }}) is null
             or ({{ n1 }}) < {{ min_per_arm }} or ({{ n0 }}) < {{ min_per_arm }} then 'insufficient_data'
        when ({{ lo }}) > 0 then 'works'
        when ({{ hi }}) < 0 then 'harmful'
        else 'no_evidence'
    end)
{%- endmacro %}

