"""Parity of seed 004's losses with the authors' code.

Expected values were produced by running the authors' functions (Cheolhyun-Mun/
wsss_small_object_matters@629dd2c288c3200315dfc84c7ebbf5baab1c8381: ``CELoss`` of
``libs/utils/loss.py`` with only the ``.cuda()`` call dropped, the label pyramid of
``main_ewc.py``'s ``resize_labels``, and the ``EWC`` regulariser of ``libs/utils/ewc.py``
called as in ``main_ewc.py``) on the fixed inputs below, in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from wsss.seg.losses import (
    FisherDiagonal,
    ewc_penalty,
    parameter_anchor,
    resize_labels_nearest,
    segmentation_loss,
    size_weights,
)

RTOL = 1e-6


def _labels() -> torch.Tensor:
    """2×12×12. Image 0: a class-1 ring (3×3 hole with background and one class-2 pixel),
    touching class-3 and class-1 blocks, a diagonal class-3 pair, a class-2 bar split by an
    ignore pixel, an ignore block. Image 1: a class-4 square with a 2×2 background hole,
    small class-4/5 objects, a class-5 pixel inside ignore."""
    a = np.zeros((12, 12), np.int64)
    a[1:6, 1:6] = 1
    a[2:5, 2:5] = 0
    a[3, 3] = 2
    a[7:10, 1:4] = 3
    a[7:10, 4:6] = 1
    a[0, 8] = a[1, 9] = 3
    a[4, 7:12] = 2
    a[4, 9] = 255
    a[10:12, 8:12] = 255
    b = np.zeros((12, 12), np.int64)
    b[0:8, 0:8] = 4
    b[3:5, 3:5] = 0
    b[9:11, 9:11] = 4
    b[6, 10] = 5
    b[11, 0] = 255
    b[0:3, 10:12] = 255
    b[1, 10] = 5
    return torch.from_numpy(np.stack([a, b]))


def _logits(size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 6, size, size, generator=g, dtype=torch.float64)


# the authors' weight maps (before ignore pixels are dropped): "." = 1, letters below
_WEIGHT_CODES = {
    5.0: {"A": 1.03125, "B": 1.52, "C": 38 / 21, "D": 38 / 9, "E": 5.0},
    100.0: {"A": 1.03125, "B": 1.52, "C": 38 / 21, "D": 38 / 9, "E": 5.5, "F": 38 / 6, "G": 16.5,
            "H": 19.0, "I": 38.0, "J": 66.0},
}  # fmt: skip
_WEIGHT_MAPS = {
    5.0: [
        ["........E...", ".BCCCB...E..", ".CCCCC......", ".CCECC......", ".CCCCC.EE.EE", ".BCCCB......",
         "............", ".DDDEE......", ".DDDEE......", ".DDDEE......", "............", "............"],
        ["AAAAAAAA....", "AAAAAAAA..E.", "AAAEEAAA....", "AAEEEEAA....", "AAEEEEAA....", "AAAEEAAA....",
         "AAAAAAAA..E.", "AAAAAAAA....", "............", ".........EE.", ".........EE.", "............"],
    ],
    100.0: [
        ["........H...", ".BCCCB...H..", ".CCCCC......", ".CCICC......", ".CCCCC.HH.HH", ".BCCCB......",
         "............", ".DDDFF......", ".DDDFF......", ".DDDFF......", "............", "............"],
        ["AAAAAAAA....", "AAAAAAAA..J.", "AAAEEAAA....", "AAEEEEAA....", "AAEEEEAA....", "AAAEEAAA....",
         "AAAAAAAA..J.", "AAAAAAAA....", "............", ".........GG.", ".........GG.", "............"],
    ],
}  # fmt: skip


def _expected_weights(tau: float) -> torch.Tensor:
    codes = _WEIGHT_CODES[tau]
    maps = [[[codes.get(ch, 1.0) for ch in row] for row in image] for image in _WEIGHT_MAPS[tau]]
    return torch.tensor(maps, dtype=torch.float64)


@pytest.mark.parametrize("backend", ["torch", "scipy"])
@pytest.mark.parametrize("tau", [5.0, 100.0])
def test_size_weights_match_the_authors_filled_contours(tau, backend):
    label = _labels()
    expected = torch.where(label == 255, 0.0, _expected_weights(tau))  # ignore pixels never count
    weights = size_weights(label, tau, backend=backend)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights.double(), expected, rtol=RTOL, atol=0)
    # the hole of the ring is painted (background included); the ring's corners keep the outer fill
    assert weights[0, 3, 2] == pytest.approx(38 / 21) and weights[0, 1, 1] == pytest.approx(1.52)


def test_connected_rule_is_kept_as_an_option_and_differs_on_holes():
    label = _labels()
    connected = size_weights(label, 5.0, component_rule="connected")
    assert connected[0, 2, 2] == 1.0  # the ring's hole is plain background
    assert connected[0, 1, 1] == pytest.approx(38 / 16)  # |K| = 16 ring pixels, unfilled
    for backend in ("torch", "scipy"):
        torch.testing.assert_close(
            size_weights(label, 5.0, component_rule="connected", backend=backend), connected, rtol=0, atol=0
        )
    with pytest.raises(ValueError, match="component_rule"):
        size_weights(label, 5.0, component_rule="instances")
    with pytest.raises(ValueError, match="8-connected"):
        size_weights(label, 5.0, connectivity=4)


def test_label_pyramid_is_pils_nearest_resize():
    label = _labels()
    for size in [(9, 9), (6, 6), (5, 7), (12, 12)]:
        expected = [
            np.asarray(Image.fromarray(image.float().numpy()).resize(size[::-1], resample=Image.NEAREST))
            for image in label
        ]
        got = resize_labels_nearest(label, size)
        np.testing.assert_array_equal(got.numpy(), np.stack(expected).astype(np.int64))
    # 12 → 9 is where PIL's accumulated position differs from floor((i + 0.5)·4/3)
    assert resize_labels_nearest(torch.arange(12).view(1, 1, 12), (1, 9))[0, 0].tolist() == [
        0, 2, 3, 4, 5, 7, 8, 10, 11,
    ]  # fmt: skip


# the authors' CELoss per output (100%, 75%, 50%, max) and the sum they backpropagate
_MULTI = {
    "ce": [2.189538553912354, 2.2489973550044318, 2.1826751389060584, 2.1914213488045293],
    "size-weighted": [2.1727937243918922, 2.181933130469426, 2.1507665597943295, 2.228436320428449],
}
_MULTI_TOTAL = {"ce": 8.812632396627372, "size-weighted": 8.733929735084097}


@pytest.mark.parametrize("kind", ["ce", "size-weighted"])
def test_loss_over_multi_scale_outputs_matches_the_authors(kind):
    label = _labels()
    outputs = [_logits(12, 1), _logits(9, 2), _logits(6, 3), _logits(12, 4)]
    for output, expected in zip(outputs, _MULTI[kind], strict=True):
        assert segmentation_loss(output, label, kind, 5.0).item() == pytest.approx(expected, rel=RTOL)
    total = segmentation_loss(outputs, label, kind, 5.0)
    assert total.item() == pytest.approx(_MULTI_TOTAL[kind], rel=RTOL)
    # the former alternative (upsample logits) is still available and differs
    upsampled = segmentation_loss(outputs, label, kind, 5.0, resize="logits")
    assert abs(upsampled.item() - _MULTI_TOTAL[kind]) > 1e-3


def test_multi_scale_loss_backpropagates_into_every_output():
    label = _labels()
    outputs = [_logits(12, 1).requires_grad_(), _logits(6, 3).requires_grad_()]
    segmentation_loss(outputs, label, "size-weighted").backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)
    with pytest.raises(ValueError, match="no logits"):
        segmentation_loss([], label)
    with pytest.raises(ValueError, match="target's size"):
        segmentation_loss(_logits(6, 3), label, "size-weighted", weights=torch.ones(2, 12, 12))


# --------------------------------------------------------------------------- EWC
def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).double()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (2, 5, 5), generator=g),
        )
        for _ in range(4)
    ]


def _move(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# the authors' EWC on this fixture: Fisher sums, F̂ sums, and Σ F̂·(θ − θ_A)² (λ = 1)
_FISHER_SUM = {"0.weight": 0.03629324791359388, "0.bias": 0.0006645365307534109,
               "2.weight": 0.0025945393038035586, "2.bias": 0.001638967300716004}  # fmt: skip
_FISHER_HAT_SUM = {"0.weight": 12.036058929935729, "0.bias": 1.5909894511728884,
                   "2.weight": 3.366702206125062, "2.bias": 1.503886770276208}  # fmt: skip
_PENALTY = 0.17648912675205397


def test_ewc_fisher_normalisation_and_penalty_match_the_authors():
    model, batches = _tiny_model(), _batches()
    fisher = FisherDiagonal()
    for step in range(2):  # 2 steps × 2 micro-batches, the Fisher updated after each micro-batch
        model.zero_grad()
        for x, y in batches[2 * step : 2 * step + 2]:
            (F.cross_entropy(model(x), y) / 2).backward()
            fisher.update(model)
    anchor = parameter_anchor(model)
    _move(model)
    normalized = fisher.normalized()
    for name in _FISHER_SUM:
        assert fisher.fisher[name].sum().item() == pytest.approx(_FISHER_SUM[name], rel=RTOL)
        assert normalized[name].sum().item() == pytest.approx(_FISHER_HAT_SUM[name], rel=RTOL)
    penalty = ewc_penalty(model, normalized, anchor, lam=1.0)
    assert penalty.item() == pytest.approx(_PENALTY, rel=RTOL)
    assert ewc_penalty(model, normalized, anchor).item() == pytest.approx(500 * _PENALTY, rel=RTOL)
    # the former global normalisation gives a different (smaller) penalty on the same inputs
    former = ewc_penalty(model, fisher.normalized(scope="global"), anchor, lam=1.0)
    assert former.item() < 0.7 * _PENALTY


def test_fisher_updated_once_per_step_is_the_former_rule_and_differs():
    # `fisher_update: step` (one update from each step's complete gradient) leaves more of
    # F₀ = 1 in F after 2 steps than the authors' 4 micro-batch updates do
    model, batches = _tiny_model(), _batches()
    fisher = FisherDiagonal()
    for step in range(2):
        model.zero_grad()
        for x, y in batches[2 * step : 2 * step + 2]:
            (F.cross_entropy(model(x), y) / 2).backward()
        fisher.update(model)
    assert fisher.updates == 2
    assert fisher.fisher["0.weight"].sum().item() > 10 * _FISHER_SUM["0.weight"]


def test_contour_painting_on_bounding_boxes_equals_whole_image_canvases():
    """The contour rule paints each filled contour on its bounding box; on random maps with
    nested regions, holes and regions touching the border it paints what a whole-image
    canvas per contour paints."""
    import cv2
    from scipy import ndimage

    rng = np.random.default_rng(7)
    blobs = ndimage.zoom(rng.integers(0, 4, (3, 9, 9)), (1, 5, 5), order=0)
    label = np.where(rng.random(blobs.shape) < 0.02, 255, blobs).astype(np.int64)
    tau = 7.0
    expected = np.ones(label.shape, np.float64)
    for image, out in zip(label, expected, strict=True):
        foreground = int(((image != 0) & (image != 255)).sum())
        for c in np.unique(image[(image != 0) & (image != 255)]):
            contours, _ = cv2.findContours(
                (image == c).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE
            )
            for contour in contours:
                canvas = np.zeros(image.shape, np.uint8)
                cv2.drawContours(canvas, [contour], 0, 1, thickness=-1)
                out[canvas > 0] = min(tau, foreground / int((canvas > 0).sum()))
    expected[label == 255] = 0.0
    got = size_weights(torch.from_numpy(label), tau).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    assert len(np.unique(expected)) > 5  # many regions of different sizes were painted
