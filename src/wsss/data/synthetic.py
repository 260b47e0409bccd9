"""The embedded benchmark (``wsss synth``): cartoon scenes in the PASCAL VOC layout.

Real WSSS benchmarks cannot be downloaded here, and a benchmark where every method
scores the same teaches nothing. So the scenes are built to make the problems that
WSSS methods exist for actually appear, each behind a knob of :class:`SynthConfig`:

* partial activation: classes share a few body shapes and differ by a small part
  (15-25 % of the object), whose colour is class-specific only part of the time;
* co-occurring context: half the classes usually stand on their own "stuff"
  (water, rails, ...), which is background in the ground truth;
* salient distractors (bright part-less bodies) and cluttered, textured backgrounds;
* small objects: areas are log-uniform from ~40 px to ~38 % of a 128×128 image, so
  the IA-mIoU small/medium/large buckets are all populated;
* saliency maps from simulated detectors of graded quality (``oracle``, ``good``,
  ``poor``), so saliency quality drives pseudo-label quality.

Every image draws its randomness from ``(seed, split, index)`` alone, so the files
do not depend on generation order, sharding or the size of the other split.
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from wsss.data.balance import select_balanced_subset
from wsss.data.base import write_label_csv
from wsss.io import (
    IGNORE,
    WsssError,
    atomic_write_text,
    read_json,
    save_image,
    save_label,
    save_saliency,
    write_json,
    write_run_json,
)

FORMAT_VERSION = 1
SALIENCY_SOURCES = {
    "oracle": "the exact foreground (union of the object masks); an upper bound",
    "good": "a strong detector: soft edges, ~1 px boundary errors, rarely a distractor or a missed tiny object",
    "poor": "a weak detector: misses most small objects, fires on distractors and context stuff, "
    "blurry, boundaries shifted by a few pixels",
}
# IA-mIoU size bounds of docs/methods.md (32², 96² px) are for VOC's ~500×375 images.
VOC_IMAGE_AREA = 187500
VOC_SIZE_BOUNDS = (1024, 9216)
SIZE_BUCKETS = ("small", "medium", "large")

# Classes are named after their discriminative part; the order puts the most distinct first.
PART_NAMES = (
    "spike", "ring", "fin", "trident", "crescent", "flag", "star", "tbar", "horns", "knob",
    "zigzag", "diamond", "hook", "fan", "cross", "comb", "eight", "arrow", "crown", "paddle",
)  # fmt: skip
STUFF_NAMES = ("water", "rails", "grass", "road", "bricks", "sand", "snow", "lava", "tiles", "clouds")
BODY_FAMILIES = ("ellipse", "rounded_box", "blob", "star")
BODY_TEXTURES = ("plain", "stripes", "spots", "gradient")
# Body colours shared by all classes (each class prefers three of them).
BODY_PALETTE = np.array(
    [
        [200, 80, 70], [225, 150, 60], [215, 200, 85], [110, 170, 80], [70, 155, 145], [85, 125, 205],
        [145, 105, 195], [205, 115, 165], [150, 110, 80], [170, 170, 170], [90, 92, 105], [235, 225, 205],
    ],
    dtype=np.float32,
)  # fmt: skip

_STREAM_CLASSES = 0
_STREAM_SPLIT = {"train": 1, "val": 2}
_N_ANGLES = 72
_ANGLES = np.linspace(0.0, 2.0 * np.pi, _N_ANGLES, endpoint=False)


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the generator. Areas are fractions of the image area.

    Attributes:
        height, width: image size in pixels (default 128×128).
        num_train, num_val: images per split (2000 / 500).
        num_classes: foreground classes, 1..20 for the procedural shapes (10); a shape
            bank sets its own count (one class per folder).
        max_classes_per_image: 1..k classes per image, P(k) ∝ 0.5^(k-1) (3).
        max_instances_per_image: instances per image, at least one per class (4).
        min_object_area, max_object_area: object areas are log-uniform in this range
            (0.0025 ≈ 40 px and 0.38 of a 128×128 image).
        max_occlusion: a later object may hide at most this fraction of an earlier one (0.5).
        part_area: range of the discriminative part's share of the object area (0.15-0.25).
        part_colour_specificity: probability that the part has its class's own colour;
            otherwise it takes the part colour of a random class (0.5). At 1.0 the colour
            alone identifies the class and CAMs shrink onto the part.
        body_colour_specificity: probability that the body colour comes from the class's
            three preferred palette colours rather than the whole shared palette (0.5).
        context_fraction: share of the classes that have a context "stuff" (0.5).
        context_prob: probability that such a class appears with its stuff (0.8).
        spurious_context_prob: probability per image of some stuff without its class (0.05).
        distractor_rate: mean number (Poisson) of salient part-less distractors per image (0.6).
        clutter_blobs: min and max number of low-contrast background blobs (2, 6).
        outline_prob: probability that an object gets a dark cartoon outline (0.6).
        noise_std: Gaussian pixel noise, in 0..255 units (5).
        ignore_band: width in pixels of the 255 band drawn around objects, on the side
            of the lower layer (background or occluded object), as in VOC (1; 0 = none).
    """

    height: int = 128
    width: int = 128
    num_train: int = 2000
    num_val: int = 500
    num_classes: int = 10
    max_classes_per_image: int = 3
    max_instances_per_image: int = 4
    min_object_area: float = 0.0025
    max_object_area: float = 0.38
    max_occlusion: float = 0.5
    part_area: tuple[float, float] = (0.15, 0.25)
    part_colour_specificity: float = 0.5
    body_colour_specificity: float = 0.5
    context_fraction: float = 0.5
    context_prob: float = 0.8
    spurious_context_prob: float = 0.05
    distractor_rate: float = 0.6
    clutter_blobs: tuple[int, int] = (2, 6)
    outline_prob: float = 0.6
    noise_std: float = 5.0
    ignore_band: int = 1


PRESETS: dict[str, SynthConfig] = {
    # seconds: for tests and the end-to-end smoke run
    "tiny": SynthConfig(height=64, width=64, num_train=60, num_val=30, num_classes=5),
    # the `wsss demo` dataset: trains a from-scratch ResNet-18 in minutes on 2 CPU cores
    "demo": SynthConfig(),
    # all 20 part classes, VOC-sized splits, for longer GPU experiments
    "large": SynthConfig(height=160, width=160, num_train=6000, num_val=1449, num_classes=20),
}


# --------------------------------------------------------------------------- public helpers
def scaled_size_bounds(height: int, width: int) -> tuple[int, int]:
    """IA-mIoU small/medium bounds scaled from VOC's image area to ``height × width``."""
    f = height * width / VOC_IMAGE_AREA
    return round(VOC_SIZE_BOUNDS[0] * f), round(VOC_SIZE_BOUNDS[1] * f)


def size_bucket(area: np.ndarray | float, bounds: tuple[float, float]) -> np.ndarray:
    """0 = small (< bounds[0]), 1 = medium (< bounds[1]), 2 = large."""
    return np.searchsorted(
        np.asarray(bounds, dtype=np.float64), np.asarray(area, dtype=np.float64), side="right"
    )


def load_shape_bank(shapes_dir: str | Path) -> dict[str, list[np.ndarray]]:
    """``DIR/<class_name>/*.png`` binary silhouettes → {class name: [bool masks cropped to the shape]}.

    Class names are the sorted folder names. The foreground is the brighter value
    (or the alpha channel when it has transparency); a picture whose border is mostly
    foreground is taken as a dark shape on white and inverted.
    """
    root = Path(shapes_dir)
    if not root.is_dir():
        raise WsssError(f"{root}: shape bank folder not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise WsssError(f"{root}: shape bank has no class folders (expected DIR/<class_name>/*.png)")
    if len(folders) > 254:
        raise WsssError(f"{root}: {len(folders)} class folders; label maps hold at most 254 classes")
    bank: dict[str, list[np.ndarray]] = {}
    for folder in folders:
        files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")
        )
        if not files:
            raise WsssError(f"{folder}: no silhouette PNGs in this class folder")
        bank[folder.name] = [_read_silhouette(f) for f in files]
    return bank


def _read_silhouette(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                alpha = np.asarray(rgba)[..., 3]
                arr = alpha if alpha.min() < 255 else np.asarray(rgba.convert("L"))
            else:
                arr = np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise WsssError(f"{path}: cannot read silhouette image ({e})") from None
    values = np.unique(arr)
    if values.size > 2:
        raise WsssError(
            f"{path}: not a binary silhouette ({values.size} grey levels; expected 2, e.g. 0 and 255)"
        )
    if values.size < 2:
        raise WsssError(f"{path}: silhouette is a single flat value; expected a shape on a background")
    mask = arr == values[1]
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if border.mean() > 0.5:
        mask = ~mask
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy()


# --------------------------------------------------------------------------- classes
@dataclass
class _ClassDef:
    name: str
    part: str | None  # procedural part name, None for shape-bank classes
    silhouettes: list[np.ndarray] | None
    family_p: np.ndarray
    texture_p: np.ndarray
    preferred_colours: np.ndarray
    part_colour: np.ndarray
    context: str | None


def _part_colour_table() -> np.ndarray:
    """20 saturated, well-separated colours (golden-ratio hues, two brightness levels)."""
    rows = []
    for i in range(len(PART_NAMES)):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95 if i % 2 == 0 else 0.62)
        rows.append((r * 255, g * 255, b * 255))
    return np.array(rows, dtype=np.float32)


def _make_classes(cfg: SynthConfig, seed: int, bank: dict[str, list[np.ndarray]] | None) -> list[_ClassDef]:
    rng = _rng(seed, _STREAM_CLASSES, 0)
    names = list(bank) if bank is not None else list(PART_NAMES[: cfg.num_classes])
    n = len(names)
    part_colours = _part_colour_table()[rng.permutation(len(PART_NAMES))]
    n_context = min(round(cfg.context_fraction * n), len(STUFF_NAMES))
    context_classes = set(rng.choice(n, size=n_context, replace=False).tolist())
    stuff_order = rng.permutation(len(STUFF_NAMES))
    out = []
    stuff_i = 0
    for i, name in enumerate(names):
        context = None
        if i in context_classes:
            context = STUFF_NAMES[stuff_order[stuff_i]]
            stuff_i += 1
        out.append(
            _ClassDef(
                name=name,
                part=None if bank is not None else name,
                silhouettes=None if bank is None else bank[name],
                family_p=rng.dirichlet(np.full(len(BODY_FAMILIES), 2.0)),
                texture_p=rng.dirichlet(np.full(len(BODY_TEXTURES), 2.0)),
                preferred_colours=rng.choice(len(BODY_PALETTE), size=3, replace=False),
                part_colour=part_colours[i % len(part_colours)],
                context=context,
            )
        )
    return out


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


# --------------------------------------------------------------------------- geometry
def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _ellipse(cx: float, cy: float, a: float, b: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], 1)


def _segment(p: tuple[float, float], q: tuple[float, float], width: float) -> np.ndarray:
    p_, q_ = np.asarray(p, float), np.asarray(q, float)
    d = q_ - p_
    normal = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * width / 2
    return np.stack([p_ + normal, q_ + normal, q_ - normal, p_ - normal])


def _star(cx: float, cy: float, outer: float, inner: float, points: int = 5) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False)
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _part_shape(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(filled polygons, holes) in the part's frame: attached at the origin, pointing along +x."""
    P = np.array
    if name == "spike":
        return [P([[0, -0.2], [1.0, 0], [0, 0.2]])], []
    if name == "ring":
        return [_rect(-0.05, -0.07, 0.4, 0.07), _ellipse(0.68, 0, 0.33, 0.33)], [
            _ellipse(0.68, 0, 0.17, 0.17)
        ]
    if name == "fin":
        return [P([[0, -0.42], [0.5, 0.05], [0.85, 0.5], [0.35, 0.28], [0, 0.42]])], []
    if name == "trident":
        prongs = [_rect(0.45, y - 0.055, 0.92, y + 0.055) for y in (-0.32, 0, 0.32)]
        return [_rect(-0.05, -0.06, 0.5, 0.06), _rect(0.42, -0.38, 0.54, 0.38), *prongs], []
    if name == "crescent":
        return [_ellipse(0.42, 0, 0.42, 0.42)], [_ellipse(0.62, 0, 0.33, 0.33)]
    if name == "flag":
        return [_rect(-0.05, -0.045, 0.95, 0.045), _rect(0.5, 0.04, 0.95, 0.48)], []
    if name == "star":
        return [_rect(-0.05, -0.06, 0.35, 0.06), _star(0.68, 0, 0.38, 0.16)], []
    if name == "tbar":
        return [_rect(-0.05, -0.07, 0.62, 0.07), _rect(0.6, -0.45, 0.76, 0.45)], []
    if name == "horns":
        return [P([[0, 0.08], [0, 0.38], [0.85, 0.62]]), P([[0, -0.08], [0, -0.38], [0.85, -0.62]])], []
    if name == "knob":
        return [_rect(-0.05, -0.06, 0.6, 0.06), _ellipse(0.78, 0, 0.24, 0.24)], []
    if name == "zigzag":
        pts = [(0, 0), (0.25, 0.25), (0.5, -0.25), (0.75, 0.25), (1.0, -0.05)]
        segs = [_segment(pts[i], pts[i + 1], 0.13) for i in range(len(pts) - 1)]
        joints = [_ellipse(x, y, 0.065, 0.065, 12) for x, y in pts[1:-1]]
        return [*segs, *joints], []
    if name == "diamond":
        return [_rect(-0.05, -0.05, 0.35, 0.05), P([[0.3, 0], [0.66, -0.32], [1.02, 0], [0.66, 0.32]])], []
    if name == "hook":
        return [
            _rect(-0.05, -0.06, 0.75, 0.06),
            _rect(0.63, -0.06, 0.75, 0.45),
            _rect(0.35, 0.33, 0.75, 0.45),
        ], []
    if name == "fan":
        t = np.linspace(-0.9, 0.9, 17)
        return [np.concatenate([[[0, 0]], np.stack([0.75 * np.cos(t), 0.75 * np.sin(t)], 1)])], []
    if name == "cross":
        return [
            _rect(-0.05, -0.05, 0.4, 0.05),
            _rect(0.38, -0.09, 0.95, 0.09),
            _rect(0.57, -0.3, 0.75, 0.3),
        ], []
    if name == "comb":
        teeth = [_rect(0.08, y - 0.04, 0.6, y + 0.04) for y in np.linspace(-0.4, 0.4, 5)]
        return [_rect(-0.05, -0.46, 0.12, 0.46), *teeth], []
    if name == "eight":
        return (
            [_rect(-0.05, -0.05, 0.3, 0.05), _ellipse(0.47, 0, 0.2, 0.2), _ellipse(0.83, 0, 0.2, 0.2)],
            [_ellipse(0.47, 0, 0.09, 0.09), _ellipse(0.83, 0, 0.09, 0.09)],
        )
    if name == "arrow":
        return [_rect(-0.05, -0.05, 0.55, 0.05), P([[0.45, -0.32], [1.0, 0], [0.45, 0.32]])], []
    if name == "crown":
        spikes = [P([[0.1, y - 0.13], [0.62, y], [0.1, y + 0.13]]) for y in (-0.3, 0, 0.3)]
        return [_rect(-0.05, -0.43, 0.15, 0.43), *spikes], []
    if name == "paddle":
        return [_rect(-0.05, -0.045, 0.6, 0.045), _ellipse(0.85, 0, 0.27, 0.16)], []
    raise ValueError(f"unknown part {name!r}")


def _fill(canvas: np.ndarray, polys: list[np.ndarray], value: int) -> None:
    if polys:
        pts = [np.round(p * 16).astype(np.int32) for p in polys]  # 4 fractional bits
        cv2.fillPoly(canvas, pts, value, lineType=cv2.LINE_8, shift=4)


@cache
def _part_area(name: str) -> float:
    """Area of a part in its own (unit) frame, measured by rasterising at 100 px per unit."""
    fills, holes = _part_shape(name)
    scale, off = 100.0, 120.0
    canvas = np.zeros((240, 240), np.uint8)
    _fill(canvas, [p * scale + off for p in fills], 1)
    _fill(canvas, [p * scale + off for p in holes], 0)
    return float(canvas.sum()) / scale**2


def _body_radius(rng: np.random.Generator, family: str) -> np.ndarray:
    """r(φ) of a star-shaped body, normalised to area π (mean radius ≈ 1)."""
    c, s = np.cos(_ANGLES), np.sin(_ANGLES)
    if family == "ellipse":
        b = rng.uniform(0.45, 0.95)
        r = 1.0 / np.sqrt(c**2 + (s / b) ** 2)
    elif family == "rounded_box":
        b, n = rng.uniform(0.45, 0.95), rng.uniform(3.0, 6.0)
        r = (np.abs(c) ** n + np.abs(s / b) ** n) ** (-1.0 / n)
    elif family == "blob":
        # union of three ellipses that all contain the origin: star-shaped w.r.t. the origin
        r = np.zeros(_N_ANGLES)
        for _ in range(3):
            a, b, psi = rng.uniform(0.55, 1.0), rng.uniform(0.35, 0.65), rng.uniform(0, np.pi)
            off = rng.uniform(0, 0.8 * b) * np.array([np.cos(t := rng.uniform(0, 2 * np.pi)), np.sin(t)])
            cp, sp = np.cos(psi), np.sin(psi)
            ux, uy = c * cp + s * sp, -c * sp + s * cp  # ray direction in the ellipse frame
            ox, oy = off[0] * cp + off[1] * sp, -off[0] * sp + off[1] * cp
            qa = (ux / a) ** 2 + (uy / b) ** 2
            qb = ux * ox / a**2 + uy * oy / b**2
            qc = (ox / a) ** 2 + (oy / b) ** 2 - 1.0
            r = np.maximum(r, (qb + np.sqrt(qb**2 - qa * qc)) / qa)
    else:  # "star": a smooth random star-convex outline
        k = np.arange(2, 6)[:, None]
        amp = rng.uniform(0, 0.2, size=(4, 1)) / np.sqrt(k - 1)
        r = 1.0 + (amp * np.cos(k * _ANGLES[None] + rng.uniform(0, 2 * np.pi, size=(4, 1)))).sum(0)
        r = np.maximum(r, 0.45)
    area = 0.5 * np.sum(r**2) * (2 * np.pi / _N_ANGLES)
    return r * np.sqrt(np.pi / area)


@dataclass
class _Template:
    """An object's rasterised silhouette, cropped to its bounding box."""

    body: np.ndarray  # bool h×w
    part: np.ndarray  # bool h×w (all False for shape-bank objects)

    @property
    def mask(self) -> np.ndarray:
        return self.body | self.part


def _procedural_template(
    rng: np.random.Generator, cls: _ClassDef, area: float, cfg: SynthConfig
) -> _Template:
    family = BODY_FAMILIES[rng.choice(len(BODY_FAMILIES), p=cls.family_p)]
    r = _body_radius(rng, family)
    body = np.stack([r * np.cos(_ANGLES), r * np.sin(_ANGLES)], 1)
    share = rng.uniform(*cfg.part_area)
    part_area = np.pi * share / (1.0 - share)
    fills, holes = _part_shape(cls.part)
    k = math.sqrt(part_area / _part_area(cls.part))
    jitter = np.array([rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1)])
    i = rng.integers(_N_ANGLES)
    theta = _ANGLES[i]
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    anchor = 0.93 * r[i] * np.array([np.cos(theta), np.sin(theta)])
    to_body = lambda p: (p * k * jitter) @ rot.T + anchor  # noqa: E731

    w = rng.uniform(0, 2 * np.pi)
    flip = np.array([1.0, rng.choice([-1.0, 1.0])])
    obj_rot = np.array([[np.cos(w), -np.sin(w)], [np.sin(w), np.cos(w)]]) * flip[None, :]
    unit = [p @ obj_rot.T for p in (body, *(to_body(p) for p in fills), *(to_body(p) for p in holes))]

    def rasterise(scale: float) -> _Template:
        body_px, *rest = (p * scale for p in unit)
        fills_px, holes_px = rest[: len(fills)], rest[len(fills) :]
        lo = np.floor(np.concatenate([body_px, *fills_px]).min(0)) - 1
        hi = np.ceil(np.concatenate([body_px, *fills_px]).max(0)) + 2
        body_c = np.zeros((int(hi[1] - lo[1]), int(hi[0] - lo[0])), np.uint8)
        part_c = np.zeros_like(body_c)
        _fill(body_c, [body_px - lo], 1)
        _fill(part_c, [p - lo for p in fills_px], 1)
        _fill(part_c, [p - lo for p in holes_px], 0)
        return _crop(body_c.astype(bool), part_c.astype(bool))

    # rasterising adds the boundary pixels (+30 % at 40 px): correct the scale once
    scale = math.sqrt(area / (np.pi + part_area))
    tpl = rasterise(scale)
    drawn = int(tpl.mask.sum())
    if drawn and abs(drawn / area - 1) > 0.05:
        tpl = rasterise(scale * math.sqrt(area / drawn))
    return tpl


def _bank_template(rng: np.random.Generator, cls: _ClassDef, area: float) -> _Template:
    sil = cls.silhouettes[rng.integers(len(cls.silhouettes))]
    f = math.sqrt(area / max(int(sil.sum()), 1))
    angle = rng.uniform(-20, 20)
    h, w = sil.shape
    rad = math.radians(angle)
    out_w = int(math.ceil((abs(math.cos(rad)) * w + abs(math.sin(rad)) * h) * f)) + 2
    out_h = int(math.ceil((abs(math.sin(rad)) * w + abs(math.cos(rad)) * h) * f)) + 2
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, f)
    m[:, 2] += (out_w / 2 - w / 2, out_h / 2 - h / 2)
    warped = cv2.warpAffine(sil.astype(np.uint8) * 255, m, (out_w, out_h), flags=cv2.INTER_LINEAR) > 127
    if rng.random() < 0.5:
        warped = warped[:, ::-1]
    return _crop(warped, np.zeros_like(warped))


def _crop(body: np.ndarray, part: np.ndarray) -> _Template:
    m = body | part
    if not m.any():
        return _Template(body[:0, :0], part[:0, :0])
    ys, xs = np.nonzero(m)
    sl = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return _Template(body[sl] & ~part[sl], part[sl].copy())


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


# --------------------------------------------------------------------------- textures
@lru_cache(maxsize=8)
def _grid(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, H: int, W: int, cells: float) -> np.ndarray:
    """Zero-mean, unit-std noise smooth over ~max(H, W)/cells pixels."""
    ch = max(2, round(cells * H / max(H, W))) + 1
    cw = max(2, round(cells * W / max(H, W))) + 1
    up = cv2.resize(rng.standard_normal((ch, cw)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    return (up - up.mean()) / (up.std() + 1e-6)


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.5), rng.uniform(0.35, 0.9))
    return np.array([r, g, b], np.float32) * 255


def _vivid_colour(rng: np.random.Generator) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0))
    return np.array([r, g, b], np.float32) * 255


def _background(rng: np.random.Generator, H: int, W: int, s: float, cfg: SynthConfig) -> np.ndarray:
    """Sky/ground or gradient base, one or two textures, and low-contrast blobs."""
    yy, xx = _grid(H, W)
    c1, c2 = _muted_colour(rng), _muted_colour(rng)
    if rng.random() < 0.5:
        horizon = rng.uniform(0.3, 0.7) * H + rng.uniform(0, 0.05) * H * np.sin(
            2 * np.pi * xx / (rng.uniform(0.5, 1.5) * W) + rng.uniform(0, 2 * np.pi)
        )
        t = (yy > horizon).astype(np.float32) * 0.8 + 0.2 * yy / H
    else:
        a = rng.uniform(0, 2 * np.pi)
        proj = xx * np.cos(a) + yy * np.sin(a)
        t = (proj - proj.min()) / (proj.max() - proj.min() + 1e-6)
    img = c1 + t[..., None] * (c2 - c1)
    for kind in rng.choice(4, size=rng.integers(1, 3), replace=False):
        tint = rng.uniform(0.6, 1.2, size=3).astype(np.float32)
        if kind == 0:
            tex = rng.uniform(10, 28) * _smooth_noise(rng, H, W, rng.uniform(3, 9))
        elif kind == 1:
            a, period = rng.uniform(0, np.pi), rng.uniform(5, 16) * s
            tex = rng.uniform(8, 20) * np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period)
        elif kind == 2:
            cell = max(2, int(rng.uniform(6, 16) * s))
            tex = rng.uniform(6, 14) * (((xx // cell + yy // cell) % 2) * 2 - 1)
        else:
            tex = rng.uniform(6, 14) * rng.standard_normal((H, W)).astype(np.float32)
        img = img + tex[..., None] * tint
    for _ in range(rng.integers(cfg.clutter_blobs[0], cfg.clutter_blobs[1] + 1)):
        mask = _random_body_mask(rng, H, W, rng.uniform(0.005, 0.06) * H * W)
        colour = img[mask].mean(0) + rng.uniform(-45, 45, size=3) if mask.any() else _muted_colour(rng)
        alpha = rng.uniform(0.5, 0.9)
        img[mask] = (1 - alpha) * img[mask] + alpha * colour
    return img


def _random_body_mask(
    rng: np.random.Generator, H: int, W: int, area: float, margin: float = 0.0
) -> np.ndarray:
    """A part-less body (clutter, distractors) centred at least ``margin`` of the image from its border."""
    r = _body_radius(rng, BODY_FAMILIES[rng.integers(len(BODY_FAMILIES))]) * math.sqrt(area / np.pi)
    w = rng.uniform(0, 2 * np.pi)
    pts = np.stack([r * np.cos(_ANGLES + w), r * np.sin(_ANGLES + w)], 1)
    pts = pts + [rng.uniform(margin, 1 - margin) * W, rng.uniform(margin, 1 - margin) * H]
    canvas = np.zeros((H, W), np.uint8)
    _fill(canvas, [pts], 1)
    return canvas.astype(bool)


def _stuff_texture(rng: np.random.Generator, name: str, H: int, W: int, s: float) -> np.ndarray:
    """A full-canvas texture for a context stuff (the region mask picks where it shows)."""
    yy, xx = _grid(H, W)

    def base(rgb: tuple[int, int, int], noise: float) -> np.ndarray:
        col = np.array(rgb, np.float32) * rng.uniform(0.9, 1.1)
        return col + noise * _smooth_noise(rng, H, W, 12)[..., None]

    if name == "water":
        img = base((45, 95, 175), 8)
        wave = np.sin(2 * np.pi * (yy / (6 * s) + 0.3 * np.sin(2 * np.pi * xx / (22 * s))))
        return img + (28 * (wave > 0.6))[..., None] * np.array([1.0, 1.0, 0.8], np.float32)
    if name == "rails":
        img = base((125, 112, 98), 10)
        ties = ((xx + rng.integers(0, 100)) % max(3, round(8 * s))) < max(1, round(2.5 * s))
        img[ties] = np.array([95, 65, 40], np.float32)
        rail = ((yy + rng.integers(0, 100)) % max(4, round(12 * s))) < max(1, round(1.5 * s))
        img[rail] = np.array([195, 195, 205], np.float32)
        return img
    if name == "grass":
        img = base((65, 145, 55), 6)
        streak = cv2.resize(rng.standard_normal((max(2, H // 8), W)).astype(np.float32), (W, H))
        return img + (22 * streak)[..., None] * np.array([0.6, 1.0, 0.5], np.float32)
    if name == "road":
        img = base((72, 72, 78), 6)
        dash = (np.abs((yy % max(6, round(18 * s))) - 8 * s) < max(1, s)) & (
            (xx % max(4, round(12 * s))) < 6 * s
        )
        img[dash] = np.array([235, 235, 220], np.float32)
        return img
    if name == "bricks":
        img = base((155, 65, 45), 10)
        row = max(3, round(6 * s))
        mortar = (yy % row < 1) | ((xx + (yy // row % 2) * round(5 * s)) % max(4, round(11 * s)) < 1)
        img[mortar] = np.array([205, 195, 180], np.float32)
        return img
    if name == "sand":
        img = base((212, 186, 130), 8)
        dots = rng.random((H, W)) < 0.08
        img[dots] *= 0.75
        return img
    if name == "snow":
        return base((236, 240, 250), 3) - (10 * np.abs(_smooth_noise(rng, H, W, 6)))[..., None] * np.array(
            [1.0, 0.6, 0.0], np.float32
        )
    if name == "lava":
        img = base((190, 55, 20), 12)
        veins = np.abs(_smooth_noise(rng, H, W, 7)) < 0.25
        img[veins] = np.array([255, 215, 60], np.float32)
        return img
    if name == "tiles":
        cell = max(2, round(5 * s))
        check = ((xx // cell + yy // cell) % 2).astype(bool)
        img = np.where(check[..., None], np.float32(215), np.float32(55)) * np.ones(3, np.float32)
        return img + 5 * _smooth_noise(rng, H, W, 10)[..., None]
    if name == "clouds":
        img = base((150, 192, 235), 4)
        puffs = np.clip((_smooth_noise(rng, H, W, 8) - 0.3) * 2.5, 0, 1)
        return img + (puffs * 90)[..., None] * np.array([1.0, 0.7, 0.2], np.float32)
    raise ValueError(f"unknown stuff {name!r}")


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


def _body_field(rng: np.random.Generator, cls: _ClassDef, cfg: SynthConfig, h: int, w: int) -> np.ndarray:
    """Body colour with the class's (weakly class-dependent) texture, h×w×3."""
    if rng.random() < cfg.body_colour_specificity:
        colour = BODY_PALETTE[cls.preferred_colours[rng.integers(3)]]
    else:
        colour = BODY_PALETTE[rng.integers(len(BODY_PALETTE))]
    colour = np.clip(colour * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12, size=3), 0, 255).astype(
        np.float32
    )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    proj = (xx * np.cos(a) + yy * np.sin(a)) / max(h, w, 1)
    shade = 1.08 - 0.18 * (proj - proj.min())  # soft light from one side
    texture = BODY_TEXTURES[rng.choice(len(BODY_TEXTURES), p=cls.texture_p)]
    size = math.sqrt(h * w)
    if texture == "stripes":
        b = rng.uniform(0, np.pi)
        period = max(2.5, size / rng.uniform(3, 6))
        shade = shade * (1 + 0.2 * np.sign(np.sin(2 * np.pi * (xx * np.cos(b) + yy * np.sin(b)) / period)))
    elif texture == "spots":
        noise = cv2.resize(rng.standard_normal((max(2, h // 3), max(2, w // 3))).astype(np.float32), (w, h))
        shade = shade * np.where(noise > 0.9, 0.68, 1.0)
    elif texture == "gradient":
        shade = shade * (1.2 - 0.45 * (proj - proj.min()) / (np.ptp(proj) + 1e-6))
    return colour * shade[..., None]


def _part_colour(
    rng: np.random.Generator,
    cls: _ClassDef,
    classes: list[_ClassDef],
    body_mean: np.ndarray,
    specificity: float,
) -> np.ndarray:
    """The class's own part colour with probability ``specificity``, else another class's."""
    own = rng.random() < specificity
    colour = cls.part_colour if own else classes[rng.integers(len(classes))].part_colour
    colour = np.clip(colour + rng.uniform(-10, 10, size=3), 0, 255).astype(np.float32)
    if np.abs(colour - body_mean).sum() < 90:  # keep the part visible against its body
        colour = colour * 0.55 if colour.mean() > 120 else colour * 0.55 + 110
    return colour


# --------------------------------------------------------------------------- scenes
_MIN_VISIBLE_PX = 4
_KERNEL3 = np.ones((3, 3), np.uint8)


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
    return _Scene(image, gt, inst, ids, [o.class_index + 1 for o in objects], distractors, stuff, shown)


def _eroded(mask: np.ndarray) -> np.ndarray:
    """The mask minus its 1-px inner rim (pixels outside the array count as background)."""
    return cv2.erode(mask.astype(np.uint8), _KERNEL3, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(
        bool
    )


def _render_object(
    rng: np.random.Generator,
    img: np.ndarray,
    o: _Object,
    classes: list[_ClassDef],
    cfg: SynthConfig,
    s: float,
) -> None:
    ys, xs = np.nonzero(o.mask)
    box = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    m, part = o.mask[box], o.part[box]
    body = m & ~part
    sub = img[box]
    cls = classes[o.class_index]
    colour_field = _body_field(rng, cls, cfg, *m.shape)
    sub[body] = colour_field[body]
    if part.any():
        body_mean = colour_field[body].mean(0) if body.any() else colour_field.mean((0, 1))
        colour = _part_colour(rng, cls, classes, body_mean, cfg.part_colour_specificity)
        sub[part] = colour * rng.uniform(0.95, 1.05)
    if o.area >= 60 * s * s and rng.random() < cfg.outline_prob:
        sub[m & ~_eroded(m)] *= 0.35


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


def _generate_image(
    seed: int, split: str, index: int, cfg: SynthConfig, classes: list[_ClassDef], small_bound: float
) -> tuple[_Scene, dict[str, np.ndarray]]:
    """One image from (seed, split, index) alone; saliency has its own stream so the
    scene does not change when the simulated detectors do."""
    scene_ss, saliency_ss = np.random.SeedSequence([seed, _STREAM_SPLIT[split], index]).spawn(2)
    scene = _make_scene(np.random.default_rng(scene_ss), cfg, classes)
    s = min(cfg.height, cfg.width) / 128.0
    return scene, _saliency_maps(np.random.default_rng(saliency_ss), scene, s, small_bound)


# --------------------------------------------------------------------------- config handling
def _resolve_config(config: SynthConfig | str, overrides: dict[str, Any]) -> tuple[SynthConfig, str | None]:
    if isinstance(config, str):
        if config not in PRESETS:
            raise WsssError(f"unknown synth preset {config!r}; known: {', '.join(PRESETS)}")
        preset, cfg = config, PRESETS[config]
    elif isinstance(config, SynthConfig):
        preset, cfg = None, config
    else:
        raise TypeError(f"config must be a SynthConfig or a preset name, got {type(config).__name__}")
    fields = {f.name: f for f in dataclasses.fields(SynthConfig)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise WsssError(f"synth config: unknown options {unknown}; valid: {sorted(fields)}")
    values = {}
    for name, value in overrides.items():
        kind = str(fields[name].type)
        try:
            if kind.startswith("tuple"):
                item = int if "int" in kind else float
                value = tuple(item(v) for v in value)
                if len(value) != 2:
                    raise ValueError("expected two values")
            elif kind == "int":
                if isinstance(value, bool) or float(value) != int(value):
                    raise ValueError("expected an integer")
                value = int(value)
            else:
                value = float(value)
        except (TypeError, ValueError) as e:
            raise WsssError(f"synth config: {name}={value!r} is not a valid {kind} ({e})") from None
        values[name] = value
    return dataclasses.replace(cfg, **values), preset


def _validate(cfg: SynthConfig, seed: int, procedural: bool) -> None:
    def bad(msg: str) -> WsssError:
        return WsssError(f"synth config: {msg}")

    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise bad(f"seed must be a non-negative integer, got {seed!r}")
    if not (16 <= cfg.height <= 4096 and 16 <= cfg.width <= 4096):
        raise bad(f"image size {cfg.height}×{cfg.width} outside 16..4096")
    if cfg.num_train < 1 or cfg.num_val < 1:
        raise bad(f"num_train and num_val must be >= 1, got {cfg.num_train}, {cfg.num_val}")
    if procedural and not 1 <= cfg.num_classes <= len(PART_NAMES):
        raise bad(f"num_classes={cfg.num_classes} outside 1..{len(PART_NAMES)} (use a shape bank for more)")
    if cfg.max_classes_per_image < 1 or not 1 <= cfg.max_instances_per_image <= 254:
        raise bad("max_classes_per_image must be >= 1 and max_instances_per_image in 1..254")
    if not 0 < cfg.min_object_area < cfg.max_object_area <= 1:
        raise bad(
            f"need 0 < min_object_area < max_object_area <= 1, got {cfg.min_object_area}, {cfg.max_object_area}"
        )
    if cfg.min_object_area * cfg.height * cfg.width < 8:
        raise bad(
            f"min_object_area={cfg.min_object_area} gives objects under 8 px at {cfg.height}×{cfg.width}"
        )
    if not 0 < cfg.part_area[0] <= cfg.part_area[1] < 0.6:
        raise bad(f"part_area {cfg.part_area} must satisfy 0 < low <= high < 0.6")
    if not 0 <= cfg.clutter_blobs[0] <= cfg.clutter_blobs[1]:
        raise bad(f"clutter_blobs {cfg.clutter_blobs} must satisfy 0 <= low <= high")
    for name in ("max_occlusion", "part_colour_specificity", "body_colour_specificity", "context_fraction",
                 "context_prob", "spurious_context_prob", "outline_prob"):  # fmt: skip
        if not 0 <= getattr(cfg, name) <= 1:
            raise bad(f"{name}={getattr(cfg, name)} outside 0..1")
    if cfg.max_occlusion >= 1:
        raise bad("max_occlusion must be < 1 (an object may not vanish)")
    if cfg.distractor_rate < 0 or cfg.noise_std < 0 or not 0 <= cfg.ignore_band <= 8:
        raise bad("distractor_rate and noise_std must be >= 0, ignore_band in 0..8")


def _bank_digest(shapes_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(shapes_dir.rglob("*.png")):
        h.update(str(f.relative_to(shapes_dir)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _identity(cfg: SynthConfig, seed: int, shapes_dir: Path | None) -> dict[str, Any]:
    """What must match for an existing dataset to count as this one (JSON-normalised)."""
    shapes = None if shapes_dir is None else {"dir": str(shapes_dir), "sha256": _bank_digest(shapes_dir)}
    return json.loads(
        json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "seed": int(seed),
                "config": dataclasses.asdict(cfg),
                "shapes": shapes,
            }
        )
    )


def _same_dataset(old: Any, new: dict[str, Any]) -> bool:
    if not isinstance(old, dict) or old.get("kind") != "synthetic":
        return False
    old_shapes, new_shapes = old.get("shapes"), new["shapes"]
    same_shapes = (old_shapes is None) == (new_shapes is None) and (
        new_shapes is None
        or (isinstance(old_shapes, dict) and old_shapes.get("sha256") == new_shapes["sha256"])
    )
    return same_shapes and all(old.get(k) == new[k] for k in ("format_version", "seed", "config"))


# --------------------------------------------------------------------------- statistics
def _split_statistics(
    ids: list[str],
    labels: dict[str, np.ndarray],
    records: list[tuple[str, int, float]],
    class_names: list[str],
    bounds: tuple[int, int],
    scene_info: dict[str, dict[str, Any]],
    context_of: dict[str, str],
) -> dict[str, Any]:
    fg = class_names[1:]
    keep = set(ids)
    recs = [r for r in records if r[0] in keep]
    images_per_class = np.zeros(len(fg), np.int64)
    for i in ids:
        images_per_class[labels[i] - 1] += 1
    instances_per_class = np.bincount(np.array([c - 1 for _, c, _ in recs], np.int64), minlength=len(fg))
    buckets = (
        np.bincount(size_bucket([a for _, _, a in recs], bounds), minlength=3) if recs else np.zeros(3, int)
    )
    class_of_stuff = {stuff: name for name, stuff in context_of.items()}
    shown_with_class = dict.fromkeys(context_of, 0)
    spurious = 0
    for i in ids:
        for stuff, with_class in scene_info[i]["context"]:
            if with_class:
                shown_with_class[class_of_stuff[stuff]] += 1
            else:
                spurious += 1
    per_class = dict(zip(fg, images_per_class.tolist(), strict=True))
    return {
        "images": len(ids),
        "instances": len(recs),
        "images_per_class": per_class,
        "instances_per_class": dict(zip(fg, instances_per_class.tolist(), strict=True)),
        "instances_per_size": dict(zip(SIZE_BUCKETS, buckets.tolist(), strict=True)),
        "mean_classes_per_image": round(float(np.mean([labels[i].size for i in ids])), 4),
        "mean_instances_per_image": round(len(recs) / len(ids), 4),
        # share of a context class's images that show its stuff (the co-occurrence bias)
        "context_cooccurrence": {
            name: round(n / per_class[name], 4) if per_class[name] else None
            for name, n in shown_with_class.items()
        },
        "spurious_context_images": spurious,
        "distractors": sum(scene_info[i]["distractors"] for i in ids),
    }


# --------------------------------------------------------------------------- the stage
def generate(
    out_dir: str | Path,
    config: SynthConfig | str = "demo",
    seed: int = 0,
    shapes_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **overrides: Any,
) -> Path:
    """Write the synthetic benchmark to ``out_dir`` (VOC layout) and return ``out_dir``.

    ``config`` is a :class:`SynthConfig` or a preset name (:data:`PRESETS`);
    ``overrides`` replace single fields (``num_classes=5``). ``shapes_dir`` swaps the
    procedural shapes for ``DIR/<class_name>/*.png`` silhouettes. An existing complete
    dataset of the same config and seed is returned as is; an interrupted one is
    finished (existing files are kept); a different one is an error unless ``overwrite``.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    cfg, preset = _resolve_config(config, overrides)
    shapes = None if shapes_dir is None else Path(shapes_dir)
    bank = load_shape_bank(shapes) if shapes is not None else None
    _validate(cfg, seed, procedural=bank is None)
    identity = _identity(cfg, seed, shapes)

    meta_path = out / "dataset.json"
    resume = False
    if meta_path.is_file():
        old = read_json(meta_path)
        same = _same_dataset(old, identity)
        if same and old.get("complete"):
            return out
        if not same and not overwrite:
            raise WsssError(
                f"{meta_path}: holds a dataset made with another config, seed or shape bank; "
                "pass overwrite=True (--overwrite) or choose another folder"
            )
        resume = same
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise WsssError(f"{out}: folder is not empty and has no dataset.json; refusing to write into it")

    classes = _make_classes(cfg, int(seed), bank)
    class_names = ["background"] + [c.name for c in classes]
    H, W = cfg.height, cfg.width
    bounds = scaled_size_bounds(H, W)
    header = {"kind": "synthetic", **identity, "preset": preset, "complete": False}
    write_json(meta_path, header)

    split_ids: dict[str, list[str]] = {}
    labels: dict[str, np.ndarray] = {}
    records: dict[str, list[tuple[str, int, float]]] = {}
    scene_info: dict[str, dict[str, Any]] = {}
    total = cfg.num_train + cfg.num_val
    with tqdm(total=total, desc=f"synth {out.name}", unit="img", disable=not progress) as bar:
        for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
            digits = max(5, len(str(count - 1)))
            split_ids[split] = []
            records[split] = []
            for index in range(count):
                image_id = f"{split}_{index:0{digits}d}"
                scene, saliency = _generate_image(int(seed), split, index, cfg, classes, bounds[0])
                _write_image(out, image_id, scene, saliency, skip_existing=resume)
                split_ids[split].append(image_id)
                labels[image_id] = np.unique(scene.gt[(scene.gt > 0) & (scene.gt != IGNORE)]).astype(np.int64)
                areas = np.bincount(scene.instances.ravel(), minlength=256)
                for k, c in enumerate(scene.instance_classes, start=1):
                    records[split].append((image_id, c, float(areas[k])))
                scene_info[image_id] = {"context": scene.context_shown, "distractors": len(scene.distractors)}
                bar.update()

    balanced = select_balanced_subset(records["val"], bounds) or list(split_ids["val"])
    split_ids["val_balanced"] = balanced
    for split, ids in split_ids.items():
        atomic_write_text(out / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
    atomic_write_text(out / "class_names.txt", "\n".join(class_names) + "\n")
    write_label_csv(out / "image_labels.csv", labels, class_names)

    context_of = {c.name: c.context for c in classes if c.context is not None}
    all_records = records["train"] + records["val"]
    statistics = {
        split: _split_statistics(ids, labels, all_records, class_names, bounds, scene_info, context_of)
        for split, ids in split_ids.items()
    }
    elapsed = time.perf_counter() - start
    write_json(
        meta_path,
        {
            **header,
            "complete": True,
            "image_size": [H, W],
            "num_classes": len(class_names),
            "class_names": class_names,
            "parts": {c.name: c.part for c in classes},
            "context": context_of,
            "ia_bounds": list(bounds),
            "size_buckets": "small: area < ia_bounds[0], medium: < ia_bounds[1], large: the rest "
            "(area = non-ignore pixels of the instance)",
            "saliency_sources": SALIENCY_SOURCES,
            "splits": {split: len(ids) for split, ids in split_ids.items()},
            "statistics": statistics,
        },
    )
    write_run_json(
        out,
        "synth",
        {**identity, "preset": preset},
        seed=int(seed),
        timings={"generate_s": round(elapsed, 3)},
        extra={"images": total, "resumed": resume},
    )
    return out


def _write_image(
    out: Path, image_id: str, scene: _Scene, saliency: dict[str, np.ndarray], skip_existing: bool
) -> None:
    def todo(path: Path) -> bool:
        return not (skip_existing and path.is_file())

    name = f"{image_id}.png"
    if todo(p := out / "JPEGImages" / name):
        save_image(p, scene.image)
    if todo(p := out / "SegmentationClass" / name):
        save_label(p, scene.gt)
    if todo(p := out / "SegmentationObject" / name):
        save_label(p, scene.instances)
    for source, sal in saliency.items():
        if todo(p := out / "saliency" / source / name):
            save_saliency(p, sal)
