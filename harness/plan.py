"""From the command line's choices to a list of Trials: hyper-parameter resolution, validation and trial keys.

Settings live at three levels, all recorded in every result: the shared protocol (epochs, batch size, schedule...),
a strategy's own hyper-parameters (plus protocol overrides the strategy declares), and the dataset's options.
``--set`` reaches all three: ``epochs=5``, ``full.lr=3e-4``, ``frozen.epochs=20``, ``data.train_size=2000``.
"""
from __future__ import annotations

import difflib
import inspect
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from tlbench.digests import digest_of
from tlbench.head_init import HEAD_INITS
from tlbench.records import trial_title
from tlbench.types import MIN_IMAGE_SIZE, TrainPlan, UsageError
from tlbench.version import PROTOCOL_VERSION

# The shared protocol: identical for every strategy unless the strategy overrides a key (recorded either way).
PROTOCOL_DEFAULTS: dict[str, Any] = {
    "epochs": 8,
    "batch_size": 32,
    "eval_batch_size": "auto",  # "auto" = 256 on CUDA, 32 on CPU (large CPU batches are 2-3x slower per image)
    "optimizer": "adamw",
    "weight_decay": 0.01,  # AdamW's default; never applied to norm and bias parameters
    "schedule": "cosine",  # "cosine" or "constant", per step, after warm-up
    "warmup_epochs": 1.0,
    "label_smoothing": 0.0,
    "head_init": "pytorch",  # how the new head starts: "pytorch" (nn.Linear's own), "fan_out" (timm's), "zeros"
    "image_size": None,  # network input side: None = the dataset's recommendation, else the weights' own
    "recalibrate_images": 512,  # training images used to re-estimate BatchNorm statistics ("recalibrate" policy)
    "feature_cache": True,  # train a head on cached frozen features when the plan allows it
    "prefix_cache_mib": 2048,  # memory budget for cached frozen-prefix activations (0 = off); see prefix_cache.py
    "amp": "auto",  # "auto" = bf16 autocast on CUDA only; "off"; "bf16"; "fp16"
    "channels_last": "auto",  # "auto" = on (CUDA and CPU; protocol 1: CUDA only); or true / false
    "compile": False,
    "deterministic": False,
}
# Protocol settings added after version 1 whose default leaves every number as it was before the setting existed
# (tested: identical metrics with and without the prefix cache; head_init=pytorch is the head every plugin built):
# not part of a trial's key while at the default, so old records are still found; recorded in every trial.
KEY_NEUTRAL_DEFAULTS: dict[str, Any] = {"prefix_cache_mib": PROTOCOL_DEFAULTS["prefix_cache_mib"],
                                        # the head as every trial before this setting existed built it
                                        "head_init": PROTOCOL_DEFAULTS["head_init"]}
SCHEDULES = ("cosine", "constant")
AMP_MODES = ("auto", "off", "bf16", "fp16")
# Integers reach torch (seeds, sizes, step counts) as int64: anything outside it overflows somewhere, later.
INT64_MAX = 2**63 - 1
MAX_SEED = INT64_MAX


def parse_value(text: str) -> Any:
    """``--set`` values: JSON where it parses (numbers, true/false/null, lists), else the bare string."""
    lowered = text.strip()
    if lowered.lower() in ("none", "null"):
        return None
    if lowered.lower() in ("true", "false"):
        return lowered.lower() == "true"
    try:
        return json.loads(lowered)
    except json.JSONDecodeError:
        return lowered


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as {key: value}. A key is ``name`` or ``scope.name`` (scope: a strategy or
    ``data``): an empty part, a trailing dot, a second dot or a space in it is refused, never silently ignored."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE (e.g. --set full.lr=3e-4), got {item!r}")
        parts = key.split(".")
        if len(parts) > 2 or not all(parts) or any(part != part.strip() or " " in part for part in parts):
            raise UsageError(f"--set key {key!r} is malformed: use NAME (a protocol setting, e.g. epochs=5) or "
                             f"SCOPE.NAME with a strategy, 'data' or 'executor' as the scope (e.g. full.lr=3e-4, "
                             f"data.train_size=2000, executor.workers=2)")
        overrides[key] = parse_value(value)
    return overrides


def check_numbers(value: Any, where: str) -> None:
    """Every number in a setting, however nested (lists, dicts), must be finite and fit in int64: ``NaN``,
    ``Infinity``, ``1e999`` and ``2**64`` are refused before anything runs (and records stay strict JSON)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{where} must be a finite number, got {value!r}; fix it with --set {where}=<value>")
    if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise UsageError(f"{where} is out of range ({value}; integers must fit in 64 bits); "
                         f"fix it with --set {where}=<value>")
    if isinstance(value, (list, tuple)):
        for item in value:
            check_numbers(item, where)
    elif isinstance(value, Mapping):
        for item in value.values():
            check_numbers(item, where)


def check_image_size(value: Any, where: str) -> None:
    """One rule for the network input side, whether set in the protocol or as a dataset option."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < MIN_IMAGE_SIZE):
        raise UsageError(f"{where} must be an integer >= {MIN_IMAGE_SIZE} or none, got {value!r}; "
                         f"fix it with --set {where}=<value>")


def check_seeds(first_seed: int, seeds: int) -> None:
    """Seeds go to torch and numpy generators: from 0 to 2**63 - 1, the last one included."""
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    if first_seed < 0 or first_seed + seeds - 1 > MAX_SEED:
        raise UsageError(f"seeds must lie in 0..{MAX_SEED}, got --seed {first_seed} with --seeds {seeds}; "
                         f"pick a smaller --seed")


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


SPLIT_SEED_PER_TRIAL = "trial"  # --set data.split_seed=trial: each seed draws its own splits


@dataclass(frozen=True)
class Trial:
    """One cell of the grid. Its key is a stable hash of everything that defines it."""

    dataset: str
    backbone: str
    strategy: str
    seed: int
    protocol: Mapping[str, Any]
    hparams: Mapping[str, Any]
    data_options: Mapping[str, Any]
    overrides: Mapping[str, Any] = field(default_factory=dict)  # what the user changed from the defaults
    # the suite the trial belongs to ({"name", "task", "group"}; tlbench.suites), {} outside one: part of the
    # identity only when set, so a suite's trials are its own and every other key is what it was
    suite: Mapping[str, Any] = field(default_factory=dict)

    def identity(self, with_seed: bool = True) -> dict[str, Any]:
        ident = {"protocol_version": PROTOCOL_VERSION, "dataset": self.dataset, "backbone": self.backbone,
                 "strategy": self.strategy, "protocol": dict(self.protocol), "hparams": dict(self.hparams),
                 "data": dict(self.data_options)}
        if self.suite:
            ident["suite"] = dict(self.suite)
        if with_seed:
            ident["seed"] = self.seed
        return ident

    def key_identity(self, with_seed: bool = True) -> dict[str, Any]:
        """The identity the key digests: settings added after protocol version 1 that do not change what a trial
        measures are left out while at their defaults, so records made before they existed keep their keys."""
        ident = self.identity(with_seed)
        ident["protocol"] = {k: v for k, v in ident["protocol"].items()
                             if not (k in KEY_NEUTRAL_DEFAULTS and v == KEY_NEUTRAL_DEFAULTS[k])}
        return ident

    @property
    def key(self) -> str:
        return digest_of(self.key_identity())[:20]

    @property
    def group(self) -> str:
        """Same for every seed of one configuration: the leaderboard aggregates over it."""
        return digest_of(self.key_identity(with_seed=False))[:20]

    @property
    def label(self) -> str:
        """Strategy name plus what differs from its defaults, e.g. ``full[lr=0.0003]``."""
        if not self.overrides:
            return self.strategy
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        return f"{self.strategy}[{extra}]"

    @property
    def load_options(self) -> dict[str, Any]:
        """The data options the dataset is loaded with: ``data.split_seed=trial`` draws the splits with this trial's
        seed (the setting itself stays "trial" in the key, so the seeds of one configuration keep one group)."""
        options = dict(self.data_options)
        if options.get("split_seed") == SPLIT_SEED_PER_TRIAL:
            options["split_seed"] = self.seed
        return options

    @property
    def title(self) -> str:
        """How the trial is named to its user (one owner: :func:`tlbench.records.trial_title`)."""
        return trial_title(self.dataset, self.backbone, self.label, self.seed)

    def to_record(self) -> dict[str, Any]:
        """The trial's recorded form: the ``trial`` section of its record, and what a job carries to a worker."""
        return {**self.identity(), "key": self.key, "group": self.group, "label": self.label,
                "overrides": dict(self.overrides)}

    @classmethod
    def from_record(cls, recorded: Mapping[str, Any]) -> "Trial":
        """The trial back from its recorded form (:meth:`to_record`): the one way a recorded trial becomes one to
        run. A ValueError when the key this code computes differs from the recorded one (an edited trial, or one
        of another protocol version)."""
        trial = cls(dataset=recorded["dataset"], backbone=recorded["backbone"], strategy=recorded["strategy"],
                    seed=int(recorded["seed"]), protocol=dict(recorded["protocol"]),
                    hparams=dict(recorded["hparams"]), data_options=dict(recorded["data"]),
                    overrides=dict(recorded.get("overrides") or {}), suite=dict(recorded.get("suite") or {}))
        if trial.key != recorded.get("key"):
            raise ValueError(f"the recorded trial {recorded.get('key')} describes trial {trial.key}")
        return trial


# A strategy's settings where an int and a float of one value mean different things (they become Phase.epochs:
# an int is a number of epochs, a float that multiple of the trial's epochs, e.g. lp-ft.probe_epochs): kept as given.
TYPE_MEANINGFUL_SUFFIX = "epochs"


def _keep_type(value: Any, default: Any, key: str = "") -> Any:
    """A ``--set`` value in the form of its setting (:func:`normalise_setting`); ``--set data.augment=none``
    means the string "none" where the setting is a string (parse_value reads the bare word as None, which is right
    for settings like ``image_size=none``). A strategy's ``*epochs`` settings (``key``) keep the type given: an int
    counts epochs, a float multiplies the trial's."""
    if value is None and isinstance(default, str):
        return "none"
    if key.endswith(TYPE_MEANINGFUL_SUFFIX):
        return value
    return normalise_setting(value, default)


EXACT_FLOAT_INTEGERS = 2**53  # every whole number up to here is a float and an int of the same value


def normalise_setting(value: Any, default: Any) -> Any:
    """Equal numbers, one form, so one setting gives one trial key however it is written: a number takes the type
    of the setting's default where the value is equal (``full.lr=1`` is ``1.0`` for a float default,
    ``epochs=2.0`` is ``2`` for an integer one); where the default says no number type (None, a string such as
    "auto"), a whole number is an integer (``image_size=224.0`` is ``224``). Lists are normalised item by item
    against the type their default's items share. ``1e-4`` and ``0.0001`` are already one float. Booleans and
    everything else are left as they are, so the default configurations' keys never change."""
    if isinstance(value, bool) or isinstance(default, bool):
        return value
    if isinstance(value, list):
        kinds = {type(item) for item in default} if isinstance(default, (list, tuple)) and default else set()
        item_default = next(iter(default)) if len(kinds) == 1 else None
        return [normalise_setting(item, item_default) for item in value]
    if isinstance(value, int) and isinstance(default, float):
        return float(value) if abs(value) <= EXACT_FLOAT_INTEGERS else value
    if isinstance(value, float) and not isinstance(default, float) and value.is_integer() \
            and abs(value) <= EXACT_FLOAT_INTEGERS:
        return int(value)
    return value


def validate_protocol(protocol: Mapping[str, Any], where: str) -> None:
    for key, value in protocol.items():
        check_numbers(value, f"{where}{key}")

    def need_int(key: str, minimum: int) -> None:
        value = protocol[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UsageError(f"{where}{key} must be an integer >= {minimum}, got {value!r}; "
                             f"fix it with --set {where}{key}=<value>")

    need_int("epochs", 1)
    need_int("batch_size", 1)
    if protocol["eval_batch_size"] != "auto":
        need_int("eval_batch_size", 1)
    need_int("recalibrate_images", 1)
    for key in ("weight_decay", "warmup_epochs", "label_smoothing", "prefix_cache_mib"):
        value = protocol[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise UsageError(f"{where}{key} must be a number >= 0, got {value!r}")
    if protocol["label_smoothing"] >= 1:
        raise UsageError(f"{where}label_smoothing must be < 1, got {protocol['label_smoothing']!r}")
    if protocol["schedule"] not in SCHEDULES:
        raise UsageError(f"{where}schedule must be one of {', '.join(SCHEDULES)}, got {protocol['schedule']!r}")
    if protocol["amp"] not in AMP_MODES:
        raise UsageError(f"{where}amp must be one of {', '.join(AMP_MODES)}, got {protocol['amp']!r}")
    if protocol["head_init"] not in HEAD_INITS:
        raise UsageError(f"{where}head_init must be one of {', '.join(HEAD_INITS)}, got {protocol['head_init']!r}; "
                         f"fix it with --set {where}head_init=<value>")
    if protocol["optimizer"] != "adamw":
        raise UsageError(f"{where}optimizer: only 'adamw' is supported, got {protocol['optimizer']!r}")
    check_image_size(protocol["image_size"], f"{where}image_size")


def validate_strategy(strategy: Any, hparams: Mapping[str, Any], protocol: Mapping[str, Any]) -> None:
    """``validate(hparams, protocol)``; plugins written for 0.1 define ``validate(hparams)`` and still work."""
    try:
        inspect.signature(strategy.validate).bind(hparams, protocol)
    except TypeError:
        strategy.validate(hparams)
        return
    strategy.validate(hparams, protocol)


def _check_unselected(key: str, value: Any, registered: Iterable[str] | Mapping[str, Any]) -> None:
    """A setting for a registered strategy outside this grid is ignored (one settings list serves many grids),
    but it must still name one of that strategy's settings and hold finite numbers. ``registered`` maps names to
    strategies; a plain list of names (older callers) only allows the name check."""
    check_numbers(value, key)
    scope, _, sub = key.partition(".")
    strategy = registered.get(scope) if isinstance(registered, Mapping) else None
    if strategy is None:
        return
    known = list(strategy.defaults) + list(PROTOCOL_DEFAULTS)
    if sub not in known:
        raise UsageError(f"unknown setting {key!r}: {scope} has {', '.join(sorted(known))}"
                         f"{_did_you_mean(sub, known)}")


def strategy_plan(strategy: Any, group_names: Sequence[str], hparams: Mapping[str, Any],
                  backbone: str = "the backbone") -> TrainPlan:
    """``strategy.plan(group_names, hparams)``, checked: it must return a TrainPlan. A plan that looks up a group
    this backbone lacks (KeyError, IndexError, ValueError from ``group_names.index``) is bad input for this grid,
    said in one line by the pre-run check; any other exception is a bug in the plugin, recorded with the trial."""
    try:
        plan = strategy.plan(list(group_names), hparams)
    except (LookupError, ValueError) as exc:
        raise UsageError(f"strategy {strategy.name!r} cannot plan for {backbone} (its groups: "
                         f"{', '.join(group_names)}): plan() raised {type(exc).__name__}: {exc}, as when it names a "
                         f"group the backbone lacks; pick another backbone, or fix the strategy's plan()") from exc
    if not isinstance(plan, TrainPlan):
        raise UsageError(f"strategy {strategy.name!r}: plan() returned {type(plan).__name__}, but it must return a "
                         f"tlbench.TrainPlan, e.g. TrainPlan({{'head': 1e-3}}, 'frozen') (see "
                         f"docs/guides/strategy.md)")
    return plan


def build_trials(*, datasets: Sequence[tuple[str, Any]], backbones: Sequence[str],
                 strategies: Sequence[tuple[str, Any]], seeds: Sequence[int],
                 overrides: Mapping[str, Any], registered_strategies: Iterable[str] = ()) -> list[Trial]:
    """The grid, sorted by dataset then backbone (so each dataset is decoded once and each backbone's features are
    reused). ``datasets`` holds (name, family) and ``strategies`` (name, Strategy) pairs; every override key must
    land somewhere, or it is an error with a suggestion. Settings for registered strategies outside the grid are
    ignored, so one settings list serves many grids."""
    strategy_names = {name for name, _ in strategies}
    used: set[str] = set()
    protocol_base = dict(PROTOCOL_DEFAULTS)
    for key, value in overrides.items():
        if "." not in key and key in PROTOCOL_DEFAULTS:
            protocol_base[key] = _keep_type(value, PROTOCOL_DEFAULTS[key])
            used.add(key)

    resolved_strategies = []
    for name, strategy in strategies:
        protocol = {**protocol_base, **dict(strategy.protocol)}
        hparams = dict(strategy.defaults)
        changed = {k: protocol_base[k] for k, v in overrides.items()
                   if "." not in k and k in PROTOCOL_DEFAULTS and v != PROTOCOL_DEFAULTS[k]}
        for key, value in overrides.items():
            scope, _, sub = key.partition(".")
            if scope != name or not sub:
                continue
            if sub in hparams:
                default = strategy.defaults[sub]
                hparams[sub] = value = _keep_type(value, default, sub)
            elif sub in PROTOCOL_DEFAULTS:
                default = {**PROTOCOL_DEFAULTS, **dict(strategy.protocol)}[sub]
                protocol[sub] = value = _keep_type(value, default)
            else:
                raise UsageError(f"unknown setting {key!r}: {name} has "
                                 f"{', '.join(sorted(hparams) + sorted(PROTOCOL_DEFAULTS))}"
                                 f"{_did_you_mean(sub, list(hparams) + list(PROTOCOL_DEFAULTS))}")
            if value != default:
                changed[sub] = value
            else:
                changed.pop(sub, None)
            used.add(key)
        validate_protocol(protocol, f"{name}." if any(k.startswith(name + ".") for k in used) else "")
        for key, value in hparams.items():
            check_numbers(value, f"{name}.{key}")
        validate_strategy(strategy, hparams, protocol)
        resolved_strategies.append((name, protocol, hparams, changed))

    resolved_datasets = []
    for name, family in datasets:
        options = dict(family.defaults)
        for key, value in overrides.items():
            scope, _, sub = key.partition(".")
            if scope != "data":
                continue
            if sub not in options:
                raise UsageError(f"unknown setting {key!r}: dataset {name.split(':')[0]} has "
                                 f"{', '.join('data.' + k for k in sorted(options))}"
                                 f"{_did_you_mean(sub, options)}")
            options[sub] = _keep_type(value, options[sub])
            used.add(key)
        split_seed = options.get("split_seed")
        if isinstance(split_seed, str) and split_seed != SPLIT_SEED_PER_TRIAL:
            raise UsageError(f"data.split_seed must be an integer >= 0 or {SPLIT_SEED_PER_TRIAL!r} (a new train/val "
                             f"split for every seed), got {split_seed!r}; fix it with --set data.split_seed=<value>")
        for key, value in options.items():
            check_numbers(value, f"data.{key}")
        check_image_size(options.get("image_size"), "data.image_size")
        data_changed = {f"data.{k}": v for k, v in options.items() if v != family.defaults[k]}
        resolved_datasets.append((name, options, data_changed))

    for key in overrides:
        if key in used:
            continue
        scope = key.partition(".")[0]
        if "." in key and scope not in strategy_names and scope != "data":
            if scope in set(registered_strategies):
                _check_unselected(key, overrides[key], registered_strategies)
                continue
            candidates = sorted(strategy_names | set(registered_strategies)) + ["data"]
            raise UsageError(f"unknown setting {key!r}: {scope!r} is not a selected strategy or 'data'"
                             f"{_did_you_mean(scope, candidates)}")
        if "." not in key:
            raise UsageError(f"unknown setting {key!r}{_did_you_mean(key, PROTOCOL_DEFAULTS)}; protocol settings: "
                             f"{', '.join(sorted(PROTOCOL_DEFAULTS))}")

    trials = []
    for dataset_name, data_options, data_changed in resolved_datasets:
        for backbone in backbones:
            for name, protocol, hparams, changed in resolved_strategies:
                for seed in seeds:
                    trials.append(Trial(dataset_name, backbone, name, seed, protocol, hparams, data_options,
                                        {**changed, **data_changed}))
    return trials
