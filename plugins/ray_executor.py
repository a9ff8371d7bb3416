"""The ``ray`` executor (extra ``tlbench[ray]``): trials on a Ray cluster, one long-lived actor per slot.

It joins a running cluster (``executor.address``, else ``$RAY_ADDRESS``, else ``auto`` when one runs on this
machine) or starts a local one. Each actor keeps its decoded data and frozen features across the trials it gets;
trials go out grouped by dataset × backbone. Records come back to the driver, which alone writes them, so the
workers need no shared filesystem (only the dataset cache and weights files they read). An actor that dies
mid-trial (node lost, OOM, killed) costs one retry of that trial on a fresh actor; a second death records the trial
as failed. Ctrl-C cancels the running trials and keeps every finished record.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Sequence

from tlbench import Extra, hookimpl
from tlbench.errors import first_line
from tlbench.interrupts import deferred_sigterm, keep_sigterm
from tlbench.jobs import finish_from_reply, partition, run_job_reply, set_worker_threads
from tlbench.types import UsageError


class TrialActor:
    """One Ray actor: a tlbench worker process that runs the jobs it is sent, data and features kept warm."""

    def __init__(self, threads: int | None):
        set_worker_threads(threads)

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        return run_job_reply(job)

    def pid(self) -> int:
        return os.getpid()


class RayExecutor:
    name = "ray"
    description = ("trials on a Ray cluster (joins RAY_ADDRESS / executor.address or starts a local one), one "
                   "actor per slot keeping data warm (extra tlbench[ray])")
    requires = {"ray": Extra("ray", "the ray executor runs trials on a Ray cluster")}
    options: dict[str, Any] = {"address": None, "workers": None, "num_cpus": 1, "num_gpus": None, "retries": 1,
                               "connect_timeout_s": 10.0}

    def __init__(self) -> None:
        self._started_here = False  # check_ready started (or joined) Ray for the execute that follows

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        workers = options.get("workers")
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise UsageError(f"executor.workers must be an integer >= 1, got {workers!r}")
        for key, low in (("num_cpus", 0), ("num_gpus", 0)):
            value = options.get(key)
            if value is None and key == "num_gpus":
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                    value > low if key == "num_cpus" else value >= low) or value != value or value == float("inf"):
                raise UsageError(f"executor.{key} must be a finite number {'>' if key == 'num_cpus' else '>='} "
                                 f"{low}, got {value!r}")
        address = options.get("address")
        if address is not None and (not isinstance(address, str) or (address not in ("auto", "local")
                                                                     and _host_port(address) is None)):
            raise UsageError(f"executor.address must be a Ray address such as auto, HOST:6379 or ray://HOST:10001, "
                             f"got {address!r}")
        if not isinstance(options.get("retries"), int) or options["retries"] < 0:
            raise UsageError(f"executor.retries must be an integer >= 0, got {options.get('retries')}")
        timeout = options.get("connect_timeout_s")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 600:
            raise UsageError(f"executor.connect_timeout_s must be a number of seconds in (0, 600], got {timeout!r}")

    def check_ready(self, options: dict[str, Any], device: str | None) -> None:
        """Before the grid starts: the cluster answers (a TCP connection to the address, within
        ``connect_timeout_s``), Ray joins or starts it, and one of its nodes has the CPUs and GPUs an actor asks
        for; else one line (a UsageError) and nothing is written. Ray stays up for :meth:`execute`."""
        with deferred_sigterm() as sigterm:  # as in execute: never raise from the handler inside Ray's calls
            self._check_ready(options)
            sigterm.check()

    def _check_ready(self, options: dict[str, Any]) -> None:
        import ray  # deferred: optional (the ray extra)

        address = options.get("address") or os.environ.get("RAY_ADDRESS") or None
        timeout = float(options["connect_timeout_s"])
        where = "executor.address" if options.get("address") else "$RAY_ADDRESS"
        if address is not None and address not in ("auto", "local"):
            target = _host_port(address)
            if target is None:
                raise UsageError(f"{where} {address!r} is not a Ray address such as HOST:6379 or ray://HOST:10001")
            try:
                socket.create_connection(target, timeout=timeout).close()
            except OSError as exc:
                reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
                raise UsageError(f"{where} {address}: no Ray cluster answers at {target[0]}:{target[1]} ({reason}, "
                                 f"waited up to {timeout:g} s); start one with `ray start --head`, fix the address, "
                                 f"or leave it out to start a local cluster") from None
        held = _HeldLogs("ray._private")  # Ray's notices about a cluster that is refused (and stopped) are not shown
        if not ray.is_initialized():
            try:
                with keep_sigterm():  # ray.init's own SIGTERM handler would end the driver without a summary
                    ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
            except Exception as exc:
                held.discard()
                raise UsageError(f"Ray could not {'join ' + address if address else 'start a local cluster'}: "
                                 f"{first_line(exc)}") from None
            self._started_here = True
        try:
            nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
            most_cpus = max((node.get("CPU", 0) for node in nodes), default=0)
            most_gpus = max((node.get("GPU", 0) for node in nodes), default=0)
            num_cpus, num_gpus = options["num_cpus"], options.get("num_gpus") or 0
            if num_cpus > most_cpus:
                raise UsageError(f"executor.num_cpus={num_cpus:g}: no node of the Ray cluster has that many CPUs (the "
                                 f"largest has {most_cpus:g}); an actor could never start: lower executor.num_cpus")
            if num_gpus > most_gpus:
                has = f"the largest node has {most_gpus:g}" if most_gpus else "the cluster has no GPU"
                raise UsageError(f"executor.num_gpus={num_gpus:g}: no node of the Ray cluster has that many GPUs "
                                 f"({has}); an actor could never start: lower executor.num_gpus or leave it out")
        except BaseException:
            held.discard()
            self.shutdown()
            raise
        held.hand_on()

    def shutdown(self) -> None:
        """Stop the Ray that :meth:`check_ready` or :meth:`execute` started (a joined cluster keeps running)."""
        import ray  # deferred: optional (the ray extra)

        if self._started_here:
            self._started_here = False
            ray.shutdown()

    def execute(self, jobs: Sequence[Any], session: Any) -> None:
        # SIGTERM raised from the handler inside one of Ray's calls (ray.wait checks for signals) comes out as
        # Ray's own SystemError traceback: it is noted, and raised between calls as GridInterrupted
        with deferred_sigterm() as sigterm:
            self._execute(jobs, session, sigterm)
            sigterm.check()

    def _execute(self, jobs: Sequence[Any], session: Any, sigterm: deferred_sigterm) -> None:
        import ray  # deferred: optional (the ray extra)

        options = session.options
        init_started = time.perf_counter()
        if not ray.is_initialized():  # a library caller that skipped check_ready
            address = options.get("address") or os.environ.get("RAY_ADDRESS") or None
            with keep_sigterm():  # ray.init's own SIGTERM handler would end the driver without a summary
                ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
            self._started_here = True
        ray_init_s = time.perf_counter() - init_started
        resources = ray.cluster_resources()
        num_gpus = options.get("num_gpus")
        if num_gpus is None:
            num_gpus = 1 if resources.get("GPU", 0) >= 1 and jobs and jobs[0].device != "cpu" else 0
        num_cpus = options["num_cpus"]
        slots = options.get("workers") or max(1, int(resources.get("GPU", 0) // num_gpus if num_gpus else
                                                      resources.get("CPU", 1) // num_cpus))
        # two batches per actor where groups allow: an actor done early takes the next one (load balance)
        batches = partition(jobs, 2 * slots if slots > 1 else 1)
        slots = min(slots, len(batches)) or 1
        threads = None if num_gpus else max(1, int(num_cpus))
        actor_class = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(TrialActor)

        def new_actor() -> Any:
            return actor_class.remote(threads)

        actors = [new_actor() for _ in range(slots)]
        first_reply = [True]  # the grid's first record carries the cluster start-up time
        queue = list(batches)
        running: dict[Any, tuple[int, Any, list[Any], int, float]] = {}  # ref -> (slot, job, rest, attempt, t0)

        def dispatch(slot: int, batch: list[Any], attempt: int = 1) -> bool:
            while batch and not session.stopping:
                job, rest = batch[0], batch[1:]
                if attempt > 1 or session.claim(job):
                    ref = actors[slot].run.remote(job.to_json_dict())
                    running[ref] = (slot, job, rest, attempt, time.perf_counter())
                    return True
                batch = rest
            return False

        try:
            sigterm.check()
            for slot in range(slots):
                while queue and not dispatch(slot, queue.pop(0)):
                    pass
            while running:
                done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                sigterm.check()
                for ref in done:
                    slot, job, rest, attempt, t0 = running.pop(ref)
                    try:
                        reply = ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                        ray.kill(actors[slot], no_restart=True)
                        actors[slot] = new_actor()  # Ray places it wherever the cluster has room
                        if attempt <= options["retries"] and not session.stopping:
                            dispatch(slot, [job, *rest], attempt + 1)
                            continue
                        reason = first_line(exc)
                        session.fail(job, f"trial lost: its Ray actor died {attempt} time(s) ({reason})",
                                     time.perf_counter() - t0)
                    else:
                        if "record" in reply:
                            section = reply["record"].setdefault("executor", {})
                            section["attempt"] = attempt
                            # round trip minus the trial itself: scheduling, and for an actor's first trial its
                            # process start and imports
                            wall = reply["record"].get("metrics", {}).get("wall_s") or 0.0
                            section["dispatch_overhead_s"] = round(time.perf_counter() - t0 - wall, 3)
                            if first_reply:
                                section["ray_init_s"] = round(ray_init_s, 3)
                                first_reply.clear()
                            section["resolved"] = {"workers": slots, "num_cpus": num_cpus, "num_gpus": num_gpus,
                                                   "threads_per_worker": threads}
                        finish_from_reply(session, job, reply)
                    if not dispatch(slot, rest):
                        while queue and not dispatch(slot, queue.pop(0)):
                            pass
            sigterm.check()  # noted after the last wait
        except BaseException:
            session.stopping = True
            for ref in list(running):  # a running actor task stops when its actor is killed (below)
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
            for _, job, _, _, _ in running.values():
                session.release(job)
            raise
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            self.shutdown()


class _HeldLogs(logging.Handler):
    """Holds what a logger (and its children) logs, its own handlers set aside, until :meth:`hand_on` gives it to
    them as it would have gone, or :meth:`discard` drops it: a refusal is one line, not Ray's notices about the
    cluster it then stops."""

    def __init__(self, name: str):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)
        self.saved = (list(self.logger.handlers), self.logger.propagate)
        for handler in self.saved[0]:
            self.logger.removeHandler(handler)
        self.logger.addHandler(self)
        self.logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def discard(self) -> None:  # (not "release": logging.Handler's lock methods are acquire/release)
        if self in self.logger.handlers:
            self.logger.removeHandler(self)
            for handler in self.saved[0]:
                self.logger.addHandler(handler)
            self.logger.propagate = self.saved[1]
        self.records.clear()

    def hand_on(self) -> None:
        records, self.records = self.records, []
        self.discard()
        for record in records:
            self.logger.handle(record)


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT``, ``ray://HOST:PORT`` or ``http://HOST:PORT`` (IPv6 in brackets), or None."""
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


@hookimpl
def register_executors(register):
    register(RayExecutor())
