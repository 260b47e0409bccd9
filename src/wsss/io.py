"""The file formats that the stages exchange, and the atomic writes behind them.

Every reader validates what it reads and raises :class:`WsssError` naming the
file, so a bad input anywhere in a long run stops with one clear message.
Formats (see README "File formats"):

* CAM ``<id>.npz``: ``keys`` (int, 1-based present classes), ``cam`` (float16,
  len(keys)×H×W in [0, 1]). Also read (and written by :mod:`wsss.convert`): IRN
  ``<id>.npy`` dicts (``keys`` 0-based class indices, ``high_res``), PuzzleCAM / P-NOC
  ``<id>.npy`` dicts (``keys`` = 0 then the 1-based ids, ``hr_cam`` or ``rw``, no
  background map) and WSSS-BED per-class PNGs ``<id>_<c>.png`` (``c`` = 0-based class
  index, 8-bit, 255 = 1.0). :func:`load_cam` documents how a ``.npy`` is told apart.
* Saliency: 8-bit grayscale PNG, 255 = salient.
* Label maps: 8-bit palette PNG with the VOC palette, 0 = background, 255 = ignore.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

IGNORE = 255


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


class WsssError(Exception):
    """A user-facing error: bad input, missing file, inconsistent data."""


def one_line(text: str) -> str:
    """A message as one line. A traceback re-raised from a worker process (DataLoader,
    multiprocessing) becomes its last line, the worker's own error."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if not lines:
        return ""
    if any(ln.startswith(("Traceback", "Original Traceback")) for ln in lines):
        head, sep, rest = lines[-1].partition(": ")
        if sep and head.replace(".", "").replace("_", "").isalnum():
            return rest if head.split(".")[-1] == "WsssError" else f"{head.split('.')[-1]}: {rest}"
        return lines[-1]
    return " ".join(lines)


def describe_error(e: BaseException) -> str:
    """The one line a user sees for ``e``: the file and the OS's reason for OS errors,
    the message for :class:`WsssError`, the type and message (and how to see more) otherwise."""
    if isinstance(e, WsssError):
        return one_line(str(e))
    if isinstance(e, OSError) and e.filename is not None:
        where = f"{e.filename}" + (f" → {e.filename2}" if e.filename2 is not None else "")
        return f"{where}: {e.strerror or one_line(str(e))}"
    if isinstance(e, OSError):
        return one_line(e.strerror or str(e))
    if isinstance(e, MemoryError):
        return "out of memory (use a smaller batch_size, fewer workers or fewer scales)"
    msg = one_line(str(e))
    if "Original Traceback" in str(e) and "WsssError" in str(e).splitlines()[-1]:
        return msg
    return f"unexpected {type(e).__name__}: {msg} (rerun with --debug or WSSS_DEBUG=1 for the traceback)"


# --------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    A crash mid-write leaves no half-written output, so "the output exists" can
    safely mean "this item is done" for resume.
    """
    path = Path(path)
    if path.is_dir():
        raise WsssError(f"{path}: is a folder; expected a file path to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WsssError(f"{path}: cannot write ({e.strerror or e})") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs should be as readable as open()'s
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:  # disk full, quota, a read-only file system: the old file stays as it was
        raise WsssError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=True))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise WsssError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WsssError(f"{path}: not valid JSON ({e})") from None


# --------------------------------------------------------------------------- palette
def voc_palette() -> np.ndarray:
    """The 256×3 PASCAL VOC colour map (bit-interleaved class index)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


_PALETTE_FLAT = voc_palette().reshape(-1).tolist()


# --------------------------------------------------------------------------- images
def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise WsssError(f"{path}: file not found")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise WsssError(f"{path}: cannot read image ({e})") from None
    return img


def _gray_unit(img: Image.Image, path: Path) -> np.ndarray:
    """A grayscale map as float32 in [0, 1], whatever its bit depth (8-bit, 16-bit, 1-bit)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        top = 255.0 if arr.max(initial=0) <= 255 and img.mode == "I" else 65535.0
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise WsssError(f"{path}: 32-bit map values outside 0..65535")
        return arr / top
    if img.mode not in ("L", "P", "RGB", "RGBA", "LA", "1"):
        raise WsssError(f"{path}: unsupported grayscale map mode {img.mode}")
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def load_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 H×W×3."""
    return np.asarray(_open_image(Path(path)).convert("RGB"))


def save_image(path: str | os.PathLike, rgb: np.ndarray, quality: int = 95) -> None:
    path = Path(path)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    buf = _io.BytesIO()
    kwargs = {"quality": quality, "subsampling": 0} if fmt == "JPEG" else {}
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(buf, format=fmt, **kwargs)
    atomic_write_bytes(path, buf.getvalue())


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) read from the header only."""
    path = Path(path)
    if not path.is_file():
        raise WsssError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError) as e:
        raise WsssError(f"{path}: cannot read image ({e})") from None
    return h, w


# --------------------------------------------------------------------------- label maps
def save_label(path: str | os.PathLike, label: np.ndarray, compress_level: int = 1) -> None:
    """8-bit palette PNG with the VOC palette.

    zlib level 1: encoding a 500×375 map takes ~1.7 ms instead of ~8.6 ms at PIL's default
    level 6, for files ~30 % larger; per-image stages write one map per image.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must be in 0..255, got {label.min()}..{label.max()}")
    img = Image.fromarray(label.astype(np.uint8), "P")
    img.putpalette(_PALETTE_FLAT)
    buf = _io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    atomic_write_bytes(path, buf.getvalue())


def load_label(
    path: str | os.PathLike,
    num_classes: int | None = None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """uint8 H×W label map; values must be < ``num_classes`` (background included) or 255."""
    path = Path(path)
    img = _open_image(path)
    if img.mode not in ("P", "L", "I", "I;16"):
        raise WsssError(f"{path}: label map must be a palette or grayscale PNG, got mode {img.mode}")
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise WsssError(f"{path}: label values outside 0..255")
        arr = arr.astype(np.uint8)
    if shape is not None and arr.shape != tuple(shape):
        raise WsssError(
            f"{path}: size {arr.shape[1]}×{arr.shape[0]} does not match the image {shape[1]}×{shape[0]}"
        )
    if num_classes is not None:
        bad = (arr >= num_classes) & (arr != IGNORE)
        if bad.any():
            vals = np.unique(arr[bad])[:5].tolist()
            raise WsssError(
                f"{path}: label values {vals} are >= num_classes={num_classes} and not 255 (ignore)"
            )
    return arr


def load_instances(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Instance id map (VOC SegmentationObject): 0 = background, 255 = ignore, k = instance k."""
    return load_label(path, None, shape)


# --------------------------------------------------------------------------- saliency
def save_saliency(path: str | os.PathLike, sal: np.ndarray) -> None:
    """Saliency in [0, 1] (float) or uint8 0..255 → 8-bit grayscale PNG."""
    sal = np.asarray(sal)
    if sal.dtype != np.uint8:
        sal = np.clip(np.rint(sal.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    buf = _io.BytesIO()
    Image.fromarray(sal, "L").save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


# single-channel grey: 8-bit (the format written here) and 16-bit (0..65535 → 0..1)
SALIENCY_MODES = ("L", "I;16", "I;16B", "I;16L", "I")
_MODE_NAMES = {"RGB": "3-channel RGB", "RGBA": "4-channel RGBA", "LA": "grey + alpha", "P": "palette",
               "1": "1-bit", "F": "32-bit float", "CMYK": "4-channel CMYK"}  # fmt: skip


def _check_saliency_image(img: Image.Image, path: Path, shape: tuple[int, int] | None) -> None:
    w, h = img.size
    if shape is not None and (h, w) != tuple(shape):
        raise WsssError(f"{path}: size {w}×{h} does not match the image {shape[1]}×{shape[0]}")
    if img.mode not in SALIENCY_MODES:
        kind = _MODE_NAMES.get(img.mode, f"mode {img.mode}")
        raise WsssError(
            f"{path}: saliency map must be a single-channel 8-bit grey PNG (mode L), got {kind} "
            f"(mode {img.mode}); convert it, or import it with `wsss saliency make folder --from DIR`"
        )


def check_saliency_file(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> None:
    """What :func:`load_saliency` refuses that the header shows (missing, not an image, not
    single-channel grey, another size than the image), without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise WsssError(f"{path}: saliency map not found")
    try:
        with Image.open(path) as img:
            _check_saliency_image(img, path, shape)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise WsssError(f"{path}: cannot read image ({e})") from None


def load_saliency(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """float32 H×W in [0, 1] from a single-channel grey PNG (8-bit; 16-bit is read too).

    Colour, palette, alpha and 1-bit images are refused rather than converted: a colour map
    read as grey is a silent error. ``wsss saliency make folder`` imports other formats.
    """
    path = Path(path)
    img = _open_image(path)
    _check_saliency_image(img, path, shape)
    return _gray_unit(img, path)


# --------------------------------------------------------------------------- CAMs
def save_cam(path: str | os.PathLike, keys: np.ndarray, cam: np.ndarray) -> None:
    """Write the CAM ``.npz`` (``keys`` 1-based class ids, ``cam`` float16 len(keys)×H×W)."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    cam = np.asarray(cam)
    if cam.ndim != 3 or cam.shape[0] != keys.size:
        raise ValueError(f"cam must be len(keys)×H×W, got {cam.shape} for {keys.size} keys")
    buf = _io.BytesIO()
    np.savez_compressed(buf, keys=keys, cam=cam.astype(np.float16))
    atomic_write_bytes(path, buf.getvalue())


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the dicts of arrays (and CPU tensors) that IRN, PuzzleCAM and P-NOC write,
    and nothing else.

    ``np.load(allow_pickle=True)`` would run arbitrary code from a downloaded file;
    this unpickler only admits the numpy reconstruction functions.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):  # IRN/PuzzleCAM/P-NOC keep CPU tensors
            import torch._utils

            return torch._utils._rebuild_tensor_v2
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _tensor_storage_from_bytes
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _tensor_storage_from_bytes(data: bytes) -> Any:
    """torch's own storage unpickler, but with ``weights_only=True``: tensors only, no code."""
    import torch

    return torch.load(_io.BytesIO(data), weights_only=True)


def _load_npy_dict(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            _shape, _fortran, dtype = read_header(f)
        except ValueError as e:
            raise WsssError(f"{path}: not a .npy file ({e})") from None
        if dtype.hasobject:
            try:
                obj = _NumpyOnlyUnpickler(f).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
                raise WsssError(f"{path}: cannot read CAM dict ({e})") from None
            if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.size == 1:
                obj = obj.reshape(-1)[0]
            if not isinstance(obj, dict):
                raise WsssError(f"{path}: expected a dict with 'keys' and 'cam', got {type(obj).__name__}")
            return obj
    raise WsssError(f"{path}: a plain array has no class keys; expected an IRN/PuzzleCAM/P-NOC dict")


CAM_TOLERANCE = 2e-3  # float16 rounding (and resampling) may step just outside [0, 1]


def _validated_cam(path: Path, keys: np.ndarray, cam: np.ndarray, shape, num_classes) -> tuple:
    keys = np.asarray(keys).reshape(-1).astype(np.int64)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim == 2:
        cam = cam[None]
    if cam.ndim != 3 or cam.shape[0] != keys.size:
        raise WsssError(f"{path}: cam has shape {cam.shape} but there are {keys.size} keys")
    if not np.isfinite(cam).all():
        raise WsssError(f"{path}: CAM contains NaN or infinite values")
    if cam.size and (cam.min() < -CAM_TOLERANCE or cam.max() > 1.0 + CAM_TOLERANCE):
        raise WsssError(
            f"{path}: CAM values must lie in [0, 1], got {cam.min():.4g}..{cam.max():.4g} "
            "(normalise each class map by its maximum)"
        )
    if keys.size and (keys.min() < 1 or (num_classes is not None and keys.max() >= num_classes)):
        raise WsssError(f"{path}: class keys {keys.tolist()} outside 1..{(num_classes or 0) - 1}")
    if np.unique(keys).size != keys.size:
        raise WsssError(f"{path}: class keys {keys.tolist()} repeat a class")
    if shape is not None and cam.shape[1:] != tuple(shape):
        raise WsssError(
            f"{path}: CAM size {cam.shape[2]}×{cam.shape[1]} does not match the image {shape[1]}×{shape[0]}"
        )
    return keys, cam


CAM_LAYOUTS = ("wsss", "irn", "puzzlecam", "wsss-bed")
# the map arrays of a .npy CAM dict, in the order they are looked for: IRN's full-resolution
# maps, PuzzleCAM/P-NOC's, PuzzleCAM/P-NOC's random-walk output, then a strided map alone
NPY_MAP_NAMES = ("high_res", "hr_cam", "rw", "cam")


def _int_keys(path: Path, raw: Any) -> np.ndarray:
    try:
        keys = np.asarray(raw).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as e:
        raise WsssError(f"{path}: 'keys' is not an array of class numbers ({e})") from None
    numeric = keys.dtype != bool and (
        np.issubdtype(keys.dtype, np.integer) or np.issubdtype(keys.dtype, np.floating)
    )
    if not numeric or (keys.size and not np.all(np.isfinite(keys) & (np.mod(keys, 1) == 0))):
        raise WsssError(f"{path}: class keys must be whole numbers, got {keys.tolist()[:8]}")
    return keys.astype(np.int64)


def npy_cam_layout(keys: np.ndarray, num_maps: int, map_name: str) -> str:
    """Which key convention a ``.npy`` CAM dict follows: ``"puzzlecam"`` or ``"irn"``.

    IRN writes ``keys`` = the 0-based class indices, one map per key (``high_res``);
    PuzzleCAM and P-NOC write ``keys`` = ``np.pad(class_index + 1, (1, 0))`` — a 0 for the
    background, then the 1-based ids — and no background map (``hr_cam``, ``rw``). So:

    * keys one longer than the maps and starting with 0 → PuzzleCAM / P-NOC;
    * as many keys as maps, starting with 0, maps named ``hr_cam``/``rw`` → PuzzleCAM / P-NOC
      with a background map first (dropped), as P-NOC's own CAM reader treats it;
    * anything else → IRN. The one ambiguous file — as many keys as maps, the first key 0,
      maps named ``high_res``/``cam`` — is IRN's image containing class index 0; force the
      other reading with ``layout="puzzlecam"`` (``wsss convert --from-format puzzlecam``).
    """
    k = int(keys.size)
    starts_at_0 = k > 0 and int(keys[0]) == 0
    if starts_at_0 and (k == num_maps + 1 or (k == num_maps and map_name in ("hr_cam", "rw"))):
        return "puzzlecam"
    return "irn"


def _npy_cam(path: Path, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """(1-based keys, maps without background) of an IRN / PuzzleCAM / P-NOC ``.npy`` dict."""
    d = _load_npy_dict(path)
    name = next((k for k in NPY_MAP_NAMES if k in d), None)
    if name is None or "keys" not in d:
        raise WsssError(
            f"{path}: expected keys 'keys' and {'/'.join(repr(k) for k in NPY_MAP_NAMES)}, found {sorted(map(str, d))}"
        )
    keys = _int_keys(path, d["keys"])
    try:
        cam = np.asarray(d[name], dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise WsssError(f"{path}: '{name}' is not a numeric map stack ({e})") from None
    if cam.ndim == 2:
        cam = cam[None]
    n = cam.shape[0] if cam.ndim == 3 else -1
    if layout == "auto":
        layout = npy_cam_layout(keys, n, name)
    if layout == "puzzlecam":
        if keys.size == 0 or keys[0] != 0:
            raise WsssError(
                f"{path}: PuzzleCAM/P-NOC keys start with the background's 0 (np.pad(class_index + 1, (1, 0))), "
                f"got {keys.tolist()}"
            )
        if keys.size == n:  # a background map first
            cam = cam[1:]
        ids, what = keys[1:], "PuzzleCAM/P-NOC keys (0 for the background, then 1-based class ids)"
    else:  # IRN: 0-based class indices
        if keys.size and keys.min() < 0:
            raise WsssError(f"{path}: IRN class keys are 0-based class indices, got {keys.tolist()}")
        if keys.size and n == keys.size + 1:  # a background map first (a dump that keeps one)
            cam = cam[1:]
        ids, what = keys + 1, "IRN keys (0-based class indices)"
    if cam.ndim != 3 or cam.shape[0] != ids.size:
        raise WsssError(
            f"{path}: '{name}' has shape {tuple(np.shape(d[name]))} but the {what} {keys.tolist()} "
            f"name {ids.size} classes"
        )
    return ids, cam


_BED_INDEX: dict[str, tuple[int, dict[str, list[tuple[int, Path]]]]] = {}


def _bed_pngs(stem: Path) -> list[tuple[int, Path]]:
    """WSSS-BED's ``<stem>_<c>.png`` files as (c, path), sorted by ``c`` (0-based class index).

    The folder is listed once and indexed: a glob per image would make reading N images
    cost O(N²) directory entries on VOC-sized folders. The index is reused while the
    folder's mtime is unchanged and was already 2 s old when it was listed (a change
    within the filesystem's timestamp granularity could otherwise go unseen).
    """
    folder = stem.parent
    try:
        mtime = os.stat(folder).st_mtime_ns
    except OSError:
        return []
    key = os.fspath(folder)
    cached = _BED_INDEX.get(key)
    if cached is None or cached[0] != mtime:
        settled = time.time_ns() - mtime > 2_000_000_000
        index: dict[str, list[tuple[int, Path]]] = {}
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if not name.endswith(".png"):
                    continue
                image_id, sep, suffix = name[:-4].rpartition("_")
                if sep and suffix.isdigit() and suffix.isascii():
                    index.setdefault(image_id, []).append((int(suffix), folder / name))
        for found in index.values():
            found.sort()
        if len(_BED_INDEX) > 64:
            _BED_INDEX.clear()
        if not settled:
            return index.get(stem.name, [])
        cached = _BED_INDEX[key] = (mtime, index)
    return cached[1].get(stem.name, [])


def load_cam(
    path: str | os.PathLike,
    shape: tuple[int, int] | None = None,
    num_classes: int | None = None,
    *,
    layout: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Read a CAM in any supported layout → (keys 1-based int64, cam float32 len(keys)×H×W).

    ``path`` is the ``.npz``/``.npy`` file, or for WSSS-BED per-class PNGs the
    ``<dir>/<id>`` stem (files ``<dir>/<id>_<c>.png``, ``c`` the 0-based class index, so
    class id ``c + 1``). ``num_classes`` counts background. ``layout`` is ``"auto"`` (by
    the file name, and for ``.npy`` dicts by :func:`npy_cam_layout`) or one of
    :data:`CAM_LAYOUTS` to force a key convention.
    """
    path = Path(path)
    if layout not in ("auto", *CAM_LAYOUTS):
        raise ValueError(f"layout must be 'auto' or one of {CAM_LAYOUTS}, got {layout!r}")
    if layout == "auto":
        layout = {".npz": "wsss", ".npy": "auto-npy"}.get(path.suffix, "wsss-bed")
    if layout == "wsss":
        if not path.is_file():
            raise WsssError(f"{path}: file not found")
        if not zipfile.is_zipfile(path):
            raise WsssError(f"{path}: cannot read CAM file (not an .npz archive)")
        try:
            with np.load(path, allow_pickle=False) as z:
                if "keys" not in z or "cam" not in z:
                    raise WsssError(f"{path}: expected arrays 'keys' and 'cam', found {sorted(z.files)}")
                keys, cam = z["keys"], z["cam"]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise WsssError(f"{path}: cannot read CAM file ({e})") from None
        return _validated_cam(path, keys, cam, shape, num_classes)
    if layout in ("irn", "puzzlecam", "auto-npy"):
        if not path.is_file():
            raise WsssError(f"{path}: file not found")
        keys, cam = _npy_cam(path, "auto" if layout == "auto-npy" else layout)
        return _validated_cam(path, keys, cam, shape, num_classes)
    # WSSS-BED per-class PNGs: <stem>_<c>.png, c = 0-based class index
    found = _bed_pngs(path)
    if not found:
        raise WsssError(f"{path}: no CAM found (.npz, .npy or per-class {path.name}_<c>.png)")
    keys = np.array([c + 1 for c, _ in found], dtype=np.int64)
    maps = []
    for _, p in found:
        img = _open_image(p)
        if img.mode not in SALIENCY_MODES:
            raise WsssError(
                f"{p}: per-class CAM PNG must be single-channel grey (mode L), got mode {img.mode}"
            )
        maps.append(_gray_unit(img, p))
    if len({m.shape for m in maps}) > 1:
        raise WsssError(f"{path}: per-class CAM PNGs have different sizes")
    return _validated_cam(path, keys, np.stack(maps), shape, num_classes)


def find_cam(cam_dir: str | os.PathLike, image_id: str) -> Path:
    """The CAM path for ``image_id`` in any supported layout (for :func:`load_cam`)."""
    cam_dir = Path(cam_dir)
    for ext in (".npz", ".npy"):
        p = cam_dir / f"{image_id}{ext}"
        if p.is_file():
            return p
    stem = cam_dir / image_id
    if _bed_pngs(stem):
        return stem
    raise WsssError(f"{cam_dir / (image_id + '.npz')}: CAM file not found")


# --------------------------------------------------------------------------- run records
def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in (
        "wsss",
        "numpy",
        "torch",
        "torchvision",
        "timm",
        "scipy",
        "pillow",
        "opencv-contrib-python-headless",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_run_json(
    out_dir: str | os.PathLike,
    stage: str,
    config: dict,
    seed: int | None = None,
    timings: dict | None = None,
    extra: dict | None = None,
    name: str = "run.json",
) -> Path:
    """Record what produced a folder: stage, config, versions, git sha, seed, timings."""
    out = Path(out_dir) / name
    record = {
        "stage": stage,
        "config": config,
        "seed": seed,
        "versions": versions(),
        "git_sha": _git_sha(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "timings": timings or {},
    }
    if extra:
        record.update(extra)
    write_json(out, record)
    return out


def process_context():
    """The multiprocessing context for pools of per-image work: fork on Linux (workers share
    the parent's dataset, e.g. a large COCO index, without pickling it), spawn elsewhere."""
    import multiprocessing

    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def parse_shard(shard: str | tuple[int, int] | list[int] | None) -> tuple[int, int]:
    """``"i/N"`` or ``(i, N)`` → (i, N); None → torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if shard is None:
        i, n = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    elif isinstance(shard, str):
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise WsssError(f"--shard must look like i/N (e.g. 0/4), got {shard!r}") from None
    else:
        i, n = int(shard[0]), int(shard[1])
    if not (n >= 1 and 0 <= i < n):
        where = f"RANK={i} WORLD_SIZE={n}" if shard is None else f"--shard {i}/{n}"
        raise WsssError(f"{where}: need 0 <= i < N")
    return i, n


def shard_list(items: list, shard: tuple[int, int]) -> list:
    i, n = shard
    return items[i::n]


def shard_record_name(shard: tuple[int, int]) -> str:
    """``run.json``, or ``run.shard<i>of<N>.json`` so that shards never overwrite each other."""
    i, n = shard
    return "run.json" if n == 1 else f"run.shard{i}of{n}.json"


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file (identifies model weights in records and settings)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
