"""``wsss refine crf``: dense CRF over a folder of pseudo labels or of CAMs (docs/methods.md §3).

Two inputs, as the WSSS repos use them:

- label maps (``labels_dir``): IRN's label CRF on each pseudo label. The CRF runs over the
  labels present in the image only (background + its classes), so the unary's
  ``(1 − gt_prob)`` is shared among plausible labels rather than all K + 1; ignore pixels
  carry no evidence and receive the label their neighbours pull them to.
- CAMs (``cam_dir`` + ``tau``): the softmax variant. Scores [τ, CAM_1 … CAM_k] (the
  background score is Algorithm 1's constant τ) are normalised to sum 1 per pixel and the
  CRF's marginals are argmax'ed into a label map.

Per-image stage: resume by skipping outputs, ``settings.json`` pins the inputs and CRF
parameters, ``run.json`` records them with the timings.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.data.base import Dataset
from wsss.io import (
    WsssError,
    image_size,
    load_label,
    parse_shard,
    save_label,
    shard_list,
)
from wsss.pseudo.crf import CrfParams, crf_labels, crf_probs
from wsss.pseudo.threshold import load_checked_cam
from wsss.stage import dataset_settings, stage_run

SCORE_EPS = 1e-5


def crf_on_label(
    image: np.ndarray, label: np.ndarray, keys: np.ndarray, params: CrfParams, source=None
) -> np.ndarray:
    """The label CRF over {background} ∪ ``keys`` (1-based classes); other values → ignore."""
    present = np.concatenate([[0], np.asarray(keys, dtype=np.int64)])
    lookup = np.full(256, 255, dtype=np.uint8)
    lookup[present] = np.arange(len(present), dtype=np.uint8)
    compact = lookup[label]
    out = crf_labels(image, compact, num_labels=len(present), params=params, source=source)
    return present.astype(np.uint8)[out]


def crf_on_cam(
    image: np.ndarray, cam: np.ndarray, keys: np.ndarray, tau: float, params: CrfParams, source=None
) -> np.ndarray:
    """The softmax-variant CRF of CAMs (len(keys)×H×W in [0, 1]) with background score τ."""
    scores = np.concatenate([np.full((1, *cam.shape[1:]), tau, np.float32), cam.astype(np.float32)])
    scores = np.maximum(scores, 0.0) + SCORE_EPS
    q = crf_probs(image, scores / scores.sum(axis=0, keepdims=True), params=params, source=source)
    present = np.concatenate([[0], np.asarray(keys, dtype=np.int64)]).astype(np.uint8)
    return present[q.argmax(axis=0)]


def crf_refine(
    dataset: Dataset,
    out_dir: str | os.PathLike,
    labels_dir: str | os.PathLike | None = None,
    cam_dir: str | os.PathLike | None = None,
    tau: float | None = None,
    params: CrfParams | None = None,
    shard: str | tuple[int, int] | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Write CRF-refined label maps ``out_dir/<id>.png`` from ``labels_dir`` (pseudo labels)
    or from ``cam_dir`` with background score ``tau``; exactly one of the two."""
    out_dir = Path(out_dir)
    if (labels_dir is None) == (cam_dir is None):
        raise WsssError(f"{out_dir}: give either a label folder or a CAM folder (with τ) to refine")
    source_dir = Path(labels_dir if labels_dir is not None else cam_dir)
    if not source_dir.is_dir():
        raise WsssError(f"{source_dir}: folder not found")
    if cam_dir is not None and (tau is None or not 0.0 < float(tau) < 1.0):
        raise WsssError(f"{cam_dir}: the CAM CRF needs a background score τ in (0, 1), got {tau}")
    params = params if params is not None else CrfParams()
    shard = parse_shard(shard)
    settings = {
        "input": "labels" if labels_dir is not None else "cams",
        **dataset_settings(dataset),
        "tau": None if tau is None else float(tau),
        "crf": params.to_dict(),
    }
    with stage_run(out_dir, "refine_crf", settings, {"source": source_dir}, force=force, shard=shard) as run:
        mine = shard_list(list(dataset.ids), shard)
        todo = [i for i in mine if not (out_dir / f"{i}.png").is_file()]
        start = time.perf_counter()
        for image_id in tqdm(todo, desc="dense CRF", unit="img", disable=not progress):
            image = dataset.image(image_id)
            keys = dataset.labels(image_id)
            if labels_dir is not None:
                path = source_dir / f"{image_id}.png"
                label = load_label(path, num_classes=dataset.num_classes, shape=image.shape[:2])
                bad = np.setdiff1d(np.unique(label), np.concatenate([[0, 255], keys]))
                if bad.size:
                    raise WsssError(
                        f"{path}: labels {bad.tolist()} are not among the image's classes {keys.tolist()}"
                    )
                refined = crf_on_label(image, label, keys, params, source=path)
            else:
                keys, cam = load_checked_cam(
                    dataset, source_dir, image_id, image_size(dataset.image_path(image_id))
                )
                refined = crf_on_cam(image, cam, keys, float(tau), params, source=source_dir / image_id)
            save_label(out_dir / f"{image_id}.png", refined)
        elapsed = time.perf_counter() - start
        if todo:
            run.finish(
                {**settings, "shard": list(shard)},
                timings={"crf_s": round(elapsed, 2)},
                extra={
                    "dataset": {"kind": dataset.kind, "root": str(dataset.root), "split": dataset.split},
                    "num_ids": len(mine),
                    "written": len(todo),
                    "seconds_per_image": round(elapsed / len(todo), 4),
                },
            )
    return out_dir
