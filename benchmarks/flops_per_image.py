"""Training FLOPs per image of tf_efficientnet_lite0 (10 classes, 64 px): torch.utils.flop_counter as it ships
(a grouped or depthwise convolution's backward counted as dense), with tlbench's convolution_backward formula
(what records use), and the forward pass alone. Run: ``python benchmarks/flops_per_image.py`` (random weights:
FLOPs do not depend on them)."""
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from tlbench import measure

BATCH = 4


def train_step(counter: FlopCounterMode, model: torch.nn.Module, images: torch.Tensor) -> float:
    """GFLOP per image of one forward + backward under ``counter``."""
    with counter:
        loss = torch.nn.functional.cross_entropy(model(images), torch.zeros(len(images), dtype=torch.long))
        loss.backward()
    return counter.get_total_flops() / len(images) / 1e9


def main() -> None:
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    images = torch.randn(BATCH, 3, 64, 64)
    print(f"torch's counter as it ships: {train_step(FlopCounterMode(display=False), model, images):.4f} "
          f"GFLOP per training image")
    print(f"with tlbench's convolution_backward: {train_step(measure.flop_counter(), model, images):.4f} "
          f"GFLOP per training image")
    print(f"forward pass: {measure.forward_flops(model, images[:1]) / 1e9:.4f} GFLOP per image")


if __name__ == "__main__":
    main()
