"""Dense CRF (docs/methods.md §3): edge snapping on a two-region image, ignore pixels, the softmax
variant, parameter pass-through and input validation."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from wsss.io import WsssError
from wsss.pseudo.crf import CrfParams, crf_labels, crf_probs, label_unary

H, W = 64, 64


def _needs_crf() -> None:
    pytest.importorskip("pydensecrf.densecrf")


@pytest.fixture(scope="module")
def two_regions() -> tuple[np.ndarray, np.ndarray]:
    """Left half reddish, right half bluish, with pixel noise; truth: left = 1, right = 0
    (label 1 on the left so that "argmax ties go to 0" cannot pass a test by accident)."""
    rng = np.random.default_rng(0)
    image = np.empty((H, W, 3), np.float32)
    image[:, : W // 2] = (200, 60, 40)
    image[:, W // 2 :] = (40, 80, 200)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((H, W), np.uint8)
    truth[:, : W // 2] = 1
    return image, truth


def _flipped(truth: np.ndarray, fraction: float = 0.2, seed: int = 1) -> np.ndarray:
    flip = np.random.default_rng(seed).random(truth.shape) < fraction
    return np.where(flip, 1 - truth, truth).astype(np.uint8)


def _shifted(truth: np.ndarray, by: int = 6) -> np.ndarray:
    """The true split with the boundary moved ``by`` pixels into the right region."""
    shifted = np.zeros_like(truth)
    shifted[:, : W // 2 + by] = 1
    return shifted


def _accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred == truth).mean())


# --------------------------------------------------------------------------- unary (no library needed)
def test_label_unary_matches_pydensecrf_and_is_uniform_at_ignore():
    labels = np.array([[0, 2, 1], [255, 2, 0]], dtype=np.uint8)
    unary = label_unary(labels, 3, 0.7)
    p, n, u = -np.log(0.7), -np.log(0.15), -np.log(1 / 3)
    expected = np.array(
        [
            [p, n, n, u, n, p],
            [n, n, p, u, n, n],
            [n, p, n, u, p, n],
        ],
        dtype=np.float32,
    )
    assert unary.dtype == np.float32
    np.testing.assert_allclose(unary, expected, rtol=1e-6)


def test_label_unary_equals_library_helper_without_ignore():
    pytest.importorskip("pydensecrf.utils")
    from pydensecrf.utils import unary_from_labels

    labels = np.random.default_rng(3).integers(0, 5, (7, 9)).astype(np.uint8)
    np.testing.assert_allclose(
        label_unary(labels, 5, 0.7), unary_from_labels(labels, 5, 0.7, zero_unsure=False), rtol=1e-6
    )


# --------------------------------------------------------------------------- crf_labels
@pytest.mark.parametrize("corrupt", ["flipped", "shifted"])
def test_crf_recovers_regions(two_regions, corrupt):
    _needs_crf()
    image, truth = two_regions
    noisy = _flipped(truth) if corrupt == "flipped" else _shifted(truth)
    out = crf_labels(image, noisy, num_labels=2)
    assert out.dtype == np.uint8 and out.shape == (H, W)
    before, after = _accuracy(noisy, truth), _accuracy(out, truth)
    assert before < 0.92
    assert after >= 0.98 and after > before


def test_crf_ignore_pixels_take_their_region_label(two_regions):
    _needs_crf()
    image, truth = two_regions
    labels = truth.copy()
    labels[10:20, 5:15] = 255  # inside the left region (label 1)
    labels[40:50, 45:55] = 255  # inside the right region (label 0)
    out = crf_labels(image, labels)  # num_labels inferred from the non-ignore labels: 2
    assert 255 not in out
    assert (out[10:20, 5:15] == 1).all()
    assert (out[40:50, 45:55] == 0).all()
    assert _accuracy(out, truth) >= 0.99


def test_crf_without_pairwise_terms_returns_input_labels(two_regions):
    """Unary only: Q = softmax(−U), whose argmax is the given label (hand-computable)."""
    _needs_crf()
    image, truth = two_regions
    noisy = _flipped(truth)
    out = crf_labels(image, noisy, 2, CrfParams(gauss_compat=0, bi_compat=0))
    np.testing.assert_array_equal(out, noisy)


def test_bilateral_kernel_snaps_to_edges(two_regions):
    _needs_crf()
    image, truth = two_regions
    shifted = _shifted(truth)
    # without the bilateral term the Gaussian smoothness alone keeps the (straight) wrong boundary
    no_bilateral = crf_labels(image, shifted, 2, CrfParams(bi_compat=0))
    np.testing.assert_array_equal(no_bilateral, shifted)
    # a colour range far above the colour difference makes the bilateral kernel colour-blind:
    # its long-range smoothing then swamps the unary and no boundary survives
    colour_blind = crf_labels(image, shifted, 2, CrfParams(bi_srgb=1000))
    assert _accuracy(colour_blind, truth) < 0.9
    # a short spatial range cannot carry evidence from the region's far side across the wrong strip
    np.testing.assert_array_equal(crf_labels(image, shifted, 2, CrfParams(bi_sxy=1)), shifted)
    assert _accuracy(crf_labels(image, shifted, 2), truth) >= 0.98


def test_gaussian_range_is_passed_through(two_regions):
    _needs_crf()
    image, truth = two_regions
    shifted = _shifted(truth)
    # a Gaussian as wide as the image smooths across both regions and drowns the boundary
    wide = crf_labels(image, shifted, 2, CrfParams(gauss_sxy=50, bi_compat=0))
    assert _accuracy(wide, shifted) < 0.9


def test_more_iterations_converge_further(two_regions):
    _needs_crf()
    image, truth = two_regions
    shifted = _shifted(truth)
    one = _accuracy(crf_labels(image, shifted, 2, CrfParams(iterations=1)), truth)
    ten = _accuracy(crf_labels(image, shifted, 2, CrfParams(iterations=10)), truth)
    assert ten > one


def test_confident_unary_keeps_input_labels(two_regions):
    _needs_crf()
    image, truth = two_regions
    noisy = _flipped(truth)
    smooth_only = {"bi_compat": 0}  # Gaussian term alone, so gt_prob's weight is visible
    trusting = crf_labels(image, noisy, 2, CrfParams(gt_prob=0.99, **smooth_only))
    doubting = crf_labels(image, noisy, 2, CrfParams(gt_prob=0.7, **smooth_only))
    np.testing.assert_array_equal(trusting, noisy)
    assert _accuracy(doubting, truth) >= 0.98


def test_single_label_is_constant(two_regions):
    _needs_crf()
    image, _ = two_regions
    labels = np.zeros((H, W), np.uint8)
    labels[:5] = 255
    np.testing.assert_array_equal(crf_labels(image, labels, num_labels=1), 0)


def test_non_contiguous_image_is_accepted(two_regions):
    _needs_crf()
    image, truth = two_regions
    flipped_view = image[:, ::-1]  # negative strides: pydensecrf needs a C-contiguous copy
    out = crf_labels(flipped_view, truth[:, ::-1], 2)
    np.testing.assert_array_equal(out, crf_labels(np.ascontiguousarray(flipped_view), truth[:, ::-1], 2))
    assert _accuracy(out, truth[:, ::-1]) >= 0.99


def test_saliency_background_cue_uses_crf(two_regions):
    _needs_crf()
    from wsss.saliency.base import background_cue

    image, truth = two_regions
    sal = np.where(_shifted(truth) == 1, 0.9, 0.1).astype(np.float32)
    cue = background_cue(sal, image, threshold=0.5, use_crf=True)
    assert cue.dtype == np.float32
    assert _accuracy(cue.astype(np.uint8), truth) >= 0.98


# --------------------------------------------------------------------------- crf_probs
def _soft_noisy_probs(truth: np.ndarray, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p_left = np.where(truth == 1, 0.6, 0.4) + rng.normal(0, 0.15, truth.shape)
    p_left = np.clip(p_left, 0.01, 0.99)
    return np.stack([1 - p_left, p_left]).astype(np.float32)


def test_crf_probs_recovers_regions(two_regions):
    _needs_crf()
    image, truth = two_regions
    probs = _soft_noisy_probs(truth)
    q = crf_probs(image, probs)
    assert q.shape == (2, H, W) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-5)
    assert (q >= 0).all()
    before, after = _accuracy(probs.argmax(0), truth), _accuracy(q.argmax(0), truth)
    assert before < 0.85
    assert after >= 0.98


def test_crf_probs_with_label_probabilities_matches_crf_labels(two_regions):
    """Same energies via the softmax path: gt_prob on the label, the rest spread evenly."""
    _needs_crf()
    image, truth = two_regions
    labels = np.random.default_rng(4).integers(0, 3, (H, W)).astype(np.uint8)
    labels[truth == 1] = np.where(labels[truth == 1] == 0, 1, labels[truth == 1])
    probs = np.full((3, H, W), 0.15, np.float32)
    np.put_along_axis(probs, labels[None].astype(np.intp), 0.7, axis=0)
    q = crf_probs(image, probs)
    np.testing.assert_array_equal(q.argmax(0).astype(np.uint8), crf_labels(image, labels, 3))


# --------------------------------------------------------------------------- bad inputs
def test_bad_label_values(two_regions):
    image, truth = two_regions
    labels = truth.copy()
    labels[0, 0] = 2
    with pytest.raises(WsssError, match="label 2 is outside 0..1"):
        crf_labels(image, labels, num_labels=2)
    with pytest.raises(WsssError, match="label -1"):
        crf_labels(image, truth.astype(np.int16) - 1, num_labels=2)
    with pytest.raises(WsssError, match="integer"):
        crf_labels(image, truth.astype(np.float32), num_labels=2)
    with pytest.raises(WsssError, match="all ignore"):
        crf_labels(image, np.full((H, W), 255, np.uint8))
    with pytest.raises(WsssError, match="num_labels"):
        crf_labels(image, truth, num_labels=0)
    with pytest.raises(WsssError, match="collides"):
        crf_labels(image, truth, num_labels=2, ignore_index=1)


def test_bad_shapes_and_dtypes(two_regions):
    image, truth = two_regions
    with pytest.raises(WsssError, match=r"shape \(64, 63\)"):
        crf_labels(image, truth[:, :-1], 2)
    with pytest.raises(WsssError, match="uint8"):
        crf_labels(image.astype(np.float32), truth, 2)
    with pytest.raises(WsssError, match="H×W×3"):
        crf_labels(image[..., 0], truth, 2)
    probs = _soft_noisy_probs(truth)
    with pytest.raises(WsssError, match="size"):
        crf_probs(image, probs[:, :-1])
    with pytest.raises(WsssError, match="sum to 1"):
        crf_probs(image, probs * 0.5)
    with pytest.raises(WsssError, match="floating"):
        crf_probs(image, (probs > 0.5).astype(np.uint8))
    with pytest.raises(WsssError, match="finite"):
        crf_probs(image, np.where(truth == 1, np.nan, probs))


def test_errors_name_the_source_file(two_regions):
    image, truth = two_regions
    with pytest.raises(WsssError, match=r"^cams/2007_000032\.png: "):
        crf_labels(image, truth[:-1], 2, source="cams/2007_000032.png")


@pytest.mark.parametrize(
    "bad",
    [
        {"gt_prob": 1.0},
        {"gt_prob": 0.0},
        {"iterations": 0},
        {"iterations": 2.5},
        {"gauss_sxy": 0},
        {"bi_sxy": -1},
        {"bi_srgb": 0},
        {"bi_compat": -1},
        {"gauss_compat": float("nan")},
        {"bi_srgb": "5"},
    ],
)
def test_params_validation(bad):
    with pytest.raises(WsssError, match=next(iter(bad))):
        CrfParams(**bad)


def test_params_dict_round_trip():
    params = CrfParams(bi_compat=4, iterations=5)
    as_dict = params.to_dict()
    assert as_dict == {
        "gt_prob": 0.7,
        "gauss_sxy": 3.0,
        "gauss_compat": 3.0,
        "bi_sxy": 50.0,
        "bi_srgb": 5.0,
        "bi_compat": 4.0,
        "iterations": 5,
    }
    assert CrfParams.from_dict(as_dict) == params
    assert CrfParams.from_dict(None) == CrfParams()
    with pytest.raises(WsssError, match="unknown CRF parameter"):
        CrfParams.from_dict({"sxy": 3})


def test_missing_library_is_a_clear_error(two_regions, monkeypatch):
    image, truth = two_regions
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    with pytest.raises(WsssError, match="pip install pydensecrf2"):
        crf_labels(image, truth, 2)
    with pytest.raises(WsssError, match="pip install pydensecrf2"):
        crf_probs(image, _soft_noisy_probs(truth))


def test_read_only_image_is_accepted(two_regions):
    """Images decoded by PIL (``np.asarray``) are read-only; pydensecrf needs a writable buffer."""
    _needs_crf()
    image, truth = two_regions
    image = image.copy()
    image.setflags(write=False)
    out = crf_labels(image, truth.astype(np.uint8), num_labels=2)
    assert (out == truth).mean() > 0.98
