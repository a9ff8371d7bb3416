"""The public toolkit for dataset plugins (docs/guides/dataset.md): option checks, a deterministic
stratified split, a memory check, parallel decoding, and turning decoded images into the uint8 (N, 3, H, W) tensors of :class:`tlbench.ImageSplits` at a storage resolution.

Every dataset family uses the same split and the same resizing, so two datasets with the same options are prepared
the same way and a result can say exactly how its images were chosen.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import platformdirs
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps

from tlbench.plan import check_image_size
from tlbench.types import UsageError

# The dataset-author toolkit (docs/guides/dataset.md): what the built-in datasets use.
__all__ = ["AUGMENTATIONS", "DataWarning", "available_memory", "check_common_options", "data_dir", "decode_parallel",
           "fit_image", "merged_options", "require_choice", "require_fraction", "require_int", "require_memory",
           "require_optional_int", "stratified_split", "to_storage"]

AUGMENTATIONS = ("none", "flip", "crop-flip")
DATA_DIR_ENV = "TLBENCH_DATA_DIR"  # where torchvision-style datasets are downloaded to / looked for

T = TypeVar("T")


class DataWarning(UserWarning):
    """Something about the user's data worth one line on stderr (skipped files, a rebuilt cache)."""


def data_dir() -> Path:
    """Root that torchvision datasets download into: ``$TLBENCH_DATA_DIR``, else ``<user cache>/tlbench/data``."""
    configured = os.environ.get(DATA_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_cache_dir("tlbench")) / "data"


# ------------------------------------------------------------------------------------------------ option checks
def merged_options(defaults: Mapping[str, Any], options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The harness passes defaults already updated by overrides; merging again keeps direct calls working."""
    return {**defaults, **(options or {})}


def require_int(options: Mapping[str, Any], key: str, minimum: int, meaning: str = "") -> int:
    """The option as an int >= ``minimum`` (bools refused), else a one-line UsageError naming the fix."""
    value = options.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"data.{key} must be an integer >= {minimum}{meaning}, got {value!r}; "
                         f"fix it with --set data.{key}=<value>")
    return value


def require_optional_int(options: Mapping[str, Any], key: str, minimum: int, meaning: str) -> int | None:
    if options.get(key) is None:
        return None
    return require_int(options, key, minimum, f" or none ({meaning})")


def require_fraction(options: Mapping[str, Any], key: str) -> float:
    value = options.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise UsageError(f"data.{key} must be a number between 0 and 1 (exclusive), got {value!r}; "
                         f"fix it with --set data.{key}=<value>")
    return float(value)


def require_choice(options: Mapping[str, Any], key: str, choices: Sequence[str]) -> str:
    value = options.get(key)
    if value not in choices:
        raise UsageError(f"data.{key} must be one of {', '.join(choices)}, got {value!r}; "
                         f"fix it with --set data.{key}=<value>")
    return value


def check_common_options(options: Mapping[str, Any], size_minimums: Mapping[str, tuple[int, str]]) -> None:
    """Checks the options every family has. ``size_minimums`` maps each size option to (minimum, what 0 means)."""
    for key, (minimum, meaning) in size_minimums.items():
        require_int(options, key, minimum, f" ({meaning})" if meaning else "")
    require_int(options, "split_seed", 0)
    require_optional_int(options, "storage_size", 1, "keep the native size")
    check_image_size(options.get("image_size"), "data.image_size")  # the harness's one rule (tlbench.plan)
    require_choice(options, "augment", AUGMENTATIONS)


def available_memory() -> int | None:
    """Bytes of memory the process could still get: Linux's ``MemAvailable``, else the free physical pages; None
    where neither is known."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def require_memory(nbytes: int, what: str, fix: str) -> None:
    """Refuse, before allocating, a dataset that cannot fit in memory: a one-line UsageError saying how much
    ``what`` needs, how much is available and ``fix`` (e.g. "lower data.train_size")."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise UsageError(f"{what} needs about {nbytes / 2**30:.1f} GiB of memory but {available / 2**30:.1f} GiB "
                         f"is available; {fix}")


# ------------------------------------------------------------------------------------------- stratified split
def stratified_split(labels: torch.Tensor | np.ndarray | Sequence[int], sizes: Mapping[str, int | float | None],
                     seed: int, fix: str | None = None) -> dict[str, torch.Tensor]:
    """Disjoint index sets, one per entry of ``sizes``, each with the class proportions of ``labels``.

    A size is a count (int), a fraction of all images (float, at least one image), or None for "all the images the
    other splits leave" (at most one). Splits that can hold every class get at least one image of each class, in the
    order given, as long as the class has images left. The result depends only on the labels, the sizes and
    ``seed``; each index set is in a seeded random order (so "the first k" is never one class). Raises a one-line
    :class:`UsageError` when the images do not suffice; ``fix`` replaces the default advice.
    """
    labels_np = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).ravel()
    total = len(labels_np)
    requested = _resolve_sizes(total, sizes)
    if sum(requested.values()) > total or any(n < 1 for n in requested.values()):
        asked = " ".join(f"{name}={_describe_size(sizes[name], requested[name])}" for name in sizes)
        advice = fix or "lower " + "/".join(f"data.{name}_size" for name in sizes) + " or add images"
        raise UsageError(f"dataset too small for the requested split: {total} images, asked {asked}; {advice}")

    classes, class_of = np.unique(labels_np, return_inverse=True)
    available = np.bincount(class_of, minlength=len(classes)).astype(np.int64)
    names = list(requested)
    per_class = np.zeros((len(names), len(classes)), dtype=np.int64)
    for row, name in enumerate(names):  # one image of every class first, where the split can hold them all
        if requested[name] >= len(classes):
            per_class[row] = available > 0
            available -= per_class[row]
    for row, name in enumerate(names):  # the rest in proportion to what is left of each class
        extra = _apportion(requested[name] - int(per_class[row].sum()), available)
        per_class[row] += extra
        available -= extra

    rng = np.random.default_rng(seed)
    chosen: dict[str, list[np.ndarray]] = {name: [] for name in names}
    by_class = np.split(np.argsort(class_of, kind="stable"), np.cumsum(np.bincount(class_of))[:-1])
    for column, members in enumerate(by_class):
        members = rng.permutation(members)
        start = 0
        for row, name in enumerate(names):
            count = int(per_class[row, column])
            chosen[name].append(members[start:start + count])
            start += count
    return {name: torch.from_numpy(rng.permutation(np.concatenate(parts))).long() for name, parts in chosen.items()}


def _resolve_sizes(total: int, sizes: Mapping[str, int | float | None]) -> dict[str, int]:
    if sum(size is None for size in sizes.values()) > 1:
        raise ValueError("at most one split may take the rest (None)")
    resolved = {}
    for name, size in sizes.items():
        if isinstance(size, float):
            resolved[name] = max(1, round(size * total))
        elif size is not None:
            resolved[name] = int(size)
    for name, size in sizes.items():
        if size is None:
            resolved[name] = total - sum(resolved.values())
    return {name: resolved[name] for name in sizes}


def _describe_size(size: int | float | None, count: int) -> str:
    if size is None:
        return f"{max(count, 0)}(the rest)"
    if isinstance(size, float):
        return f"{count}({size:g} of all)"
    return str(count)


def _apportion(count: int, available: np.ndarray) -> np.ndarray:
    """Largest-remainder allocation of ``count`` items in proportion to ``available``, never above it."""
    pool = int(available.sum())
    if count <= 0 or pool == 0:
        return np.zeros_like(available)
    share, remainder = np.divmod(count * available, pool)  # exact integer arithmetic
    missing = count - int(share.sum())
    for column in np.argsort(-remainder, kind="stable"):
        if missing == 0:
            break
        if share[column] < available[column]:
            share[column] += 1
            missing -= 1
    return share


# --------------------------------------------------------------------------------------- images to storage
LOWEST_CROP_PCT = 0.875  # the lowest eval crop fraction common in timm/torchvision weights (resize = size / pct)
SMALLEST_CROP_AREA = 0.25  # tlbench.preprocess.CROP_SCALE[0]: the smallest random crop, as an area fraction


def storage_side_for(image_size: int | None, augment: str, largest: int) -> int:
    """The side to store decoded images at so the network at ``image_size`` loses nothing, at most ``largest``:
    the eval resize (``image_size / 0.875``) without random crops, and with them (``crop-flip``) twice
    ``image_size``, so the smallest crop (a quarter of the area) still has ``image_size`` pixels a side. Unknown
    ``image_size`` (the backbone's own): ``largest``."""
    if not image_size:
        return largest
    if augment == "crop-flip":
        needed = math.ceil(image_size / math.sqrt(SMALLEST_CROP_AREA))
    else:
        needed = math.ceil(image_size / LOWEST_CROP_PCT)
    return min(largest, needed)


def to_storage(images: torch.Tensor | np.ndarray, storage_size: int | None,
               channels_last: bool = False) -> torch.Tensor:
    """uint8 images (N, H, W), (N, C, H, W) or, with ``channels_last``, (N, H, W, C) with C in (1, 3) to uint8
    (N, 3, S, S): shorter side resized to ``storage_size`` (bicubic, antialiased) then centre-cropped; None keeps
    the native size. Grey is repeated to 3 channels after resizing (a third of the work)."""
    batch = torch.as_tensor(images)
    if batch.dtype != torch.uint8:
        raise TypeError(f"to_storage needs uint8 images, got {batch.dtype}")
    if batch.ndim == 3:
        batch = batch.unsqueeze(1)
    elif channels_last:
        batch = batch.permute(0, 3, 1, 2)
    if batch.ndim != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"to_storage needs grey or RGB images, got shape {tuple(images.shape)}")
    if storage_size and tuple(batch.shape[-2:]) != (storage_size, storage_size):
        batch = TF.resize(batch, [storage_size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        batch = TF.center_crop(batch, [storage_size, storage_size])
    return batch.expand(-1, 3, -1, -1).contiguous()


def fit_image(image: Image.Image, storage_size: int | None) -> np.ndarray:
    """An RGB PIL image as (H, W, 3) uint8, shorter side to ``storage_size`` and centre-cropped (as
    :func:`to_storage`), or native size when None."""
    if storage_size:
        image = ImageOps.fit(image, (storage_size, storage_size), method=Image.Resampling.BICUBIC)
    return np.array(image, dtype=np.uint8)  # a writable copy (PIL's buffer is read-only; torch warns)


def decode_parallel(items: Sequence[T], decode: Callable[[T], np.ndarray], storage_size: int | None,
                    ) -> tuple[torch.Tensor, dict[int, str]]:
    """Decodes ``items`` with ``decode`` (item -> (H, W, 3) uint8, already at storage size) on a few threads (PIL
    releases the GIL) into one (N, 3, H, W) uint8 tensor.

    Returns the tensor and the failures as {index: reason}; failed rows are zeros, for the caller to drop or report.
    With ``storage_size`` None every image must have the same size, else a UsageError asks for a storage size.
    """
    count = len(items)
    if storage_size:
        require_memory(count * 3 * storage_size * storage_size, f"{count} images at {storage_size} px",
                       "lower data.storage_size or the split sizes")
    failures: dict[int, str] = {}
    native: list[np.ndarray | None] = [None] * count
    out = torch.zeros((count, 3, storage_size, storage_size), dtype=torch.uint8) if storage_size else None

    def work(index: int) -> None:
        try:
            array = decode(items[index])
        except Exception as exc:  # any decoder failure is a property of that file, reported by the caller
            failures[index] = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            return
        if out is None:
            native[index] = array
        else:
            out[index].copy_(torch.from_numpy(array).permute(2, 0, 1))

    if count:
        with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 4, count)) as pool:
            list(pool.map(work, range(count)))
    if out is not None:
        return out, failures
    shapes = {a.shape for a in native if a is not None}
    if len(shapes) > 1:
        first, second = sorted(shapes)[:2]
        raise UsageError(f"images differ in size ({first[1]}x{first[0]} and {second[1]}x{second[0]} pixels) and "
                         f"data.storage_size is none; set --set data.storage_size=<pixels> to store them at one size")
    height, width = shapes.pop()[:2] if shapes else (0, 0)
    stacked = torch.zeros((count, 3, height, width), dtype=torch.uint8)
    for index, array in enumerate(native):
        if array is not None:
            stacked[index].copy_(torch.from_numpy(array).permute(2, 0, 1))
    return stacked, failures


