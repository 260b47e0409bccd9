"""`wsss bed`: config errors, cell order and the classifier dependency, shard partitions, tidy
rows and Table 1 against the cells' own eval JSONs, resume after SIGKILL, shards + merge, and a
user-submitted CAM folder as a method. The runs use 2 methods × 2 seeds of a 16 + 8-image dataset
(2 CAM training steps per cell: the bed's bookkeeping is under test, not the numbers)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import wsss_in_process, wsss_process

from wsss.bench.bed import Bed, build_tables, load_bed_config, run_bed, tables_markdown
from wsss.io import WsssError, read_json

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread_per_cell():
    """Beds run here (run_bed) and in `wsss bed` subprocesses (ENV) are compared byte for byte, and
    a bed's numbers are deterministic only for a fixed number of torch threads per cell (its
    docstring): the budget run_bed divides among its cells is capped by OMP_NUM_THREADS, so 1
    everywhere, in this process, its spawned workers (--jobs 2) and the subprocesses alike."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def tiny_bed(out: Path, **changes) -> dict:
    cfg = {
        "out": str(out),
        "base": "tiny",
        "data": {
            "kind": "synthetic",
            "synth": {"preset": "tiny", "num_train": 16, "num_val": 8},
            "eval_splits": ["train", "val"],
        },
        "methods": {"cam": {"method": "cam"}, "cam-ls": {"method": "cam", "train": {"label_smoothing": 0.1}}},
        "saliency": ["none", "good", "poor"],
        "seeds": [0, 1],
        "set": [
            "cam.train.epochs=1",
            "cam.train.batch_size=8",
            "pseudo.taus=[0.1,0.25,0.4]",
            "cam.infer.flip=false",
        ],
    }
    cfg.update(changes)
    return cfg


def write_cfg(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def wsss(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return wsss_process(*args, cwd=cwd, env=ENV)


def comparable(rows: list[dict]) -> str:
    """Rows without their wall times, as text (NaN compares equal to NaN that way)."""
    return json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in rows], sort_keys=True)


# ---------------------------------------------------------------------------- config and plan
def test_config_errors_name_the_file(tmp_path):
    cases = [
        ({"sedes": [0]}, "sedes"),
        ({"methods": {"cam": {"method": "nope"}}}, "nope"),
        ({"methods": {"cam": {"methd": "cam"}}}, "methd"),
        ({"tau": {"puzzle": 0.3}}, "puzzle"),
        ({"seeds": [0, 0]}, "seeds"),
    ]
    for k, (change, word) in enumerate(cases):
        path = write_cfg(tmp_path / f"bed{k}.yaml", tiny_bed(tmp_path / "out", **change))
        with pytest.raises(WsssError, match=re.escape(str(path))) as err:
            Bed(path)
        assert word in str(err.value)
    # a bad key in a cell's run config is caught before anything runs, naming the bed file
    path = write_cfg(tmp_path / "cellkey.yaml", tiny_bed(tmp_path / "out", set=["cam.trian.epochs=1"]))
    with pytest.raises(WsssError, match=re.escape(str(path)) + ".*cam/seed0.*trian"):
        Bed(path)
    assert not (tmp_path / "out").exists()


def test_set_splits_bed_keys_from_cell_keys(tmp_path):
    cfg, _ = load_bed_config(tiny_bed(tmp_path), ["seeds=[3]", "cam.train.epochs=2"])
    assert cfg["seeds"] == [3] and cfg["set"][-1] == "cam.train.epochs=2"
    bed = Bed(tiny_bed(tmp_path), ["seeds=[3]", "cam.train.epochs=2"])
    assert [c.name for c in bed.cells] == ["cam/seed3", "cam-ls/seed3"]
    assert all(c.config["cam"]["train"]["epochs"] == 2 and c.config["seed"] == 3 for c in bed.cells)
    ls = bed.cells[1].config
    assert ls["cam"]["train"]["label_smoothing"] == 0.1 and ls["pseudo"]["taus"] == [0.1, 0.25, 0.4]
    # one shared dataset, no per-cell generation, no stage 4 unless the bed asks for it
    assert ls["data"]["root"] == str(tmp_path / "data") and ls["data"]["synth"] is None
    assert ls["seg"]["labels"] is None and ls["pseudo"]["saliency"] == ["none", "good", "poor"]
    assert ls["saliency"] == {}  # the tiny base builds c2am-h and spectral-residual: not listed here
    assert Bed(tiny_bed(tmp_path, tau=0.3)).cells[0].config["pseudo"]["taus"] == [0.3]


def test_cell_order_and_classifier_dependency(tmp_path):
    methods = {"p-noc": {"method": "p-noc"}, "puzzle": {}, "cam": {"method": "cam"}}
    bed = Bed(tiny_bed(tmp_path, methods=methods))
    names = [c.name for c in bed.cells]
    assert names == ["cam/seed0", "cam/seed1", "p-noc/seed0", "p-noc/seed1", "puzzle/seed0", "puzzle/seed1"]
    assert [c.index for c in bed.cells] == list(range(6))
    for c in bed.cells:
        oc = c.config["cam"]["train"].get("oc")
        if c.method == "p-noc":
            assert c.needs == f"cam/seed{c.seed}"
            assert oc == str(tmp_path / "cells" / "cam" / f"seed{c.seed}" / "cam")
            assert names.index(c.needs) < names.index(c.name)
        else:
            assert c.needs is None and oc is None
    # a named classifier provider moves to the front; without one the bed refuses to start
    bed = Bed(
        tiny_bed(tmp_path, methods={"p-oc": {"method": "p-oc", "oc": "plain"}, "plain": {"method": "cam"}})
    )
    assert [c.name for c in bed.cells][:2] == ["plain/seed0", "plain/seed1"]
    assert bed.cells[2].needs == "plain/seed0"
    with pytest.raises(WsssError, match="ordinary classifier"):
        Bed(tiny_bed(tmp_path, methods={"oc-cse": {"method": "oc-cse"}, "puzzle": {}}))


def test_shards_partition_the_cells(tmp_path):
    methods = {"cam": {"method": "cam"}, "p-noc": {"method": "p-noc"}, "puzzle": {}}
    bed = Bed(tiny_bed(tmp_path, methods=methods, seeds=[0, 1, 2]))
    everything = {c.name for c in bed.cells}
    for n in (1, 2, 3, 4):
        owned = []
        for i in range(n):
            selected = bed.select((i, n))
            own = [c for c, prereq in selected if not prereq]
            assert all(c.index % n == i for c in own)
            names = {c.name for c, _ in selected}
            assert all(c.needs in names for c, _ in selected if c.needs)  # classifiers come along
            assert {c.name for c, prereq in selected if prereq} <= {c.needs for c in own}
            owned.append({c.name for c in own})
        assert set().union(*owned) == everything
        assert sum(len(o) for o in owned) == len(everything)  # disjoint


def test_submitted_cams_give_one_cell_unless_per_seed(tmp_path):
    methods = {"mine": {"cams": "/x/cams"}, "mine2": {"cams": "/x/s{seed}"}}
    bed = Bed(tiny_bed(tmp_path, methods=methods))
    assert [(c.name, c.config["cam"]["cams"]) for c in bed.cells] == [
        ("mine/seed0", "/x/cams"),
        ("mine2/seed0", "/x/s0"),
        ("mine2/seed1", "/x/s1"),
    ]


def test_builtin_bed_demo_loads_and_dry_run_lists_nine_cells(tmp_path, monkeypatch):
    bed = Bed("bed_demo")
    assert {c.method for c in bed.cells} == {"cam", "puzzle", "eps"} and len(bed.cells) == 9
    assert bed.sources == ["none", "poor", "good", "spectral-residual", "c2am-h"]
    cfg = bed.cells[0].config
    assert set(cfg["saliency"]) == {"spectral-residual", "c2am-h"} and cfg["cam"]["train"]["epochs"] == 3
    monkeypatch.chdir(tmp_path)
    proc = wsss_in_process("bed", "bed_demo", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"^\s*\d+\s+\S+/seed\d+\s", ln)]
    assert len(lines) == 9 and "eps/seed2" in lines[-1]
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_tables_of_handmade_rows_with_seg():
    rows = []
    for m, base in (("a", 0.2), ("b", 0.4)):
        for seed in (0, 1, 2):
            common = {"method": m, "seed": seed, "seconds": 1.0, "cell": f"cells/{m}/seed{seed}"}
            scores = {k: base + 0.01 * seed for k in ("ia_miou", "ia_miou_small", "ia_miou_medium")}
            scores.update(ia_miou_large=math.nan, precision_mean=0.5, recall_mean=0.5)
            rows.append({**common, "saliency": "none", "split": "val", "tau": 0.1 * (seed + 1), "kind": "pseudo",
                         "loss": "", "miou": base + 0.01 * seed, **scores})  # fmt: skip
            for loss, shift in (("ce", 0.0), ("size-balanced", 0.05)):
                rows.append({**common, "saliency": "good", "split": "val_balanced", "tau": 0.1, "kind": "seg",
                             "loss": loss, "miou": base + shift + 0.02 * seed, **scores})  # fmt: skip
    t = build_tables(rows, ["a", "b"], ["none"])
    cell = t["table1"]["val"]["b"]["none"]
    assert cell["mean"] == pytest.approx(0.41) and cell["n"] == 3
    assert cell["sem"] == pytest.approx(np.std([0.40, 0.41, 0.42], ddof=1) / math.sqrt(3))
    assert cell["text"] == "41.0 ± 0.6"
    assert t["tau"]["a"]["none"] == {
        "0": pytest.approx(0.1),
        "1": pytest.approx(0.2),
        "2": pytest.approx(0.3),
    }
    assert math.isnan(t["ia"]["val"]["a"]["none"]["ia_miou_large"]["mean"])
    assert t["seg"]["val_balanced"]["b"]["size-balanced"]["mean"] == pytest.approx(0.47)
    assert t["seg_losses"] == ["ce", "size-balanced"] and t["seg_labels"] == ["good"]
    md = tables_markdown(t, "x", "train", [0, 1, 2])
    assert "| b | 41.0 ± 0.6 |" in md and "Segmentation mIoU (`val_balanced`" in md
    assert "| a | 0.10 / 0.20 / 0.30 |" in md


# ---------------------------------------------------------------------------- real runs
def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.glob("*.json"))}


@pytest.fixture(scope="module")
def beds(tmp_path_factory) -> dict:
    """A bed killed (SIGKILL) after its first cell and rerun, and a clean run of the same bed."""
    tmp = tmp_path_factory.mktemp("bed")
    killed = tmp / "killed"
    cfg_path = write_cfg(tmp / "bed.yaml", tiny_bed(killed))
    with open(tmp / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wsss", "bed", str(cfg_path), "--quiet"],
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        marker = killed / "cells" / "cam" / "seed0" / "run.json"  # written last by a finished cell
        deadline = time.monotonic() + 300
        while not marker.is_file():
            assert proc.poll() is None, (tmp / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first cell did not finish in 5 minutes"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first_cell = killed / "cells" / "cam" / "seed0" / "eval"
    before = snapshot(first_cell)
    state = {
        "killed_rc": proc.returncode,
        "results_after_kill": (killed / "results.json").exists(),
        "second_done_at_kill": (killed / "cells" / "cam" / "seed1" / "run.json").exists(),
    }
    rerun = wsss_in_process("bed", str(cfg_path), "--quiet")  # the same command, minus 5-10 s of imports
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    clean = tmp / "clean"
    run_bed(tiny_bed(clean), progress=False)
    return {"tmp": tmp, "killed": killed, "clean": clean, "before": before, "after": snapshot(first_cell),
            "rerun": rerun, **state}  # fmt: skip


def test_resume_after_kill_keeps_finished_cell_and_matches_clean_run(beds):
    assert beds["killed_rc"] == -signal.SIGKILL and not beds["results_after_kill"]
    assert not beds["second_done_at_kill"]
    assert len(beds["before"]) == 6  # 3 sources × 2 eval splits
    assert beds["after"] == beds["before"]  # same mtime_ns and bytes: the finished cell was not rerun
    assert "cam/seed0: finished already" in beds["rerun"].stderr
    killed = read_json(beds["killed"] / "results.json")["rows"]
    clean = read_json(beds["clean"] / "results.json")["rows"]
    assert len(clean) == 2 * 2 * 3 * 2
    assert comparable(killed) == comparable(clean)


def test_tidy_rows_and_table1_match_the_cells_eval_jsons(beds):
    out = beds["clean"]
    rows = read_json(out / "results.json")["rows"]
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in ("cam", "cam-ls") for s in (0, 1)}
    for r in rows:
        assert r["kind"] == "pseudo" and r["loss"] == ""
        ev = read_json(out / r["cell"] / "eval" / f"{r['saliency']}_{r['split']}.json")
        for k in ("miou", "ia_miou", "ia_miou_small", "ia_miou_medium", "ia_miou_large", "precision_mean"):
            assert r[k] == pytest.approx(ev[k], nan_ok=True), k
        assert r["tau"] == pytest.approx(ev["tau"]) and r["seconds"] > 0
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(r["miou"]) for r in table] == [r["miou"] for r in rows]
    html = (out / "report.html").read_text()  # the bed ends with its report
    assert "cam-ls" in html and html.count("data:image/png;base64,") > 0
    tables = read_json(out / "tables.json")
    md = (out / "tables.md").read_text()
    for split in ("train", "val"):
        for m in ("cam", "cam-ls"):
            for s in ("none", "good", "poor"):
                evs = [
                    read_json(out / "cells" / m / f"seed{k}" / "eval" / f"{s}_{split}.json") for k in (0, 1)
                ]
                mious = [e["miou"] for e in evs]
                got = tables["table1"][split][m][s]
                assert got["mean"] == pytest.approx(np.mean(mious))
                assert got["sem"] == pytest.approx(np.std(mious, ddof=1) / math.sqrt(2))
                assert got["text"] in md
                assert tables["tau"][m][s] == {str(k): pytest.approx(e["tau"]) for k, e in enumerate(evs)}
    assert (out / "bed.json").is_file() and read_json(out / "run.json")["missing"] == []


def test_shards_then_merge_equal_one_run(beds, tmp_path):
    a, b = tmp_path / "machine_a", tmp_path / "machine_b"
    run_bed(tiny_bed(a), shard="0/2", jobs=2, progress=False)  # two cells in two spawned processes
    run_bed(tiny_bed(b), shard="1/2", progress=False)
    assert (a / "run.shard0of2.json").is_file() and not (a / "results.json").exists()
    assert sorted(p.name for p in (a / "cells").glob("*/*")) == ["seed0", "seed0"]
    cfg_a = write_cfg(tmp_path / "a.yaml", tiny_bed(a))
    proc = wsss_in_process("bed", str(cfg_a), "--merge")  # machine b's cells are not here yet
    assert proc.returncode != 0 and "cam/seed1" in proc.stderr and "cam-ls/seed1" in proc.stderr
    partial = run_bed(tiny_bed(a), merge=True, allow_missing=True, progress=False)
    assert len(partial["rows"]) == 12
    shutil.copytree(b / "cells", a / "cells", dirs_exist_ok=True)
    merged = run_bed(tiny_bed(a), merge=True, progress=False)
    assert merged["ran"] == []
    clean = read_json(beds["clean"] / "results.json")["rows"]
    assert comparable(read_json(a / "results.json")["rows"]) == comparable(clean)


def test_user_submitted_cams_as_a_method(beds, tmp_path):
    cams = Path(shutil.copytree(beds["clean"] / "cells" / "cam" / "seed0" / "cams", tmp_path / "my_cams"))
    out = tmp_path / "user"
    result = run_bed(tiny_bed(out, methods={"mine": {"cams": str(cams)}}), progress=False)
    assert result["cells"] == ["mine/seed0"]  # nothing in it depends on the seed: one cell
    assert not (out / "cells" / "mine" / "seed0" / "cam" / "model.safetensors").exists()  # no training
    keys = ("saliency", "split", "tau", "miou", "ia_miou", "ia_miou_small", "precision_mean", "recall_mean")
    mine = [{k: r[k] for k in keys} for r in result["rows"]]
    ref = [{k: r[k] for k in keys} for r in read_json(beds["clean"] / "results.json")["rows"]
           if r["method"] == "cam" and r["seed"] == 0]  # fmt: skip
    assert json.dumps(mine) == json.dumps(ref)


def test_refinement_steps_add_columns(beds, tmp_path):
    """`refine: [crf]`: every source is also scored after the label CRF, as column `<source>+crf`;
    the unrefined columns stay those of the plain bed."""
    cams = Path(shutil.copytree(beds["clean"] / "cells" / "cam" / "seed0" / "cams", tmp_path / "my_cams"))
    out = tmp_path / "refined"
    result = run_bed(tiny_bed(out, methods={"mine": {"cams": str(cams)}}, refine=["crf"]), progress=False)
    rows = {(r["saliency"], r["split"]): r for r in result["rows"]}
    assert set(rows) == {(s, sp) for s in ("none", "good", "poor", "none+crf", "good+crf", "poor+crf")
                         for sp in ("train", "val")}  # fmt: skip
    cell = out / "cells" / "mine" / "seed0"
    for (src, split), r in rows.items():
        assert r["miou"] == pytest.approx(read_json(cell / "eval" / f"{src}_{split}.json")["miou"])
        if src.endswith("+crf"):
            plain = rows[(src.removesuffix("+crf"), split)]
            assert r["tau"] == plain["tau"]  # refined at the source's own best τ
            assert (cell / "pseudo" / src / split).is_dir()
    assert result["tables"]["sources"] == ["none", "good", "poor", "none+crf", "good+crf", "poor+crf"]
    assert "good+crf" in (out / "tables.md").read_text()
    with pytest.raises(WsssError, match="refine"):
        run_bed(tiny_bed(tmp_path / "bad", refine=["walk"]), progress=False)
