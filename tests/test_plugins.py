"""The plugin contract: discovery through entry points, validation, every hook exercised, docs in sync."""
import inspect
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tlbench import hookspecs
from tlbench.cli import cli
from tlbench.registry import Plugins
from tlbench.types import UsageError

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(fn, hookspecs.PROJECT_NAME + "_spec")]


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Install a plugin module the way pip does, as far as discovery goes: a module plus a dist-info folder with
    an entry point in the `tlbench` group, on sys.path. importlib.metadata finds it like any installed package."""
    monkeypatch.delenv("TLBENCH_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(module_name: str, source: str, version: str = "1.2.3") -> None:
        (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(source))
        dist = tmp_path / f"{module_name}-{version}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name}\nVersion: {version}\n")
        (dist / "entry_points.txt").write_text(f"[tlbench]\n{module_name} = {module_name}\n")
        sys.modules.pop(module_name, None)

    yield install


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_every_hook_is_documented_with_its_exact_signature():
    page = (ROOT / "docs/reference/hooks.md").read_text()
    assert set(HOOKS) == {"register_strategies", "register_backbones", "register_datasets", "register_executors",
                          "register_commands", "register_leaderboard_formats", "register_report_sections",
                          "register_suites", "record_finished"}
    for name in HOOKS:
        signature = f"{name}{inspect.signature(getattr(hookspecs, name))}".replace("'", "")  # annotations as written
        assert f"`{signature}`" in page, f"docs/reference/hooks.md must document `{signature}`"
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} needs a docstring"


def test_readme_example_plugin_is_the_installed_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    source = (ROOT / "tests/example_plugin/tlbench_norm_tuning.py").read_text()
    assert source.strip() in readme
    assert '--8<-- "tests/example_plugin/tlbench_norm_tuning.py"' in (ROOT / "docs/guides/strategy.md").read_text()
    assert len(source.strip().splitlines()) <= 30


def test_installed_example_plugin_is_discovered_through_its_entry_point(monkeypatch):
    """CI installs tests/example_plugin with pip: this is the same path a user's plugin takes."""
    monkeypatch.delenv("TLBENCH_DISABLE_PLUGINS", raising=False)
    plugins = Plugins()
    assert "norm-tuning" in plugins.strategies.names(), "pip install ./tests/example_plugin (see README)"
    assert plugins.strategies.owner("norm-tuning") == "norm-tuning"
    info = plugins.info["norm-tuning"]
    assert info.version == "0.3.0" and not info.builtin and info.hooks == ["register_strategies"]
    listing = invoke("plugins").output
    assert "norm-tuning" in listing and "0.3.0" in listing and "third-party" in listing


def test_disable_env_loads_builtins_only(monkeypatch):
    monkeypatch.setenv("TLBENCH_DISABLE_PLUGINS", "1")
    plugins = Plugins()
    assert "norm-tuning" not in plugins.strategies.names()
    assert all(i.builtin for i in plugins.info.values())


def test_example_strategy_trains_exactly_the_norm_layers_and_the_head(monkeypatch, tmp_path, tiny_backbone):
    """The README's example, installed through its entry point, under the shared protocol (it sets no epochs)."""
    monkeypatch.delenv("TLBENCH_DISABLE_PLUGINS", raising=False)
    result = invoke("run", "-s", "norm-tuning", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic",
                    "--results-dir", tmp_path, "--epochs", "2", "--set", "norm-tuning.lr=0.01")
    assert result.exit_code == 0, result.output
    records = {r["trial"]["strategy"]: r for r in (json.loads(p.read_text()) for p in tmp_path.glob("*.json"))}
    record = records["norm-tuning"]
    assert record["trial"]["protocol"] == records["frozen"]["trial"]["protocol"], "the same protocol as the classics"
    assert record["plan"]["batchnorm"] == "frozen"
    assert record["plan"]["phases"][0]["select"] == "tlbench_norm_tuning.norm_or_head"
    import timm

    model = timm.create_model("test_efficientnet", num_classes=4)
    norms = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
                for p in m.parameters(recurse=False))
    head = sum(p.numel() for p in model.get_classifier().parameters())
    assert record["metrics"]["params"]["trainable"] == norms + head < record["metrics"]["params"]["total"]


def test_backbone_dataset_executor_and_command_hooks(third_party, tmp_path, tiny_backbone):
    third_party("tlb_everything", f'''
        import click
        from tlbench import hookimpl
        from tlbench.plugins.timm_backbones import TimmBackbones
        from tlbench.plugins.synthetic import Synthetic

        class Tiny:
            name = "tiny"
            description = "the test backbone under a short name"
            takes_argument = False
            def build(self, argument, num_classes, pretrained):
                return TimmBackbones().build("{tiny_backbone.split(':', 1)[1]}", num_classes, pretrained)

        class Stripes(Synthetic):
            name = "stripes"

        class Reversed:
            name = "reversed"
            description = "runs trials last to first"
            ran = []
            def execute(self, trials, run_trial):
                for trial in reversed(list(trials)):
                    Reversed.ran.append(trial.key)
                    run_trial(trial)

        @hookimpl
        def register_backbones(register):
            register(Tiny())

        @hookimpl
        def register_datasets(register):
            register(Stripes())

        @hookimpl
        def register_executors(register):
            register(Reversed())

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                """Say hello."""
                click.echo("hello from a plugin")
    ''')
    assert invoke("hello").output == "hello from a plugin\n"
    result = invoke("run", "-s", "frozen", "--seeds", "2", "-b", "tiny", "-d", "stripes", "--executor",
                    "reversed", "--results-dir", tmp_path, "--epochs", "1")
    assert result.exit_code == 0, result.output
    import tlb_everything

    assert len(tlb_everything.Reversed.ran) == 2
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert {(r["trial"]["backbone"], r["trial"]["dataset"]) for r in records} == {("tiny", "stripes")}
    assert {r["key"] for r in records} == set(tlb_everything.Reversed.ran)


def test_duplicate_name_is_an_error_naming_both_plugins(third_party):
    third_party("tlb_dupe", '''
        from tlbench import hookimpl
        from tlbench.plugins.strategies import Full

        class MyFrozen(Full):
            name = "frozen"

        @hookimpl
        def register_strategies(register):
            register(MyFrozen)
    ''')
    plugins = Plugins()  # one plugin's mistake breaks neither loading nor other names (issue 11)
    with pytest.raises(UsageError, match=r"strategy name 'frozen' is registered twice, by plugin 'strategies' "
                                         r"and by plugin 'tlb_dupe'"):
        plugins.strategies.get("frozen")
    assert plugins.strategies.get("full").name == "full"
    assert "registered twice" in plugins.info["tlb_dupe"].error
    assert invoke("list", "strategies").exit_code == 0  # other commands keep working
    listing = invoke("plugins")
    assert listing.exit_code == 0 and "tlb_dupe" in listing.output and "registered twice" in listing.output


def test_wrong_type_registration_is_rejected(third_party):
    third_party("tlb_wrongtype", '''
        from tlbench import hookimpl

        @hookimpl
        def register_backbones(register):
            register(object())
    ''')
    plugins = Plugins()
    assert "not a tlbench.BackboneFamily" in plugins.info["tlb_wrongtype"].error


def test_plugin_that_fails_to_import_is_listed_and_breaks_only_runs_that_need_it(third_party, tmp_path,
                                                                                tiny_backbone):
    third_party("tlb_broken", "import a_module_that_does_not_exist\n")
    listing = invoke("plugins")
    assert listing.exit_code == 0
    assert "tlb_broken" in listing.output and "No module named 'a_module_that_does_not_exist'" in listing.output
    ok = invoke("run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--results-dir", tmp_path,
                "--epochs", "1")
    assert ok.exit_code == 0, ok.output
    missing = invoke("run", "-s", "my-strategy", "--results-dir", tmp_path / "x")
    assert missing.exit_code == 2
    assert "unknown strategy 'my-strategy'" in missing.stderr and "tlb_broken" in missing.stderr


def test_hook_with_wrong_signature_is_reported_with_the_plugin_name(third_party, tmp_path):
    third_party("tlb_badsig", '''
        from tlbench import hookimpl

        @hookimpl
        def register_strategies(regster):
            pass
    ''')
    listing = invoke("plugins").output
    assert "tlb_badsig" in listing and "invalid hook implementation" in listing
    result = invoke("run", "--all", "--results-dir", tmp_path / "r")
    assert result.exit_code == 2
    assert "plugin 'tlb_badsig'" in result.stderr and "regster" in result.stderr
    assert not (tmp_path / "r").exists()
