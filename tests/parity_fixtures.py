"""Inputs shared by the parity tests whose expected values were recorded on the same image."""

from __future__ import annotations

import numpy as np

H, W = 20, 28


def textured_regions_image() -> np.ndarray:
    """uint8 20×28×3: three regions of close colours (left, right, an inner box) under a
    deterministic texture, so a dense CRF's result depends on every kernel."""
    i, j, c = np.meshgrid(np.arange(H), np.arange(W), np.arange(3), indexing="ij")
    image = np.zeros((H, W, 3), np.int64)
    image[:, :14] = (120, 100, 90)
    image[:, 14:] = (100, 110, 120)
    image[6:14, 4:10] = (95, 125, 95)
    return np.clip(image + (i * i * 7 + j * j * 13 + i * j * 3 + c * 5) % 61 - 30, 0, 255).astype(np.uint8)
