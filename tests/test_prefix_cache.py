"""The frozen-prefix cache: a phase that trains only a suffix of the network on unaugmented data trains it on
activations computed once, with exactly the metrics of end-to-end training; every fallback is recorded."""
from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision
from click.testing import CliRunner

from tlbench import Phase, TrainPlan
from tlbench.cli import cli
from tlbench.phases import BuiltTrial, PlanServices, apply_surgery, run_plan
from tlbench.plan import PROTOCOL_DEFAULTS
from tlbench.plugins.synthetic import make_images
from tlbench.plugins.timm_backbones import TimmBackbones
from tlbench.prefix_cache import PrefixCache, model_split, plan_prefix, serve
from tlbench.preprocess import DevicePreprocessor
from tlbench.trainer import autocast_context
from tlbench.types import ImageSplits

CPU = torch.device("cpu")
NO_AUTOCAST = autocast_context(CPU, "off")


def _splits(train=64, val=32, test=32):
    parts = [make_images(n, 4, 32, seed) for n, seed in ((train, 1), (val, 2), (test, 3))]
    return ImageSplits(*parts[0], *parts[1], *parts[2], [f"c{k}" for k in range(4)])


def _build(tiny_weights, seed=0):
    torch.manual_seed(seed)
    return TimmBackbones().build(f"test_efficientnet@{tiny_weights}", 4, pretrained=True)


def _train(backbone, plan, data, cache: PrefixCache | None, budget=64, augment="none", epochs=2):
    protocol = {**PROTOCOL_DEFAULTS, "epochs": epochs, "batch_size": 16, "eval_batch_size": 32,
                "prefix_cache_mib": budget}
    group_of, surgery = apply_surgery(backbone, plan)
    prep = DevicePreprocessor(backbone.preprocessing.resized(32), augment)
    prefix = serve(cache, ["test"], data, prep.eval, protocol, CPU, NO_AUTOCAST) if cache is not None else None
    torch.manual_seed(0)
    trial = BuiltTrial(plan, backbone, group_of, surgery, backbone.model, backbone.model, prep, data, protocol)
    return run_plan(trial, PlanServices(features=None, prefix=prefix), device=CPU,
                    generator=torch.Generator().manual_seed(0))


def _suffix_plan(group_names, batchnorm="frozen"):
    return TrainPlan({group_names[-2]: 0.01, "head": 0.03}, batchnorm)


@pytest.mark.parametrize("batchnorm", ["frozen", "train", "recalibrate"])
def test_cached_prefix_gives_exactly_the_metrics_of_end_to_end_training(tiny_weights, batchnorm):
    data = _splits()
    plain_backbone, cached_backbone = _build(tiny_weights), _build(tiny_weights)
    plan = _suffix_plan(plain_backbone.group_names, batchnorm)
    plain = _train(plain_backbone, plan, data, cache=None)
    cached = _train(cached_backbone, plan, data, cache=PrefixCache())
    record = cached.phases[0].record["prefix_cache"]
    assert record["used"] is True and record["cut"] == "blocks.4", record
    assert plain.phases[0].record["prefix_cache"]["used"] is False
    assert cached.prefix_seconds is not None and cached.prefix_seconds > 0 and plain.prefix_seconds is None
    assert cached.history == plain.history  # every epoch's loss and validation score, bit for bit
    assert (cached.test.top1, cached.val.top1, cached.best.epoch) == (plain.test.top1, plain.val.top1,
                                                                       plain.best.epoch)
    for (name, a), (_, b) in zip(plain_backbone.model.state_dict().items(),
                                 cached_backbone.model.state_dict().items()):
        assert torch.equal(a, b), name  # the same trained weights and BatchNorm statistics


def test_frozen_prefix_batchnorm_statistics_stay_pretrained(tiny_weights):
    backbone = _build(tiny_weights)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items() if "running" in k}
    outcome = _train(backbone, _suffix_plan(backbone.group_names, "train"), _splits(), cache=PrefixCache())
    assert outcome.phases[0].record["prefix_cache"]["used"]
    after = backbone.model.state_dict()
    suffix_modules = {n.rsplit(".", 1)[0] for n in dict(backbone.groups)[backbone.group_names[-2]]}
    suffix_keys = [k for k in before if k.rsplit(".", 1)[0] in suffix_modules]
    prefix_keys = [k for k in before if k not in suffix_keys]
    assert prefix_keys and suffix_keys
    assert all(torch.equal(before[k], after[k]) for k in prefix_keys)
    assert any(not torch.equal(before[k], after[k]) for k in suffix_keys)  # "train" policy: the suffix's move


def test_activations_are_computed_once_and_shared(tiny_weights):
    data, cache = _splits(), PrefixCache()
    first = _train(_build(tiny_weights), _suffix_plan(_build(tiny_weights).group_names), data, cache)
    second = _train(_build(tiny_weights, seed=1), _suffix_plan(_build(tiny_weights).group_names), data, cache)
    assert first.prefix_seconds > 0 and second.prefix_seconds == 0.0
    assert first.prefix_flops > 0 and second.prefix_flops == 0.0


@pytest.mark.parametrize("budget, augment, plan_kind, reason", [
    (1e-4, "none", "suffix", "over the budget"),
    (0, "none", "suffix", "off (prefix_cache_mib=0)"),
    (64, "flip", "suffix", "augmentation 'flip'"),
    (64, "none", "everything", "there is no frozen prefix"),
])
def test_fallbacks_are_recorded_and_train_end_to_end(tiny_weights, budget, augment, plan_kind, reason):
    backbone = _build(tiny_weights)
    names = backbone.group_names
    plan = _suffix_plan(names) if plan_kind == "suffix" else TrainPlan({g: 0.01 for g in names}, "frozen")
    outcome = _train(backbone, plan, _splits(), PrefixCache(), budget=budget, augment=augment, epochs=1)
    record = outcome.phases[0].record["prefix_cache"]
    assert record["used"] is False and reason in record["reason"], record
    assert outcome.prefix_seconds is None


def test_a_phase_after_one_that_trained_the_prefix_does_not_use_stale_activations(tiny_weights):
    backbone = _build(tiny_weights)
    names = backbone.group_names
    plan = TrainPlan(phases=[Phase({g: 0.01 for g in names}, "frozen", epochs=1),
                             Phase({names[-2]: 0.01, "head": 0.03}, "frozen", epochs=1)])
    outcome = _train(backbone, plan, _splits(), PrefixCache())
    record = outcome.phases[1].record["prefix_cache"]
    assert record["used"] is False and "an earlier phase trained the prefix" in record["reason"]


@pytest.mark.parametrize("build", [
    lambda: timm.create_model("test_efficientnet", num_classes=3),
    lambda: timm.create_model("resnet10t", num_classes=3),
    lambda: torchvision.models.resnet18(num_classes=3),
])
def test_known_architectures_split_into_a_prefix_and_suffix_that_reproduce_the_model(build):
    torch.manual_seed(0)
    model = build().eval()
    assert model_split(model) is not None
    head = [n for n, _ in model.named_parameters()][-2:]
    last_stage = {n for n, _ in model.named_parameters() if n.startswith(("layer4", "blocks.4"))}
    planned = plan_prefix(model, last_stage | set(head), torch.randn(2, 3, 32, 32), NO_AUTOCAST)
    assert not isinstance(planned, str), planned
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(planned.suffix(planned.prefix(x)), model(x))


def test_an_unknown_architecture_is_a_recorded_fallback():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    reason = plan_prefix(model, set(), torch.randn(2, 3, 8, 8), NO_AUTOCAST)
    assert isinstance(reason, str) and "no known split of Sequential" in reason


def test_partial_run_records_the_cache_and_matches_the_uncached_run(tiny_backbone, tmp_path, fast_settings):
    records = {}
    for name, extra in (("cached", []), ("plain", ["--set", "prefix_cache_mib=0"])):
        out = tmp_path / name
        result = CliRunner().invoke(cli, ["run", "-s", "partial", "-b", tiny_backbone, "-d", "synthetic",
                                          "--seeds", "2", "--results-dir", str(out), "-q", *fast_settings, *extra])
        assert result.exit_code == 0, result.output
        records[name] = sorted((json.loads(p.read_text()) for p in out.glob("*.json")),
                               key=lambda r: r["trial"]["seed"])
    for cached, plain in zip(records["cached"], records["plain"]):
        assert cached["plan"]["phases"][0]["prefix_cache"]["used"] is True
        assert plain["plan"]["phases"][0]["prefix_cache"]["reason"] == "off (prefix_cache_mib=0)"
        for key in ("val_top1", "test_top1", "best_epoch", "history"):
            assert cached["metrics"][key] == plain["metrics"][key], key
    seconds = [r["metrics"]["time_s"]["prefix_cache"] for r in records["cached"]]
    assert seconds[0] > 0 and seconds[1] == 0.0  # computed once per run, shared by the second seed


def test_leaderboard_marks_suffix_throughput():
    from tlbench.leaderboard import render

    def record(strategy, phases):
        return {"key": strategy, "status": "ok", "trial": {"dataset": "d", "backbone": "b", "strategy": strategy,
                                                            "label": strategy, "seed": 0, "group": strategy},
                "metrics": {"val_top1": 0.5, "test_top1": 0.5, "train_images_per_s": 100.0},
                "plan": {"phases": phases}}

    cached = record("partial", [{"feature_cache": False, "prefix_cache": {"used": True}}])
    plain = record("full", [{"feature_cache": False, "prefix_cache": {"used": False, "reason": "..."}}])
    lines = render([cached, plain], "plain").splitlines()
    assert "100 (suffix)" in next(line for line in lines if "partial" in line)
    assert "(suffix)" not in next(line for line in lines if " full " in line)
