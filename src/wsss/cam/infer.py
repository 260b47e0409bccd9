"""CAM inference with test-time augmentation (docs/methods.md §1) → ``<id>.npz`` per image.

For each scale × {identity, h-flip}: relu(F), flip back, bilinear resize to the
image size, sum; keep the image's classes; divide each map by its max + 1e-5.
The flip pair and images of equal size go through the network as one batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from wsss.data.base import Dataset
from wsss.io import (
    WsssError,
    image_size,
    parse_shard,
    save_cam,
    shard_list,
)
from wsss.models.cam_net import load_cam_model, model_weights_path
from wsss.stage import dataset_settings, stage_run

DEFAULT_SCALES = (0.5, 1.0, 1.5, 2.0)
NORM_EPS = 1e-5


def tta_sum(
    forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, scales: Sequence[float], flip: bool
) -> tuple[torch.Tensor, int]:
    """Sum of ``forward`` (B'×K×h×w maps of a B'×3×h×w batch) over scales × flips, each pass
    un-flipped and resized back to the images' H×W; returns (sum, number of passes). The one
    test-time augmentation of CAM inference and segmentation prediction."""
    batch, _, height, width = images.shape
    total = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = (
            images
            if size == (height, width)
            else F.interpolate(images, size, mode="bilinear", align_corners=False)
        )
        if flip:
            x = torch.cat([x, x.flip(-1)])
        maps = forward(x)
        if flip:
            maps = maps[:batch] + maps[batch:].flip(-1)
        if maps.shape[-2:] != (height, width):
            maps = F.interpolate(maps, (height, width), mode="bilinear", align_corners=False)
        total = maps if total is None else total + maps
    if total is None:
        raise WsssError("test-time augmentation needs at least one scale")
    return total, len(scales) * (2 if flip else 1)


def tta_cams(model: nn.Module, images: torch.Tensor, scales: Sequence[float], flip: bool) -> torch.Tensor:
    """Summed relu'd class maps B×C×H×W of normalised images B×3×H×W (not yet max-normalised).

    ``model(x)`` must return ``(logits, maps)`` like :class:`wsss.models.CamNet`; maps beyond
    the logits' classes (a background map, stored last) are dropped.
    """

    def forward(x: torch.Tensor) -> torch.Tensor:
        logits, maps = model(x)[:2]
        # a model with a background map (EPS, SMVWE) returns C+1 maps: keep the C foreground ones
        return torch.relu(maps[:, : logits.shape[1]].float())

    return tta_sum(forward, images, scales, flip)[0]


def normalize_present(cams: torch.Tensor, keys: np.ndarray) -> torch.Tensor:
    """The maps of the present classes (``keys`` 1-based), each divided by its max + 1e-5."""
    index = torch.as_tensor(np.asarray(keys, dtype=np.int64) - 1, device=cams.device)
    kept = cams.index_select(0, index)
    return kept / (kept.amax(dim=(1, 2), keepdim=True) + NORM_EPS)


def batches_of_equal_size(dataset: Dataset, ids: list[str], batch_size: int) -> list[list[str]]:
    """Group ids by image size (header reads only), keeping the order within a size."""
    groups: dict[tuple[int, int], list[str]] = {}
    for image_id in ids:
        groups.setdefault(image_size(dataset.image_path(image_id)), []).append(image_id)
    return [g[k : k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]


def infer_cams(
    dataset: Dataset,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    shard: tuple[int, int] | str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    progress: bool = True,
    ids: Sequence[str] | None = None,
    force: bool = False,
) -> Path:
    """Write ``out_dir/<id>.npz`` (keys 1-based, cam float16 in [0, 1]) for ``ids`` (default: all).

    Existing outputs are skipped (resume) while the model and settings are those that made
    them (else refused; ``force`` recomputes all); ``shard=(i, N)`` or ``"i/N"`` takes every N-th id
    from the i-th (default: RANK/WORLD_SIZE from the environment). Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise WsssError(f"{out_dir}: scales must be a non-empty list of positive numbers, got {scales}")
    if batch_size < 1:
        raise WsssError(f"{out_dir}: batch_size must be >= 1, got {batch_size}")
    all_ids = dataset.select_ids(ids)
    shard = parse_shard(shard)
    mine = shard_list(all_ids, shard)
    weights_file = model_weights_path(model_path)
    if not weights_file.is_file():
        raise WsssError(f"{weights_file}: CAM model not found")
    settings = {"scales": list(scales), "flip": flip, **dataset_settings(dataset)}
    with stage_run(out_dir, "cam_infer", settings, {"model": weights_file}, digests=("model",), force=force,
                   shard=shard) as run:  # fmt: skip
        todo = [i for i in mine if not (out_dir / f"{i}.npz").is_file()]
        start = time.perf_counter()
        if todo:
            model = load_cam_model(model_path, device)
            model_file = Path(model_path)
            if model.num_classes != dataset.num_classes - 1:
                raise WsssError(
                    f"{model_file}: model has {model.num_classes} classes but {dataset.root} has "
                    f"{dataset.num_classes - 1} foreground classes"
                )
            dev = next(model.parameters()).device
            mean = torch.tensor(model.meta_info["mean"], device=dev).view(1, 3, 1, 1) * 255.0
            std = torch.tensor(model.meta_info["std"], device=dev).view(1, 3, 1, 1) * 255.0
            bar = tqdm(
                total=len(todo), desc="infer cams", unit="img", disable=not progress, dynamic_ncols=True
            )
            with torch.inference_mode():
                for chunk in batches_of_equal_size(dataset, todo, batch_size):
                    pixels = np.stack([dataset.image(i) for i in chunk])
                    images = torch.from_numpy(pixels).to(dev).permute(0, 3, 1, 2).float()
                    cams = tta_cams(model, (images - mean) / std, scales, flip)
                    for image_id, cam in zip(chunk, cams, strict=True):
                        keys = dataset.labels(image_id)
                        save_cam(
                            out_dir / f"{image_id}.npz", keys, normalize_present(cam, keys).cpu().numpy()
                        )
                    bar.update(len(chunk))
            bar.close()
        elapsed = time.perf_counter() - start
        if not todo:
            return out_dir  # nothing new: keep the record of the run that wrote these CAMs
        index, count = shard
        run.finish(
            {
                "model": str(model_path),
                "scales": list(scales),
                "flip": flip,
                "batch_size": batch_size,
                "shard": [index, count],
            },
            timings={"infer_s": round(elapsed, 2)},
            extra={
                "dataset": {"kind": dataset.kind, "root": str(dataset.root), "split": dataset.split},
                "num_ids": len(mine),
                "written": len(todo),
                "images_per_s": round(len(todo) / elapsed, 2) if todo and elapsed > 0 else None,
            },
        )
    return out_dir
