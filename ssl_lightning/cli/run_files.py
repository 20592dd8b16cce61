"""The files of a ``ssl-lightning`` run: checkpoints written whole and read safely, one
checkpoint at the end of every fit, no log folder left behind by a run that failed at once.

:func:`run_file_defaults` adds the first two to a trainer's plugins and callbacks (the CLI
does, and calls the third when a run fails):

- :class:`SafeCheckpointIO` writes each checkpoint to a temporary beside it and renames it
  into place (a kill while saving keeps the previous file whole; Lightning's own writer
  stages the file in the system temporary folder, which is a copy, not a rename, when that
  is another file system), and reads with ``torch.load(weights_only=True)``, naming the file
  when it is truncated or holds objects other than tensors and plain data;
- :class:`FinalCheckpoint` is Lightning's ``ModelCheckpoint`` that also saves when fit ends
  on a step it has not saved (a run shorter than its validation interval saved nothing), and
  keeps ``checkpoints/last.ckpt`` pointing at the newest save;
- :func:`remove_failed_run_log` deletes the log folder of a failed run that holds nothing but
  the configuration it wrote at its start.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ssl_lightning.backbones.weights import load_plain
from ssl_lightning.files import atomic_write

__all__ = [
    "FinalCheckpoint",
    "SafeCheckpointIO",
    "read_checkpoint",
    "remove_failed_run_log",
    "run_file_defaults",
]

_CONFIG_FILES = ("config.yaml", "hparams.yaml")
_FIX = (
    "pass --ckpt_path a complete checkpoint (an earlier one in the same checkpoints/ folder, "
    "or ckpt_path=last)"
)


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic, umask-respecting checkpoint writes and ``weights_only=True`` reads of local
    files (remote URLs go to Lightning's own ``TorchCheckpointIO``)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False or not _is_local_file_protocol(path):
            # An explicit weights_only=False is the caller's informed choice.
            return super().load_checkpoint(path, map_location, weights_only)
        return read_checkpoint(path, map_location or (lambda storage, loc: storage))


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A local checkpoint read with ``weights_only=True``; a missing, truncated or unsafe file is
    a ``FileNotFoundError`` or ``ValueError`` that names it."""
    return load_plain(Path(path), "checkpoint", _FIX, map_location=map_location)


class FinalCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also saves at the end of fit, if the last step has no save, and
    keeps ``last.ckpt`` beside its saves (``save_last="link"``: a link to the newest one, a
    copy where links are not allowed).

    The end-of-fit save is one more save of the same kind (the same file name pattern and
    top-k rule), so ``last.ckpt``, ``ckpt_path=last`` and the newest file all hold the final
    weights.
    """

    def __init__(self, save_last: bool | Literal["link"] | None = "link", **kwargs: Any) -> None:
        super().__init__(save_last=save_last, **kwargs)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0 and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            if self.monitor is None or self.monitor in candidates:
                self._save_topk_checkpoint(trainer, candidates)
            if self._last_global_step_saved != trainer.global_step and self.save_top_k != 0:
                # The monitored metric was never logged: keep the weights as last.ckpt.
                self._save_checkpoint(
                    trainer, self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
                )
            else:
                self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)


def remove_failed_run_log(trainer: L.Trainer, started: float) -> bool:
    """Deletes the log folder (``lightning_logs/version_N``) of a run that failed, if it holds
    only what the run wrote at its start: the configuration and hyper-parameter files.

    Called once the run has failed (after the loggers' last write). A folder with anything
    else, a checkpoint, metrics, or a file older than the run (a fixed logger version reused
    by a resumed run), is kept, and so is every folder on ranks other than 0.

    Args:
        trainer: the trainer of the failed run.
        started: ``time.time()`` when the run began.

    Returns:
        Whether the folder was deleted.
    """
    logger = trainer.logger
    if logger is None or not trainer.is_global_zero or not logger.log_dir:
        return False
    log_dir = Path(logger.log_dir)
    if not log_dir.is_dir():
        return False
    files = [p for p in log_dir.rglob("*") if not p.is_dir()]
    only_config = all(
        p.name in _CONFIG_FILES or (trainer.global_step == 0 and "tfevents" in p.name)
        for p in files
    )
    # A coarse file-system clock may date a new file slightly before `started`.
    new = all(p.stat().st_mtime >= started - 2.0 for p in files)
    if only_config and new:
        shutil.rmtree(log_dir, ignore_errors=True)
        return True
    return False


def run_file_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The ``plugins`` and ``callbacks`` of a trainer ``config`` with the above added.

    A configured ``CheckpointIO`` or ``ModelCheckpoint`` is kept as it is, and so are
    strategies that write checkpoints their own way (FSDP, DeepSpeed, given as objects).
    """
    plugins = _as_list(config.get("plugins"))
    strategy = config.get("strategy", "auto")
    own_io = not isinstance(strategy, str) or any(s in strategy for s in ("fsdp", "deepspeed"))
    if not own_io and not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(SafeCheckpointIO())
    callbacks = _as_list(config.get("callbacks"))
    checkpointing = config.get("enable_checkpointing") is not False
    if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        callbacks.append(FinalCheckpoint())
    return {"plugins": plugins or None, "callbacks": callbacks}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
