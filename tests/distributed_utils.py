"""Runs a function on N forked CPU processes joined in a gloo process group."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(fn(rank, world_size, *args), Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Calls ``fn(rank, world_size, *args)`` on each of ``world_size`` processes; returns the
    per-rank results (saved with ``torch.save``) in rank order.

    The processes are forked: they start in milliseconds with everything already imported
    (spawned ones would import torch and Lightning again, seconds each). Each uses one thread.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        for attempt in range(3):
            try:
                mp.start_processes(
                    _worker,
                    (world_size, free_port(), out_dir, fn, args),
                    world_size,
                    start_method="fork",
                )
                break
            except mp.ProcessRaisedException as error:
                # The port chosen by free_port() can be taken before the group binds it, and
                # the group then fails to connect: retry on a new port, not on other errors.
                if attempt == 2 or "connectFullMesh" not in str(error):
                    raise
        return [
            torch.load(Path(out_dir) / f"{r}.pt", weights_only=False) for r in range(world_size)
        ]
