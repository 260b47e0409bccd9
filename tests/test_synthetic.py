"""The embedded benchmark generator: determinism, layout, label consistency, the
problems it is meant to contain, the shape bank, val_balanced and resume."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from wsss.data import build_dataset
from wsss.data.synthetic import (
    PART_NAMES,
    PRESETS,
    SynthConfig,
    _make_classes,
    _procedural_template,
    generate,
    load_shape_bank,
    scaled_size_bounds,
    select_balanced_subset,
    shape_bank_files,
    size_bucket,
)
from wsss.data.synthetic.textures import (
    CLASS_TEXTURE_SOURCES,
    SCENE_TEXTURE_SOURCES,
    sample_texture,
    texture_source,
)
from wsss.io import WsssError, load_saliency

SPLITS = ("train", "val", "val_balanced")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "tiny", "tiny", seed=0, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    """Every file but run.json (which records times)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "run.json"
    }


def _instance_records(ds) -> list[tuple[str, int, int]]:
    """(id, class, area) recomputed from the written maps: area = non-ignore pixels of the instance."""
    out = []
    for i in ds.ids:
        gt, inst = ds.gt(i), ds.instances(i)
        for k in np.unique(inst):
            if k in (0, 255):
                continue
            out.append((i, int(np.unique(gt[inst == k])[0]), int((inst == k).sum())))
    return out


def _cv(counts) -> float:
    counts = np.asarray(counts, dtype=float)
    return float(counts.std() / counts.mean())


# --------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_bytes_and_images_do_not_depend_on_split_size(tiny, tmp_path):
    again = generate(tmp_path / "again", "tiny", seed=0, progress=False)
    assert _files(again) == _files(tiny)

    fewer = generate(tmp_path / "fewer", "tiny", seed=0, progress=False, num_train=4, num_val=2)
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "saliency/poor"):
        for image_id in ("train_00000", "train_00003", "val_00001"):
            assert (fewer / sub / f"{image_id}.png").read_bytes() == (
                tiny / sub / f"{image_id}.png"
            ).read_bytes()

    other = generate(tmp_path / "other", "tiny", seed=1, progress=False, num_train=4, num_val=2)
    assert (other / "JPEGImages/train_00000.png").read_bytes() != (
        tiny / "JPEGImages/train_00000.png"
    ).read_bytes()


# --------------------------------------------------------------------------- layout
def test_layout_loads_for_every_split(tiny):
    meta = json.loads((tiny / "dataset.json").read_text())
    assert meta["kind"] == "synthetic" and meta["complete"] and meta["seed"] == 0
    assert meta["image_size"] == [64, 64]
    assert meta["num_classes"] == 6
    # 1024 * 64*64 / 187500 = 22.37, 9216 * 64*64 / 187500 = 201.3
    assert meta["ia_bounds"] == [22, 201]
    assert set(meta["saliency_sources"]) == {"oracle", "good", "poor"}
    assert (tiny / "class_names.txt").read_text().split() == ["background", *PART_NAMES[:5]]
    assert json.loads((tiny / "run.json").read_text())["stage"] == "synth"

    sets = {}
    for split in SPLITS:
        ds = build_dataset("synthetic", tiny, split)
        ds.check_labels()
        assert ds.num_classes == 6
        sets[split] = set(ds.ids)
        for i in ds.ids:
            assert ds.image(i).shape == (64, 64, 3)
            for source in ("oracle", "good", "poor"):
                assert load_saliency(ds.saliency_path(source, i), shape=(64, 64)).shape == (64, 64)
    assert len(sets["train"]) == 60 and len(sets["val"]) == 30
    assert sets["val_balanced"] and sets["val_balanced"] <= sets["val"]
    assert not sets["train"] & sets["val"]


def test_ground_truth_instances_and_image_labels_agree(tiny):
    kernel = np.ones((3, 3), np.uint8)
    for split in ("train", "val"):
        ds = build_dataset("synthetic", tiny, split)
        for i in ds.ids:
            gt, inst = ds.gt(i), ds.instances(i)
            assert np.array_equal(gt == 255, inst == 255)
            assert np.array_equal(gt == 0, inst == 0)
            for k in np.unique(inst[(inst != 0) & (inst != 255)]):
                classes = np.unique(gt[inst == k])
                assert classes.size == 1 and classes[0] not in (0, 255)
            present = np.unique(gt[(gt != 0) & (gt != 255)])
            assert np.array_equal(ds.labels(i), present)
            # on the background, the ignore band is exactly the 1-px outer ring of the objects (VOC-style)
            union = load_saliency(ds.saliency_path("oracle", i)) > 0.5
            ring = cv2.dilate(union.astype(np.uint8), kernel).astype(bool) & ~union
            assert np.array_equal(ring, (gt == 255) & ~union)


def test_statistics_match_the_files_and_all_size_buckets_are_populated(tiny):
    meta = json.loads((tiny / "dataset.json").read_text())
    bounds = tuple(meta["ia_bounds"])
    names = meta["class_names"][1:]
    for split in SPLITS:
        ds = build_dataset("synthetic", tiny, split)
        records = _instance_records(ds)
        buckets = np.bincount(size_bucket([a for _, _, a in records], bounds), minlength=3)
        stats = meta["statistics"][split]
        assert [stats["instances_per_size"][b] for b in ("small", "medium", "large")] == buckets.tolist()
        if split != "val_balanced":
            assert (buckets >= 3).all(), (split, buckets)
        per_class = np.zeros(len(names), int)
        for i in ds.ids:
            per_class[ds.labels(i) - 1] += 1
        assert [stats["images_per_class"][n] for n in names] == per_class.tolist()
        assert stats["instances"] == len(records)


def test_val_balanced_is_more_balanced_than_val(tiny):
    bounds = tuple(json.loads((tiny / "dataset.json").read_text())["ia_bounds"])
    cvs = {}
    for split in ("val", "val_balanced"):
        records = _instance_records(build_dataset("synthetic", tiny, split))
        sizes = np.bincount(size_bucket([a for _, _, a in records], bounds), minlength=3)
        classes = np.bincount([c for _, c, _ in records], minlength=6)[1:]
        cvs[split] = (_cv(sizes), _cv(classes))
    assert cvs["val_balanced"][0] < cvs["val"][0]
    assert cvs["val_balanced"][1] < cvs["val"][1]


# --------------------------------------------------------------------------- the WSSS problems
def test_oracle_saliency_is_the_foreground(tiny):
    ds = build_dataset("synthetic", tiny, "val")
    for i in ds.ids:
        gt = ds.gt(i)
        oracle = load_saliency(ds.saliency_path("oracle", i))
        assert (oracle[(gt != 0) & (gt != 255)] == 1.0).all()
        assert (oracle[gt == 0] == 0.0).all()


def test_saliency_quality_is_graded_and_poor_misses_small_objects(tiny):
    bounds = tuple(json.loads((tiny / "dataset.json").read_text())["ia_bounds"])
    missed = {"good": 0, "poor": 0}
    inter = {"good": 0, "poor": 0}
    union = {"good": 0, "poor": 0}
    small = 0
    for split in ("train", "val"):
        ds = build_dataset("synthetic", tiny, split)
        for i in ds.ids:
            gt, inst = ds.gt(i), ds.instances(i)
            fg, valid = (gt != 0) & (gt != 255), gt != 255
            maps = {s: load_saliency(ds.saliency_path(s, i)) for s in missed}
            for s, sal in maps.items():
                inter[s] += int((sal[valid] > 0.5)[fg[valid]].sum())
                union[s] += int(((sal > 0.5) | fg)[valid].sum())
            for k in np.unique(inst[(inst != 0) & (inst != 255)]):
                obj = inst == k
                if obj.sum() < bounds[0]:
                    small += 1
                    for s, sal in maps.items():
                        missed[s] += sal[obj].mean() < 0.2  # docs/methods.md binarises saliency at 0.2
    assert small >= 10
    assert missed["poor"] >= 0.5 * small > missed["good"]
    iou = {s: inter[s] / union[s] for s in inter}
    assert iou["good"] > 0.85 > iou["poor"]


def test_classes_differ_by_a_part_of_15_to_25_percent():
    cfg = SynthConfig(num_classes=20)
    classes = _make_classes(cfg, 0, None)
    rng = np.random.default_rng(0)
    for cls in classes:
        shares = []
        for _ in range(5):
            tpl = _procedural_template(rng, cls, 1500.0, cfg)
            assert abs(tpl.mask.sum() / 1500.0 - 1) < 0.1  # requested area, rasterisation corrected
            assert not (tpl.body & tpl.part).any()
            shares.append(tpl.part.sum() / tpl.mask.sum())
        assert 0.1 < np.mean(shares) < 0.3, (cls.name, shares)
    # the part colours are distinct per class; the body palette is shared
    colours = np.array([c.part_colour for c in classes])
    assert len(np.unique(colours, axis=0)) == 20
    assert len({int(i) for c in classes for i in c.preferred_colours}) < 3 * 20


def test_sample_texture_is_a_turned_crop_of_its_source():
    source = np.random.default_rng(1).random((40, 50)).astype(np.float32)
    turned = [np.rot90(source, k)[:, ::-1] if f else np.rot90(source, k) for k in range(4) for f in (0, 1)]

    def windows(zoom: int, h: int, w: int) -> list[np.ndarray]:
        """Every h×w patch of every turn, box-averaged zoom×zoom: INTER_AREA at an integer factor."""
        out = []
        for t in turned:
            for y in range(t.shape[0] - h * zoom + 1):
                for x in range(t.shape[1] - w * zoom + 1):
                    crop = t[y : y + h * zoom, x : x + w * zoom].astype(np.float64)
                    out.append(crop.reshape(h, zoom, w, zoom).mean(axis=(1, 3)))
        return out

    rng = np.random.default_rng(0)
    for zoom in (1, 2):
        for _ in range(3):
            patch = sample_texture(rng, source, 7, 9, float(zoom))
            assert patch.shape == (7, 9)
            assert min(np.abs(patch - w).max() for w in windows(zoom, 7, 9)) < 1e-6
    big = sample_texture(rng, source, 30, 45, 3.0, stretch=1.5)  # larger than the source: tiled
    assert big.shape == (30, 45) and source.min() <= big.min() and big.max() <= source.max()


def test_classes_own_natural_textures_and_textures_leave_the_layout_alone(tmp_path):
    for name in (*CLASS_TEXTURE_SOURCES, *SCENE_TEXTURE_SOURCES):  # all ship inside installed packages
        tex = texture_source(name)
        assert tex.ndim == 2 and min(tex.shape) >= 100, name
        assert abs(float(tex.mean())) < 0.05 and abs(float(tex.std()) - 1) < 1e-3, name
    classes = _make_classes(SynthConfig(num_classes=20), 0, None)
    assert len({c.texture_source for c in classes[:16]}) == 16  # one source per class up to 16
    assert all(c.texture_stretch == 1.0 for c in classes[:16])
    assert all(c.texture_stretch > 1.0 for c in classes[16:])  # reused sources look different
    # the textures are drawn after the layout: same ground truth, other pixels
    flat = generate(
        tmp_path / "flat", "tiny", seed=0, progress=False, body_texture_strength=0, scene_texture_strength=0
    )
    textured = generate(tmp_path / "textured", "tiny", seed=0, progress=False)
    a, b = build_dataset("synthetic", flat, "train"), build_dataset("synthetic", textured, "train")
    for i in a.ids[:10]:
        assert np.array_equal(a.gt(i), b.gt(i)) and np.array_equal(a.instances(i), b.instances(i))
        assert not np.array_equal(a.image(i), b.image(i))


def test_context_stuff_follows_its_class(tiny):
    meta = json.loads((tiny / "dataset.json").read_text())
    assert len(meta["context"]) == round(0.5 * 5)
    for split in ("train", "val"):
        rates = meta["statistics"][split]["context_cooccurrence"]
        assert set(rates) == set(meta["context"])
        assert all(r is None or r >= 0.5 for r in rates.values())
        assert (
            meta["statistics"][split]["spurious_context_images"] <= 0.2 * meta["statistics"][split]["images"]
        )


# --------------------------------------------------------------------------- val_balanced selection
def test_select_balanced_subset_hand_cases():
    bounds = (10, 100)
    # one class; 2 small, 2 medium, 5 large: quotas 2 per bucket -> the 2 first large ones
    records = [("a", 1, 5), ("g", 1, 500), ("c", 1, 50), ("b", 1, 6), ("h", 1, 600), ("d", 1, 60)]
    records += [("e", 1, 700), ("f", 1, 800), ("i", 1, 900)]
    assert select_balanced_subset(records, bounds) == ["a", "g", "c", "b", "h", "d"]
    # one bucket; class 1 in four images, class 2 in two: quotas 2 per class
    records = [("p", 1, 50), ("q", 1, 50), ("t", 2, 50), ("r", 1, 50), ("s", 1, 50), ("u", 2, 50)]
    assert select_balanced_subset(records, bounds) == ["p", "q", "t", "u"]
    assert select_balanced_subset([], bounds) == []
    assert size_bucket([9, 10, 99, 100], bounds).tolist() == [0, 1, 1, 2]
    assert scaled_size_bounds(128, 128) == (89, 805)


# --------------------------------------------------------------------------- shape bank
def _save(path: Path, arr: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)


def _disc(size: int = 40, r: int = 12) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= r * r).astype(np.uint8) * 255


def _bank(root: Path) -> Path:
    _save(root / "moon" / "disc.png", _disc())
    crescent = _disc() & ~np.roll(_disc(), 8, axis=1)
    _save(root / "moon" / "crescent.png", crescent)
    tri = np.full((40, 40), 255, np.uint8)  # a dark triangle on white paper
    tri[cv2.fillPoly(np.zeros((40, 40), np.uint8), [np.array([[4, 36], [20, 4], [36, 36]])], 1) == 1] = 0
    _save(root / "tent" / "triangle.png", tri)
    return root


def test_shape_bank_replaces_the_procedural_shapes(tmp_path):
    bank = load_shape_bank(_bank(tmp_path / "bank"))
    assert list(bank) == ["moon", "tent"]
    disc = bank["moon"][1]  # files in name order: crescent.png, disc.png
    assert disc.shape == (25, 25) and abs(disc.sum() - np.pi * 144) < 30
    triangle = bank["tent"][0]  # inverted: the dark shape is the foreground
    assert triangle.sum() < 0.6 * triangle.size and triangle.shape == (33, 33)

    root = generate(
        tmp_path / "out", "tiny", seed=0, shapes_dir=tmp_path / "bank", progress=False, num_train=8, num_val=4
    )
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["class_names"] == ["background", "moon", "tent"] and meta["num_classes"] == 3
    assert meta["shapes"]["sha256"]
    for split in SPLITS:
        ds = build_dataset("synthetic", root, split)
        ds.check_labels()
        for i in ds.ids:
            assert set(np.unique(ds.gt(i)).tolist()) <= {0, 1, 2, 255}


def test_shape_bank_takes_anti_aliased_jpeg_and_flat_mpeg7_layouts(tmp_path):
    """Any silhouette bank: soft edges and JPEG noise binarise to the same shape, and a flat
    folder of <class>-<n>.gif files (MPEG-7 CE-Shape-1's layout) names its classes."""
    hard = _disc(80, 24) > 0
    soft = cv2.resize(_disc(160, 48), (80, 80), interpolation=cv2.INTER_AREA)  # anti-aliased edge
    assert len(np.unique(soft)) > 2
    flat = tmp_path / "flat"
    _save(flat / "apple-1.gif", soft)
    _save(flat / "apple-2.gif", 255 - _disc(80, 24))  # dark on white
    _save(flat / "device0-1.gif", _disc(80, 10))
    Image.fromarray(soft).save(flat / "device0-12.jpg", quality=60)
    (flat / "notes.txt").write_text("not an image")
    files = shape_bank_files(flat)
    assert {k: [f.name for f in v] for k, v in files.items()} == {
        "apple": ["apple-1.gif", "apple-2.gif"],
        "device0": ["device0-1.gif", "device0-12.jpg"],
    }
    bank = load_shape_bank(flat)
    crop = hard[np.ix_(hard.any(1), hard.any(0))]
    for mask in (bank["apple"][0], bank["apple"][1], bank["device0"][1]):
        assert abs(mask.shape[0] - crop.shape[0]) <= 2 and abs(mask.shape[1] - crop.shape[1]) <= 2
        assert abs(int(mask.sum()) - int(crop.sum())) <= 0.05 * crop.sum()

    root = generate(tmp_path / "out", "tiny", seed=0, shapes_dir=flat, progress=False, num_train=6, num_val=4)
    assert json.loads((root / "dataset.json").read_text())["class_names"] == [
        "background",
        "apple",
        "device0",
    ]

    numbered = tmp_path / "numbered"
    _save(numbered / "0001.png", _disc())
    with pytest.raises(WsssError) as e:
        load_shape_bank(numbered)
    assert str(e.value).startswith(str(numbered / "0001.png"))


def test_shape_bank_errors_name_the_folder_or_file(tmp_path):
    empty_root = tmp_path / "none"
    empty_root.mkdir()
    with pytest.raises(WsssError) as e:
        load_shape_bank(empty_root)
    assert str(e.value).startswith(str(empty_root))

    bank = _bank(tmp_path / "b1")
    (bank / "ghost").mkdir()
    with pytest.raises(WsssError) as e:
        load_shape_bank(bank)
    assert str(e.value).startswith(str(bank / "ghost"))

    bank = _bank(tmp_path / "b2")
    grey = bank / "tent" / "grey.png"
    _save(grey, np.tile(np.arange(40, dtype=np.uint8) * 6, (40, 1)))
    with pytest.raises(WsssError) as e:
        generate(tmp_path / "o2", "tiny", shapes_dir=bank, progress=False)
    assert str(e.value).startswith(str(grey)) and "binary" in str(e.value)

    bank = _bank(tmp_path / "b3")
    broken = bank / "moon" / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(WsssError) as e:
        load_shape_bank(bank)
    assert str(e.value).startswith(str(broken))


# --------------------------------------------------------------------------- resume
def test_resume_finishes_interrupted_runs_and_refuses_other_configs(tmp_path):
    small = {"progress": False, "num_train": 6, "num_val": 4}
    root = generate(tmp_path / "r", "tiny", seed=0, **small)
    snapshot = _files(root)
    meta_path = root / "dataset.json"

    victim = root / "JPEGImages" / "train_00002.png"
    victim.unlink()
    generate(root, "tiny", seed=0, **small)  # complete and identical: nothing is redone
    assert not victim.exists()

    meta = json.loads(meta_path.read_text())
    meta["complete"] = False  # as left by an interrupted run
    meta_path.write_text(json.dumps(meta))
    generate(root, "tiny", seed=0, **small)
    assert _files(root) == snapshot

    for other in ({"seed": 1}, {"seed": 0, "num_classes": 4}):
        with pytest.raises(WsssError) as e:
            generate(root, "tiny", **small, **other)
        assert str(e.value).startswith(str(meta_path))
    generate(root, "tiny", seed=1, overwrite=True, **small)
    assert json.loads(meta_path.read_text())["seed"] == 1

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(WsssError) as e:
        generate(foreign, "tiny", **small)
    assert str(e.value).startswith(str(foreign))


def test_bad_config_values_are_reported(tmp_path):
    with pytest.raises(WsssError, match="unknown synth preset"):
        generate(tmp_path / "x", "huge")
    with pytest.raises(WsssError, match="unknown options"):
        generate(tmp_path / "x", "tiny", num_clases=4)
    with pytest.raises(WsssError, match="num_classes"):
        generate(tmp_path / "x", "tiny", num_classes=25)
    with pytest.raises(WsssError, match="part_area"):
        generate(tmp_path / "x", "tiny", part_area=[0.3, 0.1])
    assert PRESETS["demo"].num_classes == 10 and PRESETS["demo"].height == 256
    # the earlier demo lives on as `cartoon`: 128 px, flat bodies, smaller objects
    cartoon = PRESETS["cartoon"]
    assert (cartoon.height, cartoon.num_train, cartoon.min_object_area, cartoon.max_object_area) == (
        128, 2000, 0.0025, 0.38,
    )  # fmt: skip
    assert cartoon.body_texture_strength == cartoon.scene_texture_strength == 0
