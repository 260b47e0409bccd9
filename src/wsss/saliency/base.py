"""Stage 2: one interface for every saliency source, and the loop that writes their maps.

Seed 000's first finding is that the saliency map matters more than most method changes
and that papers rarely say which one they used. So a source is an explicit, named input:
every output folder ``saliency/<source>/`` holds ``<id>.png`` (8-bit, 255 = salient), a
``provenance.json`` (what made the maps: source, detector, training data, options) and a
``run.json``; ``settings.json`` pins the options so a resumed run cannot mix two sources.

A source is a small subclass of :class:`SaliencySource` registered by name:
:meth:`~SaliencySource.predict` maps one image to [0, 1]; sources that learn (C²AM) do
it in :meth:`~SaliencySource.prepare`.
"""

from __future__ import annotations

import abc
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wsss.config import merge_options
from wsss.data.base import Dataset
from wsss.io import (
    WsssError,
    image_size,
    parse_shard,
    save_saliency,
    shard_list,
    write_json,
)
from wsss.stage import dataset_settings, stage_run

PROVENANCE_NAME = "provenance.json"

SALIENCY_SOURCES: dict[str, type[SaliencySource]] = {}


def register_saliency_source(name: str) -> Callable[[type[SaliencySource]], type[SaliencySource]]:
    def deco(cls: type[SaliencySource]) -> type[SaliencySource]:
        if name in SALIENCY_SOURCES:
            raise ValueError(f"saliency source {name!r} registered twice")
        cls.source_name = name
        SALIENCY_SOURCES[name] = cls
        return cls

    return deco


class SaliencySource(abc.ABC):
    """``option_defaults`` lists the source's options (an unknown key is an error; each
    source checks its values in :meth:`validate`); :attr:`options` holds them merged with
    the user's values."""

    source_name = "base"
    option_defaults: dict[str, Any] = {}
    #: what the maps are made from, for the provenance record (e.g. "no training")
    description = ""

    def __init__(self, **options: Any):
        self.options = merge_options(self.option_defaults, options, f"saliency source {self.source_name!r}")
        self.validate()

    def validate(self) -> None:  # noqa: B027  (optional hook)
        """Check :attr:`options`; raise :class:`WsssError` naming the bad one."""

    def prepare(self, dataset: Dataset, out_dir: Path, progress: bool = True) -> None:  # noqa: B027
        """Work before the per-image loop (training, loading a model); runs on every shard."""

    @abc.abstractmethod
    def predict(self, dataset: Dataset, image_id: str) -> np.ndarray:
        """float32 H×W in [0, 1] at the image's size, 1 = salient."""

    #: options that name a file or folder: fingerprinted as inputs, not compared as strings
    path_options: tuple[str, ...] = ("dir", "model", "cams")

    def settings(self) -> dict[str, Any]:
        """What determines every output map (pinned in ``settings.json``)."""
        return {"source": self.source_name, "options": self.options}

    def inputs(self) -> dict[str, Any]:
        """The files and folders the maps are made from (see :func:`wsss.stage.stage_run`)."""
        return {k: self.options[k] for k in self.path_options if self.options.get(k)}

    def provenance(self) -> dict[str, Any]:
        """Seed 000 asks every paper to state its saliency source: this is that statement."""
        return {"source": self.source_name, "description": self.description, "options": self.options}


def build_saliency_source(name: str, **options: Any) -> SaliencySource:
    if name not in SALIENCY_SOURCES:
        raise WsssError(f"unknown saliency source {name!r}; known: {', '.join(sorted(SALIENCY_SOURCES))}")
    return SALIENCY_SOURCES[name](**options)


def make_saliency(
    source: SaliencySource,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    ids: Sequence[str] | None = None,
    shard: tuple[int, int] | str | None = None,
    cue: dict[str, Any] | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Write ``out_dir/<id>.png`` for ``ids`` (default: the whole split), skipping existing
    maps (resume; ``force`` recomputes them all). ``shard`` "i/N" takes every N-th id (default: RANK/WORLD_SIZE).

    ``cue={"threshold": t, "crf": bool}`` turns each map into a binary background cue
    (docs/methods.md §2: threshold, then dense CRF when pydensecrf is installed) instead of
    writing the continuous map.
    """
    out_dir = Path(out_dir)
    all_ids = dataset.select_ids(ids)
    shard = parse_shard(shard)
    mine = shard_list(all_ids, shard)
    cue = _check_cue(cue, out_dir)
    options = {k: v for k, v in source.options.items() if k not in source.path_options}
    settings = {"source": source.source_name, "options": options, "cue": cue, **dataset_settings(dataset)}
    inputs = source.inputs()
    with stage_run(
        out_dir, "saliency", settings, inputs, digests=("model",), force=force, shard=shard
    ) as run:
        source.prepare(dataset, out_dir, progress)
        write_json(out_dir / PROVENANCE_NAME, {**source.provenance(), "cue": cue})
        todo = [i for i in mine if not (out_dir / f"{i}.png").is_file()]
        start = time.perf_counter()
        for image_id in tqdm(todo, desc=f"saliency {source.source_name}", unit="img", disable=not progress):
            sal = np.asarray(source.predict(dataset, image_id), dtype=np.float32)
            expected = image_size(dataset.image_path(image_id))
            if sal.shape != expected:
                raise WsssError(
                    f"{dataset.image_path(image_id)}: saliency source {source.source_name!r} returned a "
                    f"map of shape {sal.shape} for an image of {expected[1]}×{expected[0]}"
                )
            if cue is not None:
                sal = background_cue(sal, dataset.image(image_id), cue["threshold"], cue["crf"])
            save_saliency(out_dir / f"{image_id}.png", np.clip(sal, 0.0, 1.0))
        elapsed = time.perf_counter() - start
        if todo:
            run.finish(
                {**source.settings(), "cue": cue, "shard": list(shard)},
                timings={"saliency_s": round(elapsed, 2)},
                extra={
                    "dataset": {"kind": dataset.kind, "root": str(dataset.root), "split": dataset.split},
                    "num_ids": len(mine),
                    "written": len(todo),
                    "images_per_s": round(len(todo) / elapsed, 2) if elapsed > 0 else None,
                },
            )
    return out_dir


def _check_cue(cue: dict[str, Any] | None, out_dir: Path) -> dict[str, Any] | None:
    if cue is None:
        return None
    unknown = sorted(set(cue) - {"threshold", "crf"})
    if unknown:
        raise WsssError(f"{out_dir}: unknown background-cue option(s) {unknown}; known: threshold, crf")
    threshold = float(cue.get("threshold", 0.25))
    if not 0.0 < threshold < 1.0:
        raise WsssError(f"{out_dir}: background-cue threshold must be in (0, 1), got {threshold}")
    use_crf = bool(cue.get("crf", True))
    if use_crf and not crf_available():
        use_crf = False  # recorded: the folder says the cue is a plain threshold
    if not use_crf:
        return {"threshold": threshold, "crf": False}
    from wsss.pseudo.crf import CrfParams

    return {"threshold": threshold, "crf": True, "crf_params": CrfParams().to_dict()}


def min_max(sal: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] per image (a constant map → zeros), so that one threshold means
    the same on every image."""
    lo, hi = float(sal.min()), float(sal.max())
    return (sal - lo) / (hi - lo) if hi > lo else np.zeros_like(sal)


def crf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def background_cue(sal: np.ndarray, image: np.ndarray, threshold: float, use_crf: bool) -> np.ndarray:
    """Binary foreground (1) / background (0) from a class-agnostic map: S > threshold,
    then (``use_crf``) a two-label dense CRF on the image that snaps the cut to edges."""
    fg = (sal > threshold).astype(np.float32)
    if not use_crf or fg.min() == fg.max():
        return fg
    from wsss.pseudo.crf import crf_labels

    return (crf_labels(image, fg.astype(np.uint8), num_labels=2) == 1).astype(np.float32)
