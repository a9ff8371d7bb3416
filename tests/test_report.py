"""`tlbench report` over real records of tiny runs: one self-contained file, every section, bad input, the
publishing hooks, data.split_seed=trial, and the page rendered in headless Chromium."""
import html
import json
import os
import re
import statistics
import struct
import sys
from pathlib import Path

import pytest
import tlbench
from click.testing import CliRunner

from tlbench.cli import cli
from tlbench.plugins.report_sections import BUILTIN_SECTIONS

sys.path.insert(0, str(Path(__file__).parent))
from headless_chromium import Chromium, find_chromium  # noqa: E402

STRATEGIES = ("frozen", "full", "scratch")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_backbone):
    """Real records: three strategies x two seeds of the tiny backbone on synthetic data."""
    from conftest import FAST_SETTINGS

    folder = tmp_path_factory.mktemp("results")
    settings = [a for s in FAST_SETTINGS if not s.startswith("epochs=") for a in ("--set", s)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLBENCH_DISABLE_PLUGINS", "1")
        patch.setenv("TLBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        args = [a for s in STRATEGIES for a in ("-s", s)]
        result = invoke("run", *args, "-b", tiny_backbone, "-d", "synthetic", "--seeds", "2", "--epochs", "2",
                        "--results-dir", folder, "-q", *settings)
    assert result.exit_code == 0, result.output
    return folder


def records_of(folder):
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


@pytest.fixture(scope="module")
def report(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = invoke("report", "--results-dir", results, "--out", out, "--reference", "full")
    assert result.exit_code == 0, result.output
    return out, result


def test_report_is_one_self_contained_file_with_every_section(report, results):
    out, result = report
    page = out.read_text()
    assert f"report written to {out}" in result.stderr
    assert "report" in result.stderr.splitlines()[0], "a progress bar on stderr while it renders"
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:|//)", page), "nothing may be loaded from elsewhere"
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    assert re.findall(r'<img [^>]*src="([^":]+):', page) == ["data"] * page.count("<img ")
    sections = re.findall(r'data-section="([^"]+)"', page)
    assert sections == [s.name for s in sorted(BUILTIN_SECTIONS, key=lambda s: s.order)
                        if s.scope == "dataset" and s.name != "axes"], \
        "one dataset: no cross-task section; no setting varies: no axes section"
    plots = re.findall(r'data-plot="[^"]*"><img', page)
    assert len(plots) == 6, "paired, accuracy/time, accuracy/params, means, curves, cost"
    records = records_of(results)
    assert records[0]["command"] in page.replace("&#x27;", "'"), "the command that reproduces it"
    for text in ("split sizes", "image size", "BatchNorm", records[0]["environment"]["torch"],
                 "training seed only (data split fixed: split_seed 0)", "Pareto front", "not distinguishable"
                 if "not distinguishable" in page else "bootstrap"):
        assert text in page, text
    assert oct(out.stat().st_mode & 0o777) != oct(0o600), "readable like any file the user writes"


def test_report_paired_table_equals_the_records(report, results):
    out, _ = report
    page = out.read_text()
    records = [r for r in records_of(results) if r["status"] == "ok"]
    acc = {(r["trial"]["strategy"], r["trial"]["seed"]): r["metrics"]["test_top1"] for r in records}
    label = {r["trial"]["strategy"]: html.escape(r["trial"]["label"]) for r in records}
    for strategy in ("frozen", "scratch"):
        per_seed = ", ".join(f"{seed}: {100 * (acc[strategy, seed] - acc['full', seed]):+.1f}" for seed in (0, 1))
        assert f"<td>{label[strategy]}</td><td class=num>2</td><td>{per_seed}</td>" in page


def test_report_bad_input_is_one_line_and_writes_nothing(results, tmp_path):
    out = tmp_path / "r.html"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--results-dir", tmp_path / "absent"], "no results directory"),
        (["--results-dir", empty], "no records"),
        (["--results-dir", results, "--dataset", "cifar10"], "no records for dataset 'cifar10'; choose --dataset from synthetic"),
        (["--results-dir", results, "--reference", "fulll"], "no records of strategy 'fulll' to compare with; did you mean 'full'?; choose --reference from frozen, full, scratch"),
    ]
    for args, message in cases:
        result = invoke("report", *args, "--out", out)
        assert result.exit_code == 2 and result.output.count("\n") == 1 and message in result.output, result.output
        assert not out.exists()
    for bad_out, message in ((tmp_path / "no-such-dir" / "r.html", "does not exist"), (tmp_path, "is a directory")):
        result = invoke("report", "--results-dir", results, "--out", bad_out)
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"], "no temporary file left behind"


def test_a_plugin_section_and_format_come_through_the_hooks(results, tmp_path, monkeypatch):
    """A third-party plugin adds a report section and a leaderboard format the way the built-ins do."""
    monkeypatch.delenv("TLBENCH_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tlb_publish.py").write_text('''
from tlbench import LeaderboardFormat, ReportSection, hookimpl

def tsv(table):
    return "\\n".join("\\t".join(str(v) for v in row.values()) for row in table.rows)

def seeds(context):
    return "<p id=seed-count>" + str(len(context.records)) + " trials of " + context.dataset + "</p>"

@hookimpl
def register_leaderboard_formats(register):
    register(LeaderboardFormat("tsv", "tab-separated rows", tsv))

@hookimpl
def register_report_sections(register):
    register(ReportSection("seed-count", "How many trials", 5, seeds))
''')
    dist = tmp_path / "tlb_publish-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tlb_publish\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tlbench]\ntlb_publish = tlb_publish\n")
    sys.modules.pop("tlb_publish", None)
    table = invoke("leaderboard", "--results-dir", results, "--format", "tsv")
    assert table.exit_code == 0 and table.output.count("\t") == 3 * (3 + 9 - 1), table.output
    assert "tsv" in invoke("leaderboard", "--help-formats").output
    out = tmp_path / "r.html"
    assert invoke("report", "--results-dir", results, "--out", out, "-q").exit_code == 0
    page = out.read_text()
    assert "<p id=seed-count>6 trials of synthetic</p>" in page
    assert page.index('data-section="seed-count"') < page.index('data-section="leaderboard"'), "order 5 first"


def test_record_finished_gets_every_record_and_a_failing_plugin_costs_one_line(tmp_path, monkeypatch,
                                                                               tiny_backbone):
    monkeypatch.delenv("TLBENCH_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    log = tmp_path / "logged.jsonl"
    sources = {
        "tlb_logger": f'''
import json
from tlbench import hookimpl

@hookimpl
def record_finished(record):
    with open({str(log)!r}, "a") as f:
        f.write(json.dumps(record) + "\\n")
    record["status"] = "tampered"  # a copy: neither the file nor the next plugin sees this
''',
        "tlb_broken_logger": '''
from tlbench import hookimpl

@hookimpl
def record_finished(record):
    raise ConnectionError("tracking server unreachable")
''',
    }
    for name, source in sources.items():
        (tmp_path / f"{name}.py").write_text(source)
        dist = tmp_path / f"{name}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[tlbench]\n{name} = {name}\n")
        sys.modules.pop(name, None)
    results = tmp_path / "results"
    result = invoke("run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--seeds", "2", "--epochs", "1",
                    "--results-dir", results, "-q")
    assert result.exit_code == 0, result.output
    written = {r["key"]: r for r in records_of(results)}
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(written) == 2 and {r["key"] for r in logged} == set(written)
    for r in logged:
        w = written[r["key"]]
        assert r == w, [(k, r.get(k), w.get(k)) for k in set(r) | set(w) if r.get(k) != w.get(k)]
    warnings = [line for line in result.stderr.splitlines() if "tlb_broken_logger" in line]
    assert len(warnings) == 2 and all("tracking server unreachable" in w and "the grid goes on" in w
                                      for w in warnings)


def test_split_seed_trial_draws_each_seeds_split_and_is_recorded(tmp_path, tiny_backbone):
    from tlbench.plan import build_trials
    from tlbench.plugins.synthetic import Synthetic
    from tlbench.registry import Plugins

    results = tmp_path / "results"
    result = invoke("run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--seeds", "2", "--epochs", "1",
                    "--set", "data.split_seed=trial", "--results-dir", results, "-q")
    assert result.exit_code == 0, result.output
    records = sorted(records_of(results), key=lambda r: r["trial"]["seed"])
    assert [r["trial"]["data"]["split_seed"] for r in records] == ["trial", "trial"]
    assert [r["data"]["source"]["split_seed"] for r in records] == [0, 1], "the split actually drawn"
    assert records[0]["trial"]["group"] == records[1]["trial"]["group"], "still one configuration over seeds"
    board = invoke("leaderboard", "--results-dir", results)
    assert "training seed and data split (data.split_seed=trial)" in board.output
    # the split really differs: the synthetic images of seed 0 and seed 1 are different draws
    from tlbench.data_cache import load_splits

    family = Synthetic()
    first = load_splits(family, None, {**family.defaults, "split_seed": 0})
    second = load_splits(family, None, {**family.defaults, "split_seed": 1})
    assert not (first.train_images == second.train_images).all()
    # without the setting, keys are those of before: the setting enters the key only when used
    strategies = [("frozen", Plugins(load_third_party=False).strategies.get("frozen"))]
    plain = build_trials(datasets=[("synthetic", family)], backbones=["b"], strategies=strategies, seeds=[0],
                         overrides={})[0]
    assert plain.load_options == dict(plain.data_options) and "trial" not in json.dumps(plain.identity())
    bad = invoke("run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--set", "data.split_seed=each",
                 "--results-dir", tmp_path / "bad")
    assert bad.exit_code == 2 and "data.split_seed must be an integer >= 0 or 'trial'" in bad.output
    assert not (tmp_path / "bad").exists()


def test_default_trial_keys_are_unchanged_by_the_split_seed_setting(monkeypatch):
    """Records are resumed by key: under protocol 1, the frozen seed-0 trial on the default data must keep the key
    it had in records written before data.split_seed=trial existed (schema 1, protocol 1). The protocol version is
    part of the key: since protocol 2 (channels_last on the CPU), the same settings have another key, so a
    protocol-1 record is never resumed as a protocol-2 trial."""
    import tlbench.plan
    from tlbench.plan import build_trials
    from tlbench.plugins.fashion_mnist import FashionMnist
    from tlbench.registry import Plugins

    frozen = Plugins(load_third_party=False).strategies.get("frozen")

    def key() -> str:
        return build_trials(datasets=[("fashion-mnist", FashionMnist())], backbones=["efficientnet_lite0"],
                            strategies=[("frozen", frozen)], seeds=[0], overrides={})[0].key

    current = key()
    monkeypatch.setattr(tlbench.plan, "PROTOCOL_VERSION", 1)
    assert key() == "061a612796649861a7a2"
    assert current != "061a612796649861a7a2" and tlbench.PROTOCOL_VERSION == 2


# ------------------------------------------------------------------------------------------- a real browser
def _png_size(path):
    header = Path(path).read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


PAGE_FACTS = """JSON.stringify({
  plots: [...document.querySelectorAll('figure.plot img')].map(img => ({complete: img.complete,
      natural: img.naturalWidth, width: img.getBoundingClientRect().width, height: img.getBoundingClientRect().height})),
  overflow: document.documentElement.scrollWidth - window.innerWidth,
  leaderboard: [...document.querySelectorAll('table.leaderboard tbody tr')].map(tr =>
      [...tr.children].map(td => td.textContent)),
  headers: [...document.querySelectorAll('table.leaderboard thead th')].map(th => th.textContent),
})"""


def test_report_in_headless_chromium_at_phone_and_desktop_width(report, results, tmp_path):
    if find_chromium() is None:
        if os.environ.get("TLBENCH_REQUIRE_BROWSER"):  # set by .ci/run: in CI this test must run
            pytest.fail("Chromium is not installed but TLBENCH_REQUIRE_BROWSER is set; apt-get install chromium")
        pytest.skip("Chromium is not installed (CI installs Debian's `chromium`: apt-get install chromium)")
    out, _ = report
    records = [r for r in records_of(results) if r["status"] == "ok"]
    with Chromium(find_chromium()) as browser:
        for width in (375, 1280):
            browser.open(out, width)
            facts = json.loads(browser.evaluate(PAGE_FACTS))
            png = browser.screenshot(tmp_path / f"report-{width}.png")
            assert _png_size(png)[0] == width and _png_size(png)[1] > 2000
            assert len(facts["plots"]) == 6
            for plot in facts["plots"]:
                assert plot["complete"] and plot["natural"] > 200, plot
                assert min(width - 40, 400) <= plot["width"] <= width and plot["height"] > 100, plot
            assert facts["overflow"] <= 0, "wide tables scroll inside their box; the page itself fits the screen"
            headers = facts["headers"]
            rows = {row[headers.index("strategy")].split("[")[0]: row for row in facts["leaderboard"]}
            assert set(rows) == set(STRATEGIES)
            for strategy in STRATEGIES:
                accs = [r["metrics"]["test_top1"] for r in records if r["trial"]["strategy"] == strategy]
                expected = f"{100 * statistics.fmean(accs):.1f} ± {100 * statistics.stdev(accs):.1f}"
                assert rows[strategy][headers.index("test top-1 %")] == expected
                assert rows[strategy][headers.index("n")] == str(len(accs))
        network = [e for e in browser.events if e["method"].startswith("Network.")]
        urls = {e["params"]["request"]["url"].split(":", 1)[0] for e in network
                if e["method"] == "Network.requestWillBeSent"}
        assert urls <= {"file", "data"}, f"the page asked the network for something: {urls}"
        failed = [e["params"] for e in network if e["method"] == "Network.loadingFailed"]
        assert not failed, failed
        assert any(e["method"] == "Network.loadingFinished" for e in network), "the network domain was watched"
    assert os.path.getsize(tmp_path / "report-375.png") > 10_000


def test_pareto_front_keeps_exactly_the_undominated_trials():
    from tlbench.plugins.report_sections import _pareto

    points = [(3.0, 55.0), (1.0, 50.0), (2.0, 60.0), (0.5, 40.0), (2.5, 60.0), (0.5, 39.0), (4.0, 61.0)]
    assert [points[i] for i in _pareto(points)] == [(0.5, 40.0), (1.0, 50.0), (2.0, 60.0), (4.0, 61.0)]


def _record(strategy, backbone, seed, acc, **metrics):
    return {"key": f"{strategy}-{backbone}-{seed}", "status": "ok", "schema": 1,
            "trial": {"dataset": "d", "backbone": backbone, "strategy": strategy, "label": strategy, "seed": seed,
                      "group": f"{strategy}-{backbone}", "data": {"split_seed": 0},
                      "protocol_version": tlbench.PROTOCOL_VERSION},
            "metrics": {"test_top1": acc, "val_top1": acc, **metrics}}


def test_report_pairs_within_each_backbone_and_tolerates_records_without_optional_fields(tmp_path):
    """Two backbones: each strategy is compared with the reference on its own backbone, and named with it. The
    records carry only accuracies (no history, timings, parameters, environment): those plots are left out."""
    from tlbench.report import render_report

    accs = {("full", "b1"): [0.80, 0.82], ("frozen", "b1"): [0.70, 0.71],
            ("full", "b2"): [0.60, 0.62], ("frozen", "b2"): [0.65, 0.66]}
    records = [_record(s, b, seed, a) for (s, b), values in accs.items() for seed, a in enumerate(values)]
    page = render_report(records, BUILTIN_SECTIONS, reference="full")
    for backbone, diffs in (("b1", "0: -10.0, 1: -11.0"), ("b2", "0: +5.0, 1: +4.0")):
        assert f"<td>frozen / {backbone}</td><td class=num>2</td><td>{diffs}</td>" in page
    assert page.count('data-plot="') == 2, "paired and means: the rest need fields these records lack"
    assert 'data-section="accuracy-vs-time"' not in page and 'data-section="curves"' not in page
