"""The leaderboard is a view over records: grouping over seeds, statistics, failures shown, formats."""
import csv
import hashlib
import io
import json
import math
import statistics

import pytest

from tlbench.leaderboard import render, t95
from tlbench.records import Record
from tlbench.types import UsageError


def record(strategy, seed, acc, status="ok", dataset="d", backbone="b", group=None, feature_cache=None, plan=None):
    key = hashlib.sha256(f"{strategy}-{seed}-{status}-{dataset}-{backbone}".encode()).hexdigest()[:20]
    return Record.from_json_dict({
        "schema": 2, "key": key, "status": status, "error": "boom" if status != "ok" else None,
        "trial": {"dataset": dataset, "backbone": backbone, "strategy": strategy, "label": strategy, "seed": seed,
                  "group": group or f"g-{strategy}", "key": key, "protocol": {}, "hparams": {}, "data": {}},
        "metrics": {"test_top1": acc, "val_top1": acc, "best_epoch": 1, "epochs": 1, "train_images_per_s": 100.0,
                    "eval_images_per_s": 400.0, "peak_memory_mib": 12.0, "time_s": {"total": 3.0},
                    **({"feature_cache": feature_cache} if feature_cache is not None else {})}
        if status == "ok" else {}, "plan": plan or {}})


def test_mean_std_ci_over_seeds_and_sorting():
    records = [record("full", s, a) for s, a in enumerate([0.70, 0.72, 0.74])]
    records += [record("scratch", s, a) for s, a in enumerate([0.50, 0.52, 0.48])]
    rows = json.loads(render(records, "json"))
    assert [r["strategy"] for r in rows] == ["full", "scratch"]
    full = rows[0]["test"]
    assert full["n"] == 3 and full["mean"] == pytest.approx(0.72)
    assert full["std"] == pytest.approx(statistics.stdev([0.70, 0.72, 0.74]))
    assert full["ci95"] == pytest.approx(4.303 * full["std"] / math.sqrt(3))
    text = render(records, "github")
    assert "72.0 ± 2.0" in text and "[67.0, 77.0]" in text


def test_single_seed_says_n1_instead_of_zero_spread():
    text = render([record("frozen", 0, 0.6)], "plain")
    assert "n=1" in text and "±" not in text


def test_failed_trials_are_marked_in_their_own_row_not_hidden():
    records = [record("full", 0, 0.7), record("full", 1, None, status="failed"),
               record("partial", 0, None, status="diverged"), record("frozen", 0, 0.6)]
    rows = {r["strategy"]: r for r in json.loads(render(records, "json"))}
    assert rows["full"]["status"] == "1 failed" and rows["full"]["n"] == 1, "the ok seed still counts"
    assert rows["partial"]["status"] == "1 diverged" and rows["partial"]["test"] is None
    assert rows["frozen"]["status"] == "ok"
    lines = {line.split("|")[3].strip(): line for line in render(records, "github").splitlines()[2:]}
    assert "1 failed" in lines["full"] and "70.0" in lines["full"] and "FAILED" not in lines["full"]
    assert "FAILED" in lines["partial"] and "1 diverged" in lines["partial"]
    assert "FAILED" not in lines["frozen"] and "failed" not in lines["frozen"] and "diverged" not in lines["frozen"]


def test_csv_and_unknown_inputs():
    rows = list(csv.DictReader(io.StringIO(render([record("full", 0, 0.7)], "csv"))))
    assert rows[0]["strategy"] == "full" and rows[0]["test top-1 %"] == "70.0"
    with pytest.raises(UsageError, match="unknown format"):
        render([], "xml")
    with pytest.raises(UsageError, match="unknown leaderboard column"):
        render([record("full", 0, 0.7)], "github", columns=["nope"])


def test_t_quantiles_match_student_t_for_any_number_of_seeds():
    stats = pytest.importorskip("scipy.stats")
    for dof in [*range(1, 61), 99, 250, 1000]:
        assert t95(dof) == pytest.approx(stats.t.ppf(0.975, dof), abs=6e-4), dof


@pytest.mark.parametrize("values", [[0.70, 0.72, 0.74], [0.61, 0.64, 0.60, 0.66, 0.63],
                                    [0.5 + 0.01 * (i % 7) for i in range(40)]])
def test_interval_is_the_student_t_interval(values):
    """Against scipy's t-interval (the 40-seed case is where a normal approximation would be 3% too narrow)."""
    stats = pytest.importorskip("scipy.stats")
    low, high = stats.t.interval(0.95, len(values) - 1, loc=statistics.fmean(values), scale=stats.sem(values))
    row = json.loads(render([record("full", seed, v) for seed, v in enumerate(values)], "json"))[0]["test"]
    assert row["n"] == len(values)
    assert row["mean"] - row["ci95"] == pytest.approx(low, rel=2e-4)
    assert row["mean"] + row["ci95"] == pytest.approx(high, rel=2e-4)
    text = render([record("full", seed, v) for seed, v in enumerate(values)], "github")
    assert f"[{100 * low:.1f}, {100 * high:.1f}]" in text


def test_cached_feature_throughput_is_marked_as_head_only():
    cached = record("frozen", 0, 0.7, feature_cache=True)
    text = render([cached, record("full", 0, 0.8)], "plain")
    frozen_line = next(line for line in text.splitlines() if "frozen" in line)
    full_line = next(line for line in text.splitlines() if " full " in line)
    assert "100 (head)" in frozen_line and "(head)" not in full_line
    probe_then_tune = record("lp-ft", 0, 0.75, feature_cache=True,  # a cached probe phase, then fine-tuning
                             plan={"phases": [{"feature_cache": True}, {"feature_cache": False}]})
    line = next(line for line in render([probe_then_tune], "plain").splitlines() if "lp-ft" in line)
    assert "100" in line and "(head)" not in line
