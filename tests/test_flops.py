"""FLOPs are counted right for dense, grouped and depthwise convolutions, forward and backward, against counts made
by enumerating every multiply-add one at a time; records say how their FLOPs were counted, and older records are
labelled."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tlbench.leaderboard import leaderboard_rows
from tlbench.measure import FLOPS_METHOD, flop_counter, forward_flops, train_step_flops


def _out_size(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


def brute_force_forward(n, c_in, c_out, size, k, stride, padding, groups) -> int:
    """2 x one multiply-add per (image, output channel, output position, input channel of its group, tap)."""
    out = _out_size(size, k, stride, padding)
    per_group = c_in // groups
    count = 0
    for _b, co, _oh, _ow in itertools.product(range(n), range(c_out), range(out), range(out)):
        group = co // (c_out // groups)
        for _ci in range(group * per_group, (group + 1) * per_group):
            count += k * k  # the taps, padded positions included (the convolution multiplies them by zero)
    return 2 * count


def brute_force_grad_input(n, c_in, c_out, size, k, stride, padding, groups) -> int:
    """Every input element receives grad_out x weight from each output position whose window covers it (padding
    0: every window position is a real input), summed over the output channels of its group."""
    assert padding == 0
    out = _out_size(size, k, stride, padding)
    per_out_group = c_out // groups
    count = 0
    for _b, ci, ih, iw in itertools.product(range(n), range(c_in), range(size), range(size)):
        for kh, kw in itertools.product(range(k), range(k)):
            oh, ow = ih - kh, iw - kw
            if oh % stride or ow % stride or not (0 <= oh // stride < out and 0 <= ow // stride < out):
                continue
            count += per_out_group  # one multiply-add per output channel of the group
    return 2 * count


def brute_force_grad_weight(n, c_in, c_out, size, k, stride, padding, groups) -> int:
    """Every weight element (c_out, c_in / groups, k, k) sums input x grad_out over images and output positions."""
    out = _out_size(size, k, stride, padding)
    weights = c_out * (c_in // groups) * k * k
    return 2 * weights * n * out * out


CASES = [  # (n, c_in, c_out, size, k, stride, groups)
    (2, 4, 6, 7, 3, 1, 1),  # dense
    (2, 4, 8, 6, 3, 1, 2),  # grouped
    (1, 8, 8, 7, 3, 2, 4),  # grouped, strided
    (2, 6, 6, 6, 3, 1, 6),  # depthwise
    (1, 8, 16, 5, 3, 1, 8),  # depthwise with a channel multiplier
    (3, 5, 5, 8, 5, 2, 5),  # depthwise 5x5, strided
]


def _count(conv: nn.Conv2d, x: torch.Tensor, counter) -> dict[str, int]:
    with counter as mode:
        conv(x).sum().backward()
    return {str(op).split(".")[-1]: flops for op, flops in mode.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("n, c_in, c_out, size, k, stride, groups", CASES)
@pytest.mark.parametrize("needs", ["input", "weight", "both"])
def test_conv_flops_match_counts_made_one_multiply_add_at_a_time(n, c_in, c_out, size, k, stride, groups, padding,
                                                                 needs):
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, groups=groups, bias=False)
    conv.weight.requires_grad_(needs in ("weight", "both"))
    x = torch.randn(n, c_in, size, size, requires_grad=needs in ("input", "both"))
    counts = _count(conv, x, flop_counter())
    shape = (n, c_in, c_out, size, k, stride, padding, groups)
    assert counts["convolution"] == brute_force_forward(*shape)
    expected = 0
    if needs in ("input", "both"):
        # grad input, counted like the forward (padded taps included); with padding 0 every tap is a real input
        expected += brute_force_grad_input(*shape) if padding == 0 else brute_force_forward(*shape)
    if needs in ("weight", "both"):
        expected += brute_force_grad_weight(*shape)
    assert counts["convolution_backward"] == expected


def test_torch_alone_overcounts_the_depthwise_backward_and_counts_dense_right():
    """What the fix is for: torch's own formula counts grad weight of a grouped conv ``groups`` times."""
    depthwise = nn.Conv2d(192, 192, 3, padding=1, groups=192, bias=False)
    x = torch.randn(1, 192, 8, 8, requires_grad=True)
    old = _count(depthwise, x, FlopCounterMode(display=False))["convolution_backward"]
    new = _count(depthwise, x, flop_counter())["convolution_backward"]
    assert new == 2 * brute_force_forward(1, 192, 192, 8, 3, 1, 1, 192)
    assert old / new == pytest.approx((1 + 192) / 2)  # the 96.5x of the issue
    dense = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    x = torch.randn(1, 8, 8, 8, requires_grad=True)
    assert _count(dense, x, FlopCounterMode(display=False)) == _count(dense, x, flop_counter())


def test_a_depthwise_separable_block_is_the_sum_of_its_hand_counts():
    """Forward + backward of a MobileNet-style block (its input needs no gradient, as an image does not) =
    the layer-by-layer hand count; linear layers as 2 x in x out per image and pass."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    x = torch.randn(2, 3, 16, 16)
    stem = brute_force_forward(2, 3, 8, 16, 3, 2, 1, 1)  # 8x8 out
    depthwise = brute_force_forward(2, 8, 8, 8, 3, 1, 1, 8)
    pointwise = brute_force_forward(2, 8, 16, 8, 1, 1, 0, 1)
    linear = 2 * 2 * 16 * 4
    forward = stem + depthwise + pointwise + linear
    # backward: grad weight for every layer, grad input for all but the stem (the image needs no gradient)
    backward = stem + 2 * depthwise + 2 * pointwise + 2 * linear
    assert forward_flops(model, x) == forward
    assert train_step_flops(model, x, 4) == forward + backward


def _record(make_record, flops_method, strategy="full", key="0123456789abcdef0123", gflops_s=35.0):
    metrics = {"val_top1": 0.6, "test_top1": 0.5, "best_epoch": 1, "epochs": 2, "wall_s": 1.0,
               "time_s": {"total": 1.0}, "train_images_per_s": 190.0, "train_gflops_total": 100.0}
    if flops_method:
        metrics |= {"flops_method": flops_method, "train_gflops_per_s": gflops_s}
    record = make_record(key=key, strategy=strategy)
    record["metrics"] = metrics
    record["trial"]["group"] = strategy * 10
    return record


def test_the_leaderboard_labels_train_flops_counted_the_old_way(make_record):
    records = [_record(make_record, None, "old", key="a" * 20), _record(make_record, FLOPS_METHOD, "new")]
    rows = {r["strategy"]: r for r in leaderboard_rows(records, ("train_ips", "train_gflops_s", "train_gflops"))}
    assert rows["old"]["train GFLOPs"] == "100 (old count)" and rows["old"]["train GFLOP/s"] == ""
    assert rows["new"]["train GFLOPs"] == "100" and rows["new"]["train GFLOP/s"] == "35.0"


def test_records_say_how_flops_were_counted(tiny_backbone, fast_settings, tmp_path):
    import json

    from click.testing import CliRunner

    from tlbench.cli import cli

    results = tmp_path / "results"
    result = CliRunner().invoke(cli, ["run", "-d", "synthetic", "-b", tiny_backbone, "-s", "full",
                                      "--results-dir", str(results), *fast_settings, "--set", "epochs=1"])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(p.read_text()) for p in results.glob("*.json")]
    metrics = record["metrics"]
    assert metrics["flops_method"] == FLOPS_METHOD
    assert metrics["train_gflops_per_s"] > 0 and metrics["train_gflops_total"] > 0
