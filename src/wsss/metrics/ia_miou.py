"""Instance-aware mIoU (IA-mIoU, seed 004): every ground-truth instance counts alike.

mIoU pools pixels over the whole set, so a missed small object barely moves it;
IA-mIoU scores each instance on its own and averages, so it does. Definition
(docs/methods.md §5, checked against the authors' code):

* Instances: the instance-id PNG when given (id 0 = none, 255 = ignore; the
  class of an instance is the ground-truth class of most of its pixels), else
  the 8-connected components of each ground-truth class.
* For an instance g of class c, the prediction of c is split into blobs over the
  whole image, ignore pixels included: the 8-connected components of the mask with its
  holes filled (a blob inside a hole of another blob of c, at any depth, is part of it;
  two parts joined only through the ignore band are one blob); then only the blob's own
  predicted pixels that are labelled count. For each blob B touching g: I = |B ∩ g|,
  O = |B ∩ other instances of c|; contribution = |B| if O = 0, else
  I + int((I / (I + O)) · (|B| − I − O)) in float64 (the blob's unclaimed area is shared in
  proportion to the overlaps). IoU_g = ΣI / (|g| + Σcontribution − ΣI); no touching blob → 0.
* Background is one instance per image (IoU of the background masks over
  labelled pixels); an image without background pixels adds none.
* IA-IoU_c = mean over all instances of c in the set; IA-mIoU = mean over
  classes, background included. Small / medium / large: mean over foreground
  classes of the per-class mean over the instances in that size bucket
  (|g| < bounds[0], < bounds[1], otherwise), classes with none skipped.

A "labelled" pixel has ground truth != 255 and, with an instance map, an
instance id != 255 (the two agree on VOC).

This is what the official ``IAmIoU`` computes (tests/test_parity_metrics.py, benchmarks/
ia_miou_vs_official.py: identical numbers), the default ``variant="official"``. The variant
``"exact"`` keeps every 8-connected blob apart (a blob in a hole is its own) and floors the
share exactly (7/10 · 90: 63, where float64 truncation gives 62). On maps that are not
VOC-consistent the official code differs (docs/methods.md §5.6).
"""

from __future__ import annotations

import cv2
import numpy as np

from wsss.metrics.confusion import EXACT_HIST, check_label_map, nanmean, pair_counts

IGNORE = 255
BUCKETS = ("small", "medium", "large")
DEFAULT_BOUNDS = (1024, 9216)  # 32², 96² (COCO's area ranges, as in the paper)
_PER_ID_LIMIT = 32  # instance maps with ids up to this are scanned id by id, others histogrammed
# "official": as the authors' IAmIoU (blobs with holes filled, float-truncated share);
# "exact": 8-connected blobs as they are, the share floored exactly (docs/methods.md §5.2)
VARIANTS = ("official", "exact")


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"IA-mIoU variant must be one of {VARIANTS}, got {variant!r}")
    return variant


def _present_classes(gt: np.ndarray, num_classes: int) -> list[int]:
    """The foreground classes (1..num_classes-1) that occur in a label map, ascending, as Python
    ints: ``uint8_map == np.int64(c)`` would compare in int64, ~10× slower than with an int.

    For uint8, a walk up the values present (a compare and a masked minimum per class found)
    instead of a histogram, which costs ~2 ns/px on label maps (long runs of one value).
    """
    if gt.dtype != np.uint8 or gt.size >= EXACT_HIST:
        return (
            np.flatnonzero(np.bincount(gt[gt < num_classes].ravel(), minlength=num_classes)[1:]) + 1
        ).tolist()
    found = []
    low = 0
    while True:
        above = cv2.compare(gt, low, cv2.CMP_GT)
        value = int(cv2.minMaxLoc(gt, above)[0])  # the smallest value above `low` (0 when none is)
        if value <= low or value >= num_classes:
            return found
        found.append(value)
        low = value


def _as_u8(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as the 0/1 uint8 image OpenCV takes (a view, no copy)."""
    return mask.view(np.uint8)


def _check_instances(instances: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    instances = np.asarray(instances)
    if instances.shape != shape:
        raise ValueError(f"instance map shape {instances.shape} differs from ground-truth shape {shape}")
    if instances.dtype == np.uint8:
        return instances
    if instances.dtype.kind not in "iu" or instances.min(initial=0) < 0 or instances.max(initial=0) > 255:
        raise ValueError("instance map must hold integer ids in 0..255")
    return instances.astype(np.uint8)


def _classes_of_ids(inst: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(class_of_id, size) for ids 0..255 of an instance map whose unlabelled pixels are 255:
    the majority ground-truth class of each id's labelled pixels (0 for none) and their count."""
    top = int((inst + np.uint8(1)).max()) - 1 if inst.dtype == np.uint8 else 255  # largest id below 255
    if top > _PER_ID_LIMIT or inst.dtype != np.uint8 or gt.dtype != np.uint8:
        table = pair_counts(inst, gt, 256, num_classes)
        table[IGNORE] = 0
        class_of_id = table.argmax(axis=1)
        sizes = table.sum(axis=1)
    else:
        # a few ids (VOC: 3 on average): per id, a compare, a count and a masked min/max — each a
        # SIMD pass, where a histogram of a label map (long runs of one value) crawls at ~2 ns/px
        class_of_id = np.zeros(256, np.int64)
        sizes = np.zeros(256, np.int64)
        for i in range(1, top + 1):
            mask = cv2.compare(inst, i, cv2.CMP_EQ)
            size = cv2.countNonZero(mask)
            if size == 0:
                continue
            low, high, _, _ = cv2.minMaxLoc(gt, mask)
            if low == high:
                class_of_id[i] = int(low)
            else:  # an instance over several classes: count them
                class_of_id[i] = np.bincount(gt[mask > 0], minlength=num_classes)[:num_classes].argmax()
            sizes[i] = size
    class_of_id[sizes == 0] = 0
    class_of_id[0] = 0
    return class_of_id.astype(np.int64), sizes


def _unlabelled_as_ignore(inst: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The instance map with 255 wherever the ground truth is 255 too: one map says "labelled"."""
    if inst.dtype == np.uint8 and gt.dtype == np.uint8:
        return cv2.max(inst, cv2.compare(gt, IGNORE, cv2.CMP_EQ))
    return np.where(gt == IGNORE, np.uint8(IGNORE), inst)


def instances_from_components(gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids from the 8-connected components of each foreground class.

    Returns (ids int32 H×W with 0 = no instance, class_of_id int64 with class_of_id[0] = 0).
    """
    gt = np.asarray(gt)
    ids = np.zeros(gt.shape, dtype=np.int32)
    classes = [0]
    if gt.size == 0:
        return ids, np.asarray(classes, dtype=np.int64)
    for c in _present_classes(gt, num_classes):
        n, components = cv2.connectedComponents(_as_u8(gt == c), connectivity=8, ltype=cv2.CV_32S)
        np.copyto(ids, components + len(classes) - 1, where=components > 0)
        classes.extend([int(c)] * (n - 1))
    return ids, np.asarray(classes, dtype=np.int64)


def instances_from_map(
    instances: np.ndarray, gt: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids from an instance PNG; each instance takes the majority ground-truth class
    of its labelled pixels. Instances that are mostly background are dropped (they are part
    of the image's background instance already).

    Returns (ids int32 H×W with 0 = no instance, class_of_id int64 indexed by id).
    """
    gt = np.asarray(gt)
    inst = _check_instances(instances, gt.shape)
    if gt.size == 0:
        return np.zeros(gt.shape, np.int32), np.zeros(256, np.int64)
    class_of_id, _ = _classes_of_ids(_unlabelled_as_ignore(inst, gt), gt, num_classes)
    keep = np.where(class_of_id > 0, np.arange(256), 0).astype(np.int32)
    return keep[inst], class_of_id


def _share(inter: np.ndarray, claimed: np.ndarray, unclaimed: np.ndarray, official: bool) -> np.ndarray:
    """The part of a blob's unclaimed area given to an instance with overlap I = ``inter`` when
    the blob overlaps instances of its class by I + O = ``claimed`` (int64 arrays, broadcast).
    ``official``: ``int((I / (I + O)) * unclaimed)`` in float64 — the same IEEE operations in
    the same order as the official code, 1 px short of the exact value for ~1 in 10⁴ triples
    (I = 7, O = 3, 90 unclaimed: 0.7 · 90 = 62.99999999999999 → 62); else ⌊I · unclaimed / (I + O)⌋."""
    if official:
        return (inter / np.maximum(claimed, 1) * unclaimed.astype(np.float64)).astype(np.int64)
    return (inter * unclaimed) // np.maximum(claimed, 1)


def _blob_ious(
    blobs: np.ndarray,
    num_blobs: int,
    local: np.ndarray,
    m: int,
    sizes: np.ndarray | None = None,
    official: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, size) of each of m instances of one class, from the blob labels of its prediction
    (0 = not predicted) and the instances' local index at the same pixels (1..m, 0 = any other
    labelled pixel, m + 1 = unlabelled). Without ``sizes`` the window must hold every pixel of
    the instances, which are then counted here. The counts are integers; only the share of a
    blob's unclaimed area is rounded: ``official`` truncates the float64 product
    ``(I / (I + O)) * unclaimed`` as the official code does, else it is floored exactly."""
    if (num_blobs + 1) * (m + 2) >= 1 << 31:
        blobs = blobs.astype(np.int64)
    cell = blobs * (m + 2) + local
    table = np.bincount(cell.ravel(), minlength=(num_blobs + 1) * (m + 2)).reshape(num_blobs + 1, m + 2)
    if sizes is None:
        sizes = table[:, 1 : m + 1].sum(axis=0)
    table = table[1:, : m + 1]  # drop "not predicted" and the unlabelled column
    blob_size = table.sum(axis=1, keepdims=True)
    inter = table[:, 1:]  # I: blob × instance
    claimed = inter.sum(axis=1, keepdims=True)  # I + O for every instance the blob touches
    others = claimed - inter
    unclaimed = blob_size - claimed
    contribution = np.where(others == 0, blob_size, inter + _share(inter, claimed, unclaimed, official))
    touching = inter > 0
    sum_inter = inter.sum(axis=0)
    sum_contribution = np.where(touching, contribution, 0).sum(axis=0)
    union = sizes + sum_contribution - sum_inter
    ious = np.zeros(m, dtype=np.float64)
    np.divide(sum_inter, union, out=ious, where=sum_inter > 0)
    return ious, sizes


def _blobs(pred_c: np.ndarray, filled: bool) -> tuple[int, np.ndarray, np.ndarray | None]:
    """(number of blobs + 1, int32 labels, holes) of a window of one class's prediction (bool).

    ``filled``: the 8-connected components of the mask with its holes filled (a blob inside a
    hole of another joins it, at any depth). Holes: the window padded by 1 px, the background
    flooded from its corner with 4-connectivity (the background of an 8-connected foreground);
    what the flood does not reach is inside. ``holes`` (uint8, 255 on the filled pixels that
    are not the class's, else None) must then be counted as unlabelled: they are not the blob's.
    """
    mask = _as_u8(pred_c)
    if filled:
        padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        reached = cv2.floodFill(padded, None, (0, 0), 2, flags=4)[0]
        if reached + cv2.countNonZero(mask) < padded.size:  # holes: the 0s left
            inner = padded[1:-1, 1:-1]
            n, labels = cv2.connectedComponents(
                cv2.compare(inner, 2, cv2.CMP_NE), connectivity=8, ltype=cv2.CV_32S
            )
            return n, labels, cv2.compare(inner, 0, cv2.CMP_EQ)
    n, labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
    return n, labels, None


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    x, y, w, h = cv2.boundingRect(_as_u8(mask))
    return None if w == 0 else (slice(y, y + h), slice(x, x + w))


def _union_box(a: tuple[slice, slice], b: tuple[slice, slice]) -> tuple[slice, slice]:
    return tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b, strict=True))


def image_instance_ious(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    instances: np.ndarray | None = None,
    variant: str = "official",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-instance (class, size in labelled pixels, IoU) of one image; background is one
    instance of class 0. ``variant`` (:data:`VARIANTS`): ``"official"`` (default) as the
    authors' code, blobs with their holes filled and the shared area truncated in floats;
    ``"exact"``: plain 8-connected blobs and the shared area floored exactly.

    Per class, only the bounding box of its prediction (with components: and of its ground
    truth) is labelled and counted, with OpenCV's connected components and one ``bincount``:
    about 1 ms for a VOC image on one core, where labelling whole maps took 6 ms.
    """
    official = _check_variant(variant) == "official"
    pred = check_label_map("prediction", pred, num_classes, IGNORE)
    gt = check_label_map("ground truth", gt, num_classes, IGNORE)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if instances is not None:
        instances = _check_instances(instances, gt.shape)
    if gt.size == 0:  # OpenCV rejects empty arrays
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    out_class: list[np.ndarray] = []
    out_size: list[np.ndarray] = []
    out_iou: list[np.ndarray] = []

    if instances is None:
        labelled = gt != IGNORE
        for c in _present_classes(gt, num_classes):
            gt_c = gt == c
            box = _bounding_box(gt_c)
            pred_c = pred == c
            pred_box = _bounding_box(pred_c)
            if pred_box is None:  # nothing predicted: every instance of c scores 0
                n, _, stats, _ = cv2.connectedComponentsWithStats(_as_u8(gt_c[box]), connectivity=8)
                m = n - 1
                sizes, ious = stats[1:, cv2.CC_STAT_AREA].astype(np.int64), np.zeros(m)
            else:  # a window holding all of gt == c and all of the prediction of c
                box = _union_box(box, pred_box)
                n, components = cv2.connectedComponents(_as_u8(gt_c[box]), connectivity=8, ltype=cv2.CV_32S)
                m = n - 1
                num_blobs, blobs, holes = _blobs(pred_c[box], official)
                if holes is None:  # the table counts the instances' sizes too
                    local, sizes = np.where(labelled[box], components, m + 1), None
                else:  # filled holes count as unlabelled, so the sizes are counted apart
                    local = np.where(labelled[box] & (holes == 0), components, m + 1)
                    sizes = np.bincount(components.ravel(), minlength=n)[1:]
                ious, sizes = _blob_ious(blobs, num_blobs - 1, local, m, sizes, official)
            out_class.append(np.full(m, c, dtype=np.int64))
            out_size.append(sizes)
            out_iou.append(ious)
    else:
        inst = _unlabelled_as_ignore(instances, gt)
        labelled = inst != IGNORE
        class_of_id, id_sizes = _classes_of_ids(inst, gt, num_classes)
        present_ids = np.flatnonzero(class_of_id > 0)
        for c in np.unique(class_of_id[present_ids]).tolist():  # ints: see _present_classes
            ids_c = present_ids[class_of_id[present_ids] == c]
            m = ids_c.size
            sizes = id_sizes[ids_c]
            pred_c = pred == c
            box = _bounding_box(pred_c)
            if box is None:
                ious = np.zeros(m)
            else:
                num_blobs, blobs, holes = _blobs(pred_c[box], official)
                lut = np.zeros(256, np.uint8)  # id → 1..m for the instances of c, 255 → m + 1
                lut[ids_c] = np.arange(1, m + 1)
                lut[IGNORE] = m + 1
                # filled holes count as unlabelled (255 → m + 1)
                local = cv2.LUT(inst[box] if holes is None else cv2.max(inst[box], holes), lut)
                ious, _ = _blob_ious(blobs, num_blobs - 1, local, m, sizes, official)
            out_class.append(np.full(m, c, dtype=np.int64))
            out_size.append(sizes)
            out_iou.append(ious)

    gt_bg = labelled & (gt == 0)
    bg_area = int(np.count_nonzero(gt_bg))
    if bg_area:
        pred_bg = labelled & (pred == 0)
        inter = int(np.count_nonzero(gt_bg & pred_bg))
        union = bg_area + int(np.count_nonzero(pred_bg)) - inter
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
        variant: str = "official",
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1]:
            raise ValueError(f"bounds must be two sizes 0 < small <= medium, got {bounds}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
        self.variant = _check_variant(variant)
        self.num_classes = int(num_classes)
        self.bounds = (int(bounds[0]), int(bounds[1]))
        self.class_names = list(class_names) if class_names is not None else None
        self.num_images = 0
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def process(self, pred: np.ndarray, gt: np.ndarray, instances: np.ndarray | None = None) -> None:
        self._parts.append(image_instance_ious(pred, gt, self.num_classes, instances, self.variant))
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
        if other.variant != self.variant:
            raise ValueError(f"cannot merge IA metrics of variants {self.variant} and {other.variant}")
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
        out["variant"] = self.variant
        return out
