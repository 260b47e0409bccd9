"""Every τ's confusion matrix from one pass: Algorithm 1 as a cumulative histogram.

For Algorithm 1 (see :mod:`wsss.pseudo.threshold`), a pixel's label at τ is its top
CAM class when its (background-folded) CAM peak wins at τ, else its fallback (background,
or "no prediction" for a salient pixel left as background). Winning is monotone in τ:
the pixel wins for exactly the first ``n`` of the sorted thresholds, ``n`` being the
number of τ at or below its peak (below it, with the strict rule). So counting the
pixels per (ground-truth class, top class, fallback, n) once, and summing those counts
from the top, gives the confusion matrix at every τ: 60 thresholds cost about what one
costs. :class:`TauHistogram` does the counting, on the CPU with NumPy or on any torch
device (a batch of images is just their pixels concatenated), and
:meth:`TauHistogram.confusions` turns the counts into per-τ ``ConfusionMetric`` totals.
"""

from __future__ import annotations

import numpy as np

from wsss.io import IGNORE

__all__ = ["PixelTerms", "TauHistogram", "pixel_terms"]


class PixelTerms:
    """One image's labelled pixels under one saliency source, as the histogram needs them.

    ``cell``: int32 ``(gt * K + top_class) * 2 + fallback_is_ignore`` per labelled pixel;
    ``peak``: float32 background-folded CAM peak (-inf where the class cannot win).
    """

    __slots__ = ("cell", "peak")

    def __init__(self, cell: np.ndarray, peak: np.ndarray):
        self.cell = cell
        self.peak = peak


def pixel_terms(
    gt: np.ndarray,
    peak: np.ndarray,
    top_class: np.ndarray,
    fallback: np.ndarray | np.uint8,
    num_classes: int,
) -> PixelTerms:
    """The labelled pixels' histogram cells and peaks (``peak``/``fallback`` as
    :class:`~wsss.pseudo.threshold.ThresholdLabeller` folds them)."""
    labelled = gt != IGNORE
    ignore_bit = np.broadcast_to(np.asarray(fallback) == IGNORE, gt.shape)
    cell = gt.astype(np.int32) * num_classes + top_class
    cell = cell * 2 + ignore_bit
    if labelled.all():
        return PixelTerms(cell.ravel(), peak.ravel())
    return PixelTerms(cell[labelled], peak[labelled])


class TauHistogram:
    """Counts of labelled pixels per (GT class, top class, fallback, number of τ won).

    ``taus`` must be sorted ascending; ``keep_at_tau``: a peak equal to τ wins (the
    released code's rule with saliency) rather than only a peak above it. ``device``:
    ``"numpy"`` (CPU) or a torch device name (``"cpu"`` runs the torch path on the CPU,
    as the tests do to check it against NumPy).
    """

    def __init__(self, taus: list[float], num_classes: int, keep_at_tau: bool, device: str = "numpy"):
        self.taus32 = np.asarray(taus, dtype=np.float32)
        if (np.diff(self.taus32) < 0).any():
            raise ValueError("taus must be sorted ascending")
        self.num_classes = int(num_classes)
        self.keep_at_tau = bool(keep_at_tau)
        self.device = device
        self.num_bins = 2 * self.num_classes**2 * (len(taus) + 1)
        self.num_images = 0
        if device == "numpy":
            self.counts = np.zeros(self.num_bins, np.int64)
        else:
            import torch

            self._torch = torch
            self._taus_t = torch.from_numpy(self.taus32).to(device)
            self.counts = torch.zeros(self.num_bins, dtype=torch.int64, device=device)

    def add(self, terms: list[PixelTerms], num_images: int = 1) -> None:
        """Count the pixels of one or more images (concatenated: the counts add up)."""
        if not terms:
            return
        cell = terms[0].cell if len(terms) == 1 else np.concatenate([t.cell for t in terms])
        peak = terms[0].peak if len(terms) == 1 else np.concatenate([t.peak for t in terms])
        width = len(self.taus32) + 1
        if self.device == "numpy":
            side = "right" if self.keep_at_tau else "left"
            won = np.searchsorted(self.taus32, peak, side=side).astype(np.int32, copy=False)
            self.counts += np.bincount(cell * width + won, minlength=self.num_bins)
        else:
            torch = self._torch
            peak_t = torch.from_numpy(np.ascontiguousarray(peak)).to(self.device, non_blocking=True)
            cell_t = torch.from_numpy(np.ascontiguousarray(cell)).to(self.device, non_blocking=True)
            # bucketize(right=True) counts the boundaries <= x, right=False those < x
            won = torch.bucketize(peak_t, self._taus_t, right=self.keep_at_tau)
            self.counts += torch.bincount(cell_t.long() * width + won, minlength=self.num_bins)
        self.num_images += num_images

    def merge(self, other: TauHistogram) -> None:
        if other.num_bins != self.num_bins or other.keep_at_tau != self.keep_at_tau:
            raise ValueError("can only merge τ histograms of the same classes, τ grid and tie rule")
        self.counts += other.host_counts() if self.device == "numpy" else other.counts.to(self.device)
        self.num_images += other.num_images

    def host_counts(self) -> np.ndarray:
        if self.device == "numpy":
            return self.counts
        return self.counts.cpu().numpy()

    def __getstate__(self) -> dict:
        # workers send NumPy counts back; a torch tensor (and module) need not travel
        state = {k: v for k, v in self.__dict__.items() if k not in ("_torch", "_taus_t")}
        state["counts"] = self.host_counts()
        state["device"] = "numpy"
        return state

    def confusions(self) -> tuple[np.ndarray, np.ndarray]:
        """(T×K×K confusion matrices, T×K unpredicted counts), one per τ in order."""
        k, t = self.num_classes, len(self.taus32)
        counts = self.host_counts().reshape(k, k, 2, t + 1)
        # wins at τ index i = pixels whose number of τ won exceeds i
        wins = np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1][..., 1:]  # K×K×2×T
        losses = counts.sum(axis=-1, keepdims=True) - wins
        confusion = wins.sum(axis=2).transpose(2, 0, 1).copy()  # T×K(gt)×K(pred)
        confusion[:, :, 0] += losses[:, :, 0, :].sum(axis=1).T  # background fallback
        unpredicted = losses[:, :, 1, :].sum(axis=1).T.copy()  # "no prediction" fallback
        return confusion, unpredicted
