"""The built-in executor: trials one after another in this process, in the order given (dataset, then backbone),
so decoded data and frozen features stay on the device between trials."""
from __future__ import annotations

from typing import Any, Sequence

from tlbench import hookimpl


class LocalExecutor:
    name = "local"
    description = "run trials sequentially in this process on its device (CUDA if available, else CPU)"
    in_process = True  # shares the driver's warm data, features and pre-run check
    options: dict[str, Any] = {}

    def execute(self, jobs: Sequence[Any], session: Any) -> None:
        for job in jobs:
            if session.stopping:
                break
            session.run_here(job)


@hookimpl
def register_executors(register):
    register(LocalExecutor())
