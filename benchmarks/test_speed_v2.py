"""Speed v2 (issue 12): the frozen-prefix cache, CPU step options, trial-order independence of train img/s, and a
full fine-tune against a plain loop that makes timm train.py's choices. Every figure is a ratio of runs alternated
in one process (A, B, A, B; medians), and every benchmark asserts its goal with the tolerance stated next to it.
Run: ``python -m pytest benchmarks/test_speed_v2.py --benchmark-only -s`` (knobs: the TLBENCH_BENCH_* variables
below; README.md here).
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import check_goal
from test_speed import FOLDER_PER_CLASS, NUM_CLASSES, jpeg_folder  # noqa: F401  (the JPEG folder fixture)

SEED = 0
IMAGE_SIZE = 64
BATCH_SIZE = 32


def field(record: dict, path: str):
    """One field of a trial record by dotted path (``metrics.time_s.train``, ``plan.phases.0.prefix_cache``): the one
    place these benchmarks read the record layout (records become a typed object later, same JSON)."""
    value = record
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


# ================================================================ 1. partial: frozen-prefix cache vs end to end
PARTIAL_ROUNDS = int(os.environ.get("TLBENCH_BENCH_PARTIAL_ROUNDS", "3"))  # rounds of the three, order rotated
PARTIAL_EPOCHS = int(os.environ.get("TLBENCH_BENCH_PARTIAL_EPOCHS", "8"))  # the protocol default
GOAL_PARTIAL_SPEEDUP = 3.0  # before issue 12 / today, end to end (one trial, fresh runner: the prefix pass is paid)
TOLERANCE_PARTIAL_SPEEDUP = 0.15  # 5%
GOAL_PARTIAL_VAL_DELTA = 0.02  # channels_last vs contiguous, one seed: within partial's seed-to-seed sd (1.7 points)


def test_partial_prefix_cache(benchmark, make_trials, run_trial, fmnist, report):
    """The default ``partial`` trial (efficientnet_lite0, Fashion-MNIST 1000/500/2000 at 64 px) three ways, each a
    fresh grid through ``run_grid`` (nothing cached, decoded data in memory before the trial's clock starts),
    alternated: today's defaults ("cached": the prefix cache, channels_last); ``prefix_cache_mib=0`` ("plain":
    today's end-to-end path, channels_last); and ``prefix_cache_mib=0 channels_last=false`` ("before": what the
    code before issue 12 computed, protocol 1 on the CPU). Goal: "cached" >= 3x faster end to end than "before".
    Accuracy: the cache changes nothing (asserted exactly against "plain": same validation history, best epoch and
    test top-1); channels_last changes the float order of convolutions, so "before" is compared within 2 points."""
    (cached_trial,) = make_trials("fashion-mnist", "partial", epochs=PARTIAL_EPOCHS)
    (plain_trial,) = make_trials("fashion-mnist", "partial", epochs=PARTIAL_EPOCHS, prefix_cache_mib=0)
    (before_trial,) = make_trials("fashion-mnist", "partial", epochs=PARTIAL_EPOCHS, prefix_cache_mib=0,
                                  channels_last=False)

    def measure() -> list[dict]:
        rounds = []
        for index in range(PARTIAL_ROUNDS):
            order = [("cached", cached_trial), ("plain", plain_trial), ("before", before_trial)]
            order = order[index % 3:] + order[:index % 3]
            rounds.append(dict((name, run_trial(trial)) for name, trial in order))
        return rounds

    rounds = benchmark.pedantic(measure, rounds=1, iterations=1)
    ratios = [r["before"][1] / r["cached"][1] for r in rounds]
    ratio = statistics.median(ratios)
    plain_ratio = statistics.median(r["plain"][1] / r["cached"][1] for r in rounds)
    cached, plain, before = (rounds[0][name][0] for name in ("cached", "plain", "before"))
    cm, pm, bm = field(cached, "metrics"), field(plain, "metrics"), field(before, "metrics")

    def seconds(name: str) -> str:
        return ", ".join(f"{r[name][1]:.1f}" for r in rounds)

    prefix = field(cached, "plan.phases.0.prefix_cache")
    report(benchmark, "seconds", {name: [r[name][1] for r in rounds] for name in ("cached", "plain", "before")}
           | {"cached_parts": cm["time_s"], "plain_parts": pm["time_s"], "before_parts": bm["time_s"]},
           f"[partial] {PARTIAL_ROUNDS} alternated rounds, {PARTIAL_EPOCHS} epochs: cached {seconds('cached')} s "
           f"(prefix pass {cm['time_s']['prefix_cache']:.1f} s, train {cm['time_s']['train']:.1f} s, eval "
           f"{cm['time_s']['eval']:.1f} s); end to end {seconds('plain')} s (train {pm['time_s']['train']:.1f} s, "
           f"eval {pm['time_s']['eval']:.1f} s); before issue 12 {seconds('before')} s (train "
           f"{bm['time_s']['train']:.1f} s, eval {bm['time_s']['eval']:.1f} s); per-round before/cached "
           f"{', '.join(f'{x:.2f}' for x in ratios)}")
    report(benchmark, "prefix", prefix,
           f"[partial] cut at {prefix['cut']}, activations {prefix['activation_shape']} "
           f"({prefix['kib_per_image']:.1f} KiB/image, {prefix['needs_mib']:.1f} MiB for all splits); train img/s "
           f"cached {cm['train_images_per_s']:.0f} vs end to end {pm['train_images_per_s']:.0f}")
    report(benchmark, "accuracy", {name: [m["val_top1"], m["test_top1"], m["best_epoch"]]
                                   for name, m in (("cached", cm), ("plain", pm), ("before", bm))},
           f"[partial] test top-1 cached {100 * cm['test_top1']:.2f}% vs end to end {100 * pm['test_top1']:.2f}% vs "
           f"before {100 * bm['test_top1']:.2f}%; val {100 * cm['val_top1']:.2f}% vs {100 * pm['val_top1']:.2f}% "
           f"vs {100 * bm['val_top1']:.2f}%; best epoch {cm['best_epoch']} vs {pm['best_epoch']} vs "
           f"{bm['best_epoch']}")
    # What the split sizes allow, counting forward work in full-network passes (a backward = 2 forwards; the
    # end-to-end path back-propagates through the suffix only): the bound on this one-trial ratio.
    share = prefix["prefix_gflops_per_image"] / cm["gflops_per_image"]
    sizes = field(cached, "data.sizes")
    steps_images = cm["steps"] * BATCH_SIZE
    plain_work = steps_images * (1 + 2 * (1 - share)) + PARTIAL_EPOCHS * sizes["val"] + sizes["test"]
    cached_work = (sum(sizes.values()) * share + (1 - share) * (3 * steps_images + PARTIAL_EPOCHS * sizes["val"]
                                                               + sizes["test"]))
    report(benchmark, "bound", plain_work / cached_work,
           f"[partial] the prefix is {100 * share:.0f}% of a forward pass: counting forward work, the end-to-end "
           f"ratio of one trial cannot exceed ~{plain_work / cached_work:.1f}x at these split sizes and "
           f"{PARTIAL_EPOCHS} epochs")
    report(benchmark, "ratio", {"before_over_cached": ratio, "plain_over_cached": plain_ratio},
           f"[partial] RATIO before-issue-12/cached = {ratio:.2f}x (goal >= 3x); end-to-end/cached (both "
           f"channels_last) = {plain_ratio:.2f}x")
    assert prefix["used"] is True and field(before, "runtime.channels_last") is False
    assert cm["history"] == pm["history"] and cm["test_top1"] == pm["test_top1"], "the cache changed the numbers"
    assert abs(cm["val_top1"] - bm["val_top1"]) <= GOAL_PARTIAL_VAL_DELTA, "channels_last moved validation top-1"
    check_goal(benchmark, "partial prefix cache", ratio, at_least=GOAL_PARTIAL_SPEEDUP,
               tolerance=TOLERANCE_PARTIAL_SPEEDUP, unit="x")


# ======================================================================= 2. CPU step options, measured side by side
OPTION_ROUNDS = int(os.environ.get("TLBENCH_BENCH_OPTION_ROUNDS", "12"))  # steps per option, interleaved
MEASURE_COMPILE = os.environ.get("TLBENCH_BENCH_COMPILE", "1") != "0"  # compiling lite0 takes minutes on 2 cores
TRIAL_STEPS = 8 * (1000 // BATCH_SIZE)  # one default trial's training steps: torch.compile's cost is spread on them
ADOPT_SPEEDUP = 1.15  # "clearly faster": an option must beat fp32 by 15% (after compile time) to be considered
TOLERANCE_ADOPT = 0.05
# Options measured faster but not adopted, and why (accuracy checked on validation). Empty: none so far.
# channels_last was listed here until protocol 2 adopted it (1.39x and 1.42x per step on the idle 2-core CPU; the
# classic five at seed 0 within seed noise on validation: README, Speed).
NOT_ADOPTED: dict[str, str] = {}


def test_cpu_step_options(benchmark, plugins, report):
    """One efficientnet_lite0 full fine-tune step at 64 px, batch 32, in five variants, interleaved step by step
    (rotating the order each round): fp32 (the protocol-1 CPU default), channels_last (protocol 2's), bf16 autocast, bf16 +
    channels_last, torch.compile (its compile time, amortised over one default trial's 248 steps, is added).
    Each variant trains its own copy of the model. Reported: median step times and ratios fp32/variant. Asserted:
    the CPU defaults agree with the measurement — an option clearly faster (>= 1.15x) is either adopted or listed
    in NOT_ADOPTED with its accuracy reason."""
    from tlbench.trainer import resolve_amp, resolve_channels_last

    torch.manual_seed(SEED)
    base = plugins.backbones.get("efficientnet_lite0").build(None, NUM_CLASSES, pretrained=True).model
    x, y = torch.randn(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE), torch.randint(0, NUM_CLASSES, (BATCH_SIZE,))
    bf16_supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()

    def variant(channels_last: bool, bf16: bool, compiled: bool):
        model = copy.deepcopy(base)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        forward = torch.compile(model) if compiled else model
        inputs = x.contiguous(memory_format=torch.channels_last) if channels_last else x

        def step() -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(forward(inputs).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return time.perf_counter() - start
        return step

    options = {"fp32": (False, False, False), "channels_last": (True, False, False)}
    if bf16_supported:
        options |= {"bf16": (False, True, False), "bf16+channels_last": (True, True, False)}
    if MEASURE_COMPILE:
        options["compile"] = (False, False, True)

    def measure() -> dict:
        steps = {name: variant(*flags) for name, flags in options.items()}
        first = {name: step() for name, step in steps.items()}  # torch.compile compiles here
        second = {name: step() for name, step in steps.items()}
        times: dict[str, list[float]] = {name: [] for name in steps}
        names = list(steps)
        for index in range(OPTION_ROUNDS):
            for name in names[index % len(names):] + names[:index % len(names)]:
                times[name].append(steps[name]())
        return {"first": first, "second": second, "times": times}

    m = benchmark.pedantic(measure, rounds=1, iterations=1)
    median = {name: statistics.median(t) for name, t in m["times"].items()}
    compile_s = max(0.0, m["first"]["compile"] - m["second"]["compile"]) if MEASURE_COMPILE else 0.0
    effective = dict(median)
    if MEASURE_COMPILE:
        effective["compile"] = median["compile"] + compile_s / TRIAL_STEPS
    else:
        report(benchmark, "compile", None, "[cpu options] torch.compile not measured (TLBENCH_BENCH_COMPILE=0)")
    speedup = {name: median["fp32"] / effective[name] for name in effective}
    for name in options:
        report(benchmark, f"step_{name}", {"median_s": median[name], "speedup": speedup[name]},
               f"[cpu options] {name:18s} median step {1000 * median[name]:.0f} ms"
               f"{f' + compile {compile_s:.1f} s / {TRIAL_STEPS} steps' if name == 'compile' else ''}: "
               f"RATIO fp32/{name} = {speedup[name]:.2f}")
    if not bf16_supported:
        report(benchmark, "bf16", None, "[cpu options] bf16 not measured: oneDNN reports no bf16 support here")
    cpu = torch.device("cpu")
    defaults = {"bf16": resolve_amp(cpu, "auto") == "bf16", "channels_last": resolve_channels_last(cpu, "auto")}
    for name, value in speedup.items():
        if name == "fp32" or value < ADOPT_SPEEDUP + TOLERANCE_ADOPT:
            continue
        adopted = defaults.get(name, False)
        assert adopted or name in NOT_ADOPTED, (
            f"{name} is {value:.2f}x faster than fp32 on this CPU: check its accuracy on validation and adopt it as "
            f"a CPU default, or record why not in NOT_ADOPTED")
    kept = [name for name, value in speedup.items() if name != "fp32" and value < ADOPT_SPEEDUP + TOLERANCE_ADOPT]
    report(benchmark, "decision", {"kept_off": kept, **{f"{k}_default": v for k, v in defaults.items()}},
           f"[cpu options] not clearly faster than fp32 (< {ADOPT_SPEEDUP:g}x + {TOLERANCE_ADOPT:g}), so not CPU "
           f"defaults: {', '.join(kept) or 'none'}")


# ====================================================== 2b. channels_last per strategy, end to end, alternated
CL_STRATEGIES = os.environ.get("TLBENCH_BENCH_CL_STRATEGIES", "all")  # comma-separated, or "all" (the built-ins)
CL_EPOCHS = int(os.environ.get("TLBENCH_BENCH_CL_EPOCHS", "2"))
CL_ROUNDS = int(os.environ.get("TLBENCH_BENCH_CL_ROUNDS", "1"))  # (channels_last, contiguous) pairs per strategy
GOAL_CL_GRID = 1.0  # the grid of all strategies must not be slower with channels_last (the CPU default since
TOLERANCE_CL_GRID = 0.05  # protocol 2)


def test_channels_last_per_strategy(benchmark, plugins, make_trials, run_trial, fmnist, report):
    """Every built-in strategy's default trial (``CL_EPOCHS`` epochs) with ``channels_last`` on (protocol 2's CPU
    default) and off (protocol 1's), alternated per strategy, each a fresh grid. Reported per strategy: seconds,
    train img/s, contiguous/channels_last ratio and validation top-1 of both. Asserted: the whole grid is not
    slower with channels_last (the step benchmark above measures the per-step gain)."""
    names = plugins.strategies.names() if CL_STRATEGIES == "all" else CL_STRATEGIES.split(",")

    def measure() -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {name: [] for name in names}
        for index in range(CL_ROUNDS):
            for position, name in enumerate(names):
                (cl,) = make_trials("fashion-mnist", name, epochs=CL_EPOCHS)
                (plain,) = make_trials("fashion-mnist", name, epochs=CL_EPOCHS, channels_last=False)
                pair = [("cl", cl), ("plain", plain)]
                out[name].append({label: run_trial(trial) for label, trial in
                                  (pair if (index + position) % 2 == 0 else pair[::-1])})
        return out

    figures = benchmark.pedantic(measure, rounds=1, iterations=1)
    totals = {"cl": 0.0, "plain": 0.0}
    per_strategy = {}
    for name, rounds in figures.items():
        seconds = {label: statistics.median(r[label][1] for r in rounds) for label in totals}
        for label in totals:
            totals[label] += seconds[label]
        first = rounds[0]
        ips = {label: field(first[label][0], "metrics.train_images_per_s") or 0.0 for label in totals}
        val = {label: field(first[label][0], "metrics.val_top1") for label in totals}
        assert field(first["cl"][0], "runtime.channels_last") is True
        assert field(first["plain"][0], "runtime.channels_last") is False
        per_strategy[name] = {"seconds": seconds, "train_ips": ips, "val_top1": val,
                              "ratio": seconds["plain"] / seconds["cl"]}
        report(benchmark, f"cl_{name}", per_strategy[name],
               f"[channels_last] {name:18s} {seconds['cl']:6.1f} s vs contiguous {seconds['plain']:6.1f} s: RATIO "
               f"{seconds['plain'] / seconds['cl']:.2f}x; train img/s {ips['cl']:.0f} vs {ips['plain']:.0f}; val "
               f"top-1 {100 * val['cl']:.1f}% vs {100 * val['plain']:.1f}%")
    grid = totals["plain"] / totals["cl"]
    report(benchmark, "cl_grid", {"seconds": totals, "ratio": grid},
           f"[channels_last] {len(names)} strategies, {CL_EPOCHS} epochs, {CL_ROUNDS} round(s): "
           f"{totals['cl']:.1f} s vs contiguous {totals['plain']:.1f} s: RATIO {grid:.2f}x")
    check_goal(benchmark, "channels_last grid", grid, at_least=GOAL_CL_GRID, tolerance=TOLERANCE_CL_GRID, unit="x")


# ============================================================ 3. a trial's train img/s, first vs last in a process
GOAL_ORDER_DIFF = 0.05  # |first/last - 1|
TOLERANCE_ORDER_DIFF = 0.02
ORDER_STRATEGY = os.environ.get("TLBENCH_BENCH_ORDER_STRATEGY", "full")
ORDER_EPOCHS = int(os.environ.get("TLBENCH_BENCH_ORDER_EPOCHS", "2"))
# One 2-epoch trial's img/s varies ~10% from process to process on the 2-core CPU: the order effect is the median
# of several fresh processes' first/last ratios.
ORDER_ROUNDS = int(os.environ.get("TLBENCH_BENCH_ORDER_ROUNDS", "3"))

_ORDER_SCRIPT = r"""
import json, sys
from tlbench import RunSpec, run_grid
results, strategy, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
figures = []
for name, again in [(strategy, False), ("frozen", False), ("bitfit", False), (strategy, True)]:
    grid = run_grid(RunSpec(strategies=[name], settings=[f"epochs={epochs}"], results_dir=results, device="cpu",
                            progress="off", redo="all" if again else "none"))
    (record,) = grid.records
    assert record.ok, record.error
    figures.append(record.metrics.train_images_per_s)
print(json.dumps({"first": figures[0], "last": figures[-1], "warmup": record.plan["phases"][0]["timing_warmup"]}))
"""


def test_train_rate_does_not_depend_on_trial_order(benchmark, fmnist, bench_environment, report, tmp_path):
    """In fresh processes (subprocesses: the one-time costs are real): one trial (``full``, 2 epochs by default),
    then two other trials, then the first one again, ``ORDER_ROUNDS`` times. Goal: the median of the rounds'
    first/last train img/s ratios within 5% of 1."""
    def one_round() -> dict:
        done = subprocess.run([sys.executable, "-c", _ORDER_SCRIPT, str(tmp_path / "results"), ORDER_STRATEGY,
                               str(ORDER_EPOCHS)], capture_output=True, text=True, timeout=3 * 3600,
                              env={**os.environ, "TLBENCH_CACHE_DIR": bench_environment.cache_dir})
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    rounds = benchmark.pedantic(lambda: [one_round() for _ in range(ORDER_ROUNDS)], rounds=1, iterations=1)
    ratios = [r["first"] / r["last"] for r in rounds]
    ratio = statistics.median(ratios)
    m = {"first": statistics.median(r["first"] for r in rounds), "last": statistics.median(r["last"] for r in rounds),
         "ratios": ratios, "warmup": rounds[-1]["warmup"]}
    report(benchmark, "train_ips", m,
           f"[trial order] {ORDER_STRATEGY}, {ORDER_EPOCHS} epochs, {ORDER_ROUNDS} fresh processes: train img/s "
           f"first in the process {m['first']:.1f}, last (after frozen and bitfit) {m['last']:.1f} (medians); "
           f"first/last per process {', '.join(f'{r:.3f}' for r in ratios)}; RATIO (median) = {ratio:.3f}; "
           f"warm-up before timing {m['warmup']['seconds']:.2f} s ({m['warmup']['steps']} steps on a copy)")
    check_goal(benchmark, "first vs last trial", abs(ratio - 1), at_most=GOAL_ORDER_DIFF,
               tolerance=TOLERANCE_ORDER_DIFF)


# ===================================================== 4. full fine-tune vs a plain loop with timm train.py's choices
TIMM_ROUNDS = int(os.environ.get("TLBENCH_BENCH_TIMM_ROUNDS", "2"))
TIMM_EPOCHS = int(os.environ.get("TLBENCH_BENCH_TIMM_EPOCHS", "8"))  # the protocol default
# Also time the loop with timm train.py's opt-in --channels-last (reported, not the goal: the goal is against its
# defaults, as a user runs it). 0 skips it.
TIMM_CHANNELS_LAST = os.environ.get("TLBENCH_BENCH_TIMM_CHANNELS_LAST", "1") != "0"
GOAL_TIMM_SPEEDUP = 1.5  # plain loop / tlbench, end to end
TOLERANCE_TIMM_SPEEDUP = 0.075  # 5%
GOAL_TIMM_DELTA = 0.03  # |test top-1 difference|: different resize kernels (PIL vs tensor) and shuffles
TOLERANCE_TIMM_DELTA = 0.01


def _timm_style_fit(root: Path, lesson, epochs: int, lr: float, checkpoints: Path,
                    channels_last: bool = False) -> dict:
    """What timm's train.py does with matched flags (--epochs N --lr LR -b 32 --opt adamw --weight-decay 0.01
    --sched cosine --warmup-epochs 1 --no-aug, BatchNorm in eval mode as tlbench's "frozen" policy): an
    ``ImageFolder`` per split, per-sample transforms (the weights' eval recipe), ``DataLoader(num_workers=2,
    pin_memory=False, drop_last=True)`` for training, validation after every epoch, and a checkpoint
    (model + optimizer + epoch, ``torch.save``) written after every epoch, as timm's CheckpointSaver does; the
    best validation epoch is then loaded from its checkpoint and scored on the test split. ``channels_last``: what
    train.py's ``--channels-last`` does (the model and every input batch in channels_last memory)."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    start = time.perf_counter()
    model = lesson.build_model(NUM_CLASSES, SEED)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    transform = lesson.transforms(model, IMAGE_SIZE)
    sets = {split: ImageFolder(str(root / split), transform) for split in ("train", "val", "test")}
    loaders = {"train": DataLoader(sets["train"], batch_size=BATCH_SIZE, shuffle=True, drop_last=True, num_workers=2,
                                   generator=torch.Generator().manual_seed(SEED))}
    loaders |= {s: DataLoader(sets[s], batch_size=lesson.EVAL_BATCH_SIZE, num_workers=2) for s in ("val", "test")}
    optimizer = torch.optim.AdamW(lesson.adamw_groups(model.named_parameters(), lr=lr))
    per_epoch = len(sets["train"]) // BATCH_SIZE
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lesson.warmup_cosine(epochs * per_epoch, lesson.warmup_steps(per_epoch, epochs)))
    loss_fn = nn.CrossEntropyLoss()

    @torch.no_grad()
    def score(loader) -> float:
        model.eval()
        correct = total = 0
        for x, y in loader:
            correct += int((model(x.contiguous(memory_format=memory_format)).argmax(1) == y).sum())
            total += len(y)
        return correct / total

    best, best_epoch = -1.0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        lesson.set_bn_eval(model)
        for x, y in loaders["train"]:
            loss = loss_fn(model(x.contiguous(memory_format=memory_format)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        top1 = score(loaders["val"])
        torch.save({"epoch": epoch, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()},
                   checkpoints / f"checkpoint-{epoch}.pth.tar")
        if top1 > best:
            best, best_epoch = top1, epoch
    model.load_state_dict(torch.load(checkpoints / f"checkpoint-{best_epoch}.pth.tar", weights_only=True)["state_dict"])
    return {"val_top1": best, "test_top1": score(loaders["test"]), "seconds": time.perf_counter() - start}


def test_full_finetune_vs_timm_style_loop(benchmark, plugins, jpeg_folder, lesson, report, tmp_path):  # noqa: F811
    """``tlbench run -s full -d imagefolder:<2,000 JPEGs>`` (in process, cold decode cache, ``data.image_size=64``
    so images are stored at the size the network needs) vs the timm-train.py-style loop above, alternated.
    Goal: tlbench >= 1.5x faster end to end, test top-1 within 3 points."""
    from click.testing import CliRunner

    from tlbench.cli import cli
    from tlbench.store import ResultStore

    args = ["run", "-s", "full", "-b", "efficientnet_lite0", "-d", f"imagefolder:{jpeg_folder}", "--device", "cpu",
            "--epochs", str(TIMM_EPOCHS), "--set", f"data.image_size={IMAGE_SIZE}", "--set", 'data.augment="none"',
            "-q"]
    lr = plugins.strategies.get("full").defaults["lr"]

    def harness(index: int) -> tuple[dict, float]:
        start = time.perf_counter()
        result = CliRunner().invoke(cli, args + ["--results-dir", str(tmp_path / f"results-{index}")],
                                    env={"TLBENCH_CACHE_DIR": str(tmp_path / f"cold-{index}")},
                                    catch_exceptions=False)
        seconds = time.perf_counter() - start
        assert result.exit_code == 0, result.output
        (record,) = list(ResultStore(tmp_path / f"results-{index}").records())
        return record.to_json_dict(), seconds

    def plain(index: int, channels_last: bool = False) -> dict:
        folder = tmp_path / f"checkpoints-{index}-{int(channels_last)}"
        folder.mkdir()
        return _timm_style_fit(jpeg_folder, lesson, TIMM_EPOCHS, lr, folder, channels_last)

    contenders = {"harness": harness, "plain": plain}
    if TIMM_CHANNELS_LAST:
        contenders["plain_cl"] = lambda index: plain(index, channels_last=True)

    def measure() -> list[dict]:
        rounds = []
        for index in range(TIMM_ROUNDS):
            names = list(contenders)
            names = names[index % len(names):] + names[:index % len(names)]
            rounds.append({name: contenders[name](index) for name in names})
        return rounds

    rounds = benchmark.pedantic(measure, rounds=1, iterations=1)
    ratios = [r["plain"]["seconds"] / r["harness"][1] for r in rounds]
    ratio = statistics.median(ratios)
    record = rounds[0]["harness"][0]
    delta = field(record, "metrics.test_top1") - rounds[0]["plain"]["test_top1"]
    harness_s = ", ".join(f"{r['harness'][1]:.1f}" for r in rounds)
    plain_s = ", ".join(f"{r['plain']['seconds']:.1f}" for r in rounds)
    cl = ""
    if TIMM_CHANNELS_LAST:
        cl_ratio = statistics.median(r["plain_cl"]["seconds"] / r["harness"][1] for r in rounds)
        cl_s = ", ".join(f"{r['plain_cl']['seconds']:.1f}" for r in rounds)
        cl = (f"; plain with --channels-last {cl_s} s (test top-1 {100 * rounds[0]['plain_cl']['test_top1']:.1f}%), "
              f"RATIO plain-channels_last/tlbench {cl_ratio:.2f}x")
    report(benchmark, "seconds", {name: [r[name][1] if name == "harness" else r[name]["seconds"] for r in rounds]
                                  for name in contenders},
           f"[full vs timm-style] {TIMM_ROUNDS} alternated rounds, {TIMM_EPOCHS} epochs, "
           f"{sum(FOLDER_PER_CLASS.values()) * NUM_CLASSES} JPEGs: tlbench "
           f"{harness_s} s (stored at {field(record, 'data.source.storage_size')} px, channels_last "
           f"{field(record, 'runtime.channels_last')}); plain {plain_s} s; per-round ratios "
           f"{', '.join(f'{x:.2f}' for x in ratios)}{cl}")
    report(benchmark, "accuracy", {"harness": field(record, "metrics.test_top1"),
                                   "plain": rounds[0]["plain"]["test_top1"]},
           f"[full vs timm-style] test top-1 tlbench {100 * field(record, 'metrics.test_top1'):.1f}% vs plain "
           f"{100 * rounds[0]['plain']['test_top1']:.1f}% (delta {100 * delta:+.1f} points)")
    report(benchmark, "ratio", ratio,
           f"[full vs timm-style] RATIO plain/tlbench end to end = {ratio:.2f}x (goal >= 1.5x)")
    check_goal(benchmark, "full vs timm-style accuracy", abs(delta), at_most=GOAL_TIMM_DELTA,
               tolerance=TOLERANCE_TIMM_DELTA)
    check_goal(benchmark, "full vs timm-style speed", ratio, at_least=GOAL_TIMM_SPEEDUP,
               tolerance=TOLERANCE_TIMM_SPEEDUP, unit="x")
