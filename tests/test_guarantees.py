"""The guarantees the published numbers rest on, tested as behaviour through public entry points (the `tlbench run`
command, records on disk, plugin objects registered like any plugin's), so that they survive refactors of the
trainer and the runner:

* selection on validation: the best epoch is the best on the VAL split (the earliest of tied epochs), its weights are
  restored before the test pass, and the test split is scored once, after training;
* `batchnorm=recalibrate` re-estimates BatchNorm statistics on training images before every evaluation;
* no image is shared between train, val and test, for every built-in dataset that can run offline;
* the peak-memory figure measures the trial.

The selection tests use a *scripted* backbone: images carry their split, label and index as pixel values, and the
model's answers are scripted per epoch (validation and test scores chosen so that each way of getting selection
wrong gives a different test score). The epoch is counted in a buffer of the model, so restoring the best epoch's
weights restores the best epoch's behaviour.
"""
from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import tlbench.cli
from tlbench import Backbone, ImageSplits, Preprocessing
from tlbench.cli import cli
from tlbench.registry import Plugins

NUM_CLASSES = 4
SPLIT_SIZE = 8
MARK = {"train": 1, "val": 2, "test": 3}  # channel 0 of every image of a split
VAL_SCRIPT = (0.25, 0.75, 0.5, 0.75, 0.5)  # validation top-1 after each epoch: epochs 2 and 4 tie for best
TEST_SCRIPT = (1.0, 0.5, 0.0, 0.25, 0.75)  # test top-1 the model would get with each epoch's weights
EPOCHS = len(VAL_SCRIPT)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process trials on one thread: on a busy 2-core machine two OpenMP threads can make a tiny trial 10x
    slower (measured: 4 s -> 40 s for the real-backbone trial below)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------- test-only plugin objects
class MarkedData:
    """A DatasetFamily whose images are solid colours encoding (split mark, label, index): channel 0 is the split,
    channel 1 the label, channel 2 the image's index in its split. Survives any resize (the image is constant)."""

    name = "marked"
    description = "test only: images that say which split they are from"
    takes_argument = False
    defaults = {"train_size": SPLIT_SIZE, "val_size": SPLIT_SIZE, "test_size": SPLIT_SIZE, "split_seed": 0,
                "storage_size": 8, "augment": "none", "image_size": 8}

    def fingerprint(self, argument, options):
        return json.dumps({**self.defaults, **options}, sort_keys=True)

    def load(self, argument, options):
        parts = []
        for split in ("train", "val", "test"):
            count = options.get(f"{split}_size", SPLIT_SIZE)
            labels = torch.arange(count) % NUM_CLASSES
            codes = torch.stack([torch.full((count,), MARK[split]), labels, torch.arange(count)], dim=1)
            parts += [codes[:, :, None, None].expand(count, 3, 8, 8).to(torch.uint8).contiguous(), labels.long()]
        return ImageSplits(*parts, [f"c{k}" for k in range(NUM_CLASSES)], {"dataset": self.name})


class Reader(nn.Module):
    """Pre-logits: a marked image -> its three codes (split mark, label, index). Logs every image it sees."""

    def __init__(self, events: list):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # something for a full fine-tune to hold; never moves
        self.events = events

    def forward(self, x):
        codes = (x.float().mean(dim=(2, 3)) * 255).round()
        self.events.append(("body", codes[:, 0].int().tolist(), codes[:, 2].int().tolist()))
        return codes + 0 * self.anchor


class ScriptedHead(nn.Module):
    """Answers as scripted for the current epoch. The epoch is a buffer that counts training bursts (a training
    forward after an evaluation starts a new epoch), so it is part of the weights: restoring the best epoch's state
    restores the best epoch's answers. Validation image i is answered right iff i < VAL_SCRIPT[epoch] * n; the
    same for test with TEST_SCRIPT. Logs every batch it sees, with the epoch."""

    def __init__(self, events: list):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("in_training", torch.zeros((), dtype=torch.long))
        self.events = events

    def forward(self, codes):
        marks, labels, index = codes.detach().round().long().unbind(dim=1)
        if self.training:
            if not self.in_training:
                self.epoch += 1
                self.in_training.fill_(1)
            answers = labels
            self.events.append(("train", int(self.epoch), marks.tolist(), index.tolist()))
        else:
            self.in_training.fill_(0)
            epoch = min(max(int(self.epoch), 1), EPOCHS) - 1
            answers = labels.clone()
            for split, script in (("val", VAL_SCRIPT), ("test", TEST_SCRIPT)):
                wrong = (marks == MARK[split]) & (index >= round(script[epoch] * SPLIT_SIZE))
                answers[wrong] = (labels[wrong] + 1) % NUM_CLASSES
            self.events.append(("eval", int(self.epoch), marks.tolist(), index.tolist()))
        return 8.0 * nn.functional.one_hot(answers, NUM_CLASSES).float() + 0 * self.weight


class ScriptedBackbones:
    """A BackboneFamily building the scripted model; keeps every model it built (the last one is the trial's)."""

    name = "scripted"
    description = "test only: answers scripted per epoch"
    takes_argument = False

    def __init__(self, balloon_mib: int = 0):
        self.built: list[SimpleNamespace] = []
        self.balloon_mib = balloon_mib

    def build(self, argument, num_classes, pretrained):
        if self.balloon_mib:  # touched and freed while the trial is measured: the trial's peak must show it
            balloon = torch.ones(self.balloon_mib * 2 ** 18)
            del balloon
        events: list = []
        model = nn.Sequential(OrderedDict(body=Reader(events), head=ScriptedHead(events)))
        self.built.append(SimpleNamespace(model=model, events=events))
        return Backbone(name="scripted", model=model, groups=[("stem", ["body.anchor"]), ("head", ["head.weight"])],
                        preprocessing=Preprocessing(8, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0, "test"),
                        pre_logits=model.body, head=model.head, pretrained=pretrained, weights={"source": "test"})


def plugins_with(*objects) -> Plugins:
    """The built-in plugins plus test-only families, registered the way a plugin's hook registers them."""
    plugins = Plugins(load_third_party=False)
    for obj in objects:
        registry = plugins.datasets if hasattr(obj, "load") else plugins.backbones
        registry.current_plugin = "test_guarantees"
        registry.register(obj)
    return plugins


def run_cli(monkeypatch, plugins: Plugins, *args) -> SimpleNamespace:
    monkeypatch.setattr(tlbench.cli, "_plugins", lambda: plugins)
    result = CliRunner().invoke(cli, ["run", "-q", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def records_in(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]


# ------------------------------------------------------------------------------------- 1. selection on validation
def test_the_script_tells_every_selection_bug_apart():
    """The test below can fail: each wrong selection gives a different test score than the right one."""
    best = VAL_SCRIPT.index(max(VAL_SCRIPT))  # earliest best on validation
    latest = len(VAL_SCRIPT) - 1 - VAL_SCRIPT[::-1].index(max(VAL_SCRIPT))
    right = TEST_SCRIPT[best]
    assert best != latest, "the script must contain a tie for the best validation epoch"
    for wrong in (TEST_SCRIPT[latest], TEST_SCRIPT[-1], max(TEST_SCRIPT)):  # ties to latest, no restore, on test
        assert wrong != right
    assert VAL_SCRIPT != TEST_SCRIPT


@pytest.mark.parametrize("strategy, extra, feature_cache", [
    ("full", [], False),
    ("scratch", [], False),
    ("frozen", [], True),  # the head trains on cached features
    ("frozen", ["--set", "feature_cache=false"], False),
])
def test_best_epoch_is_chosen_on_validation_restored_and_test_scored_once(tmp_path, monkeypatch, strategy, extra,
                                                                          feature_cache):
    backbones = ScriptedBackbones()
    results = tmp_path / "results"
    run_cli(monkeypatch, plugins_with(backbones, MarkedData()), "-s", strategy, "-b", "scripted", "-d", "marked",
            "--epochs", EPOCHS, "--set", "batch_size=4", "--results-dir", results, *extra)
    (record,) = records_in(results)
    m = record["metrics"]
    assert record["status"] == "ok" and m["feature_cache"] is feature_cache
    best = VAL_SCRIPT.index(max(VAL_SCRIPT)) + 1

    # selection on validation: the history is the validation split's, and the best epoch the earliest best on it
    assert [h["val_top1"] for h in m["history"]] == list(VAL_SCRIPT), "each epoch scored on the validation split"
    assert m["best_epoch"] == best, "the best validation epoch, the earliest of tied ones"
    assert m["val_top1"] == VAL_SCRIPT[best - 1]
    # the best epoch's weights are restored before the test pass: the test score is that epoch's
    assert m["test_top1"] == TEST_SCRIPT[best - 1], (m["test_top1"], "last epoch" if m["test_top1"] == TEST_SCRIPT[-1]
                                                      else "another epoch's weights")

    # the test split is scored once, after training: every test image reaches the head exactly once, after the
    # last epoch's validation pass, and no training step follows
    events = backbones.built[-1].events
    head = [e for e in events if e[0] in ("train", "eval")]
    test_seen = [(position, i) for position, (kind, epoch, marks, index) in enumerate(head) if kind == "eval"
                 for mark, i in zip(marks, index) if mark == MARK["test"]]
    assert sorted(i for _, i in test_seen) == list(range(SPLIT_SIZE)), "each test image scored exactly once"
    first_test = min(position for position, _ in test_seen)
    assert not any(kind == "train" for kind, *_ in head[first_test:]), "no training after the test pass"
    epochs_before = sum(1 for before, now in zip([("eval",)] + head, head) if now[0] == "train" and before[0] == "eval")
    assert epochs_before == EPOCHS, "the test pass comes after every epoch's training"
    val_passes = sum(1 for before, now in zip([("train",)] + head[:first_test], head[:first_test])
                     if now[0] == "eval" and before[0] == "train")
    assert val_passes == EPOCHS, "one validation pass per epoch, all before the test pass"
    # ...and through the backbone exactly once too (the feature cache's one pass, or the test pass)
    body_test = [i for kind, marks, index in (e for e in events if e[0] == "body")
                 for mark, i in zip(marks, index) if mark == MARK["test"]]
    assert sorted(body_test) == list(range(SPLIT_SIZE))


def test_best_epoch_across_phases_skips_unselectable_phases(tmp_path, monkeypatch):
    """lp-ft: 2 probe epochs (head only, on cached features, not selectable) then 3 fine-tuning epochs. Epoch 2
    (probe) ties epoch 4 (fine-tune) for the best validation score: the probe's epoch may not be chosen."""
    backbones = ScriptedBackbones()
    results = tmp_path / "results"
    run_cli(monkeypatch, plugins_with(backbones, MarkedData()), "-s", "lp-ft", "-b", "scripted", "-d", "marked",
            "--epochs", 3, "--set", "lp-ft.probe_epochs=2", "--set", "batch_size=4", "--results-dir", results)
    (record,) = records_in(results)
    m = record["metrics"]
    assert [h["val_top1"] for h in m["history"]] == list(VAL_SCRIPT)
    assert [h["phase"] for h in m["history"]] == ["probe"] * 2 + ["fine-tune"] * 3
    assert [p["feature_cache"] for p in record["plan"]["phases"]] == [True, False]
    assert m["best_epoch"] == 4 and m["test_top1"] == TEST_SCRIPT[3], "the best selectable epoch, restored"
    head = [e for e in backbones.built[-1].events if e[0] in ("train", "eval")]
    test_seen = [i for kind, _, marks, index in head if kind == "eval" for mark, i in zip(marks, index)
                 if mark == MARK["test"]]
    assert sorted(test_seen) == list(range(SPLIT_SIZE)), "the test split is scored once"


# ----------------------------------------------------------------------------------- 2. batchnorm=recalibrate
class BatchNormProbe(nn.Module):
    """BatchNorm straight on the preprocessed image, so its recalibrated statistics are known: the per-channel
    statistics of the training images. Records the running statistics at every evaluation forward."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, num_classes)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def features(self, x):
        if not self.bn.training:
            self.seen.append((self.bn.running_mean.clone(), self.bn.running_var.clone()))
        return self.bn(x).mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


class ProbeBackbones:
    name = "bn-probe"
    description = "test only: BatchNorm on the input"
    takes_argument = False

    def __init__(self):
        self.built: list[BatchNormProbe] = []

    def build(self, argument, num_classes, pretrained):
        model = BatchNormProbe(num_classes)
        self.built.append(model)
        return Backbone(name="bn-probe", model=model, groups=[("stem", ["bn.weight", "bn.bias"]),
                                                              ("head", ["fc.weight", "fc.bias"])],
                        preprocessing=Preprocessing(32, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0, "test"),
                        pre_logits=model.features, head=model.fc, pretrained=pretrained, weights={})


def recalibrated_statistics(images: torch.Tensor, count: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What re-estimating on the first ``count`` training images gives: the plain average over equal batches of the
    batch mean and unbiased variance."""
    batches = (images[:count].float() / 255).split(batch_size)
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    variances = torch.stack([b.transpose(0, 1).reshape(3, -1).var(dim=1) for b in batches]).mean(0)
    return means, variances


@pytest.mark.parametrize("policy", ["recalibrate", "train"])  # "train": the control, showing the test can fail
def test_recalibrate_reestimates_batchnorm_statistics_before_every_evaluation(tmp_path, monkeypatch, policy):
    from tlbench.plugins.synthetic import Synthetic

    backbones = ProbeBackbones()
    results = tmp_path / "results"
    run_cli(monkeypatch, plugins_with(backbones), "-s", "full", "-b", "bn-probe", "-d", "synthetic", "--epochs", 3,
            "--set", "batch_size=8", "--set", "recalibrate_images=16", "--set", f"full.batchnorm={policy}",
            "--set", "full.lr=0.01", "--set", "data.train_size=32", "--results-dir", results)
    (record,) = records_in(results)
    assert record["status"] == "ok" and record["plan"]["batchnorm"] == policy
    model = backbones.built[-1]
    train_images = Synthetic().load(None, {"train_size": 32}).train_images
    mean, var = recalibrated_statistics(train_images, 16, 8)
    assert len(model.seen) >= 3 + 1, "every validation pass and the test pass"
    matches = [torch.allclose(m, mean, atol=1e-5) and torch.allclose(v, var, atol=1e-5) for m, v in model.seen]
    if policy == "recalibrate":
        assert all(matches), "statistics re-estimated on the training images before every evaluation"
        assert model.bn.momentum == 0.1, "the layer's momentum is restored after recalibrating"
    else:
        assert not any(matches), "with 'train' the statistics are a running average over training batches"


def test_recalibrate_uses_exactly_recalibrate_images(tmp_path, monkeypatch):
    from tlbench.plugins.synthetic import Synthetic

    backbones = ProbeBackbones()
    run_cli(monkeypatch, plugins_with(backbones), "-s", "full", "-b", "bn-probe", "-d", "synthetic", "--epochs", 1,
            "--set", "batch_size=8", "--set", "recalibrate_images=12", "--set", "full.batchnorm=recalibrate",
            "--set", "data.train_size=32", "--results-dir", tmp_path / "results")
    images = Synthetic().load(None, {"train_size": 32}).train_images[:12].float() / 255
    assert torch.allclose(backbones.built[-1].seen[0][0], images.mean(dim=(0, 2, 3)), atol=1e-5)


def test_recalibrate_runs_and_learns_on_a_real_backbone(tmp_path, tiny_backbone, fast_settings):
    result = CliRunner().invoke(cli, ["run", "-q", "-s", "full", "-b", tiny_backbone, "-d", "synthetic",
                                      "--set", "full.batchnorm=recalibrate", "--set", "recalibrate_images=64",
                                      "--results-dir", str(tmp_path / "r"), *fast_settings])
    assert result.exit_code == 0, result.output
    (record,) = records_in(tmp_path / "r")
    assert record["status"] == "ok" and record["plan"]["batchnorm"] == "recalibrate"
    assert record["metrics"]["test_top1"] > 0.4, "4 balanced classes: chance is 0.25"


# ------------------------------------------------------------------------------------------- 3. disjoint splits
def image_hashes(images: torch.Tensor) -> list[str]:
    return [hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest() for image in images]


def assert_disjoint(splits: ImageSplits) -> None:
    hashes = {split: image_hashes(getattr(splits, f"{split}_images")) for split in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = set(hashes[a]) & set(hashes[b])
        assert not shared, f"{len(shared)} image(s) in both {a} and {b}"


def unique_png(path: Path, number: int, size: int = 12) -> None:
    """An image whose content no other image of the test shares (its colour encodes ``number``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (number % 251, number // 251 % 251, 90)).save(path, format="PNG")


def place_imagefolder(root: Path) -> tuple[str, dict]:
    for number in range(60):
        unique_png(root / "pets" / f"class{number % 3}" / f"{number}.png", number)
    return str(root / "pets"), {"storage_size": 8}


def place_eurosat(root: Path) -> tuple[None, dict]:
    for number in range(30):
        unique_png(root / "eurosat" / "2750" / ["AnnualCrop", "Forest", "River"][number % 3] / f"{number}.jpg", number)
    return None, {"val_size": 6, "test_size": 6}


def place_pets(root: Path) -> tuple[None, dict]:
    """What torchvision's OxfordIIITPet reads: images/<Breed>_<n>.jpg and annotations/{trainval,test}.txt."""
    base = root / "oxford-iiit-pet"
    lines = {"trainval": [], "test": []}
    for number in range(36):
        breed, label = [("Abyssinian", 1), ("beagle", 2)][number % 2]
        unique_png(base / "images" / f"{breed}_{number}.jpg", number)
        lines["test" if number >= 24 else "trainval"].append(f"{breed}_{number} {label} {label} 1")
    (base / "annotations").mkdir(parents=True)
    for split, entries in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(entries) + "\n")
    return None, {"val_size": 4, "storage_size": 8}


def place_dtd(root: Path) -> tuple[None, dict]:
    """What torchvision's DTD reads: dtd/dtd/images/<class>/<file> and dtd/dtd/labels/{train,val,test}1.txt."""
    data = root / "dtd" / "dtd"
    lines = {"train": [], "val": [], "test": []}
    for number in range(36):
        texture = ["banded", "dotted"][number % 2]
        unique_png(data / "images" / texture / f"{texture}_{number}.jpg", number)
        lines[["train", "train", "val", "test"][number // 2 % 4]].append(f"{texture}/{texture}_{number}.jpg")
    (data / "labels").mkdir(parents=True)
    for split, entries in lines.items():
        (data / "labels" / f"{split}1.txt").write_text("\n".join(entries) + "\n")
    return None, {"storage_size": 8}


def place_caltech101(root: Path) -> tuple[None, dict]:
    """What torchvision's Caltech101 reads: caltech101/101_ObjectCategories/<class>/image_<n>.jpg."""
    for number in range(36):
        name = ["BACKGROUND_Google", "accordion", "anchor"][number % 3]
        unique_png(root / "caltech101" / "101_ObjectCategories" / name / f"image_{number // 3 + 1:04d}.jpg", number)
    return None, {"val_size": 4, "test_size": 6, "storage_size": 8}


def place_sun397(root: Path) -> tuple[None, dict]:
    """What torchvision's SUN397 reads: SUN397/ClassName.txt and SUN397/<letter>/<class>/sun_*.jpg."""
    for number in range(30):
        unique_png(root / "SUN397" / ["a/abbey", "b/beach"][number % 2] / f"sun_{number}.jpg", number)
    (root / "SUN397" / "ClassName.txt").write_text("/a/abbey\n/b/beach\n")
    return None, {"train_size": 16, "val_size": 4, "test_size": 6, "storage_size": 8}


def place_clevr(root: Path) -> tuple[None, dict]:
    """What torchvision's CLEVRClassification reads: clevr/CLEVR_v1.0/images/<split>/ and scenes/ JSON files."""
    data = root / "clevr" / "CLEVR_v1.0"
    for split, numbers in (("train", range(24)), ("val", range(24, 36))):
        scenes = []
        for number in numbers:
            unique_png(data / "images" / split / f"CLEVR_{split}_{number:06d}.png", number)
            scenes.append({"image_filename": f"CLEVR_{split}_{number:06d}.png", "objects": [{}] * (3 + number % 2)})
        (data / "scenes").mkdir(parents=True, exist_ok=True)
        (data / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps({"scenes": scenes}))
    return None, {"train_size": 16, "val_size": 4, "test_size": 0, "storage_size": 8}


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
OFFLINE = {  # dataset -> how the test gets its files (None: built in or generated)
    "fashion-mnist": None, "synthetic": None, "imagefolder": place_imagefolder, "eurosat": place_eurosat,
    "oxford-pets": place_pets, "dtd": place_dtd, "digits": None, "caltech101": place_caltech101,
    "sun397": place_sun397, "clevr-count": place_clevr,
}
NOT_OFFLINE = {  # torchvision verifies these files' md5 sums, so a test cannot place stand-ins
    "cifar10": "CIFAR10 checks the md5 of every batch file",
    "cifar100": "CIFAR100 checks the md5 of its train, test and meta files (tests/test_suites.py patches the check)",
    "svhn": "SVHN checks the md5 of its .mat files (tests/test_suites.py patches the check)",
    "flowers102": "Flowers102 checks the md5 of imagelabels.mat and setid.mat",
}


def test_every_builtin_dataset_is_checked_for_disjoint_splits_or_says_why_not():
    assert set(Plugins(load_third_party=False).datasets.names()) == set(OFFLINE) | set(NOT_OFFLINE)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_no_image_is_shared_between_train_val_and_test(name, tmp_path, monkeypatch, no_network):
    if name == "fashion-mnist" and not FASHION_MNIST.exists():
        pytest.skip("apt-get install dataset-fashion-mnist")
    if name == "digits":
        pytest.importorskip("sklearn", reason="pip install 'tlbench[digits]'")
    monkeypatch.setenv("TLBENCH_DATA_DIR", str(tmp_path / "data"))
    argument, options = (OFFLINE[name] or (lambda root: (None, {})))(tmp_path / "data")
    family = Plugins(load_third_party=False).datasets.get(name)
    splits = family.load(argument, {**family.defaults, **options})
    assert min(splits.sizes.values()) > 0
    assert_disjoint(splits)


@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_whole_official_sets_share_no_image(no_network):
    """All 70,000 images: the official train set (split into train and val) and test set have no image in common,
    so no split seed or size can put one image in two splits. (Checked: no exact duplicate at all, by sha256.)"""
    family = Plugins(load_third_party=False).datasets.get("fashion-mnist")
    splits = family.load(None, {**family.defaults, "train_size": 50000, "val_size": 10000, "test_size": 0,
                                "storage_size": None})
    assert splits.sizes == {"train": 50000, "val": 10000, "test": 10000}
    assert_disjoint(splits)


# ----------------------------------------------------------------------------------------------- 4. peak memory
def test_peak_memory_measures_what_the_trial_allocates(tmp_path, monkeypatch):
    """A trial that touches 256 MiB more than another reports a peak at least ~200 MiB higher (CPU: VmHWM)."""
    peaks = {}
    for balloon in (0, 256):
        results = tmp_path / f"r{balloon}"
        run_cli(monkeypatch, plugins_with(ScriptedBackbones(balloon_mib=balloon), MarkedData()), "-s", "frozen",
                "-b", "scripted", "-d", "marked", "--epochs", 1, "--set", "batch_size=4", "--results-dir", results)
        (record,) = records_in(results)
        memory = record["metrics"]["peak_memory"]
        if not str(memory.get("how")).startswith("VmHWM after clear_refs"):
            pytest.skip(f"peak RSS cannot be reset here ({memory.get('how')}): only a lower bound is recorded")
        assert record["metrics"]["peak_memory_mib"] == memory["peak_mib"]
        peaks[balloon] = memory["peak_mib"]
    assert peaks[256] - peaks[0] >= 200, peaks
    assert peaks[0] < 200, peaks
