"""Backbone family ``torchvision``: torchvision classification models with their official weights
(``torchvision:resnet50`` is ``ResNet50_Weights.IMAGENET1K_V2``; ``torchvision:resnet50@IMAGENET1K_V1`` picks a tag).

torchvision has no parameter-group metadata, so a small table says where the stem, stages and classifier are; the
stage boundaries follow timm's groups for the same architectures, so ``timm:`` and ``torchvision:`` runs compare.
"""
from __future__ import annotations

import difflib
import itertools
import os
import re
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights, list_models

from tlbench import LINEAR_DEFAULT_INIT, Backbone, Preprocessing, UsageError, hookimpl
from tlbench.digests import file_sha256
from tlbench.errors import exception_summary


@dataclass
class Layout:
    """Where things are in one architecture: module names of the stem and of each stage, the classifier Linear
    (replaced by a fresh one), and the modules that compute pooled features. Parameters named by none of them (the
    neck: a final 1x1 conv, a pre-logits norm or Linear) join the last stage, as timm's groups do."""

    stem: list[str]
    stages: list[list[str]]
    head: str
    pre_logits: nn.Module


def _resnet_layout(model: nn.Module) -> Layout:
    return Layout(
        stem=["conv1", "bn1"],
        stages=[[f"layer{i}"] for i in range(1, 5)],
        head="fc",
        pre_logits=nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2,
                                 model.layer3, model.layer4, model.avgpool, nn.Flatten(1)),
    )


def _efficientnet_layout(model: nn.Module) -> Layout:
    # features.0 is the stem, features.1..-2 the paper's stages; the final 1x1 conv (features.-1) is neck.
    return Layout(
        stem=["features.0"],
        stages=[[f"features.{i}"] for i in range(1, len(model.features) - 1)],
        head=f"classifier.{len(model.classifier) - 1}",
        pre_logits=nn.Sequential(model.features, model.avgpool, nn.Flatten(1), *model.classifier[:-1]),
    )


def _mobilenet_v3_layout(model: nn.Module) -> Layout:
    # torchvision lists single blocks; a stage is a run of blocks of the same width (the paper's table, timm's
    # blocks.<i>); the final 1x1 conv is a stage of its own and classifier.0 (a Linear on pooled features) is neck.
    blocks = range(1, len(model.features) - 1)
    runs = itertools.groupby(blocks, key=lambda i: model.features[i].out_channels)
    stages = [[f"features.{i}" for i in run] for _, run in runs] + [[f"features.{len(model.features) - 1}"]]
    return Layout(
        stem=["features.0"],
        stages=stages,
        head=f"classifier.{len(model.classifier) - 1}",
        pre_logits=nn.Sequential(model.features, model.avgpool, nn.Flatten(1), *model.classifier[:-1]),
    )


def _convnext_layout(model: nn.Module) -> Layout:
    # features: stem, stage, downsample, stage, ...; a downsample starts the stage after it (as in timm's ConvNeXt).
    count = len(model.features)
    return Layout(
        stem=["features.0"],
        stages=[["features.1"]] + [[f"features.{i}", f"features.{i + 1}"] for i in range(2, count, 2)],
        head=f"classifier.{len(model.classifier) - 1}",
        pre_logits=nn.Sequential(model.features, model.avgpool, *model.classifier[:-1]),  # classifier flattens
    )


LAYOUTS: list[tuple[str, Callable[[nn.Module], Layout]]] = [
    (r"resnet\d+|resnext\d+_\w+|wide_resnet\d+_\d+", _resnet_layout),
    (r"efficientnet_(b\d|v2_[sml])", _efficientnet_layout),
    (r"mobilenet_v3_(small|large)", _mobilenet_v3_layout),
    (r"convnext_\w+", _convnext_layout),
]


def _layout_for(model_name: str) -> Callable[[nn.Module], Layout] | None:
    return next((layout for pattern, layout in LAYOUTS if re.fullmatch(pattern, model_name)), None)


def supported_models() -> list[str]:
    """torchvision classification models this family can split into stem, stages and head."""
    return [name for name in list_models(module=torchvision.models) if _layout_for(name)]


def layout_groups(model: nn.Module, layout: Layout) -> list[tuple[str, list[str]]]:
    """Partition every parameter name: stem, stage1..N, head (exactly the classifier Linear); neck → last stage."""
    def owner(module_names: list[str]) -> Callable[[str], bool]:
        return lambda param: any(param == m or param.startswith(m + ".") for m in module_names)

    parts = [owner(layout.stem)] + [owner(stage) for stage in layout.stages] + [owner([layout.head])]
    names = ["stem"] + [f"stage{i}" for i in range(1, len(layout.stages) + 1)] + ["head"]
    members: list[list[str]] = [[] for _ in names]
    for param, _ in model.named_parameters():
        index = next((i for i, is_owner in enumerate(parts) if is_owner(param)), len(names) - 2)
        members[index].append(param)
    return [(name, params) for name, params in zip(names, members) if params]


def torchvision_preprocessing(weights: WeightsEnum) -> Preprocessing:
    """Eval preprocessing exactly as ``weights.transforms()`` states it."""
    transform = weights.transforms()
    crop, resize = transform.crop_size[0], transform.resize_size[0]
    return Preprocessing(
        input_size=int(crop),
        interpolation=transform.interpolation.value,
        mean=tuple(float(v) for v in transform.mean),
        std=tuple(float(v) for v in transform.std),
        crop_pct=crop / resize,
        source=f"torchvision:{weights}.transforms()",
    )


def checkpoint_path(weights: WeightsEnum) -> str:
    """Where torch.hub looks for (and downloads) these weights: ``$TORCH_HOME/hub/checkpoints/<file of the url>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))


def _resolve(argument: str | None) -> tuple[str, WeightsEnum]:
    if not argument:
        raise UsageError("the torchvision family needs a model name: -b torchvision:<model>, "
                         "e.g. -b torchvision:resnet50")
    model_name, _, tag = argument.partition("@")
    if model_name not in list_models(module=torchvision.models):
        close = difflib.get_close_matches(model_name, list_models(module=torchvision.models), n=3)
        hint = (f"did you mean {', '.join(repr(c) for c in close)}?" if close
                else f"supported: {', '.join(supported_models())}")
        raise UsageError(f"unknown torchvision model {model_name!r}; {hint}")
    if not _layout_for(model_name):
        raise UsageError(f"torchvision:{model_name} has no stage table in tlbench; supported: "
                         f"{', '.join(supported_models())}; timm:<model> covers most other architectures")
    weights_enum = get_model_weights(model_name)
    if not tag:
        return model_name, weights_enum.DEFAULT
    try:
        return model_name, weights_enum[tag]
    except KeyError:
        raise UsageError(f"torchvision:{model_name} has no weights {tag!r}; available: "
                         f"{', '.join(w.name for w in weights_enum)}") from None


class TorchvisionBackbones:
    """``torchvision:<model>[@<weights tag>]`` with torchvision's weights API; weights are read from the torch hub
    cache (downloaded there if online)."""

    name = "torchvision"
    description = ("torchvision models with official weights: torchvision:resnet50[@IMAGENET1K_V1]; "
                   "ResNet/ResNeXt/WideResNet, EfficientNet, MobileNetV3, ConvNeXt")
    takes_argument = True

    def build(self, argument: str | None, num_classes: int, pretrained: bool) -> Backbone:
        model_name, weights = _resolve(argument)
        model = get_model(model_name, weights=None)
        record: dict[str, Any] = {}
        if pretrained:
            path = checkpoint_path(weights)
            try:
                # torchvision's own loader (cache first, then download), but never unpickling arbitrary objects.
                state_dict = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
            except Exception as exc:
                raise UsageError(f"could not load {weights} for torchvision:{model_name} ({exception_summary(exc)}); "
                                 f"offline, download {weights.url} and put it at {path}") from exc
            try:
                model.load_state_dict(state_dict)
            except RuntimeError as exc:
                raise UsageError(f"{path} is not a checkpoint of {weights} ({exception_summary(exc)}); delete it so it is "
                                 f"downloaded again, or put the file from {weights.url} there") from exc
            record = {"source": f"torchvision:{weights}", "url": weights.url, "file": path,
                      "sha256": file_sha256(path)}

        layout = _layout_for(model_name)(model)
        old_head = model.get_submodule(layout.head)
        model.set_submodule(layout.head, nn.Linear(old_head.in_features, num_classes))
        return Backbone(
            name=f"torchvision:{argument}",
            model=model,
            groups=layout_groups(model, layout),
            preprocessing=torchvision_preprocessing(weights),
            pre_logits=layout.pre_logits,
            head=model.get_submodule(layout.head),
            pretrained=pretrained,
            weights=record,
            head_init=f"new {layout.head}: {LINEAR_DEFAULT_INIT}",
        )


@hookimpl
def register_backbones(register):
    register(TorchvisionBackbones())
