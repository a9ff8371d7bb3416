"""The ``slurm`` executor (extra ``tlbench[slurm]``): trials as Slurm job arrays through submitit.

One job array per dataset × backbone group, one array task per trial, at most ``executor.array_parallelism`` of an
array running at once; partition, time limit, GPUs, CPUs and memory are options. The driver claims the trials it
submits, waits for the tasks and writes their records; submitit carries jobs and results through
``executor.folder``, which must be on a filesystem the driver and the compute nodes share (submitit's own
requirement). ``executor.cluster=local`` runs the same arrays as local processes (how the tests run it);
``debug`` runs them in the driver.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

from tlbench import Extra, hookimpl
from tlbench.errors import first_line
from tlbench.jobs import finish_from_reply, partition, run_job_reply, set_worker_threads, watch_driver
from tlbench.types import UsageError


def run_task(job: dict[str, Any], threads: int | None, driver_pid: int | None = None) -> dict[str, Any]:
    """One array task: a tlbench worker that runs one trial job and returns the reply to the driver. A local task
    (``cluster=local``, a child of the driver) ends itself when the driver is gone."""
    if driver_pid is not None:
        watch_driver(driver_pid)
    set_worker_threads(threads)
    return run_job_reply(job)


def _cancel(handle: Any) -> None:
    """Cancel a submitted task. A local one (``cluster=local``) is run by a submitit controller process, which
    ``cancel`` interrupts with SIGINT and which then prints a KeyboardInterrupt traceback into the driver's output:
    it is killed instead, and its task, which watches its parent (:func:`tlbench.jobs.watch_driver`), ends with it."""
    process = getattr(handle, "_process", None)  # submitit's local controller (a private attribute of LocalJob)
    if process is not None and hasattr(process, "kill"):
        process.kill()
    else:
        handle.cancel(check=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_folder(folder: Any) -> None:
    """``executor.folder`` must be a path whose fixed part (before the first ``%`` placeholder) is a directory or
    can be created as one: submitit creates it when it submits, after the grid has started."""
    if not isinstance(folder, str) or not folder.strip():
        raise UsageError(f"executor.folder must be a path (submitit's %j placeholders allowed), got {folder!r}")
    fixed = Path(folder.split("%", 1)[0] or ".").expanduser()
    if "%" in folder and not folder.split("%", 1)[0].endswith(("/", os.sep)):
        fixed = fixed.parent  # "runs/job-%j": the folder that will hold it is runs/
    target = fixed
    while not target.exists() and target != target.parent:
        target = target.parent
    problem = None
    if not target.is_dir():
        problem = f"{str(target)!r} is a file, not a directory"
    elif not os.access(target, os.W_OK | os.X_OK):
        problem = f"{str(target)!r} is not writable"
    if problem:
        raise UsageError(f"executor.folder {folder!r} cannot be created: {problem}; choose another with "
                         f"--set executor.folder=PATH (on a filesystem the compute nodes share)")


class SlurmExecutor:
    name = "slurm"
    description = ("trials as Slurm job arrays through submitit, one array per dataset x backbone group (extra "
                   "tlbench[slurm])")
    requires = {"submitit": Extra("slurm", "the slurm executor submits through submitit")}
    options: dict[str, Any] = {"folder": "tlbench-slurm/%j", "cluster": None, "partition": None, "time_min": 120,
                               "gpus_per_node": None, "cpus_per_task": None, "mem_gb": None,
                               "array_parallelism": 16, "account": None, "qos": None, "poll_s": 1.0}

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        """Every option, before the grid starts (nothing is submitted or written): one line naming the bad one."""
        if options.get("cluster") not in (None, "slurm", "local", "debug"):
            raise UsageError(f"executor.cluster must be slurm, local or debug, got {options['cluster']!r}")
        for key in ("time_min", "array_parallelism"):
            if not _is_int(options.get(key)) or options[key] < 1:
                raise UsageError(f"executor.{key} must be an integer >= 1, got {options.get(key)!r}")
        for key, low in (("cpus_per_task", 1), ("gpus_per_node", 0)):
            value = options.get(key)
            if value is not None and (not _is_int(value) or value < low):
                raise UsageError(f"executor.{key} must be an integer >= {low} or none, got {value!r}")
        mem = options.get("mem_gb")
        if mem is not None and (not _is_number(mem) or not 0 < mem < 1e6):
            raise UsageError(f"executor.mem_gb must be a number of GB above 0 or none, got {mem!r}")
        poll = options.get("poll_s")
        if not _is_number(poll) or not 0 < poll <= 3600:
            raise UsageError(f"executor.poll_s must be a number of seconds in (0, 3600], got {poll!r}")
        for key in ("partition", "account", "qos"):
            value = options.get(key)
            if value is not None and (not isinstance(value, str) or not value or any(
                    c.isspace() or not c.isprintable() for c in value)):
                raise UsageError(f"executor.{key} must be a Slurm name (no spaces or control characters) or none, "
                                 f"got {value!r}")
        check_folder(options.get("folder"))

    def execute(self, jobs: Sequence[Any], session: Any) -> None:
        import submitit  # deferred: optional (the slurm extra)

        options = session.options
        # torch threads per task: the CPUs Slurm gives it; local tasks all run at once, so one each
        threads = options.get("cpus_per_task") or (1 if options.get("cluster") in ("local", "debug") else None)
        executor = submitit.AutoExecutor(folder=options["folder"], cluster=options.get("cluster"))
        # local tasks are this process's children: they end themselves when it is gone (kill -9 included)
        driver_pid = os.getpid() if options.get("cluster") == "local" else None
        parameters: dict[str, Any] = {"timeout_min": options["time_min"], "name": "tlbench",
                                      "slurm_array_parallelism": options["array_parallelism"]}
        for key, name in (("partition", "slurm_partition"), ("gpus_per_node", "gpus_per_node"),
                          ("cpus_per_task", "cpus_per_task"), ("mem_gb", "mem_gb"),
                          ("account", "slurm_account"), ("qos", "slurm_qos")):
            if options.get(key) is not None:
                parameters[name] = options[key]
        executor.update_parameters(**parameters)
        submitted: list[tuple[Any, Any, float]] = []
        try:
            for batch in partition(jobs, 1):  # one array per dataset x backbone group
                claimed = [job for job in batch if not session.stopping and session.claim(job)]
                if not claimed:
                    continue
                with executor.batch():
                    handles = [executor.submit(run_task, job.to_json_dict(), threads, driver_pid)
                               for job in claimed]
                submitted += [(job, handle, time.perf_counter()) for job, handle in zip(claimed, handles)]
            while submitted:
                still = []
                for job, handle, t0 in submitted:
                    if not handle.done():
                        still.append((job, handle, t0))
                        continue
                    try:
                        reply = handle.result()
                    except Exception as exc:  # the task failed outside the trial: node lost, timeout, killed
                        first = first_line(exc)
                        session.fail(job, f"trial lost: Slurm task {handle.job_id} failed ({first})",
                                     time.perf_counter() - t0)
                        continue
                    if "record" in reply:
                        reply["record"].setdefault("executor", {})["slurm_job_id"] = str(handle.job_id)
                    finish_from_reply(session, job, reply)
                submitted = still
                if submitted:
                    time.sleep(float(options.get("poll_s") or 1.0))
        except BaseException:  # Ctrl-C, or the driver cannot go on: cancel what is queued or running
            session.stopping = True
            for job, handle, _ in submitted:
                try:
                    _cancel(handle)
                except Exception:
                    pass
                session.release(job)
            raise


@hookimpl
def register_executors(register):
    register(SlurmExecutor())
