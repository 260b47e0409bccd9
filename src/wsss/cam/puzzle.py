"""Method "puzzle" (Puzzle-CAM, docs/methods.md §1): the CAMs of the whole image should equal
the CAMs of its four 2×2 tiles put back together, which pushes the network to find every
part of an object instead of its single most discriminative part.

The loss pieces live in :class:`PuzzleTerms` (a mixin) so that P-OC and P-NOC reuse them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from wsss.cam.base import CamTrainer, register_cam_method
from wsss.io import WsssError


def linear_ramp(fraction: float, start: float, end: float, duration: float = 1.0) -> float:
    """``start`` → ``end`` linearly while ``fraction`` goes 0 → ``duration``, then ``end``."""
    if duration <= 0:
        return end
    t = min(max(fraction / duration, 0.0), 1.0)
    return start + (end - start) * t


def split_tiles(images: torch.Tensor) -> torch.Tensor:
    """B×C×H×W → 4B×C×(H/2)×(W/2), tile-major (all top-left tiles, then top-right,
    bottom-left, bottom-right), so that the four tiles go through the network in one batch."""
    h, w = images.shape[-2:]
    if h % 2 or w % 2:
        raise WsssError(
            f"puzzle: image size {h}×{w} must be even to split into 2×2 tiles (set crop_size even)"
        )
    hh, hw = h // 2, w // 2
    return torch.cat(
        [
            images[..., :hh, :hw],
            images[..., :hh, hw:],
            images[..., hh:, :hw],
            images[..., hh:, hw:],
        ]
    )


def merge_tiles(tile_maps: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Inverse of :func:`split_tiles`: 4B×C×h×w tile maps → B×C×2h×2w."""
    top_left, top_right, bottom_left, bottom_right = tile_maps.split(batch_size)
    top = torch.cat([top_left, top_right], dim=-1)
    bottom = torch.cat([bottom_left, bottom_right], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def parse_method_options(trainer: CamTrainer, defaults: dict[str, float]) -> dict[str, float]:
    """The config's ``method_options`` over ``defaults``: unknown keys and non-numbers are
    errors, so that a typo in ``--set method_options.alpha_mx=2`` cannot pass silently."""
    given = dict(trainer.config.method_options or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise WsssError(
            f"{trainer.out_dir}: unknown method_options {unknown} for method {trainer.method_name!r}; "
            f"known: {', '.join(f'{k}={v}' for k, v in sorted(defaults.items()))}"
        )
    options = dict(defaults)
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WsssError(f"{trainer.out_dir}: method_options.{key} must be a number, got {value!r}")
        options[key] = float(value)
    return options


class PuzzleTerms:
    """Puzzle-CAM's losses for any :class:`CamTrainer` subclass.

    method_options: ``alpha_max`` (4.0), the final weight of the reconstruction term;
    ``alpha_ramp`` (0.5), the fraction of training over which α rises linearly from 0.
    """

    PUZZLE_OPTIONS: ClassVar[dict[str, float]] = {"alpha_max": 4.0, "alpha_ramp": 0.5}
    options: dict[str, float]

    def puzzle_alpha(self: Any) -> float:
        return linear_ramp(self.train_fraction, 0.0, self.options["alpha_max"], self.options["alpha_ramp"])

    def puzzle_losses(
        self: Any, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({"loss", "cls", "puzzle_cls", "puzzle_re"}, raw maps F of the whole images)."""
        logits, maps = self.train_model(images)
        _tile_logits, tile_maps = self.train_model(split_tiles(images))
        merged = merge_tiles(tile_maps, images.shape[0])
        if merged.shape[-2:] != maps.shape[-2:]:  # tiles not a multiple of the stride: align the grids
            merged = F.interpolate(merged, size=maps.shape[-2:], mode="bilinear", align_corners=False)
        cls = self.cls_loss(logits, labels)
        puzzle_cls = self.cls_loss(merged.mean(dim=(2, 3)), labels)
        present = labels[:, :, None, None].to(maps.dtype)
        puzzle_re = ((maps - merged).abs() * present).float().mean()
        loss = cls + puzzle_cls + self.puzzle_alpha() * puzzle_re
        return {"loss": loss, "cls": cls, "puzzle_cls": puzzle_cls, "puzzle_re": puzzle_re}, maps


@register_cam_method("puzzle")
class PuzzleCamTrainer(PuzzleTerms, CamTrainer):
    """Puzzle-CAM; see :class:`PuzzleTerms` for its method_options."""

    OPTION_DEFAULTS: ClassVar[dict[str, float]] = PuzzleTerms.PUZZLE_OPTIONS

    def build_models(self) -> None:
        self.options = parse_method_options(self, self.OPTION_DEFAULTS)
        super().build_models()

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        losses, _maps = self.puzzle_losses(batch["image"], batch["label"])
        return losses
