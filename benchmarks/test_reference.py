"""Reference check: a plain PyTorch loop written straight from the lesson's two snippets gives the same test
accuracy as the tlbench trial, within seed noise.

Same data (fashion-mnist, tlbench's default splits: 1000 train / 500 val / 2000 test), same backbone
(efficientnet_lite0 = timm tf_efficientnet_lite0 with the packaged ImageNet weights, new ``nn.Linear`` head), its own
preprocessing at the same input size (64 px) as per-sample torchvision transforms on PIL images (the lesson's
``weights.transforms()``), same epochs, batch size and seed. Where tlbench's protocol differs from a bare loop the
reference matches it, written independently here: linear warm-up over the first epoch then cosine per step
(``LambdaLR``), weight decay 0.01 except on norm/bias parameters, the strategy's BatchNorm policy, validation after
every epoch and the test split scored once at the best validation epoch.

Asserted: |test accuracy difference| <= 3 points. Run: ``python -m pytest benchmarks/test_reference.py
--benchmark-only -s`` (a few minutes on a CPU).
"""
from __future__ import annotations

import time

from conftest import check_goal

SEED = 0
IMAGE_SIZE = 64
GOAL_DELTA = 0.0  # the same test accuracy as the lesson's loop...
TOLERANCE = 0.03  # ...within 3 points (2000 test images; same seed, so only numerics and batching differ)
FROZEN_EPOCHS = 3
DISCRIMINATIVE_EPOCHS = 3


def _lesson_data(fmnist, model, lesson):
    """The three splits through the backbone's per-sample PIL preprocessing (deterministic, so applying it once
    is the same as applying it in every epoch's DataLoader)."""
    transform = lesson.transforms(model, IMAGE_SIZE)
    return [(lesson.apply_per_sample(getattr(fmnist, f"{split}_images"), transform), getattr(fmnist, f"{split}_labels"))
            for split in ("train", "val", "test")]


def _run_harness(trial, run_trial):
    return run_trial(trial)


def _compare(benchmark, report, name, record, reference, seconds):
    metrics = record["metrics"]
    delta = metrics["test_top1"] - reference["test_top1"]
    benchmark.extra_info["seconds"] = seconds
    report(benchmark, "accuracy", {"tlbench_test": metrics["test_top1"], "reference_test": reference["test_top1"],
                                   "tlbench_val": metrics["val_top1"], "reference_val": reference["val_top1"],
                                   "tlbench_best_epoch": metrics["best_epoch"],
                                   "reference_best_epoch": reference["best_epoch"],
                                   "tlbench_val_history": [h["val_top1"] for h in metrics["history"]],
                                   "reference_val_history": reference["val_history"]},
           f"[reference {name}] test top-1: tlbench {100 * metrics['test_top1']:.2f}% vs lesson loop "
           f"{100 * reference['test_top1']:.2f}% (delta {100 * delta:+.2f} points, tolerance "
           f"{100 * TOLERANCE:.0f}); val {100 * metrics['val_top1']:.2f}% vs {100 * reference['val_top1']:.2f}%; best "
           f"epoch {metrics['best_epoch']} vs {reference['best_epoch']}; val per epoch "
           f"{[round(100 * h['val_top1'], 1) for h in metrics['history']]} vs "
           f"{[round(100 * v, 1) for v in reference['val_history']]}")
    report(benchmark, "seconds_detail", seconds,
           f"[reference {name}] wall: tlbench trial {seconds['tlbench']:.1f} s, lesson loop "
           f"{seconds['reference']:.1f} s")
    benchmark.extra_info["delta"] = delta
    check_goal(benchmark, f"reference {name}", abs(delta), at_most=GOAL_DELTA, tolerance=TOLERANCE)


def test_reference_frozen(benchmark, make_trials, run_trial, fmnist, lesson, report):
    """(a) Frozen: ``requires_grad = False`` on the backbone, a new head, AdamW(lr=1e-3) on what trains.

    The lesson's snippet leaves BatchNorm in train mode unless ``.eval()`` is called (its running statistics
    would then drift towards Fashion-MNIST's); tlbench's "frozen" freezes BatchNorm statistics too, so the
    reference runs the backbone in eval mode (``model.eval()`` for the whole model: the head is a Linear layer).
    tlbench trains the head on cached features; the reference runs the backbone forward on every batch."""
    (trial,) = make_trials("fashion-mnist", "frozen", epochs=FROZEN_EPOCHS)
    assert trial.hparams["head_lr"] == 1e-3, "the strategy's default is no longer the lesson's learning rate"
    num_classes = len(fmnist.classes)

    def measure():
        record, harness_seconds = _run_harness(trial, run_trial)
        start = time.perf_counter()
        # --- the lesson's first snippet (efficientnet_lite0 for resnet50; its head is `classifier`) ---
        model = lesson.build_model(num_classes, SEED, freeze_backbone=True)  # requires_grad=False, then new head
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert {n for n, _ in trainable} == {"classifier.weight", "classifier.bias"}
        groups = lesson.adamw_groups(trainable, lr=1e-3)  # AdamW(trainable, lr=1e-3); no decay on the bias
        train, val, test = _lesson_data(fmnist, model, lesson)
        reference = lesson.plain_fit(model, groups, train, val, test, epochs=trial.protocol["epochs"],
                                     batch_size=trial.protocol["batch_size"], seed=SEED,
                                     train_mode=lambda m: m.eval())  # backbone in eval mode: BN statistics fixed
        return record, reference, {"tlbench": harness_seconds, "reference": time.perf_counter() - start}

    record, reference, seconds = benchmark.pedantic(measure, rounds=1, iterations=1)
    assert record["metrics"]["feature_cache"], "the frozen trial was expected to use cached features"
    _compare(benchmark, report, "frozen", record, reference, seconds)


def test_reference_discriminative_lr(benchmark, make_trials, run_trial, fmnist, lesson, report):
    """(b) Full fine-tune with discriminative learning rates: everything trains, AdamW([{backbone, lr 1e-5},
    {head, lr 1e-3}]); BatchNorm follows the strategy's policy (discriminative-lr defaults to "frozen": running
    statistics fixed, affine parameters trained)."""
    (trial,) = make_trials("fashion-mnist", "discriminative-lr", epochs=DISCRIMINATIVE_EPOCHS)
    hparams = trial.hparams
    assert (hparams["backbone_lr"], hparams["head_lr"], hparams["stage_decay"]) == (1e-5, 1e-3, False), \
        "the strategy's defaults are no longer the lesson's"
    assert hparams["batchnorm"] in ("frozen", "train"), "the reference implements the frozen and train BN policies"
    num_classes = len(fmnist.classes)

    def train_mode(model):
        model.train()
        if hparams["batchnorm"] == "frozen":
            lesson.set_bn_eval(model)

    def measure():
        record, harness_seconds = _run_harness(trial, run_trial)
        start = time.perf_counter()
        model = lesson.build_model(num_classes, SEED)
        # --- the lesson's second snippet ---
        for p in model.parameters():
            p.requires_grad = True
        backbone_params = [(n, p) for n, p in model.named_parameters() if not n.startswith("classifier.")]
        head_params = [(n, p) for n, p in model.named_parameters() if n.startswith("classifier.")]
        groups = (lesson.adamw_groups(backbone_params, lr=hparams["backbone_lr"])
                  + lesson.adamw_groups(head_params, lr=hparams["head_lr"]))
        train, val, test = _lesson_data(fmnist, model, lesson)
        reference = lesson.plain_fit(model, groups, train, val, test, epochs=trial.protocol["epochs"],
                                     batch_size=trial.protocol["batch_size"], seed=SEED, train_mode=train_mode)
        return record, reference, {"tlbench": harness_seconds, "reference": time.perf_counter() - start}

    record, reference, seconds = benchmark.pedantic(measure, rounds=1, iterations=1)
    assert not record["metrics"]["feature_cache"]
    _compare(benchmark, report, "discriminative-lr", record, reference, seconds)
