"""The folder and COCO datasets: layouts, splits, labels, rendered masks and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import wsss.data.coco  # noqa: F401  (registers "coco")
import wsss.data.folder  # noqa: F401  (registers "folder")
from wsss.data import DATASETS, build_dataset
from wsss.io import WsssError, atomic_write_text, load_instances, load_label, save_image, save_label


def test_registered():
    assert {"folder", "coco"} <= set(DATASETS)


# --------------------------------------------------------------------------- folder
def _folder(root: Path, csv_text: str, images=("a.png", "b.jpg", "c.png", "d.png")) -> Path:
    rng = np.random.default_rng(0)
    for name in images:
        save_image(root / "images" / name, rng.integers(0, 255, size=(6, 5, 3)).astype(np.uint8))
    atomic_write_text(root / "labels.csv", csv_text)
    return root


SPLIT_CSV = "id,labels,split\na,dog;cat,train\nb,cat,train\nc,zebra,val\nd,dog,val\n"


def test_folder_derives_class_names_and_splits(tmp_path):
    root = _folder(tmp_path, SPLIT_CSV)
    train = build_dataset("folder", root, "train")
    assert train.class_names == ["background", "cat", "dog", "zebra"]
    assert train.ids == ["a", "b"]
    np.testing.assert_array_equal(train.labels("a"), [1, 2])
    np.testing.assert_array_equal(train.label_vector("b"), [1, 0, 0])
    val = build_dataset("folder", root, "val")
    assert val.ids == ["c", "d"] and val.labels("c").tolist() == [3]
    assert build_dataset("folder", root, "all").ids == ["a", "b", "c", "d"]
    assert train.image_path("b") == root / "images" / "b.jpg"
    assert train.image("a").shape == (6, 5, 3)
    assert train.gt_path("a") is None and train.gt("a") is None and train.instances("a") is None
    train.check_labels()


def test_folder_without_split_column_uses_every_row(tmp_path):
    root = _folder(tmp_path, "id,labels\na,dog\nb,cat\n", images=("a.png", "b.png"))
    for split in ("train", "val", "all"):
        assert build_dataset("folder", root, split).ids == ["a", "b"]


def test_folder_masks_and_class_names_file(tmp_path):
    root = _folder(tmp_path, "id,labels\na,person\nb,2;person\n", images=("a.png", "b.png"))
    atomic_write_text(root / "class_names.txt", "background\nperson\ncar\n")
    gt = np.zeros((6, 5), np.uint8)
    gt[1:3, 1:4] = 1
    gt[5, :] = 255
    save_label(root / "masks" / "a.png", gt)
    save_label(root / "instances" / "a.png", (gt == 1).astype(np.uint8))
    ds = build_dataset("folder", root, "all")
    assert ds.class_names == ["background", "person", "car"]
    assert ds.labels("b").tolist() == [1, 2]  # ids and names mix
    np.testing.assert_array_equal(ds.gt("a"), gt)
    np.testing.assert_array_equal(ds.instances("a"), gt == 1)
    assert ds.gt_path("b") is None


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(WsssError, match=rf"^{tmp_path / 'labels.csv'}: image-level labels file not found"):
        build_dataset("folder", tmp_path, "all")

    root = _folder(tmp_path / "r1", SPLIT_CSV)
    with pytest.raises(WsssError, match=rf"^{root / 'labels.csv'}: no rows with split 'test'"):
        build_dataset("folder", root, "test")

    root = _folder(tmp_path / "r2", "id,labels\na,dog\nb,horse\n", images=("a.png", "b.png"))
    atomic_write_text(root / "class_names.txt", "background\ndog\n")
    with pytest.raises(WsssError, match=rf"^{root / 'labels.csv'}:3: unknown class 'horse'"):
        build_dataset("folder", root, "all")

    root = _folder(tmp_path / "r3", "id,labels\na,dog\nzz,dog\n", images=("a.png",))
    with pytest.raises(WsssError, match=rf"^{root / 'images'}: no image .* e.g. 'zz'"):
        build_dataset("folder", root, "all")

    root = _folder(tmp_path / "r4", "id,labels\na,dog\na,cat\n", images=("a.png",))
    with pytest.raises(WsssError, match=rf"^{root / 'labels.csv'}:3: image id 'a' appears twice"):
        build_dataset("folder", root, "all")

    root = _folder(tmp_path / "r5", "image,classes\na,dog\n", images=("a.png",))
    with pytest.raises(WsssError, match=rf"^{root / 'labels.csv'}: expected a header"):
        build_dataset("folder", root, "all")

    root = _folder(tmp_path / "r6", "id,labels\na,dog\n", images=("a.png", "a.jpg"))
    with pytest.raises(WsssError, match="two images for id 'a'"):
        build_dataset("folder", root, "all")

    root = _folder(tmp_path / "r7", "id,labels\na,dog\nb,\n", images=("a.png", "b.png"))
    ds = build_dataset("folder", root, "all")
    with pytest.raises(WsssError, match="image 'b' has an empty label set"):
        ds.check_labels()


# --------------------------------------------------------------------------- COCO
def _box(x0, y0, x1, y1):
    """A COCO polygon of the pixel box rows y0..y1-1, columns x0..x1-1 (pycocotools' rasterisation)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths, starting with a run of zeros), by hand."""
    flat = mask.T.reshape(-1).astype(np.int64)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0, *runs]
    return {"counts": runs, "size": list(mask.shape)}


H, W = 10, 12


def _fake_coco(root: Path, split: str = "val") -> Path:
    crowd = np.zeros((H, W), np.uint8)
    crowd[6:9, 0:8] = 1
    anns = [
        # image 42: a dog box, a person box drawn over it, a crowd of people under another dog
        {"id": 1, "image_id": 42, "category_id": 18, "segmentation": _box(1, 1, 6, 5), "iscrowd": 0},
        {"id": 2, "image_id": 42, "category_id": 1, "segmentation": _box(4, 2, 9, 4), "iscrowd": 0},
        {"id": 3, "image_id": 42, "category_id": 1, "segmentation": _uncompressed_rle(crowd), "iscrowd": 1},
        {"id": 4, "image_id": 42, "category_id": 18, "segmentation": _box(2, 7, 4, 10), "iscrowd": 0},
        # image 7: one bottle
        {"id": 5, "image_id": 7, "category_id": 44, "segmentation": _box(0, 0, 3, 3), "iscrowd": 0},
    ]
    data = {
        "images": [
            {"id": 42, "file_name": f"COCO_{split}2014_000000000042.jpg", "height": H, "width": W},
            {"id": 7, "file_name": f"COCO_{split}2014_000000000007.jpg", "height": H, "width": W},
            {
                "id": 9,
                "file_name": f"COCO_{split}2014_000000000009.jpg",
                "height": H,
                "width": W,
            },  # no annotations
        ],
        "annotations": anns,
        "categories": [
            {"id": 44, "name": "bottle", "supercategory": "kitchen"},
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 18, "name": "dog", "supercategory": "animal"},
        ],
    }
    atomic_write_text(root / "annotations" / f"instances_{split}2014.json", json.dumps(data))
    for img in data["images"]:
        save_image(root / f"{split}2014" / img["file_name"], np.full((H, W, 3), 128, np.uint8))
    return root


def _expected_masks():
    sem = np.zeros((H, W), np.uint8)
    inst = np.zeros((H, W), np.uint8)
    sem[6:9, 0:8] = 255  # crowd first …
    inst[6:9, 0:8] = 255
    sem[1:5, 1:6] = 2  # dog (category 18 → class 2)
    inst[1:5, 1:6] = 1
    sem[2:4, 4:9] = 1  # person over the dog
    inst[2:4, 4:9] = 2
    sem[7:10, 2:4] = 2  # … then the dog inside the crowd keeps its class
    inst[7:10, 2:4] = 3
    return sem, inst


def test_coco_labels_classes_and_ids(tmp_path):
    root = _fake_coco(tmp_path)
    ds = build_dataset("coco", root, "val")
    assert ds.class_names == ["background", "person", "dog", "bottle"]  # sorted by category id 1, 18, 44
    assert ds.num_classes == 4
    assert ds.ids == ["COCO_val2014_000000000007", "COCO_val2014_000000000042"]  # image-id order, 9 dropped
    assert ds.labels("COCO_val2014_000000000007").tolist() == [3]
    assert ds.labels("COCO_val2014_000000000042").tolist() == [1, 2]  # crowd people count as "person"
    assert ds.image_path(ds.ids[0]) == root / "val2014" / "COCO_val2014_000000000007.jpg"
    assert ds.image(ds.ids[0]).shape == (H, W, 3)
    assert build_dataset("coco", root, "val2014").ids == ds.ids
    ds.check_labels()


def test_coco_masks_are_rendered_and_cached(tmp_path, monkeypatch):
    root = _fake_coco(tmp_path)
    ds = build_dataset("coco", root, "val")
    image_id = "COCO_val2014_000000000042"
    sem, inst = _expected_masks()
    gt_path = ds.gt_path(image_id)
    assert gt_path == root / "wsss_masks" / "val" / "SegmentationClass" / f"{image_id}.png"
    np.testing.assert_array_equal(load_label(gt_path, ds.num_classes), sem)
    np.testing.assert_array_equal(ds.gt(image_id), sem)
    inst_path = ds.instance_path(image_id)
    assert inst_path == root / "wsss_masks" / "val" / "SegmentationObject" / f"{image_id}.png"
    np.testing.assert_array_equal(load_instances(inst_path), inst)
    bottle = np.zeros((H, W), np.uint8)
    bottle[:3, :3] = 3
    np.testing.assert_array_equal(ds.gt("COCO_val2014_000000000007"), bottle)

    # cached: a second dataset object reads the PNGs without rendering
    again = build_dataset("coco", root, "val")
    monkeypatch.setattr(again, "render_masks", lambda *_: pytest.fail("re-rendered a cached mask"))
    np.testing.assert_array_equal(again.gt(image_id), sem)
    assert not list((root / "wsss_masks").rglob("*.tmp"))


def test_coco_cache_dir_option(tmp_path):
    root = _fake_coco(tmp_path / "coco")
    ds = build_dataset("coco", root, "val", cache_dir=tmp_path / "cache")
    path = ds.gt_path(ds.ids[0])
    assert path.parent == tmp_path / "cache" / "val" / "SegmentationClass" and path.is_file()
    assert not (root / "wsss_masks").exists()


def test_coco_errors_name_the_file(tmp_path):
    ann = tmp_path / "annotations" / "instances_train2014.json"
    with pytest.raises(WsssError, match=rf"^{ann}: file not found"):
        build_dataset("coco", tmp_path, "train")
    with pytest.raises(WsssError, match="split must be one of"):
        build_dataset("coco", tmp_path, "test")

    atomic_write_text(ann, "{not json")
    with pytest.raises(WsssError, match=rf"^{ann}: not valid JSON"):
        build_dataset("coco", tmp_path, "train")
    atomic_write_text(ann, json.dumps({"images": []}))
    with pytest.raises(WsssError, match=rf"^{ann}: not a COCO instances file"):
        build_dataset("coco", tmp_path, "train")

    root = _fake_coco(tmp_path / "c2", "train")
    path = root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 99
    atomic_write_text(path, json.dumps(data))
    with pytest.raises(WsssError, match=rf"^{path}: annotation 1 has unknown category_id 99"):
        build_dataset("coco", root, "train")

    data["annotations"][0]["category_id"] = 18
    data["annotations"][2]["segmentation"]["size"] = [H + 1, W]
    atomic_write_text(path, json.dumps(data))
    ds = build_dataset("coco", root, "train")
    with pytest.raises(WsssError, match=rf"^{path}: annotation 3 has mask size"):
        ds.gt_path("COCO_train2014_000000000042")
