"""What a strategy does to a batch (issue 23): the step's context, batch transforms with soft targets, a task-loss
override, step and epoch callbacks, the reference model, per-parameter learning-rate scales, the caches kept
honest, and the strategies written with it (delta, bss, mixup, swa, llrd per block)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import synthetic_grid
from torch import nn

from tlbench import Callback, StepContext, Strategy, TrainPlan
from tlbench.freeze import apply_phase, parameter_blocks
from tlbench.plugins.bss import SpectralShrinkage
from tlbench.plugins.llrd import BlockDecay
from tlbench.plugins.mixup import MixBatch
from tlbench.plugins.swa import WeightAverage
from tlbench.registry import Plugins
from tlbench.types import Phase, TrainingContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SETTINGS = ["epochs=2", "data.train_size=64", "data.val_size=32", "data.test_size=32", "batch_size=16"]


def grid(results: Path, backbone: str, strategies, settings=(), plugins=None):
    return synthetic_grid(results, backbone, strategies, [*SETTINGS, *settings], plugins)


def with_strategies(*strategies):
    plugins = Plugins(load_third_party=False)
    plugins.strategies.current_plugin = "test_batch_contract"
    for strategy in strategies:
        plugins.strategies.register(strategy)
    return plugins


class Spy(Strategy):
    """Full fine-tuning that records what every step saw, with a callback and an optional head-only plan."""

    name = "spy"
    defaults = {"lr": 0.01, "head_only": False, "transform": False}
    seen: list = []
    events: list = []
    head_out: list = []

    def plan(self, group_names, hparams):
        def step_loss(step: StepContext) -> torch.Tensor:
            Spy.seen.append(step)
            Spy.head_out.append(step.training.model.get_classifier()(step.features).detach())
            return torch.zeros((), device=step.logits.device)

        class Events(Callback):
            def on_step_end(self, ctx, optimizer):
                Spy.events.append(("step", ctx.step, ctx.model.training, type(optimizer).__name__))

            def on_epoch_end(self, ctx, epoch):
                Spy.events.append(("epoch", epoch))

        rates = {"head": hparams["lr"]} if hparams["head_only"] else {g: hparams["lr"] for g in group_names}
        transform = (lambda x, y, g: (x, y)) if hparams["transform"] else None
        return TrainPlan(rates, "frozen", step_loss=step_loss, callbacks=(Events(),), batch_transform=transform,
                         feature_layers=["group:stage1"], reference_layers=["group:stage1"])


def test_the_context_holds_exactly_the_steps_tensors(tmp_path, tiny_backbone):
    Spy.seen.clear(), Spy.events.clear(), Spy.head_out.clear()
    records = grid(tmp_path, tiny_backbone, ["spy"], plugins=with_strategies(Spy))
    assert len(Spy.seen) == 2 * 4  # 64 images / 16 per batch, 2 epochs
    step = Spy.seen[0]
    assert step.inputs.shape[0] == 16 and step.targets.shape == (16,) and step.logits.shape[0] == 16
    model = step.training.model
    assert step.logits.requires_grad and step.intermediate["group:stage1"].requires_grad
    assert not step.reference["group:stage1"].requires_grad
    # the head's input is the pooled features: the head maps them to exactly these logits
    assert model.get_classifier() is not None
    torch.testing.assert_close(Spy.head_out[0], step.logits.detach(), rtol=0, atol=0)
    # the reference is the starting model: on the first step (before any update) its maps equal the model's
    torch.testing.assert_close(step.reference["group:stage1"], step.intermediate["group:stage1"].detach())
    later = Spy.seen[-1]
    assert not torch.equal(later.reference["group:stage1"], later.intermediate["group:stage1"].detach())
    assert [e for e in Spy.events if e[0] == "epoch"] == [("epoch", 1), ("epoch", 2)]
    assert [e[1] for e in Spy.events if e[0] == "step"] == list(range(1, 9))
    assert all(e[3] == "AdamW" for e in Spy.events if e[0] == "step")
    record = records["spy"]
    assert record.plan["step"]["feature_layers"] == ["group:stage1"]
    assert record.plan["phases"][0]["batch_parts"] == ["step_loss", "callbacks", "feature_layers",
                                                       "reference_layers"]


def test_no_cache_is_used_when_a_batch_part_is_present(tmp_path, tiny_backbone):
    Spy.seen.clear()
    records = grid(tmp_path, tiny_backbone, ["spy", "frozen"], settings=["spy.head_only=true", "spy.transform=true"],
                   plugins=with_strategies(Spy))
    assert records["frozen"].plan["phases"][0]["feature_cache"] is True  # the same phase without batch parts
    phase = records["spy"].plan["phases"][0]
    assert phase["feature_cache"] is False and phase["shared_from"] is None
    assert "act on the batch" in phase["prefix_cache"]["reason"]
    assert Spy.seen[0].inputs.dim() == 4  # images, not cached features
    assert Spy.seen[0].targets.shape == (16, len(records["spy"].data["classes"]))  # one-hot for a transform


def test_the_reference_model_costs_nothing_when_not_asked_for(tmp_path, tiny_backbone, monkeypatch):
    import copy
    copies = []
    real = copy.deepcopy
    def counting(obj, *args):
        if type(obj).__name__ == "EfficientNet":  # a whole model (the timing warm-up copies one per phase too)
            copies.append(obj)
        return real(obj, *args)
    monkeypatch.setattr(copy, "deepcopy", counting)
    grid(tmp_path, tiny_backbone, ["bss"], settings=["bss.lr=0.01"])
    without = len(copies)
    grid(tmp_path / "d", tiny_backbone, ["delta"], settings=["delta.lr=0.01"])
    assert len(copies) - without == without + 1  # the same copies as bss, plus the one reference model


def test_soft_target_cross_entropy_equals_the_hard_one_on_one_hot_targets():
    logits = torch.randn(8, 5, dtype=torch.float64)
    labels = torch.randint(0, 5, (8,))
    for smoothing in (0.0, 0.1):
        loss = nn.CrossEntropyLoss(label_smoothing=smoothing)
        torch.testing.assert_close(loss(logits, nn.functional.one_hot(labels, 5).double()), loss(logits, labels))


class Focal(Strategy):
    """A task-loss override: the logged loss must be this loss, not cross-entropy."""

    name = "focal"
    defaults = {"lr": 0.01}
    optimised: list = []

    def plan(self, group_names, hparams):
        def focal(logits, targets):
            p = torch.softmax(logits.float(), 1).gather(1, targets[:, None]).squeeze(1)
            loss = (-(1 - p) ** 2 * p.log()).mean()
            Focal.optimised.append(loss.detach())
            return loss
        return TrainPlan({g: hparams["lr"] for g in group_names}, "frozen", task_loss=focal)


def test_the_logged_loss_is_the_optimised_one(tmp_path, tiny_backbone):
    Focal.optimised.clear()
    record = grid(tmp_path, tiny_backbone, ["focal"], plugins=with_strategies(Focal))["focal"]
    history = record.metrics.history
    per_epoch = [torch.stack(Focal.optimised[i * 4:(i + 1) * 4]).mean().item() for i in range(2)]
    assert [h["train_loss"] for h in history] == pytest.approx(per_epoch, rel=1e-6)


def test_mixup_gradient_equals_a_hand_computation():
    torch.manual_seed(0)
    x, labels, classes = torch.randn(6, 3, 4, 4), torch.randint(0, 3, (6,)), 3
    targets = nn.functional.one_hot(labels, classes).float()
    mixed, soft = MixBatch(0.4)(x, targets, torch.Generator().manual_seed(1))
    # the mix is one lam and one permutation: recover them, check the targets follow the images
    lam = soft.max(1).values.min().item() if soft.max(1).values.min() >= 0.5 else None
    weight = torch.randn(classes, 48, requires_grad=True)
    logits = mixed.flatten(1) @ weight.T
    nn.functional.cross_entropy(logits, soft).backward()
    hand = (torch.softmax(logits.detach(), 1) - soft).T @ mixed.flatten(1) / len(x)  # d CE / d W
    torch.testing.assert_close(weight.grad, hand)
    assert torch.allclose(soft.sum(1), torch.ones(6)) and lam is not None
    # and the images are the same convex combination as the targets
    generator = torch.Generator().manual_seed(1)
    again, _ = MixBatch(0.4)(x, targets, generator)
    torch.testing.assert_close(again, mixed)


def test_cutmix_labels_are_the_kept_area():
    x = torch.zeros(4, 1, 10, 10)
    x[1:] = 1.0
    targets = nn.functional.one_hot(torch.tensor([0, 1, 1, 1]), 2).float()
    mixed, soft = MixBatch(1.0, cutmix=True)(x, targets, torch.Generator().manual_seed(3))
    changed = (mixed != x).flatten(1).float().mean(1)
    for i in range(4):  # where the pasted image differs, the share of the label moved equals the pasted area
        if changed[i] > 0:
            assert soft[i, 1 - int(targets[i, 1])].item() == pytest.approx(changed[i].item())


def test_bss_shrinks_the_smallest_singular_values():
    features = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)
    step = StepContext(torch.zeros(1), torch.zeros(1), torch.zeros(1), features, {}, {}, None)
    term = SpectralShrinkage(0.5, 2)(step)
    singular = torch.linalg.svdvals(features.detach())
    assert term.item() == pytest.approx(0.5 * (singular[-2:] ** 2).sum().item())
    term.backward()
    after = torch.linalg.svdvals(features.detach() - 0.1 * features.grad)
    assert (after[-2:] < singular[-2:]).all() and torch.allclose(after[:-2], singular[:-2])


def context_for(model):
    return TrainingContext(model, dict(model.named_parameters()), {}, {}, epochs=4)


def test_swa_and_ema_averages_are_exact():
    model = nn.Linear(2, 1, bias=False)
    swa, ema = WeightAverage("swa", 0.5, 0.9, False), WeightAverage("ema", 0.0, 0.9, False)
    ctx = context_for(model)
    values = [1.0, 2.0, 4.0, 8.0]
    for epoch, value in enumerate(values, 1):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.on_step_end(ctx, None)
        swa.on_epoch_end(ctx, epoch)
    assert swa.averaged.module.weight.flatten().tolist() == [6.0, 6.0]  # epochs 3 and 4: after 0.5 x 4
    expected = 1.0
    for value in values[1:]:
        expected = 0.9 * expected + 0.1 * value
    assert ema.averaged.module.weight[0, 0].item() == pytest.approx(expected, rel=1e-6)


def test_lr_scale_splits_groups_and_keeps_weight_decay():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Linear(2, 2))
    group_of = {n: ("head" if n.startswith("1.") else "body") for n, _ in model.named_parameters()}
    blocks = parameter_blocks(list(group_of), group_of)
    assert blocks == {"0.0.weight": "0.0", "0.0.bias": "0.0", "0.1.weight": "0.1", "0.1.bias": "0.1",
                      "1.weight": "head", "1.bias": "head"}
    applied = apply_phase(model, group_of, ["body", "head"], Phase({"body": 1.0, "head": 1.0}, lr_scale=BlockDecay(0.5)),
                          0.05)
    rates = {g["name"]: (g["lr"], g["lr"] * g["weight_decay"]) for g in applied.optimizer_groups}
    assert rates["body/decay@0.25"] == (0.25, pytest.approx(0.05)) and rates["body/decay@0.5"][0] == 0.5
    assert rates["head/decay"] == (1.0, 0.05) and rates["head/no_decay"] == (1.0, 0.0)


def test_the_new_strategies_train(tmp_path, tiny_backbone):
    records = grid(tmp_path, tiny_backbone, ["delta", "bss", "mixup", "swa", "llrd-block"],
                   settings=["delta.lr=0.01", "bss.lr=0.01", "mixup.lr=0.01", "swa.lr=0.01", "llrd-block.lr=0.03",
                             "swa.batchnorm=train"])
    assert all(r.status == "ok" for r in records.values())
    assert records["swa"].plan["after_training"]["averaged"] == 1  # epoch 2 of 2, start=0.5
    assert records["swa"].plan["after_training"]["batchnorm_updated"] is True
    groups = [g["name"] for g in records["llrd-block"].plan["optimizer_groups"]]
    assert any("@" in name for name in groups)
    assert all("loss_term" in h for h in records["delta"].metrics.history)


def test_delta_pulls_feature_maps_towards_the_starting_models():
    from tlbench.plugins.delta import FeatureMapDistance
    head = nn.Linear(3, 2)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Flatten(), head)
    ctx = TrainingContext(model, dict(model.named_parameters()), {"0.weight": "s", "0.bias": "s", "2.weight": "head",
                                                                   "2.bias": "head"}, {})
    current = torch.randn(4, 3, 2, 2, requires_grad=True)
    reference = current.detach() + 1.0
    step = StepContext(torch.zeros(1), torch.zeros(1), torch.zeros(4, 2), None, {"m": current}, {"m": reference}, ctx)
    term = FeatureMapDistance(alpha=0.5, beta=0.0)(step)
    assert term.item() == pytest.approx(0.5)  # mean squared distance 1, alpha 0.5
    term.backward()
    torch.testing.assert_close(current.grad, torch.full_like(current, 0.5 * 2 * -1.0 / current.numel()))
    same = StepContext(torch.zeros(1), torch.zeros(1), torch.zeros(4, 2), None, {"m": reference}, {"m": reference}, ctx)
    head_only = FeatureMapDistance(alpha=0.5, beta=0.2)(same)
    assert head_only.item() == pytest.approx(0.1 * sum((p ** 2).sum().item() for p in head.parameters()))


class FullWithCallback(Strategy):
    """`full` plus a callback that does nothing: the same numbers, but never a shared phase."""

    name = "full-callback"
    defaults = {"lr": 0.01, "batchnorm": "frozen"}

    def plan(self, group_names, hparams):
        return TrainPlan({g: hparams["lr"] for g in group_names}, hparams["batchnorm"], callbacks=(Callback(),))


def test_a_plan_with_batch_parts_is_never_a_shared_phase(tmp_path, tiny_backbone):
    records = grid(tmp_path, tiny_backbone, ["full", "full-callback"], settings=["full.lr=0.01"],
                   plugins=with_strategies(FullWithCallback))
    assert [p["shared_from"] for p in records["full-callback"].plan["phases"]] == [None]
    full, other = records["full"].metrics, records["full-callback"].metrics
    assert (full.val_top1, full.test_top1, full.history) == (other.val_top1, other.test_top1, other.history)


def test_a_task_loss_is_never_a_shared_phase(tmp_path, tiny_backbone):
    """A task-loss override at full's learning rate trains something else than full: never full's phase."""
    records = grid(tmp_path, tiny_backbone, ["full", "focal"], settings=["full.lr=0.01"],
                   plugins=with_strategies(Focal))
    assert [p["shared_from"] for p in records["focal"].plan["phases"]] == [None]
    assert records["focal"].metrics.history != records["full"].metrics.history
