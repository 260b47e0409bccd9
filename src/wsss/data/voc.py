"""PASCAL VOC 2012 (with SBD's ``train_aug``) and anything in the VOC layout.

Layout under ``root`` (the ``VOC2012`` folder)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png        ground truth (palette PNG, 255 = ignore)
    SegmentationClassAug/<id>.png     SBD-converted masks for train_aug (optional)
    SegmentationObject/<id>.png       instance ids (optional)
    ImageSets/Segmentation/<split>.txt
    class_names.txt                   optional; default: the 21 VOC names
    image_labels.csv                  optional; default: derived from the masks
    saliency/<source>/<id>.png        optional saliency maps
"""

from __future__ import annotations

from pathlib import Path

from wsss.data.base import (
    Dataset,
    labels_from_mask,
    read_class_names,
    read_id_list,
    read_label_csv,
    register_dataset,
)
from wsss.io import WsssError

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


@register_dataset("voc")
class VOCDataset(Dataset):
    image_dir = "JPEGImages"
    image_ext = ".jpg"

    def __init__(self, root: str | Path, split: str = "train"):
        super().__init__(root, split)
        names_file = self.root / "class_names.txt"
        self.class_names = read_class_names(names_file) if names_file.is_file() else list(VOC_CLASSES)
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.exists():
            known = sorted(p.stem for p in split_file.parent.glob("*.txt"))
            raise WsssError(f"{split_file}: split list not found (--split {split}); splits here: {known}")
        self.ids = read_id_list(split_file)
        no_image = [i for i in self.ids if not self.image_path(i).is_file()]
        if no_image:
            raise WsssError(
                f"{split_file}: {len(no_image)} listed ids have no image in {self.root / self.image_dir}, "
                f"e.g. {no_image[0]!r}; expected {no_image[0]}{self.image_ext}"
            )
        labels_csv = self.root / "image_labels.csv"
        if labels_csv.is_file():
            labels = read_label_csv(labels_csv, self.class_names)
            self.labels_source = labels_csv
            missing = [i for i in self.ids if i not in labels]
            if missing:
                raise WsssError(
                    f"{labels_csv}: no labels for {len(missing)} images of split {split!r}, e.g. {missing[0]!r}"
                )
            self._labels = {i: labels[i] for i in self.ids}
        else:
            self._labels = {}
            for i in self.ids:
                p = self._mask_for_labels(i)
                if p is None:
                    raise WsssError(
                        f"{self.root}: no image_labels.csv and no mask for image {i!r} to derive labels from"
                    )
                self._labels[i] = labels_from_mask(p, self.num_classes)

    def _mask_for_labels(self, image_id: str) -> Path | None:
        for sub in ("SegmentationClassAug", "SegmentationClass"):
            p = self.root / sub / f"{image_id}.png"
            if p.is_file():
                return p
        return None

    def image_path(self, image_id: str) -> Path:
        """``JPEGImages/<id>.jpg``; a lossless ``.png`` there (the synthetic set) works too."""
        path = self.root / self.image_dir / f"{image_id}{self.image_ext}"
        if not path.is_file():
            for ext in (".jpg", ".png", ".jpeg"):
                alt = path.with_suffix(ext)
                if alt.is_file():
                    return alt
        return path

    def gt_path(self, image_id: str) -> Path | None:
        p = self.root / "SegmentationClass" / f"{image_id}.png"
        if p.is_file():
            return p
        aug = self.root / "SegmentationClassAug" / f"{image_id}.png"
        return aug if aug.is_file() else None

    def instance_path(self, image_id: str) -> Path | None:
        p = self.root / "SegmentationObject" / f"{image_id}.png"
        return p if p.is_file() else None


@register_dataset("synthetic")
class SyntheticDataset(VOCDataset):
    """The embedded benchmark written by ``wsss synth`` (VOC layout, own classes)."""

    image_ext = ".png"

    def __init__(self, root: str | Path, split: str = "train"):
        if not (Path(root) / "class_names.txt").is_file():
            raise WsssError(
                f"{root}: not a synthetic dataset (class_names.txt missing); run `wsss synth` first"
            )
        super().__init__(root, split)
