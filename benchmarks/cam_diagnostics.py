"""Where do a CAM folder's maps put their mass? Diagnostics for "why is the best τ so low".

For every (image, present class c) with a ground-truth label map, on the max-normalised map
A_c (as stored by ``wsss cam infer``):

- mass shares: Σ A_c over the pixels of class c, of the image's other classes, of the
  background (and of ignore pixels), each over Σ A_c — how much of the map lies on its object;
- coverage at τ: the share of class c's pixels with A_c ≥ τ — how much of the object a
  threshold keeps;
- spill at τ: pixels outside class c with A_c ≥ τ, per pixel of class c — what it adds;
- peakiness: the share of Σ A_c in the map's top 1 % of pixels, and the mean A_c over the
  object (a max-normalised map whose object mean is 0.1 needs a τ near 0.1).

Rows are averaged over (image, class) pairs: all of them, those of images with one class
and with several (confusion between co-occurring classes shows in "other objects"), and,
by the class's area in the image (the dataset's IA-mIoU size bounds) and, for the synthetic
dataset, classes that come with a context "stuff" region vs the others::

    python benchmarks/cam_diagnostics.py --data runs/demo/data --cams runs/demo/cams --split train
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.data import build_dataset
from wsss.data.synthetic import SynthConfig, _make_classes
from wsss.data.synthetic.generator import _generate_image
from wsss.data.synthetic.splits import scaled_size_bounds
from wsss.io import load_cam

TAUS = (0.1, 0.2, 0.3, 0.5)
TOP_SHARE = 0.01
COLUMNS = (
    ["own", "other_objects", "background", "ignore"]
    + [f"coverage@{t}" for t in TAUS]
    + [f"spill@{t}" for t in TAUS]
    + ["top1%_mass", "object_mean"]
)


def pair_rows(cam: np.ndarray, keys: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """One row of :data:`COLUMNS` per class of ``keys`` (NaN where a class has no pixel)."""
    rows = np.full((len(keys), len(COLUMNS)), np.nan)
    labelled = (gt != 0) & (gt != 255)
    flat = cam.reshape(len(keys), -1).astype(np.float64)
    top_k = max(1, int(round(TOP_SHARE * flat.shape[1])))
    top_mass = np.partition(flat, -top_k, axis=1)[:, -top_k:].sum(axis=1)
    for row, (key, a) in enumerate(zip(keys, cam.astype(np.float64), strict=True)):
        own = gt == key
        total = a.sum()
        if total <= 0 or not own.any():
            continue
        shares = [a[own].sum(), a[labelled & ~own].sum(), a[gt == 0].sum(), a[gt == 255].sum()]
        above = [a >= t for t in TAUS]
        coverage = [float(m[own].mean()) for m in above]
        spill = [float((m & ~own).sum() / own.sum()) for m in above]
        rows[row] = [*(np.array(shares) / total), *coverage, *spill, top_mass[row] / total, a[own].mean()]
    return rows


SCENE_COLUMNS = ("part", "body_without_part", "context_stuff", "distractors", "part_area_share")


def scene_rows(cam: np.ndarray, keys: np.ndarray, scene) -> np.ndarray:
    """Per class of ``keys``: the shares of Σ A_c on its instances' visible parts, on the rest
    of their bodies, on all context stuff and on the distractors, and the parts' share of
    the class's pixels (what the mass shares compare with)."""
    rows = np.full((len(keys), len(SCENE_COLUMNS)), np.nan)
    stuff = np.any(scene.stuff, axis=0) if scene.stuff else np.zeros(scene.gt.shape, bool)
    distractors = np.any(scene.distractors, axis=0) if scene.distractors else np.zeros(scene.gt.shape, bool)
    for row, (key, a) in enumerate(zip(keys, cam.astype(np.float64), strict=True)):
        own = scene.gt == key
        part = np.zeros(own.shape, bool)
        for k, c in enumerate(scene.instance_classes):
            if c == key:
                part |= scene.parts[k]
        total = a.sum()
        if total <= 0 or not own.any():
            continue
        rows[row] = [a[part].sum() / total, a[own & ~part].sum() / total, a[stuff].sum() / total,
                     a[distractors].sum() / total, part.sum() / own.sum()]  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--split", default="train")
    parser.add_argument("--cams", required=True, help="folder of <id>.npz (or any layout load_cam reads)")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--scenes", action="store_true", help="synthetic data: part / body / stuff / distractors"
    )
    args = parser.parse_args()

    ds = build_dataset(args.dataset, args.data, args.split)
    ids = ds.select_ids()[: args.max_images]
    info_file = Path(args.data) / "dataset.json"
    context_classes: set[int] = set()
    info: dict = {}
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        names = info.get("class_names", [])
        context_classes = {names.index(n) for n in info.get("context", {}) if n in names}
    if args.scenes:
        if info.get("kind") != "synthetic" or info.get("shapes"):
            parser.error("--scenes needs a synthetic dataset made with procedural shapes")
        cfg = SynthConfig(**info["config"])
        classes = _make_classes(cfg, int(info["seed"]), None)
        small_bound = scaled_size_bounds(cfg.height, cfg.width)[0]

    small, medium = ds.ia_bounds
    rows, many, with_context, areas, scenes = [], [], [], [], []
    for image_id in tqdm(ids, desc="cam diagnostics", unit="img"):
        gt = ds.gt(image_id)
        if gt is None:
            continue
        cam_file = Path(args.cams) / f"{image_id}.npz"
        keys, cam = load_cam(cam_file if cam_file.is_file() else Path(args.cams) / image_id)
        r = pair_rows(cam, keys, gt)
        rows.append(r)
        many += [len(keys) > 1] * len(keys)
        with_context += [int(k) in context_classes for k in keys]
        areas += [int((gt == k).sum()) for k in keys]
        if args.scenes:
            split, index = image_id.rsplit("_", 1)
            scene, _ = _generate_image(int(info["seed"]), split, int(index), cfg, classes, small_bound)
            if not np.array_equal(scene.gt, gt):
                raise SystemExit(f"{image_id}: the regenerated scene differs from the dataset's label map")
            scenes.append(scene_rows(cam, keys, scene))
    table = np.concatenate(rows)
    many_mask, context_mask = np.array(many), np.array(with_context)
    groups = {"all pairs": np.ones(len(table), bool), "one-class images": ~many_mask,
              "several-class images": many_mask}  # fmt: skip
    area = np.array(areas)
    groups[f"class area < {small} px"] = area < small
    groups[f"class area {small}-{medium} px"] = (area >= small) & (area < medium)
    groups[f"class area >= {medium} px"] = area >= medium
    if context_classes:
        groups["classes with context"] = context_mask
        groups["classes without context"] = ~context_mask
    result = {}
    print(f"{len(table)} (image, class) pairs from {len(rows)} images of {args.split}")
    print("group".ljust(30) + "".join(c.rjust(15) for c in COLUMNS))
    for name, mask in groups.items():
        means = np.nanmean(table[mask], axis=0) if mask.any() else np.full(len(COLUMNS), np.nan)
        result[name] = {"pairs": int(mask.sum()), **dict(zip(COLUMNS, map(float, means), strict=True))}
        print(name.ljust(30) + "".join(f"{v:15.3f}" for v in means))
    if args.scenes:
        scene_table = np.concatenate(scenes)
        print("\nwhere on the scene".ljust(31) + "".join(c.rjust(19) for c in SCENE_COLUMNS))
        for name, mask in groups.items():
            means = (
                np.nanmean(scene_table[mask], axis=0) if mask.any() else np.full(len(SCENE_COLUMNS), np.nan)
            )
            result[name].update(dict(zip(SCENE_COLUMNS, map(float, means), strict=True)))
            print(name.ljust(30) + "".join(f"{v:19.3f}" for v in means))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
