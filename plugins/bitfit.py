"""``bitfit``: only the bias terms and the new head train (Ben Zaken et al., "BitFit", ACL 2022).

Every parameter named ``*.bias`` counts, the shifts (beta) of normalisation layers included; in a convolutional
network whose convolutions have no bias (EfficientNet, ResNet) those shifts are the only biases there are. Norm
scales (gamma) and all weights stay frozen; BatchNorm running statistics are frozen by default.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from tlbench import ParamRef, Strategy, TrainPlan, hookimpl, log_axis


def bias_or_head(ref: ParamRef) -> bool:
    return ref.group == "head" or ref.is_bias


class BitFit(Strategy):
    name = "bitfit"
    description = "Ben Zaken et al. 2022: biases (norm shifts included) at lr and the new head at head_lr train"
    defaults = {"lr": 1e-3, "head_lr": 1e-3, "batchnorm": "frozen"}
    search_space = {"lr": log_axis(1e-5, 1e-1)}

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        rates = {group: hparams["lr"] for group in group_names} | {"head": hparams["head_lr"]}
        return TrainPlan(rates, hparams["batchnorm"], select=bias_or_head)


@hookimpl
def register_strategies(register):
    register(BitFit)
