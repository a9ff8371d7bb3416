"""How a strategy's TrainPlan becomes requires_grad flags, modules pinned in eval mode, and optimizer groups.

"Frozen" must mean frozen: every module whose parameters all belong to frozen groups is pinned in eval mode, so
BatchNorm running statistics (and dropout) stay fixed even when a parent calls ``.train()``. BatchNorm layers of
trainable groups follow the plan's policy: "train", "frozen" (pinned eval; affine parameters still learn) or
"recalibrate" (train mode; statistics re-estimated on training images before each evaluation).
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tlbench.types import Backbone, TrainPlan, UsageError


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def pin_eval(module: nn.Module) -> None:
    """Put ``module`` (and its subtree) in eval mode for good: later ``.train()`` calls leave it in eval."""
    module.train = types.MethodType(_stay_in_eval, module)  # type: ignore[method-assign]
    module.train(False)


def is_pinned(module: nn.Module) -> bool:
    return getattr(module.train, "__func__", None) is _stay_in_eval


@dataclass
class AppliedPlan:
    optimizer_groups: list[dict[str, Any]]
    trainable_groups: list[str]
    recalibrate: list[_BatchNorm] = field(default_factory=list)  # BN layers to re-estimate before evaluation
    trainable_params: int = 0
    total_params: int = 0

    @property
    def head_only(self) -> bool:
        return self.trainable_groups == ["head"]


def apply_plan(backbone: Backbone, plan: TrainPlan, weight_decay: float) -> AppliedPlan:
    model = backbone.model
    names = backbone.group_names
    unknown = [g for g in plan.learning_rates if g not in names]
    if unknown:
        raise UsageError(f"the strategy names group(s) {unknown} that backbone {backbone.name} does not have "
                         f"(it has {', '.join(names)})")
    if plan.batchnorm not in TrainPlan.BATCHNORM_POLICIES:
        raise UsageError(f"batchnorm policy must be one of {', '.join(TrainPlan.BATCHNORM_POLICIES)}, "
                         f"got {plan.batchnorm!r}")
    group_of = {param_name: group for group, param_names in backbone.groups for param_name in param_names}
    params = dict(model.named_parameters())
    missing = set(params) - set(group_of)
    if missing:
        raise RuntimeError(f"backbone {backbone.name} left parameters out of its groups: {sorted(missing)[:3]}")

    for name, param in params.items():
        param.requires_grad_(group_of[name] in plan.learning_rates)

    _pin_frozen_subtrees(model, "", group_of, set(plan.learning_rates))
    recalibrate: list[_BatchNorm] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, _BatchNorm) or is_pinned(module) or not _in_trainable(module):
            continue
        if plan.batchnorm == "frozen":
            pin_eval(module)
        elif plan.batchnorm == "recalibrate":
            recalibrate.append(module)

    optimizer_groups = []
    for group, param_names in backbone.groups:
        lr = plan.learning_rates.get(group)
        if lr is None:
            continue
        decay = [params[n] for n in param_names if not _no_decay(n, params[n])]
        no_decay = [params[n] for n in param_names if _no_decay(n, params[n])]
        for tag, members, wd in (("decay", decay, weight_decay), ("no_decay", no_decay, 0.0)):
            if members:  # every group exists from the start, so schedulers and checkpoints see a fixed layout
                optimizer_groups.append({"params": members, "lr": lr, "weight_decay": wd, "name": f"{group}/{tag}"})
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    return AppliedPlan(optimizer_groups, [g for g in names if g in plan.learning_rates], recalibrate, trainable,
                       sum(p.numel() for p in params.values()))


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases and other 1-d parameters get no weight decay (timm's and most recipes' rule)."""
    return param.ndim <= 1 or name.endswith(".bias")


def _in_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False)) or not list(module.parameters(False))


def _pin_frozen_subtrees(module: nn.Module, prefix: str, group_of: dict[str, str], trainable: set[str]) -> None:
    """Pin the largest subtrees whose parameters are all frozen; parameterless leaves follow their parent."""
    groups = {group_of[f"{prefix}{n}"] for n, _ in module.named_parameters()}
    if groups and not (groups & trainable):
        pin_eval(module)
        return
    for child_name, child in module.named_children():
        _pin_frozen_subtrees(child, f"{prefix}{child_name}.", group_of, trainable)


@torch.no_grad()
def recalibrate_batchnorm(layers: Iterable[_BatchNorm], model: Callable[[torch.Tensor], Any],
                          batches: Iterable[torch.Tensor]) -> None:
    """Re-estimate running statistics of ``layers`` as a plain average over ``batches`` (forward passes in train
    mode for these layers; nothing else changes), then restore their momentum."""
    layers = list(layers)
    if not layers:
        return
    momenta = {layer: layer.momentum for layer in layers}
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: every batch weighs the same
    for batch in batches:
        model(batch)
    for layer, momentum in momenta.items():
        layer.momentum = momentum
