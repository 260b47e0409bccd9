"""τ sweep: a constructed case with a known best τ, an independent mIoU, workers, outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from wsss.data import build_dataset
from wsss.io import WsssError, load_cam, load_label, load_saliency, save_cam
from wsss.metrics.confusion import ConfusionMetric
from wsss.pseudo.sweep import default_taus, sweep_tau, write_sweep
from wsss.pseudo.tau_histogram import TauHistogram, pixel_terms
from wsss.pseudo.threshold import make_pseudo_labels, threshold_pseudo_label

STRONG, WEAK, RING, FAR = 0.72, 0.47, 0.42, 0.10


def _constructed_cams(ds, cam_dir):
    """Objects: a checkerboard of STRONG and WEAK CAM; a 2-px ring around the objects at RING
    (false positives once τ < RING); elsewhere FAR. Without saliency only τ in (RING, WEAK) is
    perfect, so on the default grid the best τ is 0.45, uniquely."""
    for image_id in ds.ids:
        gt = ds.gt(image_id)
        fg = gt > 0
        ring = ndimage.binary_dilation(fg, iterations=2) & ~fg
        yy, xx = np.indices(gt.shape)
        checker = np.where((yy + xx) % 2 == 0, STRONG, WEAK)
        keys = ds.labels(image_id)
        cam = np.stack([np.where(gt == k, checker, np.where(ring, RING, FAR)) for k in keys])
        save_cam(cam_dir / f"{image_id}.npz", keys, cam)


@pytest.fixture(scope="module")
def sweep_setup(voc_like, tmp_path_factory):
    ds = build_dataset("synthetic", voc_like, "train")
    cam_dir = tmp_path_factory.mktemp("sweep_cams")
    _constructed_cams(ds, cam_dir)
    return ds, cam_dir, {"none": None, "oracle": voc_like / "saliency" / "oracle"}


@pytest.fixture(scope="module")
def result(sweep_setup):
    ds, cam_dir, sources = sweep_setup
    return sweep_tau(ds, cam_dir, saliency_dirs=sources, progress=False)


def _miou_by_hand(ds, cam_dir, tau, sal_dir):
    """mIoU from one confusion matrix over the split; a 255 prediction is a miss of its GT class."""
    k = ds.num_classes
    conf = np.zeros((k, k + 1), np.int64)  # last column: no prediction
    for image_id in ds.ids:
        keys, cam = load_cam(cam_dir / f"{image_id}.npz")
        sal = None if sal_dir is None else load_saliency(sal_dir / f"{image_id}.png")
        pred = threshold_pseudo_label(cam, keys, tau, sal).astype(np.int64)
        pred[pred == 255] = k
        gt = ds.gt(image_id).astype(np.int64)
        keep = gt != 255
        conf += np.bincount(gt[keep] * (k + 1) + pred[keep], minlength=k * (k + 1)).reshape(k, k + 1)
    ious = []
    for c in range(k):
        tp = conf[c, c]
        union = conf[c].sum() + conf[:, c].sum() - tp
        if union:
            ious.append(tp / union)
    return float(np.mean(ious))


def test_default_grid():
    assert default_taus() == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75,
                              0.8, 0.85, 0.9, 0.95]  # fmt: skip


def test_best_tau_without_saliency_is_known(result):
    r = result["sources"]["none"]
    assert r["best"]["tau"] == 0.45 and r["best"]["index"] == 8
    assert r["best"]["miou"] == pytest.approx(1.0)
    assert r["best"]["precision"] == pytest.approx(1.0) and r["best"]["recall"] == pytest.approx(1.0)
    assert r["best"]["fpr"] == pytest.approx(0.0) and r["best"]["fnr"] == pytest.approx(0.0)
    miou = np.array(r["miou"])
    assert (miou[np.arange(len(miou)) != 8] < 1.0 - 1e-6).all()  # the optimum is unique
    # τ at or above WEAK drops the weak half of every object: recall falls, precision stays
    # (mean recall ≈ (1 + 3 × 0.5) / 4; the lost pixels lower the background's precision)
    assert r["recall"][9] < 0.7 and r["precision"][9] < 1.0
    assert r["iou"][8] == pytest.approx([1.0] * result["config"]["num_classes"])


def test_oracle_saliency_prefers_the_lowest_tau(result):
    # with oracle saliency the ring is never salient, so every τ < WEAK is perfect; ties go to the smallest τ
    r = result["sources"]["oracle"]
    assert r["best"]["tau"] == 0.05 and r["best"]["miou"] == pytest.approx(1.0)
    assert np.allclose(r["miou"][:9], 1.0) and (np.array(r["miou"][9:]) < 1.0).all()


@pytest.mark.parametrize("tau_index", [0, 7, 9, 14])
def test_scores_equal_an_independent_confusion(result, sweep_setup, tau_index):
    ds, cam_dir, sources = sweep_setup
    tau = result["taus"][tau_index]
    for name, sal_dir in sources.items():
        want = _miou_by_hand(ds, cam_dir, tau, sal_dir)
        assert result["sources"][name]["miou"][tau_index] == pytest.approx(want, abs=1e-12), (name, tau)


def test_sweep_equals_the_pseudo_stage_at_tau_ties(sweep_setup, tmp_path):
    """CAMs exactly at τ (0.25 and 0.5 are exact in float16): for either tie rule the sweep
    scores the very labels that the pseudo-label stage writes at that τ."""
    ds, _, sources = sweep_setup
    cam_dir = tmp_path / "tie_cams"
    cam_dir.mkdir()
    for image_id in ds.ids:
        gt = ds.gt(image_id)
        keys = ds.labels(image_id)
        save_cam(cam_dir / f"{image_id}.npz", keys, np.stack([np.where(gt == k, 0.5, 0.25) for k in keys]))
    taus = [0.25, 0.5]
    mious = {}
    for strict in (False, True):
        r = sweep_tau(ds, cam_dir, taus=taus, saliency_dirs=sources, strict_tau=strict, progress=False)
        assert r["config"]["strict_tau"] is strict
        for name, sal_dir in sources.items():
            for i, tau in enumerate(taus):
                out = make_pseudo_labels(ds, cam_dir, tmp_path / f"p{strict:d}_{name}_{tau}", tau,
                                         saliency_dir=sal_dir, strict_tau=strict, progress=False)  # fmt: skip
                m = ConfusionMetric(ds.num_classes)
                for image_id in ds.ids:
                    m.process(load_label(out / f"{image_id}.png"), ds.gt(image_id))
                want = m.compute()
                assert r["sources"][name]["miou"][i] == want["miou"], (strict, name, tau)
                np.testing.assert_array_equal(r["sources"][name]["iou"][i], want["iou"])
                mious[strict, name, tau] = want["miou"]
    # the tie rule matters only with saliency: the oracle's object pixels sit exactly at τ = 0.5
    assert mious[False, "oracle", 0.5] != mious[True, "oracle", 0.5]
    assert mious[False, "none", 0.5] == mious[True, "none", 0.5]


def test_workers_equal_single_process(result, sweep_setup):
    ds, cam_dir, sources = sweep_setup
    parallel = sweep_tau(ds, cam_dir, saliency_dirs=sources, workers=2, progress=False)
    assert parallel["sources"] == result["sources"]
    assert parallel["config"] == {**result["config"], "workers": 2}


def test_ids_subset_and_custom_taus(sweep_setup):
    ds, cam_dir, _ = sweep_setup
    r = sweep_tau(ds, cam_dir, taus=[0.5, 0.45, 0.4], ids=ds.ids[:3], progress=False)
    assert r["taus"] == [0.4, 0.45, 0.5] and r["config"]["num_images"] == 3
    assert r["sources"]["none"]["best"]["tau"] == 0.45


def test_write_sweep_outputs(result, tmp_path):
    out = write_sweep(result, tmp_path / "sweep")
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 19
    best_rows = {(r["source"], r["tau"]) for r in rows if r["best"] == "1"}
    assert best_rows == {("none", "0.45"), ("oracle", "0.05")}
    row = next(r for r in rows if r["source"] == "none" and r["tau"] == "0.45")
    assert float(row["miou"]) == pytest.approx(1.0) and float(row["iou_background"]) == pytest.approx(1.0)
    data = json.loads((out / "sweep.json").read_text())
    assert data["config"]["split"] == "train" and data["config"]["sal_threshold"] == 0.2
    assert data["config"]["taus"] == default_taus() and set(data["config"]["sources"]) == {"none", "oracle"}
    assert data["best"]["none"]["tau"] == 0.45 and data["best"]["oracle"]["tau"] == 0.05
    with Image.open(out / "sweep.png") as img:
        assert img.format == "PNG" and img.size[0] > 400
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "sweep" and run["best"]["none"]["tau"] == 0.45


def test_sweep_errors(sweep_setup, voc_like, tmp_path):
    ds, cam_dir, _ = sweep_setup
    with pytest.raises(WsssError, match="not in split"):
        sweep_tau(ds, cam_dir, ids=["nope"], progress=False)
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'x'}: saliency folder not found"):
        sweep_tau(ds, cam_dir, saliency_dirs={"x": tmp_path / "x"}, progress=False)
    with pytest.raises(WsssError, match=">= 0"):
        sweep_tau(ds, cam_dir, taus=[-0.1], progress=False)
    with pytest.raises(WsssError, match="device 'gpu0': expected auto, cpu or cuda"):
        sweep_tau(ds, cam_dir, device="gpu0", progress=False)
    partial = tmp_path / "partial"
    _constructed_cams(ds, partial)
    (partial / f"{ds.ids[-1]}.npz").unlink()
    with pytest.raises(WsssError, match=rf"^{partial / ds.ids[-1]}\.npz: CAM file not found"):
        sweep_tau(ds, partial, progress=False)
    with pytest.raises(WsssError, match=rf"^{partial / ds.ids[-1]}\.npz: CAM file not found"):
        sweep_tau(ds, partial, workers=2, progress=False)


@pytest.mark.parametrize("keep_at_tau", [False, True])
def test_tau_histogram_equals_per_tau_labels(keep_at_tau):
    """The cumulative histogram against labelling and scoring each τ on its own: peaks on the
    τ grid (ties), peaks that cannot win (-inf), ignore GT, and both fallbacks."""
    rng = np.random.default_rng(3)
    k, taus = 5, [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]
    hist = TauHistogram(taus, k, keep_at_tau=keep_at_tau)
    metrics = [ConfusionMetric(k) for _ in taus]
    for _ in range(4):
        shape = (17, 23)
        gt = rng.integers(0, k, shape).astype(np.uint8)
        gt[rng.random(shape) < 0.1] = 255
        top = rng.integers(1, k, shape).astype(np.uint8)
        peak = rng.choice(np.array([*taus, 0.3, 0.05, 0.9, -np.inf], np.float32), size=shape)
        fallback = np.where(rng.random(shape) < 0.4, np.uint8(255), np.uint8(0))
        hist.add([pixel_terms(gt, peak, top, fallback, k)])
        for metric, tau in zip(metrics, taus, strict=True):
            wins = peak >= np.float32(tau) if keep_at_tau else peak > np.float32(tau)
            metric.process(np.where(wins, top, fallback), gt)
    confusion, unpredicted = hist.confusions()
    for i, metric in enumerate(metrics):
        np.testing.assert_array_equal(confusion[i], metric.confusion)
        np.testing.assert_array_equal(unpredicted[i], metric.unpredicted)


def test_device_path_equals_numpy(result, sweep_setup):
    """The torch counting path (what runs on a GPU), forced onto the CPU, with and without
    DataLoader workers, gives the NumPy path's numbers exactly."""
    ds, cam_dir, sources = sweep_setup
    for workers in (0, 2):
        r = sweep_tau(ds, cam_dir, saliency_dirs=sources, device="torch-cpu", workers=workers, progress=False)
        assert r["sources"] == result["sources"]
