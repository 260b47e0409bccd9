"""CAM training base: schedule, head LR, learning, exact resume, files, data determinism."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
import yaml

from wsss.cam import CAM_METHODS, CamTrainConfig, build_trainer, train_cam
from wsss.cam.base import poly_factor
from wsss.cam.data import EpochSampler, random_crop_pad
from wsss.data import build_dataset
from wsss.io import WsssError


def small_config(**overrides) -> CamTrainConfig:
    base = dict(
        backbone="resnet18",
        crop_size=64,
        batch_size=4,
        epochs=1,
        num_workers=0,
        checkpoint_every=1000,
        recipe="generic",  # these tests pin the toolkit's own recipe; the authors' ones: test_parity_recipes.py
    )
    return CamTrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def train_set(voc_like):
    return build_dataset("synthetic", voc_like, "train")  # 8 images → 2 steps per epoch at batch 4


def test_poly_factor_hand_computed():
    assert poly_factor(0, 10, 0.9) == 1.0
    assert poly_factor(5, 10, 0.9) == pytest.approx(0.5**0.9)  # 0.53589
    assert poly_factor(9, 10, 0.9) == pytest.approx(0.1**0.9)  # 0.12589
    assert poly_factor(10, 10, 0.9) == 0.0
    assert poly_factor(1, 10, 1.0, warmup_steps=4) == pytest.approx(0.9 * 2 / 4)


def test_schedule_and_10x_head_lr_in_the_optimiser(train_set, tmp_path):
    trainer = build_trainer(train_set, tmp_path, small_config(epochs=2, lr=0.01), progress=False)
    assert trainer.total_steps == 4
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["head"]["params"][0] is trainer.model.classifier.weight
    seen = []
    for batch in trainer.batches():
        trainer.train_step(trainer.to_device(batch))
        seen.append((groups["backbone"]["lr"], groups["head"]["lr"]))
        trainer.global_step += 1
    expected = [0.01 * (1 - t / 4) ** 0.9 for t in range(4)]  # 0.01, 0.0077189, 0.0053589, 0.0028717
    np.testing.assert_allclose([b for b, _ in seen], expected, rtol=1e-12)
    np.testing.assert_allclose([h for _, h in seen], [10 * e for e in expected], rtol=1e-12)


def test_loss_decreases_and_gradients_flow_on_a_fixed_batch(train_set, tmp_path):
    trainer = build_trainer(
        train_set, tmp_path, small_config(optimizer="adamw", lr=1e-3, epochs=50), progress=False
    )
    batch = trainer.to_device(next(iter(trainer.loader(0))))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    losses = [float(trainer.train_step(batch)["loss"]) for _ in range(6)]
    assert losses[-1] < 0.5 * losses[0], losses
    assert not torch.equal(before["backbone.conv1.weight"], trainer.model.backbone.conv1.weight)
    assert not torch.equal(before["classifier.weight"], trainer.model.classifier.weight)


def _state(out_dir):
    ckpt = torch.load(out_dir / "checkpoint.pt", weights_only=True)
    return ckpt["model"], ckpt["optimizer"]["state"]


def _log(out_dir):
    with open(out_dir / "train_log.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_interrupted_and_resumed_equals_straight_training_bitwise(train_set, tmp_path, optimizer):
    cfg = dict(epochs=3, optimizer=optimizer, lr=1e-3 if optimizer == "adamw" else 0.01, log_every=1)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_cam(train_set, straight, small_config(**cfg), progress=False)
    # killed after step 4 of 6; the last checkpoint is from step 3, in the middle of epoch 1
    out = train_cam(
        train_set, resumed, small_config(**cfg, checkpoint_every=3, stop_after_steps=4), progress=False
    )
    assert out == resumed / "checkpoint.pt" and not (resumed / "model.safetensors").exists()
    assert torch.load(out, weights_only=True)["global_step"] == 3
    # the resumption runs with DataLoader workers: the batches must not depend on them
    train_cam(train_set, resumed, small_config(**cfg, num_workers=2), progress=False)
    model_a, optim_a = _state(straight)
    model_b, optim_b = _state(resumed)
    assert model_a.keys() == model_b.keys()
    for k in model_a:
        assert torch.equal(model_a[k], model_b[k]), k
    assert optim_a.keys() == optim_b.keys() and len(optim_a) > 0
    for i in optim_a:
        for k in optim_a[i]:
            assert torch.equal(torch.as_tensor(optim_a[i][k]), torch.as_tensor(optim_b[i][k])), (i, k)
    assert _log(straight) == _log(resumed)
    assert [int(r["step"]) for r in _log(resumed)] == [1, 2, 3, 4, 5, 6]


def test_outputs_skip_and_config_mismatch(train_set, tmp_path):
    cfg = small_config(optimizer="adamw", lr=1e-3, log_every=1)
    path = train_cam(train_set, tmp_path, cfg, progress=False)
    assert path == tmp_path / "model.safetensors"
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["backbone"] == "resnet18" and meta["num_classes"] == 3 and meta["method"] == "cam"
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["stage"] == "cam_train" and run["seed"] == 0 and run["config"]["batch_size"] == 4
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    assert list(rows[0])[:5] == ["step", "epoch", "loss", "lr", "time"] and len(rows) == 2
    mtime = path.stat().st_mtime_ns
    assert train_cam(train_set, tmp_path, cfg, progress=False) == path  # finished, same settings: reused
    assert path.stat().st_mtime_ns == mtime
    # a finished model trained with other settings is refused and left as it is
    other = small_config(optimizer="adamw", lr=1e-3, epochs=2)
    settings = re.escape(str(tmp_path / "settings.json"))
    with pytest.raises(WsssError, match=settings + r".*config\.epochs: 1 → 2.*--force"):
        train_cam(train_set, tmp_path, other, progress=False)
    assert path.stat().st_mtime_ns == mtime
    # a checkpoint written with other settings is not silently resumed, even without the folder record
    path.unlink()
    (tmp_path / "settings.json").unlink()
    with pytest.raises(WsssError, match=re.escape(str(tmp_path / "checkpoint.pt")) + ".*epochs: 1 → 2"):
        train_cam(train_set, tmp_path, other, progress=False)
    # force: the folder is emptied and trained again with the new settings
    assert train_cam(train_set, tmp_path, other, progress=False, force=True) == path
    assert json.loads((tmp_path / "run.json").read_text())["config"]["epochs"] == 2
    assert list(csv.DictReader(open(tmp_path / "train_log.csv")))[-1]["step"] == "4"  # 2 epochs × 2 steps


def test_config_yaml_round_trip_and_validation():
    cfg = CamTrainConfig(backbone="resnet18", scale_range=(0.7, 1.3), method_options={"alpha": 4.0})
    text = yaml.safe_dump(cfg.to_dict())
    assert CamTrainConfig.from_dict(yaml.safe_load(text)) == cfg
    with pytest.raises(WsssError, match="^cfg.yaml: unknown CAM training option.*'lr_head'"):
        CamTrainConfig.from_dict({"lr_head": 1.0}, source="cfg.yaml")
    with pytest.raises(WsssError, match="optimizer must be"):
        CamTrainConfig(optimizer="adam")
    assert CamTrainConfig(optimizer="adamw").lr == 1e-3 and CamTrainConfig().lr == 0.1
    assert "cam" in CAM_METHODS


def test_too_few_images_and_unknown_method(train_set, tmp_path):
    with pytest.raises(WsssError, match="fewer than batch_size=16"):
        build_trainer(train_set, tmp_path, small_config(batch_size=16), progress=False)
    with pytest.raises(WsssError, match="unknown CAM method 'nope'"):
        train_cam(train_set, tmp_path, small_config(), method="nope", progress=False)


def test_sampler_shards_by_rank_and_resumes_mid_epoch():
    full = EpochSampler(10, batch_size=2, seed=3)
    ranks = [EpochSampler(10, batch_size=2, seed=3, rank=r, world_size=3) for r in range(3)]
    parts = [s.epoch_indices(5) for s in ranks]
    assert all(len(p) == 4 for p in parts)  # ceil(10/3)=4 per rank, two whole batches
    covered = np.concatenate(parts)
    assert set(covered.tolist()) == set(range(10))  # 12 slots: every sample, two repeated as padding
    assert sorted(full.epoch_indices(5).tolist()) == list(range(10))
    assert not np.array_equal(full.epoch_indices(5), full.epoch_indices(6))
    full.set_epoch(5, skip_batches=2)
    assert [i for _, i in full] == full.epoch_indices(5)[4:].tolist() and len(full) == 6


def test_augmentation_depends_only_on_seed_epoch_index(train_set, tmp_path):
    trainer = build_trainer(train_set, tmp_path, small_config(scale_range=(0.5, 1.5)), progress=False)
    a = trainer.data[(0, 3)]["image"]
    assert torch.equal(a, trainer.data[(0, 3)]["image"])
    assert not torch.equal(a, trainer.data[(1, 3)]["image"])
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32


def test_crop_pad_hand_made():
    rng = np.random.default_rng(0)
    small = np.arange(1, 7, dtype=np.float32).reshape(2, 3, 1)
    out = random_crop_pad(small, 4, rng)
    assert out.shape == (4, 4, 1) and out.sum() == small.sum()  # padded around, nothing lost
    ys, xs = np.nonzero(out[..., 0])
    np.testing.assert_array_equal(out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], small)
    big = np.arange(36, dtype=np.float32).reshape(6, 6, 1)
    crop = random_crop_pad(big, 4, rng)
    y0, x0 = divmod(int(crop[0, 0, 0]), 6)
    np.testing.assert_array_equal(crop, big[y0 : y0 + 4, x0 : x0 + 4])


def test_alive_column_counts_last_map_channels_positive_in_the_window(
    train_set, tmp_path, monkeypatch, capsys
):
    trainer = build_trainer(train_set, tmp_path / "unit", small_config(), progress=False)
    hook = trainer._note_alive_channels
    a = torch.full((2, 4, 3, 3), -1.0)
    a[0, 0, 1, 1] = 1.0  # channel 0 positive at one pixel of one image
    b = torch.full((1, 4, 3, 3), -1.0)
    b[0, 2, 2, 0] = 0.5  # channel 2 in the next batch of the window
    hook(trainer.model.backbone, None, [a])
    with torch.no_grad():  # inference passes do not count
        hook(trainer.model.backbone, None, [torch.ones(1, 4, 3, 3)])
    hook(trainer.model.backbone, None, [b])
    trainer._record({"loss": torch.tensor(1.0)}, force=True)
    assert trainer.log_rows[-1]["alive"] == 0.5  # channels 0 and 2 of 4
    assert trainer._alive is None  # a new window starts

    # a real run logs the column and the final share, and warns when most channels are dead
    monkeypatch.setattr("wsss.cam.base.DEAD_CHANNEL_WARNING", 1.01)
    train_cam(train_set, tmp_path / "run", small_config(log_every=1), progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "train_log.csv")))
    alive = [float(r["alive"]) for r in rows]
    assert len(alive) == 2 and all(0.0 < x <= 1.0 for x in alive)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["final_alive"] == alive[-1]
    assert "dead units" in capsys.readouterr().out
