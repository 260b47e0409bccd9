"""Size-balanced evaluation subsets (``wsss balance``): seed 004's PASCAL-B idea for any dataset.

VOC's val set is dominated by large objects, so per-size scores (IA-mIoU S/M/L)
rest on a handful of small instances. This module picks a subset of a split in
which small, medium and large instances, and the classes, are about equally
represented, from the split's instance annotations:

* :func:`instance_records` reads ``(image_id, class_id, area)`` per instance, the
  way IA-mIoU sees instances (the instance PNG with each instance's majority GT
  class, else connected components of the class map; area = labelled pixels);
* :func:`select_balanced_subset` is the greedy pick (also used by the synthetic
  generator for its ``val_balanced`` split);
* :func:`balance_split` writes the id list, size/class histograms, a plot and NAME.run.json.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.data.base import Dataset
from wsss.io import (
    IGNORE,
    WsssError,
    atomic_path,
    atomic_write_text,
    load_instances,
    write_json,
    write_run_json,
)

SIZE_BUCKETS = ("small", "medium", "large")
EVENNESS = (
    "normalised Shannon entropy (Pielou's J) of the instance counts: H(p) / ln K over all K categories "
    "(3 size buckets; every foreground class), empty ones included; 1 = perfectly even, 0 = one category"
)

Record = tuple[str, int, float]


# --------------------------------------------------------------------------- records
def _image_records(dataset: Dataset, image_id: str) -> list[tuple[int, int]] | None:
    """(class, area) of each instance of one image, or None when the image has no ground truth."""
    # ia_miou is imported here, not at module level: `import wsss.data` loads every module
    from wsss.metrics.ia_miou import instances_from_components, instances_from_map

    inst_path = dataset.instance_path(image_id)
    gt = dataset.gt(image_id)
    if gt is None:
        if inst_path is not None and inst_path.is_file():
            raise WsssError(
                f"{inst_path}: instance map without a ground-truth label map; an instance's class is the "
                "majority ground-truth class under it"
            )
        return None
    labelled = gt != IGNORE
    if inst_path is not None and inst_path.is_file():
        inst = load_instances(inst_path, shape=gt.shape)
        labelled &= inst != IGNORE
        ids, class_of_id = instances_from_map(inst, gt, dataset.num_classes)
    else:
        ids, class_of_id = instances_from_components(gt, dataset.num_classes)
    areas = np.bincount(ids[labelled].ravel(), minlength=len(class_of_id))
    present = np.flatnonzero((areas > 0) & (class_of_id > 0))
    return list(zip(class_of_id[present].tolist(), areas[present].tolist(), strict=True))


def instance_records(dataset: Dataset, progress: bool = True) -> list[tuple[str, int, int]]:
    """``(image_id, class_id, area)`` per instance of the split, in split order then instance id.

    An instance is what IA-mIoU scores (:mod:`wsss.metrics.ia_miou`): an id of the
    instance PNG, of the class most of its labelled pixels have in the GT (mostly
    background: dropped), or, without an instance PNG, an 8-connected component of a
    GT class. Its area counts the pixels that are not 255 in the GT nor in the instance
    map. Images without GT have no known instances and give no records.
    """
    records: list[tuple[str, int, int]] = []
    annotated = 0
    for image_id in tqdm(dataset.ids, desc="instances", unit="img", disable=not progress):
        found = _image_records(dataset, image_id)
        if found is None:
            continue
        annotated += 1
        records.extend((image_id, c, a) for c, a in found)
    if not annotated:
        raise WsssError(
            f"{dataset.root}: split {dataset.split!r} has no instance annotations and no ground-truth "
            "label maps; a size-balanced subset needs the instances' areas"
        )
    return records


# --------------------------------------------------------------------------- selection
def select_balanced_subset(
    records: Iterable[Record],
    bounds: tuple[float, float],
    overfill_penalty: float = 0.25,
    max_images: int | None = None,
) -> list[str]:
    """Images whose instances are about equally small/medium/large and spread over the classes.

    Seed 004's PASCAL-B idea as a greedy pick over instance records ``(image_id,
    class_id, area)``. Every size bucket and every class gets a quota, as large as the
    scarcest bucket and the scarcest class allow. Each step adds the image with the
    best score: an instance that fills a quota earns quota/available of its bucket
    (and of its class), so images holding the scarce kinds go first; one that lands
    in a full quota costs ``overfill_penalty``. It stops when no image scores above 0,
    or once ``max_images`` are chosen (the most useful images are picked first, so a
    cut-off subset stays as balanced as its size allows).
    Returns the chosen ids in first-seen order.
    """
    from wsss.metrics.ia_miou import size_bucket

    if max_images is not None and max_images < 1:
        raise WsssError(f"max_images must be >= 1, got {max_images}")
    by_image: dict[str, list[tuple[int, float]]] = {}
    for image_id, class_id, area in records:
        by_image.setdefault(image_id, []).append((int(class_id), float(area)))
    if not by_image:
        return []
    ids = list(by_image)
    class_ids = sorted({c for insts in by_image.values() for c, _ in insts})
    class_col = {c: j for j, c in enumerate(class_ids)}
    sizes = np.zeros((len(ids), 3))
    classes = np.zeros((len(ids), len(class_ids)))
    for i, image_id in enumerate(ids):
        insts = by_image[image_id]
        np.add.at(sizes[i], size_bucket([a for _, a in insts], bounds), 1)
        np.add.at(classes[i], [class_col[c] for c, _ in insts], 1)
    sizes = sizes[:, sizes.sum(0) > 0]  # a bucket no instance falls in cannot be balanced
    total = min(sizes.shape[1] * sizes.sum(0).min(), classes.shape[1] * classes.sum(0).min())
    quota_size = total / sizes.shape[1]
    quota_class = total / classes.shape[1]
    weight_size = quota_size / sizes.sum(0)
    weight_class = quota_class / classes.sum(0)
    have_size = np.zeros(sizes.shape[1])
    have_class = np.zeros(classes.shape[1])
    chosen = np.zeros(len(ids), dtype=bool)
    limit = len(ids) if max_images is None else min(int(max_images), len(ids))

    def gain(counts: np.ndarray, have: np.ndarray, quota: float, weight: np.ndarray) -> np.ndarray:
        need = np.maximum(quota - have, 0.0)
        return (weight * np.minimum(counts, need) - overfill_penalty * np.maximum(counts - need, 0.0)).sum(1)

    for _ in range(limit):
        score = gain(sizes, have_size, quota_size, weight_size) + gain(
            classes, have_class, quota_class, weight_class
        )
        score[chosen] = -np.inf
        best = int(np.argmax(score))
        if score[best] <= 0:
            break
        chosen[best] = True
        have_size += sizes[best]
        have_class += classes[best]
    return [i for i, c in zip(ids, chosen, strict=True) if c]


# --------------------------------------------------------------------------- histograms
def evenness(counts: Sequence[float] | np.ndarray) -> float:
    """Pielou's J of ``counts`` (see :data:`EVENNESS`); 0 for no instances, 1 for one category."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if n <= 0:
        return 0.0
    if counts.size < 2:
        return 1.0
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum() / math.log(counts.size))


def _min_max(counts: np.ndarray) -> float:
    return float(counts.min() / counts.max()) if counts.size and counts.max() > 0 else 0.0


def histograms(
    records: Iterable[Record], bounds: tuple[float, float], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Instance counts per size bucket (3) and per foreground class (``num_classes - 1``)."""
    from wsss.metrics.ia_miou import size_bucket

    records = list(records)
    if not records:
        return np.zeros(3, np.int64), np.zeros(num_classes - 1, np.int64)
    areas = np.array([a for _, _, a in records], dtype=np.float64)
    classes = np.array([c for _, c, _ in records], dtype=np.int64)
    sizes = np.bincount(size_bucket(areas, bounds), minlength=3)
    return sizes, np.bincount(classes, minlength=num_classes)[1:]


# --------------------------------------------------------------------------- the stage
def balance_split(
    dataset: Dataset,
    out_dir: str | Path,
    bounds: tuple[float, float] | None = None,
    name: str = "balanced",
    max_images: int | None = None,
    progress: bool = True,
) -> dict:
    """Pick a size- and class-balanced subset of ``dataset``'s split and write it to ``out_dir``.

    Files: ``<name>.txt`` (one id per line, the ImageSets/Segmentation format, so
    ``out_dir = ROOT/ImageSets/Segmentation`` makes it a split of a VOC-layout
    dataset), ``<name>_histogram.csv`` / ``.json`` / ``.png`` (instances per size
    bucket and per class, whole split vs subset) and ``<name>.run.json``. ``bounds`` are the
    small/medium area bounds in pixels (default: ``dataset.ia_bounds``).

    Returns the summary: ``num_images`` of the subset (and of the split), instance
    counts per bucket and per class, and ``evenness`` for sizes and classes, split
    vs subset, measured as :data:`EVENNESS` describes. When the greedy pick selects
    nothing, the subset is the whole split (``fallback``), as the generator does.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise WsssError(f"invalid subset name {name!r}: a file name without folders")
    if bounds is None:
        bounds = dataset.ia_bounds
    if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1]:
        raise WsssError(f"bounds must be two areas 0 < small <= medium, got {tuple(bounds)}")
    bounds = (int(bounds[0]), int(bounds[1])) if all(float(b).is_integer() for b in bounds) else tuple(bounds)

    records = instance_records(dataset, progress=progress)
    chosen = select_balanced_subset(records, bounds, max_images=max_images)
    fallback = not chosen
    if fallback:
        chosen = list(dataset.ids if max_images is None else dataset.ids[:max_images])
    keep = set(chosen)
    subset_records = [r for r in records if r[0] in keep]

    class_names = list(dataset.class_names[1:])
    split_sizes, split_classes = histograms(records, bounds, dataset.num_classes)
    sub_sizes, sub_classes = histograms(subset_records, bounds, dataset.num_classes)

    def pairs(keys: Sequence[str], whole: np.ndarray, sub: np.ndarray) -> dict[str, dict[str, int]]:
        return {k: {"split": int(a), "subset": int(b)} for k, a, b in zip(keys, whole, sub, strict=True)}

    summary = {
        "name": name,
        "list": str(out / f"{name}.txt"),
        "dataset": dataset.kind,
        "root": str(dataset.root),
        "split": dataset.split,
        "bounds": list(bounds),
        "max_images": max_images,
        "fallback": fallback,
        "num_images": len(chosen),
        "num_images_split": len(dataset.ids),
        "num_instances": {"split": len(records), "subset": len(subset_records)},
        "sizes": pairs(SIZE_BUCKETS, split_sizes, sub_sizes),
        "classes": pairs(class_names, split_classes, sub_classes),
        "evenness": {
            "sizes": {"split": evenness(split_sizes), "subset": evenness(sub_sizes)},
            "classes": {"split": evenness(split_classes), "subset": evenness(sub_classes)},
        },
        "evenness_measure": EVENNESS,
        # a blunter second view: scarcest / most common category (0 when one is empty)
        "min_max_ratio": {
            "sizes": {"split": _min_max(split_sizes), "subset": _min_max(sub_sizes)},
            "classes": {"split": _min_max(split_classes), "subset": _min_max(sub_classes)},
        },
    }

    atomic_write_text(out / f"{name}.txt", "".join(f"{i}\n" for i in chosen))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["kind", "name", "split", "subset"])
    writer.writerow(["total", "images", len(dataset.ids), len(chosen)])
    writer.writerow(["total", "instances", len(records), len(subset_records)])
    for kind, table in (("size", summary["sizes"]), ("class", summary["classes"])):
        for key, row in table.items():
            writer.writerow([kind, key, row["split"], row["subset"]])
    atomic_write_text(out / f"{name}_histogram.csv", buf.getvalue())
    write_json(out / f"{name}_histogram.json", summary)
    _plot(summary, out / f"{name}_histogram.png")
    config = {
        "dataset": dataset.kind,
        "root": str(dataset.root),
        "split": dataset.split,
        "bounds": list(bounds),
        "name": name,
        "max_images": max_images,
    }
    write_run_json(
        out,
        "balance",
        config,
        timings={"balance_s": round(time.perf_counter() - start, 3)},
        extra={"num_images": len(chosen), "evenness": summary["evenness"]},
        name=f"{name}.run.json",  # several subsets may share a folder (e.g. ImageSets/Segmentation)
    )
    return summary


def format_histogram(summary: dict) -> str:
    """The summary as a plain-text table: sizes, classes, totals and evenness, split vs subset."""
    names = [*summary["sizes"], *summary["classes"], "instances", "images"]
    width = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'':<{width}}{'split':>8}{'subset':>8}"]
    for title, table in (("sizes", summary["sizes"]), ("classes", summary["classes"])):
        lines.append(f"{title}:")
        lines += [f"  {k:<{width - 2}}{v['split']:>8}{v['subset']:>8}" for k, v in table.items()]
        e = summary["evenness"][title]
        lines.append(f"  {'evenness':<{width - 2}}{e['split']:>8.3f}{e['subset']:>8.3f}")
    n = summary["num_instances"]
    lines.append(f"{'instances':<{width}}{n['split']:>8}{n['subset']:>8}")
    lines.append(f"{'images':<{width}}{summary['num_images_split']:>8}{summary['num_images']:>8}")
    return "\n".join(lines)


def _plot(summary: dict, path: Path) -> None:
    # an explicit Agg canvas: no global backend switch, works without a display
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("sizes", "instance size"), ("classes", "class")]
    n_classes = len(summary["classes"])
    fig = Figure(figsize=(4.0 + max(4.0, 0.35 * n_classes), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, width_ratios=[1.0, max(1.0, n_classes / 3.0)])
    for ax, (key, title) in zip(axes, panels, strict=True):
        table = summary[key]
        x = np.arange(len(table))
        for offset, column in ((-0.2, "split"), (0.2, "subset")):
            counts = np.array([row[column] for row in table.values()], dtype=np.float64)
            share = counts / counts.sum() if counts.sum() else counts
            label = f"{column} (evenness {summary['evenness'][key][column]:.2f})"
            ax.bar(x + offset, share, width=0.4, label=label)
        ax.set_xticks(x, list(table), rotation=0 if key == "sizes" else 60, fontsize=8)
        ax.set_ylim(0, 1.3 * max(ax.get_ylim()[1], 1e-9))  # headroom for the legend
        ax.set_ylabel("share of instances")
        ax.set_title(f"per {title}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{summary['name']}: {summary['num_images']} of {summary['num_images_split']} images "
        f"({summary['dataset']} {summary['split']}, bounds {summary['bounds']})",
        fontsize=10,
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
