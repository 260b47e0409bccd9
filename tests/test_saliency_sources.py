"""Saliency sources ``folder`` (imported detector maps) and the OpenCV baselines
``spectral-residual`` / ``fine-grained``, run through :func:`make_saliency`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsss.data import build_dataset
from wsss.io import WsssError, save_saliency
from wsss.saliency.base import SALIENCY_SOURCES, build_saliency_source, make_saliency
from wsss.saliency.folder import FolderSource, read_saliency_map
from wsss.saliency.opencv import FineGrainedSource, SpectralResidualSource


@pytest.fixture
def ds(voc_like):
    return build_dataset("synthetic", voc_like, "train")


def _png_u8(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "L"
    return np.asarray(img)


def _write_maps(folder: Path, ds, size=None, seed=0) -> dict[str, np.ndarray]:
    """Random 8-bit maps for every id of ``ds`` (``size`` = (h, w), default the image size)."""
    rng = np.random.default_rng(seed)
    maps = {}
    for image_id in ds.ids:
        h, w = size or ds.image(image_id).shape[:2]
        maps[image_id] = rng.integers(0, 256, size=(h, w)).astype(np.uint8)
        save_saliency(folder / f"{image_id}.png", maps[image_id])
    return maps


# --------------------------------------------------------------------------- registry, options
def test_registered_names():
    assert SALIENCY_SOURCES["folder"] is FolderSource
    assert SALIENCY_SOURCES["spectral-residual"] is SpectralResidualSource
    assert SALIENCY_SOURCES["fine-grained"] is FineGrainedSource


@pytest.mark.parametrize("name", ["folder", "spectral-residual", "fine-grained"])
def test_unknown_option_is_an_error(name, tmp_path):
    valid = {"dir": str(tmp_path)} if name == "folder" else {}
    build_saliency_source(name, **valid)
    with pytest.raises(WsssError, match=r"unknown option\(s\) \['sigma'\]"):
        build_saliency_source(name, **valid, sigma=2)


def test_folder_option_checks(tmp_path):
    with pytest.raises(WsssError, match="needs option dir"):
        FolderSource()
    with pytest.raises(WsssError, match=re.escape(f"{tmp_path / 'nope'}: saliency map folder not found")):
        FolderSource(dir=str(tmp_path / "nope"))
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(WsssError, match=re.escape(f"{tmp_path / 'a.png'}: not a folder")):
        FolderSource(dir=tmp_path / "a.png")
    with pytest.raises(WsssError, match="resize must be one of"):
        FolderSource(dir=str(tmp_path), resize="stretch")
    with pytest.raises(WsssError, match="detector must be a string"):
        FolderSource(dir=str(tmp_path), detector=["PoolNet"])
    assert FolderSource(dir=str(tmp_path), trained_on=2012).options["trained_on"] == "2012"  # from --set


@pytest.mark.parametrize("blur", [-0.1, "0.1", True, float("nan")])
def test_opencv_blur_option_checked(blur):
    with pytest.raises(WsssError, match="blur must be a number"):
        SpectralResidualSource(blur=blur)


# --------------------------------------------------------------------------- folder
def test_folder_round_trip_provenance_and_resume(ds, tmp_path):
    maps = _write_maps(tmp_path / "maps", ds)
    src = FolderSource(dir=str(tmp_path / "maps"), detector="PoolNet", trained_on="DUTS-TR", notes="WSSS-BED")
    out = make_saliency(src, ds, tmp_path / "out", progress=False)
    for image_id, m in maps.items():
        np.testing.assert_array_equal(_png_u8(out / f"{image_id}.png"), m)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["source"] == "folder"
    assert (prov["detector"], prov["trained_on"], prov["notes"]) == ("PoolNet", "DUTS-TR", "WSSS-BED")
    assert prov["dir"] == str((tmp_path / "maps").resolve())
    assert prov["num_maps"] == len(ds.ids)
    assert (out / "run.json").is_file() and (out / "settings.json").is_file()

    # resume: existing outputs are neither recomputed nor rewritten while the inputs are unchanged
    first = ds.ids[0]
    before = (out / f"{first}.png").stat()
    again = FolderSource(
        dir=str(tmp_path / "maps"), detector="PoolNet", trained_on="DUTS-TR", notes="WSSS-BED"
    )
    make_saliency(again, ds, out, progress=False)
    after = (out / f"{first}.png").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # a changed input map: refused (naming the file), nothing rewritten; --force recomputes
    save_saliency(tmp_path / "maps" / f"{first}.png", 255 - maps[first])
    with pytest.raises(
        WsssError, match=rf"1 of {len(ds.ids)} files in .*maps changed .*{first}\.png.*--force"
    ):
        make_saliency(again, ds, out, progress=False)
    np.testing.assert_array_equal(_png_u8(out / f"{first}.png"), maps[first])
    make_saliency(again, ds, out, progress=False, force=True)
    np.testing.assert_array_equal(_png_u8(out / f"{first}.png"), 255 - maps[first])

    # another folder into the same output: the settings guard stops it before anything is written
    _write_maps(tmp_path / "other", ds, seed=1)
    other = FolderSource(
        dir=str(tmp_path / "other"), detector="PoolNet", trained_on="DUTS-TR", notes="WSSS-BED"
    )
    with pytest.raises(WsssError, match=re.escape(str(out / "settings.json"))):
        make_saliency(other, ds, out, progress=False)


def test_folder_resizes_half_size_map_bilinearly(ds, tmp_path):
    maps = _write_maps(tmp_path / "maps", ds, size=(32, 32))  # images are 64×64
    out = make_saliency(
        FolderSource(dir=str(tmp_path / "maps")), ds, tmp_path / "out", ids=ds.ids[:3], progress=False
    )
    for image_id in ds.ids[:3]:
        small = torch.from_numpy(maps[image_id].astype(np.float32) / 255.0)[None, None]
        expected = F.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False)[0, 0].numpy()
        got = _png_u8(out / f"{image_id}.png").astype(np.float32) / 255.0
        assert got.shape == (64, 64)
        assert np.abs(got - expected).max() <= 1.0 / 255 + 1e-6  # one 8-bit level of rounding
    assert not (tmp_path / "out" / f"{ds.ids[3]}.png").exists()


def test_folder_aspect_and_never(ds, tmp_path):
    image_id = ds.ids[0]
    save_saliency(tmp_path / "wide" / f"{image_id}.png", np.zeros((32, 64), np.uint8))  # 64×32, image 64×64
    with pytest.raises(
        WsssError, match=re.escape(str(tmp_path / "wide" / f"{image_id}.png")) + ".*64×32.*64×64"
    ):
        make_saliency(
            FolderSource(dir=str(tmp_path / "wide")), ds, tmp_path / "o1", ids=[image_id], progress=False
        )
    stretched = FolderSource(dir=str(tmp_path / "wide"), resize="any").predict(ds, image_id)
    assert stretched.shape == (64, 64)

    save_saliency(tmp_path / "half" / f"{image_id}.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(WsssError, match=re.escape(str(tmp_path / "half" / f"{image_id}.png")) + ".*never"):
        FolderSource(dir=str(tmp_path / "half"), resize="never").predict(ds, image_id)
    # an aspect ratio within 2 % is accepted (detectors round their output size)
    save_saliency(tmp_path / "near" / f"{image_id}.png", np.zeros((100, 101), np.uint8))  # 1 % off
    assert FolderSource(dir=str(tmp_path / "near")).predict(ds, image_id).shape == (64, 64)
    save_saliency(tmp_path / "off" / f"{image_id}.png", np.zeros((100, 104), np.uint8))  # 4 % off
    with pytest.raises(WsssError, match="104×100 but the image is 64×64; their aspect ratios differ"):
        FolderSource(dir=str(tmp_path / "off")).predict(ds, image_id)


def test_folder_missing_and_ambiguous_maps(ds, tmp_path):
    maps = tmp_path / "maps"
    _write_maps(maps, ds)
    missing = ds.ids[2]
    (maps / f"{missing}.png").unlink()
    with pytest.raises(
        WsssError,
        match=re.escape(f"{maps / missing}.png: saliency map not found") + f".*holds {len(ds.ids) - 1} maps",
    ):
        make_saliency(FolderSource(dir=str(maps)), ds, tmp_path / "out", progress=False)

    renamed = tmp_path / "renamed"  # stems that do not match the ids: the message shows both
    save_saliency(renamed / "sal_img000.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(WsssError, match=r"named like sal_img000; the image ids look like img"):
        FolderSource(dir=str(renamed)).predict(ds, ds.ids[0])

    save_saliency(maps / f"{ds.ids[0]}.jpg", np.zeros((64, 64), np.uint8))
    with pytest.raises(WsssError, match=re.escape(f"({ds.ids[0]}.jpg, {ds.ids[0]}.png); keep one")):
        FolderSource(dir=str(maps)).predict(ds, ds.ids[0])


def test_folder_refuses_to_import_into_itself(ds, tmp_path):
    _write_maps(tmp_path / "maps", ds)
    before = sorted(p.name for p in (tmp_path / "maps").iterdir())
    with pytest.raises(WsssError, match="the output folder is the input dir"):
        make_saliency(FolderSource(dir=str(tmp_path / "maps")), ds, tmp_path / "maps", progress=False)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == before


def test_read_saliency_map_modes(tmp_path):
    gray = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)
    Image.fromarray(np.dstack([gray] * 3), "RGB").save(tmp_path / "rgb_gray.png")
    np.testing.assert_allclose(read_saliency_map(tmp_path / "rgb_gray.png"), gray / 255.0, atol=1e-7)
    Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 7)]), "RGBA").save(tmp_path / "rgba_gray.png")
    np.testing.assert_allclose(read_saliency_map(tmp_path / "rgba_gray.png"), gray / 255.0, atol=1e-7)
    Image.fromarray(np.dstack([gray] * 3)).save(tmp_path / "rgb_gray.jpg", quality=80)  # JPEG keeps R=G=B
    assert read_saliency_map(tmp_path / "rgb_gray.jpg").shape == (48, 64)

    coloured = np.dstack([gray, gray, 255 - gray])
    Image.fromarray(coloured, "RGB").save(tmp_path / "colour.png")
    with pytest.raises(
        WsssError,
        match=re.escape(f"{tmp_path / 'colour.png'}: expected a grayscale saliency map, got mode RGB"),
    ):
        read_saliency_map(tmp_path / "colour.png")
    Image.fromarray(coloured, "RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(
        tmp_path / "palette.png"
    )
    with pytest.raises(WsssError, match="got mode P"):
        read_saliency_map(tmp_path / "palette.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8), "RGB").convert("CMYK").save(tmp_path / "cmyk.tif")
    with pytest.raises(WsssError, match="got mode CMYK"):
        read_saliency_map(tmp_path / "cmyk.tif")

    deep = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_allclose(read_saliency_map(tmp_path / "deep.png"), deep / 65535.0, atol=1e-6)
    Image.fromarray(gray > 127).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_saliency_map(tmp_path / "bits.png"), (gray > 127).astype(np.float32))

    unit = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    np.save(tmp_path / "unit.npy", unit)
    np.testing.assert_array_equal(read_saliency_map(tmp_path / "unit.npy"), unit)
    np.save(tmp_path / "chw.npy", unit[None])
    np.testing.assert_array_equal(read_saliency_map(tmp_path / "chw.npy"), unit)
    np.save(tmp_path / "big.npy", unit * 2)
    with pytest.raises(WsssError, match=re.escape(f"{tmp_path / 'big.npy'}: saliency values outside [0, 1]")):
        read_saliency_map(tmp_path / "big.npy")
    np.save(tmp_path / "ints.npy", gray)
    with pytest.raises(WsssError, match="got dtype uint8"):
        read_saliency_map(tmp_path / "ints.npy")
    Image.fromarray(unit * 3).save(tmp_path / "float.tif")
    with pytest.raises(WsssError, match="outside"):
        read_saliency_map(tmp_path / "float.tif")


def test_folder_imports_16bit_and_rgb_maps(ds, tmp_path):
    """The formats detectors actually write, through the whole import."""
    maps = tmp_path / "maps"
    maps.mkdir()
    rng = np.random.default_rng(3)
    expected = {}
    for k, image_id in enumerate(ds.ids[:2]):
        deep = rng.integers(0, 65536, size=(64, 64)).astype(np.uint16)
        if k == 0:
            Image.fromarray(deep).save(maps / f"{image_id}.png")
        else:
            deep = (deep >> 8).astype(np.uint16) * 257  # an 8-bit map written as RGB
            u8 = (deep // 257).astype(np.uint8)
            Image.fromarray(np.dstack([u8] * 3), "RGB").save(maps / f"{image_id}.bmp")
        expected[image_id] = np.rint(deep / 65535.0 * 255).astype(np.uint8)
    out = make_saliency(FolderSource(dir=str(maps)), ds, tmp_path / "out", ids=ds.ids[:2], progress=False)
    for image_id, m in expected.items():
        np.testing.assert_array_equal(_png_u8(out / f"{image_id}.png"), m)


# --------------------------------------------------------------------------- OpenCV baselines
@pytest.mark.parametrize("cls", [SpectralResidualSource, FineGrainedSource])
def test_opencv_sources_through_make_saliency(cls, ds, tmp_path):
    src = cls()
    image_id = ds.ids[0]
    sal = src.predict(ds, image_id)
    assert sal.dtype == np.float32 and sal.shape == (64, 64)
    assert sal.min() == 0.0 and sal.max() == pytest.approx(1.0)  # min-max normalised
    out = make_saliency(src, ds, tmp_path / "out", progress=False)
    for i in ds.ids:
        assert _png_u8(out / f"{i}.png").shape == ds.image(i).shape[:2]
    np.testing.assert_array_equal(_png_u8(out / f"{image_id}.png"), np.rint(sal * 255).astype(np.uint8))
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["source"] == cls.source_name and "no training" in prov["description"]


def _textured_square(seed: int, hw=(96, 128), side=32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = hw
    img = np.full((h, w, 3), 90, np.uint8)
    y0, x0 = int(rng.integers(4, h - side - 4)), int(rng.integers(4, w - side - 4))
    img[y0 : y0 + side, x0 : x0 + side] = rng.integers(140, 256, size=(side, side, 3))
    inside = np.zeros((h, w), bool)
    inside[y0 : y0 + side, x0 : x0 + side] = True
    return img, inside


@pytest.mark.parametrize("cls", [SpectralResidualSource, FineGrainedSource])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_opencv_sources_find_the_textured_square(cls, seed):
    img, inside = _textured_square(seed)
    sal = cls().saliency_map(img)
    # measured: inside ≈ 0.3 (spectral residual) / 0.75 (fine-grained), outside ≤ 0.35
    assert sal[inside].mean() > 2.0 * sal[~inside].mean()
    assert sal[inside].mean() - sal[~inside].mean() > 0.2


@pytest.mark.parametrize("cls", [SpectralResidualSource, FineGrainedSource])
def test_opencv_sources_read_rgb_in_rgb_order(cls):
    """Red (76, 0, 0) and blue (0, 0, 200) have the same luma in RGB order (23), but not if
    the channels were swapped (9 vs 60): a colour-order mix-up would make the square salient."""
    img = np.zeros((64, 80, 3), np.uint8)
    img[..., 0] = 76
    img[20:40, 30:50] = (0, 0, 200)
    assert not cls().saliency_map(img).any()
    swapped = cls().saliency_map(np.ascontiguousarray(img[..., ::-1]))
    near = np.zeros((64, 80), bool)  # the square and its border, where both methods respond
    near[16:44, 26:54] = True
    # measured near / far: 0.18 / 0.02 (spectral residual), 0.74 / 0.45 (fine-grained)
    assert swapped.max() == pytest.approx(1.0)
    assert swapped[near].mean() > 1.3 * swapped[~near].mean()


def test_opencv_blur_smooths():
    img, _ = _textured_square(0)
    sharp = FineGrainedSource().saliency_map(img)
    smooth = FineGrainedSource(blur=0.02).saliency_map(img)
    assert smooth.min() == 0.0 and smooth.max() == pytest.approx(1.0)

    def total_variation(a):
        return np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()

    assert total_variation(smooth) < 0.5 * total_variation(sharp)


def test_opencv_without_contrib_says_what_to_install(monkeypatch):
    monkeypatch.delattr(cv2, "saliency")
    with pytest.raises(WsssError, match="opencv-contrib-python-headless"):
        FineGrainedSource()
