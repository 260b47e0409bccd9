"""Parity of the EPS saliency loss with the authors' code (halbielee/EPS@0c2cdd03).

Every expected value below was recorded by running EPS's own ``get_eps_loss`` (``eps.py``)
and one iteration of its ``train_eps`` loop (``module/train.py``, with a stand-in network whose
maps are the fixture) on CPU, from a copy outside this project; docs/parity.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.cam import CamTrainConfig
from wsss.cam.eps import EpsTrainer, estimated_saliency, saliency_feedback_loss

RTOL = 1e-6


def random_fixture():
    """Two images, C = 3 (+ background), 5×7 maps, saliency 19×23 in k/255 steps."""
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 4, 5, 7, generator=gen) * 2.0
    saliency = torch.randint(0, 256, (2, 1, 19, 23), generator=gen).float() / 255.0
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    return maps, saliency, labels


def denominator_fixture():
    """A 10×100 map; class 1 wins 10 cells, 5 of them salient: o = 5 / (10 + 1e-4·1000) ≈ 0.495."""
    maps = torch.full((1, 3, 10, 100), -4.0)
    maps[0, 2] = 4.0
    maps[0, 0, 0, :10] = 4.0
    maps[0, 2, 0, :10] = -4.0
    saliency = torch.zeros(1, 1, 10, 100)
    saliency[0, 0, 0, :5] = 1.0
    return maps, saliency, torch.tensor([[1.0, 0.0]])


# (fixture, τ, λ) → EPS's loss
REFERENCE_LOSS = [
    (random_fixture, 0.4, 0.5, 0.15826524794101715),
    (random_fixture, 0.4, 0.8, 0.15917141735553741),
    (random_fixture, 0.3, 0.5, 0.15826524794101715),
    (random_fixture, 0.3, 0.8, 0.15917141735553741),
    (random_fixture, 0.6, 0.5, 0.17139507830142975),
    (random_fixture, 0.6, 0.8, 0.19178558886051178),
    (denominator_fixture, 0.498, 0.5, 0.004998349584639072),
    (denominator_fixture, 0.498, 0.8, 0.004999333061277866),
]

# EPS's estimated saliency map (its ``sal_pred``), row-major B×1×5×7
REFERENCE_MAP = {
    (0.4, 0.5): [
        0.398156762,
        0.50700891,
        0.290178239,
        0.372902542,
        0.835785747,
        0.47927326,
        0.543375552,
        0.912000477,
        0.850981593,
        0.740111351,
        0.509204745,
        0.45862639,
        0.421290874,
        0.978320003,
        0.823892236,
        0.540167928,
        0.887800217,
        0.0484977588,
        0.853835404,
        0.974676847,
        0.25332588,
        0.149992317,
        0.134813666,
        0.828200459,
        0.502773941,
        0.952425361,
        0.897929192,
        0.478118628,
        0.870746136,
        0.351165771,
        0.749768376,
        0.469017595,
        0.489094913,
        0.895719051,
        0.50561136,
        0.858492732,
        0.66114378,
        0.46064049,
        0.826025963,
        0.12304429,
        0.581459761,
        0.880779386,
        0.886394143,
        0.726950407,
        0.0853355527,
        0.482651711,
        0.938911974,
        0.734567404,
        0.907644987,
        0.567449629,
        0.860599041,
        0.883647084,
        0.668292701,
        0.761088133,
        0.847591162,
        0.623299956,
        0.521419644,
        0.877404213,
        0.67179358,
        0.760762393,
        0.938029289,
        0.335371822,
        0.583811641,
        0.870618582,
        0.595447779,
        0.561881125,
        0.79558301,
        0.52469939,
        0.763810635,
        0.559416413,
    ],
    (0.6, 0.8): [
        0.0995112211,
        0.074924469,
        0.0572032705,
        0.105189316,
        0.0572863482,
        0.0163888689,
        0.171626598,
        0.0106524471,
        0.0587951206,
        0.0646690503,
        0.192714363,
        0.00083358289,
        0.00238521094,
        0.00391155481,
        0.0536933541,
        0.171941444,
        0.0288740285,
        0.00255392794,
        0.0197700262,
        0.00543277292,
        0.00645248918,
        0.010642183,
        0.0419965759,
        0.0676165223,
        0.198702917,
        0.00199276209,
        0.000550532364,
        0.177198634,
        0.00316557894,
        0.000837516796,
        0.0964383259,
        0.179115117,
        0.171542406,
        0.00327862496,
        0.197562084,
        0.829869628,
        0.657164812,
        0.372333348,
        0.77575165,
        0.104133233,
        0.557947516,
        0.832261622,
        0.820480347,
        0.661419153,
        0.0724222958,
        0.441416562,
        0.927938879,
        0.609571457,
        0.895269632,
        0.561606407,
        0.846572518,
        0.845084667,
        0.557729423,
        0.689016044,
        0.768133521,
        0.415655196,
        0.507498324,
        0.812674284,
        0.547682345,
        0.617682874,
        0.922415733,
        0.156215325,
        0.518706977,
        0.836277127,
        0.535375953,
        0.314018548,
        0.684742212,
        0.477139354,
        0.761305749,
        0.545731664,
    ],
}


@pytest.mark.parametrize(("fixture", "tau", "lam", "expected"), REFERENCE_LOSS)
def test_saliency_loss_matches_eps(fixture, tau, lam, expected):
    maps, saliency, labels = fixture()
    got = saliency_feedback_loss(maps, saliency, labels, overlap_threshold=tau, mu=lam)
    assert float(got) == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize(("tau", "lam"), list(REFERENCE_MAP))
def test_estimated_saliency_matches_eps(tau, lam):
    predicted, target = estimated_saliency(*random_fixture(), overlap_threshold=tau, mu=lam)
    assert predicted.shape == target.shape == (2, 1, 5, 7)
    np.testing.assert_allclose(predicted.flatten().numpy(), REFERENCE_MAP[(tau, lam)], rtol=RTOL)


def test_overlap_denominator_grows_with_the_map():
    # o = 5/10 exactly would keep the class in the foreground at τ 0.498; EPS's + 1e-4 per
    # cell makes it 0.495 and sends it to the background: Ŝ is the same small value everywhere
    predicted, _ = estimated_saliency(*denominator_fixture(), overlap_threshold=0.498, mu=0.5)
    np.testing.assert_allclose(predicted.numpy(), 0.000167608261, rtol=RTOL)


def test_saliency_is_resampled_by_nearest_neighbour():
    _, saliency, _ = random_fixture()
    _, target = estimated_saliency(torch.zeros(2, 4, 5, 7), saliency, torch.zeros(2, 3))
    rows = (np.arange(5) * 19 / 5).astype(int)  # torch's "nearest": floor(i · in / out)
    cols = (np.arange(7) * 23 / 7).astype(int)
    np.testing.assert_array_equal(target.numpy(), saliency.numpy()[:, :, rows][:, :, :, cols])


def test_training_loss_adds_the_two_terms_like_eps():
    """EPS's ``train_eps``: loss = cls + sal (recorded: cls 0.7898129224777222, sal as above)."""
    maps, saliency, labels = random_fixture()
    trainer = object.__new__(EpsTrainer)  # only what ``step`` uses
    trainer.config = CamTrainConfig()
    trainer.options = EpsTrainer.parse_options(trainer.config)
    trainer.train_model = lambda image: (maps[:, :-1].mean(dim=(2, 3)), maps)  # = CamNet's logits
    out = trainer.step({"image": torch.zeros(2, 3, 8, 8), "saliency": saliency, "label": labels})
    assert trainer.options == {"sal_weight": 1.0, "overlap_threshold": 0.4, "mu": 0.5}
    assert float(out["cls"]) == pytest.approx(0.7898129224777222, rel=RTOL)
    assert float(out["sal"]) == pytest.approx(0.15826524794101715, rel=RTOL)
    assert float(out["loss"]) == pytest.approx(0.9480781555175781, rel=RTOL)
