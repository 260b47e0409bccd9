"""Backbones from timm with the last stage dilated (output stride 16), as CAM methods need.

A coarse stride-32 map loses small objects; every WSSS reference (IRN, Puzzle-CAM,
P-NOC) dilates the last stage instead, which timm does for any CNN that supports
``output_stride``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from wsss.io import WsssError

_CHECKPOINT_NESTING = ("state_dict", "model", "state_dict_ema", "model_ema", "net", "module")
_KEY_PREFIXES = ("", "module.", "backbone.", "model.", "encoder.", "module.backbone.")


def build_backbone(
    name: str,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    output_stride: int = 16,
    out_indices: tuple[int, ...] = (-1,),
    head_conv: bool = False,
) -> tuple[nn.Module, int]:
    """(timm feature extractor returning the list of maps of ``out_indices`` — by default
    [last map] —, their total channel count).

    ``head_conv`` (EfficientNets): the last map is the one the ImageNet classifier pools —
    after its 1×1 head conv, BatchNorm and activation (1,280 channels for Lite0) — rather
    than the last block's linear bottleneck, whose output has no activation and carries
    a large per-image offset into every class map.

    ``pretrained``: ImageNet weights — from an installed package for the backbones of
    :data:`wsss.models.pretrained.PACKAGED_WEIGHTS` (offline), else timm's download (needs
    network). ``weights`` loads a local ``.pth``/``.pt``/``.safetensors`` file instead (a
    classifier checkpoint of the same architecture: its head is ignored). Neither: random init.
    """
    import timm

    from wsss.models.pretrained import PACKAGED_WEIGHTS, packaged_state_dict, packaged_weights

    if pretrained and weights is not None:
        raise WsssError(f"{weights}: give either pretrained=True or a local weights file, not both")
    packaged = packaged_state_dict(name) if pretrained and packaged_weights(name) else None
    if head_conv and tuple(out_indices) != (-1,):
        raise WsssError(f"{name}: head_conv gives the last map only (out_indices {out_indices})")
    try:
        if head_conv:
            body = _HeadConvFeatures(
                timm.create_model(
                    name,
                    num_classes=0,
                    global_pool="",
                    output_stride=output_stride,
                    pretrained=pretrained and packaged is None,
                ),
                name,
            )
        else:
            body = timm.create_model(
                name,
                features_only=True,
                output_stride=output_stride,
                pretrained=pretrained and packaged is None,
                out_indices=out_indices,
            )
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise WsssError(f"{name}: unknown timm backbone ({e})") from None
        raise WsssError(f"{name}: cannot build backbone with output_stride={output_stride} ({e})") from None
    except (AssertionError, TypeError, ValueError) as e:
        raise WsssError(f"{name}: backbone does not support output_stride={output_stride} ({e})") from None
    except OSError as e:  # download failures (no network, HF hub errors derive from OSError)
        raise WsssError(
            f"{name}: cannot fetch pretrained weights ({e}); pass weights=PATH for a local checkpoint, "
            f"or use a backbone whose weights install as a package ({', '.join(sorted(PACKAGED_WEIGHTS))})"
        ) from None
    if packaged is not None:
        load_state_into(body, packaged, f"{name} (packaged weights)", name)
    if weights is not None:
        load_backbone_weights(body, weights, name)
    if head_conv:
        return body, body.num_features
    return body, int(sum(body.feature_info.channels()))


class _HeadConvFeatures(nn.Module):
    """An EfficientNet-style timm classifier up to its head conv (stem, blocks, 1×1 head
    conv + BN + activation), returning [that map]; the parameter names are timm's own, so
    ImageNet checkpoints load unchanged."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        parts = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")
        if not all(isinstance(getattr(model, p, None), nn.Module) for p in parts):
            raise WsssError(
                f"{name}: head_conv needs an EfficientNet-style backbone (conv_stem … conv_head, bn2)"
            )
        for p in parts:
            setattr(self, p, getattr(model, p))
        self.num_features = int(model.num_features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.blocks(self.bn1(self.conv_stem(x)))
        return [self.bn2(self.conv_head(x))]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint, unwrapping the usual nesting
    (``{"state_dict": ...}``, ``{"model": ...}``) that training scripts add."""
    path = Path(path)
    if not path.is_file():
        raise WsssError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many unrelated types for corrupt files
        raise WsssError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    for _ in range(3):
        if not isinstance(state, dict):
            break
        nested = next((state[k] for k in _CHECKPOINT_NESTING if isinstance(state.get(k), dict)), None)
        if nested is None:
            break
        state = nested
    if not isinstance(state, dict) or not state:
        raise WsssError(f"{path}: no state dict found in the file")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise WsssError(f"{path}: the file holds no tensors")
    return tensors


def load_backbone_weights(body: nn.Module, path: str | os.PathLike, name: str = "") -> None:
    """Load a local checkpoint into ``body`` (the backbone ``name``, for messages): classifier
    heads and other extra keys are ignored, but every backbone tensor must be present with the
    right shape."""
    path = Path(path)
    load_state_into(body, read_state_dict(path), str(path), name)


def load_state_into(body: nn.Module, state: dict[str, torch.Tensor], source: str, name: str = "") -> None:
    """Fill every tensor of ``body`` from ``state`` (extra keys ignored); anything missing or
    of the wrong shape is one error line naming ``source``."""
    target = body.state_dict()
    what = f"backbone {name}" if name else "the backbone"
    # Checkpoints from DDP, our CamNet or other toolkits prefix the keys; pick the prefix that fits best.
    best_prefix, best_hits = "", -1
    for prefix in _KEY_PREFIXES:
        hits = sum(1 for k in target if prefix + k in state)
        if hits > best_hits:
            best_prefix, best_hits = prefix, hits
    if best_hits == 0:
        raise WsssError(f"{source}: no tensor matches {what} (e.g. expected {next(iter(target))!r})")
    missing = [k for k in target if best_prefix + k not in state]
    if missing:
        raise WsssError(
            f"{source}: does not fit {what}: {len(missing)} of its {len(target)} tensors missing, "
            f"e.g. {missing[:3]}"
        )
    wrong = [
        f"{k} {tuple(state[best_prefix + k].shape)} vs {tuple(v.shape)}"
        for k, v in target.items()
        if state[best_prefix + k].shape != v.shape
    ]
    if wrong:
        raise WsssError(
            f"{source}: does not fit {what}: {len(wrong)} tensors have the wrong shape, e.g. {wrong[:3]}"
        )
    body.load_state_dict({k: state[best_prefix + k] for k in target}, strict=True)
