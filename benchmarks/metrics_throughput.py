"""Throughput of the evaluation metrics on generated scenes (megapixels per second).

    .venv/bin/python benchmarks/metrics_throughput.py [--small 200] [--large 50] [--workers 2]

Scenes: VOC-like label maps with several instances of 20 classes, a 5-px
ignore band on instance borders, and predictions that are shifted, partly
relabelled and noisy, so that blobs are shared and split as in real outputs.
Measures the in-memory metrics and the end-to-end ``evaluate_dirs`` (PNG
decoding included). Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from wsss.io import save_label
from wsss.metrics import ClassGroupStats, ConfusionMetric, InstanceAwareMetric, evaluate_dirs

NUM_CLASSES = 21


def make_scene(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, ground truth, instance map) with 3–10 elliptic instances."""
    yy, xx = np.mgrid[:height, :width]
    gt = np.zeros((height, width), np.uint8)
    inst = np.zeros((height, width), np.uint8)
    for j in range(int(rng.integers(3, 11))):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(3, max(4, height // 3)), rng.integers(3, max(4, width // 3))
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        gt[mask] = rng.integers(1, NUM_CLASSES)
        inst[mask] = j + 1
    border = ndimage.morphological_gradient(inst, size=(5, 5)) > 0
    gt[border] = 255
    inst[border] = 255
    pred = np.roll(gt, tuple(rng.integers(-6, 7, size=2)), axis=(0, 1))
    pred[pred == 255] = 0
    relabel = rng.random(NUM_CLASSES) < 0.15
    pred = np.where(relabel[pred], rng.integers(1, NUM_CLASSES), pred).astype(np.uint8)
    speckles = ndimage.binary_dilation(rng.random((height, width)) < 0.001, iterations=2)  # small false blobs
    pred[speckles] = rng.integers(0, NUM_CLASSES, size=int(speckles.sum()))
    return pred, gt, inst


def measure(name: str, scenes: list, fn) -> float:
    megapixels = sum(s[1].size for s in scenes) / 1e6
    t0 = time.perf_counter()
    fn(scenes)
    dt = time.perf_counter() - t0
    print(f"  {name:<34} {megapixels / dt:8.2f} MP/s   ({len(scenes) / dt:7.1f} img/s, {dt:6.2f} s)")
    return dt


def run_confusion(scenes: list) -> None:
    m = ConfusionMetric(NUM_CLASSES)
    for pred, gt, _ in scenes:
        m.process(pred, gt)
    m.compute()


def run_ia(scenes: list, use_png: bool) -> None:
    m = InstanceAwareMetric(NUM_CLASSES)
    for pred, gt, inst in scenes:
        m.process(pred, gt, inst if use_png else None)
    m.compute()


def run_groups(scenes: list) -> None:
    g = ClassGroupStats(NUM_CLASSES)
    for _, gt, _ in scenes:
        g.process(gt)
    g.compute()


def end_to_end(root: Path, workers: int):
    def run(_scenes: list) -> None:
        evaluate_dirs(
            root / "pred",
            root / "gt",
            NUM_CLASSES,
            instances_dir=root / "inst",
            workers=workers,
            progress=False,
        )

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200, help="number of 128×128 scenes")
    parser.add_argument("--large", type=int, default=50, help="number of 500×375 scenes")
    parser.add_argument("--workers", type=int, default=2, help="workers for the end-to-end run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    sets = {
        f"{args.small} × 128×128": [make_scene(rng, 128, 128) for _ in range(args.small)],
        f"{args.large} × 500×375": [make_scene(rng, 375, 500) for _ in range(args.large)],
    }
    for title, scenes in sets.items():
        n_inst = sum(len(np.setdiff1d(np.unique(s[2]), [0, 255])) for s in scenes)
        print(f"{title} ({n_inst} instances)")
        measure("mIoU (ConfusionMetric)", scenes, run_confusion)
        measure("IA-mIoU, instance PNG", scenes, lambda s: run_ia(s, True))
        measure("IA-mIoU, connected components", scenes, lambda s: run_ia(s, False))
        measure("class-group statistics", scenes, run_groups)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for k, (pred, gt, inst) in enumerate(scenes):
                save_label(root / "pred" / f"{k:05d}.png", pred)
                save_label(root / "gt" / f"{k:05d}.png", gt)
                save_label(root / "inst" / f"{k:05d}.png", inst)
            for workers in sorted({1, args.workers}):
                measure(f"evaluate_dirs, PNGs, {workers} worker(s)", scenes, end_to_end(root, workers))


if __name__ == "__main__":
    main()
