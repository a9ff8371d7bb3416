"""Decoded dataset splits cached on disk, so that only the first run pays for decoding and resizing.

One safetensors file per (family, argument, options, source fingerprint, format version); its header metadata holds
the classes, the source record and a sha256 of the tensors. A file is written to a temporary name in the cache
folder, fsynced and renamed into place, so readers see either nothing or a whole file. On read everything is
checked (key, format, checksum, shapes, dtypes, label range); anything off is reported in one warning line and
rebuilt, never trusted. Nothing is ever unpickled.

Cache folder: ``$TLBENCH_CACHE_DIR/datasets``, else ``platformdirs.user_cache_dir("tlbench")/datasets``. Entries
are never evicted; deleting the folder is always safe.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import platformdirs
import safetensors.torch
import torch
from safetensors import safe_open

from tlbench.files import check_regular, file_mode, parse_json, fsync_directory, remove_stale_temporaries
from tlbench.splits import DataWarning, available_memory
from tlbench.types import DatasetFamily, ImageSplits

CACHE_DIR_ENV = "TLBENCH_CACHE_DIR"
CACHE_FORMAT_VERSION = 1  # bump when the file layout or the meaning of a stored field changes
SPLIT_NAMES = ("train", "val", "test")
TENSOR_NAMES = tuple(f"{split}_{part}" for split in SPLIT_NAMES for part in ("images", "labels"))
METADATA_KEY = "tlbench"


class CacheWarning(DataWarning):
    """A cache file was unusable (corrupt, truncated, stale) or could not be written; the data was (re)built."""


def cache_dir() -> Path:
    """Folder holding the dataset cache files."""
    configured = os.environ.get(CACHE_DIR_ENV, "").strip()
    root = Path(configured).expanduser() if configured else Path(platformdirs.user_cache_dir("tlbench"))
    return root / "datasets"


def cache_key(family: DatasetFamily, argument: str | None, options: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of everything that determines the decoded splits."""
    described = {
        "format": CACHE_FORMAT_VERSION,
        "family": family.name,
        "argument": argument,
        "options": {**family.defaults, **options},  # a direct call with partial options means the same data
        "fingerprint": family.fingerprint(argument, options),
    }
    canonical = json.dumps(described, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_path(family: DatasetFamily, argument: str | None, options: Mapping[str, Any],
               key: str | None = None) -> Path:
    """Where the splits of this dataset and options are (or would be) cached."""
    key = key or cache_key(family, argument, options)
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", family.name)[:40]
    return cache_dir() / f"{readable}-{key[:32]}.safetensors"


def load_splits(family: DatasetFamily, argument: str | None, options: Mapping[str, Any]) -> ImageSplits:
    """The family's decoded splits, from the cache when a valid entry exists, else loaded and cached.

    ``source["cache"]`` of the result is ``"hit"`` (read from disk, ``family.load`` not called) or ``"miss"``
    (loaded now, and written to the cache unless the folder is not writable, which only warns). Apart from that
    key, a hit returns exactly what the miss returned.
    """
    key = cache_key(family, argument, options)
    path = cache_path(family, argument, options, key)
    cached = _read(path, key)
    if cached is not None:
        cached.source["cache"] = "hit"
        return cached

    splits = family.load(argument, options)
    problems = _problems(splits)
    if problems:
        raise ValueError(f"dataset family {family.name!r} returned invalid splits: {'; '.join(problems)}")
    splits.source = json.loads(json.dumps(splits.source, default=str))  # what a later hit will return
    try:
        _write(path, key, splits)
    except OSError as exc:
        warnings.warn(f"could not write the dataset cache {path} ({exc}); continuing without caching",
                      CacheWarning, stacklevel=2)
    splits.source["cache"] = "miss"
    return splits


def _read(path: Path, key: str) -> ImageSplits | None:
    """The cached splits, or None when there is no usable entry (a bad one is reported).

    The file is memory-mapped and each tensor copied out once, so a hit needs the data's size in memory, not twice
    that; the checksum is computed on the copies, so what is returned is exactly what was verified.
    """
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        status = check_regular(path)  # a FIFO or a device is never opened (safe_open would block on a FIFO)
        available = available_memory()
        if available is not None and status.st_size > available:
            raise ValueError(f"{status.st_size / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of "
                             f"memory available")
        with safe_open(str(path), "pt") as handle:
            metadata = parse_json((handle.metadata() or {})[METADATA_KEY])
            if metadata.get("format") != CACHE_FORMAT_VERSION or metadata.get("key") != key:
                raise ValueError("written for other data or by another version")
            if set(handle.keys()) != set(TENSOR_NAMES):
                raise ValueError(f"tensors {sorted(handle.keys())} instead of {list(TENSOR_NAMES)}")
            tensors = {name: handle.get_tensor(name).clone() for name in TENSOR_NAMES}
        if _digest(tensors) != metadata.get("sha256"):
            raise ValueError("checksum mismatch")
        splits = ImageSplits(**tensors, classes=list(metadata["classes"]), source=dict(metadata["source"]))
        problems = _problems(splits)
        if problems:
            raise ValueError("; ".join(problems))
    except Exception as exc:  # whatever is wrong with the file, the answer is the same: rebuild it
        _warn_rebuild(path, f"{type(exc).__name__}: {exc}")
        return None
    return splits


def _write(path: Path, key: str, splits: ImageSplits) -> None:
    """Atomic write: a temporary file in the same folder (held with an exclusive lock while it exists, so a later
    run's :func:`tlbench.files.remove_stale_temporaries` tells it from a killed writer's leftover), fsynced, given
    the user's umask permissions, then renamed over ``path``. Any failure (a full disk included, which safetensors
    reports as its own error) is an ``OSError`` here, with the temporary file removed."""
    tensors = {name: getattr(splits, name).contiguous() for name in TENSOR_NAMES}
    metadata = {"format": CACHE_FORMAT_VERSION, "key": key, "sha256": _digest(tensors),
                "classes": list(splits.classes), "source": splits.source}
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent.glob(".*.safetensors.*.tmp"))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    written = None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            safetensors.torch.save_file(tensors, temporary, metadata={METADATA_KEY: json.dumps(metadata)})
        except OSError:
            raise
        except Exception as exc:  # safetensors' SafetensorError wraps the OS error (e.g. no space left)
            raise OSError(f"{type(exc).__name__}: {exc}") from None
        written = os.open(temporary, os.O_RDONLY)  # save_file puts a new file at that name: lock and finish it
        fcntl.flock(written, fcntl.LOCK_EX)
        os.fsync(written)
        os.fchmod(written, file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        os.close(handle)
        if written is not None:
            os.close(written)
    fsync_directory(path.parent)


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in TENSOR_NAMES:
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy())
    return digest.hexdigest()


def _problems(splits: ImageSplits) -> list[str]:
    """What is wrong with splits (empty when they are well formed): dtypes, shapes, label range, sizes."""
    problems = []
    sizes = set()
    for split in SPLIT_NAMES:
        images, labels = getattr(splits, f"{split}_images"), getattr(splits, f"{split}_labels")
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
                or images.shape[1] != 3:
            problems.append(f"{split}_images must be a uint8 tensor (N, 3, H, W), got "
                            f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}")
            continue
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1 \
                or len(labels) != len(images):
            problems.append(f"{split}_labels must be an int64 tensor (N,) matching {split}_images")
            continue
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(splits.classes)):
            problems.append(f"{split}_labels outside 0..{len(splits.classes) - 1}")
        sizes.add(tuple(images.shape[-2:]))
    if len(sizes) > 1:
        problems.append(f"splits have different image sizes {sorted(sizes)}")
    if not isinstance(splits.classes, list) or not all(isinstance(c, str) for c in splits.classes):
        problems.append("classes must be a list of str")
    return problems


def _warn_rebuild(path: Path, reason: str) -> None:
    warnings.warn(f"dataset cache {path} is unusable ({reason}); rebuilding it", CacheWarning, stacklevel=3)
