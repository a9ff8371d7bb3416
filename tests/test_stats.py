"""The statistics written by hand, each against a library or a published table: the Student t quantile and
t-interval (scipy; the textbook t table), the bootstrap interval against the exact bootstrap distribution,
P(improvement), pairing."""
import itertools
import math
import statistics

import numpy as np
import pytest

from tlbench.stats import (bootstrap_interval, paired_comparison, probability_of_improvement, t95,
                           t_central_probability, t_interval)

# two-sided 95% quantiles t_{0.975, dof} as printed in the standard table (e.g. NIST/SEMATECH e-Handbook of
# Statistical Methods, 1.3.6.7.2 "Critical values of the Student's t distribution"; Student's t table in any
# statistics textbook)
PUBLISHED_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
                  10: 2.228, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 100: 1.984}


@pytest.mark.parametrize("dof, quantile", sorted(PUBLISHED_T975.items()))
def test_t95_reproduces_the_published_t_table(dof, quantile):
    assert t95(dof) == quantile


def test_t95_refuses_zero_degrees_of_freedom():
    with pytest.raises(ValueError, match="degrees of freedom"):
        t95(0)


def test_t_central_probability_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for dof in [1, 2, 3, 4, 5, 10, 29, 30, 31, 100, 1001]:
        for t in [0.0, 0.1, 0.5, 1.0, 1.96, 2.5, 4.303, 12.706]:
            assert t_central_probability(t, dof) == pytest.approx(2 * stats.t.cdf(t, dof) - 1, abs=1e-9), (t, dof)


def test_t95_matches_scipy_for_any_number_of_seeds():
    stats = pytest.importorskip("scipy.stats")
    for dof in [*range(1, 61), 99, 250, 1000]:
        assert t95(dof) == pytest.approx(stats.t.ppf(0.975, dof), abs=6e-4), dof


def test_t_interval_of_the_published_example():
    """3 seeds 0.70, 0.72, 0.74: mean 0.72, std 0.02, half-width t_{0.975,2} * 0.02 / sqrt(3) = 4.303 * 0.011547."""
    summary = t_interval([0.70, 0.72, 0.74])
    assert summary.n == 3 and summary.mean == pytest.approx(0.72) and summary.std == pytest.approx(0.02)
    assert summary.half_width == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    single = t_interval([0.5])
    assert (single.mean, single.std, single.half_width, single.n) == (0.5, None, None, 1)


@pytest.mark.parametrize("values", [[0.70, 0.72, 0.74], [0.61, 0.64, 0.60, 0.66, 0.63],
                                    [0.5 + 0.01 * (i % 7) for i in range(40)]])
def test_t_interval_matches_scipy(values):
    stats = pytest.importorskip("scipy.stats")
    low, high = stats.t.interval(0.95, len(values) - 1, loc=statistics.fmean(values), scale=stats.sem(values))
    summary = t_interval(values)
    assert summary.mean - summary.half_width == pytest.approx(low, rel=2e-4)
    assert summary.mean + summary.half_width == pytest.approx(high, rel=2e-4)


def test_paired_t_interval_matches_scipys_paired_t_test():
    """The report's paired t-interval: the t-interval of the per-seed differences, as scipy's ttest_rel gives it."""
    stats = pytest.importorskip("scipy.stats")
    strategy, reference = [0.83, 0.80, 0.82, 0.79], [0.80, 0.78, 0.81, 0.80]
    comparison = paired_comparison(dict(enumerate(strategy)), dict(enumerate(reference)))
    interval = stats.ttest_rel(strategy, reference).confidence_interval(0.95)
    assert comparison.mean == pytest.approx((interval.low + interval.high) / 2)
    # t95 keeps 3 decimals (t_{0.975,3} = 3.182 for 3.18245): the half-width agrees to that relative precision
    assert comparison.t_half_width == pytest.approx((interval.high - interval.low) / 2, rel=2e-4)
    assert paired_comparison({0: 0.9}, {0: 0.8}).t_half_width is None


@pytest.mark.parametrize("values", [[0.021, 0.033, 0.010], [-0.05, 0.01, 0.02, -0.03], [0.0, 0.0, 0.1]])
def test_bootstrap_interval_matches_the_exact_bootstrap_distribution(values):
    """With n values there are n**n equally likely resamples: their means are the exact bootstrap distribution,
    whose 2.5% and 97.5% quantiles the Monte Carlo interval must reproduce."""
    n = len(values)
    exact = np.array([np.mean(c) for c in itertools.product(values, repeat=n)])
    low, high = bootstrap_interval(values)
    spread = max(values) - min(values)
    # quantiles of a discrete distribution: allow one neighbouring atom's distance
    atoms = np.unique(np.round(exact, 12))
    step = np.max(np.diff(atoms)) if len(atoms) > 1 else 0
    assert abs(low - np.quantile(exact, 0.025)) <= step + 1e-12
    assert abs(high - np.quantile(exact, 0.975)) <= step + 1e-12
    tiny = 1e-12  # float rounding of a mean of equal values
    assert min(values) - tiny <= low <= np.mean(values) <= high <= max(values) + tiny and high - low <= spread + tiny


def test_bootstrap_is_reproducible_and_refuses_what_it_cannot_do():
    assert bootstrap_interval([1.0, 2.0, 4.0]) == bootstrap_interval([1.0, 2.0, 4.0])
    for bad in ([1.0], [], [1.0, math.nan], [1.0, math.inf], [-math.inf, 2.0]):
        with pytest.raises(ValueError):
            bootstrap_interval(bad)


def test_probability_of_improvement_counts_ties_half():
    assert probability_of_improvement([0.1, 0.2, -0.1, 0.0]) == pytest.approx((2 + 0.5) / 4)
    assert probability_of_improvement([-0.1, -0.2]) == 0.0


def test_paired_comparison_uses_only_seeds_both_have():
    comparison = paired_comparison({0: 0.80, 1: 0.82, 2: 0.81, 5: 0.9}, {0: 0.78, 1: 0.79, 2: 0.80, 3: 0.7})
    assert dict(comparison.differences) == pytest.approx({0: 0.02, 1: 0.03, 2: 0.01})
    assert comparison.n == 3 and comparison.mean == pytest.approx(0.02)
    assert comparison.probability_of_improvement == 1.0
    assert comparison.verdict == "better" and comparison.distinguishable
    assert paired_comparison({0: 0.5}, {1: 0.5}) is None


def test_verdicts():
    covers_zero = paired_comparison({0: 0.80, 1: 0.78, 2: 0.81}, {0: 0.79, 1: 0.80, 2: 0.80})
    assert covers_zero.low <= 0 <= covers_zero.high and covers_zero.verdict == "not distinguishable"
    worse = paired_comparison({0: 0.70, 1: 0.71}, {0: 0.80, 1: 0.79})
    assert worse.verdict == "worse" and worse.high < 0
    identical = paired_comparison({0: 0.8, 1: 0.7}, {0: 0.8, 1: 0.7})
    assert (identical.low, identical.high) == (0.0, 0.0) and identical.verdict == "not distinguishable"
    single = paired_comparison({0: 0.9}, {0: 0.8})
    assert single.low is None and single.verdict == "too few seeds" and single.distinguishable is None
