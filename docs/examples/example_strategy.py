"""A strategy plugin with several phases: gradual unfreezing (Howard and Ruder, "Universal Language Model
Fine-tuning for Text Classification", ACL 2018). The head trains first, then the last stage joins, then everything."""
from tlbench import Phase, Strategy, TrainPlan, UsageError, hookimpl, log_grid


class GradualUnfreeze(Strategy):
    name = "gradual-unfreeze"
    description = "Howard & Ruder 2018: head, then head + last stage, then everything (lr; head at head_lr)"
    defaults = {"lr": 1e-4, "head_lr": 1e-3, "head_share": 0.25, "top_share": 0.25, "batchnorm": "frozen"}
    search_space = {"lr": log_grid(1e-4), "head_lr": [1e-3, 1e-2]}  # what `tlbench run --tune` tries

    def validate(self, hparams, protocol=None):
        super().validate(hparams, protocol)  # learning rates > 0, a known BatchNorm policy
        epochs = (protocol or {}).get("epochs", 8)
        for key in ("head_share", "top_share"):
            if round(hparams[key] * epochs) < 1:
                raise UsageError(f"{self.name}.{key}={hparams[key]} gives phase 0 of {epochs} epochs; "
                                 f"raise it with --set {self.name}.{key}=<fraction> or raise epochs")
        if hparams["head_share"] + hparams["top_share"] >= 1:
            raise UsageError(f"{self.name}: head_share + top_share must leave epochs for the last phase")

    def plan(self, group_names, hparams):
        lr, head_lr, bn = hparams["lr"], hparams["head_lr"], hparams["batchnorm"]
        last_stage = group_names[-2]  # groups run stem, stage1 ... stageN, head
        rest = 1.0 - hparams["head_share"] - hparams["top_share"]
        return TrainPlan(phases=[
            Phase({"head": head_lr}, bn, epochs=float(hparams["head_share"]), name="head"),
            Phase({last_stage: lr, "head": head_lr}, bn, epochs=float(hparams["top_share"]), name="top"),
            Phase({**{g: lr for g in group_names}, "head": head_lr}, bn, epochs=rest, name="all"),
        ], record={"paper": "Howard and Ruder, ACL 2018: gradual unfreezing"})


@hookimpl
def register_strategies(register):
    register(GradualUnfreeze)
