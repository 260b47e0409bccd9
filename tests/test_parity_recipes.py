"""Named training recipes (issue 13, item 3) against the authors' released code.

Golden values were produced by running each repository's own optimiser class (copies outside
the project, torch 2.15 CPU, float64) on the fixture below:

- irn: jiwoon-ahn/irn @ a2ece0034d0a5a9635e4e131cd4fa6e2a779d316, ``misc/torchutils.py``
  ``PolyOptimizer`` with the two groups of ``step/train_cam.py``;
  ``misc/imutils.py`` ``random_resize_long`` (``random.randint`` fixed to the drawn size).
- puzzlecam: OFRIN/PuzzleCAM @ 95a75f4daf0f76aabd21c43cc2bcd2d2787fe56b,
  ``tools/ai/optim_utils.py`` ``PolyOptimizer`` (nesterov) with the four groups of
  ``train_classification_with_puzzle.py``.
- oc-cse: KAIST-vilab/OC-CSE @ a833aea5e41efaac1d1994c6da587a738a1e6411, ``tools/utils.py``
  ``PolyOptimizer`` with the groups of ``models/model_cse.py`` (no from-scratch layers).
- pnoc: lucasdavid/PNOC @ 6c8950a18e9289a3498a17cd2e321a8b3a54423c, ``tools/ai/optim_utils.py``
  ``get_optimizer(algorithm="sgd")``.
- eps: halbielee/EPS @ 0c2cdd03239ef036b0dfbeef74bb45c03e5c09bd, ``util/torchutils.py``
  ``PolyOptimizer`` with the groups of ``module/optimizer.py``.

Fixture: backbone weight 3×2 = arange(6)·0.1 − 0.25, bias (0.1, −0.2, 0.3); head weight
2×3 = arange(6)·(−0.05) + 0.1, bias (0.05, −0.05); 4 steps of a 5-step poly schedule; at
step t every parameter's gradient is sin(3p + t).
"""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
import torch
from cli_helpers import wsss_in_process
from torch import nn

from wsss.cam import CamTrainConfig, build_trainer, train_cam
from wsss.cam.data import color_jitter, long_side_size, pil_bicubic_resize
from wsss.cam.recipes import DEFAULT_RECIPE_BY_METHOD, RECIPES
from wsss.cam.vanilla import VanillaCamTrainer
from wsss.data import build_dataset
from wsss.io import WsssError

RTOL = 1e-9
STEPS, TOTAL_STEPS = 4, 5

# parameters after 4 steps, from the reference optimisers (see the module docstring)
GOLDEN = {
    "irn": {
        "backbone.weight": [-0.31570713104694964, -0.25264776561554353, -0.18715391711474944, -0.11659469737851295, -0.03761025048177613, 0.05371354177385106],
        "backbone.bias": [-0.07839159515841676, -0.2843450094507869, 0.10524491877190925],
        "head.weight": [-1.0484897891199683, -1.0436473147792524, -1.0292861772097028, -1.0292699983768474, -1.044415677560932, -1.0472868870682104],
        "head.bias": [-1.0436473147792524, -1.0292699983768474],
    },
    "puzzlecam": {
        "backbone.weight": [-0.31571409201496026, -0.2526547042027918, -0.1871608064700918, -0.1166015736318804, -0.03761713543481133, 0.05370675254123287],
        "backbone.bias": [-0.29730168620983016, -0.400318276302414, -0.1821667884100981],
        "head.weight": [-1.0484967380171573, -1.0436661482218241, -1.0292851457635805, -1.0292608133352312, -1.0444238833347186, -1.0472956026317466],
        "head.bias": [-1.3938939990611665, -0.9668257721207196],
    },
    "oc-cse": {
        "backbone.weight": [-0.254807537229592, -0.1588433021128651, -0.062167744557791504, 0.03552084310123563, 0.13444867218695558, 0.23473987673381613],
        "backbone.bias": [0.06900916064380457, -0.21413685005329014, 0.26976294432217485],
        "head.weight": [0.08481941686108514, 0.035520843101235586, -0.01346631459002943, -0.06216774455779154, -0.1106147349682191, -0.1588433021128651],
        "head.bias": [0.02052007578684713, -0.07470014155380442],
    },
    "pnoc": {
        "backbone.weight": [-0.31570561512943623, -0.2526429010913272, -0.18714550735905414, -0.11658276540318839, -0.03759513920415775, 0.05373106003956673],
        "backbone.bias": [-0.29725664704650423, -0.40029249451429233, -0.18210490773751944],
        "head.weight": [-1.0484720343159624, -1.0436368443388764, -1.0292701691555333, -1.029247394573112, -1.0443960305028521, -1.0472735716323094],
        "head.bias": [-1.3939362796405366, -0.9662600974271558],
    },
    "eps": {
        "backbone.weight": [-0.254807537229592, -0.1588433021128651, -0.062167744557791504, 0.03552084310123563, 0.13444867218695558, 0.23473987673381613],
        "backbone.bias": [0.06900916064380457, -0.21413685005329014, 0.26976294432217485],
        "head.weight": [-0.07845187439729465, -0.11664310803531411, -0.1527374732523177, -0.18717874266089873, -0.22036576963630763, -0.2526499654405154],
        "head.bias": [-0.3168181713561042, -0.35119999895881016],
    },
}  # fmt: skip


class TwoLayerNet(nn.Module):
    """A backbone layer and a head, both with biases, in float64 at the fixture's values."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 3).double()
        self.head = nn.Linear(3, 2).double()
        f64 = torch.float64
        with torch.no_grad():
            self.backbone.weight.copy_(torch.arange(6, dtype=f64).reshape(3, 2) * 0.1 - 0.25)
            self.backbone.bias.copy_(torch.tensor([0.1, -0.2, 0.3], dtype=f64))
            self.head.weight.copy_(torch.arange(6, dtype=f64).reshape(2, 3) * -0.05 + 0.1)
            self.head.bias.copy_(torch.tensor([0.05, -0.05], dtype=f64))


@pytest.mark.parametrize("recipe", sorted(GOLDEN))
def test_optimiser_trajectory_matches_the_authors_optimiser(recipe):
    """The recipe's groups (LR multipliers, bias rule, weight decay), SGD settings (momentum,
    nesterov) and poly schedule reproduce the reference optimiser step by step."""
    net = TwoLayerNet()
    trainer = object.__new__(VanillaCamTrainer)  # only the optimisation hooks are exercised
    trainer.config = CamTrainConfig(recipe=recipe)
    trainer.total_steps = TOTAL_STEPS
    backbone, head = list(net.backbone.parameters()), list(net.head.parameters())
    trainer.optimizer = trainer.build_optimizer(trainer.recipe_groups(net, backbone, head, trainer.config.lr))
    for t in range(STEPS):
        trainer.set_lr(t)
        for p in net.parameters():
            p.grad = torch.sin(3 * p.detach() + t)
        trainer.optimizer.step()
    for name, p in net.named_parameters():
        np.testing.assert_allclose(p.detach().flatten().numpy(), GOLDEN[recipe][name], rtol=RTOL, atol=0)


def test_eps_momentum_follows_weight_decay_and_batchnorm_stays_out():
    """EPS's PolyOptimizer at lr 0.1, wd 1e-4 (momentum = wd = 1e-4), its groups built from
    Conv2d layers only (BatchNorm never optimised). Reference: halbielee/EPS @ 0c2cdd03
    ``util/torchutils.py`` ``PolyOptimizer`` + ``module/optimizer.py``, run on a seeded
    Conv2d(3, 4, 3)+BatchNorm2d(4) backbone and Conv2d(4, 2, 1) head (float64); gradient
    sin(arange(numel) + k) at step k, 3 steps of a 10-step poly schedule. Recorded: sum,
    first, second and last entry of each tensor after the 3rd step."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double()
    net = nn.ModuleDict({"backbone": backbone, "classifier": nn.Conv2d(4, 2, 1).double()})
    trainer = object.__new__(VanillaCamTrainer)
    trainer.config = CamTrainConfig(recipe="eps", lr=0.1, weight_decay=1e-4)
    assert trainer.config.momentum == 1e-4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.freeze(net)  # not a ResNet: only the BatchNorm part applies, the rest is said
    assert sorted(str(w.message) for w in caught) == [
        "Sequential has no conv1/bn1: freeze_stem ignored",
        "Sequential has no layer1: detach_stage ignored",
    ]
    trainer.total_steps = 10
    head = list(net["classifier"].parameters())
    trainer.optimizer = trainer.build_optimizer(
        trainer.recipe_groups(net, list(backbone.parameters()), head, trainer.config.lr)
    )
    for k in range(3):
        trainer.set_lr(k)
        for p in net.parameters():
            p.grad = torch.sin(torch.arange(p.numel(), dtype=torch.float64) + k).reshape(p.shape)
            p.grad = p.grad if p.requires_grad else None
        trainer.optimizer.step()
    expected = {
        "backbone.0.weight": (-0.9350998139805385, [-0.15236685592921412, -0.07517217261184611, -0.31804100809650404]),
        "backbone.0.bias": (-0.42238571899230526, [-0.31245728840972753, -0.3279247851918721, 0.38053870030642734]),
        "backbone.1.weight": (4.0, [1.0, 1.0, 1.0]),
        "backbone.1.bias": (0.0, [0.0, 0.0, 0.0]),
        "classifier.weight": (-2.708249441026143, [-1.813390773801427, -1.3303267318495935, -1.7753733502343079]),
        "classifier.bias": (-6.360571555475554, [-2.822319501816806, -3.538252053658747, -3.538252053658747]),
    }  # fmt: skip
    for name, p in net.named_parameters():
        total, entries = expected[name]
        flat = p.detach().flatten()
        assert float(flat.sum()) == pytest.approx(total, rel=RTOL, abs=1e-12)
        np.testing.assert_allclose([float(flat[0]), float(flat[1]), float(flat[-1])], entries, rtol=RTOL)


def test_the_generic_recipe_is_the_former_behaviour():
    """Two groups, momentum 0.9 on every parameter, weight decay on biases too."""
    net = TwoLayerNet()
    trainer = object.__new__(VanillaCamTrainer)
    trainer.config = CamTrainConfig(recipe="generic")
    groups = trainer.recipe_groups(net, list(net.backbone.parameters()), list(net.head.parameters()), 0.1)
    optimizer = trainer.build_optimizer(groups)
    assert [(g["name"], g["lr"], g["momentum"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("backbone", 0.1, 0.9, 1e-4),
        ("head", 1.0, 0.9, 1e-4),
    ]


def test_each_method_defaults_to_its_authors_recipe():
    expected = {
        "cam": "irn",
        "puzzle": "puzzlecam",
        "oc-cse": "oc-cse",
        "p-oc": "pnoc",
        "p-noc": "pnoc",
        "eps": "eps",
        "smvwe": "eps",
    }
    assert expected == DEFAULT_RECIPE_BY_METHOD
    for method, name in expected.items():
        config = CamTrainConfig().for_method(method)
        assert config.recipe == name
        assert {k: getattr(config, k) for k in RECIPES[name].values()} == {
            k: v for k, v in RECIPES[name].values().items()
        }
    # networks of the other stages (C²AM, affinity, segmentation) keep the toolkit's recipe
    assert CamTrainConfig().for_method("affinity").recipe == "generic"
    irn = CamTrainConfig().for_method("cam")
    assert (irn.momentum, irn.weight_decay, irn.nesterov, irn.batchnorm, irn.freeze_stem, irn.detach_stage) == (
        1e-4, 1e-4, False, "frozen-stats", True, 2,
    )  # fmt: skip
    assert (irn.resize, irn.long_side_range, irn.crop_size, irn.batch_size, irn.epochs) == (
        "long-side", (320, 640), 512, 16, 5,
    )  # fmt: skip
    pnoc = CamTrainConfig().for_method("p-noc")
    assert (pnoc.momentum, pnoc.bias_lr_mult, pnoc.bias_weight_decay, pnoc.head_lr_mult) == (
        0.0,
        2.0,
        False,
        10.0,
    )
    assert (pnoc.batch_size, pnoc.accumulate, pnoc.epochs, pnoc.label_smoothing) == (32, 2, 15, 0.1)


def test_values_set_by_the_user_win_over_the_recipe():
    config = CamTrainConfig(momentum=0.5, batch_size=4, crop_size=64).for_method("p-noc")
    assert (config.recipe, config.momentum, config.batch_size, config.crop_size) == ("pnoc", 0.5, 4, 64)
    assert (config.accumulate, config.label_smoothing) == (2, 0.1)  # the rest is still the recipe's
    assert CamTrainConfig(recipe="irn", optimizer="adamw").lr == 1e-3  # the recipe's LR is an SGD one
    explicit = CamTrainConfig(recipe="pnoc", accumulate=1)
    assert explicit.for_method("cam") is explicit  # a named recipe is not replaced by the method's
    assert explicit.accumulate == 1 and explicit.momentum == 0.0
    # the resolved config round-trips through YAML/JSON unchanged
    assert CamTrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(WsssError, match="unknown training recipe 'nope'"):
        CamTrainConfig(recipe="nope")
    with pytest.raises(WsssError, match="must be a multiple of accumulate"):
        CamTrainConfig(recipe="pnoc", batch_size=5)


# IRN's random_resize_long with the drawn long side fixed: (input shape, long side) → output
# shape and sha256 of its bytes; the inputs are np.random.default_rng(0) draws in this order.
RESIZE_GOLDEN = [
    ((37, 53, 3), 333, (232, 333, 3), "04e7565a1373cfc0636323c5e37c0e937614a998bb43daf863f33cafe9e11762"),
    ((53, 37, 3), 401, (401, 280, 3), "0b2b62f46941f14ce47718d4503068e5d3e0fe4fc6c5aeab0d934d01e4f9d82a"),
    ((40, 40, 3), 320, (320, 320, 3), "d84dcaa251df0024155b1c7a9ee536b66f170d2583128a42eb75a786fa1ebb99"),
    ((45, 91, 3), 91, (45, 91, 3), "d3b7b67e65e66920ba9ee3549d8fd5e678e5c768251ab068c7cb3d06e7fec3a4"),
    ((3, 4, 3), 6, (4, 6, 3), "09d0b807d8496afad689c6ce7046a58e03a0a1ad789decc3d961383ec8a061de"),  # 4.5 → 4
]


def test_long_side_resize_is_irns_pil_bicubic_bit_for_bit():
    rng = np.random.default_rng(0)
    for shape, long_side, out_shape, digest in RESIZE_GOLDEN:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        out = pil_bicubic_resize(image, long_side_size(image.shape, long_side))
        assert out.shape == out_shape and out.dtype == np.uint8
        assert hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest() == digest


@pytest.fixture(scope="module")
def train_set(voc_like):
    return build_dataset("synthetic", voc_like, "train")


def tiny(**overrides) -> CamTrainConfig:
    base = dict(
        backbone="resnet18", crop_size=64, batch_size=4, epochs=1, num_workers=0, checkpoint_every=1000
    )
    return CamTrainConfig(**{**base, **overrides})


def test_irn_freezes_batchnorm_the_stem_and_the_first_two_stages(train_set, tmp_path):
    trainer = build_trainer(train_set, tmp_path, tiny(), method="cam", progress=False)
    assert trainer.config.recipe == "irn"
    model = trainer.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train_step(trainer.to_device(next(iter(trainer.loader(0)))))
    after = model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)  # FixedBatchNorm
    frozen = [
        k
        for k in before
        if k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2"))
    ]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # stem + detach after layer2
    for k in ("backbone.layer3.0.conv1.weight", "backbone.layer4.1.bn2.weight", "classifier.weight"):
        assert not torch.equal(before[k], after[k]), k  # the rest learns (BN affine included)


def test_pnoc_accumulation_adds_the_micro_batch_gradients(train_set, tmp_path):
    """P-NOC's train_pnoc.py backpropagates each micro-batch's mean loss and never divides."""
    config = tiny(recipe="pnoc", lr=1e-3)
    trainer = build_trainer(train_set, tmp_path, config, method="cam", progress=False)
    batch = trainer.to_device(next(iter(trainer.loader(0))))
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    expected: dict[str, torch.Tensor] = {}
    trainer.model.train()
    for half in trainer.micro_batches(batch):
        assert half["image"].shape[0] == 2
        trainer.model.zero_grad(set_to_none=True)
        trainer.step(half)["loss"].backward()
        for n, p in trainer.model.named_parameters():
            expected[n] = expected.get(n, 0.0) + p.grad
    trainer.model.load_state_dict(state)  # the BatchNorm statistics as before
    seen = {}
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda: (
        seen.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()}),
        step(),
    )
    trainer.train_step(batch)
    for n, grad in expected.items():
        torch.testing.assert_close(seen[n], grad, rtol=1e-5, atol=1e-7)


def test_train_cam_with_the_irn_recipe_records_it(train_set, tmp_path):
    out = tmp_path / "irn"
    train_cam(train_set, out, tiny(recipe="irn", epochs=1), method="cam", progress=False)
    recorded = json.loads((out / "run.json").read_text())
    text = json.dumps(recorded)
    assert '"recipe": "irn"' in text and '"detach_stage": 2' in text and '"momentum": 0.0001' in text
    with pytest.raises(WsssError):  # the folder holds a model trained with another recipe
        train_cam(train_set, out, tiny(recipe="generic"), method="cam", progress=False)


def test_cli_recipe_option(train_set, voc_like, tmp_path):
    bad = wsss_in_process(
        "cam", "train", "--data", str(voc_like), "--out", str(tmp_path / "x"), "--recipe", "irm"
    )
    assert bad.returncode != 0 and "'irm' is not one of: auto, eps, generic, irn" in bad.stderr
    out = tmp_path / "cli"
    ok = wsss_in_process(
        "cam", "train", "--data", str(voc_like), "--out", str(out), "--recipe", "pnoc", "-q",
        *(f"--set={kv}" for kv in ("backbone=resnet18", "epochs=1", "batch_size=8", "crop_size=32",
                                   "num_workers=0", "stop_after_steps=0")),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    settings = json.loads((out / "settings.json").read_text())
    assert '"recipe": "pnoc"' in json.dumps(settings) and '"accumulate": 2' in json.dumps(settings)


def test_color_jitter_is_a_function_of_the_draws():
    image = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    strengths = (0.3, 0.3, 0.3, 0.1)
    first = color_jitter(image, strengths, np.random.default_rng(5))
    assert first.shape == image.shape and first.dtype == np.uint8 and not np.array_equal(first, image)
    np.testing.assert_array_equal(first, color_jitter(image, strengths, np.random.default_rng(5)))
    np.testing.assert_array_equal(color_jitter(image, (0.0,) * 4, np.random.default_rng(5)), image)
