"""Dense CRF (Krähenbühl & Koltun) as the WSSS repos use it: snap a coarse label map to image edges.

docs/methods.md §3: unary from labels with gt_prob 0.7; Gaussian kernel sxy 3, compat 3; bilateral
kernel sxy 50, srgb 5, compat 10; 10 mean-field iterations. :func:`crf_labels` is IRN's
``crf_inference_label`` (the saliency background cue and the random-walk affinity labels use
it); :func:`crf_probs` is the softmax variant (unary = −log p) for soft maps.

Ignore pixels: IRN calls ``unary_from_labels(..., zero_unsure=False)``, which treats every
value as a label, so a 255 in the map would index out of range. Here the unary is built in
NumPy with the same energies (−log gt_prob for the given label, −log((1 − gt_prob)/(n − 1))
for the others) and ignore pixels get the uniform −log(1/n): they carry no evidence and take
the label their similar neighbours pull them to. The output therefore never contains the
ignore value.

``pydensecrf2`` (imported as ``pydensecrf``) is an optional extra, imported only when a CRF
actually runs, so inputs are validated (and fail clearly) without it.

Every function takes an optional ``source`` (the file the arrays came from) that prefixes
error messages, so a bad map in a long run names its file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsss.io import IGNORE, WsssError

__all__ = ["CrfParams", "crf_labels", "crf_probs", "label_unary"]

PROB_CLIP = 1e-8
#: how far a pixel's class probabilities may sum from 1 before crf_probs refuses them
PROB_SUM_TOL = 1e-3


def _prefix(source: str | os.PathLike | None) -> str:
    return f"{source}: " if source is not None else ""


@dataclass
class CrfParams:
    """The dense-CRF settings; defaults are the WSSS repos' (docs/methods.md §3).

    A compat of 0 switches that kernel off (no term is added).
    """

    gt_prob: float = 0.7
    gauss_sxy: float = 3.0
    gauss_compat: float = 3.0
    bi_sxy: float = 50.0
    bi_srgb: float = 5.0
    bi_compat: float = 10.0
    iterations: int = 10

    def __post_init__(self) -> None:
        for name in ("gt_prob", "gauss_sxy", "gauss_compat", "bi_sxy", "bi_srgb", "bi_compat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise WsssError(f"CRF parameter {name} must be a number, got {value!r}")
            if not np.isfinite(value):
                raise WsssError(f"CRF parameter {name} must be finite, got {value}")
            setattr(self, name, float(value))
        if not 0.0 < self.gt_prob < 1.0:
            raise WsssError(f"CRF parameter gt_prob must be in (0, 1), got {self.gt_prob}")
        for name in ("gauss_sxy", "bi_sxy", "bi_srgb"):
            if getattr(self, name) <= 0:
                raise WsssError(f"CRF parameter {name} must be > 0, got {getattr(self, name)}")
        for name in ("gauss_compat", "bi_compat"):
            if getattr(self, name) < 0:
                raise WsssError(f"CRF parameter {name} must be >= 0, got {getattr(self, name)}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, (int, np.integer)):
            raise WsssError(f"CRF parameter iterations must be an integer, got {self.iterations!r}")
        self.iterations = int(self.iterations)
        if self.iterations < 1:
            raise WsssError(f"CRF parameter iterations must be >= 1, got {self.iterations}")

    def to_dict(self) -> dict[str, Any]:
        """For run.json / settings.json: every metric file records its CRF settings."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, source: str = "CRF parameters") -> CrfParams:
        """From a config section; an unknown key or a wrong type is an error naming ``source``."""
        from wsss.config import check_field_types

        if values is not None and not isinstance(values, dict):
            raise WsssError(f"{source}: expected a mapping of CRF parameters, got {values!r}")
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise WsssError(f"{source}: unknown CRF parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**check_field_types(cls, values, source))


def _import_densecrf() -> Any:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise WsssError("dense CRF needs pydensecrf2: pip install pydensecrf2 (or wsss[crf])") from err
    return dcrf


def _check_image(image: np.ndarray, source: str | os.PathLike | None) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise WsssError(f"{_prefix(source)}CRF image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise WsssError(f"{_prefix(source)}CRF image must be H×W×3 RGB, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise WsssError(f"{_prefix(source)}CRF image is empty: shape {image.shape}")
    # the bilateral kernel reads the buffer directly: it must be C-contiguous
    return np.require(image, requirements=["C", "W"])  # pydensecrf needs a writable C buffer


def label_unary(
    labels: np.ndarray,
    num_labels: int,
    gt_prob: float,
    ignore_index: int | None = IGNORE,
) -> np.ndarray:
    """Unary energies (num_labels × H·W, float32) of ``unary_from_labels(zero_unsure=False)``,
    plus the uniform energy −log(1/n) at ``ignore_index`` pixels. Labels must already be valid.
    """
    flat = np.asarray(labels).reshape(-1)
    if num_labels == 1:
        return np.zeros((1, flat.size), dtype=np.float32)
    unary = np.full((num_labels, flat.size), -np.log((1.0 - gt_prob) / (num_labels - 1)), dtype=np.float32)
    known = np.ones(flat.size, dtype=bool) if ignore_index is None else flat != ignore_index
    columns = np.flatnonzero(known)
    unary[flat[columns].astype(np.intp), columns] = -np.log(gt_prob)
    unary[:, ~known] = -np.log(1.0 / num_labels)
    return unary


def _check_labels(
    labels: np.ndarray,
    image_shape: tuple[int, int],
    num_labels: int | None,
    ignore_index: int | None,
    source: str | os.PathLike | None,
) -> tuple[np.ndarray, int]:
    pre = _prefix(source)
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise WsssError(f"{pre}CRF labels must be an integer map, got dtype {labels.dtype}")
    if labels.shape != image_shape:
        raise WsssError(f"{pre}CRF labels have shape {labels.shape} but the image is {image_shape}")
    known = labels if ignore_index is None else labels[labels != ignore_index]
    if num_labels is None:
        if known.size == 0:
            raise WsssError(f"{pre}CRF labels are all ignore ({ignore_index}): give num_labels")
        num_labels = int(known.max()) + 1
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)):
        raise WsssError(f"{pre}CRF num_labels must be an integer, got {num_labels!r}")
    num_labels = int(num_labels)
    if not 1 <= num_labels <= 255:
        # the output is uint8 and 255 is the ignore value of every label PNG
        raise WsssError(f"{pre}CRF num_labels must be in 1..255, got {num_labels}")
    if ignore_index is not None and 0 <= ignore_index < num_labels:
        raise WsssError(f"{pre}CRF ignore_index {ignore_index} collides with labels 0..{num_labels - 1}")
    if known.size:
        low, high = int(known.min()), int(known.max())
        if low < 0 or high >= num_labels:
            bad = low if low < 0 else high
            raise WsssError(
                f"{pre}CRF label {bad} is outside 0..{num_labels - 1}"
                + (f" (and is not the ignore value {ignore_index})" if ignore_index is not None else "")
            )
    return labels, num_labels


def _mean_field(image: np.ndarray, unary: np.ndarray, params: CrfParams) -> np.ndarray:
    """Marginals Q (n × H·W, float32) after ``params.iterations`` mean-field steps."""
    dcrf = _import_densecrf()
    height, width = image.shape[:2]
    num_labels = unary.shape[0]
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if params.gauss_compat > 0:
        crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    if params.bi_compat > 0:
        crf.addPairwiseBilateral(sxy=params.bi_sxy, srgb=params.bi_srgb, rgbim=image, compat=params.bi_compat)
    return np.asarray(crf.inference(params.iterations), dtype=np.float32)


def crf_labels(
    image: np.ndarray,
    labels: np.ndarray,
    num_labels: int | None = None,
    params: CrfParams | None = None,
    ignore_index: int | None = IGNORE,
    source: str | os.PathLike | None = None,
) -> np.ndarray:
    """IRN's ``crf_inference_label``: the MAP labels (uint8 H×W, no ignore value) of a dense
    CRF whose unary trusts each given label with probability ``gt_prob``.

    ``num_labels`` defaults to the largest non-ignore label + 1; pass it when a label may be
    absent from this image (so energies match across images).
    """
    params = params if params is not None else CrfParams()
    image = _check_image(image, source)
    labels, num_labels = _check_labels(labels, image.shape[:2], num_labels, ignore_index, source)
    unary = label_unary(labels, num_labels, params.gt_prob, ignore_index)
    if num_labels == 1:
        _import_densecrf()  # same contract with or without a choice to make
        return np.zeros(image.shape[:2], dtype=np.uint8)
    q = _mean_field(image, unary, params)
    return q.argmax(axis=0).reshape(image.shape[:2]).astype(np.uint8)


def crf_probs(
    image: np.ndarray,
    probs: np.ndarray,
    params: CrfParams | None = None,
    source: str | os.PathLike | None = None,
) -> np.ndarray:
    """Dense CRF on class probabilities (C×H×W, summing to 1 over C): unary −log p with p
    clipped to >= 1e-8; returns the marginals Q (float32 C×H×W, summing to 1 over C).

    Scores that are not probabilities (logits, raw CAMs) are refused: their scale would
    silently set the unary's weight against the pairwise terms. ``params.gt_prob`` is unused.
    """
    pre = _prefix(source)
    params = params if params is not None else CrfParams()
    image = _check_image(image, source)
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating):
        raise WsssError(f"{pre}CRF probabilities must be floating point, got dtype {probs.dtype}")
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise WsssError(f"{pre}CRF probabilities must be C×H×W, got shape {probs.shape}")
    if probs.shape[1:] != image.shape[:2]:
        raise WsssError(
            f"{pre}CRF probabilities have size {probs.shape[1:]} but the image is {image.shape[:2]}"
        )
    probs = probs.astype(np.float32, copy=False)
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1 + PROB_SUM_TOL:
        raise WsssError(f"{pre}CRF probabilities must be finite and in [0, 1]")
    sums = probs.sum(axis=0)
    worst = float(np.abs(sums - 1.0).max())
    if worst > PROB_SUM_TOL:
        raise WsssError(
            f"{pre}CRF probabilities must sum to 1 over classes (off by up to {worst:.3g}); normalise first"
        )
    num_labels, height, width = probs.shape
    unary = -np.log(np.clip(probs, PROB_CLIP, 1.0)).reshape(num_labels, -1)
    q = _mean_field(image, unary, params)
    return q.reshape(num_labels, height, width)
