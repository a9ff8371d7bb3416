"""Tuning at equal budget (`tlbench run --tune`, `tlbench.tune_grid`): search spaces, equal budgets, selection on
validation only, fresh reporting seeds, sweeps on disk, resuming, and the leaderboard's tuned rows.

The selection tests use a dataset whose validation and test splits disagree *by construction*: the test labels are
the validation rule shifted by one class, so a model that learns the task scores ~100% on validation and 0% on
test, while an untrained one scores the same on both (it always answers class 0). Choosing on test would pick the
untrained configuration; choosing on validation picks the trained one.
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import tlbench.cli
from tlbench import (Backbone, ImageSplits, Preprocessing, RunSpec, Strategy, TrainPlan, TuneSpec, UsageError, log_grid,
                     tune_grid)
from tlbench.cli import cli
from tlbench.plan import build_trials
from tlbench.registry import Plugins
from tlbench.store import ResultStore
from tlbench.search_space import check_search_space, configurations, sample_configurations, search_space
from tlbench.spec import DEFAULT_BUDGET, DEFAULT_EXTENSIONS
from tlbench.sweeps import Candidate, Sweep, choose

CLASSES = 3
SIZE = 12  # images per split


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------- test-only plugin objects
class DisagreeingSplits:
    """Image of class c: channel c at 255, the others 0. Train and validation are labelled c; test is labelled
    c + 1 (mod 3): whatever is learnt on train and scores well on validation scores 0 on test."""

    name = "disagree"
    description = "test only: validation and test labels disagree by construction"
    takes_argument = False
    defaults = {"train_size": SIZE, "val_size": SIZE, "test_size": SIZE, "split_seed": 0, "storage_size": 8,
                "augment": "none", "image_size": 8}

    def fingerprint(self, argument, options):
        return json.dumps({**self.defaults, **options}, sort_keys=True)

    def load(self, argument, options):
        parts = []
        for split in ("train", "val", "test"):
            classes = torch.arange(SIZE) % CLASSES
            images = (nn.functional.one_hot(classes, CLASSES).to(torch.uint8) * 255)[:, :, None, None]
            labels = (classes + 1) % CLASSES if split == "test" else classes
            parts += [images.expand(SIZE, 3, 8, 8).contiguous(), labels.long()]
        return ImageSplits(*parts, [f"c{k}" for k in range(CLASSES)], {"dataset": self.name})


class ChannelMeans(nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # a stem for strategies that fine-tune it

    def forward(self, x):
        return x.mean(dim=(2, 3)) + 0 * self.anchor


class OneHotBackbones:
    name = "onehot"
    description = "test only: features are the images' channel means"
    takes_argument = False

    def build(self, argument, num_classes, pretrained):
        model = nn.Sequential(OrderedDict(body=ChannelMeans(), head=nn.Linear(3, num_classes)))
        return Backbone(name="onehot", model=model, groups=[("stem", ["body.anchor"]),
                                                            ("head", ["head.weight", "head.bias"])],
                        preprocessing=Preprocessing(8, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0, "test"),
                        pre_logits=model.body, head=model.head, pretrained=pretrained, weights={"source": "test"})


class Knob(Strategy):
    """Its search space holds a configuration that learns nothing (only the stem's unused anchor trains) and one
    that trains the head on frozen features."""

    name = "knob"
    description = "test only"
    defaults = {"head_lr": 0.3, "train_head": True}
    search_space = {"train_head": [False, True]}

    def plan(self, group_names, hparams):
        return TrainPlan({"head" if hparams["train_head"] else "stem": hparams["head_lr"]}, "frozen")


class Knob2(Knob):
    name = "knob2"


def tuning_plugins(*strategies) -> Plugins:
    plugins = Plugins(load_third_party=False)
    for registry, obj in ((plugins.datasets, DisagreeingSplits()), (plugins.backbones, OneHotBackbones()),
                          *((plugins.strategies, s) for s in strategies or (Knob,))):
        registry.current_plugin = "test_tuning"
        registry.register(obj)
    return plugins


# An untrained head answers class 0 for every image (head_init=zeros): 1/3 on validation and on test alike.
SETTINGS = {"epochs": 3, "head_init": "zeros", "batch_size": 4}


RUNTIME = ("reporter", "plugins", "warn")  # tune_grid's own arguments; TuneSpec's and RunSpec's fields go there


def tune(tmp_path: Path, strategies=("knob",), plugins=None, **kwargs):
    options = dict(budget=2, seeds=2, settings=SETTINGS, results_dir=tmp_path / "results", progress="off",
                   device="cpu", plugins=plugins or tuning_plugins(*(Knob, Knob2)))
    options.update(kwargs)
    runtime = {k: options.pop(k) for k in RUNTIME if k in options}
    tuning = TuneSpec(**{k: options.pop(k) for k in ("budget", "selection_seeds", "sample_seed", "extensions",
                                                      "halving") if k in options})
    spec = RunSpec(strategies=list(strategies), backbones=["onehot"], datasets=["disagree"], **options)
    return tune_grid(spec, tuning, **runtime)


def records_by_key(results: Path) -> dict:
    return {r.key: r for r in ResultStore(results).records()}


# --------------------------------------------------------------------------------------- spaces and sampling
def test_log_grid_is_half_decades_around_the_default():
    assert log_grid(1e-4) == [3e-05, 1e-04, 3e-04, 1e-03]
    assert log_grid(1e-3, below=2, above=1) == [1e-04, 3e-04, 1e-03, 3e-03]
    for bad in (0, -1e-3, math.nan, math.inf, "x", True):
        with pytest.raises(ValueError):
            log_grid(bad)


def test_configurations_are_the_product_in_the_space_order():
    assert configurations({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert configurations({}) == [{}]


def test_sampling_takes_all_when_the_space_is_the_budget_else_a_seeded_subset():
    configs = configurations({"lr": [1, 2, 3, 4, 5, 6, 7, 8, 9]})
    assert sample_configurations(configs[:4], 4, 0, "s")[0] == [0, 1, 2, 3]
    picked, how = sample_configurations(configs, 4, 0, "s")
    assert len(picked) == 4 == len(set(picked)) and picked == sorted(picked) and "4 of 9" in how
    assert sample_configurations(configs, 4, 0, "s")[0] == picked  # reproducible
    draws = {tuple(sample_configurations(configs, 4, seed, "s")[0]) for seed in range(10)}
    assert len(draws) > 1  # the sample seed matters
    with pytest.raises(UsageError, match="fewer than the tuning budget of 5.*--tune-budget 4"):
        sample_configurations(configs[:4], 5, 0, "s")


def test_a_strategy_without_a_declared_space_gets_its_learning_rates_on_a_log_grid():
    class NoSpace(Strategy):
        name = "nospace"
        defaults = {"lr": 1e-4, "head_lr": 1e-3, "alpha": 0.5}

    space, source = search_space(NoSpace())
    assert space == {"lr": log_grid(1e-4), "head_lr": log_grid(1e-3)} and source.startswith("derived")
    assert search_space(Knob())[1] == "declared by the strategy"


@pytest.mark.parametrize("space, problem", [
    ([("lr", [1e-3])], "must be a dict"),
    ({"lr_typo": [1e-3]}, "neither one of its defaults"),
    ({"epochs": [1, 2]}, "may not vary 'epochs'"),
    ({"head_lr": []}, "non-empty list"),
    ({"head_lr": "1e-3"}, "non-empty list"),
    ({"head_lr": 1e-3}, "non-empty list"),
    ({"head_lr": None}, "non-empty list"),
    ({"head_lr": [1e-3, math.nan]}, "finite"),
    ({"head_lr": [1e-3, -math.inf]}, "finite"),
    ({"head_lr": [[1e-3]]}, "values must be"),
    ({"head_lr": [{"a": 1}]}, "values must be"),
    ({"head_lr": [1e-3, 1e-3]}, "twice"),
])
def test_a_bad_search_space_is_a_plugin_problem_named_in_one_line(space, problem):
    bad = type("Bad", (Knob,), {"name": "bad", "search_space": space})
    with pytest.raises(UsageError, match=problem):
        check_search_space(bad())
    plugins = tuning_plugins(bad)  # registered like a plugin's hook would: left out, reported
    assert "bad" not in plugins.strategies.names()
    assert any(problem.split()[0] in (info.error or "") for info in plugins.info.values())


def test_protocol_settings_other_than_epochs_may_be_searched():
    searched = type("Searched", (Knob,), {"name": "searched", "search_space": {"weight_decay": [0.0, 0.01]}})
    check_search_space(searched())


@pytest.mark.parametrize("name", sorted(Plugins(load_third_party=False).strategies.names()))
def test_every_builtin_strategy_declares_a_valid_space_of_at_least_the_default_budget(name):
    plugins = Plugins(load_third_party=False)
    strategy = plugins.strategies.get(name)
    space, source = search_space(strategy)
    assert source == "declared by the strategy"
    configs = configurations(space)
    assert len(configs) >= DEFAULT_BUDGET
    for key, values in space.items():  # the default is in the space, so tuning can keep it
        default = {**strategy.defaults, **strategy.protocol}.get(key)
        assert default in values, (key, values)
    for config in configs:  # every configuration passes the strategy's own validation
        build_trials(datasets=[("synthetic", plugins.datasets.get("synthetic"))], backbones=["b"],
                     strategies=[(name, strategy)], seeds=[0],
                     overrides={f"{name}.{k}": v for k, v in config.items()})


# ------------------------------------------------------------------------------------- selection on validation
def test_the_configuration_is_chosen_on_validation_never_on_test(tmp_path):
    result = tune(tmp_path, seeds=2)
    assert result.exit_code == 0
    (sweep,) = result.sweeps
    records = records_by_key(tmp_path / "results")
    untrained, trained = sweep.candidates
    assert (untrained.config, trained.config) == ({"train_head": False}, {"train_head": True})
    val = {c.config["train_head"]: records[c.keys[0]].metrics.val_top1 for c in sweep.candidates}
    test = {c.config["train_head"]: records[c.keys[0]].metrics.test_top1 for c in sweep.candidates}
    # the construction: validation and test disagree about which configuration is better
    assert val[True] == 1.0 and val[False] == pytest.approx(1 / 3)
    assert test[True] == 0.0 and test[False] == pytest.approx(1 / 3)
    assert sweep.chosen_config == {"train_head": True}  # chosen on validation
    assert trained.val_top1 == 1.0 and untrained.val_top1 == pytest.approx(1 / 3)
    # reported on fresh seeds, not the selection seed
    assert sweep.selection_seeds == [0] and sweep.reporting_seeds == [1, 2]
    reported = [records[key] for key in sweep.reporting_keys]
    assert [r.trial.seed for r in reported] == [1, 2]
    assert all(r.trial.hparams["train_head"] is True for r in reported)
    assert [r.metrics.test_top1 for r in reported] == [0.0, 0.0]


def test_selection_reads_no_test_score(tmp_path):
    """Rewrite the selection records' test scores to favour the untrained configuration: the choice stays."""
    tune(tmp_path, seeds=1)
    results = tmp_path / "results"
    for path in results.glob("*.json"):
        raw = json.loads(path.read_text())
        if raw["trial"]["seed"] == 0:
            raw["metrics"]["test_top1"] = 0.0 if raw["trial"]["hparams"]["train_head"] else 1.0
            path.write_text(json.dumps(raw))
    for sweep_file in (results / "tuning").glob("*.json"):
        sweep_file.unlink()
    again = tune(tmp_path, seeds=1)
    assert again.selection.skipped == 2 and again.sweeps[0].chosen_config == {"train_head": True}


def test_choose_takes_the_best_validation_score_and_the_earliest_on_ties():
    def cand(val):
        return Candidate({}, "g", "l", ["k"], val)

    assert choose([cand(0.5), cand(0.7), cand(0.7)]) == 1
    assert choose([cand(None), cand(0.1)]) == 1  # diverged never wins over one that trained
    assert choose([cand(None), cand(None)]) == 0


# --------------------------------------------------------------------------------------------------- budgets
def test_every_strategy_gets_the_same_budget_and_it_is_recorded(tmp_path):
    result = tune(tmp_path, ["knob", "knob2", "frozen"], seeds=1)  # the built-in frozen: an ordered space of 9
    budgets = result.budgets
    assert set(budgets) == {"knob", "knob2", "frozen"}
    assert len({json.dumps({k: v for k, v in b.items() if k != "space_size"}) for b in budgets.values()}) == 1
    assert budgets["frozen"] == {"configurations": 2, "space_size": 9, "epochs_per_configuration": 3,
                                 "selection_seeds": 1, "trials": 2, "epochs": 6, "extensions": DEFAULT_EXTENSIONS,
                                 "halving": [], "maximum_trials": 2 + DEFAULT_EXTENSIONS,
                                 "maximum_epochs": 3 * (2 + DEFAULT_EXTENSIONS)}
    sweeps = {s.strategy: s for s in ResultStore(tmp_path / "results").sweeps()}
    drawn = {name: [c for c in s.candidates if not c.extension] for name, s in sweeps.items()}
    assert {name: len(c) for name, c in drawn.items()} == {"knob": 2, "knob2": 2, "frozen": 2}
    assert len(sweeps["knob"].candidates) == 2  # an unordered space is never extended
    assert sweeps["frozen"].budget == {**budgets["frozen"], "spent": {
        "configurations": len(sweeps["frozen"].candidates), "extensions": len(sweeps["frozen"].candidates) - 2,
        "trials": len(sweeps["frozen"].candidates), "epochs": 3 * len(sweeps["frozen"].candidates)}}
    assert "2 of 9 drawn" in sweeps["frozen"].sampling
    assert all(s.budget["spent"]["epochs"] <= s.budget["maximum_epochs"] for s in sweeps.values())
    selection_trials = [t for t in result.selection.trials]
    assert {name: sum(t.strategy == name for t in selection_trials) for name in budgets} == {
        "knob": 2, "knob2": 2, "frozen": 2}


def test_a_space_smaller_than_the_budget_stops_before_anything_runs(tmp_path):
    with pytest.raises(UsageError, match="'knob' has 2 configuration.*fewer than the tuning budget of 3"):
        tune(tmp_path, budget=3)
    assert not (tmp_path / "results").exists()


def test_a_tuned_setting_cannot_also_be_set(tmp_path):
    with pytest.raises(UsageError, match="knob.train_head is tuned by --tune"):
        tune(tmp_path, settings={**SETTINGS, "knob.train_head": False})
    assert not (tmp_path / "results").exists()


def test_differing_epochs_are_warned_as_unequal_budgets(tmp_path):
    warnings = []
    tune(tmp_path, ["knob", "knob2"], seeds=1, settings={**SETTINGS, "knob2.epochs": 2}, warn=warnings.append)
    assert any("budgets differ" in w and "knob2 2" in w for w in warnings)


# -------------------------------------------------------------------------------------------------- resuming
class StopAfter:
    """A reporter that interrupts the grid (as Ctrl-C would) after ``n`` trials have been written."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def grid_started(self, result):
        pass

    def trial_busy(self, job):
        pass

    def message(self, text):
        pass

    def trial_finished(self, record):
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt


def test_a_sweep_stopped_halfway_resumes_without_redoing_finished_configurations(tmp_path):
    first = tune(tmp_path, ["knob", "knob2"], reporter=StopAfter(3), seeds=1)
    assert first.selection.interrupted == "SIGINT" and first.exit_code == 130 and first.reporting is None
    results = tmp_path / "results"
    done = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in results.glob("*.json")}
    assert len(done) == 3 and not (results / "tuning").exists()
    second = tune(tmp_path, ["knob", "knob2"], seeds=1)
    assert second.exit_code == 0
    assert second.selection.skipped == 3 and len(second.selection.ok) == 1  # only the fourth configuration
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in results.glob("*.json")
            if p.name in done} == done  # finished records untouched
    assert len(ResultStore(results).sweeps()) == 2
    third = tune(tmp_path, ["knob", "knob2"], seeds=1)  # all done: nothing runs, the same choice
    assert third.selection.skipped == 4 and third.reporting.skipped == 2 and not third.reporting.ok
    assert [s.to_json_dict() for s in third.sweeps] == [s.to_json_dict() for s in second.sweeps]


def test_a_failed_configuration_leaves_the_strategy_untuned_with_the_reason(tmp_path):
    class Breaks(Knob):
        name = "breaks"

        def plan(self, group_names, hparams):
            if hparams["train_head"]:
                raise RuntimeError("boom")  # a plugin bug: the trial fails and is recorded
            return super().plan(group_names, hparams)

    result = tune(tmp_path, ["breaks"], plugins=tuning_plugins(Breaks), seeds=1)
    assert result.exit_code == 1 and not result.sweeps and result.reporting is None
    assert "breaks" in result.not_selected[0] and "failed" in result.not_selected[0]


# ------------------------------------------------------------------------------------------------ sweep files
def a_sweep(**changes) -> dict:
    sweep = Sweep("k" * 20, "d", "b", "s", {"lr": [1, 2]}, "declared by the strategy", {"configurations": 2},
                  "all", [Candidate({"lr": 1}, "g1", "s[lr=1]", ["a" * 20], 0.5),
                          Candidate({"lr": 2}, "g2", "s[lr=2]", ["b" * 20], 0.7)], 1, [0], [1, 2],
                  ["c" * 20, "d" * 20], "g2", "s[lr=2]").to_json_dict()
    sweep.update(changes)
    return sweep


@pytest.mark.parametrize("change", [
    {"kind": "something else"}, {"schema": 2}, {"schema": None}, {"chosen": 2}, {"chosen": -1}, {"chosen": "1"},
    {"chosen": True}, {"candidates": []}, {"candidates": [{"config": {}}]}, {"candidates": "x"},
    {"reporting_seeds": [0, 1]}, {"reporting_seeds": ["1"]}, {"selection_seeds": [True]}, {"reporting_keys": [""]},
    {"reporting_keys": None}, {"dataset": None}, {"space": []}, {"budget": 4}, {"key": 5}, {"selection_rule": 1},
])
def test_an_invalid_sweep_file_is_skipped_with_one_warning(tmp_path, change):
    directory = tmp_path / "tuning"
    directory.mkdir()
    raw = a_sweep(**change)
    (directory / f"{raw['key'] if isinstance(raw.get('key'), str) else 'x'}.json").write_text(json.dumps(raw))
    warnings = []
    assert ResultStore(tmp_path, warn=warnings.append).sweeps() == [] and len(warnings) == 1 and "not a valid sweep" in warnings[0]


@pytest.mark.parametrize("text", ["{", "[]", "null", '{"val": NaN}', "\xff"])
def test_a_sweep_file_that_is_not_a_json_object_is_skipped(tmp_path, text):
    directory = tmp_path / "tuning"
    directory.mkdir()
    (directory / "x.json").write_bytes(text.encode("latin-1"))
    warnings = []
    assert ResultStore(tmp_path, warn=warnings.append).sweeps() == [] and len(warnings) == 1


def test_a_non_finite_validation_score_in_a_sweep_file_is_refused(tmp_path):
    raw = a_sweep()
    text = json.dumps(raw).replace('"val_top1": 0.5', '"val_top1": Infinity')
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / f"{raw['key']}.json").write_text(text)
    warnings = []
    assert ResultStore(tmp_path, warn=warnings.append).sweeps() == [] and "Infinity" in warnings[0]


def test_a_sweep_file_round_trips_and_must_be_named_after_its_key(tmp_path):
    sweep = Sweep.from_json_dict(a_sweep())
    path = ResultStore(tmp_path).write_sweep(sweep)
    assert [s.to_json_dict() for s in ResultStore(tmp_path).sweeps()] == [sweep.to_json_dict()]
    os.rename(path, path.with_name("renamed.json"))
    warnings = []
    assert ResultStore(tmp_path, warn=warnings.append).sweeps() == [] and "rename it" in warnings[0]


# --------------------------------------------------------------------------------------------- command line
def run_cli(monkeypatch, plugins, *args):
    monkeypatch.setattr(tlbench.cli, "_plugins", lambda: plugins)
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def test_run_tune_prints_budgets_choices_and_tuned_rows_apart(tmp_path, monkeypatch):
    results = tmp_path / "results"
    args = ["run", "-q", "--tune", "--tune-budget", "2", "--seeds", "2", "-s", "knob", "-s", "knob2", "-b",
            "onehot", "-d", "disagree", "--device", "cpu", "--results-dir", results, "--set", "epochs=3",
            "--set", "head_init=zeros", "--set", "batch_size=4", "--format", "json"]
    out = run_cli(monkeypatch, tuning_plugins(Knob, Knob2), *args)
    assert out.exit_code == 0, out.output
    assert "tune knob: 2 of 2 configuration(s) x 3 epochs x 1 selection seed(s) = 6 training epochs" in out.stderr
    assert "chose train_head=True (val top-1 100.0%; candidates 33.3%, 100.0%)" in out.stderr
    table = json.loads(out.stdout)
    tuned = [row for row in table if row["tuning"].startswith("best of 2 on val")]
    assert {row["strategy"].split("[")[0] for row in tuned} == {"knob", "knob2"}
    assert all(row["test"]["n"] == 2 and row["test"]["mean"] == 0.0 for row in tuned)  # the reporting seeds
    defaults = [row for row in table if row["tuning"] == "default"]
    # the defaults (train_head=True) were chosen: their row holds the selection seed and the reporting seeds
    assert len(defaults) == 2 and all(row["test"]["n"] == 3 for row in defaults)

    board = run_cli(monkeypatch, tuning_plugins(Knob, Knob2), "leaderboard", "--results-dir", results,
                    "--format", "csv")
    assert board.exit_code == 0 and "tuning" in board.stdout.splitlines()[0]
    assert "best of 2 on val: train_head=True" in board.stdout and "train_head=False" not in board.stdout
    every = run_cli(monkeypatch, tuning_plugins(Knob, Knob2), "leaderboard", "--results-dir", results,
                    "--format", "csv", "--candidates")
    assert "train_head=False" in every.stdout and "tried by a sweep" in every.stdout
    again = run_cli(monkeypatch, tuning_plugins(Knob, Knob2), *args)  # resumed: nothing to run
    assert again.exit_code == 0 and "0 ok, 0 failed, 4 skipped" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["--tune-budget", "2"], "--tune-budget only applies with --tune"),
    (["--selection-seeds", "2"], "--selection-seeds only applies with --tune"),
    (["--tune", "--tune-budget", "0"], "--tune-budget must be an integer >= 1"),
    (["--tune", "--selection-seeds", "0"], "--selection-seeds must be an integer >= 1"),
    (["--tune", "--tune-budget", "3"], "fewer than the tuning budget of 3"),
    (["--tune", "--set", "knob.train_head=false"], "knob.train_head is tuned by --tune"),
])
def test_bad_tuning_input_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, args, message):
    results = tmp_path / "results"
    out = run_cli(monkeypatch, tuning_plugins(), "run", "-q", "-s", "knob", "-b", "onehot", "-d", "disagree",
                  "--results-dir", results, *args)
    assert out.exit_code == 2 and out.output.count("\n") == 1 and message in out.output, out.output
    assert not results.exists()


def test_list_strategies_shows_each_search_space():
    out = CliRunner().invoke(cli, ["list", "strategies", "--wide"])  # one line per strategy
    assert out.exit_code == 0 and "search space (--tune)" in out.output
    line = next(line for line in out.output.splitlines() if line.startswith("full "))
    assert "lr [1e-05, 3e-05, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]" in line


@pytest.mark.parametrize("columns", [100, 120, 160])
def test_list_fits_the_terminal_and_wide_keeps_one_line_per_entry(columns):
    fitted = CliRunner(env={"COLUMNS": str(columns)}).invoke(cli, ["list"]).output
    assert max(len(line) for line in fitted.splitlines()) <= columns
    wide = CliRunner(env={"COLUMNS": str(columns)}).invoke(cli, ["list", "--wide"]).output
    assert max(len(line) for line in wide.splitlines()) > columns
    for name in ("full", "lora", "ray", "imagefolder:<arg>"):  # nothing is lost by wrapping: each entry still listed
        assert any(line.startswith(name + " ") for line in fitted.splitlines()), name
    settings = [w for line in wide.splitlines() if line.startswith("full ") for w in line.split() if "=" in w]
    assert settings and all(s.rstrip(",") in fitted for s in settings), "a setting is never split across lines"


def test_a_sweep_killed_with_sigkill_mid_trial_resumes_without_redoing_finished_configurations(tmp_path,
                                                                                              tiny_backbone):
    """The real thing: `tlbench run --tune` in a child process, SIGKILLed while its third configuration trains."""
    import subprocess

    from test_reliability import child_env, run_until_marker_then_kill, tlbench

    results = tmp_path / "results"
    args = ["run", "-q", "--tune", "-s", "full", "-b", tiny_backbone, "-d", "synthetic", "--epochs", "1",
            "--seeds", "1", "--set", "data.train_size=64", "--results-dir", str(results)]
    run_until_marker_then_kill(args, results, "fit", 3, tmp_path / "killed.log")
    done = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in results.glob("*.json")}
    assert len(done) == 2 and not (results / "tuning").exists()
    final = subprocess.run(tlbench(*args), capture_output=True, text=True, env=child_env(), timeout=300)
    assert final.returncode == 0, final.stderr
    assert "4 trial(s), 2 already done, 2 to run" in final.stderr
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in results.glob("*.json") if p.name in done} == done
    (sweep,) = ResultStore(results).sweeps()
    drawn = [c for c in sweep.candidates if not c.extension]  # then any extensions of an edge, after the kill
    assert len(drawn) == 4 and all(c.val_top1 is not None for c in sweep.candidates)
    assert len(list(results.glob("*.json"))) == len(sweep.candidates) + 1  # the configurations + 1 reporting seed


def test_a_sweep_runs_through_another_executor_with_the_same_choice(tmp_path, tiny_backbone):
    """Configurations are ordinary trials: the process executor runs them in a child and the choice is the same."""
    choices = {}
    for executor in ("local", "process"):
        spec = RunSpec(strategies=["frozen"], backbones=[tiny_backbone], datasets=["synthetic"], seeds=1,
                       executor=executor, settings={"epochs": 1, "data.train_size": 64},
                       results_dir=tmp_path / executor, progress="off", device="cpu")
        result = tune_grid(spec, TuneSpec(budget=2))
        assert result.exit_code == 0
        (sweep,) = result.sweeps
        choices[executor] = (sweep.chosen_config, [c.val_top1 for c in sweep.candidates])
    assert choices["local"] == choices["process"]
