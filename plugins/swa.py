"""``swa``: Stochastic Weight Averaging (Izmailov, Podoprikhin, Garipov, Vetrov and Wilson, "Averaging Weights
Leads to Wider Optima and Better Generalization", UAI 2018); ``average=ema`` keeps an exponential moving average
of the weights instead (Polyak averaging as in timm's ``ModelEmaV2``).

Full fine-tuning at ``lr``; after epoch ``floor(start * epochs)`` (``start=0.5``: the second half of training, a
common fine-tuning setting) the weights at every epoch's end enter an equal-weight average
(``torch.optim.swa_utils.AveragedModel``). With ``average=ema`` every step updates ``ema = decay * ema +
(1 - decay) * w`` (``decay=0.999``, ``get_ema_multi_avg_fn``). After training the averaged weights replace the
model's; with ``batchnorm=train`` the BatchNorm statistics are then re-estimated on the training images
(``torch.optim.swa_utils.update_bn``: the paper's step); with the default ``frozen`` policy they are the pretrained
statistics and need none. The record gives the validation top-1 of the best epoch's and of the averaged weights.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from tlbench import Callback, Strategy, TrainingContext, TrainPlan, UsageError, hookimpl, linear_axis, log_axis


class WeightAverage(Callback):
    """The running average of the model's parameters: per epoch from ``start_epoch`` (SWA) or per step (EMA)."""

    def __init__(self, average: str, start: float, decay: float, update_bn_stats: bool):
        self.average, self.start, self.decay, self.update_bn_stats = average, start, decay, update_bn_stats
        self.averaged: AveragedModel | None = None
        # the per-epoch average only reads the weights as epochs end: swa's training is full's, and a run with
        # both computes it once (tlbench.shared_phases); the EMA reads them at every step
        self.reads_epoch_ends_only = average == "swa"

    def __repr__(self) -> str:
        return (f"WeightAverage(average={self.average!r}, start={self.start}, decay={self.decay}, "
                f"update_bn={self.update_bn_stats})")

    def _update(self, model: torch.nn.Module) -> None:
        if self.averaged is None:
            fn = get_ema_multi_avg_fn(self.decay) if self.average == "ema" else None
            self.averaged = AveragedModel(model, multi_avg_fn=fn)  # a copy; the first update takes its weights
        self.averaged.update_parameters(model)

    def on_step_end(self, ctx: TrainingContext, optimizer: torch.optim.Optimizer) -> None:
        if self.average == "ema":
            self._update(ctx.model)

    def on_epoch_end(self, ctx: TrainingContext, epoch: int) -> None:
        if self.average == "swa" and epoch > math.floor(self.start * ctx.epochs):  # the epochs after start x epochs
            self._update(ctx.model)

    def __call__(self, ctx: TrainingContext) -> dict[str, Any]:
        """The after-training step: the averaged weights replace the model's."""
        best = ctx.evaluate()
        if self.averaged is None:
            return {"averaged": 0, "val_top1_best_epoch": best}
        with torch.no_grad():
            for target, source in zip(ctx.model.parameters(), self.averaged.module.parameters()):
                target.copy_(source)
        if self.update_bn_stats:
            update_bn(ctx.train_batches(), ctx.model)
        return {"average": self.average, "averaged": int(self.averaged.n_averaged), "val_top1_best_epoch": best,
                "val_top1_averaged": ctx.evaluate(), "batchnorm_updated": self.update_bn_stats}


class SWA(Strategy):
    name = "swa"
    description = ("Izmailov et al. UAI 2018: full fine-tuning at lr, the weights averaged over the epochs from "
                   "start x epochs (0.5) on; average=ema: per-step EMA (decay 0.999)")
    defaults = {"lr": 1e-4, "average": "swa", "start": 0.5, "decay": 0.999, "batchnorm": "frozen"}
    search_space = {"lr": log_axis(1e-5, 1e-1), "start": linear_axis(0.25, 0.75, 0.25, low=0.0, high=0.9)}

    def validate(self, hparams: Mapping[str, Any], protocol: Mapping[str, Any] | None = None) -> None:
        super().validate(hparams, protocol)
        if hparams["average"] not in ("swa", "ema"):
            raise UsageError(f"swa.average must be swa or ema, got {hparams['average']!r}")
        for key in ("start", "decay"):
            value = hparams[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise UsageError(f"swa.{key} must be a number in [0, 1), got {value!r}; "
                                 f"fix it with --set swa.{key}=<value>")

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        average = WeightAverage(hparams["average"], float(hparams["start"]), float(hparams["decay"]),
                                hparams["batchnorm"] == "train")
        return TrainPlan({g: hparams["lr"] for g in group_names}, hparams["batchnorm"], callbacks=(average,),
                         after_training=average, record={"start": hparams["start"]})


@hookimpl
def register_strategies(register):
    register(SWA)
