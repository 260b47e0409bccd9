"""The ``wsss`` command: one sub-command per stage, each a thin layer over the Python API.

Every command takes the dataset as ``--data ROOT --dataset KIND --split NAME``
and reads/writes the documented file formats, so stages can be mixed with
maps made by other tools. Bad input ends with one line naming the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from wsss.io import WsssError, describe_error, one_line, parse_shard

app = typer.Typer(
    name="wsss",
    help="Weakly-supervised semantic segmentation from image-level labels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cam_app = typer.Typer(
    help="Stage 1: train a CAM network and infer class activation maps.", no_args_is_help=True
)
app.add_typer(cam_app, name="cam")
saliency_app = typer.Typer(
    help="Stage 2: saliency maps from any source, and their quality.", no_args_is_help=True
)
app.add_typer(saliency_app, name="saliency")
refine_app = typer.Typer(help="Stage 3: refine pseudo labels or CAMs.", no_args_is_help=True)
app.add_typer(refine_app, name="refine")
affinity_app = typer.Typer(
    help="Stage 3: affinity labels → affinity (edge) network → random walk on CAMs.", no_args_is_help=True
)
app.add_typer(affinity_app, name="affinity")
seg_app = typer.Typer(help="Stage 4: train the segmentation network and predict.", no_args_is_help=True)
app.add_typer(seg_app, name="seg")

DataRoot = Annotated[Path, typer.Option("--data", help="Dataset root folder.", exists=True, file_okay=False)]
DataKind = Annotated[str, typer.Option("--dataset", help="Dataset kind: synthetic, voc, coco, folder.")]
Split = Annotated[
    str, typer.Option("--split", help="Split name (a list under ImageSets/Segmentation for VOC).")
]
Shard = Annotated[
    str | None, typer.Option("--shard", help="Process shard i of N ('i/N'); default RANK/WORLD_SIZE.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Recompute everything in the output folder, even if it holds outputs made with other settings or inputs.",
    ),
]
Sets = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: key=value (repeatable).")
]


def _dataset(root: Path, kind: str, split: str):
    from wsss.data import DATASETS, build_dataset

    if kind not in DATASETS:
        raise WsssError(f"--dataset {kind}: unknown dataset kind; known: {', '.join(sorted(DATASETS))}")
    return build_dataset(kind, root, split)


def _floats(text: str, flag: str = "", positive: bool = False) -> tuple[float, ...]:
    """``"0.5,1.0"`` → (0.5, 1.0); a bad list is an error naming ``flag``."""
    where = f"{flag}: " if flag else ""
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise WsssError(f"{where}expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise WsssError(f"{where}expected comma-separated finite numbers, got {text!r}")
    if positive and min(values) <= 0:
        raise WsssError(f"{where}expected numbers > 0, got {text!r}")
    return values


def _bounds(text: str, flag: str) -> tuple[int, int]:
    """``"small,medium"`` instance-area bounds in pixels: two integers, 0 < small <= medium."""
    b = _floats(text, flag)
    if len(b) != 2 or not all(v == int(v) for v in b) or not 0 < b[0] <= b[1]:
        raise WsssError(f"{flag} expects two numbers small,medium (whole pixel counts, 0 < small <= medium), "
                        f"got {text!r}")  # fmt: skip
    return int(b[0]), int(b[1])


def _finite(ctx: typer.Context, param: typer.CallbackParam, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _positive(ctx: typer.Context, param: typer.CallbackParam, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a number > 0")
    return value


def _open_unit(ctx: typer.Context, param: typer.CallbackParam, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 < value < 1):
        raise typer.BadParameter(f"{value} is not in the range 0<x<1")
    return value


def _below_one(ctx: typer.Context, param: typer.CallbackParam, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 <= value < 1):
        raise typer.BadParameter(f"{value} is not in the range 0<=x<1")
    return value


def _recipe(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    from wsss.cam.recipes import RECIPES

    if value is not None and value != "auto" and value not in RECIPES:
        raise typer.BadParameter(f"{value!r} is not one of: auto, {', '.join(sorted(RECIPES))}")
    return value


def _out_dir(flag: str, path: str | Path | None) -> None:
    """An output folder: refused before any work when it, or a folder above it, is a file."""
    if path is None:
        return
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if p.is_dir():
                return
            if p == path:
                raise WsssError(f"{flag} {path}: exists and is a file; expected a folder")
            raise WsssError(f"{flag} {path}: {p} is a file, so no folder can be made below it")


def _out_file(flag: str, path: Path | None) -> None:
    """An output file: refused before any work when it is a folder or sits under a file."""
    if path is None:
        return
    if path.is_dir():
        raise WsssError(f"{flag} {path}: is a folder; expected a file path to write")
    _out_dir(flag, path.parent)


def _device(flag: str, device: str | None) -> None:
    """A torch device string that this machine has (checked before any work)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise WsssError(f"{flag} {device}: not a device (cpu, cuda, cuda:1, …): {one_line(str(e))}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WsssError(f"{flag} {device}: CUDA is not available on this machine; use --device cpu")


def _saliency_arg(ds, value: str | None, flag: str = "--saliency") -> Path | None:
    """A folder path, or the name of a source under the dataset's ``saliency/``."""
    if value is None or value == "none":
        return None
    p = Path(value)
    if p.is_dir():
        return p
    d = ds.saliency_dir(value)
    if d.is_dir():
        return d
    raise WsssError(
        f"{flag} {value}: saliency folder not found (neither a folder nor a source in {ds.saliency_dir('')})"
    )


# ---------------------------------------------------------------------------- synth
@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder (VOC layout).")],
    preset: Annotated[str, typer.Option(help="Named preset: tiny or demo.")] = "demo",
    seed: Annotated[int, typer.Option(min=0)] = 0,
    shapes: Annotated[
        Path | None,
        typer.Option(
            help="Shape bank: DIR/<class_name>/*.png, or a flat DIR/<class_name>-<n>.gif (MPEG-7).",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    sets: Sets = None,
    overwrite: bool = False,
    quiet: Quiet = False,
) -> None:
    """Generate the embedded synthetic benchmark (deterministic given preset, overrides and seed)."""
    from wsss.config import apply_overrides
    from wsss.data.synthetic import generate

    _out_dir("OUT", out)
    overrides = apply_overrides({}, sets or [])
    root = generate(
        out, preset, seed=seed, shapes_dir=shapes, progress=not quiet, overwrite=overwrite, **overrides
    )
    typer.echo(f"dataset written to {root}")


# ---------------------------------------------------------------------------- stage 1
@cam_app.command("train")
def cam_train(
    data: DataRoot,
    out: Annotated[Path, typer.Option(help="Output folder for checkpoints and weights.")],
    dataset: DataKind = "synthetic",
    split: Split = "train",
    method: Annotated[str, typer.Option(help="CAM training method.")] = "cam",
    config: Annotated[
        Path | None, typer.Option(help="YAML file with CamTrainConfig fields.", exists=True, dir_okay=False)
    ] = None,
    oc: Annotated[
        Path | None, typer.Option(help="Ordinary classifier (a `cam` run folder or weights).", exists=True)
    ] = None,
    saliency: Annotated[str | None, typer.Option(help="Saliency folder or source name (eps, smvwe).")] = None,
    label_smoothing: Annotated[
        float | None, typer.Option(help="ε for y' = (1−ε)y + ε/2, e.g. 0.1.", callback=_below_one)
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="Training recipe: irn, puzzlecam, oc-cse, pnoc, eps, generic, or auto (the method's authors').",
            callback=_recipe,
        ),
    ] = None,
    sets: Sets = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Train a CAM network on image-level labels (resumes from out/checkpoint.pt)."""
    from wsss.cam import CamTrainConfig, train_cam
    from wsss.config import apply_overrides, load_yaml

    _out_dir("--out", out)
    values = load_yaml(config) if config else {}
    values = apply_overrides(values, sets or [])
    for key, value in (
        ("oc", oc),
        ("saliency", saliency),
        ("label_smoothing", label_smoothing),
        ("recipe", recipe),
    ):
        if value is not None:
            values[key] = str(value) if isinstance(value, Path) else value
    cfg = CamTrainConfig.from_dict(values, source=str(config or "--set"))
    ds = _dataset(data, dataset, split)
    ds.check_labels()
    path = train_cam(ds, out, cfg, method=method, progress=not quiet, force=force)
    typer.echo(f"weights: {path}")


@cam_app.command("infer")
def cam_infer(
    data: DataRoot,
    model: Annotated[Path, typer.Option(help="Training output folder or weights file.", exists=True)],
    out: Annotated[Path, typer.Option(help="Folder for <id>.npz CAMs.")],
    dataset: DataKind = "synthetic",
    split: Split = "train",
    scales: Annotated[str, typer.Option(help="TTA scales, comma-separated.")] = "0.5,1.0,1.5,2.0",
    flip: Annotated[bool, typer.Option(help="Add horizontally flipped inputs.")] = True,
    geometry: Annotated[
        str, typer.Option(help="reference (IRN/P-NOC: PIL bicubic rescale, stride-rounded maps) or resize.")
    ] = "reference",
    shard: Shard = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1… (default: cuda if available).")
    ] = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Infer CAMs with test-time augmentation (skips images already done)."""
    from wsss.cam import infer_cams

    _out_dir("--out", out)
    _device("--device", device)
    scale_list, shard_ = _floats(scales, "--scales", positive=True), parse_shard(shard)
    ds = _dataset(data, dataset, split)
    infer_cams(ds, model, out, scales=scale_list, flip=flip, geometry=geometry, shard=shard_, device=device,
               progress=not quiet, force=force)  # fmt: skip
    typer.echo(f"CAMs in {out}")


# ---------------------------------------------------------------------------- stage 2
@saliency_app.command("make")
def saliency_make(
    source: Annotated[str, typer.Argument(help="folder, spectral-residual, fine-grained, c2am or c2am-h.")],
    data: DataRoot,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for <id>.png maps (default DATA/saliency/SOURCE; folder: the detector)."),
    ] = None,
    dataset: DataKind = "synthetic",
    split: Split = "train",
    from_dir: Annotated[
        Path | None,
        typer.Option(
            "--from", help="folder: the detector's maps (matched by stem).", exists=True, file_okay=False
        ),
    ] = None,
    detector: Annotated[
        str | None, typer.Option(help="folder: which detector made them (provenance).")
    ] = None,
    trained_on: Annotated[
        str | None, typer.Option(help="folder: the detector's training set (provenance).")
    ] = None,
    cams: Annotated[
        Path | None,
        typer.Option(help="c2am-h: CAM folder of the training images.", exists=True, file_okay=False),
    ] = None,
    cue: Annotated[
        float | None,
        typer.Option(
            help="Write a binary background cue: map > CUE, then dense CRF if installed.",
            min=0.0,
            max=1.0,
            callback=_finite,
        ),
    ] = None,
    crf: Annotated[bool, typer.Option(help="With --cue: refine the cut with a dense CRF.")] = True,
    sets: Sets = None,
    shard: Shard = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Write saliency maps (8-bit PNG, 255 = salient) with a provenance record; resumes.

    Source options go through --set, e.g. --set train.epochs=4 --set train.backbone=resnet18
    for c2am, --set resize=any for folder.
    """
    from wsss.config import apply_overrides
    from wsss.saliency import build_saliency_source, make_saliency

    _out_dir("--out", out)
    shard_ = parse_shard(shard)
    options = apply_overrides({}, sets or [])
    for key, value in (("dir", from_dir), ("detector", detector), ("trained_on", trained_on), ("cams", cams)):
        if value is not None:
            options[key] = str(value)
    ds = _dataset(data, dataset, split)
    src = build_saliency_source(source, **options)
    if out is None:  # imported maps are named by their detector, so two detectors never share a folder
        name = source if source != "folder" else (detector or (from_dir.name if from_dir else source))
        out = ds.saliency_dir(name)
    cue_opts = None if cue is None else {"threshold": cue, "crf": crf}
    make_saliency(src, ds, out, shard=shard_, cue=cue_opts, progress=not quiet, force=force)
    typer.echo(f"saliency maps in {out}")


@saliency_app.command("eval")
def saliency_eval(
    pred: Annotated[str, typer.Argument(help="Saliency folder, or a source name under DATA/saliency/.")],
    data: DataRoot,
    dataset: DataKind = "synthetic",
    split: Split = "train",
    gt: Annotated[
        Path | None,
        typer.Option(
            help="Ground-truth saliency PNGs (> 0.5 = salient); default: GT labels > 0.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(help="sod: PySODMetrics' numbers (as SOD papers); pooled: the earlier protocol."),
    ] = "sod",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON.")] = None,
    quiet: Quiet = False,
) -> None:
    """SOD scores (MAE, max/mean F-measure with β² = 0.3, S-measure, max E-measure) and IoU at 0.5
    against foreground masks."""
    from wsss.io import write_json
    from wsss.saliency.metrics import evaluate_saliency

    _out_file("--json", json_out)
    ds = _dataset(data, dataset, split)
    res = evaluate_saliency(
        _saliency_arg(ds, pred, "PRED"), ds, gt_dir=gt, progress=not quiet, protocol=protocol
    )
    sod = (
        f"mean-F {res['mean_f']:.4f}  S {res['s_measure']:.4f}  max-E {res['max_e']:.4f}  "
        if protocol == "sod"
        else ""
    )
    typer.echo(
        f"{pred} on {split} ({res['num_images']} images, {protocol}): MAE {res['mae']:.4f}  "
        f"max-F {res['max_f']:.4f}  {sod}IoU@0.5 {res['iou']:.4f}"
    )
    if json_out:
        write_json(json_out, res)


# ---------------------------------------------------------------------------- stage 3
@app.command()
def pseudo(
    data: DataRoot,
    cams: Annotated[
        Path, typer.Option(help="CAM folder (.npz, IRN .npy or WSSS-BED PNGs).", exists=True, file_okay=False)
    ],
    out: Annotated[Path, typer.Option(help="Folder for <id>.png pseudo labels.")],
    tau: Annotated[float, typer.Option(help="CAM threshold τ.", min=0.0, max=1.0, callback=_finite)],
    dataset: DataKind = "synthetic",
    split: Split = "train",
    saliency: Annotated[
        str | None, typer.Option(help="Saliency folder or source name; omit for none.")
    ] = None,
    sal_threshold: Annotated[
        float, typer.Option(help="Saliency binarisation threshold.", min=0.0, max=1.0, callback=_finite)
    ] = 0.2,
    ignore_salient_bg: Annotated[bool, typer.Option(help="Salient pixels left as background → 255.")] = True,
    strict_tau: Annotated[
        bool,
        typer.Option(
            "--strict-tau", help="The paper's CAM > τ with saliency (default: WSSS-BED's code, CAM >= τ)."
        ),
    ] = False,
    shard: Shard = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Pseudo labels by threshold (+ saliency): seed 000's Algorithm 1."""
    from wsss.pseudo.threshold import make_pseudo_labels

    _out_dir("--out", out)
    shard_ = parse_shard(shard)
    ds = _dataset(data, dataset, split)
    make_pseudo_labels(ds, cams, out, tau, saliency_dir=_saliency_arg(ds, saliency), sal_threshold=sal_threshold,
                       ignore_salient_bg=ignore_salient_bg, strict_tau=strict_tau, shard=shard_, progress=not quiet,
                       force=force)  # fmt: skip
    typer.echo(f"pseudo labels in {out}")


@refine_app.command("crf")
def refine_crf(
    data: DataRoot,
    out: Annotated[Path, typer.Option(help="Folder for the refined <id>.png label maps.")],
    labels: Annotated[
        Path | None,
        typer.Option(help="Pseudo-label folder to refine (label CRF).", exists=True, file_okay=False),
    ] = None,
    cams: Annotated[
        Path | None,
        typer.Option(help="CAM folder to refine (softmax-variant CRF).", exists=True, file_okay=False),
    ] = None,
    tau: Annotated[
        float | None, typer.Option(help="With --cams: the background score τ.", callback=_open_unit)
    ] = None,
    dataset: DataKind = "synthetic",
    split: Split = "train",
    sets: Sets = None,
    shard: Shard = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Dense CRF (gt_prob 0.7, Gaussian 3/3, bilateral 50/5/10, 10 iterations; change with
    --set bi_sxy=80 …) on pseudo labels or on CAMs; resumes."""
    from wsss.config import apply_overrides
    from wsss.pseudo.crf import CrfParams
    from wsss.pseudo.refine_crf import crf_refine

    _out_dir("--out", out)
    params = CrfParams.from_dict(apply_overrides({}, sets or []), source="--set")
    if (labels is None) == (cams is None):
        raise WsssError(
            "wsss refine crf: give exactly one of --labels DIR (label CRF) or --cams DIR (with --tau)"
        )
    if cams is not None and tau is None:
        raise WsssError("wsss refine crf: --cams needs --tau (the background score, in (0, 1))")
    shard_ = parse_shard(shard)
    ds = _dataset(data, dataset, split)
    crf_refine(ds, out, labels_dir=labels, cam_dir=cams, tau=tau, params=params, shard=shard_,
               progress=not quiet, force=force)  # fmt: skip
    typer.echo(f"refined labels in {out}")


@affinity_app.command("labels")
def affinity_labels(
    data: DataRoot,
    cams: Annotated[Path, typer.Option(help="CAM folder.", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="Folder for <id>.png affinity labels (255 = uncertain).")],
    dataset: DataKind = "synthetic",
    split: Split = "train",
    mode: Annotated[str, typer.Option(help="classic (IRN) or saliency (seed 001).")] = "classic",
    saliency: Annotated[str | None, typer.Option(help="mode saliency: folder or source name.")] = None,
    fg_threshold: Annotated[
        float,
        typer.Option(help="classic: background score of the fg pass.", min=0.0, max=1.0, callback=_finite),
    ] = 0.30,
    bg_threshold: Annotated[
        float,
        typer.Option(help="classic: background score of the bg pass.", min=0.0, max=1.0, callback=_finite),
    ] = 0.05,
    sal_threshold: Annotated[
        float, typer.Option(help="saliency: salient where S > this.", min=0.0, max=1.0, callback=_finite)
    ] = 0.10,
    cam_threshold: Annotated[
        float, typer.Option(help="saliency: class where CAM > this.", min=0.0, max=1.0, callback=_finite)
    ] = 0.40,
    crf: Annotated[bool, typer.Option(help="Refine each pass with the dense CRF.")] = True,
    shard: Shard = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Affinity labels from CAMs: confident foreground, confident background, uncertain (255)."""
    from wsss.pseudo.affinity import make_affinity_labels

    _out_dir("--out", out)
    if mode not in ("classic", "saliency"):
        raise WsssError(f"--mode {mode}: expected classic or saliency")
    if mode == "saliency" and saliency is None:
        raise WsssError("--mode saliency needs --saliency (a folder or a source name)")
    shard_ = parse_shard(shard)
    ds = _dataset(data, dataset, split)
    make_affinity_labels(ds, cams, out, mode=mode, saliency_dir=_saliency_arg(ds, saliency),
                         fg_threshold=fg_threshold, bg_threshold=bg_threshold, sal_threshold=sal_threshold,
                         cam_threshold=cam_threshold, crf=crf, shard=shard_,
                         progress=not quiet, force=force)  # fmt: skip
    typer.echo(f"affinity labels in {out}")


@affinity_app.command("train")
def affinity_train(
    data: DataRoot,
    labels: Annotated[
        Path, typer.Option(help="Affinity-label folder (wsss affinity labels).", exists=True, file_okay=False)
    ],
    out: Annotated[Path, typer.Option(help="Output folder for checkpoints and weights.")],
    dataset: DataKind = "synthetic",
    split: Split = "train",
    config: Annotated[
        Path | None, typer.Option(help="YAML file with CamTrainConfig fields.", exists=True, dir_okay=False)
    ] = None,
    sets: Sets = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Train the affinity (edge) network on pixel pairs within radius 10 at 1/4 resolution; resumes."""
    from wsss.cam import CamTrainConfig
    from wsss.config import apply_overrides, load_yaml
    from wsss.pseudo.affinity import train_affinity

    _out_dir("--out", out)
    values = apply_overrides(load_yaml(config) if config else {}, sets or [])
    cfg = CamTrainConfig.from_dict(values, source=str(config or "--set"))
    path = train_affinity(_dataset(data, dataset, split), labels, out, cfg, progress=not quiet, force=force)
    typer.echo(f"weights: {path}")


@affinity_app.command("walk")
def affinity_walk(
    data: DataRoot,
    cams: Annotated[Path, typer.Option(help="CAM folder to refine.", exists=True, file_okay=False)],
    model: Annotated[Path, typer.Option(help="Affinity training folder or weights file.", exists=True)],
    out: Annotated[Path, typer.Option(help="Folder for the refined <id>.npz CAMs.")],
    dataset: DataKind = "synthetic",
    split: Split = "train",
    beta: Annotated[float, typer.Option(help="Affinity power β.", callback=_positive)] = 10.0,
    squarings: Annotated[int, typer.Option(help="T is raised to 2^squarings.", min=0, max=32)] = 8,
    radius: Annotated[int, typer.Option(help="Affinity radius (1/4-resolution cells).", min=1)] = 5,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, … (default: cuda if available).")] = None,
    shard: Shard = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Random walk of the CAMs on the learnt affinity; the output is a CAM folder for
    `wsss pseudo` / `wsss sweep` (τ 0.25 = IRN's background 0.25)."""
    from wsss.pseudo.random_walk import refine_cams

    _out_dir("--out", out)
    _device("--device", device)
    shard_ = parse_shard(shard)
    ds = _dataset(data, dataset, split)
    refine_cams(ds, cams, model, out, beta=beta, num_squarings=squarings, radius=radius, device=device,
                shard=shard_, progress=not quiet, force=force)  # fmt: skip
    typer.echo(f"refined CAMs in {out}")


@app.command()
def masks(
    generator: Annotated[str, typer.Argument(help="felzenszwalb, slic, sam, sam2 or gt-instances.")],
    data: DataRoot,
    out: Annotated[Path, typer.Option(help="Folder for <id>.npz packed boolean masks.")],
    dataset: DataKind = "synthetic",
    split: Split = "train",
    checkpoint: Annotated[
        Path | None, typer.Option(help="sam/sam2: the model checkpoint.", exists=True)
    ] = None,
    model_type: Annotated[str | None, typer.Option(help="sam: vit_h, vit_l or vit_b.")] = None,
    sets: Sets = None,
    shard: Shard = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Class-agnostic masks per image for SEPL (generator options via --set, e.g.
    --set points_per_side=16, --set scales=[100,300])."""
    from wsss.config import apply_overrides
    from wsss.pseudo.masks import build_mask_generator, generate_masks

    _out_dir("--out", out)
    shard_ = parse_shard(shard)
    options = apply_overrides({}, sets or [])
    if checkpoint is not None:
        options["checkpoint"] = str(checkpoint)
    if model_type is not None:
        options["model_type"] = model_type
    ds = _dataset(data, dataset, split)
    generate_masks(build_mask_generator(generator, **options), ds, out, shard=shard_,
                   progress=not quiet, force=force)  # fmt: skip
    typer.echo(f"masks in {out}")


@app.command()
def sepl(
    data: DataRoot,
    pseudo: Annotated[
        Path, typer.Option(help="Pseudo-label folder to enhance.", exists=True, file_okay=False)
    ],
    masks_dir: Annotated[
        Path,
        typer.Option("--masks", help="Folder of <id>.npz masks (wsss masks).", exists=True, file_okay=False),
    ],
    out: Annotated[Path, typer.Option(help="Folder for the enhanced <id>.png labels.")],
    dataset: DataKind = "synthetic",
    split: Split = "train",
    region_threshold: Annotated[
        float, typer.Option(help="Keep a mask if |S∩P_k|/|S| > this.", min=0.0, max=1.0, callback=_finite)
    ] = 0.5,
    mask_threshold: Annotated[
        float, typer.Option(help="… or if |S∩P_k|/|P_k| >= this.", min=0.0, max=1.0, callback=_finite)
    ] = 0.85,
    variant: Annotated[
        str, typer.Option(help="Merge: 'code' (the authors' released merge) or 'paper' (the paper's text).")
    ] = "code",
    shard: Shard = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """SAM-enhanced pseudo labels (seed 003): merge class-agnostic masks into pseudo labels;
    prints precision/recall before and after when the dataset has ground truth."""
    from wsss.pseudo.sepl import make_sepl_labels

    _out_dir("--out", out)
    shard_ = parse_shard(shard)
    ds = _dataset(data, dataset, split)
    res = make_sepl_labels(ds, pseudo, masks_dir, out, region_threshold=region_threshold,
                           mask_threshold=mask_threshold, variant=variant, shard=shard_, progress=not quiet,
                           force=force)  # fmt: skip
    if res.get("before") and res.get("after"):
        for when in ("before", "after"):
            r = res[when]
            typer.echo(f"{when:>6}: mIoU {100 * r['miou']:.1f}  precision {100 * r['precision']:.1f}  "
                       f"recall {100 * r['recall']:.1f}")  # fmt: skip
    typer.echo(f"enhanced labels in {out}")


@app.command()
def sweep(
    data: DataRoot,
    cams: Annotated[Path, typer.Option(help="CAM folder.", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="Folder for sweep.csv / sweep.json / sweep.png.")],
    dataset: DataKind = "synthetic",
    split: Split = "train",
    saliency: Annotated[
        list[str] | None, typer.Option(help="Source name or NAME=DIR (repeatable); 'none' = no saliency.")
    ] = None,
    taus: Annotated[str, typer.Option(help="start:stop:step or a comma-separated list.")] = "0.05:0.95:0.05",
    sal_threshold: Annotated[float, typer.Option(min=0.0, max=1.0, callback=_finite)] = 0.2,
    ignore_salient_bg: bool = True,
    strict_tau: Annotated[
        bool,
        typer.Option(
            "--strict-tau", help="The paper's CAM > τ with saliency (default: WSSS-BED's code, CAM >= τ)."
        ),
    ] = False,
    workers: Annotated[int, typer.Option(min=1)] = 1,
    device: Annotated[
        str, typer.Option(help="auto (a GPU when present), cpu, or cuda[:N]: where the pixels are counted.")
    ] = "auto",
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Sweep τ with and without saliency; report mIoU/precision/recall per τ and the best τ."""
    from wsss.pipeline import tau_grid
    from wsss.pseudo.sweep import sweep_tau, write_sweep
    from wsss.stage import dataset_settings, stage_run

    _out_dir("--out", out)
    if ":" in taus:
        parts = _floats(taus.replace(":", ","), "--taus")
        if len(parts) != 3:
            raise WsssError(f"--taus expects start:stop:step, got {taus!r}")
        spec: dict | list = dict(zip(("start", "stop", "step"), parts, strict=True))
    else:
        spec = list(_floats(taus, "--taus"))
    try:
        grid = tau_grid(spec)
    except WsssError as e:
        raise WsssError(f"--taus {taus}: {e}") from None
    ds = _dataset(data, dataset, split)
    sources: dict[str, Path | None] = {}
    for s in saliency or ["none"]:
        name, _, path = s.partition("=")
        sources[name] = _saliency_arg(ds, path or name)
    settings = {"split": split, "taus": grid, "sal_threshold": sal_threshold, "ignore_salient_bg": ignore_salient_bg,
                "strict_tau": strict_tau,
                "sources": sorted(sources), **dataset_settings(ds)}  # fmt: skip
    inputs = {"cams": cams, **{f"saliency:{k}": v for k, v in sources.items()}}
    with stage_run(out, "sweep", settings, inputs, force=force):
        result = sweep_tau(ds, cams, taus=grid, saliency_dirs=sources, sal_threshold=sal_threshold,
                           ignore_salient_bg=ignore_salient_bg, strict_tau=strict_tau, workers=workers,
                           device=device, progress=not quiet)  # fmt: skip
        write_sweep(result, out)
    for name, r in result["sources"].items():
        b = r["best"]
        typer.echo(f"{name:>12}: best τ = {b['tau']:.2f}  mIoU {100 * b['miou']:.1f}")


# ---------------------------------------------------------------------------- stage 4
@seg_app.command("train")
def seg_train(
    data: DataRoot,
    out: Annotated[Path, typer.Option(help="Output folder for checkpoints and weights.")],
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Pseudo-label folder; omit to train on the ground truth.", exists=True, file_okay=False
        ),
    ] = None,
    dataset: DataKind = "synthetic",
    split: Split = "train",
    method: Annotated[str, typer.Option(help="Loss: ce, size-weighted or size-balanced.")] = "ce",
    config: Annotated[
        Path | None, typer.Option(help="YAML file with SegTrainConfig fields.", exists=True, dir_okay=False)
    ] = None,
    sets: Sets = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Train DeepLab (head deeplab-v2 | deeplab-v3plus) on pseudo labels; resumes; torchrun → DDP."""
    from wsss.config import apply_overrides, load_yaml
    from wsss.seg import SegTrainConfig, train_seg

    _out_dir("--out", out)
    values = apply_overrides(load_yaml(config) if config else {}, sets or [])
    if labels is not None:
        values["labels"] = str(labels)
    cfg = SegTrainConfig.from_dict(values, source=str(config or "--set"))
    path = train_seg(_dataset(data, dataset, split), out, cfg, method=method, progress=not quiet, force=force)
    typer.echo(f"weights: {path}")


@seg_app.command("predict")
def seg_predict(
    data: DataRoot,
    model: Annotated[Path, typer.Option(help="Training output folder or weights file.", exists=True)],
    out: Annotated[Path, typer.Option(help="Folder for <id>.png predictions.")],
    dataset: DataKind = "synthetic",
    split: Split = "val",
    scales: Annotated[
        str | None,
        typer.Option(
            help="TTA scales, comma-separated (default: the model's procedure; see docs/methods.md §4.4)."
        ),
    ] = None,
    flip: Annotated[
        bool | None,
        typer.Option("--flip/--no-flip", help="Add horizontally flipped inputs (default: the model's)."),
    ] = None,
    crf: Annotated[
        bool, typer.Option(help="Dense CRF on the averaged probabilities (seed 004's settings).")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, … (default: cuda if available).")] = None,
    shard: Shard = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Multi-scale + flip prediction (optional CRF) → label PNGs for `wsss evaluate`; resumes."""
    from wsss.seg import predict_seg

    _out_dir("--out", out)
    _device("--device", device)
    scale_list = None if scales is None else _floats(scales, "--scales", positive=True)
    shard_ = parse_shard(shard)
    ds = _dataset(data, dataset, split)
    predict_seg(ds, model, out, scales=scale_list, flip=flip, crf=crf, shard=shard_,
                device=device, batch_size=batch_size, progress=not quiet, force=force)  # fmt: skip
    typer.echo(f"predictions in {out}")


# ---------------------------------------------------------------------------- evaluate
@app.command()
def evaluate(
    pred: Annotated[Path, typer.Option(help="Folder of predicted label PNGs.", exists=True, file_okay=False)],
    gt: Annotated[
        Path,
        typer.Option(
            help="Folder of ground-truth label PNGs (matched by file stem).", exists=True, file_okay=False
        ),
    ],
    num_classes: Annotated[int, typer.Option(help="Number of classes including background.", min=2, max=255)],
    instances: Annotated[
        Path | None,
        typer.Option(help="Instance-id PNGs (else connected components).", exists=True, file_okay=False),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON.")] = None,
    bounds: Annotated[str, typer.Option(help="IA-mIoU small,medium size bounds in pixels.")] = "1024,9216",
    class_names: Annotated[
        Path | None, typer.Option(help="class_names.txt (background first).", exists=True, dir_okay=False)
    ] = None,
    ids: Annotated[
        Path | None,
        typer.Option(
            help="Split list (one id per line): every listed image must have a prediction.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1)] = 1,
    ia_variant: Annotated[
        str,
        typer.Option(
            help="IA-mIoU as the authors' code ('official': blobs with holes filled, float-truncated "
            "share) or 'exact' (plain 8-connected blobs, exact floor)."
        ),
    ] = "official",
    quiet: Quiet = False,
) -> None:
    """mIoU, precision/recall/FPR/FNR, IA-mIoU (S/M/L) and class groups of a folder of predictions."""
    from wsss.data.base import read_class_names, read_id_list
    from wsss.io import write_json, write_run_json
    from wsss.metrics.evaluate import evaluate_dirs, format_table

    _out_file("--json", json_out)
    b = _bounds(bounds, "--bounds")
    names = read_class_names(class_names) if class_names else None
    if names is not None and len(names) != num_classes:
        raise WsssError(f"{class_names}: {len(names)} class names but --num-classes is {num_classes}; "
                        "expected one name per class, background first")  # fmt: skip
    id_list = read_id_list(ids) if ids else None
    res = evaluate_dirs(pred, gt, num_classes, instances_dir=instances, class_names=names,
                        bounds=b, ids=id_list, workers=workers, progress=not quiet,
                        ia_variant=ia_variant)  # fmt: skip
    typer.echo(format_table(res))
    if res.get("num_gt_without_prediction"):
        typer.echo(f"note: {res['num_gt_without_prediction']} ground-truth images in {gt} have no prediction "
                   "and were not scored (pass --ids SPLIT.txt to require them)", err=True)  # fmt: skip
    if json_out:
        write_json(json_out, res)
        record = {"pred": pred, "gt": gt, "instances": instances, "num_classes": num_classes, "bounds": b,
                  "ia_variant": ia_variant}  # fmt: skip
        write_run_json(json_out.parent, "evaluate", record, name=f"{json_out.stem}.run.json")


@app.command()
def balance(
    data: DataRoot,
    out: Annotated[
        Path,
        typer.Option(help="Folder for NAME.txt and its histograms (ROOT/ImageSets/Segmentation: a split)."),
    ],
    dataset: DataKind = "synthetic",
    split: Split = "val",
    name: Annotated[
        str, typer.Option(help="Subset name: NAME.txt, NAME_histogram.csv/json/png.")
    ] = "balanced",
    bounds: Annotated[
        str | None, typer.Option(help="Small,medium instance area bounds in px (default: the dataset's).")
    ] = None,
    max_images: Annotated[
        int | None, typer.Option(help="Stop once this many images are chosen.", min=1)
    ] = None,
    quiet: Quiet = False,
) -> None:
    """A subset of a split with small/medium/large instances and classes about equally represented
    (seed 004's PASCAL-B), from the instance annotations (else connected components of the GT)."""
    from wsss.data.balance import balance_split, format_histogram

    _out_dir("--out", out)
    if not name or Path(name).name != name or name.startswith("."):
        raise WsssError(f"--name {name!r}: expected a plain file name (no folder, not hidden)")
    b = None if bounds is None else _bounds(bounds, "--bounds")
    summary = balance_split(_dataset(data, dataset, split), out, bounds=b, name=name, max_images=max_images,
                            progress=not quiet)  # fmt: skip
    typer.echo(format_histogram(summary))
    typer.echo(f"subset list: {summary['list']}")


@app.command()
def stats(
    data: DataRoot,
    dataset: DataKind = "synthetic",
    split: Split = "train",
    stride: Annotated[
        int, typer.Option(help="CAM output stride: instance sizes in CAM cells are area / stride².", min=1)
    ] = 16,
    bounds: Annotated[
        str | None, typer.Option(help="Small,medium instance area bounds in px (default: the dataset's).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the statistics as JSON.")] = None,
    quiet: Quiet = False,
) -> None:
    """Objects and classes per image, object sizes (IA-mIoU buckets, CAM cells), co-occurrence and
    background share of a split, next to PASCAL VOC 2012's published figures."""
    from wsss.data.stats import dataset_statistics, format_statistics, voc_reference
    from wsss.io import write_json, write_run_json

    _out_file("--json", json_out)
    b = None if bounds is None else _bounds(bounds, "--bounds")
    res = dataset_statistics(_dataset(data, dataset, split), stride=stride, bounds=b, progress=not quiet)
    typer.echo(format_statistics(res))
    if json_out:
        write_json(json_out, {**res, "voc_2012_train": voc_reference()})
        record = {"data": data, "dataset": dataset, "split": split, "stride": stride, "bounds": res["bounds"]}
        write_run_json(json_out.parent, "stats", record, name=f"{json_out.stem}.run.json")


# ---------------------------------------------------------------------------- whole pipeline
@app.command()
def run(
    config: Annotated[str, typer.Argument(help="YAML config, or a built-in name (demo, tiny, cartoon).")],
    sets: Sets = None,
    out: Annotated[str | None, typer.Option(help="Run folder (overrides the config's `out`).")] = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Run every stage of a config in order; rerun to resume."""
    from wsss.pipeline import run_pipeline

    _out_dir("--out", out)
    run_pipeline(config, sets, out=out, progress=not quiet, force=force)


@app.command()
def bed(
    config: Annotated[str, typer.Argument(help="Bed YAML, or a built-in name (bed_demo).")],
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value: a bed key (seeds=[0]) or, for every cell, a run-config key."),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            help="Cells at once: processes (local, default 1) or queued jobs (slurm, default all).", min=1
        ),
    ] = None,
    executor: Annotated[
        str, typer.Option(help="Where cells run: local, slurm (one job per cell), slurm-local (to try it).")
    ] = "local",
    retries: Annotated[
        int | None, typer.Option(help="Attempts after a cell fails (default: 0 local, 1 slurm).", min=0)
    ] = None,
    slurm_partition: Annotated[str | None, typer.Option(help="SLURM partition of the cells' jobs.")] = None,
    slurm_gpus: Annotated[int | None, typer.Option(help="GPUs per cell (slurm).", min=0)] = None,
    slurm_cpus: Annotated[
        int | None, typer.Option(help="CPUs per cell = its torch threads (slurm).", min=1)
    ] = None,
    slurm_mem: Annotated[float | None, typer.Option(help="Memory per cell in GB (slurm).")] = None,
    slurm_time: Annotated[
        str | None, typer.Option(help="Time limit per cell: minutes or H:MM:SS (slurm; default 120).")
    ] = None,
    slurm_param: Annotated[
        list[str] | None,
        typer.Option("--slurm-param", help="KEY=VALUE: any submitit parameter (slurm_account=proj)."),
    ] = None,
    shard: Annotated[
        str | None, typer.Option(help="Run only the cells whose index ≡ i mod N ('i/N'), then --merge.")
    ] = None,
    merge: Annotated[
        bool, typer.Option("--merge", help="Run nothing: collect the finished cells into results and tables.")
    ] = False,
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="Write results and tables even if cells are missing.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the cell list and exit.")] = False,
    report: Annotated[bool, typer.Option(help="Write OUT/report.html (`wsss report`) at the end.")] = True,
    quiet: Quiet = False,
) -> None:
    """The benchmark bed: CAM methods × seeds as `wsss run` cells over one dataset, every saliency
    source and a swept τ in each; tables of mean ± s.e.m. over seeds. Rerun to resume."""
    from wsss.bench.bed import run_bed

    if shard is not None:
        parse_shard(shard)
    time_limit = None if slurm_time is None else (int(slurm_time) if slurm_time.isdigit() else slurm_time)
    slurm = {"partition": slurm_partition, "gpus": slurm_gpus, "cpus": slurm_cpus, "mem_gb": slurm_mem,
             "time": time_limit, "params": _key_values("--slurm-param", slurm_param or [])}  # fmt: skip
    run_bed(config, sets, jobs=jobs, shard=shard, merge=merge, allow_missing=allow_missing, dry_run=dry_run,
            progress=not quiet, report=report, executor=executor, retries=retries,
            slurm={k: v for k, v in slurm.items() if v not in (None, {})})  # fmt: skip


def _key_values(flag: str, pairs: list[str]) -> dict:
    """``["slurm_account=proj", "slurm_exclude=[a,b]"]`` → a dict, each value read as YAML."""
    import yaml

    parsed = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise WsssError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            parsed[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise WsssError(f"{flag} {key.strip()}: {raw!r} is not a YAML value") from None
    return parsed


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Run folder.")] = "runs/demo",
    sets: Sets = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """The end-to-end demo: synthetic data → CAM → τ sweeps → pseudo labels → DeepLab → evaluation
    → report.html (~10 min on 2 CPUs)."""
    from wsss.pipeline import run_pipeline
    from wsss.report import build_report

    _out_dir("--out", out)
    run_pipeline("demo", sets, out=out, progress=not quiet, force=force)
    typer.echo(f"report: {build_report(out)}")


@app.command()
def report(
    run_dir: Annotated[
        Path,
        typer.Argument(help="A `wsss run` folder, or a bed folder of runs.", exists=True, file_okay=False),
    ],
    out: Annotated[Path | None, typer.Option(help="HTML file (default RUN_DIR/report.html).")] = None,
    gallery: Annotated[
        int, typer.Option(help="Gallery: the N best, N worst and N random images.", min=0, max=1000)
    ] = 4,
    split: Annotated[
        str | None, typer.Option(help="Split of the per-class sections and gallery (default: held-out).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the gallery's random images.", min=0)] = 0,
) -> None:
    """One self-contained HTML report (tables, τ curves, IA-mIoU, class groups, a pseudo-label gallery)."""
    from wsss.report import build_report

    _out_file("--out", out)
    path = build_report(run_dir, out, gallery=gallery, seed=seed, split=split)
    typer.echo(f"report: {path}")


@app.command()
def convert(
    cams: Annotated[
        Path, typer.Option(help="Folder of CAMs in --from-format.", exists=True, file_okay=False)
    ],
    out: Annotated[Path, typer.Option(help="Folder for the converted CAMs.")],
    from_format: Annotated[
        str,
        typer.Option("--from-format", help="wsss (.npz), irn, puzzlecam (also P-NOC), wsss-bed, or auto."),
    ],
    to_format: Annotated[
        str, typer.Option("--to-format", help="wsss (.npz), irn, puzzlecam (also P-NOC), wsss-bed.")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Dataset root: convert its split's images and check sizes and classes.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    dataset: DataKind = "synthetic",
    split: Split = "train",
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Convert CAMs between this toolkit's .npz and IRN's, PuzzleCAM's / P-NOC's .npy dicts and
    WSSS-BED's per-class PNGs, each written as its repository writes it; resumes."""
    from wsss.convert import cam_format, convert_cams

    cam_format(from_format, "--from-format", allow_auto=True)
    cam_format(to_format, "--to-format")
    _out_dir("--out", out)
    ds = _dataset(data, dataset, split) if data is not None else None
    res = convert_cams(cams, out, from_format, to_format, dataset=ds, progress=not quiet, force=force)
    typer.echo(f"{res['written']} CAMs written to {out} ({res['skipped_existing']} already there)")


def _click_errors(name: str) -> tuple[type[BaseException], ...]:
    """click's exception class ``name`` and, where typer vendors its own click, typer's too."""
    modules = {sys.modules[typer.BadParameter.__module__]}
    with contextlib.suppress(ImportError):
        import click.exceptions

        modules.add(click.exceptions)
    return tuple(getattr(m, name) for m in modules if hasattr(m, name))


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("WSSS_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> None:
    """Run the command; every failure ends as one ``error: …`` line with exit status 2
    (``--debug`` anywhere on the line, or ``WSSS_DEBUG=1``, shows the traceback instead)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        code = command.main(argv, prog_name="wsss", standalone_mode=False)
    except _click_errors("NoArgsIsHelpError") as e:  # the help (rich help is printed as it is built)
        if e.format_message().strip():
            typer.echo(e.format_message())
        sys.exit(0)
    except (*_click_errors("Abort"), typer.Abort):
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except _click_errors("UsageError") as e:
        if debug:
            raise
        where = f"wsss {e.ctx.command_path.split(' ', 1)[1]}: " if e.ctx and " " in e.ctx.command_path else ""
        typer.echo(f"error: {where}{one_line(e.format_message())}", err=True)
        sys.exit(2)
    except _click_errors("ClickException") as e:
        if debug:
            raise
        typer.echo(f"error: {one_line(e.format_message())}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except BaseException as e:  # noqa: BLE001 - the one place that turns any failure into one line
        if isinstance(e, SystemExit):
            raise
        if debug:
            raise
        typer.echo(f"error: {describe_error(e)}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
