"""Shared fixtures: a small VOC-layout dataset built here, independent of `wsss synth`,
so every stage's tests can run on data whose ground truth is known exactly."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsss.data.base import write_label_csv
from wsss.io import atomic_write_text, save_image, save_label, save_saliency


def make_voc_like(root: Path, n: int = 12, size: int = 64, num_fg: int = 3, seed: int = 0) -> Path:
    """Images with 1–2 axis-aligned boxes of distinct class colours on noise.

    Class c's box is coloured so that a classifier can learn it quickly; the GT,
    instance map, image labels and an ``oracle`` saliency map are written in the
    layout of :class:`wsss.data.voc.SyntheticDataset` (splits train/val).
    """
    rng = np.random.default_rng(seed)
    colours = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40], [40, 230, 230]])
    names = ["background"] + [f"class{c}" for c in range(1, num_fg + 1)]
    labels = {}
    ids = [f"img{i:03d}" for i in range(n)]
    for k, image_id in enumerate(ids):
        img = rng.integers(0, 80, size=(size, size, 3)).astype(np.uint8)
        gt = np.zeros((size, size), np.uint8)
        inst = np.zeros((size, size), np.uint8)
        classes = rng.choice(np.arange(1, num_fg + 1), size=1 + (k % 2), replace=False)
        for j, c in enumerate(classes):
            h, w = rng.integers(size // 5, size // 2, size=2)
            y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
            img[y0 : y0 + h, x0 : x0 + w] = colours[(c - 1) % len(colours)]
            gt[y0 : y0 + h, x0 : x0 + w] = c
            inst[y0 : y0 + h, x0 : x0 + w] = j + 1
        labels[image_id] = np.unique(gt[gt > 0]).astype(np.int64)
        save_image(root / "JPEGImages" / f"{image_id}.png", img)
        save_label(root / "SegmentationClass" / f"{image_id}.png", gt)
        save_label(root / "SegmentationObject" / f"{image_id}.png", inst)
        save_saliency(root / "saliency" / "oracle" / f"{image_id}.png", (gt > 0).astype(np.float32))
    split = n * 2 // 3
    atomic_write_text(root / "ImageSets" / "Segmentation" / "train.txt", "\n".join(ids[:split]) + "\n")
    atomic_write_text(root / "ImageSets" / "Segmentation" / "val.txt", "\n".join(ids[split:]) + "\n")
    atomic_write_text(root / "class_names.txt", "\n".join(names) + "\n")
    write_label_csv(root / "image_labels.csv", labels, names)
    return root


# One torch intra-op thread for every in-process test and every subprocess (`wsss …`, torchrun),
# whatever OMP_NUM_THREADS, the CPU affinity (taskset) or an earlier test set: runs compared byte
# for byte (resume, `wsss bed` in and out of process) are deterministic only for a fixed thread
# count, and no verdict may depend on the machine's. One thread is also by far the fastest on 2
# busy cores: OpenMP threads that wait for a core spin (`wsss run tiny`: 32 s with 1, up to 130 s
# with 2 while other work runs). WSSS_TEST_THREADS=2 runs the suite with 2, to check tolerances.
TEST_THREADS = int(os.environ.get("WSSS_TEST_THREADS", "1"))
os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)  # inherited by every subprocess the tests start


def _pin_threads() -> None:
    import torch

    if torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)


def pytest_collection_finish(session) -> None:
    _pin_threads()  # after the test modules are imported, before any fixture trains anything


@pytest.fixture(autouse=True)
def _pinned_threads():
    """Every test starts, and leaves the next one (and its module fixtures), with TEST_THREADS."""
    _pin_threads()
    yield
    _pin_threads()


@pytest.fixture(scope="session")
def voc_like(tmp_path_factory) -> Path:
    """A 12-image, 64×64, 3-class dataset (kind ``synthetic``), shared read-only."""
    return make_voc_like(tmp_path_factory.mktemp("voc_like"))


@contextlib.contextmanager
def lock_held_elsewhere(folder: Path):
    """Another live process holds ``folder``'s wsss lock while the block runs; yields its pid."""
    code = (
        "import time\nfrom pathlib import Path\nfrom wsss.stage import folder_lock\n"
        f"with folder_lock(Path({str(folder)!r})):\n    print('held', flush=True)\n    time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
