"""The leaderboard is only a view over result records: grouped by configuration, aggregated over seeds.

Accuracy is mean ± sample std over seeds with n and a 95% Student t-interval; with one seed it says n=1 instead of
pretending the spread is zero. Failed or diverged trials are shown in their cell, never hidden.
"""
from __future__ import annotations

import difflib
import json
import math
import statistics
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping, Sequence

from tlbench.publishing import LeaderboardFormat, LeaderboardTable
from tlbench.record_fields import get, processor_label
from tlbench.registry import Plugins
from tlbench.stats import PairedComparison, paired_comparison, t_interval
from tlbench.types import UsageError
from tlbench.version import PROTOCOL_VERSION

FORMATS = ("github", "plain", "simple", "html", "latex", "csv", "json")  # the built-in ones (plugins add more)

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
    # training FLOPs: records without metrics.flops_method were counted with torch's dense conv backward ("old
    # count": about 14x too much for depthwise networks); their cells say so
    "train_gflops": ("train GFLOPs", "metrics.train_gflops_total", "flops"),
    "train_gflops_s": ("train GFLOP/s", "metrics.train_gflops_per_s", "flops"),
    "trainable": ("trainable params", "metrics.params.trainable", "int"),
    "cache": ("feature cache", "metrics.feature_cache", "bool"),
    "status": ("status", "", "status"),
}
DEFAULT_REFERENCE = "full"  # what the report compares with and --across measures P(better) against by default
DEFAULT_COLUMNS = ("test", "n", "ci95", "val", "train_ips", "eval_ips", "memory", "time", "status")
WIDE_COLUMNS = ("test", "n", "ci95", "val", "test5", "epoch", "train_ips", "train_gflops_s", "eval_ips", "memory",
                "gflops", "train_gflops", "trainable", "cache", "time", "status")


def _get(record: Any, dotted: str) -> Any:
    return get(record, dotted)


def group_records(records: Iterable[dict[str, Any]], dataset: str | None = None,
                  sweeps: Sequence[Any] = (), candidates: bool = False) -> list[dict[str, Any]]:
    """One entry per configuration (same trial identity except the seed), with its ok and failed records.

    With ``sweeps`` (``tlbench.tuning.Sweep``), each sweep adds a *tuned* entry: its reporting seeds' records of
    the chosen configuration, ``tuning`` saying "best of K on val: <values>". Records a sweep ran for
    non-default configurations (the candidates on the selection seeds, the chosen one's reporting seeds) appear
    only in the tuned row unless ``candidates`` (the candidates' test scores chose nothing; listing them invites
    choosing on test); every other entry's ``tuning`` is "default" or "as set" (some of the strategy's own
    settings given by hand)."""
    groups: dict[str, dict[str, Any]] = {}
    by_key: dict[str, Any] = {}
    for record in records:
        if dataset and get(record, "trial.dataset") != dataset:
            continue
        by_key[get(record, "key")] = record
        group = groups.setdefault(get(record, "trial.group", get(record, "key")), {
            "dataset": get(record, "trial.dataset"), "backbone": get(record, "trial.backbone"),
            "strategy": _label(get(record, "trial.label", get(record, "trial.strategy")), record),
            "name": get(record, "trial.strategy"), "protocol": protocol_of(record), "ok": [], "failed": [],
            "tuned": False,
            "tuning": _tuning_of(record),
            "data": json.dumps(get(record, "trial.data", {}), sort_keys=True, default=str)})
        (group["ok"] if get(record, "status") == "ok" else group["failed"]).append(record)
    in_sweeps = {key for sweep in sweeps for c in sweep.candidates for key in c.keys} | {
        key for sweep in sweeps for key in sweep.reporting_keys}
    for key, group in list(groups.items()):
        if group["tuning"] == "default" or not in_sweeps:
            continue
        if candidates:  # everything, marked
            if all(get(r, "key") in in_sweeps for r in group["ok"] + group["failed"]):
                group["tuning"] = "tried by a sweep"
            continue
        # a configuration a sweep tried (or chose: its tuned row shows it) keeps only seeds run by hand
        group["ok"] = [r for r in group["ok"] if get(r, "key") not in in_sweeps]
        group["failed"] = [r for r in group["failed"] if get(r, "key") not in in_sweeps]
        if not group["ok"] and not group["failed"]:
            del groups[key]
    entries = list(groups.values())
    for sweep in sweeps:
        found = [by_key[key] for key in sweep.reporting_keys if key in by_key]
        if not found:
            continue
        first = found[0]
        entries.append({"dataset": get(first, "trial.dataset"), "backbone": get(first, "trial.backbone"),
                        "strategy": _label(sweep.reporting_label, first), "name": sweep.strategy,
                        "strategy_tuned": _label(sweep.strategy, first) + " (tuned)",  # the same on every task
                        "protocol": protocol_of(first), "tuned": True,
                        "tuning": sweep.tuning_text + sweep.edge_suffix, "sweep": sweep,
                        "ok": [r for r in found if get(r, "status") == "ok"],
                        "failed": [r for r in found if get(r, "status") != "ok"],
                        "data": json.dumps(get(first, "trial.data", {}), sort_keys=True, default=str)})
    _tell_sweeps_apart([e for e in entries if e["tuned"]])
    return entries


def _tell_sweeps_apart(tuned: Sequence[dict[str, Any]]) -> None:
    """Several sweeps of one dataset x backbone x strategy x data (``--tune`` run again with another budget,
    ``--tune-extensions``, halving or seeds) are separate tuned rows: each row's ``tuning`` and tuned name get
    the settings that differ (``[extensions 4]``), or the sweep key when none does."""
    by_task: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for entry in tuned:
        by_task.setdefault((entry["dataset"], entry["backbone"], entry["name"], entry["data"]), []).append(entry)
    for same in by_task.values():
        if len(same) < 2:
            continue
        settings = [entry["sweep"].tuning_settings for entry in same]
        differ = [name for name in settings[0] if len({s[name] for s in settings}) > 1]
        for entry, setting in zip(same, settings):
            shown = (", ".join(f"{name} {setting[name]}" for name in differ) if differ
                     else f"sweep {entry['sweep'].key}")
            entry["tuning"] += f" [{shown}]"
            entry["strategy_tuned"] = entry["strategy_tuned"].removesuffix(")") + f", {shown})"


def protocol_of(record: Any) -> int:
    """The protocol version a record was measured under (records older than the field: 1)."""
    return get(record, "trial.protocol_version", 1) or 1


def _label(label: str, record: Any) -> str:
    """A configuration measured under an older protocol says so: its numbers are not today's defaults' (protocol 1
    ran the CPU without channels_last), and it is never paired with a configuration of another protocol."""
    version = protocol_of(record)
    return label if version == PROTOCOL_VERSION else f"{label} (protocol {version})"


def _tuning_of(record: Any) -> str:
    """"default" unless some of the strategy's own hyper-parameters were set by hand ("as set")."""
    hparams = get(record, "trial.hparams", {}) or {}
    overrides = get(record, "trial.overrides", {}) or {}
    return "as set" if any(key in hparams for key in overrides) else "default"


def _cell(group: dict[str, Any], column: str, machine: bool) -> Any:
    header, path, kind = COLUMNS[column]
    ok = group["ok"]
    if kind == "n":
        return len(ok)
    if kind == "status":
        statuses = defaultdict(int)
        for record in group["failed"]:
            statuses[get(record, "status", "failed")] += 1
        text = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
        return text or "ok"
    values = [v for v in (_get(r, path) for r in ok) if isinstance(v, (int, float))]
    if not values:
        return None if machine else ("FAILED" if kind == "pct" and group["failed"] else "")
    summary = t_interval(values)
    mean, std, half = summary.mean, summary.std, summary.half_width
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
    if kind == "flops":
        text = f"{mean:,.0f}" if abs(mean) >= 100 else f"{mean:.1f}" if abs(mean) >= 1 else f"{mean:.3f}"
        return text + (" (old count)" if any(_get(r, "metrics.flops_method") is None for r in ok) else "")
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


def _sorted_groups(records: Iterable[Any], dataset: str | None, sweeps: Sequence[Any] = (),
                   candidates: bool = False) -> list[dict[str, Any]]:
    """Per dataset, the untuned rows then the tuned ones, each by test top-1."""
    def sort_key(group: dict[str, Any]) -> tuple:
        accs = [v for v in (get(r, "metrics.test_top1") for r in group["ok"]) if isinstance(v, (int, float))]
        return (group["dataset"] or "", group["tuned"], -(statistics.fmean(accs) if accs else -1.0),
                group["backbone"] or "", group["strategy"] or "")

    return sorted(group_records(records, dataset, sweeps, candidates), key=sort_key)


def leaderboard_rows(records: Iterable[Any], columns: Sequence[str] = DEFAULT_COLUMNS,
                     dataset: str | None = None, machine: bool = False, sweeps: Sequence[Any] = (),
                     candidates: bool = False) -> list[dict[str, Any]]:
    """One row per configuration (and per sweep's tuned configuration); a "tuning" column when there are
    sweeps."""
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise UsageError(f"unknown leaderboard column {unknown[0]!r}; choose from {', '.join(COLUMNS)}")
    rows = []
    for group in _sorted_groups(records, dataset, sweeps, candidates):
        row = {"dataset": group["dataset"], "backbone": group["backbone"], "strategy": group["strategy"]}
        if sweeps:
            row["tuning"] = group["tuning"]
        for column in columns:
            row[column if machine else COLUMNS[column][0]] = _cell(group, column, machine)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------- sources of variance
def varies_split(record: Any) -> bool:
    """Whether this trial's train/val split was drawn with its own seed (``data.split_seed=trial``)."""
    return get(record, "trial.data.split_seed") == "trial"


def variance_sources(records: Sequence[Any]) -> str:
    """What differs between the seeds of one configuration, i.e. what its interval covers."""
    if not records:
        return "no seeds"
    if len({get(r, "trial.seed") for r in records}) < 2:
        return "one seed: no spread"
    if all(varies_split(r) for r in records):
        return "training seed and data split (data.split_seed=trial)"
    fixed = sorted({str(get(r, "data.source.split_seed", get(r, "trial.data.split_seed", "?"))) for r in records})
    if any(varies_split(r) for r in records):
        return "mixed: some seeds with a fixed split, some with data.split_seed=trial"
    return f"training seed only (data split fixed: split_seed {', '.join(fixed)})"


def variance_note(records: Iterable[Any], dataset: str | None = None) -> str:
    sources = sorted({variance_sources(g["ok"]) for g in group_records(records, dataset) if len(g["ok"]) > 1})
    if not sources:
        return ""
    return ("95% CI: Student t over seeds; it covers the " + "; ".join(sources) +
            ". A training seed varies the random initialisation (the new head; everything for scratch), the batch "
            "order and augmentation" + ("" if all("data split (" in s for s in sources) else
                                        ", not which images are in train/val/test (--set data.split_seed=trial "
                                        "varies that too)") + ".")


# ----------------------------------------------------------------------------------- paired comparisons
def paired_comparisons(records: Iterable[Any], reference: str, dataset: str | None = None,
                       metric: str = "metrics.test_top1", sweeps: Sequence[Any] = (),
                       candidates: bool = False) -> dict[str, PairedComparison | None]:
    """Group id -> the paired comparison of that configuration with the ``reference`` strategy (same dataset,
    backbone and data settings; paired by seed, so by split too), None where no seed pairs. A tuned row is
    compared with the reference's tuned row, an untuned one with its untuned row."""
    groups = group_records(records, dataset, sweeps, candidates)
    out: dict[str, PairedComparison | None] = {}
    for group in groups:
        ref = reference_group(groups, reference, group)
        out[group_id(group)] = None if ref is None or ref is group else paired_comparison(
            _by_seed(group["ok"], metric), _by_seed(ref["ok"], metric))
    return out


def is_reference(group: dict[str, Any], reference: str) -> bool:
    """A configuration is the reference by its label (``full[lr=0.0003]``) or, where settings shared by the whole
    grid make every label long, by its strategy name (``full``)."""
    return group["strategy"] == reference or group.get("name") == reference


def reference_group(groups: Sequence[dict[str, Any]], reference: str,
                    group: dict[str, Any]) -> dict[str, Any] | None:
    """The reference configuration that ``group`` is paired with: same dataset, backbone and data settings; the
    exact label wins over the strategy name; several candidates by name (``full`` and ``full[lr=...]``) are an
    error asking for the label."""
    def place_of(g: dict[str, Any]) -> tuple:
        return g["dataset"], g["backbone"], g["data"], g.get("tuned", False), g.get("protocol", PROTOCOL_VERSION)

    place = [g for g in groups if place_of(g) == place_of(group)]
    if group.get("sweep") is not None:  # a tuned row: the reference's sweep run with the same --tune settings
        settings = group["sweep"].tuning_settings
        place = [g for g in place if g["sweep"].tuning_settings == settings] or place
    exact = [g for g in place if g["strategy"] == reference]
    if exact:
        return exact[0]
    by_name = [g for g in place if g.get("name") == reference]
    if len(by_name) > 1:
        raise UsageError(f"--vs {reference!r} matches several configurations ({', '.join(g['strategy'] for g in by_name)}"
                         f"); give one of these labels")
    return by_name[0] if by_name else None


def group_id(group: dict[str, Any]) -> str:
    """A configuration's identity among the entries of :func:`group_records` (the key of
    :func:`paired_comparisons`): dataset, backbone, label, data settings and its sweep (or tuning)."""
    sweep = group.get("sweep")
    return json.dumps([group["dataset"], group["backbone"], group["strategy"], group["data"],
                       sweep.key if sweep is not None else group.get("tuning", "")])


def _by_seed(records: Sequence[Any], metric: str) -> dict[int, float]:
    values = {}
    for record in records:
        value = get(record, metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            values[get(record, "trial.seed")] = float(value)
    return values


def check_reference(records: Sequence[Any], reference: str, dataset: str | None = None,
                    option: str = "--vs") -> None:
    """A one-line error when no configuration is ``reference`` (by label or strategy name), with the choices."""
    groups = group_records(records, dataset)
    if not groups or any(is_reference(g, reference) for g in groups):
        return
    names = sorted({g["name"] or g["strategy"] for g in groups})
    close = difflib.get_close_matches(reference, names, n=1, cutoff=0.6)
    raise UsageError(f"no records of strategy {reference!r} to compare with"
                     f"{f' for dataset {dataset!r}' if dataset else ''}"
                     f"{f'; did you mean {close[0]!r}?' if close else ''}; choose {option} from {', '.join(names)}")


def comparison_cells(comparison: PairedComparison | None, is_reference: bool) -> dict[str, str]:
    """Display text of a paired comparison: difference in points with its interval, P(better), verdict."""
    if is_reference:
        return {"diff": "reference", "p": "", "verdict": ""}
    if comparison is None:
        return {"diff": "no paired seeds", "p": "", "verdict": ""}
    diff = f"{100 * comparison.mean:+.1f}"
    if comparison.low is not None:
        diff += f" [{100 * comparison.low:+.1f}, {100 * comparison.high:+.1f}]"
    return {"diff": diff, "p": f"{comparison.probability_of_improvement:.2f}", "verdict": comparison.verdict}


def comparison_values(comparison: PairedComparison | None, reference: str) -> dict[str, Any] | None:
    if comparison is None:
        return None
    return {"reference": reference, "n": comparison.n, "mean": comparison.mean, "low": comparison.low,
            "high": comparison.high, "probability_of_improvement": comparison.probability_of_improvement,
            "verdict": comparison.verdict, "differences": {str(k): v for k, v in comparison.differences.items()}}


def processor_note(records: Sequence[Any], dataset: str | None = None) -> str:
    """A note when the records shown were computed on more than one processor ("" when they were not)."""
    counts = Counter(processor_label(r) for r in records if dataset is None or get(r, "trial.dataset") == dataset)
    if len(counts) < 2:
        return ""
    shown = "; ".join(f"{label}: {n} record(s)" for label, n in sorted(counts.items()))
    return (f"these rows mix processors ({shown}); the same trial on another processor gives different numbers, "
            f"differences of the size of seed noise")


def build_table(records: Iterable[Any], columns: Sequence[str] = DEFAULT_COLUMNS, dataset: str | None = None,
                vs: str | None = None, sweeps: Sequence[Any] = (), candidates: bool = False) -> LeaderboardTable:
    """The leaderboard as display rows, machine values and notes; with ``vs``, each configuration's paired
    difference of test top-1 to strategy ``vs`` (per seed, bootstrap 95% interval, probability of improvement).
    ``sweeps`` add tuned rows (see :func:`group_records`)."""
    records = list(records)
    sweeps = [s for s in sweeps if not dataset or s.dataset == dataset]
    if vs is not None:
        check_reference(records, vs, dataset)
    rows = leaderboard_rows(records, columns, dataset, sweeps=sweeps, candidates=candidates)
    values = leaderboard_rows(records, columns, dataset, machine=True, sweeps=sweeps, candidates=candidates)
    groups = _sorted_groups(records, dataset, sweeps, candidates)
    comparisons = paired_comparisons(records, vs, dataset, sweeps=sweeps,
                                     candidates=candidates) if vs is not None else {}
    for group, row, value in zip(groups, rows, values):
        value["variance"] = variance_sources(group["ok"])
        if vs is not None:
            comparison = comparisons.get(group_id(group))
            reference_here = reference_group(groups, vs, group) is group
            cells = comparison_cells(comparison, reference_here)
            row[f"Δ test vs {vs} (pts, 95% bootstrap)"] = cells["diff"]
            row["P(better)"] = cells["p"]
            row["paired"] = cells["verdict"]
            value["vs"] = None if reference_here else comparison_values(comparison, vs)
    notes = [note for note in [variance_note(records, dataset), processor_note(records, dataset)] if note]
    if sweeps:
        notes.append(tuning_note(sweeps, groups, candidates))
    if vs is not None:
        notes.append(f"Δ vs {vs}: mean over seeds of the per-seed difference of test top-1 (same seed, same split) "
                     f"with a percentile bootstrap 95% interval; P(better): share of seeds in which the strategy "
                     f"beats {vs} (ties half); 'not distinguishable': the interval covers 0.")
    return LeaderboardTable(rows, values, notes)


def tuning_note(sweeps: Sequence[Any], groups: Sequence[dict[str, Any]], candidates: bool) -> str:
    """What the tuned rows are, how many configurations were tried only to choose, and how many choices still lie
    on an edge of their space after the last extension (their ``tuning`` says which: "edge: lr=0.1 is the largest
    tried")."""
    budgets = sorted({(s.configurations, len(s.selection_seeds), len(s.reporting_seeds)) for s in sweeps})
    text = "; ".join(f"best of {k} configurations on validation ({s} selection seed{'s' * (s > 1)}), test top-1 "
                     f"over {n} fresh reporting seed{'s' * (n > 1)}" for k, s, n in budgets)
    tried = {c.group for sweep in sweeps for c in sweep.candidates}
    shown = {get(r, "trial.group") for g in groups if not g["tuned"] for r in g["ok"] + g["failed"]}
    hidden = len(tried - shown)
    on_edge = sum(1 for s in sweeps if getattr(s, "edges", None))
    return (f"tuned rows: {text}; the selection seeds' test scores are never read. " +
            (f"{hidden} other configuration(s) the sweeps ran are not listed on their own (--candidates lists "
             f"them)."
             if hidden and not candidates else "") +
            (f"{' ' if hidden and not candidates else ''}{on_edge} tuned row(s) chose on an edge of the space "
             f"after the last extension (marked 'edge:'): the optimum may lie beyond it (more --tune-extensions "
             f"or a wider space)." if on_edge else ""))


def chosen_format(formats: Mapping[str, LeaderboardFormat], fmt: str) -> LeaderboardFormat:
    """The format ``--format`` names, or one line listing the formats there are."""
    if fmt not in formats:
        raise UsageError(f"unknown format {fmt!r}; choose from {', '.join(sorted(formats))}")
    return formats[fmt]


def percent(value: float | None) -> str:
    """A fraction as a table cell in %, one decimal ("" when there is none)."""
    return "" if value is None else f"{100 * value:.1f}"


def render(records: Iterable[Any], fmt: str = "github", columns: Sequence[str] = DEFAULT_COLUMNS,
           dataset: str | None = None, vs: str | None = None,
           formats: dict[str, LeaderboardFormat] | None = None, sweeps: Sequence[Any] = (),
           candidates: bool = False) -> str:
    """The leaderboard in format ``fmt`` ("" when there are no rows). ``formats``: name -> format, as the cli passes
    them from its ``Plugins().leaderboard_formats``; when None, those of a fresh :class:`tlbench.registry.Plugins`
    (the built-in formats come through the same hook as a plugin's)."""
    formats = dict(Plugins().leaderboard_formats.items()) if formats is None else formats
    chosen = chosen_format(formats, fmt)
    table = build_table(records, columns, dataset, vs, sweeps, candidates)
    if not table.rows and fmt != "json":
        return ""
    return chosen.render(table)
