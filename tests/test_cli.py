"""The CLI end to end on tiny data: every registered strategy runs, records are complete, resume skips."""
import json

import pytest
from click.testing import CliRunner

from tlbench.cli import cli
from tlbench.registry import Plugins

STRATEGIES = Plugins(load_third_party=False).strategies.names()


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, tiny_backbone):
    """One run of every built-in strategy x the tiny backbone on synthetic data, shared by the tests below."""
    import os

    from conftest import FAST_SETTINGS

    results = tmp_path_factory.mktemp("results")
    os.environ["TLBENCH_DISABLE_PLUGINS"] = "1"
    os.environ["TLBENCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    settings = [a for s in FAST_SETTINGS for a in ("--set", s)]
    result = invoke("run", "--all", "-b", tiny_backbone, "-d", "synthetic", "--results-dir", results, *settings)
    return result, results


def test_run_all_prints_leaderboard_and_writes_one_record_per_trial(grid_run):
    result, results = grid_run
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in results.glob("*.json")]
    assert sorted(r["trial"]["strategy"] for r in records) == STRATEGIES
    assert "| dataset" in result.stdout and "test top-1 %" in result.stdout  # the leaderboard, on stdout
    assert f"{len(STRATEGIES)} ok, 0 failed" in result.stderr  # the grid summary, on stderr
    assert result.stderr.count("      ok  synthetic") == len(STRATEGIES)  # one line per finished trial


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_registered_strategy_learns_and_records_everything(grid_run, strategy):
    _, results = grid_run
    (record,) = [r for r in (json.loads(p.read_text()) for p in results.glob("*.json"))
                 if r["trial"]["strategy"] == strategy]
    assert record["status"] == "ok"
    m = record["metrics"]
    assert m["test_top1"] > 0.4, "4 balanced classes: chance is 0.25; every strategy must learn this data"
    phases = record["plan"]["phases"]
    assert m["epochs"] == sum(p["epochs"] for p in phases) == len(m["history"]) and 1 <= m["best_epoch"] <= m["epochs"]
    selectable_phases = {p["name"] for p in phases if p["selectable"]}
    selectable = [h["val_top1"] for h in m["history"] if h["phase"] in selectable_phases]
    if record["plan"]["after_training"]:  # wise-ft: the weights it chose on validation are the ones tested
        assert m["val_top1"] == max(record["plan"]["after_training"]["val_top1_by_alpha"].values())
    else:
        assert m["val_top1"] == max(selectable), "best epoch chosen on validation"
    assert m["train_images_per_s"] > 0 and m["eval_images_per_s"] > 0 and m["gflops_per_image"] > 0
    assert m["peak_memory"]["kind"] == "cpu-rss" and m["peak_memory_mib"] >= 0
    assert set(m["time_s"]) >= {"data", "features", "train", "eval", "total"}
    assert 0 < m["params"]["trainable"] <= m["params"]["total"]
    assert record["trial"]["hparams"] and record["trial"]["protocol"]["epochs"] == 4
    assert all(p["trainable_params"] <= m["params"]["trainable"] for p in phases)
    assert record["data"]["sizes"] == {"train": 128, "val": 32, "test": 32}
    assert record["backbone"]["preprocessing"]["mean"]
    assert bool(record["backbone"]["weights"].get("sha256")) == record["backbone"]["pretrained"]
    env = record["environment"]
    assert env["torch"] and env["timm"] and env["tlbench"] and env["device_type"] == "cpu"
    assert record["schema"] == 1 and record["key"] == record["trial"]["key"]
    if strategy == "frozen":
        assert m["feature_cache"] is True and m["params"]["trainable"] < m["params"]["total"] / 10
    if strategy == "scratch":
        assert record["backbone"]["pretrained"] is False and m["params"]["trainable"] == m["params"]["total"]


def test_rerun_skips_finished_trials_and_force_reruns(grid_run, tiny_backbone):
    from conftest import FAST_SETTINGS

    _, results = grid_run
    settings = [a for s in FAST_SETTINGS for a in ("--set", s)]
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    again = invoke("run", "--all", "-b", tiny_backbone, "-d", "synthetic", "--results-dir", results, *settings)
    assert again.exit_code == 0
    assert f"{len(STRATEGIES)} already done, 0 to run" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")} == before
    forced = invoke("run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--results-dir", results,
                    "--force", *settings)
    assert forced.exit_code == 0 and "1 to run" in forced.stderr
    changed = [n for n, t in before.items() if (results / n).stat().st_mtime_ns != t]
    assert len(changed) == 1


@pytest.mark.parametrize("fmt, marker", [("github", "|--"), ("plain", "test top-1 %"), ("html", "<table>"),
                                         ("latex", "\\begin{tabular}"), ("csv", "dataset,backbone,strategy")])
def test_leaderboard_formats(grid_run, fmt, marker):
    _, results = grid_run
    result = invoke("leaderboard", "--results-dir", results, "--format", fmt)
    assert result.exit_code == 0 and marker in result.output
    assert all(s in result.output for s in STRATEGIES)


def test_leaderboard_json_and_wide_columns(grid_run):
    _, results = grid_run
    rows = json.loads(invoke("leaderboard", "--results-dir", results, "--format", "json").output)
    accuracies = [r["test"]["mean"] for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    wide = invoke("leaderboard", "--results-dir", results, "--wide").output
    assert "GFLOPs/img" in wide and "feature cache" in wide
    picked = invoke("leaderboard", "--results-dir", results, "--columns", "test,memory").output
    assert "peak mem MiB" in picked and "train img/s" not in picked


def test_list_shows_descriptions_and_defaults():
    result = invoke("list", "strategies")
    assert result.exit_code == 0
    for name in STRATEGIES:
        assert name in result.output
    assert "lr=0.0001" in result.output and "backbone_lr=1e-05" in result.output
    everything = invoke("list").output
    for kind in ("strategies:", "backbones:", "datasets:", "executors:"):
        assert kind in everything
    assert "timm:<model>" in everything and "fashion-mnist" in everything and "local" in everything


def test_help_is_useful_on_every_command():
    for command in ([], ["run"], ["list"], ["plugins"], ["leaderboard"], ["rerun"]):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output
    assert "--set" in invoke("run", "--help").output


def test_unknown_strategy_exits_2_with_suggestion(tmp_path):
    result = invoke("run", "-s", "fozen", "--results-dir", tmp_path / "r")
    assert result.exit_code == 2
    assert "did you mean 'frozen'?" in result.stderr
    assert not (tmp_path / "r").exists()
