"""The one place the leaderboard and the report read a record's fields, by dotted path ("metrics.test_top1").

Records are :class:`tlbench.records.Record` objects (read by JSON path, so fields a newer tlbench or a plugin
added are reachable too); plain dicts in the same JSON layout read the same way.
"""
from __future__ import annotations

import json
from typing import Any

from tlbench.records import Record


def get(record: Any, dotted: str, default: Any = None) -> Any:
    """The value at ``dotted`` (e.g. ``"trial.data.split_seed"``), or ``default`` where any part is missing."""
    if isinstance(record, Record):
        value = record.value(dotted)
        return default if value is None else value
    value: Any = record
    for part in dotted.split("."):
        if isinstance(value, dict):
            if part not in value:
                return default
            value = value[part]
        elif hasattr(value, part) and not callable(getattr(value, part)):
            value = getattr(value, part)
        else:
            return default
    return default if value is None else value


def processor_label(record: Any) -> str:
    """Which processor computed a record, as one label: the GPU's name for a CUDA trial, else the CPU's model,
    logical cores and torch's kernel instruction set ("processor not recorded" for records before tlbench 0.2.0).
    Two records of one trial key agree exactly only when this label is the same."""
    if get(record, "environment.device_type") == "cuda":
        return str(get(record, "environment.device", "cuda"))
    model = get(record, "environment.cpu_model")
    if model is None:
        return "processor not recorded"
    return (f"{model} ({get(record, 'environment.cpu_count', '?')} logical cores, "
            f"{get(record, 'environment.cpu_capability', '?')})")


def as_dict(record: Any) -> dict[str, Any]:
    """The record in its JSON layout (a copy for typed records; dicts are returned as they are)."""
    if isinstance(record, dict):
        return record
    for method in ("to_json_dict", "to_dict", "to_json"):
        if callable(getattr(record, method, None)):
            value = getattr(record, method)()
            if isinstance(value, str):
                value = json.loads(value)
            return value
    raise TypeError(f"not a tlbench record: {record!r}")
