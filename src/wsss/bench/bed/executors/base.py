"""What every bed executor shares: the loop that starts each unfinished cell once its classifier
cell has finished, retries a failed cell up to ``retries`` times with every attempt's error kept,
and shows the progress. An executor only says how a cell starts (:meth:`Executor.submit`), which
started cells have ended (:meth:`Executor.wait`) and what came of one (:meth:`Executor.outcome`),
so a new executor is one file (local.py, slurm.py) plus its line in ``EXECUTORS``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from wsss.io import WsssError, atomic_write_text, one_line
from wsss.pipeline import run_pipeline

if TYPE_CHECKING:
    from wsss.bench.bed.grid import Bed, Cell

__all__ = ["Executor", "error_line", "headline", "run_cell", "thread_budget"]


def thread_budget() -> int:
    """Cores this process may use: its CPU affinity, capped by OMP_NUM_THREADS when set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        cores = min(cores, int(env))
    return max(1, cores)


def run_cell(config: dict, log: str, threads: int | None) -> dict:
    """Run one cell's pipeline with its output appended to ``log`` (the terminal shows the bed's
    progress only); ``threads`` None: :func:`thread_budget` of the process it runs in (a cluster
    job's allocation). Module level so that worker processes and cluster jobs can import it."""
    import torch

    threads = threads if threads is not None else thread_budget()
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        with (
            open(log, "a", encoding="utf-8") as f,
            contextlib.redirect_stdout(f),
            contextlib.redirect_stderr(f),
        ):
            print(
                f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} wsss bed: cell {config['out']} ({threads} threads)"
            )
            try:
                results = run_pipeline(config, progress=False)
            except WsssError:
                traceback.print_exc()
                raise
            except Exception as e:
                traceback.print_exc()
                raise WsssError(f"{type(e).__name__}: {e} (traceback in {log})") from None
    finally:
        torch.set_num_threads(old)
    return {"results": results, "seconds": time.perf_counter() - t0}


def headline(results: dict) -> str:
    """mIoU of each source on the first eval split: the line printed per finished cell."""
    evals = list((results.get("evaluation") or {}).values())
    if not evals:
        return "no evaluation"
    split = evals[0]["split"]
    parts = [f"{r['saliency']} {100 * float(r['miou']):.1f}" for r in evals if r["split"] == split]
    return f"mIoU {split}: " + " · ".join(parts)


def error_line(error: BaseException) -> str:
    """A failed attempt as the single line the bed prints and records."""
    text = one_line(str(error))
    if isinstance(error, WsssError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Executor(ABC):
    """Runs a bed's cells somewhere. Subclasses set ``name`` (the ``--executor`` value) and their
    defaults, and implement :meth:`submit`, :meth:`wait` and :meth:`outcome`; they may hold
    resources between ``__enter__`` and ``__exit__`` (a process pool) and stop started cells in
    :meth:`cancel` when the bed is interrupted."""

    name: ClassVar[str]
    default_jobs: ClassVar[int | None] = 1  # cells running at once; None: as many as are ready
    default_retries: ClassVar[int] = 0  # extra attempts of a failed cell
    threads_per_cell: int | None = None  # torch threads of each cell; None: decided where it runs

    def __init__(self, bed: Bed, *, jobs: int | None = None, retries: int | None = None):
        self.bed = bed
        self.jobs = jobs if jobs is not None else self.default_jobs
        self.retries = retries if retries is not None else self.default_retries
        if self.jobs is not None and self.jobs < 1:
            raise WsssError(f"--jobs must be >= 1, got {self.jobs}")
        if self.retries < 0:
            raise WsssError(f"--retries must be >= 0, got {self.retries}")

    # ------------------------------------------------------------------ what an executor provides
    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @abstractmethod
    def submit(self, cell: Cell) -> Any:
        """Start ``cell`` (its folder and cell.yaml exist); returns a handle for wait/outcome."""

    @abstractmethod
    def wait(self, handles: list[Any]) -> list[Any]:
        """Block until at least one of ``handles`` has ended; return the ended ones."""

    @abstractmethod
    def outcome(self, handle: Any) -> dict:
        """``{"results", "seconds"}`` of an ended cell, or raise with why it failed."""

    def cancel(self, handles: list[Any]) -> None:
        """Stop cells still running when the bed itself stops early (Ctrl-C); by default
        nothing: a cell run in this process has stopped with it."""
        return None

    # ------------------------------------------------------------------ the loop
    def execute(self, todo: list[tuple[Cell, bool]], progress: bool) -> dict:
        """Run the unfinished cells of ``todo``; a cell that needs a classifier waits for its
        provider. Returns {"ran", "skipped", "failed": {name: error}, "attempts": {name: n},
        "errors": {name: [error of each failed attempt]}, "threads_per_cell"}."""
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bed = self.bed
        console = Console(file=sys.stderr)  # bound now: cells run here redirect sys.stderr to their logs
        status = {c.name: bed.status(c) for c, _ in todo}
        done = {n for n, s in status.items() if s == "finished"}
        done |= {c.name for c in bed.cells if c.name not in status and bed.status(c) == "finished"}
        queue = [c for c, _ in todo if status[c.name] != "finished"]
        for c, _ in todo:
            if c.name in done:
                console.print(f"[dim]• {c.name}: finished already ({c.folder})[/dim]")
        failed: dict[str, str] = {}
        ran: list[str] = []
        attempts: dict[str, int] = {}
        errors: dict[str, list[str]] = {}

        columns = [
            TextColumn("[bold]bed"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("cells · {task.fields[left]} left ·"),
            TimeElapsedColumn(),
            TextColumn("· ETA"),
            TimeRemainingColumn(),
        ]
        bar = Progress(
            *columns, console=console, disable=not progress, redirect_stdout=False, redirect_stderr=False
        )
        task = bar.add_task("cells", total=len(queue), left=len(queue))

        def finish(c: Cell, outcome: dict | None, error: str | None) -> None:
            if error is None:
                done.add(c.name)
                ran.append(c.name)
                console.print(
                    f"[green]✓[/green] {c.name} ({outcome['seconds']:.0f} s): {headline(outcome['results'])}"
                )
            else:
                failed[c.name] = error
                console.print(f"[red]✗ {c.name}: {error}[/red]")
            bar.update(task, advance=1, left=bar.tasks[0].total - bar.tasks[0].completed - 1)

        def attempt_failed(c: Cell, error: str) -> None:
            """Record the error; queue the cell again while it has attempts left."""
            errors.setdefault(c.name, []).append(error)
            n = attempts[c.name]
            if n <= self.retries:
                console.print(f"[yellow]↻ {c.name}: attempt {n} failed ({error}); retrying[/yellow]")
                queue.insert(0, c)
            else:
                finish(c, None, error)

        def ready(c: Cell) -> bool | None:
            """True: can start; False: waits on its provider; None: its provider failed."""
            if not c.needs or c.needs in done:
                return True
            return None if c.needs in failed else False

        def prepare(c: Cell) -> None:
            c.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(c.folder / "cell.yaml", yaml.safe_dump(c.config, sort_keys=False))

        running: dict[Any, Cell] = {}
        with bar, self:
            try:
                while queue or running:
                    for c in list(queue):
                        if self.jobs is not None and len(running) >= self.jobs:
                            break
                        state = ready(c)
                        if state is None:
                            queue.remove(c)
                            finish(c, None, f"its classifier cell {c.needs} did not finish")
                        elif state:
                            queue.remove(c)
                            prepare(c)
                            attempts[c.name] = attempts.get(c.name, 0) + 1
                            try:
                                running[self.submit(c)] = c
                            except Exception as e:  # a refused submission is a failed attempt
                                attempt_failed(c, error_line(e))
                    if not running:
                        if any(ready(c) for c in queue):
                            continue  # a refused submission queued again
                        for c in list(queue):  # what is left waits on cells outside this run
                            queue.remove(c)
                            finish(c, None, f"its classifier cell {c.needs} is not part of this run")
                        break
                    for handle in self.wait(list(running)):
                        c = running.pop(handle)
                        try:
                            outcome = self.outcome(handle)
                        except Exception as e:  # a crashed worker or job included: record, go on
                            attempt_failed(c, error_line(e))
                        else:
                            finish(c, outcome, None)
            except BaseException:
                self.cancel(list(running))
                raise
        skipped = [c.name for c, _ in todo if status[c.name] == "finished"]
        return {
            "ran": ran,
            "skipped": skipped,
            "failed": failed,
            "attempts": attempts,
            "errors": errors,
            "threads_per_cell": self.threads_per_cell,
        }
