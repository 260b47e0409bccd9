"""Stage 3: pseudo labels from CAMs (threshold + saliency, the τ sweep that picks τ) and their
refinement (dense CRF, affinity random walk, SEPL with class-agnostic masks)."""

from wsss.pseudo.affinity import make_affinity_labels, train_affinity
from wsss.pseudo.crf import CrfParams, crf_labels, crf_probs
from wsss.pseudo.masks import build_mask_generator, generate_masks, load_masks, save_masks
from wsss.pseudo.random_walk import random_walk, refine_cams
from wsss.pseudo.refine_crf import crf_refine
from wsss.pseudo.sepl import make_sepl_labels, sepl_merge
from wsss.pseudo.sweep import default_taus, sweep_tau, write_sweep
from wsss.pseudo.threshold import make_pseudo_labels, threshold_pseudo_label

__all__ = [
    "CrfParams",
    "build_mask_generator",
    "crf_labels",
    "crf_probs",
    "crf_refine",
    "default_taus",
    "generate_masks",
    "load_masks",
    "make_affinity_labels",
    "make_pseudo_labels",
    "make_sepl_labels",
    "save_masks",
    "random_walk",
    "refine_cams",
    "sepl_merge",
    "sweep_tau",
    "threshold_pseudo_label",
    "train_affinity",
    "write_sweep",
]
