"""The training base shared by every CAM method, and the method registry.

:class:`CamTrainer` owns the mechanics — data, optimiser, poly schedule, device/AMP,
checkpoint/resume, logging, rank awareness — so that a method is a small subclass
that overrides :meth:`CamTrainer.step` (and, if it needs them, extra networks,
parameter groups or state), registered with :func:`register_cam_method`.
"""

from __future__ import annotations

import abc
import contextlib
import csv
import dataclasses
import hashlib
import io
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from wsss import dist
from wsss.cam.data import CamTrainData, EpochSampler, worker_init
from wsss.cam.recipes import (
    BATCHNORM_MODES,
    RECIPE_FIELDS,
    RESIZE_MODES,
    freeze_parts,
    recipe_for,
    set_batchnorm_mode,
)
from wsss.config import check_field_types
from wsss.data.base import Dataset
from wsss.io import WsssError, atomic_path, atomic_write_text, write_run_json
from wsss.models.cam_net import CamNet, model_weights_path, resolve_device, save_cam_model
from wsss.models.pretrained import weights_normalisation
from wsss.stage import dataset_settings, stage_run

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.safetensors"
LOG_NAME = "train_log.csv"
# below this share of live last-map channels at the end of training, warn (see _note_alive_channels)
DEAD_CHANNEL_WARNING = 0.5
CHECKPOINT_VERSION = 1

# Settings that may change between an interrupted run and its resumption.
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
RUNTIME_FIELDS = frozenset(
    {"stop_after_steps", "num_workers", "checkpoint_every", "log_every", "device", "num_threads"}
)


@dataclasses.dataclass
class CamTrainConfig:
    """Every hyper-parameter of stage-1 training; YAML in/out via ``asdict``/:meth:`from_dict`.

    ``recipe`` names a training recipe (:mod:`wsss.cam.recipes`): every field left at None
    (SGD's LR, momentum and nesterov, weight decay, parameter groups, schedule, epochs, batch
    and accumulation, crop, resize, colour jitter, label smoothing, freezing) takes the recipe's value, and a
    value set here wins over it. ``auto`` (default) is the method's authors' recipe, resolved
    when the trainer knows the method (:meth:`for_method`; until then the fields hold the
    ``generic`` recipe's values); ``generic`` is the toolkit's own (SGD 0.1 with momentum
    0.9, 10× head LR, poly 0.9, 5 epochs, crop 512, batch 16, rescale 0.5–1.5), which
    assumes ImageNet weights; from scratch use ``optimizer="adamw"`` (its default ``lr`` is
    1e-3). ``batch_size`` is per optimiser step and process; ``accumulate`` splits it into
    that many micro-batches whose gradients add up (P-NOC's accumulation). Set
    ``crop_size`` near the image size: small images are zero-padded up to it.

    ``pretrained`` starts from ImageNet weights: offline from an installed package for
    ``tf_efficientnet_lite0``–``2`` (:mod:`wsss.models.pretrained`), timm's download otherwise;
    ``weights`` from a local checkpoint instead. ``mean``/``std`` left unset follow those
    weights (0.5/0.5 for EfficientNet-Lite; ImageNet's for ResNets and from scratch).
    ``head_conv`` (EfficientNets) takes the CAM from the map the ImageNet classifier pools
    (after its head conv) rather than the last block's linear bottleneck.
    """

    backbone: str = "resnet50"
    pretrained: bool = False
    weights: str | None = None
    output_stride: int = 16
    head_conv: bool = False  # EfficientNets: CAM from the head conv's map (models.backbone)
    recipe: str = "auto"  # a name in wsss.cam.recipes.RECIPES, or "auto": the method's authors' recipe
    epochs: int | None = None
    batch_size: int | None = None
    accumulate: int | None = None
    optimizer: str = "sgd"  # "sgd" | "adamw"
    lr: float | None = None  # None: the recipe's for sgd, 1e-3 for adamw
    head_lr_mult: float | None = None
    bias_lr_mult: float | None = None
    bias_weight_decay: bool | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    poly_power: float | None = None
    warmup_steps: int = 0
    crop_size: int | None = None
    # "scale" (scale_range, bilinear) | "long-side" (long_side_range px, PIL bicubic)
    resize: str | None = None
    scale_range: tuple[float, float] | None = None
    long_side_range: tuple[int, int] | None = None
    color_jitter: tuple[float, float, float, float] | None = None  # brightness, contrast, saturation, hue
    hflip: bool = True
    batchnorm: str | None = None  # "train" | "frozen-stats" | "frozen"
    freeze_stem: bool | None = None
    detach_stage: int | None = None
    # None: what the starting weights expect (wsss.models.pretrained.weights_normalisation)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    seed: int = 0
    amp: str = "bf16"  # "bf16" | "fp16" | "none"; autocast is used on CUDA only
    channels_last: bool = False
    num_workers: int = 2
    device: str | None = None
    num_threads: int | None = None
    checkpoint_every: int = 200
    log_every: int = 10
    stop_after_steps: int | None = None  # end the run early like a kill (tests of resume)
    # ε: targets y' = (1 − ε)·y + ε/2 (P-NOC's "+LS" uses 0.1), any method
    label_smoothing: float | None = None
    oc: str | None = (
        None  # ordinary classifier weights (a `cam` training folder or .safetensors): oc-cse, p-oc, p-noc
    )
    saliency: str | None = None  # saliency folder, or a source name under the dataset's saliency/: eps, smvwe
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self._fill_from_recipe()
        self._fill_normalisation()
        self.scale_range = tuple(float(s) for s in self.scale_range)  # type: ignore[assignment]
        self.long_side_range = tuple(int(s) for s in self.long_side_range)  # type: ignore[assignment]
        self.color_jitter = tuple(float(s) for s in self.color_jitter)  # type: ignore[assignment]
        self.mean = tuple(float(s) for s in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(s) for s in self.std)  # type: ignore[assignment]
        problems = []
        if self.optimizer not in ("sgd", "adamw"):
            problems.append(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.amp not in ("bf16", "fp16", "none"):
            problems.append(f"amp must be 'bf16', 'fp16' or 'none', got {self.amp!r}")
        for name in ("epochs", "batch_size", "accumulate", "crop_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.accumulate:
            problems.append(
                f"batch_size {self.batch_size} must be a multiple of accumulate {self.accumulate} "
                "(equal micro-batches)"
            )
        if (self.lr is not None and self.lr <= 0) or self.head_lr_mult <= 0 or self.bias_lr_mult <= 0:
            problems.append("lr, head_lr_mult and bias_lr_mult must be > 0")
        if self.momentum < 0 or self.weight_decay < 0 or (self.nesterov and self.momentum == 0):
            problems.append("momentum and weight_decay must be >= 0 (nesterov needs momentum > 0)")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            problems.append(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {self.scale_range}")
        if len(self.long_side_range) != 2 or not 0 < self.long_side_range[0] <= self.long_side_range[1]:
            problems.append(
                f"long_side_range must be (lo, hi) px with 0 < lo <= hi, got {self.long_side_range}"
            )
        if len(self.color_jitter) != 4 or min(self.color_jitter) < 0 or self.color_jitter[3] > 0.5:
            problems.append(
                f"color_jitter must be (brightness, contrast, saturation, hue) >= 0, hue <= 0.5, got {self.color_jitter}"
            )
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize must be one of {list(RESIZE_MODES)}, got {self.resize!r}")
        if self.batchnorm not in BATCHNORM_MODES:
            problems.append(f"batchnorm must be one of {list(BATCHNORM_MODES)}, got {self.batchnorm!r}")
        if self.detach_stage < 0:
            problems.append(f"detach_stage must be >= 0 (0: none), got {self.detach_stage}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std need 3 values each, std > 0")
        if self.num_workers < 0 or self.warmup_steps < 0:
            problems.append("num_workers and warmup_steps must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if problems:
            raise WsssError("CamTrainConfig: " + "; ".join(problems))

    def _fill_from_recipe(self) -> None:
        """Fields left at None take the recipe's values (``auto``: ``generic``'s for now);
        which ones were left is remembered, so that :meth:`for_method` can refill them."""
        recipe = recipe_for(self.recipe)  # "auto" without a method: generic
        unset = [name for name in RECIPE_FIELDS if getattr(self, name) is None]
        values = recipe.values()
        if self.optimizer != "sgd":  # every recipe's LR is an SGD one
            values["lr"] = DEFAULT_LR.get(self.optimizer, recipe.lr)
        if recipe.momentum_is_weight_decay and self.weight_decay is not None:
            values["momentum"] = self.weight_decay
        for name in unset:
            setattr(self, name, values[name])
        self._unset_by_user = frozenset(unset)

    def _fill_normalisation(self) -> None:
        """``mean``/``std`` left at None follow the starting weights (0.5/0.5 for the
        EfficientNet-Lite ones, ImageNet's for ResNets and from scratch); the resolved values
        are what the run records and the saved model's json carries to inference."""
        if self.mean is None or self.std is None:
            mean, std = weights_normalisation(self.backbone, self.pretrained, self.weights)
            self.mean = mean if self.mean is None else self.mean
            self.std = std if self.std is None else self.std

    def for_method(self, method: str) -> CamTrainConfig:
        """This config with ``recipe: auto`` resolved to ``method``'s authors' recipe (the
        fields the user left unset take that recipe's values); other configs unchanged."""
        if self.recipe != "auto":
            return self
        unset = getattr(self, "_unset_by_user", frozenset())
        values = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init and f.name not in unset
        }
        values["recipe"] = recipe_for("auto", method).name
        return type(self)(**values)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> CamTrainConfig:
        """From YAML/JSON: unknown keys are an error naming ``source`` (e.g. the YAML path)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise WsssError(f"{source}: unknown CAM training option(s) {unknown}; known: {sorted(known)}")
        d = check_field_types(cls, d, source)
        try:
            return cls(**d)
        except (WsssError, TypeError, ValueError) as e:
            raise WsssError(f"{source}: {e}") from None


# --------------------------------------------------------------------------- registry
CAM_METHODS: dict[str, type[CamTrainer]] = {}


def register_cam_method(name: str) -> Callable[[type[CamTrainer]], type[CamTrainer]]:
    def deco(cls: type[CamTrainer]) -> type[CamTrainer]:
        CAM_METHODS[name] = cls
        cls.method_name = name
        return cls

    return deco


def poly_factor(step: int, total_steps: int, power: float, warmup_steps: int = 0) -> float:
    """LR multiplier at ``step`` (0-based): (1 − step/total)^power, after a linear warm-up."""
    factor = (1.0 - min(step, total_steps) / total_steps) ** power
    if warmup_steps and step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


class CamTrainer(abc.ABC):
    """Subclasses implement :meth:`step`; they may extend :meth:`build_models`,
    :meth:`param_groups`, :meth:`extra_state`/:meth:`load_extra_state` and the hooks.

    Multi-process (``torchrun``, one process per GPU or several on CPU): the process group
    is joined from the environment, the sampler shards images by rank (``batch_size`` is per
    process; every rank runs the same number of steps), ``self.train_model`` is
    ``self.model`` wrapped in DistributedDataParallel — so :meth:`step` must forward through
    ``self.train_model`` (a direct ``self.model(...)`` call would skip the gradient
    all-reduce) — and methods with other trainable networks wrap them with :meth:`wrap` in
    :meth:`build_models`. Every rank seeds its RNGs alike; the checkpoint keeps each rank's
    RNG state, so a resumed run is exact. Only rank 0 writes files or shows progress, and
    the others wait at a barrier after each write.
    """

    method_name = "base"
    stage_name = "cam_train"  # the run.json stage (networks trained on this base for other stages differ)

    def __init__(
        self, dataset: Dataset, out_dir: str | os.PathLike, config: CamTrainConfig, progress: bool = True
    ):
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        config = config.for_method(self.method_name)  # recipe "auto" → this method's authors' recipe
        self.config = config
        self.progress = progress
        self.device = resolve_device(config.device)
        dist.init_from_env(self.device)  # no-op outside torchrun or when the caller joined already
        self.rank, self.world_size = dist.rank_world()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if len(dataset) == 0:
            raise WsssError(f"{dataset.root}: split {dataset.split!r} has no images to train on")
        dataset.check_labels()
        self.num_classes = dataset.num_classes - 1
        self.data = CamTrainData(
            dataset,
            config.crop_size,
            config.scale_range,
            config.hflip,
            config.mean,
            config.std,
            config.seed,
            long_side_range=config.long_side_range if config.resize == "long-side" else None,
            color_jitter=config.color_jitter if any(config.color_jitter) else None,
        )
        self.sampler = EpochSampler(len(dataset), config.batch_size, config.seed, self.rank, self.world_size)
        if self.sampler.batches_per_epoch == 0:
            raise WsssError(
                f"{dataset.root}: split {dataset.split!r} has {len(dataset)} images, fewer than "
                f"batch_size={config.batch_size} per process"
            )
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = self.steps_per_epoch * config.epochs
        self.global_step = 0
        self.elapsed_s = 0.0
        self.log_rows: list[dict[str, Any]] = []
        self._log_sums: dict[str, Any] = {}  # loss name → running sum (tensor)
        self._log_count = 0
        self._seed_everything(config.seed)
        # for methods' own random draws (e.g. the erased class of OC-CSE), saved in checkpoints
        self.generator = torch.Generator().manual_seed(config.seed)
        self._wrapped: list[nn.Module] = []  # networks synchronised across ranks (see wrap)
        self.build_models()
        self.freeze(self.model)
        self.train_model: nn.Module = self.wrap(self.model)
        self.optimizer = self.build_optimizer(self.param_groups())
        self.use_autocast = self.device.type == "cuda" and config.amp != "none"
        self.amp_dtype = torch.float16 if config.amp == "fp16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_autocast and config.amp == "fp16")
        self._alive: torch.Tensor | None = None  # last-map channels positive in this log window
        backbone = getattr(self.model, "backbone", None)
        if isinstance(backbone, nn.Module):
            backbone.register_forward_hook(self._note_alive_channels)

    def _note_alive_channels(self, module: nn.Module, inputs: Any, output: Any) -> None:
        """Dead units: a channel of the backbone's last map that is positive nowhere in a batch
        passes no gradient through its ReLU, and once dead it stays dead. A large share of them
        is how too large a learning rate on pretrained weights shows (the log's ``alive``)."""
        if not torch.is_grad_enabled():  # inference passes (e.g. another method's targets)
            return
        feats = output[-1] if isinstance(output, (list, tuple)) else output
        seen = feats.detach().flatten(2).amax(dim=2).amax(dim=0) > 0
        self._alive = seen if self._alive is None else self._alive | seen

    # ----------------------------------------------------------------- method hooks
    def build_models(self) -> None:
        """Create ``self.model`` (the network whose weights are the stage's output)."""
        c = self.config
        self.model = CamNet(
            c.backbone, self.num_classes, c.pretrained, c.weights, c.output_stride, head_conv=c.head_conv
        )

    def param_groups(self) -> list[dict[str, Any]]:
        """Backbone at ``lr``, head at ``lr × head_lr_mult`` (the newly initialised layer learns
        faster), each split by :meth:`recipe_groups` when the recipe treats biases apart."""
        backbone, head = self.model.param_groups()
        return self.recipe_groups(self.model, backbone, head, self.config.lr)

    def recipe_groups(
        self,
        module: nn.Module,
        backbone: list[nn.Parameter],
        head: list[nn.Parameter],
        lr: float,
        prefix: str = "",
    ) -> list[dict[str, Any]]:
        """Optimiser groups of one network: "backbone" at ``lr``, "head" at ``lr ×
        head_lr_mult``; with ``bias_lr_mult`` ≠ 1 or ``bias_weight_decay`` off, the parameters
        whose name lacks "weight" (biases — P-NOC's rule) move to "backbone_bias"/"head_bias"
        at ``bias_lr_mult`` × their group's LR, without weight decay unless ``bias_weight_decay``.
        Extra networks (P-NOC's oc) use it too, with their names under ``prefix``."""
        c = self.config
        split = c.bias_lr_mult != 1.0 or not c.bias_weight_decay
        names = {id(p): n for n, p in module.named_parameters()}
        groups = []
        for part, params, part_lr in (("backbone", backbone, lr), ("head", head, lr * c.head_lr_mult)):
            if not split:
                groups.append({"params": params, "lr": part_lr, "name": prefix + part})
                continue
            weights = [p for p in params if "weight" in names.get(id(p), "weight")]
            biases = [p for p in params if "weight" not in names.get(id(p), "weight")]
            groups.append({"params": weights, "lr": part_lr, "name": prefix + part})
            bias_group = {"params": biases, "lr": part_lr * c.bias_lr_mult, "name": f"{prefix}{part}_bias"}
            if not c.bias_weight_decay:
                bias_group["weight_decay"] = 0.0
            groups.append(bias_group)
        return [g for g in groups if g["params"]]

    def freeze(self, model: nn.Module) -> None:
        """The recipe's frozen parts of ``model``'s backbone (stem, BatchNorm, early stages)."""
        c = self.config
        freeze_parts(getattr(model, "backbone", model), c.batchnorm, c.freeze_stem, c.detach_stage)

    def set_train_mode(self) -> None:
        """Training mode for the trained network, except the backbone's BatchNorm layers when
        the recipe freezes them (a newly initialised head's BatchNorm always trains)."""
        self.train_model.train()
        set_batchnorm_mode(getattr(self.model, "backbone", self.model), self.config.batchnorm)

    @abc.abstractmethod
    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Forward one batch; return the losses, with the total under ``"loss"``."""

    def on_epoch_start(self, epoch: int) -> None:  # noqa: B027  (optional hook)
        """Called before each epoch's first batch (also when resuming mid-epoch)."""

    def extra_state(self) -> dict[str, Any]:
        """Method state beyond model/optimiser (extra networks, optimisers) for the checkpoint."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027  (optional hook)
        """Restore what :meth:`extra_state` returned."""

    def cls_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Multilabel soft-margin loss with the config's label smoothing; every method's
        classification terms go through here so ``label_smoothing`` applies to all of them."""
        eps = self.config.label_smoothing
        targets = labels * (1.0 - eps) + eps / 2.0 if eps else labels
        return F.multilabel_soft_margin_loss(logits.float(), targets)

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """Move a trainable network to the device (channels-last if configured) and, under
        torchrun, wrap it in DistributedDataParallel; returns what to call in :meth:`step`.

        The weights stay in ``module`` (checkpoints and outputs use it, without the
        ``module.`` prefix). Pass ``find_unused_parameters=True`` for a network whose loss
        does not reach every parameter in some steps.
        """
        module.to(self.device)
        if self.config.channels_last:
            module.to(memory_format=torch.channels_last)
        self._wrapped.append(module)
        if self.world_size == 1:
            return module
        return nn.parallel.DistributedDataParallel(
            module,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def train_fraction(self) -> float:
        """Progress through training in [0, 1], for methods whose loss weights ramp up."""
        return self.global_step / self.total_steps

    # ----------------------------------------------------------------- optimisation
    def build_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        c = self.config
        for g in groups:
            g["initial_lr"] = g["lr"]
        if c.optimizer == "sgd":
            return torch.optim.SGD(
                groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov
            )
        return torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)

    def lr_factor(self, step: int) -> float:
        c = self.config
        return poly_factor(step, self.total_steps, c.poly_power, c.warmup_steps)

    def set_lr(self, step: int) -> None:
        factor = self.lr_factor(step)
        for opt in self.optimizers():
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * factor

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimisers that follow the poly schedule (methods with extra ones extend this)."""
        return [self.optimizer]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.use_autocast:
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, non_blocking=True)
                if k == "image" and self.config.channels_last:
                    v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    def micro_batches(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """The batch split into ``accumulate`` equal parts along the first dimension."""
        n = self.config.accumulate
        if n == 1:
            return [batch]
        parts: list[dict[str, Any]] = [{} for _ in range(n)]
        for key, value in batch.items():
            chunks = value.tensor_split(n) if isinstance(value, torch.Tensor) else [value] * n
            for part, chunk in zip(parts, chunks, strict=True):
                part[key] = chunk
        return parts

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimisation step at the current ``global_step`` (the LR follows the schedule).

        With ``accumulate`` > 1 each micro-batch is forwarded and backpropagated on its own and
        their gradients add up (P-NOC's ``train_pnoc.py`` does not divide the loss); the logged
        losses are the micro-batches' mean."""
        self.set_train_mode()
        self.set_lr(self.global_step)
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.micro_batches(batch)
        is_ddp = isinstance(self.train_model, nn.parallel.DistributedDataParallel)
        totals: dict[str, torch.Tensor] = {}
        for k, part in enumerate(parts):
            # under DDP only the last backward all-reduces: the summed local gradients once
            last = k == len(parts) - 1
            with self.train_model.no_sync() if is_ddp and not last else contextlib.nullcontext():
                with self.autocast():
                    losses = self.step(part)
                if "loss" not in losses:
                    raise WsssError(
                        f"{type(self).__name__}.step must return the total under 'loss', got {sorted(losses)}"
                    )
                self.scaler.scale(losses["loss"]).backward()
            for name, value in losses.items():
                value = value.detach()
                totals[name] = (
                    value if len(parts) == 1 else totals.get(name, 0.0) + value.float() / len(parts)
                )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return totals

    # ----------------------------------------------------------------- data
    def loader(self, epoch: int, skip_batches: int = 0) -> torch.utils.data.DataLoader:
        self.sampler.set_epoch(epoch, skip_batches)
        workers = self.config.num_workers
        return torch.utils.data.DataLoader(
            self.data,
            batch_size=self.config.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=worker_init if workers else None,
            prefetch_factor=4 if workers else None,
        )

    # ----------------------------------------------------------------- files
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def model_path(self) -> Path:
        return self.out_dir / MODEL_NAME

    def _identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed by this run."""
        cfg = {k: v for k, v in self.config.to_dict().items() if k not in RUNTIME_FIELDS}
        ids_hash = hashlib.sha1("\n".join(self.dataset.ids).encode()).hexdigest()
        return {
            "method": self.method_name,
            "config": cfg,
            "ids_sha1": ids_hash,
            "world_size": self.world_size,
        }

    def rng_state(self) -> dict[str, Any]:
        """This process's RNG states (global torch/CUDA/NumPy/Python and ``self.generator``)."""
        np_state = np.random.get_state()  # noqa: NPY002  (third-party code may use the global RNG)
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate(),
            "generator": self.generator.get_state(),
        }

    def set_rng_state(self, rng: dict[str, Any]) -> None:
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np_state = rng["numpy"]
        legacy = (np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:])
        np.random.set_state(legacy)  # noqa: NPY002
        random.setstate(_as_tuples(rng["python"]))
        self.generator.set_state(rng["generator"])

    def state_dict(self, rank_rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything a resumed run needs; ``rank_rng`` holds every rank's RNG state under DDP."""
        state = {
            "version": CHECKPOINT_VERSION,
            "identity": self._identity(),
            "global_step": self.global_step,
            "epoch": self.global_step // self.steps_per_epoch,
            "elapsed_s": self.elapsed_s,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "log_sums": {k: float(v) for k, v in self._log_sums.items()},
            "log_count": self._log_count,
            "log_alive": None if self._alive is None else self._alive.cpu(),
            "rng": rank_rng[0] if rank_rng else self.rng_state(),
            "extra": self.extra_state(),
        }
        if rank_rng and len(rank_rng) > 1:
            state["rank_rng"] = rank_rng
        return state

    def save_checkpoint(self) -> None:
        """Rank 0 writes; every rank must call this (it gathers the ranks' RNG states)."""
        rank_rng = None
        if self.world_size > 1:
            rank_rng = dist.all_gather_object(self.rng_state())
            dist.broadcast_buffers(self._wrapped)  # the saved statistics are every rank's from now on
        if self.is_main:
            self.write_log()
            buf = io.BytesIO()
            torch.save(self.state_dict(rank_rng), buf)
            with atomic_path(self.checkpoint_path) as tmp:
                tmp.write_bytes(buf.getvalue())
        dist.barrier()

    def load_checkpoint(self) -> bool:
        """Restore everything from ``checkpoint.pt`` if present; True when resumed."""
        path = self.checkpoint_path
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt/truncated files raise many types
            raise WsssError(
                f"{path}: cannot read checkpoint ({type(e).__name__}: {e}); delete it to start over"
            ) from None
        if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
            raise WsssError(
                f"{path}: not a wsss CAM checkpoint (version {CHECKPOINT_VERSION}); delete it to start over"
            )
        mine, theirs = self._identity(), state["identity"]
        if mine != theirs:
            diffs = _describe_diff(theirs, mine)
            raise WsssError(
                f"{path}: written by a run with a different config ({diffs}); "
                "use the same settings or delete the checkpoint to start over"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.global_step = int(state["global_step"])
        self.elapsed_s = float(state["elapsed_s"])
        self._log_sums = dict(state["log_sums"])
        self._log_count = int(state["log_count"])
        alive = state.get("log_alive")  # absent in checkpoints written before the alive column
        self._alive = None if alive is None else alive.to(self.device)
        self.set_rng_state(state["rank_rng"][self.rank] if "rank_rng" in state else state["rng"])
        self.load_extra_state(state["extra"])
        self.log_rows = [r for r in self.read_log() if r["step"] <= self.global_step]
        return True

    def read_log(self) -> list[dict[str, Any]]:
        path = self.out_dir / LOG_NAME
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        out = []
        for row in rows:
            try:
                parsed = {k: float(v) for k, v in row.items() if v not in ("", None)}
            except ValueError:
                raise WsssError(f"{path}: not a training log written by wsss") from None
            parsed["step"], parsed["epoch"] = int(parsed["step"]), int(parsed["epoch"])
            out.append(parsed)
        return out

    def write_log(self) -> None:
        if not self.is_main:
            return
        columns = ["step", "epoch", "loss", "lr", "time"]
        for row in self.log_rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.log_rows)
        atomic_write_text(self.out_dir / LOG_NAME, buf.getvalue())

    def _record(self, losses: dict[str, torch.Tensor], force: bool = False) -> float | None:
        """Accumulate losses; every ``log_every`` steps turn their mean into a log row."""
        for k, v in losses.items():  # summed as tensors: no device sync until a row is due
            self._log_sums[k] = self._log_sums.get(k, 0.0) + v.float()
        self._log_count += 1
        if not (force or self.global_step % self.config.log_every == 0):
            return None
        means = {k: float(s) / self._log_count for k, s in self._log_sums.items()}
        if not math.isfinite(means["loss"]):
            raise WsssError(
                f"{self.out_dir}: loss became {means['loss']} at step {self.global_step}; lower the learning rate"
            )
        row = {
            "step": self.global_step,
            "epoch": (self.global_step - 1) // self.steps_per_epoch,
            "loss": means["loss"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "time": round(self.elapsed_s, 3),
        }
        if self._alive is not None:
            # a channel counts as alive when any rank saw it positive (the same on every rank)
            alive = (
                dist.mean_across_ranks(self._alive.float()) if self.world_size > 1 else self._alive.float()
            )
            row["alive"] = round(float((alive > 0).float().mean()), 4)
            self._alive = None
        row.update({k: v for k, v in means.items() if k != "loss"})
        self.log_rows.append(row)
        self._log_sums, self._log_count = {}, 0
        return means["loss"]

    def model_meta(self) -> dict[str, Any]:
        """What the weights' json records besides the architecture (to rebuild and reproduce)."""
        return {
            "method": self.method_name,
            "mean": list(self.config.mean),
            "std": list(self.config.std),
            "class_names": list(self.dataset.class_names),
            "train_config": self.config.to_dict(),
        }

    def save_final(self) -> None:
        if self.is_main:
            save_cam_model(self.model, self.model_path, self.model_meta())

    # ----------------------------------------------------------------- the loop
    def batches(self) -> Iterator[dict[str, Any]]:
        """Batches from ``global_step`` to the end, epoch by epoch (resumes mid-epoch exactly)."""
        while self.global_step < self.total_steps:
            epoch, done = divmod(self.global_step, self.steps_per_epoch)
            self.on_epoch_start(epoch)
            yield from self.loader(epoch, skip_batches=done)

    #: ``--force``: empty the folder and train from scratch, whatever it holds
    force = False
    #: config fields that name files or folders: fingerprinted as inputs, not compared as strings
    PATH_FIELDS = ("weights", "oc", "saliency", "labels")

    def training_inputs(self) -> dict[str, Any]:
        """The files and folders the network learns from besides the dataset's own (pinned by
        content in ``settings.json``, so a finished model is reused only for the same ones)."""
        c = self.config
        saliency = None
        if c.saliency:
            saliency = (
                Path(c.saliency) if Path(c.saliency).is_dir() else self.dataset.saliency_dir(c.saliency)
            )
        return {
            "weights": c.weights,
            "oc": model_weights_path(c.oc) if c.oc else None,
            "saliency": saliency if saliency is not None and saliency.is_dir() else None,
            "labels": getattr(c, "labels", None),
        }

    def record_settings(self) -> dict[str, Any]:
        identity = self._identity()
        config = {k: v for k, v in identity["config"].items() if k not in self.PATH_FIELDS}
        return {**identity, "config": config, **dataset_settings(self.dataset, with_ids=True)}

    def train(self) -> Path:
        """Train (or resume) to the end; returns the final weights' path — or the checkpoint's
        when ``stop_after_steps`` ended the run early. A folder that holds a model or checkpoint
        made with other settings or inputs is refused (``force``: trained again from scratch)."""
        guard = (
            stage_run(
                self.out_dir,
                self.stage_name,
                self.record_settings(),
                self.training_inputs(),
                digests=("weights", "oc"),
                force=self.force,
            )  # fmt: skip
            if self.is_main
            else contextlib.nullcontext()
        )
        with guard:
            dist.barrier()  # rank 0 has checked (or emptied) the folder before any rank reads it
            if self.model_path.is_file():
                return self.model_path
            return self._train()

    def _train(self) -> Path:
        self.load_checkpoint()
        dist.barrier()  # every rank has read the checkpoint before rank 0 may overwrite it
        c = self.config
        bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            desc=f"train {self.method_name}",
            unit="step",
            disable=not (self.progress and self.is_main),
            dynamic_ncols=True,
        )
        stopped = False
        tick = time.perf_counter()
        try:
            for batch in self.batches():
                if c.stop_after_steps is not None and self.global_step >= c.stop_after_steps:
                    stopped = True
                    break
                losses = self.mean_across_ranks(self.train_step(self.to_device(batch)))
                self.global_step += 1
                now = time.perf_counter()
                self.elapsed_s += now - tick
                tick = now
                mean_loss = self._record(losses, force=self.global_step == self.total_steps)
                bar.update(1)
                if mean_loss is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                if self.global_step % c.checkpoint_every == 0 and self.global_step < self.total_steps:
                    self.save_checkpoint()
        finally:
            bar.close()
        if stopped:
            return self.checkpoint_path
        self.save_checkpoint()  # under DDP this also gives every rank rank 0's buffers
        self.save_final()
        if self.is_main:
            final_alive = self.log_rows[-1].get("alive") if self.log_rows else None
            write_run_json(
                self.out_dir,
                self.stage_name,
                {"method": self.method_name, **c.to_dict()},
                seed=c.seed,
                timings={"train_s": round(self.elapsed_s, 2)},
                extra={
                    "dataset": {
                        "kind": self.dataset.kind,
                        "root": str(self.dataset.root),
                        "split": self.dataset.split,
                    },
                    "num_images": len(self.dataset),
                    "steps": self.total_steps,
                    "world_size": self.world_size,
                    "images_per_s": round(
                        self.total_steps * c.batch_size * self.world_size / max(self.elapsed_s, 1e-9), 2
                    ),
                    "final_loss": self.log_rows[-1]["loss"] if self.log_rows else None,
                    "final_alive": final_alive,
                },
            )
            if final_alive is not None and final_alive < DEAD_CHANNEL_WARNING:
                tqdm.write(
                    f"warning: {self.out_dir}: only {final_alive:.0%} of the backbone's output channels were "
                    f"positive anywhere in the last {self.config.log_every} steps (dead units); "
                    "a lower lr or warmup_steps keeps pretrained features alive"
                )
        dist.barrier()  # no rank returns (and reads the outputs) before rank 0 has written them
        return self.model_path

    def mean_across_ranks(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses averaged over ranks, so the log (and its non-finite check) is the
        same on every rank and describes the global batch."""
        if self.world_size == 1:
            return losses
        names = sorted(losses)
        means = dist.mean_across_ranks(torch.stack([losses[k].float().reshape(()) for k in names]))
        return dict(zip(names, means.unbind(), strict=True))

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002
        torch.manual_seed(seed)


def _as_tuples(obj: Any) -> Any:
    """``random.setstate`` wants the nested tuples that a checkpoint round trip may turn into lists."""
    if isinstance(obj, (list, tuple)):
        return tuple(_as_tuples(o) for o in obj)
    return obj


def _describe_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _describe_diff(a, b, f"{prefix}{key}.")
            if inner:
                diffs.append(inner)
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} → {b!r}")
    return ", ".join(diffs)


def build_trainer(
    dataset: Dataset,
    out_dir: str | os.PathLike,
    config: CamTrainConfig,
    method: str = "cam",
    progress: bool = True,
) -> CamTrainer:
    if method not in CAM_METHODS:
        raise WsssError(f"unknown CAM method {method!r}; known: {', '.join(sorted(CAM_METHODS))}")
    return CAM_METHODS[method](dataset, out_dir, config, progress)


def train_cam(
    dataset: Dataset,
    out_dir: str | os.PathLike,
    config: CamTrainConfig,
    method: str = "cam",
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Train stage 1 into ``out_dir``; returns ``out_dir/model.safetensors`` (a finished run with
    the same settings and inputs is reused, one with others refused; ``force`` retrains).

    Under ``torchrun`` (``WORLD_SIZE > 1``) it joins the process group from the environment
    (NCCL on CUDA, gloo on CPU; see :func:`wsss.dist.init_from_env`) and trains with DDP.
    """
    trainer = build_trainer(dataset, Path(out_dir), config, method, progress)
    trainer.force = force
    return trainer.train()
