"""``EmbeddingMonitor``: the embeddings of validation, test and training steps collected on
every rank, and statistics of all ranks' rows logged; the collapse monitors build on it."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from ssl_lightning import distributed
from ssl_lightning.backbones.stages import Stages
from ssl_lightning.callbacks.common import (
    check_head_stages,
    head_module,
    stage_step_features,
    through_head,
    warn_if_no_validation,
)

__all__ = ["EmbeddingMonitor"]


class EmbeddingMonitor(L.Callback):
    """Collects embeddings at validation, test and (optionally) training, and logs statistics
    of all ranks' rows; subclasses name the statistics in :meth:`statistics`.

    Embeddings are the step outputs' ``features`` ``[N, D]`` (the backbone's pooled features),
    the chosen backbone ``stages``, or those features passed through the submodule ``head``
    (``"projector"``) in eval mode without gradients. At validation each rank keeps its first
    ``ceil(max_samples / world_size)`` rows (the validation order is fixed and
    class-interleaved); the statistics are taken over the rows of all ranks, the same numbers
    one process computes on those rows concatenated. Logs ``<prefix>/val_<name>`` per
    validation and ``test/<prefix>_<name>`` in ``trainer.test``; with ``every_n_train_steps``,
    also ``<prefix>/train_<name>`` every that many optimizer steps, over the newest training
    step features (augmented views, synced every N steps only; the window is not checkpointed,
    as the kNN monitor's augmented bank is not).

    Args:
        max_samples: most rows over all ranks; ``None`` keeps all.
        head: name of a submodule of the model (``"projector"``, dotted names allowed) that
            maps the backbone's features to the embeddings to watch; ``None``: the features.
        stages: backbone stages (``"last"``: the step's features; ``"all"`` or indices: pooled
            from the exported backbone, see ``backbones.stages``); only ``"last"`` with ``head``.
        prefix: prefix of the logged names.
        every_n_train_steps: also compute on the training step features every this many
            optimizer steps (for runs without validation); ``None``: never.
    """

    def __init__(
        self,
        max_samples: int | None = 25_600,
        head: str | None = None,
        stages: Stages = "last",
        prefix: str = "collapse",
        every_n_train_steps: int | None = None,
    ) -> None:
        name = type(self).__name__
        if max_samples is not None and max_samples < 2:
            raise ValueError(f"{name}: max_samples must be >= 2 or None, got {max_samples}")
        check_head_stages(name, head, stages)
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(
                f"{name}: every_n_train_steps must be >= 1 or None, got {every_n_train_steps}"
            )
        if every_n_train_steps is not None and max_samples is None:
            raise ValueError(
                f"{name}: every_n_train_steps={every_n_train_steps} keeps the newest max_samples "
                "training rows, but max_samples=None; set max_samples (e.g. 25600)"
            )
        self.max_samples, self.head, self.stages = max_samples, head, stages
        self.prefix, self.every_n_train_steps = prefix, every_n_train_steps
        # This rank's rows: the first ones of a validation or test, the newest of training.
        self._rows: dict[str, list[Tensor]] = {"eval": [], "train": []}
        self._last_train_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix, head=self.head)

    def statistics(self, rows: Tensor) -> dict[str, Tensor]:
        """``{name: scalar}`` over this rank's ``rows`` ``[n, D]`` and those of every other rank
        (all ranks call it, each with at least an empty ``[0, D]``)."""
        raise NotImplementedError

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.head is not None:
            # A missing head fails now, not at the first validation.
            head_module(pl_module, self.head, type(self).__name__)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_train_steps is None:
            warn_if_no_validation(trainer, type(self).__name__, f"{self.prefix}/val_*")

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        every = self.every_n_train_steps
        if every is None:
            return
        if outputs:  # not a step the method skipped
            self.add(pl_module, outputs, batch, "training_step", trainer.world_size, training=True)
        step = trainer.global_step
        # Every rank reaches the same step here, so all of them join the collectives.
        if step > 0 and step % every == 0 and step != self._last_train_step:
            self._last_train_step = step
            self._log(trainer, pl_module, f"{self.prefix}/train_{{}}", training=True)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self.add(pl_module, outputs, batch, "validation_step", trainer.world_size)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, f"{self.prefix}/val_{{}}")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.add(pl_module, outputs, batch, "test_step", trainer.world_size)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, f"test/{self.prefix}_{{}}")

    def add(
        self,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        hook: str,
        world_size: int = 1,
        training: bool = False,
    ) -> None:
        """Keeps this rank's share of a step's embeddings: of validation and test, the first
        rows up to its limit; of ``training``, the newest (whole oldest batches dropped)."""
        features, _ = stage_step_features(outputs, batch, pl_module, hook, self.stages)
        limit, rows = self._rank_limit(world_size), self._rows["train" if training else "eval"]
        stored = sum(r.shape[0] for r in rows)
        if not training:
            features = features[: max(0, limit - stored)]
            if features.shape[0] == 0:
                return
        rows.append(self._embed(pl_module, features))  # [n, D']
        stored += rows[-1].shape[0]
        while training and stored - rows[0].shape[0] >= limit:
            stored -= rows.pop(0).shape[0]

    def compute(
        self, world_size: int = 1, device: torch.device | None = None, training: bool = False
    ) -> dict[str, float]:
        """The statistics over every rank's evaluation (or ``training``) rows, ``{}`` with
        fewer than two rows in all (all ranks must call it)."""
        rows = self._rows["train" if training else "eval"]
        local = torch.cat(rows)[-self._rank_limit(world_size) :] if rows else None
        device = local.device if local is not None else device or torch.device("cpu")
        shape = torch.tensor(local.shape if local is not None else (0, 0), device=device)
        shapes = distributed.gather_variable(shape[None])  # [W, 2]: every rank's (n, D)
        widths = sorted(set(shapes[:, 1].tolist()) - {0})
        if len(widths) > 1:  # every rank sees the same shapes, so every rank raises
            raise ValueError(
                f"{type(self).__name__}: the ranks hold embeddings of widths {widths}; "
                "expected one width on every rank"
            )
        if int(shapes[:, 0].sum()) < 2:
            return {}
        if local is None:
            local = torch.zeros(0, widths[0], device=device)
        return {name: value.item() for name, value in self.statistics(local).items()}

    def _log(
        self, trainer: L.Trainer, pl_module: L.LightningModule, pattern: str, training: bool = False
    ) -> None:
        """Logs each statistic as ``pattern.format(name)``; forgets evaluation rows (training
        rows stay: the window moves on)."""
        values = self.compute(trainer.world_size, pl_module.device, training)
        if not training:
            self._reset()
        for name, value in values.items():
            pl_module.log(pattern.format(name), value)

    def _reset(self) -> None:
        self._rows["eval"] = []

    def _embed(self, pl_module: L.LightningModule, features: Tensor) -> Tensor:
        """``features`` ``[n, D]`` as float32 rows, through ``head`` when one is set."""
        if self.head is None:
            return features.detach().float()
        return through_head(pl_module, self.head, features, type(self).__name__)  # [n, P]

    def _rank_limit(self, world_size: int) -> int:
        if self.max_samples is None:
            return 2**62
        return math.ceil(self.max_samples / world_size)
