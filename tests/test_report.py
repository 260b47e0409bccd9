"""`wsss report`: the gallery's per-image scores and selection, escaping, embedding, a report of a
real tiny run and of a fake bed of such runs, and the page opened in a real headless browser."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.io import WsssError, load_label, read_json
from wsss.report import build_report, esc, image_miou, select_gallery
from wsss.report.html import class_section, table

slow = pytest.mark.slow  # the tests below the unit tests need a real `tiny` run (~20 s, once)

# --------------------------------------------------------------------------- fixtures
GT = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 255], [2, 2, 2, 255]], np.uint8)
PRED = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [2, 2, 0, 0], [255, 2, 2, 2]], np.uint8)


# `tiny` minus its slowest parts (C²AM-H training, a second network): one built saliency source stays
FAST = [
    "saliency={spectral-residual: {source: spectral-residual}}",
    "pseudo.saliency=[none, oracle, good, spectral-residual]",
    "seg.methods=[ce]",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The built-in `tiny` config run to the end (CAMs, built saliency sources, pseudo labels and,
    when the config has stage 4, the segmentation network's predictions)."""
    from wsss.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("report") / "run"
    run_pipeline("tiny", overrides=FAST, out=str(out), progress=False)  # one thread: see conftest
    return out


@pytest.fixture(scope="module")
def run_report(tiny_run, tmp_path_factory) -> Path:
    return build_report(tiny_run, tmp_path_factory.mktemp("run_report") / "report.html", gallery=2, seed=0)


def _bed_rows(run: Path, cell: str, method: str, seed: int, shift: float) -> list[dict]:
    """results.json rows of one cell, from the run's own evaluation JSONs (scores shifted per cell)."""
    rows = []
    for path in sorted((run / "eval").glob("*.json")):
        if path.name.endswith(".run.json"):
            continue
        res = read_json(path)
        seg = "method" in res
        row = {
            "method": method,
            "seed": seed,
            "saliency": res["labels"] if seg else res["saliency"],
            "split": res["split"],
            "tau": None if seg else res["tau"],
            "kind": "seg" if seg else "pseudo",
            "cell": cell,
        }
        if seg:
            row["loss"] = res["method"]
        for k in ("miou", "ia_miou", "ia_miou_small", "ia_miou_medium", "ia_miou_large", "precision_mean"):
            row[k] = res[k] + shift
        row["recall_mean"] = res["recall_mean"]
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def bed(tiny_run, tmp_path_factory) -> Path:
    """A bed of 2 methods × 2 seeds whose cells are symlinks to the one tiny run."""
    root = tmp_path_factory.mktemp("bed")
    rows = []
    for method, shift in (("cam", 0.0), ("puzzle", 0.05)):
        for seed in (0, 1):
            cell = f"cells/{method}/seed{seed}"
            (root / cell).parent.mkdir(parents=True, exist_ok=True)
            (root / cell).symlink_to(tiny_run, target_is_directory=True)
            rows += _bed_rows(tiny_run, cell, method, seed, shift + 0.01 * seed)
    # one group with hand-picked values: mean 31.0, s.e.m. = std(ddof=1)/√2 = 1.0
    for r in rows:
        if (r["method"], r["saliency"], r["split"], r["kind"]) == ("cam", "none", "train", "pseudo"):
            r["miou"] = {0: 0.30, 1: 0.32}[r["seed"]]
    (root / "bed.json").write_text(json.dumps({"methods": ["cam", "puzzle"], "seeds": [0, 1], "note": "<i>"}))
    (root / "results.json").write_text(json.dumps({"rows": rows}))
    return root


@pytest.fixture(scope="module")
def bed_report(bed, tmp_path_factory) -> Path:
    return build_report(bed, tmp_path_factory.mktemp("bed_report") / "bed.html", gallery=1, seed=0)


def _imgs(text: str) -> list[str]:
    return re.findall(r"<img\b[^>]*>", text)


# --------------------------------------------------------------------------- unit tests
def test_image_miou_hand_computed():
    # class 0: tp 3, fp 1 (a GT-2 pixel), fn 1 → 3/5; class 1: tp 4, fp 1 → 4/5;
    # class 2: tp 4, fn 2 (one predicted 0, one left 255) → 4/6; class 3 absent → not averaged
    assert image_miou(PRED, GT, 4) == pytest.approx((3 / 5 + 4 / 5 + 4 / 6) / 3)
    # all background: class 0 is 4 of 14 labelled pixels, classes 1 and 2 get 0
    none = np.zeros_like(GT)
    assert image_miou(none, GT, 4) == pytest.approx((4 / 14 + 0 + 0) / 3)
    delta = image_miou(PRED, GT, 4) - image_miou(none, GT, 4)
    assert delta == pytest.approx(0.688889 - 0.095238, abs=1e-5)
    assert image_miou(GT, GT, 4) == 1.0
    assert math.isnan(image_miou(np.full_like(GT, 255), np.full_like(GT, 255), 4))


def test_select_gallery_best_worst_random():
    ids = ["a", "b", "c", "d", "e", "f"]
    delta = [0.5, -0.2, math.nan, 0.1, 0.5, -0.7]
    got = select_gallery(ids, delta, 2, seed=0)
    # ties (a, e) break by id; NaN (c) is never best/worst; the random pair is what is left
    assert got == [
        ("best", "a"),
        ("best", "e"),
        ("worst", "f"),
        ("worst", "b"),
        ("random", "c"),
        ("random", "d"),
    ]
    assert select_gallery(ids, delta, 0, seed=0) == []
    many = select_gallery(ids, delta, 10, seed=0)  # more asked than there are: every image once
    assert sorted(i for _, i in many) == ids


def test_select_gallery_random_is_seeded():
    ids = [f"im{i:02d}" for i in range(30)]
    delta = np.linspace(-1, 1, 30)
    sel = select_gallery(ids, delta, 3, seed=5)
    assert [i for g, i in sel if g == "best"] == ["im29", "im28", "im27"]
    assert [i for g, i in sel if g == "worst"] == ["im00", "im01", "im02"]
    randoms = [i for g, i in sel if g == "random"]
    assert len(randoms) == 3 and not set(randoms) & {"im00", "im01", "im02", "im27", "im28", "im29"}
    assert select_gallery(ids, delta, 3, seed=5) == sel
    draws = {tuple(i for g, i in select_gallery(ids, delta, 3, seed=s) if g == "random") for s in range(8)}
    assert len(draws) > 1


def test_html_escaping_of_names():
    assert esc('<b>&"') == "&lt;b&gt;&amp;&quot;"
    per_class = [{"id": 0, "name": "background", "iou": 0.9}, {"id": 1, "name": "<b>&", "iou": 0.25}]
    evals = {"x<y": {"per_class": per_class, "groups": {"classes": []}}}
    html_text = class_section(evals, "val")
    assert "&lt;b&gt;&amp;" in html_text and "<b>&" not in html_text
    assert "IoU x&lt;y" in html_text and "25.0" in html_text
    assert "<td>&lt;script&gt;</td>" in table(["h"], [["<script>"]])


# --------------------------------------------------------------------------- reports of real folders
@slow
def test_every_figure_is_embedded(tiny_run, tmp_path):
    out = build_report(tiny_run, tmp_path / "r.html", gallery=0)
    text = out.read_text()
    imgs = _imgs(text)
    assert len(imgs) == 3  # τ curves, IA-mIoU bars, per-class IoU
    assert text.count("data:image/png;base64,") == len(imgs)
    for tag in imgs:
        data = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', tag).group(1))
        assert Image.open(io.BytesIO(data)).size[0] > 100
    assert "Gallery" not in text


@slow
def test_run_report_contents(tiny_run, run_report):
    text = run_report.read_text()
    cfg = read_json(tiny_run / "config.json")
    record = read_json(tiny_run / "run.json")
    anchors = [m for m in re.findall(r'<section id="([\w-]+)"', text)]
    assert anchors == ["header", "results", "tau", "ia", "groups", "classes", "gallery"]
    assert record["versions"]["torch"] in text and cfg["cam"]["method"] in text
    for src in cfg["pseudo"]["saliency"]:
        assert f"<td>{esc(src)}</td>" in text
    # every <img> is an embedded image: figures as PNG, photographs as JPEG
    imgs = _imgs(text)
    assert len(imgs) == len(re.findall(r'src="data:image/(?:png|jpeg);base64,', text)) > 3
    record = read_json(run_report.parent / "report.run.json")
    assert record["stage"] == "report" and record["config"]["split"] == "val_balanced"
    if cfg.get("seg", {}).get("labels"):
        assert "prediction (seg-" in text  # the final output is the network's when the run has one


@slow
def test_gallery_shows_the_extreme_images(tiny_run, run_report):
    """The best/worst images and their ΔIoU, recomputed here from the label files."""
    from wsss.data import build_dataset
    from wsss.report.html import RunFolder

    text = run_report.read_text()
    shown = re.findall(r"<td>(best|worst|random)<br>([^<]+)<br>ΔIoU ([+-][\d.]+)<br>final ([\d.]+)", text)
    run = RunFolder(tiny_run)
    split = "val_balanced"
    ds = build_dataset("synthetic", tiny_run / "data", split)
    seg = [m for m in run.seg_names if (m, split) in run.evals]
    final_dir = (
        run.pred_dir(max(seg, key=lambda m: run.evals[(m, split)]["miou"]), split)
        if seg
        else tiny_run / "pseudo" / run.best_source() / split
    )
    delta = {}
    for i in ds.ids:
        gt = ds.gt(i)
        pred = load_label(final_dir / f"{i}.png", ds.num_classes)
        none = load_label(tiny_run / "pseudo" / "none" / split / f"{i}.png", ds.num_classes)
        delta[i] = image_miou(pred, gt, ds.num_classes) - image_miou(none, gt, ds.num_classes)
    ranked = sorted(delta, key=lambda i: (-delta[i], i))
    assert [i for g, i, _, _ in shown if g == "best"] == ranked[:2]
    assert [i for g, i, _, _ in shown if g == "worst"] == sorted(ranked[2:], key=lambda i: (delta[i], i))[:2]
    for _, i, d, _ in shown:
        assert float(d) == pytest.approx(100 * delta[i], abs=0.051)
    assert len({i for _, i, _, _ in shown}) == len(shown) == min(6, len(ds.ids))


@slow
def test_report_is_deterministic(tiny_run, run_report, tmp_path):
    again = build_report(tiny_run, tmp_path / "again.html", gallery=2, seed=0)
    assert again.read_bytes() == run_report.read_bytes()


@slow
def test_bed_report(bed, bed_report):
    text = bed_report.read_text()
    assert "31.0 ± 1.0" in text  # cam / none / train: mIoU 30 and 32 over two seeds
    table1 = re.search(r"<caption>Table 1[^<]*train[^<]*</caption>.*?</table>", text, re.S).group(0)
    headers = re.findall(r"<th>(.*?)</th>", table1)
    cam_row = re.findall(r"<td[^>]*>(.*?)</td>", re.search(r"<tr><td>cam</td>.*?</tr>", table1).group(0))
    assert cam_row[headers.index("none")] == "31.0 ± 1.0"  # the matrix cell cam × none
    assert "Best cell: puzzle /" in text  # puzzle's rows are 5 points higher
    assert "&lt;i&gt;" in text and "<i>" not in text  # bed.json shown, escaped
    anchors = re.findall(r'<section id="([\w-]+)"', text)
    assert anchors[:4] == ["header", "results", "tau", "ia"] and anchors[-1] == "cell-gallery"
    assert len(_imgs(text)) == len(re.findall(r'src="data:image/(?:png|jpeg);base64,', text)) > 3
    assert read_json(bed_report.parent / "bed.run.json")["config"]["kind"] == "bed"


@slow
def test_errors_name_the_folder_or_file(tiny_run, tmp_path):
    with pytest.raises(WsssError, match=re.escape(str(tmp_path))):
        build_report(tmp_path)
    partial = tmp_path / "partial"
    for name in ("config.json", "run.json", "stages/sweep.json", "sweep/sweep.json"):
        (partial / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_run / name, partial / name)
    with pytest.raises(WsssError, match=re.escape(str(partial / "eval" / "none_train.json"))):
        build_report(partial)
    with pytest.raises(WsssError, match="split 'nope'"):
        build_report(tiny_run, tmp_path / "x.html", split="nope")
    bad_bed = tmp_path / "bed"
    bad_bed.mkdir()
    (bad_bed / "bed.json").write_text("{}")
    (bad_bed / "results.json").write_text(json.dumps({"rows": [{"method": "cam"}]}))
    with pytest.raises(WsssError, match="results.json: row 0 lacks"):
        build_report(bad_bed)


@slow
def test_split_scored_for_the_network_only(tiny_run, tmp_path):
    """A split with predictions but no pseudo labels (seg.splits outside eval_splits): the gallery
    ranks by the prediction's own mIoU and shows no pseudo-label column."""
    cfg = read_json(tiny_run / "config.json")
    if not cfg.get("seg", {}).get("labels"):
        pytest.skip("the tiny config has no stage 4")
    view = tmp_path / "view"  # the run as if only `train` had been evaluated, made of links
    view.mkdir()
    for entry in tiny_run.iterdir():
        if entry.name not in ("config.json", "eval", "pseudo", "report.html"):
            (view / entry.name).symlink_to(entry)
    cfg["data"]["eval_splits"] = ["train"]
    (view / "config.json").write_text(json.dumps(cfg))
    (view / "eval").mkdir()
    for f in (tiny_run / "eval").glob("*.json"):
        if f.stem.endswith("_train") or f.name.startswith("seg"):
            (view / "eval" / f.name).symlink_to(f)
    for src in cfg["pseudo"]["saliency"]:
        (view / "pseudo" / src).mkdir(parents=True)
        (view / "pseudo" / src / "train").symlink_to(tiny_run / "pseudo" / src / "train")
    text = build_report(view, tmp_path / "r.html", gallery=1).read_text()
    assert "Gallery (val_balanced)" in text and "prediction (seg-" in text
    assert "ranked by the per-image mIoU" in text and "<th>pseudo (" not in text
    assert re.search(r"<td>best<br>[^<]+<br>mIoU [+-][\d.]+<br>final [\d.]+</td>", text)


@slow
def test_cli(tiny_run, tmp_path):
    out = tmp_path / "cli.html"
    args = [sys.executable, "-m", "wsss", "report", str(tiny_run), "--out", str(out), "--gallery", "1"]
    proc = subprocess.run([*args, "--split", "train"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "Gallery (train)" in text and "final)" in text  # no network on train: best pseudo label is final
    proc = subprocess.run(
        [sys.executable, "-m", "wsss", "report", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and str(tmp_path) in proc.stderr


# --------------------------------------------------------------------------- a real browser
def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("WSSS_REQUIRE_BROWSER") == "1":
        pytest.fail("WSSS_REQUIRE_BROWSER=1 but none of chromium, chromium-browser, google-chrome is on PATH")
    pytest.skip("no headless browser (chromium, chromium-browser, google-chrome) on PATH")


@slow
@pytest.mark.parametrize("which", ["run_report", "bed_report"])
def test_browser_loads_every_image(which, request, tmp_path):
    browser = _browser()  # first: a skip must not wait for the run
    report = request.getfixturevalue(which)
    base = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    url = report.resolve().as_uri()
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert loaded and total, f"the onload script did not run: {body.group(0)}"
    assert int(loaded.group(1)) == int(total.group(1)) == len(_imgs(report.read_text())) > 0
    assert f"[images {total.group(1)}/{total.group(1)}]" in dom.stdout  # and in the title

    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1280,2000", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2000, 1280) and pixels.std() > 0
