"""The documentation follows the code: every example in docs/examples runs, every hook, option and public name is
documented, every page is in the navigation, the site builds with `mkdocs build --strict`, and the README stays short."""
import importlib
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import tlbench
from tlbench import hookspecs
from tlbench.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(fn, hookspecs.PROJECT_NAME + "_spec")]
EXAMPLE_MODULES = sorted(path.stem for path in EXAMPLES.glob("example_*.py"))
SETUP_BLOCK = """## Set up and run

```bash
sudo apt-get install -y dataset-fashion-mnist      # the default dataset (Debian/Ubuntu package, offline)
pip install -e . && tlbench run --all              # every strategy x default backbone, then the leaderboard
```
"""
TEST_COMMAND = ('pip install -e ".[test,peft,report,ray,slurm,export,docs]" ./tests/example_plugin && '
                'python -m pytest tests')

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read(relative: str) -> str:
    return (ROOT / relative).read_text(encoding="utf-8")


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


# ------------------------------------------------------------------------------------- the examples run for real
@pytest.fixture
def install_examples(tmp_path, monkeypatch):
    """Install example modules from docs/examples the way pip installs a plugin, as far as discovery goes: the
    modules on sys.path plus a dist-info folder with their entry points in the `tlbench` group. Child processes
    (the pool executor's workers) see the same sys.path, so they load the same plugins."""
    monkeypatch.delenv("TLBENCH_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(*modules: str):
        dist = site / "tlbench_docs_examples-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tlbench-docs-examples\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text("[tlbench]\n" + "".join(f"{m} = {m}\n" for m in modules))
        for module in modules:
            sys.modules.pop(module, None)
        importlib.invalidate_caches()
        return [importlib.import_module(m) for m in modules]

    yield install
    for module in EXAMPLE_MODULES:
        sys.modules.pop(module, None)


def records_in(directory: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def test_every_plugin_kind_has_an_example_file():
    assert EXAMPLE_MODULES == ["example_backbone", "example_dataset", "example_executor",
                               "example_leaderboard_format", "example_record_hook", "example_report_section",
                               "example_strategy", "example_suite"]


def test_batch_strategy_example_trains_on_the_batch(install_examples, tmp_path, tiny_backbone):
    """docs/examples/center_loss.py: a third-party strategy that uses the batch, in at most 40 lines."""
    assert len(read("docs/examples/center_loss.py").splitlines()) <= 40
    sys.modules.pop("center_loss", None)
    (module,) = install_examples("center_loss")
    try:
        result = invoke("run", "-s", "center-loss", "-b", tiny_backbone, "-d", "synthetic", "--epochs", "2",
                        "--results-dir", tmp_path / "r", "-q", "--set", "center-loss.lr=0.01",
                        "--set", "center-loss.lam=0.1")
        assert result.exit_code == 0, result.output
        (record,) = records_in(tmp_path / "r")
        assert record["status"] == "ok" and all(h["loss_term"] > 0 for h in record["metrics"]["history"])
        assert record["plan"]["phases"][0]["batch_parts"] == ["step_loss", "callbacks"]
    finally:
        sys.modules.pop("center_loss", None)


def test_strategy_example_trains_its_three_phases(install_examples, tmp_path, tiny_backbone):
    install_examples("example_strategy")
    result = invoke("run", "-s", "gradual-unfreeze", "-b", tiny_backbone, "-d", "synthetic", "--epochs", "4",
                    "--results-dir", tmp_path / "r", "-q", "--set", "gradual-unfreeze.lr=0.01")
    assert result.exit_code == 0, result.output
    (record,) = records_in(tmp_path / "r")
    phases = record["plan"]["phases"]
    assert [p["name"] for p in phases] == ["head", "top", "all"] and [p["epochs"] for p in phases] == [1, 1, 2]
    assert phases[0]["feature_cache"] is True, "a head-only phase of an unchanged backbone runs on cached features"
    assert record["plan"]["strategy_record"] == {"paper": "Howard and Ruder, ACL 2018: gradual unfreezing"}
    assert "gradual-unfreeze" in invoke("list", "strategies").output
    refused = invoke("run", "-s", "gradual-unfreeze", "-b", tiny_backbone, "-d", "synthetic", "--epochs", "2",
                     "--results-dir", tmp_path / "refused", "--set", "gradual-unfreeze.head_share=0.1")
    assert refused.exit_code == 2 and "head_share=0.1 gives phase 0 of 2 epochs" in refused.output
    assert not (tmp_path / "refused").exists()


def test_backbone_example_loads_its_weights_file_and_trains(install_examples, tmp_path):
    (example,) = install_examples("example_backbone")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "smallcnn.safetensors"
    save_file(example.SmallCNN(num_classes=10).state_dict(), str(weights))
    result = invoke("run", "-s", "frozen", "-s", "partial", "-s", "scratch", "-b", f"smallcnn:{weights}",
                    "-d", "synthetic", "--epochs", "2", "--results-dir", tmp_path / "r", "-q")
    assert result.exit_code == 0, result.output
    records = {r["trial"]["strategy"]: r for r in records_in(tmp_path / "r")}
    assert records["frozen"]["backbone"]["weights"]["file"] == str(weights.resolve())
    assert records["frozen"]["backbone"]["groups"] == ["stem", "stage1", "stage2", "head"]
    assert records["frozen"]["metrics"]["feature_cache"] is True
    assert records["partial"]["plan"]["trainable_groups"] == ["stage2", "head"]
    assert records["scratch"]["backbone"]["pretrained"] is False
    missing = invoke("run", "-s", "frozen", "-b", "smallcnn:/nonexistent.safetensors", "-d", "synthetic",
                     "--results-dir", tmp_path / "missing")
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_dataset_example_splits_an_npz_file(install_examples, tmp_path, tiny_backbone):
    install_examples("example_dataset")
    from tlbench.plugins.synthetic import make_images

    images, labels = make_images(120, 3, 24, seed=1)
    path = tmp_path / "data.npz"
    np.savez(path, images=images.permute(0, 2, 3, 1).numpy(), labels=labels.numpy())
    result = invoke("run", "-s", "frozen", "-b", tiny_backbone, "-d", f"npz:{path}", "--epochs", "2", "-q",
                    "--results-dir", tmp_path / "r", "--set", "data.train_size=60", "--set", "data.val_size=30",
                    "--set", "data.storage_size=32")
    assert result.exit_code == 0, result.output
    (record,) = records_in(tmp_path / "r")
    assert record["data"]["sizes"] == {"train": 60, "val": 30, "test": 30}
    assert record["data"]["num_classes"] == 3
    bad = invoke("run", "-s", "frozen", "-b", tiny_backbone, "-d", f"npz:{path}", "--results-dir", tmp_path / "b",
                 "--set", "data.train_size=0")
    assert bad.exit_code == 2 and "data.train_size must be an integer >= 1" in bad.output


def test_executor_example_runs_trials_in_worker_processes(install_examples, tmp_path, tiny_backbone):
    install_examples("example_executor")
    result = tlbench.run_grid(tlbench.RunSpec(strategies=["frozen", "full"], backbones=[tiny_backbone],
                                              datasets=["synthetic"], settings=["epochs=1"], results_dir=tmp_path / "r",
                                              executor="pool", progress="off"))
    assert result.exit_code == 0 and len(result.ok) == 2, [r.error for r in result.failed]
    for record in result.ok:
        assert record.executor["name"] == "pool"
        assert record.executor["options"] == {"workers": 2, "threads_per_worker": 1}
    assert len({r.executor["pid"] for r in result.ok} - {__import__("os").getpid()}) >= 1, "ran in workers"
    with pytest.raises(tlbench.UsageError, match="executor.workers must be an integer >= 1"):
        tlbench.run_grid(tlbench.RunSpec(strategies=["frozen"], backbones=[tiny_backbone], datasets=["synthetic"],
                                         settings=["executor.workers=0"], results_dir=tmp_path / "bad",
                                         executor="pool"))


def test_executor_example_stops_the_grid_when_a_worker_refuses(install_examples):
    """A worker of other code refuses; finish_from_reply raises WorkerRefused, the executor gives back its claims."""
    (example,) = install_examples("example_executor")

    class Session:
        options, stopping, claimed, released = {"workers": 1, "threads_per_worker": 1}, False, [], []

        def claim(self, job):
            self.claimed.append(job.key)
            return True

        def release(self, job):
            self.released.append(job.key)

    from tlbench.jobs import TrialJob

    job = TrialJob(trial={"key": "0" * 20}, device="cpu", versions={"tlbench": "0.0.0-other"})
    session = Session()
    with pytest.raises(tlbench.WorkerRefused, match="tlbench .* here, 0.0.0-other on the driver"):
        example.PoolExecutor().execute([job], session)
    assert session.stopping and session.claimed == session.released == ["0" * 20]


@pytest.fixture
def small_results(install_examples, tmp_path, tiny_backbone, monkeypatch):
    """Two strategies x two seeds on the tiny backbone, with the record hook example installed and logging."""
    install_examples("example_record_hook", "example_leaderboard_format", "example_report_section")
    log = tmp_path / "records.jsonl"
    monkeypatch.setenv("TLBENCH_RECORD_LOG", str(log))
    result = invoke("run", "-s", "frozen", "-s", "full", "-b", tiny_backbone, "-d", "synthetic", "--seeds", "2",
                    "--epochs", "2", "--results-dir", tmp_path / "r", "-q")
    assert result.exit_code == 0, result.output
    return tmp_path / "r", log


def test_record_hook_example_logs_every_record(small_results):
    results, log = small_results
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["key"] for r in logged) == sorted(r["key"] for r in records_in(results))
    assert {(r["strategy"], r["seed"]) for r in logged} == {(s, n) for s in ("frozen", "full") for n in (0, 1)}


def test_leaderboard_format_example_ranks_the_configurations(small_results):
    results, _ = small_results
    output = invoke("leaderboard", "--results-dir", results, "--format", "ranked").output
    lines = output.splitlines()
    assert re.match(r"1\. (frozen|full)\[epochs=2\] \(timm:test_efficientnet@.*\): [\d.]+% ± [\d.]+ test top-1, n=2",
                    lines[0]), output
    assert lines[1].startswith("2. ") and "95% CI: Student t over seeds" in output
    assert "ranked" in invoke("leaderboard", "--help-formats").output


def test_report_section_example_is_in_the_report(small_results, tmp_path):
    pytest.importorskip("matplotlib", reason="the report extra: pip install '.[report]'")
    results, _ = small_results
    out = tmp_path / "report.html"
    result = invoke("report", "--results-dir", results, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    page = out.read_text()
    section = page.split('data-section="seeds"', 1)[1].split("</section>", 1)[0]
    assert "<h3>Every seed</h3>" in section and "0: " in section and "1: " in section
    assert 'src="data:image/svg+xml;base64,' in section


# ------------------------------------------------------------------------------------------- the text follows
def nav_pages() -> list[str]:
    """Every page the navigation of mkdocs.yml names (a YAML list of `Title: path.md` entries, nested)."""
    text = read("mkdocs.yml").split("\nnav:\n", 1)[1]
    text = re.split(r"\n(?=\S)", text, maxsplit=1)[0]  # up to the next top-level key
    return re.findall(r":\s+(\S+\.md)\s*$", text, flags=re.MULTILINE)


def test_every_page_is_in_the_navigation_and_every_entry_is_a_page():
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    listed = nav_pages()
    assert len(listed) == len(set(listed)), "a page is listed twice"
    assert sorted(listed) == pages, (sorted(set(pages) - set(listed)), sorted(set(listed) - set(pages)))


def test_every_guide_includes_its_example_file():
    guides = {m: f"guides/{m.removeprefix('example_').replace('_', '-')}.md" for m in EXAMPLE_MODULES}
    for module, page in guides.items():
        assert f'--8<-- "docs/examples/{module}.py"' in read(f"docs/{page}"), (page, module)


def hook_signature(name: str) -> str:
    """``register_strategies(register: Callable) -> None``, as the hookspec module spells it."""
    fn = getattr(hookspecs, name)
    parameters = ", ".join(f"{p.name}: {p.annotation}" for p in inspect.signature(fn).parameters.values())
    return f"{name}({parameters}) -> {inspect.signature(fn).return_annotation}"


def test_every_hook_is_documented_with_its_exact_signature():
    page = read("docs/reference/hooks.md")
    assert HOOKS and len(HOOKS) == 9
    for name in HOOKS:
        assert f"`{hook_signature(name)}`" in page, f"docs/reference/hooks.md must show `{hook_signature(name)}`"
        assert f"### `{name}`" in page
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} needs a docstring"


REFERENCE_PAGES = ("docs/reference/types.md", "docs/reference/api.md", "docs/reference/hooks.md")


def reference_text() -> str:
    return "\n".join(read(page) for page in REFERENCE_PAGES)


def test_every_public_name_is_documented_on_a_reference_page():
    text = reference_text()
    headings = set(re.findall(r"^#+ `(?:tlbench\.)?([\w.]+)", text, flags=re.MULTILINE))
    missing = [name for name in tlbench.__all__ if name not in headings]
    assert not missing, f"give each public name a heading on a reference page: {missing}"


# Used by plugins, named by issue 22 as documented nowhere: each must be explained on a reference page.
NAMES_PLUGINS_USE = ["tlbench.splits.merged_options", "LeaderboardTable.values", "ReportContext.records",
                     "tlbench.record_fields", "LINEAR_DEFAULT_INIT", "session.release", "same_machine",
                     "WorkerRefused", "tlbench.record_fields.get", "tlbench.jobs.run_job",
                     "tlbench.jobs.run_job_reply", "tlbench.jobs.finish_from_reply", "tlbench.jobs.TrialJob",
                     "session.claim", "session.finish", "session.fail", "session.run_here", "session.stopping",
                     "session.options", "in_process", "check_options", "tlbench.grid.Reporter",
                     "tlbench.records.Record", "tlbench.registry.REQUIRED_DATASET_DEFAULTS",
                     "tlbench.jobs.set_worker_threads"]


def test_names_plugins_use_are_documented():
    text = reference_text()
    missing = [name for name in NAMES_PLUGINS_USE if f"`{name}" not in text]
    assert not missing, missing
    import tlbench.splits

    dataset_toolkit = read("docs/reference/types.md").split("## Dataset toolkit", 1)[1]
    assert [n for n in tlbench.splits.__all__ if f"`{n}" not in dataset_toolkit] == []


def test_leaderboard_values_keys_are_the_ones_documented(tmp_path, make_record):
    """The reference page lists the keys of LeaderboardTable.values; check them against a built table."""
    from tlbench.leaderboard import COLUMNS, build_table

    records = [make_record(key=f"{i:020x}", strategy=s, seed=i % 2) for i, s in enumerate(["full", "full", "x", "x"])]
    for record in records:
        record["trial"]["group"] = record["trial"]["strategy"] * 20
    table = build_table(records, list(COLUMNS), vs="full")
    page = read("docs/reference/types.md").split("### `LeaderboardTable`", 1)[1].split("\n### ", 1)[0]
    for key in table.values[0]:
        assert f"`{key}`" in page, key
    for key in table.values[1]["vs"]:
        assert f"`{key}`" in page, key
    for key in table.values[0]["test"]:
        assert f"`{key}`" in page, key


def all_commands() -> dict[str, click.Command]:
    ctx = click.Context(cli, info_name="tlbench")
    return {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}


def test_cli_page_is_generated_from_the_click_commands():
    page = read("docs/cli.md")
    directive = page.split("::: mkdocs-click", 1)[1].split("\n\n", 1)[0]
    for line in (":module: tlbench.cli", ":command: cli", ":prog_name: tlbench", ":style: plain"):
        assert line in directive, line


def test_protocol_page_documents_every_protocol_version_and_default():
    from tlbench.plan import PROTOCOL_DEFAULTS

    page = read("docs/protocol.md")
    for version in range(1, tlbench.PROTOCOL_VERSION + 1):
        assert re.search(rf"^### Protocol {version}\b", page, flags=re.MULTILINE), version
    for key in PROTOCOL_DEFAULTS:
        assert f"`{key}`" in page, key
    source = read("harness/__init__.py")
    assert "#   1:" not in source, "the protocol changelog lives on docs/protocol.md"


def test_results_pages_say_what_every_figure_needs():
    current = read("docs/results.md")
    for words in ("date", "lscpu", "command", "side by side"):
        assert words in current, words
    figures = current.split("## Current figures", 1)[1].split("\n### ")[1:]
    assert figures, "docs/results.md lists no current figure"
    for section in figures:  # each figure: when, on which processor, with which command
        title = section.splitlines()[0]
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", section), (title, "no date")
        assert "lscpu" in section, (title, "no processor (lscpu's model name)")
        assert re.search(r"`(tlbench|python -m pytest|python3 -m pytest) [^`]+`", section), (title, "no command")
    archive = read("docs/results-archive.md")
    assert "2026-11-28" in archive and "not recorded" in archive


LAB_NOTEBOOK = ["this VM", "which was wrong", "three other engineers", "an earlier version of this README",
                "in a fast hour"]


def test_user_documentation_has_no_lab_notebook_text():
    pages = {p: p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *DOCS.rglob("*.md")]}
    for path, text in pages.items():
        for phrase in LAB_NOTEBOOK:
            assert phrase not in text, (str(path), phrase)


def test_readme_is_short_and_keeps_the_setup_and_test_commands():
    readme = read("README.md")
    assert len(readme.splitlines()) <= 200
    assert SETUP_BLOCK in readme, "CI runs the set-up block literally: keep it exactly"
    tests_section = readme.split("## Run the tests", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"```bash\n(.*?)\n```", tests_section, flags=re.DOTALL) == [TEST_COMMAND]
    assert "<!-- sample-leaderboard: filled in by the lead from a run on this machine -->" in readme or re.search(
        r"^## Sample leaderboard\n(.|\n)*\| dataset", readme, flags=re.MULTILINE)
    for page in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / page).is_file(), page


def test_docs_extra_and_site_folder():
    pyproject = read("pyproject.toml")
    assert 'docs = ["mkdocs>=1.5", "mkdocs-material>=9", "mkdocs-click>=0.8"]' in pyproject
    assert "site/" in read(".gitignore").splitlines()


def test_mkdocs_build_strict(tmp_path):
    """Broken links, missing pages and missing snippet files fail the build; the CLI page holds every option."""
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
        import mkdocs_click  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the docs build needs the docs extra ({exc}); install it with pip install -e '.[docs]'")
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-4000:]
    cli_page = (site / "cli" / "index.html").read_text(encoding="utf-8")
    for name, command in all_commands().items():
        assert f"tlbench {name}" in cli_page, name
        for param in command.params:
            for option in getattr(param, "opts", []) + getattr(param, "secondary_opts", []):
                if option.startswith("-"):
                    assert option in cli_page, (name, option)
    for module in EXAMPLE_MODULES:
        page = site / "guides" / module.removeprefix("example_").replace("_", "-") / "index.html"
        first_def = re.search(r"^(?:def|class) (\w+)", read(f"docs/examples/{module}.py"), flags=re.MULTILINE)
        assert first_def.group(1) in page.read_text(encoding="utf-8"), module
