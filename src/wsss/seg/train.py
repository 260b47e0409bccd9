"""Stage 4 training: a segmentation network (DeepLab-V2 / V3+) on pseudo labels (docs/methods.md §4).

Training reuses the CAM training base (:class:`wsss.cam.base.CamTrainer`: data order,
optimiser, poly schedule, AMP on CUDA, checkpoint/exact resume, DDP under ``torchrun``);
this file adds the label maps (a pseudo-label folder, or the dataset's ground truth for the
fully supervised reference), the network, gradient accumulation and the loss.

The loss is one method, :meth:`SegTrainer.compute_loss` (plain cross-entropy, ignore 255);
other losses (size-weighted CE, size-balanced CE + EWC) are subclasses registered with
:func:`register_seg_method`, which may also use :meth:`SegTrainer.on_gradients` (once per
optimiser step, gradients complete) and the base's ``extra_state`` hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.cam.base import CamTrainConfig, CamTrainer
from wsss.cam.data import _AUGMENT_STREAM, CamTrainData
from wsss.config import check_field_types
from wsss.data.base import Dataset
from wsss.io import IGNORE, WsssError, image_size, load_label
from wsss.models.seg_heads import resolve_head_options
from wsss.models.seg_net import SegNet, check_msc_scales, save_seg_model
from wsss.pseudo.affinity import augment_with_label
from wsss.seg.losses import segmentation_loss

__all__ = [
    "SEG_METHODS",
    "SegTrainConfig",
    "SegTrainData",
    "SegTrainer",
    "build_seg_trainer",
    "register_seg_method",
    "train_seg",
]

MODEL_NAME = "model.safetensors"
SEG_DEFAULT_LR = {"sgd": 2.5e-4, "adamw": 1e-3}
# loss terms (already included in "loss") that count once per micro-batch, not averaged:
# seed 004's EWC penalty, which the authors backpropagate whole after every micro-batch
PER_MICRO_BATCH_TERMS = ("ewc",)
_CAM_ONLY = {"oc": None, "saliency": None, "label_smoothing": 0.0}


@dataclasses.dataclass
class SegTrainConfig(CamTrainConfig):
    """Stage-4 hyper-parameters; YAML in/out like :class:`CamTrainConfig`, whose fields it shares.

    Defaults are docs/methods.md §4's DeepLab-V2 recipe as seed 004's code runs it
    (Cheolhyun-Mun/wsss_small_object_matters@629dd2c, ``main.py``/``main_ewc.py``):
    ResNet-101 at output stride 8, multi-scale inputs 1.0/0.5/0.75 max-fused at the 1.0
    pass's size (``msc_scales``; [1.0] = one pass, logits upsampled to the crop), SGD lr
    2.5e-4 for the backbone, head weights ×10 and head biases ×20 without weight decay
    (``head_lr_mult`` 10 × ``bias_lr_mult`` 2, ``bias_weight_decay`` off: the backbone has
    no biases but BatchNorm's), BatchNorm frozen (``batchnorm: frozen``: eval mode, affine
    parameters not trained), momentum 0.9, wd 5e-4, poly 0.9, batch 10 as 5 × 2
    accumulation, crop 321, scale 0.5–1.5 + flip; 19 epochs ≈ its 20k iterations on VOC's
    10,582 train_aug images, the poly LR recomputed every 10 steps (``lr_decay_every``).
    That recipe assumes ImageNet/COCO weights (``pretrained`` or ``weights``). The previous
    defaults were ``output_stride: 16, msc_scales: [1.0], bias_lr_mult: 1,
    bias_weight_decay: true, batchnorm: train, lr_decay_every: 1``.

    From scratch on the ``demo`` dataset (128-px synthetic images) use ``backbone:
    resnet18, head: deeplab-v2, optimizer: adamw`` (lr 1e-3, head ×10), ``crop_size: 128,
    batch_size: 16, accumulate: 1, scale_range: [0.75, 1.25], weight_decay: 1e-4`` with
    the previous single-scale settings above (frozen BatchNorm cannot learn from scratch) and
    3–6 epochs (~1.3 min each for 2000 images on a busy 2-core CPU, one thread). On 800
    demo images × 4 epochs this gave val mIoU 16.8 vs 10.5 for SGD 0.01 and 12.4 for V3+.

    ``batch_size`` is the images per optimiser step and process; ``accumulate`` splits it
    into that many equal micro-batches, each forwarded and backpropagated on its own (only
    memory changes, and BatchNorm sees the micro-batches). ``labels`` is the pseudo-label
    folder (``<id>.png``, 255 = ignore); None trains on the dataset's ground truth.
    ``method_options`` feed the loss method (see :data:`SEG_METHODS`).
    """

    backbone: str = "resnet101"
    epochs: int = 19
    batch_size: int = 10
    weight_decay: float = 5e-4
    crop_size: int = 321
    head: str = "deeplab-v2"  # a name in wsss.models.seg_heads.SEG_HEADS
    head_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    accumulate: int = 2
    labels: str | None = None
    output_stride: int = 8
    msc_scales: tuple[float, ...] = (1.0, 0.5, 0.75)  # [1.0]: one pass, logits upsampled to the crop
    bias_lr_mult: float | None = 2.0  # head biases at 10 × 2 = 20 × lr (Caffe's lr_mult)
    bias_weight_decay: bool | None = False
    batchnorm: str | None = "frozen"  # the pretrained statistics and affine parameters are kept
    lr_decay_every: int = 10  # the poly LR is recomputed every this many steps (the authors' LR_DECAY)

    def __post_init__(self) -> None:
        if self.lr is None and self.optimizer in SEG_DEFAULT_LR:
            self.lr = SEG_DEFAULT_LR[self.optimizer]
        try:
            super().__post_init__()
        except WsssError as e:  # the shared checks, under this config's name
            raise WsssError(str(e).replace("CamTrainConfig:", "SegTrainConfig:", 1)) from None
        problems = [
            f"{name} is a CAM-training option (got {getattr(self, name)!r})"
            for name, default in _CAM_ONLY.items()
            if getattr(self, name) != default
        ]
        if isinstance(self.accumulate, bool) or not isinstance(self.accumulate, int) or self.accumulate < 1:
            problems.append(f"accumulate must be an integer >= 1, got {self.accumulate!r}")
        elif self.batch_size % self.accumulate:
            problems.append(
                f"batch_size {self.batch_size} must be a multiple of accumulate {self.accumulate} "
                "(equal micro-batches)"
            )
        if not isinstance(self.head_options, dict):
            problems.append(f"head_options must be a mapping, got {self.head_options!r}")
        if (
            isinstance(self.lr_decay_every, bool)
            or not isinstance(self.lr_decay_every, int)
            or self.lr_decay_every < 1
        ):
            problems.append(f"lr_decay_every must be an integer >= 1, got {self.lr_decay_every!r}")
        try:
            self.msc_scales = tuple(float(v) for v in self.msc_scales)  # type: ignore[assignment]
            check_msc_scales(self.msc_scales)
        except (WsssError, TypeError, ValueError) as e:
            problems.append(str(e))
        if problems:
            raise WsssError("SegTrainConfig: " + "; ".join(problems))
        try:
            self.head_options = resolve_head_options(self.head, self.head_options)
        except WsssError as e:
            raise WsssError(f"SegTrainConfig: {e}") from None
        if self.labels is not None:
            self.labels = str(Path(self.labels).expanduser().resolve())

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> SegTrainConfig:
        """From YAML/JSON: unknown keys are an error naming ``source`` (e.g. the YAML path)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise WsssError(
                f"{source}: unknown segmentation training option(s) {unknown}; known: {sorted(known)}"
            )
        d = check_field_types(cls, d, source)
        try:
            return cls(**d)
        except (WsssError, TypeError, ValueError) as e:
            raise WsssError(f"{source}: {e}") from None


# --------------------------------------------------------------------------- data
class SegTrainData(CamTrainData):
    """:class:`CamTrainData` plus ``"seg_label"`` (int64 S×S, 255 = ignore and padding): the
    label map of ``label_dir/<id>.png`` — or the ground truth when ``label_dir`` is None —
    taken through the image's own rescale/flip/crop (nearest neighbour)."""

    def __init__(self, dataset: Dataset, label_dir: str | os.PathLike | None, *args: Any, **kwargs: Any):
        super().__init__(dataset, *args, **kwargs)
        self.label_dir = None if label_dir is None else Path(label_dir)
        if self.label_dir is not None and not self.label_dir.is_dir():
            raise WsssError(f"{self.label_dir}: label folder not found")
        for image_id in self.ids:  # fail before training, not in the middle of it
            path = self.label_path(image_id)
            shape, expected = image_size(path), image_size(dataset.image_path(image_id))
            if shape != expected:
                raise WsssError(
                    f"{path}: size {shape[1]}×{shape[0]} does not match the image {expected[1]}×{expected[0]}"
                )

    def label_path(self, image_id: str) -> Path:
        if self.label_dir is not None:
            path = self.label_dir / f"{image_id}.png"
            if not path.is_file():
                raise WsssError(f"{path}: label map not found (for image {image_id!r})")
            return path
        path = self.dataset.gt_path(image_id)
        if path is None or not Path(path).is_file():
            raise WsssError(
                f"{path if path is not None else self.dataset.root}: no ground truth for image {image_id!r}; "
                "give a pseudo-label folder"
            )
        return Path(path)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor | int]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, epoch, index])
        image_id = self.ids[index]
        image = self.dataset.image(image_id)
        label = load_label(self.label_path(image_id), self.dataset.num_classes, image.shape[:2])
        image, label = augment_with_label(
            image, label, rng, self.crop_size, self.scale_range, self.hflip, self.mean, self.std
        )
        return {
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(self.labels[index]),
            "seg_label": torch.from_numpy(label.astype(np.int64)),
            "index": index,
        }


# --------------------------------------------------------------------------- methods
SEG_METHODS: dict[str, type[SegTrainer]] = {}


def register_seg_method(name: str) -> Callable[[type[SegTrainer]], type[SegTrainer]]:
    """Register a loss variant (a :class:`SegTrainer` subclass) under ``name``."""

    def deco(cls: type[SegTrainer]) -> type[SegTrainer]:
        SEG_METHODS[name] = cls
        cls.method_name = name
        return cls

    return deco


@register_seg_method("ce")
class SegTrainer(CamTrainer):
    """Trains :class:`SegNet` on (image, label map) with cross-entropy (ignore 255).

    Subclasses change the loss by overriding :meth:`compute_loss`; ``option_defaults``
    lists the ``method_options`` they read (unknown ones are an error).
    """

    stage_name = "seg_train"
    option_defaults: dict[str, Any] = {}

    def __init__(
        self, dataset: Dataset, out_dir: str | os.PathLike, config: SegTrainConfig, progress: bool = True
    ):
        if not isinstance(config, SegTrainConfig):
            raise WsssError(
                f"{out_dir}: segmentation training needs a SegTrainConfig, got {type(config).__name__}"
            )
        unknown = sorted(set(config.method_options) - set(self.option_defaults))
        if unknown:
            raise WsssError(
                f"method_options: unknown option(s) {unknown} for segmentation method {self.method_name!r}; "
                f"known: {sorted(self.option_defaults)}"
            )
        self.options = {**self.option_defaults, **config.method_options}
        super().__init__(dataset, out_dir, config, progress)
        c = config
        self.data = SegTrainData(
            dataset, c.labels, c.crop_size, c.scale_range, c.hflip, c.mean, c.std, c.seed
        )

    def build_models(self) -> None:
        c = self.config
        self.model = SegNet(
            c.backbone,
            self.dataset.num_classes,
            c.head,
            c.pretrained,
            c.weights,
            c.output_stride,
            c.head_options,
            c.msc_scales,
        )

    def lr_factor(self, step: int) -> float:
        """The poly factor held for ``lr_decay_every`` steps: the authors' PolynomialLR only
        recomputes the LR at multiples of LR_DECAY (10), the staircase the recipe ran."""
        return super().lr_factor(step - step % self.config.lr_decay_every)

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.compute_loss(self.train_model(batch["image"]), batch)

    def compute_loss(
        self, logits: torch.Tensor | list[torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Losses of one (micro-)batch from the logits (B×K×S×S, or the list of multi-scale
        outputs); the total under ``"loss"``.

        Mean CE over the labelled pixels; a crop with none gives 0 (not NaN) so that one
        all-ignore crop cannot poison the weights. Multi-scale outputs: the sum over outputs
        of that mean, each against the label nearest-shrunk to its size (seed 004's code).
        """
        target = batch["seg_label"]
        if not isinstance(logits, torch.Tensor):
            return {"loss": segmentation_loss(logits, target, "ce")}
        total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum")
        labelled = (target != IGNORE).sum().clamp(min=1)
        return {"loss": total / labelled}

    def on_gradients(self) -> None:  # noqa: B027  (optional hook)
        """Called once per optimiser step with the step's complete gradients (every
        micro-batch, averaged over ranks, unscaled under fp16), before the update."""

    def on_micro_batch_gradients(self, grad_scale: float) -> None:  # noqa: B027  (optional hook)
        """Called after each micro-batch's backward with the gradients accumulated so far in
        this step (this rank's only, before the last micro-batch under DDP); they are
        multiplied by ``grad_scale`` (the fp16 loss scale, else 1)."""

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimisation step: forward/backward each micro-batch (the loss scaled by
        1/accumulate, so gradients are those of the mean), then one update."""
        self.set_train_mode()
        self.set_lr(self.global_step)
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.micro_batches(batch)
        is_ddp = isinstance(self.train_model, nn.parallel.DistributedDataParallel)
        totals: dict[str, torch.Tensor] = {}
        for k, part in enumerate(parts):
            last = k == len(parts) - 1
            # under DDP only the last backward all-reduces: the summed local gradients once
            sync = self.train_model.no_sync() if is_ddp and not last else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    losses = self.step(part)
                if "loss" not in losses:
                    raise WsssError(
                        f"{type(self).__name__}.compute_loss must return the total under 'loss', got {sorted(losses)}"
                    )
                # the data loss is averaged over the micro-batches; a penalty returned under
                # PER_MICRO_BATCH_TERMS (already inside "loss") is added whole to every
                # micro-batch, as the authors' EWC does
                once = sum((losses[k] for k in PER_MICRO_BATCH_TERMS if k in losses), torch.zeros(()))
                once = once.to(losses["loss"].device)
                self.scaler.scale((losses["loss"] - once) / len(parts) + once).backward()
            self.on_micro_batch_gradients(float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0)
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value.detach().float() / len(parts)
        self.scaler.unscale_(self.optimizer)
        self.on_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return totals

    def model_meta(self) -> dict[str, Any]:
        return {**super().model_meta(), "labels": self.config.labels}

    def save_final(self) -> None:
        if self.is_main:
            save_seg_model(self.model, self.model_path, self.model_meta())


def build_seg_trainer(
    dataset: Dataset,
    out_dir: str | os.PathLike,
    config: SegTrainConfig,
    method: str = "ce",
    progress: bool = True,
) -> SegTrainer:
    if method not in SEG_METHODS:
        raise WsssError(f"unknown segmentation method {method!r}; known: {', '.join(sorted(SEG_METHODS))}")
    return SEG_METHODS[method](dataset, out_dir, config, progress)


def train_seg(
    dataset: Dataset,
    out_dir: str | os.PathLike,
    config: SegTrainConfig,
    method: str = "ce",
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Train stage 4 into ``out_dir``; returns ``out_dir/model.safetensors`` (a finished run
    is skipped, an interrupted one resumes from ``checkpoint.pt``; with ``stop_after_steps``
    the checkpoint's path). Labels: ``config.labels`` (None: the ground truth). Under
    ``torchrun`` it trains with DDP (see :func:`wsss.cam.base.train_cam`)."""
    trainer = build_seg_trainer(dataset, Path(out_dir), config, method, progress)
    trainer.force = force
    return trainer.train()
