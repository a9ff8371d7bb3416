"""The statistics of the leaderboard and the report, the one owner of them: the Student t quantile and the t-interval
of a mean over seeds, and paired comparisons of two strategies run on the same seeds and splits (the per-seed
difference, its mean with a percentile-bootstrap 95% interval, numpy only, and the probability of improvement).

Pairing by seed removes what the two trials share (the split, the initial head, the batch order), so a difference
smaller than the seed-to-seed spread of either strategy can still be real; an interval that covers 0 says it is not
distinguishable from no difference with these seeds.
"""
from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same records always print the same interval


# ------------------------------------------------------------------------------------- Student t over seeds
def t_central_probability(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with an integer number of degrees of freedom (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(dof))
    cos2, term, total = math.cos(theta) ** 2, 1.0, 1.0
    if dof % 2:  # odd: (2/pi) * (theta + sin * cos * (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        for k in range(1, (dof - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            total += term
        series = math.sin(theta) * math.cos(theta) * total if dof > 1 else 0.0
        return 2 / math.pi * (theta + series)
    for k in range(1, dof // 2):  # even: sin * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term *= cos2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


@functools.lru_cache(maxsize=None)
def t95(dof: int) -> float:
    """Two-sided 95% Student t quantile for ``dof`` = n - 1 degrees of freedom, to 3 decimals (the textbook table's
    values for 1-30; exact beyond, where a normal 1.96 would make the interval up to 4% too narrow)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    low, high = 1.959, 12.71
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if t_central_probability(middle, min(dof, 100_000)) < 0.95 else (low, middle)
    return round((low + high) / 2, 3)


@dataclass(frozen=True)
class MeanInterval:
    """The mean of one configuration's values over seeds, their sample std and the half-width of the 95% Student
    t-interval of the mean (std and half-width None with a single value: one seed has no spread)."""

    mean: float
    std: float | None
    half_width: float | None
    n: int


def t_interval(values: Sequence[float]) -> MeanInterval:
    """Mean, sample std and 95% Student t half-width ``t95(n - 1) * std / sqrt(n)`` of ``values`` (at least one)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return MeanInterval(mean, None, None, len(values))
    std = statistics.stdev(values)
    return MeanInterval(mean, std, t95(len(values) - 1) * std / math.sqrt(len(values)), len(values))


# ---------------------------------------------------------------------------------------- paired comparisons
@dataclass(frozen=True)
class PairedComparison:
    """``differences`` maps seed -> (strategy - reference), in the metric's units (fractions for accuracy)."""

    differences: Mapping[int, float]
    mean: float
    low: float | None  # bootstrap 95% interval of the mean difference; None with fewer than 2 pairs
    high: float | None
    probability_of_improvement: float  # share of paired seeds in which the strategy beats the reference

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def distinguishable(self) -> bool | None:
        """True when the interval excludes 0, False when it covers 0, None when there is no interval."""
        if self.low is None or self.high is None:
            return None
        return not (self.low <= 0.0 <= self.high)

    @property
    def t_half_width(self) -> float | None:
        """Half-width of the paired 95% Student t-interval of the mean difference (beside the bootstrap one: with
        3 seeds the bootstrap is narrower); None with fewer than 2 pairs."""
        return t_interval(list(self.differences.values())).half_width if self.n >= 2 else None

    @property
    def verdict(self) -> str:
        if self.distinguishable is None:
            return "too few seeds"
        if not self.distinguishable:
            return "not distinguishable"
        return "better" if self.mean > 0 else "worse"


def bootstrap_interval(values: np.ndarray | list[float], confidence: float = 0.95,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the values with replacement ``resamples`` times."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or len(data) < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 values, got {data.size}")
    if not np.all(np.isfinite(data)):
        raise ValueError("a bootstrap interval needs finite values")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def probability_of_improvement(differences: np.ndarray | list[float]) -> float:
    """P(strategy beats reference on a seed), estimated over the paired seeds; ties count half."""
    data = np.asarray(differences, dtype=np.float64)
    return float(np.mean((data > 0) + 0.5 * (data == 0)))


def paired_comparison(values: Mapping[int, float], reference: Mapping[int, float]) -> PairedComparison | None:
    """Compares ``values`` with ``reference`` (both seed -> metric) on the seeds both have; None without any."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return None
    differences = {seed: float(values[seed]) - float(reference[seed]) for seed in seeds}
    array = np.array(list(differences.values()))
    low = high = None
    if len(array) >= 2:
        low, high = bootstrap_interval(array)
    return PairedComparison(differences, float(array.mean()), low, high, probability_of_improvement(array))
