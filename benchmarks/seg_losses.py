"""Stage 4 under one budget: DeepLab trained on pseudo labels of several CAM methods with the
``ce`` / ``size-weighted`` / ``size-balanced`` losses, plus the ground-truth reference,
scored on ``val`` and ``val_balanced`` (mIoU and IA-mIoU S/M/L, mean ± s.e.m. over seeds),
without and with seed 004's test-time dense CRF.

Three phases, each resumable (finished outputs are skipped), so the CPU-bound part and the
GPU-bound part can run on different machines::

    # 1. labels: each stage-1 cell's train pseudo labels (`make bench-methods`: its best τ
    #    with `good` saliency), indexed in OUT/labels/summary.json
    python benchmarks/seg_losses.py labels --cells runs/cam_methods --out runs/seg_losses
    # 2. train + predict + evaluate every (labels, loss, seed) cell; --jobs runs cells in
    #    parallel processes (several per GPU is fine for these small networks)
    python benchmarks/seg_losses.py train --out runs/seg_losses --jobs 1
    # 3. the tables (also printed at the end of `train`)
    python benchmarks/seg_losses.py table --out runs/seg_losses

Labels of CAM seed k train the segmentation network of seed k, so both kinds of variance
are in the s.e.m.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import time
from pathlib import Path

from wsss.data import build_dataset
from wsss.io import atomic_write_text, read_json, write_json
from wsss.metrics.stats import format_mean_sem, mean_sem
from wsss.pipeline import load_run_config

LOSSES = ("ce", "size-weighted", "size-balanced")
SPLITS = ("val", "val_balanced")
SCORES = ("miou", "ia_miou_small", "ia_miou_medium", "ia_miou_large", "ia_miou")
# the demo's stage 4 (configs/demo.yaml: DeepLab-V2 on the ImageNet Lite0), epochs from --epochs,
# without the demo's two budget savings: every stage after the stem trains (the demo stops the
# backward at stage 4), and the head learns at the base LR (the ×10 is SGD's convention; under
# AdamW it starts the loss at ~9). On the demo's seed-0 `good` labels (85.4 mIoU on
# val_balanced), 12 epochs: 77.4 without the test-time CRF, 83.8 with it (README, stage 4).
_DEMO_SEG = load_run_config("demo")["seg"]
TRAIN = {
    **{k: v for k, v in _DEMO_SEG["train"].items() if k != "epochs"},
    "detach_stage": 0,
    "head_lr_mult": 1.0,
}
PREDICT_SCALES = tuple(_DEMO_SEG["predict"]["scales"])  # + flip


# ------------------------------------------------------------------ phase 1: pseudo labels
def make_labels(args) -> None:
    """Take each stage-1 cell's own train pseudo labels (its best τ with ``--saliency``).

    The cells made them with the demo's inference settings and chose τ on them, so stage 4
    trains on exactly the labels bench-methods scored.
    """
    summary = {}
    for method in args.methods:
        for seed in args.seeds:
            cell = args.cells / method / f"seed{seed}"
            sweep = read_json(cell / "stages" / "sweep.json")["result"]
            if args.saliency not in sweep:
                raise SystemExit(f"{cell}: no sweep for saliency {args.saliency!r} (has {sorted(sweep)})")
            labels = cell / "pseudo" / args.saliency / "train"
            if not (labels / "settings.json").exists():
                raise SystemExit(f"{labels}: no pseudo labels (run bench-methods for {method} seed {seed})")
            summary[f"{method}/seed{seed}"] = {
                "tau": float(sweep[args.saliency]["tau"]),
                "train_miou": float(sweep[args.saliency]["miou"]),
                "path": str(labels.resolve()),
            }
            print(json.dumps({f"{method}/seed{seed}": summary[f"{method}/seed{seed}"]}), flush=True)
    write_json(args.labels / "summary.json", summary)


# ------------------------------------------------------------------ phase 2: segmentation cells
def cell_dir(out: Path, labels: str, loss: str, seed: int) -> Path:
    return out / "cells" / labels / loss / f"seed{seed}"


def run_cell(
    out: str,
    data: str,
    label_root: str,
    labels: str,
    loss: str,
    seed: int,
    epochs: int,
    device: str | None,
    max_images: int,
) -> dict:
    """Train, predict and score one cell, without and with seed 004's test-time dense CRF;
    every step skips what a previous run finished (a cell scored before the CRF scores
    existed gets only those)."""
    import torch

    from wsss.metrics.evaluate import evaluate_dataset
    from wsss.seg import SegTrainConfig, predict_seg, train_seg

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cell = cell_dir(Path(out), labels, loss, seed)
    done = cell / "scores.json"
    scores = read_json(done) if done.exists() else None
    if scores is not None and "crf" in scores:
        return scores
    label_dir = None
    if labels != "gt":
        label_dir = read_json(Path(label_root) / "summary.json")[f"{labels}/seed{seed}"]["path"]
    config = SegTrainConfig.from_dict(
        {
            **TRAIN,
            "epochs": epochs,
            "seed": seed,
            "labels": label_dir,
            "device": device,
            "num_workers": 2 if device and device.startswith("cuda") else 0,
        },
        source=f"cell {labels}/{loss}/seed{seed}",
    )
    t0 = time.perf_counter()
    train_ds = build_dataset("synthetic", data, "train")
    if max_images:
        train_ds.ids = train_ds.ids[:max_images]
    model = train_seg(train_ds, cell / "model", config, method=loss, progress=False)
    if scores is None:
        scores = {
            "labels": labels,
            "loss": loss,
            "seed": seed,
            "epochs": epochs,
            "train_seconds": time.perf_counter() - t0,
        }
    scores.setdefault("crf", {})
    for split in SPLITS:
        ds = build_dataset("synthetic", data, split)
        if max_images:
            ds.ids = ds.ids[:max_images]
        for crf, pred_root, into in ((False, "pred", scores), (True, "pred_crf", scores["crf"])):
            if split in into:
                continue
            pred = predict_seg(
                ds,
                model,
                cell / pred_root / split,
                scales=PREDICT_SCALES,
                flip=True,
                crf=crf,
                device=device,
                batch_size=32,
                progress=False,
            )
            res = evaluate_dataset(pred, ds, bounds=ds.ia_bounds, groups=False, progress=False)
            into[split] = {k: res[k] for k in SCORES}
    write_json(done, scores)
    return scores


def train_cells(args) -> None:
    sources = [f"{m}" for m in args.methods] + ["gt"]
    jobs = []
    for labels_name in sources:
        for loss in ["ce"] if labels_name == "gt" and not args.gt_all_losses else args.losses:
            for seed in args.seeds:
                jobs.append((labels_name, loss, seed))
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(args.jobs) as pool:
        futures = {
            pool.submit(
                run_cell,
                str(args.out),
                str(args.data),
                str(args.labels),
                lab,
                loss,
                seed,
                args.epochs,
                args.device,
                args.max_images,
            ): (lab, loss, seed)
            for lab, loss, seed in jobs
        }
        for i, fut in enumerate(cf.as_completed(futures), 1):
            lab, loss, seed = futures[fut]
            s = fut.result()
            print(
                f"[{i}/{len(jobs)} {time.perf_counter() - t0:.0f}s] {lab}/{loss}/seed{seed}: "
                f"val mIoU {100 * s['val']['miou']:.1f}, val_balanced IA-S {100 * s['val_balanced']['ia_miou_small']:.1f}",
                flush=True,
            )
    table(args)


# ------------------------------------------------------------------ phase 3: tables
def table(args) -> None:
    cells = [read_json(p) for p in sorted((args.out / "cells").glob("*/*/seed*/scores.json"))]
    if not cells:
        raise SystemExit(f"{args.out}/cells: no finished cells")
    groups: dict[tuple[str, str], list[dict]] = {}
    for c in cells:
        groups.setdefault((c["labels"], c["loss"]), []).append(c)
    lines = [
        # the cells' own budget: `table` may run with another --epochs than `train` did
        f"# Stage 4: DeepLab-V2 (ImageNet Lite0, whole backbone, "
        f"{'/'.join(map(str, sorted({c['epochs'] for c in cells})))} epochs) on pseudo labels; "
        "mean ± s.e.m. over seeds (%)",
        "",
    ]
    summary = args.labels / "summary.json"
    label_info = read_json(summary) if summary.exists() else {}
    for split in SPLITS:
        lines += [
            f"## {split}",
            "",
            "| labels | loss | test CRF | seeds | mIoU | IA-mIoU S | IA-mIoU M | IA-mIoU L | IA-mIoU |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (lab, loss), cs in sorted(
            groups.items(), key=lambda kv: (kv[0][0] == "gt", kv[0][0], LOSSES.index(kv[0][1]))
        ):
            with_crf = [c["crf"][split] for c in cs if split in c.get("crf", {})]
            for crf, scored in (("no", [c[split] for c in cs]), ("yes", with_crf)):
                if scored:
                    vals = [format_mean_sem(mean_sem([r[k] for r in scored])) for k in SCORES]
                    lines.append(f"| {lab} | {loss} | {crf} | {len(scored)} | " + " | ".join(vals) + " |")
        lines.append("")
    if label_info:
        lines += [
            "## Pseudo labels (train split)",
            "",
            "| labels | τ per seed | train mIoU |",
            "|---|---|---|",
        ]
        for method in sorted({k.split("/")[0] for k in label_info}):
            rows = [v for k, v in sorted(label_info.items()) if k.split("/")[0] == method]
            taus = "/".join(f"{r['tau']:.2f}" for r in rows)
            lines.append(
                f"| {method} | {taus} | {format_mean_sem(mean_sem([r['train_miou'] for r in rows]))} |"
            )
    report = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "seg_losses.md", report)
    write_json(args.out / "seg_losses.json", {"cells": cells})
    print(report)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phase", choices=["labels", "train", "table"])
    ap.add_argument("--out", type=Path, default=Path("runs/seg_losses"))
    ap.add_argument(
        "--cells", type=Path, default=Path("runs/cam_methods"), help="the stage-1 benchmark's folder"
    )
    ap.add_argument("--data", type=Path, default=None, help="the dataset (default: CELLS/data)")
    ap.add_argument("--methods", nargs="*", default=["cam", "puzzle"], help="label sources besides gt")
    ap.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--saliency", default="good")
    ap.add_argument("--epochs", type=int, default=12, help="12: the network reaches its labels (see TRAIN)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--labels", type=Path, default=None, help="pseudo-label root (default: OUT/labels)")
    ap.add_argument("--max-images", type=int, default=0, help="first N images of each split (smoke tests)")
    ap.add_argument("--gt-all-losses", action="store_true", help="train the GT reference with every loss")
    args = ap.parse_args()
    args.data = args.data or args.cells / "data"  # the stage-1 benchmark's dataset
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no dataset (run bench-methods first, or give --data)")
    args.labels = args.labels or args.out / "labels"
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    {"labels": make_labels, "train": train_cells, "table": table}[args.phase](args)


if __name__ == "__main__":
    main()
