"""Multi-process helpers for ``torchrun``: one process per GPU (or several on CPU).

Every function is a no-op in a single process, so stage code can call them
unconditionally. The process group is created from torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) only when
``WORLD_SIZE > 1``: NCCL when the process trains on CUDA, gloo otherwise.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from wsss.io import WsssError

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_initialized() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 outside torchrun)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(value)
    except ValueError:
        raise WsssError(f"WORLD_SIZE={value!r}: not an integer") from None
    if world < 1:
        raise WsssError(f"WORLD_SIZE={world}: must be >= 1")
    return world


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised group, else (0, 1)."""
    if is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: torch.device | None = None, timeout_s: float = 1800.0) -> bool:
    """Join torchrun's process group when ``WORLD_SIZE > 1``; True if this call created it.

    The backend follows the device the process trains on (NCCL needs its GPU selected first).
    The group lives until the process exits (destroyed then): under torchrun a process cannot
    join a second time after leaving, and one process may train several models in a row.
    """
    world = env_world_size()
    if world == 1 or is_initialized():
        return False
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise WsssError(
            f"WORLD_SIZE={world}: {', '.join(missing)} not set; launch with "
            "`torchrun --nproc_per_node N -m wsss ...`"
        )
    if not torch_dist.is_available():
        raise WsssError(f"WORLD_SIZE={world}: this PyTorch build has no torch.distributed")
    device = device if device is not None else torch.device("cpu")
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(device)
    torch_dist.init_process_group(
        backend=backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s)
    )
    atexit.register(_destroy_at_exit)
    return True


def _destroy_at_exit() -> None:
    # no barrier: ranks may legitimately finish at different times (rank 0 writing reports)
    if is_initialized():
        torch_dist.destroy_process_group()


def cleanup() -> None:
    """Destroy the process group now, once every rank got here (for code that is done with it)."""
    if is_initialized():
        barrier()
        torch_dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank, e.g. so that none reads a file rank 0 is still writing."""
    if not is_initialized():
        return
    if torch_dist.get_backend() == "nccl":
        torch_dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        torch_dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over ranks (identical result on every rank)."""
    if not is_initialized():
        return values
    reduced = values.detach().clone()
    torch_dist.all_reduce(reduced, op=torch_dist.ReduceOp.SUM)
    return reduced / torch_dist.get_world_size()


def broadcast_buffers(modules: Iterable[nn.Module], src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP syncs buffers at the start of each forward, so after the last step every rank holds
    statistics updated by its own last batch; this makes the final states identical.
    """
    if not is_initialized():
        return
    for module in modules:
        for buffer in module.buffers():
            torch_dist.broadcast(buffer.data, src=src)
