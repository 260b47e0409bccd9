"""Named training recipes for stage 1: each authors' optimiser, parameter groups, schedule,
augmentation, batch/accumulation and freezing, as their released code runs them.

A recipe only supplies defaults: :class:`~wsss.cam.base.CamTrainConfig` takes every field a
recipe controls from it unless the user set that field. ``recipe: auto`` picks the method's
authors' recipe (:data:`DEFAULT_RECIPE_BY_METHOD`); ``generic`` is the toolkit's own recipe
(SGD with momentum 0.9, random rescale 0.5–1.5), kept for the demo configs and for
networks trained from scratch.

What the recipes reproduce (and why they differ from the papers' text) is in
docs/methods.md; the checks against the authors' code are in tests/test_parity_recipes.py.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from torch import nn

from wsss.io import WsssError

BATCHNORM_MODES = ("train", "frozen-stats", "frozen")
RESIZE_MODES = ("scale", "long-side")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Values of every recipe-controlled :class:`~wsss.cam.base.CamTrainConfig` field.

    ``bias_lr_mult``/``bias_weight_decay``: parameters whose name lacks "weight" (biases,
    in P-NOC's rule) train at their group's LR × ``bias_lr_mult``, without weight decay
    when ``bias_weight_decay`` is off. ``batchnorm``: "train" (ordinary), "frozen-stats"
    (running statistics fixed, affine parameters learn: IRN's FixedBatchNorm) or "frozen"
    (statistics and affine parameters fixed: P-NOC's "fix" mode). ``freeze_stem``: the
    backbone's ``conv1``/``bn1`` (EfficientNets: ``conv_stem``/``bn1``) take no gradient.
    ``detach_stage``: k > 0 detaches the output of backbone stage ``layer<k>`` (EfficientNets:
    ``blocks[k-1]``, stages 1–7), so that stage and everything before it stop learning (IRN
    detaches stage 2; those parameters are marked frozen as well). ``resize``:
    "scale" draws a factor in ``scale_range`` (bilinear); "long-side" draws the long side in
    ``long_side_range`` px, inclusive (PIL bicubic, IRN's ``random_resize_long``).
    ``color_jitter``: (brightness, contrast, saturation, hue) of torchvision's
    ``ColorJitter`` (all 0: none). ``batch_size`` counts the images of one optimiser step,
    split into ``accumulate`` micro-batches whose gradients add up (P-NOC's 16 × 2 is
    ``batch_size`` 32, ``accumulate`` 2).

    The ResNet-38 recipes (OC-CSE's, EPS's) freeze ``conv1a`` and stage ``b2``; on the
    toolkit's ResNets that is the stem and ``layer1`` (``freeze_stem`` + ``detach_stage=1``).
    EPS counts 20,000 iterations of batch 8: 15 epochs of VOC's 10,582 images (15.1).
    """

    name: str
    source: str
    lr: float = 0.1  # for SGD (every recipe's optimiser); AdamW's default LR is the config's
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    bias_lr_mult: float = 1.0
    bias_weight_decay: bool = True
    poly_power: float = 0.9
    epochs: int = 5
    batch_size: int = 16
    accumulate: int = 1
    crop_size: int = 512
    resize: str = "scale"
    scale_range: tuple[float, float] = (0.5, 1.5)
    long_side_range: tuple[int, int] = (320, 640)
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    label_smoothing: float = 0.0
    batchnorm: str = "train"
    freeze_stem: bool = False
    detach_stage: int = 0

    #: the reference's SGD momentum is its weight decay (IRN's PolyOptimizer passes weight_decay
    #: positionally into SGD's momentum slot): a user's ``weight_decay`` moves it too
    momentum_is_weight_decay: bool = False

    def values(self) -> dict[str, Any]:
        """The config fields this recipe sets."""
        return {name: getattr(self, name) for name in RECIPE_FIELDS}


#: the config fields a recipe controls
RECIPE_FIELDS = tuple(
    f.name for f in dataclasses.fields(Recipe) if f.name not in ("name", "source", "momentum_is_weight_decay")
)

_IRN = "jiwoon-ahn/irn@a2ece003 (step/train_cam.py, misc/torchutils.py PolyOptimizer, net/resnet50_cam.py)"
_PUZZLE = "OFRIN/PuzzleCAM@95a75f4d (train_classification_with_puzzle.py, tools/ai/optim_utils.py)"
_OCCSE = "KAIST-vilab/OC-CSE@a833aea5 (train.py, models/model_cse.py, tools/utils.py)"
_PNOC = "lucasdavid/PNOC@6c8950a1 (scripts/cam/train_pnoc.py, tools/ai/optim_utils.py, runners/1-priors.sh)"
_EPS = "halbielee/EPS@0c2cdd03 (main.py, module/optimizer.py, util/torchutils.py, script/voc12_eps.sh)"

# What the two ResNet-38 codes (OC-CSE's, EPS's) share: PolyOptimizer (momentum = wd = 5e-4)
# at lr 0.01 with biases ×2 without decay, 15 epochs of batch 8, long-side resize, colour
# jitter, BatchNorm, stem and first stage frozen.
_RESNET38_POLY: dict[str, Any] = {
    "momentum_is_weight_decay": True,
    "lr": 0.01,
    "momentum": 5e-4,
    "weight_decay": 5e-4,
    "bias_lr_mult": 2.0,
    "bias_weight_decay": False,
    "epochs": 15,
    "batch_size": 8,
    "resize": "long-side",
    "color_jitter": (0.3, 0.3, 0.3, 0.1),
    "batchnorm": "frozen",
    "freeze_stem": True,
    "detach_stage": 1,
}

RECIPES: dict[str, Recipe] = {
    "generic": Recipe(name="generic", source="this toolkit (docs/methods.md)"),
    # IRN's PolyOptimizer hands its weight_decay argument to SGD's momentum slot (positional
    # arguments), so momentum is 1e-4; the groups carry their own weight_decay = 1e-4.
    "irn": Recipe(
        name="irn",
        source=_IRN,
        momentum_is_weight_decay=True,
        momentum=1e-4,
        weight_decay=1e-4,
        resize="long-side",
        batchnorm="frozen-stats",
        freeze_stem=True,
        detach_stage=2,
    ),
    # The same PolyOptimizer with nesterov; biases (BN's β) at 2× LR without weight decay.
    "puzzlecam": Recipe(
        name="puzzlecam",
        source=_PUZZLE,
        momentum_is_weight_decay=True,
        momentum=1e-4,
        nesterov=True,
        bias_lr_mult=2.0,
        bias_weight_decay=False,
        epochs=15,
        batch_size=32,
        resize="long-side",
    ),
    # KAIST's own code (ResNet-38d): PolyOptimizer again (momentum = wd = 5e-4), the classifier
    # among the pretrained layers (no 10× head), BatchNorm, stem and first stage frozen.
    "oc-cse": Recipe(
        name="oc-cse",
        source=_OCCSE,
        head_lr_mult=1.0,
        crop_size=384,
        long_side_range=(256, 448),
        **_RESNET38_POLY,
    ),
    # P-NOC's runner for train_pnoc.py: plain SGD (momentum 0), batch 16 × 2 accumulated
    # micro-batches whose gradients add up, label smoothing 0.1.
    "pnoc": Recipe(
        name="pnoc",
        source=_PNOC,
        momentum=0.0,
        bias_lr_mult=2.0,
        bias_weight_decay=False,
        epochs=15,
        batch_size=32,
        accumulate=2,
        resize="long-side",
        label_smoothing=0.1,
    ),
    # script/voc12_eps.sh with EPS's PolyOptimizer (momentum = wd = 5e-4).
    "eps": Recipe(
        name="eps",
        source=_EPS,
        crop_size=448,
        long_side_range=(256, 512),
        **_RESNET38_POLY,
    ),
}

#: the authors' recipe of each CAM method ("auto"); methods not listed train with "generic"
DEFAULT_RECIPE_BY_METHOD: dict[str, str] = {
    "cam": "irn",
    "puzzle": "puzzlecam",
    "oc-cse": "oc-cse",
    "p-oc": "pnoc",
    "p-noc": "pnoc",
    "eps": "eps",
    "smvwe": "eps",  # no public code; EPS's saliency feedback is its nearest authors' recipe
}


def recipe_for(name: str, method: str | None = None) -> Recipe:
    """The recipe called ``name``; "auto" is the method's authors' recipe ("generic" when
    the method has none or is unknown, e.g. the networks of other stages)."""
    if name == "auto":
        name = DEFAULT_RECIPE_BY_METHOD.get(method or "", "generic")
    if name not in RECIPES:
        raise WsssError(f"unknown training recipe {name!r}; known: auto, {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


# --------------------------------------------------------------------------- freezing
def batchnorm_modules(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_parts(backbone: nn.Module, batchnorm: str, freeze_stem: bool, detach_stage: int) -> None:
    """Apply a recipe's freezing to a backbone (requires_grad and the stage-output detach;
    the eval mode of frozen BatchNorm is :func:`set_batchnorm_mode`'s, after each ``train()``).

    ``conv1``/``bn1``/``layer<k>`` are torchvision/timm ResNet names; a backbone without
    them (e.g. a ViT) cannot follow that part of the recipe and gets a warning instead.
    """
    if batchnorm == "frozen":
        for m in batchnorm_modules(backbone):
            m.requires_grad_(False)
    stem = _stem(backbone)
    if freeze_stem:
        if stem is None:
            warnings.warn(f"{type(backbone).__name__} has no conv1/bn1: freeze_stem ignored", stacklevel=2)
        for s in stem or ():
            s.requires_grad_(False)
    if detach_stage:
        stages = _stages(backbone)
        if stages is None or detach_stage > len(stages):
            warnings.warn(
                f"{type(backbone).__name__} has no layer{detach_stage}: detach_stage ignored", stacklevel=2
            )
        else:
            stages[detach_stage - 1].register_forward_hook(_detach_output)
            # what feeds the detached output gets no gradient: mark it frozen, so that DDP does
            # not wait for gradients that never come (the update is the same: none)
            for part in (*(stem or ()), *stages[:detach_stage]):
                part.requires_grad_(False)


def _stem(backbone: nn.Module) -> list[nn.Module] | None:
    """The stem convolution and its norm: ResNets' conv1/bn1, EfficientNets' conv_stem/bn1."""
    for names in (("conv1", "bn1"), ("conv_stem", "bn1")):
        parts = [getattr(backbone, name, None) for name in names]
        if all(isinstance(p, nn.Module) for p in parts):
            return parts
    return None


def _stages(backbone: nn.Module) -> list[nn.Module] | None:
    """The stages in order: ResNets' layer1…layer4, EfficientNets' blocks[0]…blocks[6]."""
    layers = []
    while isinstance(getattr(backbone, f"layer{len(layers) + 1}", None), nn.Module):
        layers.append(getattr(backbone, f"layer{len(layers) + 1}"))
    if layers:
        return layers
    blocks = getattr(backbone, "blocks", None)
    return list(blocks) if isinstance(blocks, nn.Sequential) else None


def _detach_output(_module: nn.Module, _inputs: Any, output: Any) -> Any:
    return output.detach()


def set_batchnorm_mode(module: nn.Module, batchnorm: str) -> None:
    """After ``module.train()``: BatchNorm back to eval mode unless the recipe trains it."""
    if batchnorm != "train":
        for m in batchnorm_modules(module):
            m.eval()
