"""The ``slurm`` executor (extra ``tlbench[slurm]``): trials as Slurm job arrays through submitit.

One job array per dataset × backbone group, one array task per trial, at most ``executor.array_parallelism`` of an
array running at once; partition, time limit, GPUs, CPUs and memory are options. The driver claims the trials it
submits, waits for the tasks and writes their records; submitit carries jobs and results through
``executor.folder``, which must be on a filesystem the driver and the compute nodes share (submitit's own
requirement). ``executor.cluster=local`` runs the same arrays as local processes (how the tests run it);
``debug`` runs them in the driver.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from tlbench import Extra, hookimpl
from tlbench.errors import first_line
from tlbench.jobs import finish_from_reply, partition, run_job_reply, set_worker_threads
from tlbench.types import UsageError


def run_task(job: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """One array task: a tlbench worker that runs one trial job and returns the reply to the driver."""
    set_worker_threads(threads)
    return run_job_reply(job)


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
        if options.get("cluster") not in (None, "slurm", "local", "debug"):
            raise UsageError(f"executor.cluster must be slurm, local or debug, got {options['cluster']!r}")
        for key in ("time_min", "array_parallelism"):
            if not isinstance(options.get(key), int) or options[key] < 1:
                raise UsageError(f"executor.{key} must be an integer >= 1, got {options.get(key)!r}")

    def execute(self, jobs: Sequence[Any], session: Any) -> None:
        import submitit  # deferred: optional (the slurm extra)

        options = session.options
        # torch threads per task: the CPUs Slurm gives it; local tasks all run at once, so one each
        threads = options.get("cpus_per_task") or (1 if options.get("cluster") in ("local", "debug") else None)
        executor = submitit.AutoExecutor(folder=options["folder"], cluster=options.get("cluster"))
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
                    handles = [executor.submit(run_task, job.to_json_dict(), threads) for job in claimed]
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
                    handle.cancel(check=False)
                except Exception:
                    pass
                session.release(job)
            raise


@hookimpl
def register_executors(register):
    register(SlurmExecutor())
