"""The grid as a library call: ``tlbench.run_grid(...)`` does what ``tlbench run`` does and returns the outcome.

Resolve names, build the trials, skip finished ones, check everything before anything runs, then hand plain-data
jobs to an executor plugin. The executor decides where trials run; this driver alone claims trials, validates and
writes the records that come back, reports each one, and tallies the grid — identically for every executor.
"""
from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from tlbench.data_cache import CACHE_DIR_ENV
from tlbench.devices import check_device, pick_device
from tlbench.interrupts import GridInterrupted, raise_on_sigterm
from tlbench.jobs import TrialJob, Worker, WorkerRefused, adopt_worker, code_versions
from tlbench.plan import Trial, build_trials, normalise_setting
from tlbench.record_hooks import record_finished
from tlbench.records import Record, RecordError
from tlbench.registry import Plugins
from tlbench.runner import TrialRunner
from tlbench.shared_phases import keeps_epoch_ends
from tlbench.spec import RunSpec, setting_text
from tlbench.splits import available_memory
from tlbench.store import ResultStore, default_results_dir
from tlbench.suites import chosen_tasks, find_suite, suite_trials
from tlbench.types import UsageError

DEFAULT_DATASET = "fashion-mnist"
DEFAULT_BACKBONES = ("efficientnet_lite0",)


class GridAborted(Exception):
    """The driver cannot go on (e.g. a record cannot be written): the grid stops cleanly with the reason."""


class Reporter:
    """What a grid tells its user as it goes. The library's default says nothing; the CLI prints each call."""

    def grid_started(self, result: "GridResult") -> None: ...

    def trial_finished(self, record: Record) -> None: ...

    def trial_busy(self, job: TrialJob) -> None: ...

    def message(self, text: str) -> None: ...


@dataclass
class GridResult:
    """The outcome of :func:`run_grid`. ``exit_code`` is what ``tlbench run`` exits with: 0 when every trial of the
    grid has an ok record, 1 when any failed (now or in an earlier run) or is missing, 130 / 143 after SIGINT /
    SIGTERM. ``left_out`` names the strategies that "every registered strategy" left out because they need an
    optional package, with the command that installs it; they do not change the exit code."""

    trials: list[Any]
    executor: str
    executor_options: dict[str, Any]
    device: str
    results_dir: Path
    pending: int = 0
    skipped: int = 0
    ok: list[Record] = field(default_factory=list)
    failed: list[Record] = field(default_factory=list)
    failed_before: list[Record] = field(default_factory=list)
    done_elsewhere: int = 0
    missing: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # strategies --all could not run here, each with the fix
    records: list[Record] = field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: str | None = None
    aborted: str | None = None
    resume_command: str = ""

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 143 if self.interrupted == "SIGTERM" else 130
        return 1 if (self.failed or self.failed_before or self.missing or self.aborted) else 0


class ExecutionSession:
    """The driver's side of an executor's work, handed to ``Executor.execute(jobs, session)``.

    ``claim(job)`` before running a job (False: another process has it, or it got done meanwhile — skip it);
    ``finish(job, record)`` with the record the worker returned (a dict) — validated, written, reported, claim
    released; ``fail(job, reason)`` when no record came back (a crashed process, a lost node). ``run_here(job)``
    does all three in this process; calling the session itself does the same, so an executor written for 0.1
    (``execute(trials, run_trial)`` calling ``run_trial(trial)``) still works. ``stopping`` turns true when the
    user interrupts or the driver cannot write: dispatch nothing more. ``options`` are the executor's settings.
    Thread-safe: executors may call it from several threads.
    """

    def __init__(self, grid: _Grid, options: Mapping[str, Any]):
        self._grid = grid
        self.options = dict(options)
        self.stopping = False
        self._lock = threading.RLock()
        self._open: set[str] = set()

    # -- what executors call
    def claim(self, job: TrialJob) -> bool:
        grid = self._grid
        with self._lock:
            if self.stopping:
                return False
            try:
                claimed = grid.store.claim(job.key)
            except OSError as exc:  # EIO, ENOSPC, a read-only directory: no trial can be claimed, so none runs
                self.stopping = True
                grid.result.aborted = (f"could not claim trial {job.key} ({grid.store.root / (job.key + '.lock')}): "
                                       f"{exc.strerror or exc}")
                raise GridAborted(grid.result.aborted) from None
            if not claimed:
                grid.busy.append(job)
                grid.reporter.trial_busy(job)
                return False
            existing = grid.store.read(job.key)  # another process may have finished it while we waited
            if grid.already_done(existing):
                grid.store.release(job.key)
                grid.result.done_elsewhere += 1
                return False
            self._open.add(job.key)
            return True

    def finish(self, job: TrialJob, record: Mapping[str, Any] | Record) -> Record:
        grid = self._grid
        try:
            typed = record if isinstance(record, Record) else Record.from_json_dict(dict(record))
            if typed.key != job.key:
                raise RecordError(f"it is the record of trial {typed.key}")
        except RecordError as exc:
            typed = job.failed(f"the worker returned an invalid record: {exc}")
        with self._lock:
            try:
                grid.store.write(typed)
            except OSError as exc:  # disk full, EIO, read-only: the grid cannot go on; keep what is written
                self.stopping = True
                grid.result.aborted = (f"could not write {grid.store.path(job.key)}: {exc.strerror or exc}; "
                                       f"nothing was half-written")
                raise GridAborted(grid.result.aborted) from None
            finally:
                self._open.discard(job.key)
                grid.store.release(job.key)
            (grid.result.ok if typed.ok else grid.result.failed).append(typed)
            grid.reporter.trial_finished(typed)
            grid.notify_finished(typed)
        return typed

    def fail(self, job: TrialJob, reason: str, wall_s: float = 0.0) -> Record:
        return self.finish(job, job.failed(reason, wall_s))

    def run_here(self, job: TrialJob) -> Record | None:
        """Claim, run in this process (the driver's own warm worker), finish."""
        if not self.claim(job):
            return None
        try:
            record = self._grid.local_worker().run(job)
        except BaseException:
            self.release(job)
            raise
        return self.finish(job, record)

    __call__ = run_here

    def release(self, job: TrialJob) -> None:
        """Give a claimed job back unfinished (e.g. the executor was interrupted before it ran)."""
        with self._lock:
            self._open.discard(job.key)
            self._grid.store.release(job.key)

    def release_all(self) -> None:
        with self._lock:
            for key in list(self._open):
                self._grid.store.release(key)
            self._open.clear()


class _Grid:
    """One grid's driver state (the spec, the store, the tally, the in-process worker)."""

    def __init__(self, spec: RunSpec, store: ResultStore, reporter: Reporter, result: GridResult, plugins: Plugins,
                 warn: Callable[[str], None] | None):
        self.spec = spec
        self.store = store
        self.reporter = reporter
        self.result = result
        self.plugins = plugins
        self.warn = warn
        self.third_party = plugins.load_third_party
        self.busy: list[TrialJob] = []
        self._worker: Worker | None = None

    def already_done(self, existing: Record | None) -> bool:
        """A record exists and this run is not asked to redo it (redo "all": --force; "failed": --retry-failed)."""
        redo = self.spec.redo
        return existing is not None and redo != "all" and (existing.ok or redo != "failed")

    def local_worker(self) -> Worker:
        if self._worker is None:
            self._worker = Worker(self.spec.device, self.third_party, plugins=self.plugins)
            adopt_worker(self._worker, self.spec.device, self.third_party)
        return self._worker

    def notify_finished(self, record: Record) -> None:
        """The plugins' ``record_finished`` hooks, after the record is written (a raising plugin: one warning)."""
        record_finished(self.plugins, record, self.warn)


@dataclass
class GridNames:
    """The checked names of a grid: (name, Strategy) pairs, backbone names, (name, dataset family) pairs, and the
    strategies "every registered strategy" left out because this environment cannot run them (name -> the install
    hint of what they need)."""

    strategies: list[tuple[str, Any]]
    backbones: list[str]
    datasets: list[tuple[str, Any]]
    left_out: dict[str, str] = field(default_factory=dict)
    suite: Any = None  # the tlbench.Suite of a --suite run
    tasks: list[tuple[Any, Any]] = field(default_factory=list)  # its chosen (SuiteTask, dataset family) pairs

    def left_out_lines(self) -> list[str]:
        return [f"left out {name}: it needs an optional package: {hint}" for name, hint in self.left_out.items()]


def resolve_names(plugins: Plugins, spec: RunSpec) -> GridNames:
    """The spec's names, each checked (unknown or unavailable: a UsageError); no strategies means every registered
    strategy that can run here (refused while a plugin is broken), no backbones and no datasets the defaults."""
    left_out: dict[str, str] = {}
    if spec.strategies:
        strategy_names = list(spec.strategies)
    else:  # "every registered strategy" is not every one while a plugin is broken
        plugins.require_valid()
        left_out = plugins.strategies.unavailable()
        strategy_names = [name for name in plugins.strategies.names() if name not in left_out]
        if not strategy_names:
            raise UsageError("no registered strategy can run in this environment: "
                             + "; ".join(f"{name} needs {hint}" for name, hint in left_out.items()))
    hint = plugins.failure_hint()
    chosen_strategies = [(name, plugins.strategies.get(name, hint)) for name in strategy_names]
    backbone_names = list(spec.backbones) or list(DEFAULT_BACKBONES)
    for name in backbone_names:
        plugins.backbones.resolve(name, hint)
    if spec.suite is not None:
        suite = find_suite(plugins, spec.suite)
        tasks = [(task, plugins.datasets.resolve(task.dataset, hint)[0])
                 for task in chosen_tasks(suite, spec.datasets)]
        datasets = list(dict.fromkeys((task.dataset, family) for task, family in tasks))
        return GridNames(chosen_strategies, backbone_names, datasets, left_out, suite, tasks)
    dataset_names = list(spec.datasets) or [DEFAULT_DATASET]
    chosen_datasets = [(name, plugins.datasets.resolve(name, hint)[0]) for name in dataset_names]
    return GridNames(chosen_strategies, backbone_names, chosen_datasets, left_out)


# What planning one trial costs the driver (the trial, its job, its record read back), with room to spare: measured
# about 2.1 KiB for a trial and its job, and records are a few KiB.
PLANNING_BYTES_PER_TRIAL = 16 * 2**10
# Training memory per byte of a float32 input batch, at least (the forward pass's activations kept for the backward
# pass): measured 51x for timm's test_efficientnet, 110x for resnet18, 160x for efficientnet_lite0 on the CPU.
ACTIVATION_FACTOR = 32


def axis_combinations(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the ``--vary`` axes' values, the first axis slowest ([{}] without axes)."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def build_grid_trials(spec: RunSpec, names: GridNames, registered: Mapping[str, Any]) -> list[Trial]:
    """The grid's trials: names x seeds x every combination of the spec's axes, each combination built exactly as
    ``--set`` with its values would build it (so a ``--vary`` trial and the same ``--set`` trial are one trial,
    one key, one record). Sorted by dataset then backbone, as :func:`tlbench.plan.build_trials` sorts one
    combination; a trial two combinations give alike (an axis of a strategy that only some trials have) is kept
    once. A strategy axis for a registered strategy outside the grid is refused: it would vary nothing."""
    selected = {name for name, _ in names.strategies}
    for key in spec.axes:
        scope = key.partition(".")[0]
        if "." in key and scope != "data" and scope not in selected and scope in registered:
            raise UsageError(f"--vary {key} varies nothing: strategy {scope!r} is not in this grid; add -s {scope} "
                             f"or drop the axis")

    def build(combination: Mapping[str, Any]) -> list[Trial]:
        overrides = {**spec.settings, **combination}
        if names.suite is not None:  # a suite's tasks, each under the suite's split protocol
            return suite_trials(names.suite, names.tasks, backbones=names.backbones, strategies=names.strategies,
                                seeds=spec.seed_range, overrides=overrides, registered_strategies=registered)
        return build_trials(datasets=names.datasets, backbones=names.backbones, strategies=names.strategies,
                            seeds=spec.seed_range, overrides=overrides, registered_strategies=registered)

    trials: dict[str, Trial] = {}
    for combination in axis_combinations(spec.axes):
        try:
            built = build(combination)
        except UsageError as exc:
            if not combination:
                raise
            build({})  # the --set settings alone are wrong: their own error, as without --vary
            shown = " ".join(f"{k}={setting_text(v)}" for k, v in combination.items())
            raise UsageError(f"--vary values {shown}: {exc}") from None
        for trial in built:
            trials.setdefault(trial.key, trial)
    if names.suite is not None:  # in the suite's task order (a dataset may be two tasks)
        task_order = {task.name: i for i, (task, _) in enumerate(names.tasks)}
        return sorted(trials.values(), key=lambda t: task_order[t.suite["task"]])
    dataset_order = {name: i for i, (name, _) in enumerate(names.datasets)}
    backbone_order = {name: i for i, name in enumerate(names.backbones)}
    return sorted(trials.values(), key=lambda t: (dataset_order[t.dataset], backbone_order[t.backbone]))


def axis_values_text(trial: Trial, axes: Mapping[str, Sequence[Any]]) -> str:
    """``--vary values KEY=V ...``: the axis values a trial was built with (those that differ from the defaults,
    as its overrides hold them), the prefix of an error found in it; "" without axes."""
    shown = " ".join(f"{key}={setting_text(trial.overrides[key])}" for key in axes if key in trial.overrides)
    return f"--vary values {shown}" if shown else ""


def check_grid_size(count: int, described: str, fix: str) -> None:
    """Refuse, before planning it, a grid whose trials alone would not fit in this machine's memory (e.g.
    ``--seeds 1000000000000``): one line saying how many trials, what they need and what is available."""
    needed = count * PLANNING_BYTES_PER_TRIAL
    available = available_memory()
    if available is not None and needed > available:
        raise UsageError(f"the grid has {count} trials ({described}); planning them needs about "
                         f"{needed / 2**30:,.0f} GiB of memory but {available / 2**30:.1f} GiB is available; {fix}")


def batch_memory(trial: Trial) -> tuple[int, int] | None:
    """(image side, bytes) that training one batch of ``trial`` needs at least, or None when the side is the
    backbone's own (not known before the backbone is built)."""
    side = trial.protocol.get("image_size") or trial.data_options.get("image_size")
    batch = trial.protocol.get("batch_size")
    if not isinstance(side, int) or not isinstance(batch, int):
        return None
    return side, batch * 3 * side * side * 4 * ACTIVATION_FACTOR


def check_batch_memory(trials: Sequence[Trial], device: torch.device) -> None:
    """Refuse, before anything runs, a trial whose training batch cannot fit in the memory of the device it runs on
    (the machine's available memory on the CPU, the GPU's total memory on CUDA), e.g. ``image_size=4096``: it would
    be killed by the kernel's out-of-memory killer with no record and no message."""
    if device.type == "cuda":
        available = torch.cuda.get_device_properties(device).total_memory
        where = f"{device}'s"
    elif device.type == "cpu":
        available, where = available_memory(), "this machine's available"
    else:
        return
    if available is None:
        return
    worst = max((need + (t,) for t in trials if (need := batch_memory(t)) is not None), default=None,
                key=lambda item: item[1])
    if worst is None or worst[1] <= available:
        return
    side, needed, trial = worst
    where_set = "data.image_size" if not trial.protocol.get("image_size") else "image_size"
    raise UsageError(f"{trial.title}: training a batch of {trial.protocol['batch_size']} images at {side} px needs "
                     f"at least {needed / 2**30:.1f} GiB but {where} memory is {available / 2**30:.1f} GiB; lower "
                     f"{where_set} or batch_size (--set {where_set}=<pixels>)")


def executor_options(executor: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """The executor's declared defaults updated with ``given``; an unknown option is an error with a suggestion,
    and a value must have its default's type (None defaults take anything)."""
    defaults = dict(getattr(executor, "options", None) or {})
    options = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1, cutoff=0.6)
            known = ", ".join(sorted(defaults)) or "none"
            raise UsageError(f"unknown option executor.{key} for executor {executor.name!r}"
                             + (f"; did you mean {close[0]!r}?" if close else f" (its options: {known})"))
        default = defaults[key]
        value = normalise_setting(value, default)  # executor.workers=2.0 is 2
        if default is not None and value is not None:
            if isinstance(default, bool) and not isinstance(value, bool):
                raise UsageError(f"executor.{key} must be true or false, got {value!r}")
            if isinstance(default, int) and not isinstance(default, bool) and (
                    not isinstance(value, int) or isinstance(value, bool)):
                raise UsageError(f"executor.{key} must be an integer, got {value!r}")
            if isinstance(default, float) and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise UsageError(f"executor.{key} must be a number, got {value!r}")
            if isinstance(default, str) and not isinstance(value, str):
                raise UsageError(f"executor.{key} must be a string, got {value!r}")
        options[key] = value
    check = getattr(executor, "check_options", None)
    if check is not None:
        check(options)
    return options


def run_grid(spec: RunSpec, *, reporter: Reporter | None = None, plugins: Plugins | None = None,
             warn: Callable[[str], None] | None = None, trials: Sequence[Trial] | None = None) -> GridResult:
    """Run every dataset × backbone × strategy × seed trial of ``spec`` that has no record yet; return the outcome.

    ``spec`` (:class:`tlbench.RunSpec`) says which trials, how they run and where results go. Bad input raises
    :class:`UsageError` before anything is written. Nothing is printed unless ``reporter`` prints; ``warn`` gets
    one-line warnings. ``trials``: run these :class:`tlbench.plan.Trial` objects instead of the product of the
    spec's names, seeds and settings (``tlbench.tuning`` builds one per configuration of a search space).
    """
    started = time.perf_counter()
    reporter = reporter or Reporter()
    if plugins is None:
        plugins = Plugins()
    names = resolve_names(plugins, spec)
    chosen_executor = plugins.executors.get(spec.executor, plugins.failure_hint())
    options = executor_options(chosen_executor, spec.executor_options)
    if trials is None:
        combinations = math.prod(len(values) for values in spec.axes.values())  # 1 without axes
        tasks = len(names.tasks) if names.suite is not None else len(names.datasets)
        check_grid_size(tasks * len(names.backbones) * len(names.strategies) * spec.seeds * combinations,
                        f"{len(names.strategies)} strategy(ies) x {len(names.backbones)} backbone(s) x "
                        f"{tasks} dataset(s) x {spec.seeds} seed(s)"
                        + (f" x {combinations} --vary combination(s)" if spec.axes else ""),
                        "lower --seeds" + (" or list fewer --vary values" if spec.axes else ""))
        trials = build_grid_trials(spec, names, dict(plugins.strategies.items()))
    else:
        trials = list(trials)

    store = ResultStore(spec.results_dir or default_results_dir(), warn=warn)
    store.check_writable()
    in_process = bool(getattr(chosen_executor, "in_process", False))
    check_device(spec.device)
    driver_device = (pick_device(spec.device) if in_process or getattr(chosen_executor, "same_machine", False)
                     else None)
    result = GridResult(trials=trials, executor=chosen_executor.name, executor_options=options,
                        device=str(driver_device) if driver_device is not None else (spec.device or "auto"),
                        results_dir=store.root, left_out=names.left_out_lines())
    grid = _Grid(spec, store, reporter, result, plugins, warn)

    pending: list[Trial] = []
    for trial in trials:
        existing = store.read(trial.key)
        if grid.already_done(existing):
            result.skipped += 1
            if not existing.ok:
                result.failed_before.append(existing)
            continue
        pending.append(trial)
    result.pending = len(pending)
    if pending:  # bad data or impossible plans fail here, before anything is written
        store.check_record_paths(t.key for t in pending)
        if driver_device is not None:  # trials run on this machine: what one training batch needs must fit
            check_batch_memory(pending, driver_device)
        checker = (grid.local_worker().runner if in_process
                   else TrialRunner(plugins, driver_device or torch.device("cpu")))
        checker.check(pending, where=lambda trial: axis_values_text(trial, spec.axes))
        check_ready = getattr(chosen_executor, "check_ready", None)
        if check_ready is not None:  # connectivity and resources (a cluster), still before anything is written
            check_ready(options, spec.device)
    store.create()
    store.clean_leftovers()

    progress = spec.progress
    if progress == "auto":
        progress = "bar" if in_process and sys.stderr.isatty() else "lines"
    versions = code_versions(plugins=plugins)
    job_executor = {"name": chosen_executor.name, "options": options}
    weights_dir = str(store.root.resolve()) if spec.save_models != "none" else None
    # a trial whose phases a later one may replay epoch-end callbacks on keeps their weights at each epoch's end
    keep = keeps_epoch_ends([((t.dataset, json.dumps(t.load_options, sort_keys=True, default=str), t.backbone),
                              t.group) for t in pending], checker.epoch_end_replaying_groups) if pending else []
    jobs = [TrialJob(trial=trial.to_record(), device=spec.device, versions=versions,
                     third_party_plugins=grid.third_party, command=spec.command or "",
                     cache_dir=os.environ.get(CACHE_DIR_ENV) or None, progress=progress, executor=job_executor,
                     weights_dir=weights_dir, keep_epoch_ends=kept)
            for trial, kept in zip(pending, keep)]
    result.resume_command = spec.command or ""
    reporter.grid_started(result)
    session = ExecutionSession(grid, options)
    with raise_on_sigterm():
        try:
            if jobs:
                chosen_executor.execute(jobs, session)
            _finish_busy(grid, session, chosen_executor)
        except GridInterrupted as exc:
            session.stopping = True
            result.interrupted = exc.signal_name
        except KeyboardInterrupt:
            session.stopping = True
            result.interrupted = "SIGINT"
        except GridAborted:
            pass
        except WorkerRefused as exc:
            session.stopping = True
            result.aborted = str(exc)
        finally:
            session.release_all()

    if spec.save_models == "best" and not (result.interrupted or result.aborted):  # a stopped grid prunes on resume
        for line in store.prune_weights_report():
            reporter.message(line)
    keys = {t.key for t in trials}
    result.records = [r for r in store.records() if r.key in keys]
    have = {r.key for r in result.records}
    result.missing = [t.key for t in trials if t.key not in have] if not result.interrupted else []
    result.elapsed_s = time.perf_counter() - started
    return result


def _finish_busy(grid: _Grid, session: ExecutionSession, executor: Any) -> None:
    """Trials another process held when we reached them: wait for that process to finish them; if it died
    without a record, run them here, so a grid never ends with a cell silently missing."""
    waiting = [job for job in grid.busy if grid.store.read(job.key) is None]
    grid.result.done_elsewhere += len(grid.busy) - len(waiting)
    grid.busy.clear()
    if not waiting:
        return
    grid.reporter.message(f"waiting for {len(waiting)} trial(s) that another tlbench process is running")
    orphans = []
    for job in waiting:
        grid.store.claim(job.key, wait=True)
        grid.store.release(job.key)
        existing = grid.store.read(job.key)
        if existing is not None:
            grid.result.done_elsewhere += 1
        else:
            orphans.append(job)
    if orphans and not session.stopping:
        grid.reporter.message(f"{len(orphans)} trial(s) were left unfinished by a process that stopped; "
                              f"running them here")
        executor.execute(orphans, session)
