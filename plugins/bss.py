"""``bss``: Batch Spectral Shrinkage (Chen, Wang, Fu, Long and Wang, "Catastrophic Forgetting Meets Negative
Transfer: Batch Spectral Shrinkage for Safe Transfer Learning", NeurIPS 2019).

Full fine-tuning with ``eta * sum_{i=1..k} sigma_{-i}^2`` added to the loss: the ``k`` smallest singular values of
the batch's pooled-feature matrix (the head's input, N x D), squared. The paper's defaults: ``k=1``,
``eta=0.001``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from tlbench import StepContext, Strategy, TrainPlan, UsageError, hookimpl, log_axis


@dataclass(frozen=True)
class SpectralShrinkage:
    eta: float
    k: int

    def __call__(self, step: StepContext) -> torch.Tensor:
        features = step.features.float().flatten(1)
        singular = torch.linalg.svdvals(features)  # descending
        return self.eta * singular[-self.k:].square().sum()


class BSS(Strategy):
    name = "bss"
    description = ("Chen et al. NeurIPS 2019: full fine-tuning at lr plus eta * (sum of the k smallest squared "
                   "singular values of the batch's features); k=1, eta=0.001")
    defaults = {"lr": 1e-4, "eta": 0.001, "k": 1, "batchnorm": "frozen"}
    search_space = {"lr": log_axis(1e-5, 1e-1), "eta": log_axis(1e-4, 1e-2, 10)}

    def validate(self, hparams: Mapping[str, Any], protocol: Mapping[str, Any] | None = None) -> None:
        super().validate(hparams, protocol)
        eta, k = hparams["eta"], hparams["k"]
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta < float("inf"):
            raise UsageError(f"bss.eta must be a finite number >= 0, got {eta!r}; fix it with --set bss.eta=<value>")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UsageError(f"bss.k must be an integer >= 1, got {k!r}; fix it with --set bss.k=<N>")

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        return TrainPlan({g: hparams["lr"] for g in group_names}, hparams["batchnorm"],
                         step_loss=SpectralShrinkage(float(hparams["eta"]), hparams["k"]))


@hookimpl
def register_strategies(register):
    register(BSS)
