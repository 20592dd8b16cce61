"""Weighted k-nearest-neighbour accuracy of validation features against training features."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from ssl_lightning import distributed
from ssl_lightning.backbones.stages import Stages
from ssl_lightning.callbacks.common import (
    FeatureReader,
    head_prefix,
    setup_labeled_monitor,
    state_key_fields,
    warn_if_no_validation,
)
from ssl_lightning.corruptions import normalize, to_unit_float
from ssl_lightning.knn import knn_predict
from ssl_lightning.labels import LabelRange

__all__ = ["KNNMonitor"]


class KNNMonitor(L.Callback):
    """Weighted kNN top-1 accuracy of validation features against training features.

    The bank holds L2-normalized features of labeled training images, at most ``bank_size``
    across ranks:

    - ``bank="clean"`` (the standard monitor, as in InstDisc and lightly): at each validation
      the current backbone embeds the clean (un-augmented, normalized) training images of the
      datamodule, a fixed seeded sample of ``bank_size`` of them. It costs one forward pass
      over those images per validation and nothing per training step. Needs an in-memory
      datamodule (one with ``train_set``); other datamodules fall back to ``"augmented"``.
    - ``bank="augmented"``: the ``features`` ``training_step`` returned during the epoch (of
      the augmented views, from weights that changed along the epoch), newest kept: free,
      but it scores lower than the clean bank. Rebuilt every epoch and not checkpointed.

    At validation every rank gathers the banks of all ranks, classifies its own validation
    features with :func:`knn_predict`, and the correct and total counts are summed across
    ranks: the accuracy of all queries against the whole bank. Logs ``knn/val_acc``, and
    ``test/knn_acc`` in ``trainer.test``. Nothing in a training step waits for the device.

    With ``head="projector"`` the bank (clean or augmented) and the queries are the features
    through that submodule of the model, in eval mode without gradients; it then logs
    ``knn_projector/val_acc`` and checkpoints apart from a monitor of the backbone.

    Args:
        k: neighbours per query.
        temperature: vote temperature (0.1 in the InstDisc paper, 0.07 in many repos).
        bank_size: most training features in the bank, over all ranks; ``None`` keeps all.
        chunk_size: queries scored (and clean images embedded) at once.
        num_classes: number of classes; ``None`` takes the datamodule's ``num_classes``.
        prefix: prefix of the logged name; ``None``: ``"knn"``, or ``"knn_<head>"`` with a
            head. A given prefix is used as is.
        bank: ``"clean"`` training images or the epoch's ``"augmented"`` step features.
        stages: backbone stages of the features (``"last"``: the step's; ``"all"`` or indices:
            pooled from the exported backbone, see ``backbones.stages``).
        head: dotted name of the model's submodule that maps the backbone's features to the
            ones to score (``"projector"``, ``"projector.layers.0"``); ``None``: the features.
            Only with ``stages="last"``; a missing one fails at ``setup``.

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
        prefix: str | None = None,
        bank: Literal["clean", "augmented"] = "clean",
        stages: Stages = "last",
        head: str | None = None,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if bank_size is not None and bank_size < 1:
            raise ValueError(f"bank_size must be >= 1 or None, got {bank_size}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if bank not in ("clean", "augmented"):
            raise ValueError(f"bank must be 'clean' or 'augmented', got {bank!r}")
        self.k = k
        self.temperature = temperature
        self.bank_size = bank_size
        self.chunk_size = chunk_size
        self.num_classes = num_classes
        self.prefix = head_prefix(prefix, "knn", head)
        self.bank = bank
        self.stages, self.head = stages, head
        self._reader = FeatureReader("KNNMonitor", stages, head)
        self._features: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._stored = 0
        self._range = LabelRange("KNNMonitor", "set KNNMonitor(num_classes=...)")
        self._bank: tuple[Tensor, Tensor] | None = None
        self._counts: Tensor | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(**state_key_fields(self.prefix, self.head))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.num_classes = setup_labeled_monitor(trainer, pl_module, self._reader, self.num_classes)
        datamodule = getattr(trainer, "datamodule", None)
        if self.bank == "clean" and getattr(datamodule, "train_set", None) is None:
            rank_zero_warn(
                "KNNMonitor(bank='clean') needs a datamodule with in-memory training images "
                "(train_set); using the augmented training features of each epoch instead"
            )
            self.bank = "augmented"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        warn_if_no_validation(trainer, "KNNMonitor", f"{self.prefix}/val_acc")

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
        if self.bank == "augmented" and outputs:
            self.add_train(
                *self._reader.step(outputs, batch, pl_module, "training_step"), trainer.world_size
            )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._bank, self._counts = None, None
        if not trainer.sanity_checking:
            self._start_scoring(trainer, pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._bank, self._counts = None, None
        self._start_scoring(trainer, pl_module)

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
            self.score(*self._reader.step(outputs, batch, pl_module, "validation_step"))

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._bank is not None:
            self.score(*self._reader.step(outputs, batch, pl_module, "test_step"))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        accuracy = self.compute()
        if accuracy is not None:
            pl_module.log(f"{self.prefix}/val_acc", accuracy)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        accuracy = self.compute()
        if accuracy is not None:
            pl_module.log(f"test/{self.prefix}_acc", accuracy)

    def add_train(self, features: Tensor, labels: Tensor, world_size: int = 1) -> None:
        """Adds training ``features`` ``[N, D]`` and ``labels`` ``[N]`` to this rank's bank
        (unlabeled rows leave at :meth:`prepare_bank`; nothing here waits for the device)."""
        assert self.num_classes is not None, "setup() resolves num_classes"
        labels = self._range.observe(labels, self.num_classes)
        self._features.append(F.normalize(features.detach().float(), dim=1))  # [n, D]
        self._labels.append(labels)
        self._stored += labels.shape[0]
        limit = self._rank_limit(world_size)
        while self._stored - self._features[0].shape[0] >= limit:  # drop whole oldest batches
            self._stored -= self._features.pop(0).shape[0]
            self._labels.pop(0)

    def embed_clean(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fills this rank's bank with the features of its share of a fixed seeded sample of
        ``bank_size`` clean training images (all ranks together: the whole sample)."""
        datamodule: Any = getattr(trainer, "datamodule", None)
        train_set = datamodule.train_set
        count = len(train_set)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
        rows = order[: self.bank_size][trainer.global_rank :: trainer.world_size].sort().values
        self._features, self._labels, self._stored = [], [], 0
        for chunk in rows.split(self.chunk_size):
            images, labels = train_set.__getitems__(chunk.tolist())  # host tensors
            x = to_unit_float(images.to(pl_module.device))
            x = normalize(x, datamodule.mean, datamodule.std, inplace=True)
            features = self._reader.images(pl_module, x)  # [n, D'], through the head if set
            self.add_train(features, labels.to(pl_module.device), trainer.world_size)

    def prepare_bank(self, world_size: int, device: torch.device) -> None:
        """Gathers every rank's labeled bank rows (all ranks must call it); resets the counts."""
        assert self.num_classes is not None, "setup() resolves num_classes"
        self._range.check(self.num_classes)
        limit = self._rank_limit(world_size)
        local = None
        if self._features:
            features, labels = torch.cat(self._features)[-limit:], torch.cat(self._labels)[-limit:]
            keep = labels >= 0  # once per validation: a sync here is fine
            local = (features[keep], labels[keep])
        # Every rank joins the gathers, with an empty bank if it has none.
        dim = torch.tensor([local[0].shape[1] if local else 0], device=device)
        num_features = int(distributed.gather_variable(dim).max())
        self._bank, self._counts = None, None
        if num_features == 0:
            return
        if local is None:
            local = (
                torch.zeros(0, num_features, device=device),
                torch.zeros(0, dtype=torch.long, device=device),
            )
        self._bank = (distributed.gather_variable(local[0]), distributed.gather_variable(local[1]))
        self._counts = torch.zeros(2, device=device)  # [correct, total]

    def score(self, features: Tensor, labels: Tensor) -> None:
        """Classifies validation ``features`` ``[N, D]`` against the bank; counts the hits of
        the labeled ones."""
        assert self._bank is not None and self._counts is not None, "call prepare_bank first"
        assert self.num_classes is not None
        bank, bank_labels = self._bank
        if bank.shape[0] == 0:
            return
        predicted = knn_predict(
            features,
            bank,
            bank_labels,
            self.num_classes,
            self.k,
            self.temperature,
            self.chunk_size,
        )
        labeled = labels >= 0
        self._counts[0] += ((predicted == labels) & labeled).sum()
        self._counts[1] += labeled.sum()

    def compute(self) -> float | None:
        """Accuracy over every rank's queries (all ranks must call it); ``None`` if none."""
        if self._counts is None:
            return None
        counts = distributed.all_reduce_mean(self._counts)  # the ratio of means is the global one
        self._bank, self._counts = None, None
        return (counts[0] / counts[1]).item() if counts[1].item() > 0 else None

    def _start_scoring(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bank == "clean":
            self.embed_clean(trainer, pl_module)
        self.prepare_bank(trainer.world_size, pl_module.device)

    def _rank_limit(self, world_size: int) -> int:
        """Features each rank keeps: its share of ``bank_size``."""
        if self.bank_size is None:
            return 2**62
        return math.ceil(self.bank_size / world_size)
