"""The strategy contract (phases, parameter selection, loss terms, surgery, after-training steps) and the defining
property of each built-in strategy that needs it: BitFit, LP-FT, L2-SP, WiSE-FT, LoRA, LLRD."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from click.testing import CliRunner

import tlbench.phases
from tlbench import Phase, Strategy, TrainingContext, TrainPlan, UsageError, hookimpl
from tlbench.cli import cli
from tlbench.freeze import apply_phase
from tlbench.phases import BuiltTrial, PlanServices, apply_surgery, run_plan
from tlbench.plan import PROTOCOL_DEFAULTS
from tlbench.plugins.bitfit import BitFit
from tlbench.plugins.l2_sp import L2SP, StartingPointPenalty
from tlbench.plugins.llrd import LayerwiseLRDecay
from tlbench.plugins.lora import INSTALL_HINT, LoRA, lora_targets
from tlbench.plugins.lp_ft import LinearProbeThenFineTune
from tlbench.plugins.synthetic import make_images
from tlbench.plugins.timm_backbones import TimmBackbones
from tlbench.plugins.wise_ft import InterpolateTowardsPretrained, WiseFT
from tlbench.preprocess import DevicePreprocessor
from tlbench.types import ImageSplits

CPU = torch.device("cpu")


def build(tiny_weights, seed=0):
    torch.manual_seed(seed)
    return TimmBackbones().build(f"test_efficientnet@{tiny_weights}", 4, pretrained=True)


def splits(train=64, val=32, test=32):
    parts = [make_images(n, 4, 32, seed) for n, seed in ((train, 1), (val, 2), (test, 3))]
    return ImageSplits(*parts[0], *parts[1], *parts[2], [f"c{k}" for k in range(4)])


def train(backbone, plan, epochs=2, protocol=None, data=None, feature_cache=True):
    """One trial's training through the harness's own phase runner, on CPU, synthetic data."""
    protocol = {**PROTOCOL_DEFAULTS, "epochs": epochs, "batch_size": 16, "eval_batch_size": 32,
                "feature_cache": feature_cache, **(protocol or {})}
    data = data or splits()
    group_of, surgery = apply_surgery(backbone, plan)
    prep = DevicePreprocessor(backbone.preprocessing.resized(32))

    def features(needed):
        from tlbench.trainer import extract_features
        backbone.model.eval()
        made = {s: extract_features(backbone.pre_logits, getattr(data, f"{s}_images"), prep.eval, 32, CPU,
                                    lambda: torch.autocast("cpu", enabled=False))[0] for s in needed}
        return tlbench.phases.CachedFeatures(made, None, 0.0)

    trial = BuiltTrial(plan, backbone, group_of, surgery, backbone.model, backbone.model, prep, data, protocol)
    return run_plan(trial, PlanServices(features), device=CPU, generator=torch.Generator().manual_seed(0))


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


# ------------------------------------------------------------------------------------------------------ BitFit
def test_bitfit_trains_exactly_the_biases_and_the_head(tiny_weights):
    backbone = build(tiny_weights)
    plan = BitFit().plan(backbone.group_names, {**BitFit.defaults, "lr": 0.03, "head_lr": 0.03})
    group_of = {n: g for g, names in backbone.groups for n in names}
    biases_and_head = {n for n in group_of if n.endswith(".bias") or group_of[n] == "head"}
    assert any(group_of[n] != "head" for n in biases_and_head), "norm shifts of the backbone count as biases"

    apply_phase(backbone.model, group_of, backbone.group_names, plan.all_phases()[0], 0.01)
    backbone.model.train()
    backbone.model(torch.randn(4, 3, 32, 32)).sum().backward()
    with_grad = {n for n, p in backbone.model.named_parameters() if p.grad is not None}
    assert with_grad == biases_and_head

    before = state(backbone.model)
    outcome = train(backbone, plan)
    after = state(backbone.model)
    params = dict(backbone.model.named_parameters())
    moved = {k for k in changed(before, after) if k in params}
    assert moved == biases_and_head
    assert not changed({k: v for k, v in before.items() if "running" in k},
                       {k: v for k, v in after.items() if "running" in k}), "BatchNorm statistics stay frozen"
    assert outcome.trainable_params == sum(params[n].numel() for n in biases_and_head)


# ------------------------------------------------------------------------------------------------------- LP-FT
def test_lp_ft_probe_leaves_the_backbone_and_fine_tuning_starts_from_the_probed_head(tiny_weights, monkeypatch):
    backbone = build(tiny_weights)
    start = state(backbone.model)
    seen = []
    real_fit = tlbench.phases.fit

    def recording_fit(model, *args, **kwargs):
        seen.append(("start", kwargs["phase"].label, state(backbone.model)))
        result = real_fit(model, *args, **kwargs)
        seen.append(("end", kwargs["phase"].label, state(backbone.model)))
        return result

    monkeypatch.setattr(tlbench.phases, "fit", recording_fit)
    hparams = {**LinearProbeThenFineTune.defaults, "probe_lr": 0.05, "lr": 0.01}
    outcome = train(backbone, LinearProbeThenFineTune().plan(backbone.group_names, hparams), epochs=2)
    assert [(what, phase) for what, phase, _ in seen] == [("start", "probe"), ("end", "probe"),
                                                          ("start", "fine-tune"), ("end", "fine-tune")]
    probed, fine_tune_start = seen[1][2], seen[2][2]
    head = {k for k in start if k.startswith("classifier.")}
    assert changed(start, probed) == head, "the probe changes the head and nothing else (BN statistics included)"
    assert not changed(probed, fine_tune_start), "phase 2 starts from the probed head"
    assert changed(probed, seen[3][2]) - head, "then the backbone fine-tunes"
    phases = [p.record for p in outcome.phases]
    assert [p["name"] for p in phases] == ["probe", "fine-tune"]
    assert phases[0]["feature_cache"] is True and phases[1]["feature_cache"] is False
    assert [h["phase"] for h in outcome.history] == ["probe"] * 2 + ["fine-tune"] * 2
    assert outcome.best.epoch in (3, 4), "the probe's epochs are not selectable"


# ------------------------------------------------------------------------------------------------------- L2-SP
def test_l2_sp_penalty_is_zero_at_the_start_and_its_gradient_is_alpha_times_the_drift(tiny_weights):
    backbone = build(tiny_weights)
    model = backbone.model
    group_of = {n: g for g, names in backbone.groups for n in names}
    context = TrainingContext(model, dict(model.named_parameters()), group_of, state(model))
    alpha, beta = 0.3, 0.7
    backbone_only = StartingPointPenalty(alpha, 0.0)
    assert backbone_only(context).item() == 0.0, "w = w0 at step 0"
    head_norm = sum((p ** 2).sum() for n, p in model.named_parameters() if group_of[n] == "head")
    assert StartingPointPenalty(alpha, beta)(context).item() == pytest.approx(beta / 2 * head_norm.item())

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.zero_grad()
    StartingPointPenalty(alpha, beta)(context).backward()
    for name, p in model.named_parameters():
        expected = beta * p.detach() if group_of[name] == "head" else alpha * (p.detach() - context.initial[name])
        torch.testing.assert_close(p.grad, expected, msg=name)
    assert L2SP.protocol["weight_decay"] == 0.0


def test_l2_sp_loss_term_is_in_the_logged_loss(tiny_weights):
    backbone = build(tiny_weights)
    plan = L2SP().plan(backbone.group_names, {**L2SP.defaults, "lr": 0.01, "alpha": 1.0, "beta": 1.0})
    outcome = train(backbone, plan, epochs=2, protocol={"weight_decay": 0.0})
    for entry in outcome.history:
        assert entry["loss_term"] > 0 and entry["train_loss"] > entry["loss_term"]


# ----------------------------------------------------------------------------------------------------- WiSE-FT
def _wise_context(tiny_weights):
    backbone = build(tiny_weights)
    model = backbone.model
    group_of = {n: g for g, names in backbone.groups for n in names}
    pretrained = state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model, TrainingContext(model, dict(model.named_parameters()), group_of, pretrained), state(model)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wise_ft_coefficient_0_restores_pretrained_backbone_and_1_the_fine_tuned(tiny_weights, alpha):
    model, context, finetuned = _wise_context(tiny_weights)
    context.evaluate = lambda: 0.5
    record = InterpolateTowardsPretrained((alpha,))(context)
    assert record["alpha"] == alpha
    after = state(model)
    for key, value in after.items():
        if key.startswith("classifier."):
            assert torch.equal(value, finetuned[key]), "the head keeps its fine-tuned weights"
        elif value.is_floating_point():
            assert torch.equal(value, context.initial[key] if alpha == 0 else finetuned[key]), key


def test_wise_ft_chooses_the_coefficient_on_validation_and_records_it(tiny_weights):
    model, context, finetuned = _wise_context(tiny_weights)
    scores = iter([0.1, 0.4, 0.9, 0.9, 0.2])  # alphas 0, .25, .5, .75, 1: the tie goes to the first listed
    context.evaluate = lambda: next(scores)
    record = InterpolateTowardsPretrained((0.0, 0.25, 0.5, 0.75, 1.0))(context)
    assert record["alpha"] == 0.5
    assert record["val_top1_by_alpha"] == {"0.0": 0.1, "0.25": 0.4, "0.5": 0.9, "0.75": 0.9, "1.0": 0.2}
    key = "conv_stem.weight"
    torch.testing.assert_close(model.state_dict()[key], (context.initial[key] + finetuned[key]) / 2)


def test_wise_ft_scores_test_once_after_choosing(tiny_weights, monkeypatch):
    backbone = build(tiny_weights)
    data = splits()
    calls = []
    real_evaluate = tlbench.phases.evaluate
    monkeypatch.setattr(tlbench.phases, "evaluate", lambda model, split, *a: calls.append(
        "test" if split.labels is data.test_labels else "val") or real_evaluate(model, split, *a))
    outcome = train(backbone, WiseFT().plan(backbone.group_names, {**WiseFT.defaults, "lr": 0.01}), data=data)
    assert calls == ["val"] * 6 + ["test"], "five candidates and the chosen model on val, then test once"
    assert outcome.after_training["alpha"] in WiseFT.defaults["alphas"]
    assert outcome.val.top1 == max(outcome.after_training["val_top1_by_alpha"].values())


# -------------------------------------------------------------------------------------------------------- LoRA
def test_lora_trains_only_adapters_and_head_and_merged_weights_give_the_same_outputs(tiny_weights):
    peft = pytest.importorskip("peft")
    backbone = build(tiny_weights)
    plan = LoRA().plan(backbone.group_names, {**LoRA.defaults, "lr": 0.01, "head_lr": 0.03})
    total_before = sum(p.numel() for p in backbone.model.parameters())
    outcome = train(backbone, plan, epochs=2)
    model = backbone.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("classifier.") for n in trainable)
    assert any(".lora_B." in n for n in trainable)
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert outcome.total_params == total_before + adapters, "counts see the model after surgery"
    assert outcome.trainable_params == adapters + sum(p.numel() for p in backbone.head.parameters())
    assert outcome.surgery["rank"] == 8 and outcome.surgery["wrapped_modules"]
    model.train()  # what the loop does every epoch: frozen BatchNorm layers must stay in eval mode
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in model.named_parameters() if ".lora_B." in n)

    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        adapted = model(x)
        layers = [m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
        assert len(layers) == len(outcome.surgery["wrapped_modules"])
        for layer in layers:
            layer.merge()
        merged = model(x)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)


def test_lora_targets_qkv_on_vits_and_pointwise_convs_on_cnns(tiny_weights):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=2)
    names = lora_targets(vit, vit.get_classifier(), "auto")
    assert names == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    cnn = build(tiny_weights)
    names = lora_targets(cnn.model, cnn.head, "auto")
    modules = dict(cnn.model.named_modules())
    assert names and "classifier" not in names
    assert all(getattr(modules[n], "kernel_size", (1, 1)) == (1, 1) for n in names)
    with pytest.raises(UsageError, match="matches no linear or 1x1 convolution"):
        apply_surgery(cnn, LoRA().plan(cnn.group_names, {**LoRA.defaults, "targets": "nothing.*"}))


def test_lora_without_peft_is_listed_with_the_hint_and_a_run_exits_2(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now fails, as if it were not installed
    listing = CliRunner().invoke(cli, ["list", "strategies"])
    assert listing.exit_code == 0
    assert next(line for line in listing.output.splitlines() if line.startswith("lora ")).startswith("lora *")
    hint = str(INSTALL_HINT)
    assert f"* lora is unavailable here: it needs an optional package: {hint}" in listing.output
    result = CliRunner().invoke(cli, ["run", "-s", "lora", "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and hint in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


# -------------------------------------------------------------------------------------------------------- LLRD
def test_llrd_rates_follow_the_formula(tiny_weights):
    backbone = build(tiny_weights)
    names = backbone.group_names
    plan = LayerwiseLRDecay().plan(names, {**LayerwiseLRDecay.defaults, "lr": 0.02, "decay": 0.5})
    group_of = {n: g for g, params in backbone.groups for n in params}
    applied = apply_phase(backbone.model, group_of, names, plan.all_phases()[0], 0.01)
    rates = {g["name"].split("/")[0]: g["lr"] for g in applied.optimizer_groups}
    assert set(rates) == set(names) and len(names) >= 3
    for index, group in enumerate(names):
        assert rates[group] == pytest.approx(0.02 * 0.5 ** (len(names) - 1 - index))
    assert rates["head"] == 0.02


# ------------------------------------------------------------------------------------------- the contract itself
def test_phases_select_the_best_epoch_only_among_selectable_phases_and_continue_the_schedule(tiny_weights):
    backbone = build(tiny_weights)
    plan = TrainPlan(phases=[
        Phase({"head": 0.05}, "frozen", 2, name="warm", selectable=False),
        Phase({g: 0.01 for g in backbone.group_names}, "frozen", 0.5, name="rest", restart=False),
    ])
    outcome = train(backbone, plan, epochs=4, feature_cache=False)
    history = outcome.history
    assert [h["phase"] for h in history] == ["warm", "warm", "rest", "rest"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert outcome.best.epoch in (3, 4)
    # one schedule over both phases (4 epochs x 4 steps, 1 warm-up epoch): the LR keeps falling, no new warm-up
    lrs = [h["lr"] for h in history]
    assert lrs[1] > lrs[2] > lrs[3]
    assert lrs[2] == pytest.approx(0.01 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 8 / 12)).item()))


def test_select_accepts_a_regex_and_refuses_a_plan_that_trains_nothing(tiny_weights):
    backbone = build(tiny_weights)
    group_of = {n: g for g, names in backbone.groups for n in names}
    applied = apply_phase(backbone.model, group_of, backbone.group_names,
                          Phase({g: 1e-3 for g in backbone.group_names}, select=r"(^classifier\.|\.bn\d\.weight$)"),
                          0.0)
    assert applied.trainable_names and all(n.startswith("classifier.") or n.endswith(".weight")
                                           for n in applied.trainable_names)
    assert not applied.head_only
    with pytest.raises(UsageError, match="selects no parameter"):
        apply_phase(backbone.model, group_of, backbone.group_names, Phase({"head": 1e-3}, select="nothing"), 0.0)
    with pytest.raises(UsageError, match="not both"):
        TrainPlan({"head": 1e-3}, phases=[Phase({"head": 1e-3})])


class NeedsLongRuns(Strategy):
    name = "needs-long-runs"
    description = "refuses schedules shorter than 3 epochs"
    defaults = {"lr": 1e-3}

    def validate(self, hparams, protocol=None):
        super().validate(hparams, protocol)
        if protocol["epochs"] < 3:
            raise UsageError(f"needs-long-runs needs epochs >= 3, got {protocol['epochs']}; use --epochs 3")

    def plan(self, group_names, hparams):
        return TrainPlan({"head": hparams["lr"]}, "frozen")


class OldStyleValidate(NeedsLongRuns):
    name = "old-style"

    def validate(self, hparams):  # a 0.1 plugin: validate(hparams) only
        if hparams["lr"] > 1:
            raise UsageError("old-style.lr must be <= 1")


class PhaseTooShort(NeedsLongRuns):
    name = "phase-too-short"

    def validate(self, hparams, protocol=None):
        pass

    def plan(self, group_names, hparams):
        return TrainPlan(phases=[Phase({"head": 1e-3}, epochs=0.1)])


def _zero_the_stem(backbone):
    """Surgery that changes what the frozen backbone computes (every feature becomes the same)."""
    with torch.no_grad():
        backbone.model.conv_stem.weight.zero_()
    return {"zeroed": "conv_stem.weight"}


class HeadOnAlteredBackbone(NeedsLongRuns):
    name = "head-on-altered-backbone"

    def validate(self, hparams, protocol=None):
        pass

    def plan(self, group_names, hparams):
        return TrainPlan({"head": 0.03}, "frozen", surgery=_zero_the_stem)


class ContractPlugin:
    @hookimpl
    def register_strategies(self, register):
        for strategy in (NeedsLongRuns, OldStyleValidate, PhaseTooShort, HeadOnAlteredBackbone):
            register(strategy)


@pytest.fixture
def contract_plugins(monkeypatch):
    from tlbench.registry import Plugins

    def plugins():
        loaded = Plugins(load_third_party=False)
        loaded.pm.register(ContractPlugin(), name="contract")
        loaded.strategies.current_plugin = "contract"
        ContractPlugin().register_strategies(loaded.strategies.register)
        return loaded

    monkeypatch.setattr("tlbench.cli._plugins", plugins)


@pytest.mark.parametrize("args, message", [
    (["-s", "needs-long-runs", "--epochs", "2"], "needs-long-runs needs epochs >= 3, got 2"),
    (["-s", "old-style", "--set", "old-style.lr=5"], "old-style.lr must be <= 1"),
    (["-s", "phase-too-short", "--epochs", "4"], "has epochs=0.1, which is 0 epoch(s) of the trial's 4"),
    (["-s", "lp-ft", "--epochs", "4", "--set", "lp-ft.probe_epochs=0.1"],
     "lp-ft.probe_epochs=0.1 of 4 epochs is less than one epoch"),
])
def test_impossible_settings_fail_before_anything_runs(contract_plugins, tiny_backbone, tmp_path, args, message):
    results = tmp_path / "r"
    result = CliRunner().invoke(cli, ["run", *args, "-b", tiny_backbone, "-d", "synthetic", "--results-dir",
                                      str(results)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not results.exists() or not list(results.glob("*.json"))


def test_records_carry_phases_and_strategy_choices(tiny_backbone, tmp_path, fast_settings):
    results = tmp_path / "r"
    result = CliRunner().invoke(cli, ["run", "-s", "lp-ft", "-s", "wise-ft", "-b", tiny_backbone, "-d", "synthetic",
                                      "--results-dir", str(results), *fast_settings, "-q"])
    assert result.exit_code == 0, result.output
    records = {r["trial"]["strategy"]: r for r in (json.loads(p.read_text()) for p in results.glob("*.json"))}
    lp_ft = records["lp-ft"]
    assert [p["name"] for p in lp_ft["plan"]["phases"]] == ["probe", "fine-tune"]
    assert lp_ft["plan"]["phases"][0]["epochs"] == 2 and lp_ft["metrics"]["epochs"] == 6
    assert lp_ft["metrics"]["best_epoch"] > 2
    wise = records["wise-ft"]
    assert wise["plan"]["after_training"]["alpha"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert wise["plan"]["after_training_fn"].startswith("InterpolateTowardsPretrained(alphas=")
    assert wise["metrics"]["val_top1"] == max(wise["plan"]["after_training"]["val_top1_by_alpha"].values())


def test_feature_cache_sees_the_model_after_surgery(contract_plugins, tiny_backbone, tmp_path, fast_settings):
    results = tmp_path / "r"
    result = CliRunner().invoke(cli, ["run", "-s", "frozen", "-s", "head-on-altered-backbone", "-b", tiny_backbone,
                                      "-d", "synthetic", "--results-dir", str(results), *fast_settings, "-q"])
    assert result.exit_code == 0, result.output
    records = {r["trial"]["strategy"]: r for r in (json.loads(p.read_text()) for p in results.glob("*.json"))}
    altered = records["head-on-altered-backbone"]
    assert altered["metrics"]["feature_cache"] and altered["metrics"]["time_s"]["features"] > 0, \
        "features of the altered model are computed for it, not taken from the frozen trial's cache"
    assert altered["plan"]["surgery"] == {"zeroed": "conv_stem.weight"}
    assert records["frozen"]["metrics"]["test_top1"] > 0.5 >= altered["metrics"]["test_top1"], \
        "constant features cannot separate the classes"


def test_a_later_phase_unfreezes_what_an_earlier_phase_froze(tiny_weights):
    """Freezing is reversible: after a head-only phase (backbone pinned in eval mode), a phase with
    batchnorm=train trains the backbone's BatchNorm statistics again."""
    backbone = build(tiny_weights)
    stats = lambda: {k: v.clone() for k, v in backbone.model.state_dict().items() if "running_mean" in k}  # noqa
    start = stats()
    seen = []
    real_fit = tlbench.phases.fit

    def recording_fit(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        seen.append(stats())
        return result

    plan = TrainPlan(phases=[Phase({"head": 0.03}, "frozen", 1, name="probe"),
                             Phase({g: 0.01 for g in backbone.group_names}, "train", 1, name="all")])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tlbench.phases, "fit", recording_fit)
        train(backbone, plan, epochs=1)
    after_probe, after_all = seen
    assert not changed(start, after_probe), "pinned in eval mode during the head-only phase"
    assert changed(after_probe, after_all) == set(start), "every BatchNorm layer trains its statistics in phase 2"
