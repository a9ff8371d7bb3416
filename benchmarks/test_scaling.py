"""Scale-out: one grid of 8 small trials through the local, process (2 workers) and Ray (2 actors) executors, in
one run, as wall-time ratios against local; and each executor's per-trial overhead (worker start-up, plugin
loading, data loading), read from the records. On a 2-core CPU two workers share the cores that one in-process
run uses with two threads, so this measures the executors' overhead, not a speed-up (that needs more machines)."""
from __future__ import annotations

import statistics
import time

import pytest

GRID = dict(strategies=["frozen", "partial", "full", "bitfit"], backbones=["efficientnet_lite0"],
            datasets=["fashion-mnist"], seeds=2,
            settings=["epochs=2", "data.train_size=256", "data.val_size=200", "data.test_size=500"])
EXECUTORS = {"local": [], "process": ["executor.workers=2"], "ray": ["executor.workers=2"]}


def test_executors_wall_time_and_overhead(benchmark, report, tmp_path):
    pytest.importorskip("ray", reason="pip install 'tlbench[ray]'")
    from tlbench import RunSpec, run_grid

    outcomes = {}

    def measure():
        for name, options in EXECUTORS.items():
            start = time.perf_counter()
            result = run_grid(RunSpec(**{**GRID, "settings": GRID["settings"] + options},
                                      results_dir=tmp_path / name, executor=name, device="cpu", progress="off"))
            outcomes[name] = (time.perf_counter() - start, result)
        return outcomes

    benchmark.pedantic(measure, rounds=1, iterations=1)
    local_seconds = outcomes["local"][0]
    accuracy = {}
    for name, (seconds, result) in outcomes.items():
        assert result.exit_code == 0 and len(result.ok) == 8, [r.error for r in result.failed]
        records = {r.key: r for r in result.records}
        accuracy[name] = {k: r.metrics.test_top1 for k, r in records.items()}
        startup = [r.executor.get("worker_startup_s", 0.0) + r.executor.get("dispatch_overhead_s", 0.0)
                   + r.executor.get("ray_init_s", 0.0) for r in records.values()]
        init = [r.executor.get("worker_init_s", 0.0) for r in records.values()]
        data = [r.metrics.time_s.get("data", 0.0) for r in records.values()]
        trial = statistics.fmean(r.metrics.wall_s for r in records.values())
        overhead = (sum(startup) + sum(init) + sum(data)) / len(records)
        report(benchmark, f"{name}_wall", {"seconds": seconds, "ratio_vs_local": seconds / local_seconds,
                                           "startup_s": sum(startup), "plugin_init_s": sum(init),
                                           "data_s": sum(data), "overhead_per_trial_s": overhead,
                                           "mean_trial_s": trial},
               f"[scaling] {name}: grid of 8 trials {seconds:.1f} s wall ({seconds / local_seconds:.2f}x local); "
               f"worker start-up (Ray: cluster start and dispatch) {sum(startup):.1f} s, plugin loading {sum(init):.1f} s, data loading "
               f"{sum(data):.1f} s in all = {overhead:.2f} s per trial; mean trial {trial:.1f} s")
    for name in ("process", "ray"):  # the same trials, the same numbers (threads per worker may differ: 1 point)
        for key, value in accuracy["local"].items():
            assert abs(accuracy[name][key] - value) <= 0.01, (name, key, accuracy[name][key], value)
