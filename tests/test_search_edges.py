"""The edge rule, successive halving and the budgets of `tlbench run --tune` (tlbench.tuning).

The strategy here, ``peaked``, scores on validation by construction: after training it sets its head so that
exactly k(lr) of the three classes are right, k peaking at lr = 1e-2 (3 classes) and falling by one class every
half decade either side. Its declared space stops at 1e-3, below the optimum, so only the edge rule can find it.
The dataset is test_tuning's ``disagree``: its test labels are the validation ones shifted by one class, so the
head that is right on k classes of validation is right on 3 - k of test; choosing on test picks the worst lr.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_tuning import DisagreeingSplits, OneHotBackbones, StopAfter, records_by_key, run_cli

from tlbench import RunSpec, Strategy, TrainPlan, TuneSpec, UsageError, linear_axis, log_axis, tune_grid
from tlbench.cli import cli
from tlbench.leaderboard import build_table, render
from tlbench.registry import Plugins
from tlbench.search_space import ordered_axes
from tlbench.store import ResultStore
from tlbench.tuning import edges_of, halving_rungs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def right_classes(lr: float) -> int:
    """How many classes the head gets right on validation: 3 at lr = 1e-2, one fewer per half decade away."""
    return max(0, 3 - abs(round(2 * math.log10(lr / 1e-2))))


class Peaked(Strategy):
    name = "peaked"
    description = "test only: validation top-1 peaks at lr = 1e-2, beyond its declared space"
    defaults = {"lr": 1e-3}
    search_space = {"lr": log_axis(1e-4, 1e-3)}  # 1e-4, 3e-4, 1e-3: validation improves towards the top edge

    def plan(self, group_names, hparams):
        right = right_classes(hparams["lr"])

        def set_head(ctx):  # class c is predicted as c when c < right, else as c + 1: wrong on val, right on test
            with torch.no_grad():
                head = ctx.model.head
                head.weight.zero_()
                head.bias.zero_()
                for c in range(3):
                    head.weight[c if c < right else (c + 1) % 3, c] = 1.0
            return {"right_classes": right}

        return TrainPlan({"head": hparams["lr"]}, "frozen", after_training=set_head)


class Peaked4(Peaked):
    name = "peaked4"
    search_space = {"lr": log_axis(1e-4, 3e-3)}  # four values, for halving


class Inside(Peaked):
    """The same, with the optimum inside its space: it spends no extension."""

    name = "inside"
    search_space = {"lr": log_axis(1e-3, 3e-2)}  # 1e-3, 3e-3, 1e-2, 3e-2


class Capped(Peaked):
    """The same, but it refuses any lr above 1e-3 (the top of its space) without declaring that as a hard limit."""

    name = "capped"

    def validate(self, hparams, protocol=None):
        super().validate(hparams, protocol)
        if hparams["lr"] > 1e-3:
            raise UsageError(f"capped.lr must be <= 1e-3, got {hparams['lr']}")


def plugins() -> Plugins:
    found = Plugins(load_third_party=False)
    for registry, obj in ((found.datasets, DisagreeingSplits()), (found.backbones, OneHotBackbones()),
                          (found.strategies, Peaked), (found.strategies, Peaked4), (found.strategies, Inside),
                          (found.strategies, Capped)):
        registry.current_plugin = "test_search_edges"
        registry.register(obj)
    return found


SETTINGS = {"epochs": 2, "head_init": "zeros", "batch_size": 4}


def tune(tmp_path: Path, strategies=("peaked",), budget=3, extensions=2, halving=False, seeds=1, **kwargs):
    spec = RunSpec(strategies=list(strategies), backbones=["onehot"], datasets=["disagree"], seeds=seeds,
                   settings=kwargs.pop("settings", SETTINGS), results_dir=tmp_path / "results", progress="off",
                   device="cpu")
    return tune_grid(spec, TuneSpec(budget=budget, extensions=extensions, halving=halving),
                     plugins=kwargs.pop("plugins", None) or plugins(), **kwargs)


def lrs(sweep) -> list[float]:
    return [c.config["lr"] for c in sweep.candidates]


# ------------------------------------------------------------------------------------------- axes and edges
def test_an_axis_steps_past_its_edge_at_its_ratio_and_stops_at_a_hard_limit():
    lr = log_axis(1e-5, 1e-1)
    assert list(lr) == [1e-05, 3e-05, 1e-04, 3e-04, 1e-03, 3e-03, 1e-02, 3e-02, 1e-01]
    assert (lr.beyond(0.1, +1), lr.beyond(3e-3, +1), lr.beyond(1e-5, -1)) == (0.3, 0.01, 3e-06)
    fraction = linear_axis(0.25, 0.75, 0.25, low=0.0, high=1.0)
    assert list(fraction) == [0.25, 0.5, 0.75] and fraction.beyond(0.75, +1) == 1.0
    assert fraction.beyond(1.0, +1) is None and fraction.beyond(0.0, -1) is None  # a hard limit: nothing beyond
    assert linear_axis(0.25, 0.75, 0.25, high=0.9).beyond(0.75, +1) == 0.9  # a step past a limit stops at it
    rank = log_axis(2, 16, 2, low=1, integer=True)
    assert list(rank) == [2, 4, 8, 16] and rank.beyond(2, -1) == 1 and rank.beyond(1, -1) is None
    with pytest.raises(ValueError, match="hard limits"):
        linear_axis(0.5, 1.5, 0.5, high=1.0)


def test_a_choice_is_on_an_edge_only_of_an_ordered_axis_and_not_at_a_hard_limit():
    axes = {"lr": log_axis(1e-4, 1e-3), "start": linear_axis(0.5, 1.0, 0.25, low=0.0, high=1.0)}
    tried = [{"lr": lr, "start": s, "kind": k} for lr in (1e-4, 3e-4, 1e-3) for s in (0.5, 0.75, 1.0)
             for k in ("a", "b")]
    assert edges_of({"lr": 1e-3, "start": 1.0, "kind": "b"}, tried, axes) == [("lr", +1)]  # start=1: a limit
    assert edges_of({"lr": 1e-4, "start": 0.5, "kind": "a"}, tried, axes) == [("lr", -1), ("start", -1)]
    assert edges_of({"lr": 3e-4, "start": 0.75, "kind": "a"}, tried, axes) == []  # "kind" is unordered


def test_every_builtin_space_is_a_wide_log_grid_of_learning_rates():
    found = Plugins(load_third_party=False)
    for name in found.strategies.names():
        axes = ordered_axes(found.strategies.get(name))
        rates = [axis for key, axis in axes.items() if key.endswith("lr")]
        assert rates, name
        for axis in rates:
            assert axis.scale == "log" and axis.step == pytest.approx(10 ** 0.5) and len(axis) >= 7, (name, axis)
            assert max(axis) / min(axis) >= 1e3, (name, list(axis))


# ------------------------------------------------------------------------------------------------ the edge rule
def test_the_extension_finds_an_optimum_beyond_the_initial_space(tmp_path):
    result = tune(tmp_path, extensions=3)
    assert result.exit_code == 0
    (sweep,) = result.sweeps
    assert lrs(sweep) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]  # three extensions upward, one step (x√10) each
    assert [c.extension for c in sweep.candidates] == [0, 0, 0, 1, 2, 3]
    assert [round(3 * c.val_top1) for c in sweep.candidates] == [0, 0, 1, 2, 3, 2]
    assert sweep.chosen_config == {"lr": 0.01} and sweep.edges == [] and sweep.edge_text == ""
    assert sweep.tuning_text == "best of 6 on val (3 by extension): lr=0.01"
    records = records_by_key(tmp_path / "results")
    assert [records[k].trial.hparams["lr"] for k in sweep.reporting_keys] == [0.01]
    raw = json.loads((tmp_path / "results" / "tuning" / f"{sweep.key}.json").read_text())
    assert [c["extension"] for c in raw["candidates"]] == [0, 0, 0, 1, 2, 3] and raw["extensions"] == 3
    assert raw["budget"]["spent"] == {"configurations": 6, "extensions": 3, "trials": 6, "epochs": 12}


def test_the_edge_is_marked_in_the_leaderboard_and_report_when_the_limit_is_hit(tmp_path):
    result = tune(tmp_path, extensions=2)
    (sweep,) = result.sweeps
    assert lrs(sweep) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2] and sweep.chosen_config == {"lr": 0.01}
    assert sweep.edges == ["lr=0.01 is the largest tried"]
    store = ResultStore(tmp_path / "results")
    (read,) = store.sweeps()
    assert read.edges == sweep.edges  # recorded in the sweep file
    table = build_table(store.records(), sweeps=[read])
    tuned = [row for row in table.values if row["tuning"].startswith("best of")]
    assert [row["tuning"] for row in tuned] == [
        "best of 5 on val (2 by extension): lr=0.01; edge: lr=0.01 is the largest tried"]
    assert any("1 tuned row(s) chose on an edge" in note for note in table.notes)
    assert "edge: lr=0.01 is the largest tried" in render(store.records(), "csv", sweeps=[read])
    from tlbench.report import render_report
    sections = [s for _, s in Plugins(load_third_party=False).report_sections.items()]
    html = render_report(store.records(), sections, reference="peaked", sweeps=[read])
    assert "edge: lr=0.01 is the largest tried" in html


def test_a_sweep_run_again_with_more_extensions_is_its_own_row_told_apart_and_paired_alike(tmp_path):
    # the evidence run's case: a choice still on an edge after 2 extensions, `--tune-extensions 3` run over the
    # same folder; both sweeps stay (each is its own protocol), named by what differs, each paired with the
    # reference's sweep of the same --tune settings
    tune(tmp_path, strategies=("peaked", "inside"), extensions=2)
    result = tune(tmp_path, strategies=("peaked", "inside"), extensions=3)
    assert result.exit_code == 0
    store = ResultStore(tmp_path / "results")
    sweeps = store.sweeps()
    assert len(sweeps) == 4
    table = build_table(store.records(), sweeps=sweeps, vs="inside")
    tuned = sorted(row["tuning"] for row in table.values if row["tuning"].startswith("best of"))
    assert tuned == ["best of 3 on val: lr=0.01 [extensions 2]", "best of 3 on val: lr=0.01 [extensions 3]",
                     "best of 5 on val (2 by extension): lr=0.01; edge: lr=0.01 is the largest tried [extensions 2]",
                     "best of 6 on val (3 by extension): lr=0.01 [extensions 3]"]
    from tlbench.leaderboard import group_records, reference_group
    groups = group_records(store.records(), sweeps=sweeps)
    for group in (g for g in groups if g.get("tuned") and g["name"] == "peaked"):
        partner = reference_group(groups, "inside", group)
        assert partner["sweep"].extensions == group["sweep"].extensions
    assert {g["strategy_tuned"] for g in groups if g.get("tuned")} == {
        "peaked (tuned, extensions 2)", "peaked (tuned, extensions 3)", "inside (tuned, extensions 2)",
        "inside (tuned, extensions 3)"}


def test_without_extensions_the_edge_is_only_marked(tmp_path):
    (sweep,) = tune(tmp_path, extensions=0).sweeps
    assert lrs(sweep) == [1e-4, 3e-4, 1e-3] and sweep.edges == ["lr=0.001 is the largest tried"]


def test_a_value_the_strategy_refuses_is_a_hard_limit_not_an_edge(tmp_path):
    result = tune(tmp_path, ["capped"], extensions=2)
    assert result.exit_code == 0
    (sweep,) = result.sweeps
    assert lrs(sweep) == [1e-4, 3e-4, 1e-3] and sweep.chosen_config == {"lr": 1e-3}  # 3e-3 refused: not tried
    assert sweep.edges == [] and sweep.budget["spent"]["extensions"] == 0
    (read,) = ResultStore(tmp_path / "results").sweeps()
    assert read.edges == []  # the sweep file records no edge either
    table = build_table(ResultStore(tmp_path / "results").records(), sweeps=[read])
    assert not any("chose on an edge" in note for note in table.notes)
    assert [row["tuning"] for row in table.values if row["tuning"].startswith("best of")] == [
        "best of 3 on val: lr=0.001"]


def test_selection_with_extensions_reads_no_test_score(tmp_path):
    """Validation and test disagree by construction (right on k classes of val, 3 - k of test); then the
    selection records' test scores are rewritten to favour the smallest lr: the choice stays."""
    first = tune(tmp_path, extensions=3)
    records = records_by_key(tmp_path / "results")
    (sweep,) = first.sweeps
    test = {c.config["lr"]: records[c.keys[0]].metrics.test_top1 for c in sweep.candidates}
    assert test[1e-4] == 1.0 and test[1e-2] == 0.0  # choosing on test would pick the smallest lr
    results = tmp_path / "results"
    for path in results.glob("*.json"):
        raw = json.loads(path.read_text())
        if raw["trial"]["seed"] == 0:
            raw["metrics"]["test_top1"] = 1.0 if raw["trial"]["hparams"]["lr"] == 1e-4 else 0.0
            path.write_text(json.dumps(raw))
    for sweep_file in (results / "tuning").glob("*.json"):
        sweep_file.unlink()
    again = tune(tmp_path, extensions=3)
    assert again.sweeps[0].chosen_config == {"lr": 0.01}
    assert again.selection.skipped == 3 and all(not g.ok and g.skipped == 1 for g in again.rounds)


# --------------------------------------------------------------------------------------------------- budgets
def test_budgets_are_equal_across_strategies_and_spent_is_recorded(tmp_path):
    result = tune(tmp_path, ["peaked4", "inside"], budget=4, extensions=2)
    planned = {name: {k: v for k, v in b.items() if k != "space_size"} for name, b in result.budgets.items()}
    assert planned["peaked4"] == planned["inside"] == {
        "configurations": 4, "epochs_per_configuration": 2, "selection_seeds": 1, "trials": 4, "epochs": 8,
        "extensions": 2, "halving": [], "maximum_trials": 6, "maximum_epochs": 12}
    spent = {s.strategy: s.budget["spent"] for s in result.sweeps}
    assert spent == {"peaked4": {"configurations": 6, "extensions": 2, "trials": 6, "epochs": 12},
                     "inside": {"configurations": 4, "extensions": 0, "trials": 4, "epochs": 8}}
    assert {s.strategy: s.chosen_config for s in result.sweeps} == {"peaked4": {"lr": 0.01}, "inside": {"lr": 0.01}}


def test_halving_trains_every_configuration_briefly_and_the_better_half_longer(tmp_path):
    assert halving_rungs(4, 8) == [[4, 2], [2, 4]] and halving_rungs(9, 8) == [[9, 1], [5, 1], [3, 2], [2, 4]]
    assert halving_rungs(1, 8) == []
    result = tune(tmp_path, ["peaked4", "inside"], budget=4, extensions=2, halving=True,
                  settings={**SETTINGS, "epochs": 4}, seeds=1)
    assert result.exit_code == 0
    sweeps = {s.strategy: s for s in result.sweeps}
    peaked = sweeps["peaked4"]
    assert [(c.config["lr"], c.epochs, c.rung, c.extension) for c in peaked.candidates] == [
        (1e-4, 1, 0, 0), (3e-4, 1, 0, 0), (1e-3, 1, 0, 0), (3e-3, 1, 0, 0),  # every configuration, 1/4 the epochs
        (1e-3, 2, 1, 0), (3e-3, 2, 1, 0),  # the better half, twice as long
        (1e-2, 2, 1, 1), (3e-2, 2, 1, 2)]  # the edge rule, at the epochs the choice is made at
    assert peaked.chosen_config == {"lr": 0.01} and peaked.edges == [] and peaked.halving == [[4, 1], [2, 2]]
    assert "successive halving" in peaked.tuning_text
    records = records_by_key(tmp_path / "results")
    assert {records[c.keys[0]].trial.protocol["epochs"] for c in peaked.candidates} == {1, 2}
    assert [records[k].trial.protocol["epochs"] for k in peaked.reporting_keys] == [4]  # reported in full
    budgets = {n: {k: v for k, v in b.items() if k != "space_size"} for n, b in result.budgets.items()}
    assert budgets["peaked4"] == budgets["inside"] and budgets["inside"]["halving"] == [[4, 1], [2, 2]]
    assert budgets["inside"]["epochs"] == 8 and budgets["inside"]["maximum_epochs"] == 12  # against 16 in full
    assert peaked.budget["spent"] == {"configurations": 6, "extensions": 2, "trials": 8, "epochs": 12}
    assert budgets["inside"]["maximum_trials"] == 4 + 2 + 2  # the rungs' trials, then the extensions'
    # the leaderboard counts configurations, not candidates (a configuration in two rungs is one configuration)
    store = ResultStore(tmp_path / "results")
    table = build_table(store.records(), sweeps=store.sweeps())
    tuned = sorted(row["tuning"].split(" on val")[0] for row in table.values if row["tuning"].startswith("best of"))
    assert tuned == ["best of 4", "best of 6"]  # inside: 4 configurations (6 candidates); peaked4: 6 (8)
    (note,) = [note for note in table.notes if note.startswith("tuned rows:")]
    assert "best of 4 configurations" in note and "best of 6 configurations" in note and "best of 8" not in note


@pytest.mark.parametrize("halving, trials", [(False, 4 + 2 + 1), (True, 4 + 2 + 2 + 1)])
def test_the_grid_size_check_counts_every_halving_rung(tmp_path, monkeypatch, halving, trials):
    """K = 4 with 2 extensions and 1 reporting seed: halving trains 4 + 2 configurations before the extensions."""
    monkeypatch.setattr("tlbench.grid.available_memory", lambda: 1)  # nothing fits: the check says its count
    with pytest.raises(UsageError, match=f"the grid has {trials} trials"):
        tune(tmp_path, ["peaked4"], budget=4, extensions=2, halving=halving)
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.json"))


# -------------------------------------------------------------------------------------------------- resuming
def file_state(results: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in results.glob("*.json")}


def test_a_sweep_stopped_during_an_extension_resumes_without_redoing_finished_trials(tmp_path):
    first = tune(tmp_path, extensions=3, reporter=StopAfter(4))  # 3 drawn, then extension 1's trial: stop
    assert first.exit_code == 130 and first.selection.skipped == 0 and len(first.rounds) == 1
    results = tmp_path / "results"
    done = file_state(results)
    assert len(done) == 4 and not (results / "tuning").exists()
    second = tune(tmp_path, extensions=3)
    assert second.exit_code == 0
    assert second.selection.skipped == 3 and second.rounds[0].skipped == 1 and not second.rounds[0].ok
    assert [len(g.ok) for g in second.rounds[1:]] == [1, 1]  # extensions 2 and 3 only
    assert {k: v for k, v in file_state(results).items() if k in done} == done  # finished records untouched
    (sweep,) = second.sweeps
    assert sweep.chosen_config == {"lr": 0.01} and len(sweep.candidates) == 6
    assert len(list(results.glob("*.json"))) == 7  # 6 configurations + 1 reporting seed


def test_a_sweep_stopped_during_a_halving_rung_resumes_without_redoing_finished_trials(tmp_path):
    settings = {**SETTINGS, "epochs": 4}
    first = tune(tmp_path, ["peaked4"], budget=4, halving=True, settings=settings, reporter=StopAfter(5))
    assert first.exit_code == 130 and len(first.rounds) == 1  # rung 1 done, rung 2's first trial written
    results = tmp_path / "results"
    done = file_state(results)
    assert len(done) == 5
    second = tune(tmp_path, ["peaked4"], budget=4, halving=True, settings=settings)
    assert second.exit_code == 0
    assert second.selection.skipped == 4 and second.rounds[0].skipped == 1 and len(second.rounds[0].ok) == 1
    assert {k: v for k, v in file_state(results).items() if k in done} == done
    third = tune(tmp_path, ["peaked4"], budget=4, halving=True, settings=settings)  # all done: the same choice
    assert all(not g.ok for g in third.grids) and third.sweeps[0].to_json_dict() == second.sweeps[0].to_json_dict()


# ------------------------------------------------------------------------------------------------ command line
def test_run_tune_takes_extensions_and_halving_and_prints_each_budget_at_the_end(tmp_path, monkeypatch):
    args = ["run", "-q", "--tune", "--tune-budget", "4", "--tune-extensions", "1", "--tune-halving", "-s",
            "peaked4", "-s", "inside", "-b", "onehot", "-d", "disagree", "--device", "cpu", "--results-dir",
            tmp_path / "results", "--set", "epochs=4", "--set", "head_init=zeros", "--set", "batch_size=4"]
    out = run_cli(monkeypatch, plugins(), *args)
    assert out.exit_code == 0, out.output
    assert "successive halving over 4 x 1 then 2 x 2 epochs" in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("tlbench: budget ")]
    assert len(lines) == 2 and all("training epochs of at most 10" in line for line in lines)
    assert any("peaked4" in line and "edge: lr=0.01 is the largest tried" in line for line in lines)


@pytest.mark.parametrize("args, message", [
    (["--tune-extensions", "1"], "--tune-extensions only applies with --tune"),
    (["--tune-halving"], "--tune-halving only applies with --tune"),
    (["--tune", "--tune-extensions", "-1"], "--tune-extensions must be an integer >= 0"),
])
def test_bad_extension_or_halving_input_is_one_line_exit_2(tmp_path, monkeypatch, args, message):
    out = run_cli(monkeypatch, plugins(), "run", "-q", "-s", "peaked", "-b", "onehot", "-d", "disagree",
                  "--results-dir", tmp_path / "results", *args)
    assert out.exit_code == 2 and message in out.output, out.output
    with pytest.raises(UsageError, match="halving must be true or false"):
        TuneSpec(halving="yes")


def test_list_strategies_shows_the_wide_spaces():
    out = CliRunner().invoke(cli, ["list", "strategies", "--wide"])
    line = next(line for line in out.output.splitlines() if line.startswith("full "))
    assert "lr [1e-05, 3e-05, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]" in line
