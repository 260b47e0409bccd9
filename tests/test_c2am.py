"""C²AM / C²AM-H: loss terms on tiny inputs, polarity, hints, and the sources end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss.cam.base import CamTrainConfig
from wsss.data import build_dataset
from wsss.io import WsssError, load_saliency, read_json, save_cam
from wsss.models.c2am import (
    SIM_MAX,
    SIM_MIN,
    C2amNet,
    band_means,
    c2am_loss,
    hint_cells,
    hint_loss,
    load_c2am_model,
    pooled_fg_bg,
    rank_weights,
    sim_max_loss,
    sim_min_loss,
)
from wsss.saliency import build_saliency_source, make_saliency
from wsss.saliency.c2am import C2amTrainer

TINY_TRAIN = {
    "backbone": "resnet18",
    "epochs": 2,
    "batch_size": 4,
    "crop_size": 64,
    "optimizer": "adamw",
    "num_workers": 0,
    "checkpoint_every": 1000,
}


def test_rank_weights_follow_the_row_order():
    sim = torch.tensor([[1.0, 0.2, 0.5], [0.3, 1.0, 0.9], [0.5, 0.6, 1.0]])
    # row 0 sorted: 1.0, 0.5, 0.2 → ranks 0, 1, 2 (authors' code: the self pair weighs e^α)
    expected = torch.tensor(
        [
            [math.exp(0.25), math.exp(-0.25), 1.0],
            [math.exp(-0.25), math.exp(0.25), 1.0],
            [math.exp(-0.25), 1.0, math.exp(0.25)],
        ]
    )
    torch.testing.assert_close(rank_weights(sim, alpha=0.25), expected)
    # first_rank=1 (the previous default): ranks 1, 2, 3, every weight e^−α times the above
    torch.testing.assert_close(rank_weights(sim, alpha=0.25, first_rank=1), expected * math.exp(-0.25))


def test_sim_terms_by_hand():
    same = torch.ones(3, 4)
    # every pair has cos 1 → clamped to SIM_MAX; weights of ranks 0, 1, 2 (ties in stable order)
    w_row = sum(math.exp(-0.25 * (r - 1)) for r in range(3))
    expected = w_row * 3 * -math.log(SIM_MAX) / 9
    assert sim_max_loss(same, alpha=0.25).item() == pytest.approx(expected, rel=1e-3)  # float32 log
    fg = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    bg = torch.tensor([[0.0, 1.0], [0.0, 2.0]])  # orthogonal to fg: cos 0 → clamped to SIM_MIN
    assert sim_min_loss(bg, fg).item() == pytest.approx(-math.log(1 - SIM_MIN), rel=1e-3)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # cos −1 → SIM_MIN: finite
    assert math.isfinite(sim_max_loss(opposite).item())


def test_pooled_fg_bg_split_the_features():
    a = torch.zeros(1, 1, 2, 2)
    a[..., 0, :] = 1.0
    f = torch.arange(8, dtype=torch.float32).view(1, 2, 2, 2)
    fg, bg = pooled_fg_bg(a, f)
    torch.testing.assert_close(fg, torch.tensor([[(0 + 1) / 4, (4 + 5) / 4]]))
    torch.testing.assert_close(bg, torch.tensor([[(2 + 3) / 4, (6 + 7) / 4]]))


def test_c2am_loss_terms_finite_and_gradients_reach_the_whole_net():
    torch.manual_seed(0)
    net = C2amNet("resnet18")
    logits, features = net(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 1, 4, 4) and features.shape[1] == 256 + 512
    losses = c2am_loss(logits, features)
    assert set(losses) == {"loss", "fg", "bg", "neg"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert net.head[0].weight.grad.abs().sum() > 0
    assert next(net.backbone.parameters()).grad.abs().sum() > 0
    with pytest.raises(WsssError, match="at least 2"):
        c2am_loss(logits[:1], features[:1])


def test_hint_loss_only_on_hinted_cells():
    logits = torch.zeros(1, 1, 2, 2, requires_grad=True)
    hints = torch.zeros(1, 1, 8, 8)
    assert hint_loss(logits, hints, 0.4, 0.1).item() == 0.0
    hints[..., :4, :4] = 1.0  # exactly the top-left cell
    loss = hint_loss(logits, hints, 0.4, 0.1)
    # BCE(0, 0.95) = −0.95·log σ(0) − 0.05·log(1 − σ(0)) = log 2
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    loss.backward()
    grad = logits.grad[0, 0]
    assert grad[0, 0] < 0 and torch.count_nonzero(grad) == 1  # pushes that cell's logit up only
    # bicubic (default) and area agree here: the hinted block is exactly one cell
    assert hint_loss(logits, hints, 0.4, 0.1, "area").item() == pytest.approx(math.log(2), rel=1e-6)
    with pytest.raises(WsssError, match="hint_resize"):
        hint_loss(logits, hints, 0.4, 0.1, "nearest")


def test_hint_cells_bicubic_differs_from_area():
    hints = torch.zeros(1, 1, 8, 8)
    hints[..., :, :3] = 1.0  # three of each cell's four columns in the left cells
    area = hint_cells(hints, (2, 2), "area")
    torch.testing.assert_close(area[0, 0, :, 0], torch.tensor([0.75, 0.75]))
    bicubic = hint_cells(hints, (2, 2))
    assert not torch.allclose(bicubic, area)


def _trainer(voc_like, tmp_path, **options):
    ds = build_dataset("synthetic", voc_like, "train")
    cfg = CamTrainConfig.from_dict({**TINY_TRAIN, "method_options": options})
    return C2amTrainer(ds, tmp_path / "c2am", cfg, progress=False)


def test_polarity_flip_inverts_the_map(voc_like, tmp_path):
    trainer = _trainer(voc_like, tmp_path)
    assert trainer.options["polarity_rule"] == "last_batch_bands"
    x = torch.randn(2, 3, 64, 64)
    trainer.model.eval()
    before = trainer.model(x)[0]
    trainer.band_sums = torch.tensor([0.3, 0.4, 0.6, 0.5, 1.0])  # mean of band means 0.45: keep
    trainer.decide_polarity()
    assert not bool(trainer.model.flipped)
    trainer.polarity_decided = False
    trainer.band_sums = torch.tensor([0.3, 0.6, 0.6, 0.7, 1.0])  # 0.55: the map marks the border
    trainer.decide_polarity()
    assert bool(trainer.model.flipped)
    torch.testing.assert_close(trainer.model(x)[0], -before)


def test_band_means_on_the_map_grid():
    a = torch.zeros(2, 1, 6, 6)
    a[:, :, :1, :] = 1.0  # top row only
    torch.testing.assert_close(band_means(a, 2), torch.tensor([0.5, 1 / 6, 0.0, 1 / 6]))


def test_last_batch_of_epoch_0_sets_the_bands(voc_like, tmp_path):
    trainer = _trainer(voc_like, tmp_path)
    batch = {"image": torch.randn(2, 3, 64, 64)}
    assert trainer.steps_per_epoch >= 2  # so that step 0 is not the last batch of epoch 0
    trainer.global_step = 0
    trainer.step(batch)
    assert float(trainer.band_sums[4]) == 0.0  # not the last batch of epoch 0: nothing recorded
    trainer.global_step = trainer.steps_per_epoch - 1
    trainer.step(batch)
    assert float(trainer.band_sums[4]) == 1.0


def test_epoch_frame_rule_kept_as_an_option(voc_like, tmp_path):
    trainer = _trainer(voc_like, tmp_path, polarity_rule="epoch_frame")
    x = torch.randn(2, 3, 64, 64)
    trainer.model.eval()
    before = trainer.model(x)[0]
    trainer.border_sums = torch.tensor([0.3 * 100, 100.0])  # frame mostly low: keep
    trainer.decide_polarity()
    assert not bool(trainer.model.flipped)
    trainer.polarity_decided = False
    trainer.border_sums = torch.tensor([0.8 * 100, 100.0])  # the map marks the frame: flip
    trainer.decide_polarity()
    assert bool(trainer.model.flipped)
    torch.testing.assert_close(trainer.model(x)[0], -before)
    trainer.border_sums = torch.tensor([0.0, 100.0])
    trainer.decide_polarity()  # decided once, for good
    assert bool(trainer.model.flipped)


def test_unknown_option_is_an_error(voc_like, tmp_path):
    with pytest.raises(WsssError, match="unknown C²AM option"):
        _trainer(voc_like, tmp_path, gamma=1.0)
    with pytest.raises(WsssError, match="polarity_rule"):
        _trainer(voc_like, tmp_path, polarity_rule="frame")
    with pytest.raises(WsssError, match="hint_resize"):
        _trainer(voc_like, tmp_path, hint_resize="nearest")
    with pytest.raises(WsssError, match="first_rank"):
        _trainer(voc_like, tmp_path, first_rank=2)


def test_c2am_source_end_to_end_and_resume(voc_like, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    out = tmp_path / "sal"
    src = build_saliency_source("c2am", train=TINY_TRAIN)
    make_saliency(src, ds, out, progress=False)
    for image_id in ds.ids:
        sal = load_saliency(out / f"{image_id}.png", shape=(64, 64))
        assert sal.min() == 0.0 and sal.max() == 1.0  # min-max normalised
    model = load_c2am_model(out / "model")
    assert read_json(out / "model" / "model.json")["flipped"] == bool(model.flipped)
    prov = read_json(out / "provenance.json")
    assert prov["source"] == "c2am" and prov["model"]["sha256"]
    log = (out / "model" / "train_log.csv").read_text().splitlines()
    assert log[0].split(",")[-3:] == ["fg", "bg", "neg"]
    stamp = (out / f"{ds.ids[0]}.png").stat().st_mtime_ns
    make_saliency(build_saliency_source("c2am", train=TINY_TRAIN), ds, out, progress=False)
    assert (out / f"{ds.ids[0]}.png").stat().st_mtime_ns == stamp
    with pytest.raises(WsssError, match="settings.json"):
        make_saliency(build_saliency_source("c2am", train=TINY_TRAIN, flip=False), ds, out, progress=False)


def test_c2am_h_trains_on_cam_hints(voc_like, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    cams = tmp_path / "cams"
    for image_id in ds.ids:
        gt = ds.gt(image_id)
        keys = ds.labels(image_id)
        save_cam(cams / f"{image_id}.npz", keys, np.stack([(gt == k).astype(np.float32) for k in keys]))
    with pytest.raises(WsssError, match="needs option cams"):
        build_saliency_source("c2am-h", train=TINY_TRAIN)
    out = tmp_path / "sal"
    src = build_saliency_source("c2am-h", train=TINY_TRAIN, cams=str(cams))
    make_saliency(src, ds, out, progress=False)
    hint = load_saliency(out / "hints" / f"{ds.ids[0]}.png")
    np.testing.assert_array_equal(hint > 0.5, ds.gt(ds.ids[0]) > 0)
    header = (out / "model" / "train_log.csv").read_text().splitlines()[0]
    assert "hint" in header.split(",")
    assert read_json(out / "model" / "model.json")["method"] == "c2am-h"
    assert len(list(out.glob("*.png"))) == len(ds.ids)
