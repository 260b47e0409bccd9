"""Algorithm 1 (threshold + saliency pseudo labels) and the pseudo-label stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsss.data import build_dataset
from wsss.io import WsssError, load_label, save_cam, save_label, save_saliency
from wsss.pseudo.threshold import make_pseudo_labels, threshold_pseudo_label

# --------------------------------------------------------------------------- hand-computed cases
# keys [2, 5]; rows: class 2's CAM, class 5's CAM
CAM_3X3 = np.array(
    [
        [[0.90, 0.20, 0.50], [0.30, 0.00, 0.70], [0.31, 0.60, 0.10]],
        [[0.10, 0.25, 0.50], [0.80, 0.30, 0.90], [0.20, 0.60, 0.35]],
    ],
    dtype=np.float32,
)
KEYS = np.array([2, 5])
# saliency 0.2 is not salient (strictly above the threshold counts), 0.21 is
SAL_3X3 = np.array([[1.0, 1.0, 0.0], [0.5, 0.21, 0.2], [0.0, 0.9, 1.0]], dtype=np.float32)


def test_without_saliency_background_is_tau():
    # (0,1): max 0.25 <= τ; (1,1): 0.30 is not > τ = 0.3; (0,2), (2,1): ties go to the first key
    expected = np.array([[2, 0, 2], [5, 0, 5], [2, 2, 5]], dtype=np.uint8)
    out = threshold_pseudo_label(CAM_3X3, KEYS, 0.3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_without_saliency_low_and_high_tau():
    # at τ = 0.05 every pixel has a CAM above τ, so only the class comparison (and its ties) matters
    np.testing.assert_array_equal(
        threshold_pseudo_label(CAM_3X3, KEYS, 0.05), [[2, 5, 2], [5, 5, 5], [2, 2, 5]]
    )
    assert (threshold_pseudo_label(CAM_3X3, KEYS, 0.95) == 0).all()


def test_with_saliency_ignore_on_and_off():
    # non-salient pixels: background score 1 beats every CAM <= 1; salient pixels: score 0, so any
    # CAM >= τ wins (WSSS-BED's code zeroes only CAMs below τ: (1,1)'s 0.30 keeps class 5);
    # salient pixels left as background become 255 when ignoring
    with_ignore = np.array([[2, 255, 0], [5, 5, 0], [0, 2, 5]], dtype=np.uint8)
    without = np.array([[2, 0, 0], [5, 5, 0], [0, 2, 5]], dtype=np.uint8)
    np.testing.assert_array_equal(threshold_pseudo_label(CAM_3X3, KEYS, 0.3, SAL_3X3), with_ignore)
    np.testing.assert_array_equal(
        threshold_pseudo_label(CAM_3X3, KEYS, 0.3, SAL_3X3, ignore_salient_bg=False), without
    )


def test_strict_tau_is_the_papers_pseudocode():
    # the paper keeps a class score only where CAM > τ: (1,1)'s 0.30 = τ becomes background (255)
    np.testing.assert_array_equal(
        threshold_pseudo_label(CAM_3X3, KEYS, 0.3, SAL_3X3, strict_tau=True),
        [[2, 255, 0], [5, 255, 0], [0, 2, 5]],
    )
    # without saliency both versions need CAM > τ (the background score τ wins the tie)
    np.testing.assert_array_equal(
        threshold_pseudo_label(CAM_3X3, KEYS, 0.3, strict_tau=True),
        threshold_pseudo_label(CAM_3X3, KEYS, 0.3),
    )


def test_class_ties_go_to_the_lowest_id_whatever_the_key_order():
    cam = np.array([[[0.5, 0.7]], [[0.5, 0.6]]], dtype=np.float32)
    np.testing.assert_array_equal(threshold_pseudo_label(cam, [9, 4], 0.2), [[4, 9]])
    np.testing.assert_array_equal(threshold_pseudo_label(cam[::-1], [4, 9], 0.2), [[4, 9]])


def test_png_cam_equal_to_tau_is_a_tie_in_float32():
    # 51/255 is τ = 0.2 in float32 (as WSSS-BED reads its PNGs), even when τ comes as a float64
    cam = np.full((1, 1, 2), np.float32(51) / np.float32(255))
    sal = np.array([[1.0, 0.0]], np.float32)
    for tau in (0.2, np.float64(0.2)):
        np.testing.assert_array_equal(threshold_pseudo_label(cam, [3], tau), [[0, 0]])
        np.testing.assert_array_equal(threshold_pseudo_label(cam, [3], tau, sal), [[3, 0]])
        np.testing.assert_array_equal(threshold_pseudo_label(cam, [3], tau, sal, strict_tau=True), [[255, 0]])


def test_saliency_threshold_is_a_parameter():
    # at threshold 0.6 only the 1.0 and 0.9 pixels are salient
    out = threshold_pseudo_label(CAM_3X3, KEYS, 0.3, SAL_3X3, sal_threshold=0.6)
    np.testing.assert_array_equal(out, [[2, 255, 0], [0, 0, 0], [0, 2, 5]])


def test_cam_equal_to_one_ties_with_non_salient_background():
    cam = np.array([[[1.0, 1.2, 0.9, 0.9]]], dtype=np.float32)
    sal = np.array([[0.0, 0.0, 1.0, 0.0]], dtype=np.float32)
    # 1.0 ties with the background score 1 (background wins); an unnormalised 1.2 beats it
    np.testing.assert_array_equal(threshold_pseudo_label(cam, [7], 0.5, sal), [[0, 7, 7, 0]])


def test_4x4_three_classes_and_absent_classes():
    cam = np.zeros((3, 4, 4), np.float32)
    cam[0, :2, :2] = 0.8  # class 1 top-left
    cam[1, :2, 2:] = 0.4  # class 4 top-right, weak
    cam[2, 2:, :] = 0.6  # class 9 bottom half
    cam[0, 3, 3] = 0.7  # at (3,3) class 1's 0.7 beats class 9's 0.6
    out = threshold_pseudo_label(cam, [1, 4, 9], 0.5)
    expected = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [9, 9, 9, 9], [9, 9, 9, 1]], dtype=np.uint8)
    np.testing.assert_array_equal(out, expected)
    # classes outside the keys never appear, whatever the CAM values
    assert set(np.unique(out).tolist()) <= {0, 1, 4, 9}
    np.testing.assert_array_equal(
        threshold_pseudo_label(cam, [1, 4, 9], 0.3)[:2, 2:], [[4, 4], [4, 4]]
    )  # the weak class appears once τ is below it


def test_no_classes_gives_background_and_ignore():
    cam = np.zeros((0, 2, 3), np.float32)
    assert (threshold_pseudo_label(cam, [], 0.2) == 0).all()
    sal = np.array([[1, 0, 1], [0, 0, 1]], np.float32)
    np.testing.assert_array_equal(threshold_pseudo_label(cam, [], 0.2, sal), [[255, 0, 255], [0, 0, 255]])


def test_bad_arguments():
    with pytest.raises(ValueError, match="len\\(keys\\)"):
        threshold_pseudo_label(CAM_3X3, [1], 0.3)
    with pytest.raises(ValueError, match="saliency shape"):
        threshold_pseudo_label(CAM_3X3, KEYS, 0.3, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="tau"):
        threshold_pseudo_label(CAM_3X3, KEYS, -0.1)
    with pytest.raises(ValueError, match="1..254"):
        threshold_pseudo_label(CAM_3X3, [0, 2], 0.3)


# --------------------------------------------------------------------------- independent re-implementation
def algorithm1_loop(cam, keys, tau, saliency=None, sal_threshold=0.2, ignore_salient_bg=True, strict=False):
    """Seed 000's Algorithm 1 as WSSS-BED's code runs it, one class at a time (in id order): a
    running best score where only a strictly higher score replaces the current winner (so
    background, then lower ids, win ties). With saliency a class score is zeroed below τ (at or
    below τ when ``strict``, the paper's pseudocode); without, the background score τ does it."""
    cam = np.asarray(cam, dtype=np.float32)
    h, w = cam.shape[1:]
    if saliency is None:
        best = np.full((h, w), tau, np.float32)
    else:
        salient = np.asarray(saliency) > sal_threshold
        best = 1.0 - salient.astype(np.float32)
    label = np.zeros((h, w), np.uint8)
    for c in np.argsort(keys, kind="stable"):
        key = keys[c]
        if saliency is None:
            score = cam[c]
        elif strict:
            score = np.where(cam[c] > np.float32(tau), cam[c], 0.0)
        else:
            score = np.where(cam[c] < np.float32(tau), 0.0, cam[c])
        better = score > best
        best = np.where(better, score, best)
        label = np.where(better, key, label).astype(np.uint8)
    if saliency is not None and ignore_salient_bg:
        label[salient & (label == 0)] = 255
    return label


@pytest.mark.parametrize("seed", range(6))
def test_matches_straightforward_loop_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(0, 5))
    h, w = (int(v) for v in rng.integers(5, 40, size=2))
    keys = rng.choice(np.arange(1, 81), size=k, replace=False)  # not sorted: ties go to the lowest id
    # coarse values so that ties (between classes, with τ and with the threshold) really happen
    cam = (rng.integers(0, 21, size=(k, h, w)) / 20).astype(np.float16 if seed % 2 else np.float32)
    saliency = (rng.integers(0, 11, size=(h, w)) / 10).astype(np.float32)
    for tau in (0.0, 0.1, 0.25, 0.5, 0.95):
        for sal in (None, saliency):
            for ignore in (True, False):
                for strict in (False, True):
                    got = threshold_pseudo_label(cam, keys, tau, sal, 0.2, ignore, strict)
                    want = algorithm1_loop(cam, keys, tau, sal, 0.2, ignore, strict)
                    np.testing.assert_array_equal(
                        got, want, err_msg=f"tau={tau} sal={sal is not None} ignore={ignore} strict={strict}"
                    )


# --------------------------------------------------------------------------- the stage
def _write_cams(ds, cam_dir: Path, seed: int = 0) -> None:
    """CAMs that follow the GT boxes with noise: strong inside the object, weak outside."""
    rng = np.random.default_rng(seed)
    for image_id in ds.ids:
        gt = ds.gt(image_id)
        keys = ds.labels(image_id)
        cam = np.stack([np.where(gt == k, 0.5, 0.0) + 0.5 * rng.random(gt.shape) for k in keys])
        save_cam(cam_dir / f"{image_id}.npz", keys, cam)


@pytest.fixture()
def stage_setup(voc_like, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    cam_dir = tmp_path / "cams"
    _write_cams(ds, cam_dir)
    return ds, cam_dir, voc_like / "saliency" / "oracle"


def _expected(ds, cam_dir, image_id, tau, sal_dir=None):
    from wsss.io import load_cam, load_saliency

    keys, cam = load_cam(cam_dir / f"{image_id}.npz")
    sal = None if sal_dir is None else load_saliency(sal_dir / f"{image_id}.png")
    return threshold_pseudo_label(cam, keys, tau, sal)


def test_stage_writes_labels_and_run_json(stage_setup, tmp_path):
    ds, cam_dir, sal_dir = stage_setup
    out = make_pseudo_labels(ds, cam_dir, tmp_path / "pseudo", 0.6, saliency_dir=sal_dir, progress=False)
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(ds.ids)
    for image_id in ds.ids:
        got = load_label(out / f"{image_id}.png", ds.num_classes)
        np.testing.assert_array_equal(got, _expected(ds, cam_dir, image_id, 0.6, sal_dir))
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "pseudo"
    cfg = run["config"]
    assert cfg["tau"] == 0.6 and cfg["saliency_dir"] == str(sal_dir) and cfg["sal_threshold"] == 0.2
    assert cfg["ignore_salient_bg"] is True and cfg["split"] == "train" and cfg["cam_dir"] == str(cam_dir)
    assert run["written"] == len(ds.ids)


def test_stage_resumes(stage_setup, tmp_path):
    ds, cam_dir, _ = stage_setup
    out = tmp_path / "pseudo"
    make_pseudo_labels(ds, cam_dir, out, 0.6, progress=False)
    keep, redo = ds.ids[0], ds.ids[1]
    sentinel = np.full(ds.gt(keep).shape, 3, np.uint8)
    save_label(out / f"{keep}.png", sentinel)
    (out / f"{redo}.png").unlink()
    make_pseudo_labels(ds, cam_dir, out, 0.6, progress=False)
    np.testing.assert_array_equal(load_label(out / f"{keep}.png"), sentinel)  # existing output untouched
    np.testing.assert_array_equal(load_label(out / f"{redo}.png"), _expected(ds, cam_dir, redo, 0.6))
    run = json.loads((out / "run.json").read_text())
    assert run["written"] == 1 and run["skipped_existing"] == len(ds.ids) - 1


def test_stage_refuses_to_mix_settings(stage_setup, tmp_path):
    ds, cam_dir, _ = stage_setup
    out = tmp_path / "pseudo"
    make_pseudo_labels(ds, cam_dir, out, 0.6, progress=False)
    (out / "run.json").unlink()  # as if the first run had been killed before its record
    with pytest.raises(
        WsssError,
        match=r"pseudo/settings\.json: this folder holds pseudo outputs .*tau: 0\.6 → 0\.4.*--force",
    ):
        make_pseudo_labels(ds, cam_dir, out, 0.4, progress=False)
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    make_pseudo_labels(ds, cam_dir, out, 0.4, progress=False, force=True)  # recomputes every label
    after = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert (
        set(after) == set(before)
        and json.loads((out / "settings.json").read_text())["settings"]["tau"] == 0.4
    )
    fresh = make_pseudo_labels(ds, cam_dir, tmp_path / "fresh", 0.4, progress=False)
    assert after == {p.name: p.read_bytes() for p in fresh.glob("*.png")}


def test_stage_shards_cover_the_split_once(stage_setup, tmp_path):
    ds, cam_dir, sal_dir = stage_setup
    whole = make_pseudo_labels(ds, cam_dir, tmp_path / "whole", 0.5, saliency_dir=sal_dir, progress=False)
    sharded = tmp_path / "sharded"
    make_pseudo_labels(ds, cam_dir, sharded, 0.5, saliency_dir=sal_dir, shard="0/3", progress=False)
    first = {p.stem for p in sharded.glob("*.png")}
    assert first == set(ds.ids[0::3])
    make_pseudo_labels(ds, cam_dir, sharded, 0.5, saliency_dir=sal_dir, shard=(1, 3), progress=False)
    make_pseudo_labels(ds, cam_dir, sharded, 0.5, saliency_dir=sal_dir, shard="2/3", progress=False)
    assert sorted(p.stem for p in sharded.glob("*.png")) == sorted(ds.ids)
    for image_id in ds.ids:
        np.testing.assert_array_equal(
            load_label(sharded / f"{image_id}.png"), load_label(whole / f"{image_id}.png")
        )
    assert {p.name for p in sharded.glob("run*.json")} == {f"run.shard{i}of3.json" for i in range(3)}
    with pytest.raises(WsssError, match="i/N"):
        make_pseudo_labels(ds, cam_dir, sharded, 0.5, shard="3", progress=False)


def test_stage_reads_wsss_bed_pngs(stage_setup, tmp_path):
    ds, cam_dir, _ = stage_setup
    from PIL import Image

    from wsss.io import load_cam

    bed = tmp_path / "bed"
    bed.mkdir()
    for image_id in ds.ids:
        keys, cam = load_cam(cam_dir / f"{image_id}.npz")
        for k, m in zip(keys, cam, strict=True):
            Image.fromarray(np.rint(m * 255).astype(np.uint8), "L").save(bed / f"{image_id}_{k - 1}.png")
    out = make_pseudo_labels(ds, bed, tmp_path / "pseudo", 0.6, progress=False)
    image_id = ds.ids[0]
    keys, cam = load_cam(bed / image_id)
    np.testing.assert_array_equal(load_label(out / f"{image_id}.png"), threshold_pseudo_label(cam, keys, 0.6))


def test_stage_errors_name_the_file(stage_setup, tmp_path):
    ds, cam_dir, _ = stage_setup
    bad = tmp_path / "bad_cams"
    _write_cams(ds, bad)
    victim = ds.ids[2]
    shape = ds.gt(victim).shape
    wrong = [k for k in range(1, ds.num_classes) if k not in ds.labels(victim)][:1]
    save_cam(bad / f"{victim}.npz", np.array(wrong), np.zeros((1, *shape)))
    with pytest.raises(WsssError, match=rf"^{bad / victim}\.npz: CAM classes \[{wrong[0]}\] do not match"):
        make_pseudo_labels(ds, bad, tmp_path / "p1", 0.5, progress=False)

    (bad / f"{victim}.npz").unlink()
    with pytest.raises(WsssError, match=rf"^{bad / victim}\.npz: CAM file not found"):
        make_pseudo_labels(ds, bad, tmp_path / "p2", 0.5, progress=False)

    sal = tmp_path / "sal"
    for image_id in ds.ids:
        save_saliency(sal / f"{image_id}.png", np.zeros((8, 8), np.float32))
    with pytest.raises(WsssError, match=rf"^{sal / ds.ids[0]}\.png: size 8×8 does not match"):
        make_pseudo_labels(ds, cam_dir, tmp_path / "p3", 0.5, saliency_dir=sal, progress=False)

    with pytest.raises(WsssError, match=rf"^{tmp_path / 'nowhere'}: CAM folder not found"):
        make_pseudo_labels(ds, tmp_path / "nowhere", tmp_path / "p4", 0.5, progress=False)
