"""Affinity labels (classic and saliency-aware), path affinities, pair targets, the loss,
aligned augmentation, and the affinity trainer end to end on the tiny dataset."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from wsss.cam.base import CamTrainConfig
from wsss.data import build_dataset
from wsss.io import IGNORE, WsssError, load_cam, load_label, read_json, save_cam
from wsss.models.affinity import (
    AffinityNet,
    half_offsets,
    load_affinity_model,
    path_affinity,
    path_points,
)
from wsss.pseudo.affinity import (
    affinity_loss,
    augment_with_label,
    classic_affinity_label,
    labels_to_grid,
    make_affinity_labels,
    pair_labels,
    saliency_affinity_label,
    train_affinity,
)
from wsss.pseudo.random_walk import refine_cams


# --------------------------------------------------------------------------- labels
def _two_boxes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 20×24 scene: class 2 box (core CAM 0.9, fringe 0.2), class 5 box (CAM 0.35),
    a faint patch (0.03) elsewhere; keys (2, 5)."""
    cam = np.zeros((2, 20, 24), np.float32)
    cam[0, 2:12, 2:12] = 0.2  # fringe: between the two thresholds
    cam[0, 4:10, 4:10] = 0.9  # core
    cam[1, 12:18, 14:22] = 0.35
    cam[1, 0:2, 20:24] = 0.03  # below both thresholds
    image = np.full((20, 24, 3), 30, np.uint8)
    image[2:12, 2:12] = (120, 120, 40)
    image[4:10, 4:10] = (220, 40, 40)
    image[12:18, 14:22] = (40, 40, 220)
    return cam, np.array([2, 5]), image


def test_classic_labels_by_hand():
    cam, keys, _ = _two_boxes()
    label = classic_affinity_label(cam, keys, fg_threshold=0.30, bg_threshold=0.05, crf=False)
    expected = np.zeros((20, 24), np.uint8)
    expected[2:12, 2:12] = IGNORE  # fg says background, bg (0.05) does not: uncertain
    expected[4:10, 4:10] = 2
    expected[12:18, 14:22] = 5
    np.testing.assert_array_equal(label, expected)
    # a CAM exactly at the threshold does not beat the background (ties go to background)
    cam[1, 12:18, 14:22] = 0.30
    label = classic_affinity_label(cam, keys, crf=False)
    assert np.all(label[12:18, 14:22] == IGNORE)


def test_saliency_labels_by_hand():
    cam, keys, _ = _two_boxes()
    cam[1, 12:18, 14:22] = 0.6
    sal = np.zeros((20, 24), np.float32)
    sal[2:12, 2:12] = 0.8  # class 2's box is salient: core → 2, fringe (weak CAM) → uncertain
    sal[12:18, 14:18] = 0.5  # half of class 5's box is salient
    sal[0:2, 0:4] = 0.10  # exactly at the threshold: not salient
    sal[18:20, 0:4] = 0.9  # salient, no CAM: uncertain
    label = saliency_affinity_label(cam, keys, sal, sal_threshold=0.10, cam_threshold=0.40, crf=False)
    expected = np.zeros((20, 24), np.uint8)
    expected[2:12, 2:12] = IGNORE
    expected[4:10, 4:10] = 2
    expected[12:18, 14:18] = 5  # salient and CAM 0.6 > 0.4
    expected[18:20, 0:4] = IGNORE
    # the non-salient half of class 5's box stays background: seeds only grow inside the mask
    np.testing.assert_array_equal(label, expected)


@pytest.mark.parametrize("mode", ["classic", "saliency"])
def test_labels_with_crf_are_valid_and_keep_confident_cores(mode):
    pytest.importorskip("pydensecrf")
    cam, keys, image = _two_boxes()
    cam[1, 12:18, 14:22] = 0.6
    if mode == "classic":
        label = classic_affinity_label(cam, keys, image)
    else:
        sal = np.zeros((20, 24), np.float32)
        sal[2:12, 2:12] = sal[12:18, 14:22] = 0.9
        label = saliency_affinity_label(cam, keys, sal, image)
    assert label.shape == (20, 24) and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 2, 5, IGNORE}
    assert np.all(label[5:9, 5:9] == 2) and np.all(label[14:16, 16:20] == 5)


def _gt_cams(dataset, cam_dir):
    for image_id in dataset.ids:
        gt = dataset.gt(image_id)
        keys = dataset.labels(image_id)
        save_cam(cam_dir / f"{image_id}.npz", keys, np.stack([(gt == k) * 0.9 for k in keys]))


def test_make_affinity_labels_stage(voc_like, tmp_path):
    dataset = build_dataset("synthetic", voc_like, "val")
    _gt_cams(dataset, tmp_path / "cams")
    out = make_affinity_labels(dataset, tmp_path / "cams", tmp_path / "aff", crf=False, progress=False)
    for image_id in dataset.ids:
        label = load_label(out / f"{image_id}.png", dataset.num_classes)
        _, cam = load_cam(tmp_path / "cams" / f"{image_id}.npz")
        expected = classic_affinity_label(cam, dataset.labels(image_id), crf=False)
        np.testing.assert_array_equal(label, expected)
        np.testing.assert_array_equal(label, dataset.gt(image_id))  # a perfect CAM gives the GT back
    assert read_json(out / "run.json")["config"]["mode"] == "classic"
    with pytest.raises(WsssError, match="fg_threshold"):
        make_affinity_labels(dataset, tmp_path / "cams", out, fg_threshold=0.5, crf=False, progress=False)
    with pytest.raises(WsssError, match="saliency folder"):
        make_affinity_labels(dataset, tmp_path / "cams", tmp_path / "s", mode="saliency", progress=False)
    sal_out = make_affinity_labels(
        dataset,
        tmp_path / "cams",
        tmp_path / "aff_sal",
        mode="saliency",
        saliency_dir=voc_like / "saliency" / "oracle",
        crf=False,
        progress=False,
    )
    image_id = dataset.ids[0]
    np.testing.assert_array_equal(load_label(sal_out / f"{image_id}.png"), dataset.gt(image_id))


# --------------------------------------------------------------------------- paths and pairs
def _near_line(dy: int, dx: int, y: int, x: int) -> bool:
    """Is cell (y, x) in the box of (0,0)–(dy,dx) and its centre under one cell from the line? (exact)"""
    in_box = min(0, dy) <= y <= max(0, dy) and min(0, dx) <= x <= max(0, dx)
    return in_box and Fraction((dy * x - dx * y) ** 2, dy * dy + dx * dx) < 1


def test_path_points_are_the_cells_within_one_cell_of_the_segment():
    # IRN's rule (misc/indexing.py); tests/test_parity_random_walk.py holds IRN's own sets
    for dy, dx in half_offsets(6):
        expected = {(y, x) for y in range(-1, 7) for x in range(-7, 7) if _near_line(dy, dx, y, x)}
        assert set(path_points(dy, dx)) == expected, (dy, dx)
    assert path_points(1, 2) == ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2))  # the whole 2×3 box
    # the 3×4 box less (0, 2), (2, 1) (√(16/13) from the line) and (0, 3), (2, 0) (√(36/13))
    assert path_points(2, 3) == ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3), (2, 2), (2, 3))


def test_half_offsets_cover_the_disk_once():
    offsets = half_offsets(10)
    both = set(offsets) | {(-dy, -dx) for dy, dx in offsets}
    disk = {(dy, dx) for dy in range(-9, 10) for dx in range(-9, 10) if 0 < dy * dy + dx * dx < 100}
    assert both == disk and len(offsets) == len(disk) // 2 == 152


def test_a_wall_of_edges_cuts_the_affinity_across_it():
    edge = torch.zeros(12, 20)
    edge[:, 10] = 1.0
    radius = 4
    aff = path_affinity(edge, radius)
    offsets = half_offsets(radius)
    assert aff.shape == (len(offsets), 12 - 3, 20 - 6)
    src_x = torch.arange(20 - 6) + 3  # source columns
    for o, (_dy, dx) in enumerate(offsets):
        lo, hi = torch.minimum(src_x, src_x + dx), torch.maximum(src_x, src_x + dx)
        crosses = (lo <= 10) & (hi >= 10)
        expected = torch.where(crosses, 0.0, 1.0).expand(12 - 3, -1)
        torch.testing.assert_close(aff[o], expected)


def test_a_diagonal_wall_is_not_slipped_through():
    edge = torch.zeros(4, 6)
    edge[1, 3] = edge[2, 2] = 1.0  # two edge cells meeting at a corner
    aff = path_affinity(edge, radius=2)  # offsets (0,1) (1,−1) (1,0) (1,1); sources x in 1..4
    index = half_offsets(2).index((1, 1))
    assert aff[index, 1, 1].item() == 0.0  # (1,2)→(2,3) passes the corner between the two
    assert aff[index, 0, 0].item() == 1.0  # (0,1)→(1,2) touches neither


def test_labels_to_grid_takes_cell_centres():
    label = np.arange(54, dtype=np.uint8).reshape(6, 9)
    grid = labels_to_grid(label)
    np.testing.assert_array_equal(grid, [[20, 24, IGNORE], [IGNORE, IGNORE, IGNORE]])
    torch.testing.assert_close(labels_to_grid(torch.from_numpy(label)), torch.from_numpy(grid))


def test_pair_labels_and_loss_by_hand():
    grid = torch.tensor([[[0, 0, 0], [1, 255, 1]], [[3, 1, 1], [1, 2, 255]]])
    bg_pos, fg_pos, neg = pair_labels(grid, radius=2)  # one source (0, 1); offsets (0,1) (1,−1) (1,0) (1,1)
    assert bg_pos[:, :, 0, 0].tolist() == [[True, False, False, False], [False] * 4]
    assert fg_pos[:, :, 0, 0].tolist() == [[False] * 4, [True, True, False, False]]
    assert neg[:, :, 0, 0].tolist() == [[False, True, False, True], [False, False, True, False]]
    aff = torch.tensor([[0.8, 0.3, 0.5, 0.1], [0.6, 0.9, 0.2, 0.7]]).view(2, 4, 1, 1).requires_grad_()
    losses = affinity_loss(aff, bg_pos, fg_pos, neg)
    eps = 1e-5
    bg = -math.log(0.8 + eps)
    fg = (-math.log(0.6 + eps) - math.log(0.9 + eps)) / 2
    ng = (-math.log(1 + eps - 0.3) - math.log(1 + eps - 0.1) - math.log(1 + eps - 0.2)) / 3
    assert losses["bg_pos"].item() == pytest.approx(bg * 1 / (1 + eps), rel=1e-5)
    assert losses["fg_pos"].item() == pytest.approx(fg * 2 / (2 + eps), rel=1e-5)
    assert losses["neg"].item() == pytest.approx(ng * 3 / (3 + eps), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(bg / 4 + fg / 4 + ng / 2, rel=1e-4)
    losses["loss"].backward()
    # the ignored pairs (a 255 end) get no gradient at all
    assert aff.grad[0, 2].item() == 0.0 and aff.grad[1, 3].item() == 0.0
    assert aff.grad[0, 0].item() < 0 and aff.grad[0, 1].item() > 0  # pull positives up, negatives down


def test_loss_with_no_pairs_of_a_kind_is_finite():
    grid = torch.zeros(1, 4, 6, dtype=torch.long)  # background only: no fg_pos, no neg
    aff = torch.full((1, len(half_offsets(2)), 3, 4), 0.5)
    losses = affinity_loss(aff, *pair_labels(grid, 2))
    assert losses["fg_pos"].item() == 0 and losses["neg"].item() == 0
    assert losses["loss"].item() == pytest.approx(-math.log(0.5 + 1e-5) / 4, rel=1e-4)


def test_gradients_reach_the_edge_head_and_the_backbone():
    torch.manual_seed(0)
    net = AffinityNet("resnet18")
    logits = net(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1, 16, 16)
    grid = torch.from_numpy(np.random.default_rng(0).choice([0, 1, 2, 255], size=(2, 16, 16)))
    losses = affinity_loss(path_affinity(torch.sigmoid(logits)[:, 0], 5), *pair_labels(grid, 5))
    assert all(math.isfinite(v.item()) for v in losses.values())
    losses["loss"].backward()
    for p in (net.fuse.weight, net.sides[0][0].weight, next(net.backbone.parameters())):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_frozen_backbone_stays_fixed_in_train_mode():
    net = AffinityNet("resnet18", frozen_backbone=True).train()
    backbone, head = net.param_groups()
    assert backbone == [] and head and not any(p.requires_grad for p in net.backbone.parameters())
    assert not net.backbone.training and net.sides.training


# --------------------------------------------------------------------------- data + training
def test_augment_with_label_keeps_image_and_label_aligned():
    rng = np.random.default_rng(0)
    label = np.repeat(np.repeat(rng.integers(0, 3, (5, 6)), 8, 0), 8, 1).astype(np.uint8)  # 40×48 blocks
    image = np.stack([label * 100] * 3, axis=-1).astype(np.uint8)
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    for seed in range(4):
        img, lab = augment_with_label(
            image, label, np.random.default_rng(seed), 56, (1.0, 1.0), True, mean, std
        )
        inside = lab != IGNORE
        np.testing.assert_array_equal(np.rint(img[0][inside] * 255 / 100), lab[inside])
        assert np.all(img[:, ~inside] == 0)  # padding: zeros in the image, 255 in the label
        img, lab = augment_with_label(
            image, label, np.random.default_rng(seed), 64, (2.0, 2.0), True, mean, std
        )
        ok = (lab != IGNORE) & (np.abs(img[0] * 255 / 100 - np.rint(img[0] * 255 / 100)) < 0.01)
        assert ok.mean() > 0.5  # rescaled: away from block edges the image still shows the label
        np.testing.assert_array_equal(np.rint(img[0][ok] * 255 / 100), lab[ok])


TINY = {
    "backbone": "resnet18",
    "epochs": 1,
    "batch_size": 4,
    "crop_size": 64,
    "optimizer": "adamw",
    "num_workers": 0,
    "checkpoint_every": 1000,
    "method_options": {"radius": 5},
}


def test_train_affinity_then_refine(voc_like, tmp_path):
    dataset = build_dataset("synthetic", voc_like, "train")
    _gt_cams(dataset, tmp_path / "cams")
    labels = make_affinity_labels(dataset, tmp_path / "cams", tmp_path / "aff", crf=False, progress=False)
    config = CamTrainConfig(**TINY)
    model_path = train_affinity(dataset, labels, tmp_path / "net", config, progress=False)
    assert model_path == tmp_path / "net" / "model.safetensors"
    meta = read_json(model_path.with_suffix(".json"))
    assert meta["format"] == "wsss-affinity-1" and meta["radius"] == 5 and meta["backbone"] == "resnet18"
    record = read_json(tmp_path / "net" / "run.json")
    assert record["steps"] == 2 and math.isfinite(record["final_loss"])
    model = load_affinity_model(model_path)
    assert not model.training
    assert train_affinity(dataset, labels, tmp_path / "net", config, progress=False) == model_path  # skip
    ids = dataset.ids[:3]
    out = refine_cams(dataset, tmp_path / "cams", model_path, tmp_path / "rw", ids=ids, progress=False)
    for image_id in ids:
        keys, cam = load_cam(out / f"{image_id}.npz", shape=(64, 64), num_classes=dataset.num_classes)
        np.testing.assert_array_equal(keys, dataset.labels(image_id))
        assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1


def test_trainer_refuses_missing_labels_and_small_crops(voc_like, tmp_path):
    dataset = build_dataset("synthetic", voc_like, "train")
    (tmp_path / "aff").mkdir()
    with pytest.raises(WsssError, match="affinity label not found"):
        train_affinity(dataset, tmp_path / "aff", tmp_path / "net", CamTrainConfig(**TINY), progress=False)
    small = CamTrainConfig(**{**TINY, "crop_size": 32, "method_options": {"radius": 10}})
    with pytest.raises(WsssError, match="too small for affinity radius 10"):
        train_affinity(dataset, tmp_path / "aff", tmp_path / "net", small, progress=False)
    with pytest.raises(WsssError, match="unknown affinity option"):
        bad = CamTrainConfig(**{**TINY, "method_options": {"radious": 5}})
        train_affinity(dataset, tmp_path / "aff", tmp_path / "net", bad, progress=False)
