"""VOC-like scenes for the metric benchmarks (shared by metrics_throughput.py and ia_miou_vs_official.py).

A scene is (prediction, ground truth, instance map), uint8 H×W:

* 2–8 rotated elliptic instances of random foreground classes, sizes spread over the
  small / medium / large buckets; some placed against an earlier instance of the same
  class (touching), some are bars painted across an earlier instance so that it is split
  into two parts that keep one instance id (an occluder);
* instance ids 1..n, consecutive with no gaps (instances hidden completely by later ones
  or by the band give their id away); a 5-px ignore band (255) on every instance border, in both maps;
* the prediction is derived from the ground truth with the band filled by the nearest
  label (so touching instances of one class become one blob), then per instance: some
  relabelled to another class, some eroded or dilated (which merges neighbours), a few
  missed; the whole map shifted by up to 8 px and a few small false blobs of random classes.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

NUM_CLASSES = 21  # background + 20 foreground classes, as VOC
IGNORE = 255


def _ellipse(shape: tuple[int, int], center, axes, angle: float) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (int(center[1]), int(center[0])), (int(axes[1]), int(axes[0])), angle, 0, 360, 1, -1)
    return mask.astype(bool)


def _bar(shape: tuple[int, int], center, length: float, width: float, angle: float) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    box = ((float(center[1]), float(center[0])), (float(length), float(width)), angle)
    cv2.fillPoly(mask, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
    return mask.astype(bool)


def voc_scene(
    rng: np.random.Generator, height: int = 375, width: int = 500, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, ground truth, instance map) of one generated scene."""
    shape = (height, width)
    scale = min(height, width) / 375
    inst = np.zeros(shape, np.int32)
    classes = [0]
    centers: list[tuple[float, float, float]] = []  # (cy, cx, radius) of each instance
    for j in range(int(rng.integers(2, 9))):
        radius = float(np.exp(rng.uniform(np.log(5), np.log(150)))) * scale  # areas ~80 px .. ~70k px
        kind = rng.random() if centers else 1.0
        if kind < 0.25:  # touching an earlier instance of the same class
            k = int(rng.integers(1, len(centers) + 1))
            cy, cx, r0 = centers[k - 1]
            theta = rng.uniform(0, 2 * np.pi)
            dist = 0.9 * (r0 + radius)
            center = (cy + dist * np.sin(theta), cx + dist * np.cos(theta))
            cls = classes[k]
            mask = _ellipse(shape, center, (radius, radius * rng.uniform(0.6, 1.0)), rng.uniform(0, 180))
        elif kind < 0.45:  # an occluding bar across an earlier instance: splits it in two parts
            k = int(rng.integers(1, len(centers) + 1))
            cy, cx, r0 = centers[k - 1]
            center, radius = (cy, cx), r0
            cls = int(rng.integers(1, num_classes))
            mask = _bar(shape, center, 3 * r0, max(4.0, r0 * rng.uniform(0.2, 0.5)), rng.uniform(0, 180))
        else:
            center = (rng.uniform(0, height), rng.uniform(0, width))
            cls = int(rng.integers(1, num_classes))
            axes = (radius, radius * rng.uniform(0.4, 1.0))
            mask = _ellipse(shape, center, axes, rng.uniform(0, 180))
        inst[mask] = j + 1
        classes.append(cls)
        centers.append((center[0], center[1], radius))
    # consecutive ids: instances hidden completely by later ones give their id away
    present = np.unique(inst)
    present = present[present > 0]
    relabel = np.zeros(len(classes), np.int32)
    relabel[present] = np.arange(1, present.size + 1)
    inst = relabel[inst]
    class_of = np.zeros(present.size + 1, np.uint8)
    class_of[1:] = np.asarray(classes)[present]
    gt = class_of[inst]
    band = ndimage.morphological_gradient(inst, size=(5, 5)) > 0

    # prediction: the band filled with the nearest label, then per-instance errors
    nearest = ndimage.distance_transform_edt(band, return_distances=False, return_indices=True)
    filled = inst[nearest[0], nearest[1]]
    pred = np.zeros(shape, np.uint8)
    for i in range(1, present.size + 1):
        mask = (filled == i).astype(np.uint8)
        r = rng.random()
        if r < 0.07:
            continue  # missed
        if r < 0.27:
            size = 2 * int(rng.integers(2, 7)) + 1
            mask = cv2.erode(mask, np.ones((size, size), np.uint8))
        elif r < 0.47:
            size = 2 * int(rng.integers(2, 7)) + 1
            mask = cv2.dilate(mask, np.ones((size, size), np.uint8))
        cls = class_of[i]
        if rng.random() < 0.15:
            cls = (cls + rng.integers(1, num_classes - 1) - 1) % (num_classes - 1) + 1  # another class
        pred[mask > 0] = cls
    dy, dx = (int(v) for v in rng.integers(-8, 9, size=2))
    pred = np.roll(pred, (dy, dx), axis=(0, 1))
    pred[slice(None, dy) if dy > 0 else slice(height + dy, None), :] = 0  # no wrap-around
    pred[:, slice(None, dx) if dx > 0 else slice(width + dx, None)] = 0
    for _ in range(int(rng.integers(0, 5))):  # small false blobs
        r = rng.uniform(2, 10) * scale
        blob = _ellipse(
            shape, (rng.uniform(0, height), rng.uniform(0, width)), (r, r * rng.uniform(0.5, 1)), 0
        )
        pred[blob] = rng.integers(1, num_classes)
    gt[band] = IGNORE
    inst[band] = 0
    visible = np.zeros(present.size + 1, np.int32)  # ids 1..n again: some instances were all band
    kept = np.flatnonzero(np.bincount(inst.ravel(), minlength=present.size + 1)[1:]) + 1
    visible[kept] = np.arange(1, kept.size + 1)
    inst = visible[inst].astype(np.uint8)
    inst[band] = IGNORE
    return pred, gt, inst


def speckle_scene(
    rng: np.random.Generator, height: int = 375, width: int = 500, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, ground truth, instance map) of the earlier metrics_throughput scenes: 3–10
    overlapping elliptic instances, a 5-px ignore band, the ground truth shifted and partly
    relabelled as prediction, and per-pixel speckles of random classes (dilated 0.1 % seeds),
    which put many small blobs inside holes of blobs of their class. Instance ids are made
    consecutive (1..n), as the official code requires."""
    yy, xx = np.mgrid[:height, :width]
    gt = np.zeros((height, width), np.uint8)
    inst = np.zeros((height, width), np.uint8)
    for j in range(int(rng.integers(3, 11))):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(3, max(4, height // 3)), rng.integers(3, max(4, width // 3))
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        gt[mask] = rng.integers(1, num_classes)
        inst[mask] = j + 1
    border = ndimage.morphological_gradient(inst, size=(5, 5)) > 0
    gt[border] = IGNORE
    inst[border] = IGNORE
    pred = np.roll(gt, tuple(rng.integers(-6, 7, size=2)), axis=(0, 1))
    pred[pred == IGNORE] = 0
    relabel = rng.random(num_classes) < 0.15
    pred = np.where(relabel[pred], rng.integers(1, num_classes), pred).astype(np.uint8)
    speckles = ndimage.binary_dilation(rng.random((height, width)) < 0.001, iterations=2)
    pred[speckles] = rng.integers(0, num_classes, size=int(speckles.sum()))
    ids = np.zeros(256, np.uint8)  # ids hidden by later instances or by the band give theirs away
    present = np.flatnonzero(np.bincount(inst.ravel(), minlength=256)[1:IGNORE]) + 1
    ids[present] = np.arange(1, present.size + 1)
    ids[IGNORE] = IGNORE
    return pred, gt, ids[inst]
