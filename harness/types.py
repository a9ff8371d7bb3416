"""The small public types a plugin needs: what backbones, strategies, datasets and executors hand the harness.

These are plain data objects. The harness reads them; it never reaches into a plugin's internals, and a plugin never
sees another plugin (a strategy plans over group *names*; a backbone never knows the strategy).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn


class UsageError(Exception):
    """Bad input from the user (unknown name, invalid hyper-parameter, unusable data path).

    The message is one line that names the problem and the fix; the CLI prints it and exits with code 2.
    """


# --------------------------------------------------------------------------------------------------- backbones
@dataclass(frozen=True)
class Preprocessing:
    """How the weights expect images: taken from the weights (torchvision ``weights.transforms()`` or timm's data
    config), never re-typed. Eval: resize to ``input_size / crop_pct`` then centre-crop ``input_size``."""

    input_size: int
    interpolation: str  # "bilinear" | "bicubic" | "nearest"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 1.0
    source: str = ""  # where it came from, e.g. "torchvision:ResNet50_Weights.IMAGENET1K_V2.transforms()"

    def resized(self, input_size: int | None) -> "Preprocessing":
        """The same preprocessing at another resolution (a protocol choice the record states)."""
        if not input_size or input_size == self.input_size:
            return self
        return Preprocessing(input_size, self.interpolation, self.mean, self.std, self.crop_pct,
                             f"{self.source} @ {input_size}px")

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Backbone:
    """A built model with a fresh head for the task, plus what the harness needs to train it fairly.

    ``groups`` is the ordered partition of *every* parameter name of ``model`` into named groups, from the stem
    through the stages to the head, which is last. ``pre_logits`` maps images to pooled features and
    ``head`` maps those to logits, so that ``head(pre_logits(x))`` equals ``model(x)``: the harness uses the pair to
    cache frozen features.
    """

    name: str
    model: nn.Module
    groups: list[tuple[str, list[str]]]
    preprocessing: Preprocessing
    pre_logits: Callable[[torch.Tensor], torch.Tensor]
    head: nn.Module
    pretrained: bool
    weights: dict[str, Any] = field(default_factory=dict)  # source, file, sha256 of the loaded weights

    @property
    def group_names(self) -> list[str]:
        return [name for name, _ in self.groups]


@runtime_checkable
class BackboneFamily(Protocol):
    """Builds backbones by name. ``prefix`` is matched against the text before ``:`` (``timm:resnet50``), or against
    the whole name when ``takes_argument`` is false (``efficientnet_lite0``)."""

    name: str
    description: str
    takes_argument: bool

    def build(self, argument: str | None, num_classes: int, pretrained: bool) -> Backbone: ...


# -------------------------------------------------------------------------------------------------- strategies
@dataclass(frozen=True)
class TrainPlan:
    """What a strategy decides, over the backbone's group names only.

    ``learning_rates`` maps each *trainable* group to its learning rate; groups not named are frozen (no gradient,
    every module in them kept in eval mode for the whole trial). ``batchnorm`` is the policy for BatchNorm layers of
    trainable groups: "train" (batch statistics, running statistics updated), "frozen" (running statistics used and
    never updated, affine parameters still learn) or "recalibrate" (train mode, then the running statistics are
    re-estimated on training images before every evaluation).
    """

    learning_rates: Mapping[str, float]
    batchnorm: str = "train"

    BATCHNORM_POLICIES: ClassVar[tuple[str, ...]] = ("train", "frozen", "recalibrate")


class Strategy:
    """Base class for transfer strategies. Subclass it, set the class attributes, implement :meth:`plan`.

    ``defaults`` holds the strategy's own hyper-parameters; ``protocol`` may override shared protocol settings
    (epochs, batch_size, ...) for this strategy. Both are overridable from the command line with
    ``--set <strategy>.<key>=<value>`` and are recorded in every result.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    pretrained: ClassVar[bool] = True
    defaults: ClassVar[Mapping[str, Any]] = {}
    protocol: ClassVar[Mapping[str, Any]] = {}

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        raise NotImplementedError

    def validate(self, hparams: Mapping[str, Any]) -> None:
        """Raise :class:`UsageError` for hyper-parameters that cannot work. The base checks learning rates."""
        for key, value in hparams.items():
            if key.endswith("lr") and not (isinstance(value, (int, float)) and value > 0):
                raise UsageError(f"{self.name}.{key} must be a number > 0, got {value!r}; "
                                 f"fix it with --set {self.name}.{key}=<value>")
        bn = hparams.get("batchnorm")
        if bn is not None and bn not in TrainPlan.BATCHNORM_POLICIES:
            raise UsageError(f"{self.name}.batchnorm must be one of {', '.join(TrainPlan.BATCHNORM_POLICIES)}, "
                             f"got {bn!r}")


# ---------------------------------------------------------------------------------------------------- datasets
@dataclass
class ImageSplits:
    """Decoded images, uint8 (N, C, H, W) with C = 3, and int64 labels, for the three splits."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    source: dict[str, Any] = field(default_factory=dict)  # where the images came from, how they were split

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_labels), "val": len(self.val_labels), "test": len(self.test_labels)}

    def to(self, device: torch.device | str) -> "ImageSplits":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return ImageSplits(**moved)


@runtime_checkable
class DatasetFamily(Protocol):
    """Loads a dataset by name (``fashion-mnist``) or name plus argument (``imagefolder:/data/pets``).

    ``defaults`` are the dataset options (split sizes, storage resolution, augmentation, recommended image size)
    overridable with ``--set data.<key>=<value>``. ``fingerprint`` is cheap and must change whenever the source
    files change; the harness caches decoded splits under it.
    """

    name: str
    description: str
    takes_argument: bool
    defaults: Mapping[str, Any]

    def fingerprint(self, argument: str | None, options: Mapping[str, Any]) -> str: ...

    def load(self, argument: str | None, options: Mapping[str, Any]) -> ImageSplits: ...


# --------------------------------------------------------------------------------------------------- executors
@runtime_checkable
class Executor(Protocol):
    """Runs trials. ``run_trial`` does one trial end to end (including writing its record); the executor decides
    where and in which order. Trials arrive sorted by dataset, then backbone, so device data can be shared."""

    name: str
    description: str

    def execute(self, trials: Sequence[Any], run_trial: Callable[[Any], Any]) -> None: ...
