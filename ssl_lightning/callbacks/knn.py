"""Weighted k-nearest-neighbour accuracy of validation features against training features."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_lightning import distributed
from ssl_lightning.callbacks.linear_probe import datamodule_num_classes, step_features
from ssl_lightning.evaluation.knn import knn_predict

__all__ = ["KNNMonitor", "gather_variable"]


def gather_variable(x: Tensor) -> Tensor:
    """Concatenates ``x`` ``[n_r, ...]`` from all ranks in rank order, ``n_r`` may differ.

    Built on :func:`ssl_lightning.distributed.gather`: sizes first, then every rank pads to
    the largest. Without a process group this returns ``x``.
    """
    if not distributed.is_distributed():
        return x
    sizes = distributed.gather(torch.tensor([x.shape[0]], device=x.device))  # [W]
    largest = int(sizes.max())
    padded = x.new_zeros(largest, *x.shape[1:])
    padded[: x.shape[0]] = x
    parts = distributed.gather(padded).split(largest)  # W x [largest, ...]
    return torch.cat([part[: int(n)] for part, n in zip(parts, sizes.tolist(), strict=True)])


class KNNMonitor(L.Callback):
    """Weighted kNN top-1 accuracy of validation features against this epoch's training features.

    During each training epoch the monitor stores the L2-normalized ``features`` and
    ``labels`` that ``training_step`` returns (labeled ones only, at most ``bank_size`` in
    total across ranks, newest kept). At validation, every rank gathers the banks of all
    ranks, classifies its own validation features with :func:`knn_predict`, and the correct
    and total counts are summed across ranks: the accuracy of all queries against the whole
    bank. Logs ``knn/val_acc``.

    The bank is rebuilt every epoch and is not stored in checkpoints (it can hold hundreds
    of MB): after a mid-epoch resume, that epoch's bank starts at the resume point.

    Args:
        k: neighbours per query.
        temperature: vote temperature (0.1 in the InstDisc paper, 0.07 in many repos).
        bank_size: most training features kept, over all ranks; ``None`` keeps the epoch.
        chunk_size: queries scored at once (memory: ``chunk_size * bank`` floats).
        num_classes: number of classes; ``None`` takes the datamodule's ``num_classes``.
        prefix: prefix of the logged name.

    Examples:
        >>> trainer = L.Trainer(callbacks=[KNNMonitor(k=200, bank_size=50_000)])  # doctest: +SKIP
    """

    def __init__(
        self,
        k: int = 200,
        temperature: float = 0.1,
        bank_size: int | None = 50_000,
        chunk_size: int = 1024,
        num_classes: int | None = None,
        prefix: str = "knn",
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if bank_size is not None and bank_size < 1:
            raise ValueError(f"bank_size must be >= 1 or None, got {bank_size}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.k = k
        self.temperature = temperature
        self.bank_size = bank_size
        self.chunk_size = chunk_size
        self.num_classes = num_classes
        self.prefix = prefix
        self._features: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._stored = 0
        self._bank: tuple[Tensor, Tensor] | None = None
        self._counts: Tensor | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.num_classes is None:
            self.num_classes = datamodule_num_classes(trainer, "KNNMonitor")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._features, self._labels, self._stored = [], [], 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.add_train(*step_features(outputs, "training_step"), trainer.world_size)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._bank, self._counts = None, None
        if not trainer.sanity_checking:
            self.prepare_bank(trainer.world_size, pl_module.device)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._bank is not None:
            self.score(*step_features(outputs, "validation_step"))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        accuracy = self.compute()
        if accuracy is not None:
            pl_module.log(f"{self.prefix}/val_acc", accuracy)

    def add_train(self, features: Tensor, labels: Tensor, world_size: int = 1) -> None:
        """Adds the labeled rows of training ``features`` ``[N, D]`` to this rank's bank."""
        keep = labels >= 0
        features, labels = features[keep], labels[keep]
        if labels.numel() == 0:
            return
        assert self.num_classes is not None, "setup() resolves num_classes"
        if int(labels.max()) >= self.num_classes:
            raise ValueError(
                f"KNNMonitor got label {int(labels.max())} with num_classes={self.num_classes}; "
                f"pass KNNMonitor(num_classes=...) of at least {int(labels.max()) + 1}"
            )
        self._features.append(F.normalize(features.detach().float(), dim=1))  # [n, D]
        self._labels.append(labels)
        self._stored += labels.shape[0]
        limit = self._rank_limit(world_size)
        while self._stored - self._features[0].shape[0] >= limit:  # drop whole oldest batches
            self._stored -= self._features.pop(0).shape[0]
            self._labels.pop(0)

    def prepare_bank(self, world_size: int, device: torch.device) -> None:
        """Gathers every rank's bank (all ranks must call it) and resets the counts."""
        limit = self._rank_limit(world_size)
        local = (
            (torch.cat(self._features)[-limit:], torch.cat(self._labels)[-limit:])
            if self._features
            else None
        )
        # Every rank joins the gathers, with an empty bank if it has none.
        dim = torch.tensor([local[0].shape[1] if local else 0], device=device)
        num_features = int(gather_variable(dim).max())
        self._bank, self._counts = None, None
        if num_features == 0:
            return
        if local is None:
            local = (
                torch.zeros(0, num_features, device=device),
                torch.zeros(0, dtype=torch.long, device=device),
            )
        self._bank = (gather_variable(local[0]), gather_variable(local[1]))
        self._counts = torch.zeros(2, device=device)  # [correct, total]

    def score(self, features: Tensor, labels: Tensor) -> None:
        """Classifies validation ``features`` ``[N, D]`` against the bank; counts the hits."""
        assert self._bank is not None and self._counts is not None, "call prepare_bank first"
        assert self.num_classes is not None
        keep = labels >= 0
        bank, bank_labels = self._bank
        predicted = knn_predict(
            features[keep],
            bank,
            bank_labels,
            self.num_classes,
            self.k,
            self.temperature,
            self.chunk_size,
        )
        self._counts[0] += (predicted == labels[keep]).sum()
        self._counts[1] += predicted.shape[0]

    def compute(self) -> float | None:
        """Accuracy over every rank's queries (all ranks must call it); ``None`` if none."""
        if self._counts is None:
            return None
        counts = distributed.all_reduce_mean(self._counts)  # the ratio of means is the global one
        self._bank, self._counts = None, None
        return (counts[0] / counts[1]).item() if counts[1].item() > 0 else None

    def _rank_limit(self, world_size: int) -> int:
        """Features each rank keeps: its share of ``bank_size``."""
        if self.bank_size is None:
            return 2**62
        return math.ceil(self.bank_size / world_size)
