"""``--executor slurm``: every cell is one SLURM job submitted through submitit, from a command
that stays on the login node and waits for them (``wsss bed`` itself runs no cell). A failed job
(the pipeline's error, a crash, a time-out, a lost node) is retried up to ``--retries`` times
(default 1): the pipeline resumes the cell stage by stage. ``--executor slurm-local`` is the same
through submitit's local executor — real job processes on this machine, for a try without SLURM.

Options: the bed config's ``slurm:`` block, each overridden by its command-line flag::

    slurm:
      partition: gpu          # --slurm-partition (default: the cluster's)
      gpus: 1                 # --slurm-gpus: GPUs per cell (default 0)
      cpus: 8                 # --slurm-cpus: CPUs per cell = the cell's torch threads (default: the cluster's)
      mem_gb: 32              # --slurm-mem (default: the cluster's)
      time: 120               # --slurm-time: minutes, or SLURM's "H:MM:SS" / "D-HH:MM" (default 120)
      params:                 # --slurm-param KEY=VALUE: any submitit parameter, as submitit names it
        slurm_account: myproject
        slurm_qos: normal

Each cell's submitit files and logs are in ``<out>/slurm/<method>/seed<k>/`` (``<job>_0_log.out``
and ``.err``), its pipeline output in ``<out>/cells/<method>/seed<k>/bed.log`` as with the local
executor."""

from __future__ import annotations

import contextlib
import math
import re
import tempfile
import time
from typing import TYPE_CHECKING, Any

from wsss.bench.bed.executors.base import Executor, error_line, run_cell, thread_budget
from wsss.io import WsssError, one_line

if TYPE_CHECKING:
    from wsss.bench.bed.grid import Bed, Cell

__all__ = ["SLURM_KEYS", "LocalSlurmExecutor", "SlurmExecutor", "check_slurm_options", "slurm_minutes"]

SLURM_KEYS = ("partition", "gpus", "cpus", "mem_gb", "time", "params")
DEFAULT_TIME_MIN = 120  # submitit's own default, 5 minutes, would end most cells early
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def slurm_minutes(value: Any) -> int:
    """A time limit as SLURM reads it — minutes, "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S" — in
    whole minutes (rounded up); ValueError when it is none of those."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(value)
        return value
    match = _TIME.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(value)
    days, first, second, third = match.groups()
    nums = [int(x) for x in (first, second, third) if x is not None]
    if days is not None:  # D-H[:M[:S]]
        hours, minutes, seconds = (nums + [0, 0])[:3]
        seconds_total = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    elif len(nums) == 3:  # H:M:S
        seconds_total = (nums[0] * 60 + nums[1]) * 60 + nums[2]
    else:  # M or M:S
        seconds_total = nums[0] * 60 + (nums[1] if len(nums) == 2 else 0)
    if seconds_total < 1:
        raise ValueError(value)
    return math.ceil(seconds_total / 60)


def check_slurm_options(block: Any, where: str) -> dict:
    """The ``slurm:`` block checked → {partition, gpus, cpus, mem_gb, time_min, params}."""

    def fail(msg: str) -> None:
        raise WsssError(f"{where}: slurm.{msg}")

    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise WsssError(f"{where}: slurm: expected a mapping with keys {list(SLURM_KEYS)}")
    unknown = sorted(set(block) - set(SLURM_KEYS))
    if unknown:
        raise WsssError(f"{where}: slurm: unknown keys {unknown}; valid: {list(SLURM_KEYS)}")

    def count(key: str, minimum: int) -> int | None:
        v = block.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < minimum):
            fail(f"{key}: expected an integer >= {minimum}, got {v!r}")
        return v

    partition = block.get("partition")
    if partition is not None and (not isinstance(partition, str) or not partition.strip()):
        fail(f"partition: expected a partition name, got {partition!r}")
    mem = block.get("mem_gb")
    if mem is not None and (not isinstance(mem, int | float) or isinstance(mem, bool) or mem <= 0):
        fail(f"mem_gb: expected a positive number of GB, got {mem!r}")
    try:
        minutes = slurm_minutes(block["time"]) if block.get("time") is not None else DEFAULT_TIME_MIN
    except ValueError:
        fail(f"time: expected minutes or SLURM's H:MM:SS / D-HH:MM, got {block['time']!r}")
    params = block.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        fail("params: expected a mapping of submitit parameters (slurm_account: …, slurm_qos: …)")
    return {
        "partition": partition,
        "gpus": count("gpus", 0) or 0,
        "cpus": count("cpus", 1),
        "mem_gb": mem,
        "time_min": minutes,
        "params": dict(params),
    }


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise WsssError(
            "--executor slurm needs submitit: pip install 'wsss[slurm]' (or `make install`)"
        ) from None
    return submitit


class SlurmExecutor(Executor):
    """One submitit job per cell on ``cluster`` (``slurm``; ``local`` for slurm-local), polled
    every ``poll_s`` seconds; at most ``jobs`` queued at once (default: every ready cell)."""

    name = "slurm"
    cluster = "slurm"
    default_jobs = None
    default_retries = 1
    poll_s = 10.0

    def __init__(self, bed: Bed, *, jobs: int | None = None, retries: int | None = None):
        super().__init__(bed, jobs=jobs, retries=retries)
        self.options = check_slurm_options(bed.cfg["slurm"], bed.where)
        self.submitit = _import_submitit()
        self.threads_per_cell = self._threads()
        self.parameters = {
            "timeout_min": self.options["time_min"],
            "nodes": 1,
            "tasks_per_node": 1,  # one process per cell: the bed launches no torchrun
            "gpus_per_node": self.options["gpus"] or None,  # no GPU: no --gpus-per-node line at all
            "cpus_per_task": self.options["cpus"],
            "mem_gb": self.options["mem_gb"],
            "slurm_partition": self.options["partition"],
            **self.options["params"],
        }
        with tempfile.TemporaryDirectory() as probe:  # bad parameters fail before anything is written
            self._make(probe, "wsss-bed-check")

    def _threads(self) -> int | None:
        """A cell's torch threads: its CPUs when set, else those of the job it runs in."""
        return self.options["cpus"]

    def _make(self, folder: Any, job_name: str) -> Any:
        """A submitit executor writing into ``folder``, with the bed's parameters."""
        try:
            executor = self.submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        except RuntimeError as e:  # submitit finds no sbatch/srun
            raise WsssError(
                f"--executor {self.name}: {error_line(e)}; --executor slurm-local tries the bed with "
                "submitit's local executor"
            ) from None
        try:
            executor.update_parameters(
                **{k: v for k, v in self.parameters.items() if v is not None}, name=job_name
            )
        except (AssertionError, NameError, TypeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WsssError(f"{self.bed.where}: slurm: {first}") from None
        return executor

    def submit(self, cell: Cell) -> Any:
        folder = self.bed.out / "slurm" / cell.method / f"seed{cell.seed}"
        executor = self._make(folder, f"wsss-bed-{cell.method}-seed{cell.seed}")
        return executor.submit(run_cell, cell.config, str(cell.folder / "bed.log"), self.threads_per_cell)

    def wait(self, handles: list[Any]) -> list[Any]:
        while True:
            ended = [job for job in handles if job.done()]
            if ended:
                return ended
            time.sleep(self.poll_s)

    def outcome(self, handle: Any) -> dict:
        """The job's result; its failure as one line: the cell's own error when the pipeline
        raised, else what SLURM says (time-out, lost node) and where the job's log is."""
        job = handle
        try:
            return job.result()
        except self.submitit.core.utils.FailedJobError as e:
            raise WsssError(
                f"{_last_error_line(str(e))} (job {job.job_id}, log {job.paths.stderr})"
            ) from None
        except self.submitit.core.utils.UncompletedJobError:
            raise WsssError(
                f"job {job.job_id} ended without a result (state {job.state}); log {job.paths.stderr}"
            ) from None

    def cancel(self, handles: list[Any]) -> None:
        for job in handles:
            with contextlib.suppress(Exception):  # best effort: the bed is stopping anyway
                job.cancel(check=False)


class LocalSlurmExecutor(SlurmExecutor):
    """``--executor slurm-local``: the slurm executor's jobs as local processes (submitit's local
    executor; partition and the ``slurm_*`` params are checked, then ignored), ``jobs`` at once
    (default 1), each with ``cpus`` threads or ``cores // jobs`` like the local executor."""

    name = "slurm-local"
    cluster = "local"
    default_jobs = 1
    poll_s = 0.5

    def _threads(self) -> int | None:
        return self.options["cpus"] or max(1, thread_budget() // self.jobs)


def _last_error_line(trace: str) -> str:
    """The cell's own error out of a failed job's report: submitit frames the job's traceback
    with dashed lines; its last line is the exception (WsssError: the message alone)."""
    parts = trace.split("-" * 22 + "\n")
    return one_line(parts[1] if len(parts) >= 3 else trace) or "the job failed"
