"""Random walk: the transition matrix by hand, propagation with an ideal affinity, dense vs
sparse walks, grid alignment, and the refine stage writing CAM files that `pseudo` reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.data import build_dataset
from wsss.io import WsssError, load_cam, load_label, read_json, save_cam
from wsss.models.affinity import AffinityNet, save_affinity_model
from wsss.pseudo.random_walk import (
    affinity_matrix,
    cam_to_grid,
    edge_map,
    random_walk,
    refine_cams,
    transition_matrix,
)
from wsss.pseudo.threshold import make_pseudo_labels


def test_affinity_matrix_without_edges_is_the_neighbourhood_by_hand():
    # radius 2 reaches the 8 neighbours (dy² + dx² < 4); no edge → affinity 1 → A = adjacency + I
    a = affinity_matrix(torch.zeros(3, 4), radius=2, beta=10.0)
    ys, xs = np.divmod(np.arange(12), 4)
    expected = (np.abs(ys[:, None] - ys[None]) <= 1) & (np.abs(xs[:, None] - xs[None]) <= 1)
    np.testing.assert_array_equal(a.numpy(), expected.astype(np.float32))


def test_affinity_matrix_is_symmetric_with_powered_path_affinities():
    torch.manual_seed(0)
    edge = torch.rand(6, 7)
    a = affinity_matrix(edge, radius=3, beta=3.0)
    torch.testing.assert_close(a, a.T)
    torch.testing.assert_close(torch.diagonal(a), torch.ones(42))
    # pair (2, 3) → (2 + 1, 3 − 2): every cell of the 2×3 box lies under one cell from the line
    # (IRN's path rule) → a = 1 − max edge over rows 2–3, columns 1–3
    worst = edge[2:4, 1:4].max()
    assert a[2 * 7 + 3, 3 * 7 + 1].item() == pytest.approx((1 - worst.item()) ** 3, rel=1e-5)
    assert a[0, 3 * 7 + 0].item() == 0.0  # (0,0)→(3,0): distance 3 is outside radius 3
    sparse = affinity_matrix(edge, radius=3, beta=3.0, sparse=True)
    torch.testing.assert_close(sparse.to_dense(), a)


def test_transition_columns_are_distributions_and_a_constant_map_stays_constant():
    torch.manual_seed(1)
    edge = torch.rand(5, 6) * 0.5
    t = transition_matrix(affinity_matrix(edge, radius=3))
    torch.testing.assert_close(t.sum(dim=0), torch.ones(30))
    t_sparse = transition_matrix(affinity_matrix(edge, radius=3, sparse=True))
    torch.testing.assert_close(t_sparse.to_dense(), t)
    # a walk step averages: a constant map (no edges to damp it) is a fixed point
    out = random_walk(torch.full((1, 5, 6), 0.7), torch.zeros(5, 6), num_squarings=3, radius=3)
    torch.testing.assert_close(out, torch.full((1, 5, 6), 0.7))


def _box_world() -> tuple[np.ndarray, torch.Tensor]:
    """Region 1 = rows 3..12 × cols 3..10 of a 16×20 grid, region 2 = the rest; the edge
    map is 1 exactly on region 1's border cells (a perfect boundary)."""
    region = np.full((16, 20), 2)
    region[3:13, 3:11] = 1
    padded = np.pad(region, 1, mode="edge")
    border = np.zeros_like(region, dtype=bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        border |= padded[1 + dy : 17 + dy, 1 + dx : 21 + dx] != region
    return region, torch.from_numpy(border.astype(np.float32))


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_ideal_affinity_spreads_each_seed_over_its_whole_region_and_nowhere_else(mode):
    region, edge = _box_world()
    wall = edge.numpy() > 0
    cams = torch.zeros(2, 16, 20)
    cams[0, 4:6, 4:6] = 1.0  # a seed in one corner of region 1 (like a CAM on a discriminative part)
    cams[1, 0:2, 16:20] = 0.8  # a seed in one corner of region 2
    out = random_walk(cams, edge, beta=10, num_squarings=8, radius=5, mode=mode).numpy()
    inner1, inner2 = (region == 1) & ~wall, (region == 2) & ~wall
    for k, inside, outside in ((0, inner1, region == 2), (1, inner2, region == 1)):
        peak = out[k].max()
        assert peak > 0
        assert out[k][inside].min() > 0.99 * peak  # the whole region, uniformly
        assert np.all(out[k][outside] == 0)  # not one cell across the boundary
        assert np.all(out[k][wall] == 0)  # boundary cells seed nothing and receive nothing
    # IRN's labelling (argmax over [0.25, maps / overall max]) then gives each region its class
    scores = out / out.max()
    label = np.where(scores.max(axis=0) > 0.25, scores.argmax(axis=0) + 1, 0)
    np.testing.assert_array_equal(label[inner1], 1)
    np.testing.assert_array_equal(label[inner2], 2)


def test_dense_squaring_and_sparse_iteration_agree():
    torch.manual_seed(2)
    edge = torch.rand(12, 14) ** 3
    cams = torch.rand(3, 12, 14)
    dense = random_walk(cams, edge, num_squarings=5, radius=4, mode="dense")
    sparse = random_walk(cams, edge, num_squarings=5, radius=4, mode="sparse")
    # the walk is float32 (32 sparse steps against 5 dense squarings): measured 1.3e-5 of the
    # largest value apart; one walk step more or less (T^31 vs T^32) moves them by 9e-3 of it
    atol = 1e-4 * float(dense.abs().max())
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=atol)


def test_bad_walk_inputs_are_refused():
    with pytest.raises(WsssError, match="edge grid"):
        random_walk(torch.zeros(1, 4, 4), torch.zeros(4, 5))
    with pytest.raises(WsssError, match=r"\[0, 1\]"):
        random_walk(torch.zeros(1, 4, 4), torch.full((4, 4), 2.0))
    with pytest.raises(WsssError, match="mode"):
        random_walk(torch.zeros(1, 4, 4), torch.zeros(4, 4), mode="fast")


def test_cam_to_grid_averages_whole_cells_and_replicates_the_border():
    cam = torch.arange(30, dtype=torch.float32).view(1, 5, 6)
    grid = cam_to_grid(cam)
    assert grid.shape == (1, 2, 2)
    assert grid[0, 0, 0].item() == pytest.approx(cam[0, :4, :4].mean().item())
    # last column of cells: columns 4, 5 and column 5 twice more (replicated)
    cols = cam[0, :4, [4, 5, 5, 5]]
    assert grid[0, 0, 1].item() == pytest.approx(cols.mean().item())
    rows = cam[0, [4, 4, 4, 4], :4]
    assert grid[0, 1, 0].item() == pytest.approx(rows.mean().item())


def test_flip_averaging_mirrors_whole_cells_even_when_the_width_is_not_a_multiple_of_4():
    torch.manual_seed(3)
    model = AffinityNet("resnet18").eval()
    grey = 128
    model.meta_info = {"mean": [grey / 255] * 3, "std": [0.229, 0.224, 0.225]}  # grey → 0, like the padding
    rng = np.random.default_rng(0)
    half = rng.integers(0, 255, (30, 12, 3), dtype=np.uint8)
    # 26 px = 2 grey + 24 mirror-symmetric columns: padded to 28 (2 zero columns) the frame is symmetric
    image = np.concatenate([np.full((30, 2, 3), grey, np.uint8), half, half[:, ::-1]], axis=1)
    edge = edge_map(model, image, flip=True)
    assert edge.shape == (8, 7)
    assert float(edge.min()) >= 0 and float(edge.max()) <= 1
    torch.testing.assert_close(edge, edge.flip(-1), atol=1e-4, rtol=0)
    plain = edge_map(model, image, flip=False)  # one pass has no reason to be symmetric
    assert float((plain - plain.flip(-1)).abs().max()) > 1e-3


def _gt_cams(dataset, cam_dir):
    """CAM files from the GT (class box 0.9, slightly blurred edges)."""
    for image_id in dataset.ids:
        gt = dataset.gt(image_id)
        keys = dataset.labels(image_id)
        cam = np.stack([(gt == k).astype(np.float32) * 0.9 for k in keys])
        save_cam(cam_dir / f"{image_id}.npz", keys, cam)


def test_refine_cams_writes_cam_files_that_pseudo_reads(voc_like, tmp_path):
    dataset = build_dataset("synthetic", voc_like, "val")
    cam_dir = tmp_path / "cams"
    _gt_cams(dataset, cam_dir)
    torch.manual_seed(5)
    model_path = save_affinity_model(AffinityNet("resnet18"), tmp_path / "aff" / "model.safetensors")
    out = refine_cams(dataset, cam_dir, model_path, tmp_path / "rw", progress=False)
    for image_id in dataset.ids:
        keys, cam = load_cam(out / f"{image_id}.npz", shape=(64, 64), num_classes=dataset.num_classes)
        np.testing.assert_array_equal(keys, dataset.labels(image_id))
        assert cam.min() >= 0 and cam.max() == pytest.approx(1.0, abs=1e-3)  # overall max (float16)
    record = read_json(out / "run.json")
    assert record["suggested_tau"] == 0.25 and record["config"]["radius"] == 5
    before = (out / f"{dataset.ids[0]}.npz").stat().st_mtime_ns
    refine_cams(dataset, cam_dir, model_path, tmp_path / "rw", progress=False)  # resume: nothing redone
    assert (out / f"{dataset.ids[0]}.npz").stat().st_mtime_ns == before
    with pytest.raises(WsssError, match="beta"):
        refine_cams(dataset, cam_dir, model_path, tmp_path / "rw", beta=8, progress=False)
    labels = make_pseudo_labels(dataset, out, tmp_path / "pseudo", tau=0.25, progress=False)
    label = load_label(labels / f"{dataset.ids[0]}.png", dataset.num_classes)
    assert set(np.unique(label)) <= {0, *dataset.labels(dataset.ids[0]).tolist()}


def test_refine_cams_refuses_a_missing_model(voc_like, tmp_path):
    dataset = build_dataset("synthetic", voc_like, "val")
    (tmp_path / "cams").mkdir()
    with pytest.raises(WsssError, match="affinity model not found"):
        refine_cams(dataset, tmp_path / "cams", tmp_path / "nope.safetensors", tmp_path / "rw")
