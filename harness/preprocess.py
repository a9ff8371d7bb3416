"""On-device, whole-batch preprocessing: uint8 images in, normalized float batches out.

Evaluation follows the weights' recipe (resize the short side to ``input_size / crop_pct`` with their interpolation,
centre-crop ``input_size``, normalize with their mean/std) using torchvision's transforms v2 functional ops, which
take batched tensors on any device. Training uses the same recipe unless the dataset asks for augmentation:
"flip" adds a random horizontal flip per image, "crop-flip" replaces resize+crop with a random resized crop per
image (``torchvision.ops.roi_align`` crops and resizes every image of the batch to its own box in one call).
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from tlbench.types import Preprocessing

AUGMENTATIONS = ("none", "flip", "crop-flip")
CROP_SCALE = (0.25, 1.0)  # area fraction of a random resized crop; milder than ImageNet's 0.08 for small images
CROP_RATIO = (3 / 4, 4 / 3)


class DevicePreprocessor:
    def __init__(self, preprocessing: Preprocessing, augment: str = "none", channels_last: bool = False,
                 dtype: torch.dtype = torch.float32):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        self.prep = preprocessing
        self.augment = augment
        self.channels_last = channels_last
        self.dtype = dtype
        self.size = preprocessing.input_size
        self.resize_size = int(math.floor(self.size / preprocessing.crop_pct))
        self.interpolation = InterpolationMode(preprocessing.interpolation)
        self._mean_std: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def describe(self) -> dict:
        return {**self.prep.to_record(), "resize_size": self.resize_size, "augment": self.augment,
                "crop_scale": CROP_SCALE if self.augment == "crop-flip" else None}

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = TF.normalize(x, list(self.prep.mean), list(self.prep.std))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.dtype)

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        x = TF.to_dtype(images, torch.float32, scale=True)
        x = TF.resize(x, [self.resize_size], interpolation=self.interpolation, antialias=True)
        x = TF.center_crop(x, [self.size, self.size])
        return self._finish(x)

    def train(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.augment == "none":
            return self.eval(images)
        if self.augment == "flip":
            x = TF.to_dtype(images, torch.float32, scale=True)
            x = TF.resize(x, [self.resize_size], interpolation=self.interpolation, antialias=True)
            x = TF.center_crop(x, [self.size, self.size])
        else:
            x = self._random_resized_crop(TF.to_dtype(images, torch.float32, scale=True), generator)
        flip = torch.rand(len(x), generator=generator, device=generator.device if generator else "cpu") < 0.5
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        return self._finish(x)

    def _random_resized_crop(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, height, width = x.shape
        gen_device = generator.device if generator is not None else torch.device("cpu")
        rand = torch.rand(n, 4, generator=generator, device=gen_device).to(x.device, torch.float32)
        area = height * width * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * rand[:, 0])
        log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * rand[:, 1])
        crop_w = torch.sqrt(area * ratio).clamp(max=width)
        crop_h = torch.sqrt(area / ratio).clamp(max=height)
        x0 = (width - crop_w) * rand[:, 2]
        y0 = (height - crop_h) * rand[:, 3]
        boxes = torch.stack([torch.arange(n, device=x.device, dtype=torch.float32), x0, y0, x0 + crop_w,
                             y0 + crop_h], dim=1)
        # sampling_ratio=2: each output pixel averages a 2x2 grid of bilinear samples (mild anti-aliasing).
        return roi_align(x, boxes, output_size=(self.size, self.size), spatial_scale=1.0, sampling_ratio=2,
                         aligned=True)
