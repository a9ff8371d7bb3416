"""The built-in sections of ``tlbench report``, registered through the same hook a plugin uses.

Each section renders one dataset's records. matplotlib is imported when a plot is drawn, never when the plugin is
loaded (it is the optional ``report`` extra).
"""
from __future__ import annotations

import html
import json
import statistics
from collections import Counter, defaultdict
from typing import Any, Sequence

from tlbench import ReportContext, ReportSection, hookimpl
from tlbench.across import STATISTICS, across_blocks, across_table, collect
from tlbench.leaderboard import leaderboard_rows
from tlbench.record_fields import get, processor_label
from tlbench.errors import printable
from tlbench.pivot import pivot_blocks, value_order, value_text, varied_keys
from tlbench.report import PLOTS, configuration_name
from tlbench.requirements import module_available
from tlbench.stats import critical_difference, friedman_test, nemenyi_p_values, not_different_runs


# ------------------------------------------------------------------------------------------------------ helpers
def _ok(context: ReportContext) -> list[dict[str, Any]]:
    return [r for r in context.records if get(r, "status") == "ok"]


def _multi(context: ReportContext) -> bool:
    return len({get(r, "trial.backbone") for r in context.records}) > 1


def _label(record: Any, context: ReportContext) -> str:
    """The configuration's name in plots and tables: its label, plus the backbone where there are several."""
    return configuration_name(get(record, "trial.backbone"), get(record, "trial.label", get(record, "trial.strategy",
                                                                                          "?")), _multi(context))


def _row_name(row: dict[str, Any], context: ReportContext) -> str:
    tuned = str(row.get("tuning", "")).startswith("best of")
    return configuration_name(row.get("backbone"), row["strategy"], _multi(context)) + (" (tuned)" if tuned else "")


def _strategy_order(context: ReportContext) -> list[str]:
    """Configurations in leaderboard order (best mean test top-1 first)."""
    return list(dict.fromkeys(_row_name(row, context) for row in context.table.values))


def _colours(labels: Sequence[str]) -> dict[str, Any]:
    import matplotlib  # deferred: optional (the report extra)

    cmap = matplotlib.colormaps["tab20"]
    return {label: cmap(i % 20) for i, label in enumerate(sorted(labels))}


def _plt():
    import matplotlib.pyplot as plt  # deferred: optional (the report extra)

    return plt


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "", numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f'<td{" class=num" if i in numeric else ""}>{html.escape("" if v is None else str(v))}</td>'
        for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="table-wrap"><table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _notes(lines: Sequence[str]) -> str:
    return "".join(f'<p class="note">{html.escape(line)}</p>' for line in lines if line)


def _finish_axes(ax: Any, xlabel: str, ylabel: str, entries: int) -> None:
    """Axis labels, a light grid and the legend: what every scatter and curve plot of the report ends with."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _legend(ax, entries)


def _legend(ax: Any, count: int) -> None:
    """Small legends inside the axes; long ones below them, where they cover no point."""
    if count <= 3:
        ax.legend(fontsize=7, loc="best", frameon=False)
    else:
        ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)


# ----------------------------------------------------------------------------------------------------- sections
def leaderboard_section(context: ReportContext) -> str:
    rows = context.table.rows
    if not rows:
        return ""
    headers = ["strategy"] + [h for h in rows[0] if h not in ("dataset", "strategy")]
    numeric = [i for i, h in enumerate(headers) if h not in ("backbone", "strategy", "status", "paired", "95% CI")]
    return (_table(headers, [[row[h] for h in headers] for row in rows], "leaderboard", numeric)
            + _notes(context.table.notes))


def paired_section(context: ReportContext) -> str:
    if not context.reference:
        return _notes([f"No paired comparison: this dataset has no records of the reference strategy."])
    if not context.comparisons:
        return _notes([f"No strategy shares seeds with {context.reference}."])
    order = [s for s in _strategy_order(context) if s in context.comparisons]
    rows = []
    for label in order:
        c = context.comparisons[label]
        interval = "" if c.low is None else f"[{100 * c.low:+.1f}, {100 * c.high:+.1f}]"
        per_seed = ", ".join(f"{seed}: {100 * d:+.1f}" for seed, d in sorted(c.differences.items()))
        half = c.t_half_width
        t_interval = "" if half is None else f"[{100 * (c.mean - half):+.1f}, {100 * (c.mean + half):+.1f}]"
        rows.append([label, c.n, per_seed, f"{100 * c.mean:+.1f}", interval,
                     f"{c.probability_of_improvement:.2f}", c.verdict, t_interval])
    table = _table(["strategy", "paired seeds", f"per-seed Δ vs {context.reference} (pts)", "mean Δ (pts)",
                    "95% bootstrap CI", "P(better)", "verdict", "95% paired t-interval (for comparison)"],
                   rows, "paired", [1, 3, 4, 5, 7])
    if not module_available("matplotlib"):
        return table + _notes([f"The plot of these differences is left out: it needs {PLOTS}."])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, max(2.8, 0.42 * len(order) + 1.3)))
    for y, label in enumerate(order):
        c = context.comparisons[label]
        diffs = [100 * d for d in c.differences.values()]
        ax.scatter(diffs, [y] * len(diffs), s=14, color="#8a96a3", zorder=2, label="per seed" if y == 0 else None)
        colour = "#2b7a3d" if c.verdict == "better" else "#b3261e" if c.verdict == "worse" else "#1d232b"
        if c.low is not None:
            ax.plot([100 * c.low, 100 * c.high], [y, y], color=colour, lw=2.5, zorder=3,
                    label="95% bootstrap CI" if y == 0 else None)
        ax.scatter([100 * c.mean], [y], marker="D", s=30, color=colour, zorder=4, label="mean" if y == 0 else None)
    ax.axvline(0, color="#5b6672", lw=1, ls="--")
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"test top-1 − {context.reference} (points), paired by seed")
    ax.grid(axis="x", alpha=0.3)
    _legend(ax, 3)
    figure = context.figure(fig, f"Paired difference of test top-1 to {context.reference} per seed (grey), mean "
                                 f"(diamond) and bootstrap 95% interval; green/red: interval excludes 0.")
    return table + figure + _notes([
        f"Each seed's difference is strategy − {context.reference} on the same seed and the same split. The "
        f"interval is a percentile bootstrap of the mean difference (10,000 resamples, numpy; with 3 seeds it can "
        f"take only 10 distinct resample means and is narrower than the paired t-interval shown beside it). P(better): share of seeds in which the strategy "
        f"beat {context.reference} (ties count half). 'not distinguishable': the interval covers 0.",
        context.variance])


def _pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x, higher y), sorted by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def accuracy_time_section(context: ReportContext) -> str:
    ok = [r for r in _ok(context) if isinstance(get(r, "metrics.time_s.total"), (int, float))
          and isinstance(get(r, "metrics.test_top1"), (int, float))]
    if not ok:
        return ""
    plt = _plt()
    colours = _colours({_label(r, context) for r in ok})
    points = [(float(get(r, "metrics.time_s.total")), 100 * float(get(r, "metrics.test_top1"))) for r in ok]
    front = _pareto(points)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for label in _strategy_order(context):
        xs = [p for p, r in zip(points, ok) if _label(r, context) == label]
        if xs:
            ax.scatter([p[0] for p in xs], [p[1] for p in xs], s=22, color=colours[label], label=label, zorder=3)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="#1d232b", lw=1, ls="--",
            drawstyle="steps-post", zorder=2, label="Pareto front")
    ax.scatter([points[i][0] for i in front], [points[i][1] for i in front], s=90, facecolors="none",
               edgecolors="#1d232b", zorder=4)
    ax.set_xscale("log")
    _finish_axes(ax, "trial wall time (s, log scale): data, features, training and evaluation", "test top-1 (%)", len(colours) + 1)
    on_front = ", ".join(f"{_label(ok[i], context)} seed {get(ok[i], 'trial.seed')} ({points[i][0]:.1f} s, "
                         f"{points[i][1]:.1f}%)" for i in front)
    return context.figure(fig, "Test top-1 against trial wall time, one point per trial; circled: the Pareto front "
                               "(no other trial is both faster and more accurate).") + _notes(
        [f"On the Pareto front: {on_front}.", "Work shared within a run (decoding the data, a frozen backbone's "
         "feature pass) is counted in the first trial that needed it, so later seeds of a cached strategy look "
         "faster than the first."])


def accuracy_params_section(context: ReportContext) -> str:
    ok = [r for r in _ok(context) if isinstance(get(r, "metrics.params.trainable"), (int, float))
          and get(r, "metrics.params.trainable") > 0 and isinstance(get(r, "metrics.test_top1"), (int, float))]
    if not ok:
        return ""
    plt = _plt()
    colours = _colours({_label(r, context) for r in ok})
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for label in _strategy_order(context):
        mine = [r for r in ok if _label(r, context) == label]
        if mine:
            ax.scatter([get(r, "metrics.params.trainable") for r in mine],
                       [100 * get(r, "metrics.test_top1") for r in mine], s=22, color=colours[label], label=label)
    ax.set_xscale("log")
    _finish_axes(ax, "trainable parameters (log scale)", "test top-1 (%)", len(colours))
    return context.figure(fig, "Test top-1 against the number of trained parameters, one point per trial.")


def means_section(context: ReportContext) -> str:
    rows = [v for v in context.table.values if isinstance(v.get("test"), dict)]
    if not rows:
        return ""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, max(2.8, 0.42 * len(rows) + 1.3)))
    by_label = defaultdict(list)
    for r in _ok(context):
        if isinstance(get(r, "metrics.test_top1"), (int, float)):
            by_label[_label(r, context)].append(100 * get(r, "metrics.test_top1"))
    for y, row in enumerate(rows):
        test = row["test"]
        if test["ci95"] is not None:
            ax.errorbar([100 * test["mean"]], [y], xerr=[[100 * test["ci95"]]], fmt="o", color="#1d232b",
                        capsize=3, lw=1.5, label="mean, 95% t-interval" if y == 0 else None)
        else:
            ax.scatter([100 * test["mean"]], [y], color="#1d232b", marker="o")
        values = by_label.get(_row_name(row, context), [])
        ax.scatter(values, [y] * len(values), s=10, color="#8a96a3", zorder=3, label="per seed" if y == 0 else None)
    ax.set_yticks(range(len(rows)), [_row_name(r, context) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test top-1 (%)")
    ax.grid(axis="x", alpha=0.3)
    _legend(ax, 2)
    return context.figure(fig, "Each strategy's mean test top-1 with its 95% Student t-interval over seeds, and "
                               "the seeds themselves.") + _notes([context.variance])


def curves_section(context: ReportContext) -> str:
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in _ok(context):
        history = get(r, "metrics.history", [])
        if not isinstance(history, list):
            continue
        for index, entry in enumerate(history):
            if isinstance(entry, dict) and isinstance(entry.get("val_top1"), (int, float)):
                curves[_label(r, context)][index + 1].append(100 * entry["val_top1"])
    if not curves:
        return ""
    plt = _plt()
    colours = _colours(list(curves))
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for label in [s for s in _strategy_order(context) if s in curves]:
        epochs = sorted(curves[label])
        ax.plot(epochs, [statistics.fmean(curves[label][e]) for e in epochs], marker=".", lw=1.3,
                color=colours[label], label=label)
    _finish_axes(ax, "epoch (phases one after another, e.g. lp-ft's probe then fine-tune)", "validation top-1 (%), mean over seeds", len(curves))
    return context.figure(fig, "Validation top-1 after each epoch, mean over seeds, from the records' history.")


def cost_section(context: ReportContext) -> str:
    rows = [v for v in context.table.values if isinstance(v.get("train_ips"), (int, float))]
    if not rows:
        return ""
    plt = _plt()
    labels = [_row_name(r, context) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(8, max(2.8, 0.38 * len(rows) + 1.5)), sharey=True)
    y = list(range(len(rows)))
    axes[0].barh([v - 0.2 for v in y], [r["train_ips"] for r in rows], height=0.4, color="#3b6ea8",
                 label="train")
    axes[0].barh([v + 0.2 for v in y], [r.get("eval_ips") or 0 for r in rows], height=0.4, color="#c98a2b",
                 label="eval")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("images/s (log scale)")
    axes[0].legend(fontsize=7, frameon=False)
    axes[1].barh(y, [r.get("memory") or 0 for r in rows], color="#6b5b95")
    axes[1].set_xlabel("peak memory (MiB)")
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].invert_yaxis()
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    device = sorted({str(get(r, "environment.device", "?")) for r in context.records})
    memory = sorted({str(get(r, "metrics.peak_memory.kind", "")) for r in _ok(context)} - {""})
    return context.figure(fig, "Throughput (train and eval images/s, after warm-up) and peak memory, means over "
                               "seeds.") + _notes([
        f"Device: {', '.join(device)}. Peak memory kind: {', '.join(memory) or 'n/a'} (on CPU the growth of the "
        f"process's peak resident set during the trial). A frozen backbone's train img/s is the head on cached "
        f"features, not comparable with end-to-end training.", _train_flops_note(context)])


def _train_flops_note(context: ReportContext) -> str:
    """Train GFLOP/s achieved beside train img/s, per configuration (the FLOP count says how it was counted)."""
    rows = [r for r in leaderboard_rows(context.records, ("train_ips", "train_gflops_s"))
            if r.get("train GFLOP/s")]
    if not rows:
        return ("Train GFLOP/s: not recorded (records before the corrected FLOP count; their train_gflops_total "
                "counted convolution backward as dense).")
    multi = len({r["backbone"] for r in rows}) > 1
    cells = "; ".join(f"{configuration_name(r['backbone'], r['strategy'], multi)}: {r['train GFLOP/s']} GFLOP/s at "
                      f"{r['train img/s']} img/s" for r in rows)
    methods = sorted({str(get(r, "metrics.flops_method", "old count: torch.utils.flop_counter, convolution "
                                                         "backward counted as dense")) for r in _ok(context)})
    return f"Train GFLOP/s achieved (FLOPs per train image x train img/s): {cells}. FLOPs counted by: " \
           f"{'; '.join(methods)}."


def _distinct(records: Sequence[Any], path: str) -> str:
    values = []
    for r in records:
        value = get(r, path)
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        values.append(text)
    counts = defaultdict(int)
    for value in values:
        counts[value] += 1
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{value} ({count} records)" for value, count in sorted(counts.items()))


def axes_section(context: ReportContext) -> str:
    """Accuracy against each setting that takes several values in this dataset's records (a ``--vary`` axis, or
    separate ``--set`` runs), per strategy, with 95% t-intervals: the plot of ``leaderboard --pivot``."""
    keys = varied_keys(context.records)
    if not keys:
        return ""
    if not module_available("matplotlib"):  # not ``requires``: without an axis there is no section to leave out
        return f'<p class="note">Left out: this section needs {html.escape(str(PLOTS))}.</p>'
    plt = _plt()
    parts = []
    for key in keys:
        blocks = [b for b in pivot_blocks(context.records, key) if b.rows]
        values = sorted({json.dumps(v, sort_keys=True, default=str): v for b in blocks for v in b.values}.values(),
                        key=value_order)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        log = numeric and min(values) > 0 and max(values) > 10 * min(values)
        position = {json.dumps(v, sort_keys=True, default=str): (float(v) if numeric else float(i))
                    for i, v in enumerate(values)}
        names = [configuration_name(b.backbone, row.strategy, len(blocks) > 1) for b in blocks for row in b.rows]
        colours = _colours(names)
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        for (block, row), name in zip([(b, r) for b in blocks for r in b.rows], names):
            points = sorted((position[text], cell.summary) for text, cell in row.cells.items() if cell.summary)
            if not points:
                continue
            xs = [x for x, _ in points]
            ys = [100 * s.mean for _, s in points]
            errors = [100 * (s.half_width or 0.0) for _, s in points]
            ax.errorbar(xs, ys, yerr=errors, marker="o", ms=4, lw=1.3, capsize=3, color=colours[name], label=name)
        if log:
            ax.set_xscale("log")
        ax.set_xticks([position[json.dumps(v, sort_keys=True, default=str)] for v in values],
                      [value_text(v) for v in values], fontsize=8)
        ax.minorticks_off()
        _finish_axes(ax, key + (" (log scale)" if log else ""), "test top-1 (%), mean over seeds", len(names))
        parts.append(f"<h4>{html.escape(printable(key))}</h4>" + context.figure(
            fig, f"Test top-1 against {printable(key)}{' (log scale)' if log else ''} per strategy: the mean over "
                 f"seeds with its 95% Student t-interval (no bar with one seed)."))
        skipped = sorted({s for b in blocks for s in b.not_applicable})
        if skipped:
            parts.append(_notes([f"{key} does not apply to {', '.join(skipped)}: not drawn."]))
    return "".join(parts) + _notes([
        "The value of each setting is the one each record ran with (a record at the default is at the default's "
        "value); `tlbench leaderboard --pivot KEY` prints the same numbers as a table.", context.variance])


def protocol_section(context: ReportContext) -> str:
    records = list(context.records)
    shared = [
        ("dataset", _distinct(records, "trial.dataset")),
        ("split sizes", _distinct(records, "data.sizes")),
        ("split", _distinct(records, "data.source.split")),
        ("split seed setting", _distinct(records, "trial.data.split_seed")),
        ("data settings", _distinct(records, "trial.data")),
        ("image size (network input)", _distinct(records, "backbone.preprocessing.input_size")),
        ("preprocessing", _distinct(records, "backbone.preprocessing.source")),
        ("backbone weights", _distinct(records, "backbone.weights.source")),
        ("seeds", ", ".join(str(s) for s in sorted({get(r, "trial.seed") for r in records}))),
        ("selection", _distinct(records, "plan.selection")),
    ]
    per_strategy = []
    seen = set()
    for r in sorted(records, key=lambda r: _label(r, context)):
        label = _label(r, context)
        if label in seen or get(r, "status") != "ok":
            continue
        seen.add(label)
        protocol = get(r, "trial.protocol", {})
        phases = get(r, "plan.phases", [])
        bn = ", ".join(f"{p.get('name')}: {p.get('batchnorm')}" for p in phases) if len(phases) > 1 else \
            str(get(r, "plan.batchnorm", ""))
        rates = "; ".join(json.dumps(p.get("learning_rates"), sort_keys=True) for p in phases) if phases else ""
        per_strategy.append([label, get(r, "metrics.epochs"), protocol.get("batch_size"),
                             f"{protocol.get('schedule')} (warm-up {protocol.get('warmup_epochs')} epoch)",
                             protocol.get("weight_decay"), bn, rates,
                             json.dumps(get(r, "trial.hparams", {}), sort_keys=True)])
    return (_table(["setting", "value"], shared, "protocol")
            + _table(["strategy", "epochs (all phases)", "batch", "schedule", "weight decay", "BatchNorm",
                      "learning rates (per phase)", "hyper-parameters"], per_strategy, "protocol-strategies"))


ENVIRONMENT_FIELDS = ("device", "cpu_model", "cpu_count", "cpu_usable", "cpu_capability", "cuda", "torch",
                      "torchvision", "timm", "tlbench", "python", "platform", "git_commit", "host")


def environment_section(context: ReportContext) -> str:
    processors = Counter(processor_label(r) for r in context.records)
    rows = [("processor", "; ".join(f"{label} ({n} record{'s' if n > 1 else ''})"
                                    for label, n in sorted(processors.items())))]
    rows += [(name, _distinct(context.records, f"environment.{name}")) for name in ENVIRONMENT_FIELDS]
    rows.append(("runtime", _distinct(context.records, "runtime")))
    created = sorted(str(get(r, "created", "")) for r in context.records if get(r, "created"))
    if created:
        rows.append(("records written", f"{created[0]} … {created[-1]}"))
    return _table(["field", "value"], rows, "environment")


def reproduce_section(context: ReportContext) -> str:
    commands = sorted({str(get(r, "command")) for r in context.records if get(r, "command")})
    recorded = "".join(f"<pre>{html.escape(c)}</pre>" for c in commands) or "<p>no command recorded</p>"
    commits = sorted({str(get(r, "environment.git_commit")) for r in context.records
                      if get(r, "environment.git_commit")})
    return (f"<p>The commands that wrote these records (run from the tlbench checkout at commit "
            f"{html.escape(', '.join(commits) or 'unknown')}):</p>{recorded}"
            f"<p>Each trial again, with every recorded setting: <code>tlbench rerun KEY --print-only</code>. "
            f"This report: <code>tlbench report --results-dir DIR"
            f"{f' --reference {html.escape(context.reference)}' if context.reference else ''}</code>.</p>")


# --------------------------------------------------------------------------------------------- across tasks
def across_section(context: ReportContext) -> str:
    """Over every dataset x backbone cell of the report (``tlbench leaderboard --across cells``): the table of
    mean top-1, mean rank, IQM with its stratified-bootstrap interval and P(better), then the Friedman test and a
    critical-difference diagram. Nothing with fewer than 2 tasks."""
    cells = collect(context.records, "cells", context.sweeps).get("", {})
    if len(cells) < 2:
        return ""
    if not module_available("scipy"):
        return _notes([f"Left out: the statistics across tasks need scipy, which is not installed; install it "
                       f"with {STATISTICS}."])
    # the report's --reference when it names one configuration (by label, else by strategy); otherwise (not given,
    # or several: a --vary study has a full per value) the default rule: full when it is one configuration with
    # scores on every task, else the best-ranked
    by_label = {name for cell in cells.values() for name in cell if name == context.reference}
    by_name = {name for cell in cells.values() for name, entry in cell.items() if entry["name"] == context.reference}
    wanted = context.reference if len(by_label) == 1 or (not by_label and len(by_name) == 1) else None
    blocks = across_blocks(context.records, "cells", wanted, context.sweeps)
    table = across_table(blocks, "cells")
    headers = list(table.rows[0])
    numeric = [i for i, h in enumerate(headers) if h in ("mean test top-1 %", "mean rank", "IQM %")]
    return (_table(headers, [[printable(str(row[h])) for h in headers] for row in table.rows], "across", numeric)
            + _notes(table.notes) + _critical_difference(blocks[0], context))


def _critical_difference(block: Any, context: ReportContext) -> str:
    """The Friedman test over the per-task means and the diagram of mean ranks with Nemenyi's groups, or one line
    saying why it is absent."""
    complete = block.complete
    k, n = len(complete), len(block.tasks)
    if k < 3:
        return _notes([f"No critical-difference diagram: it needs 3 or more strategies with scores on every task "
                       f"(here {k}); the Friedman test is not defined for fewer."])
    means = block.task_means()
    statistic, p = friedman_test(means)
    friedman = (f"Friedman test over {n} tasks and {k} strategies (scipy): chi-square {statistic:.2f}, "
                f"p = {p:.3g}" + (". p >= 0.05: the ranks are not distinguishable, so no pairwise difference is "
                                  "supported; the diagram shows the groups as the post-hoc test computes them."
                                  if p >= 0.05 else " < 0.05: some strategies rank differently."))
    if not module_available("scikit_posthocs"):
        return _notes([friedman, f"No critical-difference diagram: the Nemenyi test needs scikit-posthocs, which is "
                                 f"not installed; install it with {STATISTICS}."])
    if not module_available("matplotlib"):
        return _notes([friedman, f"No critical-difference diagram: it is drawn with matplotlib; install it with "
                                 f"{PLOTS}."])
    ranks = [row.mean_rank for row in complete]
    runs = not_different_runs(ranks, nemenyi_p_values(means))
    cd = critical_difference(k, n)
    names = [printable(row.strategy) for row in complete]
    figure = context.figure(_cd_figure(names, ranks, runs, cd),
                            f"Critical-difference diagram: mean rank over {n} tasks (1 = best); a bar joins "
                            f"strategies the Nemenyi test does not tell apart at alpha 0.05 (CD = {cd:.2f}).")
    return figure + _notes([friedman, (
        f"Nemenyi post-hoc test (scikit-posthocs' posthoc_nemenyi_friedman) on the per-task means of the "
        f"{k} strategies with scores on every task; critical difference CD = q_0.05 x sqrt(k(k+1)/(6N)) = "
        f"{cd:.2f} for k = {k}, N = {n} (Demšar 2006, q_0.05 from its Table 5). With few tasks the test has "
        f"little power: a bar says 'not shown different', not 'equal'.")])


def _cd_figure(names: Sequence[str], ranks: Sequence[float], runs: Sequence[tuple[int, int]], cd: float) -> Any:
    """Demšar's diagram: the mean-rank axis (1 on the left), each strategy's rank marked and labelled (the better
    half on the left, the rest on the right), thick bars under the axis for the groups not significantly
    different, and the critical difference drawn to scale above it."""
    plt = _plt()
    k = len(names)
    order = sorted(range(k), key=lambda i: (ranks[i], names[i]))
    left, right = order[:(k + 1) // 2], order[(k + 1) // 2:]
    bar_step, line_step = 0.12, 0.28
    first_label = -(bar_step * (len(runs) + 1) + 0.15)
    lowest = first_label - line_step * max(len(left), len(right))
    fig, ax = plt.subplots(figsize=(7.5, max(1.8, 1.2 + 1.6 * -lowest)))
    ax.set_xlim(1, k)
    ax.set_ylim(lowest - 0.1, 0.75)
    ax.axis("off")
    ax.plot([1, k], [0, 0], color="#1d232b", lw=1.2)
    for tick in range(1, k + 1):
        ax.plot([tick, tick], [0, 0.06], color="#1d232b", lw=1)
        ax.text(tick, 0.1, str(tick), ha="center", va="bottom", fontsize=8)
    ax.plot([1, 1 + cd], [0.5, 0.5], color="#b3261e", lw=2, solid_capstyle="butt")
    for x in (1, 1 + cd):
        ax.plot([x, x], [0.45, 0.55], color="#b3261e", lw=1.2)
    ax.text(1 + cd / 2, 0.58, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8, color="#b3261e")
    for j, (first, last) in enumerate(runs):
        y = -bar_step * (j + 1)
        ax.plot([ranks[order[first]] - 0.03, ranks[order[last]] + 0.03], [y, y], color="#1d232b", lw=3.5,
                solid_capstyle="round")
    for side, members in (("left", left), ("right", right)):
        for line, i in enumerate(members if side == "left" else reversed(members)):
            y = first_label - line_step * line
            end = 1 - 0.12 if side == "left" else k + 0.12
            ax.plot([ranks[i], ranks[i], end], [0, y, y], color="#5b6672", lw=0.9, clip_on=False)
            ax.scatter([ranks[i]], [0], s=18, color="#1d232b", zorder=3, clip_on=False)
            ax.text(end - 0.05 if side == "left" else end + 0.05, y, f"{names[i]} ({ranks[i]:.2f})",
                    ha="right" if side == "left" else "left", va="center", fontsize=8, clip_on=False)
    return fig


NEEDS_MATPLOTLIB = {"matplotlib": PLOTS}  # the sections that are plots only
BUILTIN_SECTIONS = [
    ReportSection("leaderboard", "Leaderboard", 10, leaderboard_section),
    ReportSection("paired", "Paired comparison with the reference", 20, paired_section),
    ReportSection("accuracy-vs-time", "Accuracy against training time (Pareto front)", 30, accuracy_time_section,
                  NEEDS_MATPLOTLIB),
    ReportSection("accuracy-vs-parameters", "Accuracy against trainable parameters", 40, accuracy_params_section,
                  NEEDS_MATPLOTLIB),
    ReportSection("means", "Mean accuracy with 95% intervals", 50, means_section,
                  NEEDS_MATPLOTLIB),
    ReportSection("curves", "Validation accuracy per epoch", 60, curves_section,
                  NEEDS_MATPLOTLIB),
    ReportSection("cost", "Throughput and peak memory", 70, cost_section,
                  NEEDS_MATPLOTLIB),
    ReportSection("axes", "Accuracy against the varied settings", 75, axes_section),
    ReportSection("protocol", "Protocol", 80, protocol_section),
    ReportSection("environment", "Environment", 90, environment_section),
    ReportSection("reproduce", "Reproduce", 100, reproduce_section),
    ReportSection("across", "Strategies across tasks", 10, across_section, scope="all"),
]


@hookimpl
def register_report_sections(register):
    for section in BUILTIN_SECTIONS:
        register(section)
