"""imagefolder stores decoded images at the size the network needs when that is smaller than 256 px."""
from __future__ import annotations

import pytest
from PIL import Image

from tlbench.plugins.imagefolder import ImageFolder
from tlbench.splits import storage_side_for


@pytest.mark.parametrize("image_size, augment, side", [
    (None, "crop-flip", 256),  # the backbone's own size is unknown to the dataset: 256 as before
    (64, "none", 74),  # eval resize 64 / 0.875 = 73.1
    (64, "flip", 74),
    (64, "crop-flip", 128),  # the smallest random crop (a quarter of the area) keeps 64 px a side
    (224, "none", 256),
    (300, "none", 256),  # never larger than 256
])
def test_storage_side_is_what_the_network_needs_at_most_256(image_size, augment, side):
    assert storage_side_for(image_size, augment, 256) == side


@pytest.mark.parametrize("options, side", [
    ({"image_size": 24, "augment": "none"}, 28),
    ({"image_size": 24, "augment": "crop-flip"}, 48),
    ({"image_size": 24, "augment": "none", "storage_size": 40}, 40),  # a given size is kept
])
def test_imagefolder_auto_storage_decodes_at_that_size_and_records_it(tmp_path, options, side):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(8):
            Image.new("RGB", (300, 200), (i * 20, 100, 50)).save(tmp_path / name / f"{i}.png")
    splits = ImageFolder().load(str(tmp_path), options)
    assert splits.train_images.shape[-2:] == (side, side)
    assert splits.source["storage_size"] == side
    assert splits.source["storage_size_setting"] == ("given" if "storage_size" in options else "auto")
