"""Throughput of the evaluation metrics on generated scenes (megapixels per second).

    .venv/bin/python benchmarks/metrics_throughput.py [--small 200] [--large 50] [--workers 2]

Scenes: :func:`scenes.voc_scene` (shared with ia_miou_vs_official.py), VOC-like label
maps with 2–8 instances of 20 classes (touching, split by occluders), a 5-px ignore band
on instance borders, and predictions that are shifted, partly relabelled, eroded,
dilated and merged, with a few false blobs. ia_miou_vs_official.py puts the official
IA-mIoU next to ours.
Measures the in-memory metrics and the end-to-end ``evaluate_dirs`` (PNG
decoding included). Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scenes import NUM_CLASSES, voc_scene

from wsss.io import save_label
from wsss.metrics import ClassGroupStats, ConfusionMetric, InstanceAwareMetric, evaluate_dirs


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
        f"{args.small} × 128×128": [voc_scene(rng, 128, 128) for _ in range(args.small)],
        f"{args.large} × 500×375": [voc_scene(rng, 375, 500) for _ in range(args.large)],
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
