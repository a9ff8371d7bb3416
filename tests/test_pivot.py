"""``tlbench leaderboard --pivot KEY`` and the report's plot against each varied setting: cells against hand-computed
means and t-intervals, values read from each record's resolved settings (the default included), a real ``--vary``
run, one-line errors, csv and json, and the report section present only when a setting varies."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import sys

import pytest
from click.testing import CliRunner

import tlbench
from conftest import one_error_line
from tlbench.cli import cli
from tlbench.pivot import NOT_APPLICABLE, names_apart, pivot_blocks, pivot_table, render_pivot, setting_value, varied_keys
from tlbench.records import Record
from tlbench.registry import Plugins
from tlbench.store import ResultStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROTOCOL = {"epochs": 8, "batch_size": 32, "image_size": None}
DEFAULT_DATA = {"train_size": 300, "val_size": 100, "image_size": 32}
HPARAMS = {"full": {"lr": 1e-4}, "frozen": {"head_lr": 1e-3}}


def record(strategy, seed, acc, dataset="d1", backbone="b", status="ok", data=None, hparams=None, protocol=None):
    """A record as the runner writes it: the *resolved* settings (defaults included) in trial.data/hparams/protocol,
    the label naming only what differs from the defaults."""
    data = {**DEFAULT_DATA, **(data or {})}
    hp = {**HPARAMS[strategy], **(hparams or {})}
    proto = {**PROTOCOL, **(protocol or {})}
    changed = [f"data.{k}={v}" for k, v in data.items() if v != DEFAULT_DATA.get(k)] + [
        f"{k}={v}" for k, v in {**hp, **proto}.items() if v != {**HPARAMS[strategy], **PROTOCOL}[k]]
    label = strategy + (f"[{','.join(changed)}]" if changed else "")
    key = hashlib.sha256(f"{dataset}-{backbone}-{label}-{seed}".encode()).hexdigest()[:20]
    return Record.from_json_dict({
        "schema": 2, "key": key, "status": status, "error": "boom" if status != "ok" else None,
        "trial": {"dataset": dataset, "backbone": backbone, "strategy": strategy, "label": label, "seed": seed,
                  "group": hashlib.sha256(f"{dataset}-{backbone}-{label}".encode()).hexdigest()[:20], "key": key,
                  "protocol": proto, "hparams": hp, "data": data, "protocol_version": tlbench.PROTOCOL_VERSION},
        "metrics": {"test_top1": acc, "val_top1": acc, "best_epoch": 1, "epochs": 1} if status == "ok" else {}})


# data.train_size -> strategy -> test top-1 per seed; 300 is the default (its records name no train_size)
STUDY = {100: {"full": [0.80, 0.82, 0.84], "frozen": [0.70]},
         300: {"full": [0.86, 0.88, 0.87], "frozen": [0.72, 0.74, 0.73]},
         1000: {"full": [0.90, 0.92], "frozen": [0.75, 0.77, 0.76]}}


def study_records():
    return [record(strategy, seed, acc, data={"train_size": size})
            for size, per in STUDY.items() for strategy, scores in per.items() for seed, acc in enumerate(scores)]


def formats():
    return dict(Plugins().leaderboard_formats.items())


def t_half(values, t):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return t * std / math.sqrt(len(values))


# ------------------------------------------------------------------------------------------- reading settings
def test_setting_values_come_from_the_resolved_settings():
    full = record("full", 0, 0.5, data={"train_size": 100}, hparams={"lr": 1e-3}, protocol={"epochs": 2})
    frozen = record("frozen", 0, 0.5)
    assert setting_value(full, "data.train_size") == 100
    assert setting_value(frozen, "data.train_size") == 300  # the default: read from the record, not absent
    assert setting_value(full, "full.lr") == 1e-3 and setting_value(frozen, "frozen.head_lr") == 1e-3
    assert setting_value(frozen, "full.lr") is NOT_APPLICABLE  # another strategy's key
    assert setting_value(full, "full.epochs") == 2 and setting_value(full, "epochs") == 2
    assert setting_value(full, "image_size") == 32  # none: the side it ran at (data.image_size)
    assert setting_value(full, "nonsense") is NOT_APPLICABLE and setting_value(full, "data.nope") is NOT_APPLICABLE


def test_varied_keys_count_values_within_one_strategy():
    records = study_records()
    assert varied_keys(records) == ["data.train_size"]
    # strategies whose own epochs differ (a protocol override) vary nothing
    assert varied_keys([record("full", 0, 0.5, protocol={"epochs": 3}), record("frozen", 0, 0.5)]) == []
    lrs = [record("full", 0, 0.5, hparams={"lr": lr}) for lr in (1e-4, 1e-3)] + [record("frozen", 0, 0.5)]
    assert varied_keys(lrs) == ["full.lr"]
    epochs = [record("full", 0, 0.5, protocol={"epochs": e}) for e in (2, 8)] + [record("frozen", 0, 0.5)]
    (block,) = pivot_blocks(epochs, "full.epochs")  # a strategy's own protocol setting, by its scoped key
    assert block.values == [2, 8] and block.not_applicable == ["frozen"]
    assert "full.epochs=2" in render_pivot(epochs, "full.epochs", "csv", formats())


# ---------------------------------------------------------------------------------------------- the pivot
def test_cells_are_means_with_t_intervals_and_n_columns_in_numeric_order():
    (block,) = pivot_blocks(study_records(), "data.train_size")
    assert block.values == [100, 300, 1000]  # numeric, not text order (100, 1000, 300)
    table = pivot_table([block], with_block=False)
    assert list(table.rows[0]) == ["strategy", "data.train_size=100", "data.train_size=300", "data.train_size=1000"]
    rows = {row["strategy"]: row for row in table.rows}
    full = STUDY[100]["full"]
    assert rows["full"]["data.train_size=100"] == f"{100 * sum(full) / 3:.1f} ± {100 * t_half(full, 4.303):.1f} (n=3)"
    assert rows["full"]["data.train_size=100"] == "82.0 ± 5.0 (n=3)"  # 4.303 * 0.02 / sqrt(3)
    assert rows["full"]["data.train_size=1000"] == "91.0 ± 12.7 (n=2)"  # 12.706 * 0.01414 / sqrt(2)
    assert rows["frozen"]["data.train_size=100"] == "70.0 (n=1)"  # one seed: no interval
    assert rows["frozen"]["data.train_size=300"] == "73.0 ± 2.5 (n=3)"
    values = {v["strategy"]: v for v in table.values}
    cell = values["full"]["cells"][2]
    assert cell["value"] == 1000 and cell["n"] == 2 and cell["mean"] == pytest.approx(0.91)
    assert cell["ci95"] == pytest.approx(t_half([0.90, 0.92], 12.706), abs=1e-4)


def test_the_default_value_joins_the_records_that_set_it_and_failed_trials_are_counted():
    records = [record("full", s, 0.8, data={"train_size": 100}) for s in range(2)]
    records += [record("full", 0, 0.9), record("full", 1, 0.7, data={"train_size": 300})]  # default / set: one
    records += [record("full", 2, None, status="failed")]
    (block,) = pivot_blocks(records, "data.train_size")
    assert len(block.rows) == 1 and block.values == [100, 300]
    text = pivot_table([block]).rows[0]["data.train_size=300"]
    assert text.startswith("80.0 ± ") and text.endswith("(n=2, 1 failed)")


def test_a_strategy_specific_key_leaves_the_other_strategies_out_with_a_note():
    records = [record("full", s, acc, hparams={"lr": lr}) for lr, accs in ((1e-3, (0.6, 0.7)), (1e-4, (0.8, 0.9)))
               for s, acc in enumerate(accs)] + [record("frozen", 0, 0.5), record("frozen", 1, 0.55)]
    text = render_pivot(records, "full.lr", "github", formats())
    assert "full.lr=0.0001" in text and "full.lr=0.001" in text
    assert text.index("full.lr=0.0001") < text.index("full.lr=0.001")
    assert "| frozen" not in text and "full.lr does not apply to frozen: left out." in text


def test_configurations_that_differ_in_another_setting_are_rows_of_their_own():
    records = [record("full", 0, 0.5 + 0.01 * size / 100, data={"train_size": size}, protocol={"epochs": e})
               for size in (100, 300) for e in (2, 8)]
    (block,) = pivot_blocks(records, "data.train_size")
    assert sorted(row.strategy for row in block.rows) == ["full @ epochs=2", "full @ epochs=8"]
    assert all(len(row.cells) == 2 for row in block.rows)


def test_names_apart_add_the_settings_that_differ_then_number():
    assert names_apart(["full", "full", "frozen"], [{"data.n": 100, "lr": 1}, {"data.n": 300, "lr": 1}, {}]) == [
        "full @ data.n=100", "full @ data.n=300", "frozen"]
    assert names_apart(["full", "full"], [{"lr": 1}, {"lr": 1.0}]) == ["full", "full #2"]  # 1 and 1.0: one value


def test_one_table_per_dataset_and_backbone_in_text_one_in_csv_and_json():
    records = study_records() + [record("full", 0, 0.6, dataset="d2", data={"train_size": n}) for n in (100, 3000)]
    text = render_pivot(records, "data.train_size", "github", formats())
    assert text.count("| strategy") == 2 and "d1 / b\n" in text and "d2 / b\n" in text
    parsed = list(csv.DictReader(io.StringIO(render_pivot(records, "data.train_size", "csv", formats()))))
    assert [(r["dataset"], r["strategy"]) for r in parsed] == [("d1", "frozen"), ("d1", "full"), ("d2", "full")]
    assert list(parsed[0])[3:] == [f"data.train_size={n}" for n in (100, 300, 1000, 3000)]
    assert parsed[1]["data.train_size=100"] == "82.0 ± 5.0 (n=3)" and parsed[2]["data.train_size=300"] == ""
    rows = json.loads(render_pivot(records, "data.train_size", "json", formats()))
    d2 = next(r for r in rows if r["dataset"] == "d2")
    assert [c["value"] for c in d2["cells"]] == [100, 3000] and d2["cells"][0]["n"] == 1
    assert d2["cells"][0]["ci95"] is None and d2["key"] == "data.train_size"


# -------------------------------------------------------------------------------------------- the command
def results_with(tmp_path, records):
    (tmp_path / "results").mkdir()
    store = ResultStore(tmp_path / "results")
    for r in records:
        store.write(r)
    return store.root


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("extra, message", [
    (["--pivot", "data.trian_size"], "--pivot data.trian_size is not a setting of these records; the keys that "
                                     "vary: data.train_size"),
    (["--pivot", "epochs"], "--pivot epochs has one value in these records; the keys that vary: data.train_size"),
    (["--pivot", "data.train_size", "--across", "datasets"], "--pivot prints its own columns"),
    (["--pivot", "data.train_size", "--columns", "test"], "leave out --across, --suite, --columns"),
    (["--pivot", "data.train_size", "--candidates"], "--candidates"),
    (["--pivot", "data.train_size", "--suite", "vtab-1k"], "--suite"),
    (["--pivot", "data.train_size", "--format", "nope"], "unknown format 'nope'"),
])
def test_bad_pivots_are_one_error_line(tmp_path, extra, message):
    root = results_with(tmp_path, study_records())
    assert message in one_error_line(invoke("leaderboard", "--results-dir", root, *extra))


def test_nothing_varies_says_how_to_vary(tmp_path):
    root = results_with(tmp_path, [record("full", s, 0.5) for s in range(2)])
    line = one_error_line(invoke("leaderboard", "--results-dir", root, "--pivot", "data.train_size"))
    assert "has one value" in line and "no setting varies in these records (run with --vary" in line


def test_the_command_prints_the_pivot(tmp_path):
    root = results_with(tmp_path, study_records())
    result = invoke("leaderboard", "--results-dir", root, "--pivot", "data.train_size", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert "d1,b,full,82.0 ± 5.0 (n=3)," in result.output


def test_a_real_vary_run_and_a_set_run_pivot_by_train_size(tiny_backbone, tmp_path):
    results = tmp_path / "results"
    common = ["run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--results-dir", results, "--device",
              "cpu", "-q", "--seeds", "2", "--set", "epochs=1", "--set", "frozen.head_lr=0.03"]
    assert invoke(*common, "--vary", "data.train_size=32,48").exit_code == 0
    assert invoke(*common).exit_code == 0  # synthetic's default: 64 training images
    result = invoke("leaderboard", "--results-dir", results, "--pivot", "data.train_size", "--format", "json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["strategy"] == "frozen"
    assert [(c["value"], c["n"], c["failed"]) for c in row["cells"]] == [(32, 2, 0), (48, 2, 0), (64, 2, 0)]
    records = list(ResultStore(results).records())
    for cell in row["cells"]:
        scores = sorted(r.metrics.test_top1 for r in records if r.trial.data["train_size"] == cell["value"])
        assert sorted(cell["scores"]) == scores and cell["mean"] == pytest.approx(sum(scores) / 2)

    report = tmp_path / "report.html"
    written = invoke("report", "--results-dir", results, "--out", report, "-q", "--reference", "frozen")
    assert written.exit_code == 0, written.output
    fragment = _axes_fragment(report.read_text())
    assert fragment and "<h4>data.train_size</h4>" in fragment
    assert re.search(r'<img alt="Test top-1 against data.train_size[^"]*" src="data:image/svg\+xml;base64,', fragment)


# ----------------------------------------------------------------------------------------------- the report
def _axes_fragment(page):
    match = re.search(r'<section class="section" data-section="axes".*?</section>', page, re.S)
    return match.group(0) if match else None


def _report(records):
    pytest.importorskip("matplotlib", reason="the report extra")
    from tlbench.plugins.report_sections import BUILTIN_SECTIONS
    from tlbench.report import render_report

    return render_report(records, BUILTIN_SECTIONS)


def test_report_plots_each_varied_setting_and_nothing_without_one():
    records = study_records() + [record("full", s, 0.5, hparams={"lr": 1e-3}) for s in range(2)]
    fragment = _axes_fragment(_report(records))
    assert "<h4>data.train_size</h4>" in fragment and "<h4>full.lr</h4>" in fragment
    assert fragment.count("<img") == 2 and "full.lr does not apply to frozen: not drawn." in fragment
    assert _axes_fragment(_report([record(s, seed, 0.5) for s in ("full", "frozen") for seed in range(2)])) is None


def test_report_axis_is_logarithmic_beyond_a_tenfold_span_and_categorical_values_are_drawn():
    alt = r'<img alt="Test top-1 against data.train_size( \(log scale\))? per strategy'
    assert re.search(alt, _axes_fragment(_report(study_records()))).group(1) is None  # 100..1000: exactly 10x
    wider = study_records() + [record("full", 0, 0.95, data={"train_size": 3000})]
    assert re.search(alt, _axes_fragment(_report(wider))).group(1) == " (log scale)"
    augment = [record("full", s, 0.5 + s / 10, data={"augment": a}) for a in ("none", "flip") for s in range(2)]
    fragment = _axes_fragment(_report(augment))
    assert "<h4>data.augment</h4>" in fragment and fragment.count("<img") == 1


def test_report_without_matplotlib_leaves_the_plot_out_only_where_a_setting_varies(monkeypatch):
    pytest.importorskip("matplotlib", reason="the report extra")
    from tlbench.plugins.report_sections import BUILTIN_SECTIONS
    from tlbench.report import render_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr("tlbench.plugins.report_sections.module_available", lambda name: name != "matplotlib")
    fragment = _axes_fragment(render_report(study_records(), BUILTIN_SECTIONS))
    assert "<img" not in fragment and "Left out: this section needs" in fragment and "[report]" in fragment
    flat = render_report([record("full", s, 0.5) for s in range(2)], BUILTIN_SECTIONS)
    assert _axes_fragment(flat) is None
