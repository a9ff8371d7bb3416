"""Search spaces: the rules every strategy's space obeys (read while plugins load, so a bad space is that plugin's
problem) and the configurations a tuning budget draws from it. Nothing here runs a trial: ``tlbench.tuning`` does.
"""
from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from tlbench.digests import digest_of
from tlbench.plan import PROTOCOL_DEFAULTS
from tlbench.types import UsageError

NOT_SEARCHABLE = ("epochs",)  # the budget is configurations x epochs: a space may not change it


def log_grid(center: float, below: int = 1, above: int = 2) -> list[float]:
    """Learning rates on a half-decade grid around ``center``, one significant digit: ``log_grid(1e-4)`` is
    ``[3e-05, 0.0001, 0.0003, 0.001]`` (``below`` steps down, ``above`` steps up, each ×√10, rounded)."""
    if not (isinstance(center, (int, float)) and not isinstance(center, bool) and math.isfinite(center)
            and center > 0):
        raise ValueError(f"log_grid needs a finite number > 0, got {center!r}")
    values = []
    for step in range(-below, above + 1):
        value = center * 10 ** (step / 2)
        values.append(float(f"{value:.0e}"))
    return values


SQRT10 = 10 ** 0.5  # the ratio of the built-in learning-rate grids: 1e-5, 3e-5, 1e-4, ... (one digit each)


@dataclass(frozen=True)
class Axis(SequenceABC):
    """An *ordered* numeric axis of a search space: the values ``anchor * step**k`` (``scale="log"``) or ``anchor
    + k * step`` (``"linear"``) for k in ``first..last``, each rounded to ``digits`` significant digits (or to an
    integer). Being ordered is what lets tuning extend it one step past its edge at the same ratio when the choice
    lies there (``tlbench.tuning``); ``low`` / ``high`` are *hard limits* (a fraction in [0, 1], a rank >= 1): a
    choice at a hard limit is not an edge, and a step past one stops at it. It is a sequence of its values, so a
    space holding it reads like one holding a list."""

    anchor: float
    step: float
    first: int
    last: int
    scale: str = "log"
    low: float | None = None
    high: float | None = None
    integer: bool = False
    digits: int = 1

    def __post_init__(self) -> None:
        numbers = (self.anchor, self.step) + tuple(x for x in (self.low, self.high) if x is not None)
        if self.scale not in ("log", "linear") or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in numbers):
            raise ValueError(f"an Axis needs scale 'log' or 'linear' and finite numbers, got {self!r}")
        if self.first > self.last or (self.scale == "log" and (self.anchor <= 0 or self.step <= 1)) or (
                self.scale == "linear" and self.step <= 0):
            raise ValueError(f"an Axis needs first <= last, and a step > 1 (log, with anchor > 0) or > 0 (linear), "
                             f"got {self!r}")
        outside = [v for v in self.values if not self.within(v)]
        if outside:
            raise ValueError(f"an Axis's values must lie within its hard limits [{self.low}, {self.high}], got "
                             f"{outside}")

    def value(self, k: int) -> float | int:
        exact = self.anchor * self.step ** k if self.scale == "log" else self.anchor + k * self.step
        if self.integer:
            return int(round(exact))
        return float(f"{exact:.{max(self.digits, 1) - 1}e}") if exact else 0.0

    @property
    def values(self) -> list[float | int]:
        return [self.value(k) for k in range(self.first, self.last + 1)]

    def within(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def index_of(self, value: float) -> float:
        """Where ``value`` lies on the axis, in steps from the anchor (a fraction between grid values)."""
        if self.scale == "log":
            return math.log(value / self.anchor) / math.log(self.step)
        return (value - self.anchor) / self.step

    def beyond(self, value: float, direction: int) -> float | int | None:
        """The value one step past ``value`` (``direction`` +1: larger, -1: smaller) at the axis's ratio, stopped
        at a hard limit; None when ``value`` already is that limit (or nothing lies between them)."""
        limit = self.high if direction > 0 else self.low
        if limit is not None and (value >= limit if direction > 0 else value <= limit):
            return None
        if self.scale == "log" and value <= 0:
            return None
        k = round(self.index_of(value)) + direction
        candidate = self.value(k)
        while (candidate - value) * direction <= 0:  # rounding kept it in place: one step further
            k += direction
            candidate = self.value(k)
        if limit is not None and (candidate > limit if direction > 0 else candidate < limit):
            candidate = type(candidate)(limit) if self.integer else float(limit)
        return candidate if (candidate - value) * direction > 0 else None

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __getitem__(self, index):  # type: ignore[override]
        return self.values[index]

    def __iter__(self) -> Iterator[float | int]:
        return iter(self.values)

    def to_json_dict(self) -> dict[str, Any]:
        """How a sweep file records the axis (its values are the space's list)."""
        return {"scale": self.scale, "step": self.step, "low": self.low, "high": self.high,
                "integer": self.integer}


def log_axis(start: float, stop: float, ratio: float = SQRT10, *, low: float | None = None,
             high: float | None = None, integer: bool = False, digits: int = 1) -> Axis:
    """An ordered log axis from ``start`` to ``stop`` (both included) at ``ratio``: ``log_axis(1e-5, 1e-1)`` is
    ``[1e-05, 3e-05, 0.0001, ..., 0.03, 0.1]`` (nine values, x√10 each)."""
    steps = round(math.log(stop / start) / math.log(ratio))
    return Axis(start, ratio, 0, steps, "log", low, high, integer, digits)


def linear_axis(start: float, stop: float, step: float, *, low: float | None = None, high: float | None = None,
                integer: bool = False, digits: int = 2) -> Axis:
    """An ordered linear axis from ``start`` to ``stop`` (both included) by ``step``: ``linear_axis(0.25, 0.75,
    0.25, low=0, high=1)`` is ``[0.25, 0.5, 0.75]``, a fraction whose ends 0 and 1 are hard limits."""
    return Axis(start, step, 0, round((stop - start) / step), "linear", low, high, integer, digits)


def search_space(strategy: Any) -> tuple[dict[str, list[Any]], str]:
    """The strategy's search space as {setting: values} and where it came from ("declared" or "derived: ...")."""
    declared = getattr(strategy, "search_space", None)
    if declared is not None:
        return {str(k): list(v) for k, v in dict(declared).items()}, "declared by the strategy"
    derived = {key: log_grid(value) for key, value in dict(strategy.defaults).items()
               if key.endswith("lr") and isinstance(value, (int, float)) and not isinstance(value, bool)
               and math.isfinite(value) and value > 0}
    return derived, "derived: log_grid around the default of every learning rate (none declared)"


def ordered_axes(strategy: Any) -> dict[str, Axis]:
    """The ordered axes of the strategy's space (declared as :class:`Axis`; every learning rate of a derived
    space is one): the axes the edge rule of ``tlbench.tuning`` may extend. A plain list is unordered."""
    declared = getattr(strategy, "search_space", None)
    if declared is not None:
        return {str(k): v for k, v in dict(declared).items() if isinstance(v, Axis)}
    space, _ = search_space(strategy)
    return {key: Axis(strategy.defaults[key], SQRT10, -1, 2, "log", low=None) for key in space}


def check_search_space(strategy: Any) -> None:
    """A declared space must map known settings to non-empty lists of distinct JSON scalars; raises UsageError."""
    declared = getattr(strategy, "search_space", None)
    if declared is None:
        return
    name = getattr(strategy, "name", "?")
    if not isinstance(declared, Mapping):
        raise UsageError(f"strategy {name!r}: search_space must be a dict of setting -> list of values, got "
                         f"{type(declared).__name__}")
    known = set(strategy.defaults) | (set(PROTOCOL_DEFAULTS) - set(NOT_SEARCHABLE))
    for key, values in declared.items():
        if key in NOT_SEARCHABLE:
            raise UsageError(f"strategy {name!r}: search_space may not vary {key!r} (the budget is configurations "
                             f"x epochs, the same for every strategy); remove it")
        if key not in known:
            raise UsageError(f"strategy {name!r}: search_space names {key!r}, which is neither one of its "
                             f"defaults ({', '.join(sorted(strategy.defaults)) or 'none'}) nor a protocol setting")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise UsageError(f"strategy {name!r}: search_space[{key!r}] must be a non-empty list of values, got "
                             f"{values!r}")
        for value in values:
            if not (value is None or isinstance(value, (bool, int, float, str))) or (
                    isinstance(value, float) and not math.isfinite(value)):
                raise UsageError(f"strategy {name!r}: search_space[{key!r}] holds {value!r}; values must be finite "
                                 f"numbers, strings, true/false or none")
        if len({json.dumps(v) for v in values}) != len(values):
            raise UsageError(f"strategy {name!r}: search_space[{key!r}] lists a value twice: {list(values)!r}")


def configurations(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination, in the space's order (first key slowest). An empty space has one: the defaults."""
    keys = list(space)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]


def sample_configurations(configs: Sequence[Mapping[str, Any]], budget: int, seed: int, strategy: str
                          ) -> tuple[list[int], str]:
    """Indices of the ``budget`` configurations a strategy gets, in the space's order, and how they were picked:
    all when there are exactly ``budget``, else ``budget`` uniformly without replacement (seeded by ``seed`` and
    the strategy's name, so adding a strategy changes no other strategy's draw)."""
    if len(configs) < budget:
        raise UsageError(f"strategy {strategy!r} has {len(configs)} configuration(s) in its search space, fewer "
                         f"than the tuning budget of {budget}: every strategy gets the same budget; lower it with "
                         f"--tune-budget {len(configs)} or widen the strategy's search_space")
    if len(configs) == budget:
        return list(range(budget)), "all configurations of the space"
    rng = random.Random(digest_of("tlbench-tuning", seed, strategy))
    return sorted(rng.sample(range(len(configs)), budget)), (
        f"{budget} of {len(configs)} drawn uniformly without replacement (sample seed {seed})")
