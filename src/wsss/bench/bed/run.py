"""``run_bed``: a bed from its config to its tables — plan the grid, run the shard's unfinished
cells on the chosen executor (or, with ``merge``, only collect), then write the tidy rows, the
tables, the run record and the report."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from wsss.bench.bed.executors import EXECUTORS, Executor
from wsss.bench.bed.grid import Bed, Cell
from wsss.bench.bed.tables import build_tables, print_table1, tables_markdown, write_rows
from wsss.io import WsssError, atomic_write_text, parse_shard, shard_record_name, write_json, write_run_json

__all__ = ["run_bed"]


def _print_dry_run(bed: Bed, todo: list[tuple[Cell, bool]], shard: tuple[int, int]) -> None:
    head = f"{len(todo)} cells" + (f" in shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "")
    print(f"{head} of bed {bed.where} (out {bed.out}):")
    width = max((len(c.name) for c, _ in todo), default=4)
    for c, prereq in todo:
        needs = f"needs {c.needs}" if c.needs else ""
        note = " (prerequisite from another shard)" if prereq else ""
        print(f"{c.index:4d}  {c.name:<{width}}  {bed.status(c):<8}  {needs}{note}".rstrip())


def _failure_line(out: Path, outcome: dict) -> str:
    """The one line a bed with failed cells exits with: each cell, its attempts, its last error."""
    parts = []
    for name, error in outcome["failed"].items():
        n = outcome.get("attempts", {}).get(name, 0)
        parts.append(f"{name}{f' (after {n} attempts)' if n > 1 else ''}: {error}")
    return (
        f"{out}: {len(parts)} cell(s) failed — " + "; ".join(parts) + " — the finished cells are kept; "
        "rerun the same command to retry the failed ones"
    )


def run_bed(
    source: str | Path | dict,
    overrides: list[str] | None = None,
    *,
    jobs: int | None = None,
    shard: str | tuple[int, int] | None = None,
    merge: bool = False,
    allow_missing: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    report: bool = True,
    executor: str = "local",
    retries: int | None = None,
    slurm: dict | None = None,
) -> dict:
    """Run (or, with ``merge``, only collect) a bed; returns {"cells", "rows", "tables", …}.

    ``executor`` runs the cells (``EXECUTORS``: local, slurm, slurm-local), ``jobs`` at once and
    each failed cell up to ``retries`` more times (None: the executor's defaults); ``slurm``
    overrides keys of the config's ``slurm:`` block (the command-line flags). A shard run (N > 1)
    writes its cells and ``run.shard<i>of<N>.json`` only; results and tables come from a full run
    or from ``merge``, which refuse missing cells unless ``allow_missing``; then ``report`` writes
    ``out/report.html`` (:func:`wsss.report.build_report`). Failed cells end the call with one
    WsssError line naming them, after everything else is recorded.
    """
    t0 = time.perf_counter()
    if jobs is not None and jobs < 1:
        raise WsssError(f"--jobs must be >= 1, got {jobs}")
    if retries is not None and retries < 0:
        raise WsssError(f"--retries must be >= 0, got {retries}")
    if executor not in EXECUTORS:
        raise WsssError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if merge and shard is not None:
        raise WsssError("--merge collects every cell; it takes no --shard")
    shard_t = parse_shard(shard) if shard is not None else (0, 1)  # never RANK/WORLD_SIZE here
    bed = Bed(source, overrides)
    if slurm:
        bed.apply_slurm_options(slurm)
    todo = bed.select(shard_t)
    if dry_run:
        _print_dry_run(bed, todo, shard_t)
        return {"cells": [c.name for c, _ in todo]}

    out = bed.out
    runner: Executor | None = None
    if not merge:  # before anything is written: a missing submitit or SLURM is one line
        runner = EXECUTORS[executor](bed, jobs=jobs, retries=retries)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bed.json", bed.record())
    outcome: dict[str, Any] = {"ran": [], "skipped": [], "failed": {}}
    if runner is not None:
        bed.prepare_data(progress)
        outcome = runner.execute(todo, progress)
    extra = {
        "mode": "merge" if merge else "run",
        "shard": f"{shard_t[0]}/{shard_t[1]}",
        "executor": None if merge else executor,
        "jobs": runner.jobs if runner is not None else jobs,
        "retries": runner.retries if runner is not None else None,
        **outcome,
        "cells": {c.name: bed.status(c) for c, _ in (todo if not merge else [(c, False) for c in bed.cells])},
    }
    extra["cells"].update({name: "failed" for name in outcome["failed"]})
    if shard_t[1] > 1:
        write_run_json(out, "bed", bed.record(), timings={"total": time.perf_counter() - t0}, extra=extra,
                       name=shard_record_name(shard_t))  # fmt: skip
        if outcome["failed"]:
            raise WsssError(_failure_line(out, outcome))
        return {"cells": [c.name for c, _ in todo], **outcome}

    finished = [c for c in bed.cells if extra["cells"][c.name] == "finished"]
    missing = [c for c in bed.cells if extra["cells"][c.name] != "finished"]
    extra["missing"] = [c.name for c in missing]
    record = bed.record()
    if outcome["failed"] and not allow_missing:
        write_run_json(out, "bed", record, timings={"total": time.perf_counter() - t0}, extra=extra)
        raise WsssError(_failure_line(out, outcome))
    if missing:
        listing = ", ".join(f"{c.name} ({extra['cells'][c.name]})" for c in missing)
        if not allow_missing:
            raise WsssError(
                f"{out}: {len(missing)} of {len(bed.cells)} cells not finished: {listing}; "
                "run them (or copy their shards' cells/ here), or pass --allow-missing"
            )
        print(f"warning: collecting without {len(missing)} missing cell(s): {listing}", file=sys.stderr)
    rows = bed.rows(finished)
    write_rows(out, record, rows)
    tables = build_tables(rows, bed.order, bed.columns)
    write_json(out / "tables.json", tables)
    md = tables_markdown(tables, str(out), bed.base["pseudo"]["sweep_split"], bed.cfg["seeds"])
    atomic_write_text(out / "tables.md", md)
    write_run_json(out, "bed", record, timings={"total": time.perf_counter() - t0}, extra=extra)
    print_table1(tables)
    print(f"results: {out / 'results.csv'} · tables: {out / 'tables.md'}", file=sys.stderr)
    if report and rows:
        from wsss.report import build_report

        print(f"report: {build_report(out)}", file=sys.stderr)
    if outcome["failed"]:  # --allow-missing: the others' tables are written, the run still failed
        raise WsssError(_failure_line(out, outcome))
    return {"cells": [c.name for c in bed.cells], "rows": rows, "tables": tables, **outcome}
