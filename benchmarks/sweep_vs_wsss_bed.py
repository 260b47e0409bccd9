"""Finding the best τ: `wsss sweep` / `wsss pseudo` against WSSS-BED's `run.py`, side by side.

    .venv/bin/python benchmarks/sweep_vs_wsss_bed.py --wsss-bed /path/to/WSSS-BED [--images 100]

WSSS-BED (https://github.com/clovaai/WSSS-BED) makes Algorithm 1's pseudo labels one τ
per pass (`wsss_bed/run.py`); finding the best τ means one pass per τ and then scoring each
folder. This script generates VOC-sized inputs in WSSS-BED's own layout (375×500, 20
classes, 1–3 per image; per-class CAM PNGs `<id>_<c>.png`, saliency PNGs), then times, each
as the command a user types (process start-up included, one process, one thread):

* `run.py` once per τ (labels only; its scoring is not counted),
* `wsss pseudo` at one τ (labels),
* `wsss sweep` over all the τ values (labels scored against the GT, every τ),

and checks that the labels are identical (every pass of `run.py` against the same τ's
labels from Algorithm 1 in `wsss`, and the sweep's mIoU against those labels scored by
:class:`~wsss.metrics.ConfusionMetric`). Nothing is asserted about time. Without
`--wsss-bed` only the `wsss` side runs (`git clone https://github.com/clovaai/WSSS-BED`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.io import atomic_write_text, load_label, save_label
from wsss.metrics import ConfusionMetric
from wsss.pseudo.threshold import threshold_pseudo_label

NUM_FG = 20
HEIGHT, WIDTH = 375, 500
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def make_inputs(root: Path, n: int, seed: int = 0) -> list[tuple[str, list[int]]]:
    """A folder dataset (JPEG images, GT PNGs, labels.csv) plus WSSS-BED-layout CAMs and saliency."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    names = ["background", *(f"class{c:02d}" for c in range(1, NUM_FG + 1))]
    rows, items = ["id,labels"], []
    for d in ("images", "masks", "cams", "saliency"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image_id = f"im{i:05d}"
        k = int(rng.integers(1, 4))
        classes = np.sort(rng.choice(np.arange(NUM_FG), size=k, replace=False))  # 0-based, as WSSS-BED
        maps = []
        for _ in range(k):
            cy, cx = rng.uniform(0.2, 0.8) * HEIGHT, rng.uniform(0.2, 0.8) * WIDTH
            sy, sx = rng.uniform(0.08, 0.3) * HEIGHT, rng.uniform(0.08, 0.3) * WIDTH
            m = np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2) / 2)
            m = m + 0.15 * rng.random((HEIGHT, WIDTH), np.float32)
            maps.append(np.round(255 * m / m.max()).astype(np.uint8))
        cam = np.stack(maps)
        gt = np.where(cam.max(0) > 100, classes[cam.argmax(0)] + 1, 0).astype(np.uint8)
        edge = (np.abs(np.diff(gt.astype(np.int16), axis=0, prepend=0)) > 0) | (
            np.abs(np.diff(gt.astype(np.int16), axis=1, prepend=0)) > 0
        )
        gt[edge] = 255  # VOC's ignore band
        for c, m in zip(classes, cam, strict=True):
            Image.fromarray(m).save(root / "cams" / f"{image_id}_{c}.png")
        sal = np.clip(cam.max(0).astype(np.float32) * 1.3 - 40 + rng.normal(0, 20, (HEIGHT, WIDTH)), 0, 255)
        Image.fromarray(sal.astype(np.uint8)).save(root / "saliency" / f"{image_id}.png")
        save_label(root / "masks" / f"{image_id}.png", gt)
        Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(root / "images" / f"{image_id}.jpg")
        rows.append(f"{image_id}," + ";".join(names[c + 1] for c in classes))
        items.append((image_id, [int(c) for c in classes]))
    atomic_write_text(root / "class_names.txt", "\n".join(names) + "\n")
    atomic_write_text(root / "labels.csv", "\n".join(rows) + "\n")
    atomic_write_text(root / "bed_list.txt", "".join(f"{i} {' '.join(map(str, c))}\n" for i, c in items))
    return items


def timed(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return elapsed


def run_py(bed: Path, root: Path, tau: float, out: Path) -> float:
    cmd = [sys.executable, "run.py", "--sal_dir", str(root / "saliency"), "--atm_dir", str(root / "cams"),
           "--save_dir", str(out), "--workers", "1", "--dataset", "voc", "--atm_thresh", str(tau),
           "--data_list", str(root / "bed_list.txt"), "--ignore_label", "true"]  # fmt: skip
    env = dict(ENV)
    if importlib.util.find_spec("wget") is None:
        # run.py imports `wget` only to download maps we already have: an empty stand-in will do
        stub = root / "stub"
        stub.mkdir(exist_ok=True)
        (stub / "wget.py").touch()
        env["PYTHONPATH"] = str(stub)
    return timed(cmd, cwd=bed / "wsss_bed", env=env)


def wsss(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "wsss"), *args]


def reference_miou(root: Path, items: list, tau: float) -> float:
    """Algorithm 1 in memory (the pure function), scored by ConfusionMetric: the sweep's check."""
    metric = ConfusionMetric(NUM_FG + 1)
    for image_id, classes in items:
        cam = np.stack([np.asarray(Image.open(root / "cams" / f"{image_id}_{c}.png")) for c in classes])
        sal = np.asarray(Image.open(root / "saliency" / f"{image_id}.png")).astype(np.float32) / 255
        label = threshold_pseudo_label(cam.astype(np.float32) / 255, np.array(classes) + 1, tau, sal)
        metric.process(label, load_label(root / "masks" / f"{image_id}.png"))
    return metric.compute()["miou"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wsss-bed", type=Path, help="a checkout of clovaai/WSSS-BED")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--taus", type=int, default=60, help="τ values: 0.01, 0.02, … (one pass each for run.py)")
    ap.add_argument("--bed-passes", type=int, default=0, help="run.py passes to time (0 = one per τ)")
    args = ap.parse_args()
    taus = [round(0.01 * (k + 1), 2) for k in range(args.taus)]
    one_tau = taus[len(taus) // 3]

    with tempfile.TemporaryDirectory(prefix="wsss_bed_bench_") as tmp:
        root = Path(tmp)
        items = make_inputs(root, args.images)
        data = ["--data", str(root), "--dataset", "folder", "--split", "all"]
        print(f"{args.images} images of {WIDTH}×{HEIGHT}, 1–3 of {NUM_FG} classes, saliency, 1 thread")

        t_pseudo = timed(wsss("pseudo", *data, "--cams", str(root / "cams"), "--out", str(root / "ours"),
                              "--tau", str(one_tau), "--saliency", str(root / "saliency"), "--quiet"))  # fmt: skip
        t_sweep = timed(wsss("sweep", *data, "--cams", str(root / "cams"), "--out", str(root / "sweep"),
                             "--saliency", f"sal={root / 'saliency'}", "--taus", ",".join(map(str, taus)),
                             "--device", "cpu", "--quiet"))  # fmt: skip
        t_sweep1 = timed(wsss("sweep", *data, "--cams", str(root / "cams"), "--out", str(root / "sweep1"),
                              "--saliency", f"sal={root / 'saliency'}", "--taus", str(one_tau),
                              "--device", "cpu", "--quiet"))  # fmt: skip
        sweep = json.loads((root / "sweep" / "sweep.json").read_text())["sources"]["sal"]
        check = {t: reference_miou(root, items, t) for t in (taus[0], one_tau, taus[-1])}
        worst = max(abs(sweep["miou"][taus.index(t)] - m) for t, m in check.items())
        print(f"  wsss pseudo, 1 τ             {t_pseudo:7.2f} s")
        print(f"  wsss sweep, {len(taus)} τ (scored)     {t_sweep:7.2f} s   (1 τ: {t_sweep1:.2f} s)")
        print(f"  sweep mIoU vs labels scored one by one: max |Δ| = {worst:.1e} at τ {sorted(check)}")
        if args.wsss_bed is None:
            print("  (WSSS-BED's run.py not timed: pass --wsss-bed, a clone of clovaai/WSSS-BED)")
            return

        passes = taus if not args.bed_passes else taus[:: max(1, len(taus) // args.bed_passes)]
        times, same = [], 0
        for tau in passes:
            out = root / "bed" / f"{tau}"
            times.append(run_py(args.wsss_bed, root, tau, out))
        ours_dir = root / "ours"
        out = root / "bed" / f"{one_tau}"
        if not out.is_dir():
            run_py(args.wsss_bed, root, one_tau, out)
        for image_id, _ in items:
            same += np.array_equal(
                load_label(ours_dir / f"{image_id}.png"), np.asarray(Image.open(out / f"{image_id}.png"))
            )
        t_one = float(np.median(times))
        t_all = sum(times) * len(taus) / len(passes)
        print(f"  run.py, 1 τ (median of {len(times)})   {t_one:7.2f} s")
        print(
            f"  run.py, {len(taus)} τ (labels only)  {t_all:7.2f} s"
            + (" (extrapolated)" if len(passes) < len(taus) else "")
        )
        print(f"  identical label maps at τ {one_tau}: {same}/{len(items)}")
        print(f"  speed-up: one τ {t_one / t_pseudo:.1f}×, {len(taus)} τ {t_all / t_sweep:.1f}×")


if __name__ == "__main__":
    main()
