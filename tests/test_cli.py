"""The CLI end to end on tiny data: every registered strategy runs, records are complete, resume skips."""
import json
import re

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
    after = record["plan"]["after_training"]
    if after and "val_top1_by_alpha" in after:  # wise-ft: the weights it chose on validation are the ones tested
        assert m["val_top1"] == max(after["val_top1_by_alpha"].values())
    elif after:  # swa: the averaged weights are the ones tested
        assert m["val_top1"] == after.get("val_top1_averaged", after["val_top1_best_epoch"])
    else:
        assert m["val_top1"] == max(selectable), "best epoch chosen on validation"
    assert m["train_images_per_s"] > 0 and m["eval_images_per_s"] > 0 and m["gflops_per_image"] > 0
    assert m["peak_memory"]["kind"] == "cpu-rss" and m["peak_memory_mib"] == m["peak_memory"]["peak_mib"]
    # (that the figure measures the trial is tested in test_guarantees.py: it moves with what a trial allocates)
    assert set(m["time_s"]) >= {"data", "features", "train", "eval", "total"}
    assert 0 < m["params"]["trainable"] <= m["params"]["total"]
    assert record["trial"]["hparams"] and record["trial"]["protocol"]["epochs"] == 4
    assert all(p["trainable_params"] <= m["params"]["trainable"] for p in phases)
    assert record["data"]["sizes"] == {"train": 128, "val": 32, "test": 32}
    assert record["backbone"]["preprocessing"]["mean"]
    assert "kaiming_uniform_(a=sqrt(5))" in record["backbone"]["head"]["init"], "the head's init is recorded"
    assert bool(record["backbone"]["weights"].get("sha256")) == record["backbone"]["pretrained"]
    env = record["environment"]
    assert env["torch"] and env["timm"] and env["tlbench"] and env["device_type"] == "cpu"
    assert record["schema"] == 2 and record["key"] == record["trial"]["key"]
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


def _table_lines(text):
    return [line for line in text.splitlines() if line.strip()]


def _check_github(text):
    header, rule, *rows = _table_lines(text)
    assert header.startswith("| dataset") and set(rule) <= set("|-: ") and rule.startswith("|--")
    return rows


def _check_plain(text):
    header, *rows = _table_lines(text)
    assert "|" not in text and "---" not in text, "plain: no pipes, no rule lines"
    assert header.split()[:3] == ["dataset", "backbone", "strategy"]
    return rows


def _check_simple(text):
    header, rule, *rows = _table_lines(text)
    assert "|" not in text and header.split()[:3] == ["dataset", "backbone", "strategy"]
    assert set(rule) == {"-", " "}, "simple: the dashed rule line under the header"
    assert len(rule.split()) == len(re.split(r"\s{2,}", header.strip())), "one dash run per column"
    return rows


def _check_html(text):
    assert text.startswith("<table>") and text.rstrip().endswith("</table>")
    assert text.count("<th>") >= 3 and "<th>dataset" in text
    return [row for row in text.split("<tr>")[2:]]


def _check_latex(text):
    lines = _table_lines(text)
    assert lines[0].startswith("\\begin{tabular}") and lines[-1] == "\\end{tabular}", "latex: the tabular is closed"
    assert lines.count("\\hline") >= 2
    return [line for line in lines if line.endswith("\\\\")][1:]  # rows end with \\; the first is the header


def _check_csv(text):
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0])[:3] == ["dataset", "backbone", "strategy"] and "test top-1 %" in rows[0]
    for row in rows:
        assert float(row["test top-1 %"]) > 0  # a number, not a formatted cell
    return rows


FORMAT_CHECKS = {"github": _check_github, "plain": _check_plain, "simple": _check_simple, "html": _check_html,
                 "latex": _check_latex, "csv": _check_csv}


def test_every_leaderboard_format_is_checked():
    from tlbench.leaderboard import FORMATS

    assert set(FORMATS) == set(FORMAT_CHECKS) | {"json"}  # json: test_leaderboard_json_and_wide_columns


@pytest.mark.parametrize("fmt", sorted(FORMAT_CHECKS))
def test_leaderboard_formats_have_their_structure(grid_run, fmt):
    _, results = grid_run
    result = invoke("leaderboard", "--results-dir", results, "--format", fmt)
    assert result.exit_code == 0, result.output
    rows = FORMAT_CHECKS[fmt](result.stdout)
    assert len(rows) == len(STRATEGIES), "one row per strategy"
    assert all(s in result.stdout for s in STRATEGIES)


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


def documented_options():
    """command -> the options the "Common commands" table of docs/cli.md shows for it."""
    import re
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    section = page.split("## Common commands", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, set[str]] = {}
    for command, usage in re.findall(r"^\| `tlbench (\w+)([^`]*)`", section, flags=re.MULTILINE):
        documented.setdefault(command, set()).update(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", usage))
    return documented


def test_help_lists_every_documented_option():
    documented = documented_options()
    assert set(documented) == {"run", "list", "plugins", "leaderboard", "rerun", "report", "export", "predict"}
    assert {"--all", "-s", "-b", "-d", "--seeds", "--seed", "--epochs", "--results-dir", "--force", "--retry-failed",
            "--device", "--compile", "--deterministic", "-q", "--set"} <= documented["run"]
    assert {"--format", "--dataset", "--wide", "--columns", "--vs"} <= documented["leaderboard"]
    assert {"--results-dir", "--out", "--dataset", "--reference"} <= documented["report"]
    top = invoke("--help")
    assert top.exit_code == 0
    for command, options in documented.items():
        assert command in top.output, f"`tlbench --help` lists {command}"
        result = invoke(command, "--help")
        assert result.exit_code == 0 and result.output.startswith(f"Usage: cli {command} ")
        words = set(result.output.replace(",", " ").split())
        assert options <= words, (command, sorted(options - words))
    list_help = invoke("list", "--help").output
    assert "strategies|backbones|datasets|executors" in list_help
    assert "KEY" in invoke("rerun", "--help").output


# Every kind of parse error click raises, each as `tlbench` shows it: one "Error:" line (click's message, its
# suggestion where it has one, where help is), exit code 2. Click itself prints usage and a hint above it.
PARSE_ERRORS = {
    "unknown option, suggestion": (["run", "--al"], ["No such option '--al'", "'--all'", "tlbench run --help"]),
    "misspelt option": (["run", "--epoch", "3"], ["No such option '--epoch'", "Did you mean '--epochs'?"]),
    "bad integer": (["run", "--seeds", "x"], ["Invalid value for '--seeds'", "'x' is not a valid integer"]),
    "missing option value": (["run", "--seeds"], ["Option '--seeds' requires an argument", "tlbench run --help"]),
    "flag with a value": (["run", "--all=1"], ["Option '--all' does not take a value"]),
    "bad choice": (["list", "bogus"], ["'bogus' is not one of 'strategies', 'backbones'", "tlbench list --help"]),
    "missing argument": (["rerun"], ["Missing argument 'KEY'", "tlbench rerun --help"]),
    "extra argument": (["plugins", "extra"], ["unexpected extra argument (extra)"]),
    "unknown command": (["leaderbord"], ["No such command 'leaderbord'", "Did you mean 'leaderboard'?"]),
    "unknown top-level option": (["--bogus"], ["No such option '--bogus'", "tlbench --help"]),
    "path that is a file": (["leaderboard", "--results-dir", __file__], ["is a file"]),
}


@pytest.mark.parametrize("case", sorted(PARSE_ERRORS))
def test_click_parse_errors_are_one_line_with_exit_code_2(case, tmp_path, monkeypatch):
    args, expected = PARSE_ERRORS[case]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args, prog_name="tlbench")
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not list(tmp_path.iterdir()), "nothing written"


def test_bare_tlbench_still_shows_the_help():
    result = CliRunner().invoke(cli, [], prog_name="tlbench")
    assert "Usage: tlbench [OPTIONS] COMMAND" in result.output and "Quick start" in result.output


def test_unknown_strategy_exits_2_with_suggestion(tmp_path):
    result = invoke("run", "-s", "fozen", "--results-dir", tmp_path / "r")
    assert result.exit_code == 2
    assert "did you mean 'frozen'?" in result.stderr
    assert not (tmp_path / "r").exists()
