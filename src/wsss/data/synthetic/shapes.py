"""Classes and shapes: the class vocabulary, procedural bodies with a discriminative part,
shape-bank silhouettes, and the per-class draws (colours, textures, context stuff)."""

from __future__ import annotations

import colorsys
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from wsss.data.synthetic.textures import CLASS_TEXTURE_SOURCES
from wsss.io import WsssError

if TYPE_CHECKING:
    from wsss.data.synthetic.config import SynthConfig

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
_N_ANGLES = 72
_ANGLES = np.linspace(0.0, 2.0 * np.pi, _N_ANGLES, endpoint=False)


# image formats a silhouette may come in (MPEG-7's CE-Shape-1 ships GIFs, other banks PNG or JPEG)
SILHOUETTE_SUFFIXES = (
    ".png",
    ".gif",
    ".bmp",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".webp",
    ".pbm",
    ".pgm",
    ".ppm",
)
# a silhouette may have anti-aliased or compressed edges, not a grey picture: at most this share
# of its pixels may sit in the middle half of its grey range
_MAX_MID_GREY = 0.15
_FLAT_NAME = re.compile(r"^(.+?)[-_ ]*\d+$")


def shape_bank_files(shapes_dir: str | Path) -> dict[str, list[Path]]:
    """The bank's files by class: ``DIR/<class_name>/<any>.png`` (class = folder), or a flat
    ``DIR/<class_name>-<n>.gif`` folder as MPEG-7's CE-Shape-1 ships (class = the name before
    its trailing number). Classes and files in name order; errors name the folder."""
    root = Path(shapes_dir)
    if not root.is_dir():
        raise WsssError(f"{root}: shape bank folder not found")

    def images(folder: Path) -> list[Path]:
        return sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in SILHOUETTE_SUFFIXES and not p.name.startswith(".")
        )

    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: dict[str, list[Path]] = {}
    if folders:
        for folder in folders:
            found = images(folder)
            if not found:
                raise WsssError(f"{folder}: no silhouette images in this class folder")
            files[folder.name] = found
    else:
        for path in images(root):
            m = _FLAT_NAME.match(path.stem)
            name = m.group(1) if m else path.stem
            if name.isdigit():
                raise WsssError(
                    f"{path}: a flat shape bank names files <class>-<n>; put each class in its own folder"
                )
            files.setdefault(name, []).append(path)
    if not files:
        raise WsssError(f"{root}: shape bank has no class folders (expected DIR/<class_name>/*.png)")
    if len(files) > 254:
        raise WsssError(f"{root}: {len(files)} classes; label maps hold at most 254 classes")
    return dict(sorted(files.items()))


def load_shape_bank(shapes_dir: str | Path) -> dict[str, list[np.ndarray]]:
    """A shape bank (layouts: :func:`shape_bank_files`) → {class name: [bool masks cropped to
    the shape]}.

    The foreground is the brighter level (or the alpha channel when it has transparency),
    split from the darker one at Otsu's threshold, so anti-aliased or JPEG edges are fine; a
    picture whose border is mostly foreground is taken as a dark shape on white and inverted.
    """
    return {
        name: [_read_silhouette(f) for f in paths] for name, paths in shape_bank_files(shapes_dir).items()
    }


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
    lo, hi = int(arr.min()), int(arr.max())
    if lo == hi:
        raise WsssError(f"{path}: silhouette is a single flat value; expected a shape on a background")
    mid_grey = np.mean((arr > lo + (hi - lo) / 4) & (arr < hi - (hi - lo) / 4))
    if mid_grey > _MAX_MID_GREY:
        raise WsssError(
            f"{path}: not a binary silhouette ({mid_grey:.0%} of its pixels are mid-grey; expected two "
            "levels, e.g. 0 and 255, with anti-aliased edges at most)"
        )
    threshold, _ = cv2.threshold(
        np.ascontiguousarray(arr, dtype=np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU
    )
    mask = arr > threshold
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if border.mean() > 0.5:  # Otsu's threshold lies in [lo, hi): both sides are non-empty
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
    texture_source: str = ""  # natural body texture (textures.CLASS_TEXTURE_SOURCES)
    texture_zoom: float = 1.0  # source pixels per image pixel at 128 px
    texture_stretch: float = 1.0  # extra zoom along x (classes beyond the 16 sources)


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
    # natural textures draw from their own stream: every other draw stays what it was before them
    tex_rng = _rng(seed, _STREAM_CLASSES, 1)
    order = tex_rng.permutation(len(CLASS_TEXTURE_SOURCES))
    for i, cls in enumerate(out):
        cls.texture_source = CLASS_TEXTURE_SOURCES[order[i % len(order)]]
        reuse = i // len(order)
        cls.texture_zoom = float(tex_rng.uniform(1.5, 3.0)) * (1.8**reuse)
        cls.texture_stretch = float(1.0 + reuse * tex_rng.uniform(1.0, 2.0))
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
