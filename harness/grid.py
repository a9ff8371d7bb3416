"""The grid as a library call: ``tlbench.run_grid(...)`` does what ``tlbench run`` does and returns the outcome.

Resolve names, build the trials, skip finished ones, check everything before anything runs, then hand plain-data
jobs to an executor plugin. The executor decides where trials run; this driver alone claims trials, validates and
writes the records that come back, reports each one, and tallies the grid — identically for every executor.
"""
from __future__ import annotations

import difflib
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from tlbench.jobs import TrialJob, WorkerRefused, code_versions, failed_record
from tlbench.progress import PROGRESS_MODES
from tlbench.records import Record, RecordError
from tlbench.types import UsageError

DEFAULT_DATASET = "fashion-mnist"
DEFAULT_BACKBONES = ("efficientnet_lite0",)


class GridInterrupted(BaseException):
    """SIGINT or SIGTERM reached the driver: stop dispatching, keep every finished record."""

    def __init__(self, signal_name: str, exit_code: int):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = exit_code


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

    def __init__(self, grid: "_Grid", options: Mapping[str, Any]):
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
            typed = Record.from_json_dict(failed_record(job, f"the worker returned an invalid record: {exc}"))
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
        return self.finish(job, failed_record(job, reason, wall_s))

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
    """One grid's driver state (the store, the tally, the in-process worker)."""

    def __init__(self, store: Any, reporter: Reporter, result: GridResult, force: bool, retry_failed: bool,
                 plugins: Any, job_device: str | None, third_party: bool):
        self.store = store
        self.reporter = reporter
        self.result = result
        self.force = force
        self.retry_failed = retry_failed
        self.plugins = plugins
        self.job_device = job_device
        self.third_party = third_party
        self.busy: list[TrialJob] = []
        self.warn: Callable[[str], None] | None = None
        self._worker: Any = None

    def already_done(self, existing: Record | None) -> bool:
        """A record exists and this run is not asked to redo it (--force: all; --retry-failed: failed ones)."""
        return existing is not None and not self.force and (existing.ok or not self.retry_failed)

    def local_worker(self) -> Any:
        if self._worker is None:
            from tlbench.jobs import Worker, adopt_worker

            self._worker = Worker(self.job_device, self.third_party, plugins=self.plugins)
            adopt_worker(self._worker, self.job_device, self.third_party)
        return self._worker

    def notify_finished(self, record: Record) -> None:
        """The plugins' ``record_finished`` hooks, after the record is written (a raising plugin: one warning)."""
        from tlbench.record_hooks import record_finished

        record_finished(self.plugins, record, self.warn)


def _resolve(registry: Any, name: str, hint: str) -> tuple[Any, str | None]:
    from tlbench.runner import resolve

    return resolve(registry, name, hint)


@dataclass
class GridNames:
    """The checked names of a grid: (name, Strategy) pairs, backbone names, (name, dataset family) pairs, and the
    strategies "every registered strategy" left out because this environment cannot run them (name -> the install
    hint of what they need)."""

    strategies: list[tuple[str, Any]]
    backbones: list[str]
    datasets: list[tuple[str, Any]]
    left_out: dict[str, str] = field(default_factory=dict)

    def left_out_lines(self) -> list[str]:
        return [f"left out {name}: it needs an optional package: {hint}" for name, hint in self.left_out.items()]


def resolve_names(plugins: Any, strategies: Sequence[str], backbones: Sequence[str], datasets: Sequence[str]
                  ) -> GridNames:
    """The grid's names, each checked (unknown or unavailable: a UsageError); no strategies means every registered
    strategy that can run here (refused while a plugin is broken), no backbones and no datasets the defaults."""
    left_out: dict[str, str] = {}
    if strategies:
        strategy_names = list(dict.fromkeys(strategies))
    else:  # "every registered strategy" is not every one while a plugin is broken
        plugins.require_valid()
        left_out = plugins.strategies.unavailable()
        strategy_names = [name for name in plugins.strategies.names() if name not in left_out]
        if not strategy_names:
            raise UsageError("no registered strategy can run in this environment: "
                             + "; ".join(f"{name} needs {hint}" for name, hint in left_out.items()))
    hint = plugins.failure_hint()
    chosen_strategies = [(name, plugins.strategies.get(name, hint)) for name in strategy_names]
    backbone_names = list(dict.fromkeys(backbones)) or list(DEFAULT_BACKBONES)
    for name in backbone_names:
        _resolve(plugins.backbones, name, hint)
    dataset_names = list(dict.fromkeys(datasets)) or [DEFAULT_DATASET]
    chosen_datasets = [(name, _resolve(plugins.datasets, name, hint)[0]) for name in dataset_names]
    return GridNames(chosen_strategies, backbone_names, chosen_datasets, left_out)


def parse_settings(settings: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """``--set`` strings (``KEY=VALUE``) or a mapping, as one dict of overrides."""
    from tlbench.plan import parse_overrides

    if settings is None:
        return {}
    if isinstance(settings, Mapping):
        return dict(settings)
    return parse_overrides(list(settings))


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


def _command_line() -> str:
    return "tlbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""


def run_grid(strategies: Sequence[str] = (), backbones: Sequence[str] = (), datasets: Sequence[str] = (), *,
             seeds: int = 1, first_seed: int = 0, settings: Mapping[str, Any] | Iterable[str] | None = None,
             results_dir: str | Path | None = None, executor: str = "local",
             executor_options_: Mapping[str, Any] | None = None, device: str | None = None, force: bool = False,
             retry_failed: bool = False, progress: str = "auto", reporter: Reporter | None = None,
             plugins: Any = None, command: str | None = None, warn: Callable[[str], None] | None = None,
             trials: Sequence[Any] | None = None) -> GridResult:
    """Run every dataset × backbone × strategy × seed trial that has no record yet and return the outcome.

    ``strategies`` empty means every registered strategy; ``backbones`` and ``datasets`` empty mean the defaults
    (``efficientnet_lite0``, ``fashion-mnist``). ``settings`` are ``--set`` overrides (``["epochs=2",
    "full.lr=3e-4", "data.train_size=500", "executor.workers=2"]`` or the same as a dict; ``save_models=best|all``
    keeps trained weights beside the records, see :func:`tlbench.store.save_models_choice`). ``executor`` names an
    executor plugin (``local``, ``process``, ``ray``, ``slurm``); its options come from ``executor_options_`` and
    ``executor.<key>`` settings. ``device`` is ``cpu`` / ``cuda[:N]`` / None (CUDA where available). ``progress``:
    "auto" (a bar on a terminal, lines otherwise), "bar", "lines" or "off". Bad input raises :class:`UsageError`
    before anything is written. Nothing is printed unless ``reporter`` prints. ``trials``: run these
    :class:`tlbench.plan.Trial` objects instead of the product of names and settings (``tlbench.tuning`` builds
    one per configuration of a search space); ``settings`` then only set executor options.
    """
    from tlbench.plan import build_trials, check_seeds
    from tlbench.registry import Plugins
    from tlbench.store import ResultStore, default_results_dir, save_models_choice

    started = time.perf_counter()
    reporter = reporter or Reporter()
    if progress not in PROGRESS_MODES:
        raise UsageError(f"progress must be one of {', '.join(PROGRESS_MODES)}, got {progress!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (seeds, first_seed)):
        raise UsageError(f"seeds must be integers, got --seed {first_seed!r} with --seeds {seeds!r}")
    check_seeds(first_seed, seeds)
    if plugins is None:
        plugins = Plugins()
    names = resolve_names(plugins, strategies, backbones, datasets)
    chosen_executor = plugins.executors.get(executor, plugins.failure_hint())

    overrides = parse_settings(settings)
    given_options = dict(executor_options_ or {})
    for key in [k for k in overrides if k.split(".", 1)[0] == "executor"]:
        sub = key.split(".", 1)[1] if "." in key else ""
        if not sub:
            raise UsageError(f"--set {key}=... names no executor option; use executor.<option>=VALUE")
        given_options[sub] = overrides.pop(key)
    save_models = save_models_choice(overrides)  # which trained weights to keep: no part of a trial
    options = executor_options(chosen_executor, given_options)
    if trials is None:
        trials = build_trials(datasets=names.datasets, backbones=names.backbones, strategies=names.strategies,
                              seeds=list(range(first_seed, first_seed + seeds)), overrides=overrides,
                              registered_strategies=dict(plugins.strategies.items()))
    else:
        trials = list(trials)

    store = ResultStore(results_dir or default_results_dir(), warn=warn)
    store.check_writable()
    in_process = bool(getattr(chosen_executor, "in_process", False))
    from tlbench.devices import check_device, pick_device
    from tlbench.runner import TrialRunner

    check_device(device)
    driver_device = pick_device(device) if in_process or getattr(chosen_executor, "same_machine", False) else None
    result = GridResult(trials=trials, executor=chosen_executor.name, executor_options=options,
                        device=str(driver_device) if driver_device is not None else (device or "auto"),
                        results_dir=store.root, left_out=names.left_out_lines())
    grid = _Grid(store, reporter, result, force, retry_failed, plugins, device, plugins.load_third_party)
    grid.warn = warn

    pending: list[Any] = []
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
        if in_process:
            checker = grid.local_worker().runner
        else:
            import torch

            checker = TrialRunner(plugins, driver_device or torch.device("cpu"))
        checker.check(pending)
    store.create()
    store.clean_leftovers()

    if progress == "auto":
        progress = "bar" if in_process and sys.stderr.isatty() else "lines"
    command = _command_line() if command is None else command
    versions = code_versions(plugins=plugins)
    job_executor = {"name": chosen_executor.name, "options": options}
    jobs = [TrialJob(trial=trial.to_record(), device=device, versions=versions, third_party_plugins=grid.third_party,
                     command=command, cache_dir=os.environ.get("TLBENCH_CACHE_DIR") or None, progress=progress,
                     executor=job_executor, weights_dir=str(store.root.resolve()) if save_models != "none" else None)
            for trial in pending]
    result.resume_command = command
    reporter.grid_started(result)
    session = ExecutionSession(grid, options)
    with _signals_raise():
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

    if save_models == "best" and not (result.interrupted or result.aborted):  # a stopped grid prunes when resumed
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


class _signals_raise:
    """SIGTERM (like SIGINT) becomes an exception in the driver's main thread, so the grid stops cleanly, keeps
    its records and reports; restored afterwards. Outside the main thread, nothing is installed."""

    def __enter__(self) -> "_signals_raise":
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            def on_term(signum: int, frame: Any) -> None:
                raise GridInterrupted("SIGTERM", 143)

            self._previous = signal.signal(signal.SIGTERM, on_term)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

