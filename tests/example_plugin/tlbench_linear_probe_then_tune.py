"""A complete tlbench strategy plugin: train the head fast, the last stage slowly, the rest not at all."""
from tlbench import Strategy, TrainPlan, hookimpl


class HeadThenLastStage(Strategy):
    name = "head-last-stage"
    description = "head at head_lr, last stage at head_lr * stage_factor, BatchNorm statistics frozen"
    defaults = {"head_lr": 1e-3, "stage_factor": 0.1, "batchnorm": "frozen"}
    protocol = {"epochs": 6}  # this strategy's own schedule length (recorded like every setting)

    def plan(self, group_names, hparams):
        last_stage = [g for g in group_names if g != "head"][-1]
        return TrainPlan(
            {"head": hparams["head_lr"], last_stage: hparams["head_lr"] * hparams["stage_factor"]},
            batchnorm=hparams["batchnorm"],
        )


@hookimpl
def register_strategies(register):
    register(HeadThenLastStage)
