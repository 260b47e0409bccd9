"""The stage contract (wsss.stage): resume, refusal of foreign outputs, --force, the folder lock,
input fingerprints — through the library and through the real `wsss` command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import lock_held_elsewhere

from wsss.cli import main
from wsss.data import build_dataset
from wsss.io import WsssError, save_cam
from wsss.pseudo.threshold import make_pseudo_labels
from wsss.stage import folder_fingerprint, folder_lock, input_fingerprint, stage_run


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """``wsss ARGS`` in-process: (exit status, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_cams(ds, cam_dir: Path, seed: int) -> None:
    """Seed 0: strong on the objects; other seeds: strong everywhere but on the objects."""
    rng = np.random.default_rng(seed)
    for image_id in ds.ids:
        gt = ds.gt(image_id)
        keys = ds.labels(image_id)
        on, off = (0.6, 0.0) if seed == 0 else (0.0, 0.6)
        cam = np.stack([np.where(gt == k, on, off) + 0.4 * rng.random(gt.shape) for k in keys])
        save_cam(cam_dir / f"{image_id}.npz", keys, cam)


@pytest.fixture()
def setup(voc_like, tmp_path):
    ds = build_dataset("synthetic", voc_like, "train")
    cams = tmp_path / "cams"
    write_cams(ds, cams, seed=0)
    return ds, cams


def pseudo_cli(voc_like: Path, cams: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pseudo",
        "--data",
        str(voc_like),
        "--cams",
        str(cams),
        "--out",
        str(out),
        "--tau",
        "0.5",
        "-q",
        *extra,
    ]


# --------------------------------------------------------------------------- fingerprints
def test_fingerprint_lists_files_not_records(tmp_path):
    (tmp_path / "a.png").write_bytes(b"12")
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "run.shard0of2.json").write_text("{}")
    (tmp_path / "settings.json").write_text("{}")
    (tmp_path / ".wsss.lock").write_text("{}")
    (tmp_path / "sub").mkdir()
    prints = folder_fingerprint(tmp_path)
    assert list(prints) == ["a.png"] and prints["a.png"][0] == 2
    f = input_fingerprint(tmp_path / "a.png", digest=True)
    assert f == {
        "path": str((tmp_path / "a.png").resolve()),
        "sha256": __import__("hashlib").sha256(b"12").hexdigest(),
    }
    with pytest.raises(WsssError, match="missing: input not found"):
        input_fingerprint(tmp_path / "missing")


def test_changed_cams_are_refused_naming_a_file_and_force_recomputes(setup, tmp_path, voc_like, capsys):
    """The user's case: CAMs replaced under a finished pseudo-label folder."""
    ds, cams = setup
    out = tmp_path / "pseudo"
    assert run_cli(capsys, *pseudo_cli(voc_like, cams, out))[0] == 0
    before = snapshot(out)
    # same inputs, same settings: skipped, no label rewritten (only run.json says so)
    assert run_cli(capsys, *pseudo_cli(voc_like, cams, out))[0] == 0
    assert json.loads((out / "run.json").read_text())["skipped_existing"] == len(ds.ids)
    before = snapshot(out)
    # other CAMs with the same names: refused, one line naming the folder, a file and --force
    time.sleep(0.01)
    write_cams(ds, cams, seed=1)
    code, err = run_cli(capsys, *pseudo_cli(voc_like, cams, out))
    line = one_error_line(err)
    assert code == 2 and "input cams" in line and f"{len(ds.ids)} of {len(ds.ids)} files" in line
    assert ds.ids[0] in line and "--force" in line
    assert snapshot(out) == before
    # --force: every label made again from the new CAMs, as a fresh folder would have them
    assert run_cli(capsys, *pseudo_cli(voc_like, cams, out, "--force"))[0] == 0
    fresh = make_pseudo_labels(ds, cams, tmp_path / "fresh", 0.5, progress=False)
    got = {k: v for k, v in snapshot(out).items() if k.endswith(".png")}
    assert got == {k: v for k, v in snapshot(fresh).items() if k.endswith(".png")}
    assert got != {k: v for k, v in before.items() if k.endswith(".png")}


def test_a_growing_input_folder_resumes(setup, tmp_path):
    """More CAMs in the folder (more images of the split) is new work, not a change."""
    ds, cams = setup
    few = build_dataset("synthetic", ds.root, "train")
    few.ids = ds.ids[:3]
    partial = tmp_path / "partial"
    partial.mkdir()
    for image_id in few.ids:
        (partial / f"{image_id}.npz").write_bytes((cams / f"{image_id}.npz").read_bytes())
    out = make_pseudo_labels(few, partial, tmp_path / "out", 0.5, progress=False)
    first = snapshot(out)
    for image_id in ds.ids[3:]:
        (partial / f"{image_id}.npz").write_bytes((cams / f"{image_id}.npz").read_bytes())
    make_pseudo_labels(ds, partial, out, 0.5, progress=False)
    assert len(list(out.glob("*.png"))) == len(ds.ids)
    assert all(snapshot(out)[k] == v for k, v in first.items() if k.endswith(".png"))
    (partial / f"{ds.ids[0]}.npz").unlink()  # a file the outputs were made from disappeared
    with pytest.raises(WsssError, match=rf"{ds.ids[0]}\.npz"):
        make_pseudo_labels(ds, partial, out, 0.5, progress=False)


def test_relative_and_absolute_paths_are_the_same_folder(setup, tmp_path, monkeypatch):
    ds, cams = setup
    make_pseudo_labels(ds, cams, tmp_path / "out", 0.5, progress=False)
    monkeypatch.chdir(tmp_path)
    make_pseudo_labels(ds, Path("cams"), Path("out"), 0.5, progress=False)  # same folders: resumes
    record = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert record["inputs"]["cams"]["path"] == str(cams.resolve())
    assert record["settings"]["root"] == str(Path(ds.root).resolve())


def test_another_stage_folder_is_refused(setup, tmp_path):
    ds, cams = setup
    with stage_run(tmp_path / "x", "masks", {"a": 1}):
        pass
    with pytest.raises(WsssError, match=r"outputs of stage 'masks', not 'pseudo'"):
        make_pseudo_labels(ds, cams, tmp_path / "x", 0.5, progress=False)


def test_an_existing_file_as_output_folder_is_refused(setup, tmp_path):
    ds, cams = setup
    (tmp_path / "file").write_text("keep")
    with pytest.raises(WsssError, match="file: exists and is a file"):
        make_pseudo_labels(ds, cams, tmp_path / "file", 0.5, progress=False)
    assert (tmp_path / "file").read_text() == "keep"


# --------------------------------------------------------------------------- the lock
def test_a_live_lock_refuses_and_a_dead_one_is_taken_over(setup, tmp_path, voc_like, capsys):
    ds, cams = setup
    out = tmp_path / "pseudo"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        lock = out / ".wsss.lock"
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "now"}))
        code, err = run_cli(capsys, *pseudo_cli(voc_like, cams, out))
        line = one_error_line(err)
        assert code == 2 and ".wsss.lock" in line and f"pid {sleeper.pid}" in line
        assert not list(out.glob("*.png")) and lock.is_file()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone (killed): its lock is taken over and released at the end
    assert run_cli(capsys, *pseudo_cli(voc_like, cams, out))[0] == 0
    assert len(list(out.glob("*.png"))) == len(ds.ids) and not lock.exists()


def test_lock_is_released_on_error_and_shards_lock_apart(tmp_path):
    with pytest.raises(RuntimeError), folder_lock(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / ".wsss.lock").exists()
    with folder_lock(tmp_path, "shard0of2") as a, folder_lock(tmp_path, "shard1of2") as b:
        assert a.is_file() and b.is_file() and a != b
        with (
            pytest.raises(WsssError, match="another wsss run is writing"),
            folder_lock(tmp_path, "shard0of2"),
        ):
            pass


def test_two_concurrent_runs_into_one_folder(setup, tmp_path, voc_like):
    """A second process started while the first holds the folder stops with one line."""
    ds, cams = setup
    out = tmp_path / "pseudo"
    out.mkdir()
    with lock_held_elsewhere(out) as pid:
        proc = subprocess.run([sys.executable, "-m", "wsss", *pseudo_cli(voc_like, cams, out)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "another wsss run is writing" in line and f"pid {pid}" in line
    assert not list(out.glob("*.png"))


# --------------------------------------------------------------------------- training folders
def test_training_into_a_finished_folder_with_other_settings(voc_like, tmp_path, capsys):
    out = tmp_path / "cam"
    base = ["cam", "train", "--data", str(voc_like), "--out", str(out), "-q", "--set", "backbone=resnet18",
            "--set", "crop_size=32", "--set", "batch_size=4", "--set", "optimizer=adamw", "--set", "num_workers=0"]  # fmt: skip
    assert run_cli(capsys, *base, "--set", "epochs=1")[0] == 0
    model = out / "model.safetensors"
    before = snapshot(out)
    assert run_cli(capsys, *base, "--set", "epochs=1")[0] == 0  # same settings: the model is reused
    assert snapshot(out) == before
    code, err = run_cli(capsys, *base, "--set", "epochs=2")
    line = one_error_line(err)
    assert code == 2 and "settings.json" in line and "config.epochs: 1 → 2" in line and "--force" in line
    assert snapshot(out) == before
    assert run_cli(capsys, *base, "--set", "epochs=2", "--force")[0] == 0
    assert json.loads((out / "run.json").read_text())["config"]["epochs"] == 2
    assert model.read_bytes() != before["model.safetensors"]


def test_sweep_folder_is_pinned_too(setup, tmp_path, voc_like, capsys):
    ds, cams = setup
    out = tmp_path / "sweep"
    base = ["sweep", "--data", str(voc_like), "--cams", str(cams), "--out", str(out), "-q"]
    assert run_cli(capsys, *base, "--taus", "0.3,0.5")[0] == 0
    before = snapshot(out)
    code, err = run_cli(capsys, *base, "--taus", "0.3,0.6")
    assert code == 2 and "taus: [0.3, 0.5] → [0.3, 0.6]" in one_error_line(err)
    assert snapshot(out) == before
    assert run_cli(capsys, *base, "--taus", "0.3,0.6", "--force")[0] == 0
    assert json.loads((out / "sweep.json").read_text())["taus"] == [0.3, 0.6]


def test_force_never_deletes_an_input(setup, tmp_path):
    ds, cams = setup
    with pytest.raises(WsssError, match="the output folder is the input cams"):
        make_pseudo_labels(ds, cams, cams, 0.5, progress=False)
    with pytest.raises(WsssError, match="the output folder holds the input cams"):
        make_pseudo_labels(ds, cams, tmp_path, 0.5, progress=False, force=True)
    assert len(list(cams.glob("*.npz"))) == len(ds.ids)
