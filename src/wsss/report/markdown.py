"""``report.md`` and the terminal summary of a ``wsss run`` folder: the pseudo-label and
segmentation tables, saliency quality, the τ plot, per-class IoU and timings."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from wsss.io import atomic_write_text, read_json
from wsss.metrics.stats import format_pct

console = Console(stderr=True)


@dataclass
class RunReport:
    """What a finished (or resumed) run knows about itself, rendered as Markdown and tables."""

    out: Path
    cfg: dict
    data_root: Path
    ia_bounds: tuple[int, int]
    results: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)

    SCORES = (
        "miou",
        "ia_miou",
        "ia_miou_small",
        "ia_miou_medium",
        "ia_miou_large",
        "precision_mean",
        "recall_mean",
    )

    def summary_rows(self) -> list[list[str]]:
        return [
            [r["saliency"], r["split"], f"{r['tau']:.2f}"] + [format_pct(r.get(k)) for k in self.SCORES]
            for r in self.results.get("evaluation", {}).values()
        ]

    HEADERS = ["saliency", "split", "τ", "mIoU", "IA-mIoU", "IA-S", "IA-M", "IA-L", "prec", "recall"]
    SEG_HEADERS = ["loss", "split", "mIoU", "IA-mIoU", "IA-S", "IA-M", "IA-L", "prec", "recall"]

    def seg_rows(self) -> list[list[str]]:
        return [
            [r["method"], r["split"]] + [format_pct(r.get(k)) for k in self.SCORES]
            for r in (self.results.get("seg") or {}).values()
        ]

    def print_summary(self) -> None:
        table = Table(title=f"Pseudo labels at the best τ (chosen on {self.cfg['pseudo']['sweep_split']})")
        for h in self.HEADERS:
            table.add_column(h, justify="right" if h not in ("saliency", "split") else "left")
        for row in self.summary_rows():
            table.add_row(*row)
        wide = Console(width=None if sys.stdout.isatty() else 120)  # logs: no truncated columns
        wide.print(table)
        if self.results.get("seg"):
            seg = Table(title=f"Segmentation network trained on `{self.cfg['seg']['labels']}` labels")
            for h in self.SEG_HEADERS:
                seg.add_column(h, justify="right" if h not in ("loss", "split") else "left")
            for row in self.seg_rows():
                seg.add_row(*row)
            wide.print(seg)
        console.print(f"total {self.timings.get('total', 0.0):.0f} s — report: {self.out / 'report.md'}")

    def write(self) -> Path:
        lines = [
            f"# wsss run: `{self.out}`",
            "",
            f"Dataset `{self.cfg['data']['kind']}` at `{self.data_root}`, CAM method `{self.cfg['cam']['method']}`, "
            f"seed {self.cfg['seed']}. IA-mIoU size bounds {self.ia_bounds} px.",
            "",
            f"## Pseudo labels at the best τ (chosen on `{self.cfg['pseudo']['sweep_split']}`)",
            "",
            "| " + " | ".join(self.HEADERS) + " |",
            "|" + "---|" * len(self.HEADERS),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in self.summary_rows()]
        lines += ["", "Scores in percent. IA-S/M/L: instance-aware mIoU of small/medium/large objects.", ""]
        if self.results.get("seg"):
            lines += [
                f"## Segmentation network (stage 4), trained on `{self.cfg['seg']['labels']}` labels",
                "",
                "| " + " | ".join(self.SEG_HEADERS) + " |",
                "|" + "---|" * len(self.SEG_HEADERS),
            ]
            lines += ["| " + " | ".join(r) + " |" for r in self.seg_rows()] + [""]
        lines += self._saliency_section()
        lines += ["## τ sweep", "", "![τ sweep](sweep/sweep.png)", "", "Full numbers: `sweep/sweep.csv`.", ""]
        lines += self._class_section()
        lines += ["## Timings", "", "| stage | seconds |", "|---|---|"]
        lines += [
            f"| {k}{' (earlier run)' if k in self.resumed else ''} | {v:.1f} |"
            for k, v in self.timings.items()
        ]
        if self.resumed:
            lines += ["", "`total` is this invocation's wall time; stages marked *earlier run* were skipped."]
        atomic_write_text(self.out / "report.md", "\n".join(lines) + "\n")
        return self.out / "report.md"

    def _saliency_section(self) -> list[str]:
        quality = self.results.get("saliency_quality") or {}
        if not quality:
            return []
        lines = [
            "## Saliency sources",
            "",
            "Against the ground-truth foreground: MAE (lower is better), max F-measure (β² = 0.3) and "
            "IoU of the map thresholded at 0.5, in percent except MAE.",
            "",
            "| source | split | MAE | max-F | IoU@0.5 |",
            "|---|---|---|---|---|",
        ]
        for src, per_split in quality.items():
            for split, q in per_split.items():
                lines.append(
                    f"| {src} | {split} | {q['mae']:.3f} | {format_pct(q['max_f'])} | {format_pct(q['iou'])} |"
                )
        return lines + [""]

    def _class_section(self) -> list[str]:
        """Per-class IoU for every saliency source next to seed 001's class statistics."""
        split = self.cfg["pseudo"]["sweep_split"]
        evals = {}
        for r in self.results.get("evaluation", {}).values():
            if r["split"] == split:
                path = self.out / "eval" / f"{r['saliency']}_{split}.json"
                if path.is_file():
                    evals[r["saliency"]] = read_json(path)
        if not evals:
            return []
        first = next(iter(evals.values()))
        stats = {c["id"]: c for c in first.get("groups", {}).get("classes", [])}
        sources = list(evals)
        lines = [
            f"## Per class (`{split}`)",
            "",
            "Occurrence = images with the class; size = mean share of the image; co-occ. = share of its "
            "images with another class (seed 001, Table 1). IoU in percent per saliency source.",
            "",
            "| class | occurrence | size % | co-occ. % | " + " | ".join(f"IoU {s}" for s in sources) + " |",
            "|---|---|---|---|" + "---|" * len(sources),
        ]
        for c in first["per_class"]:
            st = stats.get(c["id"], {})
            ious = [
                format_pct(next(x["iou"] for x in evals[s]["per_class"] if x["id"] == c["id"]))
                for s in sources
            ]
            lines.append(
                f"| {c['name']} | {st.get('occurrence', float('nan')):.0f} | {format_pct(st.get('relative_size'))} | "
                f"{format_pct(st.get('cooccurrence'))} | " + " | ".join(ious) + " |"
            )
        lines += ["", "Pearson correlation over the foreground classes with each source's IoU:", ""]
        lines += ["| statistic | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
        for stat in ("occurrence", "relative_size", "cooccurrence", "cardinality"):
            row = [
                evals[s].get("groups", {}).get("correlation", {}).get(stat, {}).get("iou") for s in sources
            ]
            lines.append(
                f"| {stat} | " + " | ".join("–" if v is None or v != v else f"{v:+.2f}" for v in row) + " |"
            )
        return lines + [""]


SCORES = RunReport.SCORES


def write_run_report(out: Path, cfg: dict, data_root: Path, ia_bounds: tuple[int, int], results: dict,
                     timings: dict, resumed: list[str]) -> Path:  # fmt: skip
    return RunReport(Path(out), cfg, Path(data_root), ia_bounds, results, timings, resumed).write()


def print_summary(cfg: dict, results: dict, timings: dict, out: Path) -> None:
    RunReport(Path(out), cfg, Path(cfg["data"].get("root") or out), (0, 0), results, timings).print_summary()
