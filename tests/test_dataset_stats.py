"""Dataset statistics (`wsss stats`) on a hand-made 3-image VOC-layout folder whose figures are
counted by hand, the VOC column and its sources, and the command once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import wsss_in_process

from wsss.data import build_dataset
from wsss.data.stats import VOC_REFERENCE, VOC_SOURCES, dataset_statistics, format_statistics
from wsss.io import IGNORE, WsssError, atomic_write_text, save_image, save_label

H = W = 20  # 400 px per image; stride 4 → 16 px per CAM cell


def _boxes(boxes: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    out = np.zeros((H, W), np.uint8)
    for y0, y1, x0, x1, value in boxes:
        out[y0:y1, x0:x1] = value
    return out


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> Path:
    """Classes cat=1, dog=2, person=3.

    a: cats of 100 and 10 px, a dog of 40 px, an ignore row (20 px), background 230 px;
    b: a person of 200 px and a dog of 25 px, background 175 px;
    c: no instance PNG, so two 8-connected dog components of 16 and 100 px, background 284 px.
    """
    root = tmp_path_factory.mktemp("three")
    a_inst = _boxes([(0, 10, 0, 10, 1), (12, 14, 12, 17, 2), (0, 5, 12, 20, 3), (19, 20, 0, 20, IGNORE)])
    a_gt = np.array([0, 1, 1, 2], np.uint8)[np.minimum(a_inst, 3)]
    a_gt[a_inst == IGNORE] = IGNORE
    b_inst = _boxes([(0, 20, 0, 10, 1), (0, 5, 15, 20, 2)])
    b_gt = np.array([0, 3, 2], np.uint8)[b_inst]
    c_gt = _boxes([(0, 4, 0, 4, 2), (10, 20, 10, 20, 2)])
    for image_id, gt, inst in (("a", a_gt, a_inst), ("b", b_gt, b_inst), ("c", c_gt, None)):
        save_image(root / "JPEGImages" / f"{image_id}.png", np.zeros((H, W, 3), np.uint8))
        save_label(root / "SegmentationClass" / f"{image_id}.png", gt)
        if inst is not None:
            save_label(root / "SegmentationObject" / f"{image_id}.png", inst)
    atomic_write_text(root / "class_names.txt", "background\ncat\ndog\nperson\n")
    atomic_write_text(root / "ImageSets" / "Segmentation" / "train.txt", "a\nb\nc\n")
    return root


def test_statistics_equal_the_hand_count(three):
    s = dataset_statistics(build_dataset("voc", three, "train"), stride=4, bounds=(30, 150), progress=False)
    assert (s["images"], s["annotated_images"], s["instances"]) == (3, 3, 7)
    expected = {
        "instances_per_image": 7 / 3,
        "classes_per_image": (2 + 2 + 1) / 3,
        "single_class_share": 1 / 3,
        # areas 10, 16, 25 | 40, 100, 100 | 200 against bounds 30 / 150
        "size_share_small": 3 / 7,
        "size_share_medium": 3 / 7,
        "size_share_large": 1 / 7,
        # cells = area / 16, sorted: 0.625 1 1.5625 2.5 6.25 6.25 12.5 (linear quartiles)
        "cells_q1": 1 + 0.5 * 0.5625,
        "cells_median": 2.5,
        "cells_q3": 6.25,
        "image_cells_median": 25.0,
        "instance_image_share_median": 40 / 400,
        # %S per class over its images, pixels / 400: cat 110, dog (40, 25, 116), person 200
        "class_area_share": (110 / 400 + (40 + 25 + 116) / 1200 + 200 / 400) / 3,
        "background_share": (230 + 175 + 284) / 1200,
        "cooccurrence_any": (1 + 2 / 3 + 1) / 3,
        "cardinality": (2 + 5 / 3 + 2) / 3,
        # cat's partner dog (1 of 1), dog's cat or person (1 of 3), person's dog (1 of 1)
        "top_partner_share": (1 + 1 / 3 + 1) / 3,
    }
    for key, value in expected.items():
        assert s[key] == pytest.approx(value, abs=1e-12), key
    by_name = {c["name"]: c for c in s["per_class"]}
    assert [by_name[n]["instances"] for n in ("cat", "dog", "person")] == [2, 4, 1]
    assert [by_name[n]["images"] for n in ("cat", "dog", "person")] == [1, 3, 1]
    assert by_name["cat"]["top_partner"] == "dog" and by_name["person"]["top_partner"] == "dog"
    assert by_name["dog"]["top_partner"] in ("cat", "person")
    assert by_name["dog"]["top_partner_share"] == pytest.approx(1 / 3)


def test_default_bounds_are_the_datasets_and_voc_column_cites_its_sources(three):
    s = dataset_statistics(build_dataset("voc", three, "train"), progress=False)
    assert s["bounds"] == [1024, 9216] and s["size_share_small"] == 1.0  # VOC's 32² / 96²
    assert s["cells_median"] == pytest.approx(40 / 256)  # stride 16
    table = format_statistics(s)
    assert "VOC 2012 train" in table and "3507 [1]" in table and "69.5 % [2]" in table
    assert all(f"[{i}] {text}" in table for i, text in enumerate(VOC_SOURCES.values(), start=1))
    assert "n/a" in table  # the statistics nobody published for VOC
    assert VOC_REFERENCE["instances_per_image"][0] == pytest.approx(3507 / 1464)
    assert all(src in VOC_SOURCES for _, src in VOC_REFERENCE.values())


def test_a_split_without_ground_truth_is_an_error(three, tmp_path):
    root = tmp_path / "nogt"
    shutil.copytree(three, root)
    atomic_write_text(root / "image_labels.csv", "id,labels\na,cat;dog\nb,dog;person\nc,dog\n")
    shutil.rmtree(root / "SegmentationClass")
    shutil.rmtree(root / "SegmentationObject")
    with pytest.raises(WsssError, match="no ground-truth label maps"):
        dataset_statistics(build_dataset("voc", root, "train"), progress=False)


def test_cli_stats_prints_the_table_and_writes_json(three, tmp_path):
    out = tmp_path / "stats.json"
    args = ["stats", "--data", str(three), "--dataset", "voc", "--split", "train", "--stride", "4"]
    r = wsss_in_process(*args, "--bounds", "30,150", "--json", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert "instances per image, mean" in r.stdout and "2.33" in r.stdout
    saved = json.loads(out.read_text())
    assert saved["instances"] == 7 and saved["stride"] == 4 and saved["bounds"] == [30, 150]
    assert saved["voc_2012_train"]["instances"]["value"] == 3507
    assert json.loads((tmp_path / "stats.run.json").read_text())["stage"] == "stats"
    bad = wsss_in_process(*args, "--bounds", "150,30", "-q")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --bounds")
