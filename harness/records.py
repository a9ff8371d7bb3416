"""The trial record as a typed object: what the runner returns, the store writes, and the leaderboard, CLI, rerun
and report read. One JSON file per trial; ``Record.from_json_dict`` validates what it reads, so a record that was
hand-edited, truncated by another tool or written by a foreign program is refused with the reason, never half-used.

Schema 2 (this version) adds the ``executor`` section (which executor ran the trial, its options, the worker's host
and process) and measures CPU peak memory per worker process. Schema-1 records (tlbench 0.1) have the same layout
without that section and are still read.
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from tlbench.files import MAX_JSON_DEPTH, Refused, check_json_value, parse_json

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
STATUSES = ("ok", "failed", "diverged")
KEY_PATTERN = re.compile(r"^[0-9a-f]{8,64}$")


class RecordError(ValueError):
    """A record that does not validate: the message says which field is wrong and how."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _need(mapping: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str,
          optional: bool = False) -> Any:
    if name not in mapping or mapping[name] is None:
        if optional:
            return None
        raise RecordError(f"{where}.{name} is missing")
    value = mapping[name]
    if kind is float:
        if not _is_number(value) or not math.isfinite(value):
            raise RecordError(f"{where}.{name} must be a finite number, got {value!r}")
        return value
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise RecordError(f"{where}.{name} must be an integer, got {value!r}")
        return value
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise RecordError(f"{where}.{name} must be a {names}, got {type(value).__name__} {value!r:.60}")
    return value


def _check_values(raw: Any) -> None:
    """Records are strict JSON every reader can use (the limits of :mod:`tlbench.files`): no NaN or infinity
    anywhere (Python's json would write bare NaN), numbers in range, valid Unicode, bounded nesting. Iterative, so
    no value, however deep, can exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(raw, "record", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise RecordError(f"{where} is {value!r}; records hold finite numbers only")
        if isinstance(value, (dict, list, tuple)) and depth > MAX_JSON_DEPTH:
            raise RecordError(f"{where} is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((item, f"{where}.{key}", depth + 1) for key, item in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value))
    try:
        check_json_value(raw)
    except Refused as exc:
        raise RecordError(f"it holds {exc}") from None


@dataclass(frozen=True)
class TrialInfo:
    """What defines the trial (its key is a digest of the identity fields) and how it is shown."""

    dataset: str
    backbone: str
    strategy: str
    seed: int
    protocol: dict[str, Any]
    hparams: dict[str, Any]
    data: dict[str, Any]
    key: str
    group: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    protocol_version: int = 1
    suite: dict[str, Any] = field(default_factory=dict)  # {"name", "task", "group"} of a suite's trial, else {}

    @classmethod
    def from_json_dict(cls, raw: Any) -> "TrialInfo":
        if not isinstance(raw, dict):
            raise RecordError(f"trial must be an object, got {type(raw).__name__} {raw!r:.60}")
        return cls(
            dataset=_need(raw, "dataset", str, "trial"), backbone=_need(raw, "backbone", str, "trial"),
            strategy=_need(raw, "strategy", str, "trial"), seed=_need(raw, "seed", int, "trial"),
            protocol=_need(raw, "protocol", dict, "trial"), hparams=_need(raw, "hparams", dict, "trial"),
            data=_need(raw, "data", dict, "trial"), key=_need(raw, "key", str, "trial"),
            group=_need(raw, "group", str, "trial"),
            label=_need(raw, "label", str, "trial", optional=True) or raw["strategy"],
            overrides=_need(raw, "overrides", dict, "trial", optional=True) or {},
            protocol_version=_need(raw, "protocol_version", int, "trial", optional=True) or 1,
            suite=_suite_of(raw))

    def to_json_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if not self.suite:  # records outside a suite keep the layout they always had
            del out["suite"]
        return out

    @property
    def title(self) -> str:
        """How a trial is named to its user, in progress bars, trial lines and messages."""
        return trial_title(self.dataset, self.backbone, self.label, self.seed)


def _suite_of(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``trial.suite``: absent in records made outside a suite (and before suites existed), else its name, task and
    group as strings."""
    suite = _need(raw, "suite", dict, "trial", optional=True) or {}
    for name in ("name", "task", "group") if suite else ():
        _need(suite, name, str, "trial.suite")
    return suite


def trial_title(dataset: str, backbone: str, label: str, seed: int) -> str:
    """``fashion-mnist / efficientnet_lite0 / full / seed 0``: the one way a trial is named to its user."""
    return f"{dataset} / {backbone} / {label} / seed {seed}"


# Metrics every ok record has, with their JSON types; the rest are optional (failed records carry only timings).
_REQUIRED_OK_METRICS = {"val_top1": float, "test_top1": float, "best_epoch": int, "epochs": int}
_OPTIONAL_METRICS = {"val_top5": float, "test_top5": float, "best_epoch_val_top1": float, "steps": int,
                     "train_images_per_s": float, "eval_images_per_s": float, "peak_memory_mib": float,
                     "gflops_per_image": float, "train_gflops_total": float, "wall_s": float,
                     "feature_cache": bool, "time_s": dict, "params": dict, "peak_memory": dict, "history": list}


@dataclass(frozen=True)
class Metrics:
    """Measurements of one trial. Accuracies are fractions in [0, 1]; times in seconds; memory in MiB."""

    val_top1: float | None = None
    test_top1: float | None = None
    best_epoch: int | None = None
    epochs: int | None = None
    val_top5: float | None = None
    test_top5: float | None = None
    best_epoch_val_top1: float | None = None
    steps: int | None = None
    train_images_per_s: float | None = None
    eval_images_per_s: float | None = None
    peak_memory_mib: float | None = None
    gflops_per_image: float | None = None
    train_gflops_total: float | None = None
    wall_s: float | None = None
    feature_cache: bool | None = None
    time_s: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    peak_memory: dict[str, Any] | None = None
    history: list[Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # measurements a newer tlbench or a plugin added

    @classmethod
    def from_json_dict(cls, raw: Any, ok: bool) -> "Metrics":
        if raw is None and not ok:
            return cls()
        if not isinstance(raw, dict):
            raise RecordError(f"metrics must be an object, got {type(raw).__name__} {raw!r:.60}")
        values: dict[str, Any] = {}
        for name, kind in _REQUIRED_OK_METRICS.items():
            values[name] = _need(raw, name, kind, "metrics", optional=not ok)
        for name, kind in _OPTIONAL_METRICS.items():
            value = _need(raw, name, kind, "metrics", optional=True)
            if value is not None:
                values[name] = value
        for name in ("val_top1", "test_top1", "val_top5", "test_top5", "best_epoch_val_top1"):
            if values.get(name) is not None and not 0.0 <= values[name] <= 1.0:
                raise RecordError(f"metrics.{name} must be a fraction in [0, 1], got {values[name]!r}")
        for name in ("time_s", "params"):
            for key, value in (values.get(name) or {}).items():
                if value is not None and not _is_number(value):
                    raise RecordError(f"metrics.{name}.{key} must be a number, got {value!r:.60}")
        known = set(_REQUIRED_OK_METRICS) | set(_OPTIONAL_METRICS)
        return cls(**values, extra={k: v for k, v in raw.items() if k not in known})

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                continue
            if value is None:
                continue
            out[f.name] = value
        out.update(self.extra)
        return out


_SECTIONS = ("environment", "data", "backbone", "runtime", "plan", "executor", "saved_model")
_WRITTEN_WHEN_EMPTY = ("environment", "data", "backbone", "runtime", "plan")  # the others only when present


@dataclass(frozen=True)
class Record:
    """One trial's result. ``status`` is "ok", "failed" or "diverged"; ``error`` says why when it is not ok.
    The free-form sections (``data``, ``backbone``, ``runtime``, ``plan``, ``environment``, ``executor``) describe
    what ran in the words of the plugins that ran it; ``metrics`` and ``trial`` are typed. ``saved_model`` (only
    with ``tlbench run --save-models``) names the file of the weights the test split scored and its sha256."""

    key: str
    status: str
    trial: TrialInfo
    metrics: Metrics = field(default_factory=Metrics)
    command: str = ""
    created: str = ""
    error: str | None = None
    traceback: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    backbone: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    executor: dict[str, Any] = field(default_factory=dict)
    saved_model: dict[str, Any] = field(default_factory=dict)  # the trial's trained weights file (--save-models)
    schema: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_json_dict(cls, raw: Any) -> "Record":
        """Validate and convert. Raises :class:`RecordError` naming the first problem."""
        if not isinstance(raw, dict):
            raise RecordError(f"a record must be a JSON object, got {type(raw).__name__}")
        _check_values(raw)
        schema = raw.get("schema")
        if schema not in READABLE_SCHEMAS:
            raise RecordError(f"schema {schema!r} is not one this tlbench reads ({', '.join(map(str, READABLE_SCHEMAS))})")
        key = _need(raw, "key", str, "record")
        if not KEY_PATTERN.match(key):
            raise RecordError(f"record.key {key!r} is not a trial key (lowercase hex digits)")
        status = _need(raw, "status", str, "record")
        if status not in STATUSES:
            raise RecordError(f"record.status {status!r} is not one of {', '.join(STATUSES)}")
        trial = TrialInfo.from_json_dict(raw.get("trial"))
        if trial.key != key:
            raise RecordError(f"record.key {key!r} differs from trial.key {trial.key!r}")
        sections = {}
        for name in _SECTIONS:
            value = raw.get(name)
            if value is not None and not isinstance(value, dict):
                raise RecordError(f"record.{name} must be an object, got {type(value).__name__}")
            sections[name] = value or {}
        return cls(key=key, status=status, trial=trial, metrics=Metrics.from_json_dict(raw.get("metrics"),
                                                                                      ok=status == "ok"),
                   command=_need(raw, "command", str, "record", optional=True) or "",
                   created=_need(raw, "created", str, "record", optional=True) or "",
                   error=_need(raw, "error", str, "record", optional=True),
                   traceback=_need(raw, "traceback", str, "record", optional=True), schema=schema, **sections)

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": self.schema, "key": self.key, "status": self.status,
                               "trial": self.trial.to_json_dict(), "metrics": self.metrics.to_json_dict(),
                               "command": self.command, "created": self.created}
        for name in ("error", "traceback"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in _SECTIONS:
            value = getattr(self, name)
            if value or name in _WRITTEN_WHEN_EMPTY:
                out[name] = value
        return out

    def to_json(self) -> str:
        """Strict JSON (no NaN/inf), sorted keys: the exact bytes the store writes."""
        return json.dumps(self.to_json_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> "Record":
        """A record from its JSON text, within the limits of :func:`tlbench.files.parse_json` (depth, number
        sizes, valid Unicode; non-standard constants such as NaN refused): a RecordError otherwise."""
        try:
            raw = parse_json(text)
        except Refused as exc:
            raise RecordError(str(exc)) from None
        return cls.from_json_dict(raw)

    @functools.cached_property
    def _as_json_dict(self) -> dict[str, Any]:
        return self.to_json_dict()

    def value(self, dotted: str) -> Any:
        """A field by its JSON path, e.g. ``metrics.time_s.total`` (None where absent): for column definitions."""
        current: Any = self._as_json_dict
        for part in dotted.split("."):
            if not isinstance(current, dict):
                return None
            current = current.get(part)
        return current


def failed_record(trial: Mapping[str, Any], reason: str, *, wall_s: float = 0.0, command: str = "",
                  environment: Mapping[str, Any] | None = None, executor: Mapping[str, Any] | None = None,
                  status: str = "failed") -> Record:
    """The record of a trial that did not finish: failed (or diverged) with the reason, its wall time, and what is
    known of where it ran. ``trial`` is the record's trial section (``Trial.to_record()``). The one place a
    failed record is made: by the runner when a trial breaks, by the driver when no record came back."""
    return Record.from_json_dict(json.loads(json.dumps({
        "schema": SCHEMA_VERSION, "key": trial["key"], "status": status, "error": reason, "trial": dict(trial),
        "command": command, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": {"wall_s": wall_s, "time_s": {"total": wall_s}}, "environment": dict(environment or {}),
        "executor": dict(executor or {})}, default=str)))


def task_of(record: Record) -> tuple[str, str, str]:
    """What "best per dataset x backbone" compares within: the dataset, its data options and the backbone."""
    trial = record.trial
    return trial.dataset, trial.backbone, json.dumps(trial.data, sort_keys=True, default=str)


def best_on_validation(records: Any) -> dict[tuple[str, str, str], Record]:
    """Per dataset x backbone (x data options), the trial of the configuration best on *validation*: the
    configuration (a trial group: all seeds of one strategy and its settings) with the highest mean validation top-1
    over its ok records, and within it the seed with the highest validation top-1. Ties: more seeds, then the
    smaller group key / lower seed, so every reader of one results directory picks the same trial. The test split
    never takes part."""
    configurations: dict[tuple[str, str, str], dict[str, list[Record]]] = {}
    for record in records:
        if record.ok and record.metrics.val_top1 is not None:
            configurations.setdefault(task_of(record), {}).setdefault(record.trial.group, []).append(record)
    best: dict[tuple[str, str, str], Record] = {}
    for task, groups in configurations.items():
        def rank(item: tuple[str, list[Record]]) -> tuple[float, int, str]:
            group, members = item
            return (-sum(r.metrics.val_top1 for r in members) / len(members), -len(members), group)

        _, members = min(groups.items(), key=rank)
        best[task] = min(members, key=lambda r: (-r.metrics.val_top1, r.trial.seed, r.key))
    return best

