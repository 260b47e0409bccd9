"""File formats of wsss.io: round trips, atomic writes, the safe .npy reader, and errors that name the file."""

from __future__ import annotations

import io as _io
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from wsss.data import build_dataset
from wsss.data.base import write_label_csv
from wsss.io import (
    WsssError,
    atomic_path,
    atomic_write_text,
    find_cam,
    image_size,
    load_cam,
    load_image,
    load_instances,
    load_label,
    load_saliency,
    parse_shard,
    read_json,
    save_cam,
    save_image,
    save_label,
    save_saliency,
    shard_list,
    voc_palette,
    write_json,
    write_run_json,
)

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- CAM formats
def test_cam_npz_round_trip(tmp_path):
    cam = RNG.random((2, 7, 9)).astype(np.float32)
    save_cam(tmp_path / "a.npz", np.array([3, 11]), cam)
    with np.load(tmp_path / "a.npz") as z:
        assert z["cam"].dtype == np.float16 and z["keys"].tolist() == [3, 11]
    keys, back = load_cam(tmp_path / "a.npz", shape=(7, 9), num_classes=21)
    assert keys.dtype == np.int64 and keys.tolist() == [3, 11]
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, cam, atol=5e-4)  # float16 keeps ~3 decimals in [0, 1]
    assert find_cam(tmp_path, "a") == tmp_path / "a.npz"


def test_irn_npy_dict_with_zero_based_keys(tmp_path):
    high = RNG.random((2, 6, 8)).astype(np.float32)
    low = RNG.random((2, 2, 2)).astype(np.float32)
    np.save(tmp_path / "b.npy", {"keys": np.array([0, 14]), "cam": low, "high_res": high})
    keys, cam = load_cam(tmp_path / "b.npy", shape=(6, 8), num_classes=21)
    assert keys.tolist() == [1, 15]  # 0-based aeroplane/person → 1-based ids
    np.testing.assert_array_equal(cam, high)  # the full-resolution map, not the strided one
    assert find_cam(tmp_path, "b") == tmp_path / "b.npy"


def test_npy_dict_with_a_background_channel_first(tmp_path):
    maps = RNG.random((3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "c.npy", {"keys": np.array([4, 6]), "high_res": maps})
    keys, cam = load_cam(tmp_path / "c.npy")
    assert keys.tolist() == [5, 7]
    np.testing.assert_array_equal(cam, maps[1:])


def test_puzzlecam_hr_cam(tmp_path):
    hr = RNG.random((1, 5, 3)).astype(np.float32)
    np.save(tmp_path / "d.npy", {"keys": np.array([19]), "hr_cam": hr})
    keys, cam = load_cam(tmp_path / "d.npy", shape=(5, 3), num_classes=21)
    assert keys.tolist() == [20]
    np.testing.assert_array_equal(cam, hr)


def test_irn_npy_as_irn_really_writes_it(tmp_path):
    import torch

    high = RNG.random((2, 6, 8)).astype(np.float32)
    label = torch.tensor([1.0, 0, 0, 1.0])
    np.save(
        tmp_path / "e.npy", {"keys": torch.nonzero(label)[:, 0], "cam": torch.rand(2, 2, 2), "high_res": high}
    )
    keys, cam = load_cam(tmp_path / "e.npy", shape=(6, 8), num_classes=21)
    assert keys.tolist() == [1, 4]
    np.testing.assert_array_equal(cam, high)


def test_wsss_bed_per_class_pngs(tmp_path):
    maps = RNG.integers(0, 256, size=(2, 5, 6)).astype(np.uint8)
    for c, m in zip((7, 2), maps, strict=True):
        Image.fromarray(m, "L").save(tmp_path / f"2007_000032_{c - 1}.png")
    Image.fromarray(maps[0], "L").save(tmp_path / "2007_000032_x.png")  # not a class index: skipped
    stem = find_cam(tmp_path, "2007_000032")
    assert stem == tmp_path / "2007_000032"
    keys, cam = load_cam(stem, shape=(5, 6), num_classes=21)
    assert keys.tolist() == [2, 7]  # sorted by class
    np.testing.assert_allclose(cam, maps[::-1] / 255.0, atol=1e-7)  # 255 = 1.0


def test_find_cam_prefers_npz(tmp_path):
    save_cam(tmp_path / "f.npz", np.array([1]), np.zeros((1, 2, 2)))
    np.save(tmp_path / "f.npy", {"keys": np.array([0]), "high_res": np.zeros((1, 2, 2))})
    assert find_cam(tmp_path, "f").suffix == ".npz"


# --------------------------------------------------------------------------- label maps, saliency, images
def test_label_png_palette_round_trip(tmp_path):
    label = RNG.integers(0, 21, size=(9, 11)).astype(np.uint8)
    label[0, :] = 255
    save_label(tmp_path / "l.png", label)
    with Image.open(tmp_path / "l.png") as img:
        assert img.mode == "P"
        palette = np.array(img.getpalette()[: 256 * 3]).reshape(256, 3)
    # VOC colours: 1 aeroplane (128,0,0), 15 person (192,128,128), 255 ignore (224,224,192)
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[15].tolist() == [192, 128, 128]
    assert palette[255].tolist() == [224, 224, 192]
    np.testing.assert_array_equal(palette, voc_palette())
    np.testing.assert_array_equal(load_label(tmp_path / "l.png", 21, shape=(9, 11)), label)
    np.testing.assert_array_equal(load_instances(tmp_path / "l.png"), label)


def test_grayscale_and_16_bit_label_pngs(tmp_path):
    label = np.array([[0, 1], [2, 255]], np.uint8)
    Image.fromarray(label, "L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(load_label(tmp_path / "g.png", 3), label)
    Image.fromarray(label.astype(np.uint16)).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(load_label(tmp_path / "g16.png", 3), label)


def test_saliency_round_trip(tmp_path):
    sal = RNG.random((6, 7)).astype(np.float32)
    save_saliency(tmp_path / "s.png", sal)
    back = load_saliency(tmp_path / "s.png", shape=(6, 7))
    assert back.dtype == np.float32 and back.min() >= 0 and back.max() <= 1
    np.testing.assert_allclose(back, sal, atol=0.5 / 255 + 1e-7)  # 8-bit quantisation
    raw = RNG.integers(0, 256, size=(3, 4)).astype(np.uint8)
    save_saliency(tmp_path / "u.png", raw)
    np.testing.assert_array_equal(np.rint(load_saliency(tmp_path / "u.png") * 255), raw)


def test_image_round_trip_and_size(tmp_path):
    rgb = RNG.integers(0, 256, size=(5, 8, 3)).astype(np.uint8)
    save_image(tmp_path / "i.png", rgb)
    np.testing.assert_array_equal(load_image(tmp_path / "i.png"), rgb)
    assert image_size(tmp_path / "i.png") == (5, 8)
    save_image(tmp_path / "i.jpg", rgb)
    with Image.open(tmp_path / "i.jpg") as img:
        assert img.format == "JPEG"
    assert load_image(tmp_path / "i.jpg").shape == (5, 8, 3)


# --------------------------------------------------------------------------- json, run records, shards
def test_json_and_run_record(tmp_path):
    write_json(
        tmp_path / "x.json", {"a": np.float32(0.5), "b": np.arange(3), "p": tmp_path, "n": float("nan")}
    )
    back = read_json(tmp_path / "x.json")
    assert back["a"] == 0.5 and back["b"] == [0, 1, 2] and back["p"] == str(tmp_path) and np.isnan(back["n"])
    path = write_run_json(tmp_path, "pseudo", {"tau": 0.3}, seed=4, timings={"total_s": 1.5}, extra={"k": 1})
    run = json.loads(path.read_text())
    assert path == tmp_path / "run.json"
    assert run["stage"] == "pseudo" and run["config"] == {"tau": 0.3} and run["seed"] == 4
    assert run["timings"] == {"total_s": 1.5} and run["k"] == 1 and "numpy" in run["versions"]


def test_shards(monkeypatch):
    items = list(range(10))
    assert parse_shard("1/3") == (1, 3)
    assert shard_list(items, (1, 3)) == [1, 4, 7]
    parts = [shard_list(items, parse_shard(f"{i}/4")) for i in range(4)]
    assert sorted(sum(parts, [])) == items
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "5")
    assert parse_shard(None) == (2, 5)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(WsssError, match="shard"):
            parse_shard(bad)


# --------------------------------------------------------------------------- atomic writes
def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temp file either

    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("crash")
    assert target.read_text() == "old"  # the previous version survives
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_atomic_outputs_respect_the_umask(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    with open(tmp_path / "b.txt", "w") as f:
        f.write("x")
    assert (os.stat(tmp_path / "a.txt").st_mode & 0o777) == (os.stat(tmp_path / "b.txt").st_mode & 0o777)


# --------------------------------------------------------------------------- the .npy reader is not pickle.load
class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_npy_reader_refuses_malicious_pickles(tmp_path):
    marker = tmp_path / "pwned"
    np.save(tmp_path / "evil.npy", np.array({"keys": np.array([0]), "cam": _Payload(marker)}, dtype=object))
    assert not marker.exists()
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'evil.npy'}: cannot read CAM dict \(refusing"):
        load_cam(tmp_path / "evil.npy")
    assert not marker.exists()
    # and the raw pickle (a pickle file renamed .npy) is not a .npy at all
    (tmp_path / "raw.npy").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'raw.npy'}: not a \.npy file"):
        load_cam(tmp_path / "raw.npy")
    assert not marker.exists()


# --------------------------------------------------------------------------- errors name the file
def test_missing_files(tmp_path):
    for fn, name in (
        (load_label, "l.png"),
        (load_saliency, "s.png"),
        (load_image, "i.jpg"),
        (image_size, "i.png"),
        (load_cam, "c.npz"),
        (load_cam, "c.npy"),
        (read_json, "r.json"),
    ):
        with pytest.raises(WsssError, match=rf"^{tmp_path / name}: file not found"):
            fn(tmp_path / name)
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'zz'}: no CAM found"):
        load_cam(tmp_path / "zz")
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'zz.npz'}: CAM file not found"):
        find_cam(tmp_path, "zz")


def test_corrupt_png(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    buf = _io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, size=(40, 40), dtype=np.uint8), "L").save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    for name in ("junk.png", "cut.png"):
        for fn in (load_label, load_saliency, load_image):
            with pytest.raises(WsssError, match=rf"^{tmp_path / name}: cannot read image"):
                fn(tmp_path / name)


def test_size_mismatches(tmp_path):
    save_cam(tmp_path / "c.npz", np.array([1]), np.zeros((1, 4, 6)))
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'c.npz'}: CAM size 6×4 does not match the image 6×5"):
        load_cam(tmp_path / "c.npz", shape=(5, 6))
    save_label(tmp_path / "l.png", np.zeros((4, 6)))
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'l.png'}: size 6×4 does not match the image 7×4"):
        load_label(tmp_path / "l.png", shape=(4, 7))
    save_saliency(tmp_path / "s.png", np.zeros((4, 6)))
    with pytest.raises(WsssError, match=rf"^{tmp_path / 's.png'}: size 6×4 does not match"):
        load_saliency(tmp_path / "s.png", shape=(6, 4))


def test_nan_in_cam(tmp_path):
    cam = np.zeros((1, 3, 3), np.float32)
    cam[0, 1, 1] = np.nan
    np.savez(tmp_path / "n.npz", keys=np.array([2]), cam=cam)
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'n.npz'}: CAM contains NaN"):
        load_cam(tmp_path / "n.npz")
    np.save(tmp_path / "i.npy", {"keys": np.array([1]), "high_res": np.full((1, 2, 2), np.inf)})
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'i.npy'}: CAM contains NaN or infinite"):
        load_cam(tmp_path / "i.npy")


def test_label_values_beyond_the_classes(tmp_path):
    save_label(tmp_path / "l.png", np.array([[0, 2, 255], [3, 1, 0]]))
    np.testing.assert_array_equal(load_label(tmp_path / "l.png", 4), [[0, 2, 255], [3, 1, 0]])
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'l.png'}: label values \[3\] are >= num_classes=3"):
        load_label(tmp_path / "l.png", 3)


def test_wrong_cam_keys_and_layouts(tmp_path):
    save_cam(tmp_path / "k.npz", np.array([0, 2]), np.zeros((2, 3, 3)))
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'k.npz'}: class keys \[0, 2\] outside 1..20"):
        load_cam(tmp_path / "k.npz", num_classes=21)
    save_cam(tmp_path / "k2.npz", np.array([5]), np.zeros((1, 3, 3)))
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'k2.npz'}: class keys \[5\] outside 1..3"):
        load_cam(tmp_path / "k2.npz", num_classes=4)
    np.savez(tmp_path / "m.npz", keys=np.array([1, 2]), cam=np.zeros((3, 2, 2)))
    with pytest.raises(
        WsssError, match=rf"^{tmp_path / 'm.npz'}: cam has shape \(3, 2, 2\) but there are 2 keys"
    ):
        load_cam(tmp_path / "m.npz")
    np.savez(tmp_path / "o.npz", labels=np.array([1]), maps=np.zeros((1, 2, 2)))
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'o.npz'}: expected arrays 'keys' and 'cam'"):
        load_cam(tmp_path / "o.npz")
    np.save(tmp_path / "p.npy", np.zeros((1, 2, 2)))
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'p.npy'}: a plain array has no class keys"):
        load_cam(tmp_path / "p.npy")
    np.save(tmp_path / "q.npy", {"keys": np.array([0]), "scores": np.zeros((1, 2, 2))})
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'q.npy'}: expected keys 'keys' and 'high_res'"):
        load_cam(tmp_path / "q.npy")
    (tmp_path / "g.npz").write_bytes(b"garbage")
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'g.npz'}: cannot read CAM file"):
        load_cam(tmp_path / "g.npz")


def test_truncated_npz(tmp_path):
    save_cam(tmp_path / "t.npz", np.array([1]), RNG.random((1, 16, 16)))
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(WsssError, match=rf"^{tmp_path / 't.npz'}: cannot read CAM file"):
        load_cam(tmp_path / "t.npz")


def test_save_label_refuses_values_that_do_not_fit(tmp_path):
    with pytest.raises(ValueError):
        save_label(tmp_path / "w.png", np.array([[256, 1]]))


def test_empty_label_set(tmp_path):
    from conftest import make_voc_like

    root = make_voc_like(tmp_path / "voc", n=3)
    ds = build_dataset("synthetic", root, "train")
    ds.check_labels()
    labels = {i: ds.labels(i) for i in ds.ids}
    labels[ds.ids[1]] = np.array([], np.int64)
    write_label_csv(root / "image_labels.csv", labels, ds.class_names)
    ds = build_dataset("synthetic", root, "train")
    with pytest.raises(
        WsssError, match=rf"^{root / 'image_labels.csv'}: image '{ds.ids[1]}' has an empty label set"
    ):
        ds.check_labels()


def test_sixteen_bit_saliency_is_rescaled_not_clipped(tmp_path):
    from PIL import Image

    ramp = np.linspace(0, 65535, 8).astype(np.uint16)[None]
    Image.fromarray(ramp).save(tmp_path / "s16.png")
    np.testing.assert_allclose(load_saliency(tmp_path / "s16.png")[0], np.linspace(0, 1, 8), atol=1e-4)


def test_voc_loader_reads_the_synthetic_png_images(voc_like):
    ds = build_dataset("voc", voc_like, "train")  # the plain VOC loader, not the synthetic one
    assert ds.image_path(ds.ids[0]).suffix == ".png" and ds.image(ds.ids[0]).shape == (64, 64, 3)
