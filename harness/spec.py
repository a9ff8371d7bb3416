"""What one run asks for, as one typed object: :class:`RunSpec` is built once — by ``tlbench run`` from its options,
or by a library caller — and passed down to :func:`tlbench.run_grid` / :func:`tlbench.tune_grid`, which read it and
never parse a setting again. ``--set`` strings are parsed here, once; the ``executor.<option>`` and ``save_models``
keys are taken out of the trial settings here, once (they say how and where trials run, not what a trial is).
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from tlbench.plan import check_seeds, parse_overrides, parse_value
from tlbench.progress import PROGRESS_MODES
from tlbench.types import UsageError

REDO = ("none", "failed", "all")  # which trials that have a record run again: --retry-failed, --force
SAVE_MODELS = ("none", "best", "all")
DEFAULT_BUDGET = 4


def _names(value: Iterable[str] | str, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    names = tuple(value)
    if not all(isinstance(name, str) and name for name in names):
        raise UsageError(f"{what} must be non-empty names, got {names!r}")
    return tuple(dict.fromkeys(names))  # in order, each once


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RunSpec:
    """One run: which trials (names, seeds, settings), how they run (executor and its options, device, progress),
    and where results go (results folder, which records run again, which trained weights are kept).

    ``strategies`` empty means every registered strategy that can run here; ``backbones`` / ``datasets`` empty mean
    the defaults (with ``suite``: every task of that suite, or the tasks ``datasets`` names). ``settings``:
    ``--set`` strings (``["epochs=2", "full.lr=3e-4", "data.train_size=500"]``) or the
    same as a mapping; ``executor.<option>`` keys move to ``executor_options`` and ``save_models`` to its field, so
    after construction ``settings`` holds only what defines trials. ``redo``: "none" (skip trials with a record),
    "failed" (``--retry-failed``) or "all" (``--force``). ``save_models``: "none" (the library default), "best" or
    "all" (``tlbench run --save-models``). ``command``: how to resume, shown when a run stops (default: this
    process's command line). Bad input raises :class:`UsageError` when the spec is built.
    """

    strategies: tuple[str, ...] = ()
    backbones: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    seeds: int = 1
    first_seed: int = 0
    settings: Mapping[str, Any] = field(default_factory=dict)
    executor: str = "local"
    executor_options: Mapping[str, Any] = field(default_factory=dict)
    results_dir: Path | None = None
    device: str | None = None
    progress: str = "auto"
    redo: str = "none"
    save_models: str = "none"
    command: str | None = None
    suite: str | None = None  # run a registered suite's tasks (``--suite``); ``datasets`` then picks among them

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen: normalise once)
        set_("strategies", _names(self.strategies, "strategies"))
        set_("backbones", _names(self.backbones, "backbones"))
        set_("datasets", _names(self.datasets, "datasets"))
        if not (_is_int(self.seeds) and _is_int(self.first_seed)):
            raise UsageError(f"seeds must be integers, got --seed {self.first_seed!r} with --seeds {self.seeds!r}")
        check_seeds(self.first_seed, self.seeds)
        if not isinstance(self.executor, str) or not self.executor:
            raise UsageError(f"executor must be a name (see `tlbench list executors`), got {self.executor!r}")
        if self.suite is not None and (not isinstance(self.suite, str) or not self.suite):
            raise UsageError(f"suite must be a name (see `tlbench list suites`), got {self.suite!r}")
        if self.progress not in PROGRESS_MODES:
            raise UsageError(f"progress must be one of {', '.join(PROGRESS_MODES)}, got {self.progress!r}")
        if self.redo not in REDO:
            raise UsageError(f"redo must be one of {', '.join(REDO)}, got {self.redo!r}")
        settings = self.settings
        if isinstance(settings, str):
            settings = [settings]
        settings = dict(settings) if isinstance(settings, Mapping) else parse_overrides(list(settings or ()))
        options = dict(self.executor_options or {})
        for key in [k for k in settings if k.split(".", 1)[0] == "executor"]:
            option = key.split(".", 1)[1] if "." in key else ""
            if not option:
                raise UsageError(f"--set {key}=... names no executor option; use executor.<option>=VALUE")
            options[option] = settings.pop(key)
        save_models = settings.pop("save_models", self.save_models)
        if save_models not in SAVE_MODELS:
            raise UsageError(f"save_models must be one of {', '.join(SAVE_MODELS)}, got {save_models!r}; "
                             f"use --save-models {'|'.join(SAVE_MODELS)}")
        set_("settings", settings)
        set_("executor_options", options)
        set_("save_models", save_models)
        if self.results_dir is not None:
            set_("results_dir", Path(self.results_dir))
        if self.command is None:
            set_("command", command_line())

    @property
    def seed_range(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    def arguments(self) -> list[str]:
        """The ``tlbench run`` arguments that ask for this spec (``tlbench rerun --print-only`` prints them); the
        inverse of how the CLI builds a spec, checked by the tests."""
        args = ["run"] + (["--suite", self.suite] if self.suite else [])
        for flag, names in (("-s", self.strategies), ("-b", self.backbones), ("-d", self.datasets)):
            for name in names:
                args += [flag, name]
        args += ["--seed", str(self.first_seed)] + (["--seeds", str(self.seeds)] if self.seeds != 1 else [])
        if self.results_dir is not None:
            args += ["--results-dir", str(self.results_dir)]
        args += {"all": ["--force"], "failed": ["--retry-failed"], "none": []}[self.redo]
        if self.executor != "local":
            args += ["--executor", self.executor]
        if self.device is not None:
            args += ["--device", self.device]
        for key, value in self.settings.items():
            args += ["--set", f"{key}={setting_text(value)}"]
        for key, value in self.executor_options.items():
            args += ["--set", f"executor.{key}={setting_text(value)}"]
        return args

    def replace(self, **changes: Any) -> "RunSpec":
        """A copy with ``changes`` (normalised like a new spec)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TuneSpec:
    """What ``--tune`` adds to a run: ``budget`` configurations per strategy (the same K for every strategy), each
    trained on ``selection_seeds`` seeds from the run's first seed; the best on validation is re-run on the run's
    ``seeds`` reporting seeds, which follow the selection seeds. ``sample_seed`` seeds the draw of configurations
    from a space larger than the budget."""

    budget: int = DEFAULT_BUDGET
    selection_seeds: int = 1
    sample_seed: int = 0

    def __post_init__(self) -> None:
        for label, value in (("--tune-budget", self.budget), ("--selection-seeds", self.selection_seeds)):
            if not _is_int(value) or value < 1:
                raise UsageError(f"{label} must be an integer >= 1, got {value!r}")
        if not _is_int(self.sample_seed) or self.sample_seed < 0:
            raise UsageError(f"the sample seed must be an integer >= 0, got {self.sample_seed!r}")


def setting_text(value: Any) -> str:
    """A setting's value as ``--set`` text that parses back to exactly that value."""
    text = "none" if value is None else json.dumps(value) if not isinstance(value, str) else value
    return text if parse_value(text) == value else json.dumps(value)  # e.g. the string "none" must stay a string


def command_line(argv: list[str] | None = None) -> str:
    """This process's command line as ``tlbench ...`` (what a user types to resume)."""
    argv = sys.argv if argv is None else argv
    return "tlbench " + " ".join(shlex.quote(a) for a in argv[1:]) if argv else ""
