"""MS COCO 2014 for WSSS: image-level labels from the instance annotations, masks rendered on demand.

Layout under ``root``::

    train2014/*.jpg, val2014/*.jpg
    annotations/instances_train2014.json, annotations/instances_val2014.json
    wsss_masks/<split>/SegmentationClass/<id>.png     written on first use (cache)
    wsss_masks/<split>/SegmentationObject/<id>.png    written on first use (cache)
    saliency/<source>/<id>.png                        optional saliency maps

Conventions, as in the WSSS COCO literature (82,081 train / 40,137 val images):

* Image ids are the file stems (``COCO_val2014_000000000042``), in COCO image-id order.
* Only images with at least one annotation are in a split.
* Classes 1..K follow the categories sorted by COCO category id (80 for COCO,
  names from the JSON); 0 is background.
* Image-level labels are the categories of *all* annotations, crowd ones
  included, like multi-label COCO classification and the masks-derived label
  files of the WSSS repos (a crowd of people is still "person").
* Semantic / instance masks: crowd regions are painted 255 (ignore) first, then
  the non-crowd annotations in file order, later ones over earlier ones, so an
  individually annotated object inside a crowd region keeps its class.
  Instance ids are 1.. in that order.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np

from wsss.data.base import Dataset, register_dataset
from wsss.io import IGNORE, WsssError, read_json, save_label

_SPLITS = {"train": "train", "train2014": "train", "val": "val", "val2014": "val"}


@register_dataset("coco")
class CocoDataset(Dataset):
    """COCO 2014 through pycocotools; ``cache_dir`` relocates the rendered masks (e.g. a read-only root)."""

    def __init__(self, root: str | Path, split: str = "train", cache_dir: str | Path | None = None):
        if split not in _SPLITS:
            raise WsssError(f"{root}: COCO split must be one of {sorted(_SPLITS)}, got {split!r}")
        super().__init__(root, _SPLITS[split])
        self.image_set = f"{self.split}2014"
        self.annotation_file = self.root / "annotations" / f"instances_{self.image_set}.json"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / "wsss_masks"
        self._coco = self._load_coco()
        self._build_index()

    # ----------------------------------------------------------------- loading
    def _load_coco(self):
        from pycocotools.coco import COCO

        data = read_json(self.annotation_file)
        if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
            raise WsssError(
                f"{self.annotation_file}: not a COCO instances file (needs images, annotations, categories)"
            )
        coco = COCO()
        coco.dataset = data
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
                coco.createIndex()
        except (KeyError, TypeError) as e:
            raise WsssError(f"{self.annotation_file}: malformed COCO entry ({e!r})") from None
        return coco

    def _build_index(self) -> None:
        coco, path = self._coco, self.annotation_file
        try:
            cats = sorted(coco.cats.values(), key=lambda c: c["id"])
            self.class_names = ["background", *(str(c["name"]) for c in cats)]
        except KeyError as e:
            raise WsssError(f"{path}: a category lacks {e}") from None
        if len(self.class_names) < 2:
            raise WsssError(f"{path}: no categories")
        if len(self.class_names) > IGNORE:
            raise WsssError(f"{path}: {len(cats)} categories do not fit 8-bit label maps")
        self._class_of_category = {c["id"]: k for k, c in enumerate(cats, start=1)}

        self._coco_id: dict[str, int] = {}
        for coco_id in sorted(coco.imgs):
            anns = coco.imgToAnns.get(coco_id, [])
            if not anns:
                continue
            info = coco.imgs[coco_id]
            if not all(k in info for k in ("file_name", "height", "width")):
                raise WsssError(f"{path}: image {coco_id} lacks file_name/height/width")
            image_id = Path(info["file_name"]).stem
            if image_id in self._coco_id:
                raise WsssError(f"{path}: file name {info['file_name']!r} is used by two images")
            classes = set()
            for ann in anns:
                cls = self._class_of_category.get(ann.get("category_id"))
                if cls is None:
                    raise WsssError(
                        f"{path}: annotation {ann.get('id')} has unknown category_id {ann.get('category_id')!r}"
                    )
                classes.add(cls)
            self._coco_id[image_id] = coco_id
            self._labels[image_id] = np.array(sorted(classes), dtype=np.int64)
        self.ids = list(self._coco_id)
        if not self.ids:
            raise WsssError(f"{path}: no annotated images")

    # ----------------------------------------------------------------- paths
    def _info(self, image_id: str) -> dict:
        try:
            return self._coco.imgs[self._coco_id[image_id]]
        except KeyError:
            raise WsssError(
                f"{self.annotation_file}: no annotated image {image_id!r} in {self.image_set}"
            ) from None

    def image_path(self, image_id: str) -> Path:
        return self.root / self.image_set / self._info(image_id)["file_name"]

    def _mask_path(self, kind: str, image_id: str) -> Path:
        return self.cache_dir / self.split / kind / f"{image_id}.png"

    def gt_path(self, image_id: str) -> Path:
        path = self._mask_path("SegmentationClass", image_id)
        if not path.is_file():
            self._render(image_id)
        return path

    def instance_path(self, image_id: str) -> Path:
        path = self._mask_path("SegmentationObject", image_id)
        if not path.is_file():
            self._render(image_id)
        return path

    # ----------------------------------------------------------------- rendering
    def render_masks(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(semantic, instance) uint8 maps of one image, straight from the annotations."""
        info = self._info(image_id)
        h, w = int(info["height"]), int(info["width"])
        semantic = np.zeros((h, w), np.uint8)
        instance = np.zeros((h, w), np.uint8)
        anns = self._coco.imgToAnns[self._coco_id[image_id]]
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        objects = [a for a in anns if not a.get("iscrowd", 0)]
        if len(objects) >= IGNORE:
            raise WsssError(
                f"{self.annotation_file}: image {image_id!r} has {len(objects)} instances (max 254)"
            )
        for ann in crowd:
            m = self._ann_mask(ann, h, w)
            semantic[m] = IGNORE
            instance[m] = IGNORE
        for k, ann in enumerate(objects, start=1):
            m = self._ann_mask(ann, h, w)
            semantic[m] = self._class_of_category[ann["category_id"]]
            instance[m] = k
        return semantic, instance

    def _ann_mask(self, ann: dict, h: int, w: int) -> np.ndarray:
        try:
            with warnings.catch_warnings():  # pycocotools' own numpy-2 copy= deprecation, not ours to fix
                warnings.simplefilter("ignore", DeprecationWarning)
                m = self._coco.annToMask(ann)
        except Exception as e:  # pycocotools raises bare TypeError/ValueError/IndexError on bad geometry
            raise WsssError(
                f"{self.annotation_file}: cannot render annotation {ann.get('id')} ({e!r})"
            ) from None
        if m.shape != (h, w):
            raise WsssError(
                f"{self.annotation_file}: annotation {ann.get('id')} has mask size {m.shape[1]}×{m.shape[0]}, "
                f"image is {w}×{h}"
            )
        return m.astype(bool)

    def _render(self, image_id: str) -> None:
        semantic, instance = self.render_masks(image_id)
        save_label(self._mask_path("SegmentationClass", image_id), semantic)
        save_label(self._mask_path("SegmentationObject", image_id), instance)
