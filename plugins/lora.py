"""``lora``: low-rank adapters on a frozen backbone (Hu et al., "LoRA: Low-Rank Adaptation of Large Language
Models", ICLR 2022), injected with Hugging Face ``peft`` (the optional extra ``tlbench[peft]``).

``targets="auto"`` wraps the attention ``qkv`` projections when the model has them (timm ViTs, as in the paper's
attention-only setting), else every 1x1 convolution and linear layer but the head (EfficientNet's pointwise
convolutions). Another value is a regular expression matched against whole module names. Only the adapters (at
``lr``) and the new head (at ``head_lr``) train; the rest of the backbone, BatchNorm statistics included, is frozen.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from torch import nn

from tlbench import Backbone, Extra, ParamRef, Strategy, TrainPlan, UsageError, hookimpl, log_axis

INSTALL_HINT = Extra("peft", "LoRA adapters come from Hugging Face peft")


def adapter_or_head(ref: ParamRef) -> bool:
    return ref.group == "head" or ".lora_" in ref.name


def lora_targets(model: nn.Module, head: nn.Module, targets: str) -> list[str]:
    """Names of the modules to wrap: every supported layer (linear, 1x1 convolution) but the head."""
    head_ids = {id(m) for m in head.modules()}

    def supported(module: nn.Module) -> bool:
        if id(module) in head_ids:
            return False
        if isinstance(module, nn.Conv2d):
            return module.kernel_size == (1, 1) and module.groups == 1
        return isinstance(module, nn.Linear)

    layers = [(name, module) for name, module in model.named_modules() if supported(module)]
    if targets == "auto":
        attention = [name for name, _ in layers if name.rsplit(".", 1)[-1] == "qkv"]
        return attention or [name for name, _ in layers]
    pattern = re.compile(targets)
    return [name for name, _ in layers if pattern.fullmatch(name)]


@dataclass(frozen=True)
class InjectLoRA:
    rank: int
    alpha: float
    dropout: float
    targets: str

    def __call__(self, backbone: Backbone) -> dict[str, Any]:
        import peft  # deferred: optional (the peft extra)

        names = lora_targets(backbone.model, backbone.head, self.targets)
        if not names:
            raise UsageError(f"lora.targets={self.targets!r} matches no linear or 1x1 convolution layer of "
                             f"{backbone.name} (the head excluded); fix it with --set lora.targets=<regex>")
        config = peft.LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                                 target_modules=names, bias="none")
        peft.inject_adapter_in_model(config, backbone.model)
        return {"method": "peft.inject_adapter_in_model", "peft": peft.__version__, "rank": self.rank,
                "alpha": self.alpha, "scaling": self.alpha / self.rank, "dropout": self.dropout,
                "targets": self.targets, "wrapped_modules": names,
                "adapter_init": "peft default: A kaiming-uniform, B zeros (the model starts unchanged)"}


class LoRA(Strategy):
    name = "lora"
    description = ("Hu et al. ICLR 2022 via peft: rank-r adapters on qkv (ViTs) or 1x1 convs/linears (CNNs); "
                   "backbone frozen; adapters at lr, head at head_lr")
    defaults = {"rank": 8, "alpha": 16, "dropout": 0.0, "targets": "auto", "lr": 1e-3, "head_lr": 1e-3}
    search_space = {"lr": log_axis(1e-5, 1e-1), "rank": log_axis(2, 16, 2, low=1, integer=True)}
    requires = {"peft": INSTALL_HINT}

    def validate(self, hparams: Mapping[str, Any], protocol: Mapping[str, Any] | None = None) -> None:
        super().validate(hparams, protocol)
        rank, alpha, dropout = hparams["rank"], hparams["alpha"], hparams["dropout"]
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise UsageError(f"lora.rank must be an integer >= 1, got {rank!r}; fix it with --set lora.rank=<r>")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
            raise UsageError(f"lora.alpha must be a finite number > 0, got {alpha!r}; "
                             f"fix it with --set lora.alpha=<value>")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise UsageError(f"lora.dropout must be a number in [0, 1), got {dropout!r}")
        try:
            re.compile(hparams["targets"])
        except (re.error, TypeError) as exc:
            raise UsageError(f"lora.targets must be 'auto' or a regular expression, got {hparams['targets']!r} "
                             f"({exc})") from None

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        rates = {group: hparams["lr"] for group in group_names} | {"head": hparams["head_lr"]}
        surgery = InjectLoRA(hparams["rank"], hparams["alpha"], hparams["dropout"], hparams["targets"])
        return TrainPlan(rates, "frozen", select=adapter_or_head, surgery=surgery)


@hookimpl
def register_strategies(register):
    register(LoRA)
