"""The `digits` dataset: scikit-learn's 1,797 bundled 8x8 digits as disjoint, stratified, seeded splits of uint8
images; a cheap fingerprint that follows the data; a real end-to-end trial; and, without scikit-learn, the standard
one-line install hint."""
import hashlib
import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tlbench.cli import cli
from tlbench.digests import file_sha256
from tlbench.plugins import digits
from tlbench.requirements import install_command, module_available
from tlbench.types import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_sklearn = pytest.mark.skipif(not module_available("sklearn"), reason="pip install scikit-learn (the digits "
                                                                           "extra)")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def load(**options):
    family = digits.Digits()
    return family.load(None, {**family.defaults, **options})


def hashes(images: torch.Tensor) -> list[str]:
    return [hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest() for image in images]


@pytest.fixture(scope="module")
def default_splits():
    return load()


@pytest.fixture
def without_sklearn(monkeypatch):
    """Importing scikit-learn now fails, as if the digits extra were not installed."""
    for name in [name for name in sys.modules if name == "sklearn" or name.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)


# ------------------------------------------------------------------------------------------------ the splits
@needs_sklearn
def test_default_splits_use_all_1797_images_once(default_splits):
    splits = default_splits
    assert splits.sizes == {"train": 1000, "val": 297, "test": 500}
    assert splits.classes == [str(k) for k in range(10)]
    per_split = {split: hashes(getattr(splits, f"{split}_images")) for split in ("train", "val", "test")}
    for split, found in per_split.items():
        assert len(set(found)) == len(found), f"an image twice in {split}"
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(per_split[a]) & set(per_split[b]), f"an image in both {a} and {b}"
    assert sum(len(found) for found in per_split.values()) == 1797


@needs_sklearn
def test_images_are_uint8_grey_scaled_from_0_16_to_0_255(default_splits):
    from sklearn.datasets import load_digits

    splits = default_splits
    for split in ("train", "val", "test"):
        images = getattr(splits, f"{split}_images")
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 8, 8)
        assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2]), "grey"
        assert int(images.min()) == 0 and int(images.max()) == 255
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(splits.train_images).tolist()) <= allowed
    # every stored image is one of scikit-learn's, pixel by pixel, with its own label
    original = load_digits()
    expected = {hashlib.sha256(np.rint(image * 255 / 16).astype(np.uint8).tobytes()).hexdigest(): int(label)
                for image, label in zip(original.images, original.target)}
    for split in ("train", "val", "test"):
        images, labels = getattr(splits, f"{split}_images"), getattr(splits, f"{split}_labels")
        grey = [hashlib.sha256(image[0].contiguous().numpy().tobytes()).hexdigest() for image in images]
        assert [expected[h] for h in grey] == labels.tolist()


@needs_sklearn
def test_labels_are_0_to_9_and_every_split_is_stratified(default_splits):
    for split in ("train", "val", "test"):
        labels = getattr(default_splits, f"{split}_labels")
        assert labels.dtype == torch.int64
        counts = torch.bincount(labels, minlength=10)
        assert len(counts) == 10 and int(counts.min()) > 0, f"every digit in {split}"
        share = counts.double() / len(labels)
        assert float((share - 0.1).abs().max()) < 0.02, f"{split} keeps the ~10% per class of the whole set"


@needs_sklearn
def test_splits_are_deterministic_and_the_test_split_ignores_train_and_val_sizes(default_splits):
    again = load()
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(again, f"{split}_images"), getattr(default_splits, f"{split}_images"))
        assert torch.equal(getattr(again, f"{split}_labels"), getattr(default_splits, f"{split}_labels"))
    other_seed = load(split_seed=1)
    assert not torch.equal(other_seed.test_images, default_splits.test_images)
    smaller = load(train_size=100, val_size=50)
    assert smaller.sizes == {"train": 100, "val": 50, "test": 500}
    assert torch.equal(smaller.test_images, default_splits.test_images), "test never moves with train/val sizes"
    rest = load(train_size=0, val_size=97, test_size=200)
    assert rest.sizes == {"train": 1500, "val": 97, "test": 200}, "train_size 0 takes the rest"


@needs_sklearn
def test_storage_size_and_the_source_record(default_splits):
    stored = load(train_size=20, val_size=10, test_size=10, storage_size=32)
    assert stored.train_images.shape == (20, 3, 32, 32)
    source = default_splits.source
    import sklearn

    assert source["dataset"] == "digits" and source["package"] == f"scikit-learn {sklearn.__version__}"
    assert source["file"]["sha256"] == file_sha256(source["file"]["path"])
    assert source["split_seed"] == 0 and source["images"] == 1797 and len(source["arrays_sha256"]) == 64


@pytest.mark.parametrize("options, message", [
    ({"train_size": 1500}, r"^dataset too small for the requested split: 1797 images, asked test=500 val=297 "
                           r"train=1500; lower data.train_size/val_size/test_size"),
    ({"test_size": 0}, r"^data.test_size must be an integer >= 1"),
    ({"train_size": -1}, r"^data.train_size must be an integer >= 0 \(0 = every image val and test leave\)"),
])
def test_bad_sizes_are_refused_in_one_line_with_the_fix(options, message):
    if "train_size" in options and options["train_size"] > 0 and not module_available("sklearn"):
        pytest.skip("pip install scikit-learn")
    with pytest.raises(UsageError, match=message) as caught:
        load(**options)
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------------------------- fingerprint
def test_the_fingerprint_follows_options_the_data_file_and_scikit_learns_version(tmp_path, monkeypatch):
    family = digits.Digits()
    fake = tmp_path / "digits.csv.gz"
    fake.write_bytes(b"one")
    monkeypatch.setattr(digits, "data_file", lambda: fake)
    monkeypatch.setattr(digits, "sklearn_version", lambda: "1.5.0")
    first = family.fingerprint(None, family.defaults)
    assert family.fingerprint(None, family.defaults) == first, "stable"
    assert family.fingerprint(None, {**family.defaults, "split_seed": 1}) != first
    fake.write_bytes(b"other data")
    changed = family.fingerprint(None, family.defaults)
    assert changed != first, "the data file changed"
    monkeypatch.setattr(digits, "sklearn_version", lambda: "1.6.0")
    assert family.fingerprint(None, family.defaults) != changed, "another scikit-learn"


@needs_sklearn
def test_the_data_file_is_the_one_scikit_learn_reads():
    path = digits.data_file()
    assert path is not None and path.name == "digits.csv.gz" and path.parent.parent.name == "datasets"


# -------------------------------------------------------------------------------------------------- the CLI
def test_list_datasets_shows_digits():
    output = invoke("list", "datasets").output
    row = next(line for line in output.splitlines() if line.startswith("digits "))
    assert "scikit-learn" in row
    assert row.startswith("digits *") != module_available("sklearn")


@needs_sklearn
def test_a_tiny_end_to_end_trial_on_digits_finishes_ok(tiny_backbone, tmp_path):
    results = tmp_path / "r"
    result = invoke("run", "-s", "frozen", "-b", tiny_backbone, "-d", "digits", "--epochs", "1", "--set",
                    "data.train_size=100", "--set", "data.val_size=50", "--set", "data.test_size=50",
                    "--results-dir", results)
    assert result.exit_code == 0, result.output
    assert "1 ok, 0 failed" in result.stderr
    (record,) = [json.loads(path.read_text()) for path in results.glob("*.json")]
    assert record["status"] == "ok" and record["trial"]["dataset"] == "digits"
    assert record["data"]["sizes"] == {"train": 100, "val": 50, "test": 50}
    assert record["data"]["source"]["dataset"] == "digits" and record["data"]["num_classes"] == 10
    assert 0 <= record["metrics"]["test_top1"] <= 1


def test_without_scikit_learn_list_marks_digits_and_naming_it_stops_with_the_hint(without_sklearn, tmp_path):
    assert not module_available("sklearn") and digits.data_file() is None
    output = invoke("list", "datasets").output
    assert next(line for line in output.splitlines() if line.startswith("digits ")).startswith("digits *")
    assert f"* digits is unavailable here: it needs an optional package: {install_command('digits')}" in output
    result = invoke("run", "-s", "frozen", "-d", "digits", "--results-dir", tmp_path / "r")
    assert result.exit_code == 2
    assert result.stderr == (f"Error: dataset 'digits' needs an optional package: "
                             f"{digits.INSTALL_HINT}\n")
    assert not (tmp_path / "r").exists(), "nothing is written"
    with pytest.raises(UsageError, match=r"^dataset 'digits' needs an optional package: pip install "):
        digits.load_arrays()
    family = digits.Digits()
    assert family.fingerprint(None, family.defaults), "the fingerprint works without scikit-learn"
