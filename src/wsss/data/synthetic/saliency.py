"""Saliency simulation: detectors of graded quality computed from a scene's true layout."""

from __future__ import annotations

import math

import cv2
import numpy as np

from wsss.data.synthetic.layout import _Scene
from wsss.data.synthetic.render import _smooth_noise

SALIENCY_SOURCES = {
    "oracle": "the exact foreground (union of the object masks); an upper bound",
    "good": "a strong detector: soft edges, ~1 px boundary errors, rarely a distractor or a missed tiny object",
    "poor": "a weak detector: misses most small objects, fires on distractors and context stuff, "
    "blurry, boundaries shifted by a few pixels",
}


def _saliency_maps(
    rng: np.random.Generator, scene: _Scene, s: float, small_bound: float
) -> dict[str, np.ndarray]:
    """Simulated salient-object detectors of graded quality (see SALIENCY_SOURCES)."""
    ids = scene.visible_ids
    H, W = ids.shape
    n = len(scene.instance_classes)
    areas = np.bincount(ids.ravel(), minlength=n + 1)[1:].astype(np.float64)
    maps = {"oracle": (ids > 0).astype(np.uint8) * 255}

    # good: faithful objects, ~1 px wobbly soft edges, rare misses and distractors
    level = np.zeros(n + 1, np.float32)
    level[1:] = rng.uniform(0.85, 1.0, n)
    missed = (areas < 0.5 * small_bound) & (rng.random(n) < 0.15)
    level[1:][missed] = rng.uniform(0.0, 0.12, int(missed.sum()))
    inten = level[ids]
    for d in scene.distractors:
        if rng.random() < 0.25:
            inten = np.maximum(inten, d * np.float32(rng.uniform(0.4, 0.75)))
    support = cv2.GaussianBlur((inten > 0).astype(np.float32), (0, 0), 1.2 * s)
    threshold = np.clip(0.5 + 0.18 * _smooth_noise(rng, H, W, 10), 0.25, 0.75)
    grown = cv2.dilate(inten, np.ones((5, 5), np.uint8))
    maps["good"] = cv2.GaussianBlur((support > threshold) * grown, (0, 0), 0.7 * s)

    # poor: misses small objects, uneven inside, fires on distractors and context, blurry, shifted
    p_miss = 0.95 / (1.0 + np.exp(2.5 * (np.log(np.maximum(areas, 1)) - math.log(1.5 * small_bound))))
    level = np.zeros(n + 1, np.float32)
    level[1:] = np.where(rng.random(n) >= p_miss, rng.uniform(0.5, 1.0, n), 0.0)
    uneven = np.clip(0.75 + 0.25 * _smooth_noise(rng, H, W, 5), 0.4, 1.0)
    inten = level[ids] * uneven
    for d in scene.distractors:
        if rng.random() < 0.8:
            inten = np.maximum(inten, d * np.float32(rng.uniform(0.6, 1.0)))
    for st in scene.stuff:
        if rng.random() < 0.5:
            inten = np.maximum(inten, st * np.float32(rng.uniform(0.3, 0.6)))
    if rng.random() < 0.3:
        inten = np.maximum(inten, (_smooth_noise(rng, H, W, 5) > 1.5) * np.float32(rng.uniform(0.25, 0.45)))
    radius = max(1, round(rng.integers(1, 4) * s))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    inten = cv2.dilate(inten, kernel) if rng.random() < 0.5 else cv2.erode(inten, kernel)
    shift = np.float32([[1, 0, rng.uniform(-2, 2) * s], [0, 1, rng.uniform(-2, 2) * s]])
    inten = cv2.warpAffine(inten, shift, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    maps["poor"] = cv2.GaussianBlur(inten, (0, 0), 2.5 * s)
    return maps
