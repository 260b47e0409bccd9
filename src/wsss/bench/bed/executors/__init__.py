"""Where a bed's cells run: ``EXECUTORS`` maps each ``--executor`` value to its class (one file
each, sharing :class:`~wsss.bench.bed.executors.base.Executor`'s loop, retries and records)."""

from __future__ import annotations

from wsss.bench.bed.executors.base import Executor
from wsss.bench.bed.executors.local import LocalExecutor
from wsss.bench.bed.executors.slurm import LocalSlurmExecutor, SlurmExecutor

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "LocalSlurmExecutor", "SlurmExecutor"]

EXECUTORS: dict[str, type[Executor]] = {
    LocalExecutor.name: LocalExecutor,
    SlurmExecutor.name: SlurmExecutor,
    LocalSlurmExecutor.name: LocalSlurmExecutor,
}
