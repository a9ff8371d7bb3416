"""One full fine-tune throughput check: train images/s, peak memory and MFU of a torchvision model (ResNet-50 by
default) at a given resolution and batch, bf16 autocast + channels_last on CUDA — what ``gpu_check.sh`` runs first.

MFU = (training FLOPs per image, counted by ``torch.utils.flop_counter`` on one forward + backward) x (images/s) /
(the GPU's peak dense bf16 rate). The peak comes from ``PEAK_BF16_TFLOPS``, looked up by the device name
(``torch.cuda.get_device_name``), or from ``--peak-tflops``; without either, MFU is reported as unknown.

Runs on a CPU too (``--device cpu --dry-run``: a tiny model, a few steps, no bf16), so everything but the GPU
itself is tested in the unit tests (tests/test_gpu_check.py).

    python benchmarks/gpu_check.py --device cuda --model resnet50 --image-size 224 --batch-size 128 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Peak dense (no sparsity) bf16 tensor-core throughput in TFLOPS, from NVIDIA's data sheets. Matched in order
# against the lower-cased device name; the first key contained in it wins (so "h100 pcie" before "h100").
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("h200", 989.4),       # H200 SXM (same tensor cores as H100 SXM)
    ("h100 pcie", 756.0),  # H100 PCIe
    ("h100 nvl", 835.0),   # H100 NVL (per GPU)
    ("h100", 989.4),       # H100 SXM5
    ("gh200", 989.4),      # Grace Hopper
    ("b200", 2250.0),      # B200 (dense)
    ("a100", 312.0),       # A100 SXM4 / PCIe, 40 or 80 GB
    ("l40s", 362.1),       # L40S
    ("l4", 121.0),         # L4
    ("a10", 125.0),        # A10 (not A10G, which is not in NVIDIA's public sheets)
]


def peak_bf16_tflops(device_name: str) -> float | None:
    """The table's peak for this device name, or None when it is not in the table (e.g. a GPU without bf16)."""
    name = device_name.lower()
    if "a10g" in name:
        return None
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def build_model(name: str, num_classes: int, weights: str | None) -> nn.Module:
    """A torchvision classification model with a fresh ``num_classes`` head: the ImageNet weights from a local
    file when given (offline), random weights otherwise (throughput does not depend on the values)."""
    model = torchvision.models.get_model(name, weights=None)
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    head_name = "fc" if hasattr(model, "fc") else "classifier"
    head = getattr(model, head_name)
    last = head if isinstance(head, nn.Linear) else head[-1]
    new = nn.Linear(last.in_features, num_classes)
    if isinstance(head, nn.Linear):
        setattr(model, head_name, new)
    else:
        head[-1] = new
    return model


def train_step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one forward + backward on (x, y), counted by torch.utils.flop_counter (matmuls and convolutions)
    with tlbench's corrected convolution backward (torch's own counts a grouped conv's grad weight ``groups``
    times; ResNet-50 has no grouped conv, so its count is the same either way)."""
    try:
        from tlbench.measure import flop_counter
    except ImportError:  # run without tlbench installed: torch's counter (right for dense convolutions)
        flop_counter = lambda: FlopCounterMode(display=False)  # noqa: E731
    with flop_counter() as counter:
        nn.functional.cross_entropy(model(x).float(), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def measure(model_name: str = "resnet50", image_size: int = 224, batch_size: int = 128, steps: int = 30,
            warmup_steps: int = 10, device: str = "cuda", amp: bool = True, channels_last: bool = True,
            num_classes: int = 10, weights: str | None = None, peak_tflops: float | None = None) -> dict[str, Any]:
    """Full fine-tune steps (AdamW, all parameters train) on random images; the warm-up steps are excluded from
    the timing and recorded."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes, weights).to(dev)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev).contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    dtype = torch.bfloat16 if amp else None

    def context():
        return torch.autocast(dev.type, dtype=dtype) if amp else torch.autocast(dev.type, enabled=False)

    with context():
        flops_per_step = train_step_flops(model, x, y)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> None:
        with context():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    model.train()
    start = time.perf_counter()
    for _ in range(warmup_steps):
        step()
    sync()
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    images_per_s = steps * batch_size / seconds
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = peak_tflops if peak_tflops else (peak_bf16_tflops(device_name) if dev.type == "cuda" else None)
    achieved = flops_per_step * steps / seconds
    result = {
        "model": model_name, "weights": weights or "random", "image_size": image_size, "batch_size": batch_size,
        "device": device_name, "amp": "bf16" if amp else "off", "channels_last": channels_last,
        "timed_steps": steps, "warmup": {"steps": warmup_steps, "seconds": warmup_seconds},
        "seconds": seconds, "train_images_per_s": images_per_s,
        "train_gflops_per_image": flops_per_step / batch_size / 1e9,
        "achieved_tflops": achieved / 1e12,
        "peak_bf16_tflops": peak, "peak_source": ("--peak-tflops" if peak_tflops else
                                                  "PEAK_BF16_TFLOPS table" if peak else "unknown"),
        "mfu": achieved / (peak * 1e12) if peak else None,
        "torch": torch.__version__, "torchvision": torchvision.__version__,
    }
    if dev.type == "cuda":
        result["peak_memory_mib"] = {"max_allocated": torch.cuda.max_memory_allocated(dev) / 2**20,
                                     "max_reserved": torch.cuda.max_memory_reserved(dev) / 2**20}
    return result


def summary(result: dict[str, Any]) -> str:
    mfu = f"{100 * result['mfu']:.1f}% of {result['peak_bf16_tflops']:g} TFLOPS" if result["mfu"] else "unknown"
    memory = result.get("peak_memory_mib", {}).get("max_allocated")
    return (f"{result['model']} {result['image_size']} px, batch {result['batch_size']}, {result['amp']}, "
            f"channels_last={result['channels_last']} on {result['device']}: {result['train_images_per_s']:.0f} "
            f"train img/s, peak memory {f'{memory:.0f} MiB' if memory is not None else 'n/a'}, "
            f"{result['train_gflops_per_image']:.2f} GFLOPs per image (fwd+bwd), MFU {mfu}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default=None, help="local torchvision state dict (default: random weights)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak dense bf16 TFLOPS")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--dry-run", action="store_true",
                        help="a smoke test of this script: resnet18, 32 px, batch 4, 2+1 steps, no bf16")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("Error: --device cuda but CUDA is not available; run on a GPU machine or use --device cpu --dry-run",
              file=sys.stderr)
        return 2
    settings = dict(model_name=args.model, image_size=args.image_size, batch_size=args.batch_size,
                    steps=args.steps, warmup_steps=args.warmup_steps, device=args.device, amp=not args.no_amp,
                    channels_last=not args.no_channels_last, weights=args.weights, peak_tflops=args.peak_tflops)
    if args.dry_run:
        settings.update(model_name="resnet18", image_size=32, batch_size=4, steps=2, warmup_steps=1, amp=False)
    result = measure(**settings)
    print(summary(result), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
