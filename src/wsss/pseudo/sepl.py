"""SAM-enhanced pseudo labels, SEPL (seed 003, docs/methods.md §3): class-agnostic masks snap a
pseudo label to object boundaries.

Two variants of the merge; both use the same keep test (step 2 below).

``variant="code"`` (the default) reproduces the authors' released merge (``max_iou_imp2``):

* The output starts as all background; ignore pixels (255) become background unless claimed.
* Classes present in P are visited in increasing id order. Each mask not yet taken by an
  earlier class is tested against the current class k and, if it passes, taken by k — a
  mask goes to the first class whose test it passes, not to the class it overlaps most.
* Class k paints the union of the masks it took plus the pixels of P_k that no mask still
  untaken at k's turn covers; a later class paints over an earlier one. A class that takes
  no mask therefore keeps only those P_k pixels, and pixels of P_k covered only by masks
  taken by earlier classes stay k.

``variant="paper"`` follows the paper's text (Algorithm 1), with the rules below.

For a pseudo label P (0 = background, 1..K classes, 255 = ignore) and masks S_1..S_N:

1. **Assignment.** Each mask goes to the foreground class k whose region P_k it intersects
   most (ties: the smaller class id). Background is not a candidate — Algorithm 1 assigns
   over k = 1..K — so a mask lying mostly on background but touching P_k is assigned to k
   and then usually fails both tests below. A mask that touches no class is dropped.
2. **Selection.** A mask S of class k is kept if ``|S ∩ P_k| / |S| > region_threshold``
   (0.5: the mask lies mostly inside the class, against false activation) or
   ``|S ∩ P_k| / |P_k| >= mask_threshold`` (0.85: the mask covers most of the class,
   against partial activation); the comparisons are those of the authors' code.
3. **New regions.** Class k's region becomes the union of its kept masks plus the pixels of
   P_k that no mask at all covers (no evidence there, so they keep their label). A class
   with no kept mask keeps P_k unchanged, so the label is unchanged when no mask is kept.

Decisions the paper leaves open (Algorithm 1 returns per-class maps, not one label map):

* A pixel that leaves its class — covered by masks, none kept for any class — becomes
  background, as in the authors' code. Ignore pixels (255) are in no P_k: they count in no
  intersection (|S| still counts them) and stay 255 unless a kept mask claims them.
* Where regions of different classes overlap (kept masks of two classes, or a kept mask
  over a class left unchanged), the smallest claiming region wins: the most specific mask,
  which guards against the known failure of one large mask swallowing several objects
  (equal areas: the smaller class id). The authors' code lets the higher class id
  overwrite, which makes the result depend on the class order.
"""

from __future__ import annotations

import csv
import io as _io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wsss.data.base import Dataset
from wsss.io import (
    IGNORE,
    WsssError,
    atomic_write_text,
    image_size,
    load_label,
    parse_shard,
    read_json,
    save_label,
    shard_list,
)
from wsss.metrics.confusion import ConfusionMetric
from wsss.pseudo.masks import load_masks
from wsss.stage import dataset_settings, stage_run

__all__ = ["make_sepl_labels", "sepl_merge", "sepl_merge_with_stats", "stats_file_name"]

REGION_THRESHOLD = 0.5
MASK_THRESHOLD = 0.85
VARIANTS = ("code", "paper")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")


def _check_thresholds(region_threshold: float, mask_threshold: float) -> None:
    for name, value in (("region_threshold", region_threshold), ("mask_threshold", mask_threshold)):
        if not (np.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be in [0, 1], got {value}")


def sepl_merge_with_stats(
    label: np.ndarray,
    masks: np.ndarray,
    region_threshold: float = REGION_THRESHOLD,
    mask_threshold: float = MASK_THRESHOLD,
    variant: str = "code",
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`sepl_merge` plus what happened: masks given / assigned / kept, the classes
    without a kept mask (``unchanged_classes``), and the number of pixels whose label
    changed. "Assigned" counts masks touching some class (``code``: any class; ``paper``:
    the class of largest intersection)."""
    _check_variant(variant)
    _check_thresholds(region_threshold, mask_threshold)
    label = np.asarray(label)
    masks = np.asarray(masks)
    if (
        label.ndim != 2
        or label.dtype.kind not in "iu"
        or (label.size and (label.min() < 0 or label.max() > 255))
    ):
        raise ValueError(f"label must be a 2-D map of values 0..255, got shape {label.shape} ({label.dtype})")
    if masks.ndim != 3 or masks.shape[1:] != label.shape:
        raise ValueError(f"masks must be N×{label.shape[0]}×{label.shape[1]}, got shape {masks.shape}")
    label = label.astype(np.uint8)
    num_masks = masks.shape[0]
    flat_label = label.reshape(-1)
    flat_masks = masks.reshape(num_masks, label.size).astype(bool, copy=False)

    classes = np.unique(flat_label)
    classes = classes[(classes != 0) & (classes != IGNORE)]
    stats: dict[str, Any] = {
        "masks": num_masks,
        "assigned": 0,
        "kept": 0,
        "unchanged_classes": classes.tolist(),
    }
    if variant == "paper" and (classes.size == 0 or num_masks == 0):
        return label.copy(), {**stats, "changed_pixels": 0}

    # column of each pixel's class among `classes`, 0 for background / ignore (dropped below)
    column = np.zeros(256, dtype=np.int64)
    column[classes] = np.arange(1, classes.size + 1)
    pixel_column = column[flat_label]
    class_area = np.bincount(pixel_column, minlength=classes.size + 1)[1:]
    # |S_l ∩ P_k| for every mask and class at once: one bincount over the masks' pixels
    mask_of, pixel_of = np.nonzero(flat_masks)
    width = classes.size + 1
    counts = np.bincount(mask_of * width + pixel_column[pixel_of], minlength=num_masks * width)
    intersection = counts.reshape(num_masks, width)[:, 1:]
    mask_area = np.bincount(mask_of, minlength=num_masks)

    if variant == "code":
        out, taken, has_kept = _merge_code(
            flat_label, flat_masks, classes, intersection, mask_area, class_area,
            region_threshold, mask_threshold,
        )  # fmt: skip
        out = out.reshape(label.shape)
        stats.update(
            assigned=int((intersection > 0).any(axis=1).sum()),
            kept=int(taken.sum()),
            unchanged_classes=classes[~has_kept].tolist(),
            changed_pixels=int(np.count_nonzero(out != label)),
        )
        return out, stats

    best = intersection.argmax(axis=1)  # first maximum: ties go to the smaller class id
    overlap = intersection[np.arange(num_masks), best]
    assigned = overlap > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = overlap / mask_area  # fraction of the mask inside P_k
        covering = overlap / class_area[best]  # fraction of P_k under the mask
    kept = assigned & ((inside > region_threshold) | (covering >= mask_threshold))

    has_kept = np.zeros(classes.size, dtype=bool)
    has_kept[best[kept]] = True
    unchanged = np.flatnonzero(~has_kept)
    # claiming regions: every kept mask, and the whole P_k of a class without kept masks
    regions = np.concatenate([flat_masks[kept], pixel_column[None] == (unchanged + 1)[:, None]])
    region_class = np.concatenate([classes[best[kept]], classes[unchanged]]).astype(np.uint8)
    region_area = np.concatenate([mask_area[kept], class_area[unchanged]])
    order = np.lexsort((region_class, region_area))  # smallest (then lowest class) first: argmax picks it
    regions, region_class = regions[order], region_class[order]

    out = np.where(flat_label == IGNORE, np.uint8(IGNORE), np.uint8(0))
    claimed = regions.any(axis=0)
    out[claimed] = region_class[regions[:, claimed].argmax(axis=0)]
    uncovered_class_pixel = (pixel_column > 0) & ~flat_masks.any(axis=0)
    out[uncovered_class_pixel] = flat_label[uncovered_class_pixel]
    out = out.reshape(label.shape)
    stats.update(
        assigned=int(assigned.sum()),
        kept=int(kept.sum()),
        unchanged_classes=classes[unchanged].tolist(),
        changed_pixels=int(np.count_nonzero(out != label)),
    )
    return out, stats


def _merge_code(
    flat_label: np.ndarray,
    flat_masks: np.ndarray,
    classes: np.ndarray,
    intersection: np.ndarray,
    mask_area: np.ndarray,
    class_area: np.ndarray,
    region_threshold: float,
    mask_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``code`` variant on flattened inputs: the label, which masks were taken, and
    which classes took at least one mask."""
    num_masks = flat_masks.shape[0]
    out = np.zeros_like(flat_label)
    untaken = np.ones(num_masks, dtype=bool)
    has_kept = np.zeros(classes.size, dtype=bool)
    for j, k in enumerate(classes):  # increasing id order
        overlap = intersection[:, j]
        with np.errstate(divide="ignore", invalid="ignore"):
            passes = (overlap / mask_area > region_threshold) | (overlap / class_area[j] >= mask_threshold)
        take = untaken & passes
        covered_by_untaken = flat_masks[untaken].any(axis=0)
        paint = (flat_label == k) & ~covered_by_untaken
        if take.any():
            paint |= flat_masks[take].any(axis=0)
            has_kept[j] = True
        out[paint] = k  # later classes paint over earlier ones
        untaken &= ~take
    return out, ~untaken, has_kept


def sepl_merge(
    label: np.ndarray,
    masks: np.ndarray,
    region_threshold: float = REGION_THRESHOLD,
    mask_threshold: float = MASK_THRESHOLD,
    variant: str = "code",
) -> np.ndarray:
    """The SEPL label (uint8 H×W) of a pseudo label (uint8 H×W: 0 background, 1..K classes,
    255 ignore) and class-agnostic masks (bool N×H×W); ``variant`` ``"code"`` (the authors'
    released merge, default) or ``"paper"`` (the paper's text); rules in the module docstring."""
    return sepl_merge_with_stats(label, masks, region_threshold, mask_threshold, variant)[0]


# --------------------------------------------------------------------------- the stage
def stats_file_name(shard: tuple[int, int]) -> str:
    """``sepl_stats.csv``, or ``sepl_stats.shard<i>of<N>.csv`` so that shards never collide."""
    i, n = shard
    return "sepl_stats.csv" if n == 1 else f"sepl_stats.shard{i}of{n}.csv"


_STATS_COLUMNS = (
    "id",
    "precision_before",
    "recall_before",
    "miou_before",
    "precision_after",
    "recall_after",
    "miou_after",
    "masks",
    "assigned",
    "kept",
    "changed_pixels",
)


def _summary(metric: ConfusionMetric) -> dict[str, float]:
    scores = metric.compute()
    return {
        "miou": scores["miou"],
        "precision": scores["precision_mean"],
        "recall": scores["recall_mean"],
    }


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.6f}"
    return str(value)


def make_sepl_labels(
    dataset: Dataset,
    pseudo_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    region_threshold: float = REGION_THRESHOLD,
    mask_threshold: float = MASK_THRESHOLD,
    variant: str = "code",
    ids: Sequence[str] | None = None,
    shard: tuple[int, int] | str | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Write SEPL labels ``out_dir/<id>.png`` from ``pseudo_dir/<id>.png`` and
    ``masks_dir/<id>.npz``, skipping existing outputs (resume). ``variant`` picks the merge
    (:func:`sepl_merge`) and is part of the stage settings, so a folder made with the other
    variant is refused.

    Where the dataset has ground truth, every image of the shard (resumed ones read back
    from disk) is scored before and after with :class:`ConfusionMetric`: per image in
    ``sepl_stats.csv`` (mean precision / recall / mIoU over classes, plus the mask counts
    of the images refined in this call), and over the shard in the returned
    ``{"before": {...}, "after": {...}}`` (None without ground truth).
    """
    pseudo_dir, masks_dir, out_dir = Path(pseudo_dir), Path(masks_dir), Path(out_dir)
    try:
        _check_variant(variant)
        _check_thresholds(float(region_threshold), float(mask_threshold))
    except ValueError as e:
        raise WsssError(f"{out_dir}: SEPL {e}") from None
    for folder, what in ((pseudo_dir, "pseudo-label"), (masks_dir, "mask")):
        if not folder.is_dir():
            raise WsssError(f"{folder}: {what} folder not found")
    all_ids = dataset.select_ids(ids)
    shard = parse_shard(shard)
    mine = shard_list(all_ids, shard)
    settings = {
        **dataset_settings(dataset),
        "region_threshold": float(region_threshold),
        "mask_threshold": float(mask_threshold),
        "variant": variant,
    }
    inputs = {"pseudo": pseudo_dir, "masks": masks_dir}
    with stage_run(out_dir, "sepl", settings, inputs, force=force, shard=shard) as run:
        k = dataset.num_classes
        total_before, total_after = ConfusionMetric(k), ConfusionMetric(k)
        rows = []
        written = with_gt = 0
        start = time.perf_counter()
        for image_id in tqdm(mine, desc="sepl", unit="img", disable=not progress):
            shape = image_size(dataset.image_path(image_id))
            label = load_label(pseudo_dir / f"{image_id}.png", k, shape)
            out_path = out_dir / f"{image_id}.png"
            merge_stats: dict[str, Any] = {}
            if out_path.is_file():
                refined = load_label(out_path, k, shape)
            else:
                masks = load_masks(masks_dir / f"{image_id}.npz", shape)
                refined, merge_stats = sepl_merge_with_stats(
                    label, masks, region_threshold, mask_threshold, variant
                )
                save_label(out_path, refined)
                written += 1
            row: dict[str, Any] = {"id": image_id, **{c: merge_stats.get(c) for c in _STATS_COLUMNS[7:]}}
            gt_path = dataset.gt_path(image_id)
            if gt_path is not None:
                gt = load_label(gt_path, k, shape)
                before, after = ConfusionMetric(k), ConfusionMetric(k)
                before.process(label, gt)
                after.process(refined, gt)
                total_before.merge(before)
                total_after.merge(after)
                for when, metric in (("before", before), ("after", after)):
                    row.update({f"{name}_{when}": value for name, value in _summary(metric).items()})
                with_gt += 1
            rows.append(row)
        elapsed = time.perf_counter() - start

        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=_STATS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _fmt(row.get(c)) for c in _STATS_COLUMNS})
        stats_path = out_dir / stats_file_name(shard)
        atomic_write_text(stats_path, buf.getvalue())

        result = {
            "num_images": len(mine),
            "written": written,
            "skipped_existing": len(mine) - written,
            "with_gt": with_gt,
            "before": _summary(total_before) if with_gt else None,
            "after": _summary(total_after) if with_gt else None,
            "stats_csv": str(stats_path),
        }
        if written:
            masks_settings = masks_dir / "settings.json"
            run.finish(
                {**settings, **run.input_paths(pseudo_dir="pseudo", masks_dir="masks"), "shard": list(shard)},
                timings={"sepl_s": round(elapsed, 2)},
                extra={
                    "dataset": {"kind": dataset.kind, "root": str(dataset.root), "split": dataset.split},
                    "masks_settings": read_json(masks_settings) if masks_settings.is_file() else None,
                    "seconds_per_image": round(elapsed / len(mine), 4),
                    **{key: result[key] for key in ("num_images", "written", "skipped_existing", "with_gt")},
                    "before": result["before"],
                    "after": result["after"],
                },
            )
    return result
