"""Paired statistics: the bootstrap interval against the exact bootstrap distribution, P(improvement), pairing."""
import itertools
import math

import numpy as np
import pytest

from tlbench.stats import bootstrap_interval, paired_comparison, probability_of_improvement


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
