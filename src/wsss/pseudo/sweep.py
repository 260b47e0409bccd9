"""τ sweep: score Algorithm 1's pseudo labels against the GT for many thresholds at once.

The best τ differs per CAM method and per saliency source (seed 000), so the
sweep is a first-class operation. Each image's CAM, GT and saliency maps are
read once; the per-pixel CAM peak is computed once (see
:mod:`wsss.pseudo.threshold`), and one cumulative histogram per saliency source
gives every τ's confusion matrix (:mod:`wsss.pseudo.tau_histogram`), so a sweep
over 60 τ costs about what one τ costs. With ``workers > 1`` chunks of images
run in processes whose counts are summed, which gives exactly the
single-process numbers; on a GPU the counting runs there.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.data.base import Dataset
from wsss.io import (
    WsssError,
    atomic_path,
    atomic_write_text,
    image_size,
    load_saliency,
    process_context,
    write_json,
    write_run_json,
)
from wsss.metrics.confusion import confusion_scores
from wsss.pseudo.tau_histogram import PixelTerms, TauHistogram, pixel_terms
from wsss.pseudo.threshold import ThresholdLabeller, cam_peak, load_checked_cam, salient_mask

__all__ = ["default_taus", "sweep_tau", "write_sweep"]

SCORES = ("miou", "precision", "recall", "fpr", "fnr", "pixel_acc")
# confusion_scores() key for each score reported per τ
_SCORE_KEYS = {
    "miou": "miou",
    "precision": "precision_mean",
    "recall": "recall_mean",
    "fpr": "fpr_mean",
    "fnr": "fnr_mean",
    "pixel_acc": "pixel_acc",
}


def default_taus() -> list[float]:
    """0.05, 0.10, …, 0.95."""
    return [round(0.05 * k, 2) for k in range(1, 20)]


# --------------------------------------------------------------------------- accumulation
class _SweepJob:
    """Everything a worker needs; passed once per process, not per chunk."""

    def __init__(
        self,
        dataset,
        cam_dir,
        taus,
        saliency_dirs,
        sal_threshold,
        ignore_salient_bg,
        strict_tau=False,
        device="numpy",
    ):
        self.dataset = dataset
        self.cam_dir = Path(cam_dir)
        self.taus = list(taus)
        self.saliency_dirs = dict(saliency_dirs)
        self.sal_threshold = float(sal_threshold)
        self.ignore_salient_bg = bool(ignore_salient_bg)
        self.strict_tau = bool(strict_tau)
        self.device = device

    def new_counts(self, device: str | None = None) -> dict[str, TauHistogram]:
        # without saliency a class needs CAM > τ; with it, CAM >= τ unless strict_tau
        return {
            s: TauHistogram(
                self.taus,
                self.dataset.num_classes,
                keep_at_tau=sal_dir is not None and not self.strict_tau,
                device=device or self.device,
            )
            for s, sal_dir in self.saliency_dirs.items()
        }

    def image_terms(self, image_id: str) -> dict[str, PixelTerms]:
        """Read one image's CAM, GT and saliency maps → its histogram terms per source."""
        ds = self.dataset
        shape = image_size(ds.image_path(image_id))
        gt = ds.gt(image_id)
        if gt is None:
            raise WsssError(
                f"{ds.root}: image {image_id!r} has no ground truth; the τ sweep needs GT label maps"
            )
        if gt.shape != shape:
            raise WsssError(
                f"{ds.gt_path(image_id)}: size {gt.shape[1]}×{gt.shape[0]} does not match the image "
                f"{shape[1]}×{shape[0]}"
            )
        keys, cam = load_checked_cam(ds, self.cam_dir, image_id, shape)
        peak, top_class = cam_peak(cam, keys)
        terms = {}
        for source, sal_dir in self.saliency_dirs.items():
            salient = None
            if sal_dir is not None:
                sal = load_saliency(Path(sal_dir) / f"{image_id}.png", shape=shape)
                salient = salient_mask(sal, self.sal_threshold)
            labeller = ThresholdLabeller(peak, top_class, salient, self.ignore_salient_bg, self.strict_tau)
            terms[source] = pixel_terms(gt, labeller.peak, top_class, labeller.fallback, ds.num_classes)
        return terms

    def batch_terms(self, ids: list[str]) -> list[dict[str, PixelTerms]]:
        return [self.image_terms(i) for i in ids]

    def accumulate(self, ids: Iterable[str], counts: dict[str, TauHistogram]) -> None:
        for image_id in ids:
            for source, terms in self.image_terms(image_id).items():
                counts[source].add([terms])


_WORKER_JOB: _SweepJob | None = None


def _init_worker(job: _SweepJob) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _run_chunk(ids: list[str]) -> tuple[int, dict[str, TauHistogram]]:
    if _WORKER_JOB is None:
        raise RuntimeError("sweep worker used before _init_worker")
    counts = _WORKER_JOB.new_counts("numpy")
    _WORKER_JOB.accumulate(ids, counts)
    return len(ids), counts


def _sweep_device(device: str) -> str:
    """The NumPy path ("numpy") on the CPU, else the torch device to count on."""
    if not (device in ("auto", "cpu", "numpy", "torch-cpu") or re.fullmatch(r"cuda(:\d+)?", device)):
        raise WsssError(f"device {device!r}: expected auto, cpu or cuda[:N]")
    if device in ("cpu", "numpy"):
        return "numpy"
    if device == "auto" and not any(Path("/dev").glob("nvidia[0-9]*")):
        return "numpy"  # no NVIDIA device node: skip importing torch (its start-up dominates small sweeps)
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "numpy"
    if device == "torch-cpu":  # the device code path on the CPU (tests, debugging)
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WsssError(f"device {device!r} requested but CUDA is not available")
    return device


def _count_on_device(job: _SweepJob, ids: list[str], counts: dict, workers: int, bar) -> None:
    """Decode in DataLoader workers, count batches of images on the device."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(
        ids,
        batch_size=8,
        num_workers=max(0, workers),
        collate_fn=job.batch_terms,
        multiprocessing_context=process_context() if workers > 0 else None,
    )
    with torch.inference_mode():
        for batch in loader:
            for source, hist in counts.items():
                hist.add([terms[source] for terms in batch], num_images=len(batch))
            bar.update(len(batch))


def _chunks(ids: list[str], n: int) -> list[list[str]]:
    size = max(1, math.ceil(len(ids) / n))
    return [ids[i : i + size] for i in range(0, len(ids), size)]


# --------------------------------------------------------------------------- API
def sweep_tau(
    dataset: Dataset,
    cam_dir: str | Path,
    taus: Iterable[float] | None = None,
    saliency_dirs: dict[str, str | Path | None] | None = None,
    sal_threshold: float = 0.2,
    ignore_salient_bg: bool = True,
    ids: list[str] | None = None,
    workers: int = 1,
    progress: bool = True,
    strict_tau: bool = False,
    device: str = "cpu",
) -> dict:
    """Score pseudo labels for every τ and saliency source → a JSON-ready dict.

    ``saliency_dirs`` maps a source name to a folder of ``<id>.png`` maps, or to
    None for "no saliency" (default ``{"none": None}``). The result holds, per
    source, the mean scores per τ (``miou``, ``precision``, ``recall``, ``fpr``,
    ``fnr``, ``pixel_acc``), the per-class IoU per τ, and ``best``: the τ with
    the highest mIoU (the smallest on ties) with its scores. Labels are exactly
    those of :func:`~wsss.pseudo.threshold.make_pseudo_labels` at the same τ and
    settings (``strict_tau`` included).

    One pass over the images fills a cumulative histogram (:mod:`wsss.pseudo.tau_histogram`),
    so the cost hardly grows with the number of τ. ``device``: ``"cpu"`` (NumPy, with
    ``workers`` processes), ``"cuda"``/``"cuda:N"`` (decoding in ``workers`` DataLoader
    processes, counting on the GPU; the same numbers), or ``"auto"`` (CUDA when present).
    """
    start = time.perf_counter()
    cam_dir = Path(cam_dir)
    if not cam_dir.is_dir():
        raise WsssError(f"{cam_dir}: CAM folder not found")
    tau_list = sorted({float(t) for t in (default_taus() if taus is None else taus)})
    if not tau_list:
        raise WsssError("the τ sweep needs at least one τ")
    bad = [t for t in tau_list if not (math.isfinite(t) and t >= 0)]
    if bad:
        raise WsssError(f"τ values must be finite and >= 0, got {bad}")
    sources = {"none": None} if saliency_dirs is None else dict(saliency_dirs)
    if not sources:
        raise WsssError("the τ sweep needs at least one saliency source (None = no saliency)")
    for sal_dir in sources.values():
        if sal_dir is not None and not Path(sal_dir).is_dir():
            raise WsssError(f"{sal_dir}: saliency folder not found")
    ids = dataset.select_ids(ids)
    if not ids:
        raise WsssError(f"{dataset.root}: split {dataset.split!r} has no images to sweep")

    device = _sweep_device(device)
    job = _SweepJob(dataset, cam_dir, tau_list, sources, sal_threshold, ignore_salient_bg, strict_tau, device)
    counts = job.new_counts()
    bar = tqdm(total=len(ids), desc="τ sweep", unit="img", disable=not progress)
    with bar:
        if device != "numpy":
            _count_on_device(job, ids, counts, workers, bar)
        elif workers <= 1 or len(ids) < 2:
            for image_id in ids:
                job.accumulate([image_id], counts)
                bar.update(1)
        else:
            chunks = _chunks(ids, 4 * workers)
            with process_context().Pool(
                min(workers, len(chunks)), initializer=_init_worker, initargs=(job,)
            ) as pool:
                for n_done, part in pool.imap(_run_chunk, chunks):
                    for source in sources:
                        counts[source].merge(part[source])
                    bar.update(n_done)

    result_sources = {}
    for source in sources:
        scores = [
            confusion_scores(confusion, unpredicted)
            for confusion, unpredicted in zip(*counts[source].confusions(), strict=True)
        ]
        per_tau = {name: [float(s[key]) for s in scores] for name, key in _SCORE_KEYS.items()}
        per_tau["iou"] = [[float(v) for v in s["iou"]] for s in scores]
        miou = np.array(per_tau["miou"], dtype=np.float64)
        if np.isnan(miou).all():
            raise WsssError(f"{dataset.root}: split {dataset.split!r} has no labelled GT pixels to score")
        best_index = int(np.nanargmax(miou))
        best = {"tau": tau_list[best_index], "index": best_index}
        best.update({name: per_tau[name][best_index] for name in (*SCORES, "iou")})
        result_sources[source] = {"tau": list(tau_list), **per_tau, "best": best}

    config = {
        "dataset": dataset.kind,
        "root": str(dataset.root),
        "split": dataset.split,
        "cam_dir": str(cam_dir),
        "taus": list(tau_list),
        "sources": {k: None if v is None else str(v) for k, v in sources.items()},
        "sal_threshold": float(sal_threshold),
        "ignore_salient_bg": bool(ignore_salient_bg),
        "strict_tau": bool(strict_tau),
        "num_images": len(ids),
        "num_classes": dataset.num_classes,
        "class_names": list(dataset.class_names),
        "workers": int(workers),
    }
    return {
        "config": config,
        "taus": list(tau_list),
        "sources": result_sources,
        "timings": {"total_s": time.perf_counter() - start},
    }


def write_sweep(result: dict, out_dir: str | Path) -> Path:
    """``sweep.csv`` (one row per source × τ), ``sweep.json``, ``sweep.png`` and ``run.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names = result["config"]["class_names"]

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["source", "tau", *SCORES, "best", *(f"iou_{n}" for n in class_names)])
    for source, r in result["sources"].items():
        for k, tau in enumerate(r["tau"]):
            row = [source, f"{tau:g}", *(_fmt(r[name][k]) for name in SCORES), int(k == r["best"]["index"])]
            writer.writerow(row + [_fmt(v) for v in r["iou"][k]])
    atomic_write_text(out_dir / "sweep.csv", buf.getvalue())

    best = {s: {"tau": r["best"]["tau"], "miou": r["best"]["miou"]} for s, r in result["sources"].items()}
    write_json(out_dir / "sweep.json", {**result, "best": best})
    _plot(result, out_dir / "sweep.png")
    write_run_json(out_dir, "sweep", result["config"], timings=result.get("timings"), extra={"best": best})
    return out_dir


def _fmt(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.6f}"


def _plot(result: dict, path: Path) -> None:
    # an explicit Agg canvas: no global backend switch, works without a display
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = (("miou", "mIoU"), ("precision", "precision"), ("recall", "recall"))
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharex=True)
    for source, r in result["sources"].items():
        b = r["best"]
        label = f"{source} (best τ={b['tau']:g}, mIoU {100 * b['miou']:.1f})"
        for ax, (name, _) in zip(axes, panels, strict=True):
            line = ax.plot(r["tau"], [100 * v for v in r[name]], marker=".", label=label)[0]
            ax.axvline(b["tau"], color=line.get_color(), linestyle=":", linewidth=1)
        axes[0].plot([b["tau"]], [100 * b["miou"]], marker="*", markersize=12, color=line.get_color())
    cfg = result["config"]
    for ax, (_, title) in zip(axes, panels, strict=True):
        ax.set_xlabel("τ")
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"τ sweep: {cfg['dataset']} {cfg['split']} ({cfg['num_images']} images)", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
