"""Throughput of stage 3 (threshold pseudo labels, seed 000's Algorithm 1) and of the τ sweep.

Generates CAMs, saliency maps, GT masks and images in a temporary folder dataset
(default: 500 images of 128×128 and 100 of 500×375, 1–3 classes of 20), then
prints images/s for

* the pure function ``threshold_pseudo_label`` (in memory, with and without saliency),
* the full stage ``make_pseudo_labels`` (read CAM + saliency, write the PNG),
* ``sweep_tau`` (19 τ values × {no saliency, saliency}) with 1 and N workers.

Usage: ``python benchmarks/pseudo_throughput.py [--small 500] [--large 100] [--workers 2]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import wsss.data.folder  # noqa: F401  (registers "folder")
from wsss.data import build_dataset
from wsss.io import atomic_write_text, save_cam, save_image, save_label, save_saliency
from wsss.pseudo.sweep import sweep_tau
from wsss.pseudo.threshold import make_pseudo_labels, threshold_pseudo_label

NUM_FG = 20


def _blobs(rng: np.random.Generator, h: int, w: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k smooth CAM blobs (max-normalised like real CAMs) and the GT they imply."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    maps = []
    for _ in range(k):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        sy, sx = rng.uniform(0.08, 0.25) * h, rng.uniform(0.08, 0.25) * w
        m = np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2) / 2) + 0.1 * rng.random(
            (h, w), np.float32
        )
        maps.append(m / m.max())
    cam = np.stack(maps)
    gt = np.where(cam.max(0) > 0.4, cam.argmax(0) + 1, 0)
    return cam, gt


def make_dataset(root: Path, n_small: int, n_large: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    names = ["background", *(f"class{c:02d}" for c in range(1, NUM_FG + 1))]
    rows = ["id,labels,split"]
    sizes = [(128, 128)] * n_small + [(375, 500)] * n_large
    for i, (h, w) in enumerate(sizes):
        image_id = f"im{i:05d}"
        k = int(rng.integers(1, 4))
        keys = np.sort(rng.choice(np.arange(1, NUM_FG + 1), size=k, replace=False))
        cam, gt_index = _blobs(rng, h, w, k)
        gt = np.concatenate([[0], keys])[gt_index].astype(np.uint8)
        save_cam(root / "cams" / f"{image_id}.npz", keys, cam)
        save_label(root / "masks" / f"{image_id}.png", gt)
        save_saliency(root / "saliency" / "sod" / f"{image_id}.png", np.clip(cam.max(0) * 1.2, 0, 1))
        save_image(root / "images" / f"{image_id}.png", np.zeros((h, w, 3), np.uint8))
        split = "small" if (h, w) == (128, 128) else "large"
        rows.append(f"{image_id}," + ";".join(names[c] for c in keys) + f",{split}")
    atomic_write_text(root / "class_names.txt", "\n".join(names) + "\n")
    atomic_write_text(root / "labels.csv", "\n".join(rows) + "\n")
    return root


def bench_pure(cam_dir: Path, sal_dir: Path, ids: list[str]) -> None:
    from wsss.io import load_cam, load_saliency

    data = []
    for image_id in ids:
        keys, cam = load_cam(cam_dir / f"{image_id}.npz")
        data.append((cam, keys, load_saliency(sal_dir / f"{image_id}.png")))
    for label, use_sal in (("no saliency", False), ("saliency", True)):
        start = time.perf_counter()
        for cam, keys, sal in data:
            threshold_pseudo_label(cam, keys, 0.3, sal if use_sal else None)
        dt = time.perf_counter() - start
        print(f"  pure function, {label:<12}: {len(data) / dt:8.1f} img/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=500, help="number of 128×128 images")
    parser.add_argument("--large", type=int, default=100, help="number of 500×375 images")
    parser.add_argument("--workers", type=int, default=2, help="workers for the parallel sweep")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="wsss_bench_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        make_dataset(root, args.small, args.large)
        print(f"generated {args.small} + {args.large} images in {time.perf_counter() - start:.1f} s")
        cam_dir, sal_dir = root / "cams", root / "saliency" / "sod"
        for split, name, n in (("small", "128×128", args.small), ("large", "500×375", args.large)):
            if not n:
                continue
            sub = build_dataset("folder", root, split)
            ids = sub.ids
            print(f"{name} ({len(ids)} images, 1–3 classes)")
            bench_pure(cam_dir, sal_dir, ids)
            for label, sal in (("no saliency", None), ("saliency", sal_dir)):
                out = root / "pseudo" / f"{name}_{label}".replace(" ", "_")
                start = time.perf_counter()
                make_pseudo_labels(sub, cam_dir, out, 0.3, saliency_dir=sal, progress=False)
                dt = time.perf_counter() - start
                print(f"  stage with I/O, {label:<11}: {len(ids) / dt:8.1f} img/s")
            sources = {"none": None, "sod": sal_dir}
            for workers in sorted({1, args.workers}):
                start = time.perf_counter()
                result = sweep_tau(sub, cam_dir, saliency_dirs=sources, workers=workers, progress=False)
                dt = time.perf_counter() - start
                n_taus = len(result["taus"])
                best = ", ".join(f"{s} τ={r['best']['tau']:g}" for s, r in result["sources"].items())
                print(
                    f"  sweep ({n_taus} τ × {len(sources)} sources, {workers} worker{'s' * (workers > 1)}): "
                    f"{len(ids) / dt:8.1f} img/s  ({best})"
                )


if __name__ == "__main__":
    main()
