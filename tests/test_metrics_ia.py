from __future__ import annotations

import math
import pickle
from collections import Counter, deque
from fractions import Fraction

import numpy as np
import pytest

from wsss.metrics.confusion import ConfusionMetric
from wsss.metrics.ia_miou import InstanceAwareMetric, image_instance_ious, instances_from_map

NAN = float("nan")


def _ia(images, k, bounds=(1024, 9216), variant="official"):
    m = InstanceAwareMetric(k, bounds=bounds, variant=variant)
    for img in images:
        m.process(*img)
    return m.compute()


# --------------------------------------------------------------------------- hand-computed cases
def test_proportional_split_of_a_shared_blob():
    # two instances of class 1 (3 px and 1 px) under one 10-px prediction blob
    gt = np.array([[1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]], np.uint8)
    pred = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]], np.uint8)
    classes, sizes, ious = image_instance_ious(pred, gt, 2)
    # a: I=3, O=1, rest 6 → 3 + ⌊3/4·6⌋ = 7, IoU 3/(3+7-3); b: I=1, O=3 → 1 + ⌊6/4⌋ = 2, IoU 1/2
    np.testing.assert_array_equal(classes, [1, 1, 0])
    np.testing.assert_array_equal(sizes, [3, 1, 8])
    np.testing.assert_allclose(ious, [3 / 7, 1 / 2, 2 / 8])
    r = _ia([(pred, gt)], 2)
    assert r["ia_iou"][1] == pytest.approx((3 / 7 + 1 / 2) / 2)
    assert r["ia_miou"] == pytest.approx(((3 / 7 + 1 / 2) / 2 + 0.25) / 2)


def test_blob_joined_through_the_ignore_band():
    # the prediction's two parts touch only through an ignore pixel: one blob of 3 labelled pixels
    gt = np.array([[1, 1, 255, 0, 0]], np.uint8)
    pred = np.array([[1, 1, 1, 1, 0]], np.uint8)
    _, _, ious = image_instance_ious(pred, gt, 2)
    assert ious[0] == pytest.approx(2 / 3)  # blobs over labelled pixels only would give 1
    # the same band between two instances: the blob's 1 unclaimed pixel splits ⌊½⌋ = 0 each
    gt = np.array([[1, 1, 255, 1, 1, 0, 0]], np.uint8)
    inst = np.array([[1, 1, 255, 2, 2, 0, 0]], np.uint8)
    pred = np.array([[1, 1, 1, 1, 1, 1, 0]], np.uint8)
    classes, _, ious = image_instance_ious(pred, gt, 2, inst)
    np.testing.assert_allclose(ious[classes == 1], [1.0, 1.0])
    # 2-D: a diagonal (8-connected) step across the band still joins
    gt = np.array([[1, 0, 0], [0, 255, 0], [0, 0, 0]], np.uint8)
    pred = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.uint8)
    classes, _, ious = image_instance_ious(pred, gt, 2)
    assert ious[classes == 1][0] == pytest.approx(1 / 2)  # blob = 2 labelled px, I = 1


def test_no_touching_blob_scores_zero_and_false_positives_elsewhere_do_not_count():
    gt = np.zeros((6, 6), np.uint8)
    gt[0:2, 0:2] = 1
    gt[4:6, 4:6] = 1
    pred = np.zeros((6, 6), np.uint8)
    pred[4:6, 3:6] = 1  # covers the second instance plus 2 px
    pred[0:1, 4:5] = 1  # a false-positive blob touching nothing
    classes, sizes, ious = image_instance_ious(pred, gt, 2)
    np.testing.assert_allclose(ious[classes == 1], [0.0, 4 / 6])
    bg = 36 - 8
    assert ious[classes == 0][0] == pytest.approx((bg - 3) / (bg + 4))  # 4 px of first instance → bg
    assert sizes[classes == 0][0] == bg


def test_background_instance_and_image_without_background():
    full = np.ones((4, 4), np.uint8)  # no background pixel: adds no background instance
    classes, _, _ = image_instance_ious(full, full, 2)
    np.testing.assert_array_equal(classes, [1])
    r = _ia([(full, full)], 2)
    assert np.isnan(r["ia_iou"][0]) and r["ia_miou"] == 1.0
    gt = np.zeros((4, 4), np.uint8)
    gt[0, 0] = 1
    pred = np.zeros((4, 4), np.uint8)
    pred[3, 3] = 1
    r = _ia([(full, full), (pred, gt)], 2)
    # class 1: instances with IoU 1 and 0; background: one instance 14/16
    assert r["ia_iou"][1] == pytest.approx(0.5)
    assert r["ia_iou"][0] == pytest.approx(14 / 16)
    np.testing.assert_array_equal(r["num_instances"], [1, 2])


def test_size_buckets():
    gt = np.zeros((10, 10), np.uint8)
    gt[0, 0:2] = 1  # 2 px → small
    gt[2:4, 0:3] = 1  # 6 px → medium
    gt[5:10, 5:10] = 2  # 25 px → large
    gt[0, 8] = 2  # 1 px → small
    pred = gt.copy()
    pred[0, 1] = 0  # small class-1 instance: IoU 1/2
    pred[2, 0:3] = 0  # medium class-1 instance: IoU 3/6
    pred[0, 8] = 0  # small class-2 instance missed
    r = _ia([(pred, gt)], 3, bounds=(5, 20))
    np.testing.assert_array_equal(r["num_instances_small"], [0, 1, 1])
    np.testing.assert_array_equal(r["num_instances_medium"], [0, 1, 0])
    np.testing.assert_array_equal(r["num_instances_large"], [0, 0, 1])
    assert r["ia_miou_small"] == pytest.approx((0.5 + 0.0) / 2)
    assert r["ia_miou_medium"] == pytest.approx(0.5)  # class 2 has no medium instance: skipped
    assert r["ia_miou_large"] == pytest.approx(1.0)
    assert r["ia_iou"][1] == pytest.approx(0.5) and r["ia_iou"][2] == pytest.approx(0.5)
    # a size equal to a bound goes to the upper bucket
    r = _ia([(pred, gt)], 3, bounds=(2, 6))
    np.testing.assert_array_equal(r["num_instances_small"], [0, 0, 1])
    np.testing.assert_array_equal(r["num_instances_large"], [0, 1, 1])


def test_missed_small_object_moves_ia_miou_not_miou():
    """Seed 004's argument: mIoU barely notices a missed small object, IA-mIoU does."""
    gt = np.zeros((100, 100), np.uint8)
    gt[10:60, 10:60] = 1  # 2500 px
    gt[80:84, 80:84] = 1  # 16 px
    pred = gt.copy()
    pred[80:84, 80:84] = 0
    conf = ConfusionMetric(2)
    conf.process(pred, gt)
    miou = conf.compute()["miou"]
    bg_iou = 7484 / 7500
    assert miou == pytest.approx((bg_iou + 2500 / 2516) / 2)  # 0.9958: down 0.4 points
    r = _ia([(pred, gt)], 2)
    assert r["ia_miou"] == pytest.approx((bg_iou + 0.5) / 2)  # 0.7489: down 25 points
    assert r["ia_miou_small"] == 0.0 and r["ia_miou_medium"] == 1.0
    assert 1 - miou < 0.005 and 1 - r["ia_miou"] > 0.25


def test_instances_from_png_versus_connected_components():
    # two touching class-1 objects: two instances in the PNG, one connected component
    gt = np.zeros((5, 8), np.uint8)
    gt[0:4, :] = 1
    inst = np.zeros((5, 8), np.uint8)
    inst[0:4, 0:4] = 1
    inst[0:4, 4:8] = 2
    pred = np.zeros((5, 8), np.uint8)
    pred[:, 0:6] = 1  # one 30-px blob
    r_png = _ia([(pred, gt, inst)], 2)
    # instance 1: I 16, O 8, rest 6 → 16 + ⌊16/24·6⌋ = 20 → 16/20; instance 2: 8 + ⌊8/24·6⌋ = 10 → 8/18
    assert r_png["ia_iou"][1] == pytest.approx((16 / 20 + 8 / 18) / 2)
    assert r_png["num_instances"][1] == 2
    r_cc = _ia([(pred, gt)], 2)
    assert r_cc["ia_iou"][1] == pytest.approx(24 / (32 + 30 - 24))
    assert r_cc["num_instances"][1] == 1
    # when the PNG's instances are the connected components, both agree
    gt2 = np.zeros((6, 6), np.uint8)
    gt2[0:2, 0:2] = 1
    gt2[4:6, 3:6] = 2
    inst2 = np.zeros_like(gt2)
    inst2[0:2, 0:2] = 7
    inst2[4:6, 3:6] = 3
    pred2 = np.roll(gt2, 1, axis=1)
    a, b = _ia([(pred2, gt2, inst2)], 3), _ia([(pred2, gt2)], 3)
    np.testing.assert_allclose(a["ia_iou"], b["ia_iou"])


def test_instance_class_is_the_majority_ground_truth_class():
    gt = np.array([[2, 2, 1, 0]], np.uint8)
    inst = np.array([[5, 5, 5, 0]], np.uint8)
    ids, class_of_id = instances_from_map(inst, gt, 3)
    assert class_of_id[5] == 2
    np.testing.assert_array_equal(ids, [[5, 5, 5, 0]])


def test_instance_split_by_an_occluder_scores_both_parts():
    # instance 1 (class 1) in two parts around the occluder, instance 2 of class 2
    gt = np.array([[1, 1, 1, 1, 2, 2, 1, 1, 1, 1, 0, 0]], np.uint8)
    inst = np.array([[1, 1, 1, 1, 2, 2, 1, 1, 1, 1, 0, 0]], np.uint8)
    pred = np.array([[1, 1, 1, 0, 2, 2, 0, 1, 1, 1, 1, 0]], np.uint8)
    classes, sizes, ious = image_instance_ious(pred, gt, 3, inst)
    # one instance of 8 px: blobs of 3 (I 3) and 4 (I 3) px → 6 / (8 + 7 - 6)
    np.testing.assert_array_equal(classes, [1, 2, 0])
    np.testing.assert_array_equal(sizes, [8, 2, 2])
    np.testing.assert_allclose(ious, [6 / 9, 1.0, 1 / 4], rtol=1e-15)
    # without the PNG the two parts are two instances: 3/4 and 3/(4 + 4 - 3)
    classes, sizes, ious = image_instance_ious(pred, gt, 3)
    np.testing.assert_array_equal(classes, [1, 1, 2, 0])
    np.testing.assert_array_equal(sizes, [4, 4, 2, 2])
    np.testing.assert_allclose(ious, [3 / 4, 3 / 5, 1.0, 1 / 4], rtol=1e-15)


def test_touching_instances_of_one_class_across_the_band_share_one_blob():
    # two class-1 instances side by side, the band between them; one prediction over both
    gt = np.zeros((4, 9), np.uint8)
    gt[0:3, 0:4] = 1
    gt[0:3, 5:9] = 1
    gt[0:3, 4] = 255
    inst = np.where(gt == 255, 255, 0).astype(np.uint8)
    inst[0:3, 0:4] = 1
    inst[0:3, 5:9] = 2
    pred = np.zeros_like(gt)
    pred[0:2, 0:9] = 1  # 16 labelled px: 8 on each instance, nothing unclaimed
    classes, sizes, ious = image_instance_ious(pred, gt, 2, inst)
    np.testing.assert_allclose(ious[classes == 1], [8 / 12, 8 / 12], rtol=1e-15)
    pred[3, 0:9] = 1  # joined to the blob? no: row 2 is not predicted; a second blob, touching nothing
    np.testing.assert_allclose(image_instance_ious(pred, gt, 2, inst)[2][:2], [8 / 12, 8 / 12], rtol=1e-15)
    pred[2, 8] = 1  # joins row 3 (8-connected): I = 8 and 9, 26 labelled px, 9 unclaimed
    classes, _, ious = image_instance_ious(pred, gt, 2, inst)
    # 8 + ⌊8·9/17⌋ = 12 → 8/(12 + 12 - 8); 9 + ⌊9·9/17⌋ = 13 → 9/(12 + 13 - 9)
    np.testing.assert_allclose(ious[classes == 1], [8 / 16, 9 / 16], rtol=1e-15)


def test_missed_class_scores_zero_with_and_without_instance_map():
    gt = np.zeros((6, 8), np.uint8)
    gt[1:3, 1:3] = 1
    gt[3:5, 5:8] = 2
    inst = np.zeros_like(gt)
    inst[1:3, 1:3] = 1
    inst[3:5, 5:8] = 2
    pred = np.where(gt == 2, 0, gt).astype(np.uint8)  # class 2 predicted nowhere
    for instances in (inst, None):
        classes, sizes, ious = image_instance_ious(pred, gt, 3, instances)
        np.testing.assert_array_equal(classes, [1, 2, 0])
        np.testing.assert_array_equal(sizes, [4, 6, 38])
        np.testing.assert_allclose(ious, [1.0, 0.0, 38 / 44], rtol=1e-15)


def test_mixed_class_instance_takes_its_majority_class():
    gt = np.array([[2, 2, 1, 0, 0]], np.uint8)
    inst = np.array([[5, 5, 5, 0, 0]], np.uint8)
    pred = np.array([[2, 2, 2, 2, 0]], np.uint8)
    classes, sizes, ious = image_instance_ious(pred, gt, 3, inst)
    np.testing.assert_array_equal(classes, [2, 0])
    np.testing.assert_array_equal(sizes, [3, 2])
    np.testing.assert_allclose(ious, [3 / 4, 1 / 2], rtol=1e-15)


def test_ignore_in_either_map_makes_a_pixel_unlabelled():
    gt = np.array([[1, 1, 255, 1, 0, 0]], np.uint8)  # ignore inside instance 1's id
    inst = np.array([[1, 1, 1, 1, 0, 255]], np.uint8)  # ignore on a background pixel
    pred = np.array([[1, 1, 1, 0, 0, 0]], np.uint8)
    classes, sizes, ious = image_instance_ious(pred, gt, 2, inst)
    np.testing.assert_array_equal(classes, [1, 0])
    np.testing.assert_array_equal(sizes, [3, 1])  # labelled pixels only
    np.testing.assert_allclose(ious, [2 / 3, 1 / 2], rtol=1e-15)


def test_many_ids_and_other_dtypes_give_identical_records():
    """Ids above 32 take the histogram path, non-uint8 maps the bincount path: same records."""
    rng = np.random.default_rng(21)
    for n in range(12):
        pred, gt, inst = _random_scene(rng, 5, size=24, with_band=n % 2 == 0)
        base = image_instance_ious(pred, gt, 5, inst)
        spread = np.where((inst > 0) & (inst < 255), 40 + 3 * inst, inst).astype(np.uint8)  # order kept
        for args in [
            (pred, gt, spread),
            (pred.astype(np.int32), gt.astype(np.int64), inst.astype(np.int32)),
            (pred.astype(np.uint16), gt, spread.astype(np.int16)),
        ]:
            got = image_instance_ious(args[0], args[1], 5, args[2])
            for a, b in zip(base, got, strict=True):
                np.testing.assert_array_equal(a, b)
        base_cc = image_instance_ious(pred, gt, 5)
        got_cc = image_instance_ious(pred.astype(np.int32), gt.astype(np.uint16), 5)
        for a, b in zip(base_cc, got_cc, strict=True):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- brute force
def _components(mask: np.ndarray) -> list[set]:
    """8-connected components by breadth-first search (independent of scipy)."""
    seen: set = set()
    out = []
    h, w = mask.shape
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or (y, x) in seen:
                continue
            comp, queue = set(), deque([(y, x)])
            seen.add((y, x))
            while queue:
                cy, cx = queue.popleft()
                comp.add((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and (ny, nx) not in seen:
                            seen.add((ny, nx))
                            queue.append((ny, nx))
            out.append(comp)
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every pixel the outside cannot reach through 4-connected background set:
    a breadth-first flood from a 1-px frame around it (independent of OpenCV and scipy)."""
    h, w = mask.shape
    free = np.ones((h + 2, w + 2), bool)
    free[1:-1, 1:-1] = ~mask
    outside, queue = {(0, 0)}, deque([(0, 0)])
    while queue:
        cy, cx = queue.popleft()
        for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
            if 0 <= ny < h + 2 and 0 <= nx < w + 2 and free[ny, nx] and (ny, nx) not in outside:
                outside.add((ny, nx))
                queue.append((ny, nx))
    reached = np.zeros((h + 2, w + 2), bool)
    reached[tuple(np.array(sorted(outside)).T)] = True
    return ~reached[1:-1, 1:-1]


def _share(i_: int, o_: int, rest: int, variant: str) -> int:
    """The part of a blob's unclaimed ``rest`` given to an overlap of i_ against o_ others: the
    official code truncates a float64 product, the variant "exact" floors the rational."""
    if variant == "official":
        return int(float(i_) / float(i_ + o_) * float(rest))
    return math.floor(Fraction(i_, i_ + o_) * rest)


def _brute_force(images, k, bounds, variant="exact"):
    per_class: dict[int, list] = {c: [] for c in range(k)}
    per_bucket: dict[tuple[int, int], list] = {}
    for img in images:
        pred, gt = img[0], img[1]
        inst = img[2] if len(img) > 2 else None
        h, w = gt.shape
        labelled = {
            (y, x)
            for y in range(h)
            for x in range(w)
            if gt[y, x] != 255 and (inst is None or inst[y, x] != 255)
        }
        instances = []  # (class, set of pixels)
        if inst is not None:
            for i in range(1, 255):
                pix = {p for p in labelled if inst[p] == i}
                if pix:
                    cls = Counter(int(gt[p]) for p in pix).most_common(1)[0][0]
                    if cls > 0:
                        instances.append((cls, pix))
        else:
            for c in range(1, k):
                for comp in _components(gt == c):
                    instances.append((c, comp & labelled))
        for j, (c, g) in enumerate(instances):
            others = set().union(*(p for jj, (cc, p) in enumerate(instances) if cc == c and jj != j))
            sum_i = sum_c = 0
            mask = pred == c
            predicted = {tuple(p) for p in np.argwhere(mask)}
            for blob in _components(_fill_holes(mask) if variant == "official" else mask):
                b = blob & labelled & predicted
                i_ = len(b & g)
                if i_ == 0:
                    continue
                o_ = len(b & others)
                contrib = len(b) if o_ == 0 else i_ + _share(i_, o_, len(b) - i_ - o_, variant)
                sum_i += i_
                sum_c += contrib
            iou = sum_i / (len(g) + sum_c - sum_i) if sum_i else 0.0
            per_class[c].append(iou)
            bucket = 0 if len(g) < bounds[0] else 1 if len(g) < bounds[1] else 2
            per_bucket.setdefault((bucket, c), []).append(iou)
        gt_bg = {p for p in labelled if gt[p] == 0}
        if gt_bg:
            pred_bg = {p for p in labelled if pred[p] == 0}
            per_class[0].append(len(gt_bg & pred_bg) / len(gt_bg | pred_bg))
    ia_iou = [float(np.mean(v)) if v else NAN for v in per_class.values()]
    defined = [v for v in ia_iou if not math.isnan(v)]
    buckets = []
    for b in range(3):
        means = [float(np.mean(per_bucket[(b, c)])) for c in range(1, k) if (b, c) in per_bucket]
        buckets.append(float(np.mean(means)) if means else NAN)
    return ia_iou, float(np.mean(defined)), buckets, [len(v) for v in per_class.values()]


def _random_scene(rng, k, size=18, with_band=False):
    gt = np.zeros((size, size), np.uint8)
    inst = np.zeros((size, size), np.uint8)
    for j in range(int(rng.integers(2, 6))):
        h, w = rng.integers(1, size // 2, size=2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        gt[y : y + h, x : x + w] = rng.integers(1, k)
        inst[y : y + h, x : x + w] = j + 1
    if with_band:  # ignore band on instance boundaries, as in VOC
        edge = np.zeros_like(gt, dtype=bool)
        edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
        edge[1:, :] |= inst[1:, :] != inst[:-1, :]
        edge &= rng.random(gt.shape) < 0.7
        gt[edge] = 255
        inst[edge] = 255
    pred = np.roll(gt, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
    noise = rng.random(gt.shape)
    pred = np.where(noise < 0.15, rng.integers(0, k, size=gt.shape), pred)
    pred = np.where((pred == 255) & (noise < 0.5), rng.integers(0, k, size=gt.shape), pred).astype(np.uint8)
    pred[rng.random(gt.shape) < 0.03] = 255  # some "no prediction" pixels
    return pred, gt, inst


@pytest.mark.parametrize("variant", ["official", "exact"])
@pytest.mark.parametrize("use_png", [True, False])
def test_matches_brute_force_on_random_scenes(use_png, variant):
    rng = np.random.default_rng(7 if use_png else 8)
    k, bounds = 4, (6, 30)
    images = []
    for n in range(24):
        pred, gt, inst = _random_scene(rng, k, with_band=n % 2 == 0)
        images.append((pred, gt, inst) if use_png else (pred, gt))
    ref_iou, ref_miou, ref_buckets, ref_counts = _brute_force(images, k, bounds, variant)
    r = _ia(images, k, bounds, variant)
    np.testing.assert_allclose(r["ia_iou"], ref_iou, rtol=1e-12, equal_nan=True)
    assert r["ia_miou"] == pytest.approx(ref_miou, rel=1e-12)
    got = [r["ia_miou_small"], r["ia_miou_medium"], r["ia_miou_large"]]
    np.testing.assert_allclose(got, ref_buckets, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(r["num_instances"], ref_counts)
    assert sum(ref_counts[1:]) > 40  # the scenes did exercise many instances


def _scipy_reference(pred, gt, k, inst=None, variant="official"):
    """The definition again, instance by instance with scipy's labelling (no OpenCV, no windows):
    per-instance (class, size, IoU) sorted, for scenes too large for the brute force. Variant
    "official": blobs from ``binary_fill_holes`` (holes = background the outside cannot reach
    4-connected) labelled 8-connected, then only the predicted pixels of c kept in each."""
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    labelled = gt != 255
    instances = []  # (class, mask)
    if inst is not None:
        labelled &= inst != 255
        for i in range(1, 255):
            g = labelled & (inst == i)
            if g.any():
                c = int(np.bincount(gt[g], minlength=k).argmax())
                if c > 0:
                    instances.append((c, g))
    else:
        for c in range(1, k):
            comp, n = ndimage.label(gt == c, structure=eight)
            instances += [(c, comp == j) for j in range(1, n + 1)]
    records = []
    for j, (c, g) in enumerate(instances):
        others = np.zeros_like(g)
        for jj, (cc, gg) in enumerate(instances):
            if cc == c and jj != j:
                others |= gg
        mask = pred == c
        blobs, _ = ndimage.label(ndimage.binary_fill_holes(mask) if variant == "official" else mask, eight)
        blobs[~mask] = 0
        sum_i = sum_c = 0
        for b in np.unique(blobs[g & (blobs > 0)]):
            blob = (blobs == b) & labelled
            i_, o_, size = int((blob & g).sum()), int((blob & others).sum()), int(blob.sum())
            sum_i += i_
            sum_c += size if o_ == 0 else i_ + _share(i_, o_, size - i_ - o_, variant)
        records.append((c, int(g.sum()), sum_i / (int(g.sum()) + sum_c - sum_i) if sum_i else 0.0))
    gt_bg = labelled & (gt == 0)
    if gt_bg.any():
        pred_bg = labelled & (pred == 0)
        records.append((0, int(gt_bg.sum()), (gt_bg & pred_bg).sum() / (gt_bg | pred_bg).sum()))
    return sorted(records)


@pytest.mark.parametrize("variant", ["official", "exact"])
@pytest.mark.parametrize("use_png", [True, False])
def test_matches_a_scipy_formulation_on_larger_scenes(use_png, variant):
    rng = np.random.default_rng(31 if use_png else 32)
    checked = 0
    for n in range(16):
        pred, gt, inst = _random_scene(rng, 6, size=64, with_band=n % 4 != 3)
        pred[rng.random(gt.shape) < 0.12] = 0  # holes: blobs split, some instances missed
        got = image_instance_ious(pred, gt, 6, inst if use_png else None, variant)
        ref = _scipy_reference(pred, gt, 6, inst if use_png else None, variant)
        assert sorted(zip(*(a.tolist() for a in got), strict=True)) == ref  # exact, IoUs included
        checked += len(ref)
    assert checked > 60


def test_merge_equals_single_pass_exactly_and_pickles():
    rng = np.random.default_rng(11)
    images = [_random_scene(rng, 4, with_band=True) for _ in range(10)]
    single = InstanceAwareMetric(4, bounds=(6, 30))
    for img in images:
        single.process(*img)
    a, b = InstanceAwareMetric(4, bounds=(6, 30)), InstanceAwareMetric(4, bounds=(6, 30))
    for img in images[:4]:
        b.process(*img)
    for img in images[4:]:
        a.process(*img)
    b = pickle.loads(pickle.dumps(b))
    a.merge(b)  # a different order of images than the single pass
    ra, rs = a.compute(), single.compute()
    for key in ("ia_iou", "ia_iou_small", "ia_iou_medium", "ia_iou_large", "num_instances"):
        np.testing.assert_array_equal(ra[key], rs[key])
    assert ra["ia_miou"] == rs["ia_miou"] and ra["num_images"] == 10
    with pytest.raises(ValueError, match="bounds"):
        a.merge(InstanceAwareMetric(4, bounds=(5, 30)))


def test_empty_maps_give_no_records():
    z = np.zeros((0, 4), np.uint8)
    for instances in (z, None):
        for arr in image_instance_ious(z, z, 3, instances):
            assert arr.size == 0
    assert instances_from_map(z, z, 3)[0].shape == (0, 4)


def test_bad_inputs_raise():
    m = InstanceAwareMetric(2)
    with pytest.raises(ValueError, match="shape"):
        m.process(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="instance map"):
        m.process(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="bounds"):
        InstanceAwareMetric(2, bounds=(10, 5))


def _speckle_scene(rng, k, size):
    """Rectangle instances with a ragged ignore band; a prediction of smoothed-noise regions
    (rings, rings in rings, islands in holes, regions cut by the map's edge) with speckles of
    random classes on top."""
    from scipy import ndimage

    pred, gt, inst = _random_scene(rng, k, size=size, with_band=True)
    noise = ndimage.gaussian_filter(rng.random(gt.shape), rng.uniform(0.7, 2.0))
    levels = np.searchsorted(np.quantile(noise, np.sort(rng.random(int(rng.integers(k, 3 * k))))), noise)
    pred = (rng.permutation(k)[levels % k]).astype(np.uint8)  # level sets cycling through the classes
    speckles = ndimage.binary_dilation(rng.random(gt.shape) < 0.02, iterations=int(rng.integers(0, 2)))
    pred[speckles] = rng.integers(0, k, size=int(speckles.sum()))
    for _ in range(int(rng.integers(1, 4))):  # a ring of a class around an island of it, nested
        c, cy, cx = int(rng.integers(1, k)), *rng.integers(0, size, size=2)
        for r in range(2 * int(rng.integers(1, size // 4)) + 1, 0, -2):  # odd: c, 0, c, ... down to 1
            pred[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1] = c if r % 4 == 1 else 0
    return pred, gt, inst


@pytest.mark.parametrize("use_png", [True, False])
def test_official_blobs_match_a_scipy_fill_holes_formulation_on_speckle_scenes(use_png):
    rng = np.random.default_rng(41 if use_png else 42)
    checked = changed = 0
    for _ in range(40):
        k = int(rng.integers(2, 5))
        pred, gt, inst = _speckle_scene(rng, k, int(rng.integers(12, 48)))
        inst = inst if use_png else None
        got = image_instance_ious(pred, gt, k, inst)
        assert sorted(zip(*(a.tolist() for a in got), strict=True)) == _scipy_reference(pred, gt, k, inst)
        exact = image_instance_ious(pred, gt, k, inst, variant="exact")
        assert sorted(zip(*(a.tolist() for a in exact), strict=True)) == _scipy_reference(
            pred, gt, k, inst, "exact"
        )
        checked += got[0].size
        changed += int((got[2] != exact[2]).sum())  # records come in the same order
    assert checked > 150 and changed > 10  # the scenes did have blobs inside holes


def test_official_share_is_the_float64_truncation_bit_for_bit():
    from wsss.metrics.ia_miou import _share as share

    i_, o_, rest = (a.ravel() for a in np.meshgrid(np.arange(1, 31), np.arange(31), np.arange(201)))
    got = share(i_, i_ + o_, rest, official=True)
    want = [
        int(float(a) / float(a + b) * float(r))
        for a, b, r in zip(i_.tolist(), o_.tolist(), rest.tolist(), strict=True)
    ]
    np.testing.assert_array_equal(got, want)
    exact = share(i_, i_ + o_, rest, official=False)
    np.testing.assert_array_equal(exact, i_ * rest // (i_ + o_))
    # the float product falls 1 px short of the rational for some triples (I = 7, O = 3, 90: 62 vs 63)
    assert 0 < (exact != got).sum() < 1e-2 * got.size and (exact - got).max() == 1
    assert share(np.array([7]), np.array([10]), np.array([90]), True)[0] == 62


def test_variant_is_checked_and_kept():
    with pytest.raises(ValueError, match="variant"):
        InstanceAwareMetric(2, variant="paper")
    with pytest.raises(ValueError, match="variant"):
        image_instance_ious(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), 2, variant="x")
    a, b = InstanceAwareMetric(2), InstanceAwareMetric(2, variant="exact")
    assert a.compute()["variant"] == "official" and b.compute()["variant"] == "exact"
    with pytest.raises(ValueError, match="variant"):
        a.merge(b)
    b = pickle.loads(pickle.dumps(b))
    assert b.variant == "exact"
