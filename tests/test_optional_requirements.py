"""A base install runs what it can: optional parts are left out with the command that installs them, named parts
stop with it, hints fit how tlbench was installed, and every record says which processor computed it."""
import json
import sys

import pytest
from click.testing import CliRunner

from tlbench.cli import cli
from tlbench.registry import Plugins
from tlbench.requirements import Extra, install_command, installed_from, missing_requirements, origin_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = ["--set", "epochs=1", "--set", "data.train_size=32", "--set", "data.val_size=16", "--set",
         "data.test_size=16"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def without(monkeypatch):
    """``without("peft")``: importing it now fails, as if it were not installed."""
    def hide(*modules):
        for module in modules:
            monkeypatch.setitem(sys.modules, module, None)
    return hide


# ------------------------------------------------------------------------------------------- install hints
@pytest.mark.parametrize("direct_url, expected", [
    (None, "pip install 'tlbench[peft]'"),  # from an index
    ({"url": "file:///home/me/tlbench", "dir_info": {}}, "pip install '/home/me/tlbench[peft]'"),
    ({"url": "file:///home/me/my%20src/tlbench", "dir_info": {"editable": False}},
     "pip install '/home/me/my src/tlbench[peft]'"),
    ({"url": "file:///tmp/dist/tlbench-0.2.0-py3-none-any.whl", "archive_info": {"hashes": {}}},
     "pip install '/tmp/dist/tlbench-0.2.0-py3-none-any.whl[peft]'"),
    ({"url": "https://github.com/org/tlbench", "vcs_info": {"vcs": "git", "commit_id": "abc123"}},
     "pip install 'tlbench[peft] @ git+https://github.com/org/tlbench@abc123'"),
    ({"url": "https://example.org/tlbench-0.2.0.tar.gz", "archive_info": {}},
     "pip install 'tlbench[peft] @ https://example.org/tlbench-0.2.0.tar.gz'"),
    ({"not": "pep 610"}, "pip install 'tlbench[peft]'"),
])
def test_the_install_hint_follows_pep_610_direct_url(direct_url, expected):
    assert install_command("peft", origin_of(direct_url)) == expected


def test_from_this_checkout_the_hint_names_the_checkout():
    from pathlib import Path

    import tlbench

    root = Path(tlbench.__file__).resolve().parent.parent
    assert installed_from() == {"kind": "checkout", "where": str(root)}
    assert install_command("peft") == f"pip install -e '{root}[peft]'"
    assert str(Extra("report", "plots")) == f"pip install -e '{root}[report]' (plots)"


def test_a_requirement_is_missing_only_when_its_module_cannot_be_imported(without):
    class Needs:
        requires = {"json": "pip install json", "no_such_module_xyz.sub": Extra("peft"), "peft": "pip install peft"}

    assert missing_requirements(Needs()) == [str(Extra("peft"))]
    without("peft")
    assert missing_requirements(Needs()) == [str(Extra("peft")), "pip install peft"]
    assert missing_requirements(object()) == []


# ------------------------------------------------------------------------------------- left out, or stopped
def test_run_all_leaves_out_what_cannot_run_and_exits_0(without, tiny_backbone, tmp_path):
    without("peft")
    result = invoke("run", "--all", "-b", tiny_backbone, "-d", "synthetic", "--results-dir", tmp_path, *QUICK)
    assert result.exit_code == 0, result.output
    left = [line for line in result.stderr.splitlines() if "left out lora" in line]
    assert left == [f"tlbench: left out lora: it needs an optional package: {Extra('peft', 'LoRA adapters come from Hugging Face peft')}"]
    runnable = [n for n in Plugins(load_third_party=False).strategies.names() if n != "lora"]
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert sorted(r["trial"]["strategy"] for r in records) == runnable
    assert all(r["status"] == "ok" for r in records)
    assert f"{len(runnable)} ok, 0 failed, 1 left out (optional package missing)" in result.stderr


def test_run_all_tune_leaves_out_what_cannot_run(without, tiny_backbone, tmp_path):
    without("peft")
    result = invoke("run", "--all", "--tune", "--tune-budget", "1", "-b", tiny_backbone, "-d", "synthetic",
                    "--results-dir", tmp_path, *QUICK)
    assert result.exit_code == 0, result.output
    assert "tlbench: left out lora: it needs an optional package: " in result.stderr
    assert "1 strategy(ies) left out" in result.stderr
    strategies = {json.loads(p.read_text())["trial"]["strategy"] for p in tmp_path.glob("*.json")}
    assert "lora" not in strategies and {"full", "frozen", "scratch"} <= strategies


@pytest.mark.parametrize("args, module, what", [
    (["-s", "lora"], "peft", "strategy 'lora' needs an optional package: "),
    (["-s", "full", "--executor", "ray"], "ray", "executor 'ray' needs an optional package: "),
    (["-s", "full", "--executor", "slurm"], "submitit", "executor 'slurm' needs an optional package: "),
])
def test_naming_what_cannot_run_stops_before_anything_runs(without, tmp_path, args, module, what):
    without(module)
    result = invoke("run", *args, "--results-dir", tmp_path / "r")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {what}pip install ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists(), "nothing is written"


@pytest.mark.parametrize("kind, module, name, extra", [
    ("strategies", "peft", "lora", "peft"),
    ("executors", "ray", "ray", "ray"),
    ("executors", "submitit", "slurm", "slurm"),
])
def test_list_marks_what_is_unavailable_with_its_install_command(without, kind, module, name, extra):
    without(module)
    output = invoke("list", kind).output
    row = next(line for line in output.splitlines() if line.startswith(name + " "))
    assert row.startswith(f"{name} *")
    assert f"* {name} is unavailable here: it needs an optional package: {install_command(extra)}" in output


def test_list_marks_nothing_when_everything_is_installed():
    output = invoke("list").output
    assert "unavailable here" not in output


def test_every_kind_of_plugin_object_can_declare_requires(without):
    """Backbones and datasets follow the same rule as strategies and executors: named, they stop with the hint."""
    from tlbench.types import UsageError

    plugins = Plugins(load_third_party=False)
    family = plugins.datasets.get("synthetic")
    without("peft")
    type(family).requires = {"peft": Extra("peft")}
    try:
        assert plugins.datasets.unavailable() == {"synthetic": str(Extra("peft"))}
        with pytest.raises(UsageError, match=r"^dataset 'synthetic' needs an optional package: pip install "):
            plugins.datasets.get("synthetic")
    finally:
        del type(family).requires


def test_the_report_without_matplotlib_leaves_its_plots_out_and_says_how_to_install_it(
        without, tiny_backbone, tmp_path):
    results = tmp_path / "r"
    assert invoke("run", "-s", "frozen", "-s", "full", "-b", tiny_backbone, "-d", "synthetic", "--results-dir",
                  results, *QUICK).exit_code == 0
    without("matplotlib")
    out = tmp_path / "report.html"
    result = invoke("report", "--results-dir", results, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and str(Extra("report")).split(" (")[0] in warnings[0]
    page = out.read_text()
    assert "<img" not in page, "no plot without matplotlib"
    assert page.count("Left out: this section needs") == 5 and 'data-section="leaderboard"' in page
    assert "The plot of these differences is left out" in page  # the paired section keeps its table


# ---------------------------------------------------------------------------------------- the processor
def test_every_record_names_its_processor(tiny_backbone, tmp_path):
    import torch

    assert invoke("run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--results-dir", tmp_path,
                  *QUICK).exit_code == 0
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    env = record["environment"]
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu_model"] and env["cpu_model"] != "unknown"
    assert env["cpu_count"] >= env["cpu_usable"] >= 1
    with open("/proc/cpuinfo") as cpuinfo:  # Linux CI: the model name is /proc/cpuinfo's
        assert env["cpu_model"] in " ".join(cpuinfo.read().split())


def _on(record, model):
    record["environment"] = {"device_type": "cpu", "cpu_model": model, "cpu_count": 2, "cpu_capability": "AVX2"}
    return record


def test_the_leaderboard_notes_rows_from_several_processors(make_record, tmp_path):
    for seed, model in enumerate(["AMD EPYC 7B13", "Intel(R) Xeon(R) Processor"]):
        record = _on(make_record(key=f"{seed:020d}", seed=seed), model)
        (tmp_path / f"{record['key']}.json").write_text(json.dumps(record))
    output = invoke("leaderboard", "--results-dir", tmp_path).output
    assert ("these rows mix processors (AMD EPYC 7B13 (2 logical cores, AVX2): 1 record(s); Intel(R) Xeon(R) "
            "Processor (2 logical cores, AVX2): 1 record(s))") in output
    (tmp_path / f"{1:020d}.json").unlink()
    assert "mix processors" not in invoke("leaderboard", "--results-dir", tmp_path).output


def test_rerun_warns_when_this_processor_is_not_the_records(make_record, tmp_path):
    from tlbench.measure import environment
    from tlbench.devices import pick_device

    record = _on(make_record(), "AMD EPYC 7B13")
    path = tmp_path / f"{record['key']}.json"
    path.write_text(json.dumps(record))
    result = invoke("rerun", record["key"], "--results-dir", tmp_path, "--print-only")
    assert result.exit_code == 0
    assert result.stderr.startswith(f"Warning: record {record['key']} was computed on AMD EPYC 7B13 (2 logical "
                                    f"cores, AVX2), this machine is ")
    record["environment"] = environment(pick_device(None))
    path.write_text(json.dumps(record))
    result = invoke("rerun", record["key"], "--results-dir", tmp_path, "--print-only")
    assert result.exit_code == 0 and "Warning" not in result.stderr
