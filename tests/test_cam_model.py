"""CAM network: shapes, the GAP/CAM relations, local weights loading, the saved model format."""

from __future__ import annotations

import copy
import json
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from wsss.io import WsssError, read_json
from wsss.models import CamNet, load_cam_model, save_cam_model


@pytest.fixture(scope="module")
def net() -> CamNet:
    torch.manual_seed(0)
    return CamNet("resnet18", 3).eval()


@pytest.mark.parametrize(("name", "channels"), [("resnet18", 512), ("resnet50", 2048)])
def test_output_stride_16_and_shapes(name, channels):
    model = CamNet(name, 5).eval()
    with torch.no_grad():
        logits, maps = model(torch.randn(2, 3, 64, 96))
    assert model.feature_channels == channels
    assert logits.shape == (2, 5)
    assert maps.shape == (2, 5, 4, 6)  # 64/16 × 96/16
    assert model.classifier.bias is None


def test_logits_are_gap_of_maps_and_equal_the_linear_classifier_on_pooled_features(net):
    # in float64: the sums over 512 channels then agree to ~1e-15 whatever the CPU's kernels
    # (in float32 to ~1e-6 of the features' size, which default tolerances do not scale with)
    net = copy.deepcopy(net).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        logits, maps = net(x)
        features = net.features(x)
        # independent formulation: GAP first, then the 1×1 conv as a linear layer
        pooled = features.mean(dim=(2, 3))
        linear = pooled @ net.classifier.weight[:, :, 0, 0].T
    assert logits.dtype == torch.float64 and logits.abs().max() > 0.1
    torch.testing.assert_close(logits, maps.mean(dim=(2, 3)))  # float64 default: rtol 1e-7, atol 1e-7
    torch.testing.assert_close(logits, linear, rtol=1e-9, atol=1e-9 * float(logits.abs().max()))
    torch.testing.assert_close(maps, F.conv2d(features, net.classifier.weight))


def test_gradients_reach_backbone_and_head():
    model = CamNet("resnet18", 3).train()
    logits, _ = model(torch.randn(2, 3, 64, 64))
    F.multilabel_soft_margin_loss(logits, torch.tensor([[1.0, 0, 1], [0, 1, 0]])).backward()
    first_conv = model.backbone.conv1.weight.grad
    assert first_conv is not None and first_conv.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0
    backbone, head = model.param_groups()
    assert len(head) == 1 and head[0] is model.classifier.weight
    assert len(backbone) + len(head) == len(list(model.parameters()))


def test_unknown_backbone_is_a_wsss_error():
    with pytest.raises(WsssError, match="^no_such_net"):
        CamNet("no_such_net", 3)


def _backbone_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return CamNet("resnet18", 3).backbone.state_dict()


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "nested_ddp", "timm_classifier"])
def test_local_weights_are_loaded(tmp_path, fmt):
    if fmt == "timm_classifier":  # a plain timm classifier checkpoint, fc.* included
        torch.manual_seed(7)
        state = timm.create_model("resnet18").state_dict()
        expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    else:
        state = expected = _backbone_state(7)
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "nested_ddp":
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    model = CamNet("resnet18", 3, weights=path)
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(expected)
    for k, v in expected.items():
        assert torch.equal(loaded[k], v), k
    assert not torch.equal(model.backbone.state_dict()["conv1.weight"], _backbone_state(8)["conv1.weight"])


def test_bad_local_weights_name_the_file(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(WsssError, match=f"^{re.escape(str(missing))}: weights file not found"):
        CamNet("resnet18", 3, weights=missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WsssError, match=f"^{re.escape(str(garbage))}: cannot read weights"):
        CamNet("resnet18", 3, weights=garbage)
    wrong_arch = tmp_path / "r18.pth"
    torch.save(_backbone_state(0), wrong_arch)
    with pytest.raises(WsssError, match=f"^{re.escape(str(wrong_arch))}: "):
        CamNet("resnet50", 3, weights=wrong_arch)
    unrelated = tmp_path / "unrelated.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(unrelated))
    with pytest.raises(WsssError, match=f"^{re.escape(str(unrelated))}: no tensor matches"):
        CamNet("resnet18", 3, weights=unrelated)


def test_saved_model_round_trip_and_errors(tmp_path, net):
    path = save_cam_model(net, tmp_path / "model.safetensors", {"class_names": ["bg", "a", "b", "c"]})
    meta = read_json(tmp_path / "model.json")
    assert meta["backbone"] == "resnet18" and meta["num_classes"] == 3 and meta["class_names"][1] == "a"
    loaded = load_cam_model(tmp_path, device="cpu")  # a folder works too
    assert not loaded.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[1], net(x)[1], rtol=0, atol=0)
    with pytest.raises(WsssError, match=re.escape(f"{tmp_path / 'nope.safetensors'}: CAM model not found")):
        load_cam_model(tmp_path / "nope.safetensors")
    meta["num_classes"] = 4
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(WsssError, match=f"^{re.escape(str(path))}: weights do not fit"):
        load_cam_model(path)
