"""Stage-1 speed: training and TTA inference throughput (images/s) of a CAM network.

Sizes the `wsss demo` budget: ``python benchmarks/cam_speed.py`` trains a resnet18 for one
epoch on random 128×128 images (with 0 and 2 DataLoader workers) and infers CAMs with
each TTA setting; ``--data DIR`` uses an existing dataset instead. Speed does not depend
on image content, only on size, backbone, batch and TTA. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wsss.cam import CamTrainConfig, infer_cams, train_cam
from wsss.data import build_dataset
from wsss.data.base import Dataset
from wsss.io import read_json, save_image

TTA_SETTINGS = {
    "1.0": ((1.0,), False),
    "1.0+flip": ((1.0,), True),
    "1.0,1.5+flip": ((1.0, 1.5), True),
    "0.5,1.0,1.5+flip": ((0.5, 1.0, 1.5), True),
    "0.5,1.0,1.5,2.0+flip": ((0.5, 1.0, 1.5, 2.0), True),
}


class RandomImages(Dataset):
    """Random images with 1-3 random labels: throughput does not depend on content."""

    def __init__(self, root: Path, count: int, size: int, num_classes: int = 10, seed: int = 0):
        super().__init__(root, "bench")
        rng = np.random.default_rng(seed)
        self.class_names = ["background"] + [f"c{i}" for i in range(1, num_classes + 1)]
        self.ids = [f"r{i:05d}" for i in range(count)]
        for image_id in self.ids:
            k = int(rng.integers(1, 4))
            self._labels[image_id] = np.sort(rng.choice(np.arange(1, num_classes + 1), k, replace=False))
            path = self.image_path(image_id)
            if not path.is_file():
                save_image(path, rng.integers(0, 256, (size, size, 3), dtype=np.uint8))

    def image_path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.png"


def subset(dataset: Dataset, count: int) -> Dataset:
    """The first ``count`` ids of ``dataset`` (a shallow copy sharing the loaders)."""
    import copy

    part = copy.copy(dataset)
    part.ids = list(dataset.ids[:count])
    return part


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="existing dataset root (default: random images)")
    ap.add_argument("--kind", default="synthetic")
    ap.add_argument("--split", default="train")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=128, help="image and crop size")
    ap.add_argument("--train-images", type=int, default=256)
    ap.add_argument("--infer-images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--infer-batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--tta", nargs="+", default=list(TTA_SETTINGS), choices=list(TTA_SETTINGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="cam_speed_"))
    try:
        if args.data:
            dataset = build_dataset(args.kind, args.data, args.split)
        else:
            dataset = RandomImages(work / "images", max(args.train_images, args.infer_images), args.size)
        results: dict = {
            "backbone": args.backbone,
            "size": args.size,
            "threads": args.threads,
            "train": {},
            "infer": {},
        }
        model_path = None
        for workers in args.workers:
            cfg = CamTrainConfig(
                backbone=args.backbone,
                recipe="generic",  # the toolkit's own recipe, as the demo trains
                crop_size=args.size,
                batch_size=args.batch_size,
                epochs=1,
                optimizer="adamw",
                lr=1e-3,
                num_workers=workers,
                checkpoint_every=10**9,
            )
            out = work / f"train_w{workers}"
            start = time.perf_counter()
            model_path = train_cam(subset(dataset, args.train_images), out, cfg, progress=False)
            wall = time.perf_counter() - start
            run = read_json(out / "run.json")
            results["train"][f"workers={workers}"] = {
                "images_per_s": run["images_per_s"],
                "loop_s": run["timings"]["train_s"],
                "wall_s": round(wall, 2),
            }
        for name in args.tta:
            scales, flip = TTA_SETTINGS[name]
            out = work / f"cams_{name}"
            infer_cams(
                subset(dataset, args.infer_images),
                model_path,
                out,
                scales=scales,
                flip=flip,
                batch_size=args.infer_batch_size,
                progress=False,
            )
            run = read_json(out / "run.json")
            results["infer"][name] = {"images_per_s": run["images_per_s"], "s": run["timings"]["infer_s"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.backbone} at {args.size}px, {args.threads} threads")
    for key, r in results["train"].items():
        print(
            f"  train {key:24s} {r['images_per_s']:7.1f} img/s  (loop {r['loop_s']} s, wall {r['wall_s']} s)"
        )
    for key, r in results["infer"].items():
        print(f"  infer {key:24s} {r['images_per_s']:7.1f} img/s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
