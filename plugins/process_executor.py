"""The ``process`` executor: trials in fresh Python processes, N at a time, one dataset × backbone group per process.

Each group goes to a new child process, which keeps its decoded data and frozen features warm for the group's
trials. A child that segfaults, aborts, is OOM-killed or gets a signal turns the trial it was running into a failed
record with the reason, and a fresh child takes the group's remaining trials: the grid goes on. Memory is measured
in the child, against its own resident set after imports, so the leaderboard's CPU memory column means something.

The child speaks JSON lines: a job on its stdin, ``{"record": ...}`` (or a refusal) on its stdout; anything the
trial prints goes to stderr with the progress lines.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

import torch

from tlbench import hookimpl
from tlbench.files import Refused, parse_json
from tlbench.jobs import DRIVER_PID_ENV, finish_from_reply, partition, run_job_reply, set_worker_threads, watch_driver
from tlbench.types import UsageError

READY = "tlbench-worker-ready"


def describe_exit(returncode: int | None) -> str:
    """Why a child process ended, in words."""
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        why = {"SIGKILL": " (the kernel's out-of-memory killer sends this when memory runs out)",
               "SIGSEGV": " (a segmentation fault)", "SIGABRT": " (the process aborted)",
               "SIGBUS": " (a bus error)"}.get(name, "")
        return f"was killed by {name}{why}"
    return f"exited with status {returncode}"


class ProcessExecutor:
    name = "process"
    description = ("each dataset x backbone group in a fresh Python process, N at a time (--workers); a crashed "
                   "process fails only the trial it was running")
    same_machine = True  # the driver checks the device: its children run on this machine
    options: dict[str, Any] = {"workers": None, "threads_per_worker": None}

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        for key in ("workers", "threads_per_worker"):
            value = options.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise UsageError(f"executor.{key} must be an integer, got {value!r}")
            if value is not None and value < 1:
                raise UsageError(f"executor.{key} must be >= 1, got {value}")
        threads, cores = options.get("threads_per_worker"), os.cpu_count() or 1
        if threads is not None and threads > cores:
            raise UsageError(f"executor.threads_per_worker={threads} is more than the {cores} logical core(s) of "
                             f"this machine; use at most {cores} (or leave it out: the cores are divided among the "
                             f"workers)")

    def execute(self, jobs: Sequence[Any], session: Any) -> None:
        gpus = _visible_gpus(jobs[0].device if jobs else None)
        workers = session.options.get("workers") or max(1, len(gpus))
        # two batches per worker where groups allow, taken from a queue: a worker done early takes the next batch
        # (load balance), and its child stays alive for the next batch of the same group (data kept warm)
        batches = partition(jobs, 2 * workers if workers > 1 else 1)
        workers = min(workers, len(batches)) or 1
        threads = session.options.get("threads_per_worker") or (
            None if gpus else max(1, (os.cpu_count() or 1) // workers))
        todo: "queue.Queue[list[Any]]" = queue.Queue()
        for batch in batches:
            todo.put(batch)
        children: dict[int, subprocess.Popen] = {}
        errors: list[BaseException] = []

        def slot(index: int) -> None:
            gpu = gpus[index % len(gpus)] if gpus else None
            worker = _Slot(index, gpu, threads, children,
                           {"workers": workers, "threads_per_worker": threads, "gpu": gpu})
            try:
                while not session.stopping:
                    try:
                        batch = todo.get_nowait()
                    except queue.Empty:
                        return
                    worker.run_batch(batch, session)
            except BaseException as exc:  # GridAborted, WorkerRefused: stop everything, report in the driver
                session.stopping = True
                errors.append(exc)
            finally:
                worker.close()

        pool = [threading.Thread(target=slot, args=(i,), name=f"tlbench-process-{i}", daemon=True)
                for i in range(workers)]
        for thread in pool:
            thread.start()
        try:
            while any(thread.is_alive() for thread in pool):
                for thread in pool:
                    thread.join(timeout=0.2)
        except BaseException:  # Ctrl-C / SIGTERM in the driver: stop the children, keep every finished record
            session.stopping = True
            for child in list(children.values()):
                _stop(child)
            for thread in pool:
                thread.join(timeout=30)
            raise
        if errors:
            raise errors[0]


def _visible_gpus(device: str | None) -> list[str]:
    """GPU ids to give one per child when trials run on CUDA without a fixed index; none on CPU."""
    if device not in (None, "cuda"):
        return []

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [i.strip() for i in visible.split(",") if i.strip()] if visible else []
    return ids or [str(i) for i in range(torch.cuda.device_count())]


def _start_child(gpu: str | None, threads: int | None) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ)
    # the child sees the modules the driver sees (plugins installed on a path added at run time included)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads:
        env["TLBENCH_WORKER_THREADS"] = str(threads)
        env.setdefault("OMP_NUM_THREADS", str(threads))
    env[DRIVER_PID_ENV] = str(os.getpid())  # the child ends itself when this driver is gone (even after kill -9)
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "tlbench.plugins.process_executor"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env, text=True, bufsize=1,
                             start_new_session=False)
    ready = child.stdout.readline()
    if ready.strip() != READY:
        code = child.wait()
        raise RuntimeError(f"a worker process could not start: it {describe_exit(code)}")
    return child, time.perf_counter() - started


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


class _Slot:
    """One worker slot: its current child process and the dataset x backbone group that child has warm."""

    def __init__(self, index: int, gpu: str | None, threads: int | None, children: dict[int, subprocess.Popen],
                 resolved: dict[str, Any]):
        self.index, self.gpu, self.threads, self.children, self.resolved = index, gpu, threads, children, resolved
        self.child: subprocess.Popen | None = None
        self.group: Any = None
        self.startup_s = 0.0

    def close(self) -> None:
        if self.child is not None:
            self.child.stdin.close()
            try:
                self.child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.child.kill()
        self.child = None

    def run_batch(self, batch: list[Any], session: Any) -> None:
        if batch and batch[0].group != self.group:  # another dataset x backbone: a fresh process
            self.close()
            self.group = batch[0].group
        for job in batch:
            if session.stopping or not session.claim(job):
                continue
            started = time.perf_counter()
            try:
                if self.child is None:
                    self.child, self.startup_s = _start_child(self.gpu, self.threads)
                    self.children[self.index] = self.child
                self.child.stdin.write(json.dumps(job.to_json_dict()) + "\n")
                self.child.stdin.flush()
                line = self.child.stdout.readline()
            except (BrokenPipeError, RuntimeError) as exc:
                line, problem = "", str(exc)
            else:
                problem = ""
            reply = _parse_reply(line) if line else None
            if reply is None:  # the child died mid-trial or mid-reply: that trial failed, a fresh child takes the rest
                if session.stopping:
                    session.release(job)
                    return
                child, self.child = self.child, None
                if child is not None and line:  # a reply cut short or garbled: this child cannot be trusted
                    _stop(child)
                reason = problem or f"its worker process {describe_exit(child.wait() if child else None)}"
                if line:
                    reason += (f" while writing its reply ({len(line)} characters, "
                               f"{'not a whole JSON object' if line.endswith(chr(10)) else 'cut short'})")
                session.fail(job, f"trial lost: {reason}", time.perf_counter() - started)
                continue
            if "record" in reply:
                section = reply["record"].setdefault("executor", {})
                section["worker_startup_s"] = round(self.startup_s, 3)
                section["resolved"] = self.resolved  # what "auto" options became
                self.startup_s = 0.0  # only the first trial of a child pays its start-up
            finish_from_reply(session, job, reply)


def _parse_reply(line: str) -> Any:
    """A child's reply line as data, or None when it is not a whole JSON object (the child died while writing it,
    or wrote something else): within the limits every reader keeps (:func:`tlbench.files.parse_json`)."""
    if not line.endswith("\n"):
        return None
    try:
        reply = parse_json(line)
    except Refused:
        return None
    return reply if isinstance(reply, dict) else None


def child_main() -> None:
    """A worker process: JSON jobs on stdin, one JSON reply per job on the original stdout. It ends itself when
    the driver that started it is gone (:func:`tlbench.jobs.watch_driver`)."""
    watch_driver()
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the trial prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr

    set_worker_threads(int(os.environ.get("TLBENCH_WORKER_THREADS", "0")) or None)
    protocol.write(READY + "\n")
    for line in sys.stdin:
        if line.strip():
            protocol.write(json.dumps(run_job_reply(json.loads(line)), default=str) + "\n")


@hookimpl
def register_executors(register):
    register(ProcessExecutor())


if __name__ == "__main__":
    child_main()
