"""A complete tlbench strategy plugin: train only the normalisation layers' affine parameters and the new head
(Frankle, Schwab and Morcos, "Training BatchNorm and Only BatchNorm", ICLR 2021)."""
from tlbench import ParamRef, Strategy, TrainPlan, hookimpl


def norm_or_head(ref: ParamRef) -> bool:
    return ref.group == "head" or ref.is_norm  # is_norm: BatchNorm, GroupNorm, LayerNorm (timm's too)


class NormTuning(Strategy):
    name = "norm-tuning"
    description = "Frankle et al. 2021: only norm-layer scales and shifts (at lr) and the new head (at head_lr)"
    defaults = {"lr": 1e-3, "head_lr": 1e-3, "batchnorm": "frozen"}

    def plan(self, group_names, hparams):
        rates = {group: hparams["lr"] for group in group_names}
        rates["head"] = hparams["head_lr"]
        return TrainPlan(rates, hparams["batchnorm"], select=norm_or_head)


@hookimpl
def register_strategies(register):
    register(NormTuning)
