"""Shared test helpers: the real image sample and a quiet CPU trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

SAMPLE = Path(__file__).parent / "data" / "cifar10-sample"


def tiny_trainer(tmp_path: Path, **kwargs: Any) -> L.Trainer:
    """A CPU trainer without logger, checkpoints, progress bar or sanity check; ``kwargs`` win."""
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kwargs})


def sample_fit_args(tmp_path: Path, model: str, *options: str) -> list[str]:
    """``ssl-lightning fit`` arguments: ``model`` (with its ``options``) for 2 CPU steps on the
    real image sample, logging and caching under ``tmp_path``."""
    return [
        "fit",
        f"--model={model}",
        *options,
        "--data=ImageFolderDataModule",
        f"--data.data_dir={SAMPLE}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        "--data.batch_size=16",
        "--trainer.max_steps=2",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
