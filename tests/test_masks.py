"""Class-agnostic masks: the packed file format, the region-proposal generators on real
images, ground-truth instances, a tiny randomly initialised SAM, and the sharded stage."""

from __future__ import annotations

import json
import shutil
import time
from functools import partial

import numpy as np
import pytest

from wsss.data import build_dataset
from wsss.io import WsssError, atomic_write_bytes, load_instances
from wsss.pseudo.masks import (
    SamGenerator,
    build_mask_generator,
    generate_masks,
    load_mask_scores,
    load_masks,
    save_masks,
    segments_to_masks,
)


# --------------------------------------------------------------------------- format
@pytest.mark.parametrize("n, h, w", [(5, 7, 9), (0, 3, 5), (1, 1, 1), (3, 16, 8)])
def test_round_trip_with_padding_and_no_masks(tmp_path, n, h, w):
    rng = np.random.default_rng(n + h)
    masks = rng.random((n, h, w)) < 0.4
    scores = rng.random(n).astype(np.float32)
    path = tmp_path / "m.npz"
    save_masks(path, masks, scores)
    out = load_masks(path, shape=(h, w))
    assert out.dtype == bool and out.shape == (n, h, w)
    np.testing.assert_array_equal(out, masks)
    np.testing.assert_array_equal(load_mask_scores(path), scores)
    with np.load(path) as z:  # the documented layout, readable without wsss
        assert z["packed"].shape == (n, (h * w + 7) // 8) and z["shape"].tolist() == [n, h, w]
        np.testing.assert_array_equal(z["areas"], masks.reshape(n, h * w).sum(axis=1))
    save_masks(path, masks)
    assert load_mask_scores(path) is None


def test_bad_mask_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.npz"
    atomic_write_bytes(garbage, b"not a zip at all")
    with pytest.raises(WsssError, match=r"garbage\.npz: cannot read mask file"):
        load_masks(garbage)
    with pytest.raises(WsssError, match=r"absent\.npz: mask file not found"):
        load_masks(tmp_path / "absent.npz")
    wrong_keys = tmp_path / "wrong.npz"
    np.savez(wrong_keys, cam=np.zeros(3))
    with pytest.raises(WsssError, match=r"wrong\.npz: expected arrays 'shape' and 'packed'"):
        load_masks(wrong_keys)
    truncated = tmp_path / "truncated.npz"
    np.savez(truncated, shape=np.array([2, 4, 4]), packed=np.zeros((2, 1), np.uint8))
    with pytest.raises(WsssError, match=r"truncated\.npz: 'packed' has shape \(2, 1\)"):
        load_masks(truncated)
    good = tmp_path / "good.npz"
    save_masks(good, np.ones((2, 4, 6), bool))
    with pytest.raises(WsssError, match=r"good\.npz: masks are 6×4 but the image is 4×6"):
        load_masks(good, shape=(6, 4))


# --------------------------------------------------------------------------- region proposals
def two_region_image(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A red box on dark noise, and the box's mask."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 80, size=(size, size, 3)).astype(np.uint8)
    inside = np.zeros((size, size), bool)
    inside[30:90, 20:100] = True
    image[inside] = (230, 40, 40)
    return image, inside


def iou(masks: np.ndarray, target: np.ndarray) -> np.ndarray:
    return (masks & target).sum(axis=(1, 2)) / (masks | target).sum(axis=(1, 2))


def test_segments_to_masks_drops_small_segments():
    segments = np.array([[0, 0, 1], [2, 2, 2], [0, 3, 3]])
    masks = segments_to_masks(segments, min_area=2)
    np.testing.assert_array_equal(masks, [segments == 0, segments == 2, segments == 3])


def test_felzenszwalb_finds_the_object_among_overlapping_scales():
    image, inside = two_region_image()
    generator = build_mask_generator("felzenszwalb")
    masks, scores = generator.from_image(image)
    assert scores is None and masks.dtype == bool and masks.shape[1:] == inside.shape
    assert masks.shape[0] >= 3
    assert masks.sum(axis=0).max() == len(generator.options["scales"])  # each scale covers the image once
    assert iou(masks, inside).max() > 0.8
    min_area = round(generator.options["min_area"] * inside.size)
    assert masks.sum(axis=(1, 2)).min() >= min_area
    assert (
        len({m.tobytes() for m in masks}) == masks.shape[0]
    )  # a segment repeated across scales is kept once


def test_slic_levels_partition_the_image_and_respect_the_object():
    image, inside = two_region_image()
    generator = build_mask_generator("slic", n_segments=[16, 64])
    masks, _ = generator.from_image(image)
    assert masks.shape[0] > 16 and masks.shape[1:] == inside.shape
    assert (masks.sum(axis=0) <= 2).all() and (masks.sum(axis=0) >= 1).mean() > 0.99
    # superpixels adhere to the box's edges: those lying inside the box rebuild it
    mostly_inside = (masks & inside).sum(axis=(1, 2)) / masks.sum(axis=(1, 2)) > 0.9
    assert iou(masks[mostly_inside].any(axis=0)[None], inside)[0] > 0.8


def test_generator_registry_and_options():
    with pytest.raises(WsssError, match="unknown mask generator 'nope'"):
        build_mask_generator("nope")
    with pytest.raises(WsssError, match=r"mask generator 'slic': unknown option\(s\) \['scales'\]"):
        build_mask_generator("slic", scales=[1])
    with pytest.raises(WsssError, match="scales must be a non-empty list of positive numbers"):
        build_mask_generator("felzenszwalb", scales=[])
    with pytest.raises(WsssError, match="min_area"):
        build_mask_generator("slic", min_area=1.5)
    assert build_mask_generator("felzenszwalb", scales=(50, 200)).settings() == {
        "generator": "felzenszwalb",
        "options": {"scales": [50.0, 200.0], "sigma": 0.8, "min_area": 0.002},
    }


def test_gt_instances_are_the_instance_map(voc_like, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    generator = build_mask_generator("gt-instances")
    for image_id in ds.ids[:4]:
        masks, _ = generator.generate(ds, image_id)
        instances = load_instances(voc_like / "SegmentationObject" / f"{image_id}.png")
        ids = [i for i in np.unique(instances) if i not in (0, 255)]
        assert masks.shape == (len(ids), *instances.shape)
        np.testing.assert_array_equal(masks, np.stack([instances == i for i in ids]))
    copy = tmp_path / "copy"
    shutil.copytree(voc_like, copy)
    (copy / "SegmentationObject" / f"{ds.ids[0]}.png").unlink()
    with pytest.raises(WsssError, match=rf"copy: no instance map for image '{ds.ids[0]}'"):
        generator.generate(build_dataset("synthetic", copy, "train"), ds.ids[0])


# --------------------------------------------------------------------------- SAM
def tiny_sam():
    """A randomly initialised SAM small enough for a CPU test: one block per transformer,
    32-d embeddings, 64-px patches (the 1024-px input frame SAM's transforms assume stays)."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    dim, patch = 32, 64
    grid = 1024 // patch
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=1024,
            patch_size=patch,
            embed_dim=dim,
            depth=1,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=dim,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(1024, 1024), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=1,
            iou_head_hidden_dim=16,
        ),
    )


def test_tiny_random_sam_runs_end_to_end():
    pytest.importorskip("segment_anything")
    generator = SamGenerator.from_model(
        tiny_sam(), points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, device="cpu"
    )
    image = np.random.default_rng(0).integers(0, 256, size=(32, 48, 3)).astype(np.uint8)
    start = time.perf_counter()
    masks, scores = generator.from_image(image)
    assert time.perf_counter() - start < 10
    assert masks.dtype == bool and masks.ndim == 3 and masks.shape[1:] == (32, 48)
    assert 1 <= masks.shape[0] <= 3 * 3 * 3  # three masks per prompt point at most, empty ones dropped
    assert masks.reshape(masks.shape[0], -1).any(axis=1).all()
    assert scores.dtype == np.float32 and scores.shape == (masks.shape[0],)
    settings = generator.settings()
    assert settings["generator"] == "sam" and len(settings["model_sha256"]) == 64
    assert "device" not in settings["options"]


def test_sam_needs_a_checkpoint_and_sam2_explains_its_install(tmp_path):
    pytest.importorskip("segment_anything")
    with pytest.raises(WsssError, match=r"mask generator 'sam': needs a model checkpoint"):
        build_mask_generator("sam")
    with pytest.raises(WsssError, match=r"missing\.pth: sam checkpoint not found"):
        build_mask_generator("sam", checkpoint=str(tmp_path / "missing.pth"))
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(WsssError, match="model_type must be one of"):
        build_mask_generator("sam", checkpoint=str(tmp_path / "w.pth"), model_type="vit_xxl")
    with pytest.raises(WsssError, match="points_per_side must be an integer"):
        build_mask_generator("sam", checkpoint=str(tmp_path / "w.pth"), points_per_side=1.5)
    try:
        import sam2  # noqa: F401
    except ImportError:
        with pytest.raises(WsssError, match="optional sam2 package"):
            build_mask_generator("sam2", checkpoint=str(tmp_path / "w.pth"))


# --------------------------------------------------------------------------- the stage
def test_generate_masks_writes_resumes_shards_and_guards(voc_like, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    ids = ds.ids[:4]
    generator = build_mask_generator("felzenszwalb", scales=[100, 400])
    out = tmp_path / "masks"
    generate_masks(generator, ds, out, ids=ids, shard="0/2", progress=False)
    generate_masks(generator, ds, out, ids=ids, shard="1/2", progress=False)
    assert sorted(p.stem for p in out.glob("*.npz")) == sorted(ids)
    for image_id in ids:
        masks = load_masks(out / f"{image_id}.npz", shape=(64, 64))
        assert masks.shape[0] >= 2
    records = [json.loads((out / f"run.shard{i}of2.json").read_text()) for i in range(2)]
    assert [r["written"] for r in records] == [2, 2]
    assert records[0]["stage"] == "masks" and records[0]["masks_per_image"]["min"] >= 2

    # resume: only the missing file is made again, the others are left untouched
    stamp = (out / f"{ids[1]}.npz").stat().st_mtime_ns
    (out / f"{ids[0]}.npz").unlink()
    generate_masks(generator, ds, out, ids=ids, shard="0/1", progress=False)
    assert json.loads((out / "run.json").read_text())["written"] == 1
    assert (out / f"{ids[1]}.npz").stat().st_mtime_ns == stamp
    with pytest.raises(
        WsssError,
        match=r"settings\.json: this folder holds masks outputs made with other settings or inputs \(options",
    ):
        generate_masks(build_mask_generator("felzenszwalb"), ds, out, ids=ids, progress=False)
