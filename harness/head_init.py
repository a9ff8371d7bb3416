"""How the new classification head starts: a protocol choice that changes the numbers, so it is a setting and recorded.

A backbone plugin builds the head (timm's ``reset_classifier``, a fresh torchvision ``nn.Linear``) and says how it
was initialised; the ``head_init`` setting may then re-initialise its final ``nn.Linear``:

- ``pytorch`` (default): leave it as built, i.e. ``nn.Linear``'s own init, weight and bias U(±1/√fan_in)
  (±0.028 for EfficientNet-Lite0's 1,280 features).
- ``fan_out``: weight U(±1/√num_classes), bias 0 — what timm's EfficientNet family (``_init_weight_goog``) gives a
  head created with ``timm.create_model(..., num_classes=C)``, as timm's ``train.py`` does (±0.32 for 10 classes).
- ``zeros``: weight and bias 0 (every class starts at the same logit; common for linear probes).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from tlbench.types import UsageError

HEAD_INITS = ("pytorch", "fan_out", "zeros")


def final_linear(head: nn.Module) -> nn.Linear | None:
    """The head's last ``nn.Linear`` (the head itself when it is one)."""
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def init_head(head: nn.Module, how: str, built_as: str) -> str:
    """Re-initialise the head's final ``nn.Linear`` as ``how`` says (from the global RNG, seeded per trial) and
    return what the record states. ``built_as`` is what the backbone plugin said about the head it built."""
    if how == "pytorch":
        return built_as
    if how not in HEAD_INITS:
        raise UsageError(f"head_init must be one of {', '.join(HEAD_INITS)}, got {how!r}; "
                         f"fix it with --set head_init=<value>")
    linear = final_linear(head)
    if linear is None:
        raise UsageError(f"head_init={how} needs an nn.Linear in the backbone's head, and this head has none "
                         f"({type(head).__name__}); use --set head_init=pytorch")
    with torch.no_grad():
        if how == "zeros":
            linear.weight.zero_()
            described = "weight 0"
        else:
            bound = 1.0 / math.sqrt(linear.out_features)
            linear.weight.uniform_(-bound, bound)
            described = f"weight U(-1/sqrt(num_classes), 1/sqrt(num_classes)) = U(±{bound:.4f})"
        if linear.bias is not None:
            linear.bias.zero_()
            described += ", bias 0"
    return f"head_init={how}: {described} (re-initialised after: {built_as})"
