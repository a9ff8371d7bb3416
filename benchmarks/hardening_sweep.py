"""The adversarial sweep of issue 27 ("Hardening, round 3"): every case is a real ``tlbench`` command in a
subprocess, with a timeout and a memory cap, against a folder staged to break it.

Run it against two installs and compare (Linux, as root: the full-disk cases mount 1 MiB tmpfs folders)::

    python benchmarks/hardening_sweep.py run --tlbench /tmp/hE-base/bin/tlbench --out before.json
    python benchmarks/hardening_sweep.py run --tlbench "$(command -v tlbench)" --out after.json
    python benchmarks/hardening_sweep.py table before.json after.json     # markdown table and counts

``run --only A1,B5`` runs a few cases. A case passes when the command does what tlbench promises for that input
(docs/records.md, docs/cli.md, docs/scaling-out.md): it ends within its timeout, without a traceback, with the exit
code, the one ``Warning:`` or ``Error:`` line and the files the docs state. The Ray cases need the ``ray`` extra
and take about a minute each on a 2-core machine; the whole sweep takes 15-25 minutes there.

Not part of the test suite (its name does not start with ``test_``); ``tests/test_hardening_round3.py`` holds the
unit tests of the same classes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

KEY = "0123456789abcdef0123"  # a valid trial key for hand-made records
CASES: list["Case"] = []


# ------------------------------------------------------------------------------------------------- running
@dataclass
class Result:
    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False
    memory_killed: bool = False
    peak_mib: float = 0.0

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def warnings(self) -> list[str]:
        return [line for line in self.lines if line.startswith("Warning:")]

    def traceback(self) -> str | None:
        if "Traceback (most recent call last)" not in self.err:
            return None
        last = [line for line in self.err.splitlines() if re.match(r"^[A-Za-z_.]+(Error|Exception|Exit)\b", line)]
        return (last[-1] if last else self.err.strip().splitlines()[-1])[:110]

    def summary(self) -> str:
        """What happened, in a few words (the table's before/after cells)."""
        if self.timed_out:
            return f"hung: killed after {self.seconds:.0f} s"
        if self.memory_killed:
            return f"memory grew past {self.peak_mib / 1024:.1f} GiB: killed"
        tb = self.traceback()
        if tb:
            return f"traceback: {tb}"
        if self.rc is not None and self.rc < 0:
            return f"killed by {signal.Signals(-self.rc).name}"
        return f"exit {self.rc}"


class Sweep:
    def __init__(self, tlbench: str, root: Path):
        self.tlbench = tlbench
        self.python = str(Path(tlbench).resolve().parent / "python")
        if not Path(self.python).exists():
            self.python = sys.executable
        self.root = root
        self.weights = root / "tiny.safetensors"
        self.cache = root / "cache"
        self.site = root / "site"
        self.mounts: list[Path] = []

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run([self.python, "-c", textwrap.dedent(f"""
            import timm, torch
            from safetensors.torch import save_file
            torch.manual_seed(0)
            save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), {str(self.weights)!r})
            """)], check=True)
        self.site.mkdir(exist_ok=True)
        (self.site / "sitecustomize.py").write_text(HALF_REPLY_SITECUSTOMIZE)

    @property
    def backbone(self) -> str:
        return f"timm:test_efficientnet@{self.weights}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(TLBENCH_CACHE_DIR=str(self.cache), TLBENCH_DISABLE_PLUGINS="1", PYTHONUNBUFFERED="1",
                   COLUMNS="200", RAY_DISABLE_USAGE_STATS="1", OMP_NUM_THREADS="1")
        env.pop("TLBENCH_RESULTS_DIR", None)
        env.update(extra)
        return env

    def tiny_run(self, results: Path, *extra: str) -> list[str]:
        return ["run", "-s", "frozen", "-b", self.backbone, "-d", "synthetic", "--set", "epochs=1", "-q",
                "--save-models", "none", "--results-dir", str(results), *extra]

    def tl(self, args: list[str], timeout: float = 120, memory_gib: float = 3.0, env: dict | None = None,
           umask: int = 0o022, on_start: Callable[[psutil.Popen], None] | None = None) -> Result:
        """One tlbench command: killed (with its process group) past ``timeout`` or when its process tree's
        resident memory passes ``memory_gib``."""
        started = time.perf_counter()
        out_file, err_file = tempfile.TemporaryFile("w+b"), tempfile.TemporaryFile("w+b")

        def child_setup() -> None:
            os.umask(umask)
            os.setsid()

        proc = psutil.Popen([self.tlbench, *map(str, args)], stdout=out_file, stderr=err_file,
                            stdin=subprocess.DEVNULL, env=env or self.env(), preexec_fn=child_setup)
        result = Result(None, "", "", 0.0)
        try:
            if on_start is not None:
                on_start(proc)
            while proc.poll() is None:
                rss = 0
                try:
                    for p in [proc, *proc.children(recursive=True)]:
                        rss += p.memory_info().rss
                except psutil.Error:
                    pass
                result.peak_mib = max(result.peak_mib, rss / 2**20)
                if rss > memory_gib * 2**30:
                    result.memory_killed = True
                    break
                if time.perf_counter() - started > timeout:
                    result.timed_out = True
                    break
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                kill_group(proc.pid)
            proc.wait()
        result.rc = proc.returncode
        result.seconds = time.perf_counter() - started
        out_file.seek(0)
        err_file.seek(0)
        result.out = out_file.read().decode("utf-8", "replace")
        result.err = err_file.read().decode("utf-8", "replace")
        return result

    # -------------------------------------------------------------------------------------------- full disks
    def full_disk(self, name: str) -> Path:
        """A 1 MiB tmpfs, filled to the last byte."""
        mount = self.root / f"full-{name}"
        mount.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
        self.mounts.append(mount)
        return mount

    @staticmethod
    def fill(mount: Path) -> None:
        try:
            with open(mount / ".filler", "ab") as handle:
                while True:
                    handle.write(b"\0" * 4096)
                    handle.flush()
        except OSError:  # no space left: full
            pass

    def unmount_all(self) -> None:
        for mount in self.mounts:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        self.mounts.clear()


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# Loaded in every process of a run that has TLBENCH_SWEEP_HALF_REPLY set: the first worker reply is written half
# (to the process executor's protocol pipe) and the worker dies, as when a worker is killed while it replies.
HALF_REPLY_SITECUSTOMIZE = '''
import os, sys
if os.environ.get("TLBENCH_SWEEP_HALF_REPLY"):
    import importlib.util

    class _HalfReply:
        def find_spec(self, name, path, target=None):
            if name != "tlbench.jobs":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            real_exec = spec.loader.exec_module

            def exec_module(module):
                real_exec(module)
                real = module.run_job_reply

                def half(job):
                    reply = real(job)
                    marker = os.environ["TLBENCH_SWEEP_HALF_REPLY"]
                    if not os.path.exists(marker):
                        open(marker, "w").close()
                        import gc, io, json
                        for obj in gc.get_objects():
                            if isinstance(obj, io.TextIOWrapper) and not obj.closed and obj.writable() \\
                                    and obj.fileno() > 2:
                                text = json.dumps(reply, default=str)
                                obj.write(text[: len(text) // 2])
                                obj.flush()
                                os._exit(1)
                    return reply
                module.run_job_reply = half
            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _HalfReply())
'''


# ------------------------------------------------------------------------------------------------- staging
def record(key: str = KEY, seed: int = 0, label: str = "full", **changes) -> dict:
    """A valid record (as tests/conftest.py's record_dict); ``changes`` replace whole sections."""
    value = {"schema": 2, "key": key, "status": "ok", "command": "tlbench run", "created": "2026-11-28T00:00:00+00:00",
             "trial": {"dataset": "synthetic", "backbone": "b", "strategy": "full", "seed": seed, "protocol": {},
                       "hparams": {}, "data": {}, "key": key, "group": "g" * 20, "label": label, "overrides": {},
                       "protocol_version": 2},
             "metrics": {"val_top1": 0.6, "test_top1": 0.5, "best_epoch": 1, "epochs": 2, "wall_s": 1.0,
                         "time_s": {"total": 1.0}}}
    value.update(changes)
    return value


def results_with_one_record(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{KEY}.json").write_text(json.dumps(record()))
    return folder


def deep_json(levels: int = 100_000) -> str:
    return "[" * levels + "]" * levels


def big_int(digits: int = 5000) -> str:
    return "1" + "0" * (digits - 1)


def sweep_file(**changes) -> dict:
    value = {"schema": 1, "kind": "tlbench sweep", "key": "s" * 20, "dataset": "synthetic", "backbone": "b",
             "strategy": "full", "space": {"lr": [0.1]}, "space_source": "declared", "budget": {}, "sampling": "all",
             "candidates": [{"config": {"lr": 0.1}, "group": "g" * 20, "label": "full", "keys": [KEY],
                             "val_top1": 0.6, "statuses": ["ok"]}],
             "chosen": 0, "selection_rule": "x", "selection_seeds": [0], "reporting_seeds": [1],
             "reporting_keys": [KEY], "reporting_group": "g" * 20, "reporting_label": "full", "created": ""}
    value.update(changes)
    return value


def image_folder(root: Path, per_class: int = 12) -> Path:
    from PIL import Image

    for index, colour in enumerate(("red", "blue")):
        folder = root / f"class{index}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), colour).save(folder / f"{i}.png")
    return root


def sparse_file(path: Path, size: int = 3 * 2**30) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


# ------------------------------------------------------------------------------------------------- verdicts
def finished(res: Result) -> tuple[bool, str] | None:
    """A failure description when the command did not end by itself without a traceback; else None."""
    if res.timed_out or res.memory_killed or res.traceback() or (res.rc is not None and res.rc < 0):
        return False, res.summary()
    return None


def one_warning(res: Result, needle: str, rc: int = 0) -> tuple[bool, str]:
    bad = finished(res)
    if bad:
        return bad
    if res.rc != rc:
        return False, f"exit {res.rc}: {(res.lines or [''])[-1][:90]}"
    found = [w for w in res.warnings() if needle in w]
    if len(found) != 1:
        return False, f"exit {res.rc}, {len(found)} Warning line(s) naming {needle!r}"
    return True, f"exit {res.rc}, one Warning line"


def one_error(res: Result, rc: int = 2, written: Path | None = None, needle: str = "") -> tuple[bool, str]:
    bad = finished(res)
    if bad:
        return bad
    errors = [line for line in res.lines if line.startswith("Error:")]
    if res.rc != rc or len(errors) != 1 or len(res.lines) != 1:
        return False, f"exit {res.rc}, {len(errors)} Error line(s): {(res.lines or [''])[-1][:80]}"
    if needle and needle not in errors[0]:
        return False, f"exit {res.rc}, error does not name {needle!r}: {errors[0][:80]}"
    if written is not None and written.exists() and any(written.iterdir()):
        return False, f"exit {res.rc}, one line, but wrote {sorted(p.name for p in written.iterdir())[:3]}"
    return True, f"exit {res.rc}, one Error line{', nothing written' if written is not None else ''}"


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith((".tmp", ".lock")))


# ------------------------------------------------------------------------------------------------- the cases
@dataclass
class Case:
    id: str
    klass: str
    what: str
    run: Callable[[Sweep, Path], tuple[bool, str]]
    slow: bool = False


def case(id: str, klass: str, what: str, slow: bool = False):
    def register(fn):
        CASES.append(Case(id, klass, what, fn, slow))
        return fn
    return register


READS = "unbounded or blocking reads"
JSONS = "hostile JSON"
OPTIONS = "options checked before the grid"
WRITES = "writes on a full or odd disk"
MODES = "permissions (umask 022)"
KEYS = "one setting, one key"
SIGNALS = "workers and signals"
TEXT = "user text in plots and terminal"


def _fifo_sweep(sw: Sweep, tmp: Path) -> Path:
    results = results_with_one_record(tmp / "r")
    (results / "tuning").mkdir()
    os.mkfifo(results / "tuning" / "fifo.json")
    return results


@case("A1", READS, "leaderboard: tuning/fifo.json is a FIFO")
def _(sw, tmp):
    results = _fifo_sweep(sw, tmp)
    return one_warning(sw.tl(["leaderboard", "--results-dir", results], timeout=40), "fifo.json")


@case("A2", READS, "report: tuning/fifo.json is a FIFO")
def _(sw, tmp):
    results = _fifo_sweep(sw, tmp)
    return one_warning(sw.tl(["report", "--results-dir", results, "--out", tmp / "r.html", "-q"], timeout=60),
                       "fifo.json")


@case("A3", READS, "leaderboard: tuning/zero.json is a symlink to /dev/zero")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    (results / "tuning").mkdir()
    (results / "tuning" / "zero.json").symlink_to("/dev/zero")
    return one_warning(sw.tl(["leaderboard", "--results-dir", results], timeout=60, memory_gib=2), "zero.json")


@case("A4", READS, "leaderboard: a record is a symlink to a 3 GB sparse file")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    (results / "feedfacefeedfacefeed.json").symlink_to(sparse_file(tmp / "sparse"))
    return one_warning(sw.tl(["leaderboard", "--results-dir", results], timeout=90, memory_gib=2),
                       "feedfacefeedfacefeed.json")


@case("A5", READS, "leaderboard: a FIFO named like a record")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    os.mkfifo(results / "feedfacefeedfacefeed.json")
    return one_warning(sw.tl(["leaderboard", "--results-dir", results], timeout=40), "feedfacefeedfacefeed.json")


@case("A6", READS, "leaderboard: a /dev/zero symlink named like a record")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    (results / "feedfacefeedfacefeed.json").symlink_to("/dev/zero")
    return one_warning(sw.tl(["leaderboard", "--results-dir", results], timeout=40, memory_gib=2),
                       "feedfacefeedfacefeed.json")


@case("A7", READS, "run: a FIFO in an image folder, data.on_bad_image=skip")
def _(sw, tmp):
    folder = image_folder(tmp / "images")
    os.mkfifo(folder / "class0" / "pipe.png")
    res = sw.tl(["run", "-s", "frozen", "-b", sw.backbone, "-d", f"imagefolder:{folder}", "--set", "epochs=1",
                 "--set", "data.on_bad_image=skip", "--set", "data.image_size=32", "-q", "--save-models", "none",
                 "--results-dir", tmp / "r"], timeout=90)
    ok, text = one_warning(res, "skipped 1 unreadable")
    return ok, text


@case("A8", READS, "run: a FIFO in an image folder (on_bad_image=fail)")
def _(sw, tmp):
    folder = image_folder(tmp / "images")
    os.mkfifo(folder / "class0" / "pipe.png")
    res = sw.tl(["run", "-s", "frozen", "-b", sw.backbone, "-d", f"imagefolder:{folder}", "--set", "epochs=1",
                 "--set", "data.image_size=32", "-q", "--results-dir", tmp / "r"], timeout=90)
    return one_error(res, written=tmp / "r", needle="pipe.png")


@case("A9", READS, "run: an image that is a symlink to /dev/zero, on_bad_image=skip")
def _(sw, tmp):
    folder = image_folder(tmp / "images")
    (folder / "class1" / "zero.png").symlink_to("/dev/zero")
    res = sw.tl(["run", "-s", "frozen", "-b", sw.backbone, "-d", f"imagefolder:{folder}", "--set", "epochs=1",
                 "--set", "data.on_bad_image=skip", "--set", "data.image_size=32", "-q", "--save-models", "none",
                 "--results-dir", tmp / "r"], timeout=90, memory_gib=3)
    return one_warning(res, "skipped 1 unreadable")


@case("A10", READS, "rerun: beside the record, a record-named symlink to a 3 GB sparse file")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    (results / "feedfacefeedfacefeed.json").symlink_to(sparse_file(tmp / "sparse"))
    res = sw.tl(["rerun", KEY, "--print-only", "--results-dir", results], timeout=90, memory_gib=2)
    return one_warning(res, "feedfacefeedfacefeed.json")


@case("A11", READS, "report: a record-named symlink to /dev/zero")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    (results / "feedfacefeedfacefeed.json").symlink_to("/dev/zero")
    return one_warning(sw.tl(["report", "--results-dir", results, "--out", tmp / "r.html", "-q"], timeout=60,
                             memory_gib=2), "feedfacefeedfacefeed.json")


@case("A12", READS, "leaderboard: a 40 MB record (valid JSON, padded) is over the stated maximum")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    text = json.dumps(record(key="feedfacefeedfacefeed", seed=1))
    (results / "feedfacefeedfacefeed.json").write_text(text[:-1] + " " * (40 * 2**20) + "}")
    return one_warning(sw.tl(["leaderboard", "--results-dir", results], timeout=60), "feedfacefeedfacefeed.json")


@case("A13", READS, "run: the dataset cache entry is a FIFO")
def _(sw, tmp):
    cache = tmp / "cache"
    env = sw.env(TLBENCH_CACHE_DIR=str(cache))
    first = sw.tl(sw.tiny_run(tmp / "r1"), env=env)
    entries = list((cache / "datasets").glob("*.safetensors"))
    if first.rc != 0 or not entries:
        return False, f"staging failed: {first.summary()}"
    entries[0].unlink()
    os.mkfifo(entries[0])
    res = sw.tl(sw.tiny_run(tmp / "r2"), env=env, timeout=60)
    return finished(res) or ((res.rc == 0), f"exit {res.rc}")


def _deep_record_folder(tmp: Path) -> Path:
    results = results_with_one_record(tmp / "r")
    (results / "feedfacefeedfacefeed.json").write_text('{"schema": 2, "x": ' + deep_json() + "}")
    return results


@case("B1", JSONS, "leaderboard: a record nested 100,000 levels deep")
def _(sw, tmp):
    return one_warning(sw.tl(["leaderboard", "--results-dir", _deep_record_folder(tmp)]), "feedfacefeedfacefeed")


@case("B2", JSONS, "report: a record nested 100,000 levels deep")
def _(sw, tmp):
    return one_warning(sw.tl(["report", "--results-dir", _deep_record_folder(tmp), "--out", tmp / "r.html", "-q"]),
                       "feedfacefeedfacefeed")


@case("B3", JSONS, "rerun --print-only: a record nested 100,000 levels deep beside the one asked for")
def _(sw, tmp):
    return one_warning(sw.tl(["rerun", KEY, "--print-only", "--results-dir", _deep_record_folder(tmp)]),
                       "feedfacefeedfacefeed")


@case("B4", JSONS, "run: a record nested 100,000 levels deep in the results folder (read at the end)")
def _(sw, tmp):
    results = _deep_record_folder(tmp)
    return one_warning(sw.tl(sw.tiny_run(results)), "feedfacefeedfacefeed")


def _big_int_folder(tmp: Path) -> Path:
    results = results_with_one_record(tmp / "r")
    text = json.dumps(record(key="feedfacefeedfacefeed", seed=1)).replace('"epochs": 2', f'"epochs": {big_int()}')
    (results / "feedfacefeedfacefeed.json").write_text(text)
    return results


@case("B5", JSONS, "leaderboard: a record with a 5,000-digit integer")
def _(sw, tmp):
    return one_warning(sw.tl(["leaderboard", "--results-dir", _big_int_folder(tmp)]), "feedfacefeedfacefeed")


@case("B6", JSONS, "report: a record with a 5,000-digit integer")
def _(sw, tmp):
    return one_warning(sw.tl(["report", "--results-dir", _big_int_folder(tmp), "--out", tmp / "r.html", "-q"]),
                       "feedfacefeedfacefeed")


def _overflow_folder(tmp: Path) -> Path:
    """One valid record and two more seeds of its configuration whose measurements sum past the largest float."""
    results = results_with_one_record(tmp / "r")
    for seed, key in enumerate(("feedfacefeedfacefeed", "deadbeefdeadbeefdead"), start=1):
        metrics = {"val_top1": 0.6, "test_top1": 0.5, "best_epoch": 1, "epochs": 2, "wall_s": 1.7e308,
                   "time_s": {"total": 1.7e308}, "train_images_per_s": 1.7e308, "eval_images_per_s": 1.7e308,
                   "peak_memory_mib": 1.7e308, "params": {"trainable": 1.7e308, "total": 1.7e308}}
        (results / f"{key}.json").write_text(json.dumps(record(key=key, seed=seed, metrics=metrics)))
    return results


@case("B7", JSONS, "leaderboard --wide: two seeds whose times sum past the largest float")
def _(sw, tmp):
    results = _overflow_folder(tmp)
    res = sw.tl(["leaderboard", "--wide", "--results-dir", results])
    bad = finished(res)
    if bad:
        return bad
    if res.rc == 0 and "inf" not in res.out.lower().replace("info", ""):
        return True, "exit 0, no inf shown" if not res.warnings() else f"exit 0, {len(res.warnings())} warning(s)"
    return False, f"exit {res.rc}{', shows inf' if 'inf' in res.out else ''}"


@case("B8", JSONS, "report: two seeds whose times sum past the largest float")
def _(sw, tmp):
    res = sw.tl(["report", "--results-dir", _overflow_folder(tmp), "--out", tmp / "r.html", "-q"])
    return finished(res) or (res.rc == 0, f"exit {res.rc}")


def _surrogate_folder(tmp: Path) -> Path:
    results = results_with_one_record(tmp / "r")
    text = json.dumps(record(key="feedfacefeedfacefeed", seed=1, label="bad\\ud800")).replace("\\\\ud800", "\\ud800")
    (results / "feedfacefeedfacefeed.json").write_text(text)
    return results


@case("B9", JSONS, "leaderboard: a record whose label is not valid Unicode (lone surrogate \\ud800)")
def _(sw, tmp):
    return one_warning(sw.tl(["leaderboard", "--results-dir", _surrogate_folder(tmp)]), "feedfacefeedfacefeed")


@case("B10", JSONS, "report: a record whose label is not valid Unicode")
def _(sw, tmp):
    return one_warning(sw.tl(["report", "--results-dir", _surrogate_folder(tmp), "--out", tmp / "r.html", "-q"]),
                       "feedfacefeedfacefeed")


@case("B11", JSONS, "leaderboard: a sweep file nested 100,000 levels deep")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    (results / "tuning").mkdir()
    (results / "tuning" / "deep.json").write_text('{"schema": 1, "space": ' + deep_json() + "}")
    return one_warning(sw.tl(["leaderboard", "--results-dir", results]), "deep.json")


@case("B12", JSONS, "leaderboard: a sweep file with a 5,000-digit integer")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    (results / "tuning").mkdir()
    text = json.dumps(sweep_file()).replace('"chosen": 0', f'"chosen": {big_int()}')
    (results / "tuning" / f"{'s' * 20}.json").write_text(text)
    return one_warning(sw.tl(["leaderboard", "--results-dir", results]), "s" * 20)


@case("B13", JSONS, "leaderboard: a sweep file whose strategy name is not valid Unicode")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    (results / "tuning").mkdir()
    text = json.dumps(sweep_file(reporting_label="x\\udfff")).replace("\\\\udfff", "\\udfff")
    (results / "tuning" / f"{'s' * 20}.json").write_text(text)
    return one_warning(sw.tl(["leaderboard", "--results-dir", results]), "s" * 20)


@case("B14", JSONS, "leaderboard: a record whose number 1e999 overflows to infinity when parsed")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    text = json.dumps(record(key="feedfacefeedfacefeed", seed=1)).replace('"wall_s": 1.0', '"wall_s": 1e999')
    (results / "feedfacefeedfacefeed.json").write_text(text)
    return one_warning(sw.tl(["leaderboard", "--results-dir", results]), "feedfacefeedfacefeed")


def _option_case(sw: Sweep, tmp: Path, executor: str, *settings: str, timeout: float = 90,
                 memory_gib: float = 3.0, needle: str = "") -> tuple[bool, str]:
    results = tmp / "r"
    args = sw.tiny_run(results, "--executor", executor, *[a for s in settings for a in ("--set", s)])
    started = time.perf_counter()
    res = sw.tl(args, timeout=timeout, memory_gib=memory_gib)
    ok, text = one_error(res, written=results, needle=needle)
    if ok and time.perf_counter() - started > 45:
        return False, f"one line, but after {time.perf_counter() - started:.0f} s"
    return ok, text


@case("C1", OPTIONS, "ray: executor.address points at nothing (127.0.0.1:9)", slow=True)
def _(sw, tmp):
    return _option_case(sw, tmp, "ray", "executor.address=127.0.0.1:9", needle="127.0.0.1:9")


@case("C2", OPTIONS, "ray: executor.num_cpus=1000, more than the cluster has", slow=True)
def _(sw, tmp):
    return _option_case(sw, tmp, "ray", "executor.num_cpus=1000", needle="num_cpus")


@case("C3", OPTIONS, "ray: executor.num_gpus=1 on a cluster without a GPU", slow=True)
def _(sw, tmp):
    return _option_case(sw, tmp, "ray", "executor.num_gpus=1", needle="num_gpus")


@case("C4", OPTIONS, "slurm: executor.poll_s=-1")
def _(sw, tmp):
    return _option_case(sw, tmp, "slurm", "executor.cluster=local", "executor.poll_s=-1", needle="poll_s")


@case("C5", OPTIONS, "slurm: executor.folder under a plain file")
def _(sw, tmp):
    (tmp / "plain").write_text("x")
    return _option_case(sw, tmp, "slurm", "executor.cluster=local", f"executor.folder={tmp}/plain/sub/%j",
                        needle="folder")


@case("C6", OPTIONS, "slurm: executor.mem_gb=-4")
def _(sw, tmp):
    return _option_case(sw, tmp, "slurm", "executor.cluster=local", "executor.mem_gb=-4", needle="mem_gb")


@case("C7", OPTIONS, "run --seeds 1000000000000")
def _(sw, tmp):
    res = sw.tl(sw.tiny_run(tmp / "r", "--seeds", "1000000000000"), memory_gib=3)
    return one_error(res, written=tmp / "r", needle="seeds")


@case("C8", OPTIONS, "run --set image_size=4096 (a batch needs far more memory than there is)")
def _(sw, tmp):
    res = sw.tl(sw.tiny_run(tmp / "r", "--set", "image_size=4096"), memory_gib=4, timeout=180)
    ok, text = one_error(res, written=tmp / "r", needle="image_size")
    if not ok and (tmp / "r").exists() and leftovers(tmp / "r"):
        text += f"; left {leftovers(tmp / 'r')[0]}"
    return ok, text


@case("C9", OPTIONS, "process: executor.threads_per_worker=100000")
def _(sw, tmp):
    return _option_case(sw, tmp, "process", "executor.threads_per_worker=100000", needle="threads_per_worker")


@case("C10", OPTIONS, "slurm: executor.cpus_per_task=0")
def _(sw, tmp):
    return _option_case(sw, tmp, "slurm", "executor.cluster=local", "executor.cpus_per_task=0",
                        needle="cpus_per_task")


@case("C11", OPTIONS, "ray: executor.address is not a host:port (nohost)", slow=True)
def _(sw, tmp):
    return _option_case(sw, tmp, "ray", "executor.address=nohost", needle="address")


@case("C12", OPTIONS, "run --set data.image_size=4096 on synthetic (storage and batch past memory)")
def _(sw, tmp):
    res = sw.tl(sw.tiny_run(tmp / "r", "--set", "data.image_size=4096", "--set", "data.storage_size=4096"),
                memory_gib=4, timeout=180)
    return one_error(res, written=tmp / "r")


@case("D1", WRITES, "report --out on a full disk")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    disk = sw.full_disk("report")
    sw.fill(disk)
    res = sw.tl(["report", "--results-dir", results, "--out", disk / "report.html", "-q"])
    bad = finished(res)
    if bad:
        return bad
    left = [p.name for p in disk.iterdir() if p.name != ".filler"]
    if res.rc in (0, None) or len(res.lines) != 1 or left:
        return False, f"exit {res.rc}, {len(res.lines)} line(s), left {left}"
    return True, f"exit {res.rc}, one line, nothing left"


@case("D2", WRITES, "run: the dataset cache on a full disk")
def _(sw, tmp):
    disk = sw.full_disk("cache")
    sw.fill(disk)
    res = sw.tl(sw.tiny_run(tmp / "r"), env=sw.env(TLBENCH_CACHE_DIR=str(disk)))
    ok, text = one_warning(res, "cache")
    left = [str(p.relative_to(disk)) for p in disk.rglob("*") if p.is_file() and p.name != ".filler"]
    return (ok and not left), text + (f"; left {left}" if left else "")


@case("D3", WRITES, "run --tune resumed on a disk that is now full: its sweep file cannot be written")
def _(sw, tmp):
    disk = sw.full_disk("tune")
    results = disk / "r"
    first = sw.tl(sw.tiny_run(results, "--tune", "--tune-budget", "1"))
    sweeps = list((results / "tuning").glob("*.json"))
    if first.rc != 0 or not sweeps:
        return False, f"staging failed: {first.summary()}"
    sweeps[0].unlink()  # the last sweep file is gone, and the disk is full when the run resumes
    sw.fill(disk)
    res = sw.tl(sw.tiny_run(results, "--tune", "--tune-budget", "1"))
    bad = finished(res)
    if bad:
        return bad
    said = [line for line in res.lines if "sweep" in line and sweeps[0].name in line]
    if res.rc != 1 or not said or leftovers(results):
        return False, f"exit {res.rc}, {len(said)} line(s) naming the sweep file, leftovers {leftovers(results)}"
    return True, f"exit {res.rc}, one line naming the sweep file, nothing left"


@case("D4", WRITES, "run --tune: the results folder's tuning is a plain file")
def _(sw, tmp):
    results = tmp / "r"
    results.mkdir()
    (results / "tuning").write_text("not a folder")
    res = sw.tl(sw.tiny_run(results, "--tune", "--tune-budget", "1"))
    ok, text = one_error(res, needle="tuning")
    records = list(results.glob("*.json"))
    return ok and not records, text + (f"; {len(records)} trial(s) ran first" if records else "")


@case("D5", WRITES, "run --tune: a sweep file's temporary file left by a killed run is cleaned")
def _(sw, tmp):
    results = tmp / "r"
    (results / "tuning").mkdir(parents=True)
    stale = results / "tuning" / f".{'a' * 20}.json.k1ll3d.tmp"
    stale.write_text("{")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    res = sw.tl(sw.tiny_run(results, "--tune", "--tune-budget", "1"))
    bad = finished(res)
    if bad:
        return bad
    return (res.rc == 0 and not stale.exists()), f"exit {res.rc}, temp file {'left' if stale.exists() else 'removed'}"


@case("D6", WRITES, "run: the results folder on a full disk")
def _(sw, tmp):
    disk = sw.full_disk("results")
    results = disk / "r"
    results.mkdir()
    sw.fill(disk)
    res = sw.tl(sw.tiny_run(results))
    bad = finished(res)
    if bad:
        return bad
    left = leftovers(results)
    said = [line for line in res.lines if "No space left" in line]
    if res.rc == 0 or not said or left:
        return False, f"exit {res.rc}, {len(said)} line(s) saying the disk is full, left {left}"
    return True, f"exit {res.rc}, says the disk is full, nothing left"


@case("D7", WRITES, "report --out names an existing FIFO")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    os.mkfifo(tmp / "out.html")
    res = sw.tl(["report", "--results-dir", results, "--out", tmp / "out.html", "-q"])
    ok, text = one_error(res, needle="out.html")
    still = stat.S_ISFIFO(os.lstat(tmp / "out.html").st_mode)
    return ok and still, text + ("" if still else "; the FIFO was replaced")


@case("D8", WRITES, "run: a weights file (--save-models all) on a full disk")
def _(sw, tmp):
    disk = sw.full_disk("weights")
    results = disk / "r"
    results.mkdir()
    res = sw.tl(["run", "-s", "frozen", "-b", sw.backbone, "-d", "synthetic", "--set", "epochs=1", "-q",
                 "--save-models", "all", "--results-dir", results, "--set", "data.train_size=16"],
                on_start=lambda proc: (time.sleep(0.5), sw.fill(disk)))
    bad = finished(res)
    if bad:
        return bad
    left = [p for p in leftovers(results)]
    return (not left), f"exit {res.rc}, left {left}" if left else f"exit {res.rc}, nothing half-written"


def _mode_of(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


@case("E1", MODES, "a record is 0644")
def _(sw, tmp):
    res = sw.tl(sw.tiny_run(tmp / "r"))
    files = list((tmp / "r").glob("*.json"))
    if res.rc != 0 or not files:
        return False, res.summary()
    return _mode_of(files[0]) == "0o644", _mode_of(files[0])


@case("E2", MODES, "a weights file (--save-models all) is 0644")
def _(sw, tmp):
    args = [a if a != "none" else "all" for a in sw.tiny_run(tmp / "r")]
    res = sw.tl(args)
    files = list((tmp / "r").glob("*.safetensors"))
    if res.rc != 0 or not files:
        return False, res.summary()
    return _mode_of(files[0]) == "0o644", _mode_of(files[0])


@case("E3", MODES, "a sweep file (--tune) is 0644")
def _(sw, tmp):
    res = sw.tl(sw.tiny_run(tmp / "r", "--tune", "--tune-budget", "1"))
    files = list((tmp / "r" / "tuning").glob("*.json"))
    if res.rc != 0 or not files:
        return False, res.summary()
    return _mode_of(files[0]) == "0o644", _mode_of(files[0])


@case("E4", MODES, "a dataset cache file is 0644")
def _(sw, tmp):
    res = sw.tl(sw.tiny_run(tmp / "r"), env=sw.env(TLBENCH_CACHE_DIR=str(tmp / "cache")))
    files = list((tmp / "cache").rglob("*.safetensors"))
    if res.rc != 0 or not files:
        return False, res.summary()
    return _mode_of(files[0]) == "0o644", _mode_of(files[0])


@case("E5", MODES, "the report is 0644")
def _(sw, tmp):
    res = sw.tl(["report", "--results-dir", results_with_one_record(tmp / "r"), "--out", tmp / "r.html", "-q"])
    if res.rc != 0:
        return False, res.summary()
    return _mode_of(tmp / "r.html") == "0o644", _mode_of(tmp / "r.html")


@case("E6", MODES, "under umask 077 a record is 0600 (the umask is the user's)")
def _(sw, tmp):
    res = sw.tl(sw.tiny_run(tmp / "r"), umask=0o077)
    files = list((tmp / "r").glob("*.json"))
    if res.rc != 0 or not files:
        return False, res.summary()
    return _mode_of(files[0]) == "0o600", _mode_of(files[0])


def _same_key(sw: Sweep, tmp: Path, first: str, second: str) -> tuple[bool, str]:
    results = tmp / "r"
    one = sw.tl(sw.tiny_run(results, "--set", first))
    two = sw.tl(sw.tiny_run(results, "--set", second))
    bad = finished(one) or finished(two)
    if bad:
        return bad
    if two.rc != 0:
        return False, f"{second}: exit {two.rc}: {(two.lines or [''])[-1][:70]}"
    keys = sorted(p.stem for p in results.glob("*.json"))
    return len(keys) == 1, f"{len(keys)} key(s)"


@case("F1", KEYS, "--set frozen.head_lr=1 then frozen.head_lr=1.0")
def _(sw, tmp):
    return _same_key(sw, tmp, "frozen.head_lr=1", "frozen.head_lr=1.0")


@case("F2", KEYS, "--set warmup_epochs=0 then warmup_epochs=0.0")
def _(sw, tmp):
    return _same_key(sw, tmp, "warmup_epochs=0", "warmup_epochs=0.0")


@case("F3", KEYS, "--set epochs=1 then epochs=1.0 (an integer setting)")
def _(sw, tmp):
    return _same_key(sw, tmp, "epochs=1", "epochs=1.0")


@case("F4", KEYS, "--set frozen.head_lr=1e-4 then frozen.head_lr=0.0001")
def _(sw, tmp):
    return _same_key(sw, tmp, "frozen.head_lr=1e-4", "frozen.head_lr=0.0001")


@case("G1", SIGNALS, "process: a worker dies halfway through writing its reply (2 trials)")
def _(sw, tmp):
    results = tmp / "r"
    env = sw.env(TLBENCH_SWEEP_HALF_REPLY=str(tmp / "died"), PYTHONPATH=str(sw.site))
    res = sw.tl(sw.tiny_run(results, "--executor", "process", "--seeds", "2"), env=env, timeout=180)
    bad = finished(res)
    if bad:
        return bad
    statuses = sorted(json.loads(p.read_text()).get("status") for p in results.glob("*.json"))
    if statuses != ["failed", "ok"]:
        return False, f"exit {res.rc}, records {statuses}"
    return True, f"exit {res.rc}, a failed record with the reason, the other trial ran"


def _signal_driver(sw: Sweep, tmp: Path, executor: str, signum: int, wait_s: float, *settings: str,
                   timeout: float = 240) -> tuple[Result, list[int]]:
    """A long grid under ``executor``; ``signum`` to the driver alone ``wait_s`` after its first worker process
    appears; returns the result and the worker processes still alive 15 s after the driver ended."""
    children: list[psutil.Process] = []

    def on_start(proc: psutil.Popen) -> None:
        first_seen = None
        deadline = time.time() + timeout / 2
        while executor != "local" and time.time() < deadline and proc.poll() is None:
            try:
                kids = proc.children(recursive=True)
            except psutil.Error:
                kids = []
            if kids and first_seen is None:
                first_seen = time.time()
            if first_seen is not None and time.time() - first_seen > wait_s:
                children.extend(kids)
                break
            time.sleep(0.2)
        if executor == "local":
            time.sleep(wait_s)
        os.kill(proc.pid, signum)

    args = ["run", "-s", "full", "-b", sw.backbone, "-d", "synthetic", "--set", "epochs=3000", "--seeds", "2",
            "--save-models", "none", "-q", "--results-dir", tmp / "r", "--executor", executor,
            *[a for s in settings for a in ("--set", s)]]
    res = sw.tl(args, timeout=timeout, on_start=on_start)
    deadline = time.time() + 15
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    for c in alive:
        try:
            c.kill()
        except psutil.Error:
            pass
    if executor != "local" and not children:
        raise RuntimeError(f"no worker process was seen before the signal (staging failed; the driver: "
                           f"{res.summary()}, {(res.lines or [''])[-1][:100]})")
    return res, [c.pid for c in alive]


def _sigterm_verdict(res: Result) -> tuple[bool, str]:
    bad = finished(res)
    if bad:
        return bad
    resume = any("resume with:" in line for line in res.lines)
    if res.rc != 143 or not resume:
        return False, f"exit {res.rc}, {'a' if resume else 'no'} resume line"
    return True, "exit 143, summary and resume command"


@case("G2", SIGNALS, "SIGTERM to a ray driver", slow=True)
def _(sw, tmp):
    res, _ = _signal_driver(sw, tmp, "ray", signal.SIGTERM, 20)
    return _sigterm_verdict(res)


@case("G3", SIGNALS, "SIGTERM to a process driver (its worker stops too)")
def _(sw, tmp):
    res, alive = _signal_driver(sw, tmp, "process", signal.SIGTERM, 8)
    ok, text = _sigterm_verdict(res)
    return ok and not alive, text + (f"; worker {alive} still running" if alive else "")


@case("G4", SIGNALS, "SIGKILL to a process driver: its worker child stops with it")
def _(sw, tmp):
    res, alive = _signal_driver(sw, tmp, "process", signal.SIGKILL, 8)
    return not alive, f"worker {alive} still training 15 s later" if alive else "the worker stopped"


@case("G5", SIGNALS, "SIGTERM to a slurm (cluster=local) driver")
def _(sw, tmp):
    res, _ = _signal_driver(sw, tmp, "slurm", signal.SIGTERM, 8, "executor.cluster=local",
                            f"executor.folder={tmp}/slurm/%j")
    return _sigterm_verdict(res)


@case("G6", SIGNALS, "SIGTERM to a local driver")
def _(sw, tmp):
    res, _ = _signal_driver(sw, tmp, "local", signal.SIGTERM, 12)
    return _sigterm_verdict(res)


@case("G7", SIGNALS, "SIGKILL to a slurm (cluster=local) driver: its task processes stop with it")
def _(sw, tmp):
    res, alive = _signal_driver(sw, tmp, "slurm", signal.SIGKILL, 10, "executor.cluster=local",
                                f"executor.folder={tmp}/slurm/%j")
    return not alive, f"task {alive} still training 15 s later" if alive else "the tasks stopped"


def _report_svgs(html_text: str) -> str:
    import base64

    return "".join(base64.b64decode(m).decode("utf-8", "replace")
                   for m in re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", html_text))


@case("H1", TEXT, "report: a label with invalid maths notation ($\\foo$)")
def _(sw, tmp):
    results = tmp / "r"
    results.mkdir()
    (results / f"{KEY}.json").write_text(json.dumps(record(label="full[lr=$\\foo{x}$]")))
    res = sw.tl(["report", "--results-dir", results, "--out", tmp / "r.html", "-q"])
    return finished(res) or (res.rc == 0, f"exit {res.rc}")


@case("H2", TEXT, "report: a label with valid maths notation ($x^2$) is drawn literally")
def _(sw, tmp):
    results = tmp / "r"
    results.mkdir()
    for seed, key in enumerate((KEY, "feedfacefeedfacefeed")):
        (results / f"{key}.json").write_text(json.dumps(record(key=key, seed=seed, label="a$x^2$b")))
    res = sw.tl(["report", "--results-dir", results, "--out", tmp / "r.html", "-q"])
    bad = finished(res)
    if bad or res.rc != 0:
        return bad or (False, f"exit {res.rc}")
    svgs = _report_svgs((tmp / "r.html").read_text())
    dollar = 'id="DejaVuSans-7"' in svgs  # glyph 7 of DejaVu Sans is "$"; maths would draw an oblique x instead
    return dollar, "the $ signs drawn" if dollar else "drawn as maths (no $ glyph)"


@case("H3", TEXT, "leaderboard: a label with terminal control sequences")
def _(sw, tmp):
    results = tmp / "r"
    results.mkdir()
    (results / f"{KEY}.json").write_text(json.dumps(record(label="x\x1b]0;owned\x07\x1b[2Jy")))
    res = sw.tl(["leaderboard", "--results-dir", results])
    bad = finished(res)
    if bad:
        return bad
    raw = "\x1b" in res.out or "\x07" in res.out
    return (res.rc == 0 and not raw), f"exit {res.rc}, {'raw ESC/BEL on the terminal' if raw else 'shown escaped'}"


@case("H4", TEXT, "run: a --set value with control sequences in the Error line")
def _(sw, tmp):
    res = sw.tl(sw.tiny_run(tmp / "r", "--set", "data.augment=\x1b]0;owned\x07wipe"))
    ok, text = one_error(res, written=tmp / "r")
    raw = "\x1b" in res.err or "\x07" in res.err
    return ok and not raw, text + ("; raw ESC on the terminal" if raw else "")


@case("H5", TEXT, "leaderboard: a file whose name holds control sequences, in the Warning line")
def _(sw, tmp):
    results = results_with_one_record(tmp / "r")
    (results / "\x1b]0;owned\x07evil.json").write_text("{")
    res = sw.tl(["leaderboard", "--results-dir", results])
    ok, text = one_warning(res, "evil.json")
    raw = "\x1b" in res.err or "\x07" in res.err
    return ok and not raw, text + ("; raw ESC on the terminal" if raw else "")


@case("H6", TEXT, "run: a trial's failure message with control sequences, in its trial line")
def _(sw, tmp):
    folder = image_folder(tmp / "images\x1b]0;owned\x07")
    res = sw.tl(["run", "-s", "frozen", "-b", sw.backbone, "-d", f"imagefolder:{folder}/nope", "-q",
                 "--results-dir", tmp / "r"])
    bad = finished(res)
    if bad:
        return bad
    raw = "\x1b" in res.err or "\x07" in res.err
    return (res.rc == 2 and not raw), f"exit {res.rc}, {'raw ESC on the terminal' if raw else 'shown escaped'}"


# ------------------------------------------------------------------------------------------------- main
def run_sweep(tlbench: str, out: Path, only: set[str] | None, skip_slow: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="tlbench-sweep-"))
    sweep = Sweep(tlbench, root)
    sweep.prepare()
    # an existing --out file is updated case by case (so --only reruns a few cases of a full sweep)
    results = json.loads(out.read_text())["cases"] if out.exists() else {}
    try:
        for item in CASES:
            if (only and item.id not in only) or (skip_slow and item.slow and not only):
                continue
            tmp = root / item.id
            tmp.mkdir()
            started = time.perf_counter()
            try:
                ok, text = item.run(sweep, tmp)
            except Exception as exc:  # the staging itself broke: say so, go on
                ok, text = False, f"sweep error: {type(exc).__name__}: {exc}"
            finally:
                sweep.unmount_all()
            results[item.id] = {"class": item.klass, "case": item.what, "ok": bool(ok), "result": text,
                                "seconds": round(time.perf_counter() - started, 1)}
            print(f"{item.id:4} {'ok  ' if ok else 'FAIL'} {time.perf_counter() - started:5.1f}s  {item.what}: {text}",
                  flush=True)
            out.write_text(json.dumps({"tlbench": tlbench, "cases": results}, indent=1))
    finally:
        sweep.unmount_all()
    passed = sum(r["ok"] for r in results.values())
    print(f"{passed} of {len(results)} cases handled as promised; {len(results) - passed} not")


def table(before_file: Path, after_file: Path) -> None:
    before = json.loads(before_file.read_text())["cases"]
    after = json.loads(after_file.read_text())["cases"]
    cell = lambda r: ("" if r is None else ("ok: " if r["ok"] else "**not**: ") + r["result"]).replace("|", "\\|")
    print("| class | case | before | after |\n|---|---|---|---|")
    for item in CASES:
        b, a = before.get(item.id), after.get(item.id)
        if b is None and a is None:
            continue
        print(f"| {item.klass} | {item.id} {item.what.replace('|', '/')} | {cell(b)} | {cell(a)} |")
    for name, data in (("before", before), ("after", after)):
        passed = sum(r["ok"] for r in data.values())
        print(f"\n{name}: {passed} of {len(data)} handled as promised, {len(data) - passed} not", end="")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--tlbench", default="tlbench")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--only", default="")
    run.add_argument("--skip-slow", action="store_true", help="leave out the Ray cases")
    show = sub.add_parser("table")
    show.add_argument("before", type=Path)
    show.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        only = {s.strip() for s in args.only.split(",") if s.strip()} or None
        run_sweep(args.tlbench, args.out, only, args.skip_slow)
    else:
        table(args.before, args.after)


if __name__ == "__main__":
    main()
