"""`tlbench predict` on PNG and JPEG files gives the labels the harness's evaluation gave the same images.

An imagefolder dataset (train/ val/ test/ folders, PNG and JPEG files of several native sizes, so the storage resize
matters) is trained on the tiny timm model; its export then predicts the test files, and every label must be the one
the trial's own model gives that image in the harness (decoded by the dataset, preprocessed on the device).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import one_error_line
from tlbench.cli import cli
from tlbench.plugins.synthetic import make_images
from tlbench.store import ResultStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def write_split(folder: Path, count: int, seed: int) -> None:
    images, labels = make_images(count, 3, 40, seed)
    for index, (image, label) in enumerate(zip(images, labels.tolist())):
        target = folder / f"class{label}"
        target.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image.permute(1, 2, 0).numpy())
        if index % 3 == 1:
            picture = picture.resize((48, 40))  # not square: the storage step crops
        if index % 2:
            picture.save(target / f"{index}.jpg", quality=90)
        else:
            picture.save(target / f"{index}.png")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("predict")
    data = root / "images"
    for split, count, seed in (("train", 48, 0), ("val", 24, 1), ("test", 30, 2)):
        write_split(data / split, count, seed)
    results = root / "results"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ran = invoke("run", "-s", "full", "-b", tiny_backbone, "-d", f"imagefolder:{data}", "--epochs", 2,
                     "--results-dir", results, "-q", "--set", "full.lr=0.01", "--set", "data.augment=none",
                     "--set", "data.image_size=32", "--set", "data.storage_size=36")
        assert ran.exit_code == 0, ran.output
        out = root / "model"
        done = invoke("export", "--best", "--results-dir", results, "--out", out, "--format", "timm,torchscript,onnx")
        assert done.exit_code == 0, done.output
    finally:
        torch.set_num_threads(threads)
    [record] = ResultStore(results).records()
    return out, data, record, results


def harness_labels(record, results) -> dict[str, int]:
    """The trial's own model's label for every test image of the harness's test split, by image content."""
    from tlbench.data_cache import load_splits
    from tlbench.export import _trial_of, predictions, trained_model
    from tlbench.preprocess import DevicePreprocessor
    from tlbench.registry import Plugins

    plugins = Plugins()
    trained = trained_model(record, results, plugins)
    trial = _trial_of(record)
    family, argument = plugins.datasets.resolve(trial.dataset)
    splits = load_splits(family, argument, trial.load_options)
    prep = DevicePreprocessor(trained.preprocessing, "none", trained.channels_last)
    labels = predictions(trained.model, splits.test_images, prep, 32)
    return {hashlib.sha256(image.numpy().tobytes()).hexdigest(): int(label)
            for image, label in zip(splits.test_images, labels)}


@pytest.mark.parametrize("use", ["timm", "torchscript", "onnx"])
def test_predict_gives_the_harness_labels_on_png_and_jpeg(exported, use):
    from tlbench.predict import decode

    out, data, record, results = exported
    expected = harness_labels(record, results)
    result = invoke("predict", out, data / "test", "--format", "json", "--use", use, "--top-k", 2)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    files = sorted((data / "test").rglob("*.*"))
    assert sorted(row["file"] for row in rows) == sorted(map(str, files))
    assert {Path(f).suffix for f in files} == {".png", ".jpg"}
    classes = record.data["classes"]
    for row in rows:
        content = hashlib.sha256(decode(Path(row["file"]), 36).numpy().tobytes()).hexdigest()
        top = row["predictions"][0]
        assert top["index"] == expected[content] and top["label"] == classes[top["index"]], row["file"]
        assert len(row["predictions"]) == 2 and top["probability"] >= row["predictions"][1]["probability"]


def test_predict_table_and_csv(exported):
    out, data, _, _ = exported
    some = sorted((data / "test" / "class0").iterdir())[:2]
    table = invoke("predict", out, *some)
    assert table.exit_code == 0 and "label" in table.output and str(some[0]) in table.output
    csv = invoke("predict", out, *some, "--format", "csv", "--top-k", 3)
    assert csv.exit_code == 0
    lines = csv.output.strip().splitlines()
    assert lines[0] == "file,rank,index,label,probability" and len(lines) == 1 + 2 * 3


def test_bad_predict_input_is_one_line_exit_2(exported, tmp_path):
    out, data, _, _ = exported
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert "no images" in one_error_line(invoke("predict", out, empty))
    assert "cannot read" in one_error_line(invoke("predict", out, empty / "notes.txt"))
    assert "does not exist" in one_error_line(invoke("predict", out, tmp_path / "missing.png"))
    assert "no export folder" in one_error_line(invoke("predict", tmp_path / "nowhere", data / "test"))
    assert "not a tlbench export" in one_error_line(invoke("predict", empty, data / "test"))

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model.onnx").unlink()
    assert "missing" in one_error_line(invoke("predict", broken, data / "test"))
    shutil.copy(out / "model.onnx", broken / "model.onnx")
    with open(broken / "model.safetensors", "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    assert "damaged" in one_error_line(invoke("predict", broken, data / "test"))
    (broken / "config.json").write_text("{not json")
    assert "not a tlbench export config" in one_error_line(invoke("predict", broken, data / "test"))
