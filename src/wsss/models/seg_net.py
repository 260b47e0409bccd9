"""The segmentation network of stage 4 (docs/methods.md §4) and its on-disk form (safetensors + json).

SegNet = timm backbone (dilated to the configured output stride) + a registered head
(:mod:`wsss.models.seg_heads`). Two forward modes:

* single scale (``msc_scales`` None or [1.0]): the head's logits are upsampled bilinearly
  to the input, so losses and inference work on full-resolution label maps;
* multi-scale inputs (DeepLab-V2 as seed 004's code runs it, e.g. [1.0, 0.5, 0.75]): the
  input is also resized by each further scale, every pass's logits stay at the network's
  stride, and their pixel-wise max is taken at the 1.0 pass's size. Training returns
  every pass's logits then the fused ones (the loss scores each against a label shrunk to
  its size); eval returns the fused logits, which the caller upsamples to the image.

The backbone is built with only the levels the head reads, found from the levels' strides
(a weightless "meta" build of the backbone lists them), so the same head works on any
timm CNN.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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
from wsss.models.seg_heads import build_seg_head, resolve_head_options, seg_head_class

__all__ = [
    "SegNet",
    "backbone_level_strides",
    "check_msc_scales",
    "load_seg_model",
    "multi_scale_logits",
    "save_seg_model",
]

MODEL_FORMAT = "wsss-segnet-1"


def backbone_level_strides(name: str, output_stride: int = 16) -> list[int]:
    """The stride of every feature level of a timm backbone (shallow → deep), without
    allocating its weights; an unknown or unsupported backbone is reported by
    :func:`build_backbone`'s messages."""
    import timm

    try:
        with torch.device("meta"):
            probe = timm.create_model(name, features_only=True, output_stride=output_stride, pretrained=False)
    except Exception:  # timm raises many types; build_backbone words them for the user
        build_backbone(name, False, None, output_stride)
        raise WsssError(f"{name}: cannot list the feature levels of this backbone") from None
    return [int(level["reduction"]) for level in probe.feature_info.info]


def check_msc_scales(scales: Sequence[float] | None) -> tuple[float, ...]:
    """Normalised multi-scale-input scales; () means one pass upsampled to the input."""
    if scales is None:
        return ()
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise WsssError(f"msc_scales must be a list of numbers, got {scales!r}") from None
    if values == (1.0,):
        return ()
    if not values or values[0] != 1.0 or min(values) <= 0 or len(set(values)) != len(values):
        raise WsssError(
            f"msc_scales must start with 1.0 (the pass whose size the fusion takes) and list distinct "
            f"positive scales, got {list(scales)}"
        )
    return values


def multi_scale_logits(
    base: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scales: Sequence[float]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(each pass's logits, their pixel-wise max at the first pass's size) for inputs ``x``
    resized by ``scales`` (the first must be 1.0: ``x`` itself).

    The resizing repeats seed 004's DeepLab-V2 wrapper exactly: ``F.interpolate`` with
    ``scale_factor`` (size floor(H·s), sampling positions from s itself), bilinear,
    align_corners False; each smaller map is brought to the 1.0 map's size the same way and
    ``torch.max`` picks the fused value (its gradient goes to one pass per pixel, as there).
    """
    outputs = [
        base(
            x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        )
        for scale in scales
    ]
    size = outputs[0].shape[-2:]
    aligned = [
        o if o.shape[-2:] == size else F.interpolate(o, size=size, mode="bilinear", align_corners=False)
        for o in outputs
    ]
    return outputs, torch.max(torch.stack(aligned), dim=0).values


class SegNet(nn.Module):
    def __init__(
        self,
        backbone: str,
        num_classes: int,
        head: str = "deeplab-v2",
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        output_stride: int = 16,
        head_options: dict[str, Any] | None = None,
        msc_scales: Sequence[float] | None = None,
    ):
        """``num_classes`` counts every label-map class, background included (unlike
        :class:`~wsss.models.cam_net.CamNet`, which counts the foreground ones).
        ``msc_scales``: see the module docstring (None or [1.0]: single scale)."""
        super().__init__()
        if num_classes < 2:
            raise WsssError(
                f"{backbone}: a segmentation net needs >= 2 classes (background included), got {num_classes}"
            )
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.head_name = head
        self.output_stride = output_stride
        self.msc_scales = check_msc_scales(msc_scales)
        self.head_options = resolve_head_options(head, head_options)
        strides = backbone_level_strides(backbone, output_stride)
        self.levels = tuple(int(i) for i in seg_head_class(head).feature_levels(strides, self.head_options))
        self.backbone, _ = build_backbone(backbone, pretrained, weights, output_stride, self.levels)
        self.level_strides = list(self.backbone.feature_info.reduction())
        self.head = build_seg_head(
            head, self.backbone.feature_info.channels(), num_classes, self.head_options
        )

    @property
    def multi_scale(self) -> bool:
        return bool(self.msc_scales)

    def strided_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits at the head's stride (one pass, no resizing)."""
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Single scale: logits B×K×H×W at the input's size. Multi-scale inputs: in training
        the list [each scale's logits…, fused], in eval the fused logits at the 1.0 pass's
        (strided) size."""
        if self.multi_scale:
            outputs, fused = multi_scale_logits(self.strided_logits, x, self.msc_scales)
            return [*outputs, fused] if self.training else fused
        logits = self.strided_logits(x)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone params, head params): the newly initialised head trains at a higher LR."""
        return list(self.backbone.parameters()), list(self.head.parameters())

    def meta(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "backbone": self.backbone_name,
            "num_classes": self.num_classes,
            "head": self.head_name,
            "head_options": self.head_options,
            "output_stride": self.output_stride,
            "msc_scales": list(self.msc_scales) or [1.0],
        }


def save_seg_model(model: SegNet, path: str | os.PathLike, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write the weights and the json :func:`load_seg_model` needs."""
    meta = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **(extra_meta or {}), **model.meta()}
    return write_model_files(model, path, meta, MODEL_FORMAT)


def load_seg_model(path_or_dir: str | os.PathLike, device: str | torch.device | None = None) -> SegNet:
    """A trained :class:`SegNet` in eval mode; ``.meta_info`` holds its json (mean/std, classes…)."""
    weights_path, meta = read_model_meta(path_or_dir, MODEL_FORMAT, "segmentation")
    meta_path = weights_path.with_suffix(".json")
    missing = [k for k in ("backbone", "num_classes", "head") if k not in meta]
    if missing:
        raise WsssError(f"{meta_path}: missing key(s) {missing}")
    try:
        model = SegNet(
            meta["backbone"],
            int(meta["num_classes"]),
            meta["head"],
            output_stride=int(meta.get("output_stride", 16)),
            head_options=meta.get("head_options"),
            msc_scales=meta.get("msc_scales"),  # absent in older models: single scale
        )
    except WsssError as e:
        raise WsssError(f"{meta_path}: cannot rebuild the network ({e})") from None
    meta = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **meta}
    return load_model_weights(model, weights_path, meta, "segmentation", device)
