from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from wsss.data import build_dataset
from wsss.io import WsssError, save_saliency
from wsss.saliency.metrics import SaliencyMetric, evaluate_saliency

# A 2×3 image used by the hand-computed tests.
PRED = np.array([[0.9, 0.6, 0.2], [0.4, 0.1, 0.8]])
GT = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)


def _single(pred, gt, valid=None) -> dict:
    metric = SaliencyMetric()
    metric.process(pred, gt, valid)
    return metric.compute()


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
    metric = SaliencyMetric()
    metric.process(perfect, GT)
    metric.process(np.zeros((2, 3), np.uint8), np.zeros((2, 3), bool))
    out = metric.compute()
    assert out["max_f"] == pytest.approx(0.5)
    assert out["best_threshold"] == pytest.approx(1 / 255)
    assert out["mae"] == pytest.approx(0.0)
    # image 2's union is empty: left out of the per-image mean, adds nothing to the pooled IoU
    assert out["iou"] == pytest.approx(1.0)
    assert out["mean_iou_per_image"] == pytest.approx(1.0)


def test_image_without_valid_pixels_is_skipped():
    metric = SaliencyMetric()
    metric.process(PRED, GT, np.zeros_like(GT))
    out = metric.compute()
    assert out["num_images"] == 1 and out["num_images_skipped"] == 1
    assert math.isnan(out["mae"]) and math.isnan(out["max_f"]) and math.isnan(out["iou"])
    metric.process(PRED, GT)
    assert metric.compute()["mae"] == pytest.approx(2.2 / 6)


def test_bad_inputs():
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
    metric = SaliencyMetric()
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


def test_merge_equals_single_pass():
    images = _random_images(1, n=5)
    whole = SaliencyMetric()
    first, second = SaliencyMetric(), SaliencyMetric()
    for k, (pred, gt, valid) in enumerate(images):
        whole.process(pred, gt, valid)
        (first if k < 2 else second).process(pred, gt, valid)
    first.merge(second)
    a, b = first.compute(), whole.compute()
    for key in ("mae", "max_f", "best_threshold", "iou", "mean_iou_per_image", "num_images"):
        assert a[key] == pytest.approx(b[key])
    assert np.allclose(a["f"], b["f"])
    with pytest.raises(ValueError, match="beta2"):
        first.merge(SaliencyMetric(beta2=1.0))


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


def test_evaluate_missing_or_wrong_size_prediction(val_set, tmp_path):
    _write_gt_saliency(val_set, tmp_path)
    missing = tmp_path / f"{val_set.ids[1]}.png"
    missing.unlink()
    with pytest.raises(WsssError, match=f"^{re.escape(str(missing))}"):
        evaluate_saliency(tmp_path, val_set, progress=False)
    save_saliency(missing, np.zeros((10, 10), np.float32))
    with pytest.raises(WsssError, match=f"^{re.escape(str(missing))}.*does not match"):
        evaluate_saliency(tmp_path, val_set, progress=False)
