"""Scene layout: how many objects of which classes, where they go (with bounded occlusion),
the label and instance maps with VOC's ignore band, and the assembly of a whole scene."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from wsss.data.synthetic.render import (
    _background,
    _eroded,
    _grid,
    _random_body_mask,
    _render_object,
    _stuff_texture,
    _vivid_colour,
)
from wsss.data.synthetic.shapes import _bank_template, _ClassDef, _procedural_template
from wsss.io import IGNORE

if TYPE_CHECKING:
    from wsss.data.synthetic.config import SynthConfig


# --------------------------------------------------------------------------- placement
def _place(rng: np.random.Generator, h: int, w: int, H: int, W: int) -> tuple[int, int]:
    """Top-left corner keeping the box inside the image (or a random crop of it when larger)."""
    y = rng.integers(min(0, H - h), max(0, H - h) + 1)
    x = rng.integers(min(0, W - w), max(0, W - w) + 1)
    return int(y), int(x)


def _paste(local: np.ndarray, y: int, x: int, H: int, W: int) -> np.ndarray:
    full = np.zeros((H, W), dtype=bool)
    h, w = local.shape
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
    if y1 > y0 and x1 > x0:
        full[y0:y1, x0:x1] = local[y0 - y : y1 - y, x0 - x : x1 - x]
    return full


def _stuff_region(
    rng: np.random.Generator, H: int, W: int, box: tuple[int, int, int, int] | None
) -> np.ndarray:
    """A band under (and around) the object's box, or anywhere for spurious stuff."""
    yy, xx = _grid(H, W)
    if box is None:
        cx = rng.uniform(0, W)
        half_w = rng.uniform(0.15, 0.35) * W
        top = rng.uniform(0.4, 0.75) * H
        bottom = float(H)
    else:
        y0, x0, y1, x1 = box
        bh, bw = y1 - y0, x1 - x0
        cx = (x0 + x1) / 2 + rng.uniform(-0.2, 0.2) * bw
        half_w = max(bw * rng.uniform(0.8, 1.6), 0.12 * W)
        top = y0 + bh * rng.uniform(0.4, 0.8)
        bottom = min(float(H), y1 + max(bh * rng.uniform(0.3, 0.8), 0.1 * H))
    wavy_top = top + rng.uniform(0, 0.04) * H * np.sin(2 * np.pi * xx[0] / (rng.uniform(0.3, 1.0) * W))
    return (np.abs(xx - cx) <= half_w) & (yy >= wavy_top[None, :]) & (yy < bottom)


# --------------------------------------------------------------------------- scenes
_MIN_VISIBLE_PX = 4


@dataclass
class _Object:
    class_index: int  # 0-based
    mask: np.ndarray  # bool H×W, the drawn silhouette
    part: np.ndarray  # bool H×W
    area: int
    visible: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]


@dataclass
class _Scene:
    image: np.ndarray  # uint8 H×W×3
    gt: np.ndarray  # uint8 class map, 255 band
    instances: np.ndarray  # uint8 instance ids 1..n in drawing order, 255 band
    visible_ids: np.ndarray  # instance ids before the band was cut out (0 = background)
    instance_classes: list[int]  # 1-based class of instance k+1
    distractors: list[np.ndarray]  # visible masks
    stuff: list[np.ndarray]  # visible masks
    context_shown: list[tuple[str, bool]]  # (stuff name, shown together with its class)
    parts: list[np.ndarray] = field(default_factory=list)  # visible discriminative part of instance k+1


def _choose_instances(rng: np.random.Generator, cfg: SynthConfig, num_classes: int) -> np.ndarray:
    kmax = min(cfg.max_classes_per_image, num_classes)
    pk = 0.5 ** np.arange(kmax)
    k = int(rng.choice(kmax, p=pk / pk.sum())) + 1
    chosen = rng.choice(num_classes, size=k, replace=False)
    nmax = max(cfg.max_instances_per_image, k)
    pn = 0.55 ** np.arange(nmax - k + 1)
    n = k + int(rng.choice(len(pn), p=pn / pn.sum()))
    order = np.concatenate([chosen, rng.choice(chosen, size=n - k)])
    rng.shuffle(order)
    return order


def _place_objects(
    rng: np.random.Generator, cfg: SynthConfig, classes: list[_ClassDef], H: int, W: int
) -> list[_Object]:
    """Objects back to front; a new one may hide at most ``max_occlusion`` of any earlier one."""
    log_lo, log_hi = math.log(cfg.min_object_area * H * W), math.log(cfg.max_object_area * H * W)
    placed: list[_Object] = []
    for c in _choose_instances(rng, cfg, len(classes)):
        cls = classes[c]
        target = math.exp(rng.uniform(log_lo, log_hi))
        accepted = None
        for attempt in range(12):
            if attempt % 4 == 0:  # after 4 failed positions, try a smaller object
                area = target * 0.7 ** (attempt // 4)
                tpl = (
                    _procedural_template(rng, cls, area, cfg)
                    if cls.silhouettes is None
                    else _bank_template(rng, cls, area)
                )
            y, x = _place(rng, tpl.body.shape[0], tpl.body.shape[1], H, W)
            mask = _paste(tpl.mask, y, x, H, W)
            drawn = int(mask.sum())
            if drawn < _MIN_VISIBLE_PX:
                continue
            if all((o.visible & ~mask).sum() >= (1 - cfg.max_occlusion) * o.area for o in placed):
                accepted = _Object(int(c), mask, _paste(tpl.part, y, x, H, W), drawn)
                break
        if accepted is None:
            continue
        for o in placed:
            o.visible = o.visible & ~accepted.mask
        accepted.visible = accepted.mask.copy()
        placed.append(accepted)
    return placed


def _label_maps(objects: list[_Object], band: int, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """(visible instance ids, ignore band): the band marks pixels next to a higher layer."""
    cover = np.zeros((H, W), dtype=bool)
    for o in reversed(objects):
        o.visible = o.mask & ~cover
        cover |= o.mask
    ids = np.zeros((H, W), np.uint8)
    for k, o in enumerate(objects, start=1):
        ids[o.visible] = k
    if band <= 0:
        return ids, np.zeros((H, W), dtype=bool)
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    return ids, cv2.dilate(ids, kernel, borderType=cv2.BORDER_REPLICATE) > ids


def _make_scene(rng: np.random.Generator, cfg: SynthConfig, classes: list[_ClassDef]) -> _Scene:
    H, W = cfg.height, cfg.width
    s = min(H, W) / 128.0
    objects: list[_Object] = []
    while not objects:
        objects = _place_objects(rng, cfg, classes, H, W)
        while objects:  # drop instances the band and occluders left (almost) invisible
            ids, band = _label_maps(objects, cfg.ignore_band, H, W)
            kept = np.bincount(ids[~band], minlength=len(objects) + 1)[1:] >= _MIN_VISIBLE_PX
            if kept.all():
                break
            objects = [o for o, k in zip(objects, kept, strict=True) if k]
    fg = ids > 0

    img = _background(rng, H, W, s, cfg)
    present = sorted({o.class_index for o in objects})
    stuff, shown = [], []
    for c in present:
        if classes[c].context is not None and rng.random() < cfg.context_prob:
            host = max((o for o in objects if o.class_index == c), key=lambda o: o.area)
            ys, xs = np.nonzero(host.mask)
            region = _stuff_region(rng, H, W, (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1))
            img[region] = _stuff_texture(rng, classes[c].context, H, W, s)[region]
            stuff.append(region & ~fg)
            shown.append((classes[c].context, True))
    if rng.random() < cfg.spurious_context_prob:
        absent = [cd.context for i, cd in enumerate(classes) if cd.context is not None and i not in present]
        if absent:
            name = absent[rng.integers(len(absent))]
            region = _stuff_region(rng, H, W, None)
            img[region] = _stuff_texture(rng, name, H, W, s)[region]
            stuff.append(region & ~fg)
            shown.append((name, False))

    distractors = []
    log_lo = math.log(cfg.min_object_area * H * W)
    for _ in range(min(int(rng.poisson(cfg.distractor_rate)), 3)):
        area = math.exp(rng.uniform(log_lo, math.log(0.12 * H * W)))
        mask = _random_body_mask(rng, H, W, area, margin=0.1)
        if not mask.any():
            continue
        colour = _vivid_colour(rng)
        img[mask] = colour
        img[mask & ~_eroded(mask)] *= 0.3
        distractors.append(mask & ~fg)

    for o in objects:
        _render_object(rng, img, o, classes, cfg, s)

    img = cv2.GaussianBlur(img, (0, 0), 0.5 * s)
    if cfg.noise_std > 0:
        img = img + rng.normal(0, cfg.noise_std, size=img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    lut = np.zeros(256, np.uint8)
    lut[1 : len(objects) + 1] = [o.class_index + 1 for o in objects]
    gt = lut[ids]
    gt[band] = IGNORE
    inst = ids.copy()
    inst[band] = IGNORE
    parts = [o.part & (ids == k) & ~band for k, o in enumerate(objects, start=1)]
    return _Scene(
        image, gt, inst, ids, [o.class_index + 1 for o in objects], distractors, stuff, shown, parts
    )
