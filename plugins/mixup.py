"""``mixup``: full fine-tuning on convex combinations of image pairs and of their labels (Zhang, Cisse, Dauphin and
Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018); ``cutmix=true`` pastes a box of the paired
image instead (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
Features", ICCV 2019).

Each batch draws ``lam ~ Beta(alpha, alpha)`` and a permutation from the trial's generator; Mixup gives
``lam * x + (1 - lam) * x[perm]``, CutMix replaces a box of area ``1 - lam`` by ``x[perm]``'s (``lam`` then the
kept area exactly); the targets are ``lam * y + (1 - lam) * y[perm]``, so the task loss is soft-target
cross-entropy. Defaults: ``alpha=0.2`` (the paper's ImageNet setting), ``alpha=1.0`` for CutMix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from tlbench import Strategy, TrainPlan, UsageError, hookimpl, log_axis


@dataclass(frozen=True)
class MixBatch:
    alpha: float
    cutmix: bool = False

    def __call__(self, images: torch.Tensor, targets: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        lam = float(rng.beta(self.alpha, self.alpha))
        perm = torch.from_numpy(rng.permutation(len(images))).to(images.device)
        if self.cutmix:
            height, width = images.shape[-2:]
            cut_h, cut_w = round(height * math.sqrt(1 - lam)), round(width * math.sqrt(1 - lam))
            cy, cx = int(rng.integers(height)), int(rng.integers(width))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
            mixed = images.clone()
            mixed[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (height * width)  # the area actually kept
        else:
            mixed = lam * images + (1 - lam) * images[perm]
        return mixed, lam * targets + (1 - lam) * targets[perm]


class Mixup(Strategy):
    name = "mixup"
    description = ("Zhang et al. ICLR 2018: full fine-tuning at lr on lam*x+(1-lam)*x' with mixed soft labels, "
                   "lam ~ Beta(alpha, alpha) (alpha=0.2); cutmix=true: CutMix (Yun et al. ICCV 2019)")
    defaults = {"lr": 1e-4, "alpha": 0.2, "cutmix": False, "batchnorm": "frozen"}
    search_space = {"lr": log_axis(1e-5, 1e-1), "alpha": log_axis(0.1, 1.6, 2, digits=2)}

    def validate(self, hparams: Mapping[str, Any], protocol: Mapping[str, Any] | None = None) -> None:
        super().validate(hparams, protocol)
        alpha = hparams["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
            raise UsageError(f"mixup.alpha must be a finite number > 0, got {alpha!r}; "
                             f"fix it with --set mixup.alpha=<value>")
        if not isinstance(hparams["cutmix"], bool):
            raise UsageError(f"mixup.cutmix must be true or false, got {hparams['cutmix']!r}")

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        return TrainPlan({g: hparams["lr"] for g in group_names}, hparams["batchnorm"],
                         batch_transform=MixBatch(float(hparams["alpha"]), hparams["cutmix"]))


@hookimpl
def register_strategies(register):
    register(Mixup)
