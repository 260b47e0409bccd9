"""CAM inference with test-time augmentation (docs/methods.md §1) → ``<id>.npz`` per image.

For each scale × {identity, h-flip}: relu(F), flip back, sum; keep the image's classes;
divide each map by its max + 1e-5. Two geometries put the passes back on the image:

- ``reference`` (default; IRN ``step/make_cam.py``, P-NOC ``scripts/cam/inference.py``): the
  uint8 image is rescaled with PIL bicubic before normalising, and each scale's map is
  resized bilinearly to the image size rounded up to a multiple of the network's output
  stride, then cropped to H×W, so that map cells keep their place on the pixel grid;
- ``resize`` (this toolkit before): the normalised image is resized bilinearly and each
  map straight to H×W, which squeezes the ⌈H/stride⌉ cells onto H px: cells drift towards
  the origin, by up to a stride at the far edge.

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
from PIL import Image
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
GEOMETRIES = ("reference", "resize")
DEFAULT_GEOMETRY = "reference"


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(h, w) of an image rescaled by ``scale``: rounded half to even, as the reference
    repositories round (``np.round``/``round``), at least 1 px."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def strided_up_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """The image size rounded up to a multiple of ``stride``: the extent a map of ⌈H/stride⌉
    cells covers, so that resizing to it and cropping keeps each cell on its pixels."""
    return -(-height // stride) * stride, -(-width // stride) * stride


def pil_rescale(pixels: np.ndarray, scale: float) -> np.ndarray:
    """uint8 H×W×3 rescaled with PIL bicubic (antialiased when shrinking), as the reference
    inference does before normalising; OpenCV's or torch's bicubic give other pixels."""
    height, width = scaled_size(*pixels.shape[:2], scale)
    if (height, width) == pixels.shape[:2]:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC))


def tta_sum(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scales: Sequence[float],
    flip: bool,
    rescaled: Callable[[float], torch.Tensor] | None = None,
    stride: int = 1,
) -> tuple[torch.Tensor, int]:
    """Sum of ``forward`` (B'×K×h×w maps of a B'×3×h×w batch) over scales × flips, each pass
    un-flipped and taken back to the images' H×W; returns (sum, number of passes). The one
    test-time augmentation of CAM inference and segmentation prediction.

    ``rescaled(scale)`` gives the network's input at a scale (default: ``images`` resized
    bilinearly). Each pass is resized to H×W rounded up to a multiple of ``stride`` and cropped
    to H×W; the default stride 1 resizes straight to H×W.
    """
    batch, _, height, width = images.shape
    up_size = strided_up_size(height, width, stride)
    total = None
    for scale in scales:
        size = scaled_size(height, width, scale)
        if rescaled is not None:
            x = rescaled(scale)
        elif size == (height, width):
            x = images
        else:
            x = F.interpolate(images, size, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        maps = forward(x)
        if flip:
            maps = maps[:batch] + maps[batch:].flip(-1)
        if maps.shape[-2:] != up_size:
            maps = F.interpolate(maps, up_size, mode="bilinear", align_corners=False)
        maps = maps[..., :height, :width]
        total = maps if total is None else total + maps
    if total is None:
        raise WsssError("test-time augmentation needs at least one scale")
    return total, len(scales) * (2 if flip else 1)


def tta_cams(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float],
    flip: bool,
    rescaled: Callable[[float], torch.Tensor] | None = None,
    stride: int = 1,
) -> torch.Tensor:
    """Summed relu'd class maps B×C×H×W of normalised images B×3×H×W (not yet max-normalised);
    ``rescaled`` and ``stride`` as in :func:`tta_sum` (the defaults: the ``resize`` geometry).

    ``model(x)`` must return ``(logits, maps)`` like :class:`wsss.models.CamNet`; maps beyond
    the logits' classes (a background map, stored last) are dropped.
    """

    def forward(x: torch.Tensor) -> torch.Tensor:
        logits, maps = model(x)[:2]
        # a model with a background map (EPS, SMVWE) returns C+1 maps: keep the C foreground ones
        return torch.relu(maps[:, : logits.shape[1]].float())

    return tta_sum(forward, images, scales, flip, rescaled, stride)[0]


def image_cams(
    model: nn.Module,
    pixels: np.ndarray,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    geometry: str = DEFAULT_GEOMETRY,
) -> torch.Tensor:
    """Summed relu'd class maps B×C×H×W of uint8 images B×H×W×3 of one size (see the module
    docstring for ``geometry``). The model's ``meta_info`` mean/std (0..1 scale) normalise
    the pixels; the ``reference`` geometry reads its ``output_stride``."""
    if geometry not in GEOMETRIES:
        raise WsssError(f"geometry must be one of {list(GEOMETRIES)}, got {geometry!r}")
    device = next(model.parameters()).device
    mean = torch.tensor(model.meta_info["mean"], device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(model.meta_info["std"], device=device).view(1, 3, 1, 1) * 255.0

    def normalised(batch: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float() - mean) / std

    images = normalised(pixels)
    if geometry == "resize":
        return tta_cams(model, images, scales, flip)

    def rescaled(scale: float) -> torch.Tensor:
        if scaled_size(*pixels.shape[1:3], scale) == pixels.shape[1:3]:
            return images
        return normalised(np.stack([pil_rescale(p, scale) for p in pixels]))

    return tta_cams(model, images, scales, flip, rescaled, stride=int(model.output_stride))


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
    geometry: str = DEFAULT_GEOMETRY,
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
    from the i-th (default: RANK/WORLD_SIZE from the environment). ``geometry``: ``reference``
    (IRN's / P-NOC's) or ``resize`` (see the module docstring). Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise WsssError(f"{out_dir}: scales must be a non-empty list of positive numbers, got {scales}")
    if batch_size < 1:
        raise WsssError(f"{out_dir}: batch_size must be >= 1, got {batch_size}")
    if geometry not in GEOMETRIES:
        raise WsssError(f"{out_dir}: geometry must be one of {list(GEOMETRIES)}, got {geometry!r}")
    all_ids = dataset.select_ids(ids)
    shard = parse_shard(shard)
    mine = shard_list(all_ids, shard)
    weights_file = model_weights_path(model_path)
    if not weights_file.is_file():
        raise WsssError(f"{weights_file}: CAM model not found")
    settings = {"scales": list(scales), "flip": flip, **dataset_settings(dataset)}
    if geometry != "resize":  # absent for ``resize``, so folders made before the option resume with it
        settings["geometry"] = geometry
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
            bar = tqdm(
                total=len(todo), desc="infer cams", unit="img", disable=not progress, dynamic_ncols=True
            )
            with torch.inference_mode():
                for chunk in batches_of_equal_size(dataset, todo, batch_size):
                    pixels = np.stack([dataset.image(i) for i in chunk])
                    cams = image_cams(model, pixels, scales, flip, geometry)
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
                "geometry": geometry,
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
