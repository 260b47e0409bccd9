"""Segmentation decoders (heads) and their registry: a new decoder is one more registered class.

A head declares which backbone levels it reads (:meth:`SegHead.feature_levels`, chosen from
the levels' strides so that it works on any timm backbone), takes their channel counts,
and turns the maps into class logits at the stride of its finest input;
:class:`wsss.models.seg_net.SegNet` upsamples them to the image. Options are validated
against the head's ``option_defaults`` and stored, resolved, with the weights, so a saved
model rebuilds exactly even if a default changes later.

A SegFormer-style head would return every level from ``feature_levels`` and fuse them
(see ``tests/test_seg_models.py`` for a multi-level head registered from outside).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.io import WsssError

__all__ = [
    "SEG_HEADS",
    "DeepLabV2Head",
    "DeepLabV3PlusHead",
    "SegHead",
    "build_seg_head",
    "register_seg_head",
    "resolve_head_options",
    "seg_head_class",
]

SEG_HEADS: dict[str, type[SegHead]] = {}


def register_seg_head(name: str) -> Callable[[type[SegHead]], type[SegHead]]:
    def deco(cls: type[SegHead]) -> type[SegHead]:
        SEG_HEADS[name] = cls
        cls.head_name = name
        return cls

    return deco


def seg_head_class(name: str) -> type[SegHead]:
    if name not in SEG_HEADS:
        raise WsssError(f"unknown segmentation head {name!r}; known: {', '.join(sorted(SEG_HEADS))}")
    return SEG_HEADS[name]


def resolve_head_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """The head's defaults updated with ``options`` (unknown keys are an error), JSON-ready."""
    cls = seg_head_class(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(cls.option_defaults))
    if unknown:
        raise WsssError(f"head {name!r}: unknown option(s) {unknown}; known: {sorted(cls.option_defaults)}")
    resolved = {**cls.option_defaults, **options}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}


def build_seg_head(
    name: str, in_channels: Sequence[int], num_classes: int, options: dict[str, Any] | None = None
) -> SegHead:
    return seg_head_class(name)(in_channels, num_classes, **resolve_head_options(name, options))


def _rates(rates: Any, head: str) -> tuple[int, ...]:
    try:
        values = tuple(int(r) for r in rates)
    except (TypeError, ValueError):
        raise WsssError(f"head {head!r}: rates must be a list of integers, got {rates!r}") from None
    if not values or min(values) < 1:
        raise WsssError(f"head {head!r}: rates must be a non-empty list of integers >= 1, got {rates!r}")
    return values


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SegHead(nn.Module):
    """Base class: subclasses set ``option_defaults``, may override :meth:`feature_levels`,
    and implement ``forward(features) -> logits`` (features in the order of the levels)."""

    head_name = "base"
    option_defaults: dict[str, Any] = {}

    @classmethod
    def feature_levels(cls, reductions: Sequence[int], options: dict[str, Any]) -> tuple[int, ...]:
        """Indices into the backbone's levels (shallow → deep, with strides ``reductions``)
        of the maps this head reads; by default the deepest one."""
        return (len(reductions) - 1,)

    def __init__(self, in_channels: Sequence[int], num_classes: int, **options: Any):
        super().__init__()
        if num_classes < 2:
            raise WsssError(
                f"head {self.head_name!r}: need >= 2 classes (background included), got {num_classes}"
            )
        self.in_channels = [int(c) for c in in_channels]
        self.num_classes = num_classes


@register_seg_head("deeplab-v2")
class DeepLabV2Head(SegHead):
    """DeepLab-V2's ASPP classifier: one 3×3 conv per rate (6/12/18/24), each straight to the
    classes, outputs summed. Init N(0, 0.01), bias 0, as the reference implementations.

    The rates were chosen for output stride 8 on 321-px crops; at output stride 16 on small
    crops a branch whose rate exceeds the map reduces to its centre tap (a 1×1 conv).
    """

    option_defaults = {"rates": [6, 12, 18, 24]}

    def __init__(self, in_channels: Sequence[int], num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__(in_channels, num_classes)
        self.rates = _rates(rates, self.head_name)
        channels = self.in_channels[-1]
        self.branches = nn.ModuleList(
            nn.Conv2d(channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in self.rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        return torch.stack([branch(x) for branch in self.branches]).sum(dim=0)


class ASPP(nn.Module):
    """DeepLab-V3's ASPP: 1×1 conv, one atrous 3×3 conv per rate and image pooling, each
    conv-BN-ReLU to ``channels``; concatenated, projected by 1×1 conv-BN-ReLU, dropout.

    The pooling branch has no BatchNorm: on a 1×1 map, BN in training needs more than one
    image per forward, and gradient accumulation may legitimately forward one at a time.
    """

    def __init__(self, in_ch: int, channels: int, rates: Sequence[int], dropout: float):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_ch, channels, 1)] + [_conv_bn_relu(in_ch, channels, 3, r) for r in rates]
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, channels, 1, bias=True), nn.ReLU(inplace=True)
        )
        self.project = nn.Sequential(
            _conv_bn_relu(channels * (len(rates) + 2), channels, 1), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


@register_seg_head("deeplab-v3plus")
class DeepLabV3PlusHead(SegHead):
    """DeepLab-V3+: ASPP (rates 6/12/18 at output stride 16) on the last map; the decoder
    reduces a stride-``low_stride`` backbone map to ``low_channels``, concatenates it with
    the upsampled ASPP output, refines with two 3×3 conv-BN-ReLU and classifies (1×1)."""

    option_defaults = {
        "rates": [6, 12, 18],
        "channels": 256,
        "low_channels": 48,
        "low_stride": 4,
        "dropout": 0.1,
    }

    @classmethod
    def feature_levels(cls, reductions: Sequence[int], options: dict[str, Any]) -> tuple[int, ...]:
        stride = int(options.get("low_stride", cls.option_defaults["low_stride"]))
        matches = [i for i, r in enumerate(reductions[:-1]) if r == stride]
        if not matches:
            raise WsssError(
                f"head {cls.head_name!r}: the backbone has no stride-{stride} level below the last "
                f"(level strides {list(reductions)}); set head option low_stride to one of them"
            )
        return matches[-1], len(reductions) - 1  # the deepest map at that stride: the richest features

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        rates: Sequence[int] = (6, 12, 18),
        channels: int = 256,
        low_channels: int = 48,
        low_stride: int = 4,
        dropout: float = 0.1,
    ):
        super().__init__(in_channels, num_classes)
        if len(self.in_channels) != 2:
            raise WsssError(
                f"head {self.head_name!r}: needs 2 feature maps (low, last), got {len(in_channels)}"
            )
        if channels < 1 or low_channels < 1 or not 0.0 <= dropout < 1.0:
            raise WsssError(f"head {self.head_name!r}: need channels, low_channels >= 1 and 0 <= dropout < 1")
        self.low_stride = int(low_stride)
        low_in, high_in = self.in_channels
        self.aspp = ASPP(high_in, channels, _rates(rates, self.head_name), dropout)
        self.reduce = _conv_bn_relu(low_in, low_channels, 1)
        self.refine = nn.Sequential(
            _conv_bn_relu(channels + low_channels, channels, 3), _conv_bn_relu(channels, channels, 3)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low, high = features
        context = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.refine(torch.cat([context, self.reduce(low)], dim=1)))
