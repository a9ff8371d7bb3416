"""Search spaces: the rules every strategy's space obeys (read while plugins load, so a bad space is that plugin's
problem) and the configurations a tuning budget draws from it. Nothing here runs a trial: ``tlbench.tuning`` does.
"""
from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any, Mapping, Sequence

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


def search_space(strategy: Any) -> tuple[dict[str, list[Any]], str]:
    """The strategy's search space as {setting: values} and where it came from ("declared" or "derived: ...")."""
    declared = getattr(strategy, "search_space", None)
    if declared is not None:
        return {str(k): list(v) for k, v in dict(declared).items()}, "declared by the strategy"
    derived = {key: log_grid(value) for key, value in dict(strategy.defaults).items()
               if key.endswith("lr") and isinstance(value, (int, float)) and not isinstance(value, bool)
               and math.isfinite(value) and value > 0}
    return derived, "derived: log_grid around the default of every learning rate (none declared)"


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
