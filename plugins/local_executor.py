"""The built-in executor: trials one after another in this process, in the order given (dataset, then backbone),
so decoded data and frozen features stay on the device between trials."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from tlbench import hookimpl


class LocalExecutor:
    name = "local"
    description = "run trials sequentially in this process on its device (CUDA if available, else CPU)"

    def execute(self, trials: Sequence[Any], run_trial: Callable[[Any], Any]) -> None:
        for trial in trials:
            run_trial(trial)


@hookimpl
def register_executors(register):
    register(LocalExecutor())
