"""Community CAM layouts: read each as the repository that writes it means it, and write it
back (`wsss convert`) in exactly that layout.

The fixtures are made here with numpy / torch / OpenCV in the layout each reference writes
(no reference code is copied); the commits and lines they follow:

* IRN — jiwoon-ahn/irn@a2ece0034d0a, step/make_cam.py:46-56: ``np.save(<id>.npy, {"keys":
  torch.nonzero(label)[:, 0]`` (an int64 *tensor* of 0-based class indices), ``"cam"``: the
  stride-4 maps as a float32 CPU tensor, ``"high_res"``: float32 ndarray, one map per key}``;
  its readers (step/eval_cam.py:15-16) pad a background map and ``keys + 1``.
* PuzzleCAM — OFRIN/PuzzleCAM@95a75f4d, inference_classification.py:172-182: the same maps
  under ``"cam"`` / ``"hr_cam"`` (no background map), and ``"keys"`` = ``np.pad(index + 1,
  (1, 0))``: an int64 ndarray, 0 for the background then the 1-based ids; inference_rw.py:168
  keeps those keys with ``"rw"`` maps (one per class, divided by their common maximum).
* P-NOC — lucasdavid/PNOC@6c8950a1, scripts/cam/inference.py:139-151: as PuzzleCAM;
  scripts/cam/make_pseudo_masks.py:72 drops a first (background) map when there are as many
  maps as keys.
* WSSS-BED — clovaai/WSSS-BED@c7800280, classifier/infer.py:131-134: ``cv2.imwrite(
  f"{id}_{j}.png", norm_cam[j] * 255.0)`` for each present 0-based class index ``j`` (a float64
  array: OpenCV rounds half to even and saturates to uint8); wsss_bed/run.py:72 reads it back
  as ``imread(..., 0) / 255`` into channel ``j + 1``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import wsss_in_process as cli
from PIL import Image

from wsss.convert import (
    cam_ids,
    convert_cams,
    quantise_8bit,
    strided_cam,
    strided_size,
    write_cam,
)
from wsss.io import WsssError, find_cam, load_cam, npy_cam_layout, save_cam

RNG = np.random.default_rng(15)
H, W = 29, 41
NUM_CLASSES = 21  # VOC: background + 20


def _maps(k: int, h: int = H, w: int = W) -> np.ndarray:
    """k CAMs in [0, 1), each divided by its maximum + 1e-5 as all four writers do."""
    m = RNG.random((k, h, w)).astype(np.float32)
    return m / (m.max(axis=(1, 2), keepdims=True) + 1e-5)


def _strided(maps: np.ndarray) -> torch.Tensor:
    return torch.rand(maps.shape[0], *strided_size(maps.shape[1:]))


def _label(indices: list[int]) -> torch.Tensor:
    y = torch.zeros(20)
    y[indices] = 1
    return y


def write_irn(path: Path, indices: list[int], maps: np.ndarray) -> None:
    """IRN make_cam.py's dict: 0-based keys as a torch tensor, high_res one map per key."""
    keys = torch.nonzero(_label(indices))[:, 0]
    np.save(path, {"keys": keys, "cam": _strided(maps), "high_res": maps})


def write_puzzlecam(path: Path, indices: list[int], maps: np.ndarray, name: str = "hr_cam") -> None:
    """PuzzleCAM / P-NOC inference's dict: keys = [0, 1-based ids] (ndarray), hr_cam without background."""
    keys = np.pad(torch.nonzero(_label(indices))[:, 0] + 1, (1, 0), mode="constant")
    obj = (
        {"keys": keys, "rw": maps} if name == "rw" else {"keys": keys, "cam": _strided(maps), "hr_cam": maps}
    )
    np.save(path, obj)


def write_wsss_bed(folder: Path, image_id: str, indices: list[int], maps: np.ndarray) -> None:
    """WSSS-BED classifier/infer.py: <id>_<j>.png, j the 0-based index, OpenCV given float64 255·v."""
    import cv2

    for j, m in zip(indices, maps, strict=True):
        assert cv2.imwrite(str(folder / f"{image_id}_{j}.png"), m.astype(np.float64) * 255.0)


# --------------------------------------------------------------------------- reading
def test_irn_keys_are_zero_based_class_indices(tmp_path):
    maps = _maps(2)
    write_irn(tmp_path / "a.npy", [0, 14], maps)  # aeroplane (index 0) and person (14)
    assert find_cam(tmp_path, "a") == tmp_path / "a.npy"
    keys, cam = load_cam(tmp_path / "a.npy", shape=(H, W), num_classes=NUM_CLASSES)
    assert keys.tolist() == [1, 15]
    np.testing.assert_array_equal(cam, maps)  # high_res, not the strided cam


@pytest.mark.parametrize("repo", ["puzzlecam", "p-noc"])
def test_puzzlecam_and_pnoc_padded_keys(tmp_path, repo):
    maps = _maps(3)
    write_puzzlecam(tmp_path / "b.npy", [2, 7, 19], maps)  # keys [0, 3, 8, 20]: 4 keys, 3 maps
    keys, cam = load_cam(tmp_path / "b.npy", shape=(H, W), num_classes=NUM_CLASSES)
    assert keys.tolist() == [3, 8, 20]
    np.testing.assert_array_equal(cam, maps)


def test_puzzlecam_padded_keys_with_class_index_zero(tmp_path):
    maps = _maps(2)
    write_puzzlecam(tmp_path / "c.npy", [0, 14], maps)  # keys [0, 1, 15]
    keys, cam = load_cam(tmp_path / "c.npy", num_classes=NUM_CLASSES)
    assert keys.tolist() == [1, 15]
    np.testing.assert_array_equal(cam, maps)


def test_puzzlecam_random_walk_output(tmp_path):
    maps = RNG.random((2, H, W)).astype(np.float32)
    maps /= maps.max()  # inference_rw.py divides by the common maximum
    write_puzzlecam(tmp_path / "d.npy", [4, 11], maps, name="rw")
    keys, cam = load_cam(tmp_path / "d.npy", shape=(H, W), num_classes=NUM_CLASSES)
    assert keys.tolist() == [5, 12]
    np.testing.assert_array_equal(cam, maps)


def test_no_classes_in_either_npy_layout(tmp_path):
    write_irn(tmp_path / "e.npy", [], np.zeros((0, H, W), np.float32))
    write_puzzlecam(tmp_path / "f.npy", [], np.zeros((0, H, W), np.float32))
    for name in ("e.npy", "f.npy"):
        keys, cam = load_cam(tmp_path / name, shape=(H, W))
        assert keys.tolist() == [] and cam.shape == (0, H, W)


def test_layout_rule_and_the_ambiguous_file(tmp_path):
    # the rule, on its own
    assert npy_cam_layout(np.array([0, 3, 8]), 2, "hr_cam") == "puzzlecam"
    assert npy_cam_layout(np.array([0, 3, 8]), 2, "high_res") == "puzzlecam"  # content decides
    assert npy_cam_layout(np.array([0, 14]), 2, "high_res") == "irn"
    assert npy_cam_layout(np.array([3, 8]), 2, "hr_cam") == "irn"  # no leading 0: not padded
    assert npy_cam_layout(np.array([0, 3, 8]), 3, "hr_cam") == "puzzlecam"  # + a background map
    # ambiguous: as many keys as maps, first key 0, IRN's map name → IRN's aeroplane...
    maps = _maps(2)
    np.save(tmp_path / "g.npy", {"keys": np.array([0, 14]), "high_res": maps})
    assert load_cam(tmp_path / "g.npy")[0].tolist() == [1, 15]
    # ...unless the reading is forced: PuzzleCAM keys with a background map first
    keys, cam = load_cam(tmp_path / "g.npy", layout="puzzlecam")
    assert keys.tolist() == [14]
    np.testing.assert_array_equal(cam, maps[1:])
    # PuzzleCAM/P-NOC map names with a map per key: the first is the background (make_pseudo_masks.py:72)
    bg_first = np.concatenate([np.full((1, H, W), 0.2, np.float32), _maps(2)])
    np.save(tmp_path / "h.npy", {"keys": np.array([0, 3, 8]), "hr_cam": bg_first})
    keys, cam = load_cam(tmp_path / "h.npy", num_classes=NUM_CLASSES)
    assert keys.tolist() == [3, 8]
    np.testing.assert_array_equal(cam, bg_first[1:])


def test_wsss_bed_pngs_are_zero_based_and_8_bit(tmp_path):
    maps = _maps(3, 6, 9)
    write_wsss_bed(tmp_path, "2007_000032", [0, 6, 14], maps)
    Image.fromarray(np.zeros((6, 9), np.uint8), "L").save(tmp_path / "2007_000032_x.png")  # not an index
    stem = find_cam(tmp_path, "2007_000032")
    assert stem == tmp_path / "2007_000032"
    keys, cam = load_cam(stem, shape=(6, 9), num_classes=NUM_CLASSES)
    assert keys.tolist() == [1, 7, 15]
    levels = np.clip(np.rint(maps.astype(np.float64) * 255), 0, 255).astype(np.float32)
    np.testing.assert_array_equal(cam, levels / 255.0)  # 255 = 1.0
    assert np.abs(cam - maps).max() <= 0.5 / 255 + 1e-6  # 8-bit, rounded to nearest


def test_forced_layouts_and_bad_keys_name_the_file(tmp_path):
    write_irn(tmp_path / "i.npy", [6], _maps(1))
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'i.npy'}: PuzzleCAM/P-NOC keys start with"):
        load_cam(tmp_path / "i.npy", layout="puzzlecam")
    write_puzzlecam(tmp_path / "j.npy", [2, 7, 19], _maps(3))
    with pytest.raises(
        WsssError, match=rf"^{tmp_path / 'j.npy'}: 'hr_cam' has shape \(3, 29, 41\) but the IRN"
    ):
        load_cam(tmp_path / "j.npy", layout="irn")
    np.save(tmp_path / "k.npy", {"keys": np.array([0.5, 2.0]), "high_res": _maps(2)})
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'k.npy'}: class keys must be whole numbers"):
        load_cam(tmp_path / "k.npy")
    np.save(tmp_path / "l.npy", {"keys": np.array([0, 3, 8, 9]), "hr_cam": _maps(2)})
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'l.npy'}: 'hr_cam' has shape \(2, 29, 41\)"):
        load_cam(tmp_path / "l.npy")
    np.save(tmp_path / "m.npy", {"keys": np.array([3, 3]), "high_res": _maps(2)})
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'm.npy'}: class keys \[4, 4\] repeat a class"):
        load_cam(tmp_path / "m.npy")


# --------------------------------------------------------------------------- writing
def test_written_layouts_are_the_references(tmp_path):
    keys, maps = np.array([1, 15]), _maps(2)
    write_cam(tmp_path, "irn", "irn", keys, maps)
    write_cam(tmp_path, "pz", "puzzlecam", keys, maps)
    paths = write_cam(tmp_path, "bed", "wsss-bed", keys, maps)
    # our own files, so np.load may unpickle them here
    irn = np.load(tmp_path / "irn.npy", allow_pickle=True).item()
    assert set(irn) == {"keys", "cam", "high_res"}
    assert isinstance(irn["keys"], torch.Tensor) and irn["keys"].dtype == torch.int64
    assert irn["keys"].tolist() == [0, 14]
    assert isinstance(irn["cam"], torch.Tensor) and irn["cam"].dtype == torch.float32
    assert tuple(irn["cam"].shape) == (2, 8, 11)  # ((29-1)//4+1, (41-1)//4+1)
    assert isinstance(irn["high_res"], np.ndarray) and irn["high_res"].dtype == np.float32
    np.testing.assert_array_equal(irn["high_res"], maps)
    pz = np.load(tmp_path / "pz.npy", allow_pickle=True).item()
    assert set(pz) == {"keys", "cam", "hr_cam"}
    assert (
        isinstance(pz["keys"], np.ndarray)
        and pz["keys"].dtype == np.int64
        and pz["keys"].tolist() == [0, 1, 15]
    )
    assert isinstance(pz["cam"], torch.Tensor) and tuple(pz["cam"].shape) == (2, 8, 11)
    assert pz["hr_cam"].dtype == np.float32 and pz["hr_cam"].shape == (2, H, W)
    assert [p.name for p in paths] == ["bed_0.png", "bed_14.png"]
    for p, m in zip(paths, maps, strict=True):
        with Image.open(p) as img:
            assert img.mode == "L"
            np.testing.assert_array_equal(np.asarray(img), quantise_8bit(m))
    # each reads back as what it means
    for name in ("irn.npy", "pz.npy", "bed"):
        assert load_cam(tmp_path / name, shape=(H, W), num_classes=NUM_CLASSES)[0].tolist() == [1, 15]


def test_8_bit_quantisation_is_opencvs():
    import cv2

    v = np.array([[0.5, 1.5, 2.5, 3.5, 254.5, -3.0, 300.0, 127.49]]) / 255.0
    ok, png = cv2.imencode(".png", v * 255.0)  # what WSSS-BED's imwrite stores
    assert ok
    np.testing.assert_array_equal(cv2.imdecode(png, cv2.IMREAD_UNCHANGED), quantise_8bit(v))


def test_strided_cam_matches_the_references_strided_map():
    # the writers interpolate one network output (stride 16) to the strided size and to
    # 16·ceil(size/16) cropped to the image (IRN make_cam.py:33-43); where no crop cuts the
    # grid, sampling the full-resolution maps recovers the strided one
    g = torch.Generator().manual_seed(0)
    out = torch.rand(2, 3, 4, generator=g)  # a 48×64 image at stride 16
    hs, ws = strided_size((48, 64))
    theirs = F.interpolate(out[None], (hs, ws), mode="bilinear", align_corners=False)[0]
    hr = F.interpolate(out[:, None], (48, 64), mode="bilinear", align_corners=False)[:, 0]
    theirs /= F.adaptive_max_pool2d(theirs, (1, 1)) + 1e-5
    hr /= F.adaptive_max_pool2d(hr, (1, 1)) + 1e-5
    ours = strided_cam(hr.numpy())
    assert ours.dtype == torch.float32 and tuple(ours.shape) == (2, 12, 16)
    assert (ours - theirs).abs().max().item() < 0.03


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(("fmt", "tol"), [("irn", 0.0), ("puzzlecam", 0.0), ("wsss-bed", 0.5 / 255 + 2.5e-4)])
def test_round_trip_through_each_format(tmp_path, fmt, tol):
    src = tmp_path / "src"
    originals = {}
    for i, idx in enumerate([[0], [0, 14], [2, 7, 19], []]):
        keys = np.array(idx, dtype=np.int64) + 1
        maps = _maps(len(keys), 20 + i, 30 - i)
        save_cam(src / f"im{i}.npz", keys, maps)
        originals[f"im{i}"] = load_cam(src / f"im{i}.npz")
    res = convert_cams(src, tmp_path / fmt, "wsss", fmt, progress=False)
    assert res["written"] == (3 if fmt == "wsss-bed" else 4)  # WSSS-BED has no file for no classes
    back = convert_cams(tmp_path / fmt, tmp_path / "back", fmt, "wsss", progress=False)
    # WSSS-BED has no file for an image without classes
    assert back["num_images"] == (3 if fmt == "wsss-bed" else 4)
    assert cam_ids(tmp_path / "back", "wsss") == sorted(
        k for k, (kk, _) in originals.items() if kk.size or fmt != "wsss-bed"
    )
    worst = 0.0
    for image_id in cam_ids(tmp_path / "back", "wsss"):
        keys, cam = load_cam(tmp_path / "back" / f"{image_id}.npz")
        keys0, cam0 = originals[image_id]
        assert keys.tolist() == keys0.tolist()
        if cam.size:
            worst = max(worst, float(np.abs(cam - cam0).max()))
    assert worst <= tol, worst


# --------------------------------------------------------------------------- the command
def _oracle_cams(root: Path, out: Path) -> list[str]:
    from wsss.data import build_dataset

    ds = build_dataset("synthetic", root, "train")
    for i in ds.ids:
        gt = ds.gt(i)
        save_cam(
            out / f"{i}.npz", ds.labels(i), np.stack([(gt == k).astype(np.float32) for k in ds.labels(i)])
        )
    return list(ds.ids)


@pytest.fixture()
def data(voc_like, tmp_path) -> Path:
    return Path(shutil.copytree(voc_like, tmp_path / "data"))


def test_convert_command_chain_and_pseudo_labels(data, tmp_path):
    ids = _oracle_cams(data, tmp_path / "npz")
    d = ["--data", str(data), "--dataset", "synthetic", "--split", "train", "-q"]
    hops = [
        ("npz", "wsss", "pz", "p-noc"),
        ("pz", "puzzlecam", "irn", "irn"),
        ("irn", "irn", "bed", "wsss-bed"),
    ]
    for src, f, dst, t in hops:
        proc = cli("convert", "--cams", str(tmp_path / src), "--out", str(tmp_path / dst), "--from-format", f,
                   "--to-format", t, *d)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert f"{len(ids)} CAMs written" in proc.stdout
    # resume: nothing left to do
    proc = cli("convert", "--cams", str(tmp_path / "irn"), "--out", str(tmp_path / "bed"), "--from-format", "irn",
               "--to-format", "wsss-bed", *d)  # fmt: skip
    assert (
        proc.returncode == 0
        and f"0 CAMs written to {tmp_path / 'bed'} ({len(ids)} already there)" in proc.stdout
    )
    assert cam_ids(tmp_path / "bed", "wsss-bed") == sorted(ids)
    # the 0/1 oracle maps survive 8 bits exactly: stage 3 gives the same labels from either folder
    for cams, out in (("npz", "p_npz"), ("bed", "p_bed")):
        proc = cli("pseudo", "--data", str(data), "--cams", str(tmp_path / cams), "--out", str(tmp_path / out),
                   "--tau", "0.5", "-q")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    for i in ids:
        a = np.asarray(Image.open(tmp_path / "p_npz" / f"{i}.png"))
        np.testing.assert_array_equal(a, np.asarray(Image.open(tmp_path / "p_bed" / f"{i}.png")))


def test_convert_errors_are_one_line_naming_the_file(data, tmp_path):
    ids = _oracle_cams(data, tmp_path / "npz")
    proc = cli("convert", "--cams", str(tmp_path / "npz"), "--out", str(tmp_path / "o"), "--from-format", "wsss",
               "--to-format", "caffe")  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "error: --to-format caffe: unknown CAM format; known: wsss, irn, puzzlecam, wsss-bed (p-noc = puzzlecam)"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cli("convert", "--cams", str(empty), "--out", str(tmp_path / "o2"), "--from-format", "irn",
               "--to-format", "wsss")  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {empty}: no CAM files in the irn format"
    # IRN files read with PuzzleCAM's convention: the classes no longer match the labels
    proc = cli("convert", "--cams", str(tmp_path / "npz"), "--out", str(tmp_path / "irn"), "--from-format", "wsss",
               "--to-format", "irn", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from wsss.data import build_dataset

    ds = build_dataset("synthetic", data, "train")
    victim = next(i for i in ids if ds.labels(i)[0] == 1)  # class index 0 → a leading 0 key
    (data / "ImageSets" / "Segmentation" / "one.txt").write_text(f"{victim}\n")
    proc = cli("convert", "--cams", str(tmp_path / "irn"), "--out", str(tmp_path / "o3"), "--from-format",
               "puzzlecam", "--to-format", "wsss", "--data", str(data), "--split", "one", "-q")  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {tmp_path / 'irn' / victim}.npy: CAM classes ")
    assert f"do not match the image-level labels {ds.labels(victim).tolist()}" in lines[0]
    # a missing CAM of the split
    (tmp_path / "npz" / f"{ids[1]}.npz").unlink()
    proc = cli("convert", "--cams", str(tmp_path / "npz"), "--out", str(tmp_path / "o4"), "--from-format", "wsss",
               "--to-format", "irn", "--data", str(data), "-q")  # fmt: skip
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == f"error: {tmp_path / 'npz' / ids[1]}.npz: file not found"
    )
