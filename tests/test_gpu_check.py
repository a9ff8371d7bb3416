"""The prepared GPU check (benchmarks/gpu_check.py): everything but the GPU, on a CPU with a tiny model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402


def test_dry_run_on_cpu_reports_throughput_flops_and_no_mfu(tmp_path):
    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--dry-run", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["model"] == "resnet18" and result["timed_steps"] == 2 and result["warmup"]["steps"] == 1
    assert result["train_images_per_s"] > 0 and result["mfu"] is None and result["peak_source"] == "unknown"
    # resnet18: 1.82 GMACs forward at 224 px = 3.64 GFLOPs, x (32/224)^2 = 0.074 at 32 px; forward + backward
    # is about 3x the forward
    assert 0.19 < result["train_gflops_per_image"] < 0.25
    assert "train img/s" in done.stdout and "MFU unknown" in done.stdout


def test_mfu_uses_the_given_peak():
    result = gpu_check.measure("resnet18", 32, 2, steps=1, warmup_steps=0, device="cpu", amp=False,
                               channels_last=False, peak_tflops=1.0)
    assert result["mfu"] == pytest.approx(result["achieved_tflops"] / 1.0)
    assert result["peak_source"] == "--peak-tflops"


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989.4), ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.1), ("NVIDIA A10G", None),
    ("Tesla V100-SXM2-16GB", None), ("Tesla T4", None),
])
def test_peak_bf16_table_lookup_by_device_name(name, peak):
    assert gpu_check.peak_bf16_tflops(name) == peak


def test_cuda_without_a_gpu_is_one_error_line_and_exit_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("Error: ") and len(done.stderr.splitlines()) == 1
