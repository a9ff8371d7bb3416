"""The dataset plugins, the shared split/resize helpers and the decoded-data cache (CPU, offline, fast)."""
from __future__ import annotations

import io
import os
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlbench import DatasetFamily, ImageSplits, UsageError, data_cache
from tlbench.data_cache import CacheWarning, load_splits
from tlbench.images import decode_image_file, to_rgb8
from tlbench.plugins import fashion_mnist, imagefolder, synthetic, torchvision_datasets
from tlbench.plugins.fashion_mnist import FashionMnist, read_idx
from tlbench.plugins.imagefolder import ImageFolder
from tlbench.plugins.synthetic import Synthetic
from tlbench.plugins.torchvision_datasets import DATASETS, TorchvisionFamily
from tlbench.splits import DataWarning, stratified_split, to_storage

DEBIAN_FILES = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(not (DEBIAN_FILES / "train-images-idx3-ubyte.gz").exists(),
                                         reason="apt-get install dataset-fashion-mnist")


def torchvision_family(name: str) -> TorchvisionFamily:
    return TorchvisionFamily(next(spec for spec in DATASETS if spec.name == name))


def assert_same_splits(a: ImageSplits, b: ImageSplits) -> None:
    for name in data_cache.TENSOR_NAMES:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.classes == b.classes
    assert {k: v for k, v in a.source.items() if k != "cache"} == {k: v for k, v in b.source.items() if k != "cache"}


@pytest.fixture
def offline(monkeypatch):
    """No download can hang: every urllib request fails at once, as it does on a machine without a network."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# ------------------------------------------------------------------------------------------ the plugin modules
def test_every_module_registers_its_families_with_complete_defaults():
    registered = []
    for module in (fashion_mnist, imagefolder, torchvision_datasets, synthetic):
        module.register_datasets(register=registered.append)
    names = [family.name for family in registered]
    assert names == ["fashion-mnist", "imagefolder", "cifar10", "cifar100", "svhn", "caltech101", "sun397",
                     "clevr-count", "flowers102", "oxford-pets", "dtd", "eurosat", "synthetic"]
    for family in registered:
        assert isinstance(family, DatasetFamily)
        assert family.description and "\n" not in family.description
        assert family.takes_argument == (family.name == "imagefolder")
        common = {"train_size", "val_size", "test_size", "split_seed", "storage_size", "augment", "image_size"}
        assert common <= set(family.defaults), family.name


# ------------------------------------------------------------------------------------------------ the helpers
def test_stratified_split_is_disjoint_exact_stratified_and_seeded():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    parts = stratified_split(labels, {"train": 50, "val": 20, "test": 10}, seed=3)
    assert {k: len(v) for k, v in parts.items()} == {"train": 50, "val": 20, "test": 10}
    everything = torch.cat(list(parts.values()))
    assert len(set(everything.tolist())) == 80
    assert labels[parts["train"]].bincount().tolist() == [30, 15, 5]  # the 6:3:1 proportions
    assert all(len(labels[p].unique()) == 3 for p in parts.values())
    again = stratified_split(labels, {"train": 50, "val": 20, "test": 10}, seed=3)
    assert all(torch.equal(parts[k], again[k]) for k in parts)
    other = stratified_split(labels, {"train": 50, "val": 20, "test": 10}, seed=4)
    assert not torch.equal(parts["train"].sort().values, other["train"].sort().values)
    assert labels[parts["train"][:10]].unique().numel() > 1  # shuffled, not grouped by class


def test_stratified_split_keeps_rare_classes_in_every_split_and_takes_the_rest():
    labels = torch.tensor([0] * 40 + [1] * 3)
    parts = stratified_split(labels, {"train": None, "val": 0.1, "test": 4}, seed=0)
    assert len(parts["val"]) == 4 and len(parts["test"]) == 4 and len(parts["train"]) == 35
    assert all((labels[p] == 1).sum() == 1 for p in parts.values())  # 3 rare images: one per split


def test_stratified_split_too_small_names_sizes_and_fix():
    with pytest.raises(UsageError, match=r"dataset too small for the requested split: 10 images, asked train=8 "
                                         r"val=2 test=1; lower data.train_size/data.val_size/data.test_size"):
        stratified_split(torch.arange(10) % 2, {"train": 8, "val": 2, "test": 1}, seed=0)


def test_to_storage_repeats_grey_and_resizes_shorter_side_then_centre_crops():
    grey = torch.arange(2 * 4 * 6, dtype=torch.uint8).reshape(2, 4, 6)
    stored = to_storage(grey, None)
    assert stored.shape == (2, 3, 4, 6) and torch.equal(stored[:, 0], grey) and torch.equal(stored[:, 2], grey)
    wide = torch.zeros(1, 3, 20, 40, dtype=torch.uint8)
    wide[..., :10] = 255  # only the left quarter is white: the centre crop removes it
    assert to_storage(wide, 10).shape == (1, 3, 10, 10)
    assert to_storage(wide, 10).max() < 20
    hwc = torch.zeros(1, 5, 5, 3, dtype=torch.uint8)
    hwc[..., 0] = 200
    assert to_storage(hwc, None, channels_last=True)[0, :, 2, 2].tolist() == [200, 0, 0]


# -------------------------------------------------------------------------------------------- fashion-mnist
@needs_fashion_mnist
def test_fashion_mnist_loads_stratified_disjoint_splits_of_the_official_sets():
    family = FashionMnist()
    options = dict(family.defaults)
    started = time.perf_counter()
    splits = family.load(None, options)
    assert time.perf_counter() - started < 5
    assert splits.sizes == {"train": 1000, "val": 500, "test": 2000}
    assert splits.train_images.shape == (1000, 3, 28, 28) and splits.train_images.dtype == torch.uint8
    assert splits.train_labels.dtype == torch.int64 and len(splits.classes) == 10
    assert splits.train_labels.bincount().tolist() == [100] * 10
    assert splits.val_labels.bincount().tolist() == [50] * 10
    assert splits.test_labels.bincount().tolist() == [200] * 10
    assert torch.equal(splits.train_images[:, 0], splits.train_images[:, 1])  # grey repeated

    official = {k: read_idx(DEBIAN_FILES / f"{name}.gz") for k, name in fashion_mnist.FILES.items()}
    assert official["train_images"].shape == (60000, 28, 28) and official["test_images"].shape == (10000, 28, 28)

    def positions(images: torch.Tensor, labels: torch.Tensor, kind: str) -> set[int]:
        """Where each loaded image sits in the official files (same pixels and label)."""
        index: dict[bytes, list[int]] = {}
        for i, image in enumerate(official[f"{kind}_images"]):
            index.setdefault(image.tobytes(), []).append(i)
        found = set()
        for image, label in zip(images[:, 0].numpy(), labels.tolist()):
            matches = [i for i in index.get(image.tobytes(), []) if official[f"{kind}_labels"][i] == label]
            assert matches, f"an image not in the official {kind} set"
            found.update(matches)
        return found

    train_at = positions(splits.train_images, splits.train_labels, "train")
    val_at = positions(splits.val_images, splits.val_labels, "train")
    positions(splits.test_images, splits.test_labels, "test")
    assert len(train_at) >= 1000 and len(val_at) >= 500
    assert not train_at & val_at
    assert_same_splits(splits, family.load(None, options))
    reseeded = family.load(None, {**options, "split_seed": 1})
    assert not torch.equal(reseeded.train_images, splits.train_images)


@needs_fashion_mnist
def test_fashion_mnist_options_whole_test_set_and_storage_size():
    family = FashionMnist()
    splits = family.load(None, {**family.defaults, "train_size": 20, "val_size": 10, "test_size": 0,
                                "storage_size": 32})
    assert splits.sizes == {"train": 20, "val": 10, "test": 10000}
    assert splits.test_images.shape[1:] == (3, 32, 32)
    assert splits.source["files"]["train_images"]["sha256"] and splits.source["split_seed"] == 0


@pytest.mark.parametrize("key, value, message", [
    ("train_size", 0, "data.train_size must be an integer >= 1"),
    ("test_size", -1, "data.test_size must be an integer >= 0"),
    ("augment", "rotate", "data.augment must be one of none, flip, crop-flip"),
    ("storage_size", "big", "data.storage_size must be an integer >= 1 or none"),
    ("split_seed", 1.5, "data.split_seed must be an integer"),
])
def test_fashion_mnist_rejects_bad_options_with_the_fix(key, value, message):
    family = FashionMnist()
    with pytest.raises(UsageError, match=message) as caught:
        family.fingerprint(None, {**family.defaults, key: value})
    assert f"--set data.{key}=" in str(caught.value)


@needs_fashion_mnist
def test_fashion_mnist_falls_back_to_the_torchvision_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian-package")
    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "data"))
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in fashion_mnist.FILES.values():
        (raw / f"{name}.gz").symlink_to(DEBIAN_FILES / f"{name}.gz")
    splits = FashionMnist().load(None, {"train_size": 10, "val_size": 10, "test_size": 10})
    assert splits.sizes == {"train": 10, "val": 10, "test": 10}
    assert splits.source["files"]["test_labels"]["path"].startswith(str(raw))


def test_fashion_mnist_without_files_or_network_says_how_to_get_them(tmp_path, monkeypatch, offline):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian-package")
    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist") as caught:
        FashionMnist().load(None, {})
    assert "\n" not in str(caught.value) and "internet" in str(caught.value)


# ------------------------------------------------------------------------------------------------ the cache
class CountingFamily:
    """Synthetic data, counting how often it is really loaded."""

    def __init__(self):
        self.inner = Synthetic()
        self.name, self.description, self.takes_argument = "counting", "test family", False
        self.defaults = self.inner.defaults
        self.loads = 0

    def fingerprint(self, argument, options):
        return self.inner.fingerprint(argument, options)

    def load(self, argument, options):
        self.loads += 1
        return self.inner.load(argument, options)


def test_cache_second_load_is_a_hit_and_equal(tmp_cache_dir):
    family = CountingFamily()
    options = dict(family.defaults)
    first = load_splits(family, None, options)
    second = load_splits(family, None, options)
    assert (first.source["cache"], second.source["cache"], family.loads) == ("miss", "hit", 1)
    assert_same_splits(first, second)
    files = list((tmp_cache_dir / "datasets").iterdir())
    assert [f.suffix for f in files] == [".safetensors"]  # no temporary file left behind
    load_splits(family, None, {**options, "split_seed": 5})
    assert family.loads == 2  # other options, other entry


@pytest.mark.parametrize("damage", ["truncate", "flip-data", "flip-header", "empty"])
def test_cache_damaged_file_is_rebuilt_with_a_warning(damage):
    family = CountingFamily()
    options = dict(family.defaults)
    first = load_splits(family, None, options)
    path = data_cache.cache_path(family, None, options)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip-data":
        data[-100] ^= 0xFF
    elif damage == "flip-header":
        data[20] ^= 0x55
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="is unusable .*; rebuilding it"):
        rebuilt = load_splits(family, None, options)
    assert rebuilt.source["cache"] == "miss" and family.loads == 2
    assert_same_splits(first, rebuilt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_splits(family, None, options).source["cache"] == "hit"


def test_cache_unwritable_folder_warns_and_still_returns_the_data(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TLBENCH_CACHE_DIR", str(blocker))
    with pytest.warns(CacheWarning, match="could not write the dataset cache"):
        splits = load_splits(Synthetic(), None, dict(Synthetic.defaults))
    assert splits.sizes == {"train": 64, "val": 32, "test": 32} and splits.source["cache"] == "miss"


def test_cache_refuses_malformed_splits_from_a_family():
    family = CountingFamily()
    broken = family.inner.load(None, family.defaults)
    broken.train_images = broken.train_images.float()
    family.load = lambda argument, options: broken
    with pytest.raises(ValueError, match="counting.*train_images must be a uint8 tensor"):
        load_splits(family, None, dict(family.defaults))


def test_cache_changed_source_file_is_a_miss(tmp_path):
    root = make_class_folders(tmp_path / "pets", {"cat": 6, "dog": 6})
    family, options = ImageFolder(), {**ImageFolder.defaults, "storage_size": 8}
    assert load_splits(family, str(root), options).source["cache"] == "miss"
    assert load_splits(family, str(root), options).source["cache"] == "hit"
    changed = root / "cat" / "0.png"
    Image.new("RGB", (12, 12), (1, 2, 3)).save(changed)
    os.utime(changed, ns=(1, 1))
    assert load_splits(family, str(root), options).source["cache"] == "miss"
    (root / "dog" / "extra.png").write_bytes((root / "dog" / "0.png").read_bytes())
    assert load_splits(family, str(root), options).source["cache"] == "miss"


# --------------------------------------------------------------------------------------------- imagefolder
def solid(index: int) -> tuple[int, int, int]:
    """A colour that identifies image ``index`` after a lossless round trip."""
    return (index * 7 % 256, index // 36 * 5 % 256, 100)


def make_class_folders(root: Path, counts: dict[str, int], start: int = 0) -> Path:
    """``root/<class>/<i>.png`` solid images; the colour encodes a global image number."""
    number = start
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (12, 10), solid(number)).save(root / name / f"{i}.png")
            number += 1
    return root


def colours(images: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(image[:, image.shape[1] // 2, image.shape[2] // 2].tolist()) for image in images]


def test_imagefolder_class_folders_are_split_by_fractions(tmp_path):
    root = make_class_folders(tmp_path / "data", {"a": 20, "b": 20, "c": 20})
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "a" / ".hidden.png").write_bytes(b"junk")
    splits = ImageFolder().load(str(root), {"storage_size": 8})
    assert splits.classes == ["a", "b", "c"]
    assert splits.sizes == {"train": 42, "val": 9, "test": 9}
    assert all(labels.bincount().tolist() == [n // 3] * 3 for labels, n in
               [(splits.train_labels, 42), (splits.val_labels, 9), (splits.test_labels, 9)])
    assert splits.train_images.shape == (42, 3, 8, 8)
    seen = colours(splits.train_images) + colours(splits.val_images) + colours(splits.test_images)
    assert len(set(seen)) == 60  # every image exactly once
    assert splits.source["layout"] == "class-folders" and splits.source["skipped"] == []
    sized = ImageFolder().load(str(root), {"storage_size": 8, "train_size": 6, "val_size": 3, "test_size": 3})
    assert sized.sizes == {"train": 6, "val": 3, "test": 3}


def test_imagefolder_split_folders_are_used_as_they_are(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", {"x": 5, "y": 5}, start=0)
    make_class_folders(root / "valid", {"x": 2, "y": 3}, start=100)
    make_class_folders(root / "test", {"x": 4, "y": 1}, start=200)
    splits = ImageFolder().load(str(root), {"storage_size": None})
    assert splits.sizes == {"train": 10, "val": 5, "test": 5}
    assert splits.train_images.shape == (10, 3, 10, 12)  # native size kept
    assert sorted(colours(splits.val_images)) == sorted(solid(i) for i in range(100, 105))
    assert sorted(colours(splits.test_images)) == sorted(solid(i) for i in range(200, 205))
    assert sorted(splits.val_labels.tolist()) == [0, 0, 1, 1, 1]
    assert splits.source["layout"] == "split-folders"


def test_imagefolder_missing_val_folder_is_split_from_train(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", {"x": 10, "y": 10}, start=0)
    make_class_folders(root / "test", {"x": 2, "y": 2}, start=100)
    splits = ImageFolder().load(str(root), {"storage_size": 4, "val_size": 4})
    assert splits.sizes == {"train": 16, "val": 4, "test": 4}
    train_colours = {solid(i) for i in range(20)}
    assert set(colours(splits.val_images)) <= train_colours
    assert not set(colours(splits.val_images)) & set(colours(splits.train_images))
    assert set(colours(splits.test_images)) == {solid(i) for i in range(100, 104)}


def write_corrupt_files(folder: Path) -> None:
    (folder / "notes.txt").write_text("not an image")
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(jpeg, "JPEG")
    (folder / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, r"imagefolder: .*missing does not exist; pass imagefolder:<folder"),
    (lambda root: root.write_text("x"), r"imagefolder: .*missing is not a directory"),
    (lambda root: root.mkdir(), r"imagefolder: no class folders in .*missing"),
    (lambda root: make_class_folders(root, {"a": 3, "b": 0}), r"class folder .*missing/b has no images"),
    (lambda root: make_class_folders(root, {"only": 3}), r"only one class folder \('only'\); .*at least 2"),
    (lambda root: make_class_folders(root, {"a": 1, "b": 1}), r"dataset too small for the requested split: 2 images, "
                                                              r"asked train=0\(the rest\) val=1"),
    (lambda root: (make_class_folders(root / "train", {"a": 2, "b": 2}), make_class_folders(root / "val", {"a": 1}),
                   make_class_folders(root / "val", {"c": 1})),
     r"class folders of .*val differ .*missing: b; extra: c"),
    (lambda root: (make_class_folders(root / "train", {"a": 2, "b": 2}), (root / "val").mkdir(),
                   (root / "valid").mkdir()), r"both val/ and valid/"),
    (lambda root: make_class_folders(root / "test", {"a": 2, "b": 2}), r"has test folder\(s\) but no train/ folder"),
    (lambda root: (make_class_folders(root, {"a": 6, "b": 6}), write_corrupt_files(root / "a")),
     r"cannot read .*missing/a/cut.jpg as an image \((?i:.*truncated.*)\) \(and 1 more bad files\); .*"
     r"--set data.on_bad_image=skip"),
])
def test_imagefolder_unusable_data_is_one_line_naming_problem_and_fix(tmp_path, setup, message):
    root = tmp_path / "missing"
    setup(root)
    with pytest.raises(UsageError, match=message) as caught:
        ImageFolder().load(str(root), {"storage_size": 8})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("options, message", [
    ({"val_fraction": 1.5}, "data.val_fraction must be a number between 0 and 1"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "data.val_fraction \\+ data.test_fraction must be below 1"),
    ({"on_bad_image": "ignore"}, "data.on_bad_image must be one of fail, skip"),
    ({"train_size": -3}, "data.train_size must be an integer >= 0"),
])
def test_imagefolder_rejects_bad_options(tmp_path, options, message):
    root = make_class_folders(tmp_path / "data", {"a": 4, "b": 4})
    with pytest.raises(UsageError, match=message):
        ImageFolder().fingerprint(str(root), options)


def test_imagefolder_skips_bad_images_when_asked_and_reports_them(tmp_path):
    root = make_class_folders(tmp_path / "data", {"a": 10, "b": 10})
    write_corrupt_files(root / "b")
    with pytest.warns(DataWarning, match=r"skipped 2 unreadable file\(s\) in .*: b/cut.jpg, b/notes.txt"):
        splits = ImageFolder().load(str(root), {"storage_size": 8, "on_bad_image": "skip"})
    assert sum(splits.sizes.values()) == 20
    assert splits.source["skipped"] == ["b/cut.jpg", "b/notes.txt"]
    assert set(colours(splits.train_images)) | set(colours(splits.val_images)) | set(
        colours(splits.test_images)) == {solid(i) for i in range(20)}


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def test_imagefolder_converts_every_mode_to_the_right_rgb(tmp_path):
    root = tmp_path / "modes"
    la = Image.new("LA", (4, 4), (200, 255))
    la.putpixel((0, 0), (200, 0))  # fully transparent -> white
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black over white -> mid grey
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 250, 100, 0, 0, 0, 255] + [0] * 759)
    palette.putpixel((0, 0), 2)
    transparent_palette = palette.copy()
    transparent_palette.info["transparency"] = 2
    sixteen = Image.fromarray(np.array([[65535, 32768, 0, 257]] * 4, dtype=np.uint16))
    assert sixteen.mode == "I;16"
    files = {
        "grey": save(Image.new("L", (4, 4), 77), root / "a" / "grey.png"),
        "la": save(la, root / "a" / "la.png"),
        "rgba": save(rgba, root / "a" / "rgba.png"),
        "palette": save(palette, root / "a" / "palette.png"),
        "transparent_palette": save(transparent_palette, root / "a" / "palette_t.png", transparency=2),
        "rgb_colour_key": save(Image.new("RGB", (4, 4), (1, 2, 3)), root / "b" / "key.png", transparency=(1, 2, 3)),
        "cmyk": save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), root / "b" / "cmyk.jpg", quality=100),
        "sixteen": save(sixteen, root / "b" / "sixteen.png"),
        "bilevel": save(Image.new("1", (4, 4), 1), root / "b" / "bilevel.png"),
    }
    for name, mode in [("sixteen", "I;16"), ("cmyk", "CMYK"), ("la", "LA"), ("transparent_palette", "P")]:
        with Image.open(files[name]) as reopened:
            assert reopened.mode == mode
    decoded = {name: decode_image_file(path, None) for name, path in files.items()}
    assert all(array.shape == (4, 4, 3) and array.dtype == np.uint8 for array in decoded.values())
    assert decoded["grey"][2, 2].tolist() == [77, 77, 77]
    assert decoded["la"][2, 2].tolist() == [200] * 3 and decoded["la"][0, 0].tolist() == [255] * 3
    assert decoded["rgba"][2, 2].tolist() == [10, 20, 30] and decoded["rgba"][0, 0].tolist() == [255] * 3
    assert np.abs(decoded["rgba"][0, 1].astype(int) - 127).max() <= 1
    assert decoded["palette"][2, 2].tolist() == [250, 100, 0] and decoded["palette"][0, 0].tolist() == [0, 0, 255]
    assert decoded["transparent_palette"][0, 0].tolist() == [255] * 3
    assert decoded["transparent_palette"][2, 2].tolist() == [250, 100, 0]
    assert np.abs(decoded["cmyk"][2, 2].astype(int) - [255, 0, 0]).max() <= 3
    assert decoded["sixteen"][0, :, 0].tolist() == [255, 128, 0, 1]  # scaled, not clipped to 255
    assert decoded["rgb_colour_key"][3, 3].tolist() == [255] * 3
    assert decoded["bilevel"][1, 1].tolist() == [255] * 3
    big_endian = Image.frombytes("I;16B", (2, 1), np.array([65535, 32768], dtype=">u2").tobytes())
    assert np.asarray(to_rgb8(big_endian))[0, :, 0].tolist() == [255, 128]
    assert np.asarray(to_rgb8(sixteen.convert("I")))[0, :, 1].tolist() == [255, 128, 0, 1]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb8(floats))[0, :, 2].tolist() == [0, 128, 255]
    splits = ImageFolder().load(str(root), {"storage_size": None, "train_size": 4, "val_size": 2, "test_size": 2})
    assert splits.train_images.shape[1:] == (3, 4, 4)


def test_imagefolder_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (32, 16), (255, 0, 0))
    image.paste((0, 0, 255), (16, 0, 32, 16))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(image, tmp_path / "photo.jpg", quality=100, exif=exif)
    upright = decode_image_file(path, None)
    assert upright.shape == (32, 16, 3)  # portrait after rotation
    assert upright[4, 8, 0] > 200 and upright[4, 8, 2] < 50  # top is the red left half
    assert upright[28, 8, 2] > 200 and upright[28, 8, 0] < 50
    stored = decode_image_file(path, 8)
    assert stored.shape == (8, 8, 3)


# -------------------------------------------------------------------------------------- torchvision datasets
def place_eurosat(root: Path, per_class: int = 8) -> list[str]:
    """What torchvision's EuroSAT checks for: ``<root>/eurosat/2750/<class>/*.jpg``."""
    classes = ["AnnualCrop", "Forest", "River"]
    for number, name in enumerate(classes):
        for i in range(per_class):
            save(Image.new("RGB", (16, 16), (80 * number, 5 * i, 40)), root / "eurosat" / "2750" / name / f"{i}.jpg")
    return classes


def test_eurosat_loads_from_files_where_torchvision_looks(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "data"))
    classes = place_eurosat(tmp_path / "data")
    family = torchvision_family("eurosat")
    options = {**family.defaults, "val_size": 3, "test_size": 6}
    first = load_splits(family, None, options)
    assert first.classes == classes
    assert first.sizes == {"train": 15, "val": 3, "test": 6}
    assert first.train_images.shape == (15, 3, 16, 16)  # native size
    assert first.val_labels.bincount().tolist() == [1, 1, 1] and first.test_labels.bincount().tolist() == [2, 2, 2]
    red = first.train_images[:, 0, 8, 8].float()
    assert all(abs(r - 80 * label) < 8 for r, label in zip(red.tolist(), first.train_labels.tolist()))
    assert first.source["torchvision"] == "EuroSAT"
    assert first.source["splits"] == {"train": "the rest of all images after val and test",
                                      "val": "stratified split of all images", "test": "stratified split of all images"}
    second = load_splits(family, None, options)
    assert second.source["cache"] == "hit"
    assert_same_splits(first, second)
    resized = family.load(None, {**options, "storage_size": 8})
    assert resized.test_images.shape == (6, 3, 8, 8)


def test_eurosat_has_no_official_test_split_so_test_size_0_is_refused():
    family = torchvision_family("eurosat")
    with pytest.raises(UsageError, match="data.test_size must be an integer >= 1 .*no official test split"):
        family.fingerprint(None, {**family.defaults, "test_size": 0})


@pytest.mark.parametrize("name, folder", [("flowers102", "flowers-102"), ("dtd", "dtd")])
def test_torchvision_dataset_offline_without_files_says_where_and_why(tmp_path, monkeypatch, offline, name, folder):
    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "data"))
    started = time.perf_counter()
    with pytest.raises(UsageError) as caught:
        torchvision_family(name).load(None, {})
    message = str(caught.value)
    assert time.perf_counter() - started < 10
    assert str(tmp_path / "data" / folder) in message and "needs internet once" in message and "\n" not in message


# ------------------------------------------------------------------------------------------------ synthetic
def test_synthetic_is_deterministic_balanced_and_varies_with_the_seed():
    family = Synthetic()
    first, second = family.load(None, {}), family.load(None, dict(family.defaults))
    assert_same_splits(first, second)
    assert first.sizes == {"train": 64, "val": 32, "test": 32} and first.train_images.shape == (64, 3, 32, 32)
    assert first.train_labels.bincount().tolist() == [16] * 4
    assert not torch.equal(first.train_images[:32], first.val_images)
    other = family.load(None, {"split_seed": 1})
    assert not torch.equal(first.train_images, other.train_images)
    assert family.fingerprint(None, {}) != family.fingerprint(None, {"split_seed": 1})
    assert family.load(None, {"num_classes": 3, "storage_size": 16}).train_images.shape == (64, 3, 16, 16)


def test_synthetic_is_learnable_by_a_tiny_cnn():
    """Default sizes, two epochs: well above chance (0.25) on the test split."""
    torch.manual_seed(0)
    splits = Synthetic().load(None, {})
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
                                torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    images = splits.train_images.float() / 255
    for epoch in range(2):
        for batch in torch.randperm(len(images)).split(8):
            loss = torch.nn.functional.cross_entropy(model(images[batch]), splits.train_labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        accuracy = (model(splits.test_images.float() / 255).argmax(1) == splits.test_labels).float().mean()
    assert accuracy > 0.5
