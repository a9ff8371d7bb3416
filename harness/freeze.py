"""How a strategy's phases become requires_grad flags, modules pinned in eval mode, and optimizer groups.

"Frozen" must mean frozen: every module whose parameters are all frozen is pinned in eval mode, so BatchNorm
running statistics (and dropout) stay fixed even when a parent calls ``.train()``. BatchNorm layers with trainable
parameters follow the phase's policy: "train", "frozen" (pinned eval; affine parameters still learn) or
"recalibrate" (train mode; statistics re-estimated on training images before each evaluation). Pinning is
reversible (:func:`unpin_all`), so the next phase of a strategy can unfreeze what the previous one froze.
"""
from __future__ import annotations

import inspect
import math
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tlbench.types import BATCHNORM_POLICIES, Backbone, ParamRef, Phase, TrainPlan, UsageError


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def pin_eval(module: nn.Module) -> None:
    """Put ``module`` (and its subtree) in eval mode until :func:`unpin`: later ``.train()`` calls leave it in eval."""
    module.train = types.MethodType(_stay_in_eval, module)  # type: ignore[method-assign]
    module.train(False)


def is_pinned(module: nn.Module) -> bool:
    return getattr(module.train, "__func__", None) is _stay_in_eval


def unpin(module: nn.Module) -> None:
    if is_pinned(module):
        del module.train  # the instance attribute goes; the class's train() is back


def unpin_all(model: nn.Module) -> None:
    for module in model.modules():
        unpin(module)


@dataclass
class AppliedPhase:
    optimizer_groups: list[dict[str, Any]]
    trainable_groups: list[str]
    trainable_names: set[str]
    head_only: bool  # only parameters of the head train: the rest of the model is a fixed function of the image
    recalibrate: list[_BatchNorm] = field(default_factory=list)  # BN layers to re-estimate before evaluation
    trainable_params: int = 0
    total_params: int = 0


def describe(obj: Any) -> Any:
    """A stable, readable description of a plan's callable or selector for the record (no memory addresses)."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    return re.sub(r" at 0x[0-9a-f]+", "", repr(obj))


def check_phases(phases: Sequence[Phase], group_names: Sequence[str], trial_epochs: int, where: str) -> None:
    """Everything about a plan's phases that can be wrong without a model: found before anything runs."""
    if not phases:
        raise UsageError(f"strategy {where!r} planned no phase; return TrainPlan(...) with learning rates")
    for index, phase in enumerate(phases, 1):
        label = f"strategy {where!r}, phase {index}{f' ({phase.name})' if phase.name else ''}"
        unknown = [g for g in phase.learning_rates if g not in group_names]
        if unknown:
            raise UsageError(f"{label} names group(s) {unknown} that the backbone does not have "
                             f"(it has {', '.join(group_names)})")
        if not phase.learning_rates:
            raise UsageError(f"{label} trains no group; name at least one group with its learning rate")
        bad = {g: lr for g, lr in phase.learning_rates.items()
               if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0}
        if bad:
            raise UsageError(f"{label} has learning rates that are not finite numbers > 0: {bad}")
        if phase.batchnorm not in BATCHNORM_POLICIES:
            raise UsageError(f"{label}: batchnorm policy must be one of {', '.join(BATCHNORM_POLICIES)}, "
                             f"got {phase.batchnorm!r}")
        epochs = phase.epochs
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, (int, float))
                                   or not math.isfinite(epochs) or phase.resolved_epochs(trial_epochs) < 1):
            raise UsageError(f"{label} has epochs={epochs!r}, which is {_resolved_text(epochs, trial_epochs)} "
                             f"of the trial's {trial_epochs}; a phase needs at least 1 epoch")
    if not phases[-1].selectable:
        raise UsageError(f"strategy {where!r}: its last phase must be selectable (the model it ends with is a "
                         f"candidate for the best epoch)")


def _resolved_text(epochs: Any, trial_epochs: int) -> str:
    if isinstance(epochs, float) and math.isfinite(epochs):
        return f"{round(epochs * trial_epochs)} epoch(s)"
    return "not a number of epochs"


def regroup_after_surgery(model: nn.Module, group_by_id: Mapping[int, str]) -> dict[str, str]:
    """Parameter name -> group for a model that surgery may have changed. A parameter that existed before keeps
    its group (wrapping renames it, e.g. ``conv.weight`` -> ``conv.base_layer.weight``); a new one (an adapter)
    joins the group of the nearest enclosing module that holds parameters which existed before."""
    group_of: dict[str, str] = {}
    for name, param in model.named_parameters():
        if id(param) in group_by_id:
            group_of[name] = group_by_id[id(param)]
            continue
        parts = name.split(".")[:-1]
        while True:
            owner = model.get_submodule(".".join(parts)) if parts else model
            known = [group_by_id[id(p)] for p in owner.parameters() if id(p) in group_by_id]
            if known:
                group_of[name] = known[0]
                break
            if not parts:
                raise UsageError(f"model surgery added parameter {name!r} outside every backbone group; add "
                                 f"modules inside the backbone's existing modules")
            parts.pop()
    return group_of


def _selector(select: Any) -> Callable[[ParamRef], bool] | None:
    if select is None:
        return None
    if isinstance(select, str):
        pattern = re.compile(select)
        return lambda ref: pattern.search(ref.name) is not None
    if callable(select):
        return select
    raise UsageError(f"a phase's select must be a predicate over tlbench.ParamRef or a regex string, got {select!r}")


def apply_phase(model: nn.Module, group_of: Mapping[str, str], group_names: Sequence[str], phase: Phase,
                weight_decay: float, head_group: str = "head") -> AppliedPhase:
    """Make ``phase`` the model's training state: everything from an earlier phase is undone first."""
    params = dict(model.named_parameters())
    missing = set(params) - set(group_of)
    if missing:
        raise RuntimeError(f"parameters left out of the backbone's groups: {sorted(missing)[:3]}")
    select = _selector(phase.select)
    owners = {f"{prefix}.{n}" if prefix else n: module for prefix, module in model.named_modules()
              for n, _ in module.named_parameters(recurse=False)}
    blocks = parameter_blocks(list(params), group_of, head_group)
    seen = [b for b in dict.fromkeys(blocks.values()) if b != head_group]
    order = {block: index for index, block in enumerate(seen + [head_group])}
    refs = {name: ParamRef(name, param, owners[name], group_of[name], blocks[name], order[blocks[name]], len(order))
            for name, param in params.items()}
    trainable_names = set()
    for name, param in params.items():
        group = group_of[name]
        train = group in phase.learning_rates and (select is None or bool(select(refs[name])))
        param.requires_grad_(train)
        if train:
            trainable_names.add(name)
    if not trainable_names:
        raise UsageError(f"phase {phase.name or '(unnamed)'} selects no parameter to train in groups "
                         f"{list(phase.learning_rates)}; check its select")

    unpin_all(model)
    _pin_frozen_subtrees(model, "", trainable_names)
    recalibrate: list[_BatchNorm] = []
    for module in model.modules():
        if not isinstance(module, _BatchNorm) or is_pinned(module) or not _in_trainable(module):
            continue
        if phase.batchnorm == "frozen":
            pin_eval(module)
        elif phase.batchnorm == "recalibrate":
            recalibrate.append(module)

    optimizer_groups = []
    for group in group_names:
        lr = phase.learning_rates.get(group)
        if lr is None:
            continue
        names = [n for n, g in group_of.items() if g == group and n in trainable_names]
        decay = [params[n] for n in names if not _no_decay(n, params[n])]
        no_decay = [params[n] for n in names if _no_decay(n, params[n])]
        for tag, members, wd in (("decay", decay, weight_decay), ("no_decay", no_decay, 0.0)):
            if not members:  # every group exists from the start, so schedulers and checkpoints see a fixed layout
                continue
            if phase.lr_scale is None:
                optimizer_groups.append({"params": members, "lr": lr, "weight_decay": wd, "name": f"{group}/{tag}"})
                continue
            by_scale: dict[float, list[nn.Parameter]] = {}
            for name in (n for n in names if (_no_decay(n, params[n])) == (tag == "no_decay")):
                by_scale.setdefault(_lr_scale(phase.lr_scale, refs[name]), []).append(params[name])
            for scale, scaled in by_scale.items():  # AdamW decays by lr * wd: wd / scale keeps the decay as it was
                optimizer_groups.append({"params": scaled, "lr": lr * scale, "weight_decay": wd / scale,
                                         "name": f"{group}/{tag}" + ("" if scale == 1 else f"@{scale:.6g}")})
    trainable = sum(params[n].numel() for n in trainable_names)
    return AppliedPhase(
        optimizer_groups=optimizer_groups,
        trainable_groups=[g for g in group_names if any(group_of[n] == g for n in trainable_names)],
        trainable_names=trainable_names,
        head_only=all(group_of[n] == head_group for n in trainable_names),
        recalibrate=recalibrate, trainable_params=trainable, total_params=sum(p.numel() for p in params.values()))


def parameter_blocks(names: Sequence[str], group_of: Mapping[str, str], head_group: str = "head") -> dict[str, str]:
    """Parameter name -> its block: the name up to its second numeric part (``blocks.3.1`` in
    ``blocks.3.1.conv.weight``; ``layer2.0`` in ``layer2.0.conv1.weight``; ``blocks.3`` in a ViT's
    ``blocks.3.attn.qkv.weight``), or its group when the name has no numeric part; every head parameter is in the
    block named as the head group. Blocks are ordered as the model lists them, the head last."""
    blocks = {}
    for name in names:
        if group_of[name] == head_group:
            blocks[name] = head_group
            continue
        parts, numeric, cut = name.split(".")[:-1], 0, None
        for index, part in enumerate(parts):
            if part.isdigit():
                numeric += 1
                cut = index + 1
                if numeric == 2:
                    break
        blocks[name] = ".".join(parts[:cut]) if cut else group_of[name]
    return blocks


def _lr_scale(scale: Callable[[ParamRef], float], ref: ParamRef) -> float:
    value = scale(ref)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"lr_scale ({describe(scale)}) gave {value!r} for {ref.name}; it must be a number > 0")
    return float(value)


def apply_plan(backbone: Backbone, plan: TrainPlan, weight_decay: float) -> AppliedPhase:
    """A single-phase plan applied to an unmodified backbone (the classic strategies' case)."""
    (phase,) = plan.all_phases()
    check_phases([phase], backbone.group_names, 1, backbone.name)
    group_of = {name: group for group, names in backbone.groups for name in names}
    return apply_phase(backbone.model, group_of, backbone.group_names, phase, weight_decay)


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases and other 1-d parameters get no weight decay (timm's and most recipes' rule)."""
    return param.ndim <= 1 or name.endswith(".bias")


def _in_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False)) or not list(module.parameters(False))


def _pin_frozen_subtrees(module: nn.Module, prefix: str, trainable: set[str]) -> None:
    """Pin the largest subtrees whose parameters are all frozen; parameterless leaves follow their parent."""
    names = [f"{prefix}{n}" for n, _ in module.named_parameters()]
    if names and not any(n in trainable for n in names):
        pin_eval(module)
        return
    for child_name, child in module.named_children():
        _pin_frozen_subtrees(child, f"{prefix}{child_name}.", trainable)


@torch.no_grad()
def recalibrate_batchnorm(layers: Iterable[_BatchNorm], model: Callable[[torch.Tensor], Any],
                          batches: Iterable[torch.Tensor]) -> None:
    """Re-estimate running statistics of ``layers`` over ``batches`` (forward passes in train mode for these layers;
    nothing else changes), weighting each batch by its size so the mean is the mean over all the images, then
    restore their momentum."""
    layers = list(layers)
    if not layers:
        return
    momenta = {layer: layer.momentum for layer in layers}
    for layer in layers:
        layer.reset_running_stats()
    seen = 0
    for batch in batches:
        seen += len(batch)
        for layer in layers:
            layer.momentum = len(batch) / seen  # running = (seen - n)/seen * running + n/seen * batch statistic
        model(batch)
    for layer, momentum in momenta.items():
        layer.momentum = momentum
