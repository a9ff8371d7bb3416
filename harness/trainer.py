"""One training loop for every strategy: index slices of device tensors, on-device preprocessing, AdamW with
warm-up + schedule, validation every epoch, best epoch chosen on validation. The test split never enters here.

The loop does not know which strategy or backbone it trains: it gets a module, two device-resident splits and the
optimizer groups the plan produced.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from tlbench.allocator import keep_freed_memory
from tlbench.divergence import finite_divergence
from tlbench.measure import synchronize

WARMUP_STEPS = 3  # training steps excluded from throughput (allocator, cudnn autotuning, compile)
WARMUP_COPY_STEPS = 2  # untimed steps on a copy of the model before a phase trains (see warm_up)
# AdamW's multi-tensor implementation (torch._foreach_* ops): torch's default on CUDA; on the CPU it runs the same
# per-tensor kernels in the same order as the per-tensor loop torch defaults to there, so the weights are
# bit-identical (tests/test_preprocessed_once.py), with one Python call per operation instead of one per tensor:
# 14.8 ms instead of 16.4 ms per optimizer step on efficientnet_lite0 (2-core CPU, 2026-12-03).
ADAMW_OPTIONS = {"foreach": True}


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite, or blew up before anything was learnt (tlbench.divergence)."""


@dataclass
class Split:
    """A split on the device: ``inputs`` are uint8 images or cached features; the two callables turn a slice of
    them into model inputs (training may augment, using the generator)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    prepare_train: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    prepare_eval: Callable[[torch.Tensor], torch.Tensor]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Evaluation:
    top1: float
    top5: float | None
    images: int
    seconds: float
    images_per_s: float | None  # excludes the first batch (warm-up) when there is more than one


@dataclass
class FitResult:
    best_epoch: int
    best_val: Evaluation
    history: list[dict[str, Any]]
    train_images_per_s: float | None
    train_seconds: float
    val_seconds: float
    steps: int
    best_state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    timed_images: int = 0  # after warm-up: what train_images_per_s is computed from
    timed_seconds: float = 0.0
    warmup: dict[str, Any] = field(default_factory=dict)  # the untimed warm-up before the phase (warm_up)
    # FitPhase.keep_epoch_ends: the snapshot's trainable parameters and buffers at each epoch's end, in order
    epoch_ends: list[dict[str, torch.Tensor]] | None = field(repr=False, default=None)


def resolve_amp(device: torch.device, amp: str) -> str:
    """"auto" is bf16 autocast on CUDA and full precision elsewhere."""
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "off"
    return amp


def resolve_channels_last(device: torch.device, value: bool | str, protocol_version: int | None = None) -> bool:
    """"auto" is on for CUDA and, since protocol 2, for the CPU: 1.4x faster per full fine-tune step on the 2-core
    CPU at equal validation accuracy (benchmarks/test_speed_v2.py::test_cpu_step_options; docs/results-archive.md).
    ``protocol_version`` (default: today's) resolves "auto" as an older protocol did: protocol 1, CUDA only."""
    if value == "auto":
        if protocol_version is not None and protocol_version < 2:
            return device.type == "cuda"
        return device.type in ("cuda", "cpu")
    return bool(value)


def resolve_eval_batch_size(device: torch.device, value: int | str) -> int:
    """"auto": 256 on CUDA; 32 on CPU, where large batches run 2-3x slower per image (measured, benchmarks/)."""
    if value == "auto":
        return 256 if device.type == "cuda" else 32
    return int(value)


def autocast_context(device: torch.device, amp: str) -> Callable[[], contextlib.AbstractContextManager]:
    amp = resolve_amp(device, amp)
    if amp == "off":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


class _BatchTimer:
    """Throughput over batches after the first (warm-up); with a single batch, over that batch."""

    def __init__(self, device: torch.device):
        self.device = device
        synchronize(device)
        self.start = time.perf_counter()
        self.timed_start: float | None = None
        self.timed_images = self.images = 0

    def batch_done(self, index: int, images: int) -> None:
        if index == 0:
            synchronize(self.device)
            self.timed_start = time.perf_counter()
        else:
            self.timed_images += images
        self.images += images

    def finish(self) -> tuple[float, float | None]:
        synchronize(self.device)
        end = time.perf_counter()
        if self.timed_images and self.timed_start is not None and end > self.timed_start:
            return end - self.start, self.timed_images / (end - self.timed_start)
        return end - self.start, (self.images / (end - self.start) if end > self.start else None)


@torch.no_grad()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor], split: Split, batch_size: int, device: torch.device,
             autocast: Callable[[], contextlib.AbstractContextManager], num_classes: int) -> Evaluation:
    correct1 = torch.zeros((), device=device, dtype=torch.long)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    timer = _BatchTimer(device)
    for index, lo in enumerate(range(0, len(split), batch_size)):
        x = split.prepare_eval(split.inputs[lo:lo + batch_size])
        y = split.labels[lo:lo + batch_size]
        with autocast():
            logits = model(x)
        topk = logits.topk(min(5, num_classes), dim=1).indices
        correct1 += (topk[:, 0] == y).sum()
        correct5 += (topk == y[:, None]).any(dim=1).sum()
        timer.batch_done(index, len(y))
    seconds, rate = timer.finish()
    total = len(split)
    return Evaluation(top1=correct1.item() / total, top5=(correct5.item() / total) if num_classes > 5 else None,
                      images=total, seconds=seconds, images_per_s=rate)


@torch.no_grad()
def extract_features(pre_logits: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     prepare: Callable[[torch.Tensor], torch.Tensor], batch_size: int, device: torch.device,
                     autocast: Callable[[], contextlib.AbstractContextManager]) -> tuple[torch.Tensor, float | None]:
    """Pooled features of every image (float32), and the images/s of that forward pass."""
    chunks = []
    timer = _BatchTimer(device)
    for index, lo in enumerate(range(0, len(images), batch_size)):
        with autocast():
            chunks.append(pre_logits(prepare(images[lo:lo + batch_size])).float())
        timer.batch_done(index, len(chunks[-1]))
    return torch.cat(chunks), timer.finish()[1]


def warm_up(model: nn.Module, train: Split, val: Split, batch_size: int, eval_batch_size: int,
            device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager],
            steps: int = WARMUP_COPY_STEPS) -> dict[str, Any]:
    """Pay a process's one-time costs before anything is timed: a few training steps (forward, backward, AdamW) on a
    *copy* of the model, then one evaluation forward at every batch shape validation uses. The first trial of a
    process would otherwise pay them inside its timed region (kernel and primitive creation per shape, allocator
    growth). The real model, its optimizer and every random generator are untouched: the copy trains, and the
    global RNG (dropout) is forked. Returns what it did, for the record."""
    allocator = keep_freed_memory() if device.type == "cpu" else None
    if type(model).__name__ == "OptimizedModule":  # torch.compile's wrapper: copying it would compile again
        return {"steps": 0, "seconds": 0.0, "note": "compiled model: its first timed steps are excluded instead",
                "cpu_allocator": allocator}
    start = time.perf_counter()
    twin = copy.deepcopy(model)
    params = [p for p in twin.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.0, **ADAMW_OPTIONS) if params else None
    eval_shapes = sorted({min(eval_batch_size, len(val)), len(val) % eval_batch_size} - {0})
    gen_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gen_devices):
        twin.train()
        for step in range(min(steps, max(1, len(train) // batch_size))):
            index = torch.arange(step * batch_size, min((step + 1) * batch_size, len(train)), device=device)
            x = train.prepare_train(train.inputs[index], torch.Generator(device=train.inputs.device))
            with autocast():
                loss = nn.functional.cross_entropy(twin(x).float(), train.labels[index])
            if optimizer is not None and loss.requires_grad:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        twin.eval()
        with torch.no_grad():
            for shape in eval_shapes:
                with autocast():
                    twin(val.prepare_eval(val.inputs[:shape]))
    synchronize(device)
    del twin, optimizer
    return {"steps": steps, "eval_batch_shapes": eval_shapes, "seconds": time.perf_counter() - start,
            "how": "untimed steps on a copy of the model, then one forward per validation batch shape",
            "cpu_allocator": allocator}


@dataclass
class BestEpoch:
    """The best validation epoch so far, across phases (earliest on ties), and the model's state at that epoch.

    ``snapshot`` is what ``state`` is taken from: the whole model, also when a phase trains only its head on
    cached features, so that restoring the best epoch is one ``load_state_dict`` whichever phase it came from.
    ``tag`` is whatever the caller needs to know about that state (e.g. whether cached features still describe it).
    """

    top1: float = -1.0
    epoch: int = 0
    evaluation: Evaluation | None = None
    state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    tag: Any = None

    def offer(self, epoch: int, evaluation: Evaluation, snapshot: nn.Module, tag: Any = None) -> None:
        if evaluation.top1 > self.top1:
            self.top1, self.epoch, self.evaluation, self.tag = evaluation.top1, epoch, evaluation, tag
            self.state = {k: v.detach().clone() for k, v in snapshot.state_dict().items()}


@dataclass
class ScheduleSpan:
    """Where a phase sits in its LR schedule: a phase that restarts starts a new span (fresh AdamW, warm-up, cosine
    over the span's steps); a phase that continues takes over the optimizer and the step count."""

    total_steps: int
    offset: int = 0
    optimizer: torch.optim.Optimizer | None = None


@dataclass
class FitRun:
    """What every phase of one trial's training shares: the device, the trial's random generator (batch order and
    augmentation), the number of classes, and the callbacks that report progress (``progress`` gets the number of
    training steps just taken; ``on_epoch`` each epoch's history entry plus ``images_per_s``)."""

    device: torch.device
    generator: torch.Generator
    num_classes: int
    progress: Callable[[int], None] = lambda n: None
    on_epoch: Callable[[dict[str, Any]], None] | None = None


@dataclass
class FitPhase:
    """How one phase is fitted: the per-phase training options ``fit`` takes (the defaults: one phase on its own).

    ``epochs`` (None: ``protocol['epochs']``) are numbered from ``first_epoch``; ``label`` names the phase in each
    history entry ("" leaves the name out). Every epoch is scored on validation; when the phase is ``selectable``
    its weights are offered to ``best`` (a :class:`BestEpoch` shared across phases; None: this phase's own), taken
    from ``snapshot`` (None: the model trained) and tagged ``best_tag``. ``span`` places the phase in its LR
    schedule (None: a schedule of its own). ``loss_term()`` is added to the task loss at every step, in float32
    outside autocast. ``before_eval`` runs before each validation pass (BatchNorm recalibration), which scores
    ``eval_model`` (None: the model trained). ``keep_epoch_ends``: keep the snapshot's trainable parameters and
    buffers as each epoch ends (where ``on_epoch_end`` runs), for a trial that reuses the phase and replays its
    epoch-end callbacks (:mod:`tlbench.shared_phases`)."""

    epochs: int | None = None
    first_epoch: int = 1
    selectable: bool = True
    label: str = ""
    span: ScheduleSpan | None = None
    best: BestEpoch | None = None
    snapshot: nn.Module | None = None
    best_tag: Any = None
    loss_term: Callable[[], torch.Tensor] | None = None
    before_eval: Callable[[], None] = lambda: None
    eval_model: Callable[[torch.Tensor], torch.Tensor] | None = None
    # the training step (tlbench.TrainPlan's batch parts): ``batch_transform(x, one_hot, generator)`` after
    # preprocessing; ``task_loss(logits, targets)`` replaces cross-entropy; ``step_loss(x, targets, logits)`` is
    # added like ``loss_term``; ``on_step_end(optimizer, step)`` after each optimizer step; ``on_epoch_end(epoch)``
    # after an epoch's last step, before its validation pass
    batch_transform: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]] \
        | None = None
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    step_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    on_step_end: Callable[[torch.optim.Optimizer, int], None] | None = None
    on_epoch_end: Callable[[int], None] | None = None
    keep_epoch_ends: bool = False


def epoch_end_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What changes in ``model`` while a phase trains: its trainable parameters and its buffers (BatchNorm's
    running statistics), cloned. With the parameters the phase froze, which stay as they were when it started,
    this is the model's whole state."""
    state = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return state | {name: b.detach().clone() for name, b in model.named_buffers()}


def fit(model: nn.Module, train: Split, val: Split, optimizer_groups: list[dict[str, Any]],
        protocol: Mapping[str, Any], *, run: FitRun, phase: FitPhase | None = None) -> FitResult:
    """Train ``model`` for the phase's epochs; after each epoch run ``phase.before_eval``, score the validation
    split, and offer the weights to ``phase.best`` (earliest best epoch wins; epochs of a phase that is not
    ``selectable`` are scored and logged only). ``run`` is what every phase of the trial shares (device, generator,
    classes, progress callbacks); ``run.on_epoch`` gets each epoch's history entry plus ``images_per_s`` (that
    epoch's training images per second)."""
    phase = phase if phase is not None else FitPhase()
    device, generator, num_classes = run.device, run.generator, run.num_classes
    epochs = protocol["epochs"] if phase.epochs is None else phase.epochs
    best = phase.best if phase.best is not None else BestEpoch()
    snapshot = phase.snapshot if phase.snapshot is not None else model
    loss_term = phase.loss_term
    batch_size = protocol["batch_size"]
    autocast = autocast_context(device, protocol["amp"])
    scaler = torch.amp.GradScaler(device.type) if resolve_amp(device, protocol["amp"]) == "fp16" else None
    optimizer = torch.optim.AdamW(optimizer_groups, lr=optimizer_groups[0]["lr"], **ADAMW_OPTIONS)
    # Full batches only (as timm's loaders do): a last batch of one image breaks BatchNorm in train mode.
    steps_per_epoch = max(1, len(train) // batch_size)
    span = phase.span or ScheduleSpan(epochs * steps_per_epoch)
    if span.optimizer is not None:  # the phase continues the previous one: Adam moments carry over
        for group in span.optimizer.param_groups:
            for param in group["params"]:
                if param in span.optimizer.state:
                    optimizer.state[param] = span.optimizer.state[param]
    warmup = min(span.total_steps, round(protocol["warmup_epochs"] * steps_per_epoch))
    factor, offset = lr_lambda(span.total_steps, warmup, protocol["schedule"]), span.offset
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step + offset))
    # class indices or N x C probabilities (soft-target cross-entropy), label smoothing applied to both
    loss_fn = phase.task_loss or nn.CrossEntropyLoss(label_smoothing=protocol["label_smoothing"])
    extra_terms = loss_term is not None or phase.step_loss is not None
    eval_model = phase.eval_model or model
    warmup = warm_up(model, train, val, batch_size, resolve_eval_batch_size(device, protocol["eval_batch_size"]),
                     device, autocast)

    history: list[dict[str, Any]] = []
    epoch_ends: list[dict[str, torch.Tensor]] | None = [] if phase.keep_epoch_ends else None
    phase_best: tuple[float, int] = (-1.0, 0)
    phase_best_eval: Evaluation | None = None
    timed_seconds, timed_images, train_seconds, val_seconds, step = 0.0, 0, 0.0, 0.0, 0
    for epoch in range(phase.first_epoch, phase.first_epoch + epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        term_sum = torch.zeros((), device=device)
        synchronize(device)
        epoch_start = time.perf_counter()
        timed_from, images_after_warmup = (epoch_start if step >= WARMUP_STEPS else None), 0
        for index in range(steps_per_epoch):
            batch = order[index * batch_size:(index + 1) * batch_size]
            x = train.prepare_train(train.inputs[batch], generator)
            y = train.labels[batch]
            if phase.batch_transform is not None:
                x, y = phase.batch_transform(x, nn.functional.one_hot(y, num_classes).float(), generator)
            with autocast():
                logits = model(x)
                loss = loss_fn(logits, y)
            if extra_terms:
                terms = ([loss_term().float()] if loss_term is not None else []) + (
                    [phase.step_loss(x, y, logits).float()] if phase.step_loss is not None else [])
                term = terms[0] if len(terms) == 1 else terms[0] + terms[1]
                term_sum += term.detach()
                loss = loss.float() + term
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().float()
            step += 1
            if phase.on_step_end is not None:
                phase.on_step_end(optimizer, step)
            if timed_from is None and step == WARMUP_STEPS:
                synchronize(device)
                timed_from = time.perf_counter()
            elif timed_from is not None:
                images_after_warmup += len(y)
            run.progress(1)
        synchronize(device)
        epoch_end = time.perf_counter()
        train_seconds += epoch_end - epoch_start
        if timed_from is not None:
            timed_seconds += epoch_end - timed_from
            timed_images += images_after_warmup
        mean_loss = (loss_sum / steps_per_epoch).item()
        if not math.isfinite(mean_loss):
            raise TrialDiverged(f"training loss became {mean_loss} in epoch {epoch}; lower the learning rate")
        if phase.on_epoch_end is not None:
            phase.on_epoch_end(epoch)
        if epoch_ends is not None:
            epoch_ends.append(epoch_end_state(snapshot))

        model.eval()
        phase.before_eval()
        result = evaluate(eval_model, val, resolve_eval_batch_size(device, protocol["eval_batch_size"]), device,
                          autocast, num_classes)
        val_seconds += result.seconds
        entry = {"epoch": epoch, "train_loss": mean_loss, "val_top1": result.top1, "val_top5": result.top5,
                 "lr": optimizer.param_groups[0]["lr"]}
        if phase.label:
            entry["phase"] = phase.label
        if extra_terms:
            entry["loss_term"] = (term_sum / steps_per_epoch).item()
        history.append(entry)
        if run.on_epoch is not None:
            run.on_epoch({**entry, "images_per_s": steps_per_epoch * batch_size / max(epoch_end - epoch_start, 1e-9)})
        diverged = finite_divergence(history, num_classes, len(val))  # the rule: tlbench.divergence
        if diverged:
            raise TrialDiverged(diverged)
        if result.top1 > phase_best[0]:
            phase_best, phase_best_eval = (result.top1, epoch), result
        if phase.selectable:
            best.offer(epoch, result, snapshot, phase.best_tag)
    assert phase_best_eval is not None
    span.optimizer, span.offset = optimizer, span.offset + step
    return FitResult(best_epoch=best.epoch if best.evaluation else phase_best[1],
                     best_val=best.evaluation or phase_best_eval, history=history,
                     train_images_per_s=(timed_images / timed_seconds) if timed_seconds > 0 else None,
                     train_seconds=train_seconds, val_seconds=val_seconds, steps=step, best_state=best.state,
                     timed_images=timed_images, timed_seconds=timed_seconds, warmup=warmup, epoch_ends=epoch_ends)
