"""Seed 004's training methods: size-weighted CE and the size-balanced (CE → EWC) schedule."""

from __future__ import annotations

import copy
import csv

import pytest
import torch

from wsss.data import build_dataset
from wsss.io import IGNORE, WsssError, save_label
from wsss.seg import SegTrainConfig, train_seg
from wsss.seg.losses import FisherDiagonal, segmentation_loss, size_balanced_switch_iter
from wsss.seg.train import build_seg_trainer


@pytest.fixture(scope="module")
def labels(voc_like, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels")
    ds = build_dataset("synthetic", voc_like, "train")
    for image_id in ds.ids:
        label = ds.gt(image_id).copy()
        label[:, :2] = IGNORE
        save_label(out / f"{image_id}.png", label)
    return out


def config(labels, **overrides) -> SegTrainConfig:
    values = dict(backbone="resnet18", crop_size=48, batch_size=4, epochs=2, optimizer="adamw", num_workers=0,
                  log_every=1, checkpoint_every=1000, labels=str(labels))  # fmt: skip
    return SegTrainConfig(**{**values, **overrides})


def log(run_dir):
    with open(run_dir / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_size_weighted_trains_and_validates_options(voc_like, labels, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    train_seg(ds, tmp_path / "sw", config(labels, method_options={"tau": 3.0}), method="size-weighted",
              progress=False)  # fmt: skip
    assert len(log(tmp_path / "sw")) == 4
    with pytest.raises(WsssError, match="unknown option"):
        build_seg_trainer(
            ds, tmp_path / "x", config(labels, method_options={"lam": 1}), "size-weighted", False
        )


def test_size_balanced_switches_at_half_and_resumes_exactly_across_the_switch(voc_like, labels, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    straight = build_seg_trainer(ds, tmp_path / "straight", config(labels), "size-balanced", progress=False)
    straight.train()
    rows = log(tmp_path / "straight")
    # 4 steps: CE for steps 1–2 (Fisher updated after each of their 2 micro-batches),
    # size-weighted CE + EWC for steps 3–4
    assert [bool(r.get("ewc")) for r in rows] == [False, False, True, True]
    assert straight.fisher.updates == 4
    assert float(rows[2]["ewc"]) == pytest.approx(0.0, abs=1e-6)  # θ = θ_A at the switch
    assert float(rows[3]["ewc"]) > 0.0  # and grows as the weights move away
    resumed_cfg = config(labels, stop_after_steps=3, checkpoint_every=3)
    train_seg(ds, tmp_path / "resumed", resumed_cfg, method="size-balanced", progress=False)
    resumed = build_seg_trainer(ds, tmp_path / "resumed", config(labels), "size-balanced", progress=False)
    resumed.train()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ewc_term_counts_once_per_micro_batch(voc_like, labels, tmp_path):
    # the authors backpropagate λ·penalty whole after every micro-batch (main_ewc.py), while
    # the data loss is averaged over the micro-batches; "ewc" (inside "loss") is that term
    ds = build_dataset("synthetic", voc_like, "train")
    gradients = {}

    def run(penalty_key: str, accumulate: int) -> dict[str, torch.Tensor]:
        cfg = config(labels, accumulate=accumulate, msc_scales=[1.0])
        trainer = build_seg_trainer(ds, tmp_path / f"{penalty_key}{accumulate}", cfg, "ce", progress=False)
        trainer.model.load_state_dict(first.model.state_dict())
        head = dict(trainer.model.named_parameters())[last_name]

        def compute_loss(logits, batch):
            data = logits.float().square().mean()
            penalty = 3.0 * head.square().sum()
            return {"loss": data + penalty, penalty_key: penalty}

        trainer.compute_loss = compute_loss
        trainer.on_gradients = lambda: gradients.update(
            {(penalty_key, accumulate): head.grad.detach().clone()}
        )
        trainer.train_model.eval()
        trainer.train_step({"image": images, "seg_label": target})
        return gradients[(penalty_key, accumulate)]

    first = build_seg_trainer(ds, tmp_path / "init", config(labels, msc_scales=[1.0]), "ce", progress=False)
    last_name = [n for n, p in first.model.named_parameters() if p.requires_grad][-1]
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 48, 48, generator=g)
    target = torch.zeros(4, 48, 48, dtype=torch.long)
    head = dict(first.model.named_parameters())[last_name].detach()
    penalty_grad = 6.0 * head
    once = run("ewc", 2) - run("other", 2)  # same data gradient; differs by (2 − 1)·∇penalty
    torch.testing.assert_close(once, penalty_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(run("ewc", 1), run("other", 1), rtol=0, atol=0)  # one micro-batch: no change


def _reference_fisher(model, batch, accumulate: int, per_micro_batch: bool) -> dict[str, torch.Tensor]:
    """The authors' loop (main_ewc.py, task A): zero the gradients, then per micro-batch
    backpropagate the CE summed over the network's outputs divided by the accumulation count
    and update the Fisher from the gradient accumulated so far (``regularizer.update()``)."""
    fisher = FisherDiagonal()
    model.zero_grad(set_to_none=True)
    for images, target in zip(
        batch["image"].chunk(accumulate), batch["seg_label"].chunk(accumulate), strict=True
    ):
        (segmentation_loss(model(images), target, "ce") / accumulate).backward()
        if per_micro_batch:
            fisher.update(model)
    if not per_micro_batch:
        fisher.update(model)
    return fisher.fisher


@pytest.mark.parametrize("fisher_update", ["micro-batch", "step"])
def test_fisher_is_updated_after_every_micro_batch_like_the_authors(
    voc_like, labels, tmp_path, fisher_update
):
    ds = build_dataset("synthetic", voc_like, "train")
    cfg = config(labels, accumulate=2, crop_size=32, method_options={"fisher_update": fisher_update})
    trainer = build_seg_trainer(ds, tmp_path / "run", cfg, "size-balanced", progress=False)
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(4, 3, 32, 32, generator=g),
        "seg_label": torch.randint(0, 4, (4, 32, 32), generator=g),
    }
    trainer.set_train_mode()  # frozen BatchNorm in eval mode, as in the authors' loop
    reference = copy.deepcopy(trainer.model)
    trainer.train_step(batch)
    expected = _reference_fisher(reference, batch, 2, per_micro_batch=fisher_update == "micro-batch")
    assert trainer.fisher.updates == (2 if fisher_update == "micro-batch" else 1)
    assert sorted(trainer.fisher.fisher) == sorted(expected)
    for name, value in expected.items():
        torch.testing.assert_close(trainer.fisher.fisher[name], value, rtol=1e-4, atol=1e-12)


def test_task_b_starts_after_switch_iter_steps(voc_like, labels, tmp_path):
    # main_ewc.py trains task A for iterations 1..ewc_iter; run.sh uses --ewc_iter 15000 of 30000
    assert size_balanced_switch_iter(30000) == 15000
    assert size_balanced_switch_iter(30000, 1000) == 1000
    ds = build_dataset("synthetic", voc_like, "train")
    cfg = config(labels, crop_size=32, msc_scales=[1.0], method_options={"switch_iter": 1})
    trainer = build_seg_trainer(ds, tmp_path / "sb", cfg, "size-balanced", progress=False)
    stages = []
    for step in range(trainer.total_steps):
        trainer.global_step = step
        stages.append(trainer.in_ewc_stage)
    assert stages == [False, True, True, True]
    for bad in (0, 4, 1.5):
        with pytest.raises(WsssError, match="switch_iter must be an integer in"):
            build_seg_trainer(ds, tmp_path / "x", config(labels, method_options={"switch_iter": bad}),
                              "size-balanced", progress=False)  # fmt: skip
    with pytest.raises(WsssError, match="fisher_update must be one of"):
        build_seg_trainer(ds, tmp_path / "x", config(labels, method_options={"fisher_update": "epoch"}),
                          "size-balanced", progress=False)  # fmt: skip
