"""What one run asks for, as one typed object: :class:`RunSpec` is built once — by ``tlbench run`` from its options,
or by a library caller — and passed down to :func:`tlbench.run_grid` / :func:`tlbench.tune_grid`, which read it and
never parse a setting again. ``--set`` strings are parsed here, once; the ``executor.<option>`` and ``save_models``
keys are taken out of the trial settings here, once (they say how and where trials run, not what a trial is).
``--vary`` axes are parsed here too, each value by the same parser as ``--set``, so an axis value is exactly the
setting ``--set KEY=VALUE`` would give (and its trials have the same keys).
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
DEFAULT_EXTENSIONS = 4  # how often the edge rule may extend an ordered axis past the choice (tlbench.tuning)
# --vary with --tune: refused (by the CLI and by tune_grid), in these words
AXES_NOT_TUNED = ("--vary does not combine with --tune (each value would need its own tuning); run one --tune per "
                  "value with --set KEY=VALUE, or drop --tune")


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
    process's command line). ``axes``: ``--vary`` strings (``["data.train_size=100,300"]``) or a mapping of a
    setting to its values; the grid holds every combination, each the trial ``--set`` with those values gives.
    ``suite``: a registered suite whose tasks the run trains (``--suite``). Bad input raises :class:`UsageError`
    when the spec is built.
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
    axes: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
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
        set_("axes", parse_axes(self.axes, settings))
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
        for key, values in self.axes.items():
            args += ["--vary", f"{key}={','.join(axis_value_text(v) for v in values)}"]
        return args

    def replace(self, **changes: Any) -> "RunSpec":
        """A copy with ``changes`` (normalised like a new spec)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TuneSpec:
    """What ``--tune`` adds to a run: ``budget`` configurations per strategy (the same K for every strategy), each
    trained on ``selection_seeds`` seeds from the run's first seed; the best on validation is re-run on the run's
    ``seeds`` reporting seeds, which follow the selection seeds. ``sample_seed`` seeds the draw of configurations
    from a space larger than the budget. ``extensions``: how many times the edge rule may extend an ordered axis
    one step past a choice on its edge (the same limit for every strategy; 0 turns the rule off). ``halving``:
    successive halving on validation (every configuration for a fraction of the epochs, the better half
    continued; see ``tlbench.tuning.halving_rungs``) instead of every configuration for the protocol's epochs."""

    budget: int = DEFAULT_BUDGET
    selection_seeds: int = 1
    sample_seed: int = 0
    extensions: int = DEFAULT_EXTENSIONS
    halving: bool = False

    def __post_init__(self) -> None:
        for label, value in (("--tune-budget", self.budget), ("--selection-seeds", self.selection_seeds)):
            if not _is_int(value) or value < 1:
                raise UsageError(f"{label} must be an integer >= 1, got {value!r}")
        if not _is_int(self.extensions) or self.extensions < 0:
            raise UsageError(f"--tune-extensions must be an integer >= 0, got {self.extensions!r}")
        if not isinstance(self.halving, bool):
            raise UsageError(f"halving must be true or false, got {self.halving!r}")
        if not _is_int(self.sample_seed) or self.sample_seed < 0:
            raise UsageError(f"the sample seed must be an integer >= 0, got {self.sample_seed!r}")


def setting_text(value: Any) -> str:
    """A setting's value as ``--set`` text that parses back to exactly that value."""
    text = "none" if value is None else json.dumps(value) if not isinstance(value, str) else value
    return text if parse_value(text) == value else json.dumps(value)  # e.g. the string "none" must stay a string


def split_axis_values(text: str) -> list[str]:
    """``V1,V2,...`` split at the commas outside brackets, braces and double quotes, so a value may be a JSON list
    (``[1,2]``) or a quoted string with a comma (``"a,b"``). Unbalanced text is split at its top-level commas; its
    pieces then parse as strings, as ``--set`` would read them."""
    pieces, depth, quoted, escaped, current = [], 0, False, False, []
    for char in text:
        if quoted:
            quoted = not (char == '"' and not escaped)
            escaped = char == "\\" and not escaped
        elif char == '"':
            quoted = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return pieces


def parse_axes(axes: Mapping[str, Any] | Iterable[str] | str, settings: Mapping[str, Any]) -> dict[str, tuple]:
    """``--vary KEY=V1,V2,...`` items (or a mapping key -> values) as {key: (values...)}, each value parsed as
    ``--set KEY=VALUE`` parses it. Refused with one line: a key given twice or also by ``--set``, no value, an
    empty or a repeated value, and keys that do not define trials (``executor.*``, ``save_models``: use ``--set``).
    Whether the configuration knows the key is checked where the trials are built, as for ``--set``."""
    if isinstance(axes, str):
        axes = [axes]
    parsed: dict[str, tuple] = {}
    if isinstance(axes, Mapping):
        items = []
        for key, values in axes.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise UsageError(f"axis {key!r} must be given a list of values, got {values!r}; e.g. "
                                 f"axes={{{key!r}: [V1, V2]}} or --vary {key}=V1,V2")
            items.append((str(key), tuple(values)))
    else:
        items = []
        for item in axes or ():
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise UsageError(f"--vary expects KEY=V1,V2,... (e.g. --vary data.train_size=100,300,1000), "
                                 f"got {item!r}")
            if not text.strip():
                raise UsageError(f"--vary {key}= lists no values; give them: --vary {key}=V1,V2,...")
            values = []
            for piece in split_axis_values(text):
                if not piece.strip():
                    raise UsageError(f"--vary {item}: an empty value (two commas, or one at an end); "
                                     f"list the values as --vary {key}=V1,V2,...")
                ((key, value),) = parse_overrides([f"{key}={piece}"]).items()  # --set's parser, --set's key rules
                values.append(value)
            if key in {k for k, _ in items}:
                raise UsageError(f"--vary {key} is given twice; list all its values in one --vary {key}=V1,V2,...")
            items.append((key, tuple(values)))
    for key, values in items:
        scope = key.split(".", 1)[0]
        if scope == "executor" or key == "save_models":
            raise UsageError(f"--vary {key}: how trials run is not an axis of trials; set it once with --set "
                             f"{key}=VALUE")
        if key in settings:
            raise UsageError(f"{key} is given by --set (or a shortcut such as --epochs) and by --vary; drop one "
                             f"of them")
        if not values:
            raise UsageError(f"--vary {key} lists no values; give them: --vary {key}=V1,V2,...")
        for i, value in enumerate(values):
            for earlier in values[:i]:
                if _same_value(value, earlier):
                    again = "" if setting_text(value) == setting_text(earlier) else f" (as {setting_text(value)})"
                    raise UsageError(f"--vary {key} lists {setting_text(earlier)} twice{again}; list each value "
                                     f"once")
        parsed[key] = values
    return parsed


def _same_value(a: Any, b: Any) -> bool:
    """Equal as settings: ``1`` and ``1.0`` are one value (they normalise to one trial), ``1`` and ``true`` not."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def axis_value_text(value: Any) -> str:
    """An axis value as ``--vary`` text that parses back to exactly that value (a comma inside it is quoted)."""
    text = setting_text(value)
    return text if len(split_axis_values(text)) == 1 else json.dumps(value)


def command_line(argv: list[str] | None = None) -> str:
    """This process's command line as ``tlbench ...`` (what a user types to resume)."""
    argv = sys.argv if argv is None else argv
    return "tlbench " + " ".join(shlex.quote(a) for a in argv[1:]) if argv else ""
