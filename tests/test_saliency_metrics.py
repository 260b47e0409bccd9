from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from wsss.data import build_dataset
from wsss.io import WsssError, save_saliency
from wsss.saliency.metrics import SaliencyMetric, evaluate_saliency, fill_from_nearest_valid

# A 2×3 image used by the hand-computed tests.
PRED = np.array([[0.9, 0.6, 0.2], [0.4, 0.1, 0.8]])
GT = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)


def _single(pred, gt, valid=None, protocol="pooled") -> dict:
    metric = SaliencyMetric(protocol=protocol)
    metric.process(pred, gt, valid)
    return metric.compute()


# ------------------------------------------------------------------ protocol "pooled" (the earlier one)


def test_hand_computed_2x3():
    out = _single(PRED, GT)
    # |pred - gt| = 0.1, 0.4, 0.2 / 0.6, 0.1, 0.8 → 2.2 / 6
    assert out["mae"] == pytest.approx(2.2 / 6)
    # pred >= 0.5: {0.9, 0.6, 0.8}; gt: {0.9, 0.6, 0.4} → ∩ = 2, ∪ = 4
    assert out["iou"] == pytest.approx(0.5)
    assert out["mean_iou_per_image"] == pytest.approx(0.5)
    # levels q = round(255·p): 0.9→230, 0.6→153, 0.2→51, 0.4→102, 0.1→26, 0.8→204
    # t = 128 (q >= 128 ⇔ p >= 0.5): TP = 2, FP = 1 → P = R = 2/3 → F = 2/3
    assert out["precision"][128] == pytest.approx(2 / 3)
    assert out["recall"][128] == pytest.approx(2 / 3)
    assert out["f"][128] == pytest.approx(2 / 3)
    # t = 210: only 0.9 → P = 1, R = 1/3 → F = 1.3·(1/3) / (0.3 + 1/3) = 13/19
    assert out["f"][210] == pytest.approx(13 / 19)
    # t = 0: everything → P = 1/2, R = 1 → F = 0.65 / 1.15
    assert out["f"][0] == pytest.approx(0.65 / 1.15)
    # t = 52..102: {0.9, 0.6, 0.4, 0.8} → TP = 3, FP = 1 → P = 3/4, R = 1 → F = 0.975/1.225 = 39/49,
    # the maximum (t = 27..51 gives P = 0.6, R = 1 → F = 0.661); ties go to the lowest t
    assert out["max_f"] == pytest.approx(39 / 49)
    assert out["best_threshold"] == pytest.approx(52 / 255)
    assert np.allclose(out["f"][52:103], 39 / 49)
    assert out["num_images"] == 1 and out["num_images_skipped"] == 0


def test_valid_mask_excludes_pixels():
    valid = np.ones_like(GT)
    valid[1, 2] = False  # drop the false positive 0.8
    out = _single(PRED, GT, valid)
    # |pred - gt| over the 5 valid pixels: 0.1 + 0.4 + 0.2 + 0.6 + 0.1 = 1.4
    assert out["mae"] == pytest.approx(1.4 / 5)
    # pred >= 0.5: {0.9, 0.6}; gt {0.9, 0.6, 0.4} → 2 / 3
    assert out["iou"] == pytest.approx(2 / 3)
    # t = 52..102 now predicts exactly the gt: P = R = F = 1
    assert out["max_f"] == pytest.approx(1.0)
    assert out["best_threshold"] == pytest.approx(52 / 255)


def test_uint8_input_is_divided_by_255():
    pred_u8 = np.array([[255, 153, 51], [102, 0, 204]], dtype=np.uint8)
    out = _single(pred_u8, GT)
    # as floats: 1.0, 0.6, 0.2 / 0.4, 0.0, 0.8 → |err| = 0, 0.4, 0.2, 0.6, 0, 0.8 → 2.0 / 6
    assert out["mae"] == pytest.approx(2.0 / 6)
    assert out["iou"] == pytest.approx(0.5)
    same = _single(pred_u8.astype(np.float32) / 255.0, GT)
    for key in ("mae", "max_f", "best_threshold", "iou"):
        assert out[key] == pytest.approx(same[key])
    assert np.allclose(out["f"], same["f"])


def test_empty_ground_truth_scores_zero_precision_and_recall():
    # image 1 is perfect (P = R = 1 for t = 1..255); image 2 has no foreground, so it
    # contributes P = R = 0 at every t → mean P = R = 0.5 → F = 0.5
    perfect = GT.astype(np.uint8) * 255
    metric = SaliencyMetric(protocol="pooled")
    metric.process(perfect, GT)
    metric.process(np.zeros((2, 3), np.uint8), np.zeros((2, 3), bool))
    out = metric.compute()
    assert out["max_f"] == pytest.approx(0.5)
    assert out["best_threshold"] == pytest.approx(1 / 255)
    assert out["mae"] == pytest.approx(0.0)
    # image 2's union is empty: left out of the per-image mean, adds nothing to the pooled IoU
    assert out["iou"] == pytest.approx(1.0)
    assert out["mean_iou_per_image"] == pytest.approx(1.0)


@pytest.mark.parametrize("protocol", ["pooled", "sod"])
def test_image_without_valid_pixels_is_skipped(protocol):
    metric = SaliencyMetric(protocol=protocol)
    metric.process(PRED, GT, np.zeros_like(GT))
    out = metric.compute()
    assert out["num_images"] == 1 and out["num_images_skipped"] == 1
    assert math.isnan(out["mae"]) and math.isnan(out["max_f"]) and math.isnan(out["iou"])
    metric.process(PRED, GT)
    # sod: levels 230, 153, 51 / 102, 26, 204 rescaled by (q - 26) / 204 → |p - gt| · 204 =
    # 0, 77, 25 / 128, 0, 178 → 408 / 204 / 6 = 2 / 6
    assert metric.compute()["mae"] == pytest.approx(2.2 / 6 if protocol == "pooled" else 2.0 / 6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="protocol"):
        SaliencyMetric(protocol="fancy")
    metric = SaliencyMetric()
    with pytest.raises(ValueError, match="outside"):
        metric.process(PRED + 0.5, GT)
    with pytest.raises(ValueError, match="shape"):
        metric.process(PRED, GT[:, :2])
    with pytest.raises(ValueError, match="dtype"):
        metric.process(PRED.astype(np.int32), GT)
    with pytest.raises(ValueError, match="boolean"):
        metric.process(PRED, GT.astype(np.uint8) * 2)
    assert metric.num_images == 0


def _random_images(seed: int, n: int = 6):
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n):
        h, w = rng.integers(5, 30, size=2)
        gt = rng.random((h, w)) < rng.uniform(0.1, 0.6)
        pred = np.clip(0.6 * gt + 0.6 * rng.random((h, w)) - 0.1, 0, 1)
        if k == 0:
            gt[:] = False  # an image with no foreground
        valid = rng.random((h, w)) > 0.2
        images.append((pred, gt, valid))
    return images


def _brute_force(images, beta2=0.3):
    """Independent formulation: a threshold loop on the raw floats, boolean masks per image."""
    precisions, recalls, maes, inters, unions = [], [], [], 0, 0
    for pred, gt, valid in images:
        p, g = pred[valid], gt[valid]
        maes.append(np.mean(np.abs(p - g)))
        prec, rec = [], []
        for t in range(256):
            fg = p >= (t - 0.5) / 255  # round(255·p) >= t
            tp = np.sum(fg & g)
            prec.append(tp / fg.sum() if fg.sum() else 0.0)
            rec.append(tp / g.sum() if g.sum() else 0.0)
        precisions.append(prec)
        recalls.append(rec)
        inters += np.sum((p >= 0.5) & g)
        unions += np.sum((p >= 0.5) | g)
    precision = np.mean(precisions, axis=0)
    recall = np.mean(recalls, axis=0)
    f = []
    for pr, rc in zip(precision, recall, strict=True):
        f.append((1 + beta2) * pr * rc / (beta2 * pr + rc) if pr + rc > 0 else 0.0)
    return precision, recall, np.array(f), float(np.mean(maes)), inters / unions


def test_matches_brute_force_on_random_data():
    images = _random_images(0)
    metric = SaliencyMetric(protocol="pooled")
    for pred, gt, valid in images:
        metric.process(pred, gt, valid)
    out = metric.compute()
    precision, recall, f, mae, iou = _brute_force(images)
    assert np.allclose(out["precision"], precision)
    assert np.allclose(out["recall"], recall)
    assert np.allclose(out["f"], f)
    assert out["max_f"] == pytest.approx(f.max())
    assert out["best_threshold"] == pytest.approx(int(np.argmax(f)) / 255)
    assert out["mae"] == pytest.approx(mae)
    assert out["iou"] == pytest.approx(iou)
    assert 0.0 < out["max_f"] < 1.0


@pytest.mark.parametrize("protocol", ["pooled", "sod"])
def test_merge_equals_single_pass(protocol):
    images = _random_images(1, n=5)
    whole = SaliencyMetric(protocol=protocol)
    first, second = SaliencyMetric(protocol=protocol), SaliencyMetric(protocol=protocol)
    for k, (pred, gt, valid) in enumerate(images):
        whole.process(pred, gt, valid)
        (first if k < 2 else second).process(pred, gt, valid)
    first.merge(second)
    a, b = first.compute(), whole.compute()
    assert a.keys() == b.keys()
    for key, value in b.items():
        if isinstance(value, np.ndarray):
            assert np.allclose(a[key], value, rtol=0, atol=1e-12), key
        elif isinstance(value, float):
            assert a[key] == pytest.approx(value, rel=0, abs=1e-12), key
        else:
            assert a[key] == value, key
    with pytest.raises(ValueError, match="beta2"):
        first.merge(SaliencyMetric(beta2=1.0, protocol=protocol))
    other = "sod" if protocol == "pooled" else "pooled"
    with pytest.raises(ValueError, match="cannot merge"):
        first.merge(SaliencyMetric(protocol=other))


# ------------------------------------------------------------------ protocol "sod" (PySODMetrics)
# Independent float64 formulas from the published definitions, for the hand-computed checks.
def _f_beta(precision, recall, beta2=0.3):
    den = beta2 * precision + recall
    return np.where(den > 0, (1 + beta2) * precision * recall / np.where(den > 0, den, 1), 0.0)


def _e_measure(binary, gt):
    """Fan et al. 2018: per-pixel enhanced alignment of the mean-removed maps, summed over the
    pixels / (N - 1) (PySODMetrics' denominator, from the authors' MATLAB code)."""
    binary, gt = binary.astype(np.float64), gt.astype(np.float64)
    if gt.all():
        enhanced = binary
    elif not gt.any():
        enhanced = 1 - binary
    else:
        dp, dg = binary - binary.mean(), gt - gt.mean()
        align = 2 * dp * dg / (dp**2 + dg**2 + np.spacing(1))
        enhanced = (align + 1) ** 2 / 4
    return enhanced.sum() / (gt.size - 1)


def _s_measure(p, gt, alpha=0.5):
    """Fan et al. 2017: α·object + (1 - α)·region, the region split at the rounded foreground
    centroid (+1, the MATLAB code's 1-based ``1:X`` rows/columns)."""
    mu = gt.mean()
    if mu == 0:
        return 1 - p.mean()
    if mu == 1:
        return p.mean()

    def o(x):
        return 2 * x.mean() / (x.mean() ** 2 + 1 + x.std(ddof=1))

    object_score = mu * o(p[gt]) + (1 - mu) * o(1 - p[~gt])

    def ssim(x, y):
        y = y.astype(np.float64)
        n = x.size
        sx, sy = ((x - x.mean()) ** 2).sum() / (n - 1), ((y - y.mean()) ** 2).sum() / (n - 1)
        sxy = ((x - x.mean()) * (y - y.mean())).sum() / (n - 1)
        num, den = 4 * x.mean() * y.mean() * sxy, (x.mean() ** 2 + y.mean() ** 2) * (sx + sy)
        return num / den if num != 0 else float(den == 0)

    cy, cx = (int(c) + 1 for c in np.round(np.argwhere(gt).mean(axis=0)))
    h, w = gt.shape
    region_score = sum(
        ssim(p[rows, cols], gt[rows, cols]) * p[rows, cols].size / p.size
        for rows in (slice(0, cy), slice(cy, h))
        for cols in (slice(0, cx), slice(cx, w))
    )
    return alpha * object_score + (1 - alpha) * region_score


def test_sod_min_max_rescale_and_floor_quantisation():
    # levels 40..240 rescale to p = 0, 0.5 / 1, 0.25; the sweep quantises floor(255·p) =
    # 0, 127 / 255, 63 (rounding would give 128 and 64; no rescale would keep 140 and 90)
    pred = np.array([[40, 140], [240, 90]], dtype=np.uint8)
    gt = np.array([[0, 1], [1, 0]], dtype=bool)
    out = _single(pred, gt, protocol="sod")
    # t = 0: all four → P = 1/2, R = 1; t = 1..63: {127, 255, 63} → P = 2/3, R = 1;
    # t = 64..127: {127, 255} → P = R = 1; t = 128..255: {255} → P = 1, R = 1/2
    precision = np.repeat([1 / 2, 2 / 3, 1.0, 1.0], [1, 63, 64, 128])
    recall = np.repeat([1.0, 1.0, 1.0, 1 / 2], [1, 63, 64, 128])
    f = _f_beta(precision, recall)
    assert f[127] == 1.0 and f[128] == pytest.approx(1.3 * 0.5 / 0.8)
    assert np.allclose(out["precision"], precision, rtol=0, atol=1e-15)
    assert np.allclose(out["recall"], recall, rtol=0, atol=1e-15)
    assert np.allclose(out["f"], f, rtol=0, atol=1e-15)
    assert out["max_f"] == 1.0 and out["best_threshold"] == pytest.approx(64 / 255)
    assert out["mean_f"] == pytest.approx(f.mean(), rel=1e-15)
    # MAE on the rescaled map: 0 + 0.5 + 0 + 0.25 over 4 (the raw map would give 0.255)
    assert out["mae"] == pytest.approx(0.1875, rel=1e-15)
    # adaptive threshold 2·mean(p) = 0.875 → only the 1.0 pixel: P = 1, R = 1/2
    assert out["adaptive_f"] == pytest.approx(1.3 * 0.5 / 0.8, rel=1e-15)
    p = np.array([[0, 0.5], [1, 0.25]])
    levels = np.floor(255 * p)
    e = np.array([_e_measure(levels >= t, gt) for t in range(256)])
    assert np.allclose(out["e"], e, rtol=0, atol=1e-12)
    assert out["max_e"] == pytest.approx(e.max(), rel=1e-12)
    assert out["mean_e"] == pytest.approx(e.mean(), rel=1e-12)
    assert out["adaptive_e"] == pytest.approx(_e_measure(p >= 0.875, gt), rel=1e-12)
    # IoU stays on the raw map: 140/255 and 240/255 ≥ 0.5 → exactly the ground truth
    assert out["iou"] == 1.0 and out["protocol"] == "sod"


def test_sod_s_measure_hand_computed():
    # a 5×6 map with a 3×3 object at rows/columns 1-3: its centroid (2, 2) is no rounding tie,
    # so the quadrants split after row and column 3 (2 + 1) whichever rounding rule one takes
    gt = np.zeros((5, 6), dtype=bool)
    gt[1:4, 1:4] = True
    rng = np.random.default_rng(3)
    levels = np.clip(np.rint(255 * (0.55 * gt + 0.5 * rng.random(gt.shape))), 0, 255).astype(np.uint8)
    p = levels / 255.0
    p = (p - p.min()) / (p.max() - p.min())
    out = _single(levels, gt, protocol="sod")
    assert out["s_measure"] == pytest.approx(_s_measure(p, gt), rel=1e-12)
    # the degenerate cases: no foreground → 1 - mean(p); all foreground → mean(p)
    assert _single(levels, np.zeros_like(gt), protocol="sod")["s_measure"] == pytest.approx(1 - p.mean())
    assert _single(levels, np.ones_like(gt), protocol="sod")["s_measure"] == pytest.approx(p.mean())


def test_sod_averages_per_image_f_curves_then_takes_the_max():
    # image 1 finds its one-pixel object exactly (F = 1 for t >= 1); image 2 is a constant map
    # (not rescaled: p = 1) over half foreground → P = 1/2, R = 1 at every t
    images = [
        (np.array([[255, 0], [0, 0]], np.uint8), np.array([[1, 0], [0, 0]], bool)),
        (np.full((2, 2), 255, np.uint8), np.array([[1, 1], [0, 0]], bool)),
    ]
    sod, pooled = SaliencyMetric(protocol="sod"), SaliencyMetric(protocol="pooled")
    for pred, gt in images:
        sod.process(pred, gt)
        pooled.process(pred, gt)
    half = 1.3 * 0.5 / (0.3 * 0.5 + 1)  # F at P = 1/2, R = 1
    # sod: mean of the F values at t >= 1; pooled: F of the mean P = 3/4 and R = 1
    assert sod.compute()["max_f"] == pytest.approx((1 + half) / 2, rel=1e-15)
    assert pooled.compute()["max_f"] == pytest.approx(1.3 * 0.75 / (0.3 * 0.75 + 1), rel=1e-15)
    # the constant map keeps p = 1: its MAE is 1/2, the perfect one's 0
    assert sod.compute()["mae"] == pytest.approx(0.25)


def test_sod_float_maps_are_scored_as_their_png():
    pred = np.random.default_rng(4).random((6, 7))
    gt = pred > 0.4
    as_png = np.rint(pred * 255).astype(np.uint8)
    a, b = _single(pred, gt, protocol="sod"), _single(as_png, gt, protocol="sod")
    for key in ("mae", "max_f", "mean_f", "s_measure", "max_e", "weighted_f", "iou"):
        assert a[key] == b[key], key


def test_nearest_fill_takes_a_closest_valid_pixel():
    rng = np.random.default_rng(5)
    valid = rng.random((9, 11)) > 0.4
    values = rng.integers(0, 256, valid.shape).astype(np.uint8)
    (filled,) = fill_from_nearest_valid((values,), valid)
    assert np.array_equal(filled[valid], values[valid])
    # brute force: for every pixel, the set of valid pixels at the minimal distance
    coords = np.argwhere(np.ones_like(valid))
    valid_coords = np.argwhere(valid)
    dist = ((coords[:, None, :] - valid_coords[None, :, :]) ** 2).sum(-1)
    closest = dist == dist.min(axis=1, keepdims=True)
    candidates = np.where(closest, values[valid][None, :].astype(int), -1)
    assert (candidates == filled.ravel()[:, None].astype(int)).any(axis=1).all()


def _py_sod_reference(images):
    """The usual SOD evaluation script: PySODMetrics' own evaluators, one step per image, on
    our valid-pixel convention (valid pixels as a 1×N row; a nearest-filled grid for S, wF)."""
    import warnings

    import py_sod_metrics as sod

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure (v1) announces its retirement; its numbers stand
        fm = sod.Fmeasure()
    mae, em, sm, wfm = sod.MAE(), sod.Emeasure(), sod.Smeasure(), sod.WeightedFmeasure()
    for pred, gt, valid in images:
        levels = np.rint(pred * 255).astype(np.uint8)
        gt_levels = gt.astype(np.uint8) * 255
        row = (levels[valid][None], gt_levels[valid][None])
        grid = fill_from_nearest_valid((levels, gt_levels), valid)
        for evaluator in (fm, mae, em):
            evaluator.step(*row)
        sm.step(*grid)
        wfm.step(*grid)
    f, e = fm.get_results(), em.get_results()["em"]
    return {
        "max_f": f["fm"]["curve"].max(),
        "mean_f": f["fm"]["curve"].mean(),
        "adaptive_f": f["fm"]["adp"],
        "mae": mae.get_results()["mae"],
        "s_measure": sm.get_results()["sm"],
        "max_e": e["curve"].max(),
        "mean_e": e["curve"].mean(),
        "adaptive_e": e["adp"],
        "weighted_f": wfm.get_results()["wfm"],
        "f": f["fm"]["curve"][::-1],
        "precision": f["pr"]["p"][::-1],
        "recall": f["pr"]["r"][::-1],
        "e": e["curve"][::-1],
    }


def test_sod_equals_py_sod_metrics_on_random_maps():
    images = _random_images(2, n=5)
    pred, gt, valid = images[1]
    images.append((pred, gt, np.ones_like(gt)))  # an all-valid image: the plain full map
    images.append((np.full_like(pred, 0.3), gt, valid))  # a constant map: no rescale
    metric = SaliencyMetric()
    for image in images:
        metric.process(*image)
    out = metric.compute()
    ref = _py_sod_reference(images)
    for key, value in ref.items():
        assert np.allclose(out[key], value, rtol=0, atol=1e-12), key
    assert 0.1 < out["max_f"] < 1 and 0.1 < out["s_measure"] < 1 and 0.1 < out["weighted_f"] < 1


# --------------------------------------------------------------------------- evaluate_saliency
@pytest.fixture
def val_set(voc_like):
    return build_dataset("synthetic", voc_like, "val")


def _write_gt_saliency(dataset, out_dir):
    for image_id in dataset.ids:
        save_saliency(out_dir / f"{image_id}.png", (dataset.gt(image_id) > 0).astype(np.float32))


def test_evaluate_perfect_predictions(val_set, tmp_path):
    _write_gt_saliency(val_set, tmp_path)
    result = evaluate_saliency(tmp_path, val_set, progress=False)
    assert result["mae"] == pytest.approx(0.0)
    assert result["max_f"] == pytest.approx(1.0)
    assert result["iou"] == pytest.approx(1.0)
    assert result["mean_iou_per_image"] == pytest.approx(1.0)
    assert result["num_images"] == len(val_set.ids)
    assert result["split"] == "val" and result["pred_dir"] == str(tmp_path)
    json.dumps(result)  # JSON-ready as returned
    with_gt_dir = evaluate_saliency(
        tmp_path, val_set, gt_dir=val_set.root / "saliency" / "oracle", progress=False
    )
    assert with_gt_dir["max_f"] == pytest.approx(1.0) and with_gt_dir["gt_source"] == "saliency"


def test_evaluate_inverted_predictions(val_set, tmp_path):
    for image_id in val_set.ids:
        save_saliency(tmp_path / f"{image_id}.png", (val_set.gt(image_id) == 0).astype(np.float32))
    result = evaluate_saliency(tmp_path, val_set, ids=val_set.ids[:2], progress=False)
    assert result["mae"] == pytest.approx(1.0)
    assert result["iou"] == pytest.approx(0.0)
    assert result["num_images"] == 2


def test_evaluate_protocols(val_set, tmp_path):
    for image_id in val_set.ids:  # a blurred-looking map: the protocols' numbers differ
        save_saliency(tmp_path / f"{image_id}.png", 0.2 + 0.6 * (val_set.gt(image_id) > 0))
    sod = evaluate_saliency(tmp_path, val_set, progress=False)
    pooled = evaluate_saliency(tmp_path, val_set, progress=False, protocol="pooled")
    assert sod["protocol"] == "sod" and pooled["protocol"] == "pooled"
    # sod rescales each 0.2 / 0.8 map to 0 / 1 → MAE 0; pooled keeps the raw map → MAE 0.2
    assert sod["mae"] == pytest.approx(0.0) and pooled["mae"] == pytest.approx(0.2, abs=1 / 510)
    assert sod["iou"] == pooled["iou"] == pytest.approx(1.0)
    assert sod["s_measure"] == pytest.approx(1.0) and "s_measure" not in pooled
    json.dumps(sod)
    with pytest.raises(WsssError, match="protocol"):
        evaluate_saliency(tmp_path, val_set, progress=False, protocol="paper")


def test_evaluate_missing_or_wrong_size_prediction(val_set, tmp_path):
    _write_gt_saliency(val_set, tmp_path)
    missing = tmp_path / f"{val_set.ids[1]}.png"
    missing.unlink()
    with pytest.raises(WsssError, match=f"^{re.escape(str(missing))}"):
        evaluate_saliency(tmp_path, val_set, progress=False)
    save_saliency(missing, np.zeros((10, 10), np.float32))
    with pytest.raises(WsssError, match=f"^{re.escape(str(missing))}.*does not match"):
        evaluate_saliency(tmp_path, val_set, progress=False)
