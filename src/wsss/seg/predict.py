"""Stage 4 inference: segmentation → label PNGs ``<id>.png`` (0 background, VOC palette).

A network with multi-scale inputs (DeepLab-V2 as seed 004 trains it) returns logits fused
over its own scales at its stride; they are upsampled bilinearly (align_corners False) to
the image, softmaxed and argmaxed — the authors' test procedure (``main_ewc.py test``:
the whole image, no flip, no further scales), the default for such a model.

Otherwise (or with explicit ``scales``/``flip``), for each scale × {identity, h-flip}:
resize the image (bilinear), forward, upsample the logits to that input, softmax, flip
back, resize the probabilities to the image, sum; the mean over the passes is a
probability map. Either map is optionally refined by a dense CRF
(:func:`wsss.pseudo.crf.crf_probs`, unary −log p), then argmax. For single-scale networks
the default is DeepLab-V3+'s evaluation set up to 1.5, with flips. The flip pair and
images of equal size go through the network as one batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from wsss.cam.infer import batches_of_equal_size, tta_sum
from wsss.data.base import Dataset
from wsss.io import (
    WsssError,
    parse_shard,
    save_label,
    shard_list,
)
from wsss.models.cam_net import model_weights_path, read_model_meta
from wsss.models.seg_net import MODEL_FORMAT, check_msc_scales, load_seg_model
from wsss.pseudo.crf import CrfParams, crf_probs
from wsss.stage import dataset_settings, stage_run

__all__ = ["DEFAULT_SCALES", "SEG004_CRF_PARAMS", "default_tta", "predict_seg", "tta_probs"]

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
MSC_SCALES = (1.0,)  # a multi-scale-input network does its own scales (seed 004 tests that way)
# the dense CRF of seed 004's ``main_ewc.py crf`` (configs/voc12_deeplabv2.yaml CRF section):
# Gaussian sxy 1 × 3, bilateral sxy 67 / srgb 3 × 4, 10 iterations. Not reproduced: their
# unary clips p at 1e-5 (here 1e-8), and their pairwise image is the mean-subtracted BGR
# array cast to uint8 (negative values wrap), not the RGB image
SEG004_CRF_PARAMS = CrfParams(
    gauss_sxy=1.0, gauss_compat=3.0, bi_sxy=67.0, bi_srgb=3.0, bi_compat=4.0, iterations=10
)


def default_tta(multi_scale: bool) -> tuple[tuple[float, ...], bool]:
    """(scales, flip) when the caller gives none: the whole image once, no flip, for a network
    with multi-scale inputs (the authors' test); else DEFAULT_SCALES with flips."""
    return (MSC_SCALES, False) if multi_scale else (DEFAULT_SCALES, True)


def logits_at_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits upsampled bilinearly (align_corners False) to the input's size;
    a single-scale SegNet already returns them at that size (no resize)."""
    logits = model(x).float()
    if logits.shape[-2:] != x.shape[-2:]:
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def tta_probs(model: nn.Module, images: torch.Tensor, scales: Sequence[float], flip: bool) -> torch.Tensor:
    """Class probabilities B×K×H×W of normalised images B×3×H×W: the softmax averaged over
    scales × flips, each pass taken back to the image's frame and size. One unflipped pass
    at scale 1 is the plain softmax of the logits upsampled to the image."""
    if tuple(scales) == (1.0,) and not flip:
        return torch.softmax(logits_at_input(model, images), dim=1)
    total, passes = tta_sum(lambda x: torch.softmax(logits_at_input(model, x), dim=1), images, scales, flip)
    return total / passes


def predict_seg(
    dataset: Dataset,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    scales: Sequence[float] | None = None,
    flip: bool | None = None,
    crf: bool = False,
    crf_params: CrfParams | None = None,
    shard: tuple[int, int] | str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 4,
    progress: bool = True,
    ids: Sequence[str] | None = None,
    force: bool = False,
) -> Path:
    """Write ``out_dir/<id>.png`` for ``ids`` (default: the whole split); returns ``out_dir``.

    ``scales``/``flip`` None: the model's own test procedure (:func:`default_tta`).
    ``crf_params`` None with ``crf``: seed 004's post-processing CRF (:data:`SEG004_CRF_PARAMS`),
    not the pseudo-label CRF's defaults, since stage 4 follows seed 004's DeepLab code.
    Existing outputs are skipped (resume); the model (sha256), scales, flip and CRF
    settings are pinned in ``settings.json`` so a rerun with others cannot mix outputs;
    ``shard=(i, N)``/``"i/N"`` takes every N-th id from the i-th (default: RANK/WORLD_SIZE).
    """
    out_dir = Path(out_dir)
    if scales is None or flip is None:
        _, meta = read_model_meta(model_path, MODEL_FORMAT, "segmentation")
        default_scales, default_flip = default_tta(bool(check_msc_scales(meta.get("msc_scales"))))
        scales = default_scales if scales is None else scales
        flip = default_flip if flip is None else flip
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise WsssError(f"{out_dir}: scales must be a non-empty list of positive numbers, got {scales}")
    if batch_size < 1:
        raise WsssError(f"{out_dir}: batch_size must be >= 1, got {batch_size}")
    crf_params = crf_params if crf_params is not None else SEG004_CRF_PARAMS
    shard = parse_shard(shard)
    mine = shard_list(dataset.select_ids(ids), shard)
    weights_file = model_weights_path(model_path)
    if not weights_file.is_file():
        raise WsssError(f"{weights_file}: segmentation model not found")
    settings = {
        "scales": list(scales),
        "flip": bool(flip),
        "crf": bool(crf),
        "crf_params": crf_params.to_dict() if crf else None,
        **dataset_settings(dataset),
    }
    with stage_run(out_dir, "seg_predict", settings, {"model": weights_file}, digests=("model",), force=force,
                   shard=shard) as run:  # fmt: skip
        todo = [i for i in mine if not (out_dir / f"{i}.png").is_file()]
        if not todo:
            return out_dir  # nothing new: keep the record of the run that wrote these predictions
        start = time.perf_counter()
        model = load_seg_model(weights_file, device)
        if model.num_classes != dataset.num_classes:
            raise WsssError(
                f"{weights_file}: model predicts {model.num_classes} classes but {dataset.root} has "
                f"{dataset.num_classes} (background included)"
            )
        dev = next(model.parameters()).device
        mean = torch.tensor(model.meta_info["mean"], device=dev).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(model.meta_info["std"], device=dev).view(1, 3, 1, 1) * 255.0
        counts = np.zeros(dataset.num_classes, dtype=np.int64)  # predicted pixels per class
        bar = tqdm(total=len(todo), desc="predict seg", unit="img", disable=not progress, dynamic_ncols=True)
        with torch.inference_mode():
            for chunk in batches_of_equal_size(dataset, todo, batch_size):
                pixels = np.stack([dataset.image(i) for i in chunk])
                images = torch.from_numpy(pixels).to(dev).permute(0, 3, 1, 2).float()
                probs = tta_probs(model, (images - mean) / std, scales, flip).cpu().numpy()
                for image_id, image, prob in zip(chunk, pixels, probs, strict=True):
                    if crf:
                        prob = crf_probs(image, prob, crf_params, source=dataset.image_path(image_id))
                    label = prob.argmax(axis=0).astype(np.uint8)
                    save_label(out_dir / f"{image_id}.png", label)
                    counts += np.bincount(label.reshape(-1), minlength=dataset.num_classes)
                bar.update(len(chunk))
        bar.close()
        elapsed = time.perf_counter() - start
        run.finish(
            {"model": str(model_path), **settings, "batch_size": batch_size, "shard": list(shard)},
            timings={"predict_s": round(elapsed, 2)},
            extra={
                "dataset": {"kind": dataset.kind, "root": str(dataset.root), "split": dataset.split},
                "model": {k: v for k, v in model.meta_info.items() if k != "train_config"},
                "num_ids": len(mine),
                "written": len(todo),
                "class_fractions": (counts / max(int(counts.sum()), 1)).tolist(),
                "images_per_s": round(len(todo) / elapsed, 2) if elapsed > 0 else None,
            },
        )
    return out_dir
