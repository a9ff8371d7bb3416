"""Backbone family ``timm``: any timm model (``timm:convnext_tiny``, ``timm:resnet50.a1_in1k``), optionally with a local
weights file (``timm:resnet50@/path/to/weights.safetensors``).

Groups, preprocessing and the pre-logits/head split come from timm's own metadata, so every timm architecture works
without a per-architecture table. :func:`backbone_from_timm_model` is shared with the EfficientNet-Lite plugin.
"""
from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import huggingface_hub
import huggingface_hub.constants
import timm
import torch
from safetensors.torch import load_file as load_safetensors
from timm.models import clean_state_dict, group_parameters
from timm.models._builder import _resolve_pretrained_source  # timm's own choice of weight source (hub, url, file)
from torch import nn

from tlbench import LINEAR_DEFAULT_INIT, Backbone, Preprocessing, UsageError, hookimpl
from tlbench.digests import file_sha256
from tlbench.errors import exception_summary


# ------------------------------------------------------------------------------------ shared with efficientnet_lite
def timm_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Stem, stages and head from timm's coarse group metadata, so strategies unfreeze real stages.

    timm puts parameters its matcher does not name (the classifier, plus any neck such as ConvNeXt's ``head.norm`` or
    MobileNetV3's ``conv_head``) in one last group. The head must be exactly the classifier, so the classifier's
    parameters are taken out wherever they are and any neck left over joins the stage before it, the way timm's
    matchers already merge ``conv_head``/``norm`` into the last stage for EfficientNet and ViT.
    """
    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError) as exc:
        raise UsageError(f"timm model {type(model).__name__} has no parameter-group metadata (group_matcher), so its "
                         f"stages are unknown; pick another architecture") from exc
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Module):
        raise UsageError(f"timm model {type(model).__name__} has more than one classifier "
                         f"({type(classifier).__name__}); pick an architecture with a single head")
    classifier_ids = {id(p) for p in classifier.parameters()}
    head = [name for name, p in model.named_parameters() if id(p) in classifier_ids]
    head_names = set(head)
    if not head:
        raise UsageError(f"timm model {type(model).__name__} has no classifier parameters; "
                         f"build it with num_classes > 0")

    timm_ordered = [names for _, names in sorted(group_parameters(model, matcher).items())]
    body = [[n for n in names if n not in head_names] for names in timm_ordered]
    if len(body) > 1 and head_names & set(timm_ordered[-1]):
        body[-2].extend(body.pop())  # the unmatched neck that shared the classifier's group
    body = [names for names in body if names]
    named = [("stem" if i == 0 else f"stage{i}", names) for i, names in enumerate(body)]
    return named + [("head", head)]


def timm_preprocessing(model: nn.Module) -> Preprocessing:
    """Eval preprocessing from timm's resolved data config: the one the weights (or, from scratch, the default
    weights of the architecture) were evaluated with."""
    config = timm.data.resolve_model_data_config(model)
    _, height, width = config["input_size"]
    if height != width:
        raise UsageError(f"timm model {type(model).__name__} expects non-square {height}x{width} inputs, which the "
                         f"harness's centre-crop preprocessing cannot express; pick another architecture or tag")
    tag = model.pretrained_cfg.get("architecture", type(model).__name__)
    if model.pretrained_cfg.get("tag"):
        tag += "." + model.pretrained_cfg["tag"]
    return Preprocessing(
        input_size=int(height),
        interpolation=str(config["interpolation"]),
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        crop_pct=float(config["crop_pct"]),
        source=f"timm.data.resolve_model_data_config({tag})",
    )


def _timm_pre_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(images), pre_logits=True)


def backbone_from_timm_model(name: str, model: nn.Module, pretrained: bool, weights: dict[str, Any]) -> Backbone:
    """Wrap a timm model that already has its fresh head: groups, preprocessing and the pre-logits/head pair all
    come from timm, identically for every timm-built family."""
    return Backbone(
        name=name,
        model=model,
        groups=timm_groups(model),
        preprocessing=timm_preprocessing(model),
        pre_logits=functools.partial(_timm_pre_logits, model),  # a partial, not a lambda: it pickles
        head=model.get_classifier(),
        pretrained=pretrained,
        weights=weights,
        head_init=f"timm reset_classifier: {LINEAR_DEFAULT_INIT}",
    )


# --------------------------------------------------------------------------------------------------- the family
def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A local weights file as a state dict, never unpickling code: safetensors as such, anything else through
    ``torch.load(weights_only=True)`` whatever the timm version (timm before 1.0.10 calls ``torch.load`` without it,
    which runs arbitrary code from a crafted checkpoint on torch < 2.6). Wrapped checkpoints are unwrapped the way
    timm's own ``load_state_dict`` does (EMA weights first, then ``state_dict`` / ``model``)."""
    if path.suffix == ".safetensors":
        return load_safetensors(str(path), device="cpu")
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict):
        raise TypeError(f"the file holds a {type(checkpoint).__name__}, not a state dict")
    return clean_state_dict(checkpoint)


def _cached_weights_file(load_from: str, location: Any) -> str | None:
    """Where timm found (or put) the weights it just loaded, so the record can name the file and its sha256."""
    if load_from == "file":
        return str(location)
    if load_from == "url":
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(location).path))
        return path if os.path.isfile(path) else None
    if load_from == "hf-hub":
        repo_id, filename = location if isinstance(location, (tuple, list)) else (location, None)
        for candidate in (filename, "model.safetensors", "pytorch_model.bin"):
            if candidate:
                found = huggingface_hub.try_to_load_from_cache(repo_id.split("@")[0], candidate)
                if isinstance(found, str):
                    return found
    return None


def _unknown_model_message(model_name: str) -> str:
    candidates = timm.list_models() + (timm.list_pretrained() if "." in model_name else [])
    close = difflib.get_close_matches(model_name, candidates, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see timm.list_models()"
    return f"unknown timm model {model_name!r}; {hint}"


class TimmBackbones:
    """``timm:<model>[@<weights file>]``: timm builds and loads, tlbench only records what was loaded."""

    name = "timm"
    description = "any timm model: timm:<model>[.<tag>], local weights with timm:<model>@/path/to/weights.safetensors"
    takes_argument = True

    def build(self, argument: str | None, num_classes: int, pretrained: bool) -> Backbone:
        if not argument:
            raise UsageError("the timm family needs a model name: -b timm:<model>, e.g. -b timm:resnet50")
        model_name, _, weights_file = argument.partition("@")
        try:
            default_cfg = timm.models.get_pretrained_cfg(model_name) if timm.is_model(model_name) else False
        except RuntimeError:  # a known architecture with an unknown pretrained tag
            default_cfg = False
        if default_cfg is False:
            raise UsageError(_unknown_model_message(model_name))

        overlay = None
        if pretrained and weights_file:
            path = Path(weights_file).expanduser().resolve()
            if not path.is_file():
                raise UsageError(f"weights file {str(path)!r} for timm:{model_name} does not exist; "
                                 f"fix the path after '@'")
            try:
                overlay = dict(state_dict=load_weights_file(path))  # timm only maps it onto the model
            except Exception as exc:
                raise UsageError(f"could not read weights file {str(path)!r} for timm:{model_name} safely "
                                 f"({exception_summary(exc)}); give a .safetensors file or a plain torch state dict") from exc
        elif pretrained:
            if not default_cfg or not _resolve_pretrained_source(default_cfg.to_dict())[0]:
                raise UsageError(f"timm has no pretrained weights for {model_name!r}; pass a local file "
                                 f"(-b timm:{model_name}@/path/to/weights.safetensors) or use a from-scratch strategy")

        try:
            # Built at its pretrained class count so timm loads the checkpoint strictly; the fresh head comes after.
            model = timm.create_model(model_name, pretrained=pretrained, pretrained_cfg_overlay=overlay)
        except Exception as exc:  # any download/hub/file failure: say how to provide the weights
            if not pretrained:
                raise
            if weights_file:
                raise UsageError(f"could not load weights file {str(path)!r} into timm:{model_name} "
                                 f"({exception_summary(exc)}); is it a checkpoint of this architecture?") from exc
            raise UsageError(
                f"could not fetch pretrained weights for timm:{model_name} ({exception_summary(exc)}); offline, put them in "
                f"the Hugging Face cache (HF_HOME; now {huggingface_hub.constants.HF_HUB_CACHE}) or the torch hub "
                f"cache ({os.path.join(torch.hub.get_dir(), 'checkpoints')}), or pass a local file: "
                f"-b timm:{model_name}@/path/to/weights.safetensors") from exc
        model.reset_classifier(num_classes)

        weights: dict[str, Any] = {}
        if overlay is not None:  # the tensors are on the model now: no second copy kept in its config
            model.pretrained_cfg.pop("state_dict", None)
            weights = {"source": f"file:{path}", "file": str(path), "sha256": file_sha256(path),
                       "loader": "safetensors" if path.suffix == ".safetensors" else "torch.load(weights_only=True)"}
        elif pretrained:
            load_from, location = _resolve_pretrained_source(model.pretrained_cfg)
            local_file = _cached_weights_file(load_from, location)
            origin = location if isinstance(location, str) else "/".join(location)
            weights = {
                "source": f"file:{local_file}" if load_from == "file" else f"timm:{load_from}:{origin}",
                "file": local_file,
                "sha256": file_sha256(local_file) if local_file else None,
            }
        return backbone_from_timm_model(f"timm:{argument}", model, pretrained, weights)


@hookimpl
def register_backbones(register):
    register(TimmBackbones())
