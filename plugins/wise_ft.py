"""``wise-ft``: weight-space ensembling of the pretrained and the fine-tuned backbone (Wortsman et al., "Robust
fine-tuning of zero-shot models", CVPR 2022).

Full fine-tuning as ``full``; then, with the best epoch's weights restored, the backbone is set to
``(1 - a) * w0 + a * w_ft`` for each ``a`` in ``alphas`` (the new head keeps its fine-tuned weights: its starting
point is random), every candidate is scored on the validation split, and the best one (ties: the first listed)
is kept and recorded. The test split is scored once, on that model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from tlbench import Strategy, TrainingContext, TrainPlan, UsageError, hookimpl, log_axis


@dataclass(frozen=True)
class InterpolateTowardsPretrained:
    alphas: tuple[float, ...]

    def __call__(self, context: TrainingContext) -> dict[str, Any]:
        finetuned = {k: v.detach().clone() for k, v in context.model.state_dict().items()}
        head = {n for n, g in context.group_of.items() if g == "head"}
        mixed_keys = [k for k, v in finetuned.items() if k not in head and v.is_floating_point()]

        def mix(alpha: float) -> None:
            state = dict(finetuned)
            for key in mixed_keys:
                state[key] = torch.lerp(context.initial[key].to(finetuned[key].dtype), finetuned[key], alpha)
            context.model.load_state_dict(state)

        scores = {}
        for alpha in self.alphas:
            mix(alpha)
            scores[alpha] = context.evaluate()
        chosen = max(self.alphas, key=lambda a: (scores[a], -self.alphas.index(a)))
        mix(chosen)
        return {"alpha": chosen, "val_top1_by_alpha": {str(a): s for a, s in scores.items()},
                "mixed": "backbone parameters and floating-point buffers; the head keeps its fine-tuned weights"}


class WiseFT(Strategy):
    name = "wise-ft"
    description = ("Wortsman et al. CVPR 2022: fine-tune everything at lr, then mix backbone weights "
                   "(1-a)*pretrained + a*fine-tuned, a chosen on validation from alphas")
    defaults = {"lr": 1e-4, "alphas": [0.0, 0.25, 0.5, 0.75, 1.0], "batchnorm": "frozen"}
    search_space = {"lr": log_axis(1e-5, 1e-1)}

    def validate(self, hparams: Mapping[str, Any], protocol: Mapping[str, Any] | None = None) -> None:
        super().validate(hparams, protocol)
        alphas = hparams["alphas"]
        if not isinstance(alphas, list) or not alphas or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a <= 1 for a in alphas):
            raise UsageError(f"wise-ft.alphas must be a non-empty list of numbers in [0, 1], got {alphas!r}; "
                             f"fix it with --set 'wise-ft.alphas=[0,0.5,1]'")

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        return TrainPlan({g: hparams["lr"] for g in group_names}, hparams["batchnorm"],
                         after_training=InterpolateTowardsPretrained(tuple(float(a) for a in hparams["alphas"])))


@hookimpl
def register_strategies(register):
    register(WiseFT)
