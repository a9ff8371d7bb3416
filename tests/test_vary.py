"""Axes (``tlbench run --vary KEY=V1,V2,...``): a setting with several values is a grid axis, every combination an
ordinary trial — the same trial (key, record) as ``--set KEY=V`` — recorded, resumable and run by any executor;
bad axes are one ``Error:`` line before anything is written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import one_error_line
from tlbench import RunSpec, UsageError, run_grid, tune_grid
from tlbench.cli import cli
from tlbench.grid import Reporter, axis_combinations, build_grid_trials, resolve_names
from tlbench.registry import Plugins

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["epochs=1", "frozen.head_lr=0.03"]


def planned(spec: RunSpec):
    """The trials a spec's grid is made of, without running any."""
    plugins = Plugins()
    return build_grid_trials(spec, resolve_names(plugins, spec), dict(plugins.strategies.items()))


def spec(backbone: str, results: Path | None = None, strategies=("frozen",), settings=(), axes=(), **fields):
    return RunSpec(strategies=strategies, backbones=[backbone], datasets=["synthetic"], settings=[*FAST, *settings],
                   axes=list(axes), results_dir=results, device="cpu", progress="off", **fields)


def invoke(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


# ----------------------------------------------------------------------------------------------- the spec
def test_axes_are_parsed_by_the_set_parser_into_key_and_values():
    made = RunSpec(strategies=["full"], axes=["data.train_size=100,300,1000", "full.lr=1e-4,1e-3",
                                              'data.augment=none,"a,b",[1, 2]', "image_size= 64 , 96"])
    assert made.axes == {"data.train_size": (100, 300, 1000), "full.lr": (1e-4, 1e-3),
                         "data.augment": (None, "a,b", [1, 2]), "image_size": (64, 96)}
    assert RunSpec(axes={"epochs": [1, 2]}).axes == {"epochs": (1, 2)}  # the library's form
    args = made.arguments()
    written = [args[i + 1] for i, arg in enumerate(args) if arg == "--vary"]
    assert written[2] == 'data.augment=none,"a,b",[1, 2]'
    assert RunSpec(strategies=["full"], axes=written, command=made.command) == made  # each value parses back


def test_combinations_are_the_product_of_the_axes_first_axis_slowest():
    assert axis_combinations({}) == [{}]
    assert axis_combinations({"a": (1, 2), "b": ("x", "y", "z")}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
        {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"}]


# ------------------------------------------------------------------------------------- grid expansion
def test_every_combination_is_a_trial_of_its_own(tiny_backbone):
    trials = planned(spec(tiny_backbone, strategies=("frozen", "full"), seeds=2,
                          axes=["data.train_size=32,48,64", "full.lr=0.01,0.001"]))
    assert len(trials) == 2 * (3 * 2) * 2 - 3 * 1 * 2  # full: 3 x 2 combinations; frozen: full.lr does not apply
    assert len({t.key for t in trials}) == len(trials)
    full = {(t.data_options["train_size"], t.hparams["lr"], t.seed) for t in trials if t.strategy == "full"}
    assert full == {(n, lr, s) for n in (32, 48, 64) for lr in (0.01, 0.001) for s in (0, 1)}
    frozen = {(t.data_options["train_size"], t.seed) for t in trials if t.strategy == "frozen"}
    assert frozen == {(n, s) for n in (32, 48, 64) for s in (0, 1)}
    labels = {t.label for t in trials if t.strategy == "full" and t.seed == 0}
    assert "full[data.train_size=32,epochs=1,lr=0.001]" in labels and len(labels) == 6
    assert [t.dataset for t in trials] == sorted(t.dataset for t in trials)


def test_a_vary_trial_is_the_set_trial_with_that_value(tiny_backbone):
    varied = planned(spec(tiny_backbone, strategies=("full",), axes=["data.train_size=32,64", "full.lr=1,0.001"]))
    by_set = [t for n in (32, 64) for lr in ("1.0", "1e-3")  # other spellings of equal values: one trial
              for t in planned(spec(tiny_backbone, strategies=("full",),
                                    settings=[f"data.train_size={n}", f"full.lr={lr}"]))]
    assert sorted(t.key for t in varied) == sorted(t.key for t in by_set)
    assert {t.key: t.to_record() for t in varied} == {t.key: t.to_record() for t in by_set}  # and its record


def test_a_value_equal_to_the_default_is_the_default_trial(tiny_backbone):
    plain = planned(spec(tiny_backbone))
    varied = planned(spec(tiny_backbone, axes=["data.train_size=64,32"]))  # 64 is the synthetic default
    assert plain[0].key == varied[0].key and plain[0].label == varied[0].label
    assert "train_size" not in plain[0].label


# ---------------------------------------------------------------------- running, resuming, executors
class StopAfter(Reporter):
    """Interrupts the grid (as Ctrl-C does) once ``count`` trials have finished."""

    def __init__(self, count: int):
        self.count = count

    def trial_finished(self, record) -> None:
        self.count -= 1
        if self.count == 0:
            raise KeyboardInterrupt


def test_a_vary_grid_resumes_like_any_grid(tiny_backbone, tmp_path):
    results = tmp_path / "results"
    varied = spec(tiny_backbone, results, axes=["data.train_size=32,48,64", "data.val_size=16,32"])
    stopped = run_grid(varied, reporter=StopAfter(2))
    assert stopped.interrupted == "SIGINT" and stopped.exit_code == 130
    assert len(list(results.glob("*.json"))) == 2

    finished = run_grid(varied)
    assert (finished.pending, finished.skipped, len(finished.ok)) == (4, 2, 4)
    assert finished.exit_code == 0 and len(finished.records) == 6
    assert {(r.trial.data["train_size"], r.trial.data["val_size"]) for r in finished.records} == {
        (n, v) for n in (32, 48, 64) for v in (16, 32)}

    again = run_grid(varied)
    assert (again.pending, again.skipped, len(again.ok)) == (0, 6, 0) and again.exit_code == 0


def test_separate_set_runs_and_one_vary_run_are_one_study(tiny_backbone, tmp_path):
    results = tmp_path / "results"
    common = ["run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--results-dir", results,
              "--device", "cpu", "-q", "--format", "json", *[a for s in FAST for a in ("--set", s)]]
    first = invoke(*common, "--set", "data.train_size=32")
    assert first.exit_code == 0, first.output
    varied = invoke(*common, "--vary", "data.train_size=32,48")
    assert varied.exit_code == 0, varied.output
    assert "2 trial(s), 1 already done, 1 to run" in varied.stderr
    records = [json.loads(p.read_text()) for p in results.glob("*.json")]
    assert sorted(r["trial"]["data"]["train_size"] for r in records) == [32, 48]
    assert sorted(r["trial"]["label"] for r in records) == ["frozen[data.train_size=32,epochs=1,head_lr=0.03]",
                                                           "frozen[data.train_size=48,epochs=1,head_lr=0.03]"]


def test_the_combinations_run_on_another_executor(tiny_backbone, tmp_path):
    result = run_grid(spec(tiny_backbone, tmp_path, axes=["data.train_size=32,48"], executor="process"))
    assert result.exit_code == 0 and len(result.ok) == 2
    assert sorted(r.trial.data["train_size"] for r in result.ok) == [32, 48]


# --------------------------------------------------------------------------------------- bad axes
@pytest.mark.parametrize("extra, message", [
    (["--set", "data.train_size=32", "--vary", "data.train_size=32,64"],
     "data.train_size is given by --set (or a shortcut such as --epochs) and by --vary; drop one of them"),
    (["--epochs", "2", "--vary", "epochs=1,2"], "epochs is given by --set"),
    (["--vary", "data.train_size="], "--vary data.train_size= lists no values; give them"),
    (["--vary", "data.train_size=32,,64"], "an empty value"),
    (["--vary", "data.train_size=32,64,32.0"], "--vary data.train_size lists 32 twice (as 32.0); list each value once"),
    (["--vary", "epochs=1", "--vary", "epochs=2"], "--vary epochs is given twice"),
    (["--vary", "data.trian_size=32,64"], "unknown setting 'data.trian_size'"),
    (["--vary", "epoch=1,2"], "unknown setting 'epoch'; did you mean 'epochs'?"),
    (["--vary", "train_size"], "--vary expects KEY=V1,V2,..."),
    (["--vary", "data..x=1,2"], "is malformed"),
    (["--vary", "executor.workers=1,2"], "set it once with --set executor.workers=VALUE"),
    (["--vary", "full.lr=0.1,0.01"], "--vary full.lr varies nothing: strategy 'full' is not in this grid; "
                                     "add -s full or drop the axis"),
    (["--vary", "image_size=64,4"], "--vary values image_size=4: image_size must be an integer >= 8"),
    # refused by the dataset when the grid is checked, after it was built: still named by the axis values
    (["--vary", "data.train_size=32,0"], "--vary values data.train_size=0: data.train_size must be an integer >= 1"),
    (["--vary", "data.num_classes=4,1"], "--vary values data.num_classes=1: data.num_classes must be an integer >= 2"),
    (["--tune", "--vary", "epochs=1,2"], "--vary does not combine with --tune"),
    (["--set", "epochs=0", "--vary", "image_size=64,96"], "Error: epochs must be an integer >= 1"),  # not the axis
])
def test_a_bad_axis_is_one_error_line_and_nothing_is_written(tiny_backbone, tmp_path, extra, message):
    results = tmp_path / "results"
    result = invoke("run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--results-dir", results,
                    "--device", "cpu", "-q", *extra)
    assert message in one_error_line(result)
    assert not results.exists()


def test_tune_grid_refuses_axes_from_the_library_too(tiny_backbone, tmp_path):
    with pytest.raises(UsageError, match="--vary does not combine with --tune"):
        tune_grid(spec(tiny_backbone, tmp_path, axes=["data.train_size=32,64"]))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("axes", [{"epochs": "1,2"}, {"epochs": 3}])
def test_library_axes_must_be_lists_of_values(axes):
    with pytest.raises(UsageError, match="must be given a list of values"):
        RunSpec(axes=axes)
