"""The five classic transfer strategies (../shared/seed/lesson.txt), as an ordinary plugin.

Learning rates are the lesson's. The BatchNorm policy is an explicit hyper-parameter of every strategy that trains
BatchNorm layers. Pretrained strategies keep the pretrained running statistics ("frozen"): chosen on the validation
split, where it beat "train" and "recalibrate" for full fine-tuning by ~10 points and tied for partial (docs/protocol.md). Scratch uses the standard train mode: its initial statistics mean nothing.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from tlbench import Strategy, TrainPlan, UsageError, hookimpl, log_axis


def _stages(group_names: Sequence[str]) -> list[str]:
    """Every group but the head, stem first."""
    return [g for g in group_names if g != "head"]


class Scratch(Strategy):
    name = "scratch"
    description = "random init, everything trains (the lesson's lower bound)"
    pretrained = False
    defaults = {"lr": 1e-3, "batchnorm": "train"}
    search_space = {"lr": log_axis(1e-5, 1e-1)}

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        return TrainPlan({g: hparams["lr"] for g in group_names}, hparams["batchnorm"])


class Frozen(Strategy):
    name = "frozen"
    description = "pretrained backbone frozen (BatchNorm statistics too), only a new head trains"
    defaults = {"head_lr": 1e-3}
    search_space = {"head_lr": log_axis(1e-5, 1e-1)}

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        return TrainPlan({"head": hparams["head_lr"]}, "frozen")


class Partial(Strategy):
    name = "partial"
    description = "head + the last N stages train (unfreeze=N), the rest frozen as in 'frozen'"
    defaults = {"unfreeze": 1, "head_lr": 1e-3, "lr": 1e-4, "batchnorm": "frozen"}
    search_space = {"unfreeze": [1, 2], "lr": log_axis(1e-5, 1e-1)}

    def validate(self, hparams: Mapping[str, Any]) -> None:
        super().validate(hparams)
        n = hparams["unfreeze"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise UsageError(f"partial.unfreeze must be an integer >= 1, got {n!r}; "
                             f"fix it with --set partial.unfreeze=<N>")

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        stages = _stages(group_names)
        n = hparams["unfreeze"]
        if n > len(stages):
            raise UsageError(f"partial.unfreeze={n} is more than the {len(stages)} stages this backbone has "
                             f"({', '.join(stages)}); use --set partial.unfreeze=<1..{len(stages)}>")
        rates = {g: hparams["lr"] for g in stages[len(stages) - n:]}
        rates["head"] = hparams["head_lr"]
        return TrainPlan(rates, hparams["batchnorm"])


class Full(Strategy):
    name = "full"
    description = "everything trains at one small learning rate"
    defaults = {"lr": 1e-4, "batchnorm": "frozen"}
    search_space = {"lr": log_axis(1e-5, 1e-1)}

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        return TrainPlan({g: hparams["lr"] for g in group_names}, hparams["batchnorm"])


class DiscriminativeLR(Strategy):
    name = "discriminative-lr"
    description = ("everything trains; backbone at backbone_lr, new head at head_lr; stage_decay=true spreads "
                   "the rates geometrically from stem to head")
    defaults = {"backbone_lr": 1e-5, "head_lr": 1e-3, "stage_decay": False, "batchnorm": "frozen"}
    search_space = {"backbone_lr": log_axis(1e-6, 1e-2), "head_lr": log_axis(1e-4, 1e-1)}

    def validate(self, hparams: Mapping[str, Any]) -> None:
        super().validate(hparams)
        if not isinstance(hparams["stage_decay"], bool):
            raise UsageError(f"discriminative-lr.stage_decay must be true or false, got {hparams['stage_decay']!r}")

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        stages = _stages(group_names)
        low, high = hparams["backbone_lr"], hparams["head_lr"]
        if hparams["stage_decay"] and len(stages) > 1:
            # stem gets backbone_lr, each later stage a constant factor more, the head head_lr
            ratio = (high / low) ** (1 / len(stages))
            rates = {g: low * ratio ** i for i, g in enumerate(stages)}
        else:
            rates = {g: low for g in stages}
        rates["head"] = high
        return TrainPlan(rates, hparams["batchnorm"])


@hookimpl
def register_strategies(register):
    for strategy in (Scratch, Frozen, Partial, Full, DiscriminativeLR):
        register(strategy)
