"""Segmentation networks: DeepLab-V2 / V3+ heads on a timm backbone, the head registry, and
the safetensors + json round trip."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.io import WsssError
from wsss.models.seg_heads import SEG_HEADS, DeepLabV2Head, SegHead, register_seg_head
from wsss.models.seg_net import SegNet, backbone_level_strides, load_seg_model, save_seg_model


@pytest.mark.parametrize("head", ["deeplab-v2", "deeplab-v3plus"])
def test_logits_at_input_size_from_stride_16_and_gradients_reach_the_backbone(head):
    torch.manual_seed(0)
    model = SegNet("resnet18", 4, head)
    x = torch.randn(2, 3, 64, 80)
    features = model.backbone(x)
    assert features[-1].shape[-2:] == (4, 5)  # output stride 16: the last stage is dilated
    if head == "deeplab-v3plus":
        assert model.level_strides == [4, 16] and features[0].shape[-2:] == (16, 20)
    else:
        assert model.level_strides == [16]
    logits = model(x)
    assert logits.shape == (2, 4, 64, 80)
    F.cross_entropy(logits, torch.randint(0, 4, (2, 64, 80))).backward()
    stem = model.backbone.conv1.weight.grad
    assert stem is not None and stem.abs().sum() > 0
    assert all(p.grad is not None for p in model.head.parameters())
    backbone, head_params = model.param_groups()
    assert {id(p) for p in backbone} | {id(p) for p in head_params} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in backbone} & {id(p) for p in head_params}


def test_deeplab_v2_sums_its_atrous_branches():
    torch.manual_seed(0)
    head = DeepLabV2Head([8], 3, rates=(1, 12)).double()  # float64: exact to ~1e-15, on any CPU
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    near, far = head.branches
    # rate 1 is an ordinary 3×3 conv; on an 8×8 map every off-centre tap of rate 12 falls
    # into the zero padding, so that branch is its centre tap: a 1×1 conv
    expected = F.conv2d(x, near.weight, near.bias, padding=1) + F.conv2d(
        x, far.weight[:, :, 1:2, 1:2], far.bias
    )
    torch.testing.assert_close(head([x]), expected, rtol=1e-10, atol=1e-10)  # outputs of size ~1


def test_v3plus_picks_the_deepest_level_at_its_low_stride():
    assert backbone_level_strides("resnet18") == [2, 4, 8, 16, 16]
    model = SegNet("resnet18", 3, "deeplab-v3plus", head_options={"low_stride": 8, "channels": 16})
    assert model.levels == (2, 4) and model.level_strides == [8, 16]
    assert model.head_options == {"rates": [6, 12, 18], "channels": 16, "low_channels": 48, "low_stride": 8,
                                  "dropout": 0.1}  # fmt: skip
    with pytest.raises(WsssError, match="no stride-32 level"):
        SegNet("resnet18", 3, "deeplab-v3plus", head_options={"low_stride": 32})


def test_head_registry_rejects_unknowns_and_takes_a_multilevel_head(monkeypatch):
    with pytest.raises(WsssError, match="unknown segmentation head 'segformer'"):
        SegNet("resnet18", 3, "segformer")
    with pytest.raises(WsssError, match="head 'deeplab-v2': unknown option"):
        SegNet("resnet18", 3, "deeplab-v2", head_options={"rate": [6]})
    with pytest.raises(WsssError, match="unknown timm backbone"):
        SegNet("no_such_net", 3)
    monkeypatch.setattr("wsss.models.seg_heads.SEG_HEADS", dict(SEG_HEADS))

    @register_seg_head("all-levels")
    class AllLevels(SegHead):  # a SegFormer-like fusion of every level: one class, nothing else to edit
        option_defaults = {"width": 8}

        @classmethod
        def feature_levels(cls, reductions, options):
            return tuple(range(len(reductions)))

        def __init__(self, in_channels, num_classes, width=8):
            super().__init__(in_channels, num_classes)
            self.proj = nn.ModuleList(nn.Conv2d(c, width, 1) for c in self.in_channels)
            self.cls = nn.Conv2d(width, num_classes, 1)

        def forward(self, features):
            size = features[0].shape[-2:]
            fused = sum(
                F.interpolate(p(f), size, mode="bilinear") for p, f in zip(self.proj, features, strict=True)
            )
            return self.cls(fused)

    model = SegNet("resnet18", 3, "all-levels", head_options={"width": 4})
    assert model.level_strides == [2, 4, 8, 16, 16]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("head", ["deeplab-v2", "deeplab-v3plus"])
def test_saved_model_reloads_exactly(tmp_path, head):
    torch.manual_seed(1)
    model = SegNet("resnet18", 3, head, head_options={"rates": [2, 4]}).eval()
    path = save_seg_model(model, tmp_path / "model.safetensors", {"class_names": ["bg", "a", "b"]})
    loaded = load_seg_model(tmp_path, device="cpu")
    assert loaded.meta_info["class_names"] == ["bg", "a", "b"] and loaded.head_options["rates"] == [2, 4]
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["format"] = "wsss-camnet-1"
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(WsssError, match=r"model\.json: not a segmentation model"):
        load_seg_model(path)
    path.write_bytes(b"not safetensors")
    meta["format"] = "wsss-segnet-1"
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(WsssError, match=r"^.*model\.safetensors: cannot load segmentation weights"):
        load_seg_model(path)
    with pytest.raises(WsssError, match=r"missing\.safetensors: segmentation model not found"):
        load_seg_model(tmp_path / "missing.safetensors")
