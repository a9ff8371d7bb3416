"""Results across tasks: the statistics against hand-computed values, scipy, scikit-posthocs and Demšar 2006;
``tlbench leaderboard --across`` on fabricated records; the report's cross-task section."""
import base64
import hashlib
import itertools
import json
import math
import re
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import tlbench
from tlbench import stats
from tlbench.across import across_blocks, render_across
from tlbench.cli import cli
from tlbench.records import Record
from tlbench.registry import Plugins
from tlbench.requirements import Extra
from tlbench.store import ResultStore

scipy_stats = pytest.importorskip("scipy.stats", reason="the report extra: pip install '.[report]'")


def record(strategy, seed, acc, dataset="d1", backbone="b", status="ok", data=None, label=None, hparams=None):
    key = hashlib.sha256(f"{strategy}-{label}-{seed}-{dataset}-{backbone}-{data}".encode()).hexdigest()[:20]
    return Record.from_json_dict({
        "schema": 2, "key": key, "status": status, "error": "boom" if status != "ok" else None,
        "trial": {"dataset": dataset, "backbone": backbone, "strategy": strategy, "label": label or strategy,
                  "seed": seed, "group": f"{dataset}-{backbone}-{label or strategy}-{json.dumps(data)}", "key": key,
                  "protocol": {}, "hparams": hparams or {}, "overrides": hparams or {}, "data": data or {},
                  "protocol_version": tlbench.PROTOCOL_VERSION},
        "metrics": {"test_top1": acc, "val_top1": acc, "best_epoch": 1, "epochs": 1, "train_images_per_s": 100.0,
                    "eval_images_per_s": 400.0, "peak_memory_mib": 12.0, "time_s": {"total": 3.0}}
        if status == "ok" else {}})


def records_of(scores, backbone="b", **kwargs):
    """``scores``: dataset -> strategy -> test top-1 per seed."""
    return [record(strategy, seed, acc, dataset=dataset, backbone=backbone, **kwargs)
            for dataset, per_strategy in scores.items() for strategy, values in per_strategy.items()
            for seed, acc in enumerate(values)]


# three datasets, four strategies, three seeds (two for partial on d3)
SCORES = {
    "d1": {"full": [0.80, 0.82, 0.81], "frozen": [0.70, 0.72, 0.71], "partial": [0.75, 0.74, 0.76],
           "scratch": [0.50, 0.52, 0.55]},
    "d2": {"full": [0.60, 0.62, 0.61], "frozen": [0.65, 0.66, 0.64], "partial": [0.63, 0.60, 0.61],
           "scratch": [0.30, 0.32, 0.35]},
    "d3": {"full": [0.90, 0.92, 0.91], "frozen": [0.85, 0.86, 0.84], "partial": [0.88, 0.89],
           "scratch": [0.40, 0.42, 0.41]},
}


def formats():
    return dict(Plugins().leaderboard_formats.items())


# --------------------------------------------------------------------------------------------- statistics
def test_mean_ranks_rank_1_is_best_and_ties_share_the_average_rank():
    scores = [[0.9, 0.8, 0.8],   # ranks 1, 2.5, 2.5
              [0.7, 0.9, 0.6]]   # ranks 2, 1, 3
    assert stats.mean_ranks(scores).tolist() == [1.5, 1.75, 2.75]
    rng = np.random.default_rng(3)
    table = rng.integers(0, 5, size=(7, 5)) / 4  # many ties
    expected = np.mean([scipy_stats.rankdata(-row, method="average") for row in table], axis=0)
    assert np.allclose(stats.mean_ranks(table), expected)


def test_interquartile_mean_is_the_mean_of_the_middle_half():
    assert stats.interquartile_mean([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert stats.interquartile_mean([0, 0, 10, 10, 10, 10, 10, 10, 100, 100]) == pytest.approx(10.0)
    values = np.random.default_rng(0).normal(size=37)
    assert stats.interquartile_mean(values) == pytest.approx(scipy_stats.trim_mean(values, 0.25))


def test_stratified_bootstrap_resamples_seeds_within_each_task_only():
    # each task's seeds agree: resampling within tasks cannot move the IQM, pooling the seeds would
    constant_tasks = [[0.2, 0.2, 0.2], [0.8, 0.8, 0.8]]
    low, high = stats.stratified_bootstrap_iqm(constant_tasks)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)
    pooled = np.array([0.2] * 3 + [0.8] * 3)
    rng = np.random.default_rng(0)
    pooled_iqms = scipy_stats.trim_mean(pooled[rng.integers(0, 6, size=(2000, 6))], 0.25, axis=1)
    assert pooled_iqms.min() < 0.45 and pooled_iqms.max() > 0.55, "the unstratified bootstrap would spread"
    assert stats.stratified_bootstrap_iqm([[0.5], [0.7]]) is None, "one seed per task: nothing to resample"


def test_stratified_bootstrap_matches_a_plain_loop_over_resamples():
    """rliable's algorithm written as a loop (per resample, per task: draw that task's seeds with replacement;
    the IQM of all drawn scores), independent random numbers: the percentile bounds agree closely."""
    tasks = [[0.61, 0.64, 0.70], [0.80, 0.82, 0.79, 0.90], [0.40, 0.55]]
    low, high = stats.stratified_bootstrap_iqm(tasks)
    assert low < stats.interquartile_mean([s for t in tasks for s in t]) < high
    rng = np.random.default_rng(12345)
    iqms = []
    for _ in range(20_000):
        drawn = [score for task in tasks for score in rng.choice(task, size=len(task), replace=True)]
        iqms.append(scipy_stats.trim_mean(drawn, 0.25))
    loop_low, loop_high = np.quantile(iqms, [0.025, 0.975])
    assert low == pytest.approx(loop_low, abs=0.006) and high == pytest.approx(loop_high, abs=0.006)
    assert stats.stratified_bootstrap_iqm(tasks) == (low, high), "fixed seed: the same interval every time"


def test_probability_of_improvement_is_mann_whitney_u_over_nm_averaged_over_tasks():
    assert stats.probability_of_improvement_on_task([1, 2, 3], [2, 2, 1]) == pytest.approx(5.5 / 9)
    rng = np.random.default_rng(7)
    pairs = [(rng.integers(0, 6, size=n) / 5, rng.integers(0, 6, size=m) / 5) for n, m in [(3, 3), (5, 2), (4, 6)]]
    per_task = []
    for x, y in pairs:
        u = scipy_stats.mannwhitneyu(x, y).statistic
        assert stats.probability_of_improvement_on_task(x, y) == pytest.approx(u / (len(x) * len(y)))
        per_task.append(u / (len(x) * len(y)))
    assert stats.average_probability_of_improvement(pairs) == pytest.approx(np.mean(per_task))


def test_friedman_matches_scipy_and_demsars_formula_from_the_mean_ranks():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(14, 4)) + np.array([0.0, 0.4, 0.1, 0.6])
    statistic, p = stats.friedman_test(scores)
    expected = scipy_stats.friedmanchisquare(*scores.T)
    assert (statistic, p) == pytest.approx((expected.statistic, expected.pvalue))
    n, k = scores.shape
    ranks = stats.mean_ranks(scores)  # Demšar 2006 eq. (chi2_F) without ties
    assert statistic == pytest.approx(12 * n / (k * (k + 1)) * (np.sum(ranks ** 2) - k * (k + 1) ** 2 / 4))
    assert stats.friedman_test([[0.5, 0.5, 0.5], [0.7, 0.7, 0.7]]) == (0.0, 1.0), "all tied: no evidence"
    with pytest.raises(ValueError, match="3 strategies"):
        stats.friedman_test(scores[:, :2])


def test_critical_difference_against_demsars_table_and_worked_example():
    # Demšar 2006, section 3.2.4: four classifiers on 14 data sets, CD = 2.569 sqrt(4*5/(6*14)) = 1.25
    assert stats.critical_difference(4, 14) == pytest.approx(1.25, abs=0.005)
    table = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
    for k, q in table.items():
        assert stats.critical_difference(k, 10) == pytest.approx(q * math.sqrt(k * (k + 1) / 60))
        # the table is the studentized range quantile / sqrt(2): what is used beyond k = 10
        studentized = scipy_stats.studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2)
        assert studentized == pytest.approx(q, abs=1e-3)  # 3 decimals, truncated
    assert table[10] < stats.nemenyi_q05(11) < stats.nemenyi_q05(12)


def test_nemenyi_p_values_below_alpha_exactly_where_the_ranks_differ_by_more_than_the_cd():
    pytest.importorskip("scikit_posthocs", reason="the report extra")
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(20):
        scores = rng.normal(size=(12, 5)) + np.linspace(0, 1.5, 5)
        p_values = stats.nemenyi_p_values(scores)
        ranks, cd = stats.mean_ranks(scores), stats.critical_difference(5, 12)
        for i, j in itertools.combinations(range(5), 2):
            gap = abs(ranks[i] - ranks[j])
            if abs(gap - cd) > 0.01:  # away from the boundary, where Table 5's 3 decimals decide
                assert (p_values[i, j] < 0.05) == (gap > cd), (gap, cd, p_values[i, j])
                checked += 1
    assert checked > 100


def test_bars_of_the_diagram_are_the_maximal_runs_of_strategies_not_told_apart():
    ranks = [3.0, 1.0, 2.0, 4.0]  # order by rank: 1, 2, 0, 3
    different = {(1, 3), (2, 3), (1, 0)}  # pairs the test tells apart
    p = np.ones((4, 4))
    for i, j in different:
        p[i, j] = p[j, i] = 0.01
    # 1-2 alike; 2-0 alike; 0-3 alike: runs (0, 1), (1, 2), (2, 3) in rank order
    assert stats.not_different_runs(ranks, p) == [(0, 1), (1, 2), (2, 3)]
    assert stats.not_different_runs(ranks, np.ones((4, 4))) == [(0, 3)], "one bar, its sub-runs not drawn again"
    assert stats.not_different_runs(ranks, np.full((4, 4), 0.001)) == []


# ------------------------------------------------------------------------------------------- across tables
def test_across_datasets_hand_computed_rows_and_incomplete_strategies_flagged():
    scores = {d: dict(s) for d, s in SCORES.items()}
    del scores["d3"]["scratch"]
    scores["d3"]["partial"] = [0.88, 0.89, 0.885]  # every strategy 3 seeds per task: the IQM is comparable
    blocks = across_blocks(records_of(scores), "datasets")
    (block,) = blocks
    assert block.block == "b" and block.tasks == ["d1", "d2", "d3"]
    rows = {r.strategy: r for r in block.rows}
    assert [r.strategy for r in block.rows][-1] == "scratch" and rows["scratch"].missing == ["d3"]
    assert rows["scratch"].mean is None and rows["scratch"].mean_rank is None, "not averaged over fewer tasks"
    # per task means: d1 full .81 partial .75 frozen .71; d2 frozen .65 partial .6133 full .61; d3 full .91
    # partial .885 frozen .85 -> ranks full 1,3,1 (5/3); partial 2,2,2 (2); frozen 3,1,3 (7/3)
    assert rows["full"].mean_rank == pytest.approx(5 / 3) and rows["partial"].mean_rank == pytest.approx(2)
    assert rows["frozen"].mean_rank == pytest.approx(7 / 3)
    assert rows["full"].mean == pytest.approx((0.81 + 0.61 + 0.91) / 3)
    assert rows["full"].iqm == pytest.approx(scipy_stats.trim_mean(
        [v for d in ("d1", "d2", "d3") for v in SCORES[d]["full"]], 0.25))
    assert rows["full"].is_reference and block.reference == "full"
    expected = np.mean([scipy_stats.mannwhitneyu(SCORES[d]["frozen"], SCORES[d]["full"]).statistic / 9
                        for d in ("d1", "d2", "d3")])
    assert rows["frozen"].probability_of_improvement == pytest.approx(expected)
    low, high = rows["frozen"].iqm_interval
    assert low <= rows["frozen"].iqm <= high


def test_no_iqm_when_strategies_have_different_seed_counts_on_a_task():
    # SCORES: partial has 2 seeds on d3, the others 3; pooling would weigh d3 less for partial than for the rest
    (block,) = across_blocks(records_of(SCORES), "datasets")
    assert all(r.iqm is None and r.iqm_interval is None for r in block.rows)
    assert all(r.mean_rank is not None for r in block.complete), "ranks use per-task means: still comparable"
    assert "different numbers of seeds" in block.iqm_note
    text = render_across(records_of(SCORES), "datasets", "github", formats())
    assert "no IQM" in text


def test_a_tuned_strategy_is_one_row_across_tasks_whatever_it_chose_on_each():
    from tlbench.sweeps import Candidate, Sweep

    records, sweeps = [], []
    for dataset, lr, acc in (("d1", 0.001, 0.8), ("d2", 0.0003, 0.6)):
        label = f"full[lr={lr}]"
        chosen = [record("full", seed, acc + 0.01 * seed, dataset=dataset, label=label, hparams={"lr": lr})
                  for seed in (1, 2)]
        records += chosen + [record("frozen", seed, acc - 0.1, dataset=dataset) for seed in (1, 2)]
        sweeps.append(Sweep(f"s-{dataset}", dataset, "b", "full", {"lr": [0.0003, 0.001]}, "declared", {},
                            "all", [Candidate({"lr": lr}, f"g-{dataset}", label, ["x" * 20], 0.5)], 0, [0], [1, 2],
                            [r.key for r in chosen], f"g-{dataset}", label))
    (block,) = across_blocks(records, "datasets", sweeps=sweeps)
    rows = {r.strategy: r for r in block.rows}
    assert sorted(rows) == ["frozen", "full (tuned)"] and rows["full (tuned)"].complete
    assert rows["full (tuned)"].mean == pytest.approx((0.815 + 0.615) / 2)


def test_the_default_reference_falls_back_to_the_best_ranked_when_full_misses_a_task():
    scores = {d: {k: v for k, v in s.items() if not (d == "d2" and k == "full")} for d, s in SCORES.items()}
    scores["d3"]["partial"] = [0.88, 0.89, 0.885]
    (block,) = across_blocks(records_of(scores), "datasets")
    assert block.reference == block.complete[0].strategy == "partial"
    assert "full misses d2" in block.reference_note
    (explicit,) = across_blocks(records_of(scores), "datasets", reference="full")
    assert explicit.reference == "" and "no probability of improvement" in explicit.reference_note


def test_across_cells_with_a_dataset_keeps_its_cells_one_per_backbone():
    records = records_of({"d1": SCORES["d1"]}, backbone="b1") + records_of({"d1": SCORES["d2"]}, backbone="b2") \
        + records_of({"d2": SCORES["d3"]}, backbone="b1")
    text = render_across(records, "cells", "json", formats(), dataset="d1")
    assert {tuple(v["tasks"]) for v in json.loads(text)} == {("d1 / b1", "d1 / b2")}


def test_across_backbones_blocks_per_dataset_and_cells_pools_every_cell():
    records = records_of({"d1": SCORES["d1"]}, backbone="b1") + records_of({"d1": SCORES["d2"]}, backbone="b2")
    (block,) = across_blocks(records, "backbones")
    assert block.block == "d1" and block.tasks == ["b1", "b2"]
    (cells,) = across_blocks(records + records_of({"d2": SCORES["d3"]}, backbone="b1"), "cells")
    assert cells.tasks == ["d1 / b1", "d1 / b2", "d2 / b1"]


def test_configurations_differing_in_data_settings_are_separate_rows_named_by_the_setting():
    records = [record("full", seed, acc + 0.1 * (size == 300), dataset=d, data={"train_size": size, "split": d})
               for d in ("d1", "d2") for size in (100, 300) for seed, acc in enumerate([0.5, 0.6])]
    (block,) = across_blocks(records, "datasets")
    assert sorted(r.strategy for r in block.rows) == ["full @ data.train_size=100", "full @ data.train_size=300"]
    assert all(r.complete for r in block.rows), "the split differs per dataset, the name does not"
    assert block.rows[0].strategy.endswith("300") and block.rows[0].mean_rank == 1.0


# ------------------------------------------------------------------------------------------------------ CLI
def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def results(tmp_path):
    store = ResultStore(tmp_path / "results")
    store.root.mkdir()
    for r in records_of(SCORES) + [record("lora", 0, None, dataset="d1", status="failed")]:
        store.write(r)
    return store.root


def test_cli_across_datasets_prints_one_table_with_the_statistics(results):
    result = invoke("leaderboard", "--results-dir", results, "--across", "datasets")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["backbone", "strategy", "tasks", "mean test top-1 %", "mean rank", "IQM %",
                      "IQM 95% CI (stratified bootstrap)", "P(better than full)"]
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:7])}
    assert rows["full"][2] == "3/3" and rows["full"][3] == f"{100 * (0.81 + 0.61 + 0.91) / 3:.1f}"
    assert rows["full"][7] == "reference" and rows["scratch"][4] == "4.00"
    assert rows["lora"][2] == "0/3 (missing: d1, d2, d3)" and rows["lora"][3] == ""
    assert "3 tasks (datasets): d1, d2, d3" in result.output and "(lora)" in result.output


def test_cli_across_json_and_vs(results):
    result = invoke("leaderboard", "--results-dir", results, "--across", "datasets", "--format", "json",
                    "--vs", "frozen")
    assert result.exit_code == 0, result.output
    values = {v["strategy"]: v for v in json.loads(result.output)}
    assert values["frozen"]["is_reference"] and values["full"]["reference"] == "frozen"
    expected = np.mean([scipy_stats.mannwhitneyu(SCORES[d]["full"], SCORES[d]["frozen"]).statistic / 9
                        for d in SCORES])
    assert values["full"]["probability_of_improvement"] == pytest.approx(expected)
    partial_means = [np.mean(SCORES[d]["partial"]) for d in SCORES]
    assert values["partial"]["mean"] == pytest.approx(np.mean(partial_means))
    assert values["partial"]["scores"]["d3"] == [0.88, 0.89]
    assert values["lora"]["complete"] is False and values["lora"]["probability_of_improvement"] is None
    csv_text = invoke("leaderboard", "--results-dir", results, "--across", "datasets", "--format", "csv").output
    assert csv_text.splitlines()[0].startswith("backbone,strategy,tasks,")


def test_cli_across_errors_are_one_line(results, tmp_path):
    from conftest import one_error_line

    assert "choose --vs from" in one_error_line(invoke("leaderboard", "--results-dir", results, "--across",
                                                       "datasets", "--vs", "nope"))
    assert "--across backbones --dataset d1" in one_error_line(invoke(
        "leaderboard", "--results-dir", results, "--across", "datasets", "--dataset", "d1"))
    assert "one backbone (b)" in one_error_line(invoke("leaderboard", "--results-dir", results, "--across",
                                                       "backbones"))
    assert "leave out --columns" in one_error_line(invoke("leaderboard", "--results-dir", results, "--across",
                                                          "datasets", "--columns", "test"))
    result = invoke("leaderboard", "--results-dir", results, "--across", "tasks")
    assert result.exit_code == 2 and "datasets" in result.output and "cells" in result.output


def test_cli_across_without_scipy_names_the_report_extra(results, monkeypatch):
    from conftest import one_error_line

    monkeypatch.setitem(sys.modules, "scipy", None)
    line = one_error_line(invoke("leaderboard", "--results-dir", results, "--across", "datasets"))
    assert "needs scipy" in line and str(Extra("report")).split(" (")[0] in line and "[report]" in line


# ---------------------------------------------------------------------------------------------------- report
def _report(records, **kwargs):
    pytest.importorskip("matplotlib", reason="the report extra")
    from tlbench.plugins.report_sections import BUILTIN_SECTIONS
    from tlbench.report import render_report

    return render_report(records, BUILTIN_SECTIONS, **kwargs)


def _across_fragment(page):
    match = re.search(r'<section class="section" data-section="across".*?</section>', page, re.S)
    return match.group(0) if match else None


def test_report_has_a_cross_task_section_with_the_table_and_the_diagram():
    pytest.importorskip("scikit_posthocs", reason="the report extra")
    page = _report(records_of(SCORES))
    assert '<h2 id="across-tasks">Across tasks</h2>' in page and 'href="#across-tasks"' in page
    fragment = _across_fragment(page)
    assert '<table class="across">' in fragment and "<td>full</td><td>3/3</td>" in fragment
    assert "3 tasks (dataset / backbone cells): d1 / b, d2 / b, d3 / b" in fragment
    image = re.search(r'<img alt="Critical-difference diagram[^"]*" src="data:image/svg\+xml;base64,([^"]+)"',
                      fragment)
    assert image and base64.b64decode(image.group(1)).startswith(b"<?xml")
    means = np.array([[np.mean(SCORES[d][s]) for s in ("full", "partial", "frozen", "scratch")] for d in SCORES])
    expected = scipy_stats.friedmanchisquare(*means.T)
    assert f"chi-square {expected.statistic:.2f}, p = {expected.pvalue:.3g}" in fragment
    assert f"CD = {stats.critical_difference(4, 3):.2f}" in fragment
    assert page.index('id="across-tasks"') > page.index('<h2 id="d3">'), "after the datasets"
    for dataset in SCORES:  # the per-dataset sections are all still there
        assert f'id="{dataset}-leaderboard"' in page


def test_report_of_a_vary_study_over_two_datasets_uses_the_default_reference_rule():
    # a full per training size: --reference full names two configurations; the report must not stop
    pytest.importorskip("scikit_posthocs", reason="the report extra")
    records = [record(strategy, seed, acc + 0.05 * (size == 300) + 0.01 * seed, dataset=d,
                      data={"train_size": size})
               for d in ("d1", "d2") for size in (100, 300) for seed in range(2)
               for strategy, acc in (("full", 0.7), ("frozen", 0.6))]
    fragment = _across_fragment(_report(records, reference="full"))
    assert fragment and "<td>full @ data.train_size=300</td>" in fragment
    assert "reference full @ data.train_size=300" in fragment, "several fulls: the best-ranked is the reference"


def test_report_by_default_falls_back_as_the_leaderboard_does_and_keeps_an_explicit_reference():
    # full misses d2: without --reference the report's P(better) is against the best-ranked strategy, as
    # `tlbench leaderboard --across` does; `--reference full` given by hand stays full (no P(better)).
    pytest.importorskip("scikit_posthocs", reason="the report extra")
    scores = {d: {k: v for k, v in s.items() if not (d == "d2" and k == "full")} for d, s in SCORES.items()}
    scores["d3"]["partial"] = [0.88, 0.89, 0.885]
    default = _report(records_of(scores))
    fragment = _across_fragment(default)
    assert "reference partial" in fragment and "full misses d2 / b: the reference is the best-ranked" in fragment
    assert "Paired comparisons against <code>full</code>." in default, "d1 and d3 still compare with full"
    explicit = _across_fragment(_report(records_of(scores), reference="full"))
    assert "reference partial" not in explicit and "no probability of improvement over it" in explicit


def test_report_without_full_records_renders_with_no_paired_comparison_and_says_so():
    # `tlbench run -s frozen -s scratch`, then `tlbench report`: no error; the header says how to choose one
    scores = {d: {k: v for k, v in s.items() if k in ("frozen", "scratch")} for d, s in SCORES.items()}
    page = _report(records_of(scores))
    assert "No paired comparisons: no dataset has records of full" in page and "--reference STRATEGY" in page
    assert 'id="d1-leaderboard"' in page
    with pytest.raises(tlbench.UsageError, match="no records of strategy 'full' to compare with"):
        _report(records_of(scores), reference="full")
    assert "Paired comparisons against <code>frozen</code>." in _report(records_of(scores), reference="frozen")


def test_report_without_cross_task_section_for_one_task_and_says_why_no_diagram_for_two_strategies():
    page = _report(records_of({"d1": SCORES["d1"]}))
    assert _across_fragment(page) is None and "Across tasks" not in page
    two = _report(records_of({d: {s: SCORES[d][s] for s in ("full", "frozen")} for d in SCORES}))
    fragment = _across_fragment(two)
    assert '<table class="across">' in fragment and "<img" not in fragment
    assert "No critical-difference diagram: it needs 3 or more strategies" in fragment


def test_report_without_scikit_posthocs_keeps_the_table_and_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "scikit_posthocs", None)
    page = _report(records_of(SCORES))
    fragment = _across_fragment(page)
    assert '<table class="across">' in fragment and "<img" not in fragment and "Friedman test" in fragment
    notes = [n for n in re.findall(r'<p class="note">([^<]*)</p>', fragment) if "scikit-posthocs" in n]
    assert len(notes) == 1 and "needs scikit-posthocs, which is not installed" in notes[0]
    assert str(Extra("report")).split(" (")[0].replace("'", "&#x27;") in notes[0]
    assert 'id="d1-means"' in page, "the rest of the report renders"


def test_report_without_scipy_leaves_the_cross_task_statistics_out_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    page = _report(records_of(SCORES))
    fragment = _across_fragment(page)
    assert "<table" not in fragment and "need scipy, which is not installed" in fragment
    assert 'id="d2-leaderboard"' in page
