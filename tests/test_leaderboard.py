"""The leaderboard is a view over records: grouping over seeds, statistics, failures shown, formats."""
import csv
import hashlib
import io
import json
import math
import statistics

import pytest

import tlbench
from tlbench import leaderboard
from tlbench.leaderboard import render
from tlbench.publishing import LeaderboardFormat
from tlbench.records import Record
from tlbench.stats import bootstrap_interval
from tlbench.types import UsageError


def record(strategy, seed, acc, status="ok", dataset="d", backbone="b", group=None, feature_cache=None, plan=None,
           trial_data=None, data=None):
    key = hashlib.sha256(f"{strategy}-{seed}-{status}-{dataset}-{backbone}".encode()).hexdigest()[:20]
    return Record.from_json_dict({
        "schema": 2, "key": key, "status": status, "error": "boom" if status != "ok" else None,
        "trial": {"dataset": dataset, "backbone": backbone, "strategy": strategy, "label": strategy, "seed": seed,
                  "group": group or f"g-{strategy}", "key": key, "protocol": {}, "hparams": {},
                  "data": trial_data or {}, "protocol_version": tlbench.PROTOCOL_VERSION},
        "metrics": {"test_top1": acc, "val_top1": acc, "best_epoch": 1, "epochs": 1, "train_images_per_s": 100.0,
                    "eval_images_per_s": 400.0, "peak_memory_mib": 12.0, "time_s": {"total": 3.0},
                    **({"feature_cache": feature_cache} if feature_cache is not None else {})}
        if status == "ok" else {}, "plan": plan or {}, "data": data or {}})


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


def test_vs_pairs_by_seed_with_a_bootstrap_interval_and_probability_of_improvement():
    full = [0.80, 0.78, 0.81]
    llrd = [0.83, 0.80, 0.82]  # better in every seed, by less than full's own seed-to-seed spread
    lora = [0.81, 0.77, 0.80]  # 1 of 3 better
    records = [record("full", s, a) for s, a in enumerate(full)] + [record("llrd", s, a) for s, a in enumerate(llrd)]
    records += [record("lora", s, a) for s, a in enumerate(lora)]
    rows = {r["strategy"]: r for r in json.loads(render(records, "json", vs="full"))}
    assert rows["full"]["vs"] is None
    vs = rows["llrd"]["vs"]
    diffs = [b - a for a, b in zip(full, llrd)]
    assert vs["reference"] == "full" and vs["n"] == 3 and vs["mean"] == pytest.approx(statistics.fmean(diffs))
    assert (vs["low"], vs["high"]) == pytest.approx(bootstrap_interval(diffs))
    assert vs["differences"] == pytest.approx({"0": diffs[0], "1": diffs[1], "2": diffs[2]})
    assert vs["probability_of_improvement"] == 1.0 and vs["verdict"] == "better"
    assert rows["lora"]["vs"]["probability_of_improvement"] == pytest.approx(1 / 3)
    assert rows["lora"]["vs"]["verdict"] == "not distinguishable"
    text = render(records, "github", vs="full")
    line = next(line for line in text.splitlines() if "| lora" in line)
    assert "not distinguishable" in line and "0.33" in line
    assert "reference" in next(line for line in text.splitlines() if "| full" in line)
    assert "bootstrap" in text.splitlines()[0] and "covers 0" in text


def test_vs_pairs_only_trials_with_the_same_seeds_and_data_settings():
    records = [record("full", s, 0.8) for s in (0, 1)] + [record("frozen", s, 0.7) for s in (2, 3)]
    # a different split: not comparable seed by seed
    other_data = [record("partial", s, 0.75, trial_data={"train_size": 2000}) for s in (0, 1)]
    rows = {r["strategy"]: r for r in json.loads(render(records + other_data, "json", vs="full"))}
    assert rows["frozen"]["vs"] is None and rows["partial"]["vs"] is None
    assert "no paired seeds" in next(line for line in render(records + other_data, "github", vs="full").splitlines()
                                     if "| frozen" in line)


def test_vs_an_absent_strategy_is_an_error_naming_the_choices():
    with pytest.raises(UsageError, match="no records of strategy 'fulll'.*did you mean 'full'.*choose --vs from frozen, full"):
        render([record("full", 0, 0.8), record("frozen", 0, 0.7)], "github", vs="fulll")


def test_the_leaderboard_says_which_sources_of_variance_an_interval_covers():
    fixed = [record("full", s, 0.8 + s / 100, trial_data={"split_seed": 0}) for s in range(3)]
    text = render(fixed, "github")
    assert "training seed only (data split fixed: split_seed 0)" in text
    assert json.loads(render(fixed, "json"))[0]["variance"].startswith("training seed only")
    varied = [record("full", s, 0.8 + s / 100, group="g-varied", trial_data={"split_seed": "trial"},
                     data={"source": {"split_seed": s}}) for s in range(3)]
    text = render(varied, "github")
    assert "training seed and data split" in text and "split fixed" not in text
    assert json.loads(render(varied, "json"))[0]["variance"].startswith("training seed and data split")
    assert "one seed" in json.loads(render([record("full", 0, 0.8)], "json"))[0]["variance"]


def test_builtin_formats_come_through_the_hook():
    from tlbench.leaderboard import FORMATS
    from tlbench.registry import Plugins

    plugins = Plugins(load_third_party=False)
    assert set(FORMATS) <= set(plugins.leaderboard_formats.names())
    assert {plugins.leaderboard_formats.owner(name) for name in FORMATS} == {"leaderboard_formats"}


def test_render_without_formats_asks_the_plugin_registry(monkeypatch):
    """The built-in formats are fetched like a third party's: through ``Plugins().leaderboard_formats``."""
    ranked = LeaderboardFormat("ranked", "strategies best first", lambda table: " > ".join(
        row["strategy"] for row in table.rows))

    class Formats:
        def items(self):
            return [("ranked", ranked)]

    class FakePlugins:
        leaderboard_formats = Formats()

    monkeypatch.setattr(leaderboard, "Plugins", FakePlugins)
    assert render([record("full", 0, 0.8), record("frozen", 0, 0.7)], "ranked") == "full > frozen"
    with pytest.raises(UsageError, match="unknown format 'github'; choose from ranked"):
        render([record("full", 0, 0.8)], "github")


def test_group_id_is_the_key_of_the_paired_comparisons():
    records = [record("full", s, 0.8 + s / 100) for s in range(2)] + [record("frozen", s, 0.7) for s in range(2)]
    groups = leaderboard.group_records(records)
    comparisons = leaderboard.paired_comparisons(records, "full")
    assert set(comparisons) == {leaderboard.group_id(g) for g in groups}
    frozen = next(g for g in groups if g["strategy"] == "frozen")
    assert comparisons[leaderboard.group_id(frozen)].mean == pytest.approx(-0.105)
