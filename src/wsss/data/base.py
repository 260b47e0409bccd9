"""The dataset interface every stage reads, and the registry (a new dataset is one file).

A dataset is a split of image ids with, per id: the image, the image-level
labels (1-based class ids; 0 is background), and optionally the ground-truth
label map, the instance map and saliency maps. Stages only use this interface,
so VOC, COCO, a folder of images and the synthetic benchmark all run the same.
"""

from __future__ import annotations

import abc
import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

from wsss.io import WsssError, load_image, load_instances, load_label

DATASETS: dict[str, type[Dataset]] = {}


def register_dataset(name: str) -> Callable[[type[Dataset]], type[Dataset]]:
    def deco(cls: type[Dataset]) -> type[Dataset]:
        DATASETS[name] = cls
        cls.kind = name
        return cls

    return deco


def build_dataset(kind: str, root: str | Path, split: str, **kwargs) -> Dataset:
    """``build_dataset("synthetic", "data/demo", "train")``."""
    if kind not in DATASETS:
        raise WsssError(f"unknown dataset kind {kind!r}; known: {', '.join(sorted(DATASETS))}")
    root = Path(root)
    if not root.exists():
        raise WsssError(f"{root}: dataset root not found")
    return DATASETS[kind](root, split, **kwargs)


class Dataset(abc.ABC):
    """Base class: subclasses fill ``class_names`` (index 0 = background), ``ids``
    and ``_labels`` (id → sorted 1-based class ids), and the path methods."""

    kind = "base"

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.split = split
        self.class_names: list[str] = []
        self.ids: list[str] = []
        self._labels: dict[str, np.ndarray] = {}
        self.labels_source: Path = self.root  # the file the image-level labels came from, for error messages

    # ----------------------------------------------------------------- to override
    @abc.abstractmethod
    def image_path(self, image_id: str) -> Path:
        """Where the image of ``image_id`` lives (every dataset has images)."""

    def gt_path(self, image_id: str) -> Path | None:
        """Ground-truth label PNG, or None when the dataset has none."""
        return None

    def instance_path(self, image_id: str) -> Path | None:
        """Instance-id PNG (0 = background, 255 = ignore), or None."""
        return None

    def saliency_dir(self, source: str) -> Path:
        return self.root / "saliency" / source

    # ----------------------------------------------------------------- common
    @property
    def ia_bounds(self) -> tuple[int, int]:
        """IA-mIoU small/medium area bounds in pixels: ``dataset.json``'s ``ia_bounds`` when the
        root has one (the synthetic data scales them to its image size), else VOC's 32² / 96²."""
        meta = self.root / "dataset.json"
        if meta.is_file():
            import json

            bounds = json.loads(meta.read_text()).get("ia_bounds")
            if bounds:
                return int(bounds[0]), int(bounds[1])
        return 1024, 9216

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"

    def image(self, image_id: str) -> np.ndarray:
        return load_image(self.image_path(image_id))

    def labels(self, image_id: str) -> np.ndarray:
        """Sorted 1-based ids of the classes present in the image."""
        try:
            return self._labels[image_id]
        except KeyError:
            raise WsssError(f"{self.root}: no image-level labels for image {image_id!r}") from None

    def label_vector(self, image_id: str) -> np.ndarray:
        """Multi-hot float32 vector over the C foreground classes."""
        y = np.zeros(self.num_classes - 1, dtype=np.float32)
        y[self.labels(image_id) - 1] = 1.0
        return y

    def gt(self, image_id: str) -> np.ndarray | None:
        p = self.gt_path(image_id)
        return None if p is None else load_label(p, self.num_classes)

    def instances(self, image_id: str) -> np.ndarray | None:
        p = self.instance_path(image_id)
        return None if p is None or not p.is_file() else load_instances(p)

    def saliency_path(self, source: str, image_id: str) -> Path:
        return self.saliency_dir(source) / f"{image_id}.png"

    def select_ids(self, ids=None) -> list[str]:
        """``ids`` (default: the whole split), checked to belong to the split."""
        if ids is None:
            return list(self.ids)
        ids = list(ids)
        known = set(self.ids)
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise WsssError(
                f"{self.root}: {len(unknown)} requested ids are not in split {self.split!r}, e.g. {unknown[0]!r}"
            )
        return ids

    def check_labels(self) -> None:
        """Every id has a non-empty label set of valid classes (else: a clear error)."""
        for i in self.ids:
            lab = self.labels(i)
            if lab.size == 0:
                raise WsssError(f"{self.labels_source}: image {i!r} has an empty label set")
            if lab.min() < 1 or lab.max() >= self.num_classes:
                raise WsssError(
                    f"{self.labels_source}: image {i!r} has class ids {lab.tolist()} outside 1..{self.num_classes - 1}"
                )


# --------------------------------------------------------------------------- shared readers
def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise WsssError(f"{path}: {what} not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise WsssError(f"{path}: {what} is not UTF-8 text") from None


def read_id_list(path: Path) -> list[str]:
    """A split list: one image id per line (first word), no id twice."""
    ids = [ln.split()[0] for ln in _read_text(path, "split list").splitlines() if ln.strip()]
    if not ids:
        raise WsssError(f"{path}: split list is empty; expected one image id per line")
    seen: set[str] = set()
    for image_id in ids:
        if image_id in seen:
            raise WsssError(f"{path}: image id {image_id!r} is listed twice; expected each id once")
        seen.add(image_id)
    return ids


def read_class_names(path: Path) -> list[str]:
    """``class_names.txt``: one name per line, background first, no name twice."""
    names = [ln.strip() for ln in _read_text(path, "class names file").splitlines() if ln.strip()]
    if len(names) < 2:
        raise WsssError(
            f"{path}: {len(names)} class name(s); expected background plus at least one class, one per line"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise WsssError(f"{path}: class name(s) {dup} appear more than once; expected distinct names")
    if len(names) > 255:
        raise WsssError(f"{path}: {len(names)} class names; label PNGs hold at most 255 (255 = ignore)")
    return names


def read_label_csv(path: Path, class_names: list[str]) -> dict[str, np.ndarray]:
    """``image_labels.csv``: header ``id,labels``; labels are ``;``-separated class
    names or 1-based ids, e.g. ``img_001,dog;person``."""
    if not path.is_file():
        raise WsssError(f"{path}: image-level labels file not found")
    index = {n: i for i, n in enumerate(class_names)}
    out: dict[str, np.ndarray] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "id" not in reader.fieldnames or "labels" not in reader.fieldnames:
            raise WsssError(f"{path}: expected a header with columns 'id' and 'labels'")
        for line_no, row in enumerate(reader, start=2):
            ids = []
            for tok in (row["labels"] or "").split(";"):
                tok = tok.strip()
                if not tok:
                    continue
                if tok in index:
                    ids.append(index[tok])
                elif tok.isdigit():
                    ids.append(int(tok))
                else:
                    raise WsssError(f"{path}:{line_no}: unknown class {tok!r}")
            lab = np.array(sorted(set(ids)), dtype=np.int64)
            if lab.size and (lab.min() < 1 or lab.max() >= len(class_names)):
                raise WsssError(
                    f"{path}:{line_no}: class ids {lab.tolist()} outside 1..{len(class_names) - 1}"
                )
            out[row["id"]] = lab
    return out


def write_label_csv(path: Path, labels: dict[str, np.ndarray], class_names: list[str]) -> None:
    from wsss.io import atomic_write_text

    lines = ["id,labels"]
    for i, lab in labels.items():
        lines.append(f"{i}," + ";".join(class_names[int(c)] for c in lab))
    atomic_write_text(path, "\n".join(lines) + "\n")


def labels_from_mask(path: Path, num_classes: int) -> np.ndarray:
    lab = load_label(path, num_classes)
    u = np.unique(lab)
    return u[(u != 0) & (u != 255)].astype(np.int64)
