"""``wsss convert``: move CAMs between this toolkit and the repositories whose CAM files
it reads, writing each layout as that repository's own inference writes it.

| format | files | ``keys`` | maps |
|---|---|---|---|
| ``wsss`` | ``<id>.npz`` | int64, 1-based class ids | ``cam`` float16 k×H×W |
| ``irn`` | ``<id>.npy`` (pickled dict) | torch int64 tensor, 0-based class indices | ``high_res`` float32 ndarray k×H×W; ``cam`` float32 tensor at stride 4 |
| ``puzzlecam`` (also P-NOC) | ``<id>.npy`` (pickled dict) | int64 ndarray ``[0, id₁, …]`` (``np.pad(index + 1, (1, 0))``) | ``hr_cam`` float32 ndarray k×H×W, no background map; ``cam`` float32 tensor at stride 4 |
| ``wsss-bed`` | ``<id>_<c>.png`` per class | ``c`` = 0-based class index | 8-bit grey, ``round(255·v)`` (half to even, as OpenCV's float → uint8) |

The strided ``cam`` that IRN, PuzzleCAM and P-NOC also store (their random walk starts
from it) is made here from the full-resolution maps (:func:`strided_cam`): resampled
bilinearly to the strided size ``((H−1)//4+1, (W−1)//4+1)`` on the grid their writers
upsample on, and divided by its maximum + 1e-5 per class, as they normalise it. Their own
strided map is interpolated from the network output directly, so the two agree up to
interpolation error.
"""

from __future__ import annotations

import io as _io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsss.io import (
    CAM_LAYOUTS,
    WsssError,
    atomic_write_bytes,
    image_size,
    load_cam,
    save_cam,
)

FORMATS = CAM_LAYOUTS  # ("wsss", "irn", "puzzlecam", "wsss-bed")
_ALIASES = {"npz": "wsss", "p-noc": "puzzlecam", "pnoc": "puzzlecam", "puzzle-cam": "puzzlecam",
            "bed": "wsss-bed", "wsss_bed": "wsss-bed"}  # fmt: skip
_BED_NAME = re.compile(r"^(?P<id>.+)_(?P<c>[0-9]+)\.png$")


def cam_format(name: str, flag: str = "--format", allow_auto: bool = False) -> str:
    """A format name (or alias) → one of :data:`FORMATS` (or ``auto``); anything else is an error."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in FORMATS or (allow_auto and key == "auto"):
        return key
    known = ", ".join((*FORMATS, *(("auto",) if allow_auto else ())))
    raise WsssError(f"{flag} {name}: unknown CAM format; known: {known} (p-noc = puzzlecam)")


# --------------------------------------------------------------------------- file names
def cam_ids(cam_dir: str | os.PathLike, fmt: str) -> list[str]:
    """The image ids that have a CAM in ``cam_dir`` in format ``fmt`` (``auto``: any), sorted."""
    cam_dir = Path(cam_dir)
    ids: set[str] = set()
    for p in cam_dir.iterdir():
        if not p.is_file() or p.name.startswith("."):
            continue
        if fmt in ("wsss", "auto") and p.suffix == ".npz":
            ids.add(p.stem)
        elif fmt in ("irn", "puzzlecam", "auto") and p.suffix == ".npy":
            ids.add(p.stem)
        elif fmt in ("wsss-bed", "auto") and (m := _BED_NAME.match(p.name)) and m["c"].isascii():
            ids.add(m["id"])
    return sorted(ids)


def cam_source(cam_dir: str | os.PathLike, image_id: str, fmt: str) -> Path:
    """The path :func:`wsss.io.load_cam` reads for ``image_id`` in format ``fmt``."""
    cam_dir = Path(cam_dir)
    if fmt == "auto":
        from wsss.io import find_cam

        return find_cam(cam_dir, image_id)
    if fmt == "wsss":
        return cam_dir / f"{image_id}.npz"
    if fmt in ("irn", "puzzlecam"):
        return cam_dir / f"{image_id}.npy"
    return cam_dir / image_id  # WSSS-BED: the <id> stem of <id>_<c>.png


def output_paths(out_dir: str | os.PathLike, image_id: str, fmt: str, keys: np.ndarray) -> list[Path]:
    """The files :func:`write_cam` makes for ``image_id`` with 1-based class ids ``keys``."""
    out_dir = Path(out_dir)
    if fmt == "wsss":
        return [out_dir / f"{image_id}.npz"]
    if fmt in ("irn", "puzzlecam"):
        return [out_dir / f"{image_id}.npy"]
    return [out_dir / f"{image_id}_{int(k) - 1}.png" for k in keys]


# --------------------------------------------------------------------------- readers / writers
def read_cam(
    cam_dir: str | os.PathLike,
    image_id: str,
    fmt: str,
    shape: tuple[int, int] | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(1-based keys, float32 maps) of ``image_id`` read as format ``fmt`` (its key convention forced)."""
    path = cam_source(cam_dir, image_id, fmt)
    return load_cam(path, shape=shape, num_classes=num_classes, layout="auto" if fmt == "auto" else fmt)


def strided_size(shape: tuple[int, int], stride: int = 4) -> tuple[int, int]:
    """IRN / PuzzleCAM / P-NOC's strided CAM size: ``((H−1)//stride+1, (W−1)//stride+1)``."""
    return (shape[0] - 1) // stride + 1, (shape[1] - 1) // stride + 1


def strided_cam(cam: np.ndarray, stride: int = 4, up_stride: int = 16) -> Any:
    """The stride-4 map stack those repositories store as ``cam`` (a float32 CPU tensor).

    Their writers upsample the network output bilinearly to the strided size and to the
    16-strided "up" size ``16·((H−1)//16+1)`` (then cropped to H×W: the full-resolution
    maps), and divide each by its per-class maximum + 1e-5. Padding the full-resolution
    maps back to the up size (edge repeated) and resampling that bilinearly to the strided
    size reads them at the points of the network output that the strided map was
    interpolated at, so this recovers their strided maps up to interpolation error.
    """
    import torch
    import torch.nn.functional as F

    k, h, w = cam.shape
    hs, ws = strided_size((h, w), stride)
    if k == 0:
        return torch.zeros((0, hs, ws), dtype=torch.float32)
    hu, wu = (d * up_stride for d in strided_size((h, w), up_stride))
    maps = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None]
    maps = F.pad(maps, (0, wu - w, 0, hu - h), mode="replicate")
    small = F.interpolate(maps, size=(hs, ws), mode="bilinear", align_corners=False)[0]
    return small / (F.adaptive_max_pool2d(small, (1, 1)) + 1e-5)


def _npy_bytes(obj: dict) -> bytes:
    buf = _io.BytesIO()
    np.save(buf, obj, allow_pickle=True)  # a 0-d object array holding the dict, as np.save(path, dict) writes
    return buf.getvalue()


def quantise_8bit(m: np.ndarray) -> np.ndarray:
    """``v`` in [0, 1] → uint8 ``round(255·v)``, halves to even and clipped, as OpenCV's
    ``imwrite`` stores the float array ``255·v`` that WSSS-BED passes it."""
    return np.clip(np.rint(np.asarray(m, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def write_cam(
    out_dir: str | os.PathLike, image_id: str, fmt: str, keys: np.ndarray, cam: np.ndarray
) -> list[Path]:
    """Write ``image_id``'s CAM (1-based ``keys``, float maps in [0, 1]) in format ``fmt``."""
    import torch

    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    cam = np.asarray(cam, dtype=np.float32)
    paths = output_paths(out_dir, image_id, fmt, keys)
    if fmt == "wsss":
        save_cam(paths[0], keys, cam)
    elif fmt == "irn":
        # IRN step/make_cam.py: keys = torch.nonzero(label)[:, 0] (0-based), cam = strided tensor,
        # high_res = numpy float32, one map per key
        obj = {"keys": torch.from_numpy(keys - 1), "cam": strided_cam(cam), "high_res": cam}
        atomic_write_bytes(paths[0], _npy_bytes(obj))
    elif fmt == "puzzlecam":
        # PuzzleCAM inference_classification.py / P-NOC scripts/cam/inference.py: keys padded with
        # the background's 0 in front of the 1-based ids; hr_cam has no background map
        obj = {"keys": np.pad(keys, (1, 0)), "cam": strided_cam(cam), "hr_cam": cam}
        atomic_write_bytes(paths[0], _npy_bytes(obj))
    elif fmt == "wsss-bed":
        for p, m in zip(paths, cam, strict=True):
            buf = _io.BytesIO()
            Image.fromarray(quantise_8bit(m), "L").save(buf, format="PNG")
            atomic_write_bytes(p, buf.getvalue())
    else:
        raise ValueError(f"unknown CAM format {fmt!r}")
    return paths


# --------------------------------------------------------------------------- the stage
def convert_cams(
    cam_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    from_format: str,
    to_format: str,
    dataset=None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Convert every CAM of ``cam_dir`` (or, with ``dataset``, of its split's images) from
    ``from_format`` to ``to_format`` into ``out_dir``.

    With a dataset each CAM must have the image's size and exactly its image-level classes
    (a class shifted by a wrong key convention stops the run naming the file). Resumes:
    an image whose output files all exist is skipped (the stage contract of :mod:`wsss.stage`).
    """
    from wsss.stage import dataset_settings, stage_run

    from_format = cam_format(from_format, "--from-format", allow_auto=True)
    to_format = cam_format(to_format, "--to-format")
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    if not cam_dir.is_dir():
        raise WsssError(f"{cam_dir}: CAM folder not found")
    if dataset is not None:
        ids = list(dataset.ids)
    else:
        ids = cam_ids(cam_dir, from_format)
        if not ids:
            raise WsssError(f"{cam_dir}: no CAM files in the {from_format} format")
    settings = {"from_format": from_format, "to_format": to_format}
    if dataset is not None:
        settings.update(dataset_settings(dataset))
    written = skipped = empty = 0
    with stage_run(out_dir, "convert", settings, {"cams": cam_dir}, force=force) as run:
        for image_id in tqdm(ids, desc="convert CAMs", unit="img", disable=not progress):
            shape = num_classes = None
            if dataset is not None:
                shape, num_classes = image_size(dataset.image_path(image_id)), dataset.num_classes
            keys, cam = read_cam(cam_dir, image_id, from_format, shape, num_classes)
            if dataset is not None:
                labels = dataset.labels(image_id)
                if not np.array_equal(np.sort(keys), labels):
                    raise WsssError(
                        f"{cam_source(cam_dir, image_id, from_format)}: CAM classes {keys.tolist()} do not match "
                        f"the image-level labels {labels.tolist()} of image {image_id!r} (read as {from_format})"
                    )
            order = np.argsort(keys, kind="stable")
            keys, cam = keys[order], cam[order]
            paths = output_paths(out_dir, image_id, to_format, keys)
            if not paths:  # WSSS-BED keeps no file for an image without classes
                empty += 1
                continue
            if all(p.is_file() for p in paths):
                skipped += 1
                continue
            write_cam(out_dir, image_id, to_format, keys, cam)
            written += 1
        summary = {
            "num_images": len(ids),
            "written": written,
            "skipped_existing": skipped,
            "no_classes": empty,
        }
        run.finish(
            {**settings, **run.input_paths(cam_dir="cams"), "split": getattr(dataset, "split", None)},
            extra=summary,
        )
    return summary
