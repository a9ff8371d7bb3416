"""The statistics of the leaderboard and the report, the one owner of them: the Student t quantile and the t-interval
of a mean over seeds, paired comparisons of two strategies run on the same seeds and splits (the per-seed
difference, its mean with a percentile-bootstrap 95% interval, numpy only, and the probability of improvement), and
the comparisons across tasks (mean ranks, IQM with a stratified bootstrap, rliable's probability of improvement,
Friedman, Nemenyi and the critical difference; scipy and scikit-posthocs, the ``report`` extra).

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


# -------------------------------------------------------------------------------------------- across tasks
# The statistics of ``tlbench leaderboard --across`` and the report's cross-task section: a strategy scored on
# several tasks (dataset x backbone cells), each with its own seeds. scipy (and scikit-posthocs for the Nemenyi
# test) come with the ``report`` extra, so they are imported inside the functions, never when tlbench loads.
#
# Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice" (rliable): the
# interquartile mean over all task x seed scores with a stratified bootstrap interval, and the probability of
# improvement. Demšar 2006, "Statistical Comparisons of Classifiers over Multiple Data Sets" (JMLR 7): mean ranks,
# the Friedman test and the Nemenyi critical difference.

# Demšar 2006, Table 5(a): critical values q_0.05 of the two-tailed Nemenyi test (studentized range / sqrt(2))
DEMSAR_Q05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}


def mean_ranks(task_scores: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Each strategy's rank averaged over tasks; ``task_scores`` is tasks x strategies (higher is better), rank 1
    is the best on a task and tied strategies share the average of their ranks (as Demšar 2006 ranks them)."""
    from scipy.stats import rankdata  # deferred: the report extra

    scores = np.asarray(task_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.size == 0:
        raise ValueError(f"mean ranks need a tasks x strategies table, got shape {scores.shape}")
    return rankdata(-scores, axis=1, method="average").mean(axis=0)


def interquartile_mean(values: np.ndarray | Sequence[float]) -> float:
    """The mean of the middle 50% of ``values`` (scipy's ``trim_mean(x, 0.25)``, as rliable computes the IQM):
    robust to an outlying task or seed, yet using more of the scores than the median."""
    from scipy.stats import trim_mean  # deferred: the report extra

    return float(trim_mean(np.asarray(values, dtype=np.float64), 0.25))


def stratified_bootstrap_iqm(per_task: Sequence[Sequence[float]], confidence: float = 0.95,
                             resamples: int = BOOTSTRAP_RESAMPLES,
                             seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the IQM over all task x seed scores, resampling the seeds with replacement
    *within each task* (rliable's ``StratifiedBootstrap``): every resample keeps every task and its number of seeds,
    so the interval covers seed-to-seed noise, not which tasks were chosen. None when no task has 2 seeds (every
    resample would be the same)."""
    from scipy.stats import trim_mean  # deferred: the report extra

    tasks = [np.asarray(scores, dtype=np.float64) for scores in per_task]
    if not tasks or any(t.ndim != 1 or t.size == 0 for t in tasks):
        raise ValueError("a stratified bootstrap needs at least one score in every task")
    if max(t.size for t in tasks) < 2:
        return None
    rng = np.random.default_rng(seed)
    drawn = np.concatenate([t[rng.integers(0, t.size, size=(resamples, t.size))] for t in tasks], axis=1)
    iqms = trim_mean(drawn, 0.25, axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(iqms, [tail, 1 - tail])
    return float(low), float(high)


def probability_of_improvement_on_task(x: Sequence[float], y: Sequence[float]) -> float:
    """P(X > Y) + 0.5 P(X = Y) over all pairs of a seed of X and a seed of Y on one task: the Mann-Whitney U
    statistic of X divided by n*m (rliable's per-task probability of improvement)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("a probability of improvement needs scores of both strategies")
    greater = (a[:, None] > b[None, :]).sum()
    ties = (a[:, None] == b[None, :]).sum()
    return float((greater + 0.5 * ties) / (a.size * b.size))


def average_probability_of_improvement(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> float:
    """rliable's probability of improvement of X over Y: the per-task probabilities averaged over the tasks (every
    task weighs the same, whatever its number of seeds)."""
    if not pairs:
        raise ValueError("a probability of improvement needs at least one task")
    return statistics.fmean(probability_of_improvement_on_task(x, y) for x, y in pairs)


def friedman_test(task_scores: np.ndarray | Sequence[Sequence[float]]) -> tuple[float, float]:
    """Friedman's chi-square statistic and p-value over tasks x strategies (scipy): the null hypothesis is that
    every strategy has the same expected rank. Needs 3 or more strategies and 2 or more tasks; when every strategy
    ties on every task nothing tells them apart (statistic 0, p 1)."""
    from scipy.stats import friedmanchisquare  # deferred: the report extra

    scores = np.asarray(task_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 2 or scores.shape[1] < 3:
        raise ValueError(f"the Friedman test needs at least 2 tasks and 3 strategies, got shape {scores.shape}")
    if np.all(scores == scores[:, :1]):  # every strategy ties on every task: scipy would divide by zero
        return 0.0, 1.0
    result = friedmanchisquare(*scores.T)
    return float(result.statistic), float(result.pvalue)


def nemenyi_p_values(task_scores: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """strategies x strategies p-values of the Nemenyi post-hoc test after Friedman (scikit-posthocs'
    ``posthoc_nemenyi_friedman``)."""
    import scikit_posthocs  # deferred: the report extra

    return np.asarray(scikit_posthocs.posthoc_nemenyi_friedman(np.asarray(task_scores, dtype=np.float64)),
                      dtype=np.float64)


def nemenyi_q05(k: int) -> float:
    """q_0.05 of the Nemenyi test for ``k`` strategies: Demšar 2006's Table 5 up to 10, beyond it the studentized
    range quantile (infinite degrees of freedom) / sqrt(2) the table was computed from."""
    if k < 2:
        raise ValueError(f"a critical difference needs at least 2 strategies, got {k}")
    if k in DEMSAR_Q05:
        return DEMSAR_Q05[k]
    from scipy.stats import studentized_range  # deferred: the report extra

    return float(studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n: int) -> float:
    """Demšar's critical difference at alpha 0.05: two of ``k`` strategies ranked over ``n`` tasks differ
    significantly (Nemenyi) when their mean ranks differ by more than q_0.05 * sqrt(k(k+1) / (6n))."""
    if n < 1:
        raise ValueError(f"a critical difference needs at least 1 task, got {n}")
    return nemenyi_q05(k) * math.sqrt(k * (k + 1) / (6 * n))


def not_different_runs(ranks: Sequence[float], p_values: np.ndarray, alpha: float = 0.05) -> list[tuple[int, int]]:
    """The bars of a critical-difference diagram: with the strategies in order of mean rank, the maximal runs
    ``(first, last)`` (positions in that order, at least two long) in which no pair differs significantly
    (every Nemenyi p >= ``alpha``). A run inside a longer one is not drawn again."""
    order = np.argsort(np.asarray(ranks, dtype=np.float64), kind="stable")
    runs: list[tuple[int, int]] = []
    for first in range(len(order)):
        last = first
        while last + 1 < len(order) and all(p_values[order[i], order[last + 1]] >= alpha
                                            for i in range(first, last + 1)):
            last += 1
        if last > first and not any(a <= first and last <= b for a, b in runs):
            runs.append((first, last))
    return runs
