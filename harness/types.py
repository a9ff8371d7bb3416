"""The small public types a plugin needs: what backbones, strategies, datasets and executors hand the harness.

These are plain data objects. The harness reads them; it never reaches into a plugin's internals, and a plugin never
sees another plugin (a strategy plans over group *names*; a backbone never knows the strategy).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, ClassVar, Iterator, Mapping, Protocol, Sequence, Union, runtime_checkable

import torch
from torch import nn

from tlbench.requirements import missing_requirements


MIN_IMAGE_SIZE = 8  # smallest network input side, for the protocol's image_size and data.image_size alike


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


# A fresh ``nn.Linear`` head as PyTorch initialises it (timm's reset_classifier and torchvision heads alike).
LINEAR_DEFAULT_INIT = "torch.nn.Linear default: weight kaiming_uniform_(a=sqrt(5)), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))"


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
    head_init: str = ""  # how the fresh head was initialised (recorded: it changes the numbers)

    @property
    def group_names(self) -> list[str]:
        return [name for name, _ in self.groups]


@runtime_checkable
class BackboneFamily(Protocol):
    """Builds backbones by name. ``prefix`` is matched against the text before ``:`` (``timm:resnet50``), or against
    the whole name when ``takes_argument`` is false (``efficientnet_lite0``). Optional ``requires``: as on
    :class:`Strategy`."""

    name: str
    description: str
    takes_argument: bool

    def build(self, argument: str | None, num_classes: int, pretrained: bool) -> Backbone: ...


# -------------------------------------------------------------------------------------------------- strategies
BATCHNORM_POLICIES = ("train", "frozen", "recalibrate")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass(frozen=True)
class ParamRef:
    """One parameter as a selector sees it: its name in the model, the tensor, the module that owns it and the
    backbone group it belongs to (after model surgery: new parameters join the group of the module they wrap)."""

    name: str
    param: nn.Parameter
    module: nn.Module
    group: str
    block: str = ""  # the block it sits in (tlbench.freeze.parameter_blocks): e.g. "blocks.3.1"; head last
    block_index: int = 0  # that block's place among the model's blocks, stem first (0) to the head (num_blocks-1)
    num_blocks: int = 1

    @property
    def is_bias(self) -> bool:
        """An additive bias: every ``*.bias``, the shifts of norm layers included."""
        return self.name.rsplit(".", 1)[-1] == "bias"

    @property
    def is_norm(self) -> bool:
        """Owned by a normalisation layer (BatchNorm, GroupNorm, LayerNorm and their subclasses, e.g. timm's)."""
        return isinstance(self.module, _NORM_TYPES)


# A parameter-level selection: a predicate over ParamRef, or a regular expression searched in the parameter name.
Selector = Union[Callable[[ParamRef], bool], str]


# (images, targets, generator) -> (images, targets): targets come as N x C probabilities (one-hot) and go back
# as N x C probabilities (soft targets: the task loss is then soft-target cross-entropy).
BatchTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Phase:
    """One stretch of training. The model carries over from the phase before; the optimizer (AdamW) and the
    warm-up + schedule start afresh unless ``restart`` is false (then optimizer moments and the schedule continue).

    ``learning_rates`` maps each *trainable* group to its learning rate; groups not named are frozen (no gradient,
    every module in them pinned in eval mode for this phase). ``select`` narrows training to some parameters of
    those groups (a predicate over :class:`ParamRef` or a regex on the parameter name); the rest are frozen too.
    ``batchnorm`` is the policy for BatchNorm layers of trainable parameters: "train" (batch statistics, running
    statistics updated), "frozen" (running statistics used and never updated, affine parameters still learn) or
    "recalibrate" (train mode, then the running statistics are re-estimated on training images before every
    evaluation). ``epochs``: None = the trial's epochs, an int = that many epochs, a float = that multiple of the
    trial's epochs (0.5 = half, rounded). ``selectable``: whether this phase's epochs may be chosen as the best
    epoch (on validation); the last phase must be.
    """

    learning_rates: Mapping[str, float]
    batchnorm: str = "train"
    epochs: int | float | None = None
    select: Selector | None = None
    name: str = ""
    restart: bool = True
    selectable: bool = True
    # the training step (None: the plan's; see TrainPlan and docs/guides/strategy.md "What a strategy does to a batch")
    batch_transform: BatchTransform | None = None
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    step_loss: Callable[["StepContext"], torch.Tensor] | None = None
    callbacks: Sequence["Callback"] | None = None
    lr_scale: Callable[[ParamRef], float] | None = None

    @property
    def batch_parts(self) -> list[str]:
        """The parts of this phase that act on the batch or the step: no cached features or prefix activations
        stand in for running them."""
        return [name for name in ("batch_transform", "step_loss", "callbacks") if _present(getattr(self, name))]

    @property
    def unshared_parts(self) -> list[str]:
        """The parts that make this phase compute what its shared-phase key does not describe
        (:mod:`tlbench.shared_phases`): every step part but ``lr_scale``, which the optimizer groups carry, and
        callbacks that only read the weights at epoch ends (:attr:`Callback.reads_epoch_ends_only`: replayed)."""
        parts = [name for name in ("batch_transform", "task_loss", "step_loss") if _present(getattr(self, name))]
        if any(not getattr(callback, "reads_epoch_ends_only", False) for callback in self.callbacks or ()):
            parts.append("callbacks")
        return parts

    def resolved_epochs(self, trial_epochs: int) -> int:
        if self.epochs is None:
            return trial_epochs
        if isinstance(self.epochs, float):
            return round(self.epochs * trial_epochs)
        return self.epochs


def _validation_only_after_training() -> float:
    raise RuntimeError("TrainingContext.evaluate() scores the validation split in after-training steps only; "
                       "a loss term cannot use it")


@dataclass
class TrainingContext:
    """What a loss term and an after-training step see: the model being trained (after surgery), its parameters
    by name with their groups, and the weights training started from (the pretrained ones, for a pretrained
    strategy). ``evaluate()`` scores the model's current weights on the *validation* split (top-1); the test
    split is never reachable from here."""

    model: nn.Module
    parameters: Mapping[str, nn.Parameter]
    group_of: Mapping[str, str]
    initial: Mapping[str, torch.Tensor]
    evaluate: Callable[[], float] = field(default=lambda: _validation_only_after_training())
    num_classes: int = 0
    epochs: int = 0  # the trial's epochs, all phases together
    epoch: int = 0  # the epoch just trained (callbacks), numbered from 1 across phases
    step: int = 0  # training steps taken so far in this trial
    # the training images (preprocessed for evaluation, no augmentation), batch by batch: an after-training step
    # re-estimating BatchNorm statistics (SWA) uses them; the validation and test splits are not reachable
    train_batches: Callable[[], Iterator[torch.Tensor]] = field(default=lambda: iter(()))

    def in_groups(self, *groups: str) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.parameters.items() if self.group_of[n] in groups]

    def not_in_groups(self, *groups: str) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.parameters.items() if self.group_of[n] not in groups]


@dataclass
class StepContext:
    """What a ``step_loss`` sees at one training step: the batch's ``inputs`` (after preprocessing, augmentation and
    the batch transform), its ``targets`` (class indices, or N x C probabilities when a batch transform ran), the
    ``logits``, ``features`` (the head's input: pooled features), ``intermediate`` (output of each module the plan
    names in ``feature_layers``, with grad) and ``reference`` (the same modules of a frozen copy of the starting
    model, for ``reference_layers``: computed once per batch, without grad), and ``training`` (the
    :class:`TrainingContext`)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor | None
    intermediate: Mapping[str, torch.Tensor]
    reference: Mapping[str, torch.Tensor]
    training: TrainingContext


class Callback:
    """Per-step and per-epoch events of training (after fastai's and Lightning's ``Callback``): subclass it and
    override what you need. ``on_step_end(ctx, optimizer)`` runs after every optimizer step (and the scheduler's);
    ``on_epoch_end(ctx, epoch)`` after an epoch's last step, before its validation pass. ``ctx`` is the trial's
    :class:`TrainingContext` (``ctx.epoch``, ``ctx.step`` say where training is).

    Set ``reads_epoch_ends_only = True`` (on the class or an instance) for a callback that does nothing in
    ``on_step_end`` and in ``on_epoch_end`` only reads the model: it changes neither the model, nor the optimizer,
    nor any random generator. Training with it then computes what training without it does, so its phase may be
    one another trial of the run already computed (:mod:`tlbench.shared_phases`); the callback is then replayed on
    that trial's weights at each epoch end, and sees what it would have seen. SWA's per-epoch average is such a
    callback; its per-step EMA and center loss's moving centres are not."""

    reads_epoch_ends_only: bool = False

    def on_step_end(self, ctx: TrainingContext, optimizer: torch.optim.Optimizer) -> None:
        pass

    def on_epoch_end(self, ctx: TrainingContext, epoch: int) -> None:
        pass


STEP_PARTS = ("batch_transform", "task_loss", "step_loss", "callbacks", "lr_scale")


@dataclass(frozen=True)
class TrainPlan:
    """What a strategy decides, over the backbone's group names only.

    The simple case is one phase: ``TrainPlan({"head": 1e-3}, "frozen")`` (see :class:`Phase` for
    ``learning_rates``, ``batchnorm`` and ``select``). ``phases`` replaces that single phase with an ordered list.
    The optional parts, each recorded in the result:

    - ``surgery(backbone) -> dict | None``: changes ``backbone.model`` in place before training (wrap or replace
      modules, e.g. inject adapters; ``backbone.head`` must stay). New parameters join the group of the module they
      sit in. What it returns is recorded. Parameter counts, FLOPs and the feature cache all see the changed model.
    - ``loss_term(ctx) -> Tensor``: added to the task loss at every step (computed in float32, outside autocast,
      included in the logged loss), from :class:`TrainingContext` (the model and its starting weights).
    - ``after_training(ctx) -> dict``: runs once the best epoch's weights are restored, may change the weights in
      place, choosing on validation only (``ctx.evaluate()``); what it returns is recorded. The test split is scored
      once, after it.
    - ``record``: anything else the strategy wants in the result (e.g. the paper's name for a setting).

    What a strategy does to a batch (each also settable per :class:`Phase`, which then overrides the plan's):

    - ``batch_transform(images, targets, generator) -> (images, targets)``: after preprocessing and augmentation;
      targets arrive as N x C one-hot probabilities and may leave soft (Mixup, CutMix); the task loss is then
      soft-target cross-entropy.
    - ``task_loss(logits, targets) -> Tensor``: replaces cross-entropy (e.g. focal loss).
    - ``step_loss(step) -> Tensor``: added to the task loss at every step from a :class:`StepContext` (inputs,
      targets, logits, pooled features, and the outputs of ``feature_layers`` of the model and of
      ``reference_layers`` of a frozen copy of the starting model). Logged with ``loss_term``.
    - ``callbacks``: :class:`Callback` objects (``on_step_end``, ``on_epoch_end``).
    - ``lr_scale(ref) -> float``: a per-parameter learning-rate multiplier over :class:`ParamRef` (weight decay
      unaffected), e.g. per-block decay from ``ref.block_index``.

    ``feature_layers`` / ``reference_layers`` name modules of the model (``"blocks.2"``) or a group
    (``"group:stage3"``: the module holding all of that group's parameters). The logged loss is always the loss
    optimised. A phase with a batch transform, a step loss or callbacks never runs on cached features or cached
    prefix activations, and a plan with any of these parts shares no phase with another trial.
    """

    learning_rates: Mapping[str, float] = field(default_factory=dict)
    batchnorm: str = "train"
    select: Selector | None = None
    phases: Sequence[Phase] = ()
    surgery: Callable[[Backbone], Mapping[str, Any] | None] | None = None
    loss_term: Callable[[TrainingContext], torch.Tensor] | None = None
    after_training: Callable[[TrainingContext], Mapping[str, Any]] | None = None
    record: Mapping[str, Any] = field(default_factory=dict)
    batch_transform: BatchTransform | None = None
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    step_loss: Callable[[StepContext], torch.Tensor] | None = None
    callbacks: Sequence[Callback] = ()
    lr_scale: Callable[[ParamRef], float] | None = None
    feature_layers: Sequence[str] = ()
    reference_layers: Sequence[str] = ()

    BATCHNORM_POLICIES: ClassVar[tuple[str, ...]] = BATCHNORM_POLICIES

    def __post_init__(self) -> None:
        if self.phases and (self.learning_rates or self.select is not None):
            raise UsageError("a TrainPlan takes learning_rates/select or phases, not both: put them in the Phase(s)")

    def all_phases(self) -> list[Phase]:
        """The phases, each with the plan's step parts where it sets none of its own."""
        phases = list(self.phases) if self.phases else [Phase(self.learning_rates, self.batchnorm, None, self.select)]
        inherited = {name: getattr(self, name) for name in STEP_PARTS if _present(getattr(self, name))}
        if not inherited:
            return phases
        return [replace(p, **{k: v for k, v in inherited.items() if getattr(p, k) is None}) for p in phases]

    @property
    def unshared_parts(self) -> list[str]:
        """What keeps this plan's phases from being shared with another trial (:mod:`tlbench.shared_phases`): a
        loss term, surgery, feature or reference layers, and each phase's :attr:`Phase.unshared_parts`."""
        parts = [name for name in ("loss_term", "surgery", "feature_layers", "reference_layers")
                 if _present(getattr(self, name))]
        return parts + sorted({part for phase in self.all_phases() for part in phase.unshared_parts})

    @property
    def replays_epoch_ends(self) -> bool:
        """Whether a phase of this plan may reuse another trial's and replay its epoch-end callbacks there: the
        plan shares phases and has callbacks (then all of them only read the weights at epoch ends)."""
        return not self.unshared_parts and any(phase.callbacks for phase in self.all_phases())

    def step_record(self) -> dict[str, Any] | None:
        """What the record says about the step parts (None: the plan has none)."""
        parts = {name: getattr(self, name) for name in STEP_PARTS if _present(getattr(self, name))}
        for phase in self.phases:
            parts |= {name: getattr(phase, name) for name in STEP_PARTS if _present(getattr(phase, name))}
        if not parts and not self.feature_layers and not self.reference_layers:
            return None
        return {"parts": {k: _part_text(v) for k, v in parts.items()},
                "feature_layers": list(self.feature_layers), "reference_layers": list(self.reference_layers)}


def _present(part: Any) -> bool:
    return part is not None and not (isinstance(part, (list, tuple)) and not part)


def _part_text(part: Any) -> Any:
    """A step part as the record shows it: its repr without memory addresses (a list: each one's)."""
    if isinstance(part, (list, tuple)):
        return [_part_text(p) for p in part]
    if hasattr(part, "__qualname__"):
        return f"{part.__module__}.{part.__qualname__}"
    return re.sub(r" at 0x[0-9a-f]+", "", repr(part))


class Strategy:
    """Base class for transfer strategies. Subclass it, set the class attributes, implement :meth:`plan`.

    ``defaults`` holds the strategy's own hyper-parameters; ``protocol`` may override shared protocol settings
    (epochs, batch_size, weight_decay, ...) for this strategy. Both are overridable from the command line with
    ``--set <strategy>.<key>=<value>`` and are recorded in every result. ``requires`` maps optional modules the
    strategy imports to an install hint (``{"peft": tlbench.Extra("peft")}`` for a tlbench extra, or a string such
    as ``"pip install my-package"``): without them it is listed as unavailable, ``run --all`` leaves it out with
    the hint, and a run that names it stops with the hint (see :mod:`tlbench.requirements`). ``search_space`` maps hyper-parameters (or protocol settings
    other than ``epochs``) to the values ``tlbench run --tune`` tries, e.g. ``{"lr": tlbench.log_grid(1e-4)}``;
    left as None, every learning rate (a key ending in ``lr``) gets ``log_grid`` around its default.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    pretrained: ClassVar[bool] = True
    defaults: ClassVar[Mapping[str, Any]] = {}
    protocol: ClassVar[Mapping[str, Any]] = {}
    requires: ClassVar[Mapping[str, Any]] = {}
    search_space: ClassVar[Mapping[str, Sequence[Any]] | None] = None

    def plan(self, group_names: Sequence[str], hparams: Mapping[str, Any]) -> TrainPlan:
        raise NotImplementedError

    def missing_requirements(self) -> list[str]:
        """Install hints for the optional packages in ``requires`` that cannot be imported."""
        return missing_requirements(self)

    def validate(self, hparams: Mapping[str, Any], protocol: Mapping[str, Any] | None = None) -> None:
        """Raise :class:`UsageError` for settings that cannot work, before anything runs. ``protocol`` is this
        strategy's resolved protocol (epochs, batch size, ...; older plugins may define ``validate(hparams)``). The base checks learning rates (keys ending in
        ``lr``), the BatchNorm policy and the optional packages."""
        missing = self.missing_requirements()
        if missing:
            raise UsageError(f"strategy {self.name!r} needs an optional package: {missing[0]}")
        for key, value in hparams.items():
            if key.endswith("lr") and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                           and math.isfinite(value) and value > 0):  # not nan, not inf
                raise UsageError(f"{self.name}.{key} must be a number > 0, got {value!r}; "
                                 f"fix it with --set {self.name}.{key}=<value>")
        bn = hparams.get("batchnorm")
        if bn is not None and bn not in BATCHNORM_POLICIES:
            raise UsageError(f"{self.name}.batchnorm must be one of {', '.join(BATCHNORM_POLICIES)}, got {bn!r}; "
                             f"fix it with --set {self.name}.batchnorm=<policy>")


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
    files change; the harness caches decoded splits under it. Optional ``requires``: as on :class:`Strategy`.
    """

    name: str
    description: str
    takes_argument: bool
    defaults: Mapping[str, Any]

    def fingerprint(self, argument: str | None, options: Mapping[str, Any]) -> str: ...

    def load(self, argument: str | None, options: Mapping[str, Any]) -> ImageSplits: ...


# ------------------------------------------------------------------------------------------------------ suites
SUITE_TASK_FIELDS = ("name", "dataset", "group", "options")


@dataclass(frozen=True)
class SuiteTask:
    """One task of a :class:`Suite`: a dataset name as ``-d`` takes it (``cifar100``, ``imagefolder:/data/x``), its
    group (e.g. VTAB's "natural") and its split protocol as dataset options (``{"train_size": 800, "val_size": 200,
    "test_size": 0}``: what ``--set data.KEY=VALUE`` would set; the user's own ``--set data.*`` still wins).
    ``name`` tells two tasks of one dataset apart; it defaults to the dataset name."""

    dataset: str
    group: str
    options: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.dataset)
        object.__setattr__(self, "options", dict(self.options))


@dataclass(frozen=True)
class Suite:
    """A named set of tasks run as one study (``tlbench run --suite NAME``), each task a dataset with its split
    protocol and its group. ``groups`` orders the groups as reports show them (the groups of the tasks, each named
    once; empty: in the order the tasks first name them). ``notes`` says what the suite leaves out of its source
    benchmark and why (shown by ``tlbench list suites``). Every trial a suite runs records its suite, task and
    group (``trial.suite`` in the record)."""

    name: str
    description: str
    tasks: Sequence[SuiteTask]
    groups: Sequence[str] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        groups = tuple(self.groups) or tuple(dict.fromkeys(getattr(t, "group", None) for t in self.tasks))
        object.__setattr__(self, "groups", groups)

    def check(self) -> None:
        """Raise :class:`UsageError` (one line) for a suite that cannot run: no tasks, a task that is not a
        :class:`SuiteTask`, a task named twice, a group not in ``groups`` or a group never used."""
        where = f"suite {self.name!r}"
        if not isinstance(self.description, str):
            raise UsageError(f"{where}: description must be a string, got {type(self.description).__name__}")
        if not self.tasks:
            raise UsageError(f"{where} has no tasks; give it at least one SuiteTask(dataset, group, options)")
        names: set[str] = set()
        for task in self.tasks:
            if not isinstance(task, SuiteTask):
                raise UsageError(f"{where}: task {task!r:.60} is not a tlbench.SuiteTask(dataset, group, options)")
            for label, value in (("dataset", task.dataset), ("group", task.group), ("name", task.name)):
                if not isinstance(value, str) or not value.strip():
                    raise UsageError(f"{where}: task {task.name!r} needs a non-empty {label} string, got {value!r}")
            if not isinstance(task.options, Mapping) or not all(isinstance(k, str) for k in task.options):
                raise UsageError(f"{where}: task {task.name!r} options must map dataset option names to values")
            if task.name in names:
                raise UsageError(f"{where} names task {task.name!r} twice; give the tasks distinct names")
            names.add(task.name)
        if len(set(self.groups)) != len(self.groups) or not all(isinstance(g, str) for g in self.groups):
            raise UsageError(f"{where}: groups must be distinct strings, got {list(self.groups)!r}")
        unknown = [t.group for t in self.tasks if t.group not in self.groups]
        if unknown:
            raise UsageError(f"{where}: task group {unknown[0]!r} is not one of its groups "
                             f"({', '.join(self.groups)}); add it to `groups`")
        unused = [g for g in self.groups if not any(t.group == g for t in self.tasks)]
        if unused:
            raise UsageError(f"{where}: group {unused[0]!r} has no task; drop it from `groups`")

    def task(self, name: str) -> SuiteTask:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)


# --------------------------------------------------------------------------------------------------- executors
@runtime_checkable
class Executor(Protocol):
    """Runs trial jobs: ``execute(jobs, session)``. Each job is a :class:`tlbench.jobs.TrialJob` (plain data); the
    executor gets it run somewhere — this process, a child process, a Ray actor, a Slurm task — by calling the
    module-level worker :func:`tlbench.jobs.run_job` there, and hands each returned record to the driver:
    ``session.claim(job)`` before running it (skip the job when False), ``session.finish(job, record)`` after, or
    ``session.fail(job, reason)`` when no record came back; ``session.run_here(job)`` does all three in this
    process. Stop dispatching when ``session.stopping`` is true. Jobs arrive sorted by dataset, then backbone
    (``job.group``), so a worker given one group keeps its data and features warm.

    Optional attributes: ``options`` (a dict of option defaults; users set them with ``--set executor.KEY=VALUE``,
    and they are recorded), ``check_options(options)`` (raise UsageError for bad values), ``in_process = True``
    for executors that run jobs in the driver's process, ``requires`` (as on :class:`Strategy`)."""

    name: str
    description: str

    def execute(self, jobs: Sequence[Any], session: Any) -> None: ...
