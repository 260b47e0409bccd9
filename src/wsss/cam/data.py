"""Training data for CAM networks: augmentation and a rank-aware, resumable sampler.

All randomness is derived from (seed, epoch, index) rather than from a running RNG,
so a run resumed mid-epoch sees exactly the batches the uninterrupted run saw, and
the result does not depend on the number of DataLoader workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Sampler

from wsss.data.base import Dataset
from wsss.io import WsssError, check_saliency_file, image_size, load_saliency

_ORDER_STREAM, _AUGMENT_STREAM = 0, 1


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 H×W×3 → float32 H×W×3 standardised with ImageNet-style mean/std (0..1 scale)."""
    mean_255 = np.asarray(mean, np.float32) * 255.0
    std_255 = np.asarray(std, np.float32) * 255.0
    return (image.astype(np.float32) - mean_255) / std_255


def _rescaled_size(shape: tuple[int, ...], scale_range: tuple[float, float], rng: np.random.Generator):
    lo, hi = scale_range
    scale = rng.uniform(lo, hi)
    h, w = shape[:2]
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if size == image.shape[:2]:
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def long_side_size(shape: tuple[int, ...], long_side: int) -> tuple[int, int]:
    """(h, w) with the longer side scaled to ``long_side`` px (width when square), the other
    side rounded half to even, as IRN's ``random_resize_long``/``pil_rescale`` compute it."""
    h, w = shape[:2]
    scale = long_side / h if w < h else long_side / w
    return int(np.round(h * scale)), int(np.round(w * scale))


def pil_bicubic_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 H×W(×3) → ``size`` (h, w) with PIL's bicubic filter (what the reference
    repositories' augmentation uses; OpenCV's bicubic gives other pixels)."""
    if size == image.shape[:2]:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def color_jitter(
    image: np.ndarray, strengths: tuple[float, float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """torchvision's ``ColorJitter(brightness, contrast, saturation, hue)`` on a uint8 RGB image
    (the four adjustments in a random order, factors uniform in [1 − s, 1 + s], hue shift in
    [−h, h]), drawn from ``rng`` so that the sample stays a function of (seed, epoch, index)."""
    from PIL import Image
    from torchvision.transforms import functional as tvf

    brightness, contrast, saturation, hue = strengths
    order = rng.permutation(4)
    factors = [
        rng.uniform(max(0.0, 1.0 - brightness), 1.0 + brightness) if brightness else None,
        rng.uniform(max(0.0, 1.0 - contrast), 1.0 + contrast) if contrast else None,
        rng.uniform(max(0.0, 1.0 - saturation), 1.0 + saturation) if saturation else None,
        rng.uniform(-hue, hue) if hue else None,
    ]
    adjust = (tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation, tvf.adjust_hue)
    pil = Image.fromarray(np.ascontiguousarray(image))
    for i in order:
        if factors[i] is not None:
            pil = adjust[i](pil, float(factors[i]))
    return np.asarray(pil)


def random_rescale(
    image: np.ndarray, scale_range: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    return _resize(image, _rescaled_size(image.shape, scale_range, rng))


def _crop_windows(h: int, w: int, size: int, rng: np.random.Generator) -> tuple[tuple[int, int, int], ...]:
    """(src, dst, length) along y then x: a random crop along sides longer than ``size``,
    a random placement along shorter ones."""

    def window(n: int) -> tuple[int, int, int]:
        if n >= size:
            return int(rng.integers(0, n - size + 1)), 0, size
        return 0, int(rng.integers(0, size - n + 1)), n

    return window(h), window(w)


def _apply_crop(image: np.ndarray, size: int, windows: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    (src_y, dst_y, len_y), (src_x, dst_x, len_x) = windows
    out = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
    out[dst_y : dst_y + len_y, dst_x : dst_x + len_x] = image[src_y : src_y + len_y, src_x : src_x + len_x]
    return out


def random_crop_pad(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size×size window: a random crop along sides longer than ``size``, a random
    placement with zero padding (= the mean colour after normalisation) along shorter ones."""
    return _apply_crop(image, size, _crop_windows(image.shape[0], image.shape[1], size, rng))


def augment(
    image: np.ndarray,
    rng: np.random.Generator,
    crop_size: int,
    scale_range: tuple[float, float],
    hflip: bool,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """Random rescale → h-flip → normalise → crop/pad; returns float32 3×S×S."""
    return augment_with_saliency(image, None, rng, crop_size, scale_range, hflip, mean, std)[0]


def augment_with_saliency(
    image: np.ndarray,
    saliency: np.ndarray | None,
    rng: np.random.Generator,
    crop_size: int,
    scale_range: tuple[float, float],
    hflip: bool,
    mean: Sequence[float],
    std: Sequence[float],
    long_side_range: tuple[int, int] | None = None,
    jitter: tuple[float, float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`augment` with a saliency map (H×W in [0, 1]) taken through the very same
    rescale/flip/crop, so that saliency supervision stays aligned with the pixels; padding
    is non-salient (0). The random draws are those of :func:`augment`, saliency or not.

    ``long_side_range`` (lo, hi) replaces the rescale by ``scale_range``: the long side is
    drawn uniformly in lo..hi px (inclusive) and the image resized with PIL bicubic (IRN's
    ``resize_long``; the saliency map too, as EPS resizes it). ``jitter``: colour jitter
    strengths (:func:`color_jitter`) applied after the flip, to the image only."""
    if long_side_range is None:
        size = _rescaled_size(image.shape, scale_range, rng)
        image = _resize(image, size)
        if saliency is not None:
            saliency = _resize(saliency.astype(np.float32, copy=False), size)
    else:
        size = long_side_size(image.shape, int(rng.integers(long_side_range[0], long_side_range[1] + 1)))
        image = pil_bicubic_resize(image, size)
        if saliency is not None:
            saliency = np.clip(pil_bicubic_resize(saliency.astype(np.float32, copy=False), size), 0.0, 1.0)
    if hflip and rng.random() < 0.5:
        image = image[:, ::-1]
        saliency = saliency[:, ::-1] if saliency is not None else None
    if jitter is not None:
        image = color_jitter(image, jitter, rng)
    windows = _crop_windows(size[0], size[1], crop_size, rng)
    image = _apply_crop(normalize(image, mean, std), crop_size, windows)
    if saliency is not None:
        saliency = np.ascontiguousarray(_apply_crop(saliency, crop_size, windows)[None])
    return np.ascontiguousarray(image.transpose(2, 0, 1)), saliency


class CamTrainData(torch.utils.data.Dataset):
    """Indexed by ``(epoch, index)`` pairs from :class:`EpochSampler`; yields
    ``{"image": 3×S×S, "label": multi-hot C, "index": int}``, plus ``"saliency"``
    (1×S×S in [0, 1], augmented with the image) once :meth:`use_saliency` was called."""

    def __init__(
        self,
        dataset: Dataset,
        crop_size: int,
        scale_range: tuple[float, float],
        hflip: bool,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        long_side_range: tuple[int, int] | None = None,
        color_jitter: tuple[float, float, float, float] | None = None,
    ):
        """``long_side_range``: resize the long side into it (see :func:`augment_with_saliency`)
        instead of rescaling by ``scale_range``; ``color_jitter``: jitter strengths or None."""
        self.dataset = dataset
        self.ids = list(dataset.ids)
        self.labels = np.stack([dataset.label_vector(i) for i in self.ids]) if self.ids else np.zeros((0, 0))
        self.crop_size = crop_size
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = hflip
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.long_side_range = long_side_range
        self.color_jitter = color_jitter
        self.saliency_dir: Path | None = None

    def use_saliency(self, saliency_dir: str | os.PathLike) -> None:
        """Deliver ``<saliency_dir>/<id>.png`` with every sample; every map is checked now
        (present, readable header, single-channel grey, the image's size) so a bad one stops
        the run before training."""
        saliency_dir = Path(saliency_dir)
        for image_id in self.ids:
            path = saliency_dir / f"{image_id}.png"
            if not path.is_file():
                raise WsssError(f"{path}: saliency map not found (for image {image_id!r})")
            check_saliency_file(path, image_size(self.dataset.image_path(image_id)))
        self.saliency_dir = saliency_dir

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor | int]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, epoch, index])
        image_id = self.ids[index]
        image = self.dataset.image(image_id)
        saliency = None
        if self.saliency_dir is not None:
            saliency = load_saliency(self.saliency_dir / f"{image_id}.png", shape=image.shape[:2])
        image, saliency = augment_with_saliency(
            image,
            saliency,
            rng,
            self.crop_size,
            self.scale_range,
            self.hflip,
            self.mean,
            self.std,
            self.long_side_range,
            self.color_jitter,
        )
        sample = {
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(self.labels[index]),
            "index": index,
        }
        if saliency is not None:
            sample["saliency"] = torch.from_numpy(saliency)
        return sample


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)``: a (seed, epoch)-determined permutation, sharded by rank
    (padded by wrapping so every rank gets as many samples), trimmed to whole batches,
    minus the first ``skip_batches`` batches when resuming mid-epoch."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.skip_batches = 0

    @property
    def samples_per_rank(self) -> int:
        return -(-self.num_samples // self.world_size)

    @property
    def batches_per_epoch(self) -> int:
        return self.samples_per_rank // self.batch_size

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = epoch
        self.skip_batches = skip_batches

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's sample indices for ``epoch`` (whole batches, nothing skipped)."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, _ORDER_STREAM, epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        total = self.samples_per_rank * self.world_size
        order = np.resize(order, total)  # wraps around: the padding repeats the first samples
        mine = order[self.rank :: self.world_size]
        return mine[: self.batches_per_epoch * self.batch_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.epoch_indices(self.epoch)[self.skip_batches * self.batch_size :]
        return iter([(self.epoch, int(i)) for i in indices])

    def __len__(self) -> int:
        return max(0, (self.batches_per_epoch - self.skip_batches) * self.batch_size)


def worker_init(_worker_id: int) -> None:
    """Workers share the cores with the training process: OpenCV stays sequential (as
    ``import wsss`` sets it; a fresh interpreter under another start method needs it again)."""
    cv2.setNumThreads(0)
