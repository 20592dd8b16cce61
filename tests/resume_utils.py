"""Straight vs interrupted-and-resumed runs of a method on the real image sample."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ssl_lightning.datamodules import Corruption, ImageFolderDataModule
from ssl_lightning.methods import SSLMethod
from tests.helpers import SAMPLE, tiny_trainer


class _StopAt(Callback):
    """Ends the run after ``step`` optimizer steps, as a crash or a time limit would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def _fit(
    make_model: Callable[[], SSLMethod],
    root: Path,
    total: int,
    stop: int | None = None,
    ckpt_path: Path | None = None,
    corruption: Corruption | None = None,
    batch_size: int = 16,
    cache_dir: Path | None = None,
    **trainer_kwargs: Any,
) -> SSLMethod:
    L.seed_everything(0, verbose=False)
    model = make_model()
    callbacks: list[Callback] = []
    if stop is not None:
        callbacks = [_StopAt(stop), ModelCheckpoint(root / "ckpt", every_n_train_steps=stop)]
    trainer = tiny_trainer(
        root,
        max_steps=total,
        limit_val_batches=0,
        enable_checkpointing=stop is not None,
        callbacks=callbacks,
        **trainer_kwargs,
    )
    data = ImageFolderDataModule(
        SAMPLE,
        batch_size=batch_size,
        cache_dir=cache_dir or root.parent / "cache",
        corruption=corruption,
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model


def straight_and_resumed(
    make_model: Callable[[], SSLMethod],
    tmp_path: Path,
    total: int,
    stop: int,
    corruption: Corruption | None = None,
    batch_size: int = 16,
    cache_dir: Path | None = None,
    **trainer_kwargs: Any,
) -> tuple[SSLMethod, SSLMethod, Path]:
    """Fits ``total`` steps straight, and ``stop`` steps + a checkpoint + a resume from it for
    the rest (the same schedule: the first part stops early, as a crash would), with
    ``corruption`` (the method's default when ``None``) on batches of ``batch_size`` images,
    decoded into ``cache_dir`` (``tmp_path / "cache"`` when ``None``). Returns both final models
    and the checkpoint written at ``stop``. ``trainer_kwargs`` go to every trainer
    (``devices=2, strategy="ddp"`` inside a 2-process group)."""
    kwargs = dict(
        corruption=corruption, batch_size=batch_size, cache_dir=cache_dir, **trainer_kwargs
    )
    straight = _fit(make_model, tmp_path / "straight", total, **kwargs)
    _fit(make_model, tmp_path / "first", total, stop=stop, **kwargs)
    (ckpt,) = (tmp_path / "first" / "ckpt").glob("*.ckpt")
    resumed = _fit(make_model, tmp_path / "resumed", total, ckpt_path=ckpt, **kwargs)
    return straight, resumed, ckpt


def assert_same_state(a: SSLMethod, b: SSLMethod) -> None:
    """Every parameter and buffer (EMA teachers, centers, BatchNorm statistics) is identical."""
    state_b = b.state_dict()
    for key, value in a.state_dict().items():
        assert torch.equal(value, state_b[key]), f"{key} differs"
