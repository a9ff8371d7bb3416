"""Suites (issue 25): the register_suites hook and its checks, the built-in vtab-1k split protocol on fake files
placed where torchvision looks, `tlbench list suites`, and `tlbench run --suite` end to end with resume."""
from __future__ import annotations

import hashlib
import json
import pickle
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from click.testing import CliRunner
from PIL import Image

from tlbench import RunSpec, Suite, SuiteTask, UsageError, run_grid
from tlbench.cli import cli
from tlbench.plugins import suites as builtin_suites
from tlbench.plugins.torchvision_datasets import DATASETS, TorchvisionFamily
from tlbench.records import Record, RecordError
from tlbench.registry import Plugins
from tlbench.rerun import rerun_spec
from tlbench.suites import chosen_tasks, find_suite

from conftest import one_error_line, record_dict

DEBIAN_FILES = Path("/usr/share/datasets/fashion-mnist")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def family(name: str) -> TorchvisionFamily:
    return TorchvisionFamily(next(spec for spec in DATASETS if spec.name == name))


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A plugin module installed as pip would, as far as discovery goes (an entry point in the `tlbench` group)."""
    monkeypatch.delenv("TLBENCH_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(module_name: str, source: str) -> None:
        (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(source))
        dist = tmp_path / f"{module_name}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[tlbench]\n{module_name} = {module_name}\n")

    return install


# ------------------------------------------------------------------------------------------- the Suite type
def test_a_suite_orders_its_groups_and_names_tasks_after_their_dataset():
    suite = Suite("s", "d", [SuiteTask("b", "two"), SuiteTask("a", "one", {"train_size": 5}), SuiteTask("c", "two")])
    assert suite.groups == ("two", "one") and isinstance(suite.tasks, tuple)
    suite.check()
    assert suite.task("a").options == {"train_size": 5} and suite.task("a").name == "a"
    assert SuiteTask("imagefolder:/x", "g", name="x").name == "x"


@pytest.mark.parametrize("suite, message", [
    (Suite("s", "d", []), "has no tasks"),
    (Suite("s", "d", [SuiteTask("a", "g"), SuiteTask("a", "g")]), "names task 'a' twice"),
    (Suite("s", "d", [SuiteTask("a", "g")], groups=("h",)), "task group 'g' is not one of its groups"),
    (Suite("s", "d", [SuiteTask("a", "g")], groups=("g", "h")), "group 'h' has no task"),
    (Suite("s", "d", [SuiteTask("", "g")]), "needs a non-empty dataset"),
    (Suite("s", "d", ["cifar100"]), "is not a tlbench.SuiteTask"),
])
def test_a_suite_that_cannot_run_is_refused_with_the_reason(suite, message):
    with pytest.raises(UsageError, match=message):
        suite.check()


def test_a_plugin_registering_a_bad_suite_gets_a_clear_error_and_the_rest_still_loads(third_party):
    third_party("bad_suites", """
        from tlbench import Suite, SuiteTask, hookimpl

        @hookimpl
        def register_suites(register):
            register({"name": "dict-suite"})
            register(Suite("mixed-up", "groups wrong", [SuiteTask("synthetic", "natural")], groups=("structured",)))
            register(Suite("vtab-1k", "a second one", [SuiteTask("synthetic", "natural")]))
            register(Suite("fine", "one synthetic task", [SuiteTask("synthetic", "natural", {"train_size": 16})]))
    """)
    plugins = Plugins()
    error = plugins.info["bad_suites"].error
    assert "register_suites got {'name': 'dict-suite'}, which is not a tlbench.Suite" in error
    assert "suite 'mixed-up': task group 'natural' is not one of its groups (structured)" in error
    assert "suite name 'vtab-1k' is registered twice, by plugin 'suites' and by plugin 'bad_suites'" in error
    assert plugins.suites.names() == ["fine", "offline-small"]  # a name taken twice is withheld from both
    with pytest.raises(UsageError, match="registered twice"):
        find_suite(plugins, "vtab-1k")
    assert "bad_suites" in invoke("plugins").output


def test_unknown_suite_is_one_line_listing_the_suites(tmp_path):
    line = one_error_line(invoke("run", "--suite", "vtab1k", "-s", "frozen", "--results-dir", tmp_path))
    assert line == ("Error: unknown suite 'vtab1k'; did you mean 'vtab-1k'? suites: offline-small, vtab-1k "
                    "(see `tlbench list suites`)")
    assert "suites: offline-small, vtab-1k" in one_error_line(invoke("run", "--suite", "zzz", "-s", "frozen"))
    assert not (tmp_path / "x").exists()


def test_dataset_with_suite_picks_tasks_and_an_outsider_is_refused():
    suite = builtin_suites.VTAB_1K_SUITE
    assert [t.name for t in chosen_tasks(suite, ["dtd", "cifar100"])] == ["dtd", "cifar100"]
    line = one_error_line(invoke("run", "--suite", "offline-small", "-d", "cifar10", "-s", "frozen"))
    assert "-d 'cifar10' is not a task of suite 'offline-small'; its tasks: fashion-mnist, digits" in line
    assert "--tune does not run suites yet" in one_error_line(
        invoke("run", "--suite", "offline-small", "-s", "frozen", "--tune"))


# -------------------------------------------------------------------------------------- the built-in suites
def test_vtab_1k_covers_each_vtab_task_once_in_its_group():
    suite = builtin_suites.VTAB_1K_SUITE
    suite.check()
    assert suite.groups == ("natural", "specialized", "structured")
    registered = Plugins(load_third_party=False).datasets.names()
    for task in suite.tasks:
        assert task.dataset in registered, task.dataset
        assert task.options["train_size"] == 800 and task.options["val_size"] == 200
    covered = {t.name for t in suite.tasks}
    assert len(covered) + len(builtin_suites.VTAB_MISSING) == 19  # VTAB's 19 tasks, each covered or explained
    by_group = {g: [t.name for t in suite.tasks if t.group == g] for g in suite.groups}
    assert by_group == {"natural": ["caltech101", "cifar100", "dtd", "flowers102", "oxford-pets", "svhn", "sun397"],
                        "specialized": ["eurosat"], "structured": ["clevr-count"]}


def fake_cifar100(root: Path, train_per_class: int, test_per_class: int, classes: int = 100) -> None:
    """torchvision's cifar-100-python layout (train, test, meta pickles); each image holds its own number in its
    first pixels (split * 10^6 + index), so every drawn image can be told apart."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, per_class, offset in (("train", train_per_class, 0), ("test", test_per_class, 1)):
        count = per_class * classes
        data = np.zeros((count, 3 * 32 * 32), dtype=np.uint8)
        ids = np.arange(count) + offset * 10**6
        for byte in range(3):
            data[:, byte] = (ids >> (8 * byte)) & 255
        labels = [i % classes for i in range(count)]
        (folder / name).write_bytes(pickle.dumps({"data": data, "fine_labels": labels}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{i}" for i in range(classes)]}))


def image_ids(images: torch.Tensor) -> list[int]:
    """The numbers fake_cifar100 wrote: the first three bytes of the red channel's first row, little-endian."""
    first = images[:, 0, 0, :3].long()
    return (first[:, 0] + (first[:, 1] << 8) + (first[:, 2] << 16)).tolist()


def test_vtab_1k_cifar100_is_800_train_200_val_from_the_official_train_split_and_all_of_its_test(
        tmp_path, monkeypatch, offline):
    """The real numbers on a fake CIFAR-100 of 1,100 training images (11 per class) and 300 test images."""
    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "data"))
    fake_cifar100(tmp_path / "data", train_per_class=11, test_per_class=3)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)  # the fake has other checksums
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args: True)
    task = builtin_suites.VTAB_1K_SUITE.task("cifar100")
    cifar = family("cifar100")
    splits = cifar.load(None, {**cifar.defaults, **task.options})
    assert splits.sizes == {"train": 800, "val": 200, "test": 300}
    train, val, test = (image_ids(getattr(splits, f"{s}_images")) for s in ("train", "val", "test"))
    assert len(set(train)) == 800 and len(set(val)) == 200 and not set(train) & set(val)
    assert max(train + val) < 1100 <= 10**6 <= min(test)  # train and val from the official train split only
    assert sorted(test) == [10**6 + i for i in range(300)]  # the whole official test split
    assert all(label == i % 100 for label, i in zip(splits.train_labels.tolist(), train))  # labels follow images
    assert splits.train_labels.bincount().min() >= 7 and splits.val_labels.bincount().min() >= 1  # stratified
    other_seed = cifar.load(None, {**cifar.defaults, **task.options, "split_seed": 1})
    assert set(image_ids(other_seed.train_images)) != set(train)  # seeded


def save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_vtab_1k_eurosat_carves_800_200_and_the_5400_test_images_disjointly(tmp_path, monkeypatch, offline):
    """EuroSAT has one pool: VTAB-1k's three splits are carved from it, disjoint (6,500 fake 4x4 tiles, each
    with its own colour)."""
    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "data"))
    classes = ["AnnualCrop", "Forest", "River", "SeaLake", "Pasture"]
    for number, name in enumerate(classes):
        for i in range(1300):
            save(Image.new("RGB", (4, 4), (number * 50, i % 256, i // 256)),
                 tmp_path / "data" / "eurosat" / "2750" / name / f"{i}.png")
    task = builtin_suites.VTAB_1K_SUITE.task("eurosat")
    eurosat = family("eurosat")
    splits = eurosat.load(None, {**eurosat.defaults, **task.options})
    assert splits.sizes == {"train": 800, "val": 200, "test": 5400}
    seen = [set(map(tuple, getattr(splits, f"{s}_images")[:, :, 0, 0].tolist())) for s in ("train", "val", "test")]
    assert [len(s) for s in seen] == [800, 200, 5400]  # no image twice within a split
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])  # nor across splits
    assert splits.train_labels.bincount().tolist() == [160] * 5


def test_vtab_1k_dtd_draws_val_from_the_official_val_split(tmp_path, monkeypatch, offline):
    """Where a dataset has an official validation split (DTD, Flowers-102), VTAB's val200 comes from it."""
    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "data"))
    base = tmp_path / "data" / "dtd" / "dtd"
    for shade, split in enumerate(("train", "val", "test")):
        lines = []
        for name in ("banded", "dotted"):
            for i in range(12):
                save(Image.new("RGB", (4, 4), (100 * shade, i, 0)), base / "images" / name / f"{split}_{i}.jpg")
                lines.append(f"{name}/{split}_{i}.jpg")
        (base / "labels").mkdir(parents=True, exist_ok=True)
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    dtd = family("dtd")
    options = {**dtd.defaults, **builtin_suites.VTAB_1K_SUITE.task("dtd").options, "train_size": 10, "val_size": 6}
    splits = dtd.load(None, options)  # the sizes scaled down to the fake; the rest is the suite's protocol
    assert splits.sizes == {"train": 10, "val": 6, "test": 24}
    red = {s: set(getattr(splits, f"{s}_images")[:, 0].flatten().add(25).div(50, rounding_mode="floor").tolist())
           for s in ("train", "val", "test")}  # JPEG blurs colours a little: 0, 100 and 200 stay apart
    assert red == {"train": {0}, "val": {2}, "test": {4}}
    assert splits.source["splits"]["val"] == "stratified subset of the official val split"


# ---------------------------------------------------------------------------------------------- list suites
def test_list_suites_shows_names_groups_tasks_protocol_and_what_is_missing(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    result = invoke("list", "suites")
    assert result.exit_code == 0, result.output
    text = result.output
    table = text.split("\n\n")[0]
    assert "vtab-1k" in table and "offline-small" in table and "natural:" in text and "structured:" in text
    assert "train_size=800" in text and "clevr-count" in text
    assert "resisc45 (not in torchvision)" in " ".join(text.split())
    assert max(len(line) for line in table.splitlines()[1:]) <= 100, table  # fits the terminal
    wide = invoke("list", "suites", "--wide").output
    line = next(line for line in wide.splitlines() if line.startswith("vtab-1k"))
    assert "natural: caltech101, cifar100, dtd, flowers102, oxford-pets, svhn, sun397; specialized: eurosat; " \
           "structured: clevr-count" in line
    assert "test_size: caltech101 6084, sun397 21750, eurosat 5400, others 0" in line
    assert "suites:" in invoke("list").output  # with the other kinds


def test_list_suites_marks_a_task_whose_dataset_is_not_registered(third_party):
    third_party("my_suite", """
        from tlbench import Suite, SuiteTask, hookimpl

        @hookimpl
        def register_suites(register):
            register(Suite("mine", "a plugin's suite", [SuiteTask("synthetic", "natural"),
                                                        SuiteTask("no-such-data", "natural")]))
    """)
    text = invoke("list", "suites", "--wide").output
    assert "natural: synthetic, no-such-data *" in text
    assert "* mine: no-such-data cannot run here: dataset 'no-such-data' is not registered here" in text


# ------------------------------------------------------------------------------------------- run --suite
def test_a_suite_run_records_suite_task_and_group_resumes_and_reruns(tmp_path, tiny_backbone, third_party):
    """A plugin suite over two synthetic tasks: every trial carries its suite, its labels stay the strategy's
    name, the second run runs nothing, and rerun reproduces the key."""
    third_party("two_tasks", """
        from tlbench import Suite, SuiteTask, hookimpl

        @hookimpl
        def register_suites(register):
            register(Suite("two", "two synthetic tasks", [
                SuiteTask("synthetic", "easy", {"num_classes": 2, "train_size": 24}, name="two-class"),
                SuiteTask("synthetic", "hard", {"num_classes": 4, "train_size": 32}, name="four-class")],
                groups=("easy", "hard")))
    """)
    spec = RunSpec(strategies=["frozen"], backbones=[tiny_backbone], suite="two", settings=["epochs=1"],
                   results_dir=tmp_path, device="cpu", progress="off", seeds=2)
    first = run_grid(spec)
    assert first.exit_code == 0 and first.pending == 4, [r.error for r in first.failed]
    suites = sorted((r.trial.suite["task"], r.trial.suite["group"], r.trial.data["num_classes"],
                     r.trial.data["train_size"], r.trial.label, r.trial.seed) for r in first.records)
    assert suites == [("four-class", "hard", 4, 32, "frozen[epochs=1]", 0), ("four-class", "hard", 4, 32,
                       "frozen[epochs=1]", 1), ("two-class", "easy", 2, 24, "frozen[epochs=1]", 0),
                      ("two-class", "easy", 2, 24, "frozen[epochs=1]", 1)]
    assert {r.trial.suite["name"] for r in first.records} == {"two"}
    written = json.loads((tmp_path / f"{first.records[0].key}.json").read_text())
    assert set(written["trial"]["suite"]) == {"name", "task", "group"}

    again = run_grid(spec)
    assert again.pending == 0 and again.skipped == 4 and again.exit_code == 0

    only = run_grid(spec.replace(datasets=["two-class"], settings=["epochs=1", "data.train_size=16"]))
    assert only.pending == 2 and {r.trial.label for r in only.records} == {"frozen[data.train_size=16,epochs=1]"}

    record = first.records[0]
    rerun = rerun_spec(record, tmp_path)
    assert rerun.suite == "two" and rerun.datasets == (record.trial.suite["task"],)
    redone = run_grid(rerun.replace(device="cpu", progress="off", save_models="none",
                                    strategies=[record.trial.strategy]))
    assert [r.key for r in redone.records] == [record.key] and redone.records[0].trial.label == record.trial.label
    assert ["--suite", "two"] == rerun.arguments()[1:3]

    view = invoke("leaderboard", "--suite", "two", "--results-dir", tmp_path, "--format", "simple").output
    header = next(line for line in view.splitlines() if line.startswith("backbone"))
    assert header.split()[2:] == ["two-class", "four-class", "easy", "mean", "hard", "mean", "mean", "(tasks)", "mean",
                                  "(groups)"]
    assert "no ok records of suite 'offline-small'" in one_error_line(
        invoke("leaderboard", "--suite", "offline-small", "--results-dir", tmp_path))
    for option in (["--vs", "full"], ["--dataset", "x"], ["--wide"], ["--columns", "test"], ["--across", "datasets"]):
        line = one_error_line(invoke("leaderboard", "--suite", "two", "--results-dir", tmp_path, *option))
        assert option[0] in line, (option, line)


def test_a_suite_trial_is_its_own_record_and_records_without_a_suite_still_load():
    plain = record_dict()
    assert Record.from_json_dict(plain).trial.suite == {}
    assert "suite" not in Record.from_json_dict(plain).to_json_dict()["trial"]  # the layout old records have
    broken = record_dict()
    broken["trial"]["suite"] = {"name": "x", "task": 3, "group": "g"}
    with pytest.raises(RecordError, match="trial.suite.task must be a str"):
        Record.from_json_dict(broken)


@pytest.mark.skipif(not (DEBIAN_FILES / "train-images-idx3-ubyte.gz").exists(),
                    reason="apt-get install dataset-fashion-mnist")
def test_offline_small_runs_end_to_end_and_resumes(tmp_path, tiny_backbone):
    pytest.importorskip("sklearn")
    args = ["run", "--suite", "offline-small", "-s", "frozen", "-b", tiny_backbone, "--epochs", "1", "--device",
            "cpu", "-q", "--save-models", "none", "--results-dir", tmp_path, "--set", "data.train_size=20",
            "--set", "data.val_size=10", "--set", "data.test_size=20"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "2 trial(s), 0 already done, 2 to run" in first.output
    records = [Record.from_json(path.read_text()) for path in sorted(tmp_path.glob("*.json"))]
    assert sorted((r.trial.dataset, r.trial.suite["group"], r.trial.suite["name"], r.metrics.test_top1 is not None)
                  for r in records) == [("digits", "natural", "offline-small", True),
                                        ("fashion-mnist", "natural", "offline-small", True)]
    assert all(r.trial.data["val_size"] == 10 and r.data["sizes"]["train"] == 20 for r in records)
    second = invoke(*args)
    assert second.exit_code == 0 and "2 trial(s), 2 already done, 0 to run" in second.output


def test_the_guide_example_suite_loads_and_lists(tmp_path, monkeypatch):
    """docs/examples/example_suite.py, installed as a plugin: registered without a problem, listed by group."""
    monkeypatch.delenv("TLBENCH_DISABLE_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "docs" / "examples"))
    dist = tmp_path / "example_suite-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: example-suite\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tlbench]\nfew-shot-offline = example_suite\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = Plugins()
    assert plugins.info["few-shot-offline"].error is None
    suite = find_suite(plugins, "few-shot-offline")
    assert [t.name for t in chosen_tasks(suite, ["fashion-mnist"])] == ["fashion-100", "fashion-1000"]
    line = next(line for line in invoke("list", "suites", "--wide").output.splitlines()
                if line.startswith("few-shot-offline"))
    assert "clothing: fashion-100, fashion-1000; handwriting: digits" in line
    assert "train_size: fashion-1000 1000, others 100" in line


def suite_record(task: str, group: str, seed: int, test_top1: float, strategy: str = "full", suite: str = "s"):
    key = hashlib.sha256(f"{task} {seed} {strategy} {suite}".encode()).hexdigest()[:20]
    record = record_dict(key=key, strategy=strategy, seed=seed, test_top1=test_top1)
    record["trial"]["suite"] = {"name": suite, "task": task, "group": group}
    return record


def test_the_suite_view_averages_seeds_then_tasks_then_groups_and_leaves_incomplete_means_empty():
    from tlbench.suites import suite_table

    suite = Suite("s", "d", [SuiteTask("a", "natural"), SuiteTask("b", "natural"), SuiteTask("c", "structured")])
    records = [suite_record("a", "natural", 0, 0.50), suite_record("a", "natural", 1, 0.70),  # a: 0.60
               suite_record("b", "natural", 0, 0.90),                                          # b: 0.90
               suite_record("c", "structured", 0, 0.30), suite_record("c", "structured", 1, 0.40),  # c: 0.35
               suite_record("a", "natural", 0, 0.99, suite="other"),  # another suite's record: not counted
               suite_record("a", "natural", 0, 0.10, strategy="frozen")]  # frozen lacks b and c
    table = suite_table(records, suite)
    full = next(v for v in table.values if v["strategy"] == "full")
    assert full["tasks"]["a"] == {"mean": pytest.approx(0.60), "n": 2}
    assert full["groups"] == {"natural": pytest.approx(0.75), "structured": pytest.approx(0.35)}
    assert full["mean_of_tasks"] == pytest.approx((0.60 + 0.90 + 0.35) / 3)
    assert full["mean_of_groups"] == pytest.approx((0.75 + 0.35) / 2)
    frozen_row = next(r for r in table.rows if r["strategy"] == "frozen")
    assert frozen_row["a"] == "10.0" and frozen_row["b"] == "" and frozen_row["natural mean"] == ""
    assert frozen_row["mean (tasks)"] == "" and list(frozen_row)[2:] == ["a", "b", "c", "natural mean",
                                                                         "structured mean", "mean (tasks)",
                                                                         "mean (groups)"]
    assert "1/2 seed(s)" in table.notes[0]


# ------------------------------------------------- the torchvision datasets VTAB-1k added, on files where they look
def test_svhn_reads_its_mat_files_channels_first(tmp_path, monkeypatch, offline):
    import scipy.io
    from torchvision.datasets import SVHN

    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "data"))
    folder = tmp_path / "data" / "svhn"
    folder.mkdir(parents=True)
    for name, count in (("train_32x32.mat", 40), ("test_32x32.mat", 20)):
        images = np.zeros((32, 32, 3, count), dtype=np.uint8)  # SVHN's layout: H, W, C, N
        images[:, :, 0, :] = np.arange(count, dtype=np.uint8) * 5  # red = 5 x the image's number
        labels = np.array([[10 if i % 10 == 0 else i % 10] for i in range(count)])  # SVHN calls 0 "10"
        scipy.io.savemat(folder / name, {"X": images, "y": labels})
    monkeypatch.setattr(SVHN, "_check_integrity", lambda self: True)
    monkeypatch.setattr(SVHN, "download", lambda self: None)
    svhn = family("svhn")
    splits = svhn.load(None, {**svhn.defaults, "train_size": 20, "val_size": 10})
    assert splits.sizes == {"train": 20, "val": 10, "test": 20} and splits.classes == [str(d) for d in range(10)]
    assert splits.train_images.shape == (20, 3, 32, 32)
    numbers = splits.train_images[:, 0, 5, 5].long() // 5  # channels came out in the right place
    assert (splits.train_labels == numbers % 10).all() and splits.train_images[:, 1:].max() == 0


def test_caltech101_carves_its_splits_leaves_out_the_background_and_decodes_grey_images(tmp_path, monkeypatch,
                                                                                         offline):
    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "data"))
    base = tmp_path / "data" / "caltech101" / "101_ObjectCategories"
    for number, name in enumerate(("BACKGROUND_Google", "accordion", "airplanes", "anchor")):
        for i in range(1, 11):
            mode = "L" if i % 2 else "RGB"  # Caltech-101 mixes grey and colour files
            save(Image.new(mode, (6, 5), 60 * number if mode == "L" else (60 * number,) * 3),
                 base / name / f"image_{i:04d}.jpg")
    caltech = family("caltech101")
    splits = caltech.load(None, {**caltech.defaults, "val_size": 6, "test_size": 9, "storage_size": 4})
    assert splits.classes == ["accordion", "airplanes", "anchor"]
    assert splits.sizes == {"train": 15, "val": 6, "test": 9} and splits.train_images.shape == (15, 3, 4, 4)
    grey = splits.train_images[:, :, 2, 2].float()
    assert all(abs(value - 60 * (label + 1)) < 8 for value, label in zip(grey[:, 0].tolist(),
                                                                        splits.train_labels.tolist()))


def test_sun397_reads_class_names_and_carves_its_splits(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "data"))
    base = tmp_path / "data" / "SUN397"
    names = ["/a/abbey", "/b/beach", "/c/castle/indoor"]
    for number, name in enumerate(names):
        for i in range(8):
            save(Image.new("RGB", (5, 5), (70 * number, 0, 0)), base / name.strip("/") / f"sun_{i}.jpg")
    (base / "ClassName.txt").write_text("\n".join(names) + "\n")
    sun = family("sun397")
    splits = sun.load(None, {**sun.defaults, "train_size": 12, "val_size": 3, "test_size": 6})
    assert splits.classes == ["abbey", "beach", "castle/indoor"] and splits.sizes == {"train": 12, "val": 3,
                                                                                     "test": 6}
    assert splits.test_labels.bincount().tolist() == [2, 2, 2]


def test_clevr_count_is_8_classes_tested_on_the_official_val_split(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "data"))
    base = tmp_path / "data" / "clevr" / "CLEVR_v1.0"
    for shade, (split, count) in enumerate((("train", 24), ("val", 8))):
        scenes = []
        for i in range(count):
            name = f"CLEVR_{split}_{i:06d}.png"
            save(Image.new("RGB", (6, 4), (120 * shade, 0, 0)), base / "images" / split / name)
            scenes.append({"image_filename": name, "objects": [{}] * (3 + i % 8)})
        (base / "scenes").mkdir(parents=True, exist_ok=True)
        (base / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps({"scenes": scenes}))
    clevr = family("clevr-count")
    splits = clevr.load(None, {**clevr.defaults, **builtin_suites.VTAB_1K_SUITE.task("clevr-count").options,
                               "train_size": 16, "val_size": 8})
    assert splits.classes == [str(n) for n in range(3, 11)]
    assert splits.sizes == {"train": 16, "val": 8, "test": 8}
    assert sorted(splits.test_labels.tolist()) == list(range(8))  # 3..10 objects as classes 0..7
    assert splits.train_images[:, 0].max() < 20 and splits.test_images[:, 0].min() > 100  # test = official val


def test_run_suite_builds_the_spec_and_its_arguments_ask_for_it_again():
    from tlbench.cli import run, spec_from_options

    def cli_spec(args):
        with run.make_context("run", list(args)) as ctx:
            return spec_from_options(ctx.params)[0]

    spec = cli_spec(["--suite", "vtab-1k", "-s", "frozen", "-d", "dtd", "--seeds", "3", "--set", "epochs=2"])
    assert spec.suite == "vtab-1k" and spec.datasets == ("dtd",) and spec.seeds == 3
    again = cli_spec(spec.arguments()[1:])
    assert again.suite == spec.suite and again.datasets == spec.datasets and again.settings == spec.settings
    assert cli_spec(["-s", "frozen"]).suite is None
    with pytest.raises(UsageError, match="suite must be a name"):
        RunSpec(suite="")


def test_vtab_1k_plans_one_trial_per_task_with_its_split_protocol_and_plain_labels():
    from tlbench.grid import resolve_names
    from tlbench.plan import build_trials
    from tlbench.suites import suite_trials

    plugins = Plugins(load_third_party=False)
    spec = RunSpec(strategies=["frozen"], backbones=["efficientnet_lite0"], suite="vtab-1k", seeds=2)
    names = resolve_names(plugins, spec)
    trials = suite_trials(names.suite, names.tasks, backbones=names.backbones, strategies=names.strategies,
                          seeds=spec.seed_range, overrides=spec.settings)
    assert len(trials) == 9 * 2 and {t.label for t in trials} == {"frozen"}
    by_task = {t.suite["task"]: t for t in trials if t.seed == 0}
    assert by_task["cifar100"].data_options["train_size"] == 800 and by_task["cifar100"].data_options["test_size"] == 0
    assert by_task["eurosat"].data_options["test_size"] == 5400 and by_task["sun397"].data_options["val_size"] == 200
    assert all(t.data_options["image_size"] is None for t in trials)
    assert by_task["clevr-count"].suite == {"name": "vtab-1k", "task": "clevr-count", "group": "structured"}
    plain = RunSpec(strategies=["frozen"], backbones=["efficientnet_lite0"], datasets=["cifar100"])
    outside = build_trials(datasets=resolve_names(plugins, plain).datasets, backbones=plain.backbones,
                           strategies=names.strategies, seeds=[0], overrides=dict(VTAB_SETTINGS))
    assert outside[0].data_options == by_task["cifar100"].data_options  # the same trial outside the suite...
    assert outside[0].key != by_task["cifar100"].key  # ...is another record: a suite's trials are its own
    assert "suite" not in outside[0].to_record()


VTAB_SETTINGS = {"data.train_size": 800, "data.val_size": 200, "data.test_size": 0, "data.image_size": None}


def test_a_vary_axis_in_a_suite_gives_every_task_every_value_under_the_suite_protocol():
    from tlbench.grid import build_grid_trials, resolve_names

    plugins = Plugins(load_third_party=False)
    spec = RunSpec(strategies=["frozen", "full"], backbones=["efficientnet_lite0"], suite="vtab-1k",
                   axes={"data.train_size": [100, 800], "full.lr": [1e-4, 1e-3]})
    names = resolve_names(plugins, spec)
    trials = build_grid_trials(spec, names, dict(plugins.strategies.items()))
    # per task: frozen x 2 sizes (full.lr does not apply to it) + full x 2 sizes x 2 rates
    assert len(trials) == 9 * (2 + 4) and len({t.key for t in trials}) == len(trials)
    order = [task.name for task, _ in names.tasks]
    assert [t.suite["task"] for t in trials] == sorted((t.suite["task"] for t in trials), key=order.index)
    cifar = [t for t in trials if t.suite["task"] == "cifar100"]
    assert sorted({t.data_options["train_size"] for t in cifar}) == [100, 800]
    assert all(t.data_options["val_size"] == 200 and t.data_options["test_size"] == 0 for t in cifar)
    # the suite's own value is unsaid in the label; the varied one is said
    assert sorted(t.label for t in cifar) == ["frozen", "frozen[data.train_size=100]", "full",
                                              "full[data.train_size=100,lr=0.001]", "full[data.train_size=100]",
                                              "full[lr=0.001]"]
