"""``llrd``: layer-wise learning-rate decay (BEiT, Bao et al. ICLR 2022; MAE, He et al. CVPR 2022).

The head trains at ``lr``; each earlier group at ``decay`` times the rate of the group after it, so group ``i`` of
``G`` (stem = 0, head = G-1) gets ``lr * decay ** (G - 1 - i)``: the scale timm's ``param_groups_layer_decay``
applies. The groups are the backbone's ordered groups, which for timm models come from the model's own
``group_matcher(coarse=True)`` metadata (stem, one group per stage, head). ``llrd-block`` decays per block instead
(timm's ``coarse=False``, BEiT's per-layer decay): every parameter trains at ``lr * decay ** (B - 1 - b)`` for its
block ``b`` of ``B`` (``tlbench.ParamRef.block_index``: the stem's parameters first, the head last), through the
plan's ``lr_scale``. (A strategy of its own rather than an ``llrd`` setting, so that ``llrd``'s defaults, and with
them its trial keys and records, stay as they were.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from tlbench import ParamRef, Strategy, TrainPlan, UsageError, hookimpl, linear_axis, log_axis


def layer_decay_rates(group_names: Sequence[str], lr: float, decay: float) -> dict[str, float]:
    last = len(group_names) - 1
    return {group: lr * decay ** (last - index) for index, group in enumerate(group_names)}


@dataclass(frozen=True)
class BlockDecay:
    decay: float

    def __call__(self, ref: ParamRef) -> float:
        return self.decay ** (ref.num_blocks - 1 - ref.block_index)


class LayerwiseLRDecay(Strategy):
    name = "llrd"
    description = "BEiT/MAE layer-wise LR decay: head at lr, each earlier group (stage) at decay x the next one"
    defaults = {"lr": 1e-3, "decay": 0.75, "batchnorm": "frozen"}
    granularity = "group"
    search_space = {"lr": log_axis(1e-5, 1e-1), "decay": linear_axis(0.55, 0.95, 0.1, low=0.05, high=1.0)}

    def validate(self, hparams: Mapping[str, Any], protocol: Mapping[str, Any] | None = None) -> None:
        super().validate(hparams, protocol)
        decay = hparams["decay"]
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise UsageError(f"llrd.decay must be a number in (0, 1], got {decay!r}; "
                             f"fix it with --set llrd.decay=<value>")

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        if self.granularity == "block":
            return TrainPlan({g: hparams["lr"] for g in group_names}, hparams["batchnorm"],
                             lr_scale=BlockDecay(float(hparams["decay"])))
        return TrainPlan(layer_decay_rates(group_names, hparams["lr"], hparams["decay"]), hparams["batchnorm"])


class BlockwiseLRDecay(LayerwiseLRDecay):
    name = "llrd-block"
    description = ("llrd per block (BEiT's per-layer decay): head at lr, each earlier block at decay x the next "
                   "one, through lr_scale over ParamRef.block_index")
    defaults = {"lr": 1e-3, "decay": 0.85, "batchnorm": "frozen"}
    search_space = {"lr": log_axis(1e-5, 1e-1), "decay": linear_axis(0.55, 0.95, 0.1, low=0.05, high=1.0)}
    granularity = "block"


@hookimpl
def register_strategies(register):
    register(LayerwiseLRDecay)
    register(BlockwiseLRDecay)
