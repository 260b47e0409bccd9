"""Stage 4: training the segmentation net on pseudo labels (resume, accumulation, DDP on 2 CPU
ranks) and multi-scale + flip prediction to label PNGs, on the ``voc_like`` fixture."""

from __future__ import annotations

import csv
import hashlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_helpers import WORKER_PRELUDE, run_torchrun, torchrun
from torch import nn

from wsss.cam.data import normalize
from wsss.data import build_dataset
from wsss.io import IGNORE, WsssError, load_label, save_label
from wsss.metrics.evaluate import evaluate_dataset
from wsss.models.cam_net import IMAGENET_MEAN, IMAGENET_STD
from wsss.models.seg_net import load_seg_model
from wsss.pseudo.crf import CrfParams
from wsss.seg.predict import predict_seg, tta_probs
from wsss.seg.train import SegTrainConfig, SegTrainData, SegTrainer, build_seg_trainer, train_seg

COLOURS = {1: (230, 40, 40), 2: (40, 230, 40), 3: (40, 40, 230)}  # the fixture's class colours


@pytest.fixture(scope="module")
def pseudo_dir(voc_like, tmp_path_factory) -> Path:
    """The fixture's ground truth written as a pseudo-label folder (with one ignore band)."""
    out = tmp_path_factory.mktemp("pseudo")
    for split in ("train", "val"):
        ds = build_dataset("synthetic", voc_like, split)
        for image_id in ds.ids:
            label = ds.gt(image_id).copy()
            label[:, :2] = IGNORE
            save_label(out / f"{image_id}.png", label)
    return out


def seg_config(labels: Path | None, **overrides) -> SegTrainConfig:
    values = dict(backbone="resnet18", crop_size=48, batch_size=4, accumulate=2, epochs=2, optimizer="adamw",
                  num_workers=0, log_every=1, checkpoint_every=1000,
                  labels=None if labels is None else str(labels))  # fmt: skip
    return SegTrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def trained(voc_like, pseudo_dir, tmp_path_factory) -> Path:
    """A DeepLab-V2 run of 4 steps (8 images, batch 4, 2 epochs) on the pseudo labels."""
    out = tmp_path_factory.mktemp("seg_run")
    train_set = build_dataset("synthetic", voc_like, "train")
    return train_seg(train_set, out, seg_config(pseudo_dir), progress=False).parent


def test_training_writes_model_log_and_run_record(trained, voc_like, pseudo_dir):
    run = json.loads((trained / "run.json").read_text())
    assert run["stage"] == "seg_train" and run["steps"] == 4 and run["world_size"] == 1
    assert run["config"]["method"] == "ce" and run["config"]["labels"] == str(pseudo_dir.resolve())
    assert run["config"]["head_options"] == {"rates": [6, 12, 18, 24]}  # resolved: reproducible as recorded
    with open(trained / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    losses = [float(r["loss"]) for r in rows]
    assert np.isfinite(losses).all() and losses[0] > 0.5  # random init, 4 classes: CE near log 4
    model = load_seg_model(trained, device="cpu")
    assert model.num_classes == 4 and model.head_name == "deeplab-v2"
    assert model.meta_info["labels"] == str(pseudo_dir.resolve())
    assert model.meta_info["class_names"][0] == "background"
    train_set = build_dataset("synthetic", voc_like, "train")
    assert (
        train_seg(train_set, trained, seg_config(pseudo_dir)) == trained / "model.safetensors"
    )  # done: skipped


def test_interrupted_run_resumes_to_the_same_weights(voc_like, pseudo_dir, tmp_path):
    train_set = build_dataset("synthetic", voc_like, "train")
    # V3+ (dropout draws from the global RNG, restored by the checkpoint), 6 steps
    cfg = dict(head="deeplab-v3plus", head_options={"channels": 16}, epochs=3)
    straight = build_seg_trainer(
        train_set, tmp_path / "straight", seg_config(pseudo_dir, **cfg), progress=False
    )
    straight.train()
    interrupted = seg_config(pseudo_dir, **cfg, stop_after_steps=3, checkpoint_every=2)
    assert train_seg(train_set, tmp_path / "resumed", interrupted, progress=False).name == "checkpoint.pt"
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    other = seg_config(pseudo_dir, **cfg, accumulate=1)
    with pytest.raises(
        WsssError,
        match=r"resumed/settings\.json: this folder holds seg_train outputs .*config\.accumulate: 2 → 1",
    ):
        build_seg_trainer(train_set, tmp_path / "resumed", other, progress=False).train()
    resumed = build_seg_trainer(
        train_set, tmp_path / "resumed", seg_config(pseudo_dir, **cfg), progress=False
    )
    resumed.train()  # restarts from the step-2 checkpoint: step 3 is redone
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    moments_a = [s["exp_avg"] for s in straight.optimizer.state_dict()["state"].values()]
    moments_b = [s["exp_avg"] for s in resumed.optimizer.state_dict()["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(moments_a, moments_b, strict=True))


def _without_batchnorm(module: nn.Module) -> None:
    """BatchNorm makes micro-batches differ from the batch by design; GroupNorm does not."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(1, child.num_features))
        else:
            _without_batchnorm(child)


class GradientProbe(SegTrainer):
    """In float64: float32 sums over a batch and over its micro-batches round differently, by
    an amount that depends on the CPU's kernels (4e-6 on another machine); in float64 the
    gradients agree to ~1e-14 of their largest entry (the loss itself stays float32)."""

    def build_models(self) -> None:
        super().build_models()
        _without_batchnorm(self.model)
        self.model.double()
        self.micro_sizes: list[int] = []
        self.gradients: list[dict[str, torch.Tensor]] = []

    def step(self, batch):
        self.micro_sizes.append(batch["image"].shape[0])
        return super().step({**batch, "image": batch["image"].double()})

    def on_gradients(self) -> None:
        self.gradients.append({n: p.grad.clone() for n, p in self.model.named_parameters()})


def test_accumulated_micro_batches_give_the_whole_batch_gradient(voc_like, tmp_path):
    train_set = build_dataset("synthetic", voc_like, "train")
    results = {}
    for accumulate in (1, 2, 4):
        # whole 64-px images, no flip: every pixel labelled, so each micro-batch weighs alike
        cfg = seg_config(None, accumulate=accumulate, crop_size=64, scale_range=(1.0, 1.0), hflip=False,
                         optimizer="sgd")  # fmt: skip
        trainer = GradientProbe(train_set, tmp_path / str(accumulate), cfg, progress=False)
        batch = trainer.to_device(next(iter(trainer.loader(0))))
        losses = trainer.train_step(batch)
        assert trainer.micro_sizes == [4 // accumulate] * accumulate and len(trainer.gradients) == 1
        results[accumulate] = (float(losses["loss"]), trainer.gradients[0])
    loss_1, grads_1 = results[1]
    for accumulate in (2, 4):
        loss_n, grads_n = results[accumulate]
        assert loss_n == pytest.approx(loss_1, rel=1e-5)  # a float32 mean of positive terms
        for name, g in grads_1.items():
            # float64: measured 1e-14 of the largest entry; a mis-weighted micro-batch is off by ~1
            assert grads_n[name].dtype == torch.float64
            atol = 1e-9 * float(g.abs().max())
            torch.testing.assert_close(grads_n[name], g, rtol=1e-6, atol=atol, msg=name)


def test_labels_follow_the_image_through_flip_crop_and_padding(voc_like, pseudo_dir):
    ds = build_dataset("synthetic", voc_like, "train")
    args = (80, (1.0, 1.0), True, IMAGENET_MEAN, IMAGENET_STD, 3)  # crop > image: padded
    from_gt, from_dir = SegTrainData(ds, None, *args), SegTrainData(ds, pseudo_dir, *args)
    flipped = 0
    for index in range(len(ds)):
        gt_sample, sample = from_gt[(0, index)], from_dir[(0, index)]
        assert torch.equal(gt_sample["image"], sample["image"])
        label, image = sample["seg_label"].numpy(), sample["image"].numpy()
        gt = gt_sample["seg_label"].numpy()
        assert label.dtype == np.int64 and label.shape == (80, 80)
        assert (gt == IGNORE).sum() == 80 * 80 - 64 * 64  # only the padding is ignore in the GT
        assert ((label == IGNORE) & (gt != IGNORE)).sum() == 2 * 64  # plus the pseudo labels' band
        assert np.array_equal(label[label != IGNORE], gt[label != IGNORE])
        for c in ds.labels(ds.ids[index]):
            colour = normalize(np.array([[COLOURS[int(c)]]], np.uint8), IMAGENET_MEAN, IMAGENET_STD)[0, 0]
            assert np.allclose(image[:, gt == c], colour[:, None], atol=1e-5)
        band = np.flatnonzero(((label == IGNORE) & (gt != IGNORE)).any(axis=0))
        flipped += int(band.min() > 40)  # the 2-column band at the image's left edge moved right
    assert 0 < flipped < len(ds)


def test_bad_labels_and_configs_stop_with_clear_errors(voc_like, pseudo_dir, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    bad = tmp_path / "labels"
    bad.mkdir()
    for image_id in ds.ids[1:]:
        (bad / f"{image_id}.png").write_bytes((pseudo_dir / f"{image_id}.png").read_bytes())
    with pytest.raises(WsssError, match=f"^{bad / ds.ids[0]}.png: label map not found"):
        SegTrainer(ds, tmp_path / "run", seg_config(bad), progress=False)
    save_label(bad / f"{ds.ids[0]}.png", np.zeros((32, 64), np.uint8))
    with pytest.raises(WsssError, match=f"^{bad / ds.ids[0]}.png: size 64×32 does not match the image 64×64"):
        SegTrainer(ds, tmp_path / "run", seg_config(bad), progress=False)
    save_label(bad / f"{ds.ids[0]}.png", np.full((64, 64), 7, np.uint8))
    trainer = SegTrainer(ds, tmp_path / "run", seg_config(bad), progress=False)
    with pytest.raises(WsssError, match=r"label values \[7\] are >= num_classes=4"):
        trainer.data[(0, 0)]
    with pytest.raises(WsssError, match="^SegTrainConfig: batch_size 4 must be a multiple of accumulate 3"):
        seg_config(None, accumulate=3)
    with pytest.raises(WsssError, match="^SegTrainConfig: oc is a CAM-training option"):
        seg_config(None, oc="cam_run")
    with pytest.raises(WsssError, match="^SegTrainConfig: optimizer must be"):
        seg_config(None, optimizer="adam")
    with pytest.raises(WsssError, match="^seg.yaml: SegTrainConfig: unknown segmentation head 'unet'"):
        SegTrainConfig.from_dict({"head": "unet"}, source="seg.yaml")
    with pytest.raises(WsssError, match=r"^seg.yaml: unknown segmentation training option\(s\) \['loss'\]"):
        SegTrainConfig.from_dict({"loss": "ce"}, source="seg.yaml")
    with pytest.raises(WsssError, match=r"unknown option\(s\) \['tau'\] for segmentation method 'ce'"):
        SegTrainer(ds, tmp_path / "run", seg_config(None, method_options={"tau": 5}), progress=False)
    with pytest.raises(WsssError, match="unknown segmentation method 'size'"):
        build_seg_trainer(ds, tmp_path / "run", seg_config(None), method="size")
    defaults = SegTrainConfig()
    assert (defaults.lr, defaults.batch_size, defaults.accumulate, defaults.crop_size) == (2.5e-4, 10, 2, 321)
    assert SegTrainConfig.from_dict(defaults.to_dict()) == defaults


class _Identity(nn.Module):
    """Logits = the first input channel for class 1, 0 for class 0: position-dependent."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0]], dim=1)


class _Constant(nn.Module):
    """The same logits at every pixel, whatever the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.tensor([0.0, 1.0, -2.0]).view(1, 3, 1, 1)
        return logits.expand(x.shape[0], 3, x.shape[2], x.shape[3])


def test_tta_flips_back_resizes_and_averages_probabilities():
    images = torch.randn(2, 3, 8, 10)
    probs = tta_probs(_Identity(), images, scales=(1.0,), flip=True)
    # each flipped pass is flipped back, so both passes equal the plain one: sigmoid of channel 0
    torch.testing.assert_close(probs[:, 1], torch.sigmoid(images[:, 0]))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 8, 10))
    probs = tta_probs(_Constant(), images, scales=(0.5, 1.0, 1.5), flip=True)
    assert probs.shape == (2, 3, 8, 10)
    expected = torch.softmax(torch.tensor([0.0, 1.0, -2.0]), dim=0).view(1, 3, 1, 1).expand(2, 3, 8, 10)
    torch.testing.assert_close(probs, expected)


def test_predict_writes_a_label_png_per_image_resumes_and_evaluates(trained, voc_like, tmp_path):
    val = build_dataset("synthetic", voc_like, "val")
    out = tmp_path / "preds"
    predict_seg(val, trained, out, scales=(0.75, 1.0), flip=True, device="cpu", progress=False)
    pngs = sorted(out.glob("*.png"))
    assert [p.stem for p in pngs] == sorted(val.ids)
    preds = {p.stem: load_label(p, val.num_classes, shape=(64, 64)) for p in pngs}
    run = json.loads((out / "run.json").read_text())
    assert (
        run["stage"] == "seg_predict"
        and run["written"] == len(val)
        and run["config"]["scales"] == [0.75, 1.0]
    )
    assert run["model"]["head"] == "deeplab-v2"
    # the same TTA from the API gives the written labels: the split's images as one batch, like
    # predict_seg; should the batches differ, float rounding (~1e-7) may flip a pixel whose two
    # best classes tie to within that, and only such a pixel
    model = load_seg_model(trained, device="cpu")
    images = torch.from_numpy(np.stack([val.image(i) for i in val.ids])).permute(0, 3, 1, 2).float()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        probs = tta_probs(model, (images - mean) / std, (0.75, 1.0), True)
    best_two = probs.topk(2, dim=1).values
    for k, image_id in enumerate(val.ids):
        differ = probs[k].argmax(0).numpy() != preds[image_id]
        assert (best_two[k, 0] - best_two[k, 1]).numpy()[differ].max(initial=0.0) < 1e-5, image_id
    # resume: a finished folder is left alone; a missing file is redone, alone
    stamps = {p.name: p.stat().st_mtime_ns for p in pngs}
    (out / f"{val.ids[1]}.png").unlink()
    predict_seg(val, trained, out, scales=(0.75, 1.0), flip=True, device="cpu", progress=False)
    assert json.loads((out / "run.json").read_text())["written"] == 1
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in out.glob("*.png") if p.stem != val.ids[1])
    with pytest.raises(
        WsssError,
        match=r"settings\.json: this folder holds seg_predict outputs made with other settings or inputs \(flip: ",
    ):
        predict_seg(val, trained, out, scales=(0.75, 1.0), flip=False, progress=False)
    # evaluation of the predictions: pixel accuracy recomputed here from the PNGs
    result = evaluate_dataset(out, val, groups=False, progress=False)
    correct = sum(int((preds[i] == val.gt(i)).sum()) for i in val.ids)
    assert result["pixel_acc"] == pytest.approx(correct / (len(val) * 64 * 64))
    crf_out = predict_seg(val, trained, tmp_path / "crf", scales=(1.0,), flip=False, crf=True, shard="1/2",
                          device="cpu", progress=False)  # fmt: skip
    assert sorted(p.stem for p in crf_out.glob("*.png")) == sorted(val.ids[1::2])
    assert (crf_out / "run.shard1of2.json").is_file()
    for p in crf_out.glob("*.png"):
        load_label(p, val.num_classes, shape=(64, 64))
    # stage 4's CRF is seed 004's post-processing preset, not the pseudo-label CRF's defaults
    pinned = json.loads((crf_out / "settings.json").read_text())["settings"]["crf_params"]
    assert pinned == {
        **CrfParams().to_dict(),
        "gauss_sxy": 1.0,
        "bi_sxy": 67.0,
        "bi_srgb": 3.0,
        "bi_compat": 4.0,
    }


# --------------------------------------------------------------------------- 2 ranks
# Runs in each torchrun worker: a straight run and an interrupted + resumed one, with a probe
# that records the images each rank trained on and the state it ends with.
WORKER = WORKER_PRELUDE + textwrap.dedent(
    """

    from wsss.data import build_dataset
    from wsss.seg.train import SegTrainConfig, SegTrainer

    data_root, labels, runs, record_dir = (Path(a) for a in sys.argv[1:5])
    rank = int(os.environ["RANK"])

    class Probe(SegTrainer):
        def step(self, batch):
            self.seen.extend(batch["index"].tolist())
            self.micro_sizes.append(batch["image"].shape[0])
            return super().step(batch)

    train_set = build_dataset("synthetic", data_root, "train")
    base = dict(backbone="resnet18", head="deeplab-v3plus", head_options={"channels": 16}, crop_size=48,
                batch_size=4, accumulate=2, epochs=2, optimizer="adamw", labels=str(labels), num_workers=0,
                log_every=1, checkpoint_every=1000,
                # BatchNorm trained, so that its running statistics are checked to stay in sync
                output_stride=16, msc_scales=[1.0], batchnorm="train", bias_lr_mult=1, bias_weight_decay=True,
                lr_decay_every=1)
    record = {"written": written, "runs": {}}
    for name, extra in (("straight", {}), ("resumed", {"stop_after_steps": 1, "checkpoint_every": 1}),
                        ("resumed", {})):
        trainer = Probe(train_set, runs / name, SegTrainConfig(**{**base, **extra}), progress=False)
        trainer.seen, trainer.micro_sizes = [], []
        trainer.train()
        opt = hashlib.sha1()
        for state in trainer.optimizer.state_dict()["state"].values():
            opt.update(state["exp_avg"].numpy().tobytes())
        record["runs"][name] = {"model": model_hash(trainer.model), "optimizer": opt.hexdigest(),
                                "seen": trainer.seen, "micro_sizes": trainer.micro_sizes,
                                "wrapper": type(trainer.train_model).__name__}
    (record_dir / f"rank{rank}.json").write_text(json.dumps(record))
    """
)


def test_two_gloo_ranks_stay_in_sync_and_resume_exactly(voc_like, pseudo_dir, tmp_path):
    worker, runs, records = tmp_path / "worker.py", tmp_path / "runs", tmp_path / "records"
    worker.write_text(WORKER)
    records.mkdir()
    proc = run_torchrun(torchrun(str(worker), str(voc_like), str(pseudo_dir), str(runs), str(records)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rank0, rank1 = (json.loads((records / f"rank{r}.json").read_text()) for r in range(2))
    straight0, straight1 = rank0["runs"]["straight"], rank1["runs"]["straight"]
    assert straight0["wrapper"] == "DistributedDataParallel"
    for key in ("model", "optimizer"):  # weights, BN statistics and Adam moments bitwise equal
        assert (
            straight0[key] == straight1[key] == rank0["runs"]["resumed"][key] == rank1["runs"]["resumed"][key]
        )
    # 8 images, 2 ranks × batch 4 (2 micro-batches of 2): each epoch the ranks split the set
    assert straight0["micro_sizes"] == [2] * 4
    for epoch in range(2):
        part0 = set(straight0["seen"][4 * epoch : 4 * epoch + 4])
        part1 = set(straight1["seen"][4 * epoch : 4 * epoch + 4])
        assert not part0 & part1 and part0 | part1 == set(range(8))
    assert not [p for p in rank1["written"] if Path(p).is_relative_to(runs)]  # only rank 0 writes
    run = json.loads((runs / "straight" / "run.json").read_text())
    assert run["world_size"] == 2 and run["steps"] == 2 and run["stage"] == "seg_train"
    model = load_seg_model(runs / "straight", device="cpu")
    digest = hashlib.sha1()
    state = model.state_dict()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    assert digest.hexdigest() == straight0["model"]  # the saved weights are what the ranks held
