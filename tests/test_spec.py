"""The run specification: built once from the command line or a library call, ``--set`` parsed once, and what the
CLI builds is what ``spec.arguments()`` says (so ``rerun --print-only`` prints a command that asks for the same
run)."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import tlbench.plan
import tlbench.spec
from tlbench import RunSpec, TuneSpec, UsageError
from tlbench.cli import cli, run, spec_from_options


def cli_spec(args: list[str]) -> tuple[RunSpec, TuneSpec | None]:
    """The spec ``tlbench run ARGS`` builds, without running it."""
    with run.make_context("run", list(args)) as ctx:
        return spec_from_options(ctx.params)


def test_settings_are_parsed_once_and_split_into_trial_settings_executor_options_and_kept_weights():
    spec = RunSpec(strategies=["full", "full", "frozen"],
                   settings=["epochs=2", "full.lr=3e-4", "executor.workers=2", "save_models=all", "data.augment=none"])
    assert spec.strategies == ("full", "frozen")  # in order, each once
    assert spec.settings == {"epochs": 2, "full.lr": 3e-4, "data.augment": None}
    assert spec.executor_options == {"workers": 2} and spec.save_models == "all"
    assert spec.replace(seeds=3) == RunSpec(strategies=["full", "frozen"], seeds=3, settings=spec.settings,
                                            executor_options={"workers": 2}, save_models="all",
                                            command=spec.command)  # normalising twice changes nothing
    assert RunSpec(settings={"epochs": 2, "executor.workers": 1}).settings == {"epochs": 2}


@pytest.mark.parametrize("fields, message", [
    ({"settings": ["epochs"]}, "--set expects KEY=VALUE"),
    ({"settings": ["executor=2"]}, "names no executor option"),
    ({"settings": ["save_models=some"]}, "save_models must be one of none, best, all"),
    ({"seeds": 0}, "--seeds must be >= 1"),
    ({"seeds": True}, "seeds must be integers"),
    ({"first_seed": -1}, "seeds must lie in"),
    ({"progress": "loud"}, "progress must be one of"),
    ({"redo": "some"}, "redo must be one of none, failed, all"),
    ({"strategies": [""]}, "strategies must be non-empty names"),
    ({"executor": ""}, "executor must be a name"),
])
def test_a_bad_spec_is_refused_when_it_is_built_with_one_line(fields, message):
    with pytest.raises(UsageError, match=message) as caught:
        RunSpec(**fields)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("fields, message", [({"budget": 0}, "--tune-budget must be an integer >= 1"),
                                             ({"selection_seeds": 1.5}, "--selection-seeds must be an integer"),
                                             ({"sample_seed": -2}, "sample seed must be an integer >= 0")])
def test_a_bad_tuning_spec_is_refused(fields, message):
    with pytest.raises(UsageError, match=message):
        TuneSpec(**fields)


@pytest.mark.parametrize("args", [
    ["-s", "full", "--seed", "3"],
    ["-s", "full", "-s", "frozen", "-b", "timm:resnet18", "-d", "synthetic", "--seeds", "2", "--force",
     "--set", "full.lr=0.0003", "--set", "data.augment=none", "--set", "data.split_seed=trial"],
    ["-s", "lp-ft", "--retry-failed", "--executor", "process", "--device", "cpu", "--set", "executor.workers=2",
     "--results-dir", "/tmp/somewhere", "--set", "head_init=zeros"],
    ["-s", "full", "--set", "epochs=2", "--vary", "data.train_size=100,300,1000", "--vary", "full.lr=1e-4,1e-3",
     "--vary", 'data.augment=none,"a,b",[1,2]'],
])
def test_the_cli_builds_the_spec_its_arguments_describe(args):
    spec, tuning = cli_spec(args)
    assert tuning is None
    again, _ = cli_spec(spec.arguments()[1:])
    assert again.replace(command=spec.command) == spec


def test_cli_shortcuts_are_settings_of_the_spec():
    spec, tuning = cli_spec(["--all", "--epochs", "3", "--compile", "--deterministic", "--workers", "2", "-q",
                             "--save-models", "none", "--tune", "--tune-budget", "2"])
    assert spec.strategies == () and spec.settings == {"epochs": 3, "compile": True, "deterministic": True}
    assert spec.executor_options == {"workers": 2} and spec.progress == "off" and spec.save_models == "none"
    assert tuning == TuneSpec(budget=2, selection_seeds=1)


def test_a_whole_tuned_run_parses_its_settings_exactly_once(tmp_path: Path, tiny_backbone, monkeypatch):
    """Followed from the command line through both tuning stages, the executor and the workers: one parse."""
    calls = []
    parse = tlbench.plan.parse_overrides

    def counting(items):
        calls.append(list(items))
        return parse(items)

    monkeypatch.setattr(tlbench.plan, "parse_overrides", counting)
    monkeypatch.setattr(tlbench.spec, "parse_overrides", counting)
    result = CliRunner().invoke(cli, ["run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--tune",
                                      "--tune-budget", "2", "--set", "epochs=1", "--set", "data.train_size=64",
                                      "--executor", "process", "--set", "executor.workers=1", "--results-dir",
                                      str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert calls == [["epochs=1", "data.train_size=64", "executor.workers=1"]]


def test_a_tuned_run_checks_executor_options_before_it_says_anything(tmp_path: Path, tiny_backbone):
    result = CliRunner().invoke(cli, ["run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--tune",
                                      "--set", "executor.workers=2", "--results-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: unknown option executor.workers for executor 'local' (its options: "
                                     "none)")
