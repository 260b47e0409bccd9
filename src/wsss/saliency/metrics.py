"""Saliency quality against a foreground mask, as salient-object-detection papers report it.

Seed 000 finds that the saliency source moves WSSS results more than most method
changes, so ``wsss saliency eval`` scores a saliency folder the way salient-object
detection (SOD) papers do, to make sources comparable with the SOD literature.

Two protocols (``protocol=``):

``"sod"`` (default): the numbers of PySODMetrics (``pysodmetrics`` 1.6.2, a Python port of
the MATLAB evaluation code salient-object-detection papers report with), computed by that
package itself. Per image the map is read as 8-bit levels ``q`` (a float map is quantised to
``round(255·S)``, exactly what :func:`wsss.io.save_saliency` writes), min-max rescaled to
[0, 1] (unless constant) and, for the threshold sweeps, quantised again as ``floor(255·p)``;
at threshold index ``t = 0..255`` the prediction is ``floor(255·p) >= t``. Every per-image
score and curve is then averaged over images: ``max_f``/``mean_f`` are the max / mean over t
of the mean per-image F curve (β² = 0.3), ``adaptive_f`` thresholds each map at
``min(2·mean, 1)``, ``mae`` is on the rescaled map, ``s_measure`` (α = 0.5),
``max_e``/``mean_e``/``adaptive_e`` (E-measure) and ``weighted_f`` (β = 1) are the usual ones.
The library's edge cases are kept: E divides by ``N - 1`` (so it can exceed 1 slightly, and a
one-pixel image explodes), and S is NaN for an image whose foreground centroid lies on the
last row or column (an empty quadrant), which makes the mean NaN.

``"pooled"``: the protocol used before (PoolNet / BASNet style): ``q = round(255·S)`` without
rescaling, ``P(t)`` and ``R(t)`` averaged over images before ``F(t)`` is formed, MAE on the raw
map. Kept so earlier tables stay reproducible.

Both protocols add ``iou``: foreground IoU of the *raw* map at ``S >= 0.5``, pooled over the
set (Σ∩ / Σ∪), and ``mean_iou_per_image`` — the binarisation WSSS actually applies to a
saliency map, which the rescaled SOD scores do not see.

Pixels outside ``valid`` (VOC's 255 band) count nowhere. PySODMetrics has no ignore mask,
so the ``sod`` protocol feeds it the valid pixels alone, as a 1×N row, for every score that
only counts pixels (F, E, MAE, and the min-max rescale): that is exact. The S-measure and
the weighted F-measure need the 2-D layout; for them each invalid pixel takes the level and
the ground truth of its nearest valid pixel. That neither adds perfectly predicted pixels
(filling the band with background would) nor draws an artificial edge along every object
contour, and it keeps the map's min and max, so the rescale is unchanged. An image without a
valid pixel is skipped (counted in ``num_images_skipped``). Like
:class:`wsss.metrics.confusion.ConfusionMetric`, :meth:`SaliencyMetric.process` keeps only
sums over images, :meth:`~SaliencyMetric.merge` adds those of parallel workers and
:meth:`~SaliencyMetric.compute` turns the totals into every number.
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
PROTOCOLS = ("sod", "pooled")
DEFAULT_PROTOCOL = "sod"


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


def _best_threshold(f: np.ndarray) -> tuple[float, float]:
    """(max F, its threshold in 0..1) of a per-level F curve; ties go to the lowest threshold."""
    best = int(np.argmax(f))
    return float(f[best]), best / (NUM_LEVELS - 1)


def _iou_fields(
    intersection: int, union: int, iou_sum: float, num_iou_defined: int, beta2: float
) -> dict[str, Any]:
    """The entries both protocols report alike: pooled and per-image IoU, β², thresholds."""
    nan = float("nan")
    return {
        "iou": intersection / union if union else nan,
        "mean_iou_per_image": iou_sum / num_iou_defined if num_iou_defined else nan,
        "beta2": float(beta2),
        "thresholds": np.arange(NUM_LEVELS) / (NUM_LEVELS - 1),
    }


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
    """Every ``pooled`` score from the accumulated totals (a pure function, used by ``compute``).

    Undefined values (no scored image, empty union) are NaN, not 0.
    """
    nan = float("nan")
    if num_scored:
        precision = np.asarray(precision_sum, dtype=np.float64) / num_scored
        recall = np.asarray(recall_sum, dtype=np.float64) / num_scored
        f = f_measure(precision, recall, beta2)
        (max_f, best_threshold), mae = _best_threshold(f), mae_sum / num_scored
    else:
        precision = recall = f = np.full(NUM_LEVELS, np.nan)
        max_f = best_threshold = mae = nan
    return {
        "mae": float(mae),
        "max_f": max_f,
        "best_threshold": best_threshold,
        **_iou_fields(intersection, union, iou_sum, num_iou_defined, beta2),
        "precision": precision,
        "recall": recall,
        "f": f,
    }


def fill_from_nearest_valid(arrays: tuple[np.ndarray, ...], valid: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each invalid pixel takes the values of its nearest valid pixel (the S-measure and the
    weighted F-measure need a full grid; see the module docstring for why not a constant)."""
    from scipy.ndimage import distance_transform_edt

    rows, cols = distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return tuple(arr[rows, cols] for arr in arrays)


def sod_image_scores(
    levels: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray | None = None,
    beta2: float = DEFAULT_BETA2,
) -> dict[str, Any]:
    """PySODMetrics' per-image scores of one 8-bit map (the ``sod`` protocol).

    ``levels`` is uint8 H×W, ``gt`` and ``valid`` boolean H×W. Curves are indexed by the
    threshold level t (prediction ``floor(255·p) >= t``), i.e. reversed from PySODMetrics'
    order (which starts at 255). The library averages these over images; so does
    :class:`SaliencyMetric`, which sums them so that workers can merge.
    """
    import py_sod_metrics as sod

    gt_levels = gt.astype(np.uint8) * np.uint8(255)  # the library binarises the ground truth at > 128
    if valid is None or valid.all():
        flat = spatial = (levels, gt_levels)
    else:  # the pixel-counting scores see the valid pixels only; the spatial ones a filled grid
        flat = (levels[valid][None, :], gt_levels[valid][None, :])
        spatial = fill_from_nearest_valid((levels, gt_levels), valid)
    counting = sod.FmeasureV2(
        metric_handlers={
            "f": sod.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=beta2),
            "precision": sod.PrecisionHandler(with_dynamic=True, with_adaptive=False),
            "recall": sod.RecallHandler(with_dynamic=True, with_adaptive=False),
        }
    )
    mae, e_measure = sod.MAE(), sod.Emeasure()
    s_measure, weighted_f = sod.Smeasure(), sod.WeightedFmeasure()
    for evaluator in (counting, mae, e_measure):
        evaluator.step(*flat)
    for evaluator in (s_measure, weighted_f):
        evaluator.step(*spatial)
    counts = counting.get_results()
    e_results = e_measure.get_results()["em"]
    return {
        "precision": counts["precision"]["dynamic"][::-1],
        "recall": counts["recall"]["dynamic"][::-1],
        "f": counts["f"]["dynamic"][::-1],
        "e": e_results["curve"][::-1],
        "adaptive_f": float(counts["f"]["adaptive"]),
        "adaptive_e": float(e_results["adp"]),
        "mae": float(mae.get_results()["mae"]),
        "s_measure": float(s_measure.get_results()["sm"]),
        "weighted_f": float(weighted_f.get_results()["wfm"]),
    }


SOD_CURVES = ("precision", "recall", "f", "e")
SOD_SCALARS = ("adaptive_f", "adaptive_e", "s_measure", "weighted_f")


def sod_scores(
    curve_sums: dict[str, np.ndarray],
    scalar_sums: dict[str, float],
    mae_sum: float,
    num_scored: int,
    intersection: int,
    union: int,
    iou_sum: float,
    num_iou_defined: int,
    beta2: float = DEFAULT_BETA2,
) -> dict[str, Any]:
    """Every ``sod`` score from the sums of :func:`sod_image_scores` over images (a pure
    function, used by ``compute``). Undefined values are NaN, not 0."""
    nan = float("nan")
    if num_scored:
        curves = {name: np.asarray(curve_sums[name], dtype=np.float64) / num_scored for name in SOD_CURVES}
        scalars = {name: float(scalar_sums[name]) / num_scored for name in SOD_SCALARS}
        max_f, best_threshold = _best_threshold(curves["f"])
        mean_f, max_e, mean_e = (
            float(curves["f"].mean()),
            float(curves["e"].max()),
            float(curves["e"].mean()),
        )
        mae = mae_sum / num_scored
    else:
        curves = {name: np.full(NUM_LEVELS, np.nan) for name in SOD_CURVES}
        scalars = dict.fromkeys(SOD_SCALARS, nan)
        max_f = best_threshold = mean_f = max_e = mean_e = mae = nan
    return {
        "protocol": "sod",
        "mae": float(mae),
        "max_f": max_f,
        "mean_f": mean_f,
        "adaptive_f": scalars["adaptive_f"],
        "best_threshold": best_threshold,
        "s_measure": scalars["s_measure"],
        "max_e": max_e,
        "mean_e": mean_e,
        "adaptive_e": scalars["adaptive_e"],
        "weighted_f": scalars["weighted_f"],
        **_iou_fields(intersection, union, iou_sum, num_iou_defined, beta2),
        **curves,
    }


class SaliencyMetric:
    """Accumulates, over images, the sums each protocol's scores are means of, plus IoU totals.

    ``protocol="sod"`` (default) sums PySODMetrics' per-image curves and scores;
    ``protocol="pooled"`` sums per-threshold precision and recall (see the module docstring).
    """

    def __init__(self, beta2: float = DEFAULT_BETA2, protocol: str = DEFAULT_PROTOCOL):
        if not beta2 > 0:
            raise ValueError(f"beta2 must be > 0, got {beta2}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown saliency protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
        self.beta2 = float(beta2)
        self.protocol = protocol
        self.precision_sum = np.zeros(NUM_LEVELS, dtype=np.float64)
        self.recall_sum = np.zeros(NUM_LEVELS, dtype=np.float64)
        self.f_sum = np.zeros(NUM_LEVELS, dtype=np.float64)  # sod: per-image F curves
        self.e_sum = np.zeros(NUM_LEVELS, dtype=np.float64)  # sod: per-image E curves
        self.scalar_sums = dict.fromkeys(SOD_SCALARS, 0.0)
        self.mae_sum = 0.0
        self.num_scored = 0
        self.intersection = 0
        self.union = 0
        self.iou_sum = 0.0
        self.num_iou_defined = 0
        self.num_images = 0

    def process(self, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> None:
        """``pred``: H×W float in [0, 1] or uint8 0..255; ``gt``: boolean foreground mask;
        ``valid`` (optional) marks the pixels that count."""
        unit, levels = _unit_and_levels(pred)
        gt = _mask("ground truth", gt, unit.shape)
        if valid is not None:
            valid = _mask("valid mask", valid, unit.shape)
            if valid.all():
                valid = None
        self.num_images += 1
        if valid is None:
            unit_v, levels_v, gt_v = unit.ravel(), levels.ravel(), gt.ravel()
        else:
            unit_v, levels_v, gt_v = unit[valid], levels[valid], gt[valid]
        if unit_v.size == 0:
            return
        if self.protocol == "sod":
            self._add_sod(sod_image_scores(levels, gt, valid, self.beta2))
        else:
            self._add_pooled(unit_v, levels_v, gt_v)
        self.num_scored += 1
        pred_fg = unit_v >= IOU_THRESHOLD
        inter = int(np.count_nonzero(pred_fg & gt_v))
        union = int(np.count_nonzero(pred_fg | gt_v))
        self.intersection += inter
        self.union += union
        if union:
            self.iou_sum += inter / union
            self.num_iou_defined += 1

    def _add_sod(self, scores: dict[str, Any]) -> None:
        self.precision_sum += scores["precision"]
        self.recall_sum += scores["recall"]
        self.f_sum += scores["f"]
        self.e_sum += scores["e"]
        for name in SOD_SCALARS:
            self.scalar_sums[name] += scores[name]
        self.mae_sum += scores["mae"]

    def _add_pooled(self, unit: np.ndarray, levels: np.ndarray, gt: np.ndarray) -> None:
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

    def merge(self, other: SaliencyMetric) -> None:
        if not isinstance(other, SaliencyMetric) or other.beta2 != self.beta2:
            raise ValueError("can only merge a SaliencyMetric with the same beta2")
        if other.protocol != self.protocol:
            raise ValueError(f"cannot merge {other.protocol!r} saliency sums into {self.protocol!r} ones")
        self.precision_sum += other.precision_sum
        self.recall_sum += other.recall_sum
        self.f_sum += other.f_sum
        self.e_sum += other.e_sum
        for name in SOD_SCALARS:
            self.scalar_sums[name] += other.scalar_sums[name]
        self.mae_sum += other.mae_sum
        self.num_scored += other.num_scored
        self.intersection += other.intersection
        self.union += other.union
        self.iou_sum += other.iou_sum
        self.num_iou_defined += other.num_iou_defined
        self.num_images += other.num_images

    def compute(self) -> dict[str, Any]:
        """Scalar scores are plain floats; ``thresholds`` and the curves (``precision``,
        ``recall``, ``f``, and ``e`` for ``sod``) are arrays over the 256 thresholds."""
        iou_totals = (self.intersection, self.union, self.iou_sum, self.num_iou_defined)
        if self.protocol == "sod":
            curve_sums = {"precision": self.precision_sum, "recall": self.recall_sum}
            curve_sums.update(f=self.f_sum, e=self.e_sum)
            out = sod_scores(
                curve_sums, self.scalar_sums, self.mae_sum, self.num_scored, *iou_totals, self.beta2
            )
        else:
            out = saliency_scores(
                self.precision_sum, self.recall_sum, self.mae_sum, self.num_scored, *iou_totals, self.beta2
            )
            out = {"protocol": "pooled", **out}
        out["num_images"] = self.num_images
        out["num_images_skipped"] = self.num_images - self.num_scored
        return out


def evaluate_saliency(
    pred_dir: str | os.PathLike,
    dataset,
    ids: list[str] | None = None,
    gt_dir: str | os.PathLike | None = None,
    progress: bool = True,
    protocol: str = DEFAULT_PROTOCOL,
) -> dict[str, Any]:
    """Score ``pred_dir/<id>.png`` for the ids of a :class:`wsss.data.Dataset` split.

    The ground truth is ``gt_dir/<id>.png`` saliency maps (> 0.5 = foreground) when given,
    else the dataset's label maps (class > 0 = foreground, 255 = not scored) — the usual
    case in WSSS, where VOC has masks but no saliency ground truth. ``protocol``: ``sod``
    (PySODMetrics) or ``pooled`` (see the module docstring). Returns a JSON-ready dict.
    """
    if protocol not in PROTOCOLS:
        raise WsssError(f"unknown saliency protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
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
    metric = SaliencyMetric(protocol=protocol)
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
