"""Affinity labels from CAMs, and training the affinity (edge) network on them (docs/methods.md §3).

Labels (``<id>.png``: 0 background, k class, 255 uncertain) say which pixels confidently
belong together; the net learns a boundary map whose path affinities fit them.

* ``classic`` (AffinityNet/IRN): fg = CRF(argmax(pad(CAM, bg = fg_threshold))), bg =
  CRF(argmax(pad(CAM, bg = bg_threshold))); the label is fg, except that where fg says
  background it is 0 if bg agrees and 255 (uncertain) otherwise. Where fg and bg name
  different classes, fg's class stands (IRN).
* ``saliency`` (seed 001, as in P-NOC's code): salient = CRF(S > sal_threshold); class
  seeds = argmax(pad(CAM, bg = cam_threshold)) inside the salient mask only, then CRF; a
  pixel with a class after that CRF keeps it (also where it spilled past the salient
  mask: the class CRF follows image edges, which outranks a thresholded saliency map),
  otherwise it is 255 if salient (salient but weak CAM) and 0 if not.

With ``crf=False`` the CRFs are skipped (exact, fast; for tests and ablations).

Training pairs: the label map is reduced to the 1/4 grid of the edge map by nearest
neighbour (the pixel at each cell's centre, as IRN's ``pil_rescale(label, 0.25, 0)``);
pairs within ``radius`` (IRN: 10) with both ends labelled are positive when the labels
agree (split into background–background and class–class) and negative otherwise; pairs
touching a 255 cell are ignored. Loss (IRN): ``(bg_pos + fg_pos)/4 + neg/2`` with
``−log(a + 1e-5)`` on positive and ``−log(1 + 1e-5 − a)`` on negative pairs, each a mean
over its own pairs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from wsss.cam.base import CamTrainConfig, CamTrainer
from wsss.cam.data import (
    _AUGMENT_STREAM,
    CamTrainData,
    _apply_crop,
    _crop_windows,
    _rescaled_size,
    _resize,
    normalize,
)
from wsss.data.base import Dataset
from wsss.io import (
    IGNORE,
    WsssError,
    image_size,
    load_label,
    load_saliency,
    parse_shard,
    save_label,
    shard_list,
)
from wsss.models.affinity import (
    EDGE_STRIDE,
    AffinityNet,
    half_offsets,
    load_affinity_model,
    path_affinity,
    save_affinity_model,
    shifted,
)
from wsss.pseudo.crf import CrfParams, crf_labels
from wsss.pseudo.threshold import load_checked_cam
from wsss.stage import dataset_settings, stage_run

__all__ = [
    "AFFINITY_OPTIONS",
    "AffinityTrainData",
    "AffinityTrainer",
    "affinity_loss",
    "augment_with_label",
    "classic_affinity_label",
    "labels_to_grid",
    "load_affinity_model",
    "make_affinity_labels",
    "pair_labels",
    "saliency_affinity_label",
    "train_affinity",
]

MODES = ("classic", "saliency")
LOG_EPS = 1e-5  # IRN's guard inside the logs


# --------------------------------------------------------------------------- labels
def _padded_argmax(cam: np.ndarray, background: float) -> np.ndarray:
    """argmax over [background constant, CAM maps] → 0 (background) or 1..K (ties: background)."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape[0] == 0:
        return np.zeros(cam.shape[1:], np.uint8)
    peak = cam.max(axis=0)
    return np.where(peak > background, cam.argmax(axis=0) + 1, 0).astype(np.uint8)


def _keys_with_background(keys: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.asarray(keys, dtype=np.int64).reshape(-1)]).astype(np.uint8)


def _maybe_crf(
    image: np.ndarray | None,
    seeds: np.ndarray,
    num_labels: int,
    crf: bool,
    params: CrfParams | None,
    source: str | os.PathLike | None,
) -> np.ndarray:
    if not crf:
        return seeds
    if image is None:
        raise WsssError(f"{source or 'affinity labels'}: the CRF needs the image")
    return crf_labels(image, seeds, num_labels=num_labels, params=params, ignore_index=None, source=source)


def _check_cam(cam: np.ndarray, keys: np.ndarray, source) -> tuple[np.ndarray, np.ndarray]:
    cam = np.asarray(cam, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if cam.ndim != 3 or cam.shape[0] != keys.size:
        raise WsssError(f"{source or 'affinity labels'}: cam {cam.shape} does not fit {keys.size} keys")
    if keys.size and (keys.min() < 1 or keys.max() >= IGNORE):
        raise WsssError(f"{source or 'affinity labels'}: class keys {keys.tolist()} outside 1..254")
    return cam, keys


def classic_affinity_label(
    cam: np.ndarray,
    keys: np.ndarray,
    image: np.ndarray | None = None,
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.05,
    crf: bool = True,
    crf_params: CrfParams | None = None,
    source: str | os.PathLike | None = None,
) -> np.ndarray:
    """AffinityNet/IRN labels (uint8 H×W: 0, class ids from ``keys``, 255) from a
    max-normalised CAM (len(keys)×H×W); ``image`` (uint8 RGB) is needed when ``crf``."""
    cam, keys = _check_cam(cam, keys, source)
    if not 0 <= bg_threshold <= fg_threshold:
        raise WsssError(f"{source or 'affinity labels'}: need 0 <= bg_threshold <= fg_threshold")
    classes = _keys_with_background(keys)
    n = classes.size
    fg = classes[_maybe_crf(image, _padded_argmax(cam, fg_threshold), n, crf, crf_params, source)]
    bg = classes[_maybe_crf(image, _padded_argmax(cam, bg_threshold), n, crf, crf_params, source)]
    label = fg.copy()
    label[fg == 0] = IGNORE
    label[(fg == 0) & (bg == 0)] = 0
    return label


def saliency_affinity_label(
    cam: np.ndarray,
    keys: np.ndarray,
    saliency: np.ndarray,
    image: np.ndarray | None = None,
    sal_threshold: float = 0.10,
    cam_threshold: float = 0.40,
    crf: bool = True,
    crf_params: CrfParams | None = None,
    source: str | os.PathLike | None = None,
) -> np.ndarray:
    """Seed 001's saliency-aware labels (see the module doc for conflicts); ``saliency``
    H×W in [0, 1]."""
    cam, keys = _check_cam(cam, keys, source)
    saliency = np.asarray(saliency)
    if saliency.shape != cam.shape[1:]:
        raise WsssError(
            f"{source or 'affinity labels'}: saliency {saliency.shape} does not match the CAM {cam.shape[1:]}"
        )
    salient = _maybe_crf(image, (saliency > sal_threshold).astype(np.uint8), 2, crf, crf_params, source)
    seeds = _padded_argmax(cam, cam_threshold) * salient.astype(np.uint8)
    classes = _keys_with_background(keys)
    fg = classes[_maybe_crf(image, seeds, classes.size, crf, crf_params, source)]
    return np.where(fg > 0, fg, np.where(salient > 0, IGNORE, 0)).astype(np.uint8)


_LABEL_KEYS = {
    "classic": ("mode", "fg_threshold", "bg_threshold", "crf", "crf_params"),
    "saliency": ("mode", "sal_threshold", "cam_threshold", "crf", "crf_params"),
}


def make_affinity_labels(
    dataset: Dataset,
    cam_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    mode: str = "classic",
    saliency_dir: str | os.PathLike | None = None,
    fg_threshold: float = 0.30,
    bg_threshold: float = 0.05,
    sal_threshold: float = 0.10,
    cam_threshold: float = 0.40,
    crf: bool = True,
    crf_params: CrfParams | None = None,
    ids: Sequence[str] | None = None,
    shard: str | tuple[int, int] | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Write affinity labels ``out_dir/<id>.png`` (0 bg, k class, 255 uncertain); resumes,
    pins its settings (``settings.json``) and records ``run.json`` (per shard)."""
    if mode not in MODES:
        raise WsssError(f"affinity label mode must be one of {MODES}, got {mode!r}")
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    if not cam_dir.is_dir():
        raise WsssError(f"{cam_dir}: CAM folder not found")
    if mode == "saliency":
        if saliency_dir is None:
            raise WsssError(f"{out_dir}: affinity label mode 'saliency' needs a saliency folder")
        if not Path(saliency_dir).is_dir():
            raise WsssError(f"{saliency_dir}: saliency folder not found")
    crf_params = crf_params if crf_params is not None else CrfParams()
    shard = parse_shard(shard)
    mine = shard_list(dataset.select_ids(ids), shard)
    config = {
        "mode": mode,
        "dataset": {"kind": dataset.kind, "root": str(dataset.root), "split": dataset.split},
        "cam_dir": str(cam_dir),
        "saliency_dir": None if saliency_dir is None else str(saliency_dir),
        "fg_threshold": float(fg_threshold),
        "bg_threshold": float(bg_threshold),
        "sal_threshold": float(sal_threshold),
        "cam_threshold": float(cam_threshold),
        "crf": bool(crf),
        "crf_params": crf_params.to_dict() if crf else None,
        "shard": list(shard),
    }
    with stage_run(
        out_dir,
        "affinity_labels",
        {**{k: config[k] for k in _LABEL_KEYS[mode]}, **dataset_settings(dataset)},
        {"cams": cam_dir, "saliency": saliency_dir},
        force=force,
        shard=shard,
    ) as run:
        start = time.perf_counter()
        todo = [i for i in mine if not (out_dir / f"{i}.png").is_file()]
        counts = np.zeros(3, dtype=np.int64)  # background, class, uncertain pixels written
        for image_id in tqdm(todo, desc=f"affinity labels ({mode})", unit="img", disable=not progress):
            shape = image_size(dataset.image_path(image_id))
            keys, cam = load_checked_cam(dataset, cam_dir, image_id, shape)
            image = dataset.image(image_id) if crf else None
            if mode == "classic":
                label = classic_affinity_label(
                    cam, keys, image, fg_threshold, bg_threshold, crf, crf_params, source=cam_dir / image_id
                )
            else:
                sal_path = Path(saliency_dir) / f"{image_id}.png"
                saliency = load_saliency(sal_path, shape=shape)
                label = saliency_affinity_label(
                    cam, keys, saliency, image, sal_threshold, cam_threshold, crf, crf_params, source=sal_path
                )
            save_label(out_dir / f"{image_id}.png", label)
            counts += [(label == 0).sum(), ((label > 0) & (label != IGNORE)).sum(), (label == IGNORE).sum()]
        if not todo:
            return out_dir  # nothing new: keep the record of the run that wrote these labels
        total = max(int(counts.sum()), 1)
        run.finish(
            config,
            timings={"total_s": round(time.perf_counter() - start, 3)},
            extra={
                "num_ids": len(mine),
                "written": len(todo),
                "fractions": {
                    "background": counts[0] / total,
                    "class": counts[1] / total,
                    "uncertain": counts[2] / total,
                },
            },
        )
    return out_dir


# --------------------------------------------------------------------------- pairs and loss
def labels_to_grid(label: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """A full-resolution label map (…×H×W) → the 1/4 grid of the edge map (…×⌈H/4⌉×⌈W/4⌉):
    the pixel at each cell's centre (nearest neighbour); cells past the border are 255."""
    height, width = label.shape[-2:]
    pad_h, pad_w = (-height) % EDGE_STRIDE, (-width) % EDGE_STRIDE
    centre = EDGE_STRIDE // 2
    if isinstance(label, torch.Tensor):
        padded = torch.nn.functional.pad(label, (0, pad_w, 0, pad_h), value=IGNORE)
    else:
        widths = [(0, 0)] * (label.ndim - 2) + [(0, pad_h), (0, pad_w)]
        padded = np.pad(label, widths, constant_values=IGNORE)
    return padded[..., centre::EDGE_STRIDE, centre::EDGE_STRIDE]


def pair_labels(grid: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bg_pos, fg_pos, neg) boolean masks ...×O×h'×w' over the pairs of :func:`path_affinity`
    for a label grid (...×h×w; 0 background, k class, 255 ignore)."""
    src = shifted(grid, 0, 0, radius)
    dst = torch.stack([shifted(grid, dy, dx, radius) for dy, dx in half_offsets(radius)], dim=-3)
    src = src.unsqueeze(-3)
    valid = (src != IGNORE) & (dst != IGNORE)
    same = (src == dst) & valid
    return same & (src == 0), same & (src != 0), valid & (src != dst)


def affinity_loss(
    affinity: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor
) -> dict[str, torch.Tensor]:
    """IRN's loss (module doc): ``loss = bg_pos/4 + fg_pos/4 + neg/2``, each term the mean
    over its own pairs (0 when it has none)."""
    affinity = affinity.float()
    pos_term = -torch.log(affinity + LOG_EPS)
    neg_term = -torch.log(1.0 + LOG_EPS - affinity)

    def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.to(values.dtype)
        return (values * mask).sum() / (mask.sum() + LOG_EPS)

    terms = {
        "bg_pos": masked_mean(pos_term, bg_pos),
        "fg_pos": masked_mean(pos_term, fg_pos),
        "neg": masked_mean(neg_term, neg),
    }
    total = terms["bg_pos"] / 4 + terms["fg_pos"] / 4 + terms["neg"] / 2
    return {"loss": total, **terms}


# --------------------------------------------------------------------------- data
def augment_with_label(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    crop_size: int,
    scale_range: tuple[float, float],
    hflip: bool,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """The CAM augmentation (same random draws: rescale → flip → crop/pad) applied to the
    image and, by nearest neighbour, to its label map; padding is 255 in the label.
    Returns (float32 3×S×S, uint8 S×S)."""
    size = _rescaled_size(image.shape, scale_range, rng)
    image = _resize(image, size)
    if size != label.shape:
        label = cv2.resize(label, (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    if hflip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    windows = _crop_windows(size[0], size[1], crop_size, rng)
    image = _apply_crop(normalize(image, mean, std), crop_size, windows)
    (src_y, dst_y, len_y), (src_x, dst_x, len_x) = windows
    cropped = np.full((crop_size, crop_size), IGNORE, dtype=np.uint8)
    cropped[dst_y : dst_y + len_y, dst_x : dst_x + len_x] = label[
        src_y : src_y + len_y, src_x : src_x + len_x
    ]
    return np.ascontiguousarray(image.transpose(2, 0, 1)), cropped


class AffinityTrainData(CamTrainData):
    """:class:`CamTrainData` plus ``"aff_label"``: the affinity label map (``label_dir/<id>.png``),
    augmented with the image and reduced to the 1/4 grid (int64 ⌈S/4⌉×⌈S/4⌉)."""

    def __init__(self, dataset: Dataset, label_dir: str | os.PathLike, *args: Any, **kwargs: Any):
        super().__init__(dataset, *args, **kwargs)
        self.label_dir = Path(label_dir)
        if not self.label_dir.is_dir():
            raise WsssError(f"{self.label_dir}: affinity label folder not found")
        for image_id in self.ids:  # fail before training, not in the middle of it
            path = self.label_dir / f"{image_id}.png"
            if not path.is_file():
                raise WsssError(f"{path}: affinity label not found (for image {image_id!r})")
            shape, expected = image_size(path), image_size(dataset.image_path(image_id))
            if shape != expected:
                raise WsssError(
                    f"{path}: size {shape[1]}×{shape[0]} does not match the image {expected[1]}×{expected[0]}"
                )

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor | int]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, epoch, index])
        image_id = self.ids[index]
        image = self.dataset.image(image_id)
        label = load_label(self.label_dir / f"{image_id}.png", self.dataset.num_classes, image.shape[:2])
        image, label = augment_with_label(
            image, label, rng, self.crop_size, self.scale_range, self.hflip, self.mean, self.std
        )
        return {
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(self.labels[index]),
            "aff_label": torch.from_numpy(np.ascontiguousarray(labels_to_grid(label)).astype(np.int64)),
            "index": index,
        }


# --------------------------------------------------------------------------- training
AFFINITY_OPTIONS: dict[str, Any] = {
    "radius": 10,  # pairs within this radius at 1/4 resolution (IRN)
    "freeze_backbone": False,  # IRN freezes its ImageNet backbone; from scratch it must learn
    "side_indices": [0, 1, 2, 3, 4],  # backbone stages feeding the edge head
}


class AffinityTrainer(CamTrainer):
    """Trains :class:`AffinityNet` on (image, affinity label) pairs with the CAM training base
    (data, optimiser, poly schedule, checkpoint/resume, DDP). ``method_options``: see
    :data:`AFFINITY_OPTIONS`. The head learns at ``lr × head_lr_mult``."""

    method_name = "affinity"
    stage_name = "affinity_train"

    def __init__(
        self,
        dataset: Dataset,
        label_dir: str | os.PathLike,
        out_dir: str | os.PathLike,
        config: CamTrainConfig,
        progress: bool = True,
    ):
        unknown = sorted(set(config.method_options) - set(AFFINITY_OPTIONS))
        if unknown:
            raise WsssError(
                f"method_options: unknown affinity option(s) {unknown}; known: {sorted(AFFINITY_OPTIONS)}"
            )
        self.options = {**AFFINITY_OPTIONS, **config.method_options}
        self.radius = int(self.options["radius"])
        grid = -(-config.crop_size // EDGE_STRIDE)
        if grid < 2 * self.radius - 1:  # no pair would fit in a crop: fail now, not at the first step
            raise WsssError(
                f"crop_size {config.crop_size}: too small for affinity radius {self.radius} "
                f"(the 1/4 grid needs >= {2 * self.radius - 1} cells, i.e. crop_size >= {EDGE_STRIDE * (2 * self.radius - 1)})"
            )
        self.label_dir = Path(label_dir)
        super().__init__(dataset, out_dir, config, progress)
        c = config
        self.data = AffinityTrainData(
            dataset, label_dir, c.crop_size, c.scale_range, c.hflip, c.mean, c.std, c.seed
        )

    def training_inputs(self) -> dict[str, Any]:
        return {**super().training_inputs(), "labels": self.label_dir}

    def build_models(self) -> None:
        c = self.config
        self.model = AffinityNet(
            c.backbone,
            c.pretrained,
            c.weights,
            c.output_stride,
            side_indices=tuple(self.options["side_indices"]),
            frozen_backbone=bool(self.options["freeze_backbone"]),
        )

    def param_groups(self) -> list[dict[str, Any]]:
        backbone, head = self.model.param_groups()
        c = self.config
        groups = [{"params": head, "lr": c.lr * c.head_lr_mult, "name": "head"}]
        if backbone:
            groups.insert(0, {"params": backbone, "lr": c.lr, "name": "backbone"})
        return groups

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        edge = torch.sigmoid(self.train_model(batch["image"]).float())[:, 0]
        grid = batch["aff_label"]
        if grid.shape[-2:] != edge.shape[-2:]:
            raise WsssError(
                f"{self.label_dir}: label grid {tuple(grid.shape)} ≠ edge map {tuple(edge.shape)}"
            )
        return affinity_loss(path_affinity(edge, self.radius), *pair_labels(grid, self.radius))

    def _identity(self) -> dict[str, Any]:
        return {**super()._identity(), "label_dir": str(self.label_dir.resolve())}

    def model_meta(self) -> dict[str, Any]:
        return {**super().model_meta(), "radius": self.radius, "label_dir": str(self.label_dir)}

    def save_final(self) -> None:
        if self.is_main:
            save_affinity_model(self.model, self.model_path, self.model_meta())


def train_affinity(
    dataset: Dataset,
    label_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: CamTrainConfig,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Train the affinity net into ``out_dir``; returns ``out_dir/model.safetensors`` (a
    finished run with the same settings and inputs is reused, an interrupted one resumes from
    its checkpoint, one with others is refused; ``force`` retrains)."""
    trainer = AffinityTrainer(dataset, label_dir, Path(out_dir), config, progress)
    trainer.force = force
    return trainer.train()
