from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.seg.losses import (
    FisherDiagonal,
    connected_components,
    ewc_penalty,
    parameter_anchor,
    pixel_loss_kind,
    segmentation_loss,
    size_balanced_switch_iter,
    size_weights,
)

BACKENDS = ("torch", "scipy")


def _hand_map() -> tuple[torch.Tensor, dict[str, tuple[slice, slice]]]:
    """12×12 map: class-1 blobs of 4, 12 and 1 px, an 8-px class-2 blob touching the 12-px one, ignore."""
    label = torch.zeros(12, 12, dtype=torch.long)
    parts = {
        "a": (slice(0, 2), slice(0, 2)),  # class 1, 4 px
        "b": (slice(4, 7), slice(4, 8)),  # class 1, 12 px
        "c": (slice(7, 9), slice(4, 8)),  # class 2, 8 px, right under b
        "d": (slice(11, 12), slice(0, 1)),  # class 1, 1 px
        "ignore": (slice(10, 12), slice(6, 12)),
    }
    for name, cls in (("a", 1), ("b", 1), ("c", 2), ("d", 1), ("ignore", 255)):
        label[parts[name]] = cls
    return label[None], parts


# --------------------------------------------------------------------------- components and weights
@pytest.mark.parametrize("backend", BACKENDS)
def test_size_weights_of_hand_made_components(backend):
    label, parts = _hand_map()
    weights = size_weights(label, tau=5.0, backend=backend)[0]
    fg = 4 + 12 + 8 + 1
    expected = torch.ones(12, 12)
    expected[parts["a"]] = 5.0  # 25/4 = 6.25, capped at τ
    expected[parts["b"]] = fg / 12
    expected[parts["c"]] = fg / 8  # a different class: not merged with b although adjacent
    expected[parts["d"]] = 5.0  # 25/1, capped
    expected[parts["ignore"]] = 0.0
    torch.testing.assert_close(weights, expected)
    assert weights.dtype == torch.float32
    # with a large cap every foreground weight is |FG|/|K| exactly
    uncapped = size_weights(label, tau=100.0, backend=backend)[0]
    assert uncapped[0, 0] == pytest.approx(25 / 4) and uncapped[11, 0] == pytest.approx(25.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_component_ids_are_smallest_flat_index(backend):
    label, _ = _hand_map()
    comp = connected_components(label, backend=backend)[0]
    assert comp[1, 1] == 0  # blob a starts at (0, 0)
    assert comp[6, 7] == 4 * 12 + 4
    assert comp[8, 4] == 7 * 12 + 4
    assert comp[11, 0] == 11 * 12
    assert comp[0, 5] == -1 and comp[11, 11] == -1  # background, ignore


@pytest.mark.parametrize("backend", BACKENDS)
def test_diagonal_neighbours_join_only_with_8_connectivity(backend):
    label = torch.zeros(1, 5, 6, dtype=torch.long)
    for i in range(3):
        label[0, i, i] = 3  # a diagonal line of 3 px
    label[0, 0, 5] = 3
    label[0, 2, 5] = 3  # joined to (0, 5) only through an ignore pixel
    label[0, 1, 5] = 255
    # the connectivity choice exists only for the former connected-component rule
    eight = size_weights(label, tau=10.0, component_rule="connected", connectivity=8, backend=backend)[0]
    four = size_weights(label, tau=10.0, component_rule="connected", connectivity=4, backend=backend)[0]
    contours = size_weights(label, tau=10.0, backend=backend)[0]  # contour tracing is 8-connected
    torch.testing.assert_close(contours, eight)
    fg = 5
    assert [eight[i, i].item() for i in range(3)] == pytest.approx([fg / 3] * 3)
    assert [four[i, i].item() for i in range(3)] == pytest.approx([fg / 1] * 3)
    assert eight[0, 5] == pytest.approx(fg) and eight[2, 5] == pytest.approx(fg)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_images_are_independent(backend):
    first, _ = _hand_map()
    second = torch.zeros_like(first)
    second[0, 0, :] = 1  # touches the last row of the first image if the batch leaked
    second[0, 0, 0] = 2
    batch = torch.cat([first, second])
    weights = size_weights(batch, tau=50.0, backend=backend)
    torch.testing.assert_close(weights[0], size_weights(first, tau=50.0, backend=backend)[0])
    assert weights[1, 0, 0] == pytest.approx(12.0) and weights[1, 0, 5] == pytest.approx(12 / 11)
    comp = connected_components(batch, backend=backend)
    assert comp[1, 0, 1] == 144 + 1


def _random_maps(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 4, (3, 23, 31), generator=g)
    noise[torch.rand(3, 23, 31, generator=g) < 0.1] = 255
    low = torch.randint(0, 3, (2, 1, 6, 7), generator=g).float()
    blobs = F.interpolate(low, size=(40, 45), mode="nearest")[:, 0].long()
    blobs[torch.rand(2, 40, 45, generator=g) < 0.05] = 255
    return [noise, blobs]


@pytest.mark.parametrize("connectivity", [4, 8])
def test_torch_and_scipy_components_agree_on_random_maps(connectivity):
    for seed in range(3):
        for label in _random_maps(seed):
            by_torch = connected_components(label, connectivity=connectivity, backend="torch")
            by_scipy = connected_components(label, connectivity=connectivity, backend="scipy")
            torch.testing.assert_close(by_torch, by_scipy, rtol=0, atol=0)


def test_torch_components_converge_on_a_long_snake():
    n = 41
    label = torch.zeros(1, n, n, dtype=torch.long)
    label[0, ::2, :] = 1
    for r in range(1, n, 2):
        label[0, r, n - 1 if (r // 2) % 2 == 0 else 0] = 1
    comp = connected_components(label, connectivity=4, backend="torch")
    assert comp.max() == 0 and (comp == 0).sum() == (label == 1).sum()


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="B×H×W"):
        size_weights(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        size_weights(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="connectivity"):
        connected_components(torch.zeros(1, 4, 4, dtype=torch.long), connectivity=6)


# --------------------------------------------------------------------------- losses
def _pixel_ce(logits: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """-log softmax at the target class, in float64 NumPy (ignore pixels get 0)."""
    z = logits.detach().double().numpy()
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    t = target.numpy()
    safe = np.where(t == 255, 0, t)
    picked = np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    return np.where(t == 255, 0.0, -picked)


def test_ce_is_the_mean_over_labelled_pixels():
    torch.manual_seed(0)
    label, _ = _hand_map()
    logits = torch.randn(1, 3, 12, 12)
    loss = segmentation_loss(logits, label, "ce")
    ce = _pixel_ce(logits, label)
    assert loss.item() == pytest.approx(ce.sum() / (label != 255).sum().item(), rel=1e-5)


def test_size_weighted_loss_matches_hand_weights():
    torch.manual_seed(1)
    label, parts = _hand_map()
    logits = torch.randn(1, 3, 12, 12)
    w = np.ones((12, 12))
    w[parts["a"]] = 5.0
    w[parts["b"]] = 25 / 12
    w[parts["c"]] = 25 / 8
    w[parts["d"]] = 5.0
    w[parts["ignore"]] = 0.0
    expected = (w * _pixel_ce(logits, label)[0]).sum() / w.sum()
    loss = segmentation_loss(logits, label, "size-weighted", tau=5.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert not math.isclose(loss.item(), segmentation_loss(logits, label, "ce").item(), rel_tol=1e-3)
    precomputed = torch.from_numpy(w).float()[None]
    assert segmentation_loss(logits, label, "size-weighted", weights=precomputed).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_size_weighted_equals_ce_when_every_weight_is_one():
    torch.manual_seed(2)
    label = torch.zeros(2, 10, 10, dtype=torch.long)
    label[0, 2:8, 2:8] = 1  # the only foreground component: |FG|/|K| = 1
    label[1, :, 5:] = 2
    label[1, 0, 0] = 255
    logits = torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(
        segmentation_loss(logits, label, "size-weighted"), segmentation_loss(logits, label, "ce")
    )


def test_logits_are_upsampled_to_the_label_with_resize_logits():
    # the former default; the authors' default (resize="labels") downsamples the label
    # instead, see tests/test_parity_seg_losses.py
    torch.manual_seed(3)
    label, _ = _hand_map()
    small = torch.randn(1, 3, 4, 4)
    up = F.interpolate(small, size=(12, 12), mode="bilinear", align_corners=False)
    for kind in ("ce", "size-weighted"):
        torch.testing.assert_close(
            segmentation_loss(small, label, kind, resize="logits"), segmentation_loss(up, label, kind)
        )


def test_gradients_flow_and_skip_ignore_pixels():
    torch.manual_seed(4)
    label, parts = _hand_map()
    logits = torch.randn(1, 3, 12, 12, requires_grad=True)
    segmentation_loss(logits, label, "size-weighted").backward()
    grad = logits.grad[0]
    assert torch.isfinite(grad).all()
    assert grad[(slice(None), *parts["b"])].abs().sum() > 0
    assert grad[(slice(None), *parts["ignore"])].abs().sum() == 0
    # a capped tiny blob pulls harder per pixel than a background pixel with the same logits
    probe = torch.zeros(1, 3, 12, 12, requires_grad=True)
    segmentation_loss(probe, label, "size-weighted").backward()
    g = probe.grad[0]
    # d(CE)/dz at the target class = p − 1 = −2/3 at both pixels, scaled by weights 5 and 1
    assert g[1, 0, 0] / g[0, 0, 5] == pytest.approx(5.0)
    assert g[1, 0, 0] < 0


def test_all_ignore_batch_gives_zero_loss_with_a_graph():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 3, 3), 255), "size-weighted")
    loss.backward()
    assert loss.item() == 0.0 and (logits.grad == 0).all()


def test_bad_loss_inputs_are_rejected():
    logits = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="outside 0..2"):
        segmentation_loss(logits, torch.full((1, 4, 4), 3), "ce")
    with pytest.raises(ValueError, match="kind"):
        segmentation_loss(logits, torch.zeros(1, 4, 4, dtype=torch.long), "size-balanced")


def test_size_balanced_schedule():
    assert size_balanced_switch_iter(20000) == 10000
    kinds = [pixel_loss_kind("size-balanced", i, 10) for i in range(10)]
    assert kinds == ["ce"] * 5 + ["size-weighted"] * 5
    assert pixel_loss_kind("size-weighted", 0, 10) == "size-weighted"
    assert pixel_loss_kind("ce", 9, 10) == "ce"
    with pytest.raises(ValueError):
        pixel_loss_kind("focal", 0, 10)


# --------------------------------------------------------------------------- EWC
def _softmax_linear_grads(weight, bias, x, y):
    """Hand gradient of mean CE for logits = x Wᵀ + b: (softmax − onehot)/N."""
    z = x @ weight.T + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    delta = (p - np.eye(weight.shape[0])[y]) / len(y)
    return delta.T @ x, delta.sum(axis=0)


def test_fisher_is_the_running_squared_ce_gradient():
    torch.manual_seed(5)
    model = nn.Linear(4, 3).double()
    frozen = nn.Parameter(torch.ones(2, dtype=torch.float64), requires_grad=False)
    model.register_parameter("frozen", frozen)
    fisher = FisherDiagonal()
    rng = np.random.default_rng(0)
    expected_w = np.ones((3, 4))  # F starts at ones, as in the authors' code (was zeros)
    expected_b = np.ones(3)
    for _ in range(3):
        x = rng.normal(size=(5, 4))
        y = rng.integers(0, 3, size=5)
        gw, gb = _softmax_linear_grads(model.weight.detach().numpy(), model.bias.detach().numpy(), x, y)
        model.zero_grad()
        F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        fisher.update(model)
        expected_w = 0.9 * gw**2 + 0.1 * expected_w
        expected_b = 0.9 * gb**2 + 0.1 * expected_b
        with torch.no_grad():  # move the weights so that each step's gradient differs
            model.weight.add_(0.1)
    assert set(fisher.fisher) == {"weight", "bias"}
    np.testing.assert_allclose(fisher.fisher["weight"].numpy(), expected_w, rtol=1e-5)
    np.testing.assert_allclose(fisher.fisher["bias"].numpy(), expected_b, rtol=1e-5)
    assert fisher.updates == 3

    # per parameter tensor (the authors'; was one global min-max), with their 1e-8 guard
    normalized = fisher.normalized()
    for name, expected in (("weight", expected_w), ("bias", expected_b)):
        want = (expected - expected.min()) / (expected.max() - expected.min() + 1e-8)
        np.testing.assert_allclose(normalized[name].numpy(), want, rtol=1e-5)
        assert normalized[name].min() == 0 and normalized[name].max() == pytest.approx(1.0)
    by_global = fisher.normalized(scope="global")  # the former variant, kept as an option
    low = min(expected_w.min(), expected_b.min())
    high = max(expected_w.max(), expected_b.max())
    np.testing.assert_allclose(by_global["weight"].numpy(), (expected_w - low) / (high - low), rtol=1e-5)

    restored = FisherDiagonal()
    restored.load_state_dict(fisher.state_dict())
    assert restored.updates == 3 and restored.new_weight == 0.9
    torch.testing.assert_close(restored.fisher["weight"], fisher.fisher["weight"])
    state = fisher.state_dict()
    fisher.update(model)  # in-place updates must not change a saved state
    torch.testing.assert_close(state["fisher"]["weight"], restored.fisher["weight"])


def test_normalized_needs_updates_and_handles_a_flat_fisher():
    with pytest.raises(ValueError, match="empty"):
        FisherDiagonal().normalized()
    flat = FisherDiagonal()
    flat.load_state_dict({"new_weight": 0.9, "updates": 1, "fisher": {"w": torch.full((2,), 0.3)}})
    torch.testing.assert_close(flat.normalized()["w"], torch.zeros(2))  # per tensor: 0/(0 + 1e-8)
    torch.testing.assert_close(flat.normalized(scope="global")["w"], torch.ones(2))
    with pytest.raises(ValueError, match="scope"):
        flat.normalized(scope="layer")


def test_ewc_penalty_is_zero_at_the_anchor_and_quadratic_away_from_it():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    anchor = parameter_anchor(model)
    importance = {name: torch.rand_like(p) for name, p in anchor.items()}
    assert ewc_penalty(model, importance, anchor).item() == 0.0
    direction = {name: torch.randn_like(p) for name, p in anchor.items()}

    def penalty_at(scale: float) -> torch.Tensor:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(anchor[name] + scale * direction[name])
        return ewc_penalty(model, importance, anchor, lam=500.0)

    one, two = penalty_at(1.0), penalty_at(2.0)
    hand = 500.0 * sum((importance[n] * direction[n] ** 2).sum() for n in anchor)
    assert one.item() == pytest.approx(hand.item(), rel=1e-5)
    assert two.item() == pytest.approx(4 * one.item(), rel=1e-5)
    penalty_at(0.5).backward()  # dP/dθ = 2λF̂(θ − θ_A)
    for name, p in model.named_parameters():
        # θ − θ_A as stored (θ_A + 0.5·d rounded to float32), not 0.5·d: the rounding is ~1e-8,
        # which the 1000× above would make as large as default tolerances where d is small
        torch.testing.assert_close(p.grad, 2 * 500.0 * importance[name] * (p.detach() - anchor[name]))


def test_ewc_penalty_checks_parameter_names():
    model = nn.Linear(2, 2)
    anchor = parameter_anchor(model)
    with pytest.raises(ValueError, match="not a trainable parameter"):
        ewc_penalty(model, {"other": torch.ones(1)}, anchor)
    with pytest.raises(ValueError, match="anchor lacks"):
        ewc_penalty(model, {"weight": torch.ones(2, 2)}, {})
