"""Launching 2 gloo ranks under torchrun from a test (shared by the DDP tests of every stage)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

# The start of every worker script: one thread, a record of every file the rank writes
# (every atomic write ends in os.replace), so tests can check that only rank 0 writes, and model_hash.
WORKER_PRELUDE = """
import hashlib, json, os, sys
from pathlib import Path

import torch

torch.set_num_threads(1)
written = []
_replace = os.replace

def recording_replace(src, dst, *args, **kwargs):  # every atomic write ends in os.replace
    written.append(str(dst))
    return _replace(src, dst, *args, **kwargs)

os.replace = recording_replace

def model_hash(model):  # the weights' bytes, to compare ranks and runs
    digest = hashlib.sha1()
    state = model.state_dict()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
"""


def torchrun(*args: str) -> list[str]:
    """``python -m torch.distributed.run`` (= ``torchrun``) with 2 local ranks on a free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port), *args,
    ]  # fmt: skip


def run_torchrun(command: list[str], timeout_s: float = 300) -> subprocess.CompletedProcess:
    """Run in a session of its own, so that a hang kills the workers too, not only torchrun."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun hung for {timeout_s} s:\n{stdout[-3000:]}{stderr[-5000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
