"""Puzzle-CAM, OC-CSE, P-OC and P-NOC: loss terms, schedules, where gradients go, exact resume."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from wsss.cam import CamTrainConfig, build_trainer, infer_cams, train_cam
from wsss.cam.oc_cse import draw_present_class, soft_erase_mask
from wsss.cam.pnoc import hard_keep_mask
from wsss.cam.puzzle import linear_ramp, merge_tiles, split_tiles
from wsss.data import build_dataset
from wsss.io import WsssError, load_cam
from wsss.models.cam_net import CamNet, save_cam_model


def small_config(**overrides) -> CamTrainConfig:
    base = dict(
        backbone="resnet18",
        recipe="generic",
        crop_size=32,
        batch_size=2,
        epochs=1,
        num_workers=0,
        checkpoint_every=1000,
        optimizer="adamw",
        lr=1e-3,
    )
    return CamTrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def train_set(voc_like):
    return build_dataset(
        "synthetic", voc_like, "train"
    )  # 8 images → 4 steps per epoch at batch 2 (32 px crops keep the CPU tests fast)


@pytest.fixture(scope="module")
def oc_path(tmp_path_factory):
    """A randomly initialised 3-class ordinary classifier on disk (stands in for a trained `cam` run)."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("oc") / "model.safetensors"
    return save_cam_model(CamNet("resnet18", 3), path)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def first_batch(trainer):
    return trainer.to_device(next(iter(trainer.loader(0))))


# ----------------------------------------------------------------------------- puzzle pieces
def test_tiles_split_and_merge_hand_made():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)  # rows 0..3, values 4·row + col
    tiles = split_tiles(image)
    assert tiles.shape == (4, 1, 2, 2)
    assert tiles[0].flatten().tolist() == [0, 1, 4, 5]  # top-left
    assert tiles[1].flatten().tolist() == [2, 3, 6, 7]  # top-right
    assert tiles[2].flatten().tolist() == [8, 9, 12, 13]  # bottom-left
    assert tiles[3].flatten().tolist() == [10, 11, 14, 15]  # bottom-right
    batch = torch.randn(3, 2, 6, 8)
    assert torch.equal(merge_tiles(split_tiles(batch), 3), batch)
    with pytest.raises(WsssError, match="even"):
        split_tiles(torch.zeros(1, 3, 5, 4))


def test_ramps_at_start_middle_end():
    assert [linear_ramp(f, 0.0, 4.0, 0.5) for f in (0.0, 0.25, 0.5, 1.0)] == [0.0, 2.0, 4.0, 4.0]
    assert [linear_ramp(f, 0.3, 1.0) for f in (0.0, 0.5, 1.0)] == pytest.approx([0.3, 0.65, 1.0])


def test_schedules_follow_the_training_fraction(train_set, oc_path, tmp_path):
    trainer = build_trainer(
        train_set, tmp_path, small_config(oc=str(oc_path)), method="p-noc", progress=False
    )
    assert trainer.total_steps == 4
    seen = []
    for step in (0, 1, 2, 4):  # fractions 0, ¼, ½, 1
        trainer.global_step = step
        seen.append((trainer.puzzle_alpha(), trainer.cse_lambda(), trainer.noc_lambda()))
    expected = [(0.0, 0.3, 0.0), (2.0, 0.475, 0.25), (4.0, 0.65, 0.5), (4.0, 1.0, 1.0)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)


def test_puzzle_loss_matches_tile_by_tile_formulation(train_set, tmp_path):
    cfg = small_config(method_options={"alpha_max": 2.0})
    trainer = build_trainer(train_set, tmp_path, cfg, method="puzzle", progress=False)
    trainer.global_step = 1  # α = 2 · (1/4) / 0.5 = 1
    trainer.model.eval()  # batch statistics would differ between the batched and the one-by-one forward
    # float64: the tiles' and the whole images' convolutions then agree to ~1e-15 on any CPU
    trainer.model.double()
    batch = first_batch(trainer)
    images, labels = batch["image"].double(), batch["label"]
    with torch.no_grad():
        losses, maps = trainer.puzzle_losses(images, labels)
        logits, maps_ref = trainer.model(images)
        h, w = images.shape[-2] // 2, images.shape[-1] // 2
        tile_maps = [
            trainer.model(images[..., i * h : (i + 1) * h, j * w : (j + 1) * w])[1]
            for i in (0, 1)
            for j in (0, 1)
        ]
    merged = torch.cat([torch.cat(tile_maps[:2], dim=3), torch.cat(tile_maps[2:], dim=3)], dim=2)
    assert maps.shape == (2, 3, 2, 2) and merged.shape == maps.shape
    torch.testing.assert_close(maps, maps_ref)
    re_ref = ((maps_ref - merged).abs() * labels[:, :, None, None]).sum() / merged.numel()
    cls_ref = F.multilabel_soft_margin_loss(logits, labels)
    cls_re_ref = F.multilabel_soft_margin_loss(merged.mean(dim=(2, 3)), labels)
    # the trainer's losses are float32 (cls_loss and puzzle_re cast to it): equal to float32 rounding
    close = dict(rtol=1e-5, atol=1e-8, check_dtype=False)
    torch.testing.assert_close(losses["puzzle_re"], re_ref, **close)
    torch.testing.assert_close(losses["cls"], cls_ref, **close)
    torch.testing.assert_close(losses["puzzle_cls"], cls_re_ref, **close)
    torch.testing.assert_close(losses["loss"], cls_ref + cls_re_ref + 1.0 * re_ref, **close)
    assert all(torch.isfinite(v) for v in losses.values()) and float(re_ref) > 0


def test_unknown_or_bad_method_options(train_set, tmp_path):
    with pytest.raises(
        WsssError, match=re.escape(str(tmp_path)) + r".*unknown method_options \['alpha_mx'\]"
    ):
        build_trainer(train_set, tmp_path, small_config(method_options={"alpha_mx": 2}), "puzzle", False)
    with pytest.raises(WsssError, match="alpha_max must be a number"):
        build_trainer(train_set, tmp_path, small_config(method_options={"alpha_max": "x"}), "puzzle", False)


# ----------------------------------------------------------------------------- OC-CSE pieces
def test_class_draw_and_masks_hand_made():
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([draw_present_class(labels, gen) for _ in range(200)])
    assert torch.all(draws.sum(dim=2)[:, :2] == 1) and torch.all(
        draws[:, 2] == 0
    )  # one class; none if no label
    assert torch.all(draws <= labels)  # only present classes
    first = draws[:, 0].sum(dim=0)  # image 0 draws class 0 and class 2 about equally
    assert first[1] == 0 and 60 < first[0] < 140
    # maps: class 0 of image 0 peaks at 2, image 1's class 1 peaks at 4 → the batch max is 4
    maps = torch.zeros(2, 3, 2, 2)
    maps[0, 0] = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    maps[1, 1] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    onehot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    soft = soft_erase_mask(maps, onehot, (2, 2))
    torch.testing.assert_close(
        soft[:, 0], torch.tensor([[[0.5, 0.0], [0.0, 0.25]], [[1.0, 0.0], [0.0, 0.0]]]) * 4 / (4 + 1e-5)
    )
    keep = hard_keep_mask(maps, onehot, (2, 2), threshold=0.2)  # per-sample norm: image 0 → 1, 0, 0, 0.5
    assert keep[:, 0].tolist() == [[[0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]]


def test_missing_or_mismatched_oc_is_a_clear_error(train_set, oc_path, tmp_path):
    for method in ("oc-cse", "p-oc", "p-noc"):
        with pytest.raises(WsssError, match=re.escape(str(tmp_path)) + rf".*{method}.*`oc` option \(--oc"):
            build_trainer(train_set, tmp_path, small_config(), method, False)
    missing = tmp_path / "nowhere"
    with pytest.raises(WsssError, match="^" + re.escape(str(missing / "model.safetensors"))):
        missing.mkdir()
        build_trainer(train_set, tmp_path, small_config(oc=str(missing)), "oc-cse", False)
    five = save_cam_model(CamNet("resnet18", 5), tmp_path / "five.safetensors")
    with pytest.raises(WsssError, match="^" + re.escape(str(five)) + ".*5 classes.*3 foreground"):
        build_trainer(train_set, tmp_path, small_config(oc=str(five)), "oc-cse", False)
    with pytest.raises(WsssError, match="^" + re.escape(str(oc_path)) + ".*mean/std"):
        build_trainer(
            train_set, tmp_path, small_config(oc=str(oc_path), mean=(0.5, 0.5, 0.5)), "oc-cse", False
        )


def test_oc_cse_frozen_oc_gets_no_update_but_the_generator_gets_gradient_through_the_mask(
    train_set, oc_path, tmp_path
):
    trainer = build_trainer(train_set, tmp_path, small_config(oc=str(oc_path)), "oc-cse", False)
    batch = first_batch(trainer)
    assert not trainer.oc.training and not any(p.requires_grad for p in trainer.oc.parameters())
    # the CSE term alone: its only route to the generator is the mask m
    _logits, maps = trainer.model(batch["image"])
    cse, onehot = trainer.cse_loss(batch["image"], batch["label"], maps)
    assert torch.isfinite(cse) and onehot.shape == (2, 3) and torch.all(onehot.sum(1) == 1)
    cse.backward()
    grad = trainer.model.classifier.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in trainer.oc.parameters())
    oc_before, gen_before = params(trainer.oc), params(trainer.model)
    for _ in range(2):
        losses = trainer.train_step(batch)
        trainer.global_step += 1
    assert set(losses) == {"loss", "cls", "cse"} and all(torch.isfinite(v) for v in losses.values())
    assert_same(oc_before, params(trainer.oc))  # BatchNorm running statistics included
    assert not trainer.oc.training
    assert changed(gen_before, params(trainer.model))


# ----------------------------------------------------------------------------- P-NOC
@pytest.mark.parametrize("freeze", [0, 1])
def test_pnoc_phases_step_only_their_own_optimiser(train_set, oc_path, tmp_path, freeze):
    """Each phase steps only its own network. By default (as in the authors' train_pnoc.py,
    tests/test_parity_pnoc.py) the generator step's CSE term leaves a gradient on the oc,
    applied in the oc step; ``freeze_oc_in_generator_step`` = 1 leaves the oc without one."""
    cfg = small_config(oc=str(oc_path), method_options={"freeze_oc_in_generator_step": freeze})
    trainer = build_trainer(train_set, tmp_path, cfg, "p-noc", False)
    assert trainer.optimizers() == [trainer.optimizer, trainer.oc_optimizer]
    trainer.global_step = 2  # λ_noc = 0.5: the oc step has a real gradient
    trainer.set_lr(trainer.global_step)
    batch = first_batch(trainer)
    oc_0, gen_0 = params(trainer.oc), params(trainer.model)
    losses = trainer.generator_step(batch)
    assert {"loss", "cls", "puzzle_cls", "puzzle_re", "cse"} <= set(losses)
    oc_1, gen_1 = params(trainer.oc), params(trainer.model)
    assert_same(oc_0, oc_1)  # generator step: oc weights untouched ...
    assert changed(gen_0, gen_1)
    named = dict(trainer.oc.named_parameters())
    with_grad = {k for k, p in named.items() if p.grad is not None}
    bn = {
        f"{m}.{k}"
        for m, mod in trainer.oc.named_modules()
        if isinstance(mod, torch.nn.BatchNorm2d)
        for k, _p in mod.named_parameters(recurse=False)
    }
    if freeze:
        assert not with_grad
    else:  # ... but its gradient from the CSE term waits for the oc step (BatchNorm: none)
        assert with_grad == set(named) - bn and bn
        assert named["classifier.weight"].grad.abs().sum() > 0
    noc = trainer.oc_step(batch)
    assert torch.isfinite(noc)
    oc_2, gen_2 = params(trainer.oc), params(trainer.model)
    assert_same(gen_1, gen_2)  # oc step: generator untouched (BatchNorm statistics included)
    moved = changed(oc_1, oc_2)
    assert "classifier.weight" in moved and "backbone.conv1.weight" in moved
    bn_state = [k for k in oc_1 if "bn" in k]
    assert bn_state and not any(k in moved for k in bn_state)  # oc BatchNorm frozen: affine and statistics
    assert not trainer.oc.training and all(p.grad is None for p in trainer.oc.parameters())
    assert {k for k, p in named.items() if p.requires_grad} == (set() if freeze else set(named) - bn)


def test_pnoc_bad_freeze_option_is_a_clear_error(train_set, oc_path, tmp_path):
    cfg = small_config(oc=str(oc_path), method_options={"freeze_oc_in_generator_step": 2})
    with pytest.raises(WsssError, match="freeze_oc_in_generator_step must be 0 or 1"):
        build_trainer(train_set, tmp_path, cfg, "p-noc", False)


def test_pnoc_pending_oc_gradient_is_checkpointed(train_set, oc_path, tmp_path):
    """noc_every 2: after a step without oc step the oc's gradient is pending; it is saved
    and restored with the rest of the method state."""
    cfg = small_config(oc=str(oc_path), method_options={"noc_every": 2})
    trainer = build_trainer(train_set, tmp_path, cfg, "p-noc", False)
    trainer.global_step = 1
    losses = trainer.train_step(first_batch(trainer))
    assert "noc" not in losses
    pending = trainer.extra_state()["oc_pending_grad"]
    assert pending and "classifier.weight" in pending
    other = build_trainer(train_set, tmp_path / "other", cfg, "p-noc", False)
    other.load_extra_state(trainer.extra_state())
    for name, p in other.oc.named_parameters():
        if name in pending:
            assert torch.equal(p.grad, pending[name]), name
        else:
            assert p.grad is None, name


def test_label_smoothing_reaches_every_classification_target(train_set, oc_path, tmp_path, monkeypatch):
    trainer = build_trainer(
        train_set, tmp_path, small_config(oc=str(oc_path), label_smoothing=0.1), "p-noc", False
    )
    targets = []
    original = F.multilabel_soft_margin_loss

    def spy(logits, target, *args, **kwargs):
        targets.append(target.detach().clone())
        return original(logits, target, *args, **kwargs)

    monkeypatch.setattr(F, "multilabel_soft_margin_loss", spy)
    batch = first_batch(trainer)
    losses = trainer.train_step(batch)
    assert set(losses) == {"loss", "cls", "puzzle_cls", "puzzle_re", "cse", "noc"}
    assert len(targets) == 4  # cls, puzzle cls, CSE (y without r), NOC
    smoothed = 0.9 * batch["label"] + 0.05
    for t in (targets[0], targets[1], targets[3]):
        torch.testing.assert_close(t, smoothed)
    assert torch.all(((targets[2] - 0.05).abs() < 1e-6) | ((targets[2] - 0.95).abs() < 1e-6))
    assert torch.isclose(targets[2], torch.tensor(0.05)).sum() == (1 - batch["label"]).sum() + 2  # r erased


def _log_without_time(out_dir):
    with open(out_dir / "train_log.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


def _checkpoint(out_dir):
    return torch.load(out_dir / "checkpoint.pt", weights_only=True)


def test_pnoc_interrupted_and_resumed_equals_straight_training_bitwise(train_set, oc_path, tmp_path):
    cfg = dict(oc=str(oc_path), epochs=2, log_every=1, label_smoothing=0.1)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_cam(train_set, straight, small_config(**cfg), method="p-noc", progress=False)
    out = train_cam(
        train_set, resumed, small_config(**cfg, checkpoint_every=3, stop_after_steps=5), "p-noc", False
    )
    assert out == resumed / "checkpoint.pt" and _checkpoint(resumed)["global_step"] == 3
    train_cam(train_set, resumed, small_config(**cfg), method="p-noc", progress=False)
    a, b = _checkpoint(straight), _checkpoint(resumed)
    assert_same(a["model"], b["model"])
    assert_same(a["extra"]["oc"], b["extra"]["oc"])
    for key in ("optimizer", "oc_optimizer"):
        sa = a[key]["state"] if key == "optimizer" else a["extra"][key]["state"]
        sb = b[key]["state"] if key == "optimizer" else b["extra"][key]["state"]
        assert sa.keys() == sb.keys() and len(sa) > 0
        for i in sa:
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (key, i, k)
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    logs = [_log_without_time(d) for d in (straight, resumed)]
    assert logs[0] == logs[1] and len(logs[0]) == 8 and "noc" in logs[0][0]
    # the adversarial oc did learn away from its starting weights
    assert changed(load_file(str(oc_path)), a["extra"]["oc"])


@pytest.mark.parametrize("method", ["puzzle", "oc-cse", "p-oc"])
def test_each_method_trains_and_its_model_infers(train_set, oc_path, tmp_path, method):
    cfg = small_config(oc=None if method == "puzzle" else str(oc_path))
    model = train_cam(train_set, tmp_path / "run", cfg, method=method, progress=False)
    assert model == tmp_path / "run" / "model.safetensors"
    cams = infer_cams(train_set, model, tmp_path / "cams", scales=(1.0,), flip=False, device="cpu",
                      progress=False, ids=train_set.ids[:2])  # fmt: skip
    keys, cam = load_cam(cams / f"{train_set.ids[0]}.npz", shape=(64, 64), num_classes=4)
    assert cam.shape == (len(keys), 64, 64) and np.isfinite(cam.astype(np.float32)).all()
