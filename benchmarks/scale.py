"""A VOC-sized run of the per-image stages: time, throughput and peak memory against image count.

    .venv/bin/python benchmarks/scale.py --out runs/scale                 # 10,582 images (train_aug)
    .venv/bin/python benchmarks/scale.py --out runs/scale_quick --images 1000 --counts 200 1000

Generates (once; resumable) a VOC-sized set with `voc_sized.py`: 375×500 images, 20
classes, per-class CAM PNGs, five saliency sources, GT and instance maps. Then, as the
commands a user types (one process each, peak RSS from the kernel), at each image count:

* `wsss sweep`: 60 τ × 5 saliency sources + no saliency, scored against the GT,
* `wsss pseudo`: Algorithm 1 at one τ with one source (label PNGs written),
* `wsss evaluate`: mIoU, IA-mIoU (instance PNGs) and class groups of those labels,

and, per image on a subset (their cost is linear in the image count): the dense CRF
(`wsss refine crf`), the random walk (IRN's sparse walk on the 1/4-resolution grid,
8 squarings) and CAM inference (the demo's EfficientNet-Lite0, one scale + flip).
Prints images/s, Mpx/s and peak RSS; "memory must not grow with the image count" is read
off the RSS columns. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from voc_sized import HEIGHT, NUM_FG, WIDTH, image_classes, make_voc_sized, write_lists

SOURCES = ("sod1", "sod2", "sod3", "sod4", "sod5")
TAUS = [round(0.01 * (k + 1), 2) for k in range(60)]


def run_cli(args: list[str], threads: int) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one `wsss` command, in its own process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [str(Path(sys.executable).parent / "wsss"), *args, "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024


def view(root: Path, count: int) -> Path:
    """A folder dataset over the first ``count`` images (links to the shared files)."""
    sub = root / f"view{count}"
    sub.mkdir(exist_ok=True)
    for name in ("images", "masks", "instances", "cams", "saliency"):
        link = sub / name
        if not link.exists():
            link.symlink_to(root / "data" / name)
    write_lists(sub, [(f"im{i:05d}", image_classes(0, i)) for i in range(count)])
    return sub


def per_image_stages(root: Path, count: int, threads: int) -> dict:
    """CRF, random walk and CAM inference on ``count`` images → seconds per image."""
    import torch

    from wsss.cam import CamTrainConfig, infer_cams, train_cam
    from wsss.data import build_dataset
    from wsss.io import read_json
    from wsss.pseudo.random_walk import random_walk

    torch.set_num_threads(threads)
    sub = view(root, count)
    out: dict = {}
    labels = root / "work" / f"pseudo_{count}"
    run_cli(["pseudo", "--data", str(sub), "--dataset", "folder", "--split", "all", "--cams", str(sub / "cams"),
             "--out", str(labels), "--tau", "0.3", "--saliency", SOURCES[0], "--force"], threads)  # fmt: skip
    seconds, rss = run_cli(["refine", "crf", "--data", str(sub), "--dataset", "folder", "--split", "all",
                            "--labels", str(labels), "--out", str(root / "work" / f"crf_{count}"), "--force"],
                           threads)  # fmt: skip
    out["dense CRF (wsss refine crf)"] = {"s_per_image": seconds / count, "rss_mib": rss}

    rng = np.random.default_rng(0)
    grid = (HEIGHT // 4 + 1, WIDTH // 4)  # IRN's 1/4-resolution affinity grid
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(count):
            k = len(image_classes(0, i)) + 1
            cams = torch.from_numpy(rng.random((k, *grid), np.float32))
            edge = torch.from_numpy(rng.random(grid, np.float32))
            random_walk(cams, edge)
    out["random walk (sparse, 8 squarings)"] = {"s_per_image": (time.perf_counter() - start) / count}

    ds = build_dataset("folder", sub, "all")
    model_dir = root / "work" / "cam_model"
    if not (model_dir / "model.safetensors").is_file():  # one step on 4 images: speed does not need training
        cfg = CamTrainConfig(backbone="tf_efficientnet_lite0", pretrained=True, head_conv=True, recipe="generic",
                             crop_size=256, batch_size=4, epochs=1, num_workers=0, optimizer="adamw", lr=5e-4)  # fmt: skip
        train_cam(build_dataset("folder", view(root, 4), "all"), model_dir, cfg, progress=False, force=True)
    cam_out = root / "work" / f"cams_{count}"
    infer_cams(ds, model_dir, cam_out, scales=(1.0,), flip=True, batch_size=8, progress=False, force=True)
    run = read_json(cam_out / "run.json")
    out["CAM inference (Lite0, 1 scale + flip)"] = {"s_per_image": 1.0 / run["images_per_s"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/scale"))
    ap.add_argument("--images", type=int, default=10582, help="images generated (VOC train_aug: 10,582)")
    ap.add_argument(
        "--counts",
        type=int,
        nargs="*",
        default=[1000, 10582],
        help="image counts to time (none: per-image stages only)",
    )
    ap.add_argument("--subset", type=int, default=50, help="images for the per-image stages")
    ap.add_argument("--workers", type=int, default=2, help="processes for sweep and evaluation")
    args = ap.parse_args()
    root = args.out.resolve()
    counts = sorted({min(c, args.images) for c in args.counts})

    start = time.perf_counter()
    make_voc_sized(root / "data", args.images, sources=SOURCES, workers=args.workers)
    print(f"{args.images} images of {WIDTH}×{HEIGHT} ({NUM_FG} classes, {len(SOURCES)} saliency sources): "
          f"{time.perf_counter() - start:.0f} s to generate or check")  # fmt: skip

    rows = []
    for count in counts:
        sub = view(root, count)
        data = ["--data", str(sub), "--dataset", "folder", "--split", "all"]
        work = root / "work"
        mpx = count * HEIGHT * WIDTH / 1e6
        stages = {
            f"sweep 60 τ × {len(SOURCES) + 1} sources, {args.workers} proc": [
                "sweep", *data, "--cams", str(sub / "cams"), "--out", str(work / f"sweep_{count}"),
                "--saliency", "none", *sum((["--saliency", s] for s in SOURCES), []),
                "--taus", ",".join(map(str, TAUS)), "--workers", str(args.workers), "--device", "cpu", "--force",
            ],
            "pseudo (Algorithm 1, 1 τ), 1 proc": [
                "pseudo", *data, "--cams", str(sub / "cams"), "--out", str(work / f"pseudo_{count}"),
                "--tau", "0.3", "--saliency", SOURCES[0], "--force",
            ],
            f"evaluate (mIoU + IA-mIoU + groups), {args.workers} proc": [
                "evaluate", "--pred", str(work / f"pseudo_{count}"), "--gt", str(sub / "masks"),
                "--instances", str(sub / "instances"), "--num-classes", str(NUM_FG + 1),
                "--workers", str(args.workers), "--json", str(work / f"eval_{count}.json"),
            ],
        }  # fmt: skip
        for name, cmd in stages.items():
            seconds, rss = run_cli(cmd, threads=1)
            rows.append({"stage": name, "images": count, "s": seconds, "img_s": count / seconds,
                         "mpx_s": mpx / seconds, "rss_mib": rss})  # fmt: skip
            print(f"  {name:<42} {count:>6} img {seconds:8.1f} s {count / seconds:8.1f} img/s "
                  f"{mpx / seconds:7.1f} Mpx/s  peak RSS {rss:7.0f} MiB", flush=True)  # fmt: skip

    per_image = per_image_stages(root, min(args.subset, args.images), threads=args.workers)
    for name, r in per_image.items():
        rss = f"  peak RSS {r['rss_mib']:7.0f} MiB" if "rss_mib" in r else ""
        print(f"  {name:<42} {1 / r['s_per_image']:8.2f} img/s  → {args.images} images: "
              f"{r['s_per_image'] * args.images / 60:7.1f} min{rss}")  # fmt: skip

    if counts:
        cell = [r for r in rows if r["images"] == counts[-1] and not r["stage"].startswith("pseudo")]
        total = sum(r["s"] for r in cell)
        print(f"one train_aug-sized cell at {counts[-1]} images: sweep + evaluation {total / 60:.1f} min")
    (root / "scale.json").write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "per_image": per_image},
            indent=2,
        )  # fmt: skip
    )


if __name__ == "__main__":
    main()
