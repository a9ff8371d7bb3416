"""``llrd``: layer-wise learning-rate decay (BEiT, Bao et al. ICLR 2022; MAE, He et al. CVPR 2022).

The head trains at ``lr``; each earlier group at ``decay`` times the rate of the group after it, so group ``i`` of
``G`` (stem = 0, head = G-1) gets ``lr * decay ** (G - 1 - i)``: the scale timm's ``param_groups_layer_decay``
applies. The groups are the backbone's ordered groups, which for timm models come from the model's own
``group_matcher(coarse=True)`` metadata (stem, one group per stage, head).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from tlbench import Strategy, TrainPlan, UsageError, hookimpl


def layer_decay_rates(group_names: Sequence[str], lr: float, decay: float) -> dict[str, float]:
    last = len(group_names) - 1
    return {group: lr * decay ** (last - index) for index, group in enumerate(group_names)}


class LayerwiseLRDecay(Strategy):
    name = "llrd"
    description = "BEiT/MAE layer-wise LR decay: head at lr, each earlier group (stage) at decay x the next one"
    defaults = {"lr": 1e-3, "decay": 0.75, "batchnorm": "frozen"}
    search_space = {"lr": [3e-4, 1e-3, 3e-3], "decay": [0.65, 0.75, 0.85]}

    def validate(self, hparams: Mapping[str, Any], protocol: Mapping[str, Any] | None = None) -> None:
        super().validate(hparams, protocol)
        decay = hparams["decay"]
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise UsageError(f"llrd.decay must be a number in (0, 1], got {decay!r}; "
                             f"fix it with --set llrd.decay=<value>")

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        return TrainPlan(layer_decay_rates(group_names, hparams["lr"], hparams["decay"]), hparams["batchnorm"])


@hookimpl
def register_strategies(register):
    register(LayerwiseLRDecay)
