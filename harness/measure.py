"""Honest measurements: synchronised timers, per-trial peak memory, FLOPs from torch's own counter, environment."""
from __future__ import annotations

import copy
import functools
import os
import platform
import resource
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from tlbench import version
from tlbench.cpu_threads import openmp_record


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates wall time of timed regions; on CUDA each region ends with a synchronize."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0
        self._start: float | None = None

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - (self._start or 0.0)


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def resident_set_kib() -> int:
    """This process's resident set now (KiB): Linux's VmRSS, elsewhere the peak so far (ru_maxrss)."""
    current = _rss_kib("VmRSS")
    return current if current is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class PeakMemory:
    """Peak memory of one trial. CUDA: max allocated / reserved after a reset. CPU: the process's peak resident set
    during the trial (Linux resets the high-water mark through /proc/self/clear_refs; elsewhere ru_maxrss) minus
    ``baseline_kib`` — the worker process's resident set after its imports — so the figure is what the trial needed
    in its worker, data and features included, whatever ran before it there. Without a baseline: growth during
    the trial only (what memory earlier trials freed to the allocator is reused unseen, so this is a lower bound)."""

    def __init__(self, device: torch.device, baseline_kib: int | None = None):
        self.device = device
        self.baseline_kib = baseline_kib
        self.result: dict[str, Any] = {}

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base_allocated = torch.cuda.memory_allocated(self.device)
        else:
            self._hwm_reset = False
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self._hwm_reset = True
            except OSError:
                pass
            self._rss_start = _rss_kib("VmRSS") or 0
            self._maxrss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: Any) -> None:
        mib = 1024 * 1024
        if self.device.type == "cuda":
            self.result = {
                "kind": "cuda",
                "max_allocated_mib": torch.cuda.max_memory_allocated(self.device) / mib,
                "max_reserved_mib": torch.cuda.max_memory_reserved(self.device) / mib,
                "baseline_allocated_mib": self._base_allocated / mib,
            }
            self.result["peak_mib"] = self.result["max_allocated_mib"]
        else:
            hwm = _rss_kib("VmHWM") if self._hwm_reset else None
            if hwm is not None:
                start, how = self._rss_start, "VmHWM after clear_refs"
                self.result["peak_rss_mib"] = hwm / 1024  # the whole process, shared data included
            else:
                hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                start, how = self._maxrss_start, "ru_maxrss (a lower bound)"
            if self.baseline_kib is not None:
                start, how = self.baseline_kib, how + " minus the worker's resident set after imports"
                self.result["baseline_mib"] = self.baseline_kib / 1024
            else:
                how += " minus the resident set at the trial's start"
            self.result.update({"kind": "cpu-rss", "peak_mib": max(0, hwm - start) / 1024, "how": how})


# How the FLOPs in a record were counted (``metrics.flops_method``). Records without the field were counted by
# torch.utils.flop_counter's own formulas, whose convolution backward ignores ``groups``: the grad-weight term of
# a grouped convolution is counted ``groups`` times too large (a depthwise conv's backward by about channels/2).
FLOPS_METHOD = ("torch.utils.flop_counter with tlbench's convolution_backward formula (groups counted; "
                "multiply-adds x 2, padding included, bias and elementwise ops not counted)")
OLD_FLOPS_METHOD = "torch.utils.flop_counter (convolution backward counted as dense; records before the fix)"


def conv_forward_flop_count(x_shape: Any, w_shape: Any, out_shape: Any, transposed: bool) -> int:
    """2 x multiply-adds of one (possibly grouped) convolution: every output (for a transposed convolution: every
    input) position of every batch element meets one weight tensor's worth of taps — ``w_shape`` is
    (C_out, C_in / groups, *k) (transposed: (C_in, C_out / groups, *k)), so groups are already in the weight."""
    spatial = (x_shape if transposed else out_shape)[2:]
    count = 2 * int(x_shape[0])
    for size in list(w_shape) + list(spatial):
        count *= int(size)
    return count


@dataclass(frozen=True)
class ConvolutionBackward:
    """One ``aten.convolution_backward`` call as torch's FLOP counter passes it (tensors as their shapes), its
    arguments named and ordered as in the op's schema."""

    grad_output: Any
    input: Any
    weight: Any
    bias_sizes: Any
    stride: Any
    padding: Any
    dilation: Any
    transposed: bool
    output_padding: Any
    groups: Any
    output_mask: Any

    def flops(self) -> int:
        """Grad input and grad weight each take exactly the forward's multiply-adds (grad input is the transposed
        convolution of grad_out with the same weight; grad weight correlates the input with grad_out, group by
        group). torch's own formula computes grad weight as a convolution whose "input channels" are the batch,
        over all C_in x C_out channel pairs, which counts a grouped convolution ``groups`` times (a depthwise one:
        C times) too much."""
        x_shape, w_shape = self.input, self.weight
        output_spatial = x_shape if self.transposed else self.grad_output  # the positions the forward's taps run over
        forward = conv_forward_flop_count(x_shape, w_shape, [x_shape[0], 0, *list(output_spatial)[2:]],
                                          self.transposed)
        return forward * (int(bool(self.output_mask[0])) + int(bool(self.output_mask[1])))


def conv_backward_flop(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """The FLOP formula for aten.convolution_backward in torch.utils.flop_counter's calling convention: the op's
    arguments as it was called (``args``, ``kwargs``: :class:`ConvolutionBackward`'s fields) and its outputs'
    shapes (``out_shape``, not needed)."""
    return ConvolutionBackward(*args, **kwargs).flops()


FLOP_FORMULAS = {torch.ops.aten.convolution_backward: conv_backward_flop}


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter with the corrected convolution backward (see ``FLOPS_METHOD``)."""
    return FlopCounterMode(display=False, custom_mapping=dict(FLOP_FORMULAS))


def forward_flops(model: torch.nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example`` (count from torch.utils.flop_counter; eval mode, no grad)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), flop_counter() as counter:
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def train_step_flops(model: torch.nn.Module, example: torch.Tensor, num_classes: int) -> int:
    """FLOPs of one forward + backward on ``example``, counted on a copy so the real model is untouched."""
    clone = copy.deepcopy(model)
    clone.train()
    # Dropout in the copy draws from the global generator: fork it, so counting FLOPs never changes training.
    with torch.random.fork_rng(devices=[example.device] if example.device.type == "cuda" else []), \
            flop_counter() as counter:
        logits = clone(example)
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.zeros(len(example), dtype=torch.long,
                                                                                device=example.device))
        if loss.requires_grad:
            loss.backward()
    del clone
    return int(counter.get_total_flops())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def processor() -> dict[str, Any]:
    """The CPU that ran: its model name, its logical cores (and how many this process may use), and the
    instruction set torch's CPU kernels dispatch to. The same seed gives different numbers on another processor
    (differences of the size of seed noise), so every record says which one it ran on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": cpu_model_name(), "cpu_count": os.cpu_count(), "cpu_usable": usable,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@functools.lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """``model name`` from /proc/cpuinfo (Linux), the brand string on macOS, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Processor") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    import timm  # deferred: heavy (~0.7 s), only for the environment record; `import tlbench` does not load it

    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "tlbench": version.__version__,
        "protocol_version": version.PROTOCOL_VERSION,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        **processor(),
        "git_commit": _git_commit(),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        # how idle OpenMP threads wait, who chose it (tlbench, or the user's own variables) and why: issue 28
        "openmp": openmp_record(),
    }
