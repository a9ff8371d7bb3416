"""Strategies plan over group names; apply_plan makes "frozen" really frozen, whatever .train() calls follow."""
import pytest
import torch
from torch import nn

from tlbench.plugins.strategies import DiscriminativeLR, Frozen, Full, Partial, Scratch
from tlbench.freeze import apply_plan, is_pinned, recalibrate_batchnorm
from tlbench.types import Backbone, Preprocessing, TrainPlan, UsageError

GROUPS = ["stem", "stage1", "stage2", "head"]


def tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("stem", nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    model.add_module("stage1", nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5)))
    model.add_module("stage2", nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                             nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.add_module("head", nn.Linear(8, 3))
    groups = [(g, [n for n, _ in model.named_parameters() if n.startswith(g + ".")]) for g in GROUPS]
    return Backbone("tiny", model, groups, Preprocessing(16, "bilinear", (0.5,) * 3, (0.5,) * 3),
                    pre_logits=model[:-1], head=model.head, pretrained=True)


def bn_buffers(module):
    return {n: b.clone() for n, b in module.named_buffers()}


def train_a_few_steps(backbone, applied, steps=3):
    opt = torch.optim.AdamW(applied.optimizer_groups, lr=1e-2)
    for _ in range(steps):
        backbone.model.train()  # what every training loop does each epoch: must not undo frozen BN
        loss = backbone.model(torch.randn(4, 3, 16, 16)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_frozen_backbone_buffers_and_weights_bit_identical_after_training():
    backbone = tiny_backbone()
    plan = Frozen().plan(GROUPS, Frozen.defaults)
    applied = apply_plan(backbone, plan, weight_decay=0.01)
    before_params = {n: p.clone() for n, p in backbone.model.named_parameters() if not n.startswith("head")}
    before_buffers = bn_buffers(backbone.model)
    head_before = backbone.model.head.weight.clone()
    train_a_few_steps(backbone, applied)
    for name, value in bn_buffers(backbone.model).items():
        assert torch.equal(value, before_buffers[name]), name
    for name, p in backbone.model.named_parameters():
        if not name.startswith("head"):
            assert torch.equal(p, before_params[name]) and not p.requires_grad, name
    assert not torch.equal(head_before, backbone.model.head.weight), "the head must train"
    assert applied.head_only and applied.trainable_groups == ["head"]
    assert is_pinned(backbone.model.stem) and not backbone.model.stage1[3].training, "dropout in frozen part off"


def test_partial_unfreezes_last_stage_with_its_own_lr_and_keeps_the_rest_frozen():
    backbone = tiny_backbone()
    plan = Partial().plan(GROUPS, {**Partial.defaults, "unfreeze": 1, "batchnorm": "train"})
    assert plan.learning_rates == {"stage2": 1e-4, "head": 1e-3}
    applied = apply_plan(backbone, plan, weight_decay=0.01)
    stem_bn = bn_buffers(backbone.model.stem)
    stage2_bn = bn_buffers(backbone.model.stage2)
    train_a_few_steps(backbone, applied)
    assert all(torch.equal(v, stem_bn[k]) for k, v in bn_buffers(backbone.model.stem).items())
    assert not torch.equal(stage2_bn["1.running_mean"], backbone.model.stage2[1].running_mean), \
        "BatchNorm of the unfrozen stage follows the 'train' policy"
    lrs = {g["name"]: g["lr"] for g in applied.optimizer_groups}
    assert lrs == {"stage2/decay": 1e-4, "stage2/no_decay": 1e-4, "head/decay": 1e-3, "head/no_decay": 1e-3}


def test_no_weight_decay_on_norm_and_bias():
    backbone = tiny_backbone()
    applied = apply_plan(backbone, Full().plan(GROUPS, Full.defaults), weight_decay=0.05)
    for group in applied.optimizer_groups:
        if group["name"].endswith("no_decay"):
            assert group["weight_decay"] == 0 and all(p.ndim <= 1 for p in group["params"])
        else:
            assert group["weight_decay"] == 0.05 and all(p.ndim > 1 for p in group["params"])
    n_opt = sum(p.numel() for g in applied.optimizer_groups for p in g["params"])
    assert n_opt == applied.trainable_params == applied.total_params


def test_batchnorm_frozen_policy_keeps_statistics_but_trains_affine():
    backbone = tiny_backbone()
    plan = DiscriminativeLR().plan(GROUPS, DiscriminativeLR.defaults)
    assert plan.batchnorm == "frozen"
    applied = apply_plan(backbone, plan, weight_decay=0.0)
    bn = backbone.model.stage1[1]
    stats, weight = bn.running_mean.clone(), bn.weight.clone()
    train_a_few_steps(backbone, applied)
    assert torch.equal(bn.running_mean, stats) and not bn.training
    assert not torch.equal(bn.weight, weight)


def test_recalibrate_reestimates_statistics_from_given_batches():
    backbone = tiny_backbone()
    applied = apply_plan(backbone, TrainPlan({g: 1e-3 for g in GROUPS}, "recalibrate"), weight_decay=0.0)
    assert len(applied.recalibrate) == 3
    data = torch.randn(64, 3, 16, 16) * 3 + 2
    recalibrate_batchnorm(applied.recalibrate, backbone.model, data.split(16))
    bn = backbone.model.stem[1]
    expected = backbone.model.stem[0](data).mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, expected, atol=1e-4)
    assert bn.momentum == 0.1, "momentum restored"


def test_strategy_learning_rates_follow_the_lesson():
    assert Scratch().plan(GROUPS, Scratch.defaults).learning_rates == {g: 1e-3 for g in GROUPS}
    assert Scratch.pretrained is False and Frozen.pretrained is True
    assert Full().plan(GROUPS, Full.defaults).learning_rates == {g: 1e-4 for g in GROUPS}
    disc = DiscriminativeLR().plan(GROUPS, DiscriminativeLR.defaults).learning_rates
    assert disc == {"stem": 1e-5, "stage1": 1e-5, "stage2": 1e-5, "head": 1e-3}
    decayed = DiscriminativeLR().plan(GROUPS, {**DiscriminativeLR.defaults, "stage_decay": True}).learning_rates
    assert decayed["stem"] == pytest.approx(1e-5) and decayed["head"] == 1e-3
    assert decayed["stem"] < decayed["stage1"] < decayed["stage2"] < decayed["head"]
    assert decayed["stage2"] * (decayed["stage2"] / decayed["stage1"]) == pytest.approx(1e-3)


def test_invalid_strategy_settings_are_usage_errors():
    with pytest.raises(UsageError, match=r"partial.unfreeze=4 is more than the 3 stages"):
        Partial().plan(GROUPS, {**Partial.defaults, "unfreeze": 4})
    with pytest.raises(UsageError, match="partial.unfreeze must be an integer >= 1"):
        Partial().validate({**Partial.defaults, "unfreeze": 0})
    with pytest.raises(UsageError, match=r"full.lr must be a number > 0.*--set full.lr"):
        Full().validate({**Full.defaults, "lr": -1})
    with pytest.raises(UsageError, match="batchnorm must be one of"):
        Full().validate({**Full.defaults, "batchnorm": "sometimes"})
    with pytest.raises(UsageError, match="does not have"):
        apply_plan(tiny_backbone(), TrainPlan({"stage9": 1e-3}), 0.0)


class KeepsWhatItBuilds:
    """The timm backbone family, registered under another name, keeping each model it builds with a copy of its
    BatchNorm running statistics as built (so a test can see what a trial did to them)."""

    name, description, takes_argument = "kept", "test only: timm models, kept", True

    def __init__(self):
        from tlbench.plugins.timm_backbones import TimmBackbones

        self.timm, self.built = TimmBackbones(), []

    def build(self, argument, num_classes, pretrained):
        backbone = self.timm.build(argument, num_classes, pretrained)
        stats = {n: b.clone() for n, b in backbone.model.named_buffers() if n.endswith(("running_mean", "running_var"))}
        self.built.append((backbone.model, stats))
        return backbone


@pytest.mark.parametrize("strategy, statistics", [("scratch", "trained"), ("frozen", "kept"), ("partial", "kept"),
                                                  ("full", "kept"), ("discriminative-lr", "kept")])
def test_batchnorm_defaults_pin_pretrained_statistics_and_train_scratch_ones(strategy, statistics, tiny_weights,
                                                                             tmp_path, monkeypatch):
    """docs/protocol.md, "Defaults and why": the pretrained strategies keep every BatchNorm layer's pretrained running
    statistics through training (the layers are pinned in eval mode), scratch trains them. Checked on what a real
    `tlbench run` with each strategy's defaults leaves in the model's BatchNorm layers."""
    from click.testing import CliRunner

    import tlbench.cli
    from tlbench.registry import Plugins

    plugins = Plugins(load_third_party=False)
    kept = KeepsWhatItBuilds()
    plugins.backbones.register(kept)
    monkeypatch.setattr(tlbench.cli, "_plugins", lambda: plugins)
    result = CliRunner().invoke(tlbench.cli.cli, ["run", "-q", "-s", strategy, "-b", f"kept:test_efficientnet@"
                                                  f"{tiny_weights}", "-d", "synthetic", "--epochs", "1",
                                                  "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    model, before = kept.built[-1]
    after = dict(model.named_buffers())
    changed = {name for name, value in before.items() if not torch.equal(after[name], value)}
    assert len(before) > 10
    if statistics == "kept":
        assert not changed, f"{strategy}: BatchNorm statistics changed in {sorted(changed)[:3]}"
    else:
        assert changed == set(before), f"{strategy}: statistics not trained in {sorted(set(before) - changed)[:3]}"


def test_frozen_timm_backbone_stays_bit_identical_through_the_real_training_loop(tiny_weights):
    """timm's BatchNormAct2d layers, the harness's own loop (which calls .train() every epoch), no feature cache."""
    from tlbench.plan import PROTOCOL_DEFAULTS
    from tlbench.plugins.timm_backbones import TimmBackbones
    from tlbench.trainer import FitRun, Split, fit

    torch.manual_seed(0)
    backbone = TimmBackbones().build(f"test_efficientnet@{tiny_weights}", 3, pretrained=True)
    applied = apply_plan(backbone, Frozen().plan(backbone.group_names, Frozen.defaults), weight_decay=0.01)
    frozen_state = {k: v.clone() for k, v in backbone.model.state_dict().items()
                    if not k.startswith("classifier.")}
    assert any("running_mean" in k for k in frozen_state)
    head_before = backbone.head.weight.clone()
    images, labels = torch.randn(24, 3, 32, 32), torch.arange(24) % 3
    split = Split(images, labels, lambda x, g: x, lambda x: x)
    protocol = {**PROTOCOL_DEFAULTS, "epochs": 2, "batch_size": 8}
    fit(backbone.model, split, split, applied.optimizer_groups, protocol,
        run=FitRun(torch.device("cpu"), torch.Generator().manual_seed(0), num_classes=3))
    after = backbone.model.state_dict()
    for key, value in frozen_state.items():
        assert torch.equal(after[key], value), key
    assert not torch.equal(backbone.head.weight, head_before)
