from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from wsss.data import build_dataset
from wsss.io import WsssError, load_instances, load_label, save_label, write_json
from wsss.metrics import ClassGroupStats, ConfusionMetric, InstanceAwareMetric
from wsss.metrics.evaluate import evaluate_dataset, evaluate_dirs, format_table

K = 4  # the voc_like fixture: background + 3 classes
BOUNDS = (100, 400)


def _write_preds(ds, out: Path) -> Path:
    """Ground truth degraded in ways the metrics notice: shifted, one image's class swapped, holes."""
    for n, i in enumerate(ds.ids):
        gt = ds.gt(i)
        pred = np.roll(gt, 2 * (n % 3), axis=1)
        pred[pred == 255] = 0
        if n == 1:
            pred[pred > 0] = pred[pred > 0] % 3 + 1
        if n % 4 == 0:
            pred[:3, :] = 255  # "no prediction"
        save_label(out / f"{i}.png", pred)
    return out


@pytest.fixture(scope="module")
def val(voc_like):
    return build_dataset("synthetic", voc_like, "val")


@pytest.fixture(scope="module")
def preds(val, tmp_path_factory) -> Path:
    return _write_preds(val, tmp_path_factory.mktemp("preds"))


def _direct(val, preds, instances=True):
    conf, ia, groups = ConfusionMetric(K), InstanceAwareMetric(K, BOUNDS), ClassGroupStats(K)
    for i in val.ids:
        gt = load_label(val.gt_path(i), K)
        pred = load_label(preds / f"{i}.png", K)
        conf.process(pred, gt)
        ia.process(pred, gt, load_instances(val.instance_path(i)) if instances else None)
        groups.process(gt)
    return conf.compute(), ia.compute(), groups.compute()


def _is_fraction(x) -> bool:
    return isinstance(x, float) and (math.isnan(x) or 0.0 <= x <= 1.0)


def test_evaluate_dirs_json_contract(val, preds, tmp_path):
    root = val.root
    res = evaluate_dirs(preds, root / "SegmentationClass", K, instances_dir=root / "SegmentationObject",
                        class_names=val.class_names, bounds=BOUNDS, progress=False)  # fmt: skip
    for key in ("miou", "ia_miou", "ia_miou_small", "ia_miou_medium", "ia_miou_large", "pixel_acc",
                "precision_mean", "recall_mean", "fpr_mean", "fnr_mean"):  # fmt: skip
        assert _is_fraction(res[key]), key
    assert res["num_images"] == len(val.ids) and res["bounds"] == list(BOUNDS)
    assert [c["name"] for c in res["per_class"]] == val.class_names
    for c in res["per_class"]:
        assert set(c) >= {"id", "name", "iou", "precision", "recall", "fpr", "fnr", "ia_iou"}
        assert all(_is_fraction(c[k]) for k in ("iou", "precision", "recall", "fnr", "ia_iou"))
    # same numbers as the metrics fed directly
    conf, ia, groups = _direct(val, preds)
    assert res["miou"] == conf["miou"] and res["ia_miou"] == ia["ia_miou"]
    np.testing.assert_allclose([c["fpr"] for c in res["per_class"]], conf["fpr"], equal_nan=True)
    np.testing.assert_allclose([c["ia_iou"] for c in res["per_class"]], ia["ia_iou"], equal_nan=True)
    assert res["instance_source"] == {"png": len(val.ids), "components": 0}
    occurrence = [row["occurrence"] for row in res["groups"]["classes"]]
    labels = [val.labels(i) for i in val.ids]
    assert occurrence[1:] == [sum(c in lab for lab in labels) for c in range(1, K)]
    assert "iou" in res["groups"]["correlation"]["relative_size"]
    # JSON round trip: plain types only
    write_json(tmp_path / "r.json", res)
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["miou"] == pytest.approx(res["miou"]) and len(back["confusion"]) == K
    table = format_table(res)
    assert "class2" in table and f"{100 * res['miou']:.1f}" in table and "IA-mIoU" in table


def test_evaluate_dataset_workers_and_ids(val, preds):
    one = evaluate_dataset(preds, val, bounds=BOUNDS, progress=False)
    two = evaluate_dataset(preds, val, bounds=BOUNDS, workers=2, progress=False)
    assert one["dataset"]["split"] == "val" and one["num_images"] == len(val.ids)
    for key in ("miou", "ia_miou", "ia_miou_small", "pixel_acc", "fnr_mean"):
        assert one[key] == pytest.approx(two[key], rel=1e-12, nan_ok=True)
    assert one["confusion"] == two["confusion"]
    conf, ia, _ = _direct(val, preds)
    assert one["miou"] == conf["miou"] and one["ia_miou"] == ia["ia_miou"]
    # without instance maps: connected components
    cc = evaluate_dataset(preds, val, bounds=BOUNDS, use_instances=False, groups=False, progress=False)
    _, ia_cc, _ = _direct(val, preds, instances=False)
    assert cc["ia_miou"] == ia_cc["ia_miou"] and cc["groups"] is None
    assert cc["instance_source"]["components"] == len(val.ids)
    sub = evaluate_dataset(preds, val, ids=val.ids[:2], bounds=BOUNDS, progress=False)
    assert sub["num_images"] == 2


def test_ia_variant_is_passed_to_the_metric_and_recorded(val, preds):
    official = evaluate_dataset(preds, val, bounds=BOUNDS, groups=False, progress=False)
    exact = evaluate_dataset(preds, val, bounds=BOUNDS, groups=False, workers=2, progress=False,
                             ia_variant="exact")  # fmt: skip
    assert official["ia_variant"] == "official" and exact["ia_variant"] == "exact"
    direct = InstanceAwareMetric(K, BOUNDS, variant="exact")
    for i in val.ids:
        direct.process(load_label(preds / f"{i}.png", K), val.gt(i), load_instances(val.instance_path(i)))
    assert exact["ia_miou"] == pytest.approx(direct.compute()["ia_miou"], rel=1e-12)
    assert exact["miou"] == official["miou"]
    with pytest.raises(WsssError, match="variant"):
        evaluate_dataset(preds, val, bounds=BOUNDS, progress=False, ia_variant="paper")


def test_perfect_predictions(val, tmp_path):
    res = evaluate_dirs(val.root / "SegmentationClass", val.root / "SegmentationClass", K, ids=val.ids,
                        progress=False)  # fmt: skip
    assert res["miou"] == 1.0 and res["ia_miou"] == 1.0 and res["pixel_acc"] == 1.0 and res["fpr_mean"] == 0.0


def _error_message(fn) -> str:
    with pytest.raises(WsssError) as err:
        fn()
    return str(err.value)


def test_bad_inputs_name_the_file(val, preds, tmp_path):
    gt_dir = tmp_path / "gt"
    shutil.copytree(val.root / "SegmentationClass", gt_dir)
    pred_dir = tmp_path / "pred"
    shutil.copytree(preds, pred_dir)
    ids = sorted(p.stem for p in pred_dir.glob("*.png"))
    kw = {"num_classes": K, "progress": False}

    def run(**extra):
        return lambda: evaluate_dirs(pred_dir, gt_dir, **{**kw, **extra})

    missing_gt = gt_dir / f"{ids[0]}.png"
    missing_gt.unlink()
    assert _error_message(run()).startswith(str(missing_gt))
    save_label(missing_gt, np.zeros((64, 64), np.uint8))

    wrong_size = pred_dir / f"{ids[1]}.png"
    save_label(wrong_size, np.zeros((32, 64), np.uint8))
    assert _error_message(run()).startswith(str(wrong_size))
    save_label(wrong_size, np.zeros((64, 64), np.uint8))

    bad_value = pred_dir / f"{ids[2]}.png"
    save_label(bad_value, np.full((64, 64), 7, np.uint8))
    assert _error_message(run()).startswith(str(bad_value))
    save_label(bad_value, np.zeros((64, 64), np.uint8))

    corrupt = gt_dir / f"{ids[3]}.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert _error_message(run()).startswith(str(corrupt))
    save_label(corrupt, np.zeros((64, 64), np.uint8))

    inst_dir = tmp_path / "inst"
    inst_dir.mkdir()
    assert _error_message(run(instances_dir=inst_dir)).startswith(str(inst_dir / f"{ids[0]}.png"))
    assert _error_message(run(ids=["nope"])).startswith(str(pred_dir / "nope.png"))
    assert _error_message(run(workers=2, ids=ids[:1] + ["nope"])).startswith(str(pred_dir / "nope.png"))

    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error_message(lambda: evaluate_dirs(empty, gt_dir, **kw)).startswith(str(empty))
    assert _error_message(lambda: evaluate_dirs(tmp_path / "absent", gt_dir, **kw)).startswith(
        str(tmp_path / "absent")
    )
    evaluate_dirs(pred_dir, gt_dir, **kw)  # everything restored: runs
