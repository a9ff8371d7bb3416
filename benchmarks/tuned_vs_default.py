"""Defaults against tuned (issue 24): each strategy's default configuration and its tuned choice on the same seeds.

After ``tlbench run <strategies> --tune --seeds N`` (selection on the first seed, reporting on the N after it) and
``tlbench run <strategies> --seed 1 --seeds N`` (the defaults on those reporting seeds), into one results folder::

    python benchmarks/tuned_vs_default.py RESULTS_DIR [--format github]

prints, per dataset x backbone x strategy with a sweep: the default's test top-1 on the reporting seeds (mean ± std
and its rank), the chosen configuration, whether the choice lies on an edge of its space, the budget spent, the
tuned test top-1 (mean ± std, rank), and tuned − default paired by seed with its 95% t-interval
(``tlbench.stats.t_interval``). Validation decided every choice; test scores are only reported here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scipy.stats import rankdata
from tabulate import tabulate

from tlbench.record_fields import get
from tlbench.stats import t_interval
from tlbench.store import ResultStore


def _scores(records) -> dict[int, float]:
    return {get(r, "trial.seed"): get(r, "metrics.test_top1") for r in records if r.ok}


def _mean_std(interval) -> str:
    return f"{100 * interval.mean:.1f} ± {100 * (interval.std or 0):.1f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--format", default="github")
    args = parser.parse_args(argv)
    store = ResultStore(args.results_dir)
    records = list(store.records())
    by_key = {get(r, "trial.key"): r for r in records}
    rows, missing = [], []
    for sweep in sorted(store.sweeps(), key=lambda s: (s.dataset, s.backbone, s.strategy)):
        reporting = [by_key[k] for k in sweep.reporting_keys if k in by_key]
        tuned = _scores(reporting)
        # the default configuration: the same strategy, protocol and data as the reporting trials, none of the
        # strategy's own settings changed
        same = {(str(get(r, "trial.protocol")), str(get(r, "trial.data"))) for r in reporting}
        defaults = _scores([r for r in records if get(r, "trial.dataset") == sweep.dataset
                            and get(r, "trial.backbone") == sweep.backbone
                            and get(r, "trial.strategy") == sweep.strategy
                            and (str(get(r, "trial.protocol")), str(get(r, "trial.data"))) in same
                            and not set(get(r, "trial.overrides") or {}) & set(get(r, "trial.hparams") or {})
                            and get(r, "trial.seed") in sweep.reporting_seeds])
        seeds = sorted(set(tuned) & set(defaults))
        if not seeds or len(tuned) < len(sweep.reporting_seeds):
            missing.append(f"{sweep.strategy}: tuned seeds {sorted(tuned)}, default seeds {sorted(defaults)}")
            continue
        default, chosen = t_interval([defaults[s] for s in seeds]), t_interval([tuned[s] for s in seeds])
        difference = t_interval([tuned[s] - defaults[s] for s in seeds])
        spent = sweep.budget.get("spent", {})
        half = difference.half_width
        rows.append({
            "dataset": sweep.dataset, "backbone": sweep.backbone, "strategy": sweep.strategy,
            "default_mean": default.mean, "default": _mean_std(default),
            "chosen": ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in sweep.chosen_config.items()),
            "edge": sweep.edge_text or "no",
            "configurations": f"{spent.get('configurations', '?')} ({spent.get('extensions', 0)} by extension)",
            "tuned_mean": chosen.mean, "tuned": _mean_std(chosen),
            "difference": (f"{100 * difference.mean:+.1f}" + (f" [{100 * (difference.mean - half):+.1f}, "
                                                              f"{100 * (difference.mean + half):+.1f}]"
                                                              if half is not None else "")),
            "seeds": ",".join(map(str, seeds)),
        })
    for cell in {(r["dataset"], r["backbone"]) for r in rows}:
        own = [r for r in rows if (r["dataset"], r["backbone"]) == cell]
        for column in ("default_mean", "tuned_mean"):
            for row, rank in zip(own, rankdata([-r[column] for r in own], method="min")):
                row[column.replace("mean", "rank")] = int(rank)
    rows.sort(key=lambda r: (r["dataset"], r["backbone"], -r["tuned_mean"]))
    table = [[r["strategy"], f"{r['default']} ({r['default_rank']})", r["chosen"], r["edge"], r["configurations"],
              f"{r['tuned']} ({r['tuned_rank']})", r["difference"], r["seeds"]] for r in rows]
    headers = ["strategy", "default: test top-1 % (rank)", "tuned: chosen on validation", "on an edge",
               "configurations trained", "tuned: test top-1 % (rank)", "tuned − default (pts, 95% t)", "seeds"]
    print(tabulate(table, headers, tablefmt=args.format, disable_numparse=True))
    for line in missing:
        print(f"not compared (records missing): {line}", file=sys.stderr)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
