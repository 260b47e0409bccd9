"""Parity of the affinity labels with IRN (jiwoon-ahn/irn@a2ece003, ``step/cam_to_ir_label.py``)
and with P-NOC's saliency branch (lucasdavid/PNOC@6c8950a1, ``scripts/rw/make_affinity_labels.py``,
with its runner's FG 0.40, BG 0.10, crf_t 10, gt_prob 0.7).

The expected maps were recorded by running both scripts' per-image code with their own
``crf_inference_label`` on the fixture below, from copies outside this project
("." background, "x" ignore, digits class ids); docs/parity.md.
"""

from __future__ import annotations

import numpy as np
import pytest
from parity_fixtures import H, W, textured_regions_image

from wsss.pseudo.affinity import classic_affinity_label, saliency_affinity_label

pytest.importorskip("pydensecrf.densecrf")

KEYS = np.array([3, 7])  # 1-based ids of the image's two classes

IRN_CLASSIC = [
    "xxxxxxxxxxxxxxxx77xx7xx77xx7",
    "xxxxxxxxxxxxxx7x77xx7x7xx77x",
    "xxxxxxxxxxxxxx7x777777777xx7",
    "xxxxxxxxxxxxxxxxxx777x7x7xx7",
    "xxxxxxxxxxxxxx777777xx7x7xx7",
    "xxxxxxxxxxxxxxx77777xx77777x",
    "xxxx333333xxxxx777777777x7x7",
    "xxxx333333xxxx777xxx7x777777",
    "xxxx333333xxxx7xx77777xx7777",
    "xxxx333333xxxx7xx77777x777x7",
    "xxxx333333xxxxxxx7777777xx7x",
    "xxxx333333xxxx7xx77xx7xx77xx",
    "xxxx333333xxxx777xx77x7x77xx",
    "xxxx333333xxxxxxxxx77x7x77xx",
    "xxxxxxxxxxxxxxxxxxx77xxx7x77",
    "xxxxxxxxxxxxxxxxxxxxx7x777xx",
    "xxxxxxxxxxxxxxxx77777xxxx7xx",
    "xxxxxxxxxxxxxx77xx7xx77xx7xx",
    "xxxxxxxxxxxxxx77xxxxx7x7x777",
    "xxxxxxxxxxxxxx77xx7x7xx77xxx",
]
PNOC_SALIENCY = [
    "..............xxxxxxxxxxxxxx",
    "..............xxxxxxxxxxxxxx",
    "..............xxxxxxxxxxxxxx",
    "..............xxxxxxxxxxxxxx",
    "..............xxxxxxxxxxxxxx",
    "..............xxxxxxxxxxxxxx",
    "....333333....xxxxxxxxxxxxxx",
    "....333333....xxxxxxxxxxxxxx",
    "....333333....xxxxxxxxxxxxxx",
    "....333333....xxxxxxxxxxxxxx",
    "....333333....xxxxxxxxxxxxxx",
    "....333333....xxxxxxxxxxxxxx",
    "....333333....xxxxxxxxxxxxxx",
    "....333333....xxxxxxxxxxxxxx",
    "..............xxxxxxxxxxxxxx",
    "..............xxxxxxxxxxxxxx",
    "..............xxxxxxxxxxxxxx",
    "..............xxxxxxxxxxxxxx",
    "..............xxxxxxxxxxxxxx",
    "..............xxxxxxxxxxxxxx",
]


def fixture() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (three regions of close colours with a texture), two max-normalised CAMs and a
    saliency map in k/255 steps."""
    image = textured_regions_image()
    ii, jj = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    cam1 = np.exp(-((ii - 10) ** 2 + (jj - 7) ** 2) / 30.0)
    cam2 = np.exp(-((ii - 5) ** 2 + (jj - 21) ** 2) / 40.0) * 0.9 + 0.03 * ((ii * jj) % 3)
    cams = np.stack([cam1, cam2]).astype(np.float32)
    cams /= cams.max(axis=(1, 2), keepdims=True) + 1e-5
    saliency = np.clip(0.9 * cam1 + 1.6 * cam2 + 0.03 * ((ii + 2 * jj) % 7) - 0.3, 0, 1).astype(np.float32)
    return image, cams, np.round(saliency * 255) / 255


def as_labels(rows: list[str]) -> np.ndarray:
    return np.array(
        [[{".": 0, "x": 255}.get(ch, int(ch) if ch.isdigit() else -1) for ch in row] for row in rows]
    )


def test_classic_affinity_labels_match_irn():
    image, cams, _ = fixture()
    out = classic_affinity_label(cams, KEYS, image=image, fg_threshold=0.30, bg_threshold=0.05)
    np.testing.assert_array_equal(out, as_labels(IRN_CLASSIC))


def test_saliency_affinity_labels_match_pnoc():
    image, cams, saliency = fixture()
    out = saliency_affinity_label(cams, KEYS, saliency, image=image, sal_threshold=0.10, cam_threshold=0.40)
    np.testing.assert_array_equal(out, as_labels(PNOC_SALIENCY))
