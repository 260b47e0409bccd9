"""VOC-sized inputs for the speed benchmarks: 375×500 scenes, 20 classes, 1–3 per image.

One generator for `sweep_vs_wsss_bed.py` and `scale.py`, so both time the same kind of
files. It writes a `folder` dataset (docs/formats.md §2.3) plus WSSS-BED's own layout:

    images/<id>.jpg            a smooth random picture (content does not change the speed)
    masks/<id>.png             GT: the blobs where the CAMs are strong, a 1-px 255 band on edges
    instances/<id>.png         one instance per blob
    cams/<id>_<c>.png          per-class CAM PNG, c the 0-based class index (WSSS-BED)
    saliency/<source>/<id>.png saliency maps, one folder per source (noisier for later sources)
    labels.csv, class_names.txt, bed_list.txt (WSSS-BED's data list: "<id> <c> …")

CAMs and saliency are smooth fields (a coarse random grid upsampled plus Gaussian blobs),
as real maps are, so their PNGs compress like real ones. Deterministic given the seed;
an image whose files exist is skipped (resume), images are made in ``workers`` processes.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.io import atomic_write_text, save_label

NUM_FG = 20
HEIGHT, WIDTH = 375, 500
NAMES = ["background", *(f"class{c:02d}" for c in range(1, NUM_FG + 1))]


def _smooth(rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """A smooth field in [0, 1]: a coarse random grid, bilinearly upsampled."""
    coarse = Image.fromarray(rng.random((cells, cells), np.float32), "F")
    return np.asarray(coarse.resize((WIDTH, HEIGHT), Image.BILINEAR), np.float32)


def image_classes(seed: int, index: int) -> list[int]:
    rng = np.random.default_rng([seed, index])
    k = int(rng.integers(1, 4))
    return sorted(int(c) for c in rng.choice(np.arange(NUM_FG), size=k, replace=False))


def _make_one(root: Path, index: int, seed: int, sources: tuple[str, ...]) -> None:
    image_id = f"im{index:05d}"
    if (root / "masks" / f"{image_id}.png").is_file():
        return  # written last: the image is complete
    classes = image_classes(seed, index)
    rng = np.random.default_rng([seed, index, 1])
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    maps = []
    for _ in classes:
        cy, cx = rng.uniform(0.2, 0.8) * HEIGHT, rng.uniform(0.2, 0.8) * WIDTH
        sy, sx = rng.uniform(0.06, 0.3) * HEIGHT, rng.uniform(0.06, 0.3) * WIDTH
        m = np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2) / 2) + 0.35 * _smooth(rng)
        maps.append(np.round(255 * m / m.max()).astype(np.uint8))
    cam = np.stack(maps)
    strong = cam.max(0) > 110
    gt = np.where(strong, np.asarray(classes)[cam.argmax(0)] + 1, 0).astype(np.uint8)
    inst = np.where(strong, cam.argmax(0) + 1, 0).astype(np.uint8)
    g16 = gt.astype(np.int16)
    edge = np.zeros(gt.shape, bool)
    edge[1:] |= g16[1:] != g16[:-1]
    edge[:, 1:] |= g16[:, 1:] != g16[:, :-1]
    gt[edge], inst[edge] = 255, 255
    for c, m in zip(classes, cam, strict=True):
        Image.fromarray(m).save(root / "cams" / f"{image_id}_{c}.png", compress_level=1)
    for k, source in enumerate(sources):
        noise = (0.15 + 0.1 * k) * (_smooth(rng, 12) - 0.5)
        sal = np.clip(cam.max(0) / 255 * 1.2 - 0.15 + noise, 0, 1)
        Image.fromarray(np.round(255 * sal).astype(np.uint8)).save(
            root / "saliency" / source / f"{image_id}.png", compress_level=1
        )
    picture = np.stack([_smooth(rng, 16) for _ in range(3)], axis=-1)
    Image.fromarray(np.round(255 * picture).astype(np.uint8)).save(
        root / "images" / f"{image_id}.jpg", quality=90
    )
    save_label(root / "instances" / f"{image_id}.png", inst)
    save_label(root / "masks" / f"{image_id}.png", gt)


def _make_chunk(args: tuple) -> int:
    root, indices, seed, sources = args
    for i in indices:
        _make_one(root, i, seed, sources)
    return len(indices)


def make_voc_sized(
    root: Path, count: int, sources: tuple[str, ...] = ("sal",), seed: int = 0, workers: int = 1
) -> list[tuple[str, list[int]]]:
    """Write (or complete) ``count`` images under ``root`` → [(id, 0-based classes)]."""
    root = Path(root)
    for d in ("images", "masks", "instances", "cams", *(f"saliency/{s}" for s in sources)):
        (root / d).mkdir(parents=True, exist_ok=True)
    chunks = [(root, range(i, min(i + 50, count)), seed, tuple(sources)) for i in range(0, count, 50)]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_make_chunk, chunks):
                pass
    else:
        for chunk in chunks:
            _make_chunk(chunk)
    items = [(f"im{i:05d}", image_classes(seed, i)) for i in range(count)]
    write_lists(root, items)
    return items


def write_lists(root: Path, items: list[tuple[str, list[int]]]) -> None:
    """labels.csv and bed_list.txt for these images (e.g. a 1k subset of a 10k folder)."""
    rows = ["id,labels", *(f"{i}," + ";".join(NAMES[c + 1] for c in cs) for i, cs in items)]
    atomic_write_text(root / "class_names.txt", "\n".join(NAMES) + "\n")
    atomic_write_text(root / "labels.csv", "\n".join(rows) + "\n")
    atomic_write_text(root / "bed_list.txt", "".join(f"{i} {' '.join(map(str, c))}\n" for i, c in items))
