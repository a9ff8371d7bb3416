"""Results are files: one JSON record per trial, written atomically, claimed atomically.

A record appears whole or not at all (temp file, fsync, rename), so a ``kill -9`` at any moment leaves either the
old state or the finished record. Two processes on one directory claim a trial with an exclusive lock on
``<key>.lock``; the kernel releases it when the process dies, so no claim is ever left stale. Records from two
machines merge by copying the files into one directory.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

from tlbench.types import UsageError

SCHEMA_VERSION = 1
RESULTS_ENV = "TLBENCH_RESULTS_DIR"
DEFAULT_RESULTS_DIR = "tlbench-results"


def default_results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS_DIR)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


class ResultStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._claims: dict[str, int] = {}

    def check_writable(self) -> None:
        """Fail early, before any trial runs and without creating anything, with the one-line fix."""
        target = self.root
        while not target.exists() and target != target.parent:
            target = target.parent
        problem = None
        if target == self.root and not target.is_dir():
            problem = "exists and is not a directory"
        elif not os.access(target, os.W_OK | os.X_OK):
            problem = "is not writable" if target == self.root else f"cannot be created in {str(target)!r}"
        if problem:
            raise UsageError(f"results directory {str(self.root)!r} {problem}; choose another with --results-dir "
                             f"or ${RESULTS_ENV}")

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def write(self, record: dict[str, Any]) -> Path:
        record = {"schema": SCHEMA_VERSION, **record}
        path = self.path(record["key"])
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        return path

    def read(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        if not path.exists():
            return None
        return self._load(path)

    def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            warnings.warn(f"skipping {path}: not a readable JSON record ({exc})", stacklevel=2)
            return None
        if not isinstance(record, dict) or record.get("schema") != SCHEMA_VERSION or "key" not in record:
            warnings.warn(f"skipping {path}: not a tlbench record of schema {SCHEMA_VERSION}", stacklevel=2)
            return None
        return record

    def records(self) -> Iterator[dict[str, Any]]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*.json")):
            record = self._load(path)
            if record is not None:
                yield record

    # ------------------------------------------------------------------------------------------------ claims
    def claim(self, key: str) -> bool:
        """Take the trial for this process: False if another live process holds it.

        An exclusive ``flock`` on ``<key>.lock`` is the claim. The kernel drops it when its process dies, however
        it dies, so a claim can never go stale; the PID written inside is for people reading the directory.
        """
        lock_path = self.root / f"{key}.lock"
        while True:
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self._claims[key] = fd
        return True

    def release(self, key: str) -> None:
        fd = self._claims.pop(key, None)
        if fd is None:
            return
        (self.root / f"{key}.lock").unlink(missing_ok=True)  # unlink while holding: late openers re-check inode
        os.close(fd)
