"""Dataset statistics next to PASCAL VOC's (``wsss stats``): the figures a benchmark is tuned on.

The embedded benchmark is meant to look like VOC to a CAM network, so it is calibrated on
these statistics, never on the methods' scores (issue 14). :func:`dataset_statistics`
measures them on any dataset the toolkit reads, from the split's ground truth:

* an instance is what IA-mIoU scores (:func:`wsss.data.balance.instance_records`): an id
  of the instance PNG, else an 8-connected component of a class; its area counts the
  labelled pixels;
* the small/medium/large shares use the dataset's IA-mIoU bounds
  (:attr:`~wsss.data.base.Dataset.ia_bounds`: VOC's 32² / 96² px, or the bounds the
  synthetic presets scale to their image size);
* an instance's size in CAM cells is area / stride²: the cells it covers in the score map
  of a network of that output stride run at the image's own resolution;
* the per-class figures are seed 001's (:class:`wsss.metrics.groups.ClassGroupStats`):
  area share %S, co-occurrence %C, label-set size L, and each class's most frequent partner.

:data:`VOC_REFERENCE` holds published figures for VOC 2012 segmentation ``train`` with
their sources; a statistic nobody published is "n/a". A VOC user fills that column by
running ``wsss stats`` on their own VOC files.

This module sits next to the loaders rather than inside the synthetic package because it
reads any dataset; the generator's own split statistics in ``dataset.json``
(:mod:`wsss.data.synthetic.splits`) count things only the generator knows (context stuff,
distractors).
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from wsss.data.base import Dataset
from wsss.io import IGNORE, WsssError

# Sources of the VOC column (VOC 2012 segmentation train, 1,464 images).
VOC_SOURCES = {
    "voc": "PASCAL VOC 2012 dataset statistics (host.robots.ox.ac.uk/pascal/VOC/voc2012/dbstats.html; "
    "devkit doc, segmentation image sets): train 1,464 images with 3,507 objects, val 1,449 with 3,422",
    "seed001": "seed 001 (P-NOC), Table 3, VOC 2012 train: per-class O, %S, %C, L and the background's %S",
}
# statistic -> (value, source); derived values say how in the comment
VOC_REFERENCE: dict[str, tuple[float, str]] = {
    "images": (1464, "voc"),
    "annotated_images": (1464, "voc"),  # every segmentation image has its masks
    "instances": (3507, "voc"),
    "instances_per_image": (3507 / 1464, "voc"),
    "classes_per_image": (2171 / 1464, "seed001"),  # Table 3's O column sums to 2,171 label occurrences
    "class_area_share": (0.173, "seed001"),  # mean of the 20 classes' %S (17.265 %)
    "background_share": (0.695, "seed001"),  # the background row's %S
    "cooccurrence_any": (0.512, "seed001"),  # the overall mean row's %C
    "cardinality": (1.8, "seed001"),  # the overall mean row's L
}

# (key, label, kind) in table order; kind picks the number format
ROWS: tuple[tuple[str, str, str], ...] = (
    ("images", "images", "count"),
    ("annotated_images", "images with ground truth", "count"),
    ("instances", "instances (objects)", "count"),
    ("instances_per_image", "instances per image, mean", "mean"),
    ("classes_per_image", "classes per image, mean", "mean"),
    ("single_class_share", "images with a single class", "share"),
    ("size_share_small", "instances small (IA-mIoU bounds)", "share"),
    ("size_share_medium", "instances medium", "share"),
    ("size_share_large", "instances large", "share"),
    ("cells_q1", "instance size in CAM cells, 25 %", "cells"),
    ("cells_median", "instance size in CAM cells, median", "cells"),
    ("cells_q3", "instance size in CAM cells, 75 %", "cells"),
    ("image_cells_median", "image size in CAM cells, median", "cells"),
    ("instance_image_share_median", "instance area / image area, median", "share"),
    ("class_area_share", "class area / image area (%S), class mean", "share"),
    ("background_share", "background share of the image (%S)", "share"),
    ("cooccurrence_any", "images of a class with another (%C), mean", "share"),
    ("cardinality", "classes in a class's images (L), mean", "mean"),
    ("top_partner_share", "images of a class with its top partner, mean", "share"),
)


def dataset_statistics(
    dataset: Dataset, stride: int = 16, bounds: tuple[float, float] | None = None, progress: bool = True
) -> dict:
    """The split's statistics (see the module docstring): a flat summary whose keys are those of
    :data:`ROWS`, plus ``per_class`` (images, instances, %S, %C and the top partner of each class).

    Images without a ground-truth label map are counted in ``images`` and skipped otherwise;
    a split with none is an error. Means over classes skip classes the split never shows.
    """
    # scipy-backed helpers are imported here, not at module level: `import wsss.data` loads every module
    from wsss.data.balance import _image_records
    from wsss.metrics.groups import ClassGroupStats
    from wsss.metrics.ia_miou import size_bucket

    if stride < 1:
        raise WsssError(f"stride must be a positive number of pixels, got {stride}")
    bounds = dataset.ia_bounds if bounds is None else bounds
    k = dataset.num_classes
    groups = ClassGroupStats(k, dataset.class_names)
    areas: list[int] = []
    area_share: list[float] = []
    instance_class: list[int] = []
    classes_in_image: list[int] = []
    image_pixels: list[int] = []
    for image_id in tqdm(dataset.ids, desc="stats", unit="img", disable=not progress):
        gt = dataset.gt(image_id)
        if gt is None:
            continue
        found = _image_records(dataset, image_id) or []
        groups.process(gt)
        classes_in_image.append(int((np.bincount(gt[gt != IGNORE].ravel(), minlength=k)[1:] > 0).sum()))
        image_pixels.append(gt.size)
        instance_class.extend(c for c, _ in found)
        areas.extend(a for _, a in found)
        area_share.extend(a / gt.size for _, a in found)
    if not classes_in_image:
        raise WsssError(
            f"{dataset.root}: split {dataset.split!r} has no ground-truth label maps; "
            "the statistics are measured on the annotations"
        )

    n_images = len(classes_in_image)
    area = np.asarray(areas, dtype=np.float64)
    buckets = np.bincount(size_bucket(area, bounds), minlength=3) if area.size else np.zeros(3)
    share = buckets / max(area.size, 1)
    cells = area / stride**2
    q1, median, q3 = np.percentile(cells, [25, 50, 75]) if cells.size else (np.nan,) * 3

    per_class_stats = groups.statistics()
    occurrence = per_class_stats["occurrence"]
    partners = groups.pair_counts[1:, 1:].copy()
    np.fill_diagonal(partners, 0)
    best = partners.argmax(axis=1)
    best_count = partners.max(axis=1)
    seen = occurrence[1:] > 0
    top_share = np.where(seen, best_count / np.maximum(occurrence[1:], 1), np.nan)
    instances_per_class = np.bincount(np.asarray(instance_class, dtype=np.int64), minlength=k)[1:]

    def class_mean(values: np.ndarray) -> float:
        values = np.asarray(values, dtype=np.float64)[seen]
        return float(np.nanmean(values)) if values.size else float("nan")

    per_class = [
        {
            "name": dataset.class_names[c + 1],
            "images": int(occurrence[c + 1]),
            "instances": int(instances_per_class[c]),
            "area_share": float(per_class_stats["relative_size"][c + 1]),
            "cooccurrence_any": float(per_class_stats["cooccurrence"][c + 1]),
            "top_partner": dataset.class_names[best[c] + 1] if best_count[c] > 0 else None,
            "top_partner_share": float(top_share[c]),
        }
        for c in range(k - 1)
    ]
    return {
        "dataset": dataset.kind,
        "root": str(dataset.root),
        "split": dataset.split,
        "stride": int(stride),
        "bounds": [float(b) if not float(b).is_integer() else int(b) for b in bounds],
        "images": len(dataset.ids),
        "annotated_images": n_images,
        "instances": int(area.size),
        "instances_per_image": area.size / n_images,
        "classes_per_image": float(np.mean(classes_in_image)),
        "single_class_share": float(np.mean(np.asarray(classes_in_image) == 1)),
        "size_share_small": float(share[0]),
        "size_share_medium": float(share[1]),
        "size_share_large": float(share[2]),
        "cells_q1": float(q1),
        "cells_median": float(median),
        "cells_q3": float(q3),
        "image_cells_median": float(np.median(image_pixels)) / stride**2,
        "instance_image_share_median": float(np.median(area_share)) if area_share else float("nan"),
        "class_area_share": class_mean(per_class_stats["relative_size"][1:]),
        "background_share": float(per_class_stats["relative_size"][0]),
        "cooccurrence_any": class_mean(per_class_stats["cooccurrence"][1:]),
        "cardinality": class_mean(per_class_stats["cardinality"][1:]),
        "top_partner_share": class_mean(top_share),
        "per_class": per_class,
    }


def voc_reference() -> dict[str, dict]:
    """:data:`VOC_REFERENCE` as JSON: ``{statistic: {"value": v, "source": text}}``."""
    return {key: {"value": value, "source": VOC_SOURCES[src]} for key, (value, src) in VOC_REFERENCE.items()}


def _format(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if kind == "count":
        return f"{int(value)}"
    if kind == "share":
        return f"{100 * value:.1f} %"
    if kind == "cells":
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_statistics(stats: dict) -> str:
    """A plain-text table: this split next to VOC 2012 train, the sources, then the per-class
    top partners."""
    tags = {src: f"[{i}]" for i, src in enumerate(VOC_SOURCES, start=1)}
    name = f"{stats['dataset']} {stats['split']}"
    width = max(len(label) for _, label, _ in ROWS) + 2
    lines = [
        f"{'statistic':<{width}}{name:>16}{'VOC 2012 train':>17}",
        f"(output stride {stats['stride']}, IA-mIoU bounds {stats['bounds'][0]}/{stats['bounds'][1]} px)",
    ]
    for key, label, kind in ROWS:
        value, src = VOC_REFERENCE.get(key, (None, None))
        voc = _format(value, kind) + (f" {tags[src]}" if src else "    ")
        lines.append(f"{label:<{width}}{_format(stats[key], kind):>16}{voc:>17}".rstrip())
    lines += [f"{tags[src]} {text}" for src, text in VOC_SOURCES.items()]
    lines.append("n/a: no published figure; run `wsss stats` on your own VOC files to fill it.")
    cw = max(12, *(len(c["name"]) + 2 for c in stats["per_class"]))
    lines.append(f"\n{'class':<{cw}}{'images':>8}{'inst.':>8}{'%S':>8}{'%C':>8}  top partner (share)")
    for c in stats["per_class"]:
        partner = (
            "—"
            if c["top_partner"] is None
            else f"{c['top_partner']} ({_format(c['top_partner_share'], 'share')})"
        )
        row = f"{c['name']:<{cw}}{c['images']:>8}{c['instances']:>8}"
        row += (
            f"{_format(c['area_share'], 'share'):>8}{_format(c['cooccurrence_any'], 'share'):>8}  {partner}"
        )
        lines.append(row)
    return "\n".join(lines)
