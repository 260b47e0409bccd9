"""Splits and statistics: per-split random streams, IA-mIoU size bounds scaled to the image
size, and the split statistics recorded in ``dataset.json``."""

from __future__ import annotations

from typing import Any

import numpy as np

# IA-mIoU size bounds of docs/methods.md (32², 96² px) are for VOC's ~500×375 images.
VOC_IMAGE_AREA = 187500
VOC_SIZE_BOUNDS = (1024, 9216)
SIZE_BUCKETS = ("small", "medium", "large")

_STREAM_SPLIT = {"train": 1, "val": 2}


# --------------------------------------------------------------------------- public helpers
def scaled_size_bounds(height: int, width: int) -> tuple[int, int]:
    """IA-mIoU small/medium bounds scaled from VOC's image area to ``height × width``."""
    f = height * width / VOC_IMAGE_AREA
    return round(VOC_SIZE_BOUNDS[0] * f), round(VOC_SIZE_BOUNDS[1] * f)


def size_bucket(area: np.ndarray | float, bounds: tuple[float, float]) -> np.ndarray:
    """0 = small (< bounds[0]), 1 = medium (< bounds[1]), 2 = large."""
    return np.searchsorted(
        np.asarray(bounds, dtype=np.float64), np.asarray(area, dtype=np.float64), side="right"
    )


# --------------------------------------------------------------------------- statistics
def _split_statistics(
    ids: list[str],
    labels: dict[str, np.ndarray],
    records: list[tuple[str, int, float]],
    class_names: list[str],
    bounds: tuple[int, int],
    scene_info: dict[str, dict[str, Any]],
    context_of: dict[str, str],
) -> dict[str, Any]:
    fg = class_names[1:]
    keep = set(ids)
    recs = [r for r in records if r[0] in keep]
    images_per_class = np.zeros(len(fg), np.int64)
    for i in ids:
        images_per_class[labels[i] - 1] += 1
    instances_per_class = np.bincount(np.array([c - 1 for _, c, _ in recs], np.int64), minlength=len(fg))
    buckets = (
        np.bincount(size_bucket([a for _, _, a in recs], bounds), minlength=3) if recs else np.zeros(3, int)
    )
    class_of_stuff = {stuff: name for name, stuff in context_of.items()}
    shown_with_class = dict.fromkeys(context_of, 0)
    spurious = 0
    for i in ids:
        for stuff, with_class in scene_info[i]["context"]:
            if with_class:
                shown_with_class[class_of_stuff[stuff]] += 1
            else:
                spurious += 1
    per_class = dict(zip(fg, images_per_class.tolist(), strict=True))
    return {
        "images": len(ids),
        "instances": len(recs),
        "images_per_class": per_class,
        "instances_per_class": dict(zip(fg, instances_per_class.tolist(), strict=True)),
        "instances_per_size": dict(zip(SIZE_BUCKETS, buckets.tolist(), strict=True)),
        "mean_classes_per_image": round(float(np.mean([labels[i].size for i in ids])), 4),
        "mean_instances_per_image": round(len(recs) / len(ids), 4),
        # share of a context class's images that show its stuff (the co-occurrence bias)
        "context_cooccurrence": {
            name: round(n / per_class[name], 4) if per_class[name] else None
            for name, n in shown_with_class.items()
        },
        "spurious_context_images": spurious,
        "distractors": sum(scene_info[i]["distractors"] for i in ids),
    }
