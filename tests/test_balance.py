"""`wsss balance`: instance records as IA-mIoU sees them, the greedy size/class-balanced pick,
agreement with the synthetic generator's val_balanced, and the command end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from wsss.cli import app
from wsss.data import build_dataset
from wsss.data.balance import (
    balance_split,
    evenness,
    histograms,
    instance_records,
    select_balanced_subset,
)
from wsss.data.synthetic import generate
from wsss.io import WsssError, atomic_write_text, save_image, save_label


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "tiny", "tiny", seed=0, progress=False)


# --------------------------------------------------------------------------- records
def _hand_voc(root: Path) -> Path:
    """Four 10×10 images whose instances are known: see the expected records in the test."""
    a_gt = np.zeros((10, 10), np.uint8)
    a_in = np.zeros((10, 10), np.uint8)
    a_gt[0:2, 0:3], a_in[0:2, 0:3] = 1, 1  # instance 1: cat, 6 px
    a_gt[5:8, 5:7], a_in[5:8, 5:7] = 2, 2  # instance 2: dog, 6 px ...
    a_gt[5, 5], a_in[5, 5] = 255, 255  # ... minus one pixel ignored in both maps
    a_gt[7, 6] = 255  # ... and one ignored in the GT only: 4 labelled px

    b_gt = np.zeros((10, 10), np.uint8)
    b_in = np.zeros((10, 10), np.uint8)
    b_in[0:3, 0:3] = 1  # instance 1: 7 dog px and 2 cat px -> dog, 9 px
    b_gt[0:3, 0:3] = 2
    b_gt[0, 0:2] = 1
    b_in[5, 0:5] = 3  # instance 3: 1 cat px and 4 background px -> dropped (part of the background)
    b_gt[5, 0] = 1
    b_in[8:10, 8:10], b_gt[8:10, 8:10] = 5, 1  # instance 5 (ids need not be consecutive): cat, 4 px

    c_gt = np.zeros((10, 10), np.uint8)  # no instance PNG: 8-connected components of each class
    c_gt[0:2, 0:2] = 1
    c_gt[2, 2] = 1  # touches the block diagonally: one component of 5 px
    c_gt[8:10, 8:10] = 1  # a second cat, 4 px
    c_gt[5, 0:3] = 2  # a dog, 3 px

    d_gt = np.zeros((10, 10), np.uint8)  # background only: annotated, no instances

    maps = {"a": (a_gt, a_in), "b": (b_gt, b_in), "c": (c_gt, None), "d": (d_gt, None)}
    for image_id, (gt, inst) in maps.items():
        save_image(root / "JPEGImages" / f"{image_id}.png", np.zeros((10, 10, 3), np.uint8))
        save_label(root / "SegmentationClass" / f"{image_id}.png", gt)
        if inst is not None:
            save_label(root / "SegmentationObject" / f"{image_id}.png", inst)
    atomic_write_text(root / "ImageSets" / "Segmentation" / "val.txt", "a\nb\nc\nd\n")
    atomic_write_text(root / "class_names.txt", "background\ncat\ndog\n")
    return root


def test_instance_records_match_hand_computed_areas_and_classes(tmp_path):
    ds = build_dataset("voc", _hand_voc(tmp_path / "voc"), "val")
    expected = [("a", 1, 6), ("a", 2, 4), ("b", 2, 9), ("b", 1, 4), ("c", 1, 5), ("c", 1, 4), ("c", 2, 3)]
    assert instance_records(ds, progress=False) == expected


def test_records_need_ground_truth(tmp_path):
    root = tmp_path / "folder"
    save_image(root / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    atomic_write_text(root / "labels.csv", "id,labels\na,dog\n")
    with pytest.raises(WsssError, match=rf"^{root}: split 'all' has no instance annotations and no ground"):
        instance_records(build_dataset("folder", root, "all"), progress=False)
    save_label(
        root / "instances" / "a.png", np.ones((8, 8), np.uint8)
    )  # an instance map alone has no classes
    with pytest.raises(WsssError, match=rf"^{root / 'instances' / 'a.png'}: instance map without a ground"):
        instance_records(build_dataset("folder", root, "all"), progress=False)


# --------------------------------------------------------------------------- selection
def _skewed_records() -> list[tuple[str, int, float]]:
    """20 images with one large instance, 3 with a small and 3 with a medium one, interleaved."""
    records = [(f"L{k:02d}", 1, 5000.0) for k in range(20)]
    for k, pos in enumerate((2, 9, 17)):
        records.insert(pos, (f"s{k}", 1, 5.0))
        records.insert(pos + 4, (f"m{k}", 1, 50.0))
    return records


def test_selection_evens_out_sizes_and_keeps_every_scarce_image():
    bounds = (10, 100)
    records = _skewed_records()
    chosen = select_balanced_subset(records, bounds)
    scarce = {i for i, _, _ in records if not i.startswith("L")}
    assert scarce <= set(chosen)
    assert len(chosen) == 9  # quotas: 3 per bucket
    assert chosen == [
        i for i in dict.fromkeys(i for i, _, _ in records) if i in set(chosen)
    ]  # first-seen order
    whole, _ = histograms(records, bounds, num_classes=2)
    sub, _ = histograms([r for r in records if r[0] in set(chosen)], bounds, num_classes=2)
    assert whole.tolist() == [3, 3, 20] and sub.tolist() == [3, 3, 3]
    assert evenness(sub) == pytest.approx(1.0) and evenness(sub) > evenness(whole) + 0.2

    # a rare class: dogs in 2 of 22 single-bucket images -> both dog images are chosen, classes even out
    records = [(f"c{k:02d}", 1, 50.0) for k in range(20)] + [("d0", 2, 50.0), ("d1", 2, 50.0)]
    chosen = select_balanced_subset(records, bounds)
    assert {"d0", "d1"} <= set(chosen)
    _, whole_c = histograms(records, bounds, num_classes=3)
    _, sub_c = histograms([r for r in records if r[0] in set(chosen)], bounds, num_classes=3)
    assert sub_c.tolist() == [2, 2] and evenness(sub_c) > evenness(whole_c)


def test_max_images_keeps_the_most_useful_images():
    records = _skewed_records()
    two = select_balanced_subset(records, (10, 100), max_images=2)
    assert len(two) == 2 and not any(i.startswith("L") for i in two)
    assert select_balanced_subset(records, (10, 100), max_images=100) == select_balanced_subset(
        records, (10, 100)
    )
    with pytest.raises(WsssError, match="max_images must be >= 1"):
        select_balanced_subset(records, (10, 100), max_images=0)


def test_evenness():
    assert evenness([4, 4, 4]) == pytest.approx(1.0)
    assert evenness([9, 0, 0]) == 0.0
    assert evenness([0, 0]) == 0.0
    assert 0 < evenness([1, 2, 30]) < evenness([10, 12, 14]) < 1


# --------------------------------------------------------------------------- the generator's split
def test_balance_split_reproduces_the_generators_val_balanced(tiny, tmp_path):
    """The generator balances its in-memory records (instance k's drawn class, its non-ignore pixels)
    with the dataset's ia_bounds; read back from the PNGs they are the same records in the same order."""
    meta = json.loads((tiny / "dataset.json").read_text())
    ds = build_dataset("synthetic", tiny, "val")
    summary = balance_split(ds, tmp_path / "out", name="val_balanced", progress=False)
    written = tmp_path / "out" / "val_balanced.txt"
    assert written.read_bytes() == (tiny / "ImageSets" / "Segmentation" / "val_balanced.txt").read_bytes()
    assert summary["bounds"] == meta["ia_bounds"]
    stats = meta["statistics"]
    assert {k: v["split"] for k, v in summary["sizes"].items()} == stats["val"]["instances_per_size"]
    assert {k: v["subset"] for k, v in summary["sizes"].items()} == stats["val_balanced"][
        "instances_per_size"
    ]
    assert {k: v["subset"] for k, v in summary["classes"].items()} == stats["val_balanced"][
        "instances_per_class"
    ]
    assert summary["num_images"] == stats["val_balanced"]["images"]
    for kind in ("sizes", "classes"):
        assert summary["evenness"][kind]["subset"] > summary["evenness"][kind]["split"]


# --------------------------------------------------------------------------- the command
def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_balance_end_to_end(tiny, tmp_path):
    runner = CliRunner()
    out = tmp_path / "bal"
    res = runner.invoke(app, ["balance", "--data", str(tiny), "--split", "val", "--out", str(out),
                              "--name", "b5", "--max-images", "5", "--bounds", "22,201", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    listed = (out / "b5.txt").read_text().split()
    assert f"subset list: {out / 'b5.txt'}" in res.output and "evenness" in res.output
    assert len(listed) == 5 == len(set(listed))
    for name in ("b5_histogram.csv", "b5_histogram.json", "b5.run.json"):
        assert (out / name).is_file()
    with Image.open(out / "b5_histogram.png") as img:
        assert img.format == "PNG" and img.width > 200
    assert json.loads((out / "b5.run.json").read_text())["stage"] == "balance"

    records = instance_records(build_dataset("synthetic", tiny, "val"), progress=False)
    subset = [r for r in records if r[0] in set(listed)]
    rows = _csv_rows(out / "b5_histogram.csv")
    total = {r["name"]: r for r in rows if r["kind"] == "total"}
    assert int(total["images"]["subset"]) == len(listed) and int(total["images"]["split"]) == 30
    for column, recs in (("subset", subset), ("split", records)):
        assert int(total["instances"][column]) == len(recs)
        for kind in ("size", "class"):
            assert sum(int(r[column]) for r in rows if r["kind"] == kind) == len(recs)
    classes = {r["name"]: int(r["subset"]) for r in rows if r["kind"] == "class"}
    names = (tiny / "class_names.txt").read_text().split()
    assert classes == {n: sum(c == k for _, c, _ in subset) for k, n in enumerate(names) if k > 0}
    summary = json.loads((out / "b5_histogram.json").read_text())
    assert summary["num_images"] == 5 and summary["max_images"] == 5

    res = runner.invoke(app, ["balance", "--data", str(tiny), "--out", str(out), "--bounds", "22", "-q"])
    assert isinstance(res.exception, WsssError) and "--bounds expects two numbers" in str(res.exception)
