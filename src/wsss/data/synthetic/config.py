"""The generator's knobs (:class:`SynthConfig`), the named presets, and their checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsss.data.synthetic.shapes import PART_NAMES
from wsss.io import WsssError


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the generator. Areas are fractions of the image area.

    Attributes:
        height, width: image size in pixels (default 256×256).
        num_train, num_val: images per split (1000 / 300).
        num_classes: foreground classes, 1..20 for the procedural shapes (10); a shape
            bank sets its own count (one class per folder).
        max_classes_per_image: 1..k classes per image, P(k) ∝ 0.5^(k-1) (3).
        max_instances_per_image: instances per image, at least one per class (4).
        min_object_area, max_object_area: object areas are log-uniform in this range
            (0.005 and 0.7 of the image: class area 15 % and background 74 % of the image,
            against VOC's 17 % and 70 %; ``wsss stats`` prints both).
        max_occlusion: a later object may hide at most this fraction of an earlier one (0.5).
        part_area: range of the discriminative part's share of the object area (0.15-0.25).
        part_colour_specificity: probability that the part has its class's own colour;
            otherwise it takes the part colour of a random class (0.5). At 1.0 the colour
            alone identifies the class and CAMs shrink onto the part.
        body_colour_specificity: probability that the body colour comes from the class's
            three preferred palette colours rather than the whole shared palette (1.0: like a
            VOC class, an object's body says what it is).
        context_fraction: share of the classes that have a context "stuff" (0.5).
        context_prob: probability that such a class appears with its stuff (0.8).
        spurious_context_prob: probability per image of some stuff without its class (0.05).
        distractor_rate: mean number (Poisson) of salient part-less distractors per image (0.6).
        clutter_blobs: min and max number of low-contrast background blobs (2, 6).
        outline_prob: probability that an object gets a dark cartoon outline (0.6).
        noise_std: Gaussian pixel noise, in 0..255 units (5).
        ignore_band: width in pixels of the 255 band drawn around objects, on the side
            of the lower layer (background or occluded object), as in VOC (1; 0 = none).
        body_texture_strength: contrast of the natural texture on object bodies (0.6; a
            relative modulation of the body colour). Each class owns a texture source
            (gravel, bricks, fur, coffee beans, ...: ``textures.CLASS_TEXTURE_SOURCES``) at
            its own zoom; 0 gives the flat cartoon bodies of the datasets made before textures
            (with scene_texture_strength=0, byte for byte).
        texture_specificity: probability that a body shows its own class's texture rather
            than another class's (1.0).
        scene_texture_strength: amplitude, in 0..255 units, of the structure of a scene
            photograph laid over the background (18; 0 = procedural backgrounds only).
    """

    height: int = 256
    width: int = 256
    num_train: int = 1000
    num_val: int = 300
    num_classes: int = 10
    max_classes_per_image: int = 3
    max_instances_per_image: int = 4
    min_object_area: float = 0.005
    max_object_area: float = 0.7
    max_occlusion: float = 0.5
    part_area: tuple[float, float] = (0.15, 0.25)
    part_colour_specificity: float = 0.5
    body_colour_specificity: float = 1.0
    context_fraction: float = 0.5
    context_prob: float = 0.8
    spurious_context_prob: float = 0.05
    distractor_rate: float = 0.6
    clutter_blobs: tuple[int, int] = (2, 6)
    outline_prob: float = 0.6
    noise_std: float = 5.0
    ignore_band: int = 1
    body_texture_strength: float = 0.6
    texture_specificity: float = 1.0
    scene_texture_strength: float = 18.0


# the object-size range of the datasets made before the VOC calibration
_EARLIER_SIZES = {"min_object_area": 0.0025, "max_object_area": 0.38}

PRESETS: dict[str, SynthConfig] = {
    # seconds: for tests and the end-to-end smoke run (smaller objects: every size bucket is
    # populated even in 60 images)
    "tiny": SynthConfig(height=64, width=64, num_train=60, num_val=30, num_classes=5, **_EARLIER_SIZES),
    # the `wsss demo` dataset: natural textures, object sizes calibrated on VOC's statistics,
    # for an ImageNet-pretrained EfficientNet-Lite0 in minutes on 2 CPU cores
    "demo": SynthConfig(),
    # the earlier demo: flat cartoon bodies, smaller objects, 128 px, for from-scratch ResNet-18
    # runs (byte for byte the dataset the toolkit generated before natural textures)
    "cartoon": SynthConfig(
        height=128,
        width=128,
        num_train=2000,
        num_val=500,
        **_EARLIER_SIZES,
        body_colour_specificity=0.5,
        body_texture_strength=0.0,
        scene_texture_strength=0.0,
    ),
    # all 20 part classes, VOC-sized splits, for longer GPU experiments
    "large": SynthConfig(height=320, width=320, num_train=10582, num_val=1449, num_classes=20),
}


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
                 "context_prob", "spurious_context_prob", "outline_prob", "texture_specificity",
                 "body_texture_strength"):  # fmt: skip
        if not 0 <= getattr(cfg, name) <= 1:
            raise bad(f"{name}={getattr(cfg, name)} outside 0..1")
    if cfg.max_occlusion >= 1:
        raise bad("max_occlusion must be < 1 (an object may not vanish)")
    if cfg.scene_texture_strength < 0:
        raise bad(f"scene_texture_strength={cfg.scene_texture_strength} must be >= 0")
    if cfg.distractor_rate < 0 or cfg.noise_std < 0 or not 0 <= cfg.ignore_band <= 8:
        raise bad("distractor_rate and noise_std must be >= 0, ignore_band in 0..8")
