"""Saliency learnt without masks: C²AM and C²AM-H (docs/methods.md §2).

Training reuses the CAM training base (:class:`wsss.cam.base.CamTrainer`: data,
optimiser, poly schedule, checkpoint/resume, DDP); this file only adds the network,
the contrastive loss, the polarity decision and, for C²AM-H, the CAM hints, which reach
the batches through the base's aligned saliency channel.

Sources ``c2am`` / ``c2am-h`` train into ``<out>/model/`` (skipped once trained, or give
``model=PATH``) and write the map, min-max normalised per image, as ``<id>.png``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss import dist
from wsss.cam.base import CamTrainConfig, CamTrainer
from wsss.data.base import Dataset, build_dataset
from wsss.io import WsssError, file_digest, find_cam, load_cam, save_saliency
from wsss.models.c2am import (
    HINT_RESIZE_MODES,
    C2amNet,
    band_means,
    border_mean,
    c2am_loss,
    hint_loss,
    load_c2am_model,
    save_c2am_model,
)
from wsss.saliency.base import SaliencySource, min_max, register_saliency_source

POLARITY_RULES = ("last_batch_bands", "epoch_frame")

C2AM_OPTIONS = {
    "alpha": 0.25,  # rank-weight decay of SimMax
    "first_rank": 0,  # SimMax ranks counted from 0 (authors' code: self pair weighs e^α) or 1
    # last_batch_bands (authors' code): mean of the 4 band means of the map on the last batch
    # of epoch 0; epoch_frame: pooled mean over epoch 0 of the map upsampled to the image
    "polarity_rule": "last_batch_bands",
    "border": 4,  # band width: map rows/columns (last_batch_bands) or image pixels (epoch_frame)
    "hint_resize": "bicubic",  # hint map → map grid: bicubic (authors' code) or area
    "hint_threshold": 0.4,  # δ_fg (0.3 on COCO)
    "hint_weight": 1.0,  # λ_h
    "hint_smoothing": 0.1,  # target 1 − ε/2 for hinted cells
}


class C2amTrainer(CamTrainer):
    """C²AM training; with ``hints_dir`` (maps H in [0, 1] as ``<id>.png``) it is C²AM-H.

    Without hints the loss is symmetric in fg/bg, so after the first epoch the map's mean
    near the image border decides, once, whether ``a`` marks the background (then the net's
    ``flipped`` buffer inverts it): by default, as in the authors' code, the mean of the four
    band means (``border`` rows/columns of the map) on the last batch of epoch 0. With hints
    the hint term fixes the polarity instead.
    ``method_options``: see :data:`C2AM_OPTIONS`.
    """

    method_name = "c2am"
    stage_name = "saliency_train"

    def __init__(
        self,
        dataset: Dataset,
        out_dir: str | os.PathLike,
        config: CamTrainConfig,
        progress: bool = True,
        hints_dir: str | os.PathLike | None = None,
    ):
        unknown = sorted(set(config.method_options) - set(C2AM_OPTIONS))
        if unknown:
            raise WsssError(
                f"method_options: unknown C²AM option(s) {unknown}; known: {sorted(C2AM_OPTIONS)}"
            )
        self.options = {**C2AM_OPTIONS, **config.method_options}
        if self.options["polarity_rule"] not in POLARITY_RULES:
            raise WsssError(
                f"method_options: polarity_rule must be one of {list(POLARITY_RULES)}, "
                f"got {self.options['polarity_rule']!r}"
            )
        if self.options["hint_resize"] not in HINT_RESIZE_MODES:
            raise WsssError(
                f"method_options: hint_resize must be one of {list(HINT_RESIZE_MODES)}, "
                f"got {self.options['hint_resize']!r}"
            )
        if int(self.options["first_rank"]) not in (0, 1):
            raise WsssError(f"method_options: first_rank must be 0 or 1, got {self.options['first_rank']!r}")
        self.use_hints = hints_dir is not None
        self.hints_path = None if hints_dir is None else Path(hints_dir)
        if self.use_hints:
            self.method_name = "c2am-h"
        self.border_sums = torch.zeros(2)  # epoch_frame: (sum, count) of a on the frame in epoch 0
        self.band_sums = torch.zeros(5)  # last_batch_bands: 4 band means of that batch, 1 if seen
        self.polarity_decided = self.use_hints
        super().__init__(dataset, out_dir, config, progress)
        if hints_dir is not None:
            self.data.use_saliency(hints_dir)

    def training_inputs(self) -> dict[str, Any]:
        return {**super().training_inputs(), "hints": self.hints_path}

    def build_models(self) -> None:
        c = self.config
        self.model = C2amNet(c.backbone, c.pretrained, c.weights, c.output_stride)

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits, features = self.train_model(batch["image"])
        losses = c2am_loss(logits, features, self.options["alpha"], int(self.options["first_rank"]))
        if self.use_hints:
            hint = hint_loss(
                logits,
                batch["saliency"],
                self.options["hint_threshold"],
                self.options["hint_smoothing"],
                self.options["hint_resize"],
            )
            losses["hint"] = hint
            losses["loss"] = losses["loss"] + self.options["hint_weight"] * hint
        elif not self.polarity_decided:
            a = torch.sigmoid(logits.detach())
            if self.options["polarity_rule"] == "epoch_frame":
                frame = border_mean(a, batch["image"].shape[-2:], self.options["border"])
                self.border_sums = self.border_sums + frame.cpu()
            elif self.global_step == self.steps_per_epoch - 1:  # the last batch of epoch 0
                bands = band_means(a, int(self.options["border"])).cpu()
                self.band_sums = torch.cat([bands, torch.ones(1)])
        return losses

    def on_epoch_start(self, epoch: int) -> None:
        if epoch >= 1:
            self.decide_polarity()

    def decide_polarity(self) -> None:
        if self.polarity_decided:
            return
        if self.options["polarity_rule"] == "epoch_frame":
            sums = self.border_sums.to(self.device)
            if self.world_size > 1:
                sums = dist.mean_across_ranks(sums)
            flip = float(sums[1]) > 0 and float(sums[0] / sums[1]) > 0.5
        else:
            # under DDP each rank saw its own share of that batch: their band means are averaged
            sums = self.band_sums.to(self.device)
            if self.world_size > 1:
                sums = dist.mean_across_ranks(sums)
            flip = float(sums[4]) > 0 and float(sums[:4].sum() / (4.0 * sums[4])) > 0.5
        if flip:
            self.model.flipped.fill_(True)
        self.polarity_decided = True

    def extra_state(self) -> dict[str, Any]:
        return {
            "border_sums": self.border_sums.clone(),
            "band_sums": self.band_sums.clone(),
            "polarity_decided": self.polarity_decided,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.border_sums = state["border_sums"].clone()
        self.band_sums = state.get("band_sums", torch.zeros(5)).clone()
        self.polarity_decided = bool(state["polarity_decided"])

    def save_final(self) -> None:
        self.decide_polarity()  # a one-epoch run decides at its end
        if self.is_main:
            save_c2am_model(self.model, self.model_path, self.model_meta())


def train_c2am(
    dataset: Dataset,
    out_dir: str | os.PathLike,
    config: CamTrainConfig,
    hints_dir: str | os.PathLike | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Train C²AM (C²AM-H with ``hints_dir``) into ``out_dir``; reuses a finished run made
    with the same settings and inputs (``force``: retrain)."""
    trainer = C2amTrainer(dataset, Path(out_dir), config, progress, hints_dir)
    trainer.force = force
    return trainer.train()


def write_hints(
    dataset: Dataset, cam_dir: str | os.PathLike, out_dir: str | os.PathLike, progress: bool = True
) -> Path:
    """H = max over the image's classes of its CAM, as ``out_dir/<id>.png`` (resumes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in dataset.ids if not (out_dir / f"{i}.png").is_file()]
    for image_id in tqdm(todo, desc="C²AM-H hints", unit="img", disable=not progress):
        shape = dataset.image(image_id).shape[:2]
        _, cam = load_cam(find_cam(cam_dir, image_id), shape=shape, num_classes=dataset.num_classes)
        save_saliency(out_dir / f"{image_id}.png", cam.max(axis=0) if len(cam) else np.zeros(shape))
    return out_dir


@torch.inference_mode()
def c2am_saliency(
    model: C2amNet, image: np.ndarray, scales: tuple[float, ...] = (1.0,), flip: bool = True
) -> np.ndarray:
    """float32 H×W: sigmoid(a) averaged over scales × flips, upsampled to the image."""
    dev = next(model.parameters()).device
    meta = getattr(model, "meta_info", {})
    mean = torch.tensor(meta.get("mean", (0.485, 0.456, 0.406)), device=dev).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(meta.get("std", (0.229, 0.224, 0.225)), device=dev).view(1, 3, 1, 1) * 255.0
    x = (torch.from_numpy(np.array(image, copy=True)).to(dev).permute(2, 0, 1)[None].float() - mean) / std
    height, width = image.shape[:2]
    total = torch.zeros(1, 1, height, width, device=dev)
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        xs = x if size == (height, width) else F.interpolate(x, size, mode="bilinear", align_corners=False)
        if flip:
            xs = torch.cat([xs, xs.flip(-1)])
        a = torch.sigmoid(model(xs)[0].float())
        if flip:
            a = a[:1] + a[1:].flip(-1)
        total += F.interpolate(a, (height, width), mode="bilinear", align_corners=False)
    return (total / (len(scales) * (2 if flip else 1)))[0, 0].cpu().numpy()


@register_saliency_source("c2am")
class C2amSource(SaliencySource):
    """Options: ``train`` (CamTrainConfig fields), ``model`` (a trained C²AM folder/file:
    no training), ``train_split`` (default: the split being processed), ``scales``,
    ``flip``, ``normalize`` (min-max per image, so that a fixed threshold means the same
    on every image), ``device``."""

    option_defaults: dict[str, Any] = {
        "train": {},
        "model": None,
        "train_split": None,
        "scales": [1.0],
        "flip": True,
        "normalize": True,
        "device": None,
    }
    description = "C²AM: class-agnostic activation map learnt here without any pixel annotation"

    def validate(self) -> None:
        o = self.options
        if not isinstance(o["train"], dict):
            raise WsssError(f"saliency source {self.source_name!r}: option train must be a mapping")
        if not o["scales"] or min(float(s) for s in o["scales"]) <= 0:
            raise WsssError(f"saliency source {self.source_name!r}: scales must be positive numbers")
        self.train_config = CamTrainConfig.from_dict(dict(o["train"]), source=f"{self.source_name} train")

    def hints_dir(self, dataset: Dataset, out_dir: Path, progress: bool) -> Path | None:
        return None

    def prepare(self, dataset: Dataset, out_dir: Path, progress: bool = True) -> None:
        o = self.options
        if o["model"]:
            model_path = Path(o["model"])
        else:
            train_ds = dataset
            if o["train_split"] and o["train_split"] != dataset.split:
                train_ds = build_dataset(dataset.kind, dataset.root, o["train_split"])
            model_path = train_c2am(
                train_ds,
                out_dir / "model",
                self.train_config,
                self.hints_dir(train_ds, out_dir, progress),
                progress,
            )
        self.model = load_c2am_model(model_path, o["device"])
        self.model_sha256 = file_digest(self.model_path(model_path))

    @staticmethod
    def model_path(path: Path) -> Path:
        return path / "model.safetensors" if path.is_dir() else path

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model_sha256": getattr(self, "model_sha256", None)}

    def provenance(self) -> dict[str, Any]:
        record = super().provenance()
        model = getattr(self, "model", None)
        if model is not None:
            record["model"] = {"sha256": self.model_sha256, **model.meta_info}
        return record

    def predict(self, dataset: Dataset, image_id: str) -> np.ndarray:
        o = self.options
        sal = c2am_saliency(
            self.model, dataset.image(image_id), tuple(float(s) for s in o["scales"]), o["flip"]
        )
        return min_max(sal) if o["normalize"] else sal


@register_saliency_source("c2am-h")
class C2amHintSource(C2amSource):
    """C²AM-H (seed 001): C²AM plus a hint term on the cells where a stage-1 CAM is
    confident (max over classes ≥ ``train.method_options.hint_threshold``, default 0.4).
    Extra option ``cams``: the CAM folder of the training images."""

    option_defaults = {**C2amSource.option_defaults, "cams": None}
    description = "C²AM-H: C²AM with foreground hints from stage-1 CAMs (no pixel annotation)"

    def validate(self) -> None:
        super().validate()
        if not self.options["model"] and not self.options["cams"]:
            raise WsssError(
                "saliency source 'c2am-h' needs option cams (a CAM folder of the training images)"
            )
        if self.options["cams"] and not Path(self.options["cams"]).is_dir():
            raise WsssError(f"{self.options['cams']}: CAM folder for c2am-h hints not found")

    def hints_dir(self, dataset: Dataset, out_dir: Path, progress: bool) -> Path:
        return write_hints(dataset, self.options["cams"], out_dir / "hints", progress)
