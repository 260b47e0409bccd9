"""Method "p-noc" (seed 001, docs/methods.md §1): P-OC whose ordinary classifier is trained
too, adversarially. A fixed oc is soon fooled by erasing the few regions it relies on;
training it on images where the generator's confident region of r is cut out makes it
look for the remaining evidence of r, which the generator must then cover as well.

Each training step is two phases: the generator step of P-OC (oc frozen), then — every
``noc_every`` steps — an oc step on x·(norm(F_r) ≤ δ_noc) with the target y (r still
present), the generator fixed. F_r and r are the ones of the generator step just taken
(detached), which spares a forward pass.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from wsss.cam.base import register_cam_method
from wsss.cam.oc_cse import OcCseTerms, PocTrainer, class_map, set_trainable
from wsss.cam.puzzle import PuzzleTerms, linear_ramp
from wsss.io import WsssError


def hard_keep_mask(
    maps: torch.Tensor, onehot: torch.Tensor, size: tuple[int, int], threshold: float
) -> torch.Tensor:
    """B×1×H×W, 1 where norm_per_sample(relu F_r) ≤ ``threshold`` (kept), 0 where erased."""
    class_cam = class_map(maps.detach().float(), onehot.float(), size)
    normed = class_cam / (class_cam.amax(dim=(1, 2, 3), keepdim=True) + 1e-5)
    return (normed <= threshold).float()


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm affine parameters stop learning (the running statistics are kept by eval mode)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            set_trainable(m, False)


@register_cam_method("p-noc")
class PnocTrainer(PocTrainer):
    """P-NOC. method_options: those of P-OC (``alpha_max``, ``alpha_ramp``,
    ``cse_lambda_start``, ``cse_lambda_end``) plus ``noc_lambda_start`` (0.0) and
    ``noc_lambda_end`` (1.0), the oc loss weight rising linearly over training;
    ``noc_threshold`` (δ_noc, 0.2); ``noc_every`` (k_noc, 1), the oc steps once every k
    generator steps; ``noc_lr_mult`` (1.0), the oc's learning rate relative to ``lr``
    (its head also gets ``head_lr_mult``, and it follows the same poly schedule)."""

    NOC_OPTIONS: ClassVar[dict[str, float]] = {
        "noc_lambda_start": 0.0,
        "noc_lambda_end": 1.0,
        "noc_threshold": 0.2,
        "noc_every": 1,
        "noc_lr_mult": 1.0,
    }
    OPTION_DEFAULTS: ClassVar[dict[str, float]] = {
        **PuzzleTerms.PUZZLE_OPTIONS,
        **OcCseTerms.CSE_OPTIONS,
        **NOC_OPTIONS,
    }

    def build_models(self) -> None:
        super().build_models()
        o = self.options
        every = o["noc_every"]
        if every < 1 or every != int(every) or not 0.0 < o["noc_threshold"] < 1.0 or o["noc_lr_mult"] <= 0:
            raise WsssError(
                f"{self.out_dir}: p-noc needs method_options noc_every an integer >= 1 (got {every}), "
                f"0 < noc_threshold < 1 (got {o['noc_threshold']}), noc_lr_mult > 0 (got {o['noc_lr_mult']})"
            )
        self.noc_every = int(every)
        c = self.config
        backbone, head = self.oc.param_groups()
        lr = c.lr * o["noc_lr_mult"]
        self.oc_optimizer = self.build_optimizer(
            [
                {"params": backbone, "lr": lr, "name": "oc_backbone"},
                {"params": head, "lr": lr * c.head_lr_mult, "name": "oc_head"},
            ]
        )
        set_trainable(self.oc, False)  # trainable only during its own phase

    def noc_lambda(self) -> float:
        return linear_ramp(
            self.train_fraction, self.options["noc_lambda_start"], self.options["noc_lambda_end"]
        )

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer, self.oc_optimizer]

    def extra_state(self) -> dict[str, Any]:
        return {"oc": self.oc.state_dict(), "oc_optimizer": self.oc_optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.oc.load_state_dict(state["oc"])
        self.oc_optimizer.load_state_dict(state["oc_optimizer"])

    # ----------------------------------------------------------------- the two phases
    def generator_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """P-OC's step on the generator with the oc frozen; keeps (F, r) for :meth:`oc_step`."""
        self.train_model.train()
        set_trainable(self.oc, False)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            losses, maps, onehot = self.poc_losses(batch["image"], batch["label"])
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimizer)
        self._erase_from = (maps.detach(), onehot)
        return {k: v.detach() for k, v in losses.items()}

    def oc_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """λ_noc · cls(oc(x_hard), y) on the oc alone; the generator gets no gradient (the mask
        is computed from detached maps and the generator is not in this optimiser)."""
        images, labels = batch["image"], batch["label"]
        maps, onehot = self._erase_from
        keep = hard_keep_mask(maps, onehot, images.shape[-2:], self.options["noc_threshold"])
        set_trainable(self.oc, True)
        freeze_batchnorm(self.oc)
        self.oc.eval()  # BatchNorm frozen: running statistics stay the vanilla classifier's
        self.oc_optimizer.zero_grad(set_to_none=True)
        try:
            with self.autocast():
                logits, _ = self.oc(images * keep.to(images.dtype))
                noc = self.cls_loss(logits, labels)
            self.scaler.scale(self.noc_lambda() * noc).backward()
            self._average_oc_gradients()
            self.scaler.step(self.oc_optimizer)
        finally:
            set_trainable(self.oc, False)
        return noc.detach()

    def _average_oc_gradients(self) -> None:
        """Under DDP only the generator is wrapped: average the oc's gradients by hand so
        that every rank's oc stays the same."""
        if self.world_size == 1:
            return
        for p in self.oc.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(self.world_size)

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Generator step, then (every ``noc_every`` steps) oc step; one scaler update for both."""
        self.set_lr(self.global_step)
        losses = self.generator_step(batch)
        if self.global_step % self.noc_every == 0:
            losses["noc"] = self.oc_step(batch)
        self.scaler.update()
        return losses
