"""Stage 3: pseudo labels from CAMs (threshold + saliency, the τ sweep that picks τ) and their
refinement (dense CRF, affinity random walk, SEPL with class-agnostic masks).

Submodules load on first use (PEP 562), so a command that needs only thresholding
(`wsss pseudo`) does not pay for torch's import.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "make_affinity_labels": "affinity",
    "train_affinity": "affinity",
    "CrfParams": "crf",
    "crf_labels": "crf",
    "crf_probs": "crf",
    "build_mask_generator": "masks",
    "generate_masks": "masks",
    "load_masks": "masks",
    "save_masks": "masks",
    "random_walk": "random_walk",
    "refine_cams": "random_walk",
    "crf_refine": "refine_crf",
    "make_sepl_labels": "sepl",
    "sepl_merge": "sepl",
    "default_taus": "sweep",
    "sweep_tau": "sweep",
    "write_sweep": "sweep",
    "make_pseudo_labels": "threshold",
    "threshold_pseudo_label": "threshold",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wsss.pseudo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"wsss.pseudo.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
