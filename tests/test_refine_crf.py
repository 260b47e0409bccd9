"""`wsss refine crf` as a stage: label and CAM inputs on the voc_like boxes, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from wsss.data import build_dataset
from wsss.io import WsssError, load_label, read_json, save_cam, save_label
from wsss.pseudo.crf import CrfParams
from wsss.pseudo.refine_crf import crf_refine

pytest.importorskip("pydensecrf.densecrf")


def _accuracy(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


@pytest.fixture()
def ds(voc_like):
    return build_dataset("synthetic", voc_like, "train")


def test_label_crf_snaps_shrunk_boxes_back(ds, tmp_path):
    coarse = tmp_path / "coarse"
    before = []
    for image_id in ds.ids:
        gt = ds.gt(image_id)
        shrunk = np.zeros_like(gt)
        for k in ds.labels(image_id):  # a 3-px uncertain band around each box: the CRF must fill it
            shrunk[ndimage.binary_dilation(gt == k, iterations=3)] = 255
        for k in ds.labels(image_id):
            shrunk[ndimage.binary_erosion(gt == k, iterations=3)] = k
        save_label(coarse / f"{image_id}.png", shrunk)
        before.append(_accuracy(shrunk, gt))
    out = crf_refine(ds, tmp_path / "crf", labels_dir=coarse, progress=False)
    after = [_accuracy(load_label(out / f"{i}.png"), ds.gt(i)) for i in ds.ids]
    assert np.mean(after) > np.mean(before) + 0.02 and np.mean(after) > 0.97
    assert read_json(out / "run.json")["config"]["crf"]["bi_compat"] == 10.0


def test_cam_crf_and_resume(ds, tmp_path):
    cams = tmp_path / "cams"
    for image_id in ds.ids:
        gt = ds.gt(image_id)
        keys = ds.labels(image_id)
        blurred = [ndimage.gaussian_filter((gt == k).astype(np.float32), 3) for k in keys]
        save_cam(cams / f"{image_id}.npz", keys, np.stack([b / b.max() for b in blurred]))
    out = crf_refine(ds, tmp_path / "crf", cam_dir=cams, tau=0.3, progress=False)
    acc = [_accuracy(load_label(out / f"{i}.png"), ds.gt(i)) for i in ds.ids]
    assert np.mean(acc) > 0.95
    for i in ds.ids:  # only the image's classes and background
        assert set(np.unique(load_label(out / f"{i}.png")).tolist()) <= {0, *ds.labels(i).tolist()}
    stamp = (out / f"{ds.ids[0]}.png").stat().st_mtime_ns
    crf_refine(ds, out, cam_dir=cams, tau=0.3, progress=False)
    assert (out / f"{ds.ids[0]}.png").stat().st_mtime_ns == stamp
    with pytest.raises(WsssError, match="settings.json"):
        crf_refine(ds, out, cam_dir=cams, tau=0.3, params=CrfParams(iterations=3), progress=False)


def test_bad_inputs_name_the_file(ds, tmp_path):
    with pytest.raises(WsssError, match="either"):
        crf_refine(ds, tmp_path / "o", progress=False)
    with pytest.raises(WsssError, match="τ"):
        crf_refine(ds, tmp_path / "o", cam_dir=tmp_path, progress=False)
    labels = tmp_path / "labels"
    for image_id in ds.ids:
        save_label(labels / f"{image_id}.png", ds.gt(image_id))
    wrong = next(i for i in ds.ids if 3 not in ds.labels(i))
    bad = ds.gt(wrong).copy()
    bad[:2, :2] = 3  # a class the image does not have
    save_label(labels / f"{wrong}.png", bad)
    with pytest.raises(WsssError, match=f"{wrong}.png"):
        crf_refine(ds, tmp_path / "o2", labels_dir=labels, progress=False)
