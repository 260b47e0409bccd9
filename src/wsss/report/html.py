"""``wsss report``: one self-contained HTML page from a ``wsss run`` folder or a bed folder.

Every image is embedded as a base64 data URI, so the single file can be mailed or opened
anywhere. Every text that comes from the data (class and source names, ids, configs) passes
through :func:`esc`. An inline script counts, on load, the images that decoded and writes the
count into ``<body data-images-loaded=… data-images-total=…>`` and the title, so a headless
browser's ``--dump-dom`` proves that the page is whole.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss.io import WsssError, atomic_write_text, read_json, voc_palette, write_run_json
from wsss.metrics.stats import format_mean_sem, mean_sem
from wsss.metrics.stats import format_pct as pct
from wsss.report import figures
from wsss.report.gallery import GallerySpec, build_rows

SCORES = (
    ("miou", "mIoU"),
    ("ia_miou", "IA-mIoU"),
    ("ia_miou_small", "IA-S"),
    ("ia_miou_medium", "IA-M"),
    ("ia_miou_large", "IA-L"),
    ("precision_mean", "precision"),
    ("recall_mean", "recall"),
)
IA_SIZES = ("ia_miou_small", "ia_miou_medium", "ia_miou_large")
STATS = ("occurrence", "relative_size", "cooccurrence", "cardinality")
EVAL_KEYS = ("miou", "per_class")  # of an evaluation JSON, what every section reads

# --------------------------------------------------------------------------- page primitives
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ddd;padding:.2em .5em}th{background:#f3f3f3}td.n{text-align:right}
caption{caption-side:bottom;text-align:left;color:#666;font-size:.9em;padding-top:.3em}
img.fig{max-width:100%}.note{color:#666;font-size:.9em}pre{background:#f7f7f7;padding:.5em;overflow:auto}
.gallery td{vertical-align:top;text-align:center;font-size:.8em}.gallery img{display:block}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #999;vertical-align:middle;margin:0 .2em 0 .8em}
"""

# Counts the images that decoded (complete with a width) once everything has loaded.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = String(ok);
  document.body.dataset.imagesTotal = String(imgs.length);
  document.title = document.title + " [images " + ok + "/" + imgs.length + "]";
});
"""


def esc(value: Any) -> str:
    """HTML-escape any value (quotes too: the text may land in an attribute)."""
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, alt: str, mime: str = "image/png", cls: str = "fig") -> str:
    return f'<img class="{esc(cls)}" src="{data_uri(data, mime)}" alt="{esc(alt)}">'


def signed(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):+.2f}"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None, text_cols: int = 1
) -> str:
    """An escaped table; columns after the first ``text_cols`` are right-aligned numbers."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""  # key–value tables: no header
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if j >= text_cols else ''}>{esc(v)}</td>" for j, v in enumerate(r))
        + "</tr>"
        for r in rows
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}{thead}<tbody>{body}</tbody></table>"


def section(title: str, *parts: str, anchor: str | None = None) -> str:
    aid = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{aid}><h2>{esc(title)}</h2>{''.join(parts)}</section>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def page(title: str, parts: Iterable[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head>\n"
        f"<body><h1>{esc(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def legend(class_names: Sequence[str]) -> str:
    """Class colours of the VOC palette, named."""
    pal = voc_palette()
    items = "".join(
        f'<span class="swatch" style="background:rgb({pal[i][0]},{pal[i][1]},{pal[i][2]})"></span>{esc(n)}'
        for i, n in enumerate(class_names)
    )
    return f'<p class="note">Label colours:{items}<span class="swatch" style="background:rgb(224,224,192)"></span>ignore</p>'


# --------------------------------------------------------------------------- run folder
class RunFolder:
    """The files of one finished ``wsss run`` folder, checked, with the run's own path rules."""

    def __init__(self, run_dir: Path):
        from wsss.config import deep_merge
        from wsss.pipeline import DEFAULTS, Pipeline

        self.dir = Path(run_dir)
        self.cfg = deep_merge(DEFAULTS, read_json(self.dir / "config.json"))
        self.cfg["out"] = str(self.dir)  # the folder may have moved (a bed cell is a copy)
        self.record = read_json(self.dir / "run.json")
        self.best = (read_json(self.dir / "stages" / "sweep.json").get("result")) or {}
        self.sweep = _require(self.dir / "sweep" / "sweep.json", ("sources",))
        self.pipeline = Pipeline(self.cfg, progress=False)
        srcs = self.cfg["pseudo"]["saliency"]
        self.sources = list(srcs) if isinstance(srcs, dict) else list(srcs)
        self.splits = list(self.cfg["data"]["eval_splits"])
        missing = [s for s in self.sources if s not in self.best]
        if missing:
            raise WsssError(f"{self.dir / 'stages' / 'sweep.json'}: no best τ for sources {missing}")
        # (output name, split) → evaluation JSON; pseudo labels first, then the networks of stage 4
        self.evals: dict[tuple[str, str], dict] = {}
        for split in self.splits:
            for src in self.sources:
                self.evals[(src, split)] = _require(self.dir / "eval" / f"{src}_{split}.json", EVAL_KEYS)
        self.seg_names: list[str] = []
        for path in sorted((self.dir / "eval").glob("seg*.json")):
            if path.name.endswith(".run.json"):
                continue
            res = _require(path, (*EVAL_KEYS, "split"))
            split = res["split"]
            if not path.stem.endswith(f"_{split}"):
                continue
            name = path.stem[: -len(split) - 1]
            if name in self.sources:
                continue
            self.evals[(name, split)] = res
            if name not in self.seg_names:
                self.seg_names.append(name)

    @property
    def name(self) -> str:
        return self.dir.resolve().name

    @property
    def outputs(self) -> list[str]:
        return self.sources + self.seg_names

    def all_splits(self) -> list[str]:
        return list(dict.fromkeys([*self.splits, *(s for _, s in self.evals)]))

    def default_split(self) -> str:
        """Where a network was scored (first of ``seg.splits``; one with pseudo labels too if any),
        else the last split of the pseudo labels."""
        scored = {s for (n, s) in self.evals if n in self.seg_names}
        order = [*(self.cfg.get("seg", {}).get("splits") or []), *sorted(scored)]
        order = [s for s in order if s in scored]
        return next((s for s in order if s in self.splits), order[0] if order else self.splits[-1])

    def check_split(self, split: str | None) -> str:
        split = split or self.default_split()
        if split not in self.all_splits():
            raise WsssError(f"{self.dir}: split {split!r} was not evaluated; evaluated: {self.all_splits()}")
        return split

    def pred_dir(self, name: str, split: str) -> Path:
        """A network's predictions: ``seg/pred/<split>`` or, one per loss, ``seg/<loss>/pred/<split>``."""
        if name == "seg":
            return self.dir / "seg" / "pred" / split
        return self.dir / "seg" / name.removeprefix("seg-") / "pred" / split

    def best_source(self) -> str:
        """The source whose pseudo labels scored best on the sweep split (where τ was chosen)."""
        return max(self.sources, key=lambda s: _num(self.best[s].get("miou")))


def _require(path: Path, keys: Sequence[str]) -> dict:
    """A JSON object with the keys the page needs, else an error naming the file."""
    obj = read_json(path)
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise WsssError(f"{path}: expected keys {missing} (not a file of `wsss run`?)")
    return obj


def _num(v: Any) -> float:
    """For max(): NaN / None rank last."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return -math.inf
    return -math.inf if math.isnan(f) else f


def _header_run(run: RunFolder) -> str:
    cfg, rec = run.cfg, run.record
    data = cfg["data"]
    rows = [
        ("run", str(run.dir)),
        ("dataset", f"{data['kind']} at {run.pipeline.data_root}"),
        ("CAM method", cfg["cam"]["method"]),
        ("seed", cfg.get("seed")),
        ("saliency sources", ", ".join(run.sources)),
        ("τ chosen on", cfg["pseudo"]["sweep_split"]),
        ("created", rec.get("created", "–")),
        ("git", rec.get("git_sha") or "–"),
    ]
    if cfg.get("seg", {}).get("labels"):
        rows.append(
            ("segmentation network", f"trained on {cfg['seg']['labels']} labels: {', '.join(run.seg_names)}")
        )
    versions = rec.get("versions") or {}
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "–"))
    return table(["", ""], rows, text_cols=2)


def results_section(run: RunFolder) -> str:
    pseudo_rows = [
        [src, split, f"{float(run.evals[(src, split)].get('tau', run.best[src]['tau'])):.2f}"]
        + [pct(run.evals[(src, split)].get(k)) for k, _ in SCORES]
        for split in run.splits
        for src in run.sources
    ]
    parts = [
        table(
            ["saliency", "split", "τ", *(h for _, h in SCORES)],
            pseudo_rows,
            text_cols=2,
            caption="Pseudo labels at each source's best τ; scores in percent. IA-S/M/L: instance-aware "
            "mIoU of small/medium/large objects.",
        ),
    ]
    if run.seg_names:
        seg_rows = [
            [name, split] + [pct(res.get(k)) for k, _ in SCORES]
            for (name, split), res in run.evals.items()
            if name in run.seg_names
        ]
        parts.append(
            table(
                ["network", "split", *(h for _, h in SCORES)],
                seg_rows,
                text_cols=2,
                caption=f"Segmentation network (stage 4) trained on {run.cfg['seg'].get('labels')} labels.",
            )
        )
    quality = (run.record.get("results") or {}).get("saliency_quality") or {}
    if quality:
        q_rows = [
            [src, split, f"{q['mae']:.3f}", pct(q.get("max_f")), pct(q.get("iou"))]
            for src, per_split in quality.items()
            for split, q in per_split.items()
        ]
        parts.append(
            table(
                ["source", "split", "MAE", "max-F", "IoU@0.5"],
                q_rows,
                text_cols=2,
                caption="Saliency maps against the ground-truth foreground (max-F: β² = 0.3).",
            )
        )
    return section("Results", *parts, anchor="results")


def tau_section(run: RunFolder) -> str:
    curves = {}
    for src in run.sources:
        c = run.sweep["sources"].get(src)
        keys = ("tau", "miou", "precision", "recall")
        if not isinstance(c, dict) or any(k not in c for k in keys):
            raise WsssError(f"{run.dir / 'sweep' / 'sweep.json'}: no τ curve for source {src!r}")
        curves[src] = {k: c[k] for k in keys} | {"best_tau": run.best[src]["tau"]}
    split = run.cfg["pseudo"]["sweep_split"]
    png = figures.tau_curves(curves, f"τ sweep on {split} (star: best τ)")
    return section(
        "τ curves", img(png, "mIoU, precision and recall against τ per saliency source"), anchor="tau"
    )


def ia_section(evals: dict[str, dict], split: str, prefix: str = "") -> str:
    values = {name: [res.get(k, math.nan) for k in IA_SIZES] for name, res in evals.items()}
    png = figures.ia_bars(values, f"IA-mIoU by object size ({split})")
    return section(
        "IA-mIoU by object size",
        img(png, f"IA-mIoU small/medium/large per output on {split}"),
        note("Every ground-truth instance weighs the same (seed 004); sizes by the run's bounds."),
        anchor=f"{prefix}ia",
    )


def groups_section(evals: dict[str, dict], split: str, prefix: str = "") -> str:
    """Seed 001's class groups (GT statistics) with each output's IoU, then the correlations."""
    names = list(evals)
    first = next(iter(evals.values()))
    groups = first.get("groups", {}).get("groups") or []
    if not groups:
        return section("Class groups", note(f"The evaluation of {split} has no class-group analysis."))
    by_name = {
        n: {(g["kind"], g["name"]): g for g in evals[n].get("groups", {}).get("groups", [])} for n in names
    }
    rows = [
        [
            g["kind"],
            g["name"],
            ", ".join(g.get("classes", [])),
            f"{g.get('occurrence', math.nan):.1f}",
            pct(g.get("relative_size")),
            pct(g.get("cooccurrence")),
            f"{g.get('cardinality', math.nan):.2f}",
        ]
        + [pct(by_name[n].get((g["kind"], g["name"]), {}).get("iou")) for n in names]
        for g in groups
    ]
    corr_rows = [
        [stat]
        + [signed(evals[n].get("groups", {}).get("correlation", {}).get(stat, {}).get("iou")) for n in names]
        for stat in STATS
    ]
    return section(
        f"Class groups ({split})",
        table(
            [
                "kind",
                "group",
                "classes",
                "occurrence",
                "size %",
                "co-occ. %",
                "cardinality",
                *(f"IoU {n}" for n in names),
            ],
            rows,
            text_cols=3,
            caption="Occurrence = images with the class; size = mean share of the image; co-occ. = share of "
            "its images with another class; cardinality = classes per image (seed 001).",
        ),
        table(
            ["statistic", *names],
            corr_rows,
            caption="Pearson correlation of each output's per-class IoU with the class statistic.",
        ),
        anchor=f"{prefix}groups",
    )


def class_section(evals: dict[str, dict], split: str, prefix: str = "") -> str:
    names = list(evals)
    first = next(iter(evals.values()))
    classes = [c["name"] for c in first["per_class"]]
    ious = {n: [c.get("iou", math.nan) for c in evals[n]["per_class"]] for n in names}
    stats = {c["id"]: c for c in first.get("groups", {}).get("classes", [])}
    rows = [
        [
            c["name"],
            f"{stats.get(c['id'], {}).get('occurrence', math.nan):.0f}",
            pct(stats.get(c["id"], {}).get("relative_size")),
        ]
        + [pct(ious[n][i]) for n in names]
        for i, c in enumerate(first["per_class"])
    ]
    png = figures.class_iou_bars(classes, ious, f"IoU per class ({split})")
    return section(
        f"Per-class IoU ({split})",
        img(png, f"IoU per class and output on {split}"),
        table(["class", "occurrence", "size %", *(f"IoU {n}" for n in names)], rows),
        anchor=f"{prefix}classes",
    )


def gallery_section(run: RunFolder, split: str, n: int, seed: int, prefix: str = "") -> str:
    if n <= 0:
        return ""
    ds = run.pipeline.dataset(split)
    if not ds.ids or ds.gt_path(ds.ids[0]) is None:
        return section("Gallery", note(f"Split {split} has no ground truth: no per-image scores."))
    best = run.best_source()
    pseudo = {s: run.dir / "pseudo" / s / split for s in run.sources}
    pseudo = {s: d for s, d in pseudo.items() if d.is_dir()}  # a split scored for the network only has none
    seg = [m for m in run.seg_names if (m, split) in run.evals and run.pred_dir(m, split).is_dir()]
    if seg:
        final = max(seg, key=lambda m: _num(run.evals[(m, split)].get("miou")))
        final_dir, final_name = run.pred_dir(final, split), f"prediction ({final})"
        shown = [s for s in dict.fromkeys(["none", best]) if s in pseudo]
    elif best in pseudo:
        final_dir, final_name = pseudo[best], f"pseudo ({best}, final)"
        shown = ["none"] if best != "none" and "none" in pseudo else []
    else:
        return section("Gallery", note(f"{run.dir}: no pseudo labels or predictions of {split} to show."))
    try:
        sal_dirs = {s: d for s, d in run.pipeline.saliency_sources(ds).items() if d is not None}
    except WsssError:  # a source built for the evaluated splits only: no saliency column
        sal_dirs = {}
    sal_src = best if best in sal_dirs else next(iter(sal_dirs), None)
    spec = GallerySpec(
        cam_dir=run.pipeline.cam_dir,
        base_dir=pseudo.get("none"),
        final_dir=final_dir,
        final_name=final_name,
        pseudo={f"pseudo ({s})": pseudo[s] for s in shown},
        saliency=(sal_src, sal_dirs[sal_src]) if sal_src else None,
    )
    rows = build_rows(ds, spec, n, seed)
    what = "ΔIoU" if spec.base_dir is not None else "mIoU"
    explain = (
        f"Images of {split} ranked by ΔIoU = per-image mIoU of {final_name} minus that of the no-saliency "
        f"pseudo label (none): the {n} best, the {n} worst and {n} random ones (seed {seed})."
        if spec.base_dir is not None
        else f"Images of {split} ranked by the per-image mIoU of {final_name} (no pseudo labels of the 'none' "
        f"source for {split}): "
        f"the {n} best, the {n} worst and {n} random ones (seed {seed})."
    )
    if not rows:
        return section("Gallery", note(explain), note("No image to show."))
    head = "<tr><th>id, score</th>" + "".join(f"<th>{esc(t)}</th>" for t, _, _ in rows[0].tiles) + "</tr>"
    body = []
    for r in rows:
        label = (
            f"{esc(r.group)}<br>{esc(r.image_id)}<br>{what} {100 * r.delta:+.1f}<br>"
            f"final {pct(r.final)}" + (f" / none {pct(r.base)}" if spec.base_dir is not None else "")
        )
        cells = "".join(
            f"<td>{img(data, f'{t} of {r.image_id}', mime, 'tile')}</td>" for t, data, mime in r.tiles
        )
        body.append(f"<tr><td>{label}</td>{cells}</tr>")
    return section(
        f"Gallery ({split})",
        note(explain),
        legend(ds.class_names),
        f'<table class="gallery"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>',
        anchor=f"{prefix}gallery",
    )


def run_detail_sections(run: RunFolder, split: str, gallery: int, seed: int, prefix: str = "") -> list[str]:
    """Per-split sections: IA-mIoU bars, class groups, per-class IoU, gallery (``prefix``: of their
    anchors, which must stay unique when a bed page shows a cell's sections below its own)."""
    evals = {n: run.evals[(n, split)] for n in run.outputs if (n, split) in run.evals}
    return [
        ia_section(evals, split, prefix),
        groups_section(evals, split, prefix),
        class_section(evals, split, prefix),
        gallery_section(run, split, gallery, seed, prefix),
    ]


def run_page(run_dir: Path, gallery: int, seed: int, split: str | None) -> tuple[str, dict]:
    run = RunFolder(run_dir)
    split = run.check_split(split)
    parts = [
        section("Run", _header_run(run), anchor="header"),
        results_section(run),
        tau_section(run),
        *run_detail_sections(run, split, gallery, seed),
    ]
    return page(f"wsss report: {run.name}", parts), {"kind": "run", "split": split}


# --------------------------------------------------------------------------- bed folder
ROW_KEYS = ("method", "seed", "saliency", "split", "kind", "miou", "cell")


def _load_bed(bed_dir: Path) -> tuple[dict, list[dict]]:
    bed = read_json(bed_dir / "bed.json")
    res_path = bed_dir / "results.json"
    rows = read_json(res_path).get("rows")
    if not isinstance(rows, list) or not rows:
        raise WsssError(f"{res_path}: expected a non-empty list 'rows'")
    for i, r in enumerate(rows):
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise WsssError(f"{res_path}: row {i} lacks {missing}")
        if not (bed_dir / r["cell"]).is_dir():
            raise WsssError(f"{bed_dir / r['cell']}: cell folder listed in {res_path} not found")
    return bed, rows


def _group_key(r: dict) -> tuple[str, str, str]:
    return r["method"], r["saliency"], r.get("loss") or ""


def _table1(rows: list[dict]) -> list[str]:
    """Seed 000's Table 1 per split: pseudo-label mIoU, method × saliency source (columns in
    first-seen order, so refined sources follow the plain ones)."""
    parts = []
    pseudo = [r for r in rows if r["kind"] == "pseudo"]
    methods = list(dict.fromkeys(r["method"] for r in pseudo))
    sources = list(dict.fromkeys(r["saliency"] for r in pseudo))
    for split in dict.fromkeys(r["split"] for r in pseudo):
        cell = {(m, s): [] for m in methods for s in sources}
        for r in pseudo:
            if r["split"] == split:
                cell[(r["method"], r["saliency"])].append(r.get("miou"))
        body = [[m] + [format_mean_sem(mean_sem(cell[(m, s)])) for s in sources] for m in methods]
        caption = f"Table 1: pseudo-label mIoU at the best τ on {split}, method × saliency source (%)."
        parts.append(table(["method", *sources], body, caption=caption))
    return parts


def _bed_tables(rows: list[dict]) -> str:
    parts = _table1(rows)
    for kind in dict.fromkeys(r["kind"] for r in rows):
        for split in dict.fromkeys(r["split"] for r in rows if r["kind"] == kind):
            sel = [r for r in rows if r["kind"] == kind and r["split"] == split]
            groups: dict[tuple, list[dict]] = {}
            for r in sel:
                groups.setdefault(_group_key(r), []).append(r)
            out = []
            for (method, sal, loss), rs in groups.items():
                line = [method, sal] + ([loss] if kind == "seg" else []) + [len(rs)]
                if kind == "pseudo":
                    line.append(format_mean_sem(mean_sem(r.get("tau") for r in rs), scale=1.0, digits=2))
                line += [format_mean_sem(mean_sem(r.get(k) for r in rs)) for k, _ in SCORES]
                out.append(line)
            headers = ["method", "saliency"] + (["loss"] if kind == "seg" else []) + ["seeds"]
            headers += (["τ"] if kind == "pseudo" else []) + [h for _, h in SCORES]
            what = "pseudo labels" if kind == "pseudo" else "segmentation network"
            parts.append(
                table(
                    headers,
                    out,
                    text_cols=3 if kind == "seg" else 2,
                    caption=f"{what} on {split}: mean ± s.e.m. over seeds, in percent.",
                )
            )
    return section("Results (mean ± s.e.m. over seeds)", *parts, anchor="results")


def _bed_tau(bed_dir: Path, rows: list[dict]) -> str:
    """Per method × saliency, the seeds' mIoU-vs-τ curves averaged (with an s.e.m. band)."""
    curves: dict[str, list[tuple[list, list]]] = {}
    seen = set()
    for r in rows:
        key = (r["cell"], r["saliency"])
        if r["kind"] != "pseudo" or key in seen:
            continue
        seen.add(key)
        sweep = read_json(bed_dir / r["cell"] / "sweep" / "sweep.json")
        c = sweep.get("sources", {}).get(r["saliency"])
        if c is not None:
            curves.setdefault(f"{r['method']} / {r['saliency']}", []).append((c["tau"], c["miou"]))
    out = {}
    for name, cs in curves.items():
        taus = [tuple(t) for t, _ in cs]
        if len(set(taus)) != 1:  # seeds swept different grids: no mean curve
            continue
        m = np.array([c for _, c in cs], dtype=np.float64)
        mean = m.mean(axis=0)
        sem = m.std(axis=0, ddof=1) / math.sqrt(len(m)) if len(m) > 1 else np.zeros_like(mean)
        out[name] = {
            "tau": list(taus[0]),
            "miou": mean.tolist(),
            "miou_sem": sem.tolist(),
            "best_tau": taus[0][int(np.nanargmax(mean))] if np.isfinite(mean).any() else None,
        }
    if not out:
        return section("τ curves", note("No τ sweep to average."))
    png = figures.tau_curves(out, "mIoU against τ, mean over seeds (band: ± s.e.m.; star: best mean)")
    return section("τ curves", img(png, "mean mIoU against τ per method and saliency source"), anchor="tau")


def _bed_ia(rows: list[dict], split: str) -> str:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["split"] == split:
            method, sal, loss = _group_key(r)
            name = f"{method} / {sal}" + (f" / {loss}" if r["kind"] == "seg" else "")
            groups.setdefault(name, []).append(r)
    values = {n: [mean_sem(r.get(k) for r in rs)[0] for k in IA_SIZES] for n, rs in groups.items()}
    errors = {n: [mean_sem(r.get(k) for r in rs)[1] for k in IA_SIZES] for n, rs in groups.items()}
    png = figures.ia_bars(values, f"IA-mIoU by object size ({split}), mean ± s.e.m. over seeds", errors)
    return section("IA-mIoU by object size", img(png, f"IA-mIoU small/medium/large on {split}"), anchor="ia")


def bed_page(bed_dir: Path, gallery: int, seed: int, split: str | None) -> tuple[str, dict]:
    bed, rows = _load_bed(bed_dir)
    splits = list(dict.fromkeys(r["split"] for r in rows))
    if split is not None and split not in splits:
        raise WsssError(f"{bed_dir}: split {split!r} is not in results.json; there: {splits}")
    # default: where the networks were scored, preferring a split that has pseudo labels too
    seg_splits = list(dict.fromkeys(r["split"] for r in rows if r["kind"] == "seg"))
    both = [s for s in seg_splits if any(r["kind"] == "pseudo" and r["split"] == s for r in rows)]
    split = split or (both or seg_splits or splits)[-1]
    # the detail sections show the best method × saliency (× loss) on the split, its lowest seed
    final_kind = "seg" if any(r["kind"] == "seg" and r["split"] == split for r in rows) else "pseudo"
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["split"] == split and r["kind"] == final_kind:
            groups.setdefault(_group_key(r), []).append(r)
    best_key = max(groups, key=lambda k: _num(mean_sem(r.get("miou") for r in groups[k])[0]))
    best_row = min(groups[best_key], key=lambda r: r["seed"])
    cell = RunFolder(bed_dir / best_row["cell"])
    versions = cell.record.get("versions") or {}
    header = table(
        ["", ""],
        [
            ("bed", str(bed_dir)),
            ("dataset", f"{cell.cfg['data']['kind']} at {cell.pipeline.data_root}"),
            ("methods", ", ".join(dict.fromkeys(r["method"] for r in rows))),
            ("seeds", ", ".join(str(s) for s in sorted({r["seed"] for r in rows}))),
            ("saliency sources", ", ".join(dict.fromkeys(r["saliency"] for r in rows))),
            ("splits", ", ".join(splits)),
            ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "–"),
        ],
        text_cols=2,
    )
    config = f"<details><summary>bed.json</summary><pre>{esc(json.dumps(bed, indent=2, default=str))}</pre></details>"
    detail_split = cell.check_split(split if split in cell.all_splits() else None)
    parts = [
        section("Bed", header, config, anchor="header"),
        _bed_tables(rows),
        _bed_tau(bed_dir, rows),
        _bed_ia(rows, split),
        section(
            f"Best cell: {best_key[0]} / {best_key[1]}{' / ' + best_key[2] if best_key[2] else ''}, seed {best_row['seed']}",
            note(
                f"Highest mean {final_kind} mIoU on {split}. Its run folder: {best_row['cell']}. "
                "The sections below are that run's."
            ),
        ),
        *run_detail_sections(cell, detail_split, gallery, seed, prefix="cell-"),
    ]
    name = Path(bed_dir).resolve().name
    return page(f"wsss bed report: {name}", parts), {
        "kind": "bed",
        "split": split,
        "best_cell": best_row["cell"],
    }


# --------------------------------------------------------------------------- entry point
def build_report(
    run_dir: str | Path,
    out_file: str | Path | None = None,
    gallery: int = 4,
    seed: int = 0,
    split: str | None = None,
) -> Path:
    """Write the HTML report of a run folder or a bed folder (default ``RUN_DIR/report.html``)."""
    run_dir = Path(run_dir)
    if gallery < 0:
        raise WsssError(f"gallery size must be >= 0, got {gallery}")
    if (run_dir / "bed.json").is_file() or (run_dir / "results.json").is_file():
        text, info = bed_page(run_dir, gallery, seed, split)
    elif (run_dir / "config.json").is_file() and (run_dir / "stages").is_dir():
        text, info = run_page(run_dir, gallery, seed, split)
    else:
        raise WsssError(
            f"{run_dir}: neither a `wsss run` folder (config.json and stages/) nor a bed folder "
            "(bed.json and results.json)"
        )
    out = Path(out_file) if out_file is not None else run_dir / "report.html"
    atomic_write_text(out, text)
    record = {"source": str(run_dir), "out": str(out), "gallery": gallery, "split": split, **info}
    write_run_json(out.parent, "report", record, seed=seed, name=f"{out.stem}.run.json")
    return out
