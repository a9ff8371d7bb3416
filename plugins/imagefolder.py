"""The user's own images: ``imagefolder:<path>``.

Two layouts. ``<path>/<class>/<image>``: train, val and test are a stratified split of all images. Or
``<path>/train/<class>/``, ``<path>/val/<class>/`` (or ``valid``) and ``<path>/test/<class>/``: used as they are;
a missing val or test folder is split from train. Images may sit in sub-folders of a class folder; hidden files are
ignored; every other file in a class folder must be an image (see ``on_bad_image``).

Every PIL mode becomes 8-bit RGB: EXIF orientation applied; 16-bit grey ("I;16*", and "I", which is how 16-bit
files decode in some Pillow versions) scaled from 0..65535 to 0..255 with rounding, not clipped; float ("F") read as
0..1 when it fits, else 0..255; transparent images (RGBA, LA, PA, P or L/RGB with a transparent colour) are
composited onto white, so the result depends only on what is visible and not on the arbitrary colour an encoder
left under transparent pixels; CMYK, palette, 1-bit and YCbCr are converted by PIL. Images are then stored at
``storage_size``: shorter side resized (bicubic, antialiased), centre-cropped to a square. ``storage_size="auto"``
(the default) is the size the network needs when ``data.image_size`` says it (``image_size / 0.875``, or twice
``image_size`` with random crops; see :func:`tlbench.splits.storage_side_for`), at most 256 px, which is also the
size used when the network's input size is the backbone's own.

Files are decoded only as JPEG (including phones' multi-picture MPO files), PNG, BMP, GIF, TIFF, WebP or PBM/PGM/PPM
(``ALLOWED_FORMATS``), told apart by their content, never by their name: Pillow is asked to try nothing else, so a
PostScript/EPS file named ``photo.jpg``, which Pillow would hand to Ghostscript, or a PDF, or any other format is
refused like an unreadable image (``on_bad_image``) and no external program ever runs.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from tlbench import ImageSplits, UsageError, hookimpl
from tlbench.digests import digest_of, files_fingerprint
from tlbench.images import DECODER_VERSION, decode_image_file
from tlbench.splits import (DataWarning, check_common_options, decode_parallel, merged_options, require_choice,
                            require_fraction, storage_side_for, stratified_split)

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}
IGNORED_FILES = {"Thumbs.db", "desktop.ini"}
BAD_IMAGE_POLICIES = ("fail", "skip")
LARGEST_STORAGE = 256  # "auto" never stores larger (what 224 px networks need: 224 / 0.875)

# --------------------------------------------------------------------------------------------- the folders
@dataclass
class FolderScan:
    """What is on disk: the layout, the classes, and the candidate files of each folder with their labels."""

    root: Path
    layout: str  # "class-folders" | "split-folders"
    classes: list[str]
    folders: dict[str, Path] = field(default_factory=dict)  # "all" | "train" | "val" | "test" -> folder
    files: dict[str, list[Path]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def all_files(self) -> list[Path]:
        return [path for paths in self.files.values() for path in paths]


def scan(argument: str | None) -> FolderScan:
    """Finds the layout and the files, with a one-line UsageError for every way the folder can be unusable."""
    if not argument:
        raise UsageError("imagefolder needs a path: use imagefolder:<folder with one sub-folder per class>")
    root = Path(argument).expanduser()
    if not root.exists():
        raise UsageError(f"imagefolder: {root} does not exist; pass imagefolder:<folder with one sub-folder per "
                         f"class>")
    if not root.is_dir():
        raise UsageError(f"imagefolder: {root} is not a directory; pass the folder that holds one sub-folder per "
                         f"class")
    present = {name for names in SPLIT_FOLDERS.values() for name in names if (root / name).is_dir()}
    if "train" not in present:
        if present:
            raise UsageError(f"imagefolder: {root} has {'/'.join(sorted(present))} folder(s) but no train/ folder; "
                             f"add train/<class>/ or use one folder per class without split folders")
        classes, files, labels = _scan_classes(root)
        return FolderScan(root, "class-folders", classes, {"all": root}, {"all": files}, {"all": labels})
    if {"val", "valid"} <= present:
        raise UsageError(f"imagefolder: {root} has both val/ and valid/ folders; keep only one")
    result = FolderScan(root, "split-folders", [])
    for split, names in SPLIT_FOLDERS.items():
        folder = next((root / name for name in names if name in present), None)
        if folder is None:
            continue
        classes, files, labels = _scan_classes(folder)
        if not result.classes:
            result.classes = classes
        elif classes != result.classes:
            missing = sorted(set(result.classes) - set(classes))
            extra = sorted(set(classes) - set(result.classes))
            raise UsageError(f"imagefolder: the class folders of {folder} differ from those of {root / 'train'} "
                             f"(missing: {', '.join(missing) or 'none'}; extra: {', '.join(extra) or 'none'}); "
                             f"make them agree")
        result.folders[split], result.files[split], result.labels[split] = folder, files, labels
    return result


def _scan_classes(folder: Path) -> tuple[list[str], list[Path], np.ndarray]:
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise UsageError(f"imagefolder: no class folders in {folder}; expected {folder}/<class>/<image> (or "
                         f"train/, val/, test/ folders that each hold class folders)")
    if len(classes) == 1:
        raise UsageError(f"imagefolder: {folder} has only one class folder ({classes[0]!r}); classification needs "
                         f"at least 2 class folders")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = _files_under(folder / name)
        if not found:
            raise UsageError(f"imagefolder: class folder {folder / name} has no images; add images to it or remove "
                             f"it")
        files += found
        labels += [label] * len(found)
    return classes, files, np.asarray(labels, dtype=np.int64)


def _files_under(folder: Path) -> list[Path]:
    """Files under ``folder``, following directory symlinks but entering each real directory once (a symlink loop
    ends there). Dangling or looping file symlinks are listed: decoding reports or skips them like any unreadable
    image (``on_bad_image``)."""
    found = []
    visited: set[tuple[int, int]] = set()
    for directory, subdirectories, names in os.walk(folder, followlinks=True):
        try:
            stat = os.stat(directory)
        except OSError:
            subdirectories[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in visited:
            subdirectories[:] = []
            continue
        visited.add((stat.st_dev, stat.st_ino))
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        found += [Path(directory) / name for name in sorted(names)
                  if not name.startswith(".") and name not in IGNORED_FILES]
    return found


# ------------------------------------------------------------------------------------------------- family
class ImageFolder:
    name = "imagefolder"
    description = ("your images: imagefolder:<path> with <path>/<class>/<image> (split by val_fraction/"
                   "test_fraction, 70/15/15) or train/ val/ test/ folders of classes used as they are")
    takes_argument = True
    defaults: Mapping[str, Any] = {
        "train_size": 0, "val_size": 0, "test_size": 0, "val_fraction": 0.15, "test_fraction": 0.15,
        "split_seed": 0, "storage_size": "auto", "augment": "crop-flip", "image_size": None, "on_bad_image": "fail",
    }

    def validate(self, options: Mapping[str, Any]) -> dict[str, Any]:
        options = merged_options(self.defaults, options)
        if options["storage_size"] == "auto":  # resolved here, so the decode cache is keyed by the real size
            require_choice(options, "augment", ("none", "flip", "crop-flip"))
            image_size = options["image_size"] if isinstance(options["image_size"], int) else None
            options["storage_size"] = storage_side_for(image_size, options["augment"], LARGEST_STORAGE)
            options["storage_size_setting"] = "auto"
        meaning = "0 = use data.val_fraction/data.test_fraction, the rest for train"
        check_common_options(options, {key: (0, meaning) for key in ("train_size", "val_size", "test_size")})
        if require_fraction(options, "val_fraction") + require_fraction(options, "test_fraction") >= 1:
            raise UsageError(f"data.val_fraction + data.test_fraction must be below 1, got "
                             f"{options['val_fraction']} + {options['test_fraction']}; lower one with "
                             f"--set data.val_fraction=<value>")
        require_choice(options, "on_bad_image", BAD_IMAGE_POLICIES)
        return options

    def fingerprint(self, argument: str | None, options: Mapping[str, Any]) -> str:
        options = self.validate(options)
        found = scan(argument)
        return digest_of(found.layout, found.classes, files_fingerprint(found.all_files(), found.root), options,
                         DECODER_VERSION)

    def load(self, argument: str | None, options: Mapping[str, Any]) -> ImageSplits:
        options = self.validate(options)
        found = scan(argument)
        chosen = self._choose(found, options)  # split -> (folder key, indices into that folder's files)
        decoded = {}  # split -> (images, labels, paths); one tensor per split (no shared storage to save)
        for split, (key, index) in chosen.items():
            paths = [found.files[key][i] for i in index.tolist()]
            images, failures = decode_parallel(paths, lambda p: decode_image_file(p, options["storage_size"]),
                                               options["storage_size"])
            decoded[split] = (images, torch.from_numpy(found.labels[key][index.numpy()]), paths, failures)
        bad = sorted(paths[i] for _, _, paths, failures in decoded.values() for i in failures)
        reasons = {paths[i]: reason for _, _, paths, failures in decoded.values() for i, reason in failures.items()}
        if bad and options["on_bad_image"] == "fail":
            more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
            raise UsageError(f"imagefolder: cannot read {bad[0]} as an image ({reasons[bad[0]]}){more}; fix or "
                             f"remove it, or skip unreadable files with --set data.on_bad_image=skip")
        skipped = [path.relative_to(found.root).as_posix() for path in bad]
        if skipped:
            shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
            warnings.warn(f"imagefolder: skipped {len(skipped)} unreadable file(s) in {found.root}: {shown}",
                          DataWarning, stacklevel=2)
        parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for split, (images, labels, paths, failures) in decoded.items():
            if failures:
                keep = torch.ones(len(paths), dtype=torch.bool)
                keep[list(failures)] = False
                images, labels = images[keep], labels[keep]
            if len(labels) == 0:
                raise UsageError(f"imagefolder: no readable images left for the {split} split after skipping "
                                 f"{len(skipped)} unreadable file(s); add images to {found.root}")
            parts[split] = (images, labels)

        source = {
            "dataset": self.name, "path": str(found.root.resolve()), "layout": found.layout,
            "splits": {split: (f"{found.folders[key].name}/" if key == split else
                               f"stratified split of {'all images' if key == 'all' else 'train/'}")
                       for split, (key, _) in chosen.items()},
            "files": len(found.all_files()), "split_seed": options["split_seed"],
            "storage_size": options["storage_size"], "storage_size_setting": options.get("storage_size_setting",
                                                                                         "given"),
            "skipped": skipped,
        }
        return ImageSplits(*parts["train"], *parts["val"], *parts["test"], list(found.classes), source)

    @staticmethod
    def _choose(found: FolderScan, options: Mapping[str, Any]) -> dict[str, tuple[str, torch.Tensor]]:
        """Which files each split uses: given folders as they are (or a stratified subset of ``<split>_size``),
        missing ones carved from train (or from all images) by size, or by fraction when the size is 0."""
        seed = options["split_seed"]
        pool = "all" if found.layout == "class-folders" else "train"
        carved: dict[str, int | float | None] = {"train": options["train_size"] or None}
        chosen: dict[str, tuple[str, torch.Tensor]] = {}
        for split in ("val", "test"):
            if split in found.files:
                index = stratified_split(found.labels[split], {split: options[f"{split}_size"] or None}, seed)[split]
                chosen[split] = (split, index)
            else:
                carved[split] = options[f"{split}_size"] or options[f"{split}_fraction"]
        advice = (f"add images to {found.root} or set smaller data.train_size/val_size/test_size "
                  f"(0 = use data.val_fraction/test_fraction)")
        for split, index in stratified_split(found.labels[pool], carved, seed, fix=advice).items():
            chosen[split] = (pool, index)
        return {split: chosen[split] for split in ("train", "val", "test")}


@hookimpl
def register_datasets(register):
    register(ImageFolder())
