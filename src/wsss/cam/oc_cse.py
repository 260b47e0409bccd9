"""Methods "oc-cse" and "p-oc" (docs/methods.md §1): class-specific erasing checked by an
ordinary classifier. The generator's CAM of one present class r softly erases the image;
a frozen classifier trained beforehand must then no longer see r (but still see the
other classes), so the generator learns to cover all of r — and only r.

The erasing term lives in :class:`OcCseTerms` (a mixin) so that P-OC and P-NOC reuse it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from wsss.cam.base import CamTrainer, register_cam_method
from wsss.cam.puzzle import PuzzleTerms, linear_ramp, parse_method_options
from wsss.io import WsssError
from wsss.models.cam_net import CamNet, load_cam_model, model_weights_path


def load_ordinary_classifier(trainer: CamTrainer) -> CamNet:
    """The classifier named by ``config.oc``, on the trainer's device, in eval mode."""
    if not trainer.config.oc:
        raise WsssError(
            f"{trainer.out_dir}: method {trainer.method_name!r} needs an ordinary classifier: set the "
            "`oc` option (--oc PATH) to a finished `cam` training folder or its model.safetensors"
        )
    oc = load_cam_model(trainer.config.oc, device=trainer.device)
    if oc.num_classes != trainer.num_classes:
        raise WsssError(
            f"{model_weights_path(trainer.config.oc)}: ordinary classifier has {oc.num_classes} classes, "
            f"but dataset {trainer.dataset.root} has {trainer.num_classes} foreground classes"
        )
    meta = oc.meta_info
    if [list(map(float, meta["mean"])), list(map(float, meta["std"]))] != [
        list(trainer.config.mean),
        list(trainer.config.std),
    ]:
        raise WsssError(
            f"{model_weights_path(trainer.config.oc)}: ordinary classifier was trained with mean/std "
            f"{meta['mean']}/{meta['std']}, this run normalises with {trainer.config.mean}/{trainer.config.std}"
        )
    if trainer.config.channels_last:
        oc.to(memory_format=torch.channels_last)
    return oc


def draw_present_class(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One present class per image, uniformly, as a B×C one-hot (all zero for an image
    without classes). Drawn on the CPU from the trainer's checkpointed generator so that
    a resumed run draws the same classes."""
    scores = torch.rand(labels.shape, generator=generator).to(labels.device)
    present = labels > 0
    scores = torch.where(present, scores, torch.full_like(scores, -1.0))
    onehot = F.one_hot(scores.argmax(dim=1), labels.shape[1]).to(labels.dtype)
    return onehot * present.any(dim=1, keepdim=True).to(labels.dtype)


def class_map(maps: torch.Tensor, onehot: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """relu(F_r) of the chosen class, upsampled to the image size: B×1×H×W."""
    selected = (maps * onehot[:, :, None, None].to(maps.dtype)).sum(dim=1, keepdim=True)
    return F.interpolate(F.relu(selected), size=size, mode="bilinear", align_corners=False)


def soft_erase_mask(maps: torch.Tensor, onehot: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """m = relu(F_r) upsampled, over (its max across the batch + 1e-5); differentiable."""
    m = class_map(maps, onehot, size)
    return m / (m.max() + 1e-5)


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


class OcCseTerms:
    """The class-specific erasing term for any :class:`CamTrainer` subclass.

    method_options: ``cse_lambda_start`` (0.3) and ``cse_lambda_end`` (1.0), the weight of
    the term, rising linearly over the whole training.
    """

    CSE_OPTIONS: ClassVar[dict[str, float]] = {"cse_lambda_start": 0.3, "cse_lambda_end": 1.0}
    options: dict[str, float]
    oc: CamNet

    def build_oc(self: Any, trainable: bool = False) -> None:
        self.oc = load_ordinary_classifier(self)
        self.oc.eval()  # BatchNorm statistics stay those of the ordinary classifier
        set_trainable(self.oc, trainable)

    def cse_lambda(self: Any) -> float:
        return linear_ramp(
            self.train_fraction, self.options["cse_lambda_start"], self.options["cse_lambda_end"]
        )

    def cse_loss(
        self: Any, images: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cls(oc(x·(1 − m)), y without r), the one-hot of r). The oc's weights take no
        gradient; the generator gets it through m."""
        onehot = draw_present_class(labels, self.generator)
        mask = soft_erase_mask(maps, onehot, images.shape[-2:])
        self.oc.eval()
        logits, _ = self.oc(images * (1.0 - mask.to(images.dtype)))
        return self.cls_loss(logits, labels * (1.0 - onehot)), onehot


@register_cam_method("oc-cse")
class OcCseTrainer(OcCseTerms, CamTrainer):
    """OC-CSE: cls(GAP F, y) + λ_cse · CSE term; see :class:`OcCseTerms` for its method_options."""

    OPTION_DEFAULTS: ClassVar[dict[str, float]] = OcCseTerms.CSE_OPTIONS

    def build_models(self) -> None:
        self.options = parse_method_options(self, self.OPTION_DEFAULTS)
        super().build_models()
        self.build_oc()

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, labels = batch["image"], batch["label"]
        logits, maps = self.train_model(images)
        cls = self.cls_loss(logits, labels)
        cse, _onehot = self.cse_loss(images, labels, maps)
        return {"loss": cls + self.cse_lambda() * cse, "cls": cls, "cse": cse}


@register_cam_method("p-oc")
class PocTrainer(PuzzleTerms, OcCseTerms, CamTrainer):
    """P-OC: the Puzzle-CAM loss + λ_cse · CSE term on the whole image's maps; method_options
    of both :class:`PuzzleTerms` and :class:`OcCseTerms`."""

    OPTION_DEFAULTS: ClassVar[dict[str, float]] = {**PuzzleTerms.PUZZLE_OPTIONS, **OcCseTerms.CSE_OPTIONS}

    def build_models(self) -> None:
        self.options = parse_method_options(self, self.OPTION_DEFAULTS)
        super().build_models()
        self.build_oc()

    def poc_losses(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(losses, maps F, one-hot of the erased class r): P-NOC reuses F and r for its oc step."""
        losses, maps = self.puzzle_losses(images, labels)
        cse, onehot = self.cse_loss(images, labels, maps)
        losses["loss"] = losses["loss"] + self.cse_lambda() * cse
        losses["cse"] = cse
        return losses, maps, onehot

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        losses, _maps, _onehot = self.poc_losses(batch["image"], batch["label"])
        return losses
