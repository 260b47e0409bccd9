"""Method "p-noc" (seed 001, docs/methods.md §1): P-OC whose ordinary classifier is trained
too, adversarially. A fixed oc is soon fooled by erasing the few regions it relies on;
training it on images where the generator's confident region of r is cut out makes it
look for the remaining evidence of r, which the generator must then cover as well.

Each training step is two phases: the generator step of P-OC, then — every ``noc_every``
steps — an oc step on x·(norm(F_r) ≤ δ_noc) with the target y (r still present), the
generator fixed. F_r and r are the ones of the generator step just taken (detached), which
spares a forward pass.

As in the authors' ``train_pnoc.py`` (lucasdavid/PNOC@6c8950a1), the oc is not frozen in the
generator step: the λ_cse erasing term's gradient reaches the oc's weights too, is kept
(not zeroed) and is applied by the oc's optimiser in its next step together with λ_noc ·
L_noc; the oc's gradient is cleared only after that step, so with ``noc_every`` > 1 the
erasing gradients of all generator steps in between add up. ``freeze_oc_in_generator_step``
= 1 freezes the oc there instead (its optimiser then sees L_noc alone). The oc's BatchNorm
(affine and statistics) never learns, as in the authors' "fix" mode.
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
    (its head also gets ``head_lr_mult``, and it follows the same poly schedule);
    ``freeze_oc_in_generator_step`` (0): 1 keeps the CSE term's gradient away from the oc
    (the released code lets it through, see the module docstring)."""

    NOC_OPTIONS: ClassVar[dict[str, float]] = {
        "noc_lambda_start": 0.0,
        "noc_lambda_end": 1.0,
        "noc_threshold": 0.2,
        "noc_every": 1,
        "noc_lr_mult": 1.0,
        "freeze_oc_in_generator_step": 0,
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
        if o["freeze_oc_in_generator_step"] not in (0, 1):
            raise WsssError(
                f"{self.out_dir}: p-noc method_options.freeze_oc_in_generator_step must be 0 or 1, "
                f"got {o['freeze_oc_in_generator_step']}"
            )
        self.noc_every = int(every)
        self.freeze_oc_in_generator_step = bool(o["freeze_oc_in_generator_step"])
        backbone, head = self.oc.param_groups()  # grouped like the generator's, by the recipe
        self.oc_optimizer = self.build_optimizer(
            self.recipe_groups(self.oc, backbone, head, self.config.lr * o["noc_lr_mult"], prefix="oc_")
        )
        self._set_oc_trainable(not self.freeze_oc_in_generator_step)

    def _set_oc_trainable(self, trainable: bool) -> None:
        """The oc's weights take gradients (BatchNorm affine parameters never do) or none."""
        set_trainable(self.oc, trainable)
        freeze_batchnorm(self.oc)

    def noc_lambda(self) -> float:
        return linear_ramp(
            self.train_fraction, self.options["noc_lambda_start"], self.options["noc_lambda_end"]
        )

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer, self.oc_optimizer]

    def extra_state(self) -> dict[str, Any]:
        # the oc's gradient still waiting for its step (noc_every > 1) is part of the state
        pending = {n: p.grad.detach().clone() for n, p in self.oc.named_parameters() if p.grad is not None}
        return {
            "oc": self.oc.state_dict(),
            "oc_optimizer": self.oc_optimizer.state_dict(),
            "oc_pending_grad": pending,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.oc.load_state_dict(state["oc"])
        self.oc_optimizer.load_state_dict(state["oc_optimizer"])
        pending = state.get("oc_pending_grad", {})
        for n, p in self.oc.named_parameters():
            p.grad = pending[n].to(p.device) if n in pending else None

    # ----------------------------------------------------------------- the two phases
    def generator_step(
        self, batch: dict[str, torch.Tensor], zero_grad: bool = True, update: bool = True
    ) -> dict[str, torch.Tensor]:
        """P-OC's step on the generator; keeps (F, r) for :meth:`oc_step`. Only the generator's
        optimiser steps; the gradient the CSE term leaves on the oc (unless
        ``freeze_oc_in_generator_step``) waits for the oc's own step. For accumulation,
        ``zero_grad``/``update`` off keep the gradient of the micro-batches before/after."""
        self.set_train_mode()
        self._set_oc_trainable(not self.freeze_oc_in_generator_step)
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            losses, maps, onehot = self.poc_losses(batch["image"], batch["label"])
        self.scaler.scale(losses["loss"]).backward()
        if update:
            self.scaler.step(self.optimizer)
        self._erase_from = (maps.detach(), onehot)
        return {k: v.detach() for k, v in losses.items()}

    def oc_step(self, batch: dict[str, torch.Tensor], update: bool = True) -> torch.Tensor:
        """λ_noc · cls(oc(x_hard), y) added to the oc's pending gradient (the CSE term's, from
        the generator steps since the last oc step), one oc optimiser step (unless ``update``
        is off: a micro-batch before the last), then the oc's gradient is cleared. The
        generator gets no gradient (the mask is computed from detached maps and the
        generator is not in this optimiser)."""
        images, labels = batch["image"], batch["label"]
        maps, onehot = self._erase_from
        keep = hard_keep_mask(maps, onehot, images.shape[-2:], self.options["noc_threshold"])
        self._set_oc_trainable(True)
        self.oc.eval()  # BatchNorm frozen: running statistics stay the vanilla classifier's
        try:
            with self.autocast():
                logits, _ = self.oc(images * keep.to(images.dtype))
                noc = self.cls_loss(logits, labels)
            self.scaler.scale(self.noc_lambda() * noc).backward()
            if update:
                self._average_oc_gradients()
                self.scaler.step(self.oc_optimizer)
                self.oc_optimizer.zero_grad(set_to_none=True)
        finally:
            self._set_oc_trainable(not self.freeze_oc_in_generator_step)
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
        """Generator step, then (every ``noc_every`` steps) oc step; one scaler update for both.

        With ``accumulate`` > 1, as ``train_pnoc.py`` accumulates: per micro-batch the
        generator's and then the oc's backward, their gradients adding up; each optimiser
        steps after its backward of the last micro-batch. Logged losses: the micro-batches' mean."""
        self.set_lr(self.global_step)
        oc_turn = self.global_step % self.noc_every == 0
        parts = self.micro_batches(batch)
        losses: dict[str, torch.Tensor] = {}
        for k, part in enumerate(parts):
            last = k == len(parts) - 1
            part_losses = self.generator_step(part, zero_grad=k == 0, update=last)
            if oc_turn:
                part_losses["noc"] = self.oc_step(part, update=last)
            for name, value in part_losses.items():
                losses[name] = (
                    value if len(parts) == 1 else losses.get(name, 0.0) + value.float() / len(parts)
                )
        scale = self.scaler.get_scale() if self.scaler.is_enabled() and not oc_turn else None
        self.scaler.update()
        if scale is not None and self.scaler.get_scale() != scale:
            # the oc's pending gradient was scaled by the old loss scale: bring it to the new one
            ratio = self.scaler.get_scale() / scale
            for p in self.oc.parameters():
                if p.grad is not None:
                    p.grad.mul_(ratio)
        return losses
