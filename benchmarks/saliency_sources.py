"""Seed 000's Findings 1 and 3 on the embedded data: pseudo-label mIoU at the best τ for
every saliency source, next to each source's saliency quality, for several CAM methods.

It reuses the CAMs of ``benchmarks/cam_methods.py`` cells (``CELLS/<method>/seed<k>/cams``)
and builds the sources once on the same images:

- ``oracle`` / ``good`` / ``poor``: the synthetic dataset's simulated detector maps;
- ``spectral-residual`` / ``fine-grained``: OpenCV's training-free baselines;
- ``c2am``: unsupervised C²AM trained here on those images;
- ``c2am-h``: C²AM with hints from the vanilla ``cam`` CAMs of the same seed.

Then for every method × source: a τ sweep (Algorithm 1) and its best τ::

    python benchmarks/cam_methods.py --out runs/cam_methods --methods cam puzzle --max-images 500
    python benchmarks/saliency_sources.py --cells runs/cam_methods --methods cam puzzle --max-images 500
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cam_methods import demo_backbone_recipe  # benchmarks/ is the script folder

from wsss.data import build_dataset
from wsss.io import atomic_write_text, read_json, write_json
from wsss.pipeline import load_run_config, tau_grid
from wsss.pseudo.sweep import sweep_tau
from wsss.saliency import build_saliency_source, make_saliency
from wsss.saliency.metrics import evaluate_saliency

DATASET_SOURCES = ("oracle", "good", "poor")
TRAINING_FREE = ("spectral-residual", "fine-grained")


def c2am_train_config(args) -> dict:
    """The demo's CAM recipe (ImageNet Lite0, AdamW, 256-px crops), with C²AM's own epoch count.

    C²AM's network has no frozen stages or head-conv option: the whole backbone trains.
    """
    return demo_backbone_recipe(epochs=args.c2am_epochs, seed=args.seed)


def build_sources(args, ds) -> dict[str, Path]:
    """name → folder of maps for the images of ``ds``; built ones resume."""
    dirs = {name: ds.saliency_dir(name) for name in DATASET_SOURCES}
    timings = {}
    train = c2am_train_config(args)
    cam_hints = args.cells / "cam" / f"seed{args.seed}" / "cams"
    specs = {name: {} for name in TRAINING_FREE}
    specs["c2am"] = {"train": train}
    specs["c2am-h"] = {"train": train, "cams": str(cam_hints)}
    for name, options in specs.items():
        folder = args.out / "saliency" / name
        start = time.perf_counter()
        make_saliency(build_saliency_source(name, **options), ds, folder, progress=not args.quiet)
        timings[name] = round(time.perf_counter() - start, 1)
        dirs[name] = folder
    write_json(args.out / "saliency" / "timings.json", timings)
    return dirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=Path, default=Path("runs/cam_methods"), help="cam_methods.py --out")
    ap.add_argument("--out", type=Path, default=Path("runs/saliency_sources"))
    ap.add_argument("--methods", nargs="+", default=["cam", "puzzle"])
    ap.add_argument("--seed", type=int, default=0, help="which cam_methods seed's CAMs to use")
    ap.add_argument("--max-images", type=int, default=500, help="the first N train images (as the cells)")
    ap.add_argument("--c2am-epochs", type=int, default=3, help="the CAM cells' budget")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    ds = build_dataset("synthetic", args.cells / "data", "train")
    if args.max_images:
        ds.ids = ds.ids[: args.max_images]
    dirs = build_sources(args, ds)
    quality = {name: evaluate_saliency(d, ds, progress=False) for name, d in dirs.items()}
    taus = tau_grid(load_run_config("demo")["pseudo"]["taus"])  # the demo's grid, as the cells
    sweeps = {}
    for method in args.methods:
        cams = args.cells / method / f"seed{args.seed}" / "cams"
        result = sweep_tau(ds, cams, taus, {"none": None, **dirs}, workers=2, progress=not args.quiet)
        sweeps[method] = {src: r["best"] for src, r in result["sources"].items()}

    sources = ["none", *dirs]
    lines = [
        f"# Saliency sources × CAM methods (seed {args.seed}, first {len(ds)} train images)",
        "",
        "Pseudo-label mIoU (%) at each method's best τ (in brackets); saliency quality against the "
        "ground-truth foreground.",
        "",
        "| source | MAE | max-F | S | IoU@0.5 | " + " | ".join(args.methods) + " |",
        "|---|---|---|---|---|" + "---|" * len(args.methods),
    ]
    for src in sources:
        q = quality.get(src)
        qcells = (
            [
                f"{q['mae']:.3f}",
                f"{100 * q['max_f']:.1f}",
                f"{100 * q['s_measure']:.1f}",
                f"{100 * q['iou']:.1f}",
            ]
            if q
            else ["–"] * 4
        )
        mcells = [f"{100 * sweeps[m][src]['miou']:.1f} ({sweeps[m][src]['tau']:.2f})" for m in args.methods]
        lines.append(f"| {src} | " + " | ".join(qcells + mcells) + " |")
    c2am_info = {
        name: read_json(args.out / "saliency" / name / "model" / "model.json").get("flipped")
        for name in ("c2am", "c2am-h")
    }
    lines += ["", f"C²AM polarity flipped after epoch 1: {c2am_info}", ""]
    report = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "saliency_sources.md", report)
    keep = (
        "protocol",
        "mae",
        "max_f",
        "mean_f",
        "s_measure",
        "max_e",
        "weighted_f",
        "iou",
        "mean_iou_per_image",
        "best_threshold",
    )
    write_json(
        args.out / "saliency_sources.json",
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "quality": {s: {k: q[k] for k in keep} for s, q in quality.items()},
            "best": sweeps,
        },
    )
    print(report)
    print(json.dumps({"written": str(args.out / "saliency_sources.md")}))


if __name__ == "__main__":
    main()
