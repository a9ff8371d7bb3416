"""Reliability: crash-safe resumable runs, isolated failures, clear errors for bad input, reproducible seeds.

Everything runs on the tiny timm test backbone and the synthetic dataset, so the whole file takes well under three
minutes on two CPU cores. Crash tests run `tlbench run` in real child processes and SIGKILL them at chosen points;
the deterministic points are reached by wrapping functions *inside the child* (a print + sleep before the record's
rename, or before a trial's training), so the parent knows exactly where the kill lands.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tlbench.cli import cli
from tlbench.store import SCHEMA_VERSION, ResultStore

GRID_STRATEGIES = ("full", "scratch", "frozen")  # slowest first, so a kill after the first record leaves work to do
OK_LINE = re.compile(r"^\s+ok\s{2}", re.MULTILINE)


# ------------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process trials use one thread, like the child processes (OMP_NUM_THREADS=1): fast on a shared 2-core
    machine, and the same arithmetic in and out of process."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment (the autouse fixtures set a private TLBENCH_CACHE_DIR and TLBENCH_DISABLE_PLUGINS)."""
    env = dict(os.environ)
    env["TLBENCH_DISABLE_PLUGINS"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # two children on two cores: oversubscribed OpenMP threads slow trials ~100x
    assert env.get("TLBENCH_CACHE_DIR"), "conftest's autouse fixture sets a private cache dir"
    env.update(extra)
    return env


def tlbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "tlbench.cli", *args]


def grid_args(backbone: str, results: Path, strategies=GRID_STRATEGIES, seeds: int = 2, epochs: int = 2) -> list[str]:
    args = ["run", "-q", "-b", backbone, "-d", "synthetic", "--seeds", str(seeds), "--epochs", str(epochs),
            "--results-dir", str(results)]
    for name in strategies:
        args += ["-s", name]
    return args


def snapshot(results: Path) -> dict[str, tuple[bytes, int]]:
    """Every record file's bytes and mtime: a skipped trial leaves both untouched."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in results.glob("*.json")}


def complete_records(results: Path, epochs: int = 2) -> dict[str, dict]:
    """Every *.json must be a whole, ok record (a partial file would fail to parse or miss fields)."""
    records = {}
    for path in sorted(results.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        assert record["schema"] == SCHEMA_VERSION and record["key"] == path.stem, path
        assert record["status"] == "ok", (path, record.get("error"))
        metrics = record["metrics"]
        assert 0.0 <= metrics["val_top1"] <= 1.0 and 0.0 <= metrics["test_top1"] <= 1.0, path
        assert metrics["epochs"] == epochs and len(metrics["history"]) == epochs, path
        records[path.stem] = record
    return records


def assert_unchanged(before: dict[str, tuple[bytes, int]], results: Path) -> None:
    after = snapshot(results)
    for name, (content, mtime) in before.items():
        assert name in after, f"{name} vanished"
        assert after[name][0] == content, f"{name} was rewritten (a finished trial was re-run)"
        assert after[name][1] == mtime, f"{name} was touched (a finished trial was re-run)"


def make_plugin(site: Path, dist: str, entry_point: str, module: str, source: str) -> None:
    """A third-party plugin as pip would leave it: a module plus a dist-info folder with a `tlbench` entry point;
    importlib.metadata finds it on sys.path / PYTHONPATH."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[tlbench]\n{entry_point} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


# A `tlbench run` child that first wraps os.replace (temp file -> record rename in the results dir) or the phase runner's
# fit(), printing a marker and sleeping at the N-th call, so the parent can SIGKILL it at exactly that point.
KILLABLE_CHILD = r"""
import os, sys, time
import tlbench.cli, tlbench.phases
mode, at, results = os.environ["KILL_MODE"], int(os.environ["KILL_AT"]), os.environ["KILL_RESULTS"]
calls = [0]
if mode == "replace":
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        src, dst = os.fspath(src), os.fspath(dst)
        if (os.path.dirname(os.path.abspath(dst)) == os.path.abspath(results) and dst.endswith(".json")
                and os.path.basename(src).startswith(".") and src.endswith(".tmp")):
            calls[0] += 1
            if calls[0] == at:
                print("MARK", dst, flush=True)
                time.sleep(600)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
elif mode == "fit":
    real_fit = tlbench.phases.fit
    def fit(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            print("MARK fit", flush=True)
            time.sleep(600)
        return real_fit(*args, **kwargs)
    tlbench.phases.fit = fit
tlbench.cli.main()
"""


def run_until_marker_then_kill(args: list[str], results: Path, mode: str, at: int, log: Path) -> str:
    env = child_env(KILL_MODE=mode, KILL_AT=str(at), KILL_RESULTS=str(results))
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE_CHILD, *args], stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env)
    try:
        line = ""
        while not line.startswith("MARK"):
            line = proc.stdout.readline()
            assert line, f"child ended without reaching the kill point:\n{log.read_text()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        return line.split(" ", 1)[1].strip()
    finally:
        proc.kill()
        proc.stdout.close()


# --------------------------------------------------------------------------------- 1. kill -9 and resume
def test_kill_minus_9_at_any_point_then_resume_completes_the_grid_without_rerunning(tmp_path, tiny_backbone):
    results = tmp_path / "results"
    args = grid_args(tiny_backbone, results)  # 3 strategies x 2 seeds = 6 trials
    total = len(GRID_STRATEGIES) * 2

    # (a) a plain run, killed as soon as the first record appears
    with open(tmp_path / "a.log", "w") as err:
        proc = subprocess.Popen(tlbench(*args), stdout=subprocess.DEVNULL, stderr=err, env=child_env())
    try:
        deadline = time.monotonic() + 120
        while not list(results.glob("*.json")):
            assert proc.poll() is None, f"run ended before any record appeared:\n{(tmp_path / 'a.log').read_text()}"
            assert time.monotonic() < deadline, "no record within 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    done_a = snapshot(results)
    complete_records(results)
    assert 1 <= len(done_a) < total

    # (b) killed DURING a record write: the temp file is complete and fsynced, the rename has not happened
    record_path = Path(run_until_marker_then_kill(args, results, "replace", 1, tmp_path / "b.log"))
    killed_key = record_path.stem
    assert not record_path.exists(), "the record must not exist before its rename"
    leftovers = list(results.glob(f".{killed_key}.json.*.tmp"))
    assert len(leftovers) == 1, "the temp file of the interrupted write stays behind"
    assert json.loads(leftovers[0].read_text())["key"] == killed_key  # whole content, just never renamed
    assert f"{killed_key}.json" not in done_a
    assert snapshot(results) == done_a, "nothing but the temp file may change"
    complete_records(results)

    # (c) killed mid-trial (second trial's training started; its claim's lock file is left behind)
    run_until_marker_then_kill(args, results, "fit", 2, tmp_path / "c.log")
    assert f"{len(done_a)} already done" in (tmp_path / "c.log").read_text(), "the leftover temp file is no record"
    assert_unchanged(done_a, results)
    done_c = snapshot(results)
    assert set(done_c) - set(done_a) == {f"{killed_key}.json"}, "the interrupted write's trial is re-run first"
    complete_records(results)
    assert list(results.glob("*.lock")), "SIGKILL leaves the claim's lock file (its flock died with the process)"

    # (d) the same command again finishes the grid, skipping every trial finished before a kill
    final = subprocess.run(tlbench(*args), capture_output=True, text=True, env=child_env(), timeout=300)
    assert final.returncode == 0, final.stderr
    already = len(done_c)
    assert f"{total} trial(s), {already} already done, {total - already} to run" in final.stderr
    assert len(OK_LINE.findall(final.stderr)) == total - already, final.stderr
    assert f"{total - already} ok, 0 failed, {already} skipped (done before), 0 done by another process" in final.stderr
    assert_unchanged(done_c, results)
    records = complete_records(results)
    assert len(records) == total
    assert sorted((r["trial"]["strategy"], r["trial"]["seed"]) for r in records.values()) == sorted(
        (s, seed) for s in GRID_STRATEGIES for seed in (0, 1)), "exactly one ok record per trial"
    # the leftovers of killed runs (stale lock files, the temp file of the interrupted write) are cleaned up
    assert not list(results.glob("*.lock")) and not list(results.glob(".*.tmp")), sorted(results.iterdir())

    board = CliRunner().invoke(cli, ["leaderboard", "--results-dir", str(results), "--format", "json"])
    assert board.exit_code == 0, board.output
    rows = json.loads(board.stdout)
    assert len(rows) == len(GRID_STRATEGIES) and all(row["n"] == 2 for row in rows)


# --------------------------------------------------------------------------------------- 2. failure isolation
BROKEN_STRATEGIES = """
    import os
    from tlbench import Strategy, TrainPlan, hookimpl

    class Boom(Strategy):
        name = "boom"
        description = "plan raises (unless XYZ_BOOM=0)"
        def plan(self, group_names, hparams):
            if os.environ.get("XYZ_BOOM", "1") != "0":
                raise RuntimeError("xyz plan exploded")
            return TrainPlan({"head": 1e-3}, "frozen")

    class OutOfMemory(Strategy):
        name = "oom"
        description = "plan raises MemoryError"
        def plan(self, group_names, hparams):
            raise MemoryError("xyz cannot allocate 1 TiB")

    class HugeLR(Strategy):
        name = "huge-lr"
        description = "learning rate 1e6: the loss diverges"
        def plan(self, group_names, hparams):
            return TrainPlan({g: 1e6 for g in group_names}, "train")

    @hookimpl
    def register_strategies(register):
        for strategy in (Boom, OutOfMemory, HugeLR):
            register(strategy)
"""


def test_failing_trials_are_recorded_and_isolated_and_retried_on_request(tmp_path, tiny_backbone, monkeypatch):
    site = tmp_path / "site"
    make_plugin(site, "xyz_broken", "xyz-broken", "xyz_broken_strategies", BROKEN_STRATEGIES)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("TLBENCH_DISABLE_PLUGINS")
    results = tmp_path / "results"
    # failures in the middle of the grid: the ok trials after them must still run
    args = grid_args(tiny_backbone, results, strategies=("frozen", "boom", "oom", "huge-lr", "full"), seeds=1)

    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 1, first.output
    by_strategy = {r["trial"]["strategy"]: r for r in map(json.loads, map(Path.read_text, results.glob("*.json")))}
    assert sorted(by_strategy) == ["boom", "frozen", "full", "huge-lr", "oom"]
    assert by_strategy["frozen"]["status"] == by_strategy["full"]["status"] == "ok"
    assert by_strategy["boom"]["status"] == "failed"
    assert by_strategy["boom"]["error"] == "RuntimeError: xyz plan exploded"
    assert "xyz plan exploded" in by_strategy["boom"]["traceback"]
    assert by_strategy["oom"]["status"] == "failed"
    assert "out of memory" in by_strategy["oom"]["error"] and "xyz cannot allocate" in by_strategy["oom"]["error"]
    assert by_strategy["huge-lr"]["status"] == "diverged"
    assert "lower the learning rate" in by_strategy["huge-lr"]["error"]
    for name in ("boom", "oom", "huge-lr"):  # the summary lists every failure with its error
        status = by_strategy[name]["status"]
        summary = [line for line in first.stderr.splitlines() if line.startswith(f"  {status}: {name}[")]
        assert len(summary) == 1 and by_strategy[name]["error"] in summary[0], first.stderr
    assert "2 ok, 3 failed, 0 skipped" in first.stderr

    board = CliRunner().invoke(cli, ["leaderboard", "--results-dir", str(results), "--format", "plain"])
    assert board.exit_code == 0, board.output
    line_of = {name: next(line for line in board.stdout.splitlines() if f" {name}[" in line) for name in by_strategy}
    assert "FAILED" in line_of["boom"] and "1 failed" in line_of["boom"]
    assert "FAILED" in line_of["oom"] and "1 failed" in line_of["oom"]
    assert "FAILED" in line_of["huge-lr"] and "1 diverged" in line_of["huge-lr"]
    assert "FAILED" not in line_of["frozen"] and line_of["frozen"].rstrip().endswith("ok")

    # A second run skips failed trials like finished ones, but the grid is still not all good: it lists them
    # again (pointing at --retry-failed) and exits 1, so a CI loop cannot mistake it for success.
    before = snapshot(results)
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 1, second.output
    assert "--retry-failed re-runs it" in second.stderr
    assert "5 already done, 0 to run" in second.stderr and "0 ok, 0 failed, 5 skipped" in second.stderr
    assert "1 failed" in second.stdout and "1 diverged" in second.stdout
    assert_unchanged(before, results)

    # --retry-failed re-runs exactly the failed trials; the fixed one now succeeds, the others fail again
    monkeypatch.setenv("XYZ_BOOM", "0")
    third = CliRunner().invoke(cli, [*args, "--retry-failed"])
    assert third.exit_code == 1, third.output
    assert "5 trial(s), 2 already done, 3 to run" in third.stderr
    assert "1 ok, 2 failed, 2 skipped" in third.stderr
    ok_keys = {f"{by_strategy[s]['key']}.json" for s in ("frozen", "full")}
    assert_unchanged({k: v for k, v in before.items() if k in ok_keys}, results)
    after = snapshot(results)
    for name in ("boom", "oom", "huge-lr"):
        assert after[f"{by_strategy[name]['key']}.json"][1] != before[f"{by_strategy[name]['key']}.json"][1]
    records = map(json.loads, map(Path.read_text, results.glob("*.json")))
    statuses = {r["trial"]["strategy"]: r["status"] for r in records}
    assert statuses == {"frozen": "ok", "full": "ok", "boom": "ok", "oom": "failed", "huge-lr": "diverged"}


# ------------------------------------------------------------------------------ 3. two processes, one directory
BARRIER_CHILD = r"""
import os, sys, time
import tlbench.cli, tlbench.runner  # the slow imports happen before the barrier
open(os.environ["READY_FILE"], "w").close()
while not os.path.exists(os.environ["GO_FILE"]):
    time.sleep(0.005)
tlbench.cli.main()
"""


def test_two_processes_on_one_results_dir_run_each_trial_once(tmp_path, tiny_backbone):
    results = tmp_path / "results"
    args = grid_args(tiny_backbone, results, strategies=("full", "scratch"), seeds=2)  # 4 trials, ~1 s each
    go = tmp_path / "go"
    procs, logs = [], []
    for i in range(2):
        logs.append(tmp_path / f"p{i}.log")
        with open(logs[-1], "w") as err:
            procs.append(subprocess.Popen([sys.executable, "-c", BARRIER_CHILD, *args], stdout=subprocess.DEVNULL,
                                          stderr=err, env=child_env(READY_FILE=str(tmp_path / f"ready{i}"),
                                                                    GO_FILE=str(go))))
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        go.touch()  # both start the same grid at the same moment
        for proc in procs:
            proc.wait(timeout=300)
    finally:
        for proc in procs:
            proc.kill()
    outputs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum(len(OK_LINE.findall(out)) for out in outputs) == 4, "each trial runs once over both processes"
    summaries = [re.search(r"tlbench: (\d+) ok, (\d+) failed, (\d+) skipped \(done before\), (\d+) done by "
                           r"another process", out) for out in outputs]
    assert all(summaries), outputs
    assert sum(int(s.group(1)) for s in summaries) == 4
    for summary in summaries:  # a trial is run here, skipped as done, or done by the other process (busy, then
        assert int(summary.group(1)) + int(summary.group(3)) + int(summary.group(4)) == 4  # waited for)
    records = complete_records(results)
    assert len(records) == 4
    assert sorted((r["trial"]["strategy"], r["trial"]["seed"]) for r in records.values()) == [
        ("full", 0), ("full", 1), ("scratch", 0), ("scratch", 1)]
    assert not list(results.glob("*.lock")) and not list(results.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------ 4. reproducibility
def test_same_command_gives_identical_results_and_rerun_reproduces_a_record(tmp_path, tiny_backbone,
                                                                              fast_settings):
    dirs = [tmp_path / "r1", tmp_path / "r2"]
    commands = [tlbench(*grid_args(tiny_backbone, d, strategies=("full", "frozen"), seeds=2, epochs=3),
                        *fast_settings, "--set", "epochs=3") for d in dirs]
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
             for c in commands]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    first, second = (complete_records(d, epochs=3) for d in dirs)
    assert sorted(first) == sorted(second) and len(first) == 4, "same trials, same keys"

    def outcome(record):
        m = record["metrics"]
        return (m["val_top1"], m["test_top1"], m["best_epoch"], [h["train_loss"] for h in m["history"]],
                [h["val_top1"] for h in m["history"]])

    for key in first:
        assert outcome(first[key]) == outcome(second[key]), first[key]["trial"]["label"]
    # the seeds matter: different seeds of one configuration do not train identically
    full = sorted((r for r in first.values() if r["trial"]["strategy"] == "full"), key=lambda r: r["trial"]["seed"])
    assert outcome(full[0])[3] != outcome(full[1])[3]

    key = full[1]["key"]
    printed = CliRunner().invoke(cli, ["rerun", key[:12], "--results-dir", str(dirs[0]), "--print-only"])
    assert printed.exit_code == 0, printed.output
    words = shlex.split(printed.stdout.strip())
    assert words[:2] == ["tlbench", "run"]
    pairs = set(zip(words, words[1:]))
    for pair in [("-s", "full"), ("-b", tiny_backbone), ("-d", "synthetic"), ("--seed", "1"),
                 ("--results-dir", str(dirs[0])), ("--set", "full.lr=0.01"), ("--set", "full.epochs=3"),
                 ("--set", "full.batch_size=32"), ("--set", "data.train_size=128")]:
        assert pair in pairs, (pair, printed.stdout)
    assert "--force" in words

    record_file = dirs[0] / f"{key}.json"
    mtime = record_file.stat().st_mtime_ns
    rerun = CliRunner().invoke(cli, ["rerun", key, "--results-dir", str(dirs[0])])
    assert rerun.exit_code == 0, rerun.output
    assert record_file.stat().st_mtime_ns != mtime, "--force re-ran the trial into the same record"
    again = complete_records(dirs[0], epochs=3)
    assert sorted(again) == sorted(first), "the rerun has the same trial key: no new record appeared"
    assert outcome(again[key]) == outcome(first[key])


# ------------------------------------------------------------------------------------------------ 5. bad input
def _tiny_images(folder: Path, count: int = 3) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(folder / f"{i}.png")


def _bad_input_cases(tmp_path: Path) -> dict[str, tuple[list[str], dict[str, str], list[str]]]:
    """name -> (arguments replacing the defaults, option overrides, substrings of the one error line)."""
    single = tmp_path / "single"
    _tiny_images(single / "only_class")
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder")
    return {
        "unknown strategy": ([], {"-s": "fozen"}, ["unknown strategy 'fozen'", "did you mean 'frozen'"]),
        "unknown backbone": ([], {"-b": "timmm:resnet18"}, ["unknown backbone 'timmm'", "did you mean 'timm'"]),
        "unknown dataset": ([], {"-d": "synthetik"}, ["unknown dataset 'synthetik'", "did you mean 'synthetic'"]),
        "unknown executor": (["--executor", "lokal"], {}, ["unknown executor 'lokal'", "did you mean 'local'"]),
        "zero learning rate": (["--set", "full.lr=0"], {"-s": "full"},
                               ["full.lr must be a number > 0, got 0", "--set full.lr=<value>"]),
        "zero epochs": ([], {"--epochs": "0"}, ["epochs must be an integer >= 1, got 0", "--set epochs=<value>"]),
        "zero batch size": (["--set", "batch_size=0"], {},
                            ["batch_size must be an integer >= 1, got 0", "--set batch_size=<value>"]),
        "zero seeds": (["--seeds", "0"], {}, ["--seeds must be >= 1, got 0"]),
        "unfreeze beyond the stages": (["--set", "partial.unfreeze=99"], {"-s": "partial"},
                                       ["partial.unfreeze=99 is more than the", "--set partial.unfreeze=<1.."]),
        "unknown protocol key": (["--set", "epochz=3"], {}, ["unknown setting 'epochz'", "did you mean 'epochs'"]),
        "unknown strategy key": (["--set", "frozen.head_lrr=0.1"], {},
                                 ["unknown setting 'frozen.head_lrr'", "did you mean 'head_lr'"]),
        "unknown data key": (["--set", "data.train_sise=10"], {},
                             ["unknown setting 'data.train_sise'", "did you mean 'train_size'"]),
        "imagefolder missing": ([], {"-d": f"imagefolder:{tmp_path / 'missing'}"}, ["does not exist"]),
        "imagefolder is a file": ([], {"-d": f"imagefolder:{a_file}"}, ["is not a directory"]),
        "imagefolder single class": ([], {"-d": f"imagefolder:{single}"},
                                     ["only one class folder ('only_class')", "at least 2 class folders"]),
        "results dir under a file": ([], {"--results-dir": str(a_file / "results")},
                                     ["cannot be created in", "--results-dir"]),
    }


BAD_INPUT_NAMES = ["unknown strategy", "unknown backbone", "unknown dataset", "unknown executor",
                   "zero learning rate", "zero epochs", "zero batch size", "zero seeds", "unfreeze beyond the stages",
                   "unknown protocol key", "unknown strategy key", "unknown data key", "imagefolder missing",
                   "imagefolder is a file", "imagefolder single class", "results dir under a file"]


FOUND_AFTER_DECODING = {"unfreeze beyond the stages"}  # a plan checked against the backbone's groups


def _run_bad(args: list[str]) -> str:
    """Invoke in-process; exit 2, no traceback, stderr is exactly one `Error:` line, nothing on stdout. Returns
    that line."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"one line, nothing else:\n{result.stderr}"
    return lines[0]


@pytest.mark.parametrize("case", BAD_INPUT_NAMES)
def test_bad_input_is_one_clear_line_exit_2_and_writes_nothing(case, tmp_path, tiny_backbone):
    extra, replace, expected = _bad_input_cases(tmp_path)[case]
    results = tmp_path / "results"
    options = {"-s": "frozen", "-b": tiny_backbone, "-d": "synthetic", "--epochs": "1",
               "--results-dir": str(results), **replace}
    args = ["run", "-q", *[word for pair in options.items() for word in pair], *extra]
    line = _run_bad(args)
    for text in expected:
        assert text in line, (text, line)
    assert not results.exists(), "bad input must not create the results directory"
    assert not Path(options["--results-dir"]).exists()
    # docs/cli.md, exit code 2: the pre-run check decodes the data before it can check a plan against the backbone, so only what it
    # finds leaves the decoded-data cache behind; everything else is refused before anything at all is written
    cache = Path(os.environ["TLBENCH_CACHE_DIR"])
    assert cache.exists() == (case in FOUND_AFTER_DECODING), sorted(cache.rglob("*")) if cache.exists() else case


def test_results_dir_that_is_a_file_is_refused_and_left_alone(tmp_path, tiny_backbone):
    blocker = tmp_path / "results"
    blocker.write_text("my notes")
    line = _run_bad(["run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--results-dir", str(blocker)])
    assert str(blocker) in line and "is a file" in line
    assert blocker.read_text() == "my notes"


def test_plugin_with_wrong_hook_signature_is_named(tmp_path, tiny_backbone, monkeypatch):
    site = tmp_path / "site"
    make_plugin(site, "xyz_badsig", "xyz-badsig", "xyz_badsig_plugin", """
        from tlbench import hookimpl

        @hookimpl
        def register_strategies(regster):
            pass
    """)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("TLBENCH_DISABLE_PLUGINS")
    results = tmp_path / "results"
    line = _run_bad(["run", "--all", "-b", tiny_backbone, "-d", "synthetic", "--results-dir", str(results)])
    assert "plugin 'xyz-badsig'" in line and "invalid hook implementation" in line and "regster" in line
    assert "fix the plugin's hook signature or uninstall it" in line
    assert not results.exists()
    # a run that names what it needs is not stopped by another plugin's bug (issue 11)
    ok = CliRunner().invoke(cli, ["run", "-q", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--epochs",
                                  "1", "--results-dir", str(results)])
    assert ok.exit_code == 0, ok.output


# ----------------------------------------------------------------------------- 6. corrupt and foreign files
def test_corrupt_and_foreign_json_are_warned_about_and_skipped(tmp_path, tiny_backbone):
    results = tmp_path / "results"
    args = grid_args(tiny_backbone, results, strategies=("frozen",), seeds=2, epochs=1)
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    records = complete_records(results, epochs=1)
    seed1 = next(k for k, r in records.items() if r["trial"]["seed"] == 1)
    truncated = results / f"{seed1}.json"
    truncated.write_text(truncated.read_text()[:200])  # a half-written record, as a non-atomic writer would leave
    (results / "corrupt.json").write_text('{"key": "abc", "stat')
    (results / "foreign.json").write_text(json.dumps({"name": "some other tool's file"}))
    (results / "notes.txt").write_text("ignored")

    board = CliRunner().invoke(cli, ["leaderboard", "--results-dir", str(results), "--format", "json"])
    assert board.exit_code == 0, board.output
    rows = json.loads(board.stdout)
    assert len(rows) == 1 and rows[0]["n"] == 1, "the readable record is still shown"
    warned = board.stderr.splitlines()
    assert len(warned) == 3 and all(line.startswith("Warning: skipping ") for line in warned), board.stderr
    for path in (results / "corrupt.json", results / "foreign.json", truncated):
        assert any(str(path) in line for line in warned)

    # a real process: the warnings reach the user's stderr with the paths, the run carries on and redoes the
    # trial whose record was unreadable
    rerun = subprocess.run(tlbench(*args), capture_output=True, text=True, env=child_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    for path in (results / "corrupt.json", results / "foreign.json", truncated):
        assert f"skipping {path}" in rerun.stderr, rerun.stderr
    assert "2 trial(s), 1 already done, 1 to run" in rerun.stderr
    assert json.loads(truncated.read_text())["status"] == "ok", "the partial record was replaced by a whole one"
    assert (results / "corrupt.json").exists() and (results / "foreign.json").exists(), "foreign files are kept"
