"""The segmentation network of stage 4 (docs/methods.md §4) and its on-disk form (safetensors + json).

SegNet = timm backbone (last stage dilated, output stride 16) + a registered head
(:mod:`wsss.models.seg_heads`); the head's logits are upsampled bilinearly to the input, so
losses and inference work on full-resolution label maps. The backbone is built with only
the levels the head reads, found from the levels' strides (a weightless "meta" build of the
backbone lists them), so the same head works on any timm CNN.
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
from wsss.models.seg_heads import build_seg_head, resolve_head_options, seg_head_class

__all__ = ["SegNet", "backbone_level_strides", "load_seg_model", "save_seg_model"]

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
    ):
        """``num_classes`` counts every label-map class, background included (unlike
        :class:`~wsss.models.cam_net.CamNet`, which counts the foreground ones)."""
        super().__init__()
        if num_classes < 2:
            raise WsssError(
                f"{backbone}: a segmentation net needs >= 2 classes (background included), got {num_classes}"
            )
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.head_name = head
        self.output_stride = output_stride
        self.head_options = resolve_head_options(head, head_options)
        strides = backbone_level_strides(backbone, output_stride)
        self.levels = tuple(int(i) for i in seg_head_class(head).feature_levels(strides, self.head_options))
        self.backbone, _ = build_backbone(backbone, pretrained, weights, output_stride, self.levels)
        self.level_strides = list(self.backbone.feature_info.reduction())
        self.head = build_seg_head(
            head, self.backbone.feature_info.channels(), num_classes, self.head_options
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits B×K×H×W at the input's size."""
        logits = self.head(self.backbone(x))
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
        )
    except WsssError as e:
        raise WsssError(f"{meta_path}: cannot rebuild the network ({e})") from None
    meta = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **meta}
    return load_model_weights(model, weights_path, meta, "segmentation", device)
