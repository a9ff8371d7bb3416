"""Results across tasks: ``tlbench leaderboard --across`` and the report's cross-task section.

A *task* is one dataset x backbone cell. ``--across datasets`` compares the strategies over the datasets, one block
of rows per backbone; ``--across backbones`` over the backbones, one block per dataset; ``--across cells`` over
every dataset x backbone cell at once (what the report shows). Per strategy: the mean over tasks of its mean test
top-1 over seeds, its mean rank, the interquartile mean of all its task x seed scores with a stratified-bootstrap
95% interval, and the probability of improvement over a reference strategy (rliable, Agarwal et al. 2021; Demšar
2006). The statistics themselves live in :mod:`tlbench.stats`.

A strategy without an ok score on some task of its block is *incomplete*: it is listed with the tasks it misses and
no aggregate, and left out of the ranks of the others. Averaging it over fewer tasks would compare it on easier
(or harder) ground than the rest; ranking it on the tasks it has would change the others' ranks task by task.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tlbench.leaderboard import DEFAULT_REFERENCE, chosen_format, group_records, percent
from tlbench.pivot import names_apart
from tlbench.publishing import LeaderboardFormat, LeaderboardTable
from tlbench.record_fields import get
from tlbench.requirements import Extra, module_available
from tlbench.stats import (average_probability_of_improvement, interquartile_mean, mean_ranks,
                           stratified_bootstrap_iqm)
from tlbench.types import UsageError

AXES = ("datasets", "backbones", "cells")
STATISTICS = Extra("report", "the statistics across tasks use scipy and scikit-posthocs")
METRIC = "metrics.test_top1"


@dataclass
class AcrossRow:
    """One strategy in a block. ``scores``: task -> its ok test top-1 per seed (only the tasks it has);
    ``missing``: the block's tasks it has no ok score on. The aggregates are None for an incomplete strategy."""

    strategy: str
    name: str  # the strategy's plugin name (``full`` for the label ``full[lr=0.001]``): what --vs may also give
    scores: dict[str, list[float]]
    missing: list[str]
    mean: float | None = None
    mean_rank: float | None = None
    iqm: float | None = None
    iqm_interval: tuple[float, float] | None = None
    probability_of_improvement: float | None = None
    is_reference: bool = False

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class AcrossBlock:
    """The strategies compared over the same tasks: ``block`` is the backbone (--across datasets), the dataset
    (--across backbones) or "" (--across cells). ``rows``: the complete strategies by mean rank, then the incomplete
    ones. ``reference``: the strategy the probability of improvement is against ("" when none is complete)."""

    block: str
    tasks: list[str]
    rows: list[AcrossRow]
    reference: str = ""
    reference_note: str = ""
    iqm_note: str = ""

    @property
    def complete(self) -> list[AcrossRow]:
        return [row for row in self.rows if row.complete]

    def task_means(self) -> np.ndarray:
        """tasks x complete strategies (in row order): each strategy's mean over seeds on each task."""
        return np.array([[float(np.mean(row.scores[task])) for row in self.complete] for task in self.tasks])


def require_statistics(what: str = "--across") -> None:
    """A one-line error naming the install command when scipy (the report extra) is missing."""
    if not module_available("scipy"):
        raise UsageError(f"{what} needs scipy, which is not installed; install it with {STATISTICS}")


def task_of(record: Any, across: str) -> tuple[str, str]:
    """(block, task) of a record: which rows it is compared with, and over which tasks."""
    dataset, backbone = str(get(record, "trial.dataset", "?")), str(get(record, "trial.backbone", "?"))
    if across == "datasets":
        return backbone, dataset
    if across == "backbones":
        return dataset, backbone
    return "", f"{dataset} / {backbone}"


def _row_names(groups: Sequence[dict[str, Any]]) -> list[str]:
    """The name of each configuration of one task: its label (a sweep's row: its strategy and ``(tuned)``, not
    the configuration it chose, which may differ task by task); configurations of one label that differ in their
    data settings (``run --vary data.train_size=...``) add the settings that differ
    (:func:`tlbench.pivot.names_apart`), so the same configuration gets the same name on every task."""
    base = [g["strategy_tuned"] if g.get("tuned") else g["strategy"] for g in groups]
    return names_apart(base, [{f"data.{k}": v for k, v in json.loads(g["data"] or "{}").items()} for g in groups])


def _seed_order(seed: Any) -> tuple[int, str]:
    return (int(seed), "") if isinstance(seed, int) else (1 << 62, str(seed))


def collect(records: Iterable[Any], across: str, sweeps: Sequence[Any] = ()) -> dict[str, dict[str, dict]]:
    """block -> task -> row name -> {"name": strategy, "scores": [ok test top-1 per seed, by seed]} (a
    configuration with only failed trials is there with no scores)."""
    if across not in AXES:
        raise UsageError(f"unknown --across {across!r}; choose from {', '.join(AXES)}")
    by_cell: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for record in records:
        by_cell[task_of(record, across)].append(record)
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (block, task), own in sorted(by_cell.items()):
        dataset = get(own[0], "trial.dataset")
        groups = group_records(own, sweeps=[s for s in sweeps if s.dataset == dataset])
        cell: dict[str, dict] = {}
        for name, group in zip(_row_names(groups), groups):
            ok = sorted(group["ok"], key=lambda r: _seed_order(get(r, "trial.seed")))
            scores = [float(v) for v in (get(r, METRIC) for r in ok)
                      if isinstance(v, (int, float)) and math.isfinite(v)]
            cell[name] = {"name": group.get("name") or group["strategy"], "scores": scores}
        out[block][task] = cell
    return dict(out)


def _pick_reference(block: AcrossBlock, reference: str | None) -> None:
    """Marks the reference row: ``reference`` by label, else by strategy name (one match); by default ``full``
    when it is complete (and one configuration), else the best-ranked strategy."""
    complete = block.complete
    if not complete:
        block.reference_note = "no strategy has scores on every task: no ranks, no probability of improvement"
        return
    wanted = reference or DEFAULT_REFERENCE
    matches = [r for r in block.rows if r.strategy == wanted] or [r for r in block.rows if r.name == wanted]
    if len(matches) > 1 and reference is None:
        matches = []  # several configurations of full: the default falls back to the best-ranked
    if len(matches) > 1:
        raise UsageError(f"--vs {wanted!r} matches several configurations ({', '.join(r.strategy for r in matches)})"
                         f"; give one of these labels")
    chosen = matches[0] if matches else None
    if chosen is None and reference is None:
        chosen = complete[0]
    if chosen is None:
        block.reference_note = f"{reference} has no records here: no probability of improvement"
        return
    if not chosen.complete and reference is None:  # the default full misses a task: the best-ranked instead
        block.reference_note = (f"{chosen.strategy} misses {', '.join(chosen.missing)}: the reference is the "
                                f"best-ranked strategy")
        chosen = complete[0]
    elif not chosen.complete:
        block.reference_note = (f"{chosen.strategy} misses {', '.join(chosen.missing)}: no probability of "
                                f"improvement over it")
        return
    chosen.is_reference = True
    block.reference = chosen.strategy


def across_blocks(records: Iterable[Any], across: str, reference: str | None = None,
                  sweeps: Sequence[Any] = ()) -> list[AcrossBlock]:
    """Every block with its rows and statistics (needs scipy: :func:`require_statistics`)."""
    blocks = []
    for block_name, tasks in sorted(collect(records, across, sweeps).items()):
        task_names = sorted(tasks)
        rows_by_name: dict[str, AcrossRow] = {}
        for task in task_names:
            for name, entry in tasks[task].items():
                row = rows_by_name.setdefault(name, AcrossRow(name, entry["name"], {}, []))
                if entry["scores"]:
                    row.scores[task] = entry["scores"]
        for row in rows_by_name.values():
            row.missing = [t for t in task_names if t not in row.scores]
        block = AcrossBlock(block_name, task_names, list(rows_by_name.values()))
        complete = block.complete
        # the IQM pools every task x seed score: with fewer seeds on a task a strategy would weigh it less than the
        # others do (rliable assumes the same runs per task), so it needs equal seed counts per task
        equal_runs = all(len({len(row.scores[t]) for row in complete}) == 1 for t in task_names)
        if complete and not equal_runs:
            block.iqm_note = ("no IQM: the strategies have different numbers of seeds on some task (the IQM pools "
                              "task x seed scores, so a task with fewer seeds would weigh less); run the same "
                              "--seeds for every strategy")
        if complete:
            ranks = mean_ranks(block.task_means())
            for row, rank in zip(complete, ranks):
                row.mean_rank = float(rank)
                row.mean = float(np.mean([np.mean(row.scores[t]) for t in task_names]))
                if equal_runs:
                    row.iqm = interquartile_mean([s for t in task_names for s in row.scores[t]])
                    row.iqm_interval = stratified_bootstrap_iqm([row.scores[t] for t in task_names])
        block.rows.sort(key=lambda r: (not r.complete, r.mean_rank if r.mean_rank is not None else 0.0,
                                       -(r.mean or 0.0), r.strategy))
        _pick_reference(block, reference)
        if block.reference:
            ref = next(r for r in block.rows if r.is_reference)
            for row in block.complete:
                if not row.is_reference:
                    row.probability_of_improvement = average_probability_of_improvement(
                        [(row.scores[t], ref.scores[t]) for t in task_names])
        blocks.append(block)
    return blocks


BLOCK_HEADERS = {"datasets": "backbone", "backbones": "dataset", "cells": ""}


def across_table(blocks: Sequence[AcrossBlock], across: str) -> LeaderboardTable:
    """The blocks as one leaderboard table (display rows, machine values, notes) for any --format."""
    block_header = BLOCK_HEADERS[across]
    references = sorted({b.reference for b in blocks if b.reference})
    p_header = f"P(better than {references[0]})" if len(references) == 1 else "P(better than reference)"
    rows, values = [], []
    for block in blocks:
        n = len(block.tasks)
        for row in block.rows:
            shown: dict[str, Any] = {block_header: block.block} if block_header else {}
            interval = row.iqm_interval
            shown.update({
                "strategy": row.strategy,
                "tasks": f"{n - len(row.missing)}/{n}" + (f" (missing: {', '.join(row.missing)})"
                                                          if row.missing else ""),
                "mean test top-1 %": percent(row.mean),
                "mean rank": "" if row.mean_rank is None else f"{row.mean_rank:.2f}",
                "IQM %": percent(row.iqm),
                "IQM 95% CI (stratified bootstrap)": (f"[{percent(interval[0])}, {percent(interval[1])}]" if interval
                                                      else ("one seed per task" if row.complete and row.iqm
                                                            is not None else "")),
                p_header: ("reference" if row.is_reference else "" if row.probability_of_improvement is None
                           else f"{row.probability_of_improvement:.2f}"),
            })
            rows.append(shown)
            values.append({"across": across, "block": block.block, "strategy": row.strategy, "name": row.name,
                           "tasks": block.tasks, "missing": row.missing, "complete": row.complete,
                           "mean": row.mean, "mean_rank": row.mean_rank, "iqm": row.iqm,
                           "iqm_low": interval[0] if interval else None, "iqm_high": interval[1] if interval else None,
                           "reference": block.reference or None, "is_reference": row.is_reference,
                           "probability_of_improvement": row.probability_of_improvement,
                           "scores": row.scores})
    return LeaderboardTable(rows, values, across_notes(blocks, across))


def across_notes(blocks: Sequence[AcrossBlock], across: str) -> list[str]:
    """The lines that travel with the table: the tasks, what each statistic is, the incomplete strategies."""
    kind = {"datasets": "datasets", "backbones": "backbones", "cells": "dataset / backbone cells"}[across]
    notes = []
    for block in blocks:
        where = f"{BLOCK_HEADERS[across]} {block.block}: " if block.block else ""
        line = f"{where}{len(block.tasks)} tasks ({kind}): {', '.join(block.tasks)}"
        if block.reference:
            line += f"; reference {block.reference}"
        if block.reference_note:
            line += f"; {block.reference_note}"
        if block.iqm_note:
            line += f"; {block.iqm_note}"
        incomplete = [r.strategy for r in block.rows if not r.complete]
        if incomplete:
            line += (f"; {len(incomplete)} strateg{'y' if len(incomplete) == 1 else 'ies'} without scores on every "
                     f"task ({', '.join(incomplete)}): listed, not averaged over fewer tasks, not ranked")
        notes.append(line + ".")
    notes.append("mean test top-1: mean over tasks of each task's mean over seeds; mean rank: per task the "
                 "strategies ranked by that mean (1 = best, ties share the average rank), averaged over tasks "
                 "(Demšar 2006); IQM: interquartile mean of all task x seed scores with a 95% percentile interval "
                 "of a stratified bootstrap (seeds resampled within each task, 10,000 resamples, seed 0); "
                 "P(better than ref): per task P(X > Y) + 0.5 P(X = Y) over pairs of seeds (Mann-Whitney U / nm), "
                 "averaged over tasks (rliable, Agarwal et al. 2021).")
    return notes


def render_across(records: Iterable[Any], across: str, fmt: str, formats: Mapping[str, LeaderboardFormat],
                  reference: str | None = None, dataset: str | None = None, sweeps: Sequence[Any] = ()) -> str:
    """``tlbench leaderboard --across``: the table in format ``fmt``. ``dataset`` keeps that dataset's records
    (its block with ``--across backbones``, its cells with ``--across cells``); with ``--across datasets`` it would
    leave one task, so it is an error."""
    chosen = chosen_format(formats, fmt)
    if dataset is not None and across == "datasets":
        raise UsageError(f"--dataset leaves one dataset, and --across datasets compares over datasets; use "
                         f"--across backbones --dataset {dataset}, or leave out --dataset")
    require_statistics()
    records = [r for r in records if dataset is None or get(r, "trial.dataset") == dataset]
    if not records:
        raise UsageError("no records" + (f" for dataset {dataset!r}" if dataset else ""))
    blocks = across_blocks(records, across, reference, sweeps)
    if reference is not None and not any(r.strategy == reference or r.name == reference
                                         for b in blocks for r in b.rows):
        names = sorted({r.name for b in blocks for r in b.rows})
        raise UsageError(f"no records of strategy {reference!r} to compare with; choose --vs from "
                         f"{', '.join(names)}")
    several = [b for b in blocks if len(b.tasks) >= 2]
    if not several:
        kind = {"datasets": "dataset", "backbones": "backbone", "cells": "dataset / backbone cell"}[across]
        found = sorted({t for b in blocks for t in b.tasks})
        raise UsageError(f"--across {across} needs records on 2 or more tasks, and every "
                         f"{BLOCK_HEADERS[across] or 'block'} here has one {kind} ({', '.join(found)})")
    table = across_table(several, across)
    alone = [b for b in blocks if len(b.tasks) < 2]
    if alone:
        table.notes.append(f"left out (one task each): " + "; ".join(f"{b.block} ({b.tasks[0]})" for b in alone) + ".")
    return chosen.render(table)


__all__ = ["AXES", "AcrossBlock", "AcrossRow", "across_blocks", "across_table", "render_across", "collect",
           "require_statistics", "STATISTICS"]
