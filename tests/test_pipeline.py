"""End to end: `wsss run tiny` through the real CLI, then a rerun that must skip every stage."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_rerun_skips_finished_stages_with_identical_results(tiny_run):
    run, _ = tiny_run
    before = json.loads((run / "run.json").read_text())["results"]
    proc = wsss("run", "tiny", "--out", str(run), "--quiet", cwd=run.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("done already") == 7  # synth … pseudo_eval, saliency and saliency_eval included
    after = json.loads((run / "run.json").read_text())["results"]
    assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)


def test_changed_config_under_existing_outputs_is_refused(tiny_run):
    run, _ = tiny_run
    proc = wsss("run", "tiny", "--out", str(run), "--quiet", "--set", "cam.train.epochs=2", cwd=run.parent)
    assert proc.returncode == 2
    assert "cam_train" in proc.stderr and "different config" in proc.stderr
