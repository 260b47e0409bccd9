"""SEPL (docs/methods.md §3): each rule of the paper-text merge (``variant="paper"``) on hand-made
labels and masks, an independent loop-based reference on random cases, and the stage end to end
with ideal (ground-truth instance) masks. The default merge (``variant="code"``, the authors'
released code) is pinned against that code's outputs in test_parity_sepl.py."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from wsss.data import build_dataset
from wsss.io import WsssError, load_label, save_label
from wsss.pseudo.masks import build_mask_generator, generate_masks, save_masks
from wsss.pseudo.sepl import make_sepl_labels, sepl_merge, sepl_merge_with_stats


def box(rows: slice, cols: slice, shape=(10, 10)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows, cols] = True
    return m


# --------------------------------------------------------------------------- the rules
def test_region_rule_keeps_a_mask_mostly_inside_the_class():
    label = np.zeros((10, 10), np.uint8)
    label[0:5, :] = 1  # P_1: 50 px
    mask = box(slice(3, 6), slice(0, 4))  # 12 px, 8 inside: 8/12 > 0.5, covers 8/50 of P_1
    out = sepl_merge(label, mask[None], variant="paper")
    expected = label.copy()
    expected[5, 0:4] = 1  # the mask's outside row joins the class; the rest of P_1 is uncovered
    np.testing.assert_array_equal(out, expected)


def test_region_rule_is_strict():
    label = np.zeros((10, 10), np.uint8)
    label[0:5, :] = 1
    mask = box(slice(3, 7), slice(0, 4))  # 16 px, 8 inside: exactly 0.5 is not > 0.5
    out, stats = sepl_merge_with_stats(label, mask[None], variant="paper")
    assert stats["assigned"] == 1 and stats["kept"] == 0
    np.testing.assert_array_equal(out, label)  # no mask kept: P_1 stays


def test_mask_rule_keeps_a_large_mask_that_covers_the_class():
    label = np.zeros((10, 10), np.uint8)
    label[4:6, :] = 1  # P_1: 20 px (a partial activation)
    mask = box(slice(4, 10), slice(0, 9))
    mask[5, 8] = False  # 53 px, 17 of P_1: 17/53 < 0.5 but 17/20 = 0.85 >= 0.85
    out, stats = sepl_merge_with_stats(label, mask[None], variant="paper")
    assert stats["kept"] == 1
    expected = mask.astype(np.uint8)
    expected[4, 9] = expected[5, 8] = expected[5, 9] = 1  # P_1 pixels no mask covers keep their label
    np.testing.assert_array_equal(out, expected)


def test_mask_below_both_thresholds_is_not_kept_and_the_class_stays():
    label = np.zeros((10, 10), np.uint8)
    label[4:6, :] = 1
    mask = box(slice(4, 10), slice(0, 9))
    mask[5, 7:9] = False  # 16 of P_1: 16/52 and 16/20 = 0.8, below both
    out, stats = sepl_merge_with_stats(label, mask[None], variant="paper")
    assert stats == {"masks": 1, "assigned": 1, "kept": 0, "unchanged_classes": [1], "changed_pixels": 0}
    np.testing.assert_array_equal(out, label)


def test_pixels_under_unkept_masks_leave_the_class_and_uncovered_ones_stay():
    label = np.zeros((10, 10), np.uint8)
    label[2:6, 2:7] = 1  # object 2..5 × 2..5 plus a falsely activated column 6
    label[8, 8] = 1  # a pixel no mask covers
    obj = box(slice(2, 6), slice(2, 6))  # inside P_1: kept
    background = box(slice(0, 8), slice(6, 10))  # 32 px, 4 of P_1: not kept
    out = sepl_merge(label, np.stack([obj, background]), variant="paper")
    expected = np.zeros((10, 10), np.uint8)
    expected[2:6, 2:6] = 1
    expected[8, 8] = 1
    np.testing.assert_array_equal(out, expected)


def test_no_mask_or_no_class_leaves_the_label_unchanged():
    label = np.zeros((6, 7), np.uint8)
    label[1:4, 1:5] = 2
    label[5, :] = 255
    np.testing.assert_array_equal(sepl_merge(label, np.zeros((0, 6, 7), bool), variant="paper"), label)
    only_bg = np.where(label == 2, 0, label).astype(np.uint8)
    np.testing.assert_array_equal(sepl_merge(only_bg, np.ones((1, 6, 7), bool), variant="paper"), only_bg)


def test_mask_touching_no_class_is_dropped():
    label = np.zeros((10, 10), np.uint8)
    label[0:3, 0:3] = 1
    label[9, :] = 255
    far = box(slice(5, 10), slice(5, 10))  # background and ignore only
    out, stats = sepl_merge_with_stats(label, far[None], variant="paper")
    assert stats["assigned"] == 0 and stats["kept"] == 0
    np.testing.assert_array_equal(out, label)


def test_thresholds_are_configurable():
    label = np.zeros((10, 10), np.uint8)
    label[0:5, :] = 1
    mask = box(slice(3, 6), slice(0, 4))  # inside fraction 8/12 = 0.67
    assert (sepl_merge(label, mask[None], variant="paper") != label).any()
    np.testing.assert_array_equal(sepl_merge(label, mask[None], region_threshold=0.7, variant="paper"), label)
    big = box(slice(0, 10), slice(0, 10))  # inside 0.5, covers all of P_1
    assert (sepl_merge(label, big[None], variant="paper") == 1).all()
    np.testing.assert_array_equal(
        sepl_merge(label, big[None], mask_threshold=1.0, variant="paper"), np.ones_like(label)
    )
    with pytest.raises(ValueError, match="mask_threshold"):
        sepl_merge(label, big[None], mask_threshold=1.5, variant="paper")


def test_ignore_pixels_count_nowhere_and_stay_unless_claimed():
    label = np.full((10, 10), 255, np.uint8)
    label[0:2, :] = 1  # P_1: 20 px, rows 2..8 uncertain
    label[9, :] = 0
    # 20 of its 40 px in P_1 (ignore is not "inside"): 0.5 is not > 0.5, but it covers all of P_1
    kept = box(slice(0, 4), slice(0, 10))
    expected = label.copy()
    expected[0:4, :] = 1  # the kept mask claims ignore pixels; the other ignore pixels stay 255
    np.testing.assert_array_equal(sepl_merge(label, kept[None], variant="paper"), expected)
    # half in P_1, half on ignore: were ignore counted as inside, 1.0 > 0.5 would keep it
    half = box(slice(0, 4), slice(0, 5))
    out, stats = sepl_merge_with_stats(label, half[None], variant="paper")
    assert stats["kept"] == 0
    np.testing.assert_array_equal(out, label)  # and the ignore pixels under it stay 255, not background


def test_assignment_goes_to_the_largest_intersection():
    label = np.zeros((10, 10), np.uint8)
    label[0:5, 0:5] = 1  # 25 px
    label[0:5, 5:10] = 2  # 25 px
    mask = box(slice(0, 5), slice(3, 10))  # 10 px of class 1, 25 of class 2
    out, stats = sepl_merge_with_stats(label, mask[None], variant="paper")
    # assigned to 2 (inside 25/35 > 0.5): kept for 2 only, class 1 has no kept mask and stays whole;
    # on their overlap the smaller region (P_1, 25 px) beats the 35 px mask
    assert stats["kept"] == 1 and stats["unchanged_classes"] == [1]
    np.testing.assert_array_equal(out, label)
    # a tie (10 px of each) goes to the smaller class id; kept at t1 = 0.4, the 20 px mask then also
    # beats class 2's unchanged 25 px region on their overlap
    tie = box(slice(0, 2), slice(0, 10))
    out, stats = sepl_merge_with_stats(label, tie[None], region_threshold=0.4, variant="paper")
    assert stats["kept"] == 1 and stats["unchanged_classes"] == [2]
    expected = label.copy()
    expected[0:2, :] = 1
    np.testing.assert_array_equal(out, expected)


def test_overlapping_regions_go_to_the_smallest_and_class_order_does_not_matter():
    label = np.zeros((10, 10), np.uint8)
    label[0:5, :] = 1  # 50 px
    label[5:10, 0:5] = 2  # 25 px
    whole = box(slice(0, 10), slice(0, 10))  # 50 of P_1, 25 of P_2 → class 1, covers all of P_1: kept
    part = box(slice(5, 10), slice(0, 5))  # exactly P_2: kept for 2
    out = sepl_merge(label, np.stack([whole, part]), variant="paper")
    expected = np.ones((10, 10), np.uint8)
    expected[5:10, 0:5] = 2
    np.testing.assert_array_equal(out, expected)
    swapped = np.choose(label, [0, 2, 1]).astype(np.uint8)
    np.testing.assert_array_equal(
        sepl_merge(swapped, np.stack([whole, part]), variant="paper"), np.choose(expected, [0, 2, 1])
    )
    # a class without kept masks keeps P_k even inside another class's (larger) kept mask
    alone = sepl_merge(label, whole[None], variant="paper")
    np.testing.assert_array_equal(alone, np.where(label == 2, 2, 1))


# --------------------------------------------------------------------------- an independent formulation
def reference_sepl(label, masks, t1=0.5, t2=0.85):
    """Algorithm 1 written as loops (per mask, per class), with the module's documented decisions;
    overlaps are resolved by painting regions from the largest to the smallest."""
    classes = [c for c in range(1, 255) if (label == c).any()]
    assigned = {c: [] for c in classes}
    for s in masks:
        inter = [int(np.logical_and(s, label == c).sum()) for c in classes]
        if classes and max(inter) > 0:
            assigned[classes[int(np.argmax(inter))]].append(s)
    regions = []  # (area, class, region)
    for c in classes:
        p = label == c
        kept = [s for s in assigned[c] if (s & p).sum() / s.sum() > t1 or (s & p).sum() / p.sum() >= t2]
        regions += [(int(s.sum()), c, s) for s in kept] if kept else [(int(p.sum()), c, p)]
    out = np.where(label == 255, 255, 0).astype(np.uint8)
    for _area, c, region in sorted(regions, key=lambda r: (-r[0], -r[1])):  # equal areas: smaller class last
        out[region] = c
    covered = masks.any(axis=0) if len(masks) else np.zeros(label.shape, bool)
    keep = (label != 0) & (label != 255) & ~covered
    out[keep] = label[keep]
    return out


@pytest.mark.parametrize("seed", range(12))
def test_matches_the_loop_reference_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    h, w = 24, 20
    label = rng.choice([0, 0, 1, 3, 255], size=(h // 4, w // 4)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    masks = []
    for _ in range(rng.integers(3, 15)):
        y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
        masks.append(box(slice(y, y + rng.integers(2, 12)), slice(x, x + rng.integers(2, 12)), (h, w)))
    masks = np.array(masks, dtype=bool).reshape(-1, h, w)
    t1, t2 = rng.uniform(0.3, 0.7), rng.uniform(0.5, 0.95)
    np.testing.assert_array_equal(
        sepl_merge(label, masks, t1, t2, variant="paper"), reference_sepl(label, masks, t1, t2)
    )


# --------------------------------------------------------------------------- the stage
def degraded(gt: np.ndarray) -> np.ndarray:
    """Partial activation: every class region eroded by 3 px."""
    out = np.zeros_like(gt)
    for c in np.unique(gt):
        if c not in (0, 255):
            out[ndimage.binary_erosion(gt == c, iterations=3)] = c
    return out


def test_make_sepl_labels_with_ideal_masks_recovers_recall(voc_like, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    pseudo = tmp_path / "pseudo"
    for i in ds.ids:
        save_label(pseudo / f"{i}.png", degraded(ds.gt(i)))
    masks_dir = generate_masks(build_mask_generator("gt-instances"), ds, tmp_path / "masks", progress=False)
    out = tmp_path / "sepl"
    result = make_sepl_labels(ds, pseudo, masks_dir, out, progress=False)
    assert result["written"] == len(ds.ids) and result["with_gt"] == len(ds.ids)
    assert result["after"]["recall"] > result["before"]["recall"] + 0.1
    assert result["after"]["miou"] > result["before"]["miou"]
    with open(out / "sepl_stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ds.ids
    assert all(float(r["recall_after"]) >= float(r["recall_before"]) for r in rows)
    assert all(int(r["kept"]) >= 1 for r in rows)
    # ideal masks around an eroded label reproduce the ground truth wherever erosion left a seed
    for i in ds.ids:
        refined, gt = load_label(out / f"{i}.png"), ds.gt(i)
        seeded = np.isin(gt, np.unique(degraded(gt)))
        np.testing.assert_array_equal(refined[seeded], gt[seeded])
    record = json.loads((out / "run.json").read_text())
    assert record["stage"] == "sepl" and record["masks_settings"]["settings"]["generator"] == "gt-instances"

    # resume: nothing rewritten, the same scores from the files on disk
    again = make_sepl_labels(ds, pseudo, masks_dir, out, progress=False)
    assert again["written"] == 0 and again["after"] == result["after"]
    with pytest.raises(WsssError, match="mask_threshold"):
        make_sepl_labels(ds, pseudo, masks_dir, out, mask_threshold=0.9, progress=False)
    # a folder made with one merge variant is refused for the other
    assert json.loads((out / "settings.json").read_text())["settings"]["variant"] == "code"
    with pytest.raises(WsssError, match="variant"):
        make_sepl_labels(ds, pseudo, masks_dir, out, variant="paper", progress=False)
    with pytest.raises(WsssError, match="variant must be one of code, paper"):
        make_sepl_labels(ds, pseudo, masks_dir, tmp_path / "bad", variant="text", progress=False)
    paper = make_sepl_labels(ds, pseudo, masks_dir, tmp_path / "sepl_paper", variant="paper", progress=False)
    assert paper["after"]["recall"] > paper["before"]["recall"] + 0.1


def test_make_sepl_labels_names_missing_and_mismatched_inputs(voc_like, tmp_path):
    ds = build_dataset("synthetic", voc_like, "val")
    pseudo, masks_dir = tmp_path / "pseudo", tmp_path / "masks"
    first = ds.ids[0]
    save_label(pseudo / f"{first}.png", ds.gt(first))
    masks_dir.mkdir()
    with pytest.raises(WsssError, match=rf"{first}\.npz: mask file not found"):
        make_sepl_labels(ds, pseudo, masks_dir, tmp_path / "a", ids=[first], progress=False)
    save_masks(masks_dir / f"{first}.npz", np.zeros((2, 8, 8), bool))
    with pytest.raises(WsssError, match=rf"{first}\.npz: masks are 8×8 but the image is 64×64"):
        make_sepl_labels(ds, pseudo, masks_dir, tmp_path / "b", ids=[first], progress=False)
    with pytest.raises(WsssError, match="pseudo-label folder not found"):
        make_sepl_labels(ds, tmp_path / "nope", masks_dir, tmp_path / "c", progress=False)
