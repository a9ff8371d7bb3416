"""Fashion-MNIST, the default dataset: small, offline (Debian's ``dataset-fashion-mnist``), and hard enough that
transfer strategies differ.

Train and val are a stratified split of the official 60,000-image train set; test is a stratified subset of the
official 10,000-image test set, so no test image is ever seen in training or model selection. The fingerprint uses
the files' paths, sizes and mtimes (cheap, every run); ``source`` records their sha256 (computed on a cache miss).
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torchvision

from tlbench import ImageSplits, UsageError, hookimpl
from tlbench.digests import digest_of, file_sha256, files_fingerprint
from tlbench.splits import check_common_options, data_dir, merged_options, stratified_split, to_storage

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {  # our name -> official file name (torchvision keeps both the .gz and the extracted file)
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as an array: 2 zero bytes, a dtype code, the number of dimensions, the
    big-endian int32 dimensions, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    return np.frombuffer(data, IDX_DTYPES[data[2]], offset=4 + 4 * ndim).reshape(shape)


def torchvision_raw_dir() -> Path:
    """Where ``torchvision.datasets.FashionMNIST(data_dir())`` keeps the files."""
    return data_dir() / "FashionMNIST" / "raw"


def find_files() -> dict[str, Path] | None:
    """The four files from the first folder that has all of them (Debian package, then torchvision's), or None."""
    for folder in (DEBIAN_DIR, torchvision_raw_dir()):
        found = {}
        for key, name in FILES.items():
            candidates = [folder / name, folder / f"{name}.gz"]
            existing = [path for path in candidates if path.is_file()]
            if not existing:
                break
            found[key] = existing[0]
        else:
            return found
    return None


def download() -> dict[str, Path]:
    """For users without the Debian package: torchvision downloads the files into its raw folder."""
    try:
        torchvision.datasets.FashionMNIST(str(data_dir()), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(data_dir()), train=False, download=True)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise UsageError(f"fashion-mnist files not found in {DEBIAN_DIR} or {torchvision_raw_dir()} and the download "
                         f"failed ({reason}); install them with `apt-get install dataset-fashion-mnist` or connect to "
                         f"the internet once to download them") from exc
    found = find_files()
    if found is None:
        raise UsageError(f"torchvision reported a download but the fashion-mnist files are not in "
                         f"{torchvision_raw_dir()}; delete that folder and retry, or `apt-get install "
                         f"dataset-fashion-mnist`")
    return found


class FashionMnist:
    name = "fashion-mnist"
    description = ("Fashion-MNIST: 10 classes of 28x28 grey clothing photos, the default dataset (offline via "
                   "`apt-get install dataset-fashion-mnist`); train/val from the official train set, test from the "
                   "official test set (test_size 0 = all 10,000)")
    takes_argument = False
    defaults: Mapping[str, Any] = {
        "train_size": 1000, "val_size": 500, "test_size": 2000, "split_seed": 0,
        "storage_size": None, "augment": "none", "image_size": 64,
    }

    def validate(self, options: Mapping[str, Any]) -> dict[str, Any]:
        options = merged_options(self.defaults, options)
        check_common_options(options, {"train_size": (1, ""), "val_size": (1, ""),
                                       "test_size": (0, "0 = the whole official test set")})
        return options

    def fingerprint(self, argument: str | None, options: Mapping[str, Any]) -> str:
        options = self.validate(options)
        files = find_files()
        if files is None:  # load() will download; the next run sees the files and rebuilds once
            return digest_of("absent", options)
        return digest_of(files_fingerprint(files.values(), Path("/")), options)

    def load(self, argument: str | None, options: Mapping[str, Any]) -> ImageSplits:
        options = self.validate(options)
        files = find_files() or download()
        arrays = {key: read_idx(path) for key, path in files.items()}
        seed = options["split_seed"]
        train_pool = stratified_split(arrays["train_labels"],
                                      {"train": options["train_size"], "val": options["val_size"]}, seed)
        if options["test_size"]:
            test_index = stratified_split(arrays["test_labels"], {"test": options["test_size"]}, seed)["test"]
        else:
            test_index = torch.arange(len(arrays["test_labels"]))

        def take(kind: str, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            chosen = index.numpy()
            images = to_storage(arrays[f"{kind}_images"][chosen], options["storage_size"])
            return images, torch.from_numpy(arrays[f"{kind}_labels"][chosen].astype(np.int64))

        train_images, train_labels = take("train", train_pool["train"])
        val_images, val_labels = take("train", train_pool["val"])
        test_images, test_labels = take("test", test_index)
        source = {
            "dataset": self.name,
            "files": {key: {"path": str(path), "sha256": file_sha256(path)} for key, path in files.items()},
            "split": "train and val: stratified split of the official train set; test: stratified subset of the "
                     "official test set (all of it when test_size is 0)",
            "split_seed": seed,
            "storage_size": options["storage_size"],
        }
        return ImageSplits(train_images, train_labels, val_images, val_labels, test_images, test_labels,
                           list(torchvision.datasets.FashionMNIST.classes), source)


@hookimpl
def register_datasets(register):
    register(FashionMnist())
