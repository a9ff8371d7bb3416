"""Runs one trial end to end and turns it into a record: device-resident data (shared by every trial of the run),
the backbone, the strategy's plan, the trainer, the test split scored once at the best validation epoch, and the
measurements. A trial that fails becomes a failed record; it never stops the grid."""
from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from tlbench.data_cache import load_splits
from tlbench.digests import digest_of
from tlbench.errors import first_line
from tlbench.freeze import check_phases, describe
from tlbench.head_init import final_linear, init_head
from tlbench.measure import FLOPS_METHOD, PeakMemory, Stopwatch, environment, forward_flops
from tlbench.phases import BuiltTrial, CachedFeatures, PlanServices, apply_surgery, run_plan
from tlbench.plan import Trial, strategy_plan
from tlbench.prefix_cache import PrefixCache, serve
from tlbench.preprocess import DevicePreprocessor
from tlbench.records import SCHEMA_VERSION, Record, RecordError, failed_record
from tlbench.registry import Plugins
from tlbench.shared_phases import SHARED_PHASES_ENV, SharedPhases, TrialSharing
from tlbench.store import write_weights
from tlbench.trainer import (ADAMW_OPTIONS, TrialDiverged, autocast_context, extract_features, resolve_amp,
                             resolve_channels_last, resolve_eval_batch_size)
from tlbench.types import ImageSplits, UsageError


@dataclass
class LoadedData:
    splits: ImageSplits  # on the run's device
    seconds: float
    cache: str  # "hit" / "miss" (disk cache) for the first trial that uses it, then "shared in run"
    reported: bool = False


class TrialRunner:
    """Holds what trials of one run share: decoded datasets on the device and cached frozen features."""

    def __init__(self, plugins: Plugins, device: torch.device, progress: Callable[[str, int], Any] | None = None,
                 memory_baseline_kib: int | None = None):
        self.plugins = plugins
        self.device = device
        self.progress = progress
        self.memory_baseline_kib = memory_baseline_kib
        self._data: dict[str, LoadedData] = {}
        self._features_cache: dict[str, CachedFeatures] = {}
        self._prefix_cache = PrefixCache()  # frozen-prefix activations, shared like the features
        # phases another trial of this worker computed exactly (tlbench.shared_phases); TLBENCH_SHARED_PHASES=0: off
        self._shared_phases = (SharedPhases() if os.environ.get(SHARED_PHASES_ENV, "1").strip() not in ("0", "off")
                               else None)
        self._environment = environment(device)
        self.weights_dir: str | None = None  # set per job: where the trained weights go (None: not kept)
        # set per job: a later trial of the run replays epoch-end callbacks on this trial's phases' weights, so
        # they are kept (shared_phases); off otherwise, as they cost memory and the trial's peak would count them
        self.keep_epoch_ends = False
        # filled by check(): the groups (Trial.group) whose plans replay epoch-end callbacks on a shared phase
        self.epoch_end_replaying_groups: set[str] = set()

    # ------------------------------------------------------------------------------------------ shared inputs
    def data_key(self, trial: Trial) -> str:
        return json.dumps([trial.dataset, trial.load_options], sort_keys=True, default=str)

    def load_data(self, trial: Trial) -> LoadedData:
        """Decoded splits on the device, loaded once per run. The first trial to use them reports how long that
        took and whether the disk cache hit, even when the pre-run check did the loading."""
        key = self.data_key(trial)
        if key not in self._data:
            family, argument = self.plugins.datasets.resolve(trial.dataset, self.plugins.failure_hint())
            start = time.perf_counter()
            splits = load_splits(family, argument, trial.load_options)
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

    def check(self, trials: list[Trial], where: Callable[[Trial], str] | None = None) -> None:
        """Everything that can be wrong with the input, found before anything runs or is written: names, data,
        and each strategy's plan against each backbone's groups. ``where(trial)``: a prefix naming what made the
        trial that failed (e.g. its ``--vary`` values), put before the error; "" for none."""
        hint = self.plugins.failure_hint()
        needs_weights: dict[str, bool] = {}
        for trial in trials:
            strategy = self.plugins.strategies.get(trial.strategy, hint)
            needs_weights[trial.backbone] = needs_weights.get(trial.backbone, False) or strategy.pretrained
        built: dict[str, Any] = {}
        checked: set[str] = set()
        for trial in trials:
            try:
                self._check_trial(trial, hint, needs_weights, built, checked)
            except UsageError as exc:
                prefix = where(trial) if where is not None else ""
                if not prefix:
                    raise
                raise UsageError(f"{prefix}: {exc}") from None

    def _check_trial(self, trial: Trial, hint: str, needs_weights: Mapping[str, bool], built: dict[str, Any],
                     checked: set[str]) -> None:
        """:meth:`check` for one trial; ``built`` (backbones) and ``checked`` (plan groups) are shared."""
        data = self.load_data(trial)
        if trial.backbone not in built:
            # Built once for real, so missing weights (offline) are reported now, not by every trial later.
            family, argument = self.plugins.backbones.resolve(trial.backbone, hint)
            built[trial.backbone] = family.build(argument, len(data.splits.classes),
                                                 pretrained=needs_weights[trial.backbone])
        if trial.protocol.get("head_init", "pytorch") != "pytorch" and final_linear(
                built[trial.backbone].head) is None:
            raise UsageError(f"head_init={trial.protocol['head_init']} needs an nn.Linear in the head of "
                             f"{trial.backbone}, which has none; use --set head_init=pytorch")
        if trial.group in checked:  # seeds of one configuration share their plan
            return
        checked.add(trial.group)
        strategy = self.plugins.strategies.get(trial.strategy, hint)
        backbone = built[trial.backbone]
        try:
            plan = strategy_plan(strategy, backbone.group_names, trial.hparams, trial.backbone)
            check_phases(plan.all_phases(), backbone.group_names, trial.protocol["epochs"], strategy.name)
            if plan.replays_epoch_ends:
                self.epoch_end_replaying_groups.add(trial.group)
            if plan.surgery is not None:  # on a copy: e.g. adapters that find no module to wrap
                apply_surgery(copy.deepcopy(backbone), plan)
        except UsageError:
            raise
        except Exception:  # a plugin bug, not bad input: that trial fails (and is recorded) when it runs
            pass

    # ------------------------------------------------------------------------------------------------- a trial
    def run(self, trial: Trial, command: str = "") -> Record:
        """Run the trial and return its record, ok or failed (the driver, which claimed it, writes it)."""
        started = time.perf_counter()
        record: dict[str, Any] = {
            "schema": SCHEMA_VERSION, "key": trial.key, "trial": trial.to_record(), "command": command,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "environment": self._environment,
        }
        try:
            record.update(self._run(trial))
            record["status"] = "ok"
        except TrialDiverged as exc:
            record.update(status="diverged", error=str(exc))
        except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
            record.update(status="failed", error=f"out of memory: {first_line(exc)}")
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
        try:
            return Record.from_json_dict(json.loads(json.dumps(record, default=str)))
        except RecordError as exc:  # e.g. a plugin reported a non-finite number: the trial failed, say why
            return failed_record(record["trial"], f"the trial's record is invalid: {exc}", wall_s=wall,
                                 command=command, environment=self._environment)

    def _run(self, trial: Trial) -> dict[str, Any]:
        hint = self.plugins.failure_hint()
        strategy = self.plugins.strategies.get(trial.strategy, hint)
        family, argument = self.plugins.backbones.resolve(trial.backbone, hint)
        protocol = self.resolved_protocol(trial)
        if protocol["deterministic"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(bool(protocol["deterministic"]), warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not protocol["deterministic"]

        with PeakMemory(self.device, self.memory_baseline_kib) as memory:
            data = self._data_for_trial(trial)
            splits = data.splits
            num_classes = len(splits.classes)
            torch.manual_seed(trial.seed)
            generator = torch.Generator().manual_seed(trial.seed)
            backbone = family.build(argument, num_classes, pretrained=strategy.pretrained)
            backbone.head_init = init_head(backbone.head, protocol["head_init"],
                                           backbone.head_init or "not stated by the backbone plugin")
            plan = strategy_plan(strategy, backbone.group_names, trial.hparams, trial.backbone)
            check_phases(plan.all_phases(), backbone.group_names, protocol["epochs"], strategy.name)
            group_of, surgery = apply_surgery(backbone, plan)
            image_size = protocol["image_size"] or trial.data_options.get("image_size")
            channels_last = resolve_channels_last(self.device, protocol["channels_last"])
            prep = DevicePreprocessor(backbone.preprocessing.resized(image_size), trial.data_options["augment"],
                                      channels_last=channels_last)
            model = backbone.model.to(self.device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            train_model = torch.compile(model) if protocol["compile"] else model
            steps_per_epoch = max(1, len(splits.train_labels) // protocol["batch_size"])
            total_steps = steps_per_epoch * sum(p.resolved_epochs(protocol["epochs"]) for p in plan.all_phases())
            bar = self.progress(trial.title, total_steps) if self.progress else nullcontext(None)
            with bar as progress_bar:
                built = BuiltTrial(plan, backbone, group_of, surgery, model, train_model, prep, splits, protocol)
                services = PlanServices(
                    features=lambda needed: self._features(trial, protocol, backbone, prep, splits,
                                                           surgery is not None, needed),
                    progress=progress_bar.update if progress_bar is not None else (lambda n: None),
                    prefix=serve(self._prefix_cache, [backbone.name, backbone.weights, backbone.pretrained
                                                      or trial.seed, self.data_key(trial), prep.describe(),
                                                      protocol["amp"], prep.channels_last,
                                                      trial.key if surgery is not None else None],
                                 splits, prep.eval, protocol, self.device,
                                 autocast_context(self.device, protocol["amp"])),
                    on_epoch=getattr(progress_bar, "epoch", None),
                    shared=TrialSharing(self._shared_phases, trial.key, keep_epoch_ends=self.keep_epoch_ends,
                                        base=digest_of(
                        self.data_key(trial), prep.describe(), prep.augment, prep.channels_last, dict(protocol),
                        str(self.device), torch.get_num_threads(), backbone.name, backbone.weights,
                        protocol["compile"])) if self._shared_phases is not None else None)
                outcome = run_plan(built, services, device=self.device, generator=generator)

        saved_model = self._save_weights(trial, model) if self.weights_dir else None
        fwd_flops = forward_flops(model, prep.eval(splits.val_images[:1]))
        train_flops = sum(p.flops_per_image * p.fit.steps * protocol["batch_size"] for p in outcome.phases)
        # the rate the train steps achieved: the phases train img/s is measured over, times their FLOPs per image
        timed = [p for p in outcome.phases if not p.on_features] or list(outcome.phases)
        timed_seconds = sum(p.fit.timed_seconds for p in timed)
        train_gflops_per_s = (sum(p.flops_per_image * p.fit.timed_images for p in timed) / timed_seconds / 1e9
                              if timed_seconds > 0 else None)
        if outcome.feature_seconds:  # this trial ran the backbone over every split once
            train_flops += fwd_flops * sum(splits.sizes.values())
        train_flops += outcome.prefix_flops  # this trial's share of the frozen-prefix passes
        last = outcome.phases[-1]
        return ({"saved_model": saved_model} if saved_model else {}) | {
            "data": {"sizes": splits.sizes, "classes": splits.classes, "num_classes": num_classes,
                     "source": splits.source, "cache": data.cache, "augment": prep.augment},
            "backbone": {"name": backbone.name, "pretrained": backbone.pretrained, "weights": backbone.weights,
                         "preprocessing": prep.describe(), "groups": backbone.group_names,
                         "head": {"module": repr(backbone.head), "init": backbone.head_init}},
            "runtime": {  # what actually ran, after "auto" settings were resolved for this device
                "device": str(self.device), "eval_batch_size": protocol["eval_batch_size"],
                "amp": resolve_amp(self.device, protocol["amp"]),
                "channels_last": prep.channels_last, "compile": bool(protocol["compile"]),
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                "cudnn_benchmark": torch.backends.cudnn.benchmark if self.device.type == "cuda" else None,
                "torch_threads": torch.get_num_threads(),
                "shared_phases": self._shared_phases is not None,
                "preprocessed_once": outcome.preprocessed_once,
                "optimizer": {"class": "torch.optim.AdamW", **ADAMW_OPTIONS},
            },
            "plan": {  # the last phase at the top (one-phase plans: the plan), every phase under "phases"
                "learning_rates": last.record["learning_rates"], "batchnorm": last.record["batchnorm"],
                "trainable_groups": last.record["trainable_groups"],
                "optimizer_groups": last.record["optimizer_groups"],
                "phases": [p.record for p in outcome.phases],
                "selection": "best validation top-1 epoch over selectable phases, earliest on ties",
                "surgery": outcome.surgery, "surgery_fn": describe(plan.surgery),
                "loss_term": describe(plan.loss_term),
                "after_training": outcome.after_training, "after_training_fn": describe(plan.after_training),
                "strategy_record": dict(plan.record),
            } | ({"step": plan.step_record()} if plan.step_record() is not None else {}),
            "metrics": {
                "val_top1": outcome.val.top1, "val_top5": outcome.val.top5,
                "best_epoch_val_top1": outcome.best.top1,
                "test_top1": outcome.test.top1, "test_top5": outcome.test.top5, "best_epoch": outcome.best.epoch,
                "epochs": sum(p.record["epochs"] for p in outcome.phases), "steps": outcome.steps,
                "train_images_per_s": outcome.train_images_per_s,
                "eval_images_per_s": outcome.eval_images_per_s,
                "peak_memory_mib": memory.result.get("peak_mib"), "peak_memory": memory.result,
                "time_s": {"data": data.seconds, "features": outcome.feature_seconds,
                           "train": outcome.train_seconds, "eval": outcome.val_seconds + outcome.test.seconds,
                           "prefix_cache": outcome.prefix_seconds, "shared": outcome.shared_seconds},
                "params": {"trainable": outcome.trainable_params, "total": outcome.total_params},
                "gflops_per_image": fwd_flops / 1e9,
                "train_gflops_total": train_flops / 1e9,
                "train_gflops_per_s": train_gflops_per_s,
                "flops_method": FLOPS_METHOD,
                "feature_cache": outcome.feature_seconds is not None,
                "history": outcome.history,
            },
        }

    def _save_weights(self, trial: Trial, model: torch.nn.Module) -> dict[str, Any]:
        """The weights the test split just scored (best validation epoch restored, after the after-training step,
        modules added by surgery included) as ``<weights_dir>/<key>.safetensors``. A file that cannot be written
        leaves the trial ok: the record says why there is none (export then re-runs the trial)."""
        path = os.path.join(self.weights_dir, f"{trial.key}.safetensors")
        try:
            saved = write_weights(path, model.state_dict(), {"tlbench_trial_key": trial.key})
        except OSError as exc:
            return {"error": f"could not write {path}: {exc.strerror or exc}"}
        return saved | {"what": "the weights the test split scored: best validation epoch restored, after the "
                                "after-training step, modules added by surgery included"}

    def _features(self, trial: Trial, protocol: dict[str, Any], backbone: Any, prep: DevicePreprocessor,
                  splits: ImageSplits, changed_by_surgery: bool, needed: tuple[str, ...]) -> CachedFeatures:
        """Frozen backbone in eval mode and no augmentation: its features are a pure function of the image, so
        they are computed once per (backbone weights, data, preprocessing) and shared by the run's trials (a model
        changed by surgery only within its own trial). Only the splits ``needed`` are computed, each once."""
        key = json.dumps([backbone.name, backbone.weights, backbone.pretrained or trial.seed,
                          self.data_key(trial), prep.describe(), protocol["amp"], prep.channels_last,
                          trial.key if changed_by_surgery else None], sort_keys=True, default=str)
        cached = self._features_cache.setdefault(key, CachedFeatures({}, None, 0.0))
        missing = [split for split in ("train", "val", "test") if split in needed and split not in cached.splits]
        seconds = 0.0
        if missing:
            autocast = autocast_context(self.device, protocol["amp"])
            backbone.model.eval()
            with Stopwatch(self.device) as watch:
                for split in missing:
                    cached.splits[split], cached.images_per_s = extract_features(
                        backbone.pre_logits, getattr(splits, f"{split}_images"), prep.eval,
                        protocol["eval_batch_size"], self.device, autocast)
            seconds = watch.seconds
        return CachedFeatures(cached.splits, cached.images_per_s, seconds)
