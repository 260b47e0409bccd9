"""The bed's results: tidy rows (one per method, seed, saliency, split[, loss]) read from the
finished cells' ``run.json``, seed 000's tables over them (mean ± s.e.m. over seeds), and their
files: results.csv / .json / .parquet, tables.md / tables.json."""

from __future__ import annotations

import csv
import io as _io
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsss.io import atomic_path, atomic_write_text, read_json, write_json
from wsss.metrics.stats import format_mean_sem, mean_sem
from wsss.pipeline import Pipeline

if TYPE_CHECKING:
    from wsss.bench.bed.grid import Cell

__all__ = ["COLUMNS", "SCORES", "build_tables", "cell_rows", "print_table1", "tables_markdown", "write_rows"]

SCORES = Pipeline.SCORES  # the pipeline's evaluation columns, in its order
COLUMNS = ("method", "seed", "saliency", "split", "tau", "kind", "loss", *SCORES, "seconds", "cell")


# ---------------------------------------------------------------------------- rows
def cell_rows(cells: list[Cell], out: Path) -> list[dict]:
    """Tidy rows of finished cells, in cell order (``cell``: the folder relative to ``out``)."""
    rows: list[dict] = []
    for c in cells:
        rec = read_json(c.folder / "run.json")
        results = rec.get("results") or {}
        seconds = sum(float(v) for k, v in (rec.get("timings") or {}).items() if k != "total")
        base = {"method": c.method, "seed": c.seed, "seconds": seconds, "cell": _rel(c.folder, out)}
        for r in (results.get("evaluation") or {}).values():
            rows.append(
                _row(
                    base,
                    saliency=r["saliency"],
                    split=r["split"],
                    tau=r.get("tau"),
                    kind="pseudo",
                    loss="",
                    scores=r,
                )
            )
        seg_labels = str((c.config.get("seg") or {}).get("labels", ""))
        seg_tau = ((results.get("best_tau") or {}).get(seg_labels) or {}).get("tau")
        for key, r in (results.get("seg") or {}).items():
            loss, _, split = key.partition("/")
            rows.append(
                _row(base, saliency=seg_labels, split=split, tau=seg_tau, kind="seg", loss=loss, scores=r)
            )
    return rows


def _row(base: dict, *, saliency: str, split: str, tau: Any, kind: str, loss: str, scores: dict) -> dict:
    row = {**base, "saliency": saliency, "split": split, "tau": None if tau is None else float(tau)}
    row.update(kind=kind, loss=loss)
    row.update({k: _float(scores.get(k)) for k in SCORES})
    return {k: row[k] for k in COLUMNS}


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# ---------------------------------------------------------------------------- tables
def _stat(values: list[float]) -> dict:
    ms = mean_sem(values)
    return {"mean": ms[0], "sem": ms[1], "n": ms[2], "text": format_mean_sem(ms)}


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


def build_tables(rows: list[dict], methods: list[str], sources: list[str]) -> dict:
    """Seed 000's summaries of tidy rows: Table 1 (pseudo-label mIoU, method × source) and
    IA-mIoU S/M/L per eval split, the per-seed τ, and method × loss per segmentation split.
    Every number is a :func:`mean_sem` over seeds."""
    pseudo = [r for r in rows if r["kind"] == "pseudo"]
    seg = [r for r in rows if r["kind"] == "seg"]

    def pick(pool: list[dict], **match: Any) -> list[dict]:
        return [r for r in pool if all(r[k] == v for k, v in match.items())]

    def grid(pool: list[dict], splits: list, column: str, values: list, summary) -> dict:
        """split → method → value of ``column`` → summary of the matching rows."""
        return {
            sp: {
                m: {v: summary(pick(pool, split=sp, method=m, **{column: v})) for v in values}
                for m in methods
            }
            for sp in splits
        }

    def miou(picked: list[dict]) -> dict:
        return _stat([r["miou"] for r in picked])

    splits = _unique([r["split"] for r in pseudo])
    table1 = grid(pseudo, splits, "saliency", sources, miou)
    ia_keys = ("ia_miou", "ia_miou_small", "ia_miou_medium", "ia_miou_large")
    ia = grid(
        pseudo,
        splits,
        "saliency",
        sources,
        lambda picked: {k: _stat([r[k] for r in picked]) for k in ia_keys},
    )
    tau: dict[str, dict[str, dict[str, float | None]]] = {}
    if splits:  # τ is chosen once per (cell, source), on the sweep split: any eval split shows it
        for m in methods:
            tau[m] = {
                s: {str(r["seed"]): r["tau"] for r in pick(pseudo, split=splits[0], method=m, saliency=s)}
                for s in sources
            }
    seg_splits = _unique([r["split"] for r in seg])
    losses = _unique([r["loss"] for r in seg])
    seg_table = grid(seg, seg_splits, "loss", losses, miou)
    return {
        "methods": methods,
        "sources": sources,
        "splits": splits,
        "table1": table1,
        "tau": tau,
        "ia": ia,
        "seg_labels": _unique([r["saliency"] for r in seg]),
        "seg_losses": losses,
        "seg": seg_table,
    }


def tables_markdown(tables: dict, title: str, sweep_split: str, seeds: list[int]) -> str:
    methods, sources = tables["methods"], tables["sources"]
    lines = [
        f"# Benchmark bed: `{title}`",
        "",
        f"Seeds {seeds}; scores in percent, mean ± s.e.m. over seeds (a single value: one seed).",
        "",
    ]
    for sp in tables["splits"]:
        lines += [
            f"## Table 1: pseudo-label mIoU at the best τ (`{sp}`)",
            "",
            "| method | " + " | ".join(sources) + " |",
            "|---|" + "---|" * len(sources),
        ]
        lines += [
            f"| {m} | " + " | ".join(tables["table1"][sp][m][s]["text"] for s in sources) + " |"
            for m in methods
        ]
        lines.append("")
    if tables["tau"]:
        lines += [
            f"## τ per seed (best on `{sweep_split}` unless fixed)",
            "",
            "| method | " + " | ".join(sources) + " |",
            "|---|" + "---|" * len(sources),
        ]
        for m in methods:
            cells = [
                " / ".join(f"{t:.2f}" if t is not None else "–" for t in tables["tau"][m][s].values()) or "–"
                for s in sources
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    for sp in tables["splits"]:
        lines += [
            f"## IA-mIoU by object size (`{sp}`)",
            "",
            "| method | saliency | IA-mIoU | IA-S | IA-M | IA-L |",
            "|---|---|---|---|---|---|",
        ]
        for m in methods:
            for s in sources:
                st = tables["ia"][sp][m][s]
                vals = [
                    st[k]["text"] for k in ("ia_miou", "ia_miou_small", "ia_miou_medium", "ia_miou_large")
                ]
                lines.append(f"| {m} | {s} | " + " | ".join(vals) + " |")
        lines.append("")
    losses = tables["seg_losses"]
    for sp, per_method in tables["seg"].items():
        labels = ", ".join(tables["seg_labels"])
        lines += [
            f"## Segmentation mIoU (`{sp}`, trained on `{labels}` labels)",
            "",
            "| method | " + " | ".join(losses) + " |",
            "|---|" + "---|" * len(losses),
        ]
        lines += [
            f"| {m} | " + " | ".join(per_method[m][loss]["text"] for loss in losses) + " |" for m in methods
        ]
        lines.append("")
    return "\n".join(lines)


def write_rows(out: Path, config: dict, rows: list[dict]) -> None:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {k: "" if r[k] is None else (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in COLUMNS}
        )
    atomic_write_text(out / "results.csv", buf.getvalue())
    write_json(out / "results.json", {"config": config, "rows": rows})
    try:  # Parquet is optional: only when pyarrow is installed
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    table = pa.Table.from_pylist(rows, schema=_parquet_schema(pa))
    with atomic_path(out / "results.parquet") as tmp:
        pq.write_table(table, str(tmp))


def _parquet_schema(pa: Any) -> Any:
    types = {"method": pa.string(), "seed": pa.int64(), "saliency": pa.string(), "split": pa.string(),
             "kind": pa.string(), "loss": pa.string(), "cell": pa.string()}  # fmt: skip
    return pa.schema([(k, types.get(k, pa.float64())) for k in COLUMNS])


def print_table1(tables: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    if not tables["splits"]:
        return
    sp = tables["splits"][0]
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(f"[bold]Table 1[/bold]: pseudo-label mIoU at the best τ on {sp}, mean ± s.e.m. over seeds")
    table = Table()
    table.add_column("method")
    for s in tables["sources"]:
        table.add_column(s, justify="right")
    for m in tables["methods"]:
        table.add_row(m, *(tables["table1"][sp][m][s]["text"] for s in tables["sources"]))
    console.print(table)
