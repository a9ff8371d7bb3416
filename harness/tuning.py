"""The same tuning budget for every strategy, chosen on validation (``tlbench run --tune``).

A benchmark that compares strategies at hand-picked learning rates ranks the learning rates. Here every strategy
declares a small search space; each gets the same number K of configurations from it (all of them when the space
has exactly K, else K drawn uniformly without replacement with a recorded seed), each run as ordinary trials on the
*selection* seed(s). Per dataset × backbone × strategy the configuration with the best mean validation top-1 is
chosen (test scores are never read to choose), then re-run on *fresh reporting* seeds, whose test top-1 is what
the leaderboard reports. The choice is written as a sweep file, ``<results>/tuning/<sweep key>.json``; trials are
ordinary records, so a sweep resumes like any grid and runs through any executor.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from tlbench.digests import digest_of
from tlbench.types import UsageError

SWEEP_DIR = "tuning"
SWEEP_SCHEMA = 1
DEFAULT_BUDGET = 4
SELECTION_RULE = ("highest mean validation top-1 over the selection seeds (a diverged configuration counts as "
                  "-inf); ties go to the configuration earlier in the search space's order; test top-1 is never "
                  "read to choose")
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


# ------------------------------------------------------------------------------------------- search spaces
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
    from tlbench.plan import PROTOCOL_DEFAULTS

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


# ------------------------------------------------------------------------------------------------- sweeps
class SweepError(ValueError):
    """A sweep file that is not valid; readers skip it with one warning line."""


@dataclass
class Candidate:
    """One configuration tried on the selection seeds: its settings, its group, its trial keys, and what
    selection saw (mean validation top-1; None until every selection trial has a record)."""

    config: dict[str, Any]
    group: str
    label: str
    keys: list[str]
    val_top1: float | None = None
    statuses: list[str] = field(default_factory=list)


@dataclass
class Sweep:
    """The tuning of one dataset × backbone × strategy: the space, the budget, every candidate with its validation
    score, the chosen configuration, and the reporting trials (fresh seeds) whose test top-1 is reported."""

    key: str
    dataset: str
    backbone: str
    strategy: str
    space: dict[str, list[Any]]
    space_source: str
    budget: dict[str, Any]
    sampling: str
    candidates: list[Candidate]
    chosen: int  # index into candidates
    selection_seeds: list[int]
    reporting_seeds: list[int]
    reporting_keys: list[str]
    reporting_group: str
    reporting_label: str
    selection_rule: str = SELECTION_RULE
    created: str = ""

    @property
    def chosen_config(self) -> dict[str, Any]:
        return self.candidates[self.chosen].config

    @property
    def tuning_text(self) -> str:
        values = ", ".join(f"{k}={v}" for k, v in self.chosen_config.items()) or "the defaults"
        return f"best of {len(self.candidates)} on val: {values}"

    def to_json_dict(self) -> dict[str, Any]:
        return {"schema": SWEEP_SCHEMA, "kind": "tlbench sweep", "key": self.key, "dataset": self.dataset,
                "backbone": self.backbone, "strategy": self.strategy, "space": self.space,
                "space_source": self.space_source, "budget": self.budget, "sampling": self.sampling,
                "candidates": [vars(c) for c in self.candidates], "chosen": self.chosen,
                "chosen_config": self.chosen_config, "selection_rule": self.selection_rule,
                "selection_seeds": self.selection_seeds, "reporting_seeds": self.reporting_seeds,
                "reporting_keys": self.reporting_keys, "reporting_group": self.reporting_group,
                "reporting_label": self.reporting_label, "created": self.created}

    @classmethod
    def from_json_dict(cls, raw: Any) -> "Sweep":
        if not isinstance(raw, dict):
            raise SweepError(f"not a JSON object but {type(raw).__name__}")
        if raw.get("kind") != "tlbench sweep":
            raise SweepError("not a tlbench sweep ('kind' is not 'tlbench sweep')")
        if raw.get("schema") != SWEEP_SCHEMA:
            raise SweepError(f"schema {raw.get('schema')!r}, this tlbench reads schema {SWEEP_SCHEMA}")

        def need(name: str, kind: type | tuple[type, ...], source: Mapping[str, Any] = raw) -> Any:
            value = source.get(name)
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise SweepError(f"{name!r} is missing or not a {getattr(kind, '__name__', kind)}")
            return value

        candidates = []
        for item in need("candidates", list):
            if not isinstance(item, dict):
                raise SweepError("a candidate is not an object")
            val = item.get("val_top1")
            if val is not None and (not isinstance(val, (int, float)) or isinstance(val, bool)):
                raise SweepError("a candidate's val_top1 is not a number")
            keys = need("keys", list, item)
            if not keys or not all(isinstance(k, str) and k for k in keys):
                raise SweepError("a candidate's keys are not trial keys")
            candidates.append(Candidate(dict(need("config", dict, item)), need("group", str, item),
                                        need("label", str, item), list(keys), val,
                                        [str(s) for s in item.get("statuses") or []]))
        chosen = need("chosen", int)
        if not candidates or not 0 <= chosen < len(candidates):
            raise SweepError(f"'chosen' is {chosen}, not one of {len(candidates)} candidates")
        seeds = [need("selection_seeds", list), need("reporting_seeds", list)]
        if not all(isinstance(s, int) and not isinstance(s, bool) for part in seeds for s in part):
            raise SweepError("seeds must be integers")
        if set(seeds[0]) & set(seeds[1]):
            raise SweepError("reporting seeds overlap the selection seeds")
        reporting_keys = need("reporting_keys", list)
        if not all(isinstance(k, str) and k for k in reporting_keys):
            raise SweepError("'reporting_keys' are not trial keys")
        return cls(need("key", str), need("dataset", str), need("backbone", str), need("strategy", str),
                   dict(need("space", dict)), need("space_source", str), dict(need("budget", dict)),
                   need("sampling", str), candidates, chosen, list(seeds[0]), list(seeds[1]),
                   list(reporting_keys), need("reporting_group", str), need("reporting_label", str),
                   need("selection_rule", str), str(raw.get("created", "")))


def sweep_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / SWEEP_DIR


def read_sweeps(results_dir: str | Path, warn: Callable[[str], None] | None = None) -> list[Sweep]:
    """Every valid sweep of a results directory; an invalid file is skipped with one warning line."""
    directory = sweep_dir(results_dir)
    if not directory.is_dir():
        return []
    sweeps = []
    for path in sorted(directory.glob("*.json")):
        try:
            sweep = Sweep.from_json_dict(json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant))
            if path.stem != sweep.key:
                raise SweepError(f"the file holds sweep {sweep.key}; rename it to {sweep.key}.json")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            if warn is not None:
                warn(f"skipping {path}: not a valid sweep file ({exc})")
            continue
        sweeps.append(sweep)
    return sweeps


def _no_constant(name: str) -> Any:
    raise SweepError(f"{name} is not a JSON number")


def write_sweep(results_dir: str | Path, sweep: Sweep) -> Path:
    from tlbench.store import atomic_write_text

    directory = sweep_dir(results_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{sweep.key}.json"
    atomic_write_text(path, json.dumps(sweep.to_json_dict(), indent=1, allow_nan=False) + "\n")
    return path


# -------------------------------------------------------------------------------------------------- selection
def choose(candidates: Sequence[Candidate]) -> int:
    """The index of the configuration with the highest mean validation top-1 (earliest on ties). Reads only the
    candidates' validation scores: nothing here can see a test score."""
    best, best_val = 0, -math.inf
    for index, candidate in enumerate(candidates):
        val = -math.inf if candidate.val_top1 is None else candidate.val_top1
        if val > best_val:
            best, best_val = index, val
    return best


def validation_score(records: Sequence[Any]) -> tuple[float | None, list[str]]:
    """Mean validation top-1 of one configuration's selection records (a diverged one counts as -inf, so it is
    never chosen over one that trained), and their statuses."""
    statuses = [r.status for r in records]
    if any(r.status == "diverged" for r in records):
        return None, statuses
    values = [r.metrics.val_top1 for r in records]
    return (sum(values) / len(values) if values else None), statuses


# ------------------------------------------------------------------------------------------------- the run
@dataclass
class TuneResult:
    """The outcome of :func:`tune_grid`: the two grids (selection, then reporting), the sweeps written, the
    strategies that could not be selected (a configuration failed or has no record), and those "every registered
    strategy" left out because they need an optional package (they do not change the exit code)."""

    selection: Any
    reporting: Any | None = None
    sweeps: list[Sweep] = field(default_factory=list)
    not_selected: list[str] = field(default_factory=list)
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # strategies --all could not run here, each with the fix

    @property
    def grids(self) -> list[Any]:
        return [g for g in (self.selection, self.reporting) if g is not None]

    @property
    def records(self) -> list[Any]:
        return [r for g in self.grids for r in g.records]

    @property
    def exit_code(self) -> int:
        """130 / 143 when interrupted; 1 when a strategy could not be tuned or a reporting trial is not ok; else
        0 (a diverged candidate is an outcome of the search, not a failure)."""
        for grid in self.grids:
            if grid.interrupted:
                return grid.exit_code
        if self.not_selected or self.selection.aborted or self.selection.missing:
            return 1
        return 1 if self.reporting is not None and self.reporting.exit_code else 0


def _config_overrides(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{name}.{key}": value for key, value in config.items()}


def _trials_for(build: Callable[..., list[Any]], dataset: tuple[str, Any], backbone: str, strategy: tuple[str, Any],
                config: Mapping[str, Any], seeds: Sequence[int], overrides: Mapping[str, Any]) -> list[Any]:
    name = strategy[0]
    try:
        return build(datasets=[dataset], backbones=[backbone], strategies=[strategy], seeds=list(seeds),
                     overrides={**overrides, **_config_overrides(name, config)})
    except UsageError as exc:
        shown = ", ".join(f"{k}={v}" for k, v in config.items())
        raise UsageError(f"strategy {name!r}: configuration {shown} of its search space is invalid: {exc}") from None


def tune_grid(strategies: Sequence[str] = (), backbones: Sequence[str] = (), datasets: Sequence[str] = (), *,
              budget: int = DEFAULT_BUDGET, selection_seeds: int = 1, seeds: int = 1, first_seed: int = 0,
              sample_seed: int = 0, settings: Mapping[str, Any] | Iterable[str] | None = None,
              results_dir: str | Path | None = None, reporter: Any = None, plugins: Any = None,
              warn: Callable[[str], None] | None = None, **run_options: Any) -> TuneResult:
    """Tune every strategy with the same budget and report the chosen configurations on fresh seeds.

    ``budget`` configurations per strategy, each trained on ``selection_seeds`` seeds (``first_seed`` onwards);
    the best on validation is re-run on ``seeds`` reporting seeds that follow the selection seeds. ``settings``
    apply to every configuration (a tuned setting may not be set). Other keyword arguments (``executor``,
    ``device``, ``progress``, ``force``, ``retry_failed``, ``command``, ...) go to :func:`tlbench.run_grid` for
    both stages. Bad input raises :class:`UsageError` before anything runs.
    """
    from tlbench.grid import Reporter, parse_settings, resolve_names, run_grid
    from tlbench.plan import build_trials, check_seeds
    from tlbench.registry import Plugins
    from tlbench.store import ResultStore, default_results_dir

    for label, value, minimum in (("--tune-budget", budget, 1), ("--selection-seeds", selection_seeds, 1),
                                  ("--seeds", seeds, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UsageError(f"{label} must be an integer >= {minimum}, got {value!r}")
    check_seeds(first_seed, selection_seeds + seeds)
    reporter = reporter or Reporter()
    plugins = plugins if plugins is not None else Plugins()
    names = resolve_names(plugins, strategies, backbones, datasets)
    chosen_strategies, backbone_names, chosen_datasets = names.strategies, names.backbones, names.datasets
    result = TuneResult(selection=None, left_out=names.left_out_lines())
    for line in result.left_out:
        reporter.message(line)
    overrides = parse_settings(settings)
    executor_settings = {k: v for k, v in overrides.items() if k.split(".", 1)[0] in ("executor", "save_models")}
    overrides = {k: v for k, v in overrides.items() if k not in executor_settings}
    registered = dict(plugins.strategies.items())

    def build(**kwargs: Any) -> list[Any]:
        return build_trials(registered_strategies=registered, **kwargs)

    build(datasets=chosen_datasets, backbones=backbone_names, strategies=chosen_strategies,  # the settings alone
          seeds=[first_seed], overrides=overrides)
    selection_range = list(range(first_seed, first_seed + selection_seeds))
    reporting_range = list(range(first_seed + selection_seeds, first_seed + selection_seeds + seeds))

    plans: list[dict[str, Any]] = []  # one per dataset x backbone x strategy
    for name, strategy in chosen_strategies:
        check_search_space(strategy)
        space, source = search_space(strategy)
        for key in space:
            given = next((k for k in (f"{name}.{key}", key) if k in overrides), None)
            if given is not None:
                raise UsageError(f"{name}.{key} is tuned by --tune (its search space: {space[key]}); drop "
                                 f"--set {given}=..., or run without --tune")
        configs = configurations(space)
        picked, sampling = sample_configurations(configs, budget, sample_seed, name)
        probe = _trials_for(build, chosen_datasets[0], backbone_names[0], (name, strategy), configs[picked[0]],
                            selection_range[:1], overrides)[0]
        epochs = int(probe.protocol["epochs"])
        result.budgets[name] = {"configurations": budget, "space_size": len(configs),
                                "epochs_per_configuration": epochs, "selection_seeds": selection_seeds,
                                "trials": budget * selection_seeds, "epochs": budget * selection_seeds * epochs}
        for dataset in chosen_datasets:
            for backbone in backbone_names:
                candidates = []
                for index in picked:
                    trials = _trials_for(build, dataset, backbone, (name, strategy), configs[index], selection_range,
                                         overrides)
                    candidates.append((configs[index], trials))
                plans.append({"dataset": dataset, "backbone": backbone, "strategy": (name, strategy),
                              "space": space, "source": source, "sampling": sampling, "candidates": candidates,
                              "budget": result.budgets[name]})

    order = {(d[0], b): i for i, (d, b) in enumerate(itertools.product(chosen_datasets, backbone_names))}
    selection_trials = sorted((t for plan in plans for _, trials in plan["candidates"] for t in trials),
                              key=lambda t: order[(t.dataset, t.backbone)])
    for name, spent in result.budgets.items():
        reporter.message(f"tune {name}: {spent['configurations']} of {spent['space_size']} configuration(s) x "
                         f"{spent['epochs_per_configuration']} epochs x {selection_seeds} selection seed(s) = "
                         f"{spent['epochs']} training epochs to choose, then {seeds} reporting seed(s)")
    if len({spent["epochs"] for spent in result.budgets.values()}) > 1 and warn is not None:
        warn("the strategies' tuning budgets differ (their epochs differ: "
             + ", ".join(f"{n} {b['epochs_per_configuration']}" for n, b in result.budgets.items())
             + "); the comparison is not at equal budget")
    store_dir = results_dir or default_results_dir()
    common = dict(results_dir=store_dir, reporter=reporter, plugins=plugins, warn=warn,
                  settings=executor_settings, **run_options)
    reporter.message(f"tune: selection stage, seed(s) {', '.join(map(str, selection_range))}")
    result.selection = run_grid([n for n, _ in chosen_strategies], backbone_names, [d[0] for d in chosen_datasets],
                                trials=selection_trials, **common)
    if result.selection.interrupted or result.selection.aborted:
        return result

    store = ResultStore(store_dir, warn=warn)
    records = {r.key: r for r in store.records()}
    reporting_trials = []
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    written = {s.key: s for s in read_sweeps(store_dir, warn)}
    for plan in plans:
        name = plan["strategy"][0]
        where = f"{plan['dataset'][0]} / {plan['backbone']} / {name}"
        candidates = []
        for config, trials in plan["candidates"]:
            found = [records.get(t.key) for t in trials]
            candidate = Candidate(dict(config), trials[0].group, trials[0].label, [t.key for t in trials])
            if all(r is not None and r.status in ("ok", "diverged") for r in found):
                candidate.val_top1, candidate.statuses = validation_score(found)
            else:
                candidate.statuses = [r.status if r is not None else "missing" for r in found]
            candidates.append(candidate)
        unusable = [c for c in candidates if any(s not in ("ok", "diverged") for s in c.statuses)]
        if unusable:
            result.not_selected.append(f"{where}: configuration {unusable[0].label} is "
                                       f"{', '.join(sorted(set(unusable[0].statuses)))}; fix it and run again "
                                       f"(--retry-failed re-runs failed trials)")
            continue
        chosen = choose(candidates)
        reporting = _trials_for(build, plan["dataset"], plan["backbone"], plan["strategy"], candidates[chosen].config,
                                reporting_range, overrides)
        reporting_trials += reporting
        sweep_key = digest_of("tlbench sweep", [c.group for c in candidates], selection_range, reporting_range,
                              plan["budget"], plan["sampling"])[:20]
        sweep = Sweep(sweep_key, plan["dataset"][0], plan["backbone"], name, plan["space"], plan["source"],
                      plan["budget"], plan["sampling"], candidates, chosen, selection_range, reporting_range,
                      [t.key for t in reporting], reporting[0].group, reporting[0].label, created=created)
        previous = written.get(sweep_key)
        if previous is not None:
            sweep.created = previous.created  # resumed: the same choice, the same file
        if previous is None or previous.to_json_dict() != sweep.to_json_dict():
            write_sweep(store_dir, sweep)
        result.sweeps.append(sweep)
        reporter.message(f"tune {where}: chose {sweep.tuning_text.split(': ', 1)[1]} (val top-1 "
                         f"{_pct(candidates[chosen].val_top1)}; candidates "
                         f"{', '.join(_pct(c.val_top1) for c in candidates)})")
    if reporting_trials:
        reporter.message(f"tune: reporting stage, seed(s) {', '.join(map(str, reporting_range))}")
        reporting_trials.sort(key=lambda t: order[(t.dataset, t.backbone)])
        result.reporting = run_grid([n for n, _ in chosen_strategies], backbone_names,
                                    [d[0] for d in chosen_datasets], trials=reporting_trials, **common)
    return result


def _pct(value: float | None) -> str:
    return "diverged" if value is None else f"{100 * value:.1f}%"
