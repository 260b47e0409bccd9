"""Parity of CAM inference's geometry with IRN's and P-NOC's inference code.

Every expected value below was recorded by running the authors' inference on CPU from copies
outside this project, with the stand-in network below in place of the trained one: IRN
(jiwoon-ahn/irn@a2ece003) ``step/make_cam.py`` ``_work`` over ``voc12/dataloader.py``
``VOC12ClassificationDatasetMSF`` (its ``high_res``), and P-NOC (lucasdavid/PNOC@6c8950a1)
``scripts/cam/inference.py`` ``_work``/``forward_tta`` with ``datasets.get_inference_transforms``
(its ``hr_cam``). Both gave the same maps (within 4.3e-8: IRN normalises in float64, P-NOC in
float32). The ``resize`` values are this toolkit's own before the reference geometry became
the default; docs/parity.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.cam.infer import image_cams, normalize_present, scaled_size, strided_up_size

SCALES = (0.5, 1.0, 1.5, 2.0)
KEYS = np.array([1, 3])  # classes 0 and 2 (0-based) present, 1-based as stored
CELLS = [(0, 0), (0, 52), (36, 0), (36, 52), (18, 26), (10, 40), (30, 7)]
RTOL = 1e-5  # float32 maps and inputs here; the stand-in runs in float64 on both sides


def fixture_image() -> np.ndarray:
    """37×53 uint8 (neither side a multiple of 16): ramps, a bright block, noise."""
    rng = np.random.default_rng(13)
    height, width = 37, 53
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([4.0 * cols, 6.0 * rows, 120.0 + 60.0 * np.sin(cols / 5.0) * np.cos(rows / 7.0)], -1)
    image[8:20, 30:45] += 90.0
    image += rng.normal(0, 25.0, (height, width, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


class StandInCamNet(nn.Module):
    """A stride-16 network with ⌈n/16⌉ output cells like a ResNet (3×3 conv, tanh, 16×16
    average pool with ceil mode, 3×3 conv to 3 classes); fixed float64 weights."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(7)
        self.embed = nn.Parameter(torch.from_numpy(rng.normal(0, 0.5, (4, 3, 3, 3))))
        self.head = nn.Parameter(torch.from_numpy(rng.normal(0, 0.5, (3, 4, 3, 3))))
        self.output_stride = 16
        self.meta_info = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

    def forward(self, x):
        x = torch.tanh(F.conv2d(x.double(), self.embed, padding=1))
        maps = F.conv2d(F.avg_pool2d(x, 16, 16, ceil_mode=True), self.head, padding=1)
        return maps.mean(dim=(2, 3)), maps


REFERENCE_SUMS = [382.708246, 594.752739]
REFERENCE_CELLS = [
    [0.0270925433, 0.879866338, 0.162217654, 0.314090174, 0.0504606028, 0.637164425, 0.0588578368],
    [0.658773138, 0.171382311, 0, 0.307358631, 0.260293947, 0.288321883, 0.00164267873],
]
RESIZE_SUMS = [500.184889, 526.250521]
RESIZE_CELLS = [
    [0.0297051929, 0.56270808, 0.249321491, 0.435959756, 0.066323407, 0.601194978, 0.192719743],
    [0.656219304, 0.24461627, 0, 0.431246191, 0.214142039, 0.212680474, 0.00310159358],
]
REFERENCE_ROW_MEANS = [
    [
        0.348951456,
        0.348951456,
        0.348951456,
        0.348951456,
        0.348951456,
        0.344339677,
        0.334338686,
        0.320924962,
        0.305528316,
        0.288148748,
        0.270769181,
        0.253389614,
        0.235648602,
        0.217546145,
        0.19954316,
        0.182435428,
        0.165327695,
        0.148219963,
        0.134203405,
        0.12327802,
        0.112352635,
        0.101427251,
        0.0905018663,
        0.0795764818,
        0.0766651637,
        0.0817679121,
        0.0868706604,
        0.0919734088,
        0.0970761572,
        0.102178906,
        0.11045027,
        0.12189025,
        0.133330229,
        0.144770209,
        0.159110411,
        0.17377286,
        0.188796753,
    ],
    [
        0.641425764,
        0.641425764,
        0.641425764,
        0.641425764,
        0.641425764,
        0.628525446,
        0.603843105,
        0.572907449,
        0.538832424,
        0.501618032,
        0.464403639,
        0.427189247,
        0.390790121,
        0.355206262,
        0.320644759,
        0.295284468,
        0.269924176,
        0.244563884,
        0.223144119,
        0.20566488,
        0.188185642,
        0.170706404,
        0.153227165,
        0.135747927,
        0.124173634,
        0.118504286,
        0.112834938,
        0.107165591,
        0.101496243,
        0.0958268949,
        0.0926932299,
        0.0920952477,
        0.0914972654,
        0.0908992832,
        0.0948376992,
        0.0992801595,
        0.102907353,
    ],
]
REFERENCE_COLUMN_MEANS = [
    [
        0.0451407195,
        0.0451407195,
        0.0451407195,
        0.0451407195,
        0.0451407195,
        0.0436153023,
        0.0419722324,
        0.0403263456,
        0.0389152775,
        0.0377390281,
        0.0365627786,
        0.0353865291,
        0.0342102796,
        0.0330340301,
        0.0331484889,
        0.0336149591,
        0.0348945903,
        0.0369873823,
        0.0390801744,
        0.0420523181,
        0.0470762822,
        0.0521002464,
        0.0571242105,
        0.0637513213,
        0.0736530185,
        0.0859386651,
        0.0982243117,
        0.110509958,
        0.122795605,
        0.135081252,
        0.147366898,
        0.159652545,
        0.179806736,
        0.207829472,
        0.235852208,
        0.263874944,
        0.29189768,
        0.319920416,
        0.347943152,
        0.375965888,
        0.402408464,
        0.424222643,
        0.440549999,
        0.456877355,
        0.473204711,
        0.48229406,
        0.488281406,
        0.494268753,
        0.499442938,
        0.503803962,
        0.506807673,
        0.504834565,
        0.502861458,
    ],
    [
        0.241330229,
        0.241330229,
        0.241330229,
        0.241330229,
        0.241330229,
        0.24781682,
        0.255096399,
        0.265022154,
        0.276350749,
        0.289082184,
        0.301813619,
        0.314545054,
        0.327276489,
        0.340007924,
        0.346848583,
        0.352082666,
        0.358581558,
        0.366345259,
        0.37410896,
        0.380942277,
        0.3856047,
        0.390267122,
        0.394929545,
        0.399095566,
        0.400561307,
        0.399602546,
        0.398643784,
        0.397685023,
        0.396726262,
        0.3957675,
        0.394808739,
        0.393849978,
        0.384476448,
        0.366688148,
        0.348899849,
        0.331111549,
        0.31332325,
        0.295534951,
        0.277746651,
        0.259958352,
        0.243492109,
        0.230210151,
        0.220280202,
        0.210350252,
        0.200420303,
        0.198321471,
        0.199578832,
        0.200836192,
        0.200828744,
        0.199556487,
        0.201321558,
        0.2142235,
        0.227125441,
    ],
]


def _normalised_maps(pixels: np.ndarray, geometry: str) -> np.ndarray:
    with torch.no_grad():
        sums = image_cams(StandInCamNet(), pixels, SCALES, True, geometry)
    return np.stack([normalize_present(s, KEYS).double().numpy() for s in sums])


def _assert_close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)


def test_scaled_and_strided_sizes_round_as_the_reference():
    # 18.5, 26.5, 55.5 and 79.5 px: half to even (np.round / round), not half up
    assert scaled_size(37, 53, 0.5) == (18, 26)
    assert scaled_size(37, 53, 1.5) == (56, 80)
    assert strided_up_size(37, 53, 16) == (48, 64)
    assert strided_up_size(32, 48, 16) == (32, 48)


def test_reference_geometry_matches_irn_and_pnoc():
    image = fixture_image()
    other = np.ascontiguousarray(image[::-1])  # a second image of the same size: one batch
    maps = _normalised_maps(np.stack([image, other]), "reference")
    cam = maps[0]
    _assert_close(cam.sum(axis=(1, 2)), REFERENCE_SUMS)
    _assert_close([[c[r, k] for r, k in CELLS] for c in cam], REFERENCE_CELLS)
    _assert_close(cam.mean(axis=2), REFERENCE_ROW_MEANS)
    _assert_close(cam.mean(axis=1), REFERENCE_COLUMN_MEANS)
    # batching equal-size images does not change an image's maps
    np.testing.assert_allclose(maps[1], _normalised_maps(other[None], "reference")[0], rtol=0, atol=1e-6)


def test_resize_geometry_keeps_the_previous_numbers():
    cam = _normalised_maps(fixture_image()[None], "resize")[0]
    _assert_close(cam.sum(axis=(1, 2)), RESIZE_SUMS)
    _assert_close([[c[r, k] for r, k in CELLS] for c in cam], RESIZE_CELLS)
    # the two geometries differ well beyond float precision (measured 0.47 on this fixture)
    reference = _normalised_maps(fixture_image()[None], "reference")[0]
    assert np.abs(cam - reference).max() > 0.3


def test_unknown_geometry_is_refused():
    from wsss.io import WsssError

    with pytest.raises(WsssError, match="geometry must be one of"):
        image_cams(StandInCamNet(), fixture_image()[None], SCALES, True, "irn")
