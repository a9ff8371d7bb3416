"""``lp-ft``: linear probing, then full fine-tuning (Kumar et al., "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution", ICLR 2022).

Phase "probe" trains only the new head on the frozen backbone (on cached features when there is no augmentation,
so it costs one feature pass); phase "fine-tune" then trains everything at a small rate, starting from the probed
head, with a fresh optimizer and warm-up + cosine. The probe's epochs are logged but not selectable: the result
is always a fine-tuned model.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from tlbench import Phase, Strategy, TrainPlan, UsageError, hookimpl, log_axis


class LinearProbeThenFineTune(Strategy):
    name = "lp-ft"
    description = ("Kumar et al. ICLR 2022: probe the head on the frozen backbone (probe_epochs), then fine-tune "
                   "everything at lr from the probed head")
    defaults = {"probe_lr": 1e-3, "probe_epochs": 1.0, "lr": 1e-4, "batchnorm": "frozen"}
    search_space = {"lr": log_axis(1e-5, 1e-1)}

    def validate(self, hparams: Mapping[str, Any], protocol: Mapping[str, Any] | None = None) -> None:
        super().validate(hparams, protocol)
        length = hparams["probe_epochs"]
        if isinstance(length, bool) or not isinstance(length, (int, float)) or length <= 0:
            raise UsageError(f"lp-ft.probe_epochs must be an int (epochs) or a float (fraction of the trial's "
                             f"epochs) > 0, got {length!r}; fix it with --set lp-ft.probe_epochs=<value>")
        if protocol is not None and isinstance(length, float) and round(length * protocol["epochs"]) < 1:
            raise UsageError(f"lp-ft.probe_epochs={length} of {protocol['epochs']} epochs is less than one epoch; "
                             f"fix it with --set lp-ft.probe_epochs=<a larger fraction, or an int>")

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        return TrainPlan(phases=[
            Phase({"head": hparams["probe_lr"]}, "frozen", hparams["probe_epochs"], name="probe", selectable=False),
            Phase({g: hparams["lr"] for g in group_names}, hparams["batchnorm"], name="fine-tune"),
        ])


@hookimpl
def register_strategies(register):
    register(LinearProbeThenFineTune)
