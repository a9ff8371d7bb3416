"""A tiny generated dataset for tests and smoke runs: no files, instant, and learnable.

Class k is a colour (hue k / num_classes) painted as stripes at angle k * 180 / num_classes degrees, with a random
stripe frequency, phase and brightness per image plus pixel noise: a tiny CNN beats chance within a couple of
epochs, and nothing is solvable by a single pixel. Each split is generated from its own seed, so the images are a
function of the options only.
"""
from __future__ import annotations

import colorsys
import math
from typing import Any, Mapping

import torch

from tlbench import ImageSplits, UsageError, hookimpl
from tlbench.digests import digest_of
from tlbench.splits import check_common_options, merged_options, require_int, require_memory

SPLIT_NAMES = ("train", "val", "test")
GENERATOR_VERSION = 1  # part of the fingerprint: bump when make_images changes, so cached splits are not reused


def make_images(count: int, num_classes: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images (uint8, (N, 3, size, size)) with balanced labels in a seeded random order."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(count) % num_classes)[torch.randperm(count, generator=generator)]
    palette = torch.tensor([colorsys.hsv_to_rgb(k / num_classes, 0.8, 0.9) for k in range(num_classes)])
    angle = labels.double() * math.pi / num_classes
    frequency = 2 * math.pi * (2 + 2 * torch.rand(count, generator=generator, dtype=torch.float64)) / size
    phase = 2 * math.pi * torch.rand(count, generator=generator, dtype=torch.float64)
    brightness = 0.7 + 0.3 * torch.rand(count, generator=generator, dtype=torch.float64)
    rows, columns = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                                   indexing="ij")
    along = columns[None] * torch.cos(angle)[:, None, None] + rows[None] * torch.sin(angle)[:, None, None]
    stripes = 0.5 + 0.5 * torch.sin(frequency[:, None, None] * along + phase[:, None, None])  # (N, H, W) in 0..1
    colour = palette.double()[labels] * brightness[:, None]  # (N, 3)
    images = colour[:, :, None, None] * (0.25 + 0.75 * stripes[:, None])
    images = images + 0.08 * torch.randn(images.shape, generator=generator, dtype=torch.float64)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels.long()


class Synthetic:
    name = "synthetic"
    description = "generated coloured stripes, one hue and angle per class: instant and learnable, for tests"
    takes_argument = False
    defaults: Mapping[str, Any] = {
        "num_classes": 4, "train_size": 64, "val_size": 32, "test_size": 32, "split_seed": 0,
        "storage_size": 32, "augment": "none", "image_size": 32,
    }

    def validate(self, options: Mapping[str, Any]) -> dict[str, Any]:
        options = merged_options(self.defaults, options)
        check_common_options(options, {"train_size": (1, ""), "val_size": (1, ""), "test_size": (1, "")})
        require_int(options, "num_classes", 2)
        if options["num_classes"] > options["train_size"]:
            raise UsageError(f"data.num_classes ({options['num_classes']}) is above data.train_size "
                             f"({options['train_size']}): every class needs a training image; lower "
                             f"data.num_classes or raise data.train_size")
        size = options["storage_size"] or 32
        largest = max(options[f"{split}_size"] for split in SPLIT_NAMES)
        total = sum(options[f"{split}_size"] for split in SPLIT_NAMES)
        # make_images holds about 11 float64 planes per image of its split at once; the uint8 splits stay
        require_memory(largest * size * size * 8 * 11 + total * 3 * size * size,
                       f"synthetic data ({total} images at {size} px)",
                       "lower data.train_size/val_size/test_size or data.storage_size")
        return options

    def fingerprint(self, argument: str | None, options: Mapping[str, Any]) -> str:
        return digest_of(self.name, self.validate(options), GENERATOR_VERSION)

    def load(self, argument: str | None, options: Mapping[str, Any]) -> ImageSplits:
        options = self.validate(options)
        size = options["storage_size"] or 32
        generated = {}
        for index, split in enumerate(SPLIT_NAMES):
            seed = options["split_seed"] * len(SPLIT_NAMES) + index  # distinct per split and per split_seed
            generated[split] = make_images(options[f"{split}_size"], options["num_classes"], size, seed)
        classes = [f"pattern{k}" for k in range(options["num_classes"])]
        source = {"dataset": self.name, "generated": "coloured stripes, see tlbench.plugins.synthetic",
                  "split_seed": options["split_seed"], "storage_size": size}
        return ImageSplits(*generated["train"], *generated["val"], *generated["test"], classes, source)


@hookimpl
def register_datasets(register):
    register(Synthetic())
