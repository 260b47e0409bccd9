"""Pseudo labels by thresholding CAMs, with or without saliency (seed 000, Algorithm 1).

Algorithm 1 stacks a background score on the class scores and takes the
argmax. We follow the authors' released code (clovaai/WSSS-BED,
``wsss_bed/run.py``), which differs from the paper's pseudocode at one point:

- with saliency, the background score is ``1 - S_bin`` and a class score is
  set to 0 only where its CAM is *below* τ, so a CAM exactly equal to τ keeps
  its score (the paper writes ``CAM > τ``; ``strict_tau=True`` gives that);
- without saliency, the background score is the constant τ and the CAM is
  not zeroed, so a class needs a CAM strictly above τ (a tie goes to
  background): both versions agree here.

Because the class scores are the CAM itself wherever they can win, the argmax
reduces to comparing the per-pixel CAM maximum ``m`` with τ and with the
background score: with saliency a pixel gets the class of its strongest CAM
iff ``m >= τ`` (``m > τ`` with ``strict_tau``) and ``m > bg``; without, iff
``m > τ``. Ties with the background score go to background and ties between
classes to the lowest class id, as ``np.argmax`` over [background, classes in
id order] picks the first. Comparisons are made in float32, as the reference
does with its float32 maps, so a PNG CAM value k/255 equal to τ counts as a
tie. The top class and ``m`` do not depend on τ, so a τ sweep computes them
once per image (:func:`cam_peak`) and then only compares
(:class:`ThresholdLabeller`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.data.base import Dataset
from wsss.io import (
    IGNORE,
    WsssError,
    find_cam,
    image_size,
    load_cam,
    load_saliency,
    parse_shard,
    save_label,
    shard_list,
)
from wsss.stage import dataset_settings, stage_run

__all__ = [
    "ThresholdLabeller",
    "cam_peak",
    "load_checked_cam",
    "make_pseudo_labels",
    "salient_mask",
    "threshold_pseudo_label",
]


def cam_peak(cam: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel CAM maximum and the lowest class id (from ``keys``) that attains it.

    Ties between classes go to the lowest id whatever the order of ``keys``, as in
    WSSS-BED, whose class channels are stacked in id order. With no classes the
    maximum is -inf, so every pixel ends up background.
    """
    cam = np.asarray(cam)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if cam.ndim != 3 or cam.shape[0] != keys.size:
        raise ValueError(f"cam must be len(keys)×H×W, got {cam.shape} for {keys.size} keys")
    if keys.size and (keys.min() < 1 or keys.max() >= IGNORE):
        raise ValueError(f"class keys must be in 1..254, got {keys.tolist()}")
    if keys.size == 0:
        return np.full(cam.shape[1:], -np.inf, np.float32), np.zeros(cam.shape[1:], np.uint8)
    cam = cam.astype(np.float32, copy=False)
    if (np.diff(keys) < 0).any():
        order = np.argsort(keys, kind="stable")
        cam, keys = cam[order], keys[order]
    # a running maximum over the few class maps: ~5x faster than argmax along axis 0, and a
    # strict > keeps the first (lowest-id) class on ties, as argmax does
    peak = cam[0].copy()
    top = np.full(peak.shape, keys[0], np.uint8)
    for key, channel in zip(keys[1:], cam[1:], strict=True):
        better = channel > peak
        np.copyto(peak, channel, where=better)
        top[better] = key
    return peak, top


def salient_mask(saliency: np.ndarray, sal_threshold: float = 0.2) -> np.ndarray:
    """S_bin of Algorithm 1: saliency strictly above the threshold."""
    return np.asarray(saliency) > sal_threshold


class ThresholdLabeller:
    """Algorithm 1 for one image and one saliency map (or none), cheap to evaluate at many τ.

    Folds the background comparison into the peak once (pixels whose CAM cannot beat
    their background score get -inf), so each τ costs one comparison and one select.
    ``strict_tau`` (with saliency only): the paper's ``CAM > τ`` instead of the
    released code's ``CAM >= τ``.
    """

    def __init__(
        self,
        peak: np.ndarray,
        top_class: np.ndarray,
        salient: np.ndarray | None = None,
        ignore_salient_bg: bool = True,
        strict_tau: bool = False,
    ):
        self.top_class = top_class
        if salient is None:
            self.peak = peak  # the background score is τ itself: a class wins iff its CAM > τ
            self.fallback = np.uint8(0)
            self.keep_at_tau = False
            return
        # the class score is zeroed only below τ, so a CAM equal to τ still competes
        self.keep_at_tau = not strict_tau
        if salient.shape != peak.shape:
            raise ValueError(f"saliency shape {salient.shape} does not match the CAM's {peak.shape}")
        # background score 1 - S_bin: 1 on non-salient pixels, 0 on salient ones
        beats_background = np.where(salient, peak > 0, peak > 1)
        self.peak = np.where(beats_background, peak, np.float32(-np.inf)).astype(np.float32, copy=False)
        self.fallback = np.where(salient, np.uint8(IGNORE), np.uint8(0)) if ignore_salient_bg else np.uint8(0)

    def __call__(self, tau: float) -> np.ndarray:
        _check_tau(tau)
        tau32 = np.float32(tau)  # the reference compares its float32 maps with a float32 τ
        wins = self.peak >= tau32 if self.keep_at_tau else self.peak > tau32
        return np.where(wins, self.top_class, self.fallback).astype(np.uint8, copy=False)


def threshold_pseudo_label(
    cam: np.ndarray,
    keys: np.ndarray,
    tau: float,
    saliency: np.ndarray | None = None,
    sal_threshold: float = 0.2,
    ignore_salient_bg: bool = True,
    strict_tau: bool = False,
) -> np.ndarray:
    """Seed 000's Algorithm 1 → uint8 H×W label map (class ids from ``keys``, 255 = ignore).

    ``cam``: len(keys)×H×W scores in [0, 1] of the present classes; ``saliency``:
    H×W in [0, 1], binarised at ``sal_threshold``. Without saliency the background
    score is the constant τ; with it, salient pixels that end as background become
    255 when ``ignore_salient_bg``. With saliency a CAM equal to τ keeps its class
    score, as in WSSS-BED's code; ``strict_tau=True`` follows the paper (CAM > τ).
    """
    peak, top_class = cam_peak(cam, keys)
    salient = None if saliency is None else salient_mask(saliency, sal_threshold)
    return ThresholdLabeller(peak, top_class, salient, ignore_salient_bg, strict_tau)(tau)


def _check_tau(tau: float) -> None:
    # a negative τ would let a zeroed class score beat the τ background (Algorithm 1 assumes τ >= 0)
    if not (np.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")


# --------------------------------------------------------------------------- file helpers
def load_checked_cam(
    dataset: Dataset, cam_dir: str | Path, image_id: str, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The image's CAM, refused unless its classes are exactly the image-level labels."""
    path = find_cam(cam_dir, image_id)
    keys, cam = load_cam(path, shape=shape, num_classes=dataset.num_classes)
    labels = dataset.labels(image_id)
    if not np.array_equal(np.sort(keys), labels):
        raise WsssError(
            f"{path}: CAM classes {keys.tolist()} do not match the image-level labels {labels.tolist()} "
            f"of image {image_id!r}"
        )
    return keys, cam


def _saliency_file(saliency_dir: str | Path, image_id: str) -> Path:
    return Path(saliency_dir) / f"{image_id}.png"


def make_pseudo_labels(
    dataset: Dataset,
    cam_dir: str | Path,
    out_dir: str | Path,
    tau: float,
    saliency_dir: str | Path | None = None,
    sal_threshold: float = 0.2,
    ignore_salient_bg: bool = True,
    shard: str | tuple[int, int] | None = None,
    progress: bool = True,
    force: bool = False,
    strict_tau: bool = False,
) -> Path:
    """Stage 3 (threshold): write ``out_dir/<id>.png`` for the images of this shard.

    ``strict_tau``: see :func:`threshold_pseudo_label` (matters only with saliency).

    Existing outputs are kept (resume) when the settings and the CAM/saliency files are
    those that made them (else refused; ``force`` recomputes); a ``run.json``
    (``run.shard<i>of<N>.json`` when sharded) records every parameter.
    """
    _check_tau(tau)
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    if not cam_dir.is_dir():
        raise WsssError(f"{cam_dir}: CAM folder not found")
    if saliency_dir is not None and not Path(saliency_dir).is_dir():
        raise WsssError(f"{saliency_dir}: saliency folder not found")
    shard = parse_shard(shard)
    settings = {
        **dataset_settings(dataset),
        "tau": float(tau),
        "sal_threshold": float(sal_threshold) if saliency_dir is not None else None,
        "ignore_salient_bg": bool(ignore_salient_bg) if saliency_dir is not None else None,
        "strict_tau": bool(strict_tau) if saliency_dir is not None else None,
    }
    inputs = {"cams": cam_dir, "saliency": saliency_dir}
    with stage_run(out_dir, "pseudo", settings, inputs, force=force, shard=shard) as run:
        ids = shard_list(list(dataset.ids), shard)
        written = skipped = 0
        for image_id in tqdm(ids, desc="pseudo labels", unit="img", disable=not progress):
            out_path = out_dir / f"{image_id}.png"
            if out_path.is_file():
                skipped += 1
                continue
            shape = image_size(dataset.image_path(image_id))
            keys, cam = load_checked_cam(dataset, cam_dir, image_id, shape)
            saliency = None
            if saliency_dir is not None:
                saliency = load_saliency(_saliency_file(saliency_dir, image_id), shape=shape)
            label = threshold_pseudo_label(
                cam, keys, tau, saliency, sal_threshold, ignore_salient_bg, strict_tau
            )
            save_label(out_path, label)
            written += 1
        run.finish(
            {
                **settings,
                "split": dataset.split,
                **run.input_paths(cam_dir="cams", saliency_dir="saliency"),
                "shard": f"{shard[0]}/{shard[1]}",
            },  # fmt: skip
            extra={
                "method": "threshold",
                "num_images": len(ids),
                "written": written,
                "skipped_existing": skipped,
            },
        )
    return out_dir
