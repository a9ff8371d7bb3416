import pytest


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
                 "data.train_size=128"]


@pytest.fixture
def fast_settings():
    return [arg for setting in FAST_SETTINGS for arg in ("--set", setting)]
