"""The leaderboard is only a view over result records: grouped by configuration, aggregated over seeds.

Accuracy is mean ± sample std over seeds with n and a 95% Student t-interval; with one seed it says n=1 instead of
pretending the spread is zero. Failed or diverged trials are shown in their cell, never hidden.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
import statistics
from collections import defaultdict
from typing import Any, Iterable, Sequence

from tabulate import tabulate

from tlbench.types import UsageError

FORMATS = ("github", "plain", "simple", "html", "latex", "csv", "json")

def _t_central_probability(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with an integer number of degrees of freedom (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(dof))
    cos2, term, total = math.cos(theta) ** 2, 1.0, 1.0
    if dof % 2:  # odd: (2/pi) * (theta + sin * cos * (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        for k in range(1, (dof - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            total += term
        series = math.sin(theta) * math.cos(theta) * total if dof > 1 else 0.0
        return 2 / math.pi * (theta + series)
    for k in range(1, dof // 2):  # even: sin * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term *= cos2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


@functools.lru_cache(maxsize=None)
def t95(dof: int) -> float:
    """Two-sided 95% Student t quantile for ``dof`` = n - 1 degrees of freedom, to 3 decimals (the textbook table's
    values for 1-30; exact beyond, where a normal 1.96 would make the interval up to 4% too narrow)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    low, high = 1.959, 12.71
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_central_probability(middle, min(dof, 100_000)) < 0.95 else (low, middle)
    return round((low + high) / 2, 3)


# column name -> (header, how to get one trial's value, "pct" | "int" | "float" | "mib")
COLUMNS: dict[str, tuple[str, str, str]] = {
    "test": ("test top-1 %", "metrics.test_top1", "pct"),
    "ci95": ("95% CI", "metrics.test_top1", "ci"),
    "n": ("n", "", "n"),
    "val": ("val top-1 %", "metrics.val_top1", "pct"),
    "test5": ("test top-5 %", "metrics.test_top5", "pct"),
    "epoch": ("best epoch", "metrics.best_epoch", "float"),
    "train_ips": ("train img/s", "metrics.train_images_per_s", "float"),
    "eval_ips": ("eval img/s", "metrics.eval_images_per_s", "float"),
    "memory": ("peak mem MiB", "metrics.peak_memory_mib", "float"),
    "time": ("time s", "metrics.time_s.total", "float"),
    "gflops": ("GFLOPs/img", "metrics.gflops_per_image", "float3"),
    "trainable": ("trainable params", "metrics.params.trainable", "int"),
    "cache": ("feature cache", "metrics.feature_cache", "bool"),
    "status": ("status", "", "status"),
}
DEFAULT_COLUMNS = ("test", "n", "ci95", "val", "train_ips", "eval_ips", "memory", "time", "status")
WIDE_COLUMNS = ("test", "n", "ci95", "val", "test5", "epoch", "train_ips", "eval_ips", "memory", "gflops",
                "trainable", "cache", "time", "status")


def _get(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def group_records(records: Iterable[dict[str, Any]], dataset: str | None = None) -> list[dict[str, Any]]:
    """One entry per configuration (same trial identity except the seed), with its ok and failed records."""
    groups: dict[str, dict[str, Any]] = {}
    for record in records:
        trial = record.get("trial", {})
        if dataset and trial.get("dataset") != dataset:
            continue
        group = groups.setdefault(trial.get("group", record["key"]), {
            "dataset": trial.get("dataset"), "backbone": trial.get("backbone"),
            "strategy": trial.get("label", trial.get("strategy")), "ok": [], "failed": []})
        (group["ok"] if record.get("status") == "ok" else group["failed"]).append(record)
    return list(groups.values())


def _aggregate(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    std = statistics.stdev(values)
    return mean, std, t95(len(values) - 1) * std / math.sqrt(len(values))


def _cell(group: dict[str, Any], column: str, machine: bool) -> Any:
    header, path, kind = COLUMNS[column]
    ok = group["ok"]
    if kind == "n":
        return len(ok)
    if kind == "status":
        statuses = defaultdict(int)
        for record in group["failed"]:
            statuses[record.get("status", "failed")] += 1
        text = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
        return text or "ok"
    values = [v for v in (_get(r, path) for r in ok) if isinstance(v, (int, float))]
    if not values:
        return None if machine else ("FAILED" if kind == "pct" and group["failed"] else "")
    mean, std, half = _aggregate(values)
    if machine:
        return {"mean": mean, "std": std, "ci95": half, "n": len(values)} if kind in ("pct", "ci") else mean
    if kind == "ci":
        if half is None:
            return "n=1"
        return f"[{100 * (mean - half):.1f}, {100 * (mean + half):.1f}]"
    if kind == "pct":
        return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")
    if kind == "int":
        return f"{int(mean):,}"
    if kind == "float3":
        return f"{mean:.3f}"
    if kind == "bool":
        return "yes" if mean else "no"
    text = f"{mean:,.0f}" if abs(mean) >= 100 else f"{mean:.1f}"
    if column == "train_ips" and all(_trained_on_features(r) for r in ok):
        text += " (head)"  # trained on cached features: not comparable with end-to-end rows
    elif column == "train_ips" and all(_trained_on_prefix_cache(r) for r in ok):
        text += " (suffix)"  # the layers after a cached frozen prefix: not comparable with end-to-end rows
    return text


def _trained_on_prefix_cache(record: dict[str, Any]) -> bool:
    """Some phase trained on cached frozen-prefix activations, and every other one on cached features."""
    phases = _get(record, "plan.phases")
    if not isinstance(phases, list) or not phases or not all(isinstance(p, dict) for p in phases):
        return False
    on_prefix = [bool((p.get("prefix_cache") or {}).get("used")) for p in phases]
    return any(on_prefix) and all(used or p.get("feature_cache") for used, p in zip(on_prefix, phases))


def _trained_on_features(record: dict[str, Any]) -> bool:
    """Every phase trained the head on cached features (0.1 records: the one phase did if the cache was used)."""
    phases = _get(record, "plan.phases")
    if isinstance(phases, list) and phases:
        return all(isinstance(p, dict) and p.get("feature_cache") for p in phases)
    return bool(_get(record, "metrics.feature_cache"))


def leaderboard_rows(records: Iterable[dict[str, Any]], columns: Sequence[str] = DEFAULT_COLUMNS,
                     dataset: str | None = None, machine: bool = False) -> list[dict[str, Any]]:
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise UsageError(f"unknown leaderboard column {unknown[0]!r}; choose from {', '.join(COLUMNS)}")
    groups = group_records(records, dataset)

    def sort_key(group: dict[str, Any]) -> tuple:
        accs = [r["metrics"]["test_top1"] for r in group["ok"] if r.get("metrics", {}).get("test_top1") is not None]
        return (group["dataset"] or "", -(statistics.fmean(accs) if accs else -1.0), group["backbone"] or "",
                group["strategy"] or "")

    rows = []
    for group in sorted(groups, key=sort_key):
        row = {"dataset": group["dataset"], "backbone": group["backbone"], "strategy": group["strategy"]}
        for column in columns:
            row[column if machine else COLUMNS[column][0]] = _cell(group, column, machine)
        rows.append(row)
    return rows


def render(records: Iterable[dict[str, Any]], fmt: str = "github", columns: Sequence[str] = DEFAULT_COLUMNS,
           dataset: str | None = None) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    records = list(records)
    if fmt == "json":
        return json.dumps(leaderboard_rows(records, columns, dataset, machine=True), indent=2)
    rows = leaderboard_rows(records, columns, dataset)
    if not rows:
        return ""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    return tabulate(rows, headers="keys", tablefmt=fmt, disable_numparse=True)
