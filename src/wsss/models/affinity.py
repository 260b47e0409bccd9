"""The inter-pixel affinity (edge) network of IRN and the path affinity it defines (docs/methods.md §3).

The net predicts one boundary map ``edge`` in [0, 1] at 1/4 of the image resolution, and the
affinity of two cells i, j within a radius is ``a_ij = 1 − max edge on the path from i to j``
(IRN's path: the cells less than one cell from the line through i and j, :func:`path_points`)
— so a single boundary map yields every pairwise affinity, and two cells have a high
affinity exactly when no boundary separates them. Training (:mod:`wsss.pseudo.affinity`)
and the random walk (:mod:`wsss.pseudo.random_walk`) both go through :func:`path_affinity`.

Pairs follow IRN's "path index": since ``a_ij = a_ji`` only the offsets of one half-disk
are kept (:func:`half_offsets`), and the source cells are the ones from which every such
offset stays inside the map (IRN's cropped source region), so each offset is one shifted
slice of the map and all pairs form a dense ``B × O × h' × w'`` tensor.
"""

from __future__ import annotations

import functools
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

MODEL_FORMAT = "wsss-affinity-1"
EDGE_STRIDE = 4
SIDE_CHANNELS = 32
DEFAULT_SIDE_INDICES = (0, 1, 2, 3, 4)  # IRN's five side outputs (resnet-style backbones)


class AffinityNet(nn.Module):
    """IRN's edge branch on a timm backbone: each side feature map → 1×1 conv (32) →
    GroupNorm → resized to stride 4 → ReLU; concatenated → 1×1 conv → edge logit.

    ``frozen_backbone`` keeps the backbone fixed (IRN, which starts from ImageNet weights);
    from scratch the backbone must learn too. ``side_indices``: the backbone stages used.
    """

    def __init__(
        self,
        backbone: str,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        output_stride: int = 16,
        side_indices: tuple[int, ...] = DEFAULT_SIDE_INDICES,
        frozen_backbone: bool = False,
    ):
        super().__init__()
        self.backbone_name = backbone
        self.output_stride = output_stride
        self.side_indices = tuple(int(i) for i in side_indices)
        self.frozen_backbone = frozen_backbone
        self.backbone, _ = build_backbone(backbone, pretrained, weights, output_stride, self.side_indices)
        self.reductions = list(self.backbone.feature_info.reduction())
        self.pad_multiple = max(max(self.reductions), EDGE_STRIDE)
        self.sides = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, SIDE_CHANNELS, 1, bias=False), nn.GroupNorm(4, SIDE_CHANNELS))
            for c in self.backbone.feature_info.channels()
        )
        self.fuse = nn.Conv2d(SIDE_CHANNELS * len(self.sides), 1, 1, bias=True)
        if frozen_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> AffinityNet:
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()  # frozen BatchNorm statistics too
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Edge logits B×1×⌈H/4⌉×⌈W/4⌉ (sigmoid gives the boundary map)."""
        height, width = x.shape[-2:]
        m = self.pad_multiple
        pad_h, pad_w = (-height) % m, (-width) % m
        if pad_h or pad_w:  # whole feature cells: every side map aligns exactly with the stride-4 grid
            x = F.pad(x, (0, pad_w, 0, pad_h))
        grid = ((height + pad_h) // EDGE_STRIDE, (width + pad_w) // EDGE_STRIDE)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_backbone):
            maps = self.backbone(x)
        sides = []
        for side, fmap in zip(self.sides, maps, strict=True):
            s = side(fmap)
            if s.shape[-2:] != grid:
                if s.shape[-2] > grid[0]:
                    s = F.adaptive_avg_pool2d(s, grid)
                else:
                    s = F.interpolate(s, grid, mode="bilinear", align_corners=False)
            sides.append(F.relu(s))
        logits = self.fuse(torch.cat(sides, dim=1))
        return logits[..., : -(-height // EDGE_STRIDE), : -(-width // EDGE_STRIDE)]

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone params — empty when frozen —, head params)."""
        backbone = [] if self.frozen_backbone else list(self.backbone.parameters())
        return backbone, list(self.sides.parameters()) + list(self.fuse.parameters())

    def meta(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "backbone": self.backbone_name,
            "output_stride": self.output_stride,
            "side_indices": list(self.side_indices),
            "frozen_backbone": self.frozen_backbone,
        }


# --------------------------------------------------------------------------- pairs and paths
def half_offsets(radius: int) -> list[tuple[int, int]]:
    """IRN's search directions: (0, dx) for 0 < dx < r, and (dy, dx) for 0 < dy < r with
    dy² + dx² < r². Their negatives are the other half (a_ij = a_ji)."""
    if radius < 2:
        raise WsssError(f"affinity radius must be >= 2, got {radius}")
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        offsets += [(dy, dx) for dx in range(-radius + 1, radius) if dy * dy + dx * dx < radius * radius]
    return offsets


@functools.lru_cache(maxsize=64)
def path_points(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    """The cells of the path from (0, 0) to (dy, dx), both ends included (IRN's rule): the
    cells of the bounding box of the two ends whose centre lies less than one cell from the
    line through them. Exact in integers: the squared distance of (y, x) to the line is
    ``(dy·x − dx·y)² / (dy² + dx²)``, so the test is ``(dy·x − dx·y)² < dy² + dx²``.

    Every cell whose square the segment touches is within √2/2 of the line, so it is on the
    path: no diagonal step slips between two edge cells meeting at a corner."""
    if dy == 0 and dx == 0:
        return ((0, 0),)
    length_sq = dy * dy + dx * dx
    ys = range(min(0, dy), max(0, dy) + 1)
    xs = range(min(0, dx), max(0, dx) + 1)
    return tuple((y, x) for y in ys for x in xs if (dy * x - dx * y) ** 2 < length_sq)


def source_region(height: int, width: int, radius: int) -> tuple[int, int]:
    """(h', w') of the source cells from which every half-disk offset stays in the map."""
    reach = radius - 1
    h_out, w_out = height - reach, width - 2 * reach
    if h_out < 1 or w_out < 1:
        raise WsssError(
            f"a {height}×{width} map is too small for affinity radius {radius}: "
            f"need height >= {radius} and width >= {2 * radius - 1} (use larger crops or a smaller radius)"
        )
    return h_out, w_out


def shifted(x: torch.Tensor, dy: int, dx: int, radius: int) -> torch.Tensor:
    """The map seen from the source region moved by (dy, dx): ``x[..., y + dy, x + dx]`` for
    the source cells ``y in [0, h')``, ``x in [r − 1, r − 1 + w')``."""
    h_out, w_out = source_region(x.shape[-2], x.shape[-1], radius)
    left = radius - 1 + dx
    return x[..., dy : dy + h_out, left : left + w_out]


def path_affinity(edge: torch.Tensor, radius: int) -> torch.Tensor:
    """a = 1 − max edge along the path, for every half-disk offset from every source cell.

    ``edge``: ...×H×W in [0, 1] → ...×O×h'×w' with O = len(half_offsets(radius)), in the
    order of :func:`half_offsets`; pair (o, y, x) joins cell (y, x + r − 1) to that cell
    moved by offset o.
    """
    out = []
    for dy, dx in half_offsets(radius):
        views = [shifted(edge, py, px, radius) for py, px in path_points(dy, dx)]
        out.append(1.0 - functools.reduce(torch.maximum, views))
    return torch.stack(out, dim=-3)


# --------------------------------------------------------------------------- files
def save_affinity_model(
    model: AffinityNet, path: str | os.PathLike, extra_meta: dict[str, Any] | None = None
) -> Path:
    meta = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **(extra_meta or {}), **model.meta()}
    return write_model_files(model, path, meta, MODEL_FORMAT)


def load_affinity_model(
    path_or_dir: str | os.PathLike, device: str | torch.device | None = None
) -> AffinityNet:
    """A trained :class:`AffinityNet` in eval mode; ``.meta_info`` holds its json (mean/std, radius…)."""
    weights_path, meta = read_model_meta(path_or_dir, MODEL_FORMAT, "affinity")
    model = AffinityNet(
        meta["backbone"],
        output_stride=int(meta.get("output_stride", 16)),
        side_indices=tuple(meta.get("side_indices", DEFAULT_SIDE_INDICES)),
        frozen_backbone=bool(meta.get("frozen_backbone", False)),
    )
    return load_model_weights(model, weights_path, meta, "affinity", device)
