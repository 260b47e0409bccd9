"""Saliency-supervised CAM methods (eps, smvwe): the saliency-feedback loss, the visual-word
assignment, saliency augmentation, C + 1-map models, training/resume and inference."""

from __future__ import annotations

import csv
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import make_voc_like

import wsss.cam.eps  # noqa: F401  (registers "eps")
import wsss.cam.smvwe  # noqa: F401  (registers "smvwe")
from wsss.cam import CamTrainConfig, build_trainer, infer_cams, train_cam
from wsss.cam.data import CamTrainData
from wsss.cam.eps import saliency_feedback_loss
from wsss.cam.smvwe import VisualWordHead, word_assignment
from wsss.data import build_dataset
from wsss.io import WsssError, load_cam, save_image, save_saliency
from wsss.models.cam_net import CamNet, load_cam_model


def small_config(**overrides) -> CamTrainConfig:
    base = dict(
        backbone="resnet18",
        recipe="generic",
        crop_size=64,
        batch_size=4,
        epochs=1,
        num_workers=0,
        checkpoint_every=1000,
        optimizer="adamw",
        saliency="oracle",
    )
    return CamTrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def train_set(voc_like):
    return build_dataset("synthetic", voc_like, "train")  # 8 images → 2 steps per epoch at batch 4


# ----------------------------------------------------------------- saliency feedback
# 20 pixels: a class-1 region (5 px, 2 salient), a class-2 region (7 px, 3 salient), a
# background region (8 px, 1 salient); probabilities (p1, p2, p_bg) constant per region.
REGION_PROBS = {"c1": (0.7, 0.1, 0.2), "c2": (0.1, 0.8, 0.1), "bg": (0.2, 0.1, 0.7)}
REGION_PIXELS = {"c1": (5, 2), "c2": (7, 3), "bg": (8, 1)}


def _hand_made(saliency_upsample: int = 1):
    probs, sal = [], []
    for region, (count, salient) in REGION_PIXELS.items():
        probs += [REGION_PROBS[region]] * count
        sal += [1.0] * salient + [0.0] * (count - salient)
    maps = torch.log(torch.tensor(probs, dtype=torch.float64)).T.reshape(1, 3, 2, 10)
    saliency = np.asarray(sal, np.float32).reshape(2, 10)
    saliency = np.kron(saliency, np.ones((saliency_upsample, saliency_upsample), np.float32))
    return maps, torch.from_numpy(saliency)[None, None]


def _expected(s_hat: dict[str, float]) -> float:
    """mean (Ŝ − S)² with Ŝ constant per region, written out from the region counts."""
    total = 0.0
    for region, (count, salient) in REGION_PIXELS.items():
        total += salient * (s_hat[region] - 1.0) ** 2 + (count - salient) * s_hat[region] ** 2
    return total / 20


def test_saliency_feedback_overlap_rule_and_s_hat_by_hand():
    maps, saliency = _hand_made()
    both = torch.tensor([[1.0, 1.0]])
    # o_1 = 2/5 is not > 0.4 → class 1 joins the background: Ŝ = ½·p2 + ½·(1 − p_bg − p1)
    got = saliency_feedback_loss(maps, saliency, both)
    expected = _expected({"c1": 0.05 + 0.05, "c2": 0.4 + 0.4, "bg": 0.05 + 0.05})  # 5.21 / 20
    assert float(got) == pytest.approx(0.2605, abs=1e-6) and expected == pytest.approx(0.2605)
    # just below o_1 the class is foreground: Ŝ = ½·(p1 + p2) + ½·(1 − p_bg); o_2 = 3/7 stays fg
    got = saliency_feedback_loss(maps, saliency, both, overlap_threshold=0.39)
    assert float(got) == pytest.approx(_expected({"c1": 0.8, "c2": 0.9, "bg": 0.3}), abs=1e-6)  # 0.3195
    # class 2 at o_2 = 3/7 ≈ 0.4286: a threshold of 0.43 sends it to the background too, and with
    # every map in the background Ŝ = ½·(1 − Σ p) = 0: the loss is the salient fraction 6/20
    got = saliency_feedback_loss(maps, saliency, both, overlap_threshold=0.43)
    assert float(got) == pytest.approx(_expected({"c1": 0.0, "c2": 0.0, "bg": 0.0}), abs=1e-6) == 0.3
    # an absent class is neither foreground nor background: Ŝ = ½·p2 + ½·(1 − p_bg)
    got = saliency_feedback_loss(maps, saliency, torch.tensor([[0.0, 1.0]]))
    assert float(got) == pytest.approx(_expected({"c1": 0.45, "c2": 0.85, "bg": 0.2}), abs=1e-6)  # 0.2545
    # μ weights the two terms: μ = 1 → Ŝ = Σ_fg p
    got = saliency_feedback_loss(maps, saliency, both, mu=1.0)
    assert float(got) == pytest.approx(_expected({"c1": 0.1, "c2": 0.8, "bg": 0.1}), abs=1e-6)
    # saliency at 4× the map resolution is resampled to it by nearest neighbour (EPS's code):
    # each map cell takes the top-left pixel of its 4×4 block, so constant blocks give the same
    # answer, and the rest of a block does not count (an average over it, as before, would)
    _, big = _hand_made(saliency_upsample=4)
    assert float(saliency_feedback_loss(maps, big, both)) == pytest.approx(0.2605, abs=1e-6)
    speckled = big.clone()
    speckled[..., 1::4, :] = 1.0 - speckled[..., 1::4, :]  # flip one row in four
    assert float(saliency_feedback_loss(maps, speckled, both)) == pytest.approx(0.2605, abs=1e-6)


def test_saliency_loss_reaches_the_generator():
    torch.manual_seed(0)
    net = CamNet("resnet18", 3, background_map=True)
    image = torch.randn(2, 3, 64, 64)
    logits, maps = net(image)
    assert logits.shape == (2, 3) and maps.shape == (2, 4, 4, 4)
    saliency = (torch.rand(2, 1, 64, 64) > 0.5).float()
    loss = saliency_feedback_loss(maps, saliency, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    loss.backward()
    assert net.backbone.conv1.weight.grad.abs().sum() > 0
    assert net.classifier.weight.grad[3].abs().sum() > 0  # the background map is trained too
    with pytest.raises(WsssError, match="labels"):
        saliency_feedback_loss(maps, saliency, torch.ones(2, 4))


# ----------------------------------------------------------------- visual words
def test_word_assignment_matches_the_direct_formula():
    gen = torch.Generator().manual_seed(0)
    features = torch.rand(2, 3, 2, 2, generator=gen, dtype=torch.float64)
    codebook = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    temperature = 0.5
    probs, word_labels, histogram = word_assignment(features, codebook, temperature)
    f = features.numpy().reshape(2, 3, 4)
    book = codebook.numpy()
    for b in range(2):
        direct_probs = []
        for i in range(4):
            dist = np.array([np.abs(f[b, :, i] - book[k]).sum() for k in range(4)])
            e = np.exp(-dist / temperature)
            direct_probs.append(e / e.sum())
        direct_probs = np.array(direct_probs)
        np.testing.assert_allclose(probs[b].numpy(), direct_probs, rtol=1e-5)
        np.testing.assert_allclose(histogram[b].numpy(), direct_probs.mean(axis=0), rtol=1e-5)
        expected_labels = np.zeros(4)
        expected_labels[np.unique(direct_probs.argmax(axis=1))] = 1
        np.testing.assert_array_equal(word_labels[b].numpy(), expected_labels)
    # a feature equal to a word is assigned to it
    features = codebook[[2, 2, 0, 0]].T.reshape(1, 3, 2, 2)
    _, word_labels, _ = word_assignment(features, codebook, 1e-3)
    np.testing.assert_array_equal(word_labels[0].numpy(), [1, 0, 1, 0])


def test_word_head_gradients_reach_codebook_and_features_but_not_word_labels():
    torch.manual_seed(0)
    head = VisualWordHead(feature_channels=5, num_words=6, num_classes=3)
    features = torch.rand(2, 5, 3, 3, requires_grad=True)
    out = head(features, temperature=1.0)
    assert not out["word_labels"].requires_grad
    assert out["word_logits"].shape == (2, 6) and out["image_logits"].shape == (2, 3)
    torch.nn.functional.multilabel_soft_margin_loss(
        out["image_logits"], torch.tensor([[1.0, 0, 0]] * 2)
    ).backward(retain_graph=True)
    assert head.codebook.grad.abs().sum() > 0 and features.grad.abs().sum() > 0
    assert head.word_classifier.weight.grad is None  # the word classifier is not on this path


# ----------------------------------------------------------------- data
def test_saliency_is_augmented_exactly_like_the_image(tmp_path):
    root = make_voc_like(tmp_path / "data", n=6)
    ds = build_dataset("synthetic", root, "train")
    for image_id in ds.ids:  # a saliency map equal to the image's red channel
        save_saliency(root / "saliency" / "red" / f"{image_id}.png", ds.image(image_id)[..., 0] / 255.0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for crop, scales in ((48, (0.8, 1.3)), (96, (1.0, 1.2))):  # always cropped / always padded
        plain = CamTrainData(ds, crop, scales, True, mean, std, seed=3)
        data = CamTrainData(ds, crop, scales, True, mean, std, seed=3)
        data.use_saliency(root / "saliency" / "red")
        for epoch in range(3):
            for index in range(len(ds)):
                sample = data[(epoch, index)]
                image, saliency = sample["image"].numpy(), sample["saliency"].numpy()
                assert saliency.shape == (1, crop, crop) and saliency.dtype == np.float32
                assert np.array_equal(image, plain[(epoch, index)]["image"].numpy())  # same draws
                padding = (image == 0).all(axis=0)
                red = image[0] * std[0] * 255 + mean[0] * 255
                # OpenCV resizes uint8 in fixed point (≤ 1 grey level off); a shift of one pixel
                # on this noise would be off by tens of levels
                diff = np.abs(saliency[0][~padding] * 255 - red[~padding])
                assert diff.max() < 1.0 and diff.mean() < 0.3
                assert (saliency[0][padding] == 0).all()
                assert padding.any() == (crop == 96)
        assert "saliency" not in plain[(0, 0)]


def test_missing_or_bad_saliency_stops_with_the_path(train_set, voc_like, tmp_path):
    with pytest.raises(WsssError, match="method 'eps' needs saliency maps: set the 'saliency' option"):
        build_trainer(train_set, tmp_path / "a", small_config(saliency=None), method="eps", progress=False)
    with pytest.raises(WsssError, match="^nope: saliency option is neither a folder nor a source"):
        build_trainer(
            train_set, tmp_path / "a", small_config(saliency="nope"), method="smvwe", progress=False
        )
    folder = tmp_path / "sal"
    shutil.copytree(voc_like / "saliency" / "oracle", folder)
    missing = folder / f"{train_set.ids[3]}.png"
    missing.unlink()
    with pytest.raises(WsssError, match="^" + re.escape(str(missing)) + ": saliency map not found"):
        build_trainer(
            train_set, tmp_path / "a", small_config(saliency=str(folder)), method="eps", progress=False
        )
    save_image(missing, np.zeros((32, 64, 3), np.uint8))
    with pytest.raises(WsssError, match="^" + re.escape(str(missing)) + ": size 64×32 does not match"):
        build_trainer(
            train_set, tmp_path / "a", small_config(saliency=str(folder)), method="eps", progress=False
        )
    with pytest.raises(WsssError, match="unknown option.*'alpha'.*'sal_weight'"):
        build_trainer(train_set, tmp_path / "a", small_config(method_options={"alpha": 1}), method="eps")


# ----------------------------------------------------------------- training
def _log(out_dir):
    with open(out_dir / "train_log.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


def _checkpoint(out_dir):
    return torch.load(out_dir / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize(
    ("method", "options"), [("eps", {}), ("smvwe", {"num_words": 8})], ids=["eps", "smvwe"]
)
def test_trains_resumes_bitwise_and_infers_foreground_cams(train_set, tmp_path, method, options):
    cfg = dict(epochs=2, log_every=1, crop_size=32, method_options=options)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_cam(train_set, straight, small_config(**cfg), method=method, progress=False)
    out = train_cam(
        train_set,
        resumed,
        small_config(**cfg, checkpoint_every=2, stop_after_steps=3),
        method=method,
        progress=False,
    )
    assert out == resumed / "checkpoint.pt" and _checkpoint(resumed)["global_step"] == 2
    train_cam(train_set, resumed, small_config(**cfg), method=method, progress=False)
    a, b = _checkpoint(straight), _checkpoint(resumed)
    for part_a, part_b in (
        (a["model"], b["model"]),
        (a["extra"].get("words", {}), b["extra"].get("words", {})),
    ):
        assert part_a.keys() == part_b.keys()
        for k in part_a:
            assert torch.equal(part_a[k], part_b[k]), k
    assert (method == "smvwe") == ("codebook" in a["extra"].get("words", {}))
    for i in a["optimizer"]["state"]:
        for k, v in a["optimizer"]["state"][i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][i][k])), (i, k)
    assert _log(straight) == _log(resumed) and len(_log(straight)) == 4
    assert {"sal", "loss"} <= set(_log(straight)[0]) and (method == "smvwe") == ("word" in _log(straight)[0])
    model = load_cam_model(straight)
    assert model.background_map and model.num_classes == 3 and model.classifier.out_channels == 4
    assert model.meta_info["method"] == method
    ids = train_set.ids[:3]
    cams = infer_cams(
        train_set, straight, tmp_path / "cams", scales=(1.0,), flip=False, progress=False, ids=ids
    )
    for image_id in ids:
        keys, cam = load_cam(cams / f"{image_id}.npz", shape=(64, 64))
        np.testing.assert_array_equal(keys, train_set.labels(image_id))
        assert cam.shape == (len(keys), 64, 64) and 0 <= cam.min() and cam.max() <= 1
