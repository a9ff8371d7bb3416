"""Executors: the same grid gives the same numbers through local, process, Ray and submitit; crashes and killed
workers lose nothing; counts and exit codes are the same whichever executor ran the grid."""
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from tlbench import RunSpec, run_grid
from tlbench.grid import Reporter
from tlbench.jobs import TrialJob, WorkerRefused, code_versions, describe_mismatch, partition, run_job
from tlbench.types import UsageError

SETTINGS = ["epochs=2", "data.train_size=64", "full.lr=0.01", "frozen.head_lr=0.03"]


class Lines(Reporter):
    """Collects what the CLI would print, to compare executors line for line."""

    def __init__(self):
        self.finished = []

    def trial_finished(self, record):
        self.finished.append((record.key, record.status))


def grid(tiny_backbone, results, executor, strategies=("frozen", "full"), seeds=1, settings=(), **kwargs):
    reporter = Lines()
    spec = RunSpec(strategies=strategies, backbones=[tiny_backbone], datasets=["synthetic"], seeds=seeds,
                   settings=[*SETTINGS, *settings], results_dir=results, executor=executor, device="cpu",
                   progress="off", **kwargs)
    result = run_grid(spec, reporter=reporter)
    return result, reporter


def measured(record):
    m = record.metrics
    return (m.val_top1, m.test_top1, m.best_epoch, m.epochs, [h["val_top1"] for h in m.history],
            [round(h["train_loss"], 4) for h in m.history])


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (starting one takes seconds)."""
    ray = pytest.importorskip("ray", reason="pip install 'tlbench[ray]'")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread(monkeypatch):
    """In-process trials with one torch thread, like each worker of the other executors here, so every executor
    computes with the same reduction order and the numbers can be compared exactly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_same_grid_same_numbers_through_every_executor(tmp_path, tiny_backbone, ray_cluster, one_thread):
    pytest.importorskip("submitit", reason="pip install 'tlbench[slurm]'")
    runs = {
        "local": grid(tiny_backbone, tmp_path / "local", "local"),
        "process": grid(tiny_backbone, tmp_path / "process", "process",
                        settings=["executor.workers=2", "executor.threads_per_worker=1"]),
        "ray": grid(tiny_backbone, tmp_path / "ray", "ray", settings=["executor.workers=2"]),
        "slurm": grid(tiny_backbone, tmp_path / "slurm", "slurm",
                      settings=["executor.cluster=local", f"executor.folder={tmp_path / 'submitit'}",
                                "executor.poll_s=0.2"]),
    }
    reference = {r.key: measured(r) for r in runs["local"][0].records}
    assert len(reference) == 2
    for name, (result, lines) in runs.items():
        assert result.exit_code == 0 and len(result.ok) == 2 and not result.failed and not result.missing, name
        assert sorted(lines.finished) == sorted((key, "ok") for key in reference), name
        assert {r.key: measured(r) for r in result.records} == reference, f"{name} computed other numbers"
        for record in result.records:
            assert record.executor["name"] == name and record.executor["pid"] > 0
            assert record.schema == 2 and record.environment["tlbench"]
        files = sorted(p.name for p in (tmp_path / name).iterdir())
        assert files == sorted(f"{key}.json" for key in reference), f"{name}: only the driver writes, once"
    process_pids = {r.executor["pid"] for r in runs["process"][0].records}
    assert os.getpid() not in process_pids and len(process_pids) == 2, "two fresh worker processes"
    # the CPU peak memory is measured in each worker against its own baseline after imports
    for record in runs["process"][0].records:
        memory = record.metrics.peak_memory
        assert memory["kind"] == "cpu-rss" and memory["baseline_mib"] > 0 and record.metrics.peak_memory_mib > 0


ABORTING_PLUGIN = """
    import os
    from tlbench import Strategy, TrainPlan, hookimpl

    class Aborts(Strategy):
        name = "aborts"
        description = "kills its own process during training (os.abort), as a segfaulting extension would"
        def plan(self, group_names, hparams):
            return TrainPlan({g: 1e-3 for g in group_names}, "train", loss_term=lambda ctx: os.abort())

    @hookimpl
    def register_strategies(register):
        register(Aborts)
"""


def install_plugin(site, module, source):
    info = site / f"{module}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[tlbench]\n{module} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


def test_a_crashing_trial_under_process_is_a_failed_record_and_the_grid_goes_on(tmp_path, tiny_backbone,
                                                                                monkeypatch):
    site = tmp_path / "site"
    install_plugin(site, "xyz_aborts", ABORTING_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("TLBENCH_DISABLE_PLUGINS")
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "tlbench.cli", "run", "-q", "-s", "frozen", "-s", "aborts", "-s", "full", "-b",
            tiny_backbone, "-d", "synthetic", "--executor", "process", "--results-dir", str(results),
            *[word for s in SETTINGS for word in ("--set", s)]]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1, done.stderr
    assert "tlbench: 2 ok, 1 failed, 0 skipped" in done.stderr, done.stderr
    records = {r["trial"]["strategy"]: r for r in map(json.loads, map(Path.read_text, results.glob("*.json")))}
    assert set(records) == {"frozen", "aborts", "full"}
    assert records["aborts"]["status"] == "failed"
    assert "SIGABRT" in records["aborts"]["error"] and "trial lost" in records["aborts"]["error"]
    assert records["frozen"]["status"] == records["full"]["status"] == "ok"
    # the trials after the crash ran in a fresh process
    assert records["full"]["executor"]["pid"] != records["frozen"]["executor"]["pid"]
    failed_line = next(line for line in done.stderr.splitlines() if line.strip().startswith("FAILED"))
    assert "aborts" in failed_line and "SIGABRT" in failed_line


def _actor_running_a_trial():
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if command.startswith("ray::TrialActor.run"):
                return int(entry.name)
    return None


def test_killing_a_ray_worker_mid_trial_loses_nothing(tmp_path, tiny_backbone, ray_cluster):
    killed = []

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            pid = _actor_running_a_trial()
            if pid:
                time.sleep(0.3)  # well inside the trial
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result, lines = grid(tiny_backbone, tmp_path / "r", "ray", strategies=("full",), seeds=3,
                         settings=["epochs=6", "executor.workers=2"])
    thread.join(timeout=5)
    assert killed, "no actor was seen running a trial"
    assert result.exit_code == 0 and len(result.ok) == 3 and not result.failed, [r.error for r in result.failed]
    attempts = sorted(r.executor["attempt"] for r in result.records)
    assert attempts == [1, 1, 2], "the killed actor's trial was retried once, on a fresh actor"
    assert killed[0] not in {r.executor["pid"] for r in result.records}
    assert len(lines.finished) == 3


def test_worker_refuses_jobs_of_other_code_with_one_line(tmp_path, tiny_backbone):
    mine = code_versions(third_party_plugins=False)
    assert describe_mismatch(mine, mine) is None
    other = {**mine, "tlbench": "9.9.9"}
    assert describe_mismatch(other, mine) == f"tlbench {mine['tlbench']} here, 9.9.9 on the driver"
    plugin = {**mine, "plugins": {**mine["plugins"], "xyz-extra": "1.0"}}
    assert "plugin 'xyz-extra' is not installed here but version 1.0 on the driver" in describe_mismatch(plugin, mine)
    (trial,) = _trials(tiny_backbone)
    job = TrialJob(trial=trial.to_record(), device="cpu", versions=other, third_party_plugins=False)
    with pytest.raises(WorkerRefused, match="install the same tlbench and plugin versions") as caught:
        run_job(job)
    assert "\n" not in str(caught.value)


def _trials(tiny_backbone):
    from tlbench.plan import build_trials, parse_overrides
    from tlbench.registry import Plugins

    plugins = Plugins(load_third_party=False)
    return build_trials(datasets=[("synthetic", plugins.datasets.get("synthetic"))], backbones=[tiny_backbone],
                        strategies=[("frozen", plugins.strategies.get("frozen"))], seeds=[0],
                        overrides=parse_overrides(SETTINGS), registered_strategies=plugins.strategies.names())


def test_a_trial_job_is_plain_data(tiny_backbone):
    (trial,) = _trials(tiny_backbone)
    job = TrialJob(trial=trial.to_record(), device=None, versions=code_versions(third_party_plugins=False),
                   third_party_plugins=False, command="tlbench run", cache_dir="/tmp/c", progress="lines",
                   executor={"name": "x", "options": {"workers": 2}})
    assert TrialJob.from_json_dict(json.loads(json.dumps(job.to_json_dict()))) == job
    assert pickle.loads(pickle.dumps(job)) == job
    assert job.to_trial() == trial and job.key == trial.key
    tampered = TrialJob(trial={**trial.to_record(), "seed": 5}, device=None, versions={})
    with pytest.raises(WorkerRefused, match="describes trial"):
        tampered.to_trial()


def test_partition_keeps_groups_together_and_fills_the_workers():
    def job(dataset, backbone, i):
        return TrialJob(trial={"key": f"{i:020x}", "dataset": dataset, "backbone": backbone, "data": {}},
                        device=None, versions={})
    jobs = [job("d", "a", i) for i in range(5)] + [job("d", "b", i) for i in range(5, 7)]
    assert [[j.key for j in b] for b in partition(jobs, 1)] == [[j.key for j in jobs[:5]], [j.key for j in jobs[5:]]]
    batches = partition(jobs, 4)
    assert len(batches) == 4 and sorted(j.key for b in batches for j in b) == sorted(j.key for j in jobs)
    assert all(len({j.group for j in b}) == 1 for b in batches), "a batch never mixes groups"
    assert len(partition(jobs[:1], 8)) == 1


@pytest.mark.parametrize("setting, message", [
    ("executor.wrokers=2", "did you mean 'workers'"),
    ("executor.workers=0", "executor.workers must be >= 1"),
    ("executor.workers=two", "executor.workers must be an integer"),
    ("executor.=2", "is malformed.*executor.workers=2"),
])
def test_bad_executor_options_are_refused_before_anything_runs(tmp_path, tiny_backbone, setting, message):
    with pytest.raises(UsageError, match=message):
        grid(tiny_backbone, tmp_path / "r", "process", settings=[setting])
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("executor, settings", [
    ("local", []), ("process", ["executor.threads_per_worker=1"]), ("ray", ["executor.workers=2"]),
    ("slurm", ["executor.cluster=local", "executor.poll_s=0.2"]),
])
def test_counts_and_exit_code_are_the_same_for_every_executor(tmp_path, tiny_backbone, ray_cluster, executor,
                                                             settings):
    if executor == "slurm":
        pytest.importorskip("submitit", reason="pip install 'tlbench[slurm]'")
        settings = [*settings, f"executor.folder={tmp_path / 'submitit'}"]
    results = tmp_path / "r"
    first, lines = grid(tiny_backbone, results, executor, settings=[*settings, "full.lr=1e6"])  # full diverges
    assert first.exit_code == 1 and [r.trial.strategy for r in first.ok] == ["frozen"]
    assert [(r.trial.strategy, r.status) for r in first.failed] == [("full", "diverged")]
    assert len(lines.finished) == 2 and first.skipped == 0 and not first.missing
    again, lines = grid(tiny_backbone, results, executor, settings=[*settings, "full.lr=1e6"])
    assert again.exit_code == 1, "a grid with a failed cell is not all good, even when nothing ran"
    assert again.skipped == 2 and not again.ok and not again.failed and len(again.failed_before) == 1
    assert lines.finished == []


def test_ctrl_c_under_ray_cancels_and_keeps_every_finished_record(tmp_path, tiny_backbone, ray_cluster):
    """A second driver joins the session's running cluster through RAY_ADDRESS, as on a real cluster; SIGINT
    after the first record: exit 130, the finished records whole, no claim left, no actor left running."""
    from tlbench.records import Record

    results = tmp_path / "results"
    address = ray_cluster.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": address, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "tlbench.cli", "run", "-q", "-s", "frozen", "-s", "full", "-b", tiny_backbone,
            "-d", "synthetic", "--seeds", "2", "--executor", "ray", "--workers", "2", "--results-dir",
            str(results), "--set", "epochs=40", "--set", "data.train_size=64", "--set", "frozen.epochs=1"]
    # SIGINT as in a terminal: a test run from a background job (`cmd &` in a script) inherits SIGINT ignored,
    # and Python keeps an ignored SIGINT ignored, so Ctrl-C would never reach the child
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not list(results.glob("*.json")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, stderr
    assert "stopped by SIGINT" in stderr and "resume with: tlbench run" in stderr and "Traceback" not in stderr
    kept = list(results.glob("*.json"))
    assert 1 <= len(kept) < 4 and all(Record.from_json(p.read_text()).ok for p in kept)
    assert not list(results.glob("*.lock"))
    deadline = time.monotonic() + 30
    while _actor_running_a_trial() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _actor_running_a_trial() is None, "the cancelled trials' actors are gone"


def test_sigterm_to_a_ray_driver_ends_with_the_summary_not_rays_crash_output(tmp_path, tiny_backbone, ray_cluster):
    """ray.init installs a SIGTERM handler that calls sys.exit (Ray's own crash output, no summary): the ray
    executor puts tlbench's back, so SIGTERM stops the grid like Ctrl-C, with exit 143 and the resume command."""
    results = tmp_path / "results"
    address = ray_cluster.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": address, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "tlbench.cli", "run", "-q", "-s", "frozen", "-s", "full", "-b", tiny_backbone,
            "-d", "synthetic", "--seeds", "2", "--executor", "ray", "--workers", "2", "--results-dir",
            str(results), "--set", "epochs=40", "--set", "data.train_size=64", "--set", "frozen.epochs=1"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 300
    while not list(results.glob("*.json")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "resume with: tlbench run" in stderr and "Traceback" not in stderr
    assert not list(results.glob("*.lock"))


def test_a_grid_whose_worker_refuses_stops_with_one_line_and_records_nothing(tmp_path, tiny_backbone,
                                                                            monkeypatch):
    from click.testing import CliRunner

    import tlbench.grid
    from tlbench.cli import cli

    driver = code_versions(third_party_plugins=False)
    monkeypatch.setattr(tlbench.grid, "code_versions", lambda plugins: {**driver, "tlbench": "0.0.1"})
    results = tmp_path / "results"
    done = CliRunner().invoke(cli, ["run", "-q", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic",
                                    "--results-dir", str(results), *[w for s in SETTINGS for w in ("--set", s)]])
    assert done.exit_code == 1, done.output
    stopped = [line for line in done.stderr.splitlines() if line.startswith("tlbench: stopped: ")]
    assert len(stopped) == 1 and "refuses trial" in stopped[0] and "0.0.1 on the driver" in stopped[0]
    assert "finished records are kept; resume with: " in stopped[0]
    assert "Traceback" not in done.output
    assert not list(results.glob("*.json")) and not list(results.glob("*.lock"))
