"""``delta``: feature-map regularisation towards the starting model (Li, Xiong, Wang, Huan, Guo and Zhu, "DELTA:
Deep Learning Transfer using Feature Map with Attention for Convolutional Networks", ICLR 2019).

Full fine-tuning with ``alpha * sum_j mean (FM_j(w, x) - FM_j(w0, x))^2`` (the mean over the batch and the map's
elements, so that ``alpha`` does not depend on a map's size; the paper sums over elements) over the outputs of the
backbone's stages (``layers``: every group between the stem and the head that one module holds; or a list of
module names / ``group:<name>``), ``FM_j(w0, x)`` from a frozen copy of the starting model, plus
``beta/2 * ||w||^2`` on the new head. ``attention=true`` weights each channel by a softmax over channels of the
reference feature map's mean energy (a cheap stand-in for the paper's supervised attention, which ablates each
channel through a classifier the new task does not have yet). Defaults: ``alpha=0.1`` (per element), the
paper's ``beta=0.01``, uniform weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from tlbench import StepContext, Strategy, TrainPlan, UsageError, hookimpl, log_axis


@dataclass(frozen=True)
class FeatureMapDistance:
    alpha: float
    beta: float
    attention: bool = False

    def __call__(self, step: StepContext) -> torch.Tensor:
        total = torch.zeros((), device=step.logits.device)
        for name, reference in step.reference.items():
            current = step.intermediate[name].float()
            distance = (current - reference.float()).square()
            if self.attention and distance.dim() == 4:  # N C H W: weight channels by the reference's energy
                weights = torch.softmax(reference.float().square().mean(dim=(0, 2, 3)), dim=0) * distance.shape[1]
                distance = distance * weights[None, :, None, None]
            total = total + distance.mean()
        head = [p for _, p in step.training.in_groups("head") if p.requires_grad]
        size = sum((p.float() ** 2).sum() for p in head) if head else 0.0
        return self.alpha * total + self.beta / 2 * size


def stage_layers(group_names: Sequence[str]) -> list[str]:
    return [f"group:{g}" for g in group_names[1:-1]]  # between the stem and the head


class Delta(Strategy):
    name = "delta"
    description = ("Li et al. ICLR 2019: full fine-tuning at lr plus alpha*||FM(w)-FM(w0)||^2 over the stages' "
                   "feature maps (a frozen copy of the starting model) and beta/2*||w||^2 on the head; alpha=0.1")
    defaults = {"lr": 1e-4, "alpha": 0.1, "beta": 0.01, "attention": False, "layers": "stages",
                "batchnorm": "frozen"}
    search_space = {"lr": log_axis(1e-5, 1e-1), "alpha": log_axis(1e-2, 1.0, 10)}
    protocol = {"weight_decay": 0.0}  # the penalties replace it, as in l2-sp

    def validate(self, hparams: Mapping[str, Any], protocol: Mapping[str, Any] | None = None) -> None:
        super().validate(hparams, protocol)
        for key in ("alpha", "beta"):
            value = hparams[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise UsageError(f"delta.{key} must be a finite number >= 0, got {value!r}; "
                                 f"fix it with --set delta.{key}=<value>")
        layers = hparams["layers"]
        if layers != "stages" and not (isinstance(layers, list) and layers and all(isinstance(x, str) for x in layers)):
            raise UsageError(f"delta.layers must be 'stages' or a list of module names, got {layers!r}")

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        layers = stage_layers(group_names) if hparams["layers"] == "stages" else list(hparams["layers"])
        return TrainPlan({g: hparams["lr"] for g in group_names}, hparams["batchnorm"],
                         step_loss=FeatureMapDistance(float(hparams["alpha"]), float(hparams["beta"]),
                                                      bool(hparams["attention"])),
                         feature_layers=layers, reference_layers=layers)


@hookimpl
def register_strategies(register):
    register(Delta)
