"""Files in folders that others write to (a results folder, a cache, an image folder): read with bounds, parsed
with limits, written whole with the user's permissions. The one owner of those rules.

Reading: :func:`read_regular` opens only a regular file (a FIFO, a device, a socket or a directory is refused by
its type, before it is opened, so nothing can block or stream forever), and reads at most a stated number of
bytes: a larger file is refused, however sparse. :func:`parse_json` accepts only what every reader can use: at
most :data:`MAX_JSON_DEPTH` levels of nesting, integers that fit in 64 bits, other numbers finite and at most
:data:`MAX_JSON_MAGNITUDE` in size (so sums, squares and products of them stay finite), strings that are valid
Unicode (no lone surrogate). Whatever it refuses raises :class:`Refused` with one line saying why; callers skip
the file with one warning.

Writing: :func:`atomic_write_bytes` writes a temporary file in the target's folder (held with an exclusive
``flock`` while it exists), fsyncs it, gives it the permissions a plain ``open()`` would give under the user's
umask (0644 under umask 022; ``mkstemp`` alone would give 0600) and renames it into place: readers see the old file
or the whole new one. A write that fails (a full disk, an I/O error) removes its temporary file and raises
``OSError``; a temporary file a killed process left behind is removed by :func:`remove_stale_temporaries` once no
process holds it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable

MAX_JSON_BYTES = 16 * 2**20  # a record or a sweep file: real ones are a few KiB to a few hundred KiB
MAX_JSON_DEPTH = 64  # real records nest about 6 levels
MAX_JSON_MAGNITUDE = 1e100  # the largest non-integer number: float32 ends at 3.4e38; squares of it stay finite
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
STALE_AFTER_S = 60.0  # a temporary file no process holds, older than this, is a killed writer's leftover

_UMASK_LOCK = threading.Lock()


class Refused(ValueError):
    """A file or a JSON text that is refused: not a regular file, too large, or JSON outside the limits."""


def file_kind(mode: int) -> str:
    """What a file is, in words, from its ``st_mode``."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def size_text(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes} bytes"


def check_regular(path: Path | str) -> os.stat_result:
    """The file's status when ``path`` (after symlinks) is a regular file; else :class:`Refused` saying what it is.
    ``OSError`` when it cannot be reached (missing, a dangling symlink, no permission)."""
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        raise Refused(f"{file_kind(status.st_mode)}, not a regular file")
    return status


def open_regular(path: Path | str, limit: int | None = None) -> int:
    """A read-only file descriptor of ``path``, checked to be a regular file (before opening, so a FIFO or a device
    is never opened, and again on the open descriptor) of at most ``limit`` bytes. The caller closes it."""
    status = check_regular(path)
    if limit is not None and status.st_size > limit:
        raise Refused(f"{size_text(status.st_size)}, over the {size_text(limit)} a file here may have")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        status = os.fstat(fd)  # it may have been swapped between the check and the open
        if not stat.S_ISREG(status.st_mode):
            raise Refused(f"{file_kind(status.st_mode)}, not a regular file")
        if limit is not None and status.st_size > limit:
            raise Refused(f"{size_text(status.st_size)}, over the {size_text(limit)} a file here may have")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path | str, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes (a file that grows while it is read is cut
    at ``limit + 1`` bytes and refused). Raises :class:`Refused` or ``OSError``."""
    fd = open_regular(path, limit)
    try:
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > limit:
        raise Refused(f"over the {size_text(limit)} a file here may have")
    return b"".join(chunks)


# ------------------------------------------------------------------------------------------------------- JSON
def _parse_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > 19:
        raise Refused(f"an integer of {len(digits)} digits; integers must fit in 64 bits")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise Refused(f"the integer {value} does not fit in 64 bits")
    return value


def _parse_float(text: str) -> float:
    if len(text) > 64:
        raise Refused(f"a number written with {len(text)} characters")
    value = float(text)
    if not math.isfinite(value) or abs(value) > MAX_JSON_MAGNITUDE:
        raise Refused(f"the number {text} is larger than {MAX_JSON_MAGNITUDE:g}")
    return value


def _parse_constant(name: str) -> Any:
    raise Refused(f"the non-standard JSON constant {name} is not allowed")


def parse_json(data: bytes | str) -> Any:
    """JSON within the limits of this module (see its docstring); :class:`Refused` with one line otherwise."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Refused(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(data, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except RecursionError:
        raise Refused(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise Refused(f"not valid JSON ({exc})") from None
    except Refused:
        raise
    except ValueError as exc:  # e.g. the interpreter's own limit on integer digits
        raise Refused(str(exc).split(";")[0]) from None
    check_json_value(value)
    return value


def check_json_value(value: Any) -> None:
    """The limits on parsed JSON, checked without recursion: depth, valid Unicode in every key and string, numbers
    in range (what :func:`parse_json` returns always passes; this is for values from elsewhere)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise Refused(f"nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_text(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise Refused("an integer that does not fit in 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item) or abs(item) > MAX_JSON_MAGNITUDE:
                raise Refused(f"the number {item!r} is larger than {MAX_JSON_MAGNITUDE:g}")


def _check_text(text: Any) -> None:
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise Refused(f"a string that is not valid Unicode ({exc.reason}: {text[exc.start]!r})") from None


def read_json(path: Path | str, limit: int = MAX_JSON_BYTES) -> Any:
    """:func:`read_regular` then :func:`parse_json`: :class:`Refused` or ``OSError`` when the file is unusable."""
    return parse_json(read_regular(path, limit))


# ----------------------------------------------------------------------------------------------------- writing
def current_umask() -> int:
    """This process's umask, read without changing it where the system says it (Linux); elsewhere set and restored
    under a lock (other threads creating files in that instant would see umask 0)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions ``open()`` gives a new file: 0666 less the umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The permissions ``mkdir()`` gives a new folder: 0777 less the umask (0755 under umask 022); for a folder
    made with ``tempfile.mkdtemp`` (0700) and renamed into place."""
    return 0o777 & ~current_umask()


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (see the module docstring); ``OSError`` when it cannot be
    written, with no temporary file left. ``path`` must not be anything but a regular file when it exists: a
    FIFO, a device or a directory there is refused (``IsADirectoryError`` / ``OSError``), never replaced."""
    path = Path(path)
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(errno.EISDIR, "it is a directory", str(path))
        if not stat.S_ISREG(status.st_mode) and not stat.S_ISLNK(status.st_mode):
            raise OSError(errno.EEXIST, f"it is {file_kind(status.st_mode)}, not a regular file", str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until the rename: remove_stale_temporaries leaves it alone
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.fchmod(fd, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    fsync_directory(path.parent)


def atomic_write_text(path: Path | str, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_directory(folder: Path | str) -> None:
    """Makes a rename in ``folder`` durable where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(paths: Iterable[Path], older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files among ``paths`` that a killed writer left: regular files no process holds (an
    exclusive ``flock`` can be taken) and untouched for ``older_than_s`` seconds. Returns what was removed."""
    removed = []
    now = time.time()
    for path in paths:
        try:
            status = os.lstat(path)
            if not stat.S_ISREG(status.st_mode) or now - status.st_mtime < older_than_s:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            Path(path).unlink(missing_ok=True)
            removed.append(Path(path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed
