"""The same tuning budget for every strategy, chosen on validation (``tlbench run --tune``).

A benchmark that compares strategies at hand-picked learning rates ranks the learning rates. Here every strategy
declares a small search space; each gets the same number K of configurations from it (all of them when the space
has exactly K, else K drawn uniformly without replacement with a recorded seed), each run as ordinary trials on the
*selection* seed(s). Per dataset × backbone × strategy the configuration with the best mean validation top-1 is
chosen (test scores are never read to choose), then re-run on *fresh reporting* seeds, whose test top-1 is what
the leaderboard reports. The choice is written as a sweep file, ``<results>/tuning/<sweep key>.json``; trials are
ordinary records, so a sweep resumes like any grid and runs through any executor.

Two rules, the same for every strategy, sit on top: the *edge rule* (a choice on the edge of an ordered axis
``tlbench.search_space.Axis``, that is not a hard limit extends the axis one step outward and chooses again, up to
``TuneSpec.extensions`` times) and, optionally, *successive halving* (``TuneSpec.halving``: every configuration
for a fraction of the epochs, the better half continued). Both run as further stages of ordinary trials, each
stage decided by validation scores alone, so a stopped sweep resumes by taking the same steps again.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from tlbench.digests import digest_of
from tlbench.grid import GridResult, Reporter, check_grid_size, executor_options, resolve_names, run_grid
from tlbench.plan import Trial, build_trials, check_seeds
from tlbench.registry import Plugins
from tlbench.search_space import (Axis, check_search_space, configurations, ordered_axes, sample_configurations,
                                  search_space)
from tlbench.spec import AXES_NOT_TUNED, DEFAULT_BUDGET, RunSpec, TuneSpec
from tlbench.store import ResultStore, default_results_dir
from tlbench.sweeps import Candidate, Sweep, choose, distinct_configurations, validation_score
from tlbench.types import UsageError

__all__ = ["DEFAULT_BUDGET", "TuneResult", "TuneSpec", "budget_lines", "tune_grid"]


# ------------------------------------------------------------------------------------------------- the run
@dataclass
class TuneResult:
    """The outcome of :func:`tune_grid`: the grids (selection, the later halving rungs and extensions in
    ``rounds``, then reporting), the budgets (per strategy: planned and the most extensions can add), the sweeps
    written (each with what it spent), the strategies that could not be selected (a configuration failed or has no
    record), and those "every registered strategy" left out because they need an optional package (they do not
    change the exit code)."""

    selection: GridResult | None
    reporting: GridResult | None = None
    rounds: list[GridResult] = field(default_factory=list)  # the halving rungs and extensions after the first
    sweeps: list[Sweep] = field(default_factory=list)
    not_selected: list[str] = field(default_factory=list)
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # strategies --all could not run here, each with the fix
    aborted: str | None = None  # why the tuning stopped after its trials (a sweep file could not be written)

    @property
    def grids(self) -> list[GridResult]:
        return [g for g in (self.selection, *self.rounds, self.reporting) if g is not None]

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
        choosing = [g for g in (self.selection, *self.rounds) if g is not None]
        if self.aborted or self.not_selected or any(g.aborted or g.missing for g in choosing):
            return 1
        return 1 if self.reporting is not None and self.reporting.exit_code else 0


def _config_overrides(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{name}.{key}": value for key, value in config.items()}


@dataclass
class _TrialMaker:
    """Builds the trials of one configuration of a strategy's space, with the run's settings under it (and, in a
    halving rung, fewer epochs than the protocol's: ``epochs``)."""

    registered: Mapping[str, Any]
    overrides: Mapping[str, Any]

    def __call__(self, dataset: tuple[str, Any], backbone: str, strategy: tuple[str, Any], config: Mapping[str, Any],
                 seeds: Sequence[int], epochs: int | None = None) -> list[Trial]:
        name = strategy[0]
        shortened = {} if epochs is None else {f"{name}.epochs": epochs}
        try:
            return build_trials(datasets=[dataset], backbones=[backbone], strategies=[strategy], seeds=list(seeds),
                                overrides={**self.overrides, **_config_overrides(name, config), **shortened},
                                registered_strategies=self.registered)
        except UsageError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in config.items())
            raise UsageError(f"strategy {name!r}: configuration {shown} of its search space is invalid: "
                             f"{exc}") from None


def halving_rungs(budget: int, epochs: int) -> list[list[int]]:
    """Successive halving's rungs as [configurations, epochs]: rung r trains ceil(K / 2^r) configurations for
    epochs / 2^(R - r) (at least 1), R = ceil(log2 K) rungs, so the last holds the two best at half the epochs and
    the choice is made there. K = 1 has nothing to halve: []."""
    if budget < 2:
        return []
    rungs = math.ceil(math.log2(budget))
    return [[math.ceil(budget / 2 ** r), max(1, round(epochs / 2 ** (rungs - r)))] for r in range(rungs)]


def edges_of(config: Mapping[str, Any], tried: Sequence[Mapping[str, Any]], axes: Mapping[str, Axis]
             ) -> list[tuple[str, int]]:
    """The ordered axes on whose edge ``config`` lies among the configurations ``tried``, each with the direction
    outward (+1: it is the largest value tried, -1: the smallest), in the space's order; an end at a hard limit
    is no edge (nothing lies beyond it)."""
    found = []
    for key, axis in axes.items():
        values = [c[key] for c in tried if key in c]
        if key not in config or not values:
            continue
        for direction, extreme in ((+1, max(values)), (-1, min(values))):
            if config[key] == extreme and axis.beyond(config[key], direction) is not None:
                found.append((key, direction))
    return found


def edge_words(config: Mapping[str, Any], edges: Sequence[tuple[str, int]]) -> list[str]:
    return [f"{key}={config[key]} is the {'largest' if direction > 0 else 'smallest'} tried"
            for key, direction in edges]


@dataclass
class _Search:
    """The search of one dataset x backbone x strategy, one stage at a time: which candidates the next stage
    trains (``pending``), which compete in the next choice (``pool``), and, once done, the choice and its edges.
    Each step reads only the candidates' validation scores, so a resumed sweep takes the same steps."""

    dataset: tuple[str, Any]
    backbone: str
    strategy: tuple[str, Any]
    space: dict[str, list[Any]]
    source: str
    sampling: str
    axes: dict[str, Axis]
    budget: dict[str, Any]
    make: _TrialMaker
    seeds: list[int]
    epochs: int
    rungs: list[list[int]]
    extensions_allowed: int
    candidates: list[tuple[Candidate, list[Trial]]] = field(default_factory=list)
    pool: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    rung: int = 0
    extended: int = 0
    last_axis: str | None = None
    blocked: set[tuple[str, int]] = field(default_factory=set)
    chosen: int | None = None
    edges: list[str] = field(default_factory=list)
    failure: str | None = None
    sweep_key: str = ""

    @property
    def name(self) -> str:
        return self.strategy[0]

    @property
    def where(self) -> str:
        return f"{self.dataset[0]} / {self.backbone} / {self.name}"

    @property
    def done(self) -> bool:
        return self.chosen is not None or self.failure is not None

    @property
    def choice_epochs(self) -> int | None:
        """The epochs the choice is made at: the last rung's with halving, else the protocol's (None)."""
        return self.rungs[-1][1] if self.rungs else None

    def add(self, config: Mapping[str, Any], epochs: int | None, rung: int = 0, extension: int = 0) -> int:
        trials = self.make(self.dataset, self.backbone, self.strategy, config, self.seeds,
                           None if epochs in (None, self.epochs) else epochs)
        self.candidates.append((Candidate(dict(config), trials[0].group, trials[0].label, [t.key for t in trials],
                                          epochs=epochs or self.epochs, rung=rung, extension=extension), trials))
        return len(self.candidates) - 1

    def start(self, configs: Sequence[Mapping[str, Any]]) -> None:
        epochs = self.rungs[0][1] if self.rungs else None
        self.pool = self.pending = [self.add(config, epochs) for config in configs]

    def trials(self) -> list[Trial]:
        return [] if self.done else [t for i in self.pending for t in self.candidates[i][1]]

    def advance(self, records: Mapping[str, Any]) -> None:
        """Score the stage just run, then set up the next one: the better half of a rung, an extension, or the
        choice."""
        for index in self.pending:
            candidate, trials = self.candidates[index]
            found = [records.get(t.key) for t in trials]
            if all(r is not None and r.status in ("ok", "diverged") for r in found):
                candidate.val_top1, candidate.statuses = validation_score(found)
            else:
                candidate.statuses = [r.status if r is not None else "missing" for r in found]
                self.failure = (f"{self.where}: configuration {candidate.label} is "
                                f"{', '.join(sorted(set(candidate.statuses)))}; fix it and run again "
                                f"(--retry-failed re-runs failed trials)")
                return
        ranked = sorted(self.pool, key=lambda i: (-_val(self.candidates[i][0]), i))
        if self.rungs and self.rung < len(self.rungs) - 1:  # successive halving: the better half goes on
            self.rung += 1
            keep, epochs = self.rungs[self.rung]
            survivors = sorted(ranked[:keep])
            self.pool = self.pending = [self.add(self.candidates[i][0].config, epochs, self.rung) for i in survivors]
            return
        best = self.pool[choose([self.candidates[i][0] for i in self.pool])]
        config = self.candidates[best][0].config
        tried = [c.config for c, _ in self.candidates]
        edges = edges_of(config, tried, self.axes)
        if self.extended < self.extensions_allowed:
            keys = list(self.axes)
            after = keys.index(self.last_axis) + 1 if self.last_axis in keys else 0
            turn = {key: (keys.index(key) - after) % len(keys) for key in keys}  # round robin over the axes
            for key, direction in sorted((e for e in edges if e not in self.blocked), key=lambda e: turn[e[0]]):
                value = self.axes[key].beyond(config[key], direction)
                try:
                    index = self.add({**config, key: value}, self.choice_epochs, self.rung, self.extended + 1)
                except UsageError:  # the strategy refuses the value: a hard limit its space did not declare
                    self.blocked.add((key, direction))
                    continue
                self.extended += 1
                self.last_axis = key
                self.pool = self.pool + [index]
                self.pending = [index]
                return
        # a value the strategy refused is a hard limit (docs/tuning.md): nothing lies beyond it, so it is no edge
        self.chosen, self.edges = best, edge_words(config, [e for e in edges if e not in self.blocked])

    def spent(self) -> dict[str, Any]:
        """What the search trained: distinct configurations and trials (a trial two rungs share counts once)."""
        trials: dict[str, int] = {}
        for candidate, _ in self.candidates:
            for key in candidate.keys:
                trials[key] = candidate.epochs or self.epochs
        return {"configurations": distinct_configurations([c for c, _ in self.candidates]),
                "extensions": self.extended, "trials": len(trials), "epochs": sum(trials.values())}


def _val(candidate: Candidate) -> float:
    return -math.inf if candidate.val_top1 is None else candidate.val_top1


def selection_trials(budget: int, selection_seeds: int, rungs: Sequence[Sequence[int]], extensions: int = 0) -> int:
    """The selection trials of one strategy's sweep: the K configurations' over the halving rungs (a configuration
    two rungs train counts in each), plus at most one configuration per extension. Only the rungs' sizes count,
    not their epochs, so the grid-size check can call it before any strategy's epochs are known."""
    return ((sum(n for n, _ in rungs) if rungs else budget) + extensions) * selection_seeds


def plan_budget(budget: int, space_size: int, epochs: int, selection_seeds: int, extensions: int,
                rungs: Sequence[Sequence[int]]) -> dict[str, Any]:
    """A strategy's tuning budget before anything runs: the K configurations' trials and epochs (over the halving
    rungs when there are), and the most the edge rule's extensions can add (each one configuration at the epochs
    the choice is made at). Every strategy of a run has the same K, seeds, extensions and rule; its maximum
    differs only where its epochs do."""
    initial = sum(n * e for n, e in rungs) if rungs else budget * epochs
    step = rungs[-1][1] if rungs else epochs
    trials = selection_trials(budget, selection_seeds, rungs)
    return {"configurations": budget, "space_size": space_size, "epochs_per_configuration": epochs,
            "selection_seeds": selection_seeds, "trials": trials, "epochs": initial * selection_seeds,
            "extensions": extensions, "halving": [list(r) for r in rungs],
            "maximum_trials": selection_trials(budget, selection_seeds, rungs, extensions),
            "maximum_epochs": (initial + extensions * step) * selection_seeds}


def budget_lines(result: "TuneResult") -> list[str]:
    """What each sweep spent against its maximum, for the end of ``tlbench run --tune``."""
    lines = []
    for sweep in result.sweeps:
        spent, b = sweep.budget.get("spent", {}), sweep.budget
        lines.append(f"budget {sweep.dataset} / {sweep.backbone} / {sweep.strategy}: {spent.get('configurations')} "
                     f"configuration(s) ({spent.get('extensions', 0)} by extension), {spent.get('trials')} trial(s), "
                     f"{spent.get('epochs')} training epochs of at most {b.get('maximum_epochs')}{sweep.edge_suffix}")
    return lines


def tune_grid(spec: RunSpec, tuning: TuneSpec | None = None, *, reporter: Reporter | None = None,
              plugins: Plugins | None = None, warn: Callable[[str], None] | None = None) -> TuneResult:
    """Tune every strategy of ``spec`` with the same budget and report the chosen configurations on fresh seeds.

    ``tuning.budget`` configurations per strategy, each trained on ``tuning.selection_seeds`` seeds (the spec's
    first seed onwards), in successive-halving rungs with ``tuning.halving``; the best on validation, after up to
    ``tuning.extensions`` extensions of an edge of an ordered axis, is re-run on the spec's ``seeds`` reporting
    seeds, which follow the selection seeds. The spec's settings apply to every configuration (a tuned setting may
    not be set); its executor, device, progress, redo and results folder apply to every stage. Bad input raises
    :class:`UsageError` before anything runs.
    """
    if spec.suite is not None:  # a tuned suite needs per-task tuning; not built yet (issue 25: suites)
        raise UsageError("--tune does not run suites yet; tune one task with -d, or run the suite without --tune")
    tuning = tuning or TuneSpec()
    if spec.axes:
        raise UsageError(AXES_NOT_TUNED)
    selection_seeds, seeds, first_seed = tuning.selection_seeds, spec.seeds, spec.first_seed
    check_seeds(first_seed, selection_seeds + seeds)
    reporter = reporter or Reporter()
    plugins = plugins if plugins is not None else Plugins()
    names = resolve_names(plugins, spec)
    executor_options(plugins.executors.get(spec.executor, plugins.failure_hint()), spec.executor_options)
    sizes = halving_rungs(tuning.budget, 1) if tuning.halving else []  # the rungs' sizes (their epochs: not yet)
    most = selection_trials(tuning.budget, selection_seeds, sizes, tuning.extensions)  # every strategy's the same
    check_grid_size(len(names.datasets) * len(names.backbones) * len(names.strategies) * (most + seeds),
                    f"{len(names.strategies)} strategy(ies) x {len(names.backbones)} backbone(s) x "
                    f"{len(names.datasets)} dataset(s) x ((" +
                    (f"{' + '.join(str(n) for n, _ in sizes)} configuration(s) over the halving rungs" if sizes
                     else f"{tuning.budget} configuration(s)") +
                    f" + {tuning.extensions} extension(s)) x {selection_seeds} selection seed(s) + {seeds} reporting "
                    f"seed(s))",
                    "lower --seeds, --selection-seeds, --tune-budget or --tune-extensions")
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

    searches: list[_Search] = []  # one per dataset x backbone x strategy
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
        rungs = halving_rungs(tuning.budget, epochs) if tuning.halving else []
        result.budgets[name] = plan_budget(tuning.budget, len(configs), epochs, selection_seeds,
                                           tuning.extensions, rungs)
        for dataset in chosen_datasets:
            for backbone in backbone_names:
                search = _Search(dataset, backbone, (name, strategy), space, source, sampling,
                                 ordered_axes(strategy), result.budgets[name], make, selection_range, epochs, rungs,
                                 tuning.extensions)
                search.start([configs[index] for index in picked])
                searches.append(search)

    for search in searches:  # the sweep files' key is known now: where they go must take a file, before any trial
        search.sweep_key = _sweep_key(search, selection_range, reporting_range)  # runs
    store.check_writable()
    store.check_sweep_paths(search.sweep_key for search in searches)
    order = {(d[0], b): i for i, (d, b) in enumerate(itertools.product(chosen_datasets, backbone_names))}
    for name, spent in result.budgets.items():
        how = (f"successive halving over {' then '.join(f'{n} x {e}' for n, e in spent['halving'])} epochs"
               if spent["halving"] else f"{spent['epochs_per_configuration']} epochs")
        reporter.message(f"tune {name}: {spent['configurations']} of {spent['space_size']} configuration(s) x "
                         f"{how} x {selection_seeds} selection seed(s) = {spent['epochs']} training epochs to "
                         f"choose, at most {spent['maximum_epochs']} with {spent['extensions']} extension(s) of an "
                         f"edge, then {seeds} reporting seed(s)")
    if len({spent["maximum_epochs"] for spent in result.budgets.values()}) > 1 and warn is not None:
        warn("the strategies' tuning budgets differ (their epochs differ: "
             + ", ".join(f"{n} {b['epochs_per_configuration']}" for n, b in result.budgets.items())
             + "); the comparison is not at equal budget")
    # every stage runs exactly the names resolved here (what --all left out was said once, above)
    stage = spec.replace(strategies=[n for n, _ in chosen_strategies], backbones=backbone_names,
                         datasets=[d[0] for d in chosen_datasets],
                         results_dir=spec.results_dir or default_results_dir())
    common = dict(reporter=reporter, plugins=plugins, warn=warn)
    rounds = max((len(s.rungs) for s in searches), default=0) or 1
    for number in itertools.count():
        trials = sorted((t for s in searches for t in s.trials()), key=lambda t: order[(t.dataset, t.backbone)])
        if not trials:
            break
        what = (f"halving rung {number + 1} of {rounds}" if number < rounds and searches[0].rungs else
                "selection stage" if number == 0 else f"extension {number - rounds + 1} of an edge")
        reporter.message(f"tune: {what}, seed(s) {', '.join(map(str, selection_range))}")
        grid = run_grid(stage, trials=trials, **common)
        if result.selection is None:
            result.selection = grid
        else:
            result.rounds.append(grid)
        if grid.interrupted or grid.aborted:
            return result
        records = {r.key: r for r in store.records()}
        for search in searches:
            if not search.done:
                search.advance(records)

    reporting_trials = []
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    written = {s.key: s for s in store.sweeps()}
    for search in searches:
        if search.failure is not None:
            result.not_selected.append(search.failure)
            continue
        candidates = [c for c, _ in search.candidates]
        chosen = search.chosen
        reporting = make(search.dataset, search.backbone, search.strategy, candidates[chosen].config,
                         reporting_range)
        reporting_trials += reporting
        budget = {**search.budget, "spent": search.spent()}
        sweep = Sweep(search.sweep_key, search.dataset[0], search.backbone, search.name, search.space,
                      search.source, budget, search.sampling, candidates, chosen, selection_range, reporting_range,
                      [t.key for t in reporting], reporting[0].group, reporting[0].label, created=created,
                      edges=search.edges, extensions=search.extensions_allowed, halving=search.rungs,
                      axes={key: axis.to_json_dict() for key, axis in search.axes.items()})
        previous = written.get(search.sweep_key)
        if previous is not None:
            sweep.created = previous.created  # resumed: the same choice, the same file
        if previous is None or previous.to_json_dict() != sweep.to_json_dict():
            try:
                store.write_sweep(sweep)
            except OSError as exc:  # a full disk, an I/O error: the trials' records are kept, the choice is not
                result.aborted = (f"could not write the sweep file {store.sweep_dir / (search.sweep_key + '.json')}"
                                  f": {exc.strerror or exc}; nothing was half-written and the trials' records "
                                  f"are kept: free space and run the same command again to resume")
                return result
        result.sweeps.append(sweep)
        pool = [candidates[i] for i in search.pool]
        reporter.message(f"tune {search.where}: chose {sweep.tuning_text.split(': ', 1)[1]} (val top-1 "
                         f"{_pct(candidates[chosen].val_top1)}; candidates "
                         f"{', '.join(_pct(c.val_top1) for c in pool)}){sweep.edge_suffix}")
    if reporting_trials:
        reporter.message(f"tune: reporting stage, seed(s) {', '.join(map(str, reporting_range))}")
        reporting_trials.sort(key=lambda t: order[(t.dataset, t.backbone)])
        result.reporting = run_grid(stage, trials=reporting_trials, **common)
    return result


def _sweep_key(search: _Search, selection_range: Sequence[int], reporting_range: Sequence[int]) -> str:
    """The key of the sweep of one dataset x backbone x strategy: its first candidates' groups, seeds, budget
    (with the extension and halving rule) and sampling (the name of its file, ``<results>/tuning/<key>.json``)."""
    groups = [candidate.group for candidate, _ in search.candidates]
    return digest_of("tlbench sweep", groups, list(selection_range), list(reporting_range), search.budget,
                     search.sampling)[:20]


def _pct(value: float | None) -> str:
    return "diverged" if value is None else f"{100 * value:.1f}%"
