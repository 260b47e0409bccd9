"""Method "cam": the plain CAM classifier of METHODS.md §1, trained with the
multilabel soft-margin loss (= mean BCE with logits over the C classes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsss.cam.base import CamTrainer, register_cam_method


@register_cam_method("cam")
class VanillaCamTrainer(CamTrainer):
    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, _maps = self.train_model(batch["image"])
        loss = F.multilabel_soft_margin_loss(logits.float(), batch["label"])
        return {"loss": loss}
