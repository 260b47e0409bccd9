"""C²AM, the class-agnostic activation map of docs/methods.md §2, and its losses.

The network learns, without any label, a map ``a`` that splits every image into two
parts whose pooled features are alike across the batch (all foregrounds look like each
other, all backgrounds too) and unlike each other. Nothing in the loss says which part
is the object, so the polarity is fixed after the first epoch from the image border
(objects rarely touch it) — or, in C²AM-H, by CAM hints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.io import WsssError
from wsss.models.backbone import build_backbone
from wsss.models.cam_net import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_model_weights,
    read_model_meta,
    write_model_files,
)

MODEL_FORMAT = "wsss-c2am-1"
SIM_MIN, SIM_MAX = 5e-4, 0.9995


class C2amNet(nn.Module):
    """features = concat(stage 3, stage 4) → 3×3 conv → BN(1) → logit of ``a``."""

    def __init__(
        self,
        backbone: str,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        output_stride: int = 16,
    ):
        super().__init__()
        self.backbone_name = backbone
        self.output_stride = output_stride
        self.backbone, self.feature_channels = build_backbone(
            backbone, pretrained, weights, output_stride, out_indices=(-2, -1)
        )
        self.head = nn.Sequential(
            nn.Conv2d(self.feature_channels, 1, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(1)
        )
        # set once, after the first epoch: the learnt map marks the background (see module doc)
        self.register_buffer("flipped", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(oriented logits B×1×h×w — sigmoid gives ``a``, high on the foreground —,
        features B×D×h×w)."""
        maps = self.backbone(x)
        size = maps[-1].shape[-2:]
        features = torch.cat(
            [m if m.shape[-2:] == size else F.interpolate(m, size, mode="bilinear") for m in maps], dim=1
        )
        logits = self.head(features)
        return torch.where(self.flipped, -logits, logits), features

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return list(self.backbone.parameters()), list(self.head.parameters())

    def meta(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "backbone": self.backbone_name, "output_stride": self.output_stride}


def pooled_fg_bg(a: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fg_i = mean_hw(a·f), bg_i = mean_hw((1 − a)·f): B×D each."""
    a = a.float()
    features = features.float()
    return (a * features).mean(dim=(2, 3)), ((1.0 - a) * features).mean(dim=(2, 3))


def _cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    sim = F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    return sim.clamp(SIM_MIN, SIM_MAX)


def rank_weights(sim: torch.Tensor, alpha: float, first_rank: int = 0) -> torch.Tensor:
    """w_ij = exp(−α·(rank_ij − 1)), ranks of row i counted from ``first_rank`` in
    descending similarity (the first is the row's own entry).

    ``first_rank=0`` is the authors' code (CVI-SZU/CCAM ``SimMaxLoss``): the self pair
    weighs e^α, every weight e^α times the ``first_rank=1`` one (self pair weighs 1)."""
    order = sim.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    positions = torch.arange(sim.shape[1], device=sim.device).expand_as(order) + int(first_rank)
    rank.scatter_(1, order, positions)
    return torch.exp(-alpha * (rank.float() - 1.0))


def sim_max_loss(z: torch.Tensor, alpha: float = 0.25, first_rank: int = 0) -> torch.Tensor:
    """mean_ij w_ij · (−log sim(z_i, z_j)): pulls the batch's foregrounds (or backgrounds)
    together, most strongly towards each row's nearest neighbours."""
    sim = _cosine(z, z)
    return (rank_weights(sim.detach(), alpha, first_rank) * -torch.log(sim)).mean()


def sim_min_loss(bg: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """mean_ij −log(1 − sim(bg_i, fg_j)): pushes every background away from every foreground."""
    return -torch.log(1.0 - _cosine(bg, fg)).mean()


def c2am_loss(
    logits: torch.Tensor, features: torch.Tensor, alpha: float = 0.25, first_rank: int = 0
) -> dict[str, torch.Tensor]:
    """SimMax(fg) + SimMax(bg) + SimMin; needs a batch of at least 2 images."""
    if logits.shape[0] < 2:
        raise WsssError("C²AM: the contrastive loss needs a batch of at least 2 images")
    fg, bg = pooled_fg_bg(torch.sigmoid(logits.float()), features)
    terms = {
        "fg": sim_max_loss(fg, alpha, first_rank),
        "bg": sim_max_loss(bg, alpha, first_rank),
        "neg": sim_min_loss(bg, fg),
    }
    return {"loss": terms["fg"] + terms["bg"] + terms["neg"], **terms}


HINT_RESIZE_MODES = ("bicubic", "area")


def hint_cells(hints: torch.Tensor, size: tuple[int, int], resize: str = "bicubic") -> torch.Tensor:
    """The hint maps B×1×H×W brought to the map's grid ``size``: ``bicubic`` (the authors'
    C²AM-H, lucasdavid/PNOC ``scripts/ccam/train_hints.py``; may overshoot [0, 1] a little)
    or ``area`` (the average of each cell's pixels)."""
    if resize not in HINT_RESIZE_MODES:
        raise WsssError(f"C²AM-H: hint_resize must be one of {list(HINT_RESIZE_MODES)}, got {resize!r}")
    if resize == "bicubic":
        return F.interpolate(hints.float(), size, mode="bicubic", align_corners=False)
    return F.interpolate(hints.float(), size, mode="area")


def hint_loss(
    logits: torch.Tensor, hints: torch.Tensor, threshold: float, smoothing: float, resize: str = "bicubic"
) -> torch.Tensor:
    """C²AM-H: BCE(logit, 1 − smoothing/2) where the CAM hint H ≥ threshold (docs/methods.md §2);
    ``hints`` B×1×H×W in [0, 1] are resized to the map's cells first (:func:`hint_cells`).
    Zero when no cell of the batch is hinted."""
    mask = hint_cells(hints, tuple(logits.shape[-2:]), resize) >= threshold
    if not bool(mask.any()):
        return logits.float().sum() * 0.0  # keeps the graph (DDP) with a zero gradient
    target = torch.full_like(logits.float()[mask], 1.0 - smoothing / 2.0)
    return F.binary_cross_entropy_with_logits(logits.float()[mask], target)


def band_means(a: torch.Tensor, band: int = 4) -> torch.Tensor:
    """The means of ``a`` (B×1×h×w, on the map's own grid) over the batch's first ``band``
    rows, first columns, last rows and last columns: a 4-vector. The authors' polarity rule
    (CVI-SZU/CCAM ``check_positive``) flips when the mean of these four exceeds 0.5."""
    a = a.to(torch.promote_types(a.dtype, torch.float32))[:, 0]
    return torch.stack(
        [a[:, :band, :].mean(), a[:, :, :band].mean(), a[:, -band:, :].mean(), a[:, :, -band:].mean()]
    )


def border_mean(a: torch.Tensor, image_size: tuple[int, int], band: int = 4) -> torch.Tensor:
    """(sum, count) of ``a`` upsampled to the image, over a ``band``-pixel frame (the
    ``epoch_frame`` polarity rule)."""
    up = F.interpolate(a.float(), image_size, mode="bilinear", align_corners=False)
    frame = torch.ones(image_size, dtype=torch.bool, device=a.device)
    frame[band:-band, band:-band] = False
    values = up[:, 0][:, frame]
    return torch.stack([values.sum(), torch.tensor(float(values.numel()), device=a.device)])


def save_c2am_model(
    model: C2amNet, path: str | os.PathLike, extra_meta: dict[str, Any] | None = None
) -> Path:
    meta = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **model.meta(), **(extra_meta or {})}
    meta["flipped"] = bool(model.flipped)
    return write_model_files(model, path, meta, MODEL_FORMAT)


def load_c2am_model(path_or_dir: str | os.PathLike, device: str | torch.device | None = None) -> C2amNet:
    weights_path, meta = read_model_meta(path_or_dir, MODEL_FORMAT, "C²AM")
    model = C2amNet(meta["backbone"], output_stride=int(meta.get("output_stride", 16)))
    return load_model_weights(model, weights_path, meta, "C²AM", device)
