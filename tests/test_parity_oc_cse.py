"""Parity of the OC-CSE erasing term with P-NOC's re-implementation (lucasdavid/PNOC@6c8950a1),
the one the seeds use: ``core/occse.py`` ``soft_mask_images`` (global normalisation, its
default) and the loss of ``scripts/cam/train_occse.py`` (c_loss + λ·o_loss, λ rising linearly
0.3 → 1.0, labels without the erased class, label smoothing on both targets).

The expected values were recorded by running that code in float64 on CPU, from a copy outside
this project, with the stand-in networks below and the erased classes fixed; docs/parity.md.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import wsss.cam.oc_cse as oc_cse
from wsss.cam.base import CamTrainer
from wsss.cam.oc_cse import OcCseTerms

RTOL = 1e-6  # classification terms are computed in float32 here (CamTrainer.cls_loss)

# (label smoothing, step of 10) → P-NOC's (c_loss, o_loss, c_loss + λ·o_loss)
REFERENCE = {
    (0.0, 0): (0.6397406572007656, 0.7672219424855573, 0.8699072399464327),
    (0.0, 5): (0.6397406572007656, 0.7672219424855573, 1.1384349198163777),
    (0.1, 0): (0.646979329948422, 0.7615917427448097, 0.8754568527718649),
    (0.1, 5): (0.646979329948422, 0.7615917427448097, 1.1420139627325483),
}
ERASED = torch.tensor([[0.0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]])  # the drawn class r per image


class StandInNet:
    """A 9×9 stride-8 convolution with padding: (GAP logits, maps), like CamNet."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = F.conv2d(x, self.weight, stride=8, padding=4)
        return maps.mean(dim=(2, 3)), maps

    def eval(self) -> StandInNet:
        return self


class StandInTrainer(OcCseTerms):
    cls_loss = CamTrainer.cls_loss

    def __init__(self, oc: StandInNet, label_smoothing: float, step: int, total_steps: int):
        self.oc = oc
        self.generator = torch.Generator()
        self.train_fraction = step / total_steps
        self.options = dict(OcCseTerms.CSE_OPTIONS)
        self.config = SimpleNamespace(label_smoothing=label_smoothing)


@pytest.mark.parametrize(("smoothing", "step"), sorted(REFERENCE))
def test_cse_term_and_lambda_ramp_match_pnoc(monkeypatch, smoothing, step):
    gen = torch.Generator().manual_seed(11)
    images = torch.randn(3, 3, 48, 40, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    generator_net = StandInNet(torch.randn(4, 3, 9, 9, generator=gen, dtype=torch.float64) * 0.2)
    oc = StandInNet(torch.randn(4, 3, 9, 9, generator=gen, dtype=torch.float64) * 0.2)
    monkeypatch.setattr(oc_cse, "draw_present_class", lambda labels, generator: ERASED.to(labels))

    trainer = StandInTrainer(oc, smoothing, step, 10)
    logits, maps = generator_net(images)
    cls = trainer.cls_loss(logits, labels)
    cse, onehot = trainer.cse_loss(images, labels, maps)
    expected_cls, expected_cse, expected_total = REFERENCE[(smoothing, step)]
    assert torch.equal(onehot, ERASED.to(labels))
    assert float(cls) == pytest.approx(expected_cls, rel=RTOL)
    assert float(cse) == pytest.approx(expected_cse, rel=RTOL)
    assert float(cls + trainer.cse_lambda() * cse) == pytest.approx(expected_total, rel=RTOL)
