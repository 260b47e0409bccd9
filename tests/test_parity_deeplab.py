"""Parity of stage 4's DeepLab-V2 with seed 004's code (Cheolhyun-Mun/wsss_small_object_matters
@629dd2c288c3200315dfc84c7ebbf5baab1c8381).

Expected values were produced by running the authors' code, not this package: the ``MSC``
wrapper of ``libs/models/msc.py`` (scales [0.5, 0.75], train and eval mode) around the
fixed float64 stand-in ``base`` below; ``DeepLabV2`` of ``libs/models/deeplabv2.py`` (blocks
[1, 1, 1, 1]) for the output sizes; and the SGD parameter groups that ``main_ewc.py`` builds
from ``get_params`` ("1x", "10x", "20x") after ``freeze_bn``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.data import build_dataset
from wsss.models.seg_net import SegNet, multi_scale_logits, save_seg_model
from wsss.seg.predict import SEG004_CRF_PARAMS, default_tta, predict_seg, tta_probs
from wsss.seg.train import SegTrainConfig, SegTrainer

RTOL = 1e-12  # float64, the same operations in the same order


def _formula(shape: tuple[int, ...], a: float, b: float) -> torch.Tensor:
    n = math.prod(shape)
    return torch.sin(torch.arange(n, dtype=torch.float64) * a + b).reshape(shape)


def _base() -> nn.Module:
    """A stride-4 stand-in for the network under the multi-scale wrapper."""
    net = nn.Sequential(nn.Conv2d(3, 5, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 1)).double()
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(_formula(tuple(p.shape), 0.37 + 0.11 * i, 0.5 * i) * 0.5)
    return net


def _input() -> torch.Tensor:
    shape = (2, 3, 41, 53)  # odd, non-square: floor(H·s) and per-axis fusion sizes matter
    return _formula(shape, 0.013, 0.2) + 0.3 * _formula(shape, 0.71, 1.0)


# MSC in train mode returns [1.0 pass, 0.5 pass, 0.75 pass, max-fused]: shape, Σ, Σ², [1, 2, -1, -1]
_MSC_OUTPUTS = [
    ((2, 4, 11, 14), 138.9368670762854, 13578.468414065483, 0.9899494763623555),
    ((2, 4, 5, 7), 19.099824571489073, 3284.9403506660965, 2.9028240182938),
    ((2, 4, 8, 10), 58.238985662425705, 7204.1903858749365, 3.292000818470742),
    ((2, 4, 11, 14), 776.8862868182724, 14215.823481593237, 3.292000818470742),
]
# Σ of each base parameter's gradient of Σ_outputs mean(output²)
_MSC_GRAD_SUMS = [17.007075952281113, 21.675409180941532, 22.122956562473917, 1.8051500477423374]


def _check_msc_outputs(outputs: list[torch.Tensor]) -> None:
    assert len(outputs) == len(_MSC_OUTPUTS)
    for output, (shape, total, squares, corner) in zip(outputs, _MSC_OUTPUTS, strict=True):
        assert tuple(output.shape) == shape
        assert output.sum().item() == pytest.approx(total, rel=RTOL)
        assert output.square().sum().item() == pytest.approx(squares, rel=RTOL)
        assert output[1, 2, -1, -1].item() == pytest.approx(corner, rel=RTOL)


def test_multi_scale_fusion_matches_the_authors_wrapper():
    base = _base()
    outputs, fused = multi_scale_logits(base, _input(), (1.0, 0.5, 0.75))
    _check_msc_outputs([*outputs, fused])
    sum(o.square().mean() for o in [*outputs, fused]).backward()
    for param, expected in zip(base.parameters(), _MSC_GRAD_SUMS, strict=True):
        assert param.grad.sum().item() == pytest.approx(expected, rel=RTOL)


def test_segnet_returns_every_scale_in_training_and_the_fused_logits_in_eval():
    model = SegNet("resnet18", 4, msc_scales=[1.0, 0.5, 0.75])
    base = _base()
    model.strided_logits = lambda x: base(x)  # the authors' wrapper was run around this stand-in
    model.train()
    _check_msc_outputs(model(_input()))
    model.eval()
    with torch.no_grad():
        fused = model(_input())
    shape, total, squares, _ = _MSC_OUTPUTS[-1]
    assert tuple(fused.shape) == shape and fused.sum().item() == pytest.approx(total, rel=RTOL)
    assert fused.square().sum().item() == pytest.approx(squares, rel=RTOL)
    # [1.0] (or None) is the former single pass, upsampled to the input
    assert SegNet("resnet18", 4, msc_scales=[1.0]).msc_scales == ()


def test_output_stride_8_gives_the_authors_grid():
    # the authors' DeepLabV2 (stride 8) on a 321-px crop: 41×41 at 1.0, 21×21 at 0.5, 31×31 at 0.75
    model = SegNet("resnet18", 3, output_stride=8, msc_scales=[1.0, 0.5, 0.75]).train()
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, 321, 321))
    assert [tuple(o.shape[-2:]) for o in outputs] == [(41, 41), (20, 20), (30, 30), (41, 41)]
    # known difference: timm's ResNet pools with floor (Caffe's with ceil), so the 0.5 and 0.75
    # passes are one cell smaller there; the fused map is at the 1.0 pass's size either way


def test_parameter_groups_match_the_authors(voc_like, tmp_path):
    # the authors' groups: 17 backbone conv weights at lr, wd 5e-4; the 4 ASPP weights at 10·lr,
    # wd 5e-4; the 4 ASPP biases at 20·lr, wd 0; BatchNorm in no group and in eval mode
    authors = {"backbone": (1.0, 5e-4), "head weight": (10.0, 5e-4), "head bias": (20.0, 0.0)}
    ds = build_dataset("synthetic", voc_like, "train")
    config = SegTrainConfig(backbone="resnet18", batch_size=4, crop_size=48, num_workers=0)
    trainer = SegTrainer(ds, tmp_path / "run", config, progress=False)
    lr = config.lr
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    seen: dict[str, set[tuple[float, float]]] = {}
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            if not param.requires_grad:
                continue
            name = names[id(param)]
            kind = "backbone" if name.startswith("backbone.") else f"head {name.rsplit('.', 1)[-1]}"
            seen.setdefault(kind, set()).add((round(group["lr"] / lr, 9), group["weight_decay"]))
    assert seen == {kind: {value} for kind, value in authors.items()}
    batchnorms = [m for m in trainer.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and not any(p.requires_grad for m in batchnorms for p in m.parameters())
    trainer.set_train_mode()
    assert trainer.model.training and not any(m.training for m in batchnorms)
    trained = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"] if p.requires_grad)
    assert trained == sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    # the LR each iteration used under the authors' PolynomialLR (step_size 10, iter_max 50, power
    # 0.9, scheduler.step(epoch=iteration) after each update), 0-based iterations
    trainer.total_steps = 50
    used = {
        0: 2.5e-4,
        9: 2.5e-4,
        10: 0.00020451303651271462,
        25: 0.00015786146687233883,
        49: 5.873094715440094e-05,
    }
    for step, expected in used.items():
        assert lr * trainer.lr_factor(step) == pytest.approx(expected, rel=1e-12)


def test_prediction_follows_the_authors_test_procedure(voc_like, tmp_path):
    # main_ewc.py test: the fused logits of the whole image, upsampled bilinearly
    # (align_corners False) to the image, softmax, argmax; no flip, no further scales
    torch.manual_seed(0)
    model = SegNet("resnet18", 4, output_stride=8, msc_scales=[1.0, 0.5, 0.75]).eval()
    images = torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        expected = torch.softmax(
            F.interpolate(model(images), size=(50, 70), mode="bilinear", align_corners=False), 1
        )
        torch.testing.assert_close(tta_probs(model, images, (1.0,), False), expected, rtol=0, atol=0)
    assert default_tta(True) == ((1.0,), False)
    assert default_tta(False) == ((0.5, 0.75, 1.0, 1.25, 1.5), True)
    path = save_seg_model(model, tmp_path / "model" / "model.safetensors")
    val = build_dataset("synthetic", voc_like, "val")
    out = predict_seg(val, path, tmp_path / "pred", device="cpu", progress=False)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["scales"] == [1.0] and run["config"]["flip"] is False


def test_crf_preset_has_the_authors_settings():
    # configs/voc12_deeplabv2.yaml CRF: ITER_MAX 10, POS_W 3, POS_XY_STD 1, BI_W 4, BI_XY_STD 67, BI_RGB_STD 3
    p = SEG004_CRF_PARAMS
    assert (p.iterations, p.gauss_compat, p.gauss_sxy, p.bi_compat, p.bi_sxy, p.bi_srgb) == (
        10,
        3,
        1,
        4,
        67,
        3,
    )
