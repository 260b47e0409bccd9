from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

from wsss.metrics.confusion import ConfusionMetric, confusion_scores


def test_hand_computed_3x3():
    gt = np.array([[0, 0, 1], [1, 2, 2], [255, 2, 0]], np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0], [2, 255, 0]], np.uint8)
    m = ConfusionMetric(3)
    m.process(pred, gt)
    r = m.compute()
    np.testing.assert_array_equal(r["confusion"], [[2, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(r["unpredicted"], [0, 0, 1])
    np.testing.assert_allclose(r["iou"], [2 / 4, 2 / 3, 1 / 3])
    np.testing.assert_allclose(r["precision"], [2 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(r["recall"], [2 / 3, 1.0, 1 / 3])
    # FPR / FNR: FP and FN over the union TP + FP + FN (unions 4, 3, 3), as P-NOC computes them
    np.testing.assert_allclose(r["fpr"], [1 / 4, 1 / 3, 0.0])
    np.testing.assert_allclose(r["fnr"], [1 / 4, 0.0, 2 / 3])
    np.testing.assert_allclose(r["iou"] + r["fpr"] + r["fnr"], 1.0)
    assert r["miou"] == pytest.approx(0.5)
    assert r["pixel_acc"] == pytest.approx(5 / 8)
    assert r["precision_mean"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    # the FPR / FNR means are over the foreground classes 1 and 2 only
    assert r["fpr_mean"] == pytest.approx((1 / 3 + 0.0) / 2)
    assert r["fnr_mean"] == pytest.approx((0.0 + 2 / 3) / 2)
    assert r["confusion"].dtype == np.int64


def test_absent_and_false_positive_classes():
    gt = np.array([[0, 0], [1, 1]], np.uint8)
    pred = np.array([[0, 2], [1, 1]], np.uint8)
    m = ConfusionMetric(4, class_names=["bg", "a", "b", "c"])
    m.process(pred, gt)
    r = m.compute()
    # class 2: predicted once, never in GT → IoU 0, precision 0, recall undefined; its whole
    # union is a false positive → FPR 1, FNR 0
    assert r["iou"][2] == 0.0 and r["precision"][2] == 0.0 and np.isnan(r["recall"][2])
    assert r["fpr"][2] == 1.0 and r["fnr"][2] == 0.0
    # class 3: absent from both → NaN, skipped by the means
    assert np.isnan(r["iou"][3]) and np.isnan(r["precision"][3])
    assert r["miou"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert np.isnan(r["fpr"][3]) and np.isnan(r["fnr"][3])
    assert r["fpr_mean"] == pytest.approx((0.0 + 1.0) / 2)  # foreground 1 and 2; absent class 3 skipped


def test_no_prediction_hurts_recall_not_precision():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 3, size=(40, 40)).astype(np.uint8)
    pred = gt.copy()
    holes = (gt == 1) & (rng.random(gt.shape) < 0.25)
    pred[holes] = 255
    m = ConfusionMetric(3)
    m.process(pred, gt)
    r = m.compute()
    n1 = int((gt == 1).sum())
    np.testing.assert_allclose(r["precision"], [1.0, 1.0, 1.0])
    assert r["recall"][1] == pytest.approx((n1 - holes.sum()) / n1)
    assert r["fnr"][1] == pytest.approx(holes.sum() / n1)
    assert r["fpr"][1] == 0.0
    assert r["iou"][1] == pytest.approx((n1 - holes.sum()) / n1)
    assert r["recall"][0] == 1.0 and r["recall"][2] == 1.0
    assert r["pixel_acc"] == pytest.approx(1 - holes.sum() / gt.size)


def test_matches_torchmetrics_on_random_inputs():
    rng = np.random.default_rng(0)
    k = 5
    preds, gts = [], []
    m = ConfusionMetric(k)
    for _ in range(6):
        h, w = rng.integers(8, 30, size=2)
        gt = rng.integers(0, k, size=(h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        pred = np.where(rng.random((h, w)) < 0.6, gt, rng.integers(0, k, size=(h, w))).astype(np.uint8)
        pred[pred == 255] = 0
        m.process(pred, gt)
        preds.append(torch.from_numpy(pred.astype(np.int64)).reshape(-1))
        gts.append(torch.from_numpy(gt.astype(np.int64)).reshape(-1))
    p, t = torch.cat(preds), torch.cat(gts)
    r = m.compute()
    ref_conf = MulticlassConfusionMatrix(num_classes=k, ignore_index=255)(p, t).numpy()
    np.testing.assert_array_equal(r["confusion"], ref_conf)
    ref_iou = MulticlassJaccardIndex(num_classes=k, ignore_index=255, average=None)(p, t).numpy()
    np.testing.assert_allclose(r["iou"], ref_iou, rtol=1e-6)
    ref_miou = MulticlassJaccardIndex(num_classes=k, ignore_index=255, average="macro")(p, t).item()
    assert r["miou"] == pytest.approx(ref_miou, rel=1e-6)
    ref_prec = MulticlassPrecision(num_classes=k, ignore_index=255, average=None)(p, t).numpy()
    ref_rec = MulticlassRecall(num_classes=k, ignore_index=255, average=None)(p, t).numpy()
    np.testing.assert_allclose(r["precision"], ref_prec, rtol=1e-6)
    np.testing.assert_allclose(r["recall"], ref_rec, rtol=1e-6)


def test_merge_equals_single_pass_and_pickles():
    rng = np.random.default_rng(3)
    pairs = []
    for _ in range(8):
        gt = rng.integers(0, 4, size=(16, 12)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = rng.integers(0, 4, size=(16, 12)).astype(np.uint8)
        pred[rng.random(gt.shape) < 0.1] = 255
        pairs.append((pred, gt))
    single = ConfusionMetric(4)
    for p, g in pairs:
        single.process(p, g)
    a, b = ConfusionMetric(4), ConfusionMetric(4)
    for p, g in pairs[:3]:
        a.process(p, g)
    for p, g in pairs[3:]:
        b.process(p, g)
    a.merge(pickle.loads(pickle.dumps(b)))
    ra, rs = a.compute(), single.compute()
    np.testing.assert_array_equal(ra["confusion"], rs["confusion"])
    np.testing.assert_array_equal(ra["unpredicted"], rs["unpredicted"])
    assert ra["miou"] == rs["miou"] and ra["num_images"] == 8


def test_scores_are_a_pure_function_of_totals():
    conf = np.array([[5, 1], [2, 2]])
    r = confusion_scores(conf, np.array([0, 1]))
    np.testing.assert_allclose(r["iou"], [5 / 8, 2 / 6])
    np.testing.assert_allclose(r["recall"], [5 / 6, 2 / 5])
    assert r["pixel_acc"] == pytest.approx(7 / 11)


def test_bad_inputs_raise():
    m = ConfusionMetric(3)
    with pytest.raises(ValueError, match="outside"):
        m.process(np.full((2, 2), 3, np.uint8), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        m.process(np.zeros((2, 3), np.uint8), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError):
        m.merge(ConfusionMetric(4))


def test_uint8_histogram_path_equals_the_general_path():
    """uint8 maps with ignore 255 take one cv2.calcHist; other dtypes the masked bincount."""
    rng = np.random.default_rng(5)
    k = 21
    fast, general = ConfusionMetric(k), ConfusionMetric(k)
    for _ in range(6):
        gt = rng.integers(0, k, size=(37, 53)).astype(np.uint8)
        pred = rng.integers(0, k, size=(37, 53)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        pred[rng.random(gt.shape) < 0.1] = 255
        fast.process(pred, gt)
        general.process(pred.astype(np.int32), gt.astype(np.int64))
    np.testing.assert_array_equal(fast.confusion, general.confusion)
    np.testing.assert_array_equal(fast.unpredicted, general.unpredicted)
    assert fast.unpredicted.sum() > 0 and fast.confusion.sum() + fast.unpredicted.sum() < 6 * 37 * 53
    gt, pred = np.array([[0, 1, 2, 255, 1]]), np.array([[0, 255, 2, 1, 1]])
    m = ConfusionMetric(3)
    m.process(pred.astype(np.uint8), gt.astype(np.uint8))
    np.testing.assert_array_equal(m.confusion, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(m.unpredicted, [0, 1, 0])


@pytest.mark.parametrize("bad", [3, 254])
def test_uint8_values_between_num_classes_and_ignore_raise(bad):
    gt = np.array([[0, 1, 255, bad]], np.uint8)
    with pytest.raises(ValueError, match="outside"):
        ConfusionMetric(3).process(np.zeros_like(gt), gt)
