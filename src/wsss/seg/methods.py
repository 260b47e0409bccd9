"""Seed 004's losses as segmentation training methods (``wsss seg train --method``).

- ``size-weighted``: CE where each foreground pixel weighs min(τ, |FG|/|K|) for its
  connected component K, so small objects count as much as large ones (τ = 5).
- ``size-balanced``: plain CE for the first half of training (``switch_iter``) while the
  Fisher diagonal is accumulated after every micro-batch, then size-weighted CE plus
  λ·ΣF̂(θ − θ_A)² (EWC, λ = 500) that keeps the weights the large objects need near
  where the first half left them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from wsss.io import WsssError
from wsss.seg.losses import (
    FisherDiagonal,
    ewc_penalty,
    parameter_anchor,
    segmentation_loss,
    size_balanced_switch_iter,
)
from wsss.seg.train import SegTrainer, register_seg_method

FISHER_UPDATES = ("micro-batch", "step")


@register_seg_method("size-weighted")
class SizeWeightedTrainer(SegTrainer):
    """``method_options``: ``tau`` (5), the cap of the per-pixel weight."""

    option_defaults: dict[str, Any] = {"tau": 5.0}

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = segmentation_loss(logits, batch["seg_label"], "size-weighted", tau=float(self.options["tau"]))
        return {"loss": loss}


@register_seg_method("size-balanced")
class SizeBalancedTrainer(SegTrainer):
    """``method_options``: ``tau`` (5), ``ewc_lambda`` (500), ``switch_iter`` (None: half of
    the steps, as the authors' run; else the number of task-A steps), ``fisher_update``
    ("micro-batch": after every micro-batch's backward on the gradient accumulated so far,
    as the authors' ``main_ewc.py``; "step": once per step on its complete gradient, the
    former rule). The Fisher, F̂ and θ_A are in the checkpoint, so a resumed run is exact.
    Under DDP a micro-batch update before a step's last micro-batch sees this rank's
    gradient only."""

    option_defaults: dict[str, Any] = {
        "tau": 5.0,
        "ewc_lambda": 500.0,
        "switch_iter": None,
        "fisher_update": "micro-batch",
    }

    def __init__(self, *args: Any, **kwargs: Any):
        self.fisher = FisherDiagonal()
        self.anchor: dict[str, torch.Tensor] | None = None
        self.fisher_hat: dict[str, torch.Tensor] | None = None
        super().__init__(*args, **kwargs)
        if self.options["fisher_update"] not in FISHER_UPDATES:
            raise WsssError(
                f"method_options.fisher_update must be one of {list(FISHER_UPDATES)}, "
                f"got {self.options['fisher_update']!r}"
            )
        try:
            self.switch_step = size_balanced_switch_iter(self.total_steps, self.options["switch_iter"])
        except (TypeError, ValueError) as e:
            raise WsssError(f"{self.out_dir}: size-balanced method_options: {e}") from None

    @property
    def in_ewc_stage(self) -> bool:
        return self.global_step >= self.switch_step

    def compute_loss(
        self, logits: torch.Tensor | list[torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        target = batch["seg_label"]
        if not self.in_ewc_stage:
            return {"loss": segmentation_loss(logits, target, "ce")}
        if self.anchor is None:  # the first step of the second stage: freeze θ_A and F̂
            self.anchor = parameter_anchor(self.model)
            self.fisher_hat = self.fisher.normalized()
        weighted = segmentation_loss(logits, target, "size-weighted", tau=float(self.options["tau"]))
        penalty = ewc_penalty(self.model, self.fisher_hat, self.anchor, lam=float(self.options["ewc_lambda"]))
        # the penalty is backpropagated whole with every micro-batch (train.PER_MICRO_BATCH_TERMS), as seed 004 does
        return {"loss": weighted + penalty, "size_weighted": weighted, "ewc": penalty}

    def _update_fisher(self, grad_scale: float = 1.0) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if all(math.isfinite(float(g.float().abs().sum())) for g in grads):  # fp16 overflow steps are skipped
            self.fisher.update(self.model, grad_scale)

    def on_micro_batch_gradients(self, grad_scale: float) -> None:
        if not self.in_ewc_stage and self.options["fisher_update"] == "micro-batch":
            self._update_fisher(grad_scale)

    def on_gradients(self) -> None:
        if not self.in_ewc_stage and self.options["fisher_update"] == "step":
            self._update_fisher()

    def extra_state(self) -> dict[str, Any]:
        return {"fisher": self.fisher.state_dict(), "anchor": self.anchor, "fisher_hat": self.fisher_hat}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        def on_device(tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            return None if tensors is None else {k: v.to(self.device) for k, v in tensors.items()}

        fisher = dict(state["fisher"])
        fisher["fisher"] = on_device(fisher["fisher"])
        self.fisher.load_state_dict(fisher)
        self.anchor = on_device(state["anchor"])
        self.fisher_hat = on_device(state["fisher_hat"])
