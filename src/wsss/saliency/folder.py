"""Saliency source ``folder``: import the maps a salient-object detector wrote to a folder.

This is the usual case (WSSS-BED distributes PoolNet, VST, MOVE, … maps as folders of
PNGs), and seed 000 shows that the detector and its training data move the final mIoU by
several points. So the import records what made the maps (``detector``, ``trained_on``)
and checks every map on the way in: a colour image, or a map whose shape says it belongs
to another image, would otherwise turn silently into a wrong background cue.

Maps are matched by stem, ``<dir>/<id>.<ext>``, with ext one of png, jpg, jpeg, bmp, tif,
tiff (any case) — grayscale 1/8/16-bit, 32-bit float TIFFs in [0, 1], and RGB/RGBA/palette
images whose colour channels are all equal — or ``npy`` (a float or bool H×W array in
[0, 1], read without pickle).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsss.data.base import Dataset
from wsss.io import WsssError, _gray_unit, _open_image, image_size
from wsss.saliency.base import SaliencySource, register_saliency_source

MAP_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")
RESIZE_MODES = ("aspect", "any", "never")
#: detectors often work at a fixed scale; a map whose aspect ratio is off by more than this
#: is more likely of another image (or cropped) than a rescaled map of this one
ASPECT_TOLERANCE = 0.02
_GRAY_MODES = ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L")
_COLOUR_MODES = ("RGB", "RGBA", "P")


@register_saliency_source("folder")
class FolderSource(SaliencySource):
    """Options: ``dir`` (required, the folder of maps), ``detector`` / ``trained_on`` /
    ``notes`` (what made the maps, for the provenance record), ``resize``: ``"aspect"``
    (default; resize bilinearly to the image size only when the aspect ratios agree within
    2 %), ``"any"`` (always resize) or ``"never"`` (a size mismatch is an error).

    All options are pinned in ``settings.json``, the descriptive ones too: a folder's
    provenance must describe every map in it.
    """

    option_defaults: dict[str, Any] = {
        "dir": None,
        "detector": "",
        "trained_on": "",
        "notes": "",
        "resize": "aspect",
    }
    description = "maps imported from a salient-object detector's output folder"

    def __init__(self, **options: Any):
        self._index: dict[str, list[Path]] | None = None
        super().__init__(**options)

    def validate(self) -> None:
        o = self.options
        for key in ("detector", "trained_on", "notes"):  # `--set trained_on=2012` arrives as a number
            if isinstance(o[key], (int, float)) and not isinstance(o[key], bool):
                o[key] = str(o[key])
        for key in ("detector", "trained_on", "notes", "resize"):
            if not isinstance(o[key], str):
                raise WsssError(
                    f"saliency source 'folder': option {key} must be a string, got {type(o[key]).__name__}"
                )
        if o["resize"] not in RESIZE_MODES:
            raise WsssError(
                f"saliency source 'folder': option resize must be one of {', '.join(RESIZE_MODES)}, "
                f"got {o['resize']!r}"
            )
        if o["dir"] is None or not isinstance(o["dir"], (str, os.PathLike)) or not str(o["dir"]):
            raise WsssError("saliency source 'folder' needs option dir (the folder of saliency maps)")
        folder = Path(o["dir"]).expanduser().resolve()
        if not folder.exists():
            raise WsssError(f"{folder}: saliency map folder not found (option dir of source 'folder')")
        if not folder.is_dir():
            raise WsssError(
                f"{folder}: not a folder (option dir of source 'folder' needs the folder of maps)"
            )
        o["dir"] = str(folder)  # pinned absolute: the same relative path from elsewhere is another folder

    @property
    def folder(self) -> Path:
        return Path(self.options["dir"])

    def prepare(self, dataset: Dataset, out_dir: Path, progress: bool = True) -> None:
        # (an output folder that is the imported one is refused by the stage contract)
        self._index = None  # list the folder as it is now, not as an earlier run saw it

    def maps(self) -> dict[str, list[Path]]:
        """stem → map files in the folder, listed once (a directory scan per image would
        dominate the import time on COCO-sized folders)."""
        if self._index is None:
            index: dict[str, list[Path]] = {}
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    stem, ext = os.path.splitext(entry.name)
                    if ext.lower() in MAP_EXTENSIONS and entry.is_file():
                        index.setdefault(stem, []).append(Path(entry.path))
            self._index = {stem: sorted(paths) for stem, paths in index.items()}
        return self._index

    def num_maps(self) -> int:
        return sum(len(paths) for paths in self.maps().values())

    def map_path(self, image_id: str, example_ids: list[str] | None = None) -> Path:
        maps = self.maps()
        found = maps.get(image_id, [])
        if len(found) > 1:
            raise WsssError(
                f"{found[0]}: {len(found)} saliency maps for image {image_id!r} "
                f"({', '.join(p.name for p in found)}); keep one"
            )
        if not found:
            expected = self.folder / f"{image_id}.png"
            if maps:
                hint = f"{self.folder} holds {self.num_maps()} maps, named like {', '.join(sorted(maps)[:3])}"
            else:
                hint = f"{self.folder} holds no maps ({', '.join(e[1:] for e in MAP_EXTENSIONS)})"
            if example_ids:
                hint += f"; the image ids look like {', '.join(example_ids[:3])}"
            raise WsssError(f"{expected}: saliency map not found for image {image_id!r}; {hint}")
        return found[0]

    def predict(self, dataset: Dataset, image_id: str) -> np.ndarray:
        path = self.map_path(image_id, dataset.ids)
        return fit_to_image(
            read_saliency_map(path), path, image_size(dataset.image_path(image_id)), self.options["resize"]
        )

    def provenance(self) -> dict[str, Any]:
        o = self.options
        return {
            **super().provenance(),
            "detector": o["detector"],
            "trained_on": o["trained_on"],
            "notes": o["notes"],
            "dir": o["dir"],
            "num_maps": self.num_maps(),
        }


def read_saliency_map(path: str | os.PathLike) -> np.ndarray:
    """float32 H×W in [0, 1]; refuses colour images, which are never a saliency map."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return _read_npy_map(path)
    img = _open_image(path)
    if img.mode in _GRAY_MODES:
        return _gray_unit(img, path)
    if img.mode == "F":
        return _checked_unit(np.asarray(img, dtype=np.float32), path)
    if img.mode in _COLOUR_MODES:
        rgb = np.asarray(img.convert("RGBA") if img.mode == "P" else img)[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            raise WsssError(
                f"{path}: expected a grayscale saliency map, got mode {img.mode} with differing colour channels"
            )
        return rgb[..., 0].astype(np.float32) / 255.0
    raise WsssError(f"{path}: expected a grayscale saliency map, got mode {img.mode}")


def _read_npy_map(path: Path) -> np.ndarray:
    if not path.is_file():
        raise WsssError(f"{path}: file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise WsssError(f"{path}: cannot read .npy saliency map ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise WsssError(f"{path}: expected a single .npy array, got an .npz archive")
    while arr.ndim > 2 and (arr.shape[0] == 1 or arr.shape[-1] == 1):  # 1×H×W or H×W×1
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.ndim != 2:
        raise WsssError(f"{path}: expected an H×W saliency map, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if not np.issubdtype(arr.dtype, np.floating):
        raise WsssError(
            f"{path}: expected float values in [0, 1] (or bool), got dtype {arr.dtype}; "
            "save integer maps as PNG"
        )
    return _checked_unit(arr.astype(np.float32), path)


def _checked_unit(arr: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise WsssError(f"{path}: saliency map contains NaN or infinite values")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise WsssError(f"{path}: saliency values outside [0, 1] (min {arr.min():.4g}, max {arr.max():.4g})")
    return arr


def fit_to_image(sal: np.ndarray, path: Path, image_hw: tuple[int, int], resize: str) -> np.ndarray:
    """The map at the image's size: bilinear resize where ``resize`` allows it."""
    h, w = sal.shape
    height, width = image_hw
    if (h, w) == (height, width):
        return sal
    sizes = f"the map is {w}×{h} but the image is {width}×{height}"
    if resize == "never":
        raise WsssError(f"{path}: {sizes} (resize='never')")
    if resize == "aspect" and abs((w / h) / (width / height) - 1.0) > ASPECT_TOLERANCE:
        raise WsssError(
            f"{path}: {sizes}; their aspect ratios differ by more than {ASPECT_TOLERANCE:.0%}, so the map "
            "may be of another image or cropped (resize='any' stretches it anyway)"
        )
    resized = cv2.resize(sal, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0)
