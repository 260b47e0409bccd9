"""Saliency quality against a foreground mask: MAE, max F-measure (β² = 0.3), IoU at 0.5.

Seed 000 finds that the saliency source moves WSSS results more than most method
changes, so ``wsss saliency eval`` scores a saliency folder the way salient-object
detection papers do, to make sources comparable with the SOD literature.

The protocol (as in the SOD evaluation code behind PoolNet / BASNet and Fan's toolbox):

* ``pred`` is quantised to ``q = round(255·pred)`` (exact for 8-bit PNGs); at threshold
  index ``t = 0..255`` the predicted foreground is ``q >= t`` (threshold value ``t/255``).
* Per image: ``P(t) = TP/(TP+FP)`` and ``R(t) = TP/|gt|``; an image with no predicted
  foreground at ``t`` has ``P(t) = 0`` and an image with empty ground truth has
  ``R(t) = 0`` at every ``t`` (PySODMetrics' convention: nothing found is never credited).
* ``P(t)`` and ``R(t)`` are averaged over images, then ``F(t) = (1+β²)·P·R / (β²·P + R)``
  (0 where P = R = 0); ``max_f = max_t F(t)``. PySODMetrics instead averages per-image
  F curves and min-max rescales each map; neither is done here.
* ``mae``: per image the mean ``|pred − gt|``, then the mean over images.
* ``iou``: foreground IoU of ``pred >= 0.5``, pooled over the dataset (Σ∩ / Σ∪);
  ``mean_iou_per_image`` averages the images whose union is non-empty.

Pixels outside ``valid`` (e.g. VOC's 255 band) count nowhere; an image without a
valid pixel is skipped (counted in ``num_images_skipped``). Like
:class:`wsss.metrics.confusion.ConfusionMetric`, :meth:`SaliencyMetric.process` keeps only
per-threshold sums, :meth:`~SaliencyMetric.merge` adds those of parallel workers and
:func:`saliency_scores` turns the totals into every number.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wsss.io import WsssError, image_size, load_saliency

NUM_LEVELS = 256
DEFAULT_BETA2 = 0.3
IOU_THRESHOLD = 0.5


def _unit_and_levels(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` as float in [0, 1] and as the quantised levels 0..255 the F-measure sweeps."""
    pred = np.asarray(pred)
    if pred.ndim != 2:
        raise ValueError(f"saliency prediction must be a 2-D map, got shape {pred.shape}")
    if pred.dtype == np.uint8:
        return pred.astype(np.float32) / 255.0, pred
    if pred.dtype == np.bool_:
        return pred.astype(np.float32), pred.astype(np.uint8) * np.uint8(255)
    if pred.dtype.kind != "f":
        raise ValueError(
            f"saliency prediction must be float in [0, 1] or uint8 0..255, got dtype {pred.dtype}"
        )
    if pred.size and not (np.isfinite(pred).all() and pred.min() >= 0.0 and pred.max() <= 1.0):
        raise ValueError("saliency prediction has values outside [0, 1] (or NaN)")
    levels = np.rint(pred.astype(np.float64) * 255.0).astype(np.uint8)
    return pred, levels


def _mask(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.shape != shape:
        raise ValueError(f"{name} shape {arr.shape} differs from prediction shape {shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be a boolean mask (values 0/1)")
    return arr.astype(bool)


def f_measure(precision: np.ndarray, recall: np.ndarray, beta2: float = DEFAULT_BETA2) -> np.ndarray:
    """F_β per threshold; 0 where precision and recall are both 0."""
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    num = (1.0 + beta2) * precision * recall
    den = beta2 * precision + recall
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape))
    np.divide(num, den, out=out, where=den > 0)
    return out


def saliency_scores(
    precision_sum: np.ndarray,
    recall_sum: np.ndarray,
    mae_sum: float,
    num_scored: int,
    intersection: int,
    union: int,
    iou_sum: float,
    num_iou_defined: int,
    beta2: float = DEFAULT_BETA2,
) -> dict[str, Any]:
    """Every score from the accumulated totals (a pure function, used by ``compute``).

    Undefined values (no scored image, empty union) are NaN, not 0.
    """
    nan = float("nan")
    if num_scored:
        precision = np.asarray(precision_sum, dtype=np.float64) / num_scored
        recall = np.asarray(recall_sum, dtype=np.float64) / num_scored
        f = f_measure(precision, recall, beta2)
        best = int(np.argmax(f))  # ties go to the lowest threshold
        max_f, best_threshold, mae = float(f[best]), best / (NUM_LEVELS - 1), mae_sum / num_scored
    else:
        precision = recall = f = np.full(NUM_LEVELS, np.nan)
        max_f = best_threshold = mae = nan
    return {
        "mae": float(mae),
        "max_f": max_f,
        "best_threshold": best_threshold,
        "iou": intersection / union if union else nan,
        "mean_iou_per_image": iou_sum / num_iou_defined if num_iou_defined else nan,
        "beta2": float(beta2),
        "thresholds": np.arange(NUM_LEVELS) / (NUM_LEVELS - 1),
        "precision": precision,
        "recall": recall,
        "f": f,
    }


class SaliencyMetric:
    """Accumulates per-threshold precision / recall sums, MAE and IoU totals over images."""

    def __init__(self, beta2: float = DEFAULT_BETA2):
        if not beta2 > 0:
            raise ValueError(f"beta2 must be > 0, got {beta2}")
        self.beta2 = float(beta2)
        self.precision_sum = np.zeros(NUM_LEVELS, dtype=np.float64)
        self.recall_sum = np.zeros(NUM_LEVELS, dtype=np.float64)
        self.mae_sum = 0.0
        self.num_scored = 0
        self.intersection = 0
        self.union = 0
        self.iou_sum = 0.0
        self.num_iou_defined = 0
        self.num_images = 0

    def process(self, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> None:
        """``pred`` float H×W in [0, 1] or uint8 0..255; ``gt`` boolean foreground mask;
        ``valid`` (optional) marks the pixels that count."""
        unit, levels = _unit_and_levels(pred)
        gt = _mask("ground truth", gt, unit.shape)
        if valid is None:
            unit, levels, gt = unit.ravel(), levels.ravel(), gt.ravel()
        else:
            valid = _mask("valid mask", valid, unit.shape)
            unit, levels, gt = unit[valid], levels[valid], gt[valid]
        self.num_images += 1
        if unit.size == 0:
            return
        # histograms of the levels on gt-fg and gt-bg pixels; reversed cumulative sums give,
        # for every t at once, the pixels with level >= t
        fg_hist = np.bincount(levels[gt], minlength=NUM_LEVELS)
        bg_hist = np.bincount(levels[~gt], minlength=NUM_LEVELS)
        tp = np.cumsum(fg_hist[::-1])[::-1]
        predicted = tp + np.cumsum(bg_hist[::-1])[::-1]
        precision = np.zeros(NUM_LEVELS)
        np.divide(tp, predicted, out=precision, where=predicted > 0)
        num_gt = int(tp[0])
        self.precision_sum += precision
        if num_gt:
            self.recall_sum += tp / num_gt
        self.mae_sum += float(np.abs(unit.astype(np.float64) - gt).mean())
        self.num_scored += 1
        pred_fg = unit >= IOU_THRESHOLD
        inter = int(np.count_nonzero(pred_fg & gt))
        union = int(np.count_nonzero(pred_fg | gt))
        self.intersection += inter
        self.union += union
        if union:
            self.iou_sum += inter / union
            self.num_iou_defined += 1

    def merge(self, other: SaliencyMetric) -> None:
        if not isinstance(other, SaliencyMetric) or other.beta2 != self.beta2:
            raise ValueError("can only merge a SaliencyMetric with the same beta2")
        self.precision_sum += other.precision_sum
        self.recall_sum += other.recall_sum
        self.mae_sum += other.mae_sum
        self.num_scored += other.num_scored
        self.intersection += other.intersection
        self.union += other.union
        self.iou_sum += other.iou_sum
        self.num_iou_defined += other.num_iou_defined
        self.num_images += other.num_images

    def compute(self) -> dict[str, Any]:
        """Scalar scores are plain floats; ``thresholds``/``precision``/``recall``/``f`` are
        arrays over the 256 thresholds."""
        out = saliency_scores(
            self.precision_sum,
            self.recall_sum,
            self.mae_sum,
            self.num_scored,
            self.intersection,
            self.union,
            self.iou_sum,
            self.num_iou_defined,
            self.beta2,
        )
        out["num_images"] = self.num_images
        out["num_images_skipped"] = self.num_images - self.num_scored
        return out


def evaluate_saliency(
    pred_dir: str | os.PathLike,
    dataset,
    ids: list[str] | None = None,
    gt_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``pred_dir/<id>.png`` for the ids of a :class:`wsss.data.Dataset` split.

    The ground truth is ``gt_dir/<id>.png`` saliency maps (> 0.5 = foreground) when given,
    else the dataset's label maps (class > 0 = foreground, 255 = not scored) — the usual
    case in WSSS, where VOC has masks but no saliency ground truth. Returns a JSON-ready dict.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise WsssError(f"{pred_dir}: saliency folder not found")
    if gt_dir is not None:
        gt_dir = Path(gt_dir)
        if not gt_dir.is_dir():
            raise WsssError(f"{gt_dir}: ground-truth saliency folder not found")
    ids = dataset.select_ids(ids)
    if not ids:
        raise WsssError(f"{pred_dir}: no images to evaluate")
    metric = SaliencyMetric()
    for image_id in tqdm(ids, desc="saliency eval", unit="img", disable=not progress):
        pred_path = pred_dir / f"{image_id}.png"
        if not pred_path.is_file():  # checked first: a missing prediction is the news
            raise WsssError(f"{pred_path}: saliency map not found")
        shape = image_size(dataset.image_path(image_id))
        pred = load_saliency(pred_path, shape)
        if gt_dir is not None:
            fg = load_saliency(gt_dir / f"{image_id}.png", shape) > 0.5
            valid = None
        else:
            label = dataset.gt(image_id)
            gt_path = dataset.gt_path(image_id)
            if label is None:
                raise WsssError(
                    f"{dataset.root}: no ground-truth label map for image {image_id!r}; "
                    "pass a ground-truth saliency folder instead"
                )
            if label.shape != shape:
                raise WsssError(
                    f"{gt_path}: size {label.shape[1]}×{label.shape[0]} does not match the image "
                    f"{shape[1]}×{shape[0]}"
                )
            valid = label != 255
            fg = (label > 0) & valid
        metric.process(pred, fg, valid)
    scores = metric.compute()
    result: dict[str, Any] = {
        key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in scores.items()
    }
    result.update(
        {
            "pred_dir": str(pred_dir),
            "gt_dir": str(gt_dir) if gt_dir is not None else None,
            "gt_source": "saliency" if gt_dir is not None else "label_maps",
            "split": dataset.split,
            "num_images": metric.num_images,
        }
    )
    return result
