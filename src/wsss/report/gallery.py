"""The report's gallery: which images to show, and their tiles.

Images are ranked by ΔIoU = per-image mIoU of the final output (the network's prediction when
the run has one, else the pseudo label of the best source) minus that of the ``none`` (no
saliency) pseudo label, so the page shows where the pipeline helped most, where it hurt most,
and a seeded random sample that shows the typical case.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.io import IGNORE, WsssError, find_cam, load_cam, load_label, load_saliency, voc_palette
from wsss.metrics.confusion import ConfusionMetric

TILE = 128  # px, longest side of every tile: eight tiles fit a 1280 px window
_PALETTE = voc_palette()


# --------------------------------------------------------------------------- scores and selection
def image_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """mIoU of one image over the classes present in its GT or prediction (NaN when none is).

    The same confusion counting as ``wsss evaluate`` (one ``bincount``; a 255 in the
    prediction is a miss, 255 in the GT is ignored), applied to a single image.
    """
    metric = ConfusionMetric(num_classes, ignore_index=IGNORE)
    metric.process(pred, gt)
    return float(metric.compute()["miou"])


def select_gallery(ids: Sequence[str], delta: Sequence[float], n: int, seed: int) -> list[tuple[str, str]]:
    """(group, id) for the ``n`` best, ``n`` worst and ``n`` random images by ``delta``.

    Images with an undefined (NaN) score are never best or worst. Ties break by id, the groups
    never repeat an image, and the random draw depends on ``seed`` only.
    """
    ids = list(ids)
    delta = np.asarray(delta, dtype=np.float64)
    if len(ids) != delta.size:
        raise ValueError(f"{len(ids)} ids but {delta.size} scores")
    if n <= 0 or not ids:
        return []
    order_ids = np.array(ids, dtype=str)
    finite = np.flatnonzero(np.isfinite(delta))
    # lexsort: last key first → by score, ties by id
    best = finite[np.lexsort((order_ids[finite], -delta[finite]))][:n]
    rest = np.setdiff1d(finite, best)
    worst = rest[np.lexsort((order_ids[rest], delta[rest]))][:n]
    taken = set(best.tolist()) | set(worst.tolist())
    remaining = sorted((i for i in range(len(ids)) if i not in taken), key=lambda i: ids[i])
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(remaining), size=min(n, len(remaining)), replace=False) if remaining else []
    random_idx = sorted((remaining[i] for i in pick), key=lambda i: ids[i])
    return (
        [("best", ids[i]) for i in best]
        + [("worst", ids[i]) for i in worst]
        + [("random", ids[i]) for i in random_idx]
    )


# --------------------------------------------------------------------------- tiles
def label_rgb(label: np.ndarray) -> np.ndarray:
    """A label map in the VOC palette (255, ignore, in its usual cream)."""
    return _PALETTE[np.asarray(label, dtype=np.uint8)]


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``cam`` (H×W in [0, 1]) in the jet colour map, blended over the image."""
    from matplotlib import colormaps

    lut = (colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.float32)
    heat = lut[np.clip(np.rint(cam * 255), 0, 255).astype(np.int64)]
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)


def gray_rgb(gray: np.ndarray) -> np.ndarray:
    g = np.clip(np.rint(np.asarray(gray, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def encode_tile(rgb: np.ndarray, labels: bool, size: int = TILE) -> tuple[bytes, str]:
    """(bytes, MIME type): label maps as PNG, resized nearest so class colours stay exact;
    photographs and heat maps as JPEG (a tenth of the PNG's size), resized bilinearly."""
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = img.resize(new, Image.Resampling.NEAREST if labels else Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if labels:
        img.save(buf, format="PNG", optimize=True)
        return buf.getvalue(), "image/png"
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue(), "image/jpeg"


@dataclass
class GalleryRow:
    group: str
    image_id: str
    delta: float
    final: float
    base: float
    tiles: list[tuple[str, bytes, str]] = field(default_factory=list)  # (title, bytes, mime)


@dataclass
class GallerySpec:
    """Where one run's layers for a split live."""

    cam_dir: Path
    base_dir: Path | None  # pseudo labels of `none`; None: rank by the final score itself
    final_dir: Path
    final_name: str
    pseudo: dict[str, Path]  # title → folder of label PNGs shown besides the final output
    saliency: tuple[str, Path] | None  # (source, folder)


def score_split(ds, spec: GallerySpec) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, final per-image mIoU, baseline per-image mIoU; zeros without a baseline)."""
    ids = list(ds.ids)
    final = np.full(len(ids), np.nan)
    base = np.zeros(len(ids))
    for k, image_id in enumerate(ids):
        gt = ds.gt(image_id)
        final[k] = image_miou(
            load_label(spec.final_dir / f"{image_id}.png", ds.num_classes, gt.shape), gt, ds.num_classes
        )
        if spec.base_dir is not None:
            base[k] = image_miou(
                load_label(spec.base_dir / f"{image_id}.png", ds.num_classes, gt.shape), gt, ds.num_classes
            )
    return ids, final, base


def _has_cam(cam_dir: Path, image_id: str) -> bool:
    try:
        find_cam(cam_dir, image_id)
    except WsssError:
        return False
    return True


def build_rows(ds, spec: GallerySpec, n: int, seed: int) -> list[GalleryRow]:
    """The selected images with their tiles: image, GT, CAM, saliency, pseudo labels, prediction."""
    ids, final, base = score_split(ds, spec)
    delta = final - base
    index = {i: k for k, i in enumerate(ids)}
    selected = select_gallery(ids, delta, n, seed)
    with_cams = all(_has_cam(spec.cam_dir, i) for _, i in selected)  # a network-only split may have none
    rows = []
    for group, image_id in selected:
        k = index[image_id]
        image = ds.image(image_id)
        shape = image.shape[:2]
        gt = ds.gt(image_id)
        tiles = [
            ("image", *encode_tile(image, labels=False)),
            ("ground truth", *encode_tile(label_rgb(gt), True)),
        ]
        if with_cams:
            keys, cam = load_cam(find_cam(spec.cam_dir, image_id), shape=shape, num_classes=ds.num_classes)
            cam_max = cam.max(axis=0) if keys.size else np.zeros(shape, np.float32)
            tiles.append(("CAM (max over present classes)", *encode_tile(cam_overlay(image, cam_max), False)))
        if spec.saliency is not None:
            src, folder = spec.saliency
            sal = load_saliency(folder / f"{image_id}.png", shape=shape)
            tiles.append((f"saliency ({src})", *encode_tile(gray_rgb(sal), labels=True)))
        for title, folder in spec.pseudo.items():
            lab = load_label(folder / f"{image_id}.png", ds.num_classes, shape)
            tiles.append((title, *encode_tile(label_rgb(lab), labels=True)))
        final_lab = load_label(spec.final_dir / f"{image_id}.png", ds.num_classes, shape)
        tiles.append((spec.final_name, *encode_tile(label_rgb(final_lab), labels=True)))
        rows.append(GalleryRow(group, image_id, float(delta[k]), float(final[k]), float(base[k]), tiles))
    return rows
