"""Training data for CAM networks: augmentation and a rank-aware, resumable sampler.

All randomness is derived from (seed, epoch, index) rather than from a running RNG,
so a run resumed mid-epoch sees exactly the batches the uninterrupted run saw, and
the result does not depend on the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Sampler

from wsss.data.base import Dataset

_ORDER_STREAM, _AUGMENT_STREAM = 0, 1


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 H×W×3 → float32 H×W×3 standardised with ImageNet-style mean/std (0..1 scale)."""
    mean_255 = np.asarray(mean, np.float32) * 255.0
    std_255 = np.asarray(std, np.float32) * 255.0
    return (image.astype(np.float32) - mean_255) / std_255


def random_rescale(
    image: np.ndarray, scale_range: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    lo, hi = scale_range
    scale = rng.uniform(lo, hi)
    h, w = image.shape[:2]
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) == (h, w):
        return image
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def random_crop_pad(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size×size window: a random crop along sides longer than ``size``, a random
    placement with zero padding (= the mean colour after normalisation) along shorter ones."""
    h, w = image.shape[:2]
    out = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)

    def window(n: int) -> tuple[int, int, int]:
        if n >= size:
            return int(rng.integers(0, n - size + 1)), 0, size
        return 0, int(rng.integers(0, size - n + 1)), n

    src_y, dst_y, len_y = window(h)
    src_x, dst_x, len_x = window(w)
    out[dst_y : dst_y + len_y, dst_x : dst_x + len_x] = image[src_y : src_y + len_y, src_x : src_x + len_x]
    return out


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
    image = random_rescale(image, scale_range, rng)
    if hflip and rng.random() < 0.5:
        image = image[:, ::-1]
    image = random_crop_pad(normalize(image, mean, std), crop_size, rng)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


class CamTrainData(torch.utils.data.Dataset):
    """Indexed by ``(epoch, index)`` pairs from :class:`EpochSampler`; yields
    ``{"image": 3×S×S, "label": multi-hot C, "index": int}``."""

    def __init__(
        self,
        dataset: Dataset,
        crop_size: int,
        scale_range: tuple[float, float],
        hflip: bool,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
    ):
        self.dataset = dataset
        self.ids = list(dataset.ids)
        self.labels = np.stack([dataset.label_vector(i) for i in self.ids]) if self.ids else np.zeros((0, 0))
        self.crop_size = crop_size
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = hflip
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor | int]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, epoch, index])
        image = self.dataset.image(self.ids[index])
        image = augment(image, rng, self.crop_size, self.scale_range, self.hflip, self.mean, self.std)
        return {
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(self.labels[index]),
            "index": index,
        }


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
    """Workers share the 2-ish cores with the training process: keep OpenCV single-threaded."""
    cv2.setNumThreads(1)
