"""Training-free saliency baselines from OpenCV contrib's ``cv2.saliency``.

They need no detector, no training and no annotation of any kind, so they run on every
install and give the floor that a learnt source (C²AM) or an imported detector must beat
(seed 000 asks for saliency that needs no pixel-level masks).

* ``spectral-residual`` — Hou & Zhang (CVPR 2007): what the log-amplitude spectrum has
  beyond its local average; computed on a 64×64 copy and already Gaussian-smoothed by OpenCV.
* ``fine-grained`` — Montabone & Soto (2010): centre-surround intensity differences at
  several scales, at full resolution.

Both see only the grey image (OpenCV's BGR→grey weights, applied here to the RGB image in
its own order), so an object that differs from its surround only in hue is invisible to them.
Each map is min-max normalised per image; an image of one grey level has nothing salient
and gets zeros.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import cv2
import numpy as np

from wsss.data.base import Dataset
from wsss.io import WsssError
from wsss.saliency.base import SaliencySource, min_max, register_saliency_source


class OpenCVStaticSaliency(SaliencySource):
    """Option ``blur``: σ of an extra Gaussian smoothing, as a fraction of the image
    diagonal (so that it means the same at every image size); 0 = none."""

    option_defaults: dict[str, Any] = {"blur": 0.0}

    def validate(self) -> None:
        blur = self.options["blur"]
        if (
            isinstance(blur, bool)
            or not isinstance(blur, (int, float))
            or not math.isfinite(blur)
            or blur < 0
        ):
            raise WsssError(
                f"saliency source {self.source_name!r}: option blur must be a number >= 0 "
                f"(σ as a fraction of the image diagonal), got {blur!r}"
            )
        self.options["blur"] = float(blur)
        _cv2_saliency(self.source_name)  # fail at construction, not on the first image

    @abc.abstractmethod
    def _detector(self, module: Any) -> Any:
        """A fresh ``cv2.saliency`` detector (cheap; not shared, as OpenCV objects don't pickle)."""

    def predict(self, dataset: Dataset, image_id: str) -> np.ndarray:
        return self.saliency_map(dataset.image(image_id), where=str(dataset.image_path(image_id)))

    def saliency_map(self, rgb: np.ndarray, where: str = "image") -> np.ndarray:
        """float32 H×W in [0, 1] for an RGB uint8 H×W×3 image (``where`` names it in errors)."""
        gray = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
        if gray.min() == gray.max():
            return np.zeros(gray.shape, np.float32)
        ok, sal = self._detector(_cv2_saliency(self.source_name)).computeSaliency(gray)
        if not ok or sal is None or sal.shape[:2] != gray.shape:
            raise WsssError(f"{where}: OpenCV {self.source_name} saliency failed on this image")
        sal = np.asarray(sal, dtype=np.float32)
        sigma = self.options["blur"] * math.hypot(*gray.shape)
        if sigma > 0:
            sal = cv2.GaussianBlur(sal, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)
        return min_max(sal).astype(np.float32)


@register_saliency_source("spectral-residual")
class SpectralResidualSource(OpenCVStaticSaliency):
    description = "spectral residual (Hou & Zhang, CVPR 2007) of the grey image via cv2.saliency; no training"

    def _detector(self, module: Any) -> Any:
        return module.StaticSaliencySpectralResidual_create()


@register_saliency_source("fine-grained")
class FineGrainedSource(OpenCVStaticSaliency):
    description = (
        "fine-grained centre-surround differences (Montabone & Soto, 2010) of the grey image "
        "via cv2.saliency; no training"
    )

    def _detector(self, module: Any) -> Any:
        return module.StaticSaliencyFineGrained_create()


def _cv2_saliency(source_name: str) -> Any:
    module = getattr(cv2, "saliency", None)
    if module is None:
        raise WsssError(
            f"saliency source {source_name!r}: this OpenCV ({cv2.__version__}) has no cv2.saliency, which "
            "comes with OpenCV contrib: pip uninstall opencv-python opencv-python-headless, then "
            "pip install opencv-contrib-python-headless"
        )
    return module
