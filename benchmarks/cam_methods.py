"""Stage-1 methods under one budget: pseudo-label mIoU (mean ± s.e.m. over seeds) at each
method's best τ, without and with saliency, plus seed 001's class-group table.

Every (method, seed) cell is one ``wsss run`` in ``OUT/<method>/seed<k>/`` over one shared
synthetic dataset, so cells resume after a kill and use exactly the pipeline users run.
Methods that need an ordinary classifier (oc-cse, p-oc, p-noc) get the vanilla ``cam``
classifier of the same seed. A long run (hours on 2 CPU cores; minutes on a GPU)::

    python benchmarks/cam_methods.py --out runs/cam_methods
    python benchmarks/cam_methods.py --out runs/quick --methods cam puzzle --seeds 0 --epochs 1 --max-images 200
    python benchmarks/cam_methods.py --out runs/cam_methods --finished-only   # tables of what finished
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from wsss.cam import CAM_METHODS
from wsss.data.synthetic import generate
from wsss.io import atomic_write_text, read_json, write_json
from wsss.metrics.stats import format_mean_sem, mean_sem
from wsss.pipeline import load_run_config, run_pipeline

# name → (registered method, extra CamTrainConfig fields)
ENTRIES: dict[str, tuple[str, dict]] = {
    "cam": ("cam", {}),
    "puzzle": ("puzzle", {}),
    # sensitivity rows (-a1): the reconstruction weight α ramped to 1 instead of the authors' 4
    "puzzle-a1": ("puzzle", {"method_options": {"alpha_max": 1.0}}),
    "oc-cse": ("oc-cse", {}),
    "p-oc": ("p-oc", {}),
    "p-oc-a1": ("p-oc", {"method_options": {"alpha_max": 1.0}}),
    "p-noc": ("p-noc", {}),
    "p-noc-a1": ("p-noc", {"method_options": {"alpha_max": 1.0}}),
    "p-noc+ls": ("p-noc", {"label_smoothing": 0.1}),
    "eps": ("eps", {"saliency": "good"}),
    "smvwe": ("smvwe", {"saliency": "good"}),
}
NEEDS_OC = {"oc-cse", "p-oc", "p-noc"}


def demo_backbone_recipe(**fields) -> dict:
    """The demo's CAM-training fields that any network on its backbone can share (weights,
    optimiser, crops), plus ``fields``: how C²AM and the affinity net train in the benchmarks."""
    demo = load_run_config("demo")["cam"]["train"]
    keep = ("backbone", "pretrained", "batch_size", "optimizer", "lr", "crop_size", "scale_range")
    return {**{k: demo[k] for k in keep}, "num_workers": 0, **fields}


def cell_config(args, name: str, seed: int, data_root: Path) -> dict:
    method, extra = ENTRIES[name]
    base = load_run_config("demo")
    train = {**base["cam"]["train"], "epochs": args.epochs, **extra}
    if method in NEEDS_OC:
        train["oc"] = str(args.out / "cam" / f"seed{seed}" / "cam")
    return {
        "out": str(args.out / name / f"seed{seed}"),
        "seed": seed,
        "data": {
            "kind": "synthetic",
            "root": str(data_root),
            "synth": None,
            "train_split": "train",
            "eval_splits": ["train"],
            "max_images": {"train": args.max_images} if args.max_images else {},
        },
        "cam": {"method": method, "train": train, "infer": base["cam"]["infer"]},
        "pseudo": {**base["pseudo"], "saliency": ["none", args.saliency]},
        "evaluate": base["evaluate"],
    }


def paired_differences(rows: dict, seeds_of: dict, name: str, source: str) -> list[float]:
    """mIoU of ``name`` minus vanilla CAM's, seed by seed, on the seeds both finished."""
    if "cam" not in rows:
        return []
    cam = {seed: e[source]["summary"]["miou"] for seed, e in zip(seeds_of["cam"], rows["cam"], strict=True)}
    return [
        e[source]["summary"]["miou"] - cam[seed]
        for seed, e in zip(seeds_of[name], rows[name], strict=True)
        if seed in cam
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/cam_methods"))
    ap.add_argument("--methods", nargs="+", default=list(ENTRIES), choices=list(ENTRIES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=4, help="the same budget for every method")
    ap.add_argument(
        "--max-images", type=int, default=0, help="evaluate on the first N train images (0 = all)"
    )
    ap.add_argument("--saliency", default="good", help="saliency source for the 'with saliency' column")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument(
        "--finished-only",
        action="store_true",
        help="train nothing: tabulate the cells that finished (seeds may differ between methods)",
    )
    args = ap.parse_args()

    missing = [m for m in args.methods if ENTRIES[m][0] not in CAM_METHODS]
    if missing:
        raise SystemExit(f"methods not available in this version: {missing}")
    data_root = args.out / "data"
    generate(data_root, "demo", seed=args.data_seed)
    order = sorted(args.methods, key=lambda m: m != "cam")  # the ordinary classifiers first
    if any(ENTRIES[m][0] in NEEDS_OC for m in order) and "cam" not in order:
        order.insert(0, "cam")

    sources = ["none", args.saliency]
    rows: dict[str, list] = {}
    seeds_of: dict[str, list[int]] = {}
    epochs_run: set[int] = set()  # from the cells (--finished-only may read cells of another budget)
    for name in order:
        per_seed = []
        for seed in args.seeds:
            cfg = cell_config(args, name, seed, data_root)
            out = Path(cfg["out"])
            if args.finished_only:
                if not all((out / "eval" / f"{s}_train.json").exists() for s in sources):
                    continue
            else:
                run_pipeline(cfg, progress=False)
            evals = {}
            for s in sources:
                ev = read_json(out / "eval" / f"{s}_train.json")
                evals[s] = {"summary": ev, "groups": ev.get("groups", {})}
            per_seed.append(evals)
            seeds_of.setdefault(name, []).append(seed)
            epochs_run.add(read_json(out / "config.json")["cam"]["train"]["epochs"])
        if per_seed:
            rows[name] = per_seed

    lines = [
        f"# Stage-1 methods, {'/'.join(map(str, sorted(epochs_run)))} epochs each "
        "(mean ± s.e.m. over seeds, %)",
        "",
        "| method | seeds | "
        + " | ".join(f"mIoU {s} | Δ {s} vs cam, paired | τ {s}" for s in sources)
        + " |",
        "|---|---|" + "---|---|---|" * len(sources),
    ]
    table = {}
    for name, per_seed in rows.items():
        cells = []
        table[name] = {}
        for s in sources:
            mious = [e[s]["summary"]["miou"] for e in per_seed]
            taus = [e[s]["summary"]["tau"] for e in per_seed]
            # the same training seeds share a data order and an initialisation draw: the per-seed
            # difference to vanilla CAM is the fair comparison when seeds scatter widely
            diffs = paired_differences(rows, seeds_of, name, s)
            table[name][s] = {"miou": mean_sem(mious), "tau": taus, "diff_vs_cam": mean_sem(diffs)}
            delta = "–" if name == "cam" or not diffs else format_mean_sem(mean_sem(diffs), signed=True)
            cells += [format_mean_sem(mean_sem(mious)), delta, "/".join(f"{t:.2f}" for t in taus)]
        seeds = ",".join(map(str, seeds_of[name]))
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")

    lines += ["", "## Class groups (seed 001, Table 3): IoU without saliency, mean over seeds (%)", ""]
    group_names = None
    for name, per_seed in rows.items():
        groups = per_seed[0]["none"]["groups"].get("groups", [])
        if group_names is None:
            group_names = [f"{g['kind']}:{g['name']}" for g in groups if g["kind"] != "overall"]
            lines += ["| method | " + " | ".join(group_names) + " |", "|---|" + "---|" * len(group_names)]
        vals = []
        for gname in group_names:
            ious = [
                g["iou"]
                for e in per_seed
                for g in e["none"]["groups"].get("groups", [])
                if f"{g['kind']}:{g['name']}" == gname
            ]
            vals.append(format_mean_sem(mean_sem(ious)))
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    lines += ["", "Pearson r of per-class IoU (no saliency) with the class statistics, mean over seeds:", ""]
    stats = ("occurrence", "relative_size", "cooccurrence", "cardinality")
    lines += ["| method | " + " | ".join(stats) + " |", "|---|" + "---|" * len(stats)]
    for name, per_seed in rows.items():
        rs = [
            np.nanmean(
                [
                    e["none"]["groups"].get("correlation", {}).get(st, {}).get("iou", math.nan)
                    for e in per_seed
                ]
            )
            for st in stats
        ]
        lines.append(f"| {name} | " + " | ".join(f"{r:+.2f}" for r in rs) + " |")

    report = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "cam_methods.md", report)
    write_json(
        args.out / "cam_methods.json", {"args": {k: str(v) for k, v in vars(args).items()}, "table": table}
    )
    print(report)
    print(json.dumps({"written": str(args.out / "cam_methods.md")}))


if __name__ == "__main__":
    main()
