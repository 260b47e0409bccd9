"""Parity of P-NOC's training step with the authors' code (lucasdavid/PNOC@6c8950a1,
``scripts/cam/train_pnoc.py``: ``train_step``, ``train_step_cg``, ``train_step_oc``).

The expected values were recorded by running those three functions of the reference script
(from a copy outside this project; its model/optimiser set-up replaced) for two iterations on
CPU in float64, with the stand-in networks, batch, erased classes and constant weights below:
α 1.5, λ_cse 0.7, λ_noc 0.5, δ_noc 0.2, SGD lr 0.1, momentum 0.9, weight decay 1e-4 on both
networks. Per tensor: (sum, L2 norm, entries 0, 1, 2 and -1) after each iteration; docs/parity.md.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wsss.cam.oc_cse as oc_cse
from wsss.cam import CamTrainConfig
from wsss.cam.pnoc import PnocTrainer

RTOL = 1e-6
ALPHA, CSE_LAMBDA, NOC_LAMBDA = 1.5, 0.7, 0.5

REFERENCE = {
    "interval1": [
        {
            "model.classifier.weight": (
                -0.4356005140473827,
                1.3309071655924571,
                -0.2867483293860519,
                0.8066948952822982,
                -0.5279528545135301,
                0.014500966056659993,
            ),
            "model.conv1.bias": (
                0.9550391627096764,
                0.8301114165232176,
                -0.3153125058833872,
                0.5220518018711379,
                0.23786244609453405,
                0.5104374206273917,
            ),
            "model.conv1.weight": (
                -0.4847138125601826,
                5.8203417891362825,
                -0.15541170939233245,
                -0.357088952399284,
                -0.3678489801748881,
                0.3253316658771654,
            ),
            "oc.classifier.weight": (
                1.1249398128436046,
                1.5879909655979199,
                -0.6489432828043122,
                -0.05955465918515391,
                0.1401360647624657,
                0.24201726801251308,
            ),
            "oc.conv1.bias": (
                0.7624016236546275,
                1.2170058023674877,
                -0.39146554529947325,
                0.06305808065716212,
                1.149121901339628,
                -0.05831281304268938,
            ),
            "oc.conv1.weight": (
                -8.48337942359928,
                4.708563671795282,
                -0.39219926439192354,
                -0.21975181466388494,
                0.6832563495655575,
                0.2865669061277685,
            ),
        },
        {
            "model.classifier.weight": (
                -0.02735790695846088,
                1.3092545575571477,
                -0.2636885439023957,
                0.8166536728997396,
                -0.5121538105290201,
                0.12963122278617029,
            ),
            "model.conv1.bias": (
                0.9414312901856996,
                0.8202159798600203,
                -0.30937753373848204,
                0.5238811787747903,
                0.22494233485538195,
                0.5019853102940094,
            ),
            "model.conv1.weight": (
                -0.4536474566472753,
                5.81285979938578,
                -0.15497906426268668,
                -0.35796391177820397,
                -0.373891696863157,
                0.3305633761193239,
            ),
            "oc.classifier.weight": (
                1.0386537611907725,
                1.5906216011289867,
                -0.6582021472742495,
                -0.06590326452360017,
                0.1314045789333896,
                0.24657468256297882,
            ),
            "oc.conv1.bias": (
                0.7581829707653288,
                1.2243906924362766,
                -0.39183685125135825,
                0.05286006867461321,
                1.157235157059247,
                -0.06007540371717317,
            ),
            "oc.conv1.weight": (
                -8.471534059697213,
                4.707178413139082,
                -0.38996911553128677,
                -0.21948073179658623,
                0.6810408524542052,
                0.28638355072253696,
            ),
        },
    ],
    "interval2": [
        {
            "model.classifier.weight": (
                -0.4356005140473827,
                1.3309071655924571,
                -0.2867483293860519,
                0.8066948952822982,
                -0.5279528545135301,
                0.014500966056659993,
            ),
            "model.conv1.bias": (
                0.9550391627096764,
                0.8301114165232176,
                -0.3153125058833872,
                0.5220518018711379,
                0.23786244609453405,
                0.5104374206273917,
            ),
            "model.conv1.weight": (
                -0.4847138125601826,
                5.8203417891362825,
                -0.15541170939233245,
                -0.357088952399284,
                -0.3678489801748881,
                0.3253316658771654,
            ),
            "oc.classifier.weight": (
                1.1726542485938105,
                1.58403578349785,
                -0.6411133380624364,
                -0.052006607981187475,
                0.15640992533558434,
                0.23972736585048374,
            ),
            "oc.conv1.bias": (
                0.7605236057403656,
                1.216647453603647,
                -0.39437102099428,
                0.06428439721314222,
                1.1477396357116336,
                -0.057129406190130246,
            ),
            "oc.conv1.weight": (
                -8.482391252521515,
                4.707420755702295,
                -0.39302192247996165,
                -0.21944728846562184,
                0.6831857835171015,
                0.28670418984768153,
            ),
        },
        {
            "model.classifier.weight": (
                -0.027396064945309745,
                1.3092452539799815,
                -0.2636885439023957,
                0.8166536728997396,
                -0.5121538105290201,
                0.12958345757804393,
            ),
            "model.conv1.bias": (
                0.9414291014854042,
                0.8202164987375224,
                -0.3093799746831046,
                0.523882271395036,
                0.22494406793263502,
                0.5019827368408377,
            ),
            "model.conv1.weight": (
                -0.45362126671911335,
                5.812859742740702,
                -0.1549771752455127,
                -0.3579656173803966,
                -0.37389178798910855,
                0.3305628285676378,
            ),
            "oc.classifier.weight": (
                1.0631764793355116,
                1.5836620693994776,
                -0.6514463576711318,
                -0.05926074301249962,
                0.14298918191114762,
                0.24009289292465893,
            ),
            "oc.conv1.bias": (
                0.7547521420501401,
                1.2217002747861507,
                -0.3946528888640113,
                0.05591569730646116,
                1.1532983050592278,
                -0.05980897145153765,
            ),
            "oc.conv1.weight": (
                -8.47477706773591,
                4.7057646615529904,
                -0.3917318654979198,
                -0.21948640672530598,
                0.6811453723152882,
                0.2864511795662543,
            ),
        },
    ],
}
REFERENCE_LOSSES = {
    "interval1": [
        {
            "c_loss": 0.7240072819056398,
            "loss": 2.1396128622938395,
            "o_loss": 0.6455551529559229,
            "ot_loss": 0.2902578810003784,
            "p_loss": 0.7274265446935946,
            "re_loss": 0.1575269524169728,
        },
        {
            "c_loss": 0.6816364468034171,
            "loss": 2.1415898356346768,
            "o_loss": 0.7822377138565926,
            "ot_loss": 0.28485420709268794,
            "p_loss": 0.6887061889350875,
            "re_loss": 0.1491205334643717,
        },
    ],
    "interval2": [
        {
            "c_loss": 0.7240072819056398,
            "loss": 2.1396128622938395,
            "o_loss": 0.6455551529559229,
            "p_loss": 0.7274265446935946,
            "re_loss": 0.1575269524169728,
        },
        {
            "c_loss": 0.6816364468034171,
            "loss": 2.1436748396813607,
            "o_loss": 0.785216291066141,
            "ot_loss": 0.28624781359927304,
            "p_loss": 0.6887061889350875,
            "re_loss": 0.1491205334643717,
        },
    ],
}


class TinyCamNet(nn.Module):
    """3×3 conv → ReLU → 1×1 class conv; logits = spatial mean of the maps (a CamNet stand-in)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.classifier = nn.Conv2d(4, 3, 1, bias=False)
        self.double()
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.classifier(F.relu(self.conv1(x)))
        return maps.mean(dim=(2, 3)), maps


def batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    return {"image": images, "label": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)}


# the erased class r of each image, per iteration (the reference's draw replaced by the same)
DRAWS = [
    torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64),
    torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64),
]


def stand_in_trainer(noc_every: int, freeze: int) -> PnocTrainer:
    """A P-NOC trainer holding only what its training step uses, around the stand-ins."""
    trainer = object.__new__(PnocTrainer)  # no dataset, no ResNet
    trainer.config = CamTrainConfig()
    trainer.options = {**PnocTrainer.OPTION_DEFAULTS, "freeze_oc_in_generator_step": freeze}
    trainer.model = trainer.train_model = TinyCamNet(1)
    trainer.oc = TinyCamNet(2)
    trainer.noc_every, trainer.freeze_oc_in_generator_step = noc_every, bool(freeze)
    trainer._set_oc_trainable(not freeze)
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), **sgd)
    trainer.oc_optimizer = torch.optim.SGD(trainer.oc.parameters(), **sgd)
    trainer.use_autocast, trainer.world_size = False, 1
    trainer.scaler = torch.amp.GradScaler("cuda", enabled=False)
    trainer.generator = torch.Generator().manual_seed(0)
    # constant weights and learning rate (the schedules are not what is compared here)
    trainer.puzzle_alpha = lambda: ALPHA
    trainer.cse_lambda = lambda: CSE_LAMBDA
    trainer.noc_lambda = lambda: NOC_LAMBDA
    trainer.set_lr = lambda step: None
    return trainer


def run(monkeypatch, noc_every: int, freeze: int = 0, first_step: int = 0):
    draws = iter(DRAWS)
    monkeypatch.setattr(oc_cse, "draw_present_class", lambda labels, generator: next(draws))
    trainer = stand_in_trainer(noc_every, freeze)
    results = []
    for step in range(first_step, first_step + 2):
        trainer.global_step = step
        losses = trainer.train_step(batch())
        state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
        state |= {f"oc.{k}": v.clone() for k, v in trainer.oc.state_dict().items()}
        results.append((losses, state))
    return results


def summary(t: torch.Tensor) -> list[float]:
    flat = t.detach().flatten()
    return [float(flat.sum()), float(flat.norm()), *map(float, flat[[0, 1, 2, -1]])]


def max_abs_difference(results, reference) -> float:
    return max(
        abs(a - b)
        for (_losses, state), expected in zip(results, reference, strict=True)
        for key, values in expected.items()
        for a, b in zip(summary(state[key]), values, strict=True)
    )


def assert_matches(results, reference) -> None:
    for (_losses, state), expected in zip(results, reference, strict=True):
        assert state.keys() == expected.keys()
        for key, values in expected.items():
            assert summary(state[key]) == pytest.approx(values, rel=RTOL, abs=1e-12), key


def test_pnoc_step_matches_the_reference(monkeypatch):
    """Every oc step (noc_every 1): the oc's update = its optimiser on λ_cse ∂CSE/∂θ_oc
    (left by the generator step) + λ_noc ∂NOC/∂θ_oc."""
    results = run(monkeypatch, noc_every=1)
    assert_matches(results, REFERENCE["interval1"])
    for (losses, _state), expected in zip(results, REFERENCE_LOSSES["interval1"], strict=True):
        assert float(losses["cls"]) == pytest.approx(expected["c_loss"], rel=RTOL)
        assert float(losses["puzzle_cls"]) == pytest.approx(expected["p_loss"], rel=RTOL)
        assert float(losses["puzzle_re"]) == pytest.approx(expected["re_loss"], rel=RTOL)
        assert float(losses["cse"]) == pytest.approx(expected["o_loss"], rel=RTOL)
        assert float(losses["loss"]) == pytest.approx(expected["loss"], rel=RTOL)
        assert NOC_LAMBDA * float(losses["noc"]) == pytest.approx(expected["ot_loss"], rel=RTOL)


def test_pnoc_oc_gradient_accumulates_until_its_step_like_the_reference(monkeypatch):
    """noc_every 2: the CSE gradients of both generator steps reach the oc in its one step.
    (The reference takes the oc step when (step + 1) % k == 0, ours when step % k == 0: ours
    starts at step 1 here so that the phases line up.)"""
    results = run(monkeypatch, noc_every=2, first_step=1)
    assert "noc" not in results[0][0] and "noc" in results[1][0]
    assert_matches(results, REFERENCE["interval2"])


def test_freezing_the_oc_in_the_generator_step_is_the_option_not_the_default(monkeypatch):
    """``freeze_oc_in_generator_step`` = 1 (this toolkit's former default): the generator's
    first update is the same, the oc's differs from the reference by the CSE term's share."""
    frozen = run(monkeypatch, noc_every=1, freeze=1)
    first = frozen[0][1]
    for key, values in REFERENCE["interval1"][0].items():
        if key.startswith("model."):
            assert summary(first[key]) == pytest.approx(values, rel=RTOL, abs=1e-12), key
    assert max_abs_difference(frozen, REFERENCE["interval1"]) > 1e-3
