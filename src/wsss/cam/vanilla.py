"""Method "cam": the plain CAM classifier of docs/methods.md §1, trained with the
multilabel soft-margin loss (= mean BCE with logits over the C classes)."""

from __future__ import annotations

import torch

from wsss.cam.base import CamTrainer, register_cam_method


@register_cam_method("cam")
class VanillaCamTrainer(CamTrainer):
    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, _maps = self.train_model(batch["image"])
        return {"loss": self.cls_loss(logits, batch["label"])}
