"""benchmarks/tuned_vs_default.py (the defaults-against-tuned table of docs/results.md): it pairs each tuned row's
reporting seeds with the default configuration on the same seeds, and its numbers are the records'."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tlbench.cli import cli
from tlbench.stats import t95

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tuned_vs_default.py"
sys.path.insert(0, str(SCRIPT.parent))
import tuned_vs_default  # noqa: E402

pytest.importorskip("scipy", reason="the report extra")


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_the_table_pairs_tuned_and_default_trials_seed_by_seed(tiny_backbone, tmp_path, capsys):
    results = tmp_path / "results"
    common = ["-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--epochs", "1", "--set", "data.train_size=64",
              "--device", "cpu", "-q", "--results-dir", results]
    _run("run", *common, "--tune", "--tune-budget", "2", "--seeds", "2")  # select on seed 0, report on 1 and 2
    assert tuned_vs_default.main([str(results)]) == 1, "no default records yet: nothing to compare"
    assert "not compared (records missing): frozen" in capsys.readouterr().err
    _run("run", *common, "--seed", "1", "--seeds", "3")  # the defaults on seeds 1-3; seed 3 has no tuned partner
    assert tuned_vs_default.main([str(results), "--format", "tsv"]) == 0
    (row,) = [[cell.strip() for cell in line.split("\t")] for line in capsys.readouterr().out.splitlines()[1:]]

    records = [json.loads(p.read_text()) for p in results.glob("*.json")]
    sweep = json.loads(next((results / "tuning").glob("*.json")).read_text())
    tuned = {r["trial"]["seed"]: r["metrics"]["test_top1"] for r in records if r["key"] in sweep["reporting_keys"]}
    default = {r["trial"]["seed"]: r["metrics"]["test_top1"] for r in records
               if r["trial"]["hparams"] == records_default_hparams(records) and r["trial"]["seed"] in (1, 2)}
    differences = [tuned[s] - default[s] for s in (1, 2)]
    mean, half = statistics.fmean(differences), t95(1) * statistics.stdev(differences) / 2 ** 0.5
    assert row[0] == "frozen" and row[-1] == "1,2"
    assert row[1].startswith(f"{100 * statistics.fmean(default.values()):.1f} ± ")
    assert row[5].startswith(f"{100 * statistics.fmean(tuned.values()):.1f} ± ")
    assert row[6] == f"{100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]"
    assert row[2] == ", ".join(f"{k}={v:g}" for k, v in sweep["chosen_config"].items())


def records_default_hparams(records):
    """frozen's default settings, as the records of the run without --tune hold them."""
    (hparams,) = {json.dumps(r["trial"]["hparams"], sort_keys=True) for r in records if r["trial"]["seed"] == 3}
    return json.loads(hparams)
