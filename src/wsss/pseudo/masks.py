"""Class-agnostic masks for SEPL (docs/methods.md §3): the file format, the generators, the stage.

SEPL only needs, per image, a set of overlapping binary masks; which model drew them is a
choice, so a generator is a named, registered class like the saliency sources:

* ``sam`` — segment-anything's automatic mask generator with your checkpoint
  (``pip install wsss[sam]``); GPU when there is one.
* ``sam2`` — SAM 2's automatic mask generator, when Meta's ``sam2`` package is installed.
* ``felzenszwalb`` / ``slic`` — multi-scale region proposals: every segment of every scale
  is a mask, so the masks nest and overlap like SAM's parts and wholes. Training-free,
  runs anywhere; the default.
* ``gt-instances`` — one mask per ground-truth instance: an "ideal SAM" upper bound.

File format, one ``<id>.npz`` per image (``np.savez_compressed``, no pickles)::

    shape   int64 (3,)                 N, H, W
    packed  uint8 (N, ceil(H*W / 8))   np.packbits(masks.reshape(N, H*W), axis=1)
    areas   int64 (N,)                 pixels per mask
    scores  float32 (N,)               optional: the generator's confidence (SAM's predicted IoU)

Each mask is packed on its own along the row-major pixel axis (numpy's default big-endian
bit order; the last byte is zero-padded), so ``np.unpackbits(packed, axis=1,
count=H*W).reshape(N, H, W)`` restores them; N = 0 is valid. Packing keeps a few hundred
full-resolution masks in well under a megabyte.
"""

from __future__ import annotations

import abc
import hashlib
import io as _io
import os
import pickle
import time
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wsss.config import merge_options
from wsss.data.base import Dataset
from wsss.io import (
    IGNORE,
    WsssError,
    atomic_write_bytes,
    file_digest,
    image_size,
    parse_shard,
    shard_list,
)
from wsss.stage import dataset_settings, stage_run

__all__ = [
    "MASK_GENERATORS",
    "FelzenszwalbGenerator",
    "GtInstancesGenerator",
    "ImageMaskGenerator",
    "MaskGenerator",
    "Sam2Generator",
    "SamGenerator",
    "SlicGenerator",
    "build_mask_generator",
    "generate_masks",
    "load_mask_scores",
    "load_masks",
    "register_mask_generator",
    "save_masks",
    "segments_to_masks",
]


# --------------------------------------------------------------------------- file format
def save_masks(path: str | os.PathLike, masks: np.ndarray, scores: np.ndarray | None = None) -> None:
    """Write N×H×W boolean masks (and optional per-mask scores) as a packed ``.npz``."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be N×H×W, got shape {masks.shape}")
    masks = masks.astype(bool, copy=False)
    n, h, w = masks.shape
    flat = masks.reshape(n, h * w)
    arrays = {
        "shape": np.array([n, h, w], dtype=np.int64),
        "packed": np.packbits(flat, axis=1),
        "areas": np.count_nonzero(flat, axis=1).astype(np.int64),
    }
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if scores.size != n:
            raise ValueError(f"{scores.size} scores given for {n} masks")
        arrays["scores"] = scores
    buf = _io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _read_mask_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise WsssError(f"{path}: mask file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError) as e:
        raise WsssError(f"{path}: cannot read mask file ({e})") from None
    missing = sorted({"shape", "packed"} - set(arrays))
    if missing:
        raise WsssError(f"{path}: expected arrays 'shape' and 'packed', missing {missing}")
    return arrays


def load_masks(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean N×H×W masks from :func:`save_masks`'s file; ``shape`` (H, W) must match if given."""
    path = Path(path)
    arrays = _read_mask_arrays(path)
    dims = arrays["shape"]
    if dims.shape != (3,) or dims.dtype.kind not in "iu" or (dims < 0).any():
        raise WsssError(f"{path}: 'shape' must be three non-negative integers N, H, W, got {dims.tolist()}")
    n, h, w = (int(x) for x in dims)
    packed = arrays["packed"]
    row_bytes = (h * w + 7) // 8
    if packed.dtype != np.uint8 or packed.shape != (n, row_bytes):
        raise WsssError(
            f"{path}: 'packed' has shape {packed.shape} ({packed.dtype}); "
            f"{n} masks of {w}×{h} need uint8 ({n}, {row_bytes})"
        )
    if shape is not None and (h, w) != tuple(shape):
        raise WsssError(f"{path}: masks are {w}×{h} but the image is {shape[1]}×{shape[0]}")
    masks = np.unpackbits(packed, axis=1, count=h * w).reshape(n, h, w).astype(bool)
    if "areas" in arrays:
        areas = arrays["areas"]
        if areas.shape != (n,) or not np.array_equal(areas, masks.reshape(n, h * w).sum(axis=1)):
            raise WsssError(f"{path}: 'areas' do not match the masks (corrupt file)")
    if "scores" in arrays and arrays["scores"].shape != (n,):
        raise WsssError(f"{path}: 'scores' has shape {arrays['scores'].shape}, expected ({n},)")
    return masks


def load_mask_scores(path: str | os.PathLike) -> np.ndarray | None:
    """The per-mask scores float32 (N,) of a mask file, or None when the generator gave none."""
    path = Path(path)
    arrays = _read_mask_arrays(path)
    if "scores" not in arrays:
        return None
    scores = arrays["scores"]
    n = int(arrays["shape"].reshape(-1)[0]) if arrays["shape"].size else -1
    if scores.shape != (n,):
        raise WsssError(f"{path}: 'scores' has shape {scores.shape}, expected ({n},)")
    return scores.astype(np.float32)


# --------------------------------------------------------------------------- helpers
def segments_to_masks(segments: np.ndarray, min_area: int = 1) -> np.ndarray:
    """One boolean mask per segment id of an integer H×W map (ids >= 0), dropping segments
    smaller than ``min_area`` pixels."""
    segments = np.asarray(segments)
    ids = np.flatnonzero(np.bincount(segments.reshape(-1)) >= max(1, min_area))
    return segments[None] == ids[:, None, None]


def _unique_masks(masks: np.ndarray, scores: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Drop empty masks and exact duplicates (a segment that survives several scales), keeping
    the first occurrence so the order stays that of the generator."""
    n, h, w = masks.shape
    keep = masks.reshape(n, h * w).any(axis=1)
    masks = masks[keep]
    scores = None if scores is None else scores[keep]
    if masks.shape[0] < 2:
        return masks, scores
    packed = np.packbits(masks.reshape(masks.shape[0], h * w), axis=1)
    first = np.sort(np.unique(packed, axis=0, return_index=True)[1])
    return masks[first], None if scores is None else scores[first]


def _area_pixels(fraction: float, shape: tuple[int, ...]) -> int:
    return max(1, round(fraction * shape[0] * shape[1]))


# --------------------------------------------------------------------------- generators
MASK_GENERATORS: dict[str, type[MaskGenerator]] = {}


def register_mask_generator(name: str) -> Callable[[type[MaskGenerator]], type[MaskGenerator]]:
    def deco(cls: type[MaskGenerator]) -> type[MaskGenerator]:
        if name in MASK_GENERATORS:
            raise ValueError(f"mask generator {name!r} registered twice")
        cls.generator_name = name
        MASK_GENERATORS[name] = cls
        return cls

    return deco


class MaskGenerator(abc.ABC):
    """``option_defaults`` lists the generator's options (an unknown key is an error; each
    generator checks its values in :meth:`validate`); :attr:`options` holds them merged
    with the user's values."""

    generator_name = "base"
    option_defaults: dict[str, Any] = {}
    #: what the masks are, for run records
    description = ""

    def __init__(self, **options: Any):
        self.options = merge_options(self.option_defaults, options, f"mask generator {self.generator_name!r}")
        self.validate()

    def validate(self) -> None:  # noqa: B027  (optional hook)
        """Check :attr:`options`; raise :class:`WsssError` naming the bad one."""

    def _fail(self, message: str) -> WsssError:
        return WsssError(f"mask generator {self.generator_name!r}: {message}")

    @abc.abstractmethod
    def generate(self, dataset: Dataset, image_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(bool N×H×W masks at the image's size, float32 (N,) scores or None)."""

    def settings(self) -> dict[str, Any]:
        """What determines every mask file (pinned in ``settings.json``)."""
        return {"generator": self.generator_name, "options": self.options}


class ImageMaskGenerator(MaskGenerator):
    """A generator that only looks at the pixels (everything but ``gt-instances``)."""

    def generate(self, dataset: Dataset, image_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        return self.from_image(dataset.image(image_id))

    @abc.abstractmethod
    def from_image(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Masks of an RGB uint8 H×W×3 image."""


def build_mask_generator(name: str, **options: Any) -> MaskGenerator:
    if name not in MASK_GENERATORS:
        raise WsssError(f"unknown mask generator {name!r}; known: {', '.join(sorted(MASK_GENERATORS))}")
    return MASK_GENERATORS[name](**options)


def _positive_numbers(gen: MaskGenerator, key: str, integer: bool = False) -> list:
    values = gen.options[key]
    values = [values] if isinstance(values, int | float) else list(values)
    cast = int if integer else float
    try:
        values = [cast(v) for v in values]
    except (TypeError, ValueError):
        raise gen._fail(f"{key} must be a list of numbers, got {gen.options[key]!r}") from None
    if not values or min(values) <= 0:
        raise gen._fail(f"{key} must be a non-empty list of positive numbers, got {values}")
    return values


def _fraction(gen: MaskGenerator, key: str) -> float:
    value = float(gen.options[key])
    if not 0.0 <= value < 1.0:
        raise gen._fail(f"{key} is a fraction of the image area in [0, 1), got {value}")
    return value


@register_mask_generator("felzenszwalb")
class FelzenszwalbGenerator(ImageMaskGenerator):
    """Felzenszwalb–Huttenlocher graph segmentation at several scales; a larger ``scale``
    merges more, so the scales give parts and wholes. ``min_area`` (a fraction of the image)
    is both the algorithm's minimum component size and the smallest mask kept."""

    description = "multi-scale Felzenszwalb segments (skimage), no training"
    option_defaults = {"scales": [100.0, 300.0, 1000.0], "sigma": 0.8, "min_area": 0.002}

    def validate(self) -> None:
        self.options["scales"] = _positive_numbers(self, "scales")
        self.options["sigma"] = float(self.options["sigma"])
        if self.options["sigma"] < 0:
            raise self._fail(f"sigma must be >= 0, got {self.options['sigma']}")
        self.options["min_area"] = _fraction(self, "min_area")

    def from_image(self, image: np.ndarray) -> tuple[np.ndarray, None]:
        from skimage.segmentation import felzenszwalb

        min_area = _area_pixels(self.options["min_area"], image.shape)
        masks = [
            segments_to_masks(
                felzenszwalb(image, scale=s, sigma=self.options["sigma"], min_size=min_area, channel_axis=-1),
                min_area,
            )
            for s in self.options["scales"]
        ]
        return _unique_masks(np.concatenate(masks), None)


@register_mask_generator("slic")
class SlicGenerator(ImageMaskGenerator):
    """SLIC superpixels at several ``n_segments``: coarse levels give object-sized regions,
    fine levels the parts."""

    description = "multi-scale SLIC superpixels (skimage), no training"
    option_defaults = {"n_segments": [16, 64, 256], "compactness": 10.0, "sigma": 1.0, "min_area": 0.002}

    def validate(self) -> None:
        self.options["n_segments"] = _positive_numbers(self, "n_segments", integer=True)
        self.options["compactness"] = float(self.options["compactness"])
        self.options["sigma"] = float(self.options["sigma"])
        if self.options["compactness"] <= 0 or self.options["sigma"] < 0:
            raise self._fail(
                f"need compactness > 0 and sigma >= 0, got {self.options['compactness']}, "
                f"{self.options['sigma']}"
            )
        self.options["min_area"] = _fraction(self, "min_area")

    def from_image(self, image: np.ndarray) -> tuple[np.ndarray, None]:
        from skimage.segmentation import slic

        min_area = _area_pixels(self.options["min_area"], image.shape)
        masks = [
            segments_to_masks(
                slic(
                    image,
                    n_segments=n,
                    compactness=self.options["compactness"],
                    sigma=self.options["sigma"],
                    start_label=0,
                    channel_axis=-1,
                ),
                min_area,
            )
            for n in self.options["n_segments"]
        ]
        return _unique_masks(np.concatenate(masks), None)


@register_mask_generator("gt-instances")
class GtInstancesGenerator(MaskGenerator):
    """One mask per ground-truth instance (``SegmentationObject``): what a perfect
    object-level SAM would return, to bound what SEPL can gain."""

    description = "ground-truth instance masks (upper bound, needs the instance maps)"

    def generate(self, dataset: Dataset, image_id: str) -> tuple[np.ndarray, None]:
        instances = dataset.instances(image_id)
        if instances is None:
            where = dataset.instance_path(image_id) or dataset.root
            raise WsssError(
                f"{where}: no instance map for image {image_id!r}; "
                "the gt-instances generator needs the dataset's instance maps"
            )
        ids = np.unique(instances)
        ids = ids[(ids != 0) & (ids != IGNORE)]
        return instances[None] == ids[:, None, None], None


# --------------------------------------------------------------------------- SAM / SAM 2
#: options of segment-anything's automatic mask generator (docs/methods.md §3 defaults)
AMG_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "crop_n_layers": 0,
    "crop_nms_thresh": 0.7,
    "crop_n_points_downscale_factor": 1,
    "min_mask_region_area": 0,
}
_AMG_INTS = ("points_per_side", "points_per_batch", "crop_n_layers", "crop_n_points_downscale_factor")
_AMG_UNIT = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh")


class _AutomaticMaskGenerator(ImageMaskGenerator):
    """What SAM and SAM 2 share: the generator options, lazy model loading, the device, and
    turning the generator's records into masks + predicted-IoU scores."""

    def __init__(self, *, model: Any = None, **options: Any):
        self._model = model
        self._amg: Any = None
        self._model_digest: str | None = None
        super().__init__(**options)

    @classmethod
    def from_model(cls, model: Any, **options: Any) -> _AutomaticMaskGenerator:
        """Wrap an already-built model (no checkpoint needed), e.g. one made in a test."""
        return cls(model=model, **options)

    def _check_amg_options(self) -> None:
        for key in _AMG_INTS + ("min_mask_region_area",):
            value = self.options[key]
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise self._fail(f"{key} must be an integer, got {value!r}")
        if self.options["points_per_side"] < 1 or self.options["points_per_batch"] < 1:
            raise self._fail("points_per_side and points_per_batch must be >= 1")
        if self.options["crop_n_layers"] < 0 or self.options["min_mask_region_area"] < 0:
            raise self._fail("crop_n_layers and min_mask_region_area must be >= 0")
        for key in _AMG_UNIT:
            if not 0.0 <= float(self.options[key]) <= 1.0:
                raise self._fail(f"{key} must be in [0, 1], got {self.options[key]}")

    def _check_checkpoint(self) -> None:
        checkpoint = self.options["checkpoint"]
        if checkpoint is None:
            raise self._fail("needs a model checkpoint (--checkpoint PATH)")
        if not Path(checkpoint).is_file():
            raise WsssError(f"{checkpoint}: {self.generator_name} checkpoint not found")

    def _device(self) -> Any:
        from wsss.models.cam_net import resolve_device

        return resolve_device(self.options["device"])

    @abc.abstractmethod
    def _build(self) -> Any:
        """The upstream automatic mask generator (loads the model on first use)."""

    def from_image(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._amg is None:
            self._amg = self._build()
        records = self._amg.generate(np.ascontiguousarray(image, dtype=np.uint8))
        height, width = image.shape[:2]
        if not records:
            return np.zeros((0, height, width), bool), np.zeros(0, np.float32)
        masks = np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records])
        scores = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
        return _unique_masks(masks, scores)

    def settings(self) -> dict[str, Any]:
        # the device changes nothing but speed, and the digest identifies the weights wherever the
        # checkpoint lies, so a run may resume on another device or after the file moved
        options = {k: v for k, v in self.options.items() if k not in ("device", "checkpoint")}
        if self._model is not None:
            return {"generator": self.generator_name, "options": options, "model_sha256": self._digest()}
        return {
            "generator": self.generator_name,
            "options": options,
            "checkpoint_sha256": file_digest(self.options["checkpoint"]),
        }

    def _digest(self) -> str:
        """Identifies an in-memory model by its weights, as the checkpoint digest does."""
        if self._model_digest is None:
            import torch

            h = hashlib.sha256()
            for name, tensor in sorted(self._model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
            self._model_digest = h.hexdigest()
        return self._model_digest

    def _amg_kwargs(self) -> dict[str, Any]:
        return {k: self.options[k] for k in AMG_DEFAULTS}


@register_mask_generator("sam")
class SamGenerator(_AutomaticMaskGenerator):
    """segment-anything's ``SamAutomaticMaskGenerator`` (seed 003 uses ViT-H)."""

    description = "Segment Anything automatic masks (segment-anything)"
    option_defaults = {"checkpoint": None, "model_type": "vit_h", "device": None, **AMG_DEFAULTS}
    MODEL_TYPES = ("vit_h", "vit_l", "vit_b")

    def validate(self) -> None:
        self._check_amg_options()
        if self._model is not None:
            return
        _import_segment_anything()
        if self.options["model_type"] not in self.MODEL_TYPES:
            raise self._fail(
                f"model_type must be one of {list(self.MODEL_TYPES)}, got {self.options['model_type']!r}"
            )
        self._check_checkpoint()

    def _build(self) -> Any:
        sam = _import_segment_anything()
        model = self._model
        if model is None:
            checkpoint, model_type = self.options["checkpoint"], self.options["model_type"]
            try:
                model = sam.sam_model_registry[model_type](checkpoint=checkpoint)
            except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as e:
                raise WsssError(f"{checkpoint}: cannot load as a SAM {model_type} checkpoint ({e})") from None
        model.to(self._device()).eval()
        return sam.SamAutomaticMaskGenerator(model, output_mode="binary_mask", **self._amg_kwargs())


def _import_segment_anything() -> Any:
    try:
        import segment_anything
    except ImportError:
        raise WsssError(
            "mask generator 'sam': segment-anything is not installed; "
            "run `pip install wsss[sam]` (or `pip install segment-anything`)"
        ) from None
    return segment_anything


@register_mask_generator("sam2")
class Sam2Generator(_AutomaticMaskGenerator):
    """SAM 2's ``SAM2AutomaticMaskGenerator``; ``config`` names the model's Hydra config
    inside the sam2 package (e.g. ``configs/sam2.1/sam2.1_hiera_l.yaml``)."""

    description = "Segment Anything 2 automatic masks (sam2)"
    option_defaults = {
        "checkpoint": None,
        "config": "configs/sam2.1/sam2.1_hiera_l.yaml",
        "device": None,
        **AMG_DEFAULTS,
    }

    def validate(self) -> None:
        self._check_amg_options()
        if self._model is not None:
            return
        _import_sam2()
        self._check_checkpoint()

    def _build(self) -> Any:
        _import_sam2()
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.build_sam import build_sam2

        model = self._model
        device = self._device()
        if model is None:
            checkpoint = self.options["checkpoint"]
            try:
                model = build_sam2(self.options["config"], checkpoint, device=str(device))
            except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as e:
                raise WsssError(
                    f"{checkpoint}: cannot load as a SAM 2 checkpoint with config {self.options['config']} ({e})"
                ) from None
        model.to(device).eval()
        return SAM2AutomaticMaskGenerator(model, output_mode="binary_mask", **self._amg_kwargs())


def _import_sam2() -> Any:
    try:
        import sam2
    except ImportError:
        raise WsssError(
            "mask generator 'sam2': the optional sam2 package (Meta's SAM 2) is not installed; "
            "install it (`pip install sam2`) or use the 'sam' generator"
        ) from None
    return sam2


# --------------------------------------------------------------------------- the stage
def generate_masks(
    generator: MaskGenerator,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    ids: Sequence[str] | None = None,
    shard: tuple[int, int] | str | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Write ``out_dir/<id>.npz`` for ``ids`` (default: the whole split), skipping existing
    files (resume). ``shard`` "i/N" takes every N-th id (default: RANK/WORLD_SIZE), so
    several GPUs or a Slurm array split the work. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    all_ids = dataset.select_ids(ids)
    shard = parse_shard(shard)
    mine = shard_list(all_ids, shard)
    settings = {**generator.settings(), **dataset_settings(dataset)}
    with stage_run(out_dir, "masks", settings, {}, force=force, shard=shard) as run:
        todo = [i for i in mine if not (out_dir / f"{i}.npz").is_file()]
        counts = []
        start = time.perf_counter()
        for image_id in tqdm(
            todo, desc=f"masks {generator.generator_name}", unit="img", disable=not progress
        ):
            masks, scores = generator.generate(dataset, image_id)
            expected = image_size(dataset.image_path(image_id))
            if masks.ndim != 3 or masks.shape[1:] != expected:
                raise WsssError(
                    f"{dataset.image_path(image_id)}: mask generator {generator.generator_name!r} returned "
                    f"masks of shape {masks.shape} for an image of {expected[1]}×{expected[0]}"
                )
            save_masks(out_dir / f"{image_id}.npz", masks, scores)
            counts.append(masks.shape[0])
        elapsed = time.perf_counter() - start
        if todo:
            run.finish(
                {**settings, "shard": list(shard)},
                timings={"masks_s": round(elapsed, 2)},
                extra={
                    "description": generator.description,
                    "dataset": {"kind": dataset.kind, "root": str(dataset.root), "split": dataset.split},
                    "num_ids": len(mine),
                    "written": len(todo),
                    "seconds_per_image": round(elapsed / len(todo), 4),
                    "masks_per_image": {
                        "mean": round(float(np.mean(counts)), 2),
                        "min": int(np.min(counts)),
                        "max": int(np.max(counts)),
                    },
                },
            )
    return out_dir
