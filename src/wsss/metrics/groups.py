"""Class-group analysis (seed 001, Tables 1 and 3): which kinds of classes a method gets right.

Per class, over the images whose ground truth contains it: occurrence O (number
of images), mean relative size %S (class pixels / image pixels), co-occurrence
rate %C (fraction of those images that contain another foreground class) and
mean label-set cardinality L (number of foreground classes in those images).
Classes are grouped by size, frequency and co-occurrence (tertiles by rank,
ties kept together; or the paper's own groups for PASCAL VOC), each group
reports the means of the statistics and of the per-class scores, and Pearson
correlations relate the statistics to the per-class IoU.

The ``overall`` rows follow the paper's tables (seed 001, Tables 1 and 3, whose
numbers these rules reproduce): the mean row averages %S and the per-class
scores over the background and the observed foreground classes (so its IoU is
the mIoU), and O, %C and L over the foreground only (the background has none
in the tables); the σ row (sample standard deviation), the other groups and
the correlations use the foreground classes only.
"""

from __future__ import annotations

import numpy as np

from wsss.metrics.confusion import check_label_map, nanmean

STATISTICS = ("occurrence", "relative_size", "cooccurrence", "cardinality")
TERTILE_NAMES = {
    "size": ("small", "mid", "large"),
    "frequency": ("low", "mid", "high"),
    "cooccurrence": ("low", "mid", "high"),
}
_TERTILE_STATISTIC = {"size": "relative_size", "frequency": "occurrence", "cooccurrence": "cooccurrence"}
# statistics that the overall mean row averages with the background (besides every score column)
_MEAN_WITH_BACKGROUND = ("relative_size",)

# The groups of seed 001, Table 3 (PASCAL VOC 2012 train; "singleton" as in its per-class rows, which
# match its group means); used when the class names are VOC's.
VOC_GROUPS: dict[str, dict[str, list[str]]] = {
    "size": {
        "small": ["aeroplane", "bicycle", "bird", "boat", "bottle", "chair", "pottedplant"],
        "mid": ["car", "cow", "person", "tvmonitor"],
        "large": ["bus", "cat", "diningtable", "dog", "horse", "motorbike", "sheep", "sofa", "train"],
    },
    "frequency": {
        "low": ["bicycle", "boat", "bus", "cow", "horse", "sheep"],
        "mid": [
            "aeroplane",
            "bottle",
            "diningtable",
            "motorbike",
            "pottedplant",
            "sofa",
            "train",
            "tvmonitor",
        ],
        "high": ["bird", "car", "cat", "chair", "dog", "person"],
    },
    "semantic": {
        "singleton": ["aeroplane", "bird", "boat", "cat", "cow", "sheep", "train"],
        "person": ["person"],
        "animal": ["dog", "horse"],
        "room": ["bottle", "chair", "diningtable", "pottedplant", "sofa", "tvmonitor"],
        "traffic": ["bicycle", "bus", "car", "motorbike"],
    },
}


def tertile_groups(values: np.ndarray) -> np.ndarray:
    """0/1/2 = lower/middle/upper third by rank; equal values always share a group."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.searchsorted(np.sort(values), values, side="left")  # number of strictly smaller values
    return (3 * rank) // values.size


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r over the pairs where both are defined; NaN with < 2 pairs or no spread."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = ~(np.isnan(x) | np.isnan(y))
    if ok.sum() < 2:
        return float("nan")
    dx = x[ok] - x[ok].mean()
    dy = y[ok] - y[ok].mean()
    den = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / den) if den > 0 else float("nan")


def _sample_std(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.std(ddof=1)) if values.size > 1 else float("nan")


def group_table(
    stats: dict[str, np.ndarray],
    class_names: list[str],
    scores: dict[str, np.ndarray] | None = None,
    groups: dict[str, dict[str, list[int]]] | None = None,
) -> dict:
    """The group rows and correlations from per-class statistics (a pure function).

    ``stats`` holds the arrays of :data:`STATISTICS` (length K, index 0 = background);
    ``scores`` per-class scores such as ``{"iou": ..., "ia_iou": ...}``; ``groups``
    maps a kind to {group name: class ids}. Kinds of :data:`TERTILE_NAMES` that
    ``groups`` does not give are formed from tertiles of the observed classes.
    Each row's ``with_background`` names the columns whose value also averages the
    background (only the overall mean row has any, when the background was seen).
    """
    scores = scores or {}
    k = len(class_names)
    observed = np.flatnonzero(np.asarray(stats["occurrence"])[1:] > 0) + 1  # foreground classes seen
    groups = dict(groups or {})
    for kind, names in TERTILE_NAMES.items():
        if kind not in groups:
            tier = tertile_groups(np.asarray(stats[_TERTILE_STATISTIC[kind]])[observed])
            groups[kind] = {names[t]: observed[tier == t].tolist() for t in range(3)}
    columns = {**{s: np.asarray(stats[s], dtype=np.float64) for s in STATISTICS}, **scores}

    def row(kind: str, name: str, members: np.ndarray, how=nanmean, with_background=()) -> dict:
        out = {
            "kind": kind,
            "name": name,
            "ids": members.tolist(),
            "classes": [class_names[i] for i in members],
            "with_background": list(with_background),
        }
        plus_bg = np.concatenate([[0], members]).astype(np.int64)
        out.update(
            {
                col: how(values[plus_bg if col in with_background else members])
                for col, values in columns.items()
            }
        )
        return out

    background_seen = k > 0 and np.asarray(stats["occurrence"], dtype=np.float64)[0] > 0
    mean_with_bg = (*_MEAN_WITH_BACKGROUND, *scores) if background_seen else ()
    rows = [
        row("overall", "mean", observed, with_background=mean_with_bg),
        row("overall", "std", observed, how=_sample_std),
    ]
    for kind, named in groups.items():
        for name, members in named.items():
            members = np.asarray([i for i in members if i in set(observed.tolist())], dtype=np.int64)
            if members.size:
                rows.append(row(kind, name, members))

    per_class = []
    for c in range(k):
        entry = {"id": c, "name": class_names[c]}
        entry.update({col: float(values[c]) for col, values in columns.items()})
        per_class.append(entry)
    correlation = {
        a: {b: pearson(columns[a][observed], columns[b][observed]) for b in columns} for a in columns
    }
    return {"classes": per_class, "groups": rows, "correlation": correlation}


class ClassGroupStats:
    """Streaming per-class statistics of the ground truth (seed 001's O, %S, %C, L)."""

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        ignore_index: int = 255,
        named_groups: dict[str, dict[str, list[str]]] | None = None,
    ):
        if num_classes < 2:
            raise ValueError(f"num_classes must count background and at least one class, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names else default_class_names(num_classes)
        self.ignore_index = int(ignore_index)
        if named_groups is None and self.class_names == _voc_class_names():
            named_groups = VOC_GROUPS
        self.named_groups = named_groups
        self.num_images = 0
        self.pair_counts = np.zeros((num_classes, num_classes), dtype=np.int64)  # images with both classes
        self.cooccurring = np.zeros(num_classes, dtype=np.int64)  # images with this and another fg class
        self.cardinality_sum = np.zeros(num_classes, dtype=np.int64)
        self.relative_size_sum = np.zeros(num_classes, dtype=np.float64)

    def process(self, gt: np.ndarray) -> None:
        gt = check_label_map("ground truth", gt, self.num_classes, self.ignore_index)
        area = np.bincount(gt[gt != self.ignore_index].ravel(), minlength=self.num_classes)
        present = area > 0
        num_fg = int(present[1:].sum())
        self.pair_counts += np.outer(present, present)
        self.cooccurring += present & (num_fg >= 2)
        self.cardinality_sum += present * num_fg
        self.relative_size_sum += area / gt.size
        self.num_images += 1

    def merge(self, other: ClassGroupStats) -> None:
        if not isinstance(other, ClassGroupStats) or other.num_classes != self.num_classes:
            raise ValueError("can only merge ClassGroupStats with the same num_classes")
        self.pair_counts += other.pair_counts
        self.cooccurring += other.cooccurring
        self.cardinality_sum += other.cardinality_sum
        self.relative_size_sum += other.relative_size_sum
        self.num_images += other.num_images

    def statistics(self) -> dict[str, np.ndarray]:
        """Per-class O, %S, %C, L (fractions, not percent); NaN for classes never seen."""
        occurrence = np.diag(self.pair_counts).copy()
        seen = np.where(occurrence > 0, occurrence, 1)
        undefined = occurrence == 0
        stats = {
            "occurrence": occurrence,
            "relative_size": np.where(undefined, np.nan, self.relative_size_sum / seen),
            "cooccurrence": np.where(undefined, np.nan, self.cooccurring / seen),
            "cardinality": np.where(undefined, np.nan, self.cardinality_sum / seen),
        }
        # background always "co-occurs": its %C and L say nothing, as in the paper's tables
        stats["cooccurrence"][0] = np.nan
        stats["cardinality"][0] = np.nan
        return stats

    def compute(self, per_class_iou: np.ndarray | dict[str, np.ndarray] | None = None) -> dict:
        """Statistics, groups and correlations; ``per_class_iou`` (one array, or several
        named arrays such as ``{"iou": ..., "ia_iou": ...}``) adds score columns."""
        if per_class_iou is None:
            scores = {}
        elif isinstance(per_class_iou, dict):
            scores = {name: np.asarray(v, dtype=np.float64) for name, v in per_class_iou.items()}
        else:
            scores = {"iou": np.asarray(per_class_iou, dtype=np.float64)}
        for name, values in scores.items():
            if values.shape != (self.num_classes,):
                raise ValueError(f"score {name!r} has shape {values.shape}, expected ({self.num_classes},)")
        index = {n: i for i, n in enumerate(self.class_names)}
        groups = None
        if self.named_groups:
            groups = {
                kind: {name: [index[n] for n in members if n in index] for name, members in named.items()}
                for kind, named in self.named_groups.items()
            }
        out = group_table(self.statistics(), self.class_names, scores, groups)
        out["num_images"] = self.num_images
        out["cooccurrence_counts"] = self.pair_counts.copy()
        return out


def default_class_names(num_classes: int) -> list[str]:
    return ["background"] + [f"class{c}" for c in range(1, num_classes)]


def _voc_class_names() -> list[str]:
    from wsss.data.voc import VOC_CLASSES

    return list(VOC_CLASSES)
