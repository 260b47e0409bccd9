"""The command line: the `wsss evaluate` JSON contract and one clear message per bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import wsss_in_process, wsss_process
from PIL import Image

from wsss.io import atomic_write_text, save_cam, save_label


def wsss(*args: str) -> subprocess.CompletedProcess:
    """A new `python -m wsss` process: for the tests of the entry point (exit status, streams)."""
    return wsss_process(*args, timeout=300)


# the multi-command workflows and the stages' errors: the same entry point in this process
cli = wsss_in_process


@pytest.fixture()
def data(voc_like, tmp_path) -> Path:
    """A private copy of the shared dataset, so tests may break it."""
    return Path(shutil.copytree(voc_like, tmp_path / "data"))


def ids_of(root: Path, split: str = "train") -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def oracle_cams(root: Path, out: Path) -> Path:
    """CAMs that are exactly the GT masks of the present classes."""
    from wsss.data import build_dataset

    ds = build_dataset("synthetic", root, "train")
    for i in ds.ids:
        gt = ds.gt(i)
        keys = ds.labels(i)
        save_cam(out / f"{i}.npz", keys, np.stack([(gt == k).astype(np.float32) for k in keys]))
    return out


def test_evaluate_json_contract(data, tmp_path):
    out = tmp_path / "eval.json"
    proc = wsss("evaluate", "--pred", str(data / "SegmentationClass"), "--gt", str(data / "SegmentationClass"),
                "--instances", str(data / "SegmentationObject"), "--num-classes", "4", "--json", str(out), "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    for key in (
        "miou",
        "ia_miou",
        "ia_miou_small",
        "ia_miou_medium",
        "ia_miou_large",
        "pixel_acc",
        "per_class",
    ):
        assert key in res
    assert res["miou"] == pytest.approx(1.0) and res["ia_miou"] == pytest.approx(1.0)
    assert {"id", "name", "iou", "precision", "recall", "fpr", "fnr", "ia_iou"} <= set(res["per_class"][0])
    assert "mIoU" in proc.stdout and "100.0" in proc.stdout  # the table is in percent
    assert res["ia_variant"] == "official"
    proc = cli("evaluate", "--pred", str(data / "SegmentationClass"), "--gt", str(data / "SegmentationClass"),
               "--num-classes", "4", "--ia-variant", "exact", "--json", str(out), "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["ia_variant"] == "exact"
    run = json.loads((tmp_path / "eval.run.json").read_text())
    assert "exact" in json.dumps(run)
    proc = cli("evaluate", "--pred", str(data / "SegmentationClass"), "--gt", str(data / "SegmentationClass"),
               "--num-classes", "4", "--ia-variant", "paper", "-q")  # fmt: skip
    assert proc.returncode != 0 and "variant" in proc.stderr


def test_pseudo_then_evaluate_with_oracle_cams_is_perfect_inside_objects(data, tmp_path):
    cams = oracle_cams(data, tmp_path / "cams")
    pseudo = tmp_path / "pseudo"
    proc = cli("pseudo", "--data", str(data), "--cams", str(cams), "--out", str(pseudo), "--tau", "0.5", "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.stem for p in pseudo.glob("*.png")) == sorted(ids_of(data))
    out = tmp_path / "e.json"
    proc = cli("evaluate", "--pred", str(pseudo), "--gt", str(data / "SegmentationClass"), "--num-classes", "4",
                "--json", str(out), "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["miou"] == pytest.approx(1.0)


def assert_clear_error(proc: subprocess.CompletedProcess, path: Path, words: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(path) in line and words in line, line
    assert "Traceback" not in proc.stderr


def pseudo_args(data: Path, cams: Path, out: Path) -> list[str]:
    return ["pseudo", "--data", str(data), "--cams", str(cams), "--out", str(out), "--tau", "0.3", "-q"]


def test_missing_cam_names_the_file(data, tmp_path):
    cams = oracle_cams(data, tmp_path / "cams")
    victim = cams / f"{ids_of(data)[3]}.npz"
    victim.unlink()
    assert_clear_error(cli(*pseudo_args(data, cams, tmp_path / "p")), victim, "not found")


def test_cam_size_mismatch_names_the_file(data, tmp_path):
    cams = oracle_cams(data, tmp_path / "cams")
    i = ids_of(data)[2]
    keys = np.load(cams / f"{i}.npz")["keys"]
    save_cam(cams / f"{i}.npz", keys, np.ones((len(keys), 10, 12), np.float32))
    assert_clear_error(cli(*pseudo_args(data, cams, tmp_path / "p")), cams / f"{i}.npz", "does not match")


def test_nan_in_cam_names_the_file(data, tmp_path):
    cams = oracle_cams(data, tmp_path / "cams")
    i = ids_of(data)[1]
    with np.load(cams / f"{i}.npz") as z:
        keys, cam = z["keys"], z["cam"].astype(np.float32)
    cam[0, 0, 0] = np.nan
    save_cam(cams / f"{i}.npz", keys, cam)
    assert_clear_error(cli(*pseudo_args(data, cams, tmp_path / "p")), cams / f"{i}.npz", "NaN")


def test_label_value_out_of_range_names_the_file(data, tmp_path):
    gt = data / "SegmentationClass" / f"{ids_of(data)[0]}.png"
    bad = np.zeros((64, 64), np.uint8)
    bad[5, 5] = 7
    save_label(gt, bad)
    proc = wsss("evaluate", "--pred", str(data / "SegmentationClass"), "--gt", str(data / "SegmentationClass"),
                "--num-classes", "4", "-q")  # fmt: skip
    assert_clear_error(proc, gt, "num_classes")


def test_corrupt_png_names_the_file(data, tmp_path):
    pred = Path(shutil.copytree(data / "SegmentationClass", tmp_path / "pred"))
    victim = pred / f"{ids_of(data)[0]}.png"
    victim.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    proc = wsss(
        "evaluate", "--pred", str(pred), "--gt", str(data / "SegmentationClass"), "--num-classes", "4", "-q"
    )
    assert_clear_error(proc, victim, "cannot read")


def test_empty_label_set_names_the_labels_file(data, tmp_path):
    csv = data / "image_labels.csv"
    lines = csv.read_text().splitlines()
    first = ids_of(data)[0]
    lines = [f"{first}," if ln.startswith(first + ",") else ln for ln in lines]
    atomic_write_text(csv, "\n".join(lines) + "\n")
    proc = cli("cam", "train", "--data", str(data), "--out", str(tmp_path / "cam"), "-q")
    assert_clear_error(proc, csv, "empty label set")


def test_saliency_import_then_eval(data, tmp_path):
    """`saliency make folder` imports a detector's maps with provenance; `saliency eval` scores them."""
    detector_out = tmp_path / "poolnet_duts"
    shutil.copytree(data / "saliency" / "oracle", detector_out)
    proc = cli("saliency", "make", "folder", "--data", str(data), "--from", str(detector_out),
                "--detector", "PoolNet", "--trained-on", "DUTS-TR", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = data / "saliency" / "PoolNet"  # named after the detector
    assert len(list(out.glob("*.png"))) == len(ids_of(data))
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["detector"] == "PoolNet" and prov["trained_on"] == "DUTS-TR"
    result = tmp_path / "sal.json"
    proc = cli("saliency", "eval", "PoolNet", "--data", str(data), "--json", str(result), "-q")
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(result.read_text())
    assert scores["mae"] == 0.0 and scores["max_f"] == pytest.approx(1.0) and scores["iou"] == 1.0
    (detector_out / f"{ids_of(data)[0]}.png").unlink()
    proc = cli("saliency", "make", "folder", "--data", str(data), "--from", str(detector_out),
                "--out", str(tmp_path / "again"), "-q")  # fmt: skip
    assert_clear_error(proc, detector_out / f"{ids_of(data)[0]}.png", "")


def test_saliency_cue_is_binary(data, tmp_path):
    out = tmp_path / "sr"
    proc = cli("saliency", "make", "spectral-residual", "--data", str(data), "--out", str(out),
                "--cue", "0.25", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    values = np.unique(np.concatenate([np.unique(np.asarray(Image.open(p))) for p in out.glob("*.png")]))
    assert set(values.tolist()) <= {0, 255}
    assert json.loads((out / "provenance.json").read_text())["cue"]["threshold"] == 0.25


def test_refine_crf_from_cams(data, tmp_path):
    cams = oracle_cams(data, tmp_path / "cams")
    out = tmp_path / "crf"
    proc = cli("refine", "crf", "--data", str(data), "--cams", str(cams), "--tau", "0.5", "--out", str(out),
                "--set", "iterations=5", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first = ids_of(data)[0]
    gt = np.asarray(Image.open(data / "SegmentationClass" / f"{first}.png"))
    assert (np.asarray(Image.open(out / f"{first}.png")) == gt).mean() > 0.98
    assert json.loads((out / "settings.json").read_text())["settings"]["crf"]["iterations"] == 5
    proc = cli("refine", "crf", "--data", str(data), "--out", str(tmp_path / "x"), "--set", "gt_prob=2", "-q")
    assert proc.returncode == 2 and "gt_prob" in proc.stderr


def test_masks_then_sepl(data, tmp_path):
    """Ideal masks (the GT instances) turn eroded pseudo labels back into the GT where seeded."""
    from scipy import ndimage

    pseudo = tmp_path / "pseudo"
    for i in ids_of(data):
        gt = np.asarray(Image.open(data / "SegmentationClass" / f"{i}.png"))
        eroded = np.where(ndimage.grey_erosion(gt, size=7) == gt, gt, 0).astype(np.uint8)
        save_label(pseudo / f"{i}.png", eroded)
    proc = cli("masks", "gt-instances", "--data", str(data), "--out", str(tmp_path / "masks"), "-q")
    assert proc.returncode == 0, proc.stderr
    proc = cli("sepl", "--data", str(data), "--pseudo", str(pseudo), "--masks", str(tmp_path / "masks"),
                "--out", str(tmp_path / "sepl"), "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    recall = {w: float(line.split("recall")[1]) for line in proc.stdout.splitlines()
              for w in ("before", "after") if line.strip().startswith(w)}  # fmt: skip
    assert recall["after"] > recall["before"]


def test_affinity_labels_train_walk(data, tmp_path):
    cams = oracle_cams(data, tmp_path / "cams")
    labels, model, walked = tmp_path / "aff_labels", tmp_path / "aff", tmp_path / "rw"
    proc = cli("affinity", "labels", "--data", str(data), "--cams", str(cams), "--out", str(labels),
                "--mode", "saliency", "--saliency", "oracle", "--no-crf", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = cli("affinity", "train", "--data", str(data), "--labels", str(labels), "--out", str(model),
                "--set", "backbone=resnet18", "--set", "epochs=1", "--set", "batch_size=4",
                "--set", "crop_size=80", "--set", "num_workers=0", "--set", "optimizer=adamw", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((model / "run.json").read_text())["stage"] == "affinity_train"
    proc = cli("affinity", "walk", "--data", str(data), "--cams", str(cams), "--model", str(model),
                "--out", str(walked), "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = cli(*pseudo_args(data, walked, tmp_path / "pseudo"))
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "pseudo").glob("*.png"))) == len(ids_of(data))


def test_seg_train_predict_evaluate(data, tmp_path):
    """The fully supervised reference path: train on the GT, predict val, evaluate."""
    model, preds = tmp_path / "seg", tmp_path / "preds"
    proc = cli("seg", "train", "--data", str(data), "--out", str(model), "--method", "size-weighted",
                "--set", "backbone=resnet18", "--set", "crop_size=48", "--set", "batch_size=4",
                "--set", "accumulate=1", "--set", "epochs=1", "--set", "optimizer=adamw",
                "--set", "num_workers=0", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = cli("seg", "predict", "--data", str(data), "--model", str(model), "--out", str(preds),
                "--scales", "1.0", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(list(preds.glob("*.png"))) == len(ids_of(data, "val"))
    proc = cli("evaluate", "--pred", str(preds), "--gt", str(data / "SegmentationClass"), "--num-classes", "4",
                "--ids", str(data / "ImageSets" / "Segmentation" / "val.txt"), "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
