"""Trained weights kept by `tlbench run --save-models`, exported for timm / TorchScript / ONNX, and scored again.

One grid of every built-in strategy on timm's tiny `test_efficientnet` and the synthetic data (seconds per trial);
each trial is exported and its files must score exactly the record's test top-1 on the trial's test split (ONNX:
within one image), loaded the way their users load them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import one_error_line
from tlbench.cli import cli
from tlbench.records import Record, best_on_validation
from tlbench.registry import Plugins
from tlbench.store import ResultStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STRATEGIES = tuple(Plugins(load_third_party=False).strategies.names())  # every built-in, new ones too


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_backbone):
    """Every built-in strategy once, all weights kept."""
    from conftest import FAST_SETTINGS

    results = tmp_path_factory.mktemp("export-grid")
    settings = [arg for s in FAST_SETTINGS if not s.startswith("epochs=") for arg in ("--set", s)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["TLBENCH_DISABLE_PLUGINS"] = "1"
    try:
        result = invoke("run", *[a for s in STRATEGIES for a in ("-s", s)], "-b", tiny_backbone, "-d", "synthetic",
                        "--epochs", 2, "--results-dir", results, "--save-models", "all", "-q", *settings)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return results


def records_by_strategy(results: Path) -> dict[str, Record]:
    return {r.trial.strategy: r for r in ResultStore(results).records()}


# -------------------------------------------------------------------------------------------- saving weights
def test_save_models_all_keeps_every_trials_weights_with_its_sha256(grid):
    import hashlib

    records = records_by_strategy(grid)
    assert set(records) == set(STRATEGIES)
    for record in records.values():
        path = grid / f"{record.key}.safetensors"
        assert path.is_file() and record.saved_model["file"] == path.name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record.saved_model["sha256"]
        assert record.saved_model["bytes"] == path.stat().st_size
    assert not list(grid.glob(".*.tmp")), "nothing half-written"


def test_save_models_best_keeps_only_the_best_on_validation(tmp_path, tiny_backbone, make_record):
    """Three trials (two of one configuration) written with their weights; pruning keeps the configuration with the
    best mean validation top-1 (not the best single trial, never the test split) and its best seed."""
    store = ResultStore(tmp_path)
    store.create()
    rows = [("a" * 20, "g1", 0, 0.9, 0.1), ("b" * 20, "g1", 1, 0.5, 0.9), ("c" * 20, "g2", 0, 0.8, 0.99)]
    for key, group, seed, val, test in rows:
        raw = make_record(key=key, seed=seed, test_top1=test)
        raw["metrics"]["val_top1"] = val
        raw["trial"]["group"] = group * 10
        store.write(Record.from_json_dict(raw))
        store.weights_path(key).write_bytes(b"w")
    orphan = store.weights_path("d" * 20)  # a killed run's weights without a record: removed
    orphan.write_bytes(b"w")
    running = store.weights_path("e" * 20)  # a trial another process is running: kept
    running.write_bytes(b"w")
    other = ResultStore(tmp_path)
    assert other.claim("e" * 20)
    best = best_on_validation(store.records())
    assert [r.key for r in best.values()] == ["c" * 20]  # g2 mean 0.8 beats g1 mean 0.7
    lines = store.prune_weights_report()
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["c" * 20 + ".safetensors",
                                                                       "e" * 20 + ".safetensors"]
    assert "kept the weights" in lines[0] and "removed the weights of 3 other trial(s)" in lines[-1]
    other.release("e" * 20)


def test_run_default_keeps_the_best_trials_weights_and_prints_the_size(tmp_path, tiny_backbone):
    result = invoke("run", "-s", "frozen", "-s", "full", "-b", tiny_backbone, "-d", "synthetic", "--epochs", 1,
                    "--results-dir", tmp_path, "-q")
    assert result.exit_code == 0, result.output
    records = list(ResultStore(tmp_path).records())
    [best] = best_on_validation(records).values()
    assert [p.name for p in tmp_path.glob("*.safetensors")] == [f"{best.key}.safetensors"]
    assert result.output.count("MB)") >= 2 and "kept the weights" in result.output  # size per trial, then the kept
    assert all(r.saved_model.get("sha256") for r in records)


# ------------------------------------------------------------------------------------------------ export
def exported_test_top1(folder: Path, record: Record, fmt: str) -> tuple[float, int]:
    """Score an export folder's file on the trial's test split, as a user of that format loads it."""
    from tlbench.data_cache import load_splits
    from tlbench.export import _trial_of, load_export, predictions
    from tlbench.registry import Plugins

    exported = load_export(folder)
    trial = _trial_of(record)
    family, argument = Plugins().datasets.resolve(trial.dataset)
    splits = load_splits(family, argument, trial.load_options)
    _, forward = exported.forward(fmt)
    got = predictions(forward, splits.test_images, exported.preprocessor(), 32)
    correct = int((got == splits.test_labels).sum())
    return correct / len(got), len(got)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_exports_and_scores_the_records_test_top1(grid, tmp_path, strategy):
    record = records_by_strategy(grid)[strategy]
    out = tmp_path / "model"
    result = invoke("export", record.key[:8], "--results-dir", grid, "--out", out, "--format", "timm",
                    "--format", "torchscript")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "model.torchscript.pt"]
    for fmt in ("timm", "torchscript"):
        top1, _ = exported_test_top1(out, record, fmt)
        assert top1 == record.metrics.test_top1, (fmt, top1, record.metrics.test_top1)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet" and config["num_classes"] == 4
    assert config["label_names"] == record.data["classes"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["tlbench"]["record_key"] == record.key
    card = (out / "README.md").read_text()
    for text in (record.key, strategy, "validation", "test", "processor", "local-dir:", record.trial.dataset):
        assert text in card
    if strategy == "lora":
        assert "LoRA adapter(s) merged" in card
        assert not any("lora" in name for name in
                       __import__("safetensors.torch").torch.load_file(str(out / "model.safetensors")))


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_onnx_scores_within_one_image(grid, tmp_path, strategy):
    record = records_by_strategy(grid)[strategy]
    out = tmp_path / "onnx"
    result = invoke("export", record.key, "--results-dir", grid, "--out", out, "--format", "onnx")
    assert result.exit_code == 0, result.output
    top1, images = exported_test_top1(out, record, "onnx")
    assert abs(top1 - record.metrics.test_top1) * images <= 1 + 1e-9
    checks = json.loads((out / "config.json").read_text())["tlbench"]["checks"]["onnx"]
    assert checks["max_abs_logit_difference_vs_pytorch"] < 1e-3


def test_plain_timm_loads_the_export_in_a_fresh_process_without_tlbench(grid, tmp_path):
    record = records_by_strategy(grid)["full"]
    out = tmp_path / "timm"
    assert invoke("export", record.key, "--results-dir", grid, "--out", out).exit_code == 0
    code = (f"import sys, timm, torch; model = timm.create_model('local-dir:{out}', pretrained=True).eval(); "
            f"assert 'tlbench' not in sys.modules; cfg = timm.data.resolve_data_config(model=model); "
            f"print(model.num_classes, cfg['input_size'], cfg['crop_pct'], cfg['interpolation'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    prep = record.backbone["preprocessing"]
    assert done.stdout.split() == ["4", "(3,", "32,", "32)", str(prep["crop_pct"]), prep["interpolation"]]


def test_export_best_exports_the_best_on_validation(grid, tmp_path):
    out = tmp_path / "best"
    result = invoke("export", "--best", "--dataset", "synthetic", "--results-dir", grid, "--out", out)
    assert result.exit_code == 0, result.output
    [best] = best_on_validation(ResultStore(grid).records()).values()
    assert json.loads((out / "config.json").read_text())["tlbench"]["record_key"] == best.key


def test_export_without_saved_weights_reruns_and_refuses_a_different_validation_score(grid, tmp_path):
    """Without a weights file the trial is re-run; a record whose validation top-1 the re-run does not reproduce
    (here: edited, as another processor would give) is refused unless --accept-different."""
    record = records_by_strategy(grid)["frozen"]
    results = tmp_path / "results"
    results.mkdir()
    (results / f"{record.key}.json").write_text((grid / f"{record.key}.json").read_text())
    out = tmp_path / "rerun"
    result = invoke("export", record.key, "--results-dir", results, "--out", out)
    assert result.exit_code == 0, result.output
    assert "re-run" in (out / "README.md").read_text()
    top1, _ = exported_test_top1(out, record, "timm")
    assert top1 == record.metrics.test_top1

    raw = json.loads((grid / f"{record.key}.json").read_text())
    raw["metrics"]["val_top1"] = 0.0 if record.metrics.val_top1 > 0 else 1.0
    (results / f"{record.key}.json").write_text(json.dumps(raw))
    refused = invoke("export", record.key, "--results-dir", results, "--out", tmp_path / "refused")
    assert refused.exit_code == 2  # after the re-run's progress lines, one error line
    errors = [line for line in refused.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and refused.output.rstrip().endswith(errors[0]) and "--accept-different" in errors[0]
    assert not (tmp_path / "refused").exists(), "nothing written"
    accepted = invoke("export", record.key, "--results-dir", results, "--out", tmp_path / "accepted",
                      "--accept-different")
    assert accepted.exit_code == 0, accepted.output
    assert "--accept-different" in (tmp_path / "accepted" / "README.md").read_text()


def test_a_changed_weights_file_is_refused(grid, tmp_path):
    record = records_by_strategy(grid)["bitfit"]
    results = tmp_path / "results"
    results.mkdir()
    (results / f"{record.key}.json").write_text((grid / f"{record.key}.json").read_text())
    data = bytearray((grid / f"{record.key}.safetensors").read_bytes())
    data[-1] ^= 1
    (results / f"{record.key}.safetensors").write_bytes(bytes(data))
    assert "sha256" in one_error_line(invoke("export", record.key, "--results-dir", results, "--out",
                                             tmp_path / "x"))


def test_bad_export_input_is_one_line_exit_2(grid, tmp_path):
    assert "no valid record matches key" in one_error_line(
        invoke("export", "ffffffff", "--results-dir", grid, "--out", tmp_path / "x"))
    assert "--format" in one_error_line(invoke("export", "--best", "--results-dir", grid, "--out", tmp_path / "x",
                                               "--format", "keras"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    assert "--overwrite" in one_error_line(invoke("export", "--best", "--results-dir", grid, "--out", busy))
    assert "KEY or pass --best" in one_error_line(invoke("export", "--results-dir", grid, "--out", tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_torchvision_backbone_has_no_timm_format(tmp_path):
    """A torchvision model (scratch: no download) exports as TorchScript; timm format is refused in one line."""
    result = invoke("run", "-s", "scratch", "-b", "torchvision:mobilenet_v3_small", "-d", "synthetic", "--epochs", 1,
                    "--results-dir", tmp_path / "r", "-q", "--set", "data.train_size=32")
    assert result.exit_code == 0, result.output
    assert "not a timm model" in one_error_line(invoke("export", "--best", "--results-dir", tmp_path / "r",
                                                       "--out", tmp_path / "x"))
    ok = invoke("export", "--best", "--results-dir", tmp_path / "r", "--out", tmp_path / "ts",
                "--format", "torchscript")
    assert ok.exit_code == 0, ok.output
    [record] = ResultStore(tmp_path / "r").records()
    assert exported_test_top1(tmp_path / "ts", record, "torchscript")[0] == record.metrics.test_top1
