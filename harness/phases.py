"""Carries out one strategy's plan on one built backbone: model surgery, the phases in order (each end to end, or
on cached features when only the head trains on an unchanged backbone), the best validation epoch restored, the
after-training step, and the one pass over the test split.

Selection across phases: every epoch of every phase is scored on validation; the best epoch of the *selectable*
phases wins (earliest on ties), and its weights — the whole model's — are restored before the after-training step
and the test pass. The model carries over from phase to phase as it ended (the last epoch's weights).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from tlbench.freeze import AppliedPhase, apply_phase, describe, recalibrate_batchnorm, regroup_after_surgery
from tlbench.measure import Stopwatch, train_step_flops
from tlbench.prefix_cache import MIB, CachedPrefix, PrefixPlan, plan_prefix
from tlbench.preprocess import DevicePreprocessor
from tlbench.shared_phases import (SharedPhase, TrialSharing, merge_best, phase_key, rng_states, set_rng_states,
                                   start_key)
from tlbench.trainer import (BestEpoch, Evaluation, FitPhase, FitResult, FitRun, ScheduleSpan, Split, autocast_context,
                             evaluate, fit)
from tlbench.types import Backbone, ImageSplits, StepContext, TrainingContext, TrainPlan, UsageError


@dataclass
class CachedFeatures:
    """Pooled features of the splits asked for, from one frozen backbone, and the images/s of the last pass that
    made some of them (the test split's when it was made)."""

    splits: dict[str, torch.Tensor]
    images_per_s: float | None
    seconds: float  # spent by this request: 0.0 when an earlier request (or trial of the run) made them all


@dataclass
class PhaseOutcome:
    record: dict[str, Any]
    fit: FitResult
    applied: AppliedPhase
    on_features: bool
    flops_per_image: float
    shared_from: dict[str, str] | None = None  # the trial and phase it was reused from (tlbench.shared_phases)


@dataclass
class PlanOutcome:
    phases: list[PhaseOutcome]
    best: BestEpoch
    val: Evaluation  # the validation score of the weights that were tested
    test: Evaluation  # scored once, at the end
    eval_images_per_s: float | None
    feature_seconds: float | None  # None: no phase used cached features
    surgery: Mapping[str, Any] | None
    after_training: Mapping[str, Any] | None
    trainable_params: int  # trained in at least one phase
    total_params: int
    prefix_seconds: float | None = None  # None: no phase used the frozen-prefix cache
    prefix_flops: float = 0.0  # forward FLOPs this trial spent computing cached prefix activations
    preprocessed_once: dict[str, Any] | None = None  # _EndToEndSplits.record (None: no phase read the images)

    @property
    def history(self) -> list[dict[str, Any]]:
        return [entry for phase in self.phases for entry in phase.fit.history]

    @property
    def steps(self) -> int:
        return sum(phase.fit.steps for phase in self.phases)

    @property
    def train_seconds(self) -> float:
        """Training seconds this trial spent (a phase reused from another trial cost it none)."""
        return sum(phase.fit.train_seconds for phase in self.phases if phase.shared_from is None)

    @property
    def val_seconds(self) -> float:
        return sum(phase.fit.val_seconds for phase in self.phases if phase.shared_from is None)

    @property
    def shared_seconds(self) -> float | None:
        """What the reused phases cost the trial that computed them (training and validation); None: none."""
        shared = [p.fit for p in self.phases if p.shared_from is not None]
        return sum(f.train_seconds + f.val_seconds for f in shared) if shared else None

    @property
    def train_images_per_s(self) -> float | None:
        """Over the end-to-end phases when there are any (the head on cached features is another kind of step),
        else over the cached-feature phases."""
        chosen = [p.fit for p in self.phases if not p.on_features] or [p.fit for p in self.phases]
        seconds = sum(f.timed_seconds for f in chosen)
        return sum(f.timed_images for f in chosen) / seconds if seconds > 0 else None


def apply_surgery(backbone: Backbone, plan: TrainPlan) -> tuple[dict[str, str], Mapping[str, Any] | None]:
    """Run the plan's surgery on the backbone's model (in place) and map every parameter to its group."""
    group_of = {name: group for group, names in backbone.groups for name in names}
    if plan.surgery is None:
        return group_of, None
    group_by_id = {id(p): group_of[name] for name, p in backbone.model.named_parameters()}
    record = plan.surgery(backbone)
    if not any(module is backbone.head for module in backbone.model.modules()):
        raise UsageError(f"model surgery ({describe(plan.surgery)}) replaced the head of {backbone.name}; leave the "
                         f"classifier in place (exclude it from the modules it wraps)")
    return regroup_after_surgery(backbone.model, group_by_id), dict(record or {})


@dataclass
class BuiltTrial:
    """One trial as the runner built it, ready for :func:`run_plan`: the strategy's plan, the backbone after
    surgery (``group_of`` maps every parameter to its group; ``surgery`` is what the surgery recorded), ``model``
    on the device and ``train_model`` (the same model, compiled when the protocol says so), the on-device
    preprocessing, the trial's splits and its resolved protocol."""

    plan: TrainPlan
    backbone: Backbone
    group_of: dict[str, str]
    surgery: Mapping[str, Any] | None
    model: nn.Module
    train_model: Callable[[torch.Tensor], torch.Tensor]
    prep: DevicePreprocessor
    splits: ImageSplits
    protocol: Mapping[str, Any]


@dataclass
class PlanServices:
    """What the runner serves :func:`run_plan` beyond the trial: ``features`` makes (or fetches) the pooled
    features of the splits asked for; ``prefix`` serves the frozen-prefix cache (:mod:`tlbench.prefix_cache`;
    None: every phase that trains more than the head runs end to end); ``progress`` gets the number of training
    steps just taken; ``on_epoch`` gets each epoch's history entry with ``images_per_s`` and the trial's total
    ``epochs`` (the progress lines); ``shared`` gives the phases other trials of this worker computed
    (:mod:`tlbench.shared_phases`)."""

    features: Callable[[tuple[str, ...]], CachedFeatures]
    progress: Callable[[int], None] = lambda n: None
    prefix: Callable[[PrefixPlan, tuple[str, ...]], CachedPrefix] | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    shared: TrialSharing | None = None  # phases another trial of this worker computed (None: compute every one)


def run_plan(trial: BuiltTrial, services: PlanServices, *, device: torch.device,
             generator: torch.Generator) -> PlanOutcome:
    """Train the phases, restore the best epoch, run the after-training step, score the test split once.

    ``generator`` is the trial's (batch order, augmentation); ``services`` are the caches and callbacks the runner
    serves."""
    plan, backbone, group_of, surgery = trial.plan, trial.backbone, trial.group_of, trial.surgery
    model, train_model, prep, splits, protocol = (trial.model, trial.train_model, trial.prep, trial.splits,
                                                  trial.protocol)
    features, prefix, on_epoch = services.features, services.prefix, services.on_epoch
    phases = plan.all_phases()
    num_classes = len(splits.classes)
    steps_per_epoch = max(1, len(splits.train_labels) // protocol["batch_size"])
    epochs = [phase.resolved_epochs(protocol["epochs"]) for phase in phases]
    autocast = autocast_context(device, protocol["amp"])
    images = _EndToEndSplits(splits, prep, protocol, device)
    needs_start = plan.loss_term is not None or plan.after_training is not None
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()} if needs_start else {}
    batch_size = protocol["batch_size"]
    context = TrainingContext(model, dict(model.named_parameters()), group_of, initial, num_classes=num_classes,
                              epochs=sum(epochs),
                              train_batches=lambda: (prep.eval(splits.train_images[lo:lo + batch_size])
                                                     for lo in range(0, len(splits.train_labels), batch_size)))
    loss_term = (lambda: plan.loss_term(context)) if plan.loss_term is not None else None
    step = _StepRuntime(plan, model, backbone, group_of, context, autocast)

    best = BestEpoch()
    outcomes: list[PhaseOutcome] = []
    backbone_changed = False  # once a phase trains more than the head, cached features no longer describe it
    span: ScheduleSpan | None = None
    first_epoch = 1
    feature_seconds: float | None = None
    prefix_seconds: float | None = None
    prefix_flops = 0.0
    trained: set[str] = set()
    total_epochs = sum(epochs)
    shown_phase = (lambda entry: entry.get("phase")) if len(phases) > 1 else (lambda entry: None)
    epoch_hook = (lambda entry: on_epoch({**entry, "epochs": total_epochs, "phase": shown_phase(entry)})
                  ) if on_epoch else None
    run = FitRun(device, generator, num_classes, services.progress, epoch_hook)
    shared = services.shared
    # the key of the computation so far; None: this trial shares no (more) phases
    # (nor does a plan with parts the key does not describe: TrainPlan.unshared_parts)
    chain = (start_key(shared.base, model, generator, device)
             if shared is not None and not plan.unshared_parts else None)
    for index, phase in enumerate(phases):
        label = phase.name or str(index + 1)  # how the history and the record name this phase
        applied = apply_phase(model, group_of, backbone.group_names, phase, protocol["weight_decay"])
        planned_groups = [{k: v for k, v in g.items() if k != "params"} | {"parameters": sum(
            p.numel() for p in g["params"])} for g in applied.optimizer_groups]  # before the optimizer edits them
        trained_before = set(trained)
        trained |= applied.trainable_names
        if phase.restart or span is None:
            continuing = 1
            while index + continuing < len(phases) and not phases[index + continuing].restart:
                continuing += 1
            span = ScheduleSpan(steps_per_epoch * sum(epochs[index:index + continuing]))
        batch_parts = phase.batch_parts + [n for n in ("feature_layers", "reference_layers") if getattr(plan, n)]
        on_features = bool(protocol["feature_cache"]) and applied.head_only and prep.augment == "none" \
            and not backbone_changed and not batch_parts
        fitting = FitPhase(epochs=epochs[index], first_epoch=first_epoch, selectable=phase.selectable, label=label,
                           span=span, best=best, snapshot=model, loss_term=loss_term,
                           **step.fit_options(phase, sum(epochs[:index]) * steps_per_epoch))
        prefix_plan, prefix_record = None, None
        if batch_parts:  # the step reads more than (prefix activations or features) -> logits: end to end
            prefix_record = {"used": False, "budget_mib": protocol.get("prefix_cache_mib", 0), "reason": (
                f"the phase's {', '.join(batch_parts)} act on the batch: no cached features or prefix "
                f"activations are equivalent")}
        elif not on_features:
            prefix_plan, prefix_record = _prefix_decision(model, applied, trained_before, prep, splits, protocol,
                                                          prefix, autocast)
        key = None
        if chain is not None and (on_features or prefix_plan is None):
            key = phase_key(chain, _phase_definition(model, applied, phase, epochs[index], first_epoch, span,
                                                     on_features))
        chain = key  # a phase that cannot be keyed ends sharing for the rest of the trial
        continues = index + 1 < len(phases) and not phases[index + 1].restart  # would need the optimizer's moments
        replays = bool(phase.callbacks)  # callbacks that only read the weights at epoch ends (unshared_parts)
        reused = (shared.store.get(key, with_epoch_ends=replays) if shared is not None and key is not None
                  and not continues else None)
        shared_from = None
        if reused is not None:  # exactly this phase was computed by another trial: take what it left behind
            if replays:
                _replay_epoch_ends(model, reused.epoch_ends or [], phase.callbacks, context, first_epoch,
                                   sum(epochs[:index]) * steps_per_epoch, steps_per_epoch)
            model.load_state_dict(reused.end_state)
            set_rng_states(reused.rng_after, generator, device)
            merge_best(best, reused.best, phase.selectable)
            span.offset, span.optimizer = span.offset + reused.fit.steps, None
            services.progress(reused.fit.steps)
            result = replace(reused.fit, history=[{**entry, "phase": label} if "phase" in entry else dict(entry)
                                                  for entry in reused.fit.history])
            flops = reused.flops_per_image
            if on_features:
                feature_seconds = feature_seconds or 0.0
            shared_from = {"trial": reused.origin, "phase": reused.label} | (
                {"epoch_ends_replayed": len(reused.epoch_ends or [])} if replays else {})
        else:
            phase_best = BestEpoch() if key is not None else None
            if phase_best is not None:  # the phase's own best epoch, kept for reuse, offered to the trial's below
                fitting = replace(fitting, best=phase_best, selectable=True, keep_epoch_ends=shared.keep_epoch_ends)
            if on_features:
                # the test split's features too when this phase's weights may be the ones tested (one pass for all)
                may_be_tested = phase.selectable and plan.after_training is None
                cached = features(("train", "val", "test") if may_be_tested else ("train", "val"))
                feature_seconds = (feature_seconds or 0.0) + cached.seconds
                result = fit(backbone.head, _feature_split(cached.splits["train"], splits.train_labels),
                             _feature_split(cached.splits["val"], splits.val_labels), applied.optimizer_groups, protocol,
                             run=run, phase=replace(fitting, best_tag=True))
                flops = train_step_flops(backbone.head, cached.splits["val"][:2], num_classes) / 2
            elif prefix_plan is not None and prefix is not None:
                cached_prefix = prefix(prefix_plan, ("train", "val"))
                prefix_seconds = (prefix_seconds or 0.0) + cached_prefix.seconds
                prefix_flops += prefix_plan.prefix_flops_per_image * cached_prefix.images_computed
                prefix_record |= {"seconds": cached_prefix.seconds, "cache_mib": cached_prefix.mib}
                suffix = torch.compile(prefix_plan.suffix) if protocol["compile"] else prefix_plan.suffix
                activations = cached_prefix.splits
                recalibrate = _recalibration(applied, suffix, prep, splits, protocol, images=activations["train"],
                                             prepare=lambda x: x)
                result = fit(suffix, _cached_split(activations["train"], splits.train_labels, prep.channels_last),
                             _cached_split(activations["val"], splits.val_labels, prep.channels_last),
                             applied.optimizer_groups, protocol, run=run,
                             phase=replace(fitting, best_tag=prefix_plan, before_eval=recalibrate))
                flops = train_step_flops(prefix_plan.suffix, activations["val"][:2], num_classes) / 2
            else:
                recalibrate = _recalibration(applied, train_model, prep, splits, protocol)
                train, val = images.splits()
                result = fit(train_model, train, val, applied.optimizer_groups, protocol, run=run,
                             phase=replace(fitting, best_tag=False, before_eval=recalibrate))
                flops = train_step_flops(model, prep.eval(splits.val_images[:2]), num_classes) / 2
            if phase_best is not None:
                merge_best(best, phase_best, phase.selectable)
                shared.store.put(key, SharedPhase(shared.trial_key, label,
                                                  {k: v.detach().clone() for k, v in model.state_dict().items()},
                                                  phase_best, replace(result, epoch_ends=None), flops_per_image=flops,
                                                  rng_after=rng_states(generator, device),
                                                  epoch_ends=result.epoch_ends))
                result = replace(result, epoch_ends=None)
        backbone_changed |= not applied.head_only
        first_epoch += epochs[index]
        record = _phase_record(label, phase, epochs[index], applied, on_features, result) | {
            "optimizer_groups": planned_groups, "prefix_cache": prefix_record, "shared_from": shared_from} | (
            {"batch_parts": batch_parts} if batch_parts else {})
        outcomes.append(PhaseOutcome(record, result, applied, on_features, flops, shared_from))

    step.close()
    model.load_state_dict(best.state)
    model.eval()
    last = outcomes[-1]
    eval_batch = protocol["eval_batch_size"]
    after_record = None
    final_val = best.evaluation
    tag = best.tag  # True: cached features describe the best weights; a PrefixPlan: cached prefix activations do
    if plan.after_training is not None:
        before_eval = _recalibration(last.applied, train_model, prep, splits, protocol)
        val = images.splits()[1]

        def score_val() -> float:
            model.eval()
            before_eval()
            return evaluate(train_model, val, eval_batch, device, autocast, num_classes).top1

        context.evaluate = score_val
        after_record = dict(plan.after_training(context) or {})
        model.eval()
        before_eval()
        final_val = evaluate(train_model, val, eval_batch, device, autocast, num_classes)
        tag = None
    assert final_val is not None
    if tag is True:
        cached = features(("test",))
        feature_seconds = (feature_seconds or 0.0) + cached.seconds
        test = evaluate(backbone.head, _feature_split(cached.splits["test"], splits.test_labels), eval_batch, device,
                        autocast, num_classes)
        eval_rate = cached.images_per_s
    elif isinstance(tag, PrefixPlan) and prefix is not None:
        cached_prefix = prefix(tag, ("test",))
        prefix_seconds = (prefix_seconds or 0.0) + cached_prefix.seconds
        prefix_flops += tag.prefix_flops_per_image * cached_prefix.images_computed
        test = evaluate(tag.suffix, _cached_split(cached_prefix.splits["test"], splits.test_labels, prep.channels_last),
                        eval_batch, device, autocast, num_classes)
        # the images/s of the whole network: the prefix pass that made the test activations plus the suffix
        eval_rate = test.images / (cached_prefix.split_seconds["test"] + test.seconds)
    else:
        test = evaluate(train_model, Split(splits.test_images, splits.test_labels, prep.train, prep.eval),
                        eval_batch, device, autocast, num_classes)
        eval_rate = test.images_per_s or final_val.images_per_s
    params = dict(model.named_parameters())
    return PlanOutcome(outcomes, best, final_val, test, eval_rate, feature_seconds, surgery, after_record,
                       sum(params[n].numel() for n in trained), sum(p.numel() for p in params.values()),
                       prefix_seconds, prefix_flops, images.record)


def _replay_epoch_ends(model: nn.Module, epoch_ends: Sequence[Mapping[str, torch.Tensor]],
                       callbacks: Sequence[Any], context: TrainingContext, first_epoch: int, steps_before: int,
                       steps_per_epoch: int) -> None:
    """Give callbacks that only read the weights at epoch ends (``Callback.reads_epoch_ends_only``) what they would
    have seen had this trial computed the reused phase: the model as each epoch ended, in training mode, with
    ``ctx.epoch`` and ``ctx.step`` where training was."""
    model.train()
    for offset, state in enumerate(epoch_ends):
        model.load_state_dict(state, strict=False)  # what the phase changed; the rest is as it started
        context.epoch, context.step = first_epoch + offset, steps_before + (offset + 1) * steps_per_epoch
        for callback in callbacks:
            callback.on_epoch_end(context, context.epoch)
    model.eval()


class _StepRuntime:
    """The plan's training-step parts for :func:`fit`: hooks that capture the head's input and the named feature
    layers, the frozen reference copy of the starting model (made only when ``reference_layers`` asks for one),
    the :class:`StepContext` each step loss sees, and the callbacks' events."""

    def __init__(self, plan: TrainPlan, model: nn.Module, backbone: Backbone, group_of: Mapping[str, str],
                 context: TrainingContext, autocast: Callable):
        self.plan, self.context, self.autocast = plan, context, autocast
        self.captured: dict[str, torch.Tensor] = {}
        self.reference_out: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []
        self.reference: nn.Module | None = None
        if not any(p.step_loss is not None for p in plan.all_phases()):
            return
        if plan.reference_layers:  # a frozen copy of the starting model: never trains, eval mode, no grad
            self.reference = copy.deepcopy(model).eval()
            for param in self.reference.parameters():
                param.requires_grad_(False)
            for name in plan.reference_layers:
                _layer(self.reference, name, group_of).register_forward_hook(self._keep(self.reference_out, name))
        self.handles.append(backbone.head.register_forward_pre_hook(
            lambda module, args: self.captured.__setitem__("\0features", args[0])))
        for name in plan.feature_layers:
            self.handles.append(_layer(model, name, group_of).register_forward_hook(self._keep(self.captured, name)))

    @staticmethod
    def _keep(store: dict[str, torch.Tensor], name: str) -> Callable:
        return lambda module, args, output: store.__setitem__(name, output)

    def fit_options(self, phase: Any, steps_before: int) -> dict[str, Any]:
        options: dict[str, Any] = {"batch_transform": phase.batch_transform, "task_loss": phase.task_loss}
        if phase.step_loss is not None:
            options["step_loss"] = lambda x, y, logits: phase.step_loss(self.step_context(x, y, logits))
        callbacks = list(phase.callbacks or ())
        if callbacks:
            def on_step_end(optimizer: torch.optim.Optimizer, step: int) -> None:
                self.context.step = steps_before + step
                for callback in callbacks:
                    callback.on_step_end(self.context, optimizer)

            def on_epoch_end(epoch: int) -> None:
                self.context.epoch = epoch
                for callback in callbacks:
                    callback.on_epoch_end(self.context, epoch)
            options |= {"on_step_end": on_step_end, "on_epoch_end": on_epoch_end}
        return options

    def step_context(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> StepContext:
        self.reference_out.clear()
        if self.reference is not None:
            with torch.no_grad(), self.autocast():
                self.reference(x)
        intermediate = {name: self.captured[name] for name in self.plan.feature_layers}
        return StepContext(x, y, logits, self.captured.get("\0features"), intermediate, dict(self.reference_out),
                           self.context)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.captured.clear()
        self.reference = None


def _layer(model: nn.Module, name: str, group_of: Mapping[str, str]) -> nn.Module:
    """A module by name, or ``group:<group>``: the innermost module that holds every parameter of the group (when
    none does, the top-level module that holds its last parameter)."""
    if name.startswith("group:"):
        group = name.removeprefix("group:")
        names = [n.split(".")[:-1] for n, g in group_of.items() if g == group]
        if not names:
            raise UsageError(f"feature layer {name!r}: the backbone has no group {group!r}")
        common: list[str] = []
        for parts in zip(*names):
            if len(set(parts)) > 1:
                break
            common.append(parts[0])
        # no single module holds them all (e.g. the last blocks and a final conv): the top-level module of the
        # group's last parameter, whose output is the group's output
        name = ".".join(common) if common else names[-1][0]
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise UsageError(f"feature layer {name!r} is not a module of the model ({exc})") from None


def _phase_definition(model: nn.Module, applied: AppliedPhase, phase: Any, epochs: int, first_epoch: int,
                      span: ScheduleSpan, on_features: bool) -> dict[str, Any]:
    """Everything about one phase that its computation reads, beyond the state it starts from (the chain)."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": [names.get(id(p), "?") for p in g["params"]]}
              for g in applied.optimizer_groups]
    return {"epochs": epochs, "first_epoch": first_epoch, "groups": groups, "on_features": on_features,
            "span": [span.total_steps, span.offset, span.optimizer is not None],
            "trainable": sorted(applied.trainable_names), "recalibrate": len(applied.recalibrate),
            "batchnorm": None if on_features else phase.batchnorm,  # on cached features no BatchNorm runs
            "training_modules": None if on_features else [n for n, m in model.named_modules() if m.training]}


class _EndToEndSplits:
    """The training and validation splits of the phases that read images (end to end, and the after-training step).

    Without augmentation a training image is preprocessed the same way every epoch, and a validation image every
    time it is scored, so both splits are preprocessed once, on the first request, in batches of the evaluation
    batch size, and the phases slice the result: the same inputs bit for bit (the preprocessing of an image does
    not depend on the batch it is in; tests/test_preprocessed_once.py), the work of one epoch instead of one per
    epoch. With augmentation only the validation split is. Only when the preprocessed splits fit
    ``prefix_cache_mib`` (the budget for cached inputs that a frozen function of the image computes: preprocessing
    is the first such function); otherwise, or with the budget 0, every batch is preprocessed as it is read.
    ``record`` says which (None until requested)."""

    def __init__(self, splits: ImageSplits, prep: DevicePreprocessor, protocol: Mapping[str, Any],
                 device: torch.device):
        self.data, self.prep, self.protocol, self.device = splits, prep, protocol, device
        self._splits: tuple[Split, Split] | None = None
        self.record: dict[str, Any] | None = None

    def splits(self) -> tuple[Split, Split]:
        if self._splits is None:
            self._splits = self._make()
        return self._splits

    def _make(self) -> tuple[Split, Split]:
        data, prep = self.data, self.prep
        raw = {"train": Split(data.train_images, data.train_labels, prep.train, prep.eval),
               "val": Split(data.val_images, data.val_labels, prep.train, prep.eval)}
        names = ("train", "val") if prep.augment == "none" else ("val",)  # augmented: differs every epoch
        budget = float(self.protocol.get("prefix_cache_mib") or 0)
        mib = sum(len(raw[n]) for n in names) * 3 * prep.size ** 2 * torch.finfo(prep.dtype).bits / 8 / MIB
        if budget <= 0 or mib > budget:
            self.record = {"used": False, "reason": "prefix_cache_mib is 0" if budget <= 0 else (
                f"the preprocessed splits ({mib:.0f} MiB) would not fit prefix_cache_mib ({budget:g})")}
            return raw["train"], raw["val"]
        batch = int(self.protocol["eval_batch_size"])
        with Stopwatch(self.device) as watch:
            for name in names:
                images = raw[name].inputs
                prepared = torch.cat([prep.eval(images[lo:lo + batch]) for lo in range(0, len(images), batch)])
                raw[name] = _cached_split(prepared, raw[name].labels, prep.channels_last)
        self.record = {"used": True, "splits": list(names), "mib": round(mib, 1), "seconds": watch.seconds} | (
            {} if "train" in names else {"train": "augmented: preprocessed batch by batch, differently every epoch"})
        return raw["train"], raw["val"]


def _feature_split(inputs: torch.Tensor, labels: torch.Tensor) -> Split:
    return Split(inputs, labels, lambda x, g: x, lambda x: x)  # features are already the head's input


def _cached_split(inputs: torch.Tensor, labels: torch.Tensor, channels_last: bool) -> Split:
    """Cached prefix activations are already the suffix's input (in the memory format the model runs in)."""
    def as_input(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
    return Split(inputs, labels, lambda x, g: as_input(x), as_input)


def _prefix_decision(model: nn.Module, applied: AppliedPhase, trained_before: set[str], prep: DevicePreprocessor,
                     splits: ImageSplits, protocol: Mapping[str, Any],
                     prefix: Callable[[PrefixPlan, tuple[str, ...]], CachedPrefix] | None,
                     autocast: Callable) -> tuple[PrefixPlan | None, dict[str, Any]]:
    """Whether this end-to-end phase trains on cached prefix activations, and the record that says why (not)."""
    budget = protocol.get("prefix_cache_mib", 0)
    record: dict[str, Any] = {"used": False, "budget_mib": budget}
    if prefix is None:
        return None, record | {"reason": "no prefix cache in this run"}
    if not budget:
        return None, record | {"reason": "off (prefix_cache_mib=0)"}
    if prep.augment != "none":
        return None, record | {"reason": f"augmentation {prep.augment!r}: the prefix is not a fixed function of "
                                          f"the image"}
    example = prep.eval(splits.val_images[:2])
    planned = plan_prefix(model, applied.trainable_names, example, autocast)
    if isinstance(planned, str):
        return None, record | {"reason": planned}
    record |= planned.describe()
    ids = planned.prefix.parameter_ids()
    changed = [n for n, p in model.named_parameters() if n in trained_before and id(p) in ids]
    if changed:
        return None, record | {"reason": f"an earlier phase trained the prefix ({changed[0]}, ...)"}
    needed = planned.bytes_per_image * sum(splits.sizes.values()) / (1024 * 1024)
    record["needs_mib"] = needed
    if needed > budget:
        return None, record | {"reason": f"the activations need {needed:.0f} MiB, over the budget of {budget} MiB "
                                          f"(raise it with --set prefix_cache_mib=<MiB>)"}
    return planned, record | {"used": True}


def _recalibration(applied: AppliedPhase, train_model: Callable, prep: DevicePreprocessor, splits: ImageSplits,
                   protocol: Mapping[str, Any], images: torch.Tensor | None = None,
                   prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable[[], None]:
    """What runs before each evaluation: re-estimating the statistics of "recalibrate" BatchNorm layers (from the
    training images, or from ``images`` already prepared by ``prepare``, e.g. cached prefix activations)."""
    if not applied.recalibrate:
        return lambda: None
    count = min(len(splits.train_labels), protocol["recalibrate_images"])
    batch = protocol["batch_size"]
    images = splits.train_images if images is None else images
    prepare = prep.eval if prepare is None else prepare

    def before_eval() -> None:
        for layer in applied.recalibrate:
            layer.train()
        batches = (prepare(images[lo:min(lo + batch, count)]) for lo in range(0, count, batch))
        recalibrate_batchnorm(applied.recalibrate, train_model, batches)
        for layer in applied.recalibrate:
            layer.eval()
    return before_eval


def _phase_record(label: str, phase: Any, epochs: int, applied: AppliedPhase, on_features: bool,
                  result: FitResult) -> dict[str, Any]:
    return {
        "name": label, "epochs": epochs, "epochs_setting": phase.epochs, "learning_rates":
        dict(phase.learning_rates), "batchnorm": phase.batchnorm, "select": describe(phase.select),
        "restart": phase.restart, "selectable": phase.selectable, "trainable_groups": applied.trainable_groups,
        "trainable_params": applied.trainable_params, "feature_cache": on_features, "steps": result.steps,
        "train_images_per_s": result.train_images_per_s, "train_seconds": result.train_seconds,
        "timing_warmup": result.warmup,
    }

