"""``--executor local`` (the default): cells as processes of this machine — in this process with
``--jobs 1``, else in a pool of N spawned processes, each with ``cores // N`` torch threads (the
core budget is the CPU affinity, capped by ``OMP_NUM_THREADS`` when set). A failed cell is not
retried unless ``--retries`` asks for it."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from typing import TYPE_CHECKING

from wsss.bench.bed.executors.base import Executor, run_cell, thread_budget

if TYPE_CHECKING:
    from wsss.bench.bed.grid import Bed, Cell

__all__ = ["LocalExecutor"]


class LocalExecutor(Executor):
    """Cells in this process (``jobs`` 1) or in ``jobs`` spawned worker processes."""

    name = "local"
    default_jobs = 1
    default_retries = 0

    def __init__(self, bed: Bed, *, jobs: int | None = None, retries: int | None = None):
        super().__init__(bed, jobs=jobs, retries=retries)
        self.threads_per_cell = max(1, thread_budget() // self.jobs)
        self._pool: cf.ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalExecutor:
        if self.jobs > 1:
            ctx = mp.get_context("spawn")  # fork would copy torch's thread pools mid-flight
            self._pool = cf.ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def submit(self, cell: Cell) -> cf.Future:
        log = str(cell.folder / "bed.log")
        if self._pool is not None:
            return self._pool.submit(run_cell, cell.config, log, self.threads_per_cell)
        future: cf.Future = cf.Future()  # one job: the cell runs here, now, and its future is done
        try:
            future.set_result(run_cell(cell.config, log, self.threads_per_cell))
        except Exception as e:
            future.set_exception(e)
        return future

    def wait(self, handles: list[cf.Future]) -> list[cf.Future]:
        finished, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        return list(finished)

    def outcome(self, handle: cf.Future) -> dict:
        return handle.result()

    def cancel(self, handles: list[cf.Future]) -> None:
        for future in handles:
            future.cancel()  # those not started yet; a running worker ends with the pool
