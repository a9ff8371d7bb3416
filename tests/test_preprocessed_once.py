"""Bit-identical speed-ups of the end-to-end phases (issue 28): unaugmented training and validation images are
preprocessed once per trial instead of once per epoch, and AdamW runs its foreach implementation. Neither may change
a number: the records are compared with the same trials computed the old way."""
from __future__ import annotations

import pytest
import torch
from conftest import synthetic_grid
from torch import nn

from tlbench.preprocess import DevicePreprocessor
from tlbench.trainer import ADAMW_OPTIONS
from tlbench.types import Preprocessing

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SETTINGS = ["epochs=2", "data.train_size=64", "data.val_size=32", "data.test_size=32", "batch_size=16",
            "full.lr=0.01", "l2-sp.lr=0.01", "wise-ft.lr=0.01", "mixup.lr=0.01"]
COMPARED = ("val_top1", "val_top5", "test_top1", "test_top5", "best_epoch", "best_epoch_val_top1", "steps",
            "history")


def results(record) -> dict:
    metrics = record.metrics.to_json_dict()
    return {k: metrics.get(k) for k in COMPARED} | {"after_training": record.plan.get("after_training")}


# full: one plain phase; l2-sp: a loss term; wise-ft: an after-training step that scores validation; mixup: a batch
# transform that mixes the prepared images
@pytest.mark.parametrize("strategy", ["full", "l2-sp", "wise-ft", "mixup"])
def test_images_preprocessed_once_give_the_same_record_as_batch_by_batch(tmp_path, tiny_backbone, strategy):
    once = synthetic_grid(tmp_path / "once", tiny_backbone, [strategy], SETTINGS)[strategy]
    each = synthetic_grid(tmp_path / "each", tiny_backbone, [strategy], [*SETTINGS, "prefix_cache_mib=0"])[strategy]
    assert once.runtime["preprocessed_once"]["used"] is True
    assert once.runtime["preprocessed_once"]["splits"] == ["train", "val"]
    assert once.runtime["preprocessed_once"]["mib"] > 0
    assert each.runtime["preprocessed_once"] == {"used": False, "reason": "prefix_cache_mib is 0"}
    assert results(once) == results(each)


def test_augmented_training_images_are_still_preprocessed_every_epoch(tmp_path, tiny_backbone):
    record = synthetic_grid(tmp_path, tiny_backbone, ["full"], [*SETTINGS, "data.augment=flip"])["full"]
    assert record.runtime["preprocessed_once"]["splits"] == ["val"]
    assert "augmented" in record.runtime["preprocessed_once"]["train"]


def test_preprocessed_splits_beyond_the_budget_are_not_kept(tmp_path, tiny_backbone):
    record = synthetic_grid(tmp_path, tiny_backbone, ["full"], [*SETTINGS, "prefix_cache_mib=0.001"])["full"]
    used = record.runtime["preprocessed_once"]
    assert used["used"] is False and "would not fit prefix_cache_mib (0.001)" in used["reason"]


def test_trials_on_cached_features_or_prefix_activations_do_not_preprocess_the_images(tmp_path, tiny_backbone):
    records = synthetic_grid(tmp_path, tiny_backbone, ["frozen"], SETTINGS)
    assert records["frozen"].runtime["preprocessed_once"] is None
    assert records["frozen"].runtime["optimizer"] == {"class": "torch.optim.AdamW", **ADAMW_OPTIONS}


def test_an_images_preprocessing_does_not_depend_on_its_batch():
    """What preprocessing once relies on: an image comes out the same, bit for bit, whichever batch it is in."""
    prep = DevicePreprocessor(Preprocessing(32, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                            crop_pct=0.875), channels_last=True)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 3, 28, 28), dtype=torch.uint8, generator=generator)
    whole = torch.cat([prep.eval(images[lo:lo + 32]) for lo in range(0, 96, 32)])
    for _ in range(5):
        index = torch.randperm(96, generator=generator)[:16]
        assert torch.equal(prep.eval(images[index]), whole[index])


def test_adamw_foreach_updates_the_weights_exactly_as_the_per_tensor_loop():
    """What the foreach implementation relies on: the same weights and moments, bit for bit, as torch's CPU
    default (weight decay in one group, none in another, a changing learning rate)."""
    def train(options):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
        model(torch.zeros(1, 3, 8, 8))
        groups = [{"params": list(model[:2].parameters()), "lr": 1e-2, "weight_decay": 0.05},
                  {"params": list(model[4].parameters()), "lr": 3e-2, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=1e-2, **options)
        generator = torch.Generator().manual_seed(1)
        for step in range(6):
            x, y = torch.randn(4, 3, 8, 8, generator=generator), torch.randint(0, 5, (4,), generator=generator)
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            for group in optimizer.param_groups:
                group["lr"] *= 0.7
        return model.state_dict(), optimizer.state_dict()["state"]

    (weights, moments), (weights_loop, moments_loop) = train(ADAMW_OPTIONS), train({"foreach": False})
    assert ADAMW_OPTIONS["foreach"] is True
    assert all(torch.equal(weights[k], weights_loop[k]) for k in weights)
    assert all(torch.equal(moments[i][k], moments_loop[i][k]) for i in moments for k in moments[i])
