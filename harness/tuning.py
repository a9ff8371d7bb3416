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
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from tlbench.digests import digest_of
from tlbench.grid import GridResult, Reporter, check_grid_size, executor_options, resolve_names, run_grid
from tlbench.plan import Trial, build_trials, check_seeds
from tlbench.registry import Plugins
from tlbench.search_space import check_search_space, configurations, sample_configurations, search_space
from tlbench.spec import DEFAULT_BUDGET, RunSpec, TuneSpec
from tlbench.store import ResultStore, default_results_dir
from tlbench.sweeps import Candidate, Sweep, choose, validation_score
from tlbench.types import UsageError

__all__ = ["DEFAULT_BUDGET", "TuneResult", "TuneSpec", "tune_grid"]


# ------------------------------------------------------------------------------------------------- the run
@dataclass
class TuneResult:
    """The outcome of :func:`tune_grid`: the two grids (selection, then reporting), the sweeps written, the
    strategies that could not be selected (a configuration failed or has no record), and those "every registered
    strategy" left out because they need an optional package (they do not change the exit code)."""

    selection: GridResult | None
    reporting: GridResult | None = None
    sweeps: list[Sweep] = field(default_factory=list)
    not_selected: list[str] = field(default_factory=list)
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # strategies --all could not run here, each with the fix
    aborted: str | None = None  # why the tuning stopped after its trials (a sweep file could not be written)

    @property
    def grids(self) -> list[GridResult]:
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
        if self.aborted or self.not_selected or self.selection.aborted or self.selection.missing:
            return 1
        return 1 if self.reporting is not None and self.reporting.exit_code else 0


def _config_overrides(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{name}.{key}": value for key, value in config.items()}


@dataclass
class _TrialMaker:
    """Builds the trials of one configuration of a strategy's space, with the run's settings under it."""

    registered: Mapping[str, Any]
    overrides: Mapping[str, Any]

    def __call__(self, dataset: tuple[str, Any], backbone: str, strategy: tuple[str, Any], config: Mapping[str, Any],
                 seeds: Sequence[int]) -> list[Trial]:
        name = strategy[0]
        try:
            return build_trials(datasets=[dataset], backbones=[backbone], strategies=[strategy], seeds=list(seeds),
                                overrides={**self.overrides, **_config_overrides(name, config)},
                                registered_strategies=self.registered)
        except UsageError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in config.items())
            raise UsageError(f"strategy {name!r}: configuration {shown} of its search space is invalid: "
                             f"{exc}") from None


def tune_grid(spec: RunSpec, tuning: TuneSpec | None = None, *, reporter: Reporter | None = None,
              plugins: Plugins | None = None, warn: Callable[[str], None] | None = None) -> TuneResult:
    """Tune every strategy of ``spec`` with the same budget and report the chosen configurations on fresh seeds.

    ``tuning.budget`` configurations per strategy, each trained on ``tuning.selection_seeds`` seeds (the spec's
    first seed onwards); the best on validation is re-run on the spec's ``seeds`` reporting seeds, which follow the
    selection seeds. The spec's settings apply to every configuration (a tuned setting may not be set); its
    executor, device, progress, redo and results folder apply to both stages. Bad input raises
    :class:`UsageError` before anything runs.
    """
    if spec.suite is not None:  # a tuned suite needs per-task tuning; not built yet (issue 25: suites)
        raise UsageError("--tune does not run suites yet; tune one task with -d, or run the suite without --tune")
    tuning = tuning or TuneSpec()
    selection_seeds, seeds, first_seed = tuning.selection_seeds, spec.seeds, spec.first_seed
    check_seeds(first_seed, selection_seeds + seeds)
    reporter = reporter or Reporter()
    plugins = plugins if plugins is not None else Plugins()
    names = resolve_names(plugins, spec)
    executor_options(plugins.executors.get(spec.executor, plugins.failure_hint()), spec.executor_options)
    check_grid_size(len(names.datasets) * len(names.backbones) * len(names.strategies)
                    * (tuning.budget * selection_seeds + seeds),
                    f"{len(names.strategies)} strategy(ies) x {len(names.backbones)} backbone(s) x "
                    f"{len(names.datasets)} dataset(s) x ({tuning.budget} configuration(s) x {selection_seeds} "
                    f"selection seed(s) + {seeds} reporting seed(s))", "lower --seeds, --selection-seeds or "
                    "--tune-budget")
    store = ResultStore(spec.results_dir or default_results_dir(), warn=warn)
    chosen_strategies, backbone_names, chosen_datasets = names.strategies, names.backbones, names.datasets
    result = TuneResult(selection=None, left_out=names.left_out_lines())
    for line in result.left_out:
        reporter.message(line)
    overrides = spec.settings
    make = _TrialMaker(dict(plugins.strategies.items()), overrides)
    build_trials(datasets=chosen_datasets, backbones=backbone_names, strategies=chosen_strategies,  # the settings
                 seeds=[first_seed], overrides=overrides, registered_strategies=make.registered)  # alone
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
        picked, sampling = sample_configurations(configs, tuning.budget, tuning.sample_seed, name)
        probe = make(chosen_datasets[0], backbone_names[0], (name, strategy), configs[picked[0]],
                     selection_range[:1])[0]
        epochs = int(probe.protocol["epochs"])
        result.budgets[name] = {"configurations": tuning.budget, "space_size": len(configs),
                                "epochs_per_configuration": epochs, "selection_seeds": selection_seeds,
                                "trials": tuning.budget * selection_seeds,
                                "epochs": tuning.budget * selection_seeds * epochs}
        for dataset in chosen_datasets:
            for backbone in backbone_names:
                candidates = [(configs[index], make(dataset, backbone, (name, strategy), configs[index],
                                                    selection_range)) for index in picked]
                plans.append({"dataset": dataset, "backbone": backbone, "strategy": (name, strategy),
                              "space": space, "source": source, "sampling": sampling, "candidates": candidates,
                              "budget": result.budgets[name]})

    for plan in plans:  # the sweep files' key is known now: where they go must take a file, before any trial runs
        plan["sweep_key"] = _sweep_key(plan, selection_range, reporting_range)
    store.check_writable()
    store.check_sweep_paths(plan["sweep_key"] for plan in plans)
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
    # both stages run exactly the names resolved here (what --all left out was said once, above)
    stage = spec.replace(strategies=[n for n, _ in chosen_strategies], backbones=backbone_names,
                         datasets=[d[0] for d in chosen_datasets], results_dir=spec.results_dir or default_results_dir())
    common = dict(reporter=reporter, plugins=plugins, warn=warn)
    reporter.message(f"tune: selection stage, seed(s) {', '.join(map(str, selection_range))}")
    result.selection = run_grid(stage, trials=selection_trials, **common)
    if result.selection.interrupted or result.selection.aborted:
        return result

    records = {r.key: r for r in store.records()}
    reporting_trials = []
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    written = {s.key: s for s in store.sweeps()}
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
        reporting = make(plan["dataset"], plan["backbone"], plan["strategy"], candidates[chosen].config,
                         reporting_range)
        reporting_trials += reporting
        sweep_key = plan["sweep_key"]
        sweep = Sweep(sweep_key, plan["dataset"][0], plan["backbone"], name, plan["space"], plan["source"],
                      plan["budget"], plan["sampling"], candidates, chosen, selection_range, reporting_range,
                      [t.key for t in reporting], reporting[0].group, reporting[0].label, created=created)
        previous = written.get(sweep_key)
        if previous is not None:
            sweep.created = previous.created  # resumed: the same choice, the same file
        if previous is None or previous.to_json_dict() != sweep.to_json_dict():
            try:
                store.write_sweep(sweep)
            except OSError as exc:  # a full disk, an I/O error: the trials' records are kept, the choice is not
                result.aborted = (f"could not write the sweep file {store.sweep_dir / (sweep_key + '.json')}: "
                                  f"{exc.strerror or exc}; nothing was half-written and the trials' records are "
                                  f"kept: free space and run the same command again to resume")
                return result
        result.sweeps.append(sweep)
        reporter.message(f"tune {where}: chose {sweep.tuning_text.split(': ', 1)[1]} (val top-1 "
                         f"{_pct(candidates[chosen].val_top1)}; candidates "
                         f"{', '.join(_pct(c.val_top1) for c in candidates)})")
    if reporting_trials:
        reporter.message(f"tune: reporting stage, seed(s) {', '.join(map(str, reporting_range))}")
        reporting_trials.sort(key=lambda t: order[(t.dataset, t.backbone)])
        result.reporting = run_grid(stage, trials=reporting_trials, **common)
    return result


def _sweep_key(plan: Mapping[str, Any], selection_range: Sequence[int], reporting_range: Sequence[int]) -> str:
    """The key of the sweep of one dataset x backbone x strategy: its candidates' groups, seeds, budget and
    sampling (the name of its file, ``<results>/tuning/<key>.json``)."""
    groups = [trials[0].group for _, trials in plan["candidates"]]
    return digest_of("tlbench sweep", groups, list(selection_range), list(reporting_range), plan["budget"],
                     plan["sampling"])[:20]


def _pct(value: float | None) -> str:
    return "diverged" if value is None else f"{100 * value:.1f}%"
