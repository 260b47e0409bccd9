"""End to end: `wsss run tiny` through the real CLI, then a rerun that must skip every stage."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import lock_held_elsewhere

from wsss.io import load_label

pytestmark = pytest.mark.slow


def wsss(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsss", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("e2e")
    proc = wsss("run", "tiny", "--out", str(tmp / "run"), "--quiet", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", proc


def test_every_stage_leaves_its_files(tiny_run):
    run, proc = tiny_run
    assert (run / "data" / "dataset.json").is_file()
    assert (run / "cam" / "model.safetensors").is_file()
    train_ids = (run / "data" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert all((run / "cams" / f"{i}.npz").is_file() for i in train_ids)
    for name in ("sweep.csv", "sweep.json", "sweep.png"):
        assert (run / "sweep" / name).is_file()
    record = json.loads((run / "run.json").read_text())
    assert record["seed"] == 0 and "torch" in record["versions"]
    evals = record["results"]["evaluation"]
    assert set(evals) == {
        f"{s}/{sp}"
        for s in ("none", "oracle", "good", "poor", "spectral-residual", "c2am-h")
        for sp in ("train", "val_balanced")
    }
    for r in evals.values():
        assert 0.0 <= r["miou"] <= 1.0
        assert math.isnan(r["ia_miou"]) or 0.0 <= r["ia_miou"] <= 1.0
    # pseudo labels are valid label maps of the dataset's classes
    num_classes = len((run / "data" / "class_names.txt").read_text().split())
    label = load_label(run / "pseudo" / "oracle" / "train" / f"{train_ids[0]}.png", num_classes)
    assert label.ndim == 2
    quality = record["results"]["saliency_quality"]
    assert quality["oracle"]["train"]["max_f"] == pytest.approx(1.0)
    assert quality["c2am-h"]["val_balanced"]["num_images"] > 0
    assert (run / "saliency" / "c2am-h" / "model" / "model.safetensors").is_file()
    assert (run / "saliency" / "spectral-residual" / "val_balanced" / "provenance.json").is_file()
    assert "## Saliency sources" in (run / "report.md").read_text()
    assert (run / "report.md").read_text().count("|") > 20
    assert "mIoU" in proc.stdout


def test_stage4_trains_every_loss_on_the_whole_train_split(tiny_run):
    run, proc = tiny_run
    train_ids = (run / "data" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    # the network's labels cover every train image, at the `good` source's best τ
    assert all((run / "pseudo" / "good" / "train" / f"{i}.png").is_file() for i in train_ids)
    labels = json.loads((run / "stages" / "seg_labels.json").read_text())["result"]
    best = json.loads((run / "run.json").read_text())["results"]["best_tau"]["good"]["tau"]
    assert labels["tau"] == best and labels["images"] == len(train_ids)
    val_ids = (run / "data" / "ImageSets" / "Segmentation" / "val_balanced.txt").read_text().split()
    seg = json.loads((run / "run.json").read_text())["results"]["seg"]
    assert set(seg) == {"ce/val_balanced", "size-balanced/val_balanced"}
    for loss in ("ce", "size-balanced"):
        assert (run / "seg" / loss / "model" / "model.safetensors").is_file()
        assert all((run / "seg" / loss / "pred" / "val_balanced" / f"{i}.png").is_file() for i in val_ids)
        scored = json.loads((run / "eval" / f"seg-{loss}_val_balanced.json").read_text())
        assert scored["miou"] == seg[f"{loss}/val_balanced"]["miou"]
        assert scored["num_images"] == len(val_ids)
    assert "Segmentation network (stage 4)" in (run / "report.md").read_text()
    assert "Segmentation network trained on" in proc.stdout


def test_submitted_cams_stand_in_for_stage1(tiny_run, tmp_path):
    """`cam.cams`: a user's CAM folder skips training and inference and gives the same pseudo
    labels as the run that made those CAMs."""
    run, _ = tiny_run
    out = tmp_path / "submitted"
    cams = Path(shutil.copytree(run / "cams", tmp_path / "cams"))
    args = ["run", "tiny", "--out", str(out), "--quiet", "--set", f"cam.cams={cams}"]
    args += ["--set", f"data.root={run / 'data'}", "--set", "data.synth=null", "--set", "seg.labels=null"]
    args += ["--set", "saliency={}", "--set", "pseudo.saliency=[none,good]"]
    proc = wsss(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "cam").exists() and not (out / "stages" / "cam_train.json").exists()
    ours = json.loads((out / "run.json").read_text())["results"]["evaluation"]
    theirs = json.loads((run / "run.json").read_text())["results"]["evaluation"]
    for key in ("none/train", "good/train", "none/val_balanced", "good/val_balanced"):
        assert ours[key]["miou"] == theirs[key]["miou"] and ours[key]["tau"] == theirs[key]["tau"]
    bad = wsss("run", "tiny", "--out", str(tmp_path / "bad"), "--quiet", "--set", f"cam.cams={tmp_path / 'nope'}",
               cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "nope" in bad.stderr and "cam.cams" in bad.stderr

    # the submitted CAMs change: every stage that read them is refused, naming the input
    first = sorted(cams.glob("*.npz"))[0]
    data = first.read_bytes()
    first.unlink()
    first.write_bytes(data)  # the same bytes, but a new file: the fingerprint says "changed"
    os.utime(first, ns=(1, 1))
    proc = wsss(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "inputs.cams" in proc.stderr and "--force" in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]) == 1
    assert "Traceback" not in proc.stderr
    # --force recomputes the whole run folder from the current CAMs
    proc = wsss(*args, "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((out / "run.json").read_text())["results"]["evaluation"]
    assert all(again[k]["miou"] == ours[k]["miou"] for k in ours)


def test_a_second_run_into_a_busy_folder_is_refused(tiny_run, tmp_path):
    run, _ = tiny_run
    with lock_held_elsewhere(run):
        proc = wsss("run", "tiny", "--out", str(run), "--quiet", cwd=run.parent)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "another wsss run is writing" in proc.stderr


def test_saliency_quality_in_worker_processes_equals_one_process(tiny_run):
    """`evaluate.workers` spreads the (source, split) saliency scores over processes; the
    numbers are those of the run's own one-process scoring."""
    from wsss.pipeline import Pipeline, load_run_config

    run, _ = tiny_run
    record = json.loads((run / "run.json").read_text())
    cfg = load_run_config("tiny")
    cfg["out"] = str(run)
    cfg["evaluate"]["workers"] = 2
    quality = Pipeline(cfg, progress=False)._saliency_quality(["train", "val_balanced"])
    assert quality == record["results"]["saliency_quality"]
