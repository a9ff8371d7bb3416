"""A strategy that acts on the batch: center loss (Wen et al., ECCV 2016). Full fine-tuning plus lam/2 * mean
||f_i - c_{y_i}||^2 on the pooled features f; after each step every centre seen moves towards its batch mean."""
import torch

from tlbench import Callback, StepContext, Strategy, TrainPlan, hookimpl, log_grid


class CenterLoss(Callback):
    def __init__(self, lam: float, alpha: float):
        self.lam, self.alpha, self.centers, self.batch = lam, alpha, None, None

    def __call__(self, step: StepContext) -> torch.Tensor:  # the step loss: what this step saw
        features = step.features.float()
        if self.centers is None:
            self.centers = torch.zeros(step.training.num_classes, features.shape[1], device=features.device)
        self.batch = (features.detach(), step.targets)
        return self.lam / 2 * (features - self.centers[step.targets]).square().sum(1).mean()

    def on_step_end(self, ctx, optimizer):  # after the optimizer step: move each centre seen in the batch
        features, labels = self.batch
        for label in labels.unique():
            mean = features[labels == label].mean(0)
            self.centers[label] += self.alpha * (mean - self.centers[label])


class CenterLossStrategy(Strategy):
    name = "center-loss"
    description = "Wen et al. ECCV 2016: full fine-tuning at lr plus lam/2 * ||f - c_y||^2 on pooled features"
    defaults = {"lr": 1e-4, "lam": 0.01, "alpha": 0.5, "batchnorm": "frozen"}
    search_space = {"lr": log_grid(1e-4), "lam": [0.001, 0.01, 0.1]}

    def plan(self, group_names, hparams):
        loss = CenterLoss(hparams["lam"], hparams["alpha"])
        return TrainPlan({g: hparams["lr"] for g in group_names}, hparams["batchnorm"], step_loss=loss,
                         callbacks=[loss])


@hookimpl
def register_strategies(register):
    register(CenterLossStrategy)
