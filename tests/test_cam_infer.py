"""CAM inference: TTA against hand-made models and an independent per-image loop,
the npz outputs, resume, sharding."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import wsss.cam.infer as infer_module
from wsss.cam import infer_cams, tta_cams
from wsss.cam.infer import normalize_present
from wsss.data import build_dataset
from wsss.data.base import Dataset
from wsss.io import WsssError, load_cam, save_cam, save_image
from wsss.models import CamNet, save_cam_model


class LeftHalfModel(nn.Module):
    """Maps = input channels, but only the left half of the image is ever seen."""

    def forward(self, x):
        maps = x.clone()
        maps[..., x.shape[-1] // 2 :] = 0
        return maps.mean(dim=(2, 3)), maps


class StridedConvModel(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 3, stride=2, padding=1)  # ⌈n/2⌉ cells
        self.output_stride = 2

    def forward(self, x):
        maps = self.conv(x)
        return maps.mean(dim=(2, 3)), maps


def test_flip_pair_restores_what_one_view_misses_and_relu_applies():
    image = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6) - 10.0
    image[0, 1] *= -1.0  # class 2 is mostly negative: relu keeps only its few positive pixels
    plain = tta_cams(LeftHalfModel(), image, scales=(1.0,), flip=False)
    with_flip = tta_cams(LeftHalfModel(), image, scales=(1.0,), flip=True)
    expected_left = torch.relu(image).clone()
    expected_left[..., 3:] = 0
    torch.testing.assert_close(plain, expected_left)
    torch.testing.assert_close(with_flip, torch.relu(image))  # the flipped view saw the right half


def test_per_class_normalisation_keeps_only_present_classes():
    cams = torch.zeros(3, 2, 2)
    cams[0] = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    cams[1] = torch.tensor([[5.0, 5.0], [5.0, 5.0]])
    cams[2] = torch.tensor([[0.0, 10.0], [20.0, 40.0]])
    out = normalize_present(cams, np.array([1, 3]))  # 1-based: classes 1 and 3, class 2 dropped
    expected = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]]) / (4.0 + 1e-5)
    torch.testing.assert_close(out[0:1], expected)
    torch.testing.assert_close(out[1], torch.tensor([[0.0, 10.0], [20.0, 40.0]]) / (40.0 + 1e-5))


def _reference_tta(model: nn.Module, image_hwc: np.ndarray, scales, flip: bool) -> np.ndarray:
    """One image at a time, OpenCV resizes, numpy flips: the per-view recipe written out."""
    height, width = image_hwc.shape[:2]
    total = 0.0
    for scale in scales:
        size = (round(width * scale), round(height * scale))
        x = image_hwc if scale == 1 else cv2.resize(image_hwc, size, interpolation=cv2.INTER_LINEAR)
        views = [x, x[:, ::-1]] if flip else [x]
        for k, view in enumerate(views):
            tensor = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1)))[None]
            with torch.no_grad():
                maps = np.maximum(model(tensor)[1][0].numpy(), 0).transpose(1, 2, 0)
            if k == 1:
                maps = maps[:, ::-1]
            total = total + cv2.resize(
                np.ascontiguousarray(maps), (width, height), interpolation=cv2.INTER_LINEAR
            )
    return np.asarray(total).transpose(2, 0, 1)


def _reference_geometry_tta(
    model: nn.Module, pixels: np.ndarray, scales, flip: bool, mean, std
) -> np.ndarray:
    """One uint8 image at a time: PIL bicubic rescale, normalise, forward each view, resize the
    map to the size rounded up to the model's stride, crop (the ``reference`` geometry)."""
    height, width = pixels.shape[:2]
    stride = model.output_stride
    up_size = (-(-height // stride) * stride, -(-width // stride) * stride)
    total = 0.0
    for scale in scales:
        size = (round(width * scale), round(height * scale))
        scaled = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))
        x = (scaled.astype(np.float32) - np.float32(255) * mean) / (np.float32(255) * std)
        views = [x, x[:, ::-1]] if flip else [x]
        for k, view in enumerate(views):
            tensor = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1), np.float32))[None]
            with torch.no_grad():
                maps = torch.relu(model(tensor)[1])
            if k == 1:
                maps = maps.flip(-1)
            up = F.interpolate(maps, up_size, mode="bilinear", align_corners=False)
            total = total + up[0, :, :height, :width].numpy()
    return np.asarray(total)


def test_batched_multiscale_tta_matches_a_per_image_reference():
    # float64 network and reference: the batched and the one-image convolutions then agree on
    # any CPU; what is left is tta_cams' float32 maps (measured 1.5e-7 relative)
    model = StridedConvModel().double().eval()
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 24, 32, 3))
    scales = (0.5, 1.0, 1.5, 2.0)
    with torch.no_grad():
        batched = tta_cams(
            model, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), scales, flip=True
        ).numpy()
    for b in range(3):
        reference = _reference_tta(model, images[b], scales, True)
        atol = 1e-5 * np.abs(reference).max()  # the sums reach ~10; a misplaced view is off by ~1
        np.testing.assert_allclose(batched[b], reference, rtol=1e-5, atol=atol)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    net = CamNet("resnet18", 3).eval()
    with torch.no_grad():
        net.classifier.weight.abs_()  # features are post-ReLU, so every class map is positive somewhere
    return save_cam_model(net, tmp_path_factory.mktemp("model") / "model.safetensors")


@pytest.fixture(scope="module")
def cams_dir(voc_like, model_path, tmp_path_factory):
    ds = build_dataset("synthetic", voc_like, "train")
    return infer_cams(ds, model_path, tmp_path_factory.mktemp("cams"), scales=(1.0, 0.5), progress=False)


def test_writes_a_valid_npz_for_every_id(voc_like, cams_dir):
    ds = build_dataset("synthetic", voc_like, "train")
    for image_id in ds.ids:
        keys, cam = load_cam(cams_dir / f"{image_id}.npz", shape=(64, 64), num_classes=4)
        np.testing.assert_array_equal(keys, ds.labels(image_id))
        assert cam.shape == (len(keys), 64, 64)
        np.testing.assert_allclose(cam.max(axis=(1, 2)), 1.0, atol=2e-3)
        assert cam.min() >= 0
        with np.load(cams_dir / f"{image_id}.npz") as z:
            assert z["cam"].dtype == np.float16
    run = json.loads((cams_dir / "run.json").read_text())
    assert run["stage"] == "cam_infer" and run["config"]["scales"] == [1.0, 0.5] and run["written"] == len(ds)


def test_batching_does_not_change_the_result(voc_like, model_path, cams_dir, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    infer_cams(ds, model_path, tmp_path, scales=(1.0, 0.5), batch_size=1, progress=False, ids=ds.ids[:3])
    for image_id in ds.ids[:3]:
        _, one = load_cam(tmp_path / f"{image_id}.npz")
        _, batched = load_cam(cams_dir / f"{image_id}.npz")
        np.testing.assert_allclose(one, batched, atol=2e-3)


def test_existing_outputs_are_skipped(voc_like, model_path, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    sentinel = np.full((1, 64, 64), 0.25, np.float32)
    save_cam(tmp_path / f"{ds.ids[0]}.npz", np.array([1]), sentinel)
    infer_cams(ds, model_path, tmp_path, scales=(1.0,), flip=False, progress=False)
    keys, cam = load_cam(tmp_path / f"{ds.ids[0]}.npz")
    assert keys.tolist() == [1] and np.all(cam == 0.25)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.npz")}
    assert len(mtimes) == len(ds)
    infer_cams(ds, model_path, tmp_path, scales=(1.0,), flip=False, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.npz")} == mtimes
    # the no-op rerun keeps the record of the run that wrote the CAMs
    assert json.loads((tmp_path / "run.json").read_text())["written"] == len(ds) - 1


def test_resuming_with_other_settings_is_refused_before_writing(voc_like, model_path, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    infer_cams(ds, model_path, tmp_path, scales=(1.0,), flip=False, progress=False, ids=ds.ids[:2])
    with pytest.raises(WsssError, match=r"settings\.json: .*scales: \[1\.0\] → \[1\.0, 2\.0\]"):
        infer_cams(ds, model_path, tmp_path, scales=(1.0, 2.0), flip=False, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_shards_partition_the_ids(voc_like, model_path, tmp_path, monkeypatch):
    ds = build_dataset("synthetic", voc_like, "train")
    written = []
    for index in range(3):
        out = tmp_path / f"s{index}"
        if index == 2:  # the default comes from torchrun's environment
            monkeypatch.setenv("RANK", "2")
            monkeypatch.setenv("WORLD_SIZE", "3")
            infer_cams(ds, model_path, out, scales=(1.0,), flip=False, progress=False)
        else:
            infer_cams(ds, model_path, out, scales=(1.0,), flip=False, shard=f"{index}/3", progress=False)
        written.append({p.stem for p in out.glob("*.npz")})
        assert (out / f"run.shard{index}of3.json").is_file()
    assert sum(len(w) for w in written) == len(ds)
    assert set().union(*written) == set(ds.ids)
    assert written[1] == set(ds.ids[1::3])


class MixedSizeDataset(Dataset):
    """Two image sizes in one split, so batching must group by size."""

    def __init__(self, root):
        super().__init__(root, "train")
        self.class_names = ["background", "a", "b"]
        rng = np.random.default_rng(0)
        sizes = [(21, 27), (16, 16), (21, 27), (16, 16), (21, 27)]  # odd sides: the crop matters
        self.ids = [f"m{i}" for i in range(len(sizes))]
        self._labels = {i: np.array([1, 2]) if k % 2 else np.array([2]) for k, i in enumerate(self.ids)}
        for image_id, (h, w) in zip(self.ids, sizes, strict=True):
            save_image(self.image_path(image_id), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))

    def image_path(self, image_id):
        return self.root / f"{image_id}.png"


@pytest.mark.parametrize("geometry", ["reference", "resize"])
def test_images_of_different_sizes_and_the_known_answer(tmp_path, monkeypatch, geometry):
    ds = MixedSizeDataset(tmp_path / "data")
    model = StridedConvModel(classes=2).eval()
    net = CamNet("resnet18", 2)
    path = save_cam_model(net, tmp_path / "m.safetensors")
    model.num_classes = 2
    model.meta_info = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    # the real file-driven pipeline, with the hand-made model swapped in so the answer is known
    monkeypatch.setattr(infer_module, "load_cam_model", lambda p, device=None: model)
    infer_cams(ds, path, tmp_path / "cams", scales=(1.0, 1.5), flip=True, geometry=geometry, batch_size=4,
               progress=False)  # fmt: skip
    for image_id in ds.ids:
        pixels = ds.image(image_id)
        if geometry == "resize":
            normalised = (pixels.astype(np.float32) - 0.5 * 255) / (0.25 * 255)
            reference = _reference_tta(model, normalised, (1.0, 1.5), True)
        else:
            reference = _reference_geometry_tta(
                model, pixels, (1.0, 1.5), True, np.float32(0.5), np.float32(0.25)
            )
        keys = ds.labels(image_id)
        expected = reference[keys - 1] / (reference[keys - 1].max(axis=(1, 2), keepdims=True) + 1e-5)
        got_keys, got = load_cam(tmp_path / "cams" / f"{image_id}.npz", shape=pixels.shape[:2])
        np.testing.assert_array_equal(got_keys, keys)
        np.testing.assert_allclose(got, expected, atol=2e-3)


def test_a_folder_of_the_other_geometry_is_refused(voc_like, model_path, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    infer_cams(ds, model_path, tmp_path, scales=(1.0,), flip=False, geometry="resize", progress=False,
               ids=ds.ids[:1])  # fmt: skip
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert "geometry" not in settings["settings"]  # as folders made before the option: they resume
    with pytest.raises(WsssError, match=r"settings\.json: .*geometry: None → 'reference'"):
        infer_cams(ds, model_path, tmp_path, scales=(1.0,), flip=False, progress=False)
    with pytest.raises(WsssError, match="geometry must be one of"):
        infer_cams(ds, model_path, tmp_path / "other", geometry="irn", progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_bad_inputs_name_the_file(voc_like, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    missing = tmp_path / "none.safetensors"
    with pytest.raises(WsssError, match=f"^{re.escape(str(missing))}: CAM model not found"):
        infer_cams(ds, missing, tmp_path / "out", progress=False)
    wrong = save_cam_model(CamNet("resnet18", 5), tmp_path / "five.safetensors")
    with pytest.raises(WsssError, match=f"^{re.escape(str(wrong))}: model has 5 classes"):
        infer_cams(ds, wrong, tmp_path / "out", progress=False)
    with pytest.raises(WsssError, match="not in split 'train'"):
        infer_cams(ds, wrong, tmp_path / "out", ids=["zzz"], progress=False)
