"""An executor plugin: trials in a pool of worker processes (concurrent.futures), `workers` at a time.

Jobs are plain data; a worker process runs one with tlbench.jobs.run_job_reply and sends back the record as data.
Only the driver, through `session`, claims trials and writes records."""
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from tlbench import UsageError, hookimpl
from tlbench.jobs import finish_from_reply, run_job_reply, set_worker_threads


class PoolExecutor:
    name = "pool"
    description = "trials in a pool of worker processes (concurrent.futures), executor.workers at a time"
    same_machine = True  # the workers share the driver's machine: the driver checks the device before running
    options = {"workers": 2, "threads_per_worker": 1}  # --set executor.workers=4; recorded with each trial

    @staticmethod
    def check_options(options):
        for key in ("workers", "threads_per_worker"):
            if not isinstance(options[key], int) or options[key] < 1:
                raise UsageError(f"executor.{key} must be an integer >= 1, got {options[key]!r}")

    def _pool(self, options):
        return ProcessPoolExecutor(options["workers"], mp_context=multiprocessing.get_context("spawn"),
                                   initializer=set_worker_threads, initargs=(options["threads_per_worker"],))

    def execute(self, jobs, session):
        todo, running = list(jobs), {}  # running: future -> job
        pool = self._pool(session.options)
        try:
            while todo or running:
                while todo and len(running) < session.options["workers"] and not session.stopping:
                    job = todo.pop(0)
                    if session.claim(job):  # False: finished meanwhile or running in another process
                        running[pool.submit(run_job_reply, job.to_json_dict())] = job
                if not running:
                    break  # stopping, or every remaining job was skipped
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                if any(isinstance(future.exception(), BrokenProcessPool) for future in done):
                    # a worker died (segfault, OOM kill): the pool fails every trial it holds; a new pool goes on
                    for future in list(running):
                        session.fail(running.pop(future), "trial lost: a worker process of the pool died")
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._pool(session.options)
                    continue
                for future in done:
                    finish_from_reply(session, running[future], future.result())  # a refusal: WorkerRefused
                    del running[future]
        except BaseException:  # Ctrl-C, a refusal, a full disk: give back what was claimed but not finished
            session.stopping = True
            for job in running.values():
                session.release(job)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@hookimpl
def register_executors(register):
    register(PoolExecutor())
