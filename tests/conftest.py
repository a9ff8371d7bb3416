import pytest
import tlbench


@pytest.fixture(autouse=True)
def tmp_cache_dir(tmp_path, monkeypatch):
    """Every test gets its own empty dataset cache: tests never read or write the user's cache."""
    cache = tmp_path / "tlbench-cache"
    monkeypatch.setenv("TLBENCH_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(autouse=True)
def builtin_plugins_only(monkeypatch):
    """Installed third-party plugins must not change what the tests see; tests that need them unset this."""
    monkeypatch.setenv("TLBENCH_DISABLE_PLUGINS", "1")


@pytest.fixture
def one_torch_thread():
    """In-process trials on one thread: on a busy 2-core machine two OpenMP threads can make a tiny trial 10x
    slower. Modules use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A weights file for timm's tiny `test_efficientnet` (100k parameters), so "pretrained" runs offline through
    timm's real local-file path. Random weights: tests check the harness, not ImageNet transfer."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tiny_weights):
    """The backbone name tests pass to `-b`."""
    return f"timm:test_efficientnet@{tiny_weights}"


# Settings under which every strategy learns the synthetic data within seconds (tests check learning happened).
FAST_SETTINGS = ["epochs=4", "scratch.lr=0.01", "full.lr=0.01", "partial.lr=0.01", "partial.head_lr=0.03",
                 "frozen.head_lr=0.03", "discriminative-lr.backbone_lr=0.003", "discriminative-lr.head_lr=0.03",
                 "lp-ft.probe_lr=0.03", "lp-ft.lr=0.01", "lp-ft.probe_epochs=2", "llrd.lr=0.03", "bitfit.lr=0.003",
                 "bitfit.head_lr=0.03", "l2-sp.lr=0.01", "wise-ft.lr=0.01", "lora.lr=0.01", "lora.head_lr=0.03",
                 "delta.lr=0.01", "bss.lr=0.01", "mixup.lr=0.01", "swa.lr=0.01", "llrd-block.lr=0.03",
                 "data.train_size=128"]


@pytest.fixture
def fast_settings():
    return [arg for setting in FAST_SETTINGS for arg in ("--set", setting)]


def record_dict(key="0123456789abcdef0123", status="ok", strategy="full", seed=0, test_top1=0.5, **sections):
    """A valid schema-2 record as JSON data; tests break one field at a time."""
    metrics = ({"val_top1": 0.6, "test_top1": test_top1, "best_epoch": 1, "epochs": 2, "wall_s": 1.0,
                "time_s": {"total": 1.0}} if status == "ok" else {"wall_s": 1.0, "time_s": {"total": 1.0}})
    return {"schema": 2, "key": key, "status": status, "command": "tlbench run", "created": "2026-11-28T00:00:00+00:00",
            "trial": {"dataset": "synthetic", "backbone": "b", "strategy": strategy, "seed": seed, "protocol": {},
                      "hparams": {}, "data": {}, "key": key, "group": "g" * 20, "label": strategy, "overrides": {},
                      "protocol_version": tlbench.PROTOCOL_VERSION},
            "metrics": metrics, **({"error": "boom"} if status != "ok" else {}), **sections}


@pytest.fixture
def make_record():
    return record_dict


def one_error_line(result) -> str:
    """The one ``Error: ...`` line of a CLI result that exited 2 (bad input), checked to be exactly one line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def synthetic_grid(results, backbone: str, strategies, settings, plugins=None) -> dict:
    """Run ``strategies`` on the synthetic data in this process (CPU, no progress), require every trial ok, and
    return their records by strategy name."""
    from tlbench import RunSpec, run_grid

    spec = RunSpec(strategies=strategies, backbones=[backbone], datasets=["synthetic"], settings=list(settings),
                   results_dir=results, device="cpu", progress="off")
    result = run_grid(spec, plugins=plugins)
    assert result.exit_code == 0, [r.error for r in result.failed]
    return {r.trial.strategy: r for r in result.records}
