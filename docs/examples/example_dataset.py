"""A dataset plugin: labelled images from a NumPy file (npz:/path/data.npz with arrays `images`, N x H x W x 3
uint8, and `labels`, N integers), split and resized with tlbench's toolkit like every built-in dataset."""
import json
from pathlib import Path

import numpy as np
import torch

from tlbench import ImageSplits, UsageError, hookimpl
from tlbench.splits import check_common_options, merged_options, stratified_split, to_storage

LOADER_VERSION = 1  # part of the fingerprint: bump it when load() changes what it returns


class NpzDataset:
    name = "npz"
    description = "images (N x H x W x 3 uint8) and labels from a .npz file: npz:/path/to/data.npz"
    takes_argument = True
    defaults = {"train_size": 1000, "val_size": 500, "test_size": 0, "split_seed": 0, "storage_size": None,
                "augment": "none", "image_size": None}

    def _options(self, options):
        options = merged_options(self.defaults, options)
        check_common_options(options, {"train_size": (1, ""), "val_size": (1, ""),
                                       "test_size": (0, "0: every image the other splits leave")})
        return options

    def _path(self, argument):
        path = Path(argument).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"no file at {str(path)!r}; give -d npz:/path/to/data.npz")
        return path

    def fingerprint(self, argument, options):
        stat = self._path(argument).stat()  # changes when the file does; the decoded splits are cached under it
        return json.dumps([LOADER_VERSION, str(self._path(argument)), stat.st_size, stat.st_mtime_ns,
                           self._options(options)], sort_keys=True)

    def load(self, argument, options):
        options, path = self._options(options), self._path(argument)
        with np.load(path) as arrays:
            images, labels = arrays["images"], arrays["labels"].astype(np.int64)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
            raise UsageError(f"{path}: `images` must be N x H x W x 3 uint8 with one label each")
        sizes = {"train": options["train_size"], "val": options["val_size"], "test": options["test_size"] or None}
        index = stratified_split(labels, sizes, options["split_seed"])
        stored = to_storage(images, options["storage_size"], channels_last=True)  # uint8 N x 3 x S x S
        parts = [t for split in ("train", "val", "test")
                 for t in (stored[index[split]], torch.from_numpy(labels)[index[split]])]
        classes = [str(c) for c in range(int(labels.max()) + 1)]
        return ImageSplits(*parts, classes, source={"file": str(path), "split_seed": options["split_seed"]})


@hookimpl
def register_datasets(register):
    register(NpzDataset())
