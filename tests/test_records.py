"""Typed records: every malformed record is refused with its reason and skipped with one warning line; it never
crashes `run`, `leaderboard` or `rerun`. Copies count once. The driver stops cleanly when it cannot write."""
import copy
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tlbench import RunSpec, run_grid
from tlbench.cli import cli
from tlbench.records import Record, RecordError
from tlbench.store import ResultStore

KEY = "0123456789abcdef0123"


def broken(make_record, path, value, status="ok"):
    """A copy of a valid record with the field at ``path`` (dotted; ``DELETE`` removes it) replaced."""
    raw = copy.deepcopy(make_record(KEY, status=status))
    *parents, last = path.split(".")
    target = raw
    for part in parents:
        target = target[part]
    if value == "DELETE":
        del target[last]
    else:
        target[last] = value
    return raw


MALFORMED = {
    "no trial": ("trial", "DELETE", "trial must be an object"),
    "trial is a string": ("trial", "x", "trial must be an object"),
    "trial is a list": ("trial", [], "trial must be an object"),
    "metrics null on an ok record": ("metrics", None, "metrics must be an object"),
    "metrics a list": ("metrics", [1], "metrics must be an object"),
    "accuracy a string": ("metrics.test_top1", "0.9", "metrics.test_top1 must be a finite number"),
    "accuracy a bool": ("metrics.val_top1", True, "metrics.val_top1 must be a finite number"),
    "accuracy above 1": ("metrics.test_top1", 91.0, "fraction in [0, 1]"),
    "accuracy missing on ok": ("metrics.test_top1", "DELETE", "metrics.test_top1 is missing"),
    "epoch a float": ("metrics.best_epoch", 1.5, "metrics.best_epoch must be an integer"),
    "time a string": ("metrics.time_s.total", "3 s", "metrics.time_s.total must be a number"),
    "seed a string": ("trial.seed", "0", "trial.seed must be an integer"),
    "protocol a list": ("trial.protocol", [], "trial.protocol must be a dict"),
    "key missing": ("key", "DELETE", "record.key is missing"),
    "key a number": ("key", 12, "record.key must be a str"),
    "key with a path": ("key", "../../etc/passwd", "is not a trial key"),
    "key differs from trial's": ("trial.key", "ffffffffffffffffffff", "differs from trial.key"),
    "unknown status": ("status", "done", "is not one of ok, failed, diverged"),
    "future schema": ("schema", 3, "schema 3 is not one this tlbench reads"),
    "no schema": ("schema", "DELETE", "schema None"),
    "section a string": ("plan", "x", "record.plan must be an object"),
    "error a number": ("error", 5, "record.error must be a str"),
    "infinity inside a section": ("runtime", {"x": math.inf}, "finite numbers only"),
    "nan in history": ("metrics.history", [{"val_top1": math.nan}], "finite numbers only"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_record_is_refused_with_its_reason(case, make_record):
    path, value, message = MALFORMED[case]
    with pytest.raises(RecordError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Record.from_json_dict(broken(make_record, path, value))


def test_failed_record_needs_no_metrics_and_schema_1_is_read(make_record):
    failed = make_record(KEY, status="failed")
    failed["metrics"] = None
    assert Record.from_json_dict(failed).metrics.test_top1 is None
    old = make_record(KEY)
    old["schema"] = 1
    record = Record.from_json_dict(old)
    assert record.schema == 1 and record.to_json_dict()["schema"] == 1, "an old record is kept as it was"


@pytest.mark.parametrize("text, message", [
    ('{"schema": 2, "key": "0123456789", "metrics": {"x": NaN}}', "NaN is not allowed"),
    ('{"schema": 2, "key": "0123456789", "metrics": {"x": Infinity}}', "Infinity is not allowed"),
    ('{"schema": 2, "key": "0123456789", "metrics": {"x": -Infinity}}', "-Infinity is not allowed"),
    ('{"schema": 2, "key": "01', "not valid JSON"),
    ('[1, 2]', "must be a JSON object"),
    ('"text"', "must be a JSON object"),
])
def test_non_standard_json_is_refused(text, message):
    with pytest.raises(RecordError, match=message):
        Record.from_json(text)


def test_records_are_strict_json_when_written(make_record, tmp_path):
    record = Record.from_json_dict(make_record(KEY))
    object.__setattr__(record.metrics, "val_top1", math.nan)  # as a buggy plugin might leave a measurement
    with pytest.raises(ValueError):
        ResultStore(tmp_path).write(record)
    assert not list(tmp_path.iterdir()), "nothing half-written"


def write_raw(results, name, raw):
    results.mkdir(exist_ok=True)
    (results / name).write_text(json.dumps(raw) if not isinstance(raw, str) else raw)


def test_malformed_store_never_crashes_leaderboard_or_rerun_and_copies_count_once(make_record, tmp_path):
    results = tmp_path / "results"
    good = [make_record(f"{i:020x}", seed=i, test_top1=0.5 + i / 10) for i in range(3)]
    for raw in good:
        write_raw(results, f"{raw['key']}.json", raw)
    write_raw(results, f"{good[0]['key']} (copy).json", good[0])  # a copied record
    write_raw(results, "renamed.json", make_record(f"{9:020x}", seed=9, test_top1=0.9))  # renamed, no original
    for i, case in enumerate(sorted(MALFORMED)):
        path, value, _ = MALFORMED[case]
        write_raw(results, f"bad{i:02d}.json", broken(make_record, path, value))
    (results / f"{'e' * 20}.json").mkdir()  # a directory where a record would be
    board = CliRunner().invoke(cli, ["leaderboard", "--results-dir", str(results), "--format", "json"])
    assert board.exit_code == 0, board.output
    (row,) = json.loads(board.stdout)
    assert row["test"]["n"] == 4, "3 records + the renamed one; the copy counts once"
    warnings = board.stderr.splitlines()
    assert all(line.startswith("Warning: ") for line in warnings)
    assert len(warnings) == len(MALFORMED) + 3, warnings  # each bad file, the copy, the renamed file, the directory
    assert any("(copy).json" in w and "counted once" in w for w in warnings)
    assert any("renamed.json" in w and f"rename it to {9:020x}.json" in w for w in warnings)
    printed = CliRunner().invoke(cli, ["rerun", good[1]["key"], "--results-dir", str(results), "--print-only"])
    assert printed.exit_code == 0 and "--seed 1" in printed.stdout, printed.output


def test_directory_where_a_record_belongs_is_refused_before_running(tmp_path, tiny_backbone):
    from tlbench.plan import build_trials, parse_overrides
    from tlbench.registry import Plugins

    plugins = Plugins(load_third_party=False)
    settings = ["epochs=1", "data.train_size=64"]
    (trial,) = build_trials(datasets=[("synthetic", plugins.datasets.get("synthetic"))], backbones=[tiny_backbone],
                            strategies=[("frozen", plugins.strategies.get("frozen"))], seeds=[0],
                            overrides=parse_overrides(settings), registered_strategies=plugins.strategies.names())
    results = tmp_path / "results"
    (results / f"{trial.key}.json").mkdir(parents=True)
    result = CliRunner().invoke(cli, ["run", "-q", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic",
                                      "--results-dir", str(results), *[w for s in settings for w in ("--set", s)]])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "is a directory" in result.stderr and "move it away" in result.stderr
    assert sorted(p.name for p in results.iterdir()) == [f"{trial.key}.json"]


def test_disk_full_stops_the_grid_cleanly_with_one_line(tmp_path, tiny_backbone, monkeypatch):
    results = tmp_path / "results"
    writes = []

    def full_disk(self, record):
        writes.append(record.key)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ResultStore, "write", full_disk)
    result = CliRunner().invoke(cli, ["run", "-q", "-s", "frozen", "-s", "full", "-b", tiny_backbone, "-d",
                                      "synthetic", "--epochs", "1", "--set", "data.train_size=64", "--results-dir",
                                      str(results)])
    assert result.exit_code == 1, result.output
    assert len(writes) == 1, "the grid stops at the first record it cannot write"
    assert "Traceback" not in result.output
    assert "stopped: could not write" in result.stderr and "No space left on device" in result.stderr
    assert "resume with: " in result.stderr
    assert not [p for p in results.iterdir() if not p.name.endswith(".lock")] or not list(results.glob("*.json"))
    assert not list(results.glob("*.lock")), "claims are released"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_cleanly_keep_records_and_say_how_to_resume(tmp_path, tiny_backbone, signum, code):
    results = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "tlbench.cli", "run", "-q", "-s", "frozen", "-s", "full", "-b", tiny_backbone,
            "-d", "synthetic", "--seeds", "2", "--set", "epochs=30", "--set", "data.train_size=64",
            "--results-dir", str(results)]
    # SIGINT as in a terminal: a test run from a background job (`cmd &` in a script) inherits SIGINT ignored,
    # and Python keeps an ignored SIGINT ignored, so Ctrl-C would never reach the child
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while len(list(results.glob("*.json"))) < 1:  # the frozen trials finish quickly; full takes a while
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signum)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr, stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "resume with: tlbench run" in stderr, stderr
    kept = list(results.glob("*.json"))
    assert kept and all(Record.from_json(p.read_text()).ok for p in kept), "finished records are whole and kept"
    assert not list(results.glob("*.lock")), "no claim left behind"


def test_a_trial_busy_in_a_process_that_dies_is_run_here_before_the_grid_ends(tmp_path, tiny_backbone):
    from tlbench.grid import Reporter

    results = tmp_path / "results"
    settings = ["epochs=1", "data.train_size=64"]
    spec = RunSpec(strategies=["frozen"], backbones=[tiny_backbone], datasets=["synthetic"], seeds=2,
                   settings=settings, results_dir=results, device="cpu", progress="off")
    first = run_grid(spec)
    victim = first.records[0].key
    (results / f"{victim}.json").unlink()  # as if its owner had been killed before writing it
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from tlbench.store import ResultStore
assert ResultStore({str(results)!r}).claim({victim!r})
print("claimed", flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "claimed"
    messages = []

    class Collect(Reporter):
        def trial_busy(self, job):
            messages.append(f"busy {job.key}")
            holder.kill()  # the owner dies while this process goes on with the rest of the grid

        def message(self, text):
            messages.append(text)

    try:
        again = run_grid(spec.replace(redo="failed"), reporter=Collect())
    finally:
        holder.kill()
        holder.wait()
    assert messages[0] == f"busy {victim}"
    assert any("left unfinished by a process that stopped; running them here" in m for m in messages), messages
    assert [r.key for r in again.ok] == [victim] and again.exit_code == 0 and not again.missing
    assert (results / f"{victim}.json").is_file()


def test_an_io_error_on_the_claim_lock_stops_the_grid_cleanly(tmp_path, tiny_backbone, monkeypatch):
    results = tmp_path / "results"

    def broken_lock(self, key, wait=False):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ResultStore, "claim", broken_lock)
    result = CliRunner().invoke(cli, ["run", "-q", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--epochs",
                                      "1", "--set", "data.train_size=64", "--results-dir", str(results)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = [line for line in result.stderr.splitlines() if "stopped" in line]
    assert "could not claim trial" in line and "Input/output error" in line and "resume with: " in line
    assert not list(results.glob("*.json"))


@pytest.mark.parametrize("interrupt, code", [(KeyboardInterrupt(), 130), ("SIGTERM", 143)])
def test_a_signal_before_any_trial_runs_is_a_clean_stop_too(tmp_path, tiny_backbone, monkeypatch, interrupt, code):
    """Ctrl-C or SIGTERM while the pre-run check decodes data: not click's bare "Aborted!" with exit 1."""
    from tlbench.grid import GridInterrupted
    from tlbench.runner import TrialRunner

    def interrupted(self, trials, where=None):
        raise interrupt if isinstance(interrupt, BaseException) else GridInterrupted(interrupt, code)

    monkeypatch.setattr(TrialRunner, "check", interrupted)
    result = CliRunner().invoke(cli, ["run", "-q", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic",
                                      "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == code, result.output
    name = "SIGINT" if code == 130 else "SIGTERM"
    assert result.stderr.strip() == (f"tlbench: stopped by {name}; finished records are kept; run the same command "
                                     f"again to resume")
    assert not (tmp_path / "r").exists()
