"""Which device a run uses: ``--device`` parsed against what tlbench supports (CPU and CUDA), so an unsupported or
malformed device is one line before anything runs, not a traceback or a failed record later."""
from __future__ import annotations

import re

import torch

from tlbench.types import UsageError

SUPPORTED = "cpu, cuda, cuda:N"
_DEVICE = re.compile(r"(?P<type>cpu|cuda)(?::(?P<index>\d+))?")


def check_device(requested: str | None) -> None:
    """Only the spelling: a driver whose trials run elsewhere (Ray, Slurm) need not have the device itself."""
    if requested is None:
        return
    match = _DEVICE.fullmatch(requested.strip().lower())
    if match is None or (match["type"] == "cpu" and match["index"] not in (None, "0")):
        raise UsageError(f"--device {requested!r} is not supported; use one of: {SUPPORTED} "
                         f"(or leave --device out for CUDA when available, else the CPU)")


def pick_device(requested: str | None) -> torch.device:
    """``None``: CUDA when available, else the CPU. Otherwise ``cpu`` or ``cuda[:N]`` with N an existing GPU;
    anything else (``tpu``, ``mps``, ``meta``, ``cuda:x``, ``cpu:1``) is a UsageError naming the supported ones.
    MPS and XLA are refused on purpose: the trainer's timing, memory measurement and autocast are written for CPU
    and CUDA only."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(requested)
    match = _DEVICE.fullmatch(requested.strip().lower())
    assert match is not None
    if match["type"] == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {requested} was asked for but CUDA is not available; use --device cpu")
    index = int(match["index"]) if match["index"] is not None else None
    if index is not None and index >= torch.cuda.device_count():
        raise UsageError(f"--device {requested}: there are {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); pick one of those")
    return torch.device("cuda", index) if index is not None else torch.device("cuda")
