"""Issue 27 (hardening, round 3), one section per class of the adversarial sweep (benchmarks/hardening_sweep.py
runs the same classes as real commands): reads that are bounded and never block, hostile JSON refused with one
warning, options checked before the grid starts, writes that are whole or absent, the user's umask, one key per
setting, workers and signals, user text shown literally."""
import errno
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import tlbench.files as files
from tlbench import RunSpec, run_grid, tune_grid
from tlbench.cli import cli
from tlbench.data_cache import CacheWarning, cache_path, load_splits
from tlbench.errors import printable
from tlbench.files import Refused, atomic_write_bytes, parse_json, read_regular
from tlbench.grid import check_batch_memory, executor_options
from tlbench.interrupts import keep_sigterm
from tlbench.jobs import process_alive, finish_from_reply, watch_driver
from tlbench.plan import build_trials, normalise_setting, parse_overrides
from tlbench.records import Record, RecordError
from tlbench.registry import Plugins
from tlbench.spec import TuneSpec
from tlbench.store import ResultStore
from tlbench.types import UsageError

KEY = "0123456789abcdef0123"
OTHER = "feedfacefeedfacefeed"


def write_record(folder: Path, make_record, key=KEY, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    path.write_text(json.dumps({**make_record(key), **changes}))
    return path


def warnings_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Warning:")]


class OsWith:
    """The os module with some functions replaced, for one module under test (the real os module is untouched)."""

    def __init__(self, **replaced):
        self.__dict__.update(replaced)

    def __getattr__(self, name):
        return getattr(os, name)


# ============================================================================ 1. unbounded or blocking reads
def odd_files(tmp_path: Path) -> dict[str, Path]:
    """One of each kind of file that must never be read as data: a FIFO, a device, a directory, a file too large."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    big = tmp_path / "big"
    with open(big, "wb") as handle:
        handle.truncate(files.MAX_JSON_BYTES + 1)  # sparse: costs nothing on disk
    return {"fifo": fifo, "device": zero, "too large": big}


@pytest.mark.parametrize("kind, message", [("fifo", "a FIFO"), ("device", "a character device"),
                                           ("too large", "over the 16.0 MiB")])
def test_read_regular_refuses_what_is_not_a_bounded_regular_file_without_reading(tmp_path, kind, message,
                                                                                  monkeypatch):
    path = odd_files(tmp_path)[kind]
    read = []
    monkeypatch.setattr(files, "os", OsWith(read=lambda *a: read.append(a) or b""))
    with pytest.raises(Refused, match=message):
        read_regular(path)
    assert not read, "nothing was read"


def test_read_regular_refuses_a_file_that_grows_past_its_limit(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 11)
    with pytest.raises(Refused, match="over the 10 bytes"):
        read_regular(path, 10)
    assert read_regular(path, 11) == b"x" * 11


@pytest.mark.parametrize("kind", ["fifo", "device", "too large"])
def test_every_odd_file_named_like_a_record_or_a_sweep_is_skipped_with_one_warning(tmp_path, make_record, kind):
    source = odd_files(tmp_path)[kind]
    results = tmp_path / "r"
    write_record(results, make_record)
    (results / f"{OTHER}.json").symlink_to(source)
    (results / "tuning").mkdir()
    (results / "tuning" / f"{'a' * 20}.json").symlink_to(source)
    warned = []
    store = ResultStore(results, warn=warned.append)
    assert [r.key for r in store.records()] == [KEY]
    assert store.sweeps() == []
    assert len(warned) == 2 and all("skipping" in w for w in warned), warned
    assert any(OTHER in w for w in warned) and any("a" * 20 in w for w in warned)


@pytest.mark.parametrize("command", ["leaderboard", "report"])
def test_leaderboard_and_report_never_block_on_a_fifo_and_say_so_once(tmp_path, make_record, command):
    results = tmp_path / "r"
    write_record(results, make_record)
    os.mkfifo(results / f"{OTHER}.json")
    (results / "tuning").mkdir()
    os.mkfifo(results / "tuning" / "x.json")
    args = [command, "--results-dir", str(results)] + (["--out", str(tmp_path / "r.html"), "-q"]
                                                      if command == "report" else [])
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=CliRunner().invoke(cli, args)), daemon=True)
    thread.start()
    thread.join(120)
    assert "result" in outcome, f"{command} blocked on a FIFO"
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    warned = warnings_of(result)
    assert len([w for w in warned if OTHER in w]) == 1 and len([w for w in warned if "x.json" in w]) == 1, warned


def _image_folder(root: Path) -> Path:
    from PIL import Image

    for name, colour in (("a", "red"), ("b", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (12, 12), colour).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_among_images_is_an_unreadable_image_never_a_hang(tmp_path, kind):
    folder = _image_folder(tmp_path / "images")
    target = odd_files(tmp_path)[kind]
    (folder / "a" / "odd.png").symlink_to(target)
    family = Plugins(load_third_party=False).datasets.get("imagefolder")
    with pytest.warns(Warning, match="skipped 1 unreadable file"):
        splits = family.load(str(folder), {"on_bad_image": "skip", "storage_size": 12})
    assert len(splits.train_labels) + len(splits.val_labels) + len(splits.test_labels) == 16
    with pytest.raises(UsageError, match="odd.png.*not a regular file"):
        family.load(str(folder), {"storage_size": 12})


def test_a_fifo_where_a_cache_file_should_be_is_rebuilt_without_blocking(tmp_path):
    family = Plugins(load_third_party=False).datasets.get("synthetic")
    path = cache_path(family, None, {})
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    with pytest.warns(CacheWarning, match="a FIFO"):
        splits = load_splits(family, None, {})
    assert splits.source["cache"] == "miss" and path.is_file(), "the FIFO is replaced by the cache file"


# ============================================================================ 2. hostile JSON
HOSTILE = {
    "nested 100,000 levels": '{"schema": 2, "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "nested 65 levels": '{"schema": 2, "x": ' + "[" * 65 + "]" * 65 + "}",
    "a 5,000-digit integer": '{"schema": 2, "x": 1' + "0" * 4999 + "}",
    "an integer past 64 bits": '{"schema": 2, "x": 18446744073709551616}',
    "a float that overflows to infinity": '{"schema": 2, "x": 1e999}',
    "a float whose sum overflows": '{"schema": 2, "x": 1.7e308}',
    "a lone surrogate in a string": '{"schema": 2, "x": "a\\ud800"}',
    "a lone surrogate in a key": '{"schema": 2, "\\udfff": 1}',
    "NaN": '{"schema": 2, "x": NaN}',
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_json_is_a_record_error_never_a_crash(name):
    with pytest.raises(RecordError):
        Record.from_json(HOSTILE[name])
    with pytest.raises(Refused):
        parse_json(HOSTILE[name])


def test_invalid_utf8_and_deep_values_built_in_code_are_record_errors(make_record):
    with pytest.raises(RecordError, match="not UTF-8"):
        Record.from_json(b'{"schema": 2, "x": "\xff"}')
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecordError, match="nested deeper"):
        Record.from_json_dict({**make_record(KEY), "runtime": {"x": deep}})


def test_the_limits_leave_every_real_value_alone():
    assert parse_json('{"a": [1, -9223372036854775808, 9223372036854775807, 1e100, -3.4e38, "é"]}')
    assert parse_json("[" * 64 + "]" * 64)


def _hostile_record_text(make_record, name: str) -> str:
    """A valid record with the hostile value put where a real field is."""
    text = json.dumps(make_record(OTHER, seed=1))
    value = {"nested 100,000 levels": "[" * 100_000 + "]" * 100_000, "a 5,000-digit integer": "1" + "0" * 4999,
             "a float whose sum overflows": "1.7e308", "a lone surrogate in a string": '"x\\ud800"'}[name]
    return text.replace('"wall_s": 1.0', f'"wall_s": 1.0, "extra": {value}').replace(
        '"label": "full"', '"label": "x\\ud800"' if "surrogate" in name else '"label": "full"')


@pytest.mark.parametrize("name", ["nested 100,000 levels", "a 5,000-digit integer", "a float whose sum overflows",
                                  "a lone surrogate in a string"])
@pytest.mark.parametrize("command", ["leaderboard", "report", "rerun"])
def test_every_reader_skips_a_hostile_record_with_one_warning(tmp_path, make_record, name, command):
    results = tmp_path / "r"
    write_record(results, make_record)
    (results / f"{OTHER}.json").write_text(_hostile_record_text(make_record, name))
    args = {"leaderboard": ["leaderboard", "--wide"], "report": ["report", "--out", str(tmp_path / "r.html"), "-q"],
            "rerun": ["rerun", KEY, "--print-only"]}[command]
    result = CliRunner().invoke(cli, [*args, "--results-dir", str(results)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert len([w for w in warnings_of(result) if OTHER in w]) == 1, result.stderr


def test_a_run_with_a_hostile_record_in_its_folder_finishes(tmp_path, tiny_backbone, make_record):
    results = tmp_path / "r"
    results.mkdir()
    (results / f"{OTHER}.json").write_text(_hostile_record_text(make_record, "nested 100,000 levels"))
    result = CliRunner().invoke(cli, ["run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "-q",
                                      "--set", "epochs=1", "--save-models", "none", "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    assert len([w for w in warnings_of(result) if OTHER in w]) == 1


@pytest.mark.parametrize("value", ["[" * 100_000 + "]" * 100_000, "1" + "0" * 5000, '"\\udfff"', "1e999"])
def test_a_hostile_sweep_file_is_skipped_with_one_warning(tmp_path, make_record, value):
    results = tmp_path / "r"
    write_record(results, make_record)
    (results / "tuning").mkdir()
    (results / "tuning" / f"{'a' * 20}.json").write_text('{"schema": 1, "kind": "tlbench sweep", "x": ' + value + "}")
    result = CliRunner().invoke(cli, ["leaderboard", "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    assert len(warnings_of(result)) == 1 and "a" * 20 in warnings_of(result)[0]


def test_numbers_at_the_limit_never_overflow_the_leaderboard(tmp_path, make_record):
    results = tmp_path / "r"
    for seed, key in enumerate((KEY, OTHER, "deadbeefdeadbeefdead")):
        record = make_record(key, seed=seed)
        record["metrics"].update(wall_s=1e100, train_images_per_s=1e100, peak_memory_mib=1e100,
                                 time_s={"total": 1e100}, params={"trainable": 1e100, "total": 1e100})
        write_record(results, lambda k: record, key=key)
    for args in (["leaderboard", "--wide"], ["report", "--out", str(tmp_path / "r.html"), "-q"]):
        result = CliRunner().invoke(cli, [*args, "--results-dir", str(results)])
        assert result.exit_code == 0 and "Traceback" not in result.output, (result.output, result.exception)


# ============================================================================ 3. options checked before the grid
def _spec(tmp_path, tiny_backbone, executor="local", settings=(), **kwargs):
    return RunSpec(strategies=["frozen"], backbones=[tiny_backbone], datasets=["synthetic"], executor=executor,
                   settings=["epochs=1", *settings], results_dir=tmp_path / "r", device="cpu", progress="off",
                   **kwargs)


def test_a_grid_too_large_to_plan_is_refused_in_one_line_before_anything(tmp_path, tiny_backbone):
    result = CliRunner().invoke(cli, ["run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--seeds",
                                      "1000000000000", "--results-dir", str(tmp_path / "r")])
    line = result.stderr.strip()
    assert result.exit_code == 2 and "\n" not in line and "1000000000000" in line and "--seeds" in line, line
    assert not (tmp_path / "r").exists()
    with pytest.raises(UsageError, match="--tune-budget"):
        tune_grid(_spec(tmp_path, tiny_backbone, seeds=10**12), TuneSpec(budget=1))


def test_an_image_size_whose_batch_cannot_fit_is_refused_before_anything(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.setattr("tlbench.grid.available_memory", lambda: 2**30)
    with pytest.raises(UsageError, match=r"batch of 32 images at 1024 px needs at least .* GiB.*lower image_size"):
        run_grid(_spec(tmp_path, tiny_backbone, settings=["image_size=1024"]))
    with pytest.raises(UsageError, match="lower data.image_size"):
        run_grid(_spec(tmp_path, tiny_backbone, settings=["data.image_size=1024"]))
    assert not (tmp_path / "r").exists()
    trials = build_trials(datasets=[("synthetic", Plugins(load_third_party=False).datasets.get("synthetic"))],
                          backbones=["b"], strategies=[("frozen", Plugins(load_third_party=False).strategies.get(
                              "frozen"))], seeds=[0], overrides={"image_size": 224})
    check_batch_memory(trials, torch.device("cpu"))  # the ordinary sizes pass


def test_image_size_4096_is_refused_on_this_machine(tmp_path, tiny_backbone):
    """32 images at 4096 px need at least 206 GiB to train: more than any machine the tests run on."""
    result = CliRunner().invoke(cli, ["run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--set",
                                      "image_size=4096", "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "image_size" in result.stderr
    assert not (tmp_path / "r").exists()


def _executor(name):
    return Plugins(load_third_party=False).executors.get(name)


@pytest.mark.parametrize("setting, message", [
    ({"poll_s": -1}, "poll_s must be"), ({"poll_s": 0}, "poll_s must be"), ({"poll_s": float("inf")}, "poll_s"),
    ({"mem_gb": -4}, "mem_gb must be"), ({"cpus_per_task": 0}, "cpus_per_task must be"),
    ({"gpus_per_node": -1}, "gpus_per_node must be"), ({"partition": "gpu\n#SBATCH --x"}, "partition must be"),
    ({"array_parallelism": 0}, "array_parallelism"), ({"folder": ""}, "folder must be a path"),
])
def test_slurm_options_are_checked_before_anything_is_submitted(setting, message):
    pytest.importorskip("submitit")
    with pytest.raises(UsageError, match=message):
        executor_options(_executor("slurm"), setting)


def test_slurm_folder_that_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(UsageError, match="folder.*is a file, not a directory"):
        executor_options(_executor("slurm"), {"folder": f"{tmp_path}/plain/sub/%j"})
    executor_options(_executor("slurm"), {"folder": f"{tmp_path}/new/deeper/%j"})  # creatable: fine


def test_slurm_bad_option_from_the_cli_is_one_line_and_nothing_written(tmp_path, tiny_backbone):
    result = CliRunner().invoke(cli, ["run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--executor",
                                      "slurm", "--set", "executor.poll_s=-1", "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and result.stderr.startswith("Error: executor.poll_s") and not (tmp_path / "r").exists()


def test_process_threads_per_worker_above_the_cores_is_refused():
    with pytest.raises(UsageError, match="more than the .* logical core"):
        executor_options(_executor("process"), {"threads_per_worker": 100000})
    executor_options(_executor("process"), {"threads_per_worker": os.cpu_count() or 1})


def test_executor_numbers_are_normalised_like_settings():
    assert executor_options(_executor("process"), {"workers": 2.0})["workers"] == 2


@pytest.mark.parametrize("address", ["nohost", "ray://", "host:0", "host:99999"])
def test_ray_addresses_that_are_not_addresses_are_refused(address):
    with pytest.raises(UsageError, match="executor.address must be a Ray address"):
        executor_options(_executor("ray"), {"address": address})


def test_ray_address_with_nothing_behind_it_is_one_line_within_the_timeout():
    pytest.importorskip("ray")
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    executor = _executor("ray")
    options = executor_options(executor, {"address": f"127.0.0.1:{port}", "connect_timeout_s": 3})
    started = time.monotonic()
    with pytest.raises(UsageError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        executor.check_ready(options, None)
    assert time.monotonic() - started < 5


class FakeRay:
    """What check_ready asks of ray, for a cluster of one 2-CPU node without a GPU."""

    def __init__(self):
        self.up = False
        self.inits = 0

    def is_initialized(self):
        return self.up

    def init(self, **kwargs):
        self.up, self.inits = True, self.inits + 1
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(15))  # what ray.init does

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 64, "GPU": 8}}]

    def shutdown(self):
        self.up = False


@pytest.mark.parametrize("setting, message", [({"num_cpus": 1000}, "num_cpus=1000: no node .* has that many CPUs"),
                                              ({"num_gpus": 1}, "num_gpus=1: .*the cluster has no GPU")])
def test_ray_resources_no_node_has_are_refused_and_ray_is_stopped(monkeypatch, setting, message):
    executor = _executor("ray")
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(UsageError, match=message):
        executor.check_ready(executor_options(executor, setting), None)
    assert not fake.up, "the cluster check_ready started is stopped again"


def test_ray_check_ready_keeps_tlbenchs_sigterm_handler(monkeypatch):
    executor = _executor("ray")
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    ours = signal.getsignal(signal.SIGTERM)
    try:
        executor.check_ready(executor_options(executor, {}), None)
        assert fake.up and signal.getsignal(signal.SIGTERM) is ours, "ray.init's SIGTERM handler is undone"
    finally:
        executor.shutdown()
        signal.signal(signal.SIGTERM, ours)


# ============================================================================ 4. writes on a full or odd disk
def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_leaves_no_temporary_file_and_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    target.write_text("old")
    monkeypatch.setattr(files, "os", OsWith(fsync=no_space))
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_fifo_or_directory_at_the_target_is_refused_never_replaced(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="a FIFO"):
        atomic_write_bytes(tmp_path / "fifo", b"x")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(tmp_path / "dir", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fifo"]


def test_report_on_a_full_disk_is_one_line_and_writes_nothing(tmp_path, make_record, monkeypatch):
    results = tmp_path / "r"
    write_record(results, make_record)
    monkeypatch.setattr(files, "os", OsWith(fsync=no_space))
    result = CliRunner().invoke(cli, ["report", "--results-dir", str(results), "--out", str(tmp_path / "r.html"),
                                      "-q"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith("Error: could not write") and "No space left on device" in result.stderr
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob(".*tmp"))


def test_report_out_a_fifo_is_refused_in_one_line(tmp_path, make_record):
    results = tmp_path / "r"
    write_record(results, make_record)
    os.mkfifo(tmp_path / "out.html")
    result = CliRunner().invoke(cli, ["report", "--results-dir", str(results), "--out", str(tmp_path / "out.html")])
    assert result.exit_code == 2 and "not a regular file" in result.stderr
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out.html").st_mode)


def test_the_data_cache_on_a_full_disk_warns_once_and_leaves_nothing(tmp_path, tmp_cache_dir, monkeypatch):
    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")  # safetensors'

    monkeypatch.setattr("safetensors.torch.save_file", full)
    family = Plugins(load_third_party=False).datasets.get("synthetic")
    with pytest.warns(CacheWarning, match="could not write the dataset cache.*StorageFull"):
        splits = load_splits(family, None, {})
    assert splits.source["cache"] == "miss"
    assert not [p for p in tmp_cache_dir.rglob("*") if p.is_file()], "no temporary file left"


def test_a_claim_on_a_full_disk_leaves_no_lock_file(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    monkeypatch.setattr("tlbench.store.os", OsWith(write=no_space))
    with pytest.raises(OSError):
        store.claim(KEY)
    assert not list(tmp_path.iterdir())


def test_a_sweep_file_that_cannot_be_written_stops_the_tuning_in_one_line(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.setattr(ResultStore, "write_sweep", lambda self, sweep: no_space())
    runner_result = CliRunner().invoke(cli, ["run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "-q",
                                             "--set", "epochs=1", "--tune", "--tune-budget", "1", "--tune-extensions",
                                             "0", "--save-models", "none", "--results-dir", str(tmp_path / "r")])
    assert runner_result.exit_code == 1, runner_result.output
    stopped = [line for line in runner_result.stderr.splitlines() if "could not write the sweep file" in line]
    assert len(stopped) == 1 and "No space left on device" in stopped[0] and "resume" in stopped[0]
    assert "Traceback" not in runner_result.output
    assert len(list((tmp_path / "r").glob("*.json"))) == 1, "the selection trial's record is kept"


def test_tuning_that_is_a_file_is_refused_before_any_trial(tmp_path, tiny_backbone):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "tuning").write_text("x")
    with pytest.raises(UsageError, match="tuning.*is not a directory"):
        tune_grid(_spec(tmp_path, tiny_backbone), TuneSpec(budget=1))
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["tuning"]


def test_stale_sweep_temporaries_are_removed_and_live_ones_kept(tmp_path):
    tuning = tmp_path / "tuning"
    tuning.mkdir()
    old = time.time() - 3600
    stale, fresh, held = (tuning / f".{c * 20}.json.x.tmp" for c in "abc")
    for path in (stale, fresh, held):
        path.write_text("{")
    os.utime(stale, (old, old))
    os.utime(held, (old, old))
    with open(held) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a live writer holds its temporary file
        removed = ResultStore(tmp_path).clean_leftovers()
    assert removed == [stale] and fresh.exists() and held.exists()


def test_a_stale_cache_temporary_is_removed_by_the_next_write(tmp_cache_dir):
    family = Plugins(load_third_party=False).datasets.get("synthetic")
    folder = cache_path(family, None, {}).parent
    folder.mkdir(parents=True)
    stale = folder / ".synthetic-x.safetensors.abc.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600,) * 2)
    load_splits(family, None, {})
    assert not stale.exists()


# ============================================================================ 5. the user's umask
@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)
    before = os.umask(0o022)
    yield set_mask
    os.umask(before)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_are_written_with_the_users_umask(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write_bytes(tmp_path / "f", b"x")
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == mode
    assert files.current_umask() == mask and os.umask(mask) == mask, "reading the umask does not change it"


def test_records_sweeps_weights_caches_and_reports_are_0644_under_umask_022(tmp_path, tiny_backbone, umask,
                                                                            tmp_cache_dir):
    results = tmp_path / "r"
    result = CliRunner().invoke(cli, ["run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "-q", "--set",
                                      "epochs=1", "--tune", "--tune-budget", "1", "--save-models", "all",
                                      "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    report = CliRunner().invoke(cli, ["report", "--results-dir", str(results), "--out", str(tmp_path / "r.html"),
                                      "--reference", "frozen", "-q"])
    assert report.exit_code == 0, report.output
    written = [*results.glob("*.json"), *results.glob("*.safetensors"), *(results / "tuning").glob("*.json"),
               *tmp_cache_dir.rglob("*.safetensors"), tmp_path / "r.html"]
    kinds = {p.suffix for p in written}
    assert {".json", ".safetensors", ".html"} <= kinds and len(written) >= 6
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: "0o644" for p in written}


# ============================================================================ 6. one setting, one key
@pytest.mark.parametrize("value, default, expected", [
    (1, 0.001, 1.0), (2.0, 8, 2), (0, 1.0, 0.0), (224.0, None, 224), (64.0, "auto", 64), (2.5, 8, 2.5),
    (True, 1.0, True), (1, True, 1), ([0.5, 1], [0.25, 0.5], [0.5, 1.0]), ("x", 1.0, "x"),
    (2**60, 1.0, 2**60), (1e300, 8, 1e300),
])
def test_normalise_setting(value, default, expected):
    out = normalise_setting(value, default)
    assert out == expected and type(out) is type(expected)


def _key(settings, strategy="frozen"):
    plugins = Plugins(load_third_party=False)
    trials = build_trials(datasets=[("synthetic", plugins.datasets.get("synthetic"))], backbones=["b"],
                          strategies=[(strategy, plugins.strategies.get(strategy))], seeds=[0],
                          overrides=parse_overrides(settings), registered_strategies=dict(plugins.strategies.items()))
    return trials[0].key, trials[0].label


@pytest.mark.parametrize("one, other", [
    ("frozen.head_lr=1", "frozen.head_lr=1.0"), ("warmup_epochs=0", "warmup_epochs=0.0"),
    ("epochs=2", "epochs=2.0"), ("frozen.epochs=3", "frozen.epochs=3.0"), ("data.train_size=48", "data.train_size=48.0"),
    ("image_size=32", "image_size=32.0"), ("frozen.head_lr=1e-4", "frozen.head_lr=0.0001"),
])
def test_equal_numbers_give_one_key_and_one_label(one, other):
    assert _key([one]) == _key([other])


def test_wise_ft_alphas_written_as_integers_give_the_same_key():
    assert _key(["wise-ft.alphas=[0, 0.5, 1]"], "wise-ft") == _key(["wise-ft.alphas=[0.0, 0.5, 1.0]"], "wise-ft")


def test_the_keys_of_every_built_in_default_trial_and_search_space_are_unchanged():
    """Keys computed with the code before settings were normalised (commit bcd931e, tests/data): the default
    configurations of every built-in strategy on the default and synthetic data, and every configuration of its
    search space, keep their keys, so no existing record is orphaned."""
    from tlbench.grid import DEFAULT_BACKBONES, DEFAULT_DATASET
    from tlbench.search_space import configurations, search_space

    expected = json.loads((Path(__file__).parent / "data" / "trial_keys_bcd931e.json").read_text())
    plugins = Plugins(load_third_party=False)
    registered = dict(plugins.strategies.items())
    now = {}
    for name, strategy in registered.items():
        for dataset in (DEFAULT_DATASET, "synthetic"):
            trials = build_trials(datasets=[(dataset, plugins.datasets.get(dataset))], backbones=list(DEFAULT_BACKBONES),
                                  strategies=[(name, strategy)], seeds=[0, 1], overrides={},
                                  registered_strategies=registered)
            now[f"{name}/{dataset}/default"] = [t.key for t in trials]
        space, _ = search_space(strategy)
        for config in configurations(space):
            trials = build_trials(datasets=[(DEFAULT_DATASET, plugins.datasets.get(DEFAULT_DATASET))],
                                  backbones=list(DEFAULT_BACKBONES), strategies=[(name, strategy)], seeds=[0],
                                  overrides={f"{name}.{k}": v for k, v in config.items()},
                                  registered_strategies=registered)
            now[f"{name}/tune/{json.dumps(config, sort_keys=True)}"] = [t.key for t in trials]
    assert len(expected) == 79
    assert {k: now.get(k) for k in expected} == expected


# ============================================================================ 7. workers and signals
class FakeSession:
    def __init__(self):
        self.stopping = False
        self.finished, self.failed = [], []
        self.options = {}

    def claim(self, job):
        return True

    def finish(self, job, record):
        self.finished.append(record)

    def fail(self, job, reason, wall_s=0.0):
        self.failed.append(reason)

    def release(self, job):
        pass


class HalfReplyChild:
    """A child process that dies halfway through writing its reply."""

    def __init__(self, line):
        import io

        self.stdin = io.StringIO()
        self.stdout = io.StringIO(line)
        self.returncode = -9

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode

    def terminate(self):
        pass

    def kill(self):
        pass


@pytest.mark.parametrize("line, said", [('{"record": {"schema": 2, "key"', "cut short"),
                                        ('{"record": garbled}\n', "not a whole JSON object"),
                                        ("[1, 2]\n", "not a whole JSON object")])
def test_a_half_written_reply_is_a_failed_record_and_the_batch_goes_on(monkeypatch, line, said):
    from tlbench.plugins import process_executor
    from tlbench.jobs import TrialJob

    started = []
    monkeypatch.setattr(process_executor, "_start_child", lambda gpu, threads: (
        started.append(1) or HalfReplyChild(line), 0.0))
    jobs = [TrialJob(trial={"key": k, "dataset": "d", "data": {}, "backbone": "b"}, device="cpu", versions={})
            for k in (KEY, OTHER)]
    session = FakeSession()
    process_executor._Slot(0, None, None, {}, {}).run_batch(jobs, session)
    assert len(session.failed) == 2 and all(said in reason and "SIGKILL" in reason for reason in session.failed)
    assert len(started) == 2, "a fresh child takes the next trial"


def test_a_reply_that_is_not_a_mapping_fails_the_trial():
    session = FakeSession()
    finish_from_reply(session, None, ["not", "a", "reply"])
    assert session.failed == ["the worker's reply is not a record but list"]


def test_a_worker_stops_when_its_driver_is_killed(tmp_path):
    """A driver starts a worker that watches it, then is killed with SIGKILL: the worker ends within seconds."""
    script = textwrap.dedent("""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import os, time; from tlbench.jobs import watch_driver; watch_driver(%d, 0.2); time.sleep(120)"
            % os.getpid()])
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker = int(driver.stdout.readline())
    time.sleep(3)  # the worker has imported tlbench and watches
    assert process_alive(worker)
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 20
    while process_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not process_alive(worker), "the worker outlived its driver"


def test_watch_driver_does_nothing_without_a_driver(monkeypatch):
    monkeypatch.delenv("TLBENCH_DRIVER_PID", raising=False)
    assert watch_driver() is None


def _long_grid(tmp_path, tiny_backbone, executor, *settings):
    args = [sys.executable, "-m", "tlbench.cli", "run", "-q", "-s", "full", "-b", tiny_backbone, "-d", "synthetic",
            "--seeds", "2", "--set", "epochs=3000", "--save-models", "none", "--results-dir", str(tmp_path / "r"),
            "--executor", executor, *[a for s in settings for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)


def _worker_pids(pid):
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _wait_for_workers(proc, seconds=8.0):
    """The driver's worker processes, once one has existed for ``seconds`` (it is training by then)."""
    deadline, first = time.monotonic() + 180, None
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        pids = _worker_pids(proc.pid)
        if pids and first is None:
            first = time.monotonic()
        if first is not None and time.monotonic() - first > seconds:
            return pids
        time.sleep(0.2)
    raise AssertionError("no worker started")


@pytest.mark.parametrize("executor, settings", [("process", ()), ("slurm", ("executor.cluster=local",))])
def test_sigterm_to_a_driver_ends_with_the_summary_and_its_workers(tmp_path, tiny_backbone, executor, settings):
    if executor == "slurm":
        pytest.importorskip("submitit")
        settings = (*settings, f"executor.folder={tmp_path / 'slurm'}/%j")
    proc = _long_grid(tmp_path, tiny_backbone, executor, *settings)
    workers = _wait_for_workers(proc)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr
    assert "stopped by SIGTERM" in stderr and "resume with: tlbench run" in stderr, stderr
    deadline = time.monotonic() + 20
    while any(process_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(process_alive(p) for p in workers)
    assert not list((tmp_path / "r").glob("*.lock"))


@pytest.mark.parametrize("executor, settings", [("process", ()), ("slurm", ("executor.cluster=local",))])
def test_a_killed_drivers_workers_stop_with_it(tmp_path, tiny_backbone, executor, settings):
    if executor == "slurm":
        pytest.importorskip("submitit")
        settings = (*settings, f"executor.folder={tmp_path / 'slurm'}/%j")
    proc = _long_grid(tmp_path, tiny_backbone, executor, *settings)
    workers = _wait_for_workers(proc)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while any(process_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [p for p in workers if process_alive(p)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the workers kept training after their driver was killed"


def test_sigterm_is_noted_inside_a_deferred_block_and_raised_between_calls():
    """ray.wait checks for signals in C: an exception raised from the handler there came out as Ray's own
    SystemError traceback, so the ray executor only notes SIGTERM while it waits and raises it in Python."""
    from tlbench.interrupts import GridInterrupted, deferred_sigterm

    ours = signal.getsignal(signal.SIGTERM)
    with deferred_sigterm() as sigterm:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert sigterm.received
        with pytest.raises(GridInterrupted) as stopped:
            sigterm.check()
    assert stopped.value.exit_code == 143 and signal.getsignal(signal.SIGTERM) is ours


def test_keep_sigterm_restores_the_handler_a_library_replaced():
    ours = signal.getsignal(signal.SIGTERM)
    with keep_sigterm():
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(15))
    assert signal.getsignal(signal.SIGTERM) is ours


# ============================================================================ 8. user text shown literally
def test_printable_escapes_control_characters_and_keeps_the_rest():
    assert printable("a\x1b]0;owned\x07b\x1b[2J\r\x9b\u202e\ud800") == \
        "a\\x1b]0;owned\\x07b\\x1b[2J\\r\\x9b\\u202e\\ud800"
    assert printable("tab\tnew\nline é ü ✓ $x^2$") == "tab\tnew\nline é ü ✓ $x^2$"


def test_terminal_output_shows_user_text_literally(tmp_path, make_record):
    results = tmp_path / "r"
    record = make_record(KEY)
    record["trial"]["backbone"] = "b\x1b]0;owned\x07\x1b[2J"
    write_record(results, lambda k: record)
    (results / "\x1b]2;x\x07bad.json").write_text("{")
    result = CliRunner().invoke(cli, ["leaderboard", "--results-dir", str(results)])
    assert result.exit_code == 0
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "b\\x1b]0;owned\\x07" in result.stdout and "\\x1b]2;x\\x07bad.json" in result.stderr


def test_error_lines_show_user_text_literally(tmp_path, tiny_backbone):
    result = CliRunner().invoke(cli, ["run", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic", "--set",
                                      "data.augment=\x1b[2J\x07", "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "\x1b" not in result.stderr and "\\x1b[2J\\x07" in result.stderr


def test_progress_labels_show_user_text_literally():
    import io

    from tlbench.progress import make_progress

    stream = io.StringIO()
    with make_progress("lines", stream)("a\x1b[2Jb", 1) as bar:
        bar.epoch({"epoch": 1, "epochs": 1, "train_loss": 0.5, "val_top1": 0.5, "images_per_s": 1.0})
    assert "\x1b" not in stream.getvalue() and "a\\x1b[2Jb" in stream.getvalue()


def test_plot_labels_are_drawn_as_written_never_as_maths(tmp_path, make_record):
    pytest.importorskip("matplotlib")
    import base64
    import re

    results = tmp_path / "r"
    for seed, key in enumerate((KEY, OTHER)):
        record = make_record(key, seed=seed)
        record["trial"]["label"] = "a$\\foo{x}$b$x^2$"  # invalid mathtext: matplotlib would raise
        write_record(results, lambda k: record, key=key)
    result = CliRunner().invoke(cli, ["report", "--results-dir", str(results), "--out", str(tmp_path / "r.html"),
                                      "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    page = (tmp_path / "r.html").read_text()
    svgs = "".join(base64.b64decode(m).decode() for m in re.findall(r"base64,([A-Za-z0-9+/=]+)", page))
    assert svgs and 'id="DejaVuSans-7"' in svgs, "the $ signs are drawn (glyph 7 of DejaVu Sans)"
    assert "Oblique" not in svgs, "nothing drawn in maths italics"
