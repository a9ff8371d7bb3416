"""Paired comparisons of two strategies run on the same seeds and splits: the per-seed difference, its mean with a
percentile-bootstrap 95% interval (numpy only), and the probability of improvement.

Pairing by seed removes what the two trials share (the split, the initial head, the batch order), so a difference
smaller than the seed-to-seed spread of either strategy can still be real; an interval that covers 0 says it is not
distinguishable from no difference with these seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same records always print the same interval


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
