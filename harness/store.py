"""Results are files: one JSON record per trial, written atomically, claimed atomically. This module alone knows the
results folder's layout: ``<key>.json`` records, ``<key>.lock`` claims, ``<key>.safetensors`` weights, and the sweep
files of ``--tune`` under ``tuning/``.

A record appears whole or not at all (temp file, fsync, rename), so a ``kill -9`` at any moment leaves either the
old state or the finished record. Two processes on one directory claim a trial with an exclusive lock on
``<key>.lock``; the kernel releases it when the process dies, so no claim is ever left stale. Records from two
machines merge by copying the files into one directory. Only the driver of a grid claims and writes records.

With ``tlbench run --save-models``, a trial's trained weights lie beside its record as ``<key>.safetensors``,
written atomically by the worker that trained it (before the driver writes the record, so a record that names a
file never points at a half-written one); ``--save-models best`` prunes them to one trial per dataset x backbone,
chosen on validation (:meth:`ResultStore.prune_weights`).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from safetensors.torch import save

from tlbench.files import MAX_JSON_BYTES, Refused, atomic_write_bytes, read_json, read_regular, remove_stale_temporaries
from tlbench.records import KEY_PATTERN, SCHEMA_VERSION, Record, RecordError, best_on_validation
from tlbench.sweeps import Sweep, SweepError
from tlbench.types import UsageError

__all__ = ["SCHEMA_VERSION", "ResultStore", "atomic_write_bytes", "atomic_write_text", "default_results_dir"]
WEIGHTS_SUFFIX = ".safetensors"
RESULTS_ENV = "TLBENCH_RESULTS_DIR"
DEFAULT_RESULTS_DIR = "tlbench-results"
SWEEP_DIR = "tuning"  # <results>/tuning/<sweep key>.json: what `tlbench run --tune` chose
MAX_RECORD_BYTES = MAX_JSON_BYTES  # a larger <key>.json is refused unread (real records: a few KiB)
MAX_SWEEP_BYTES = MAX_JSON_BYTES


def default_results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS_DIR)


def atomic_write_text(path: Path, text: str, readable_by_all: bool = True) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part, with the
    permissions the user's umask gives (:func:`tlbench.files.atomic_write_bytes`). ``readable_by_all`` is kept for
    callers written for 0.2: every file is written so now."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_weights(path: Path, state_dict: Any, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """A state dict as a safetensors file, written atomically; returns its size and sha256 (for the record).
    Tensors are copied to the CPU, contiguous, and unshared (safetensors refuses shared storage)."""
    tensors = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in state_dict.items()}
    data = save(tensors, metadata=metadata)
    atomic_write_bytes(Path(path), data)
    return {"file": Path(path).name, "format": "safetensors", "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "tensors": len(tensors)}


class ResultStore:
    """The records of one results directory. Reading never crashes a command: a file that is not a valid record is
    skipped with one warning line (through ``warn``; by default the ``tlbench`` logger), and records are counted
    once per trial key however many copies of a record lie in the directory."""

    def __init__(self, root: Path | str, warn: Callable[[str], None] | None = None):
        self.root = Path(root)
        self._claims: dict[str, int] = {}
        self._warn = warn or logging.getLogger("tlbench").warning
        self._warned: set[str] = set()

    def warn(self, message: str) -> None:
        if message not in self._warned:  # once per problem per process, however often the directory is read
            self._warned.add(message)
            self._warn(message)

    def check_writable(self) -> None:
        """Fail early, before any trial runs and without creating anything, with the one-line fix."""
        target = self.root
        while not target.exists() and not target.is_symlink() and target != target.parent:
            target = target.parent
        problem = None
        if target == self.root and not target.is_dir():
            problem = "exists and is not a directory"
        elif not target.is_dir():
            problem = f"cannot be created in {str(target)!r}: it is a file, not a directory"
        elif not os.access(target, os.W_OK | os.X_OK):
            problem = "is not writable" if target == self.root else f"cannot be created in {str(target)!r}"
        if problem:
            raise UsageError(f"results directory {str(self.root)!r} {problem}; choose another with --results-dir "
                             f"or ${RESULTS_ENV}")

    def check_record_paths(self, keys: Iterable[str]) -> None:
        """Where a trial's record will go there must be nothing but a record: a directory or other non-file named
        ``<key>.json`` would make the final rename fail after the trial ran, losing its result."""
        for key in keys:
            path = self.path(key)
            if (path.exists() or path.is_symlink()) and not path.is_file():
                kind = "a directory" if path.is_dir() else "not a regular file"
                raise UsageError(f"{str(path)!r} is {kind}, but trial {key}'s record must be written there; "
                                 f"move it away and run again")

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    # -- sweeps (tlbench run --tune)
    @property
    def sweep_dir(self) -> Path:
        return self.root / SWEEP_DIR

    def sweeps(self) -> list[Sweep]:
        """Every valid sweep file of the directory; an invalid one is skipped with one warning line."""
        if not self.sweep_dir.is_dir():
            return []
        found = []
        for path in sorted(self.sweep_dir.glob("*.json")):
            try:
                sweep = Sweep.from_json_dict(read_json(path, MAX_SWEEP_BYTES))
                if path.stem != sweep.key:
                    raise SweepError(f"the file holds sweep {sweep.key}; rename it to {sweep.key}.json")
            except Refused as exc:
                self.warn(f"skipping {path}: not a valid sweep file ({exc})")
                continue
            except OSError as exc:
                self.warn(f"skipping {path}: not readable ({exc.strerror or exc})")
                continue
            except (ValueError, TypeError, RecursionError) as exc:
                self.warn(f"skipping {path}: not a valid sweep file ({exc})")
                continue
            found.append(sweep)
        return found

    def check_sweep_paths(self, keys: Iterable[str]) -> None:
        """Where ``--tune`` will write its sweep files there must be a folder (or nothing) and, for each sweep,
        nothing but a sweep file: refused before any trial runs, or the choice would be lost after the trials."""
        folder = self.sweep_dir
        if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
            raise UsageError(f"{str(folder)!r} is not a directory, but --tune writes its sweep files there; move it "
                             f"away and run again")
        for key in keys:
            path = folder / f"{key}.json"
            if (path.exists() or path.is_symlink()) and not path.is_file():
                kind = "a directory" if path.is_dir() else "not a regular file"
                raise UsageError(f"{str(path)!r} is {kind}, but sweep {key} must be written there; move it away "
                                 f"and run again")

    def write_sweep(self, sweep: Sweep) -> Path:
        """Write a sweep file atomically; ``OSError`` (nothing half-written) when it cannot be written."""
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        path = self.sweep_dir / f"{sweep.key}.json"
        atomic_write_text(path, json.dumps(sweep.to_json_dict(), indent=1, allow_nan=False) + "\n")
        return path

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def write(self, record: Record) -> Path:
        """Write atomically (strict JSON: a record with NaN or infinity is refused before anything is written)."""
        text = record.to_json()
        path = self.path(record.key)
        atomic_write_text(path, text)
        return path

    def weights_path(self, key: str) -> Path:
        return self.root / f"{key}{WEIGHTS_SUFFIX}"

    def prune_weights(self) -> tuple[list[Record], list[Path]]:
        """``--save-models best``: keep the weights file of each dataset x backbone's trial best on validation
        (:func:`tlbench.records.best_on_validation` over every record here) and remove the others. A file without
        a record is removed only when no live process holds its trial (it is then a leftover of a killed run; a
        trial still running keeps it). Returns the best records (with or without a file) and the removed files."""
        records = list(self.records())
        best = best_on_validation(records)
        keep = {record.key for record in best.values()}
        recorded = {record.key for record in records}
        removed: list[Path] = []
        for path in sorted(self.root.glob(f"*{WEIGHTS_SUFFIX}")):
            key = path.name[:-len(WEIGHTS_SUFFIX)]
            if not KEY_PATTERN.match(key) or key in keep or not path.is_file():
                continue
            if key in recorded:
                path.unlink(missing_ok=True)
                removed.append(path)
            elif key not in self._claims and self.claim(key):
                try:
                    if self.read(key) is None:
                        path.unlink(missing_ok=True)
                        removed.append(path)
                finally:
                    self.release(key)
        return list(best.values()), removed

    def prune_weights_report(self) -> list[str]:
        """:meth:`prune_weights`, said in lines for the grid's reporter."""
        best, removed = self.prune_weights()
        lines = []
        for record in sorted(best, key=lambda r: (r.trial.dataset, r.trial.backbone, r.key)):
            where = f"{record.trial.dataset} / {record.trial.backbone}"
            path = self.weights_path(record.key)
            val = f"val {100 * record.metrics.val_top1:.1f}%"
            if path.is_file():
                lines.append(f"kept the weights of {where}'s best trial on validation ({record.trial.label} seed "
                             f"{record.trial.seed}, {val}): {path} ({path.stat().st_size / 1e6:.1f} MB); "
                             f"export it with `tlbench export {record.key}`")
            else:
                lines.append(f"{where}'s best trial on validation ({record.key}, {record.trial.label}, {val}) has no "
                             f"saved weights (it ran without --save-models); `tlbench export {record.key}` re-runs it")
        if removed:
            lines.append(f"removed the weights of {len(removed)} other trial(s) (--save-models best)")
        return lines

    def read(self, key: str) -> Record | None:
        path = self.path(key)
        if not path.is_file():
            return None
        record = self._load(path)
        if record is not None and record.key != key:
            self.warn(f"skipping {path}: it holds the record of trial {record.key}, not {key}")
            return None
        return record

    def _load(self, path: Path) -> Record | None:
        """The record in ``path``, or None with one warning: the file must be a regular file of at most
        :data:`MAX_RECORD_BYTES` (a FIFO, a device or a huge file is refused unread) holding a valid record."""
        try:
            data = read_regular(path, MAX_RECORD_BYTES)
        except Refused as exc:
            self.warn(f"skipping {path}: {exc}; not read as a record")
            return None
        except OSError as exc:
            self.warn(f"skipping {path}: not readable ({type(exc).__name__}: {exc.strerror or exc})")
            return None
        try:
            return Record.from_json(data)
        except RecordError as exc:
            self.warn(f"skipping {path}: not a valid tlbench record ({exc})")
            return None

    def records(self) -> Iterator[Record]:
        """Every valid record, once per trial key. A record in a file not named after its key (a copy, a renamed
        file) is flagged; it is used only when no file of the right name holds that trial. Anything else named
        ``*.json`` (a directory, a FIFO, a device, a file that is not a record) is skipped with one warning."""
        if not self.root.is_dir():
            return
        misplaced: dict[str, tuple[Path, Record]] = {}
        seen: set[str] = set()
        for path in sorted(self.root.glob("*.json")):
            if path.is_dir():
                self.warn(f"skipping {path}: a directory, not a record")
                continue
            record = self._load(path)
            if record is None:
                continue
            if path.stem != record.key:
                misplaced.setdefault(record.key, (path, record))
                continue
            seen.add(record.key)
            yield record
        for key, (path, record) in misplaced.items():
            if key in seen:
                self.warn(f"ignoring {path}: a copy of trial {key}'s record ({key}.json); counted once")
                continue
            self.warn(f"{path} holds trial {key}'s record under another name; counted once (rename it to "
                      f"{key}.json)")
            yield record

    def clean_leftovers(self) -> list[Path]:
        """Remove the temporary and lock files that killed runs leave, where no live process holds the trial:
        the claim is taken before a leftover is removed, so a file a live writer or owner uses is never touched."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        leftovers = [(tmp, tmp.name[1:].split(".json.", 1)[0]) for tmp in self.root.glob(".*.json.*.tmp")]
        leftovers += [(tmp, tmp.name[1:].split(f"{WEIGHTS_SUFFIX}.", 1)[0])
                      for tmp in self.root.glob(f".*{WEIGHTS_SUFFIX}.*.tmp")]
        for tmp, key in leftovers:
            if KEY_PATTERN.match(key) and key not in self._claims and self.claim(key):
                try:
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
                finally:
                    self.release(key)
        for lock in self.root.glob("*.lock"):
            if KEY_PATTERN.match(lock.stem) and lock.stem not in self._claims and self.claim(lock.stem):
                self.release(lock.stem)  # release unlinks the file
                removed.append(lock)
        if self.sweep_dir.is_dir():  # sweep files have no claim: a temporary file no writer holds any more
            removed += remove_stale_temporaries(self.sweep_dir.glob(".*.json.*.tmp"))
        return removed

    # ------------------------------------------------------------------------------------------------ claims
    def claim(self, key: str, wait: bool = False) -> bool:
        """Take the trial for this process: False if another live process holds it (with ``wait``: block until it
        is released, then take it).

        An exclusive ``flock`` on ``<key>.lock`` is the claim. The kernel drops it when its process dies, however
        it dies, so a claim can never go stale; the PID written inside is for people reading the directory.
        """
        lock_path = self.root / f"{key}.lock"
        while True:
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o666)  # the umask decides, as for every file
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            try:  # the holder before us may have removed the file after we opened it: then lock the new one
                same_file = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        except OSError:  # a full disk: no claim, and no lock file left behind
            lock_path.unlink(missing_ok=True)
            os.close(fd)
            raise
        self._claims[key] = fd
        return True

    def release(self, key: str) -> None:
        fd = self._claims.pop(key, None)
        if fd is None:
            return
        (self.root / f"{key}.lock").unlink(missing_ok=True)  # unlink while holding: late openers re-check inode
        os.close(fd)

