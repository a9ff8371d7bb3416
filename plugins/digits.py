"""scikit-learn's handwritten digits: 1,797 grey 8x8 images of the digits 0-9 (about 180 each), bundled inside the
scikit-learn wheel, so they are offline wherever the ``digits`` extra is installed.

The pixels are integers 0..16 (counts of set bits in 4x4 blocks of the original 32x32 bitmaps); they are stored as
uint8 0..255 (``round(v * 255 / 16)``: 0 -> 0, 16 -> 255, one-to-one), grey repeated to 3 channels, at the native
8x8 unless ``storage_size`` says otherwise. There is a single pool of images (scikit-learn's copy is the UCI test
set), so the three splits are one stratified split of it, drawn test first, then val, then train: the test images
depend only on ``test_size`` and ``split_seed``, never on the train or val sizes. ``train_size`` 0 takes every
image the other two leave (the defaults, 1,000 / 297 / 500, use all 1,797).

The fingerprint is cheap: scikit-learn's version and the bundled file's size and mtime; ``source`` records the
file's sha256 and a sha256 of the decoded arrays (computed on a cache miss).
"""
from __future__ import annotations

import hashlib
import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from tlbench import Extra, ImageSplits, UsageError, hookimpl
from tlbench.digests import digest_of, file_sha256, files_fingerprint
from tlbench.splits import check_common_options, merged_options, stratified_split, to_storage

DATA_FILE = ("datasets", "data", "digits.csv.gz")  # where load_digits reads the images, inside the sklearn package
MAX_VALUE = 16  # the pixels are counts of set bits in a 4x4 block
DECODER_VERSION = 1  # part of the fingerprint: bump when to_uint8 or the split order changes
INSTALL_HINT = Extra("digits", "the digits images ship inside scikit-learn")


def sklearn_version() -> str | None:
    try:
        return metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        return None


def data_file() -> Path | None:
    """The bundled CSV that ``sklearn.datasets.load_digits`` reads, found without importing scikit-learn (the
    fingerprint runs on every run); None where it is not there (no scikit-learn, or a layout this does not know)."""
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location).joinpath(*DATA_FILE)
        if path.is_file():
            return path
    return None


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 (floats, as scikit-learn returns them) as uint8 0..255, one-to-one."""
    values = np.asarray(images, dtype=np.float64)
    if values.size and (values.min() < 0 or values.max() > MAX_VALUE or not np.array_equal(values, np.rint(values))):
        raise ValueError(f"digits: expected integer pixels in 0..{MAX_VALUE}, got {values.min()}..{values.max()}")
    return np.rint(values * 255 / MAX_VALUE).astype(np.uint8)


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images as uint8 (N, 8, 8) and their labels (int64), from scikit-learn."""
    try:
        from sklearn.datasets import load_digits  # deferred: optional (the digits extra)
    except ImportError as exc:  # registry.get refuses first; this covers direct calls
        raise UsageError(f"dataset 'digits' needs an optional package: {INSTALL_HINT}") from exc
    bunch = load_digits()
    return to_uint8(bunch.images), np.asarray(bunch.target, dtype=np.int64)


class Digits:
    name = "digits"
    description = ("scikit-learn's handwritten digits: 10 classes of 8x8 grey images, 1,797 in all, offline with the "
                   "`digits` extra; one stratified split, test drawn first (train_size 0 = the rest)")
    takes_argument = False
    requires = {"sklearn": INSTALL_HINT}
    defaults: Mapping[str, Any] = {
        "train_size": 1000, "val_size": 297, "test_size": 500, "split_seed": 0,
        "storage_size": None, "augment": "none", "image_size": 32,
    }

    def validate(self, options: Mapping[str, Any]) -> dict[str, Any]:
        options = merged_options(self.defaults, options)
        check_common_options(options, {"train_size": (0, "0 = every image val and test leave"), "val_size": (1, ""),
                                       "test_size": (1, "")})
        return options

    def fingerprint(self, argument: str | None, options: Mapping[str, Any]) -> str:
        options = self.validate(options)
        path = data_file()
        files = files_fingerprint([path], path.parent) if path else "no data file found"
        return digest_of(self.name, sklearn_version() or "absent", files, options, DECODER_VERSION)

    def load(self, argument: str | None, options: Mapping[str, Any]) -> ImageSplits:
        options = self.validate(options)
        images, labels = load_arrays()
        seed = options["split_seed"]
        sizes = {"test": options["test_size"], "val": options["val_size"], "train": options["train_size"] or None}
        chosen = stratified_split(labels, sizes, seed, fix=f"lower data.train_size/val_size/test_size (there are "
                                                           f"{len(labels)} digits in all; data.train_size 0 takes "
                                                           f"the rest)")

        def take(split: str) -> tuple[torch.Tensor, torch.Tensor]:
            index = chosen[split].numpy()
            return to_storage(images[index], options["storage_size"]), torch.from_numpy(labels[index])

        path = data_file()
        arrays = hashlib.sha256(np.ascontiguousarray(images).tobytes() + np.ascontiguousarray(labels).tobytes())
        source = {
            "dataset": self.name,
            "package": f"scikit-learn {sklearn_version()}",
            "file": {"path": str(path), "sha256": file_sha256(path)} if path else None,
            "arrays_sha256": arrays.hexdigest(),  # the uint8 images then the int64 labels, as loaded
            "images": len(labels),
            "split": "one stratified split of all images, drawn test first, then val, then train (train_size 0: "
                     "the rest), so test depends only on test_size and split_seed",
            "split_seed": seed,
            "storage_size": options["storage_size"],
        }
        return ImageSplits(*take("train"), *take("val"), *take("test"), [str(k) for k in range(10)], source)


@hookimpl
def register_datasets(register):
    register(Digits())
