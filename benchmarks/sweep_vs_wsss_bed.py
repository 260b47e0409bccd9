"""Finding the best τ: `wsss sweep` / `wsss pseudo` against WSSS-BED's `run.py`, side by side.

    .venv/bin/python benchmarks/sweep_vs_wsss_bed.py --wsss-bed /path/to/WSSS-BED [--images 100]

WSSS-BED (https://github.com/clovaai/WSSS-BED) makes Algorithm 1's pseudo labels one τ
per pass (`wsss_bed/run.py`); finding the best τ means one pass per τ and then scoring each
folder. This script generates VOC-sized inputs in WSSS-BED's own layout (375×500, 20
classes, 1–3 per image; per-class CAM PNGs `<id>_<c>.png`, saliency PNGs; see
`voc_sized.py`), then times, each
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
from voc_sized import HEIGHT, NUM_FG, WIDTH, make_voc_sized

from wsss.io import load_label
from wsss.metrics import ConfusionMetric
from wsss.pseudo.threshold import threshold_pseudo_label

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def timed(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return elapsed


def run_py(bed: Path, root: Path, tau: float, out: Path) -> float:
    cmd = [sys.executable, "run.py", "--sal_dir", str(root / "saliency" / "sal"), "--atm_dir", str(root / "cams"),
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
        sal = np.asarray(Image.open(root / "saliency" / "sal" / f"{image_id}.png")).astype(np.float32) / 255
        label = threshold_pseudo_label(cam.astype(np.float32) / 255, np.array(classes) + 1, tau, sal)
        metric.process(label, load_label(root / "masks" / f"{image_id}.png"))
    return metric.compute()["miou"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wsss-bed", type=Path, help="a checkout of clovaai/WSSS-BED")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--taus", type=int, default=60, help="τ values: 0.01, 0.02, … (one pass each for run.py)")
    ap.add_argument("--bed-passes", type=int, default=0, help="run.py passes to time (0 = one per τ)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each one-pass command")
    args = ap.parse_args()
    taus = [round(0.01 * (k + 1), 2) for k in range(args.taus)]
    one_tau = taus[len(taus) // 3]

    with tempfile.TemporaryDirectory(prefix="wsss_bed_bench_") as tmp:
        root = Path(tmp)
        items = make_voc_sized(root, args.images)
        data = ["--data", str(root), "--dataset", "folder", "--split", "all"]
        print(f"{args.images} images of {WIDTH}×{HEIGHT}, 1–3 of {NUM_FG} classes, saliency, 1 thread")

        def pseudo(r: int) -> float:
            return timed(wsss("pseudo", *data, "--cams", str(root / "cams"), "--out", str(root / f"ours{r}"),
                              "--tau", str(one_tau), "--saliency", "sal", "--quiet"))  # fmt: skip

        def sweep(r: int, grid: list[float]) -> float:
            return timed(wsss("sweep", *data, "--cams", str(root / "cams"), "--out", str(root / f"sweep{len(grid)}_{r}"),
                              "--saliency", "sal", "--taus", ",".join(map(str, grid)),
                              "--device", "cpu", "--quiet"))  # fmt: skip

        # interleaved repeats: a busy machine slows both sides alike
        t_pseudo, t_sweep, t_sweep1, t_bed1 = [], [], [], []
        for r in range(args.repeats):
            t_pseudo.append(pseudo(r))
            t_sweep.append(sweep(r, taus))
            t_sweep1.append(sweep(r, [one_tau]))
            if args.wsss_bed is not None:
                t_bed1.append(run_py(args.wsss_bed, root, one_tau, root / "bed" / f"{one_tau}_{r}"))
        med = {k: float(np.median(v)) for k, v in
               {"pseudo": t_pseudo, "sweep": t_sweep, "sweep1": t_sweep1, "bed1": t_bed1 or [np.nan]}.items()}  # fmt: skip
        result = json.loads((root / f"sweep{len(taus)}_0" / "sweep.json").read_text())["sources"]["sal"]
        check = {t: reference_miou(root, items, t) for t in (taus[0], one_tau, taus[-1])}
        worst = max(abs(result["miou"][taus.index(t)] - m) for t, m in check.items())
        print(f"  (medians of {args.repeats} interleaved runs)")
        print(f"  wsss pseudo, 1 τ               {med['pseudo']:7.2f} s")
        print(
            f"  wsss sweep, {len(taus)} τ (scored)       {med['sweep']:7.2f} s   (1 τ: {med['sweep1']:.2f} s)"
        )
        print(f"  sweep mIoU vs labels scored one by one: max |Δ| = {worst:.1e} at τ {sorted(check)}")
        if args.wsss_bed is None:
            print("  (WSSS-BED's run.py not timed: pass --wsss-bed, a clone of clovaai/WSSS-BED)")
            return

        same = sum(
            np.array_equal(
                load_label(root / "ours0" / f"{i}.png"),
                np.asarray(Image.open(root / "bed" / f"{one_tau}_0" / f"{i}.png")),
            )
            for i, _ in items
        )
        passes = taus if not args.bed_passes else taus[:: max(1, len(taus) // args.bed_passes)]
        times = [run_py(args.wsss_bed, root, tau, root / "bed" / f"{tau}") for tau in passes]
        t_all = sum(times) * len(taus) / len(passes)
        print(f"  run.py, 1 τ                    {med['bed1']:7.2f} s")
        print(
            f"  run.py, {len(taus)} τ (labels only)    {t_all:7.2f} s"
            + (f" (extrapolated from {len(passes)} passes)" if len(passes) < len(taus) else "")
        )
        print(f"  identical label maps at τ {one_tau}: {same}/{len(items)}")
        print(
            f"  speed-up: one τ {med['bed1'] / med['pseudo']:.1f}×, {len(taus)} τ {t_all / med['sweep']:.1f}×"
        )


if __name__ == "__main__":
    main()
