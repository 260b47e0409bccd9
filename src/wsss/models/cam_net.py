"""The CAM classifier of docs/methods.md §1 and its on-disk form (safetensors + a small json).

backbone (stride 16) → 1×1 conv, C outputs, no bias → F; logits = GAP(F); CAM = relu(F).
Saliency-supervised methods (EPS, SMVWE) add a background map, stored last (C + 1 maps);
the logits stay the C foreground ones so every consumer of ``(logits, maps)`` sees the
same classes, and ``maps[:, :C]`` are the foreground CAMs.
Taking GAP after the 1×1 conv (instead of before) is the same classifier, but it hands
every method the class maps F directly, so Puzzle/OC-CSE/P-NOC can build on it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsss.io import WsssError, read_json, write_json
from wsss.models.backbone import build_backbone
from wsss.models.pretrained import IMAGENET_MEAN, IMAGENET_STD

MODEL_FORMAT = "wsss-camnet-1"


class CamNet(nn.Module):
    def __init__(
        self,
        backbone: str,
        num_classes: int,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        output_stride: int = 16,
        background_map: bool = False,
        head_conv: bool = False,
    ):
        """``num_classes`` counts the C foreground classes; ``background_map`` adds one more
        output map (last) for methods that model the background explicitly; ``head_conv``
        takes the CAM from an EfficientNet's head conv (:func:`build_backbone`)."""
        super().__init__()
        if num_classes < 1:
            raise WsssError(f"{backbone}: num_classes must be >= 1, got {num_classes}")
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.background_map = background_map
        self.head_conv = head_conv
        self.backbone, self.feature_channels = build_backbone(
            backbone, pretrained, weights, output_stride, head_conv=head_conv
        )
        num_maps = num_classes + 1 if background_map else num_classes
        self.classifier = nn.Conv2d(self.feature_channels, num_maps, kernel_size=1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last backbone map (B×D×h×w), for methods that read the features themselves."""
        return self.backbone(x)[-1]

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits B×C, class maps F B×C×h×w — B×(C+1)×h×w with the background map);
        CAM = relu(F). ``return_features`` also returns the backbone map, through the same
        call so that a DDP wrapper sees every use of the parameters."""
        features = self.features(x)
        maps = self.classifier(features)
        logits = maps[:, : self.num_classes].mean(dim=(2, 3))
        if return_features:
            return logits, maps, features
        return logits, maps

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone params, head params): the head trains at a higher learning rate."""
        return list(self.backbone.parameters()), list(self.classifier.parameters())

    def meta(self) -> dict[str, Any]:
        meta = {
            "format": MODEL_FORMAT,
            "backbone": self.backbone_name,
            "num_classes": self.num_classes,
            "output_stride": self.output_stride,
        }
        if self.background_map:  # absent in older files: they are C-map models
            meta["background_map"] = True
        if self.head_conv:  # absent in older files
            meta["head_conv"] = True
        return meta


def model_weights_path(path_or_dir: str | os.PathLike) -> Path:
    """A training folder or a weights file → the ``.safetensors`` file."""
    path = Path(path_or_dir)
    return path / "model.safetensors" if path.is_dir() else path


def _paths(path_or_dir: str | os.PathLike) -> tuple[Path, Path]:
    path = model_weights_path(path_or_dir)
    return path, path.with_suffix(".json")


def write_model_files(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any], fmt: str) -> Path:
    """``<path>`` (safetensors; a folder means ``<folder>/model.safetensors``) and ``<stem>.json``
    (``meta``: what the loader needs to rebuild the net). Both atomic; json first, so an
    existing ``.safetensors`` always has its json. Shared by every network the stages train."""
    from safetensors.torch import save_file

    from wsss.io import atomic_path

    weights_path, meta_path = _paths(path)
    write_json(meta_path, meta)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights_path) as tmp:
        save_file(state, str(tmp), metadata={"format": fmt})
    return weights_path


def read_model_meta(path_or_dir: str | os.PathLike, fmt: str, what: str) -> tuple[Path, dict[str, Any]]:
    """(weights path, json) of a saved network, refused unless its json has format ``fmt``."""
    weights_path, meta_path = _paths(path_or_dir)
    if not weights_path.is_file():
        raise WsssError(f"{weights_path}: {what} model not found")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise WsssError(f"{meta_path}: not a {what} model (expected format {fmt!r})")
    return weights_path, meta


def load_model_weights(
    model: nn.Module, weights_path: Path, meta: dict[str, Any], what: str, device: str | torch.device | None
) -> nn.Module:
    """Fill a rebuilt network from its safetensors; eval mode on ``device``, json as ``.meta_info``."""
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(str(weights_path), device="cpu"), strict=True)
    except Exception as e:  # safetensors/torch raise several types for corrupt or mismatched files
        raise WsssError(f"{weights_path}: cannot load {what} weights ({type(e).__name__}: {e})") from None
    model.meta_info = meta
    model.eval()
    return model.to(resolve_device(device))


def save_cam_model(model: CamNet, path: str | os.PathLike, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write the weights and the json :func:`load_cam_model` needs (backbone, classes, normalisation)."""
    meta = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **model.meta(), **(extra_meta or {})}
    return write_model_files(model, path, meta, MODEL_FORMAT)


def load_cam_model(path_or_dir: str | os.PathLike, device: str | torch.device | None = None) -> CamNet:
    """A trained :class:`CamNet` in eval mode; ``.meta_info`` holds the json (mean/std, class names…)."""
    from safetensors.torch import load_file

    weights_path, meta_path = _paths(path_or_dir)
    if not weights_path.is_file():
        raise WsssError(f"{weights_path}: CAM model not found")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or "backbone" not in meta or "num_classes" not in meta:
        raise WsssError(f"{meta_path}: expected keys 'backbone' and 'num_classes'")
    model = CamNet(
        meta["backbone"],
        int(meta["num_classes"]),
        output_stride=int(meta.get("output_stride", 16)),
        background_map=bool(meta.get("background_map", False)),
        head_conv=bool(meta.get("head_conv", False)),
    )
    try:
        state = load_file(str(weights_path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise WsssError(f"{weights_path}: cannot read weights ({type(e).__name__}: {e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WsssError(
            f"{weights_path}: weights do not fit {meta['backbone']} with {meta['num_classes']} classes ({e})"
        ) from None
    model.meta_info = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **meta}
    model.eval()
    return model.to(resolve_device(device))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None → this process's GPU (``LOCAL_RANK`` under torchrun) if there is one, else the CPU."""
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise WsssError(f"{device}: not a valid torch device ({e})") from None
