"""Textures and rendering: backgrounds with clutter, context stuff, object bodies and parts,
salient distractors' colours."""

from __future__ import annotations

import colorsys
import math
from functools import lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np

from wsss.data.synthetic.shapes import (
    _ANGLES,
    BODY_FAMILIES,
    BODY_PALETTE,
    BODY_TEXTURES,
    _body_radius,
    _ClassDef,
    _fill,
)
from wsss.data.synthetic.textures import SCENE_TEXTURE_SOURCES, sample_texture, texture_source

if TYPE_CHECKING:
    from wsss.data.synthetic.config import SynthConfig
    from wsss.data.synthetic.layout import _Object


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
    if cfg.scene_texture_strength > 0:  # the structure of a photographed scene
        name = SCENE_TEXTURE_SOURCES[rng.integers(len(SCENE_TEXTURE_SOURCES))]
        photo = sample_texture(rng, texture_source(name, high_pass=False), H, W, rng.uniform(1.0, 2.5) / s)
        tint = rng.uniform(0.6, 1.2, size=3).astype(np.float32)
        img = img + (cfg.scene_texture_strength * photo)[..., None] * tint
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


def _body_field(
    rng: np.random.Generator,
    cls: _ClassDef,
    classes: list[_ClassDef],
    cfg: SynthConfig,
    s: float,
    h: int,
    w: int,
) -> np.ndarray:
    """Body colour with the class's cartoon pattern and natural texture, h×w×3 (``s``: the
    image's scale against 128 px)."""
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
    if cfg.body_texture_strength > 0:
        owner = cls if rng.random() < cfg.texture_specificity else classes[rng.integers(len(classes))]
        zoom = owner.texture_zoom * rng.uniform(0.8, 1.25) / s
        tex = sample_texture(rng, texture_source(owner.texture_source), h, w, zoom, owner.texture_stretch)
        shade = shade * np.clip(1.0 + cfg.body_texture_strength * tex, 0.15, 2.0)
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


# --------------------------------------------------------------------------- objects
_KERNEL3 = np.ones((3, 3), np.uint8)


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
    colour_field = _body_field(rng, cls, classes, cfg, s, *m.shape)
    sub[body] = colour_field[body]
    if part.any():
        body_mean = colour_field[body].mean(0) if body.any() else colour_field.mean((0, 1))
        colour = _part_colour(rng, cls, classes, body_mean, cfg.part_colour_specificity)
        sub[part] = colour * rng.uniform(0.95, 1.05)
    if o.area >= 60 * s * s and rng.random() < cfg.outline_prob:
        sub[m & ~_eroded(m)] *= 0.35
