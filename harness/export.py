"""The winner as a model: a trial's trained weights out of tlbench in the ecosystem's formats, with a model card.

``tlbench export KEY`` (or ``--best``) writes one folder:

- ``model.safetensors`` + ``config.json`` as ``timm.models.push_to_hub`` writes them (timm's own
  ``save_config_for_hf``: ``architecture``, ``num_classes``, ``label_names``, ``pretrained_cfg`` with the input size,
  interpolation, mean/std and crop the harness evaluated with), loaded by plain timm without tlbench:
  ``timm.create_model("local-dir:<folder>", pretrained=True)``. Adapters (LoRA, peft) are merged into the weights
  first; a model that surgery changed beyond that is exported as TorchScript/ONNX only.
- ``model.torchscript.pt`` (``torch.jit.trace``) and ``model.onnx`` (``torch.onnx.export``, checked with
  onnxruntime against PyTorch's outputs).
- ``README.md``: the model card (dataset, strategy, protocol, validation and test top-1, record key, processor, how
  to load it) and ``config.json["tlbench"]``: the exact evaluation preprocessing, the files' sha256 and the checks.

Every exported format is scored on the trial's test split with the harness's own preprocessing before the folder
appears (it is built beside the target and renamed into place: nothing is half-written). Weights come from the
file ``tlbench run --save-models`` kept (its sha256 checked against the record) or, when there is none, from
re-running the trial, which is refused when the re-run's validation top-1 differs from the record's.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import timm
import torch
from safetensors.torch import load_file
from timm.models._hub import save_config_for_hf
from torch import nn

from tlbench import version
from tlbench.data_cache import load_splits
from tlbench.errors import first_line
from tlbench.files import file_mode, folder_mode, read_json
from tlbench.jobs import TrialJob, Worker
from tlbench.phases import apply_surgery
from tlbench.plan import Trial, strategy_plan
from tlbench.preprocess import DevicePreprocessor
from tlbench.records import Record, best_on_validation
from tlbench.requirements import Extra, module_available
from tlbench.store import write_weights
from tlbench.types import Backbone, Preprocessing, UsageError

FORMATS = ("timm", "torchscript", "onnx")
FILES = {"timm": "model.safetensors", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
EXPORT_VERSION = 1
ONNX_OPSET = 17
ONNX = {"onnx": Extra("export", "ONNX export and its onnxruntime check"),
        "onnxruntime": Extra("export", "ONNX export and its onnxruntime check")}


def require_onnx() -> None:
    """onnx and onnxruntime are optional: without them, one line with the install command."""
    missing = [name for name in ONNX if not module_available(name)]
    if missing:
        raise UsageError(f"--format onnx needs {' and '.join(missing)}: {ONNX[missing[0]]}")


# ------------------------------------------------------------------------------------------- finding records
def find_record(store: Any, key: str) -> Record:
    """The ok record whose key is ``key`` or starts with it (one line when none or several match)."""
    matches = {r.key: r for r in store.records() if key and r.key.startswith(key)}
    if len(matches) != 1:
        what = "no valid record" if not matches else f"{len(matches)} records"
        raise UsageError(f"{what} matches key {key!r} in {str(store.root)!r}; see the keys with "
                         f"`tlbench leaderboard --columns key,...` or pass the right --results-dir")
    record = next(iter(matches.values()))
    if not record.ok:
        raise UsageError(f"trial {record.key} {record.status} ({record.error}); only ok trials can be exported")
    return record


def best_record(store: Any, dataset: str | None = None, backbone: str | None = None) -> Record:
    """The trial best on validation for the one dataset x backbone left after the filters."""
    best = [r for r in best_on_validation(store.records()).values()
            if (dataset is None or r.trial.dataset == dataset) and (backbone is None or r.trial.backbone == backbone)]
    if not best:
        where = " ".join(f"{k} {v!r}" for k, v in (("for dataset", dataset), ("and backbone", backbone)) if v)
        raise UsageError(f"no ok record {where} in {str(store.root)!r}; run `tlbench run` first or pass "
                         f"--results-dir".replace("  ", " "))
    if len(best) > 1:
        shown = "; ".join(f"{r.trial.dataset} / {r.trial.backbone}: {r.key}" for r in best[:4])
        raise UsageError(f"{len(best)} dataset x backbone pairs have a best model ({shown}); choose one with "
                         f"--dataset/--backbone or export by KEY")
    return best[0]


# ---------------------------------------------------------------------------------------- the trained model
@dataclass
class Trained:
    """A trial's trained model, rebuilt: the backbone (its ``model`` carries the trained weights, surgery applied),
    the evaluation preprocessing exactly as recorded, where the weights came from, and the re-run's record if the
    trial was re-run."""

    record: Record
    backbone: Backbone
    preprocessing: Preprocessing
    channels_last: bool
    classes: list[str]
    weights_source: str
    rerun: Record | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        return self.backbone.model


def _trial_of(record: Record) -> Trial:
    try:
        return Trial.from_record(record.trial.to_json_dict())
    except ValueError as exc:
        raise UsageError(f"{exc}: this tlbench computes trial keys differently (protocol versions differ?)") from None


def recorded_preprocessing(record: Record) -> Preprocessing:
    """The evaluation preprocessing the record states (``backbone.preprocessing``)."""
    raw = record.backbone.get("preprocessing") or {}
    try:
        return Preprocessing(int(raw["input_size"]), str(raw["interpolation"]), tuple(float(v) for v in raw["mean"]),
                             tuple(float(v) for v in raw["std"]), float(raw.get("crop_pct", 1.0)),
                             str(raw.get("source", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"record {record.key} does not state its preprocessing ({exc!r}); it was made by another "
                         f"program; re-run it with `tlbench rerun {record.key}`") from None


def rebuild(record: Record, state_dict: dict[str, torch.Tensor], plugins: Any) -> Backbone:
    """The trial's architecture (backbone and the plan's surgery, rebuilt from the record's settings) with
    ``state_dict`` loaded strictly, on the CPU in eval mode."""
    trial = _trial_of(record)
    hint = plugins.failure_hint()
    strategy = plugins.strategies.get(trial.strategy, hint)
    family, argument = plugins.backbones.resolve(trial.backbone, hint)
    num_classes = int(record.data.get("num_classes") or len(record.data.get("classes") or []))
    backbone = family.build(argument, num_classes, pretrained=False)  # the weights come from the trial
    plan = strategy_plan(strategy, backbone.group_names, trial.hparams, trial.backbone)
    apply_surgery(backbone, plan)
    try:
        backbone.model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise UsageError(f"the saved weights of trial {record.key} do not fit its rebuilt model "
                         f"({first_line(exc)}); re-run it with `tlbench rerun {record.key}`") from None
    backbone.model.eval()
    return backbone


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trained_model(record: Record, results_dir: Path, plugins: Any, *, device: str | None = None,
                  accept_different: bool = False, progress: str = "off",
                  say: Callable[[str], None] = lambda line: None) -> Trained:
    """The record's trained model: from its saved weights (sha256 checked), else by re-running the trial, refused
    (UsageError) when the re-run's validation top-1 differs from the record's unless ``accept_different``."""
    path = Path(results_dir) / f"{record.key}.safetensors"
    rerun: Record | None = None
    notes: list[str] = []
    if path.is_file():
        expected = record.saved_model.get("sha256")
        actual = _file_sha256(path)
        if expected and actual != expected:
            raise UsageError(f"{path} does not match the sha256 its record states (changed or damaged); delete it "
                             f"and export again: the trial is then re-run")
        state = load_file(str(path))
        source = f"saved by `tlbench run --save-models`: {path} (sha256 {actual[:16]}..., as recorded)"
    else:
        say(f"trial {record.key} has no saved weights in {results_dir}; re-running it to get them")
        state, rerun = _rerun(record, plugins, device, progress)
        recorded, again = record.metrics.val_top1, rerun.metrics.val_top1
        where = (f"recorded on {record.environment.get('device', '?')}, re-run on "
                 f"{rerun.environment.get('device', '?')}")
        if again != recorded:
            line = (f"re-running trial {record.key} gave validation top-1 {100 * again:.2f}%, the record says "
                    f"{100 * recorded:.2f}% ({where}): these weights are not the record's")
            if not accept_different:
                raise UsageError(f"{line}; pass --accept-different to export them anyway, or run on the "
                                 f"record's processor")
            notes.append(line + "; exported anyway (--accept-different)")
            say(notes[-1])
        source = (f"re-run of the trial by `tlbench export` ({where}): validation top-1 "
                  f"{100 * again:.2f}% (record {100 * recorded:.2f}%), test top-1 {100 * rerun.metrics.test_top1:.2f}% "
                  f"(record {100 * record.metrics.test_top1:.2f}%)")
    backbone = rebuild(record, state, plugins)
    if record.runtime.get("channels_last"):  # the memory format the harness evaluated in (sums in that order)
        backbone.model.to(memory_format=torch.channels_last)
    return Trained(record, backbone, recorded_preprocessing(record), bool(record.runtime.get("channels_last")),
                   list(record.data.get("classes") or []), source, rerun, notes)


def _rerun(record: Record, plugins: Any, device: str | None, progress: str) -> tuple[dict[str, torch.Tensor], Record]:
    """Run the record's trial again in this process, its weights written to a temporary folder."""
    worker = Worker(device, plugins.load_third_party, plugins=plugins)
    with tempfile.TemporaryDirectory(prefix="tlbench-export-") as tmp:
        job = TrialJob(trial=record.trial.to_json_dict(), device=device, versions=worker.versions,
                       command=f"tlbench export {record.key} (re-run)", progress=progress, weights_dir=tmp)
        rerun = worker.run(job)
        if not rerun.ok:
            raise UsageError(f"re-running trial {record.key} to get its weights {rerun.status}: {rerun.error}")
        weights = Path(tmp) / f"{record.key}.safetensors"
        if not weights.is_file():
            raise UsageError(f"re-running trial {record.key} wrote no weights: "
                             f"{rerun.saved_model.get('error', 'unknown reason')}")
        return load_file(str(weights)), rerun


# ------------------------------------------------------------------------------------- plain modules (timm)
def merge_adapters(model: nn.Module) -> list[str]:
    """Merge peft adapters (LoRA) into the layers they wrap and put the plain layers back; returns their names."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer  # deferred: optional (the peft extra)
    except ImportError:  # no peft: no adapters either (surgery with peft needs it)
        return []
    merged = []
    for name, module in list(model.named_modules()):
        if name and isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
            merged.append(name)
    return merged


def plain_model(trained: Trained, plugins: Any) -> tuple[nn.Module | None, str]:
    """The trained model as the backbone's own architecture (what ``timm.create_model`` builds): adapters merged,
    the weights loaded strictly into a freshly built model. ``(None, reason)`` when surgery changed it otherwise."""

    model = copy.deepcopy(trained.model).cpu().eval()
    merged = merge_adapters(model)
    family, argument = plugins.backbones.resolve(trained.record.trial.backbone, plugins.failure_hint())
    reference = family.build(argument, len(trained.classes), pretrained=False).model.eval()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    surgery = trained.record.plan.get("surgery_fn") or "model surgery"
    if ours != theirs:
        extra = sorted(set(ours) - set(theirs))[:2]
        return None, (f"the model was changed by {surgery} ({', '.join(extra) or 'other shapes'}, ...), which "
                      f"cannot be folded back into plain {trained.record.trial.backbone} modules: exported as "
                      f"TorchScript/ONNX only")
    reference.load_state_dict(model.state_dict(), strict=True)
    note = (f"{len(merged)} LoRA adapter(s) merged into their layers ({surgery}): plain modules"
            if merged else "plain modules")
    return reference, note


def _is_timm(model: nn.Module) -> bool:
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return bool(architecture) and timm.is_model(architecture)


# ----------------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def predictions(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, prep: Any,
                batch_size: int) -> torch.Tensor:
    """Top-1 class of every uint8 image through ``prep.eval`` and ``forward`` (on the CPU)."""
    out = [forward(prep.eval(images[lo:lo + batch_size])).argmax(1) for lo in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def onnx_forward(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime  # deferred: optional (the export extra)

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.float().contiguous().numpy()})[0])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.jit and the TorchScript-based ONNX exporter warn that they are deprecated, on every call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -------------------------------------------------------------------------------------------- the export
@dataclass
class ExportResult:
    folder: Path
    formats: list[str]
    checks: dict[str, Any]
    notes: list[str]
    record: Record


def preprocessing_config(trained: Trained) -> dict[str, Any]:
    """The evaluation pipeline the harness applied, step by step, for predict and for plain-torch users."""
    prep = DevicePreprocessor(trained.preprocessing, "none", trained.channels_last)
    p = trained.preprocessing
    source = trained.record.data.get("source") or {}
    storage = source.get("storage_size")
    return {
        "input_size": p.input_size, "resize_size": prep.resize_size, "interpolation": p.interpolation,
        "antialias": True, "crop": "center", "crop_pct": p.crop_pct, "mean": list(p.mean), "std": list(p.std),
        "channels_last": trained.channels_last, "source": p.source,
        "storage_size": storage,
        "steps": [
            "decode to 8-bit RGB (EXIF orientation applied, grey replicated to 3 channels, transparency on white: "
            "tlbench.images.decode_image_file)",
            (f"storage: shorter side to {storage} px (PIL bicubic) and centre-crop {storage}x{storage}, as the dataset "
             f"stored its images" if storage else "storage: native size (the dataset stored its images unresized)"),
            "uint8 -> float in [0, 1] (x / 255)",
            f"resize the shorter side to {prep.resize_size} px ({p.interpolation}, antialiased; "
            f"= floor({p.input_size} / crop_pct {p.crop_pct}))",
            f"centre-crop {p.input_size}x{p.input_size}",
            f"normalize with mean {list(p.mean)} and std {list(p.std)}",
        ],
        "torchvision": (f"torchvision.transforms.v2.functional: to_dtype(x, torch.float32, scale=True); "
                        f"resize(x, [{prep.resize_size}], InterpolationMode.{p.interpolation.upper()}, "
                        f"antialias=True); center_crop(x, [{p.input_size}, {p.input_size}]); "
                        f"normalize(x, {list(p.mean)}, {list(p.std)})"),
    }


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Before any work: the target must be new, an empty folder, or (with ``overwrite``) a folder to replace."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UsageError(f"--out {str(out)!r} exists and is not a folder; choose another --out")
        if any(out.iterdir()) and not overwrite:
            raise UsageError(f"--out {str(out)!r} exists and is not empty; choose another --out or pass --overwrite")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create {str(out)!r}: {str(parent)!r} is not writable; choose another --out")


def export(trained: Trained, out: Path, formats: Sequence[str], plugins: Any, *, overwrite: bool = False,
           say: Callable[[str], None] = lambda line: None) -> ExportResult:
    """Write the export folder for ``formats`` (built beside ``out``, then renamed into place) and return what
    was checked. Raises UsageError (nothing written) when a format cannot be made for this model."""
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"unknown export format {unknown[0] if unknown else ''!r}; choose from {', '.join(FORMATS)}")
    if "onnx" in formats:
        require_onnx()
    check_out_folder(out, overwrite)
    record = trained.record
    notes = list(trained.notes)
    plain, plain_note = plain_model(trained, plugins)
    notes.append(plain_note)
    if "timm" in formats:
        if plain is None:
            raise UsageError(f"{plain_note.replace(': exported as', '; export it with --format torchscript or onnx;')}"
                             f" (not timm format)")
        if not _is_timm(plain):
            raise UsageError(f"{record.trial.backbone} is not a timm model, so there is no timm format for it; "
                             f"export it with --format torchscript or --format onnx")
    model = plain if plain is not None else copy.deepcopy(trained.model).cpu().eval()
    if trained.channels_last:
        model = model.to(memory_format=torch.channels_last)
    prep = DevicePreprocessor(trained.preprocessing, "none", trained.channels_last)

    trial = _trial_of(record)
    family, argument = plugins.datasets.resolve(trial.dataset, plugins.failure_hint())
    splits = load_splits(family, argument, trial.load_options)
    splits.source.pop("cache", None)
    if list(splits.classes) != trained.classes or splits.sizes != record.data.get("sizes", splits.sizes):
        raise UsageError(f"dataset {trial.dataset} no longer gives trial {record.key}'s splits (classes or sizes "
                         f"differ); its files changed since the trial ran")
    batch = int(record.runtime.get("eval_batch_size") or 32)
    example = prep.eval(splits.val_images[:2])
    reference = predictions(trained.model.cpu().eval(), splits.test_images, prep, batch)  # the trial's own model
    checks: dict[str, Any] = {"split": "test", "images": len(splits.test_labels),
                              "record_test_top1": record.metrics.test_top1,
                              "trained_model_test_top1": _top1(reference, splits.test_labels)}

    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    files: dict[str, dict[str, Any]] = {}
    try:
        for fmt in formats:  # the files first, then config.json (the timm loader reads it), then the checks
            path = tmp / FILES[fmt]
            _write_format(fmt, path, model, plain, example)
            files[fmt] = {"file": path.name, "sha256": _file_sha256(path), "bytes": path.stat().st_size}
        timm_model = plain if "timm" in formats else None
        _write_config(tmp / "config.json", timm_model, trained, _config(trained, files, checks, notes))
        exported = Exported(tmp, json.loads((tmp / "config.json").read_text(encoding="utf-8")))
        with torch.no_grad():
            eager_logits = model(example)
            for fmt in formats:
                _, forward = exported.forward(fmt)  # as a user loads it
                got = predictions(forward, splits.test_images, prep, batch)
                top1 = _top1(got, splits.test_labels)
                checks[fmt] = {"test_top1": top1, "images_differing_from_record": round(
                    abs(top1 - record.metrics.test_top1) * len(splits.test_labels)),
                    "predictions_differing_from_trained_model": int((got != reference).sum()),
                    "max_abs_logit_difference_vs_pytorch": float((forward(example) - eager_logits).abs().max())}
                say(f"{fmt}: {FILES[fmt]}, test top-1 {100 * top1:.2f}% (record "
                    f"{100 * record.metrics.test_top1:.2f}%)")
                allowed = 1 if fmt == "onnx" else 0  # ONNX Runtime's kernels round differently
                if checks[fmt]["images_differing_from_record"] > allowed:
                    notes.append(f"{fmt}: the exported file scores {checks[fmt]['images_differing_from_record']} "
                                 f"test image(s) away from the record (recorded on {record.environment.get('device')}"
                                 f" with amp={record.runtime.get('amp')}; checked here in float32 on the CPU)")
        _write_config(tmp / "config.json", timm_model, trained, _config(trained, files, checks, notes))
        (tmp / "README.md").write_text(model_card(trained, out, formats, checks, notes), encoding="utf-8")
        for path in tmp.iterdir():  # what the user's umask gives (0644 / 0755 under 022), not mkdtemp's 0700
            os.chmod(path, file_mode())
        os.chmod(tmp, folder_mode())
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, formats, checks, notes, record)


def _top1(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return (predicted == labels.cpu()).sum().item() / max(1, len(labels))


def _write_format(fmt: str, path: Path, model: nn.Module, plain: nn.Module | None, example: torch.Tensor) -> None:
    if fmt == "timm":
        write_weights(path, plain.state_dict(), {"format": "pt"})  # type: ignore[union-attr]
        return
    with _quiet():
        if fmt == "torchscript":
            torch.jit.trace(model, example, check_trace=False).save(str(path))
            return
        torch.onnx.export(model, (example.contiguous(),), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET,
                          dynamo=False)
        import onnx  # deferred: optional (the export extra)

        onnx.checker.check_model(str(path))


def _config(trained: Trained, files: dict[str, Any], checks: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    record = trained.record
    return {
        "export_version": EXPORT_VERSION, "tlbench": version.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "record_key": record.key, "dataset": record.trial.dataset, "backbone": record.trial.backbone,
        "strategy": record.trial.strategy, "label": record.trial.label, "seed": record.trial.seed,
        "hparams": record.trial.hparams, "protocol": record.trial.protocol,
        "metrics": {"val_top1": record.metrics.val_top1, "test_top1": record.metrics.test_top1,
                    "best_epoch": record.metrics.best_epoch},
        "weights": trained.weights_source, "processor": record.environment.get("device"),
        "files": files, "preprocessing": preprocessing_config(trained), "checks": checks, "notes": notes,
        "num_classes": len(trained.classes), "label_names": trained.classes,
    }


def _write_config(path: Path, plain: nn.Module | None, trained: Trained, tlbench_section: dict[str, Any]) -> None:
    """config.json: timm's own ``save_config_for_hf`` when the timm format is exported (what push_to_hub writes,
    plus the ``tlbench`` section), else the same keys for the other formats."""
    p = trained.preprocessing
    data_config = {"input_size": (3, p.input_size, p.input_size), "interpolation": p.interpolation,
                   "mean": tuple(p.mean), "std": tuple(p.std), "crop_pct": p.crop_pct, "crop_mode": "center"}
    if plain is not None:
        save_config_for_hf(plain, str(path), model_config={"label_names": trained.classes,
                                                           "tlbench": tlbench_section}, data_config=data_config)
        return
    config = {"architecture": None, "num_classes": len(trained.classes), "label_names": trained.classes,
              "pretrained_cfg": {**data_config, "input_size": list(data_config["input_size"]),
                                 "num_classes": len(trained.classes)},
              "tlbench": tlbench_section}
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------- model card
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def model_card(trained: Trained, out: Path, formats: Sequence[str], checks: dict[str, Any], notes: list[str]) -> str:
    record = trained.record
    trial = record.trial
    p = preprocessing_config(trained)
    folder = str(out)
    protocol = ", ".join(f"{k}={v}" for k, v in sorted(trial.protocol.items()))
    hparams = ", ".join(f"{k}={v}" for k, v in sorted(trial.hparams.items())) or "-"
    rows = [f"| {fmt} | `{FILES[fmt]}` | {_pct(checks[fmt]['test_top1'])} | "
            f"{checks[fmt]['images_differing_from_record']} | {checks[fmt]['predictions_differing_from_trained_model']}"
            f" | {checks[fmt]['max_abs_logit_difference_vs_pytorch']:.2e} |" for fmt in formats]
    lines = [
        f"# {trial.label} on {trial.dataset} ({trial.backbone})", "",
        f"Exported by tlbench from trial `{record.key}`: strategy **{trial.strategy}** ({hparams}), seed {trial.seed},",
        f"chosen and evaluated by the tlbench protocol (version {trial.protocol_version}).", "",
        "| | top-1 |", "|---|---|",
        f"| validation (selection) | {_pct(record.metrics.val_top1)} |",
        f"| test (scored once, {checks['images']} images) | {_pct(record.metrics.test_top1)} |", "",
        f"- dataset: `{trial.dataset}`, {len(trained.classes)} classes: {', '.join(trained.classes)}",
        f"- data options: {json.dumps(trial.data, sort_keys=True)}",
        f"- backbone: `{trial.backbone}` ({record.backbone.get('weights', {}).get('source') or 'no pretrained weights'})",
        f"- protocol: {protocol}",
        f"- best epoch: {record.metrics.best_epoch} of {record.metrics.epochs}",
        f"- processor: {record.environment.get('device')} (torch {record.environment.get('torch')}, "
        f"tlbench {record.environment.get('tlbench')})",
        f"- weights: {trained.weights_source}",
        *[f"- note: {note}" for note in notes], "",
        "## Checked at export", "",
        f"Every file was scored on the trial's test split with the harness's preprocessing:", "",
        "| format | file | test top-1 | test top-1 difference from the record, in images | test predictions differing from "
        "the trained model's | max logit difference vs the exported PyTorch module |",
        "|---|---|---|---|---|---|", *rows, "",
        "## Preprocessing (exactly what the harness evaluated with)", "",
        *[f"{i}. {step}" for i, step in enumerate(p["steps"], 1)], "",
        f"In torch: `{p['torchvision']}`.", "",
        "## Loading it", "",
    ]
    if "timm" in formats:
        lines += ["Plain timm (no tlbench needed):", "", "```python", "import timm",
                  f"model = timm.create_model(\"local-dir:{folder}\", pretrained=True).eval()",
                  "config = timm.data.resolve_data_config(model=model)  # input size, interpolation, mean/std, crop",
                  "transform = timm.data.create_transform(**config)  # PIL pipeline; see above for the exact one",
                  "```", ""]
    if "torchscript" in formats:
        lines += ["TorchScript:", "", "```python", "import torch",
                  f"model = torch.jit.load(\"{folder}/{FILES['torchscript']}\")", "```", ""]
    if "onnx" in formats:
        lines += ["ONNX Runtime (input `input`: float32 N x 3 x H x W after the preprocessing above; output `logits`):",
                  "", "```python", "import onnxruntime",
                  f"session = onnxruntime.InferenceSession(\"{folder}/{FILES['onnx']}\")",
                  "logits = session.run(None, {\"input\": batch})[0]", "```", ""]
    lines += ["With tlbench (the exact preprocessing, class names):", "", "```",
              f"tlbench predict {folder} IMAGES_OR_FOLDER --top-k 5", "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- reading an export
@dataclass
class Exported:
    folder: Path
    config: dict[str, Any]

    @property
    def section(self) -> dict[str, Any]:
        return self.config["tlbench"]

    @property
    def classes(self) -> list[str]:
        return list(self.config.get("label_names") or self.section["label_names"])

    @property
    def formats(self) -> list[str]:
        return [fmt for fmt in FORMATS if fmt in self.section["files"]]

    def preprocessor(self) -> Any:
        p = self.section["preprocessing"]
        prep = Preprocessing(int(p["input_size"]), str(p["interpolation"]), tuple(p["mean"]), tuple(p["std"]),
                             float(p["crop_pct"]), str(p.get("source", "")))
        return DevicePreprocessor(prep, "none", bool(p.get("channels_last")))

    def forward(self, fmt: str | None = None) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
        """A forward function for the first available format (timm, TorchScript, ONNX) or ``fmt``."""
        chosen = fmt or self.formats[0]
        if chosen not in self.formats:
            raise UsageError(f"{self.folder} has no {chosen} export (it has {', '.join(self.formats)}); "
                             f"choose one of those with --use")
        channels_last = bool(self.section["preprocessing"].get("channels_last"))
        path = self.folder / self.section["files"][chosen]["file"]
        with _quiet():
            if chosen == "timm":
                model = timm.create_model(f"local-dir:{self.folder}", pretrained=True).eval()
                if channels_last:
                    model = model.to(memory_format=torch.channels_last)
                return chosen, model
            if chosen == "torchscript":
                return chosen, torch.jit.load(str(path)).eval()
            require_onnx()
            return chosen, onnx_forward(path)


def load_export(folder: Path | str) -> Exported:
    """An export folder, checked: config.json with its ``tlbench`` section, every listed file present with the
    sha256 config.json states. A UsageError names what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"no export folder at {str(folder)!r}; make one with `tlbench export KEY --out {folder}`")
    config_path = folder / "config.json"
    hint = f"export it again with `tlbench export KEY --out {folder} --overwrite`"
    try:
        config = read_json(config_path)  # a regular file within the JSON limits: a folder may come from anyone
        section = config["tlbench"]
        files, p = section["files"], section["preprocessing"]
        [p[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")]  # noqa: B018 (must exist)
        if not isinstance(files, dict) or not files or not (config.get("label_names") or section["label_names"]):
            raise ValueError("no files or no label names")
    except FileNotFoundError:
        raise UsageError(f"{folder} is not a tlbench export (no config.json); {hint}") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{config_path} is not a tlbench export config ({type(exc).__name__}: {exc}); "
                         f"{hint}") from None
    for fmt, entry in files.items():
        path = folder / str(entry.get("file", ""))
        if not path.is_file():
            raise UsageError(f"{path} is missing from the export (config.json lists it for {fmt}); {hint}")
        if _file_sha256(path) != entry.get("sha256"):
            raise UsageError(f"{path} is damaged: its sha256 differs from the one config.json states; {hint}")
    return Exported(folder, config)
