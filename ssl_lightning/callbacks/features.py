"""``FeatureWriter``: the backbone's features and labels of a split, written by ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from ssl_lightning.callbacks.common import step_features
from ssl_lightning.files import atomic_write

__all__ = ["FeatureWriter"]


class FeatureWriter(BasePredictionWriter):
    """Writes what ``predict_step`` returns (``features`` ``[N, D]``, ``labels`` ``[N]``) to a file.

    With an :class:`~ssl_lightning.methods.SSLMethod` and an in-memory datamodule,
    ``trainer.predict`` embeds the clean images of ``data.predict_split`` (``test`` by
    default) in order. The file is written whole or not at all:

    - ``.npz``: ``numpy.load(path)["features"]`` (float32) and ``["labels"]`` (int64);
    - any other name: ``{"features", "labels"}`` CPU tensors, read with
      ``torch.load(path, weights_only=True)``.

    Under DDP each rank writes its own share to ``<stem>.rank<R><suffix>``.

    Args:
        output: the file to write.

    Examples:
        >>> trainer = L.Trainer(callbacks=[FeatureWriter("features.pt")])  # doctest: +SKIP
        >>> trainer.predict(model, datamodule)  # doctest: +SKIP
    """

    def __init__(self, output: str | Path = "features.pt") -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self._features: list[Tensor] = []
        self._labels: list[Tensor] = []
        self.path: Path | None = None  # the file last written

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._features, self._labels = [], []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        features, labels = step_features(prediction, "predict_step")
        self._features.append(features.detach().float().cpu())
        self._labels.append(labels.detach().long().cpu())

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._features:
            return
        features, labels = torch.cat(self._features), torch.cat(self._labels)
        path = self.output
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        if path.suffix == ".npz":
            x, y = features.numpy(), labels.numpy()
            atomic_write(path, lambda f: np.savez(f, features=x, labels=y))
        else:
            state = {"features": features, "labels": labels}
            atomic_write(path, lambda f: torch.save(state, f))
        self.path = path
        self._features, self._labels = [], []
