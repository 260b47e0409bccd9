"""Bad input → exit status 2, one ``error: …`` line naming the file, key or flag, no traceback,
and the outputs of an earlier run left byte-identical. One row per kind of bad input.

Every kind below is also a row of ``docs/bad_inputs.md``; regenerate that table (the messages
are the ones this file's commands really print) with::

    python tests/test_bad_inputs.py docs/bad_inputs.md
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cli import main
from wsss.data.base import read_label_csv
from wsss.io import save_cam, save_label, save_saliency

# --------------------------------------------------------------------------- the setting of each case
TRAIN = [f"img{i:03d}" for i in range(8)]  # conftest.make_voc_like: img000..img007 train, 008..011 val
SIZE = 64


@dataclass
class Ctx:
    """The folders one case runs in: a private dataset and CAM folder it may break, a fresh
    output path, and the earlier outputs that must survive untouched."""

    root: Path
    data: Path
    cams: Path
    earlier: Path
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out = self.root / "out"

    def path(self, name: str) -> Path:
        return self.root / name

    def pseudo(self, *extra: str, tau: str = "0.5") -> list[str]:
        return ["pseudo", "--data", str(self.data), "--cams", str(self.cams), "--out", str(self.out),
                "--tau", tau, "-q", *extra]  # fmt: skip

    def evaluate(self, *extra: str, pred: Path | None = None) -> list[str]:
        return ["evaluate", "--pred", str(pred or self.earlier / "pseudo"), "--gt",
                str(self.data / "SegmentationClass"), "--num-classes", "4", "-q", *extra]  # fmt: skip

    def sweep(self, *extra: str) -> list[str]:
        return ["sweep", "--data", str(self.data), "--cams", str(self.cams), "--out", str(self.out), "-q",
                *extra]  # fmt: skip

    def saliency_dir(self, name: str = "sal") -> Path:
        """A good saliency folder (the oracle maps) that a case may then break."""
        d = self.root / name
        if not d.exists():
            shutil.copytree(self.data / "saliency" / "oracle", d)
        return d

    def cam_train(self, *extra: str) -> list[str]:
        return ["cam", "train", "--data", str(self.data), "--out", str(self.out), "-q", *TINY_TRAIN, *extra]


TINY_TRAIN = [f"--set={kv}" for kv in ("backbone=resnet18", "epochs=1", "batch_size=4", "crop_size=32",
                                        "optimizer=adamw", "num_workers=0")]  # fmt: skip


@dataclass
class Case:
    argv: list[str]
    names: tuple[str, ...]  # what the one line must name (a file, key or flag), as given
    subprocess: bool = False  # run as `python -m wsss` (worker processes)
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


KINDS: dict[str, tuple[str, Callable[[Ctx], Case]]] = {}


def kind(kind_id: str, what: str):
    def deco(fn: Callable[[Ctx], Case]) -> Callable[[Ctx], Case]:
        assert kind_id not in KINDS, kind_id
        KINDS[kind_id] = (what, fn)
        return fn

    return deco


def rgb_png(path: Path, size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    rgb = np.zeros((*size, 3), np.uint8)
    rgb[..., 0] = 200  # a red "saliency" map: grey conversion would silently make it 0.23
    Image.fromarray(rgb, "RGB").save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def bad_cam(ctx: Ctx, image_id: str, keys: list[int], cam: np.ndarray) -> Path:
    path = ctx.cams / f"{image_id}.npz"
    np.savez(path, keys=np.asarray(keys), cam=cam)  # not save_cam: it would refuse or round some of these
    return path


def labels_of(ctx: Ctx, image_id: str) -> list[int]:
    names = (ctx.data / "class_names.txt").read_text().split()
    return read_label_csv(ctx.data / "image_labels.csv", names)[image_id].tolist()


# --------------------------------------------------------------------------- CLI values
@kind("tau-negative", "τ below 0")
def _(c: Ctx) -> Case:
    return Case(c.pseudo(tau="-0.1"), ("--tau",))


@kind("tau-above-one", "τ above 1")
def _(c: Ctx) -> Case:
    return Case(c.pseudo(tau="1.5"), ("--tau",))


@kind("tau-not-a-number", "τ that is not a number")
def _(c: Ctx) -> Case:
    return Case(c.pseudo(tau="abc"), ("--tau",))


@kind("threshold-out-of-range", "a saliency threshold outside [0, 1]")
def _(c: Ctx) -> Case:
    return Case(c.pseudo("--sal-threshold", "2"), ("--sal-threshold",))


@kind("affinity-threshold-out-of-range", "an affinity-label threshold outside [0, 1]")
def _(c: Ctx) -> Case:
    argv = ["affinity", "labels", "--data", str(c.data), "--cams", str(c.cams), "--out", str(c.out),
            "--fg-threshold", "1.5", "-q"]  # fmt: skip
    return Case(argv, ("--fg-threshold",))


@kind("sepl-threshold-out-of-range", "a SEPL mask threshold outside [0, 1]")
def _(c: Ctx) -> Case:
    argv = ["sepl", "--data", str(c.data), "--pseudo", str(c.earlier / "pseudo"), "--masks", str(c.cams),
            "--out", str(c.out), "--region-threshold", "-0.5", "-q"]  # fmt: skip
    return Case(argv, ("--region-threshold",))


@kind("crf-tau-out-of-range", "the CAM CRF's τ outside (0, 1)")
def _(c: Ctx) -> Case:
    argv = ["refine", "crf", "--data", str(c.data), "--cams", str(c.cams), "--tau", "1", "--out", str(c.out)]
    return Case(argv, ("--tau",))


@kind("label-smoothing-out-of-range", "label smoothing ε outside [0, 1)")
def _(c: Ctx) -> Case:
    return Case(c.cam_train("--label-smoothing", "1.0"), ("--label-smoothing",))


@kind("beta-not-positive", "random-walk β <= 0")
def _(c: Ctx) -> Case:
    argv = ["affinity", "walk", "--data", str(c.data), "--cams", str(c.cams), "--model", str(c.cams),
            "--out", str(c.out), "--beta", "0", "-q"]  # fmt: skip
    return Case(argv, ("--beta",))


@kind("radius-zero", "random-walk radius < 1")
def _(c: Ctx) -> Case:
    argv = ["affinity", "walk", "--data", str(c.data), "--cams", str(c.cams), "--model", str(c.cams),
            "--out", str(c.out), "--radius", "0", "-q"]  # fmt: skip
    return Case(argv, ("--radius",))


@kind("workers-zero", "--workers 0")
def _(c: Ctx) -> Case:
    return Case(c.sweep("--workers", "0"), ("--workers",))


@kind("batch-size-zero", "--batch-size 0")
def _(c: Ctx) -> Case:
    argv = ["seg", "predict", "--data", str(c.data), "--model", str(c.cams), "--out", str(c.out),
            "--batch-size", "0", "-q"]  # fmt: skip
    return Case(argv, ("--batch-size",))


@kind("jobs-zero", "bed --jobs 0")
def _(c: Ctx) -> Case:
    return Case(["bed", "bed_demo", "--jobs", "0", "--dry-run"], ("--jobs",))


@kind("gallery-negative", "report --gallery -1")
def _(c: Ctx) -> Case:
    return Case(["report", str(c.earlier), "--gallery", "-1"], ("--gallery",))


@kind("num-classes-too-small", "evaluate --num-classes 1")
def _(c: Ctx) -> Case:
    argv = c.evaluate()
    argv[argv.index("--num-classes") + 1] = "1"
    return Case(argv, ("--num-classes",))


@kind("max-images-zero", "balance --max-images 0")
def _(c: Ctx) -> Case:
    argv = ["balance", "--data", str(c.data), "--out", str(c.out), "--max-images", "0", "-q"]
    return Case(argv, ("--max-images",))


@kind("scales-not-numbers", "a comma-separated list with a word in it")
def _(c: Ctx) -> Case:
    argv = ["cam", "infer", "--data", str(c.data), "--model", str(c.cams), "--out", str(c.out),
            "--scales", "0.5,abc", "-q"]  # fmt: skip
    return Case(argv, ("--scales",))


@kind("scales-not-positive", "a test-time scale <= 0")
def _(c: Ctx) -> Case:
    argv = ["seg", "predict", "--data", str(c.data), "--model", str(c.cams), "--out", str(c.out),
            "--scales", "0,1", "-q"]  # fmt: skip
    return Case(argv, ("--scales",))


@kind("taus-reversed", "a τ grid start:stop:step with stop < start")
def _(c: Ctx) -> Case:
    return Case(c.sweep("--taus", "0.5:0.1:0.1"), ("--taus",))


@kind("taus-outside-unit", "a τ list with a value above 1")
def _(c: Ctx) -> Case:
    return Case(c.sweep("--taus", "0.2,1.5"), ("--taus",))


@kind("bounds-one-number", "IA-mIoU --bounds with one number")
def _(c: Ctx) -> Case:
    return Case(c.evaluate("--bounds", "1024"), ("--bounds",))


@kind("bounds-descending", "IA-mIoU --bounds small > medium")
def _(c: Ctx) -> Case:
    return Case(c.evaluate("--bounds", "9216,1024"), ("--bounds",))


@kind("shard-malformed", "--shard that is not i/N")
def _(c: Ctx) -> Case:
    return Case(c.pseudo("--shard", "abc"), ("--shard",))


@kind("shard-out-of-range", "--shard i/N with i >= N")
def _(c: Ctx) -> Case:
    return Case(c.pseudo("--shard", "3/2"), ("--shard",))


@kind("device-unknown", "a --device torch does not know")
def _(c: Ctx) -> Case:
    argv = ["cam", "infer", "--data", str(c.data), "--model", str(c.cams), "--out", str(c.out),
            "--device", "tpu9", "-q"]  # fmt: skip
    return Case(argv, ("--device",))


@kind("balance-name-with-folder", "balance --name that is a path")
def _(c: Ctx) -> Case:
    argv = ["balance", "--data", str(c.data), "--out", str(c.out), "--name", "../x", "-q"]
    return Case(argv, ("--name",))


@kind("crf-no-input", "refine crf without --labels or --cams")
def _(c: Ctx) -> Case:
    return Case(["refine", "crf", "--data", str(c.data), "--out", str(c.out), "-q"], ("--labels",))


@kind("missing-option", "a required option left out")
def _(c: Ctx) -> Case:
    argv = c.pseudo()
    i = argv.index("--tau")
    return Case(argv[:i] + argv[i + 2 :], ("--tau",))


@kind("unknown-option", "an option the command does not have")
def _(c: Ctx) -> Case:
    return Case(c.pseudo("--taus", "0.5"), ("--taus",))


@kind("unknown-command", "a command that does not exist")
def _(c: Ctx) -> Case:
    return Case(["pseudolabels", "--data", str(c.data)], ("pseudolabels",))


@kind("method-unknown", "a CAM training --method that does not exist")
def _(c: Ctx) -> Case:
    return Case(c.cam_train("--method", "gradcam"), ("'gradcam'",))


@kind("mode-unknown", "affinity labels --mode that does not exist")
def _(c: Ctx) -> Case:
    argv = ["affinity", "labels", "--data", str(c.data), "--cams", str(c.cams), "--out", str(c.out),
            "--mode", "sal", "-q"]  # fmt: skip
    return Case(argv, ("--mode", "sal"))


@kind("source-unknown", "a saliency source that does not exist")
def _(c: Ctx) -> Case:
    return Case(["saliency", "make", "dss", "--data", str(c.data), "--out", str(c.out), "-q"], ("'dss'",))


# --------------------------------------------------------------------------- paths given on the line
@kind("data-root-missing", "--data folder that does not exist")
def _(c: Ctx) -> Case:
    argv = c.pseudo()
    argv[argv.index("--data") + 1] = str(c.path("nowhere"))
    return Case(argv, ("--data", str(c.path("nowhere"))))


@kind("data-root-is-file", "--data that is a file")
def _(c: Ctx) -> Case:
    argv = c.pseudo()
    argv[argv.index("--data") + 1] = str(c.data / "class_names.txt")
    return Case(argv, ("--data",))


@kind("input-folder-missing", "--cams folder that does not exist")
def _(c: Ctx) -> Case:
    argv = c.pseudo()
    argv[argv.index("--cams") + 1] = str(c.path("nocams"))
    return Case(argv, ("--cams", str(c.path("nocams"))))


@kind("out-is-file", "--out folder that exists as a file")
def _(c: Ctx) -> Case:
    write(c.out, "not a folder\n")
    return Case(c.pseudo(), ("--out", str(c.out)))


@kind("out-under-file", "--out below a file")
def _(c: Ctx) -> Case:
    write(c.path("notes.txt"), "not a folder\n")
    argv = c.pseudo()
    argv[argv.index("--out") + 1] = str(c.path("notes.txt") / "pseudo")
    return Case(argv, ("--out", str(c.path("notes.txt"))))


@kind("json-is-folder", "--json file path that is a folder")
def _(c: Ctx) -> Case:
    c.out.mkdir()
    return Case(c.evaluate("--json", str(c.out)), ("--json", str(c.out)))


@kind("config-file-missing", "--config file that does not exist")
def _(c: Ctx) -> Case:
    return Case(c.cam_train("--config", str(c.path("nowhere.yaml"))), ("--config",))


@kind("class-names-file-missing", "--class-names file that does not exist")
def _(c: Ctx) -> Case:
    return Case(c.evaluate("--class-names", str(c.path("names.txt"))), ("--class-names",))


@kind("dataset-kind-unknown", "--dataset kind that does not exist")
def _(c: Ctx) -> Case:
    return Case(c.pseudo("--dataset", "pascal"), ("--dataset", "pascal"))


@kind("split-missing", "--split without a split list")
def _(c: Ctx) -> Case:
    return Case(c.pseudo("--split", "trian"), ("trian.txt",))


@kind("saliency-folder-missing", "--saliency neither a folder nor a source")
def _(c: Ctx) -> Case:
    return Case(c.pseudo("--saliency", "nosuch"), ("--saliency", "nosuch"))


# --------------------------------------------------------------------------- config keys
@kind("set-not-key-value", "--set without '='")
def _(c: Ctx) -> Case:
    return Case(c.cam_train("--set", "epochs"), ("--set", "'epochs'"))


@kind("set-wrong-type", "--set epochs=abc (an integer field)")
def _(c: Ctx) -> Case:
    return Case(c.cam_train("--set", "epochs=abc"), ("--set", "epochs"))


@kind("set-wrong-type-list", "--set batch_size=[1,2] in segmentation training")
def _(c: Ctx) -> Case:
    argv = ["seg", "train", "--data", str(c.data), "--out", str(c.out), "--set", "batch_size=[1,2]", "-q"]
    return Case(argv, ("--set", "batch_size"))


@kind("set-wrong-type-crf", "--set iterations=1.5 for the dense CRF")
def _(c: Ctx) -> Case:
    argv = ["refine", "crf", "--data", str(c.data), "--labels", str(c.earlier / "pseudo"), "--out",
            str(c.out), "--set", "iterations=1.5", "-q"]  # fmt: skip
    return Case(argv, ("--set", "iterations"))


@kind("set-unknown-key", "--set of a key that does not exist")
def _(c: Ctx) -> Case:
    return Case(c.cam_train("--set", "epoch=3"), ("--set", "'epoch'"))


@kind("set-value-out-of-range", "--set of a value outside its range")
def _(c: Ctx) -> Case:
    return Case(c.cam_train("--set", "batch_size=0"), ("batch_size",))


@kind("config-invalid-yaml", "a YAML file that does not parse")
def _(c: Ctx) -> Case:
    cfg = write(c.path("cam.yaml"), "epochs: [1,\n")
    return Case(c.cam_train("--config", str(cfg)), (str(cfg),))


@kind("config-not-mapping", "a YAML config that is a list")
def _(c: Ctx) -> Case:
    cfg = write(c.path("cam.yaml"), "- epochs\n- 3\n")
    return Case(c.cam_train("--config", str(cfg)), (str(cfg),))


@kind("config-wrong-type", "a YAML config key of the wrong type")
def _(c: Ctx) -> Case:
    cfg = write(c.path("seg.yaml"), "epochs: three\n")
    argv = ["seg", "train", "--data", str(c.data), "--out", str(c.out), "--config", str(cfg), "-q"]
    return Case(argv, (str(cfg), "epochs"))


@kind("run-section-null", "a run config section given null (seg: null)")
def _(c: Ctx) -> Case:
    cfg = write(c.path("run.yaml"), "seg: null\n")
    return Case(["run", str(cfg), "--out", str(c.out), "-q"], (str(cfg), "seg"))


@kind("run-section-scalar", "a run config section given a number")
def _(c: Ctx) -> Case:
    cfg = write(c.path("run.yaml"), "cam:\n  train: 3\n")
    return Case(["run", str(cfg), "--out", str(c.out), "-q"], (str(cfg), "cam.train"))


@kind("run-unknown-key", "a run config key that does not exist")
def _(c: Ctx) -> Case:
    cfg = write(c.path("run.yaml"), "pseudo:\n  sal_treshold: 0.3\n")
    return Case(["run", str(cfg), "--out", str(c.out), "-q"], (str(cfg), "sal_treshold"))


@kind("run-wrong-type", "a run config value of the wrong type (--set seed=abc)")
def _(c: Ctx) -> Case:
    return Case(["run", "tiny", "--set", "seed=abc", "--out", str(c.out), "-q"], ("--set", "seed"))


@kind("run-value-out-of-range", "a run config value outside its range")
def _(c: Ctx) -> Case:
    cfg = write(c.path("run.yaml"), "pseudo:\n  sal_threshold: 1.5\n")
    return Case(["run", str(cfg), "--out", str(c.out), "-q"], (str(cfg), "sal_threshold"))


@kind("run-unknown-builtin", "a built-in run config that does not exist")
def _(c: Ctx) -> Case:
    return Case(["run", "tiniest", "--out", str(c.out), "-q"], ("'tiniest'",))


# --------------------------------------------------------------------------- dataset files
@kind("split-empty", "an empty split list")
def _(c: Ctx) -> Case:
    split = write(c.data / "ImageSets" / "Segmentation" / "train.txt", "\n")
    return Case(c.pseudo(), (str(split),))


@kind("split-duplicate-id", "a split list with an id twice")
def _(c: Ctx) -> Case:
    split = write(c.data / "ImageSets" / "Segmentation" / "train.txt", "\n".join([*TRAIN, TRAIN[2]]) + "\n")
    return Case(c.pseudo(), (str(split), TRAIN[2]))


@kind("split-id-without-image", "a split list naming an image that does not exist")
def _(c: Ctx) -> Case:
    split = write(c.data / "ImageSets" / "Segmentation" / "train.txt", "\n".join([*TRAIN, "img999"]) + "\n")
    return Case(c.pseudo(), (str(split), "img999"))


@kind("class-names-empty", "a class-name file with background only")
def _(c: Ctx) -> Case:
    names = write(c.data / "class_names.txt", "background\n")
    return Case(c.pseudo(), (str(names),))


@kind("class-names-duplicate", "a class-name file with a name twice")
def _(c: Ctx) -> Case:
    names = write(c.data / "class_names.txt", "background\nclass1\nclass2\nclass2\n")
    return Case(c.pseudo(), (str(names), "class2"))


@kind("class-names-count-mismatch", "--class-names with another count than --num-classes")
def _(c: Ctx) -> Case:
    names = write(c.path("names.txt"), "background\ncat\ndog\n")
    return Case(c.evaluate("--class-names", str(names)), (str(names), "--num-classes"))


@kind("image-labels-unknown-class", "image_labels.csv naming a class that does not exist")
def _(c: Ctx) -> Case:
    csv = c.data / "image_labels.csv"
    write(csv, csv.read_text().replace(f"{TRAIN[1]},", f"{TRAIN[1]},dragon;", 1))
    return Case(c.pseudo(), (str(csv), "dragon"))


@kind("image-corrupt", "an image file that is not an image")
def _(c: Ctx) -> Case:
    img = write(c.data / "JPEGImages" / f"{TRAIN[0]}.png", "not a PNG\n")
    return Case(c.pseudo(), (str(img),))


# --------------------------------------------------------------------------- label PNGs
@kind("label-png-colour", "a label PNG in RGB")
def _(c: Ctx) -> Case:
    gt = rgb_png(c.data / "SegmentationClass" / f"{TRAIN[0]}.png")
    return Case(c.evaluate(), (str(gt),))


@kind("label-png-size", "a prediction of another size than its ground truth")
def _(c: Ctx) -> Case:
    pred = c.path("pred")
    shutil.copytree(c.earlier / "pseudo", pred)
    save_label(pred / f"{TRAIN[3]}.png", np.zeros((SIZE, SIZE // 2), np.uint8))
    return Case(c.evaluate(pred=pred), (str(pred / f"{TRAIN[3]}.png"),))


@kind("label-png-values", "a label PNG with a class id >= --num-classes")
def _(c: Ctx) -> Case:
    gt = c.data / "SegmentationClass" / f"{TRAIN[1]}.png"
    save_label(gt, np.full((SIZE, SIZE), 7, np.uint8))
    return Case(c.evaluate(), (str(gt),))


@kind("prediction-missing", "evaluate --ids with an image that has no prediction")
def _(c: Ctx) -> Case:
    pred = c.path("pred")
    shutil.copytree(c.earlier / "pseudo", pred)
    (pred / f"{TRAIN[5]}.png").unlink()
    ids = c.data / "ImageSets" / "Segmentation" / "train.txt"
    return Case(c.evaluate("--ids", str(ids), pred=pred), (str(pred / f"{TRAIN[5]}.png"),))


# --------------------------------------------------------------------------- saliency PNGs
@kind("saliency-rgb", "a 3-channel (RGB) saliency PNG")
def _(c: Ctx) -> Case:
    sal = c.saliency_dir()
    bad = rgb_png(sal / f"{TRAIN[2]}.png")
    return Case(c.pseudo("--saliency", str(sal)), (str(bad), "RGB"))


@kind("saliency-palette", "a palette (P) saliency PNG")
def _(c: Ctx) -> Case:
    sal = c.saliency_dir()
    bad = sal / f"{TRAIN[0]}.png"
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8), "P").save(bad)
    return Case(c.sweep("--saliency", f"mine={sal}", "--taus", "0.5"), (str(bad), "palette"))


@kind("saliency-rgb-eval", "an RGB saliency PNG given to saliency eval")
def _(c: Ctx) -> Case:
    sal = c.saliency_dir()
    bad = rgb_png(sal / f"{TRAIN[4]}.png")
    return Case(["saliency", "eval", str(sal), "--data", str(c.data), "-q"], (str(bad),))


@kind("saliency-rgb-training", "an RGB saliency PNG given to CAM training (EPS)")
def _(c: Ctx) -> Case:
    sal = c.saliency_dir()
    bad = rgb_png(sal / f"{TRAIN[6]}.png")
    return Case(c.cam_train("--method", "eps", "--saliency", str(sal)), (str(bad),))


@kind("saliency-size", "a saliency PNG of another size than its image")
def _(c: Ctx) -> Case:
    sal = c.saliency_dir()
    save_saliency(sal / f"{TRAIN[1]}.png", np.zeros((SIZE // 2, SIZE), np.float32))
    return Case(c.pseudo("--saliency", str(sal)), (str(sal / f"{TRAIN[1]}.png"),))


@kind("saliency-map-missing", "a saliency folder without the map of an image")
def _(c: Ctx) -> Case:
    sal = c.saliency_dir()
    (sal / f"{TRAIN[3]}.png").unlink()
    return Case(c.pseudo("--saliency", str(sal)), (str(sal / f"{TRAIN[3]}.png"),))


# --------------------------------------------------------------------------- CAM files
@kind("cam-keys-not-labels", "a CAM with a class the image is not labelled with")
def _(c: Ctx) -> Case:
    labels = labels_of(c, TRAIN[0])
    extra = next(k for k in (1, 2, 3) if k not in labels)
    keys = sorted([*labels, extra])
    path = bad_cam(c, TRAIN[0], keys, np.zeros((len(keys), SIZE, SIZE), np.float16))
    return Case(c.pseudo(), (str(path),))


@kind("cam-keys-outside-classes", "a CAM key beyond the dataset's classes")
def _(c: Ctx) -> Case:
    path = bad_cam(c, TRAIN[1], [9], np.zeros((1, SIZE, SIZE), np.float16))
    return Case(c.pseudo(), (str(path),))


@kind("cam-size", "a CAM of another size than its image")
def _(c: Ctx) -> Case:
    keys = labels_of(c, TRAIN[2])
    path = bad_cam(c, TRAIN[2], keys, np.zeros((len(keys), SIZE, SIZE // 2), np.float16))
    return Case(c.pseudo(), (str(path),))


@kind("cam-values-above-one", "CAM values above 1")
def _(c: Ctx) -> Case:
    keys = labels_of(c, TRAIN[3])
    path = bad_cam(c, TRAIN[3], keys, np.full((len(keys), SIZE, SIZE), 3.0, np.float16))
    return Case(c.pseudo(), (str(path), "[0, 1]"))


@kind("cam-values-negative", "negative CAM values")
def _(c: Ctx) -> Case:
    keys = labels_of(c, TRAIN[4])
    path = bad_cam(c, TRAIN[4], keys, np.full((len(keys), SIZE, SIZE), -0.5, np.float32))
    return Case(c.sweep("--taus", "0.5"), (str(path), "[0, 1]"))


@kind("cam-nan", "NaN in a CAM")
def _(c: Ctx) -> Case:
    keys = labels_of(c, TRAIN[5])
    path = bad_cam(c, TRAIN[5], keys, np.full((len(keys), SIZE, SIZE), np.nan, np.float16))
    return Case(c.pseudo(), (str(path),))


@kind("cam-corrupt", "a CAM file that is not an .npz archive")
def _(c: Ctx) -> Case:
    path = write(c.cams / f"{TRAIN[6]}.npz", "not a zip\n")
    return Case(c.pseudo(), (str(path),))


@kind("cam-arrays-missing", "a CAM .npz without the 'keys' array")
def _(c: Ctx) -> Case:
    path = c.cams / f"{TRAIN[7]}.npz"
    np.savez(path, cam=np.zeros((1, SIZE, SIZE), np.float16))
    return Case(c.pseudo(), (str(path), "keys"))


@kind("cam-missing", "a CAM folder without the CAM of an image")
def _(c: Ctx) -> Case:
    (c.cams / f"{TRAIN[0]}.npz").unlink()
    return Case(c.pseudo(), (str(c.cams / f"{TRAIN[0]}.npz"),))


# --------------------------------------------------------------------------- OS errors and workers
@kind("os-permission", "an --out folder the OS refuses to create (/sys, even for root)")
def _(c: Ctx) -> Case:
    return Case(c.pseudo()[:6] + ["/sys/wsss-bad-input", *c.pseudo()[7:]], ("/sys/wsss-bad-input",))


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)


@kind("os-disk-full", "the disk fills while an earlier result is rewritten (simulated ENOSPC)")
def _(c: Ctx) -> Case:
    target = c.earlier / "eval.json"  # the earlier result must stay as it was
    ids = c.data / "ImageSets" / "Segmentation" / "train.txt"  # every GT image scored: no note on stderr
    argv = c.evaluate("--json", str(target), "--ids", str(ids))
    return Case(argv, (str(target), "No space left"), patch=_disk_full)


@kind("worker-process-error", "a bad CAM met inside a multiprocessing worker (sweep --workers 2)")
def _(c: Ctx) -> Case:
    keys = labels_of(c, TRAIN[7])
    path = bad_cam(c, TRAIN[7], keys, np.full((len(keys), SIZE, SIZE), 2.0, np.float16))
    return Case(c.sweep("--workers", "2", "--taus", "0.5"), (str(path),), subprocess=True)


@kind("dataloader-worker-error", "a truncated image met inside a DataLoader worker (CAM training)")
def _(c: Ctx) -> Case:
    img = c.data / "JPEGImages" / f"{TRAIN[3]}.png"
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])  # the header still reads
    argv = c.cam_train("--set", "num_workers=1")
    return Case(argv, (str(img),), subprocess=True)


# --------------------------------------------------------------------------- running a case
def _run(case: Case, monkeypatch: pytest.MonkeyPatch | None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``wsss ARGV``: in this process, or as ``python -m wsss``."""
    if case.subprocess:
        proc = subprocess.run([sys.executable, "-m", "wsss", *case.argv], capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        return proc.returncode, proc.stdout, proc.stderr
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    if case.patch is not None and monkeypatch is not None:
        case.patch(monkeypatch)
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(case.argv)
        except SystemExit as e:
            code = e.code
        finally:
            if monkeypatch is not None:
                monkeypatch.undo()
    return code if isinstance(code, int) else 1, out.getvalue(), err.getvalue()


def make_context(root: Path, dataset: Path, cams: Path, earlier: Path) -> Ctx:
    data = Path(shutil.copytree(dataset, root / "data"))
    return Ctx(root, data, Path(shutil.copytree(cams, root / "cams")), earlier)


def make_cams(dataset: Path, out: Path) -> Path:
    """CAMs equal to the ground-truth masks of the labelled classes (train split)."""
    from wsss.data import build_dataset

    ds = build_dataset("synthetic", dataset, "train")
    for i in ds.ids:
        gt, keys = ds.gt(i), ds.labels(i)
        save_cam(out / f"{i}.npz", keys, np.stack([(gt == k).astype(np.float32) for k in keys]))
    return out


def make_earlier(dataset: Path, cams: Path, earlier: Path) -> Path:
    """The outputs of an earlier, successful run: pseudo labels and their evaluation."""
    for argv in (
        ["pseudo", "--data", str(dataset), "--cams", str(cams), "--out", str(earlier / "pseudo"),
         "--tau", "0.5", "-q"],
        ["evaluate", "--pred", str(earlier / "pseudo"), "--gt", str(dataset / "SegmentationClass"),
         "--num-classes", "4", "--json", str(earlier / "eval.json"), "-q"],
    ):  # fmt: skip
        code, _, err = _run(Case(argv, ()), None)
        assert code == 0, err
    return earlier


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the tests
@pytest.fixture(scope="session")
def bad_input_env(voc_like, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(dataset, CAM folder, earlier outputs), shared read-only by every case."""
    base = tmp_path_factory.mktemp("bad_inputs")
    data = Path(shutil.copytree(voc_like, base / "data"))
    cams = make_cams(data, base / "cams")
    return data, cams, make_earlier(data, cams, base / "earlier")


def _sys_is_writable() -> bool:
    probe = Path("/sys/wsss-bad-input-probe")
    try:
        probe.mkdir()
    except OSError:
        return False
    probe.rmdir()
    return True


@pytest.mark.parametrize("kind_id", list(KINDS))
def test_bad_input(kind_id, bad_input_env, tmp_path, monkeypatch):
    if kind_id == "os-permission" and (not Path("/sys").is_dir() or _sys_is_writable()):
        pytest.skip("/sys is missing or writable here: no folder the OS refuses to create")
    dataset, cams, earlier = bad_input_env
    ctx = make_context(tmp_path, dataset, cams, earlier)
    before = snapshot(earlier)
    case = KINDS[kind_id][1](ctx)

    code, out, err = _run(case, monkeypatch)

    lines = err.splitlines()
    assert code == 2, f"exit {code}; stderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].strip() != "error:", err
    for name in case.names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    assert "Traceback" not in out + err
    assert snapshot(earlier) == before, "an earlier output changed"


def test_every_kind_is_in_the_docs():
    doc = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
    assert doc.is_file(), f"{doc} missing: python tests/test_bad_inputs.py {doc}"
    text = doc.read_text()
    missing = [k for k in KINDS if f"`{k}`" not in text]
    assert not missing, f"kinds without a row in {doc}: {missing} (python tests/test_bad_inputs.py {doc})"
    assert len(KINDS) >= 45


# --------------------------------------------------------------------------- the docs table
def write_doc(path: Path) -> None:
    """Run every case and write the table of kinds, commands and the messages they print."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import make_voc_like

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        data = make_voc_like(base / "shared" / "data")
        cams = make_cams(data, base / "shared" / "cams")
        earlier = make_earlier(data, cams, base / "earlier")
        rows = []
        for kind_id, (what, fn) in KINDS.items():
            root = base / kind_id
            root.mkdir()
            ctx = make_context(root, data, cams, earlier)
            case = fn(ctx)
            with pytest.MonkeyPatch.context() as mp:
                code, _, err = _run(case, mp)
            line = err.strip().splitlines()[0] if err.strip() else f"(exit {code}, no message)"

            def short(text: str, root: Path = root) -> str:
                return text.replace(f"{root}/", "").replace(str(earlier), "earlier").replace(tmp, "")

            argv = " ".join(shlex.quote(short(a)) for a in case.argv)
            command = "wsss " + argv.replace(" ".join(TINY_TRAIN), "…")
            rows.append(f"| `{kind_id}` | {what} | {_code(command)} | {_code(short(line))} |")
    header = DOC_HEAD.format(n=len(KINDS))
    path.write_text(header + "\n".join(rows) + "\n" + DOC_TAIL)


def _code(text: str) -> str:
    """A Markdown table cell showing ``text`` as code (it may hold backticks and pipes)."""
    return "`` " + text.replace("|", "\\|") + " ``"


DOC_HEAD = """# Bad inputs and the messages they get

Every `wsss` command checks what it is given before it works on it, and every failure ends
the same way: **exit status 2 and one line on stderr**, `error: …`, that names the file, the
config key or the command-line flag at fault and says what was expected — never a traceback
(`--debug` anywhere on the line, or `WSSS_DEBUG=1`, shows the traceback instead). Outputs
written before are left as they were: files are written to a temporary name and renamed into
place, so a run stopped by bad input never leaves a half-written or overwritten file.

Where the checks are:

* **command-line values** — typer ranges and types on the options (τ and thresholds in
  [0, 1], scales > 0, workers, batch sizes and jobs >= 1, …), input paths that must exist,
  and `--out`/`--json` paths that must not be a file/folder, all before any work starts;
* **config keys** (`--set`, `--config`, `wsss run` YAML) — each value against its dataclass
  field's type (`wsss.config.check_field_types`: integer, number, true/false, string, null,
  a list of numbers, a mapping) naming the source and key; run-config sections must be
  mappings;
* **files, when read** — images, label PNGs, saliency PNGs, CAM files, split lists,
  class-name files and `image_labels.csv` (`wsss.io`, `wsss.data.base`);
* **the OS and worker processes** — an OS error becomes one line naming the path; an error in
  a DataLoader or multiprocessing worker is reported as the worker's own one-line message.

Formats that are refused rather than converted:

* **Saliency PNGs** must be single-channel grey: 8-bit (mode `L`, the format `wsss` writes;
  255 = salient) or 16-bit grey (read as 0..65535 → 0..1), of the image's size. RGB, RGBA,
  grey + alpha, palette (`P`) and 1-bit PNGs are refused — a colour map read as grey is a
  silent error. `wsss saliency make folder --from DIR` imports other detectors' maps (colour
  PNGs whose channels are equal, `.npy`, other sizes) into the right format.
* **CAM files** must hold only classes among the image's labels (exactly the labels, for the
  stages that threshold them), have the image's size, and values in [0, 1] (a tolerance of
  0.002 allows for float16 rounding).
* **Split lists** must exist, be non-empty, list each id once and only ids that have an
  image; **class-name files** must hold background plus at least one class, each name once,
  as many as `--num-classes` where both are given.

The table is generated: `python tests/test_bad_inputs.py docs/bad_inputs.md` runs every
command below (paths are relative to a scratch folder; `earlier` holds the outputs of an
earlier run, checked byte for byte after each case) and records the line it prints. Each row
is a case of `tests/test_bad_inputs.py`, which asserts the exit status, the single line, the
name in it and the untouched earlier outputs. `…` stands for tiny training settings
(`--set=epochs=1 …`). Messages from typer's own checks (the `Invalid value for …` lines) are
worded by typer and may read differently with another typer version.

| kind | bad input | command | message ({n} kinds) |
|---|---|---|---|
"""

DOC_TAIL = """
## Outputs made from other settings or inputs, and busy folders

The stage contract (formats.md §6.2) refuses, with the same one line and exit status 2, a
rerun whose outputs would mix with foreign ones; `--force` recomputes the folder instead.
These cases are tested in `tests/test_stage.py` and `tests/test_pipeline.py`:

| kind | situation | message |
|---|---|---|
| `other-settings` | `wsss pseudo --tau 0.4` into a folder made with τ 0.6 | `error: out/settings.json: this folder holds pseudo outputs made with other settings or inputs (tau: 0.6 → 0.4); rerun with --force to recompute everything in it, or use a new folder` |
| `changed-inputs` | the CAMs replaced under finished pseudo labels | `error: out/settings.json: this folder holds pseudo outputs made with other settings or inputs (input cams: 8 of 8 files in /abs/cams changed or disappeared since these outputs were made (e.g. img000.npz)); rerun with --force …` |
| `input-moved` | the same stage fed from another folder | `… (input cams: /abs/cams → /abs/other) …` |
| `retrain-other-settings` | `wsss cam train` into a folder with a model finished with other settings | `error: cam/settings.json: this folder holds cam_train outputs made with other settings or inputs (config.epochs: 1 → 2); rerun with --force …` |
| `checkpoint-other-settings` | a checkpoint from other settings (no folder record) | `error: cam/checkpoint.pt: written by a run with a different config (epochs: 1 → 2); …` |
| `run-stage-changed` | `wsss run` with a changed key under finished stages | ``error: run/stages/cam_train.json: stage 'cam_train' was completed with other settings or inputs (train.epochs: 1 → 2); rerun with --force to recompute the whole run, or use a new `out` folder`` |
| `run-inputs-changed` | submitted CAMs (`cam.cams`) changed under a finished run | `… (data.inputs.cams: '/abs/cams@1f…' → '/abs/cams@9c…') …` |
| `other-stage-folder` | a pseudo-label run into a mask folder | `error: out/settings.json: … (the folder holds the outputs of stage 'masks', not 'pseudo') …` |
| `output-is-input` | `--out` equal to an input folder (or holding one, with `--force`) | `error: cams: the output folder is the input cams (/abs/cams); write the outputs to another folder` |
| `folder-busy` | a second run while another live process writes to the folder | `error: out/.wsss.lock: another wsss run is writing to out (pid 4242 on host, since …); wait for it to end, or delete the lock file if that process is gone` |

A lock left by a killed run (its pid gone) is taken over without a message.

Not every failure can be a bad-input message: running out of memory is reported as
`error: out of memory (…)`, and a failure that is a bug rather than bad input is reported as
`error: unexpected <Type>: <message> (rerun with --debug or WSSS_DEBUG=1 for the traceback)`.
"""


if __name__ == "__main__":
    write_doc(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bad_inputs.md"))
