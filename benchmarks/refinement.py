"""Stage-3 refinement on the embedded data: threshold → +CRF → +random walk (classic and
saliency-aware affinity labels) → +SEPL (region proposals; GT instances as ideal masks),
with pseudo-label mIoU, precision, recall and seconds per image for each step.

It reuses the CAMs of ``benchmarks/cam_methods.py`` cells (``CELLS/<method>/seed<k>/cams``);
every step writes its folder under ``OUT/<method>/`` and resumes::

    python benchmarks/refinement.py --cells runs/cam_methods --methods cam puzzle --max-images 500
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cam_methods import demo_backbone_recipe  # benchmarks/ is the script folder

from wsss.cam import CamTrainConfig
from wsss.data import build_dataset
from wsss.io import atomic_write_text, read_json, write_json
from wsss.metrics.evaluate import evaluate_dataset
from wsss.pipeline import load_run_config, tau_grid
from wsss.pseudo import (
    build_mask_generator,
    crf_refine,
    generate_masks,
    make_affinity_labels,
    make_pseudo_labels,
    make_sepl_labels,
    refine_cams,
    sweep_tau,
    train_affinity,
)

TAUS = tau_grid(load_run_config("demo")["pseudo"]["taus"])  # the demo's grid, as the cells


class Steps:
    """Runs and times the steps of one method; each returns a pseudo-label folder."""

    def __init__(self, args, ds, method: str):
        self.args, self.ds = args, ds
        self.cams = args.cells / method / f"seed{args.seed}" / "cams"
        self.out = args.out / method
        self.seconds: dict[str, float] = {}

    def timed(self, name: str, fn):
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return result

    def threshold(self, cams: Path, name: str) -> Path:
        """Algorithm 1 without saliency at the τ that is best on these images."""
        best = sweep_tau(self.ds, cams, TAUS, {"none": None}, workers=2, progress=False)["sources"]["none"][
            "best"
        ]
        out = self.out / name
        self.timed(name, lambda: make_pseudo_labels(self.ds, cams, out, best["tau"], progress=False))
        return out

    def random_walk(self, mode: str) -> Path:
        labels = self.out / f"affinity_labels_{mode}"
        sal = self.ds.saliency_dir(self.args.saliency) if mode == "saliency" else None
        self.timed(f"rw_{mode}", lambda: make_affinity_labels(self.ds, self.cams, labels, mode=mode,
                                                             saliency_dir=sal, progress=False))  # fmt: skip
        # IRN's way with the demo's ImageNet Lite0: the backbone frozen, the edge branch trained
        config = CamTrainConfig.from_dict(
            demo_backbone_recipe(
                epochs=self.args.affinity_epochs,
                seed=self.args.seed,
                method_options={"freeze_backbone": True},
            )
        )
        model = self.out / f"affinity_{mode}"
        self.timed(f"rw_{mode}", lambda: train_affinity(self.ds, labels, model, config, progress=False))
        walked = self.out / f"cams_rw_{mode}"
        self.timed(f"rw_{mode}", lambda: refine_cams(self.ds, self.cams, model, walked, progress=False))
        return self.threshold(walked, f"pseudo_rw_{mode}")

    def sepl(self, pseudo: Path, generator: str, name: str) -> Path:
        masks = self.args.out / f"masks_{generator}"  # class-agnostic: shared by every method
        self.timed(f"masks_{generator}", lambda: generate_masks(build_mask_generator(generator), self.ds, masks,
                                                                 progress=False))  # fmt: skip
        out = self.out / name
        self.timed(name, lambda: make_sepl_labels(self.ds, pseudo, masks, out, progress=False))
        return out


def score(ds, pred: Path) -> dict:
    r = evaluate_dataset(pred, ds, groups=False, workers=2, progress=False)
    return {k: r[k] for k in ("miou", "precision_mean", "recall_mean")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=Path, default=Path("runs/cam_methods"), help="cam_methods.py --out")
    ap.add_argument("--out", type=Path, default=Path("runs/refinement"))
    ap.add_argument("--methods", nargs="+", default=["cam", "puzzle"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-images", type=int, default=500)
    ap.add_argument(
        "--saliency", default="good", help="saliency source of the saliency-aware affinity labels"
    )
    ap.add_argument("--affinity-epochs", type=int, default=3)
    args = ap.parse_args()

    ds = build_dataset("synthetic", args.cells / "data", "train")
    if args.max_images:
        ds.ids = ds.ids[: args.max_images]
    rows: dict[str, dict[str, dict]] = {}
    per_image: dict[str, dict[str, float]] = {}
    for method in args.methods:
        s = Steps(args, ds, method)
        folders = {"threshold": s.threshold(s.cams, "pseudo_threshold")}
        folders["+CRF"] = s.out / "pseudo_crf"
        s.timed(
            "crf", lambda s=s, f=folders: crf_refine(ds, f["+CRF"], labels_dir=f["threshold"], progress=False)
        )
        folders["+RW (classic labels)"] = s.random_walk("classic")
        folders["+RW (saliency-aware labels)"] = s.random_walk("saliency")
        best_rw = folders["+RW (saliency-aware labels)"]
        folders["+RW(sal) +SEPL (felzenszwalb)"] = s.sepl(best_rw, "felzenszwalb", "sepl_fz_rw")
        folders["+RW(sal) +SEPL (GT instances)"] = s.sepl(best_rw, "gt-instances", "sepl_gt_rw")
        folders["threshold +SEPL (felzenszwalb)"] = s.sepl(folders["threshold"], "felzenszwalb", "sepl_fz")
        folders["threshold +SEPL (GT instances)"] = s.sepl(folders["threshold"], "gt-instances", "sepl_gt")
        rows[method] = {step: score(ds, folder) for step, folder in folders.items()}
        per_image[method] = {k: round(v / len(ds), 4) for k, v in s.seconds.items()}
        write_json(s.out / "seconds.json", s.seconds)

    steps = list(next(iter(rows.values())))
    lines = [
        f"# Refinement steps (seed {args.seed} CAMs, first {len(ds)} train images; %)",
        "",
        "| step | " + " | ".join(f"{m} mIoU | {m} prec | {m} rec" for m in args.methods) + " |",
        "|---|" + "---|---|---|" * len(args.methods),
    ]
    for step in steps:
        cells = []
        for m in args.methods:
            r = rows[m][step]
            cells += [
                f"{100 * r['miou']:.1f}",
                f"{100 * r['precision_mean']:.1f}",
                f"{100 * r['recall_mean']:.1f}",
            ]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per image (2 CPU cores; affinity steps include labels + training + walk):", ""]
    for m in args.methods:
        lines.append(f"- {m}: " + ", ".join(f"{k} {v:.3f}" for k, v in per_image[m].items()))
    rw_record = read_json(args.out / args.methods[0] / "cams_rw_classic" / "run.json")
    lines += ["", f"Random-walk settings: {json.dumps(rw_record.get('config', {}))}", ""]
    report = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "refinement.md", report)
    write_json(args.out / "refinement.json", {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                              "seconds_per_image": per_image})  # fmt: skip
    print(report)


if __name__ == "__main__":
    main()
