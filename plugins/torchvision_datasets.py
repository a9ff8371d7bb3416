"""Classification datasets that torchvision downloads (``cifar10``, ``cifar100``, ``svhn``, ``caltech101``,
``sun397``, ``flowers102``, ``oxford-pets``, ``dtd``, ``eurosat``, ``clevr-count``), one registered family each,
from the table below (the VTAB-1k suite, plugins/suites.py, uses them).

Files go to ``$TLBENCH_DATA_DIR`` (default ``<user cache>/tlbench/data``), where torchvision downloads them once.
Official splits are kept: a size option N takes a stratified subset of N images of the official split, 0 takes all
of it. Splits a dataset lacks are carved from its train pool with a stratified split (there, val and test sizes
must be >= 1 and train 0 means "the rest"). Large images are stored at 256px (shorter side, centre crop).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torchvision.datasets import (CIFAR10, CIFAR100, DTD, SUN397, SVHN, Caltech101, CLEVRClassification, EuroSAT,
                                  Flowers102, OxfordIIITPet)

from tlbench import ImageSplits, UsageError, hookimpl
from tlbench.digests import digest_of, files_fingerprint
from tlbench.splits import (check_common_options, data_dir, decode_parallel, fit_image, merged_options, require_int,
                            stratified_split, to_storage)

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class TorchvisionDataset:
    """One row of the table: how to build each official split and where torchvision keeps the files."""

    name: str
    title: str
    folder: str  # under data_dir(), where torchvision looks (for the fingerprint and the offline message)
    official: Mapping[str, Callable[[str, Mapping[str, Any]], Any]]  # our split -> (root, options) -> dataset
    defaults: Mapping[str, Any]
    pool: str = "the official train split"  # what official["train"] holds, for the source record
    int_ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # extra int option -> (lowest, highest)
    labels: Callable[[Any], np.ndarray] | None = None  # the labels 0..C-1 of an opened split (default: labels_of)
    classes: Callable[[Any], list[str]] | None = None  # the class names (default: the dataset's ``classes``)


def _cifar10(train: bool):
    def build(root: str, options: Mapping[str, Any]):
        return CIFAR10(root, train=train, download=True)
    return build


def _cifar100(train: bool):
    def build(root: str, options: Mapping[str, Any]):
        return CIFAR100(root, train=train, download=True)
    return build


def _svhn(split: str):  # SVHN keeps its .mat files in the root it is given: a folder of their own
    def build(root: str, options: Mapping[str, Any]):
        return SVHN(str(Path(root) / "svhn"), split=split, download=True)
    return build


def _caltech101(root: str, options: Mapping[str, Any]):
    return Caltech101(root, target_type="category", download=True)


def _sun397(root: str, options: Mapping[str, Any]):
    return SUN397(root, download=True)


def _clevr(split: str):
    def build(root: str, options: Mapping[str, Any]):
        return CLEVRClassification(root, split=split, download=True)
    return build


CLEVR_COUNTS = range(3, 11)  # every CLEVR scene holds 3 to 10 objects: 8 classes, as VTAB's clevr/count


def _clevr_labels(dataset: Any) -> np.ndarray:
    return np.asarray(dataset._labels, dtype=np.int64) - CLEVR_COUNTS[0]


def _flowers102(split: str):
    def build(root: str, options: Mapping[str, Any]):
        return Flowers102(root, split=split, download=True)
    return build


def _pets(split: str):
    def build(root: str, options: Mapping[str, Any]):
        return OxfordIIITPet(root, split=split, target_types="category", download=True)
    return build


def _dtd(split: str):
    def build(root: str, options: Mapping[str, Any]):
        return DTD(root, split=split, partition=options["partition"], download=True)
    return build


def _eurosat(root: str, options: Mapping[str, Any]):
    return EuroSAT(root, download=True)


def _defaults(train: int, val: int, test: int, storage: int | None, augment: str, image_size: int | None,
              **extra: Any) -> dict[str, Any]:
    return {"train_size": train, "val_size": val, "test_size": test, "split_seed": 0, "storage_size": storage,
            "augment": augment, "image_size": image_size, **extra}


DATASETS = (
    TorchvisionDataset(
        "cifar10", "CIFAR-10: 10 classes of 32x32 photos", "cifar-10-batches-py",
        {"train": _cifar10(True), "test": _cifar10(False)},
        _defaults(5000, 1000, 0, None, "crop-flip", 64)),
    TorchvisionDataset(
        "cifar100", "CIFAR-100: 100 classes of 32x32 photos", "cifar-100-python",
        {"train": _cifar100(True), "test": _cifar100(False)},
        _defaults(5000, 1000, 0, None, "crop-flip", 64)),
    TorchvisionDataset(
        "svhn", "SVHN: house-number digits 0-9, 32x32 crops (official train and test; no flips)", "svhn",
        {"train": _svhn("train"), "test": _svhn("test")},
        _defaults(5000, 1000, 0, None, "none", 64), classes=lambda dataset: [str(d) for d in range(10)]),
    TorchvisionDataset(
        "caltech101", "Caltech-101: 101 object categories (the background class left out), no official splits",
        "caltech101", {"train": _caltech101},
        _defaults(0, 500, 2500, 256, "crop-flip", None), pool="all images",
        classes=lambda dataset: list(dataset.categories)),
    TorchvisionDataset(
        "sun397", "SUN397: 397 scene categories, no official splits", "SUN397", {"train": _sun397},
        _defaults(10000, 2000, 10000, 256, "crop-flip", None), pool="all images"),
    TorchvisionDataset(
        "clevr-count", "CLEVR count: how many objects (3-10, 8 classes) are in a rendered scene; test = the "
        "official val split (CLEVR's test split has no labels), val carved from train", "clevr",
        {"train": _clevr("train"), "test": _clevr("val")},
        _defaults(5000, 1000, 5000, 256, "flip", None), labels=_clevr_labels,
        classes=lambda dataset: [str(count) for count in CLEVR_COUNTS]),
    TorchvisionDataset(
        "flowers102", "Oxford Flowers-102: 102 flower species", "flowers-102",
        {"train": _flowers102("train"), "val": _flowers102("val"), "test": _flowers102("test")},
        _defaults(0, 0, 0, 256, "crop-flip", None)),
    TorchvisionDataset(
        "oxford-pets", "Oxford-IIIT Pets: 37 cat and dog breeds",
        "oxford-iiit-pet", {"train": _pets("trainval"), "test": _pets("test")},
        _defaults(0, 370, 0, 256, "crop-flip", None), pool="the official trainval split"),
    TorchvisionDataset(
        "dtd", "Describable Textures: 47 texture classes, official splits of data.partition", "dtd",
        {"train": _dtd("train"), "val": _dtd("val"), "test": _dtd("test")},
        _defaults(0, 0, 0, 256, "crop-flip", None, partition=1), {"partition": (1, 10)}),
    TorchvisionDataset(
        "eurosat", "EuroSAT RGB: 10 land-use classes of 64x64 satellite tiles, no official splits",
        "eurosat", {"train": _eurosat},
        _defaults(0, 2700, 5400, None, "flip", 64), pool="all images"),
)


def _describe_sizes(spec: TorchvisionDataset) -> str:
    """What the size options mean for this dataset (the defaults themselves are listed next to it)."""
    carved = [split for split in SPLIT_NAMES[1:] if split not in spec.official]
    if not carved:
        return "size 0 = all of an official split"
    return f"{' and '.join(carved)} carved from {spec.pool}, train_size 0 = the rest"


def labels_of(dataset: Any) -> np.ndarray:
    """The labels without decoding any image (``targets`` for CIFAR/ImageFolder, ``labels`` for SVHN, ``y`` for
    Caltech-101, ``_labels`` for the others)."""
    for attribute in ("targets", "labels", "y", "_labels"):
        if hasattr(dataset, attribute):
            return np.asarray(getattr(dataset, attribute), dtype=np.int64)
    raise TypeError(f"cannot read the labels of {type(dataset).__name__} without decoding it")


class TorchvisionFamily:
    """A :class:`tlbench.DatasetFamily` for one row of :data:`DATASETS`."""

    takes_argument = False

    def __init__(self, spec: TorchvisionDataset):
        self.spec = spec
        self.name = spec.name
        self.defaults = dict(spec.defaults)
        self.description = f"{spec.title}; {_describe_sizes(spec)}; downloads once via torchvision"

    def validate(self, options: Mapping[str, Any]) -> dict[str, Any]:
        options = merged_options(self.defaults, options)
        minimums = {}
        for split in SPLIT_NAMES:
            if split in self.spec.official:
                minimums[f"{split}_size"] = (0, f"0 = all of the official {split} split" if split != "train"
                                             else "0 = all official train images not used for val/test")
            else:
                minimums[f"{split}_size"] = (1, f"{self.name} has no official {split} split")
        check_common_options(options, minimums)
        for key, (lowest, highest) in self.spec.int_ranges.items():
            if require_int(options, key, lowest) > highest:
                raise UsageError(f"data.{key} must be an integer from {lowest} to {highest}, got {options[key]!r}; "
                                 f"fix it with --set data.{key}=<value>")
        return options

    def folder(self) -> Path:
        return data_dir() / self.spec.folder

    def fingerprint(self, argument: str | None, options: Mapping[str, Any]) -> str:
        options = self.validate(options)
        folder = self.folder()
        files = [path for path in folder.rglob("*") if path.is_file()] if folder.is_dir() else []
        return digest_of(self.name, files_fingerprint(files, folder), options)

    def open_official(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The torchvision dataset objects of the official splits, downloading once; offline: a UsageError."""
        root = data_dir()
        opened = {}
        for split, build in self.spec.official.items():
            try:
                opened[split] = build(str(root), options)
            except ImportError as exc:
                raise UsageError(f"{self.name} needs the Python package {exc.name or exc}; pip install it") from exc
            except Exception as exc:  # download and integrity failures come as URLError, RuntimeError, OSError...
                reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
                raise UsageError(f"{self.name}: no usable files in {self.folder()} and the download failed "
                                 f"({reason}); torchvision needs internet once to download it there, or set "
                                 f"TLBENCH_DATA_DIR to a folder that has {self.spec.folder}/") from exc
        return opened

    def load(self, argument: str | None, options: Mapping[str, Any]) -> ImageSplits:
        options = self.validate(options)
        official = self.open_official(options)
        seed = options["split_seed"]
        chosen: dict[str, tuple[str, torch.Tensor]] = {}  # our split -> (official split, indices into it)
        carved: dict[str, int | None] = {"train": options["train_size"] or None}
        for split in ("val", "test"):
            if split in official:
                size = options[f"{split}_size"] or None
                chosen[split] = (split, stratified_split(self.labels(official[split]), {split: size}, seed)[split])
            else:
                carved[split] = options[f"{split}_size"]
        for split, index in stratified_split(self.labels(official["train"]), carved, seed).items():
            chosen[split] = ("train", index)

        parts = []
        for split in SPLIT_NAMES:
            key, index = chosen[split]
            dataset = official[key]
            parts += [self._images(dataset, key, index, options["storage_size"]),
                      torch.from_numpy(self.labels(dataset)[index.numpy()])]
        source = {
            "dataset": self.name, "torchvision": type(official["train"]).__name__, "root": str(data_dir()),
            "splits": {split: self._describe_split(split, key, options) for split, (key, _) in chosen.items()},
            "split_seed": seed, "storage_size": options["storage_size"],
        }
        if "partition" in options:
            source["partition"] = options["partition"]
        train = official["train"]
        classes = [str(name) for name in (self.spec.classes(train) if self.spec.classes else train.classes)]
        return ImageSplits(*parts, classes, source)

    def _describe_split(self, split: str, key: str, options: Mapping[str, Any]) -> str:
        carved = [name for name in SPLIT_NAMES[1:] if name not in self.spec.official]
        if key != split:
            return f"stratified split of {self.spec.pool}"
        whole = (f"the rest of {self.spec.pool} after {' and '.join(carved)}" if split == "train" and carved
                 else f"the official {split} split")
        return f"stratified subset of {whole}" if options[f"{split}_size"] else whole

    def labels(self, dataset: Any) -> np.ndarray:
        return self.spec.labels(dataset) if self.spec.labels else labels_of(dataset)

    def _images(self, dataset: Any, split: str, index: torch.Tensor, storage_size: int | None) -> torch.Tensor:
        data = getattr(dataset, "data", None)
        if isinstance(data, np.ndarray):  # already decoded: CIFAR (N, H, W, 3), SVHN (N, 3, H, W)
            return to_storage(data[index.numpy()], storage_size, channels_last=data.shape[-1] == 3)
        images, failures = decode_parallel(  # Caltech-101 has grey images among the colour ones
            index.tolist(), lambda i: fit_image(dataset[i][0].convert("RGB"), storage_size), storage_size)
        if failures:
            first = min(failures)
            raise UsageError(f"{self.name}: cannot decode image {first} of the official {split} split "
                             f"({failures[first]}; {len(failures)} bad in all); delete {self.folder()} so that "
                             f"torchvision downloads it again")
        return images


@hookimpl
def register_datasets(register):
    for spec in DATASETS:
        register(TorchvisionFamily(spec))
