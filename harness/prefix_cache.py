"""Frozen-prefix cache: when a phase trains only a suffix of the network (``partial``: the last stage and the head)
on unaugmented data, the frozen layers before the first trainable one are a fixed function of the image — pinned in
eval mode, so BatchNorm uses its frozen statistics and dropout is off. Their output is computed once per run (shared
across seeds and strategies, like the frozen backbone's features) and the phase trains the suffix alone on it.

A model is split into an ordered list of *steps* (top-level modules in forward order) plus a *tail* (the model's
own head function), from a small table of architectures: timm EfficientNet-like and ResNet-like models and
torchvision ResNets. Every split is checked on an example: prefix then suffix must reproduce ``model(x)`` exactly,
or the phase runs end to end. Whenever the cache is not used, the reason is recorded (no known split, augmentation,
the first layer trains, an earlier phase changed the prefix, the activations would not fit the memory budget
``prefix_cache_mib``, or the setting is 0).
"""
from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torchvision
from torch import nn

from tlbench.measure import Stopwatch, forward_flops

MIB = 1024 * 1024
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------------------- splitting a model
@dataclass
class ModelSplit:
    """``model(x) == tail(model, steps[-1](... steps[0](x)))``: the steps by module name, in forward order."""

    architecture: str
    step_names: list[str]
    tail: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _timm_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(x)


def _torchvision_resnet_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.fc(torch.flatten(model.avgpool(x), 1))


def _has(model: nn.Module, *names: str) -> bool:
    return all(isinstance(getattr(model, name, None), nn.Module) for name in names)


def model_split(model: nn.Module) -> ModelSplit | None:
    """The step list of a known architecture (timm forward_features order; torchvision ResNet.forward), else None."""
    kind = type(model)
    if getattr(model, "grad_checkpointing", False):
        return None  # checkpoint_seq runs the stages differently; train end to end
    timm_like = callable(getattr(model, "forward_head", None))
    if timm_like and _has(model, "conv_stem", "bn1", "blocks", "conv_head", "bn2") \
            and isinstance(model.blocks, nn.Sequential) and kind.__name__ == "EfficientNet":
        stages = [f"blocks.{i}" for i in range(len(model.blocks))]
        return ModelSplit(f"timm {kind.__name__}", ["conv_stem", "bn1", *stages, "conv_head", "bn2"], _timm_head)
    layers = [f"layer{i}" for i in range(1, 5)]
    if timm_like and _has(model, "conv1", "bn1", "act1", "maxpool", *layers) and kind.__name__ == "ResNet":
        return ModelSplit(f"timm {kind.__name__}", ["conv1", "bn1", "act1", "maxpool", *layers], _timm_head)
    if isinstance(model, torchvision.models.ResNet):
        return ModelSplit("torchvision ResNet", ["conv1", "bn1", "relu", "maxpool", *layers],
                          _torchvision_resnet_head)
    return None


class Prefix(nn.Module):
    """The frozen steps before the cut (not a submodule owner: the modules stay the model's)."""

    def __init__(self, steps: list[nn.Module]):
        super().__init__()
        self._steps = tuple(steps)  # a tuple: not registered, so the model remains their only owner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self._steps:
            x = step(x)
        return x

    def parameter_ids(self) -> set[int]:
        return {id(p) for step in self._steps for p in step.parameters()}


class Suffix(nn.Module):
    """The steps from the cut plus the model's head. The whole model is its one child, so ``train()``/``eval()``
    reach every layer exactly as they would for the model (modules pinned in eval mode stay in eval mode)."""

    def __init__(self, model: nn.Module, steps: list[nn.Module], tail: Callable[[nn.Module, torch.Tensor], Any]):
        super().__init__()
        self.model = model
        self._steps = tuple(steps)
        self._tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self._steps:
            x = step(x)
        return self._tail(self.model, x)


@dataclass
class PrefixPlan:
    """How one phase would use the cache: where the cut is, the two halves, and what the activations cost."""

    cut: str  # the first step that trains: the activations entering it are cached
    architecture: str
    prefix: Prefix
    suffix: Suffix
    bytes_per_image: int
    shape: tuple[int, ...]
    dtype: str
    prefix_flops_per_image: int

    def describe(self) -> dict[str, Any]:
        return {"cut": self.cut, "architecture": self.architecture, "activation_shape": list(self.shape),
                "dtype": self.dtype, "kib_per_image": self.bytes_per_image / 1024,
                "prefix_gflops_per_image": self.prefix_flops_per_image / 1e9}


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for a check, and every module's previous mode back afterwards."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def plan_prefix(model: nn.Module, trainable: set[str], example: torch.Tensor,
                autocast: Callable[[], contextlib.AbstractContextManager]) -> PrefixPlan | str:
    """A :class:`PrefixPlan` for training the parameters named in ``trainable``, or the reason there is none.
    ``example`` is a small batch of preprocessed images (the split is checked on it)."""
    split = model_split(model)
    if split is None:
        return f"no known split of {type(model).__name__} into steps (known: timm EfficientNet/ResNet, " \
               f"torchvision ResNet)"
    steps = [model.get_submodule(name) for name in split.step_names]
    step_params = [{id(p) for p in step.parameters()} for step in steps]
    trainable_ids = {id(p) for name, p in model.named_parameters() if name in trainable}
    cut = next((i for i, ids in enumerate(step_params) if ids & trainable_ids), len(steps))
    if cut == 0:
        return f"the first step ({split.step_names[0]}) trains: there is no frozen prefix"
    prefix, suffix = Prefix(steps[:cut]), Suffix(model, steps[cut:], split.tail)
    with _eval_mode(model), torch.no_grad(), autocast():
        whole = model(example)
        middle = prefix(example)
        parted = suffix(middle)
    if whole.shape != parted.shape or not torch.equal(whole, parted):
        return f"prefix + suffix do not reproduce {type(model).__name__}'s output on an example; trained end to end"
    with _eval_mode(model):
        flops = forward_flops(prefix, example[:1])
    per_image = middle[0].numel() * middle.element_size()
    return PrefixPlan(split.step_names[cut] if cut < len(steps) else "head", split.architecture, prefix, suffix,
                      per_image, tuple(middle.shape[1:]), str(middle.dtype).replace("torch.", ""), flops)


# ------------------------------------------------------------------------------------------ the run-wide cache
@dataclass
class CachedPrefix:
    """Activations entering the cut for the splits asked for, and what making them cost *this* request."""

    splits: dict[str, torch.Tensor]
    seconds: float
    images_computed: int
    mib: float  # size of this entry (all its splits so far)
    split_seconds: dict[str, float] = field(default_factory=dict)  # what each split took when it was made


@dataclass
class _Entry:
    splits: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.splits.values())


class PrefixCache:
    """Activations by (what defines them, cut). Holds at most ``budget_mib`` in all: older entries go first; an
    entry that alone would not fit is not made (the phase falls back to end-to-end training, recorded)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def fits(self, needed_bytes: int, budget_mib: float) -> bool:
        return needed_bytes <= budget_mib * MIB

    def get(self, identity: Any, plan: PrefixPlan, needed: tuple[str, ...], images: dict[str, torch.Tensor],
            prepare: Callable[[torch.Tensor], torch.Tensor], batch_size: int, device: torch.device,
            autocast: Callable[[], contextlib.AbstractContextManager], budget_mib: float) -> CachedPrefix:
        """The activations of the ``needed`` splits (``images``: uint8 splits by name), computing missing ones in
        eval mode, ``batch_size`` images at a time; evicts older entries to stay within the budget."""
        key = json.dumps([identity, plan.cut], sort_keys=True, default=str)
        entry = self._entries.setdefault(key, _Entry())
        self._entries.move_to_end(key)
        missing = [s for s in SPLITS if s in needed and s not in entry.splits]
        seconds, computed = 0.0, 0
        if missing:
            incoming = sum(len(images[s]) for s in missing) * plan.bytes_per_image
            while self._entries and sum(e.bytes for e in self._entries.values()) + incoming > budget_mib * MIB:
                oldest = next(iter(self._entries))
                if oldest == key:
                    break
                del self._entries[oldest]
            with _eval_mode(plan.suffix.model), torch.no_grad():
                for split in missing:
                    chunks = []
                    with Stopwatch(device) as watch:
                        for lo in range(0, len(images[split]), batch_size):
                            with autocast():
                                chunks.append(plan.prefix(prepare(images[split][lo:lo + batch_size])))
                        entry.splits[split] = torch.cat(chunks)
                    entry.seconds[split] = watch.seconds
                    seconds += watch.seconds
                    computed += len(images[split])
        return CachedPrefix({s: entry.splits[s] for s in needed}, seconds, computed, entry.bytes / MIB,
                            {s: entry.seconds[s] for s in needed})

    def clear(self) -> None:
        self._entries.clear()


def serve(cache: PrefixCache, identity: Any, splits: Any, prepare: Callable[[torch.Tensor], torch.Tensor],
          protocol: Any, device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager]
          ) -> Callable[[PrefixPlan, tuple[str, ...]], CachedPrefix]:
    """What a trial hands the phase runner: ``request(plan, needed_splits)`` served from the run's cache.
    ``identity`` is everything the activations depend on besides the cut (weights, data, preprocessing, amp,
    memory format)."""
    images = {s: getattr(splits, f"{s}_images") for s in SPLITS}

    def request(plan: PrefixPlan, needed: tuple[str, ...]) -> CachedPrefix:
        return cache.get(identity, plan, needed, images, prepare, protocol["eval_batch_size"], device, autocast,
                         protocol["prefix_cache_mib"])
    return request
