"""The stage: :func:`generate` writes the dataset (VOC layout), resumes an interrupted run and
refuses to mix two different datasets in one folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wsss.data.balance import select_balanced_subset
from wsss.data.base import write_label_csv
from wsss.data.synthetic.config import SynthConfig, _resolve_config, _validate
from wsss.data.synthetic.layout import _make_scene, _Scene
from wsss.data.synthetic.saliency import SALIENCY_SOURCES, _saliency_maps
from wsss.data.synthetic.shapes import _ClassDef, _make_classes, load_shape_bank, shape_bank_files
from wsss.data.synthetic.splits import _STREAM_SPLIT, _split_statistics, scaled_size_bounds
from wsss.io import (
    IGNORE,
    WsssError,
    atomic_write_text,
    read_json,
    save_image,
    save_label,
    save_saliency,
    write_json,
    write_run_json,
)

FORMAT_VERSION = 1


def _generate_image(
    seed: int, split: str, index: int, cfg: SynthConfig, classes: list[_ClassDef], small_bound: float
) -> tuple[_Scene, dict[str, np.ndarray]]:
    """One image from (seed, split, index) alone; saliency has its own stream so the
    scene does not change when the simulated detectors do."""
    scene_ss, saliency_ss = np.random.SeedSequence([seed, _STREAM_SPLIT[split], index]).spawn(2)
    scene = _make_scene(np.random.default_rng(scene_ss), cfg, classes)
    s = min(cfg.height, cfg.width) / 128.0
    return scene, _saliency_maps(np.random.default_rng(saliency_ss), scene, s, small_bound)


def _bank_digest(shapes_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(f for paths in shape_bank_files(shapes_dir).values() for f in paths):
        h.update(str(f.relative_to(shapes_dir)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _identity(cfg: SynthConfig, seed: int, shapes_dir: Path | None) -> dict[str, Any]:
    """What must match for an existing dataset to count as this one (JSON-normalised)."""
    shapes = None if shapes_dir is None else {"dir": str(shapes_dir), "sha256": _bank_digest(shapes_dir)}
    return json.loads(
        json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "seed": int(seed),
                "config": dataclasses.asdict(cfg),
                "shapes": shapes,
            }
        )
    )


def _same_dataset(old: Any, new: dict[str, Any]) -> bool:
    if not isinstance(old, dict) or old.get("kind") != "synthetic":
        return False
    old_shapes, new_shapes = old.get("shapes"), new["shapes"]
    same_shapes = (old_shapes is None) == (new_shapes is None) and (
        new_shapes is None
        or (isinstance(old_shapes, dict) and old_shapes.get("sha256") == new_shapes["sha256"])
    )
    return same_shapes and all(old.get(k) == new[k] for k in ("format_version", "seed", "config"))


# --------------------------------------------------------------------------- the stage
def generate(
    out_dir: str | Path,
    config: SynthConfig | str = "demo",
    seed: int = 0,
    shapes_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **overrides: Any,
) -> Path:
    """Write the synthetic benchmark to ``out_dir`` (VOC layout) and return ``out_dir``.

    ``config`` is a :class:`SynthConfig` or a preset name (:data:`PRESETS`);
    ``overrides`` replace single fields (``num_classes=5``). ``shapes_dir`` swaps the
    procedural shapes for ``DIR/<class_name>/*.png`` silhouettes. An existing complete
    dataset of the same config and seed is returned as is; an interrupted one is
    finished (existing files are kept); a different one is an error unless ``overwrite``.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    cfg, preset = _resolve_config(config, overrides)
    shapes = None if shapes_dir is None else Path(shapes_dir)
    bank = load_shape_bank(shapes) if shapes is not None else None
    _validate(cfg, seed, procedural=bank is None)
    identity = _identity(cfg, seed, shapes)

    meta_path = out / "dataset.json"
    resume = False
    if meta_path.is_file():
        old = read_json(meta_path)
        same = _same_dataset(old, identity)
        if same and old.get("complete"):
            return out
        if not same and not overwrite:
            raise WsssError(
                f"{meta_path}: holds a dataset made with another config, seed or shape bank; "
                "pass overwrite=True (--overwrite) or choose another folder"
            )
        resume = same
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise WsssError(f"{out}: folder is not empty and has no dataset.json; refusing to write into it")

    classes = _make_classes(cfg, int(seed), bank)
    class_names = ["background"] + [c.name for c in classes]
    H, W = cfg.height, cfg.width
    bounds = scaled_size_bounds(H, W)
    header = {"kind": "synthetic", **identity, "preset": preset, "complete": False}
    write_json(meta_path, header)

    split_ids: dict[str, list[str]] = {}
    labels: dict[str, np.ndarray] = {}
    records: dict[str, list[tuple[str, int, float]]] = {}
    scene_info: dict[str, dict[str, Any]] = {}
    total = cfg.num_train + cfg.num_val
    with tqdm(total=total, desc=f"synth {out.name}", unit="img", disable=not progress) as bar:
        for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
            digits = max(5, len(str(count - 1)))
            split_ids[split] = []
            records[split] = []
            for index in range(count):
                image_id = f"{split}_{index:0{digits}d}"
                scene, saliency = _generate_image(int(seed), split, index, cfg, classes, bounds[0])
                _write_image(out, image_id, scene, saliency, skip_existing=resume)
                split_ids[split].append(image_id)
                labels[image_id] = np.unique(scene.gt[(scene.gt > 0) & (scene.gt != IGNORE)]).astype(np.int64)
                areas = np.bincount(scene.instances.ravel(), minlength=256)
                for k, c in enumerate(scene.instance_classes, start=1):
                    records[split].append((image_id, c, float(areas[k])))
                scene_info[image_id] = {"context": scene.context_shown, "distractors": len(scene.distractors)}
                bar.update()

    balanced = select_balanced_subset(records["val"], bounds) or list(split_ids["val"])
    split_ids["val_balanced"] = balanced
    for split, ids in split_ids.items():
        atomic_write_text(out / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
    atomic_write_text(out / "class_names.txt", "\n".join(class_names) + "\n")
    write_label_csv(out / "image_labels.csv", labels, class_names)

    context_of = {c.name: c.context for c in classes if c.context is not None}
    all_records = records["train"] + records["val"]
    statistics = {
        split: _split_statistics(ids, labels, all_records, class_names, bounds, scene_info, context_of)
        for split, ids in split_ids.items()
    }
    elapsed = time.perf_counter() - start
    write_json(
        meta_path,
        {
            **header,
            "complete": True,
            "image_size": [H, W],
            "num_classes": len(class_names),
            "class_names": class_names,
            "parts": {c.name: c.part for c in classes},
            "context": context_of,
            "ia_bounds": list(bounds),
            "size_buckets": "small: area < ia_bounds[0], medium: < ia_bounds[1], large: the rest "
            "(area = non-ignore pixels of the instance)",
            "saliency_sources": SALIENCY_SOURCES,
            "splits": {split: len(ids) for split, ids in split_ids.items()},
            "statistics": statistics,
        },
    )
    write_run_json(
        out,
        "synth",
        {**identity, "preset": preset},
        seed=int(seed),
        timings={"generate_s": round(elapsed, 3)},
        extra={"images": total, "resumed": resume},
    )
    return out


def _write_image(
    out: Path, image_id: str, scene: _Scene, saliency: dict[str, np.ndarray], skip_existing: bool
) -> None:
    def todo(path: Path) -> bool:
        return not (skip_existing and path.is_file())

    name = f"{image_id}.png"
    if todo(p := out / "JPEGImages" / name):
        save_image(p, scene.image)
    if todo(p := out / "SegmentationClass" / name):
        save_label(p, scene.gt)
    if todo(p := out / "SegmentationObject" / name):
        save_label(p, scene.instances)
    for source, sal in saliency.items():
        if todo(p := out / "saliency" / source / name):
            save_saliency(p, sal)
