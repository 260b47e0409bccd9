"""Instance-aware mIoU (IA-mIoU, seed 004): every ground-truth instance counts alike.

mIoU pools pixels over the whole set, so a missed small object barely moves it;
IA-mIoU scores each instance on its own and averages, so it does. Definition
(docs/methods.md §5, checked against the authors' code):

* Instances: the instance-id PNG when given (id 0 = none, 255 = ignore; the
  class of an instance is the ground-truth class of most of its pixels), else
  the 8-connected components of each ground-truth class.
* For an instance g of class c, the prediction of c is split into 8-connected
  blobs over the whole image, ignore pixels included (two parts joined only
  through the ignore band are one blob); then only labelled pixels count.
  For each blob B touching g: I = |B ∩ g|, O = |B ∩ other instances of c|;
  contribution = |B| if O = 0, else I + ⌊I/(I+O) · (|B| − I − O)⌋ (the
  blob's unclaimed area is shared in proportion to the overlaps).
  IoU_g = ΣI / (|g| + Σcontribution − ΣI); no touching blob → 0.
* Background is one instance per image (IoU of the background masks over
  labelled pixels); an image without background pixels adds none.
* IA-IoU_c = mean over all instances of c in the set; IA-mIoU = mean over
  classes, background included. Small / medium / large: mean over foreground
  classes of the per-class mean over the instances in that size bucket
  (|g| < bounds[0], < bounds[1], otherwise), classes with none skipped.

A "labelled" pixel has ground truth != 255 and, with an instance map, an
instance id != 255 (the two agree on VOC).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from wsss.metrics.confusion import check_label_map, nanmean

IGNORE = 255
BUCKETS = ("small", "medium", "large")
DEFAULT_BOUNDS = (1024, 9216)  # 32², 96² (COCO's area ranges, as in the paper)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def instances_from_components(gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids from the 8-connected components of each foreground class.

    Returns (ids int32 H×W with 0 = no instance, class_of_id int64 with class_of_id[0] = 0).
    """
    ids = np.zeros(gt.shape, dtype=np.int32)
    classes = [0]
    present = np.flatnonzero(np.bincount(gt[gt != IGNORE].ravel(), minlength=num_classes)[1:]) + 1
    for c in present:
        components, n = ndimage.label(gt == c, structure=_EIGHT_CONNECTED)
        np.copyto(ids, components + len(classes) - 1, where=components > 0)
        classes.extend([int(c)] * n)
    return ids, np.asarray(classes, dtype=np.int64)


def instances_from_map(
    instances: np.ndarray, gt: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids from an instance PNG; each instance takes the majority ground-truth class
    of its labelled pixels. Instances that are mostly background are dropped (they are part
    of the image's background instance already).

    Returns (ids int32 H×W with 0 = no instance, class_of_id int64 indexed by id).
    """
    labelled = (instances != IGNORE) & (gt != IGNORE)
    pairs = instances[labelled].astype(np.int64) * num_classes + gt[labelled]
    table = np.bincount(pairs, minlength=256 * num_classes).reshape(256, num_classes)
    class_of_id = table.argmax(axis=1)
    class_of_id[table.sum(axis=1) == 0] = 0
    class_of_id[0] = 0
    class_of_id[IGNORE] = 0
    keep = np.where(class_of_id > 0, np.arange(256), 0).astype(np.int32)
    return keep[instances], class_of_id.astype(np.int64)


def image_instance_ious(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    instances: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-instance (class, size in labelled pixels, IoU) of one image; background is one
    instance of class 0. Vectorised per class: one ``ndimage.label`` and one ``bincount``.
    """
    pred = check_label_map("prediction", pred, num_classes, IGNORE)
    gt = check_label_map("ground truth", gt, num_classes, IGNORE)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    labelled = gt != IGNORE
    if instances is None:
        ids, class_of_id = instances_from_components(gt, num_classes)
    else:
        instances = np.asarray(instances)
        if instances.shape != gt.shape:
            raise ValueError(
                f"instance map shape {instances.shape} differs from ground-truth shape {gt.shape}"
            )
        if instances.dtype.kind not in "iu" or instances.min(initial=0) < 0 or instances.max(initial=0) > 255:
            raise ValueError("instance map must hold integer ids in 0..255")
        labelled &= instances != IGNORE
        ids, class_of_id = instances_from_map(instances.astype(np.int64), gt, num_classes)
    ids = np.where(labelled, ids, 0)
    sizes = np.bincount(ids.ravel(), minlength=len(class_of_id))
    sizes[0] = 0

    out_class: list[np.ndarray] = []
    out_size: list[np.ndarray] = []
    out_iou: list[np.ndarray] = []
    present_ids = np.flatnonzero((sizes > 0) & (class_of_id > 0))
    for c in np.unique(class_of_id[present_ids]):
        ids_c = present_ids[class_of_id[present_ids] == c]
        m = ids_c.size
        local = np.zeros(len(class_of_id), dtype=np.int64)  # id → 1..m for instances of c, else 0
        local[ids_c] = np.arange(1, m + 1)
        blobs, num_blobs = ndimage.label(pred == c, structure=_EIGHT_CONNECTED)
        ious = np.zeros(m, dtype=np.float64)
        if num_blobs:
            where = np.flatnonzero((blobs > 0) & labelled)
            cell = blobs.ravel()[where].astype(np.int64) * (m + 1) + local[ids.ravel()[where]]
            table = np.bincount(cell, minlength=(num_blobs + 1) * (m + 1)).reshape(num_blobs + 1, m + 1)[1:]
            blob_size = table.sum(axis=1, keepdims=True)
            inter = table[:, 1:]  # I: blob × instance
            claimed = inter.sum(axis=1, keepdims=True)  # I + O for every instance the blob touches
            others = claimed - inter
            unclaimed = blob_size - claimed
            shared = inter + (inter * unclaimed) // np.maximum(claimed, 1)
            contribution = np.where(others == 0, blob_size, shared)
            touching = inter > 0
            sum_inter = inter.sum(axis=0)
            sum_contribution = np.where(touching, contribution, 0).sum(axis=0)
            union = sizes[ids_c] + sum_contribution - sum_inter
            np.divide(sum_inter, union, out=ious, where=sum_inter > 0)
        out_class.append(np.full(m, c, dtype=np.int64))
        out_size.append(sizes[ids_c].astype(np.int64))
        out_iou.append(ious)

    gt_bg = labelled & (gt == 0)
    bg_area = int(gt_bg.sum())
    if bg_area:
        pred_bg = labelled & (pred == 0)
        inter = int((gt_bg & pred_bg).sum())
        union = int((gt_bg | pred_bg).sum())
        out_class.append(np.zeros(1, dtype=np.int64))
        out_size.append(np.array([bg_area], dtype=np.int64))
        out_iou.append(np.array([inter / union]))
    if not out_class:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    return np.concatenate(out_class), np.concatenate(out_size), np.concatenate(out_iou)


def size_bucket(sizes: np.ndarray, bounds: tuple[int, int]) -> np.ndarray:
    """0 = small (< bounds[0]), 1 = medium (< bounds[1]), 2 = large."""
    return np.searchsorted(np.asarray(bounds), np.asarray(sizes), side="right")


def ia_scores(
    classes: np.ndarray,
    sizes: np.ndarray,
    ious: np.ndarray,
    num_classes: int,
    bounds: tuple[int, int] = DEFAULT_BOUNDS,
) -> dict:
    """Every IA score from the per-instance records (a pure function, used by ``compute``).

    The records are sorted first so that the sums, and so the scores, do not depend
    on the order in which images or workers were processed.
    """
    classes = np.asarray(classes, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    ious = np.asarray(ious, dtype=np.float64)
    order = np.lexsort((ious, sizes, classes))
    classes, sizes, ious = classes[order], sizes[order], ious[order]
    k = num_classes
    count = np.bincount(classes, minlength=k)
    total = np.bincount(classes, weights=ious, minlength=k)
    ia_iou = np.full(k, np.nan)
    np.divide(total, count, out=ia_iou, where=count > 0)
    out: dict = {
        "ia_iou": ia_iou,
        "ia_miou": nanmean(ia_iou),
        "num_instances": count,
        "bounds": tuple(bounds),
    }
    bucket = size_bucket(sizes, bounds)
    foreground = classes > 0
    for b, name in enumerate(BUCKETS):
        sel = foreground & (bucket == b)
        n = np.bincount(classes[sel], minlength=k)
        s = np.bincount(classes[sel], weights=ious[sel], minlength=k)
        per_class = np.full(k, np.nan)
        np.divide(s, n, out=per_class, where=n > 0)
        out[f"ia_iou_{name}"] = per_class
        out[f"ia_miou_{name}"] = nanmean(per_class[1:])
        out[f"num_instances_{name}"] = n
    return out


class InstanceAwareMetric:
    """Streaming IA-mIoU: ``process`` keeps (class, size, IoU) per instance, ``merge`` joins
    workers' records, ``compute`` is :func:`ia_scores` of them all."""

    def __init__(
        self,
        num_classes: int,
        bounds: tuple[int, int] = DEFAULT_BOUNDS,
        class_names: list[str] | None = None,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1]:
            raise ValueError(f"bounds must be two sizes 0 < small <= medium, got {bounds}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.bounds = (int(bounds[0]), int(bounds[1]))
        self.class_names = list(class_names) if class_names is not None else None
        self.num_images = 0
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def process(self, pred: np.ndarray, gt: np.ndarray, instances: np.ndarray | None = None) -> None:
        self._parts.append(image_instance_ious(pred, gt, self.num_classes, instances))
        self.num_images += 1
        if len(self._parts) >= 1024:  # bound the per-array overhead on large sets (COCO: 118k images)
            self.records()

    def records(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class, size, IoU) of every instance seen so far (background: class 0, one per image)."""
        if len(self._parts) != 1:
            if self._parts:
                self._parts = [tuple(np.concatenate(col) for col in zip(*self._parts, strict=True))]
            else:
                self._parts = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))]
        return self._parts[0]

    def merge(self, other: InstanceAwareMetric) -> None:
        if not isinstance(other, InstanceAwareMetric) or other.num_classes != self.num_classes:
            raise ValueError("can only merge an InstanceAwareMetric with the same num_classes")
        if other.bounds != self.bounds:
            raise ValueError(f"cannot merge IA metrics with bounds {self.bounds} and {other.bounds}")
        self._parts.append(other.records())
        self.records()
        self.num_images += other.num_images

    def __getstate__(self) -> dict:
        self.records()  # one array per column pickles far faster than thousands of tiny ones
        return self.__dict__.copy()

    def compute(self) -> dict:
        classes, sizes, ious = self.records()
        out = ia_scores(classes, sizes, ious, self.num_classes, self.bounds)
        out["num_images"] = self.num_images
        return out
