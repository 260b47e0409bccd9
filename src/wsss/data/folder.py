"""A plain folder of images with a CSV of image-level labels: the easiest way in for new data.

Layout under ``root``::

    images/<id>.jpg | <id>.png       the images
    labels.csv                       header ``id,labels[,split]``; labels are
                                     ``;``-separated class names (or 1-based ids)
    class_names.txt                  optional, background first; default:
                                     background + the sorted names used in labels.csv
    masks/<id>.png                   optional ground truth (palette/gray PNG, 255 = ignore)
    instances/<id>.png               optional instance ids (0 = background)
    saliency/<source>/<id>.png       optional saliency maps

Split ``all``, or any split when the CSV has no ``split`` column, is every
row; otherwise the rows whose ``split`` equals the requested split.
"""

from __future__ import annotations

import csv
from pathlib import Path

from wsss.data.base import Dataset, read_class_names, read_label_csv, register_dataset
from wsss.io import WsssError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _read_rows(path: Path) -> tuple[list[dict[str, str]], bool]:
    """The CSV's rows and whether it has a split column (ids checked for blanks and repeats)."""
    if not path.is_file():
        raise WsssError(f"{path}: image-level labels file not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "id" not in fields or "labels" not in fields:
            raise WsssError(
                f"{path}: expected a header with columns 'id' and 'labels' (and optionally 'split')"
            )
        rows = list(reader)
    seen: set[str] = set()
    for line_no, row in enumerate(rows, start=2):
        image_id = row["id"] or ""
        if not image_id.strip():
            raise WsssError(f"{path}:{line_no}: empty image id")
        if image_id in seen:
            raise WsssError(f"{path}:{line_no}: image id {image_id!r} appears twice")
        seen.add(image_id)
    return rows, "split" in fields


def _names_from_rows(rows: list[dict[str, str]]) -> list[str]:
    names = {tok.strip() for row in rows for tok in (row["labels"] or "").split(";") if tok.strip()}
    return ["background", *sorted(names)]


@register_dataset("folder")
class FolderDataset(Dataset):
    """Images + ``labels.csv`` (+ optional masks) in one folder."""

    def __init__(self, root: str | Path, split: str = "all"):
        super().__init__(root, split)
        labels_csv = self.root / "labels.csv"
        rows, has_split = _read_rows(labels_csv)
        names_file = self.root / "class_names.txt"
        self.class_names = read_class_names(names_file) if names_file.is_file() else _names_from_rows(rows)
        if len(self.class_names) < 2:
            raise WsssError(f"{labels_csv}: no class names in the labels column and no class_names.txt")
        labels = read_label_csv(labels_csv, self.class_names)
        self.labels_source = labels_csv

        if has_split and split != "all":
            self.ids = [r["id"] for r in rows if (r["split"] or "").strip() == split]
            if not self.ids:
                present = sorted({(r["split"] or "").strip() for r in rows})
                raise WsssError(
                    f"{labels_csv}: no rows with split {split!r}; splits present: {present} (or 'all')"
                )
        else:
            self.ids = [r["id"] for r in rows]
        if not self.ids:
            raise WsssError(f"{labels_csv}: no images listed")
        self._labels = {i: labels[i] for i in self.ids}
        self._images = self._index_images()

    def _index_images(self) -> dict[str, Path]:
        image_dir = self.root / "images"
        if not image_dir.is_dir():
            raise WsssError(f"{image_dir}: image folder not found")
        found: dict[str, Path] = {}
        for p in image_dir.iterdir():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if p.stem in found:
                raise WsssError(f"{p}: two images for id {p.stem!r} ({found[p.stem].name} and {p.name})")
            found[p.stem] = p
        missing = [i for i in self.ids if i not in found]
        if missing:
            raise WsssError(
                f"{image_dir}: no image (.jpg/.png) for {len(missing)} ids of {self.root / 'labels.csv'}, "
                f"e.g. {missing[0]!r}"
            )
        return {i: found[i] for i in self.ids}

    def image_path(self, image_id: str) -> Path:
        try:
            return self._images[image_id]
        except KeyError:
            raise WsssError(
                f"{self.root / 'labels.csv'}: image {image_id!r} is not in split {self.split!r}"
            ) from None

    def gt_path(self, image_id: str) -> Path | None:
        p = self.root / "masks" / f"{image_id}.png"
        return p if p.is_file() else None

    def instance_path(self, image_id: str) -> Path | None:
        p = self.root / "instances" / f"{image_id}.png"
        return p if p.is_file() else None
