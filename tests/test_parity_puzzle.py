"""Parity of the Puzzle-CAM loss with the authors' code (OFRIN/PuzzleCAM@95a75f4d).

The expected values were recorded by running PuzzleCAM's own tiling and merging
(``core/puzzle_utils.py`` ``tile_features`` / ``merge_features``) and the loss composition of
``train_classification_with_puzzle.py`` (``--loss_option cl_pcl_re --level feature
--re_loss L1_Loss --re_loss_option masking --alpha 4 --alpha_schedule 0.5``, as its README runs
it) in float64 on CPU, from a copy outside this project, with the stand-in classifier below in
place of the ResNet; docs/parity.md.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from wsss.cam.puzzle import PuzzleTerms

RTOL = 1e-6  # the classification terms are computed in float32 here (CamTrainer.cls_loss)

# PuzzleCAM's numbers: the three terms, and the total at iteration i of 40 (α = min(4·i/20, 4))
REFERENCE_TERMS = {
    "cls": 0.7648652875715567,
    "puzzle_cls": 0.7531899201486615,
    "puzzle_re": 0.20646767704675217,
}
REFERENCE_TOTALS = {
    0: 1.5180552077202183,
    5: 1.7245228847669705,
    20: 2.343925915907227,
    30: 2.343925915907227,
}


def fixture():
    """Three 64×64 images, C = 4, and a 9×9 stride-8 convolution with padding, so that the
    tiles' maps differ from the whole image's along the tile borders."""
    gen = torch.Generator().manual_seed(7)
    images = torch.randn(3, 3, 64, 64, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    weight = torch.randn(4, 3, 9, 9, generator=gen, dtype=torch.float64) * 0.2
    return images, labels, weight


class StandInTrainer(PuzzleTerms):
    """Just what :meth:`PuzzleTerms.puzzle_losses` uses of a trainer."""

    def __init__(self, weight: torch.Tensor, step: int, total_steps: int):
        self.weight = weight
        self.train_fraction = step / total_steps
        self.options = dict(PuzzleTerms.PUZZLE_OPTIONS)
        self.config = SimpleNamespace(label_smoothing=0.0)

    def train_model(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = F.conv2d(x, self.weight, stride=8, padding=4)
        return maps.mean(dim=(2, 3)), maps

    def cls_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.multilabel_soft_margin_loss(logits.float(), labels.float())


@pytest.mark.parametrize("iteration", sorted(REFERENCE_TOTALS))
def test_puzzle_loss_and_alpha_ramp_match_puzzlecam(iteration):
    images, labels, weight = fixture()
    losses, maps = StandInTrainer(weight, iteration, 40).puzzle_losses(images, labels)
    assert maps.shape == (3, 4, 8, 8)
    for name, expected in REFERENCE_TERMS.items():
        assert float(losses[name]) == pytest.approx(expected, rel=RTOL), name
    assert float(losses["loss"]) == pytest.approx(REFERENCE_TOTALS[iteration], rel=RTOL)
