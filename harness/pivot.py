"""Results against one setting: ``tlbench leaderboard --pivot KEY`` and the report's plot against each varied axis.

A study (``run --vary data.train_size=100,300,1000``, or separate ``--set data.train_size=N`` runs: the same trials)
is read back by the value each record *ran with*, from its resolved settings (``trial.data``, ``trial.hparams``,
``trial.protocol``), never from the command line or the label: a record at a setting's default has the default's
value there, so it lands in that value's column like any other. :func:`setting_value` is the one place a ``--set``
key is looked up in a record.

Keys are spelt as for ``--set``: ``data.NAME`` (a dataset option), ``NAME`` (a protocol setting) and
``STRATEGY.NAME`` (a strategy's own setting, or its override of a protocol setting). A strategy-specific key does
not apply to the other strategies' records: their rows are left out of the table, and a note says so (a row of one
column would put them next to values they never ran with).

A row is one configuration with the pivot key taken out of its identity: every resolved setting but the key (and
the seed) equal. Rows are named by strategy; two configurations of one strategy that differ in other settings add
those settings to the name, as ``--across`` does.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from tlbench.leaderboard import chosen_format, protocol_of
from tlbench.publishing import LeaderboardFormat, LeaderboardTable
from tlbench.record_fields import get
from tlbench.spec import axis_value_text
from tlbench.stats import MeanInterval, t_interval
from tlbench.types import UsageError
from tlbench.version import PROTOCOL_VERSION

METRIC = "metrics.test_top1"
NOT_APPLICABLE = type("NotApplicable", (), {"__repr__": lambda self: "NOT_APPLICABLE"})()
MACHINE_FORMATS = ("csv", "json")  # one table for every dataset x backbone; text formats print one per block


# --------------------------------------------------------------------------------------------- reading settings
def setting_value(record: Any, key: str) -> Any:
    """The value a record ran with for the ``--set`` key ``key``, or :data:`NOT_APPLICABLE` (another strategy's
    key, or a setting the record does not hold). ``image_size`` at none (the dataset's recommendation) is the side
    the trial ran at: ``data.image_size``, else the backbone's own input size."""
    scope, dot, name = key.partition(".")
    trial = get(record, "trial", {}) or {}
    if not isinstance(trial, Mapping):
        trial = {"data": get(record, "trial.data"), "hparams": get(record, "trial.hparams"),
                 "protocol": get(record, "trial.protocol"), "strategy": get(record, "trial.strategy")}
    data, hparams = trial.get("data") or {}, trial.get("hparams") or {}
    protocol = trial.get("protocol") or {}
    if not dot:
        if key not in protocol:
            return NOT_APPLICABLE
        value = protocol[key]
        if key == "image_size" and value is None:
            value = data.get("image_size") or get(record, "backbone.preprocessing.input_size")
        return value
    if scope == "data":
        return data.get(name, NOT_APPLICABLE)
    if scope != trial.get("strategy"):
        return NOT_APPLICABLE
    if name in hparams:
        return hparams[name]
    return protocol.get(name, NOT_APPLICABLE)


def setting_keys(record: Any) -> list[str]:
    """Every ``--set`` key a record holds a value for (protocol, dataset options, its strategy's own settings);
    ``image_size`` only when set (at none it is ``data.image_size``, listed once under that name)."""
    protocol, data = get(record, "trial.protocol", {}) or {}, get(record, "trial.data", {}) or {}
    strategy, hparams = get(record, "trial.strategy", "?"), get(record, "trial.hparams", {}) or {}
    own = sorted(k for k in protocol if k != "image_size" or protocol[k] is not None)  # none: data.image_size's
    return own + [f"data.{k}" for k in sorted(data)] + [f"{strategy}.{k}" for k in sorted(hparams)]


def _canonical(value: Any) -> str:
    """One text per value as settings compare (1 and 1.0 are one value, as for ``--vary``; true is not 1)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, default=str)


def varied_keys(records: Iterable[Any]) -> list[str]:
    """The keys with more than one value among one strategy's records (seed aside: it is never a setting). Within
    one strategy: a protocol setting a strategy overrides (its own epochs, say) differs between strategies without
    anyone having varied it."""
    records = list(records)
    return sorted(key for key in {k for r in records for k in setting_keys(r)} if varies(records, key))


def varies(records: Iterable[Any], key: str) -> bool:
    """``key`` has more than one value among one strategy's records (any key, ``full.epochs`` too)."""
    values: dict[str, set[str]] = defaultdict(set)
    for record in records:
        value = setting_value(record, key)
        if value is not NOT_APPLICABLE:
            values[str(get(record, "trial.strategy", "?"))].add(_canonical(value))
    return any(len(seen) > 1 for seen in values.values())


def value_order(value: Any) -> tuple:
    """Numbers first, by value (``100 < 300 < 1000``, not as text); then none; then the rest by their text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, "") if value is None else (2, 0.0, _canonical(value))


def value_text(value: Any) -> str:
    return axis_value_text(value)


# ------------------------------------------------------------------------------------------------- the table
@dataclass
class PivotCell:
    """One configuration at one value: its ok scores over seeds and how many trials did not finish."""

    value: Any
    scores: list[float] = field(default_factory=list)
    failed: int = 0

    @property
    def summary(self) -> MeanInterval | None:
        return t_interval(self.scores) if self.scores else None


@dataclass
class PivotRow:
    strategy: str  # the row's name (the strategy, plus the settings that tell its configurations apart)
    name: str  # the strategy's plugin name
    cells: dict[str, PivotCell]  # canonical value -> cell


@dataclass
class PivotBlock:
    """One dataset x backbone: its rows over ``values`` (in :func:`value_order`), and the strategies the key does
    not apply to."""

    dataset: str
    backbone: str
    key: str
    values: list[Any]
    rows: list[PivotRow]
    not_applicable: list[str] = field(default_factory=list)


def _identity(record: Any, key: str) -> dict[str, Any]:
    """What makes a record's configuration, but the pivot key and the seed: the row it belongs to."""
    trial = {part: dict(get(record, f"trial.{part}", {}) or {}) for part in ("protocol", "hparams", "data")}
    scope, dot, name = key.partition(".")
    if not dot:
        trial["protocol"].pop(key, None)
        if key == "image_size":
            trial["data"].pop("image_size", None)
    elif scope == "data":
        trial["data"].pop(name, None)
    else:
        trial["hparams"].pop(name, None)
        trial["protocol"].pop(name, None)
    return {"strategy": get(record, "trial.strategy"), "protocol_version": protocol_of(record), **trial}


def names_apart(base: Sequence[str], settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """One name per configuration: its base name (the strategy, or its label), and where several share one, the
    settings in which they differ, ``full @ data.train_size=100``; still alike (they differ elsewhere): numbered,
    ``full #2``. The one way the leaderboard's ``--pivot`` and ``--across`` tell configurations apart."""
    names = list(base)
    for name in set(base):
        same = [i for i, b in enumerate(base) if b == name]
        if len(same) < 2:
            continue
        differ = sorted({k for i in same for k in settings[i]
                         if len({_canonical(settings[j].get(k)) for j in same}) > 1})
        for i in same:
            if differ:
                names[i] = name + " @ " + ",".join(f"{k}={value_text(settings[i].get(k))}" for k in differ)
    seen: dict[str, int] = defaultdict(int)
    for i, name in enumerate(list(names)):
        seen[name] += 1
        if names.count(name) > 1 and seen[name] > 1:
            names[i] = f"{name} #{seen[name]}"
    return names


def _row_names(identities: Sequence[dict[str, Any]]) -> list[str]:
    """The strategy (with its protocol when older than today's), apart by the settings it differs in
    (:func:`names_apart`), ``full @ lr=0.001``."""
    base = [str(i["strategy"]) + ("" if i["protocol_version"] == PROTOCOL_VERSION
                                  else f" (protocol {i['protocol_version']})") for i in identities]
    return names_apart(base, [{(f"data.{k}" if part == "data" else k): v for part in ("protocol", "hparams", "data")
                               for k, v in i[part].items()} for i in identities])


def pivot_blocks(records: Iterable[Any], key: str) -> list[PivotBlock]:
    """One block per dataset x backbone (sorted), each with a row per configuration that ``key`` applies to."""
    by_block: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for record in records:
        by_block[(str(get(record, "trial.dataset", "?")), str(get(record, "trial.backbone", "?")))].append(record)
    blocks = []
    for (dataset, backbone), own in sorted(by_block.items()):
        applies = [r for r in own if setting_value(r, key) is not NOT_APPLICABLE]
        skipped = sorted({str(get(r, "trial.strategy", "?")) for r in own} - {
            str(get(r, "trial.strategy", "?")) for r in applies})
        configurations: dict[str, list[Any]] = defaultdict(list)
        identities: dict[str, dict[str, Any]] = {}
        for record in applies:
            identity = _identity(record, key)
            text = _canonical(identity)
            identities.setdefault(text, identity)
            configurations[text].append(record)
        texts = list(configurations)
        values: dict[str, Any] = {}
        rows = []
        for text, name in zip(texts, _row_names([identities[t] for t in texts])):
            cells: dict[str, PivotCell] = {}
            for record in configurations[text]:
                value = setting_value(record, key)
                values.setdefault(_canonical(value), value)
                cell = cells.setdefault(_canonical(value), PivotCell(value))
                score = get(record, METRIC)
                if get(record, "status") == "ok" and isinstance(score, (int, float)) and math.isfinite(score):
                    cell.scores.append(float(score))
                else:
                    cell.failed += 1
            rows.append(PivotRow(name, str(identities[text]["strategy"]), cells))
        rows.sort(key=lambda row: row.strategy)
        ordered = sorted(values.values(), key=value_order)
        blocks.append(PivotBlock(dataset, backbone, key, ordered, rows, skipped))
    return blocks


def cell_text(cell: PivotCell | None) -> str:
    """``84.2 ± 0.6 (n=3)``: mean test top-1 % and the half-width of its 95% t-interval over seeds; one seed has
    no interval (``84.2 (n=1)``); trials that did not finish are counted, never averaged in."""
    if cell is None:
        return ""
    failed = f"{cell.failed} failed" if cell.failed else ""
    summary = cell.summary
    if summary is None:
        return "FAILED" + (f" ({failed})" if failed else "")
    interval = "" if summary.half_width is None else f" ± {100 * summary.half_width:.1f}"
    return f"{100 * summary.mean:.1f}{interval} (n={summary.n}{', ' + failed if failed else ''})"


def cell_values(cell: PivotCell | None) -> dict[str, Any] | None:
    if cell is None:
        return None
    summary = cell.summary
    return {"mean": summary.mean if summary else None, "ci95": summary.half_width if summary else None,
            "std": summary.std if summary else None, "n": summary.n if summary else 0, "failed": cell.failed,
            "scores": list(cell.scores)}


def pivot_table(blocks: Sequence[PivotBlock], with_block: bool = True) -> LeaderboardTable:
    """The blocks as one table: a column per value (``data.train_size=100``), in value order across blocks."""
    key = blocks[0].key
    values: dict[str, Any] = {}
    for block in blocks:
        for value in block.values:
            values.setdefault(_canonical(value), value)
    ordered = sorted(values.items(), key=lambda item: value_order(item[1]))
    rows, machine = [], []
    for block in blocks:
        for row in block.rows:
            shown: dict[str, Any] = {"dataset": block.dataset, "backbone": block.backbone} if with_block else {}
            shown["strategy"] = row.strategy
            shown.update({f"{key}={value_text(value)}": cell_text(row.cells.get(text)) for text, value in ordered})
            rows.append(shown)
            machine.append({"dataset": block.dataset, "backbone": block.backbone, "strategy": row.strategy,
                            "name": row.name, "key": key,
                            "cells": [{"value": value, **cell_values(row.cells[text])}
                                      for text, value in ordered if text in row.cells]})
    return LeaderboardTable(rows, machine, pivot_notes(blocks))


def pivot_notes(blocks: Sequence[PivotBlock]) -> list[str]:
    key = blocks[0].key
    notes = [f"cells: mean test top-1 % over seeds ± the half-width of its 95% Student t-interval, and n (the seeds "
             f"with an ok score); columns: the value of {key} each record ran with (its resolved settings, so a "
             f"record at the default is in the default's column)."]
    for block in blocks:
        if block.not_applicable:
            notes.append(f"{block.dataset} / {block.backbone}: {key} does not apply to "
                         f"{', '.join(block.not_applicable)}: left out.")
    return notes


def check_pivot_key(records: Sequence[Any], key: str) -> None:
    """A key that is unknown to the records or has a single value is one error line naming the keys that vary."""
    if varies(records, key):
        return
    varied = varied_keys(records)
    known = any(setting_value(r, key) is not NOT_APPLICABLE for r in records)
    why = "has one value in these records" if known else "is not a setting of these records"
    choice = (f"the keys that vary: {', '.join(varied)}" if varied
              else "no setting varies in these records (run with --vary KEY=V1,V2,...)")
    raise UsageError(f"--pivot {key} {why}; {choice}")


def render_pivot(records: Iterable[Any], key: str, fmt: str, formats: Mapping[str, LeaderboardFormat],
                 dataset: str | None = None) -> str:
    """``tlbench leaderboard --pivot KEY``: a table per dataset x backbone in text formats (under a heading line),
    one table with dataset and backbone columns in csv and json."""
    chosen = chosen_format(formats, fmt)
    records = [r for r in records if dataset is None or get(r, "trial.dataset") == dataset]
    if not records:
        raise UsageError("no records" + (f" for dataset {dataset!r}" if dataset else ""))
    check_pivot_key(records, key)
    blocks = [b for b in pivot_blocks(records, key) if b.rows]
    if fmt in MACHINE_FORMATS:
        return chosen.render(pivot_table(blocks))
    return "\n\n".join(f"{b.dataset} / {b.backbone}\n\n" + chosen.render(pivot_table([b], with_block=False))
                       for b in blocks)


__all__ = ["NOT_APPLICABLE", "PivotBlock", "PivotCell", "PivotRow", "cell_text", "check_pivot_key",
           "names_apart", "pivot_blocks", "pivot_table", "render_pivot", "setting_keys", "setting_value", "value_order",
           "value_text", "varied_keys", "varies"]
