"""Stage 3: pseudo labels from CAMs (threshold + saliency, and the τ sweep that picks τ)."""

from wsss.pseudo.sweep import default_taus, sweep_tau, write_sweep
from wsss.pseudo.threshold import make_pseudo_labels, threshold_pseudo_label

__all__ = ["default_taus", "make_pseudo_labels", "sweep_tau", "threshold_pseudo_label", "write_sweep"]
