"""A trial job is plain data; a worker runs it and returns its record as plain data.

Executors move ``TrialJob`` s to wherever trials run (this process, a child process, a Ray actor, a Slurm task) and
bring back the record that :func:`run_job` returns — a JSON-able dict, validated by the driver before it is
written. Nothing here claims trials or writes records: only the driver does, so workers need no shared filesystem.

A worker builds its own plugin manager and keeps, per process, the decoded datasets and frozen features of the
trials it has run, so a worker that gets several trials of one dataset × backbone group keeps them warm. It refuses
a job made by a driver with other tlbench or plugin versions: the numbers of one grid must come from one code base.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from tlbench import version
from tlbench.allocator import keep_freed_memory
from tlbench.data_cache import CACHE_DIR_ENV
from tlbench.devices import pick_device
from tlbench.measure import resident_set_kib
from tlbench.plan import Trial
from tlbench.progress import make_progress
from tlbench.records import Record, failed_record, trial_title
from tlbench.registry import Plugins
from tlbench.runner import TrialRunner
from tlbench.types import UsageError


class WorkerRefused(UsageError):
    """The worker cannot run jobs of this driver (different code); nothing it would record could be compared."""


@dataclass(frozen=True)
class TrialJob:
    """Everything a worker needs to run one trial, as plain data (picklable, and JSON through ``to_json_dict``).

    ``trial`` is the trial's identity as recorded (``Trial.to_record()``); ``device`` is ``None`` for "CUDA if the
    worker has it, else CPU"; ``versions`` are the driver's tlbench and plugin versions; ``cache_dir`` is the
    dataset cache the driver uses (``None``: the worker's default); ``progress`` is "bar", "lines" or "off";
    ``weights_dir``, when set (``tlbench run --save-models best|all``), is where the worker writes the trained
    weights as ``<key>.safetensors``: the results directory, which must be reachable from the worker (the same
    machine, or a shared filesystem as for Slurm); the driver writes the record after the file exists.
    """

    trial: Mapping[str, Any]
    device: str | None
    versions: Mapping[str, Any]
    third_party_plugins: bool = True
    command: str = ""
    cache_dir: str | None = None
    progress: str = "off"
    executor: Mapping[str, Any] = field(default_factory=dict)
    weights_dir: str | None = None
    keep_epoch_ends: bool = False  # a later trial replays epoch-end callbacks on this one's phases (shared_phases)

    @property
    def key(self) -> str:
        return str(self.trial["key"])

    @property
    def group(self) -> tuple[str, str, str]:
        """Trials with the same dataset, data options and backbone share decoded data and frozen features."""
        return (str(self.trial["dataset"]), json.dumps(self.trial["data"], sort_keys=True, default=str),
                str(self.trial["backbone"]))

    def label(self) -> str:
        t = self.trial
        return trial_title(t["dataset"], t["backbone"], t["label"], t["seed"])

    def to_trial(self) -> Trial:
        """The trial to run: rebuilt from its recorded form, refused if the key this worker computes differs."""
        try:
            return Trial.from_record(self.trial)
        except ValueError as exc:  # the job was edited or made by another protocol version
            raise WorkerRefused(f"{exc}; the driver and this worker compute trial keys differently (protocol "
                                f"versions differ?)") from None

    def failed(self, reason: str, wall_s: float = 0.0) -> Record:
        """The record of this job's trial when no record came back (crashed, killed, lost): failed, with why."""
        return failed_record(self.trial, reason, wall_s=wall_s, command=self.command, executor=self.executor)

    def to_json_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @classmethod
    def from_json_dict(cls, raw: Mapping[str, Any]) -> "TrialJob":
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})


def code_versions(third_party_plugins: bool = True, plugins: Plugins | None = None) -> dict[str, Any]:
    """tlbench's version and protocol version, and every loaded plugin's version: what a worker must match."""
    if plugins is None:
        plugins = Plugins(load_third_party=third_party_plugins)
    return {"tlbench": version.__version__, "protocol_version": version.PROTOCOL_VERSION,
            "plugins": {name: info.version for name, info in sorted(plugins.info.items()) if not info.error}}


def describe_mismatch(driver: Mapping[str, Any], worker: Mapping[str, Any]) -> str | None:
    """One line saying what differs between the driver's and the worker's code, or None."""
    for name in ("tlbench", "protocol_version"):
        if driver.get(name) != worker.get(name):
            return f"{name} {worker.get(name)} here, {driver.get(name)} on the driver"
    theirs, ours = dict(driver.get("plugins") or {}), dict(worker.get("plugins") or {})
    for name in sorted(set(theirs) | set(ours)):
        if theirs.get(name) != ours.get(name):
            here = f"version {ours[name]}" if name in ours else "not installed"
            there = f"version {theirs[name]}" if name in theirs else "not installed"
            return f"plugin {name!r} is {here} here but {there} on the driver"
    return None


class Worker:
    """Runs jobs in this process, keeping data and features warm between them (one per device and plugin set)."""

    def __init__(self, device: str | None, third_party_plugins: bool, plugins: Plugins | None = None):
        started = time.perf_counter()
        if device is None or str(device).startswith("cpu"):
            keep_freed_memory()  # before the first trial allocates: see tlbench.allocator
        self.plugins = plugins if plugins is not None else Plugins(load_third_party=third_party_plugins)
        self.versions = code_versions(plugins=self.plugins)
        self.device = pick_device(device)
        # Per-trial CPU memory is measured against this: the process after imports and plugin loading.
        self.baseline_kib = resident_set_kib()
        self.runner = TrialRunner(self.plugins, self.device, memory_baseline_kib=self.baseline_kib)
        self.lock = threading.Lock()
        self.init_s: float | None = time.perf_counter() - started  # plugin loading, device: paid by the first job

    def run(self, job: TrialJob, progress: Callable[[str, int], Any] | None = None) -> Record:
        mismatch = describe_mismatch(job.versions, self.versions)
        if mismatch:
            raise WorkerRefused(f"worker on {socket.gethostname()} refuses trial {job.key}: {mismatch}; install "
                                f"the same tlbench and plugin versions on every machine of the grid")
        trial = job.to_trial()
        if job.cache_dir:
            os.environ[CACHE_DIR_ENV] = job.cache_dir
        with self.lock:  # one trial at a time per worker: timings and memory are per trial
            self.runner.progress = progress if progress is not None else make_progress(job.progress)
            self.runner.weights_dir = job.weights_dir
            self.runner.keep_epoch_ends = job.keep_epoch_ends
            record = self.runner.run(trial, command=job.command)
        executor = {**dict(job.executor), "host": socket.gethostname(), "pid": os.getpid(),
                    "worker_baseline_rss_mib": round(self.baseline_kib / 1024, 1),
                    "worker_init_s": round(self.init_s or 0.0, 3)}
        self.init_s = None
        return dataclasses.replace(record, executor=executor)


_WORKERS: dict[tuple[Any, ...], Worker] = {}
_WORKERS_LOCK = threading.Lock()


def worker_for(device: str | None, third_party_plugins: bool) -> Worker:
    """This process's worker for a device and plugin set, built on first use (imports, plugins, device)."""
    key = (device, bool(third_party_plugins))
    with _WORKERS_LOCK:
        if key not in _WORKERS:
            _WORKERS[key] = Worker(device, third_party_plugins)
        return _WORKERS[key]


def adopt_worker(worker: Worker, device: str | None, third_party_plugins: bool) -> None:
    """Make ``worker`` this process's worker (the in-process executor shares the driver's, already warm)."""
    with _WORKERS_LOCK:
        _WORKERS[(device, bool(third_party_plugins))] = worker


def run_job(job: TrialJob | Mapping[str, Any]) -> dict[str, Any]:
    """Run one trial job in this process and return its record as plain data (a JSON-able dict: what crosses a
    process boundary). Module-level, so process pools, Ray and submitit can ship it by reference. Raises
    :class:`WorkerRefused` if the code differs from the driver's."""
    if not isinstance(job, TrialJob):
        job = TrialJob.from_json_dict(job)
    return worker_for(job.device, job.third_party_plugins).run(job).to_json_dict()



def run_job_reply(job: TrialJob | Mapping[str, Any]) -> dict[str, Any]:
    """:func:`run_job` for executors that ship results as data: ``{"record": ...}``, or ``{"refused": line}`` when
    this worker's code differs from the driver's, or ``{"error": line}`` when the worker itself broke (a trial's
    own failure is a failed record, not an error here)."""
    try:
        return {"record": run_job(job)}
    except WorkerRefused as exc:
        return {"refused": str(exc)}
    except Exception as exc:  # building the worker failed (plugins, device): no trial ran
        return {"error": f"the worker could not run the trial: {type(exc).__name__}: {exc}"}


def finish_from_reply(session: Any, job: TrialJob, reply: Any) -> None:
    """Hand a worker's reply to the driver: the record, or a failed record with the worker's error (or with what
    was wrong with a reply that is not one); a refusal stops the grid (every worker of this code would refuse)."""
    if not isinstance(reply, Mapping):
        session.fail(job, f"the worker's reply is not a record but {type(reply).__name__}")
        return
    if "refused" in reply:
        raise WorkerRefused(str(reply["refused"]))
    if "record" in reply:
        session.finish(job, reply["record"])
    else:
        session.fail(job, str(reply.get("error", "the worker returned nothing")))


def set_worker_threads(threads: int | None) -> None:
    """CPU threads for this worker's torch: executors running several workers on one machine divide its cores,
    or every worker's thread pool would fight for all of them (measured here: several times slower)."""
    if threads:
        torch.set_num_threads(int(threads))


def partition(jobs: Sequence[TrialJob], workers: int) -> list[list[TrialJob]]:
    """Jobs in batches for ``workers`` parallel workers: one batch per dataset × backbone group (a worker keeps
    that group's data and features warm), and where there are fewer groups than workers, the largest batches are
    halved (keeping neighbours together: seeds of one configuration share cached features) until every worker
    has one or no batch can be split."""
    batches: dict[tuple[str, str, str], list[TrialJob]] = {}
    for job in jobs:
        batches.setdefault(job.group, []).append(job)
    result = list(batches.values())
    while len(result) < workers:
        largest = max(range(len(result)), key=lambda i: len(result[i]), default=None)
        if largest is None or len(result[largest]) < 2:
            break
        batch = result.pop(largest)
        middle = (len(batch) + 1) // 2
        result[largest:largest] = [batch[:middle], batch[middle:]]
    return result


DRIVER_PID_ENV = "TLBENCH_DRIVER_PID"  # set for worker processes that must not outlive the driver that started them


def watch_driver(driver_pid: int | None = None, interval_s: float = 1.0) -> threading.Thread | None:
    """In a worker process the driver started on this machine (a ``process`` executor child, a local Slurm task):
    end this process as soon as the driver is gone, however it ended (``kill -9`` included), instead of training to
    the end of a trial nobody will record. A daemon thread checks once per ``interval_s`` that this process still
    has the parent it started with and that ``driver_pid`` (default: ``$TLBENCH_DRIVER_PID``) is alive; when not,
    the process exits at once (also when the driver is already gone). Returns the thread, or None when there is no
    driver to watch."""
    if driver_pid is None:
        try:
            driver_pid = int(os.environ.get(DRIVER_PID_ENV, ""))
        except ValueError:
            return None
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent and process_alive(driver_pid):
            time.sleep(interval_s)
        os._exit(143)  # the driver is gone: stop now (nothing of this trial would be recorded)

    thread = threading.Thread(target=watch, name="tlbench-watch-driver", daemon=True)
    thread.start()
    return thread


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
