"""Callbacks that tests plant into real launches (``--trainer.callbacks+=tests.launch_callbacks.X``
from the repository root, which ``python -m`` puts on ``sys.path``)."""

from __future__ import annotations

import json
import os
import signal as signal_module
import time
from pathlib import Path
from typing import Any

import lightning as L


class ReportRanks(L.Callback):
    """Writes, per process, where Lightning placed it: ``rank<global rank>.json`` in ``out_dir``
    with the global, local and node rank, the world size and the training steps it ran."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = {
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "global_step": trainer.global_step,
            "pid": os.getpid(),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


class RaiseOnRank(L.Callback):
    """Raises on one rank at the start of one training step (0-based), as a crashing GPU or a
    bug on one rank would; the message carries the time it was raised (``at <unix time>``)."""

    def __init__(self, rank: int = 1, step: int = 2) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(
                f"planted failure on rank {self.rank} in step {self.step} at {time.time():.3f}"
            )


class SignalAt(L.Callback):
    """Sends this process ``signal`` after optimizer step ``step`` and ends the run, as SLURM
    does before it preempts a job (SIGUSR1, then the end of the job)."""

    def __init__(self, step: int = 2, signal: str = "SIGUSR1") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal_module, self.signal))
            trainer.should_stop = True
