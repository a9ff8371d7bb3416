"""The new head's initialisation is a setting (`head_init`), recorded in every result: it changes the numbers."""
from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from tlbench.cli import cli
from tlbench.head_init import HEAD_INITS, final_linear, init_head
from tlbench.plan import PROTOCOL_DEFAULTS, Trial
from tlbench.types import UsageError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fresh_head(classes: int = 10) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(1280, classes)


def test_pytorch_leaves_the_head_as_built_and_draws_nothing():
    head = fresh_head()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    state = torch.random.get_rng_state()
    assert init_head(head, "pytorch", "as built") == "as built"
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())
    assert torch.equal(state, torch.random.get_rng_state())  # the trial's later random draws are unchanged


@pytest.mark.parametrize("classes", [2, 10, 37])
def test_fan_out_is_uniform_within_one_over_sqrt_classes_with_zero_bias(classes):
    head = fresh_head(classes)
    built_bound = 1 / math.sqrt(1280)
    assert head.weight.abs().max() <= built_bound  # nn.Linear's own init: +-1/sqrt(fan_in) = +-0.028
    text = init_head(head, "fan_out", "as built")
    bound = 1 / math.sqrt(classes)
    assert head.weight.abs().max() <= bound and head.weight.abs().max() > 0.9 * bound  # fills the range
    assert head.weight.detach().std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.count_nonzero(head.bias) == 0
    assert text.startswith("head_init=fan_out") and f"{bound:.4f}" in text and "as built" in text


def test_zeros_zeroes_weight_and_bias_and_fan_out_is_seeded():
    head = fresh_head()
    init_head(head, "zeros", "as built")
    assert torch.count_nonzero(head.weight) == 0 and torch.count_nonzero(head.bias) == 0
    draws = []
    for _ in range(2):
        head = fresh_head()
        torch.manual_seed(7)
        init_head(head, "fan_out", "")
        draws.append(head.weight.clone())
    assert torch.equal(*draws)


def test_the_final_linear_of_a_sequential_head_is_the_one_initialised():
    head = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    first = head[0].weight.clone()
    init_head(head, "zeros", "")
    assert torch.equal(head[0].weight, first) and torch.count_nonzero(head[2].weight) == 0
    assert final_linear(nn.Identity()) is None
    with pytest.raises(UsageError, match="needs an nn.Linear"):
        init_head(nn.Identity(), "fan_out", "")
    with pytest.raises(UsageError, match="head_init must be one of"):
        init_head(fresh_head(), "xavier", "")


def test_the_default_keeps_every_existing_trial_key():
    """Records written before the setting existed are still found: at its default it is not part of the key."""
    protocol = dict(PROTOCOL_DEFAULTS)
    trial = Trial("synthetic", "b", "full", 0, protocol, {"lr": 1e-4}, {})
    without = Trial("synthetic", "b", "full", 0, {k: v for k, v in protocol.items() if k != "head_init"},
                    {"lr": 1e-4}, {})
    assert PROTOCOL_DEFAULTS["head_init"] == "pytorch" and trial.key == without.key
    changed = Trial("synthetic", "b", "full", 0, {**protocol, "head_init": "fan_out"}, {"lr": 1e-4}, {})
    assert changed.key != trial.key


def test_head_init_is_recorded_and_changes_the_numbers(tmp_path, tiny_backbone):
    results = tmp_path / "results"
    runs = {}
    for how in HEAD_INITS:
        out = CliRunner().invoke(cli, ["run", "-q", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic",
                                       "--epochs", "1", "--set", f"head_init={how}", "--results-dir", results])
        assert out.exit_code == 0, out.output
    for path in results.glob("*.json"):
        record = json.loads(path.read_text())
        how = record["trial"]["protocol"]["head_init"]
        runs[how] = record
        assert record["backbone"]["head"]["init"].startswith("head_init=" if how != "pytorch" else "timm")
    assert set(runs) == set(HEAD_INITS)
    losses = {how: r["metrics"]["history"][0]["train_loss"] for how, r in runs.items()}
    assert len(set(losses.values())) == 3, losses
    assert runs["fan_out"]["trial"]["label"] == "frozen[epochs=1,head_init=fan_out]"


def test_a_bad_head_init_is_one_line_exit_2(tmp_path, tiny_backbone):
    out = CliRunner().invoke(cli, ["run", "-q", "-s", "frozen", "-b", tiny_backbone, "-d", "synthetic",
                                   "--set", "head_init=xavier", "--results-dir", tmp_path / "r"])
    assert out.exit_code == 2 and out.output.count("\n") == 1
    assert "head_init must be one of pytorch, fan_out, zeros, got 'xavier'" in out.output
    assert not (tmp_path / "r").exists()
