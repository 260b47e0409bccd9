"""``wsss evaluate``: score a folder of label PNGs against the ground truth.

One pass over the images feeds three streaming metrics (confusion → mIoU and
friends, IA-mIoU, class-group statistics); with ``workers > 1`` a process pool
evaluates contiguous chunks of ids and the metric states are merged, which
gives the single-process numbers. Every unreadable, missing, mis-sized or
out-of-range file stops the run with a :class:`~wsss.io.WsssError` naming it.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wsss.io import WsssError, load_instances, load_label
from wsss.metrics.confusion import ConfusionMetric
from wsss.metrics.groups import ClassGroupStats, default_class_names
from wsss.metrics.ia_miou import BUCKETS, DEFAULT_BOUNDS, InstanceAwareMetric
from wsss.metrics.ia_miou import VARIANTS as IA_VARIANTS

# (image id, prediction PNG, ground-truth PNG, instance PNG or None)
Item = tuple[str, Path, Path, Path | None]


class EvaluationState:
    """The three metric states of a set of images; picklable, so workers can return it."""

    def __init__(
        self,
        num_classes: int,
        class_names: list[str],
        bounds: tuple[int, int],
        groups: bool,
        ia_variant: str = "official",
    ):
        self.num_classes = num_classes
        self.confusion = ConfusionMetric(num_classes, class_names)
        self.ia = InstanceAwareMetric(num_classes, bounds, class_names, ia_variant)
        self.groups = ClassGroupStats(num_classes, class_names) if groups else None
        self.instance_sources = {"png": 0, "components": 0}

    def process_files(self, item: Item) -> None:
        _, pred_path, gt_path, inst_path = item
        if not Path(
            pred_path
        ).is_file():  # checked first: with explicit ids, a missing prediction is the news
            raise WsssError(f"{pred_path}: prediction not found")
        gt = load_label(gt_path, self.num_classes)
        pred = load_label(pred_path, self.num_classes, shape=gt.shape)
        instances = load_instances(inst_path, shape=gt.shape) if inst_path is not None else None
        self.confusion.process(pred, gt)
        self.ia.process(pred, gt, instances)
        if self.groups is not None:
            self.groups.process(gt)
        self.instance_sources["components" if instances is None else "png"] += 1

    def merge(self, other: EvaluationState) -> None:
        self.confusion.merge(other.confusion)
        self.ia.merge(other.ia)
        if self.groups is not None and other.groups is not None:
            self.groups.merge(other.groups)
        for key, n in other.instance_sources.items():
            self.instance_sources[key] += n


def _evaluate_chunk(args: tuple[list[Item], int, list[str], tuple[int, int], bool, str]) -> EvaluationState:
    items, num_classes, class_names, bounds, groups, ia_variant = args
    state = EvaluationState(num_classes, class_names, bounds, groups, ia_variant)
    for item in items:
        state.process_files(item)
    return state


def evaluate_items(
    items: list[Item],
    num_classes: int,
    class_names: list[str] | None = None,
    bounds: tuple[int, int] = DEFAULT_BOUNDS,
    groups: bool = True,
    workers: int = 1,
    progress: bool = True,
    ia_variant: str = "official",
) -> dict:
    """Evaluate explicit (id, prediction, ground truth, instances) file tuples → the result dict.

    ``ia_variant``: IA-mIoU as the authors' code (``"official"``) or ``"exact"`` (docs/methods.md §5.2).
    """
    if not items:
        raise WsssError("no images to evaluate")
    if num_classes < 2:
        raise WsssError(f"num_classes must count background and at least one class, got {num_classes}")
    names = list(class_names) if class_names else default_class_names(num_classes)
    if len(names) != num_classes:
        raise WsssError(f"{len(names)} class names given for num_classes={num_classes}")
    bounds = (int(bounds[0]), int(bounds[1]))
    if not 0 < bounds[0] <= bounds[1]:
        raise WsssError(f"IA-mIoU bounds must satisfy 0 < small <= medium, got {bounds}")
    if ia_variant not in IA_VARIANTS:
        raise WsssError(f"IA-mIoU variant must be one of {', '.join(IA_VARIANTS)}, got {ia_variant!r}")
    t0 = time.perf_counter()
    state = EvaluationState(num_classes, names, bounds, groups, ia_variant)
    workers = max(1, min(int(workers), len(items)))
    with tqdm(total=len(items), desc="evaluate", unit="img", disable=not progress) as bar:
        if workers == 1:
            for item in items:
                state.process_files(item)
                bar.update(1)
        else:
            # a few chunks per worker balance the load; contiguous chunks merged in order keep it deterministic
            size = math.ceil(len(items) / (4 * workers))
            chunks = [items[i : i + size] for i in range(0, len(items), size)]
            jobs = [(chunk, num_classes, names, bounds, groups, ia_variant) for chunk in chunks]
            # spawn: the parent may hold torch threads, which fork can deadlock
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for chunk, part in zip(chunks, pool.imap(_evaluate_chunk, jobs), strict=True):
                    state.merge(part)
                    bar.update(len(chunk))
    result = summarize(state, names)
    result["seconds"] = time.perf_counter() - t0
    return result


def summarize(state: EvaluationState, class_names: list[str]) -> dict:
    """The JSON-ready result (fractions in [0, 1], NaN where undefined) of a finished state."""
    conf = state.confusion.compute()
    ia = state.ia.compute()
    per_class = []
    for c, name in enumerate(class_names):
        entry: dict[str, Any] = {"id": c, "name": name}
        for key in ("iou", "precision", "recall", "fpr", "fnr"):
            entry[key] = float(conf[key][c])
        entry["ia_iou"] = float(ia["ia_iou"][c])
        for b in BUCKETS:
            entry[f"ia_iou_{b}"] = float(ia[f"ia_iou_{b}"][c])
        entry["gt_pixels"] = int(conf["tp"][c] + conf["fn"][c])
        entry["num_instances"] = int(ia["num_instances"][c])
        per_class.append(entry)
    result: dict[str, Any] = {
        "miou": conf["miou"],
        "ia_miou": ia["ia_miou"],
        **{f"ia_miou_{b}": ia[f"ia_miou_{b}"] for b in BUCKETS},
        "pixel_acc": conf["pixel_acc"],
        "precision_mean": conf["precision_mean"],
        "recall_mean": conf["recall_mean"],
        "fpr_mean": conf["fpr_mean"],
        "fnr_mean": conf["fnr_mean"],
        "num_images": state.confusion.num_images,
        "num_classes": state.num_classes,
        "bounds": list(ia["bounds"]),
        "ia_variant": ia["variant"],
        "num_instances": {
            "foreground": int(ia["num_instances"][1:].sum()),
            **{b: int(ia[f"num_instances_{b}"].sum()) for b in BUCKETS},
        },
        "instance_source": dict(state.instance_sources),
        "per_class": per_class,
        "confusion": conf["confusion"].tolist(),
        "unpredicted": conf["unpredicted"].tolist(),
        "groups": None,
    }
    if state.groups is not None:
        result["groups"] = _builtin(state.groups.compute({"iou": conf["iou"], "ia_iou": ia["ia_iou"]}))
    return result


def _builtin(obj: Any) -> Any:
    """numpy values → plain Python, so the result is JSON-ready as returned."""
    if isinstance(obj, dict):
        return {k: _builtin(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_builtin(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _require_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise WsssError(f"{path}: {what} folder not found")
    return path


def evaluate_dirs(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    num_classes: int,
    instances_dir: str | os.PathLike | None = None,
    class_names: list[str] | None = None,
    bounds: tuple[int, int] = DEFAULT_BOUNDS,
    ids: list[str] | None = None,
    groups: bool = True,
    workers: int = 1,
    progress: bool = True,
    ia_variant: str = "official",
) -> dict:
    """Score ``pred_dir/<id>.png`` against ``gt_dir/<id>.png`` (and ``instances_dir/<id>.png``).

    The predictions define the ids unless ``ids`` is given; ``num_classes``
    counts background. Returns the JSON contract of ``wsss evaluate``.
    """
    pred_dir = _require_dir(pred_dir, "prediction")
    gt_dir = _require_dir(gt_dir, "ground-truth")
    inst_dir = _require_dir(instances_dir, "instance") if instances_dir is not None else None
    unmatched = None
    if ids is None:
        ids = sorted(p.stem for p in pred_dir.glob("*.png") if not p.name.startswith("."))
        if not ids:
            raise WsssError(f"{pred_dir}: no prediction PNGs found")
        # a GT folder often holds more than one split, so this is reported, not an error
        unmatched = len({p.stem for p in gt_dir.glob("*.png") if not p.name.startswith(".")} - set(ids))
    items: list[Item] = [
        (i, pred_dir / f"{i}.png", gt_dir / f"{i}.png", inst_dir / f"{i}.png" if inst_dir else None)
        for i in ids
    ]
    result = evaluate_items(items, num_classes, class_names, bounds, groups, workers, progress, ia_variant)
    result.update(
        {
            "pred_dir": str(pred_dir),
            "gt_dir": str(gt_dir),
            "instances_dir": str(inst_dir) if inst_dir else None,
            "class_names": list(class_names) if class_names else default_class_names(num_classes),
            "num_gt_without_prediction": unmatched,
        }
    )
    return result


def evaluate_dataset(
    pred_dir: str | os.PathLike,
    dataset,
    ids: list[str] | None = None,
    bounds: tuple[int, int] = DEFAULT_BOUNDS,
    use_instances: bool = True,
    groups: bool = True,
    workers: int = 1,
    progress: bool = True,
    ia_variant: str = "official",
) -> dict:
    """Score ``pred_dir/<id>.png`` for every id of a :class:`wsss.data.Dataset` split.

    Ground truth, instance maps and class names come from the dataset; an image
    without an instance map is split into connected components instead.
    """
    pred_dir = _require_dir(pred_dir, "prediction")
    ids = list(dataset.ids) if ids is None else list(ids)
    items: list[Item] = []
    for i in ids:
        gt_path = dataset.gt_path(i)
        if gt_path is None:
            raise WsssError(f"{dataset.root}: no ground-truth label map for image {i!r}")
        inst_path = dataset.instance_path(i) if use_instances else None
        if inst_path is not None and not Path(inst_path).is_file():
            inst_path = None
        items.append((i, pred_dir / f"{i}.png", Path(gt_path), inst_path))
    result = evaluate_items(
        items, dataset.num_classes, dataset.class_names, bounds, groups, workers, progress, ia_variant
    )
    result.update(
        {
            "pred_dir": str(pred_dir),
            "dataset": {"kind": dataset.kind, "root": str(dataset.root), "split": dataset.split},
            "class_names": list(dataset.class_names),
        }
    )
    return result


# --------------------------------------------------------------------------- text table
_SCORE_LABELS = {"iou": "IoU", "ia_iou": "IA-IoU"}


def _pct(value: Any, width: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{100 * value:{width}.1f}"


def _num(value: Any, width: int = 6, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:{width}.{digits}f}"


def format_table(result: dict) -> str:
    """The result as a readable table, scores in percent ("-" where undefined)."""
    names = [c["name"] for c in result["per_class"]]
    wname = max(12, *(len(n) for n in names))
    lines = [
        f"{'id':>3}  {'class':<{wname}} {'IoU':>6} {'IA-IoU':>6} {'Prec':>6} {'Rec':>6} {'FPR':>6} {'FNR':>6}"
        f" {'#inst':>6}"
    ]
    for c in result["per_class"]:
        cells = " ".join(_pct(c[k]) for k in ("iou", "ia_iou", "precision", "recall", "fpr", "fnr"))
        lines.append(f"{c['id']:>3}  {c['name']:<{wname}} {cells} {c['num_instances']:>6}")
    b = result["bounds"]
    lines += [
        "",
        f"mIoU {_pct(result['miou']).strip()}   IA-mIoU {_pct(result['ia_miou']).strip()}"
        f" (small {_pct(result['ia_miou_small']).strip()} / medium {_pct(result['ia_miou_medium']).strip()}"
        f" / large {_pct(result['ia_miou_large']).strip()}; bounds {b[0]}, {b[1]} px)"
        f"   pixel acc {_pct(result['pixel_acc']).strip()}",
        f"precision {_pct(result['precision_mean']).strip()}   recall {_pct(result['recall_mean']).strip()}"
        f"   FPR {_pct(result['fpr_mean']).strip()}   FNR {_pct(result['fnr_mean']).strip()} (foreground)"
        f"   ({result['num_images']} images)",
    ]
    groups = result.get("groups")
    if groups:
        scores = [k for k in ("iou", "ia_iou") if k in groups["groups"][0]]
        lines += [
            "",
            f"{'kind':<13}{'group':<10}{'n':>3} {'O':>7} {'%S':>6} {'%C':>6} {'L':>5} "
            + " ".join(f"{_SCORE_LABELS[s]:>6}" for s in scores),
        ]
        for g in groups["groups"]:
            std = g["name"] == "std"
            lines.append(
                f"{g['kind']:<13}{g['name']:<10}{len(g['ids']):>3} {_num(g['occurrence'], 7)} "
                f"{_pct(g['relative_size'])} {_pct(g['cooccurrence'])} {_num(g['cardinality'], 5, 2 if std else 1)} "
                + " ".join(_pct(g[s]) for s in scores)
            )
        corr = groups["correlation"]
        for s in scores:
            lines.append(
                f"Pearson r with {_SCORE_LABELS[s]}: "
                + "  ".join(
                    f"{label} {_num(corr[stat][s], 0, 2).strip()}"
                    for label, stat in (
                        ("O", "occurrence"),
                        ("%S", "relative_size"),
                        ("%C", "cooccurrence"),
                        ("L", "cardinality"),
                    )
                )
            )
    return "\n".join(lines)
