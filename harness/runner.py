"""Runs one trial end to end and turns it into a record: device-resident data (shared by every trial of the run),
the backbone, the strategy's plan, the trainer, the test split scored once at the best validation epoch, and the
measurements. A trial that fails becomes a failed record; it never stops the grid."""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch

from tlbench.data_cache import load_splits
from tlbench.freeze import apply_plan, recalibrate_batchnorm
from tlbench.measure import PeakMemory, Stopwatch, environment, forward_flops, train_step_flops
from tlbench.plan import Trial
from tlbench.preprocess import DevicePreprocessor
from tlbench.registry import Plugins
from tlbench.store import ResultStore
from tlbench.trainer import (Split, TrialDiverged, autocast_context, evaluate, extract_features, fit,
                             resolve_amp, resolve_eval_batch_size)
from tlbench.types import ImageSplits, UsageError


def resolve(registry: Any, name: str, hint: str = "") -> tuple[Any, str | None]:
    """``timm:resnet50`` -> (the timm family, "resnet50"); ``efficientnet_lite0`` -> (that family, None)."""
    family_name, sep, argument = name.partition(":")
    family = registry.get(family_name, hint)
    if family.takes_argument and not argument:
        raise UsageError(f"{registry.kind} {family_name!r} needs an argument: {family_name}:<...> "
                         f"(see `tlbench list {registry.plural}`)")
    if not family.takes_argument and sep:
        raise UsageError(f"{registry.kind} {family_name!r} takes no argument; use {family_name!r}")
    return family, (argument if sep else None)


def pick_device(requested: str | None) -> torch.device:
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but CUDA is not available; use --device cpu")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Outcome:
    fit: Any  # trainer.FitResult
    test: Any  # trainer.Evaluation, scored once at the best validation epoch
    eval_images_per_s: float | None
    feature_seconds: float | None  # None: no feature cache; 0.0: features reused from an earlier trial
    train_flops_per_image: float | None  # None: measure on the full model


@dataclass
class LoadedData:
    splits: ImageSplits  # on the run's device
    seconds: float
    cache: str  # "hit" / "miss" (disk cache) for the first trial that uses it, then "shared in run"
    reported: bool = False


def _trial_label(trial: Trial) -> str:
    return f"{trial.dataset} / {trial.backbone} / {trial.label} / seed {trial.seed}"


class TrialRunner:
    """Holds what trials of one run share: decoded datasets on the device and cached frozen features."""

    def __init__(self, plugins: Plugins, store: ResultStore, device: torch.device,
                 progress: Callable[[str, int], Any] | None = None, command: str = ""):
        self.plugins = plugins
        self.store = store
        self.device = device
        self.progress = progress
        self.command = command
        self._data: dict[str, LoadedData] = {}
        self._features: dict[str, dict[str, Any]] = {}
        self._environment = environment(device)

    # ------------------------------------------------------------------------------------------ shared inputs
    def data_key(self, trial: Trial) -> str:
        return json.dumps([trial.dataset, dict(trial.data_options)], sort_keys=True, default=str)

    def load_data(self, trial: Trial) -> LoadedData:
        """Decoded splits on the device, loaded once per run. The first trial to use them reports how long that
        took and whether the disk cache hit, even when the pre-run check did the loading."""
        key = self.data_key(trial)
        if key not in self._data:
            family, argument = resolve(self.plugins.datasets, trial.dataset, self.plugins.failure_hint())
            start = time.perf_counter()
            splits = load_splits(family, argument, trial.data_options)
            cache = str(splits.source.pop("cache", "n/a"))  # recorded apart: records must not differ by it
            splits = splits.to(self.device)
            self._data[key] = LoadedData(splits, time.perf_counter() - start, cache)
        return self._data[key]

    def _data_for_trial(self, trial: Trial) -> LoadedData:
        loaded = self.load_data(trial)
        if loaded.reported:
            return LoadedData(loaded.splits, 0.0, "shared in run", True)
        loaded.reported = True
        return loaded

    def resolved_protocol(self, trial: Trial) -> dict[str, Any]:
        """The trial's protocol with device-dependent "auto" values made concrete (and recorded as such)."""
        protocol = dict(trial.protocol)
        protocol["eval_batch_size"] = resolve_eval_batch_size(self.device, protocol["eval_batch_size"])
        return protocol

    def check(self, trials: list[Trial]) -> None:
        """Everything that can be wrong with the input, found before anything runs or is written: names, data,
        and each strategy's plan against each backbone's groups."""
        hint = self.plugins.failure_hint()
        needs_weights: dict[str, bool] = {}
        for trial in trials:
            strategy = self.plugins.strategies.get(trial.strategy, hint)
            needs_weights[trial.backbone] = needs_weights.get(trial.backbone, False) or strategy.pretrained
        groups_of: dict[str, list[str]] = {}
        for trial in trials:
            data = self.load_data(trial)
            if trial.backbone not in groups_of:
                # Built once for real, so missing weights (offline) are reported now, not by every trial later.
                family, argument = resolve(self.plugins.backbones, trial.backbone, hint)
                backbone = family.build(argument, len(data.splits.classes), pretrained=needs_weights[trial.backbone])
                groups_of[trial.backbone] = backbone.group_names
                del backbone
            try:
                self.plugins.strategies.get(trial.strategy, hint).plan(groups_of[trial.backbone], trial.hparams)
            except UsageError:
                raise
            except Exception:  # a plugin bug, not bad input: that trial fails (and is recorded) when it runs
                pass

    # ------------------------------------------------------------------------------------------------- a trial
    def run(self, trial: Trial) -> dict[str, Any]:
        """Run the trial (already claimed by the caller) and write its record, ok or failed."""
        started = time.perf_counter()
        record: dict[str, Any] = {
            "key": trial.key, "trial": trial.to_record(), "command": self.command,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "environment": self._environment,
        }
        try:
            record.update(self._run(trial))
            record["status"] = "ok"
        except TrialDiverged as exc:
            record.update(status="diverged", error=str(exc))
        except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
            record.update(status="failed", error=f"out of memory: {str(exc).splitlines()[0] if str(exc) else ''}")
        except UsageError as exc:
            record.update(status="failed", error=str(exc))
        except Exception as exc:  # one broken trial must not stop the grid: record it and go on
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(limit=8))
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        wall = time.perf_counter() - started
        record.setdefault("metrics", {})["wall_s"] = wall
        record["metrics"].setdefault("time_s", {})["total"] = wall
        self.store.write(record)
        return record

    def _run(self, trial: Trial) -> dict[str, Any]:
        hint = self.plugins.failure_hint()
        strategy = self.plugins.strategies.get(trial.strategy, hint)
        family, argument = resolve(self.plugins.backbones, trial.backbone, hint)
        protocol = self.resolved_protocol(trial)
        if protocol["deterministic"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(bool(protocol["deterministic"]), warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not protocol["deterministic"]

        with PeakMemory(self.device) as memory:
            data = self._data_for_trial(trial)
            splits = data.splits
            num_classes = len(splits.classes)
            torch.manual_seed(trial.seed)
            generator = torch.Generator().manual_seed(trial.seed)
            backbone = family.build(argument, num_classes, pretrained=strategy.pretrained)
            plan = strategy.plan(backbone.group_names, trial.hparams)
            applied = apply_plan(backbone, plan, protocol["weight_decay"])
            planned_groups = [{k: v for k, v in g.items() if k != "params"} | {"parameters": sum(
                p.numel() for p in g["params"])} for g in applied.optimizer_groups]  # before the optimizer edits them
            image_size = protocol["image_size"] or trial.data_options.get("image_size")
            channels_last = (protocol["channels_last"] if protocol["channels_last"] != "auto"
                             else self.device.type == "cuda")
            prep = DevicePreprocessor(backbone.preprocessing.resized(image_size), trial.data_options["augment"],
                                      channels_last=bool(channels_last))
            model = backbone.model.to(self.device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            use_cache = (bool(protocol["feature_cache"]) and applied.head_only and prep.augment == "none")
            total_steps = protocol["epochs"] * max(1, len(splits.train_labels) // protocol["batch_size"])
            bar = self.progress(_trial_label(trial), total_steps) if self.progress else nullcontext(None)
            with bar as progress_bar:
                advance = progress_bar.update if progress_bar is not None else (lambda n: None)
                if use_cache:
                    outcome = self._fit_on_features(trial, protocol, backbone, prep, splits, applied, generator,
                                                    advance)
                else:
                    outcome = self._fit_end_to_end(protocol, model, prep, splits, applied, generator, advance)

        fwd_flops = forward_flops(model, prep.eval(splits.val_images[:1]))

        fit_result, test, feature_seconds = outcome.fit, outcome.test, outcome.feature_seconds
        train_flops_per_image = outcome.train_flops_per_image
        if train_flops_per_image is None:
            train_flops_per_image = train_step_flops(model, prep.eval(splits.val_images[:2]), num_classes) / 2
        trained_images = fit_result.steps * protocol["batch_size"]
        return {
            "data": {"sizes": splits.sizes, "classes": splits.classes, "num_classes": num_classes,
                     "source": splits.source, "cache": data.cache, "augment": prep.augment},
            "backbone": {"name": backbone.name, "pretrained": backbone.pretrained, "weights": backbone.weights,
                         "preprocessing": prep.describe(), "groups": backbone.group_names},
            "runtime": {  # what actually ran, after "auto" settings were resolved for this device
                "device": str(self.device), "eval_batch_size": protocol["eval_batch_size"],
                "amp": resolve_amp(self.device, protocol["amp"]),
                "channels_last": prep.channels_last, "compile": bool(protocol["compile"]),
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                "cudnn_benchmark": torch.backends.cudnn.benchmark if self.device.type == "cuda" else None,
                "torch_threads": torch.get_num_threads(),
            },
            "plan": {"learning_rates": dict(plan.learning_rates), "batchnorm": plan.batchnorm,
                     "trainable_groups": applied.trainable_groups,
                     "optimizer_groups": planned_groups},
            "metrics": {
                "val_top1": fit_result.best_val.top1, "val_top5": fit_result.best_val.top5,
                "test_top1": test.top1, "test_top5": test.top5, "best_epoch": fit_result.best_epoch,
                "epochs": protocol["epochs"], "steps": fit_result.steps,
                "train_images_per_s": fit_result.train_images_per_s,
                "eval_images_per_s": outcome.eval_images_per_s,
                "peak_memory_mib": memory.result.get("peak_mib"), "peak_memory": memory.result,
                "time_s": {"data": data.seconds, "features": feature_seconds, "train": fit_result.train_seconds,
                           "eval": fit_result.val_seconds + test.seconds},
                "params": {"trainable": applied.trainable_params, "total": applied.total_params},
                "gflops_per_image": fwd_flops / 1e9,
                "train_gflops_total": (train_flops_per_image * trained_images
                                       + (fwd_flops * sum(splits.sizes.values()) if feature_seconds else 0)) / 1e9,
                "feature_cache": feature_seconds is not None,
                "history": fit_result.history,
            },
        }

    def _fit_end_to_end(self, protocol, model, prep, splits, applied, generator, advance):
        train_model = torch.compile(model) if protocol["compile"] else model
        train = Split(splits.train_images, splits.train_labels, prep.train, prep.eval)
        val = Split(splits.val_images, splits.val_labels, prep.train, prep.eval)
        recal_count = min(len(train), protocol["recalibrate_images"])

        def before_eval() -> None:
            if not applied.recalibrate:
                return
            for layer in applied.recalibrate:
                layer.train()
            batches = (prep.eval(splits.train_images[lo:lo + protocol["batch_size"]])
                       for lo in range(0, recal_count, protocol["batch_size"]))
            recalibrate_batchnorm(applied.recalibrate, train_model, batches)
            for layer in applied.recalibrate:
                layer.eval()

        result = fit(train_model, train, val, applied.optimizer_groups, protocol, device=self.device,
                     generator=generator, num_classes=len(splits.classes), before_eval=before_eval,
                     progress=advance)
        model.load_state_dict(result.best_state)
        model.eval()
        test = evaluate(train_model, Split(splits.test_images, splits.test_labels, prep.train, prep.eval),
                        protocol["eval_batch_size"], self.device, autocast_context(self.device, protocol["amp"]),
                        len(splits.classes))
        return Outcome(result, test, test.images_per_s or result.best_val.images_per_s, None, None)

    def _fit_on_features(self, trial, protocol, backbone, prep, splits, applied, generator, advance):
        """Frozen backbone in eval mode and no augmentation: its features are a pure function of the image, so
        they are computed once per (backbone weights, data, preprocessing) and the head trains on them."""
        key = json.dumps([backbone.name, backbone.weights, backbone.pretrained or trial.seed,
                          self.data_key(trial), prep.describe(), protocol["amp"]], sort_keys=True, default=str)
        feature_seconds = 0.0
        if key not in self._features:
            autocast = autocast_context(self.device, protocol["amp"])
            backbone.model.eval()
            features, rate = {}, None
            with Stopwatch(self.device) as watch:
                for split in ("train", "val", "test"):
                    features[split], rate = extract_features(backbone.pre_logits, getattr(splits, f"{split}_images"),
                                                             prep.eval, protocol["eval_batch_size"], self.device,
                                                             autocast)
            self._features[key] = {"features": features, "rate": rate}
            feature_seconds = watch.seconds
        cached = self._features[key]
        features = cached["features"]
        head = backbone.head
        identity = lambda x: x  # noqa: E731 - the features are already the model's input to the head
        train = Split(features["train"], splits.train_labels, lambda x, g: x, identity)
        val = Split(features["val"], splits.val_labels, lambda x, g: x, identity)
        result = fit(head, train, val, applied.optimizer_groups, protocol, device=self.device,
                     generator=generator, num_classes=len(splits.classes), progress=advance)
        head.load_state_dict(result.best_state)
        head.eval()
        test = evaluate(head, Split(features["test"], splits.test_labels, lambda x, g: x, identity),
                        protocol["eval_batch_size"], self.device, autocast_context(self.device, protocol["amp"]),
                        len(splits.classes))
        head_flops = train_step_flops(head, features["val"][:2], len(splits.classes)) / 2
        return Outcome(result, test, cached["rate"], feature_seconds, head_flops)
