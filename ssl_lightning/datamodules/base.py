"""In-memory uint8 datamodule: whole-batch indexing on the host, corruption on the device."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ssl_lightning.datamodules.batch import Batch
from ssl_lightning.datamodules.corruptions import CleanView, Corruption, normalize

Split = Literal["train", "val"]


class InMemoryDataset(Dataset[tuple[Tensor, Tensor]]):
    """A uint8 image tensor ``[N, 3, H, W]`` with labels ``[N]`` that serves whole batches.

    ``DataLoader`` calls ``__getitems__`` with a batch of indices: one tensor index, no
    per-sample Python work. Any sampler works, Lightning's ``DistributedSampler`` included.
    The images may be memory-mapped from a file; only the rows of a batch are read.

    Args:
        images: ``[N, 3, H, W]`` uint8.
        labels: ``[N]`` integer labels (``-1`` = unlabeled).
        rows: optional ``[M]`` int64 rows of ``images`` that make up this dataset (a hold-out
            split shares the image tensor with its training split instead of copying it).
    """

    def __init__(self, images: Tensor, labels: Tensor, rows: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be [{images.shape[0]}], got {tuple(labels.shape)}")
        self.source_images = images
        self.source_labels = labels.long()
        self.rows = rows

    @property
    def images(self) -> Tensor:
        """``[M, 3, H, W]`` uint8 images of this dataset (a copy when it is a subset)."""
        return self.source_images if self.rows is None else self.source_images[self.rows]

    @property
    def labels(self) -> Tensor:
        """``[M]`` int64 labels of this dataset."""
        return self.source_labels if self.rows is None else self.source_labels[self.rows]

    def __len__(self) -> int:
        return self.source_images.shape[0] if self.rows is None else self.rows.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        row = index if self.rows is None else int(self.rows[index])
        return self.source_images[row], self.source_labels[row]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        if self.rows is not None:
            index = self.rows.index_select(0, index)
        # index_select gathers whole rows several times faster than advanced indexing.
        images = self.source_images.index_select(0, index)  # [B, 3, H, W] uint8
        return images, self.source_labels.index_select(0, index)  # [B]


def keep_batch(batch: Any) -> Any:
    """Collate function for datasets that already return whole batches."""
    return batch


def _mix_seed(*values: int) -> int:
    """Hashes integers into one 63-bit seed (splitmix64 steps): nearby inputs, unrelated seeds."""
    mask = (1 << 64) - 1
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = ((h ^ (v & mask)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 31)) * 0x94D049BB133111EB) & mask
        h ^= h >> 29
    return h >> 1


class EpochShuffleSampler(RandomSampler):
    """Shuffles with a permutation drawn from ``(seed, epoch)`` alone.

    The order of an epoch is the same on every run and after a resume, whatever else used the
    global random state. Lightning calls :meth:`set_epoch` before each epoch; without it, each
    new iteration moves on to the next epoch's order. Under DDP Lightning replaces it with its
    ``DistributedSampler`` (a ``RandomSampler`` subclass is recognized as shuffled), which is
    seeded by the global seed and the epoch in the same way.

    Args:
        data_source: the dataset (only its length is used).
        seed: base seed of the permutations.
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
        self.epoch += 1
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())


class EpochPosition:
    """How many training batches of which epoch were used, and where a resumed run restarts.

    The datamodule counts the batches the training loop actually consumed (in
    ``on_after_batch_transfer``); a loader cannot, as Lightning fetches one batch ahead.
    Loading a saved position marks it pending; the training loader's next epoch-``epoch``
    iteration takes it and skips that many batches.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.batches = 0
        self._pending: tuple[int, int] | None = None

    def count(self, epoch: int) -> None:
        """Records one consumed training batch of ``epoch``."""
        if epoch != self.epoch:
            self.epoch, self.batches = epoch, 0
        self.batches += 1

    def has_pending(self) -> bool:
        return self._pending is not None

    def take_pending(self) -> tuple[int, int] | None:
        """The restored ``(epoch, batches)`` to skip, once."""
        pending, self._pending = self._pending, None
        return pending

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.epoch, self.batches = state_dict["epoch"], state_dict["batches"]
        self._pending = (self.epoch, self.batches)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that continues an epoch where a checkpointed run stopped.

    After a restore (:meth:`EpochPosition.load_state_dict`, from the datamodule's state or
    from Lightning's loader state), the first iteration of the same epoch (the sampler's
    ``epoch``, which Lightning sets before batches are fetched) skips the batches already
    trained on, so the sampler's order, and with it the rest of the epoch, continues exactly.
    Skipping costs one tensor index per skipped batch. Lightning's ``DistributedSampler``
    replacement keeps ``position``.

    Args:
        *args: ``DataLoader`` arguments.
        position: the datamodule's :class:`EpochPosition`.
        **kwargs: ``DataLoader`` keyword arguments.
    """

    def __init__(self, *args: Any, position: EpochPosition | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position if position is not None else EpochPosition()

    def state_dict(self) -> dict[str, int]:
        return self.position.state_dict()

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.position.load_state_dict(state_dict)

    # After a restore this returns a generator rather than a _BaseDataLoaderIter; Lightning and
    # torch only ever call next() on the iterator.
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        iterator = super().__iter__()
        return self._resumed(iterator) if self.position.has_pending() else iterator

    def _resumed(self, iterator: Iterator[Any]) -> Iterator[Any]:
        # A generator: this runs at the first batch, after Lightning's set_epoch. An iterator
        # dropped before its first batch leaves the position pending for the next one.
        pending = self.position.take_pending()
        if pending is not None:
            epoch, batches = pending
            if getattr(self.sampler, "epoch", None) == epoch and 0 < batches < len(self):
                for _ in range(batches):
                    next(iterator)
        yield from iterator


def stratified_holdout(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Splits rows into ``(keep, held_out)``, holding out ``fraction`` of every class.

    ``round(fraction * N)`` rows are held out in all; each class gives ``fraction`` of its
    rows rounded down, and the rows still missing come from the classes with the largest
    remainders (largest-remainder rounding), so every class is within one row of its exact
    share. Which rows of a class go is a uniformly random choice drawn from ``seed`` alone.

    Args:
        labels: ``[N]`` int labels (``-1`` = unlabeled counts as one class).
        fraction: share to hold out, in ``(0, 1)``.
        seed: seed of the choice; the same seed gives the same split on every run.

    Returns:
        ``([N - K], [K])`` sorted int64 row indices, disjoint, together all ``N`` rows.
    """
    generator = torch.Generator().manual_seed(_mix_seed(seed))
    perm = torch.randperm(labels.shape[0], generator=generator)  # [N]
    # Rows grouped by class, in random order within each class.
    grouped = perm[torch.sort(labels[perm], stable=True).indices]  # [N]
    _, counts = torch.unique(labels, sorted=True, return_counts=True)  # [C]
    exact = counts.double() * fraction  # [C]
    take = exact.floor().long()  # [C]
    missing = math.floor(fraction * labels.shape[0] + 0.5) - int(take.sum())
    by_remainder = torch.sort(exact - take, descending=True, stable=True).indices
    take[by_remainder[:missing]] += 1
    starts = torch.cumsum(counts, 0) - counts  # [C]
    spans = zip(starts.tolist(), take.tolist(), strict=True)
    held = torch.cat([grouped[s : s + k] for s, k in spans])
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[held] = False
    return keep.nonzero()[:, 0], held.sort().values


class InMemoryDataModule(L.LightningDataModule):
    """Base of the datamodules: the whole dataset in host memory as uint8, corrupted on device.

    Subclasses implement :meth:`load_split` (and ``prepare_data`` if they download).
    Training batches get the ``corruption`` (the model's ``default_corruption()`` when
    ``None``) on the training device in ``on_after_batch_transfer``; validation batches are
    only normalized. Random parameters come from a generator seeded by ``(seed, global rank,
    batch number)``, so ranks differ, runs repeat, and a resumed run continues the same stream.
    The shuffle order depends on ``(seed, epoch)`` only, and the training loader resumes
    mid-epoch, so a run resumed from any checkpoint sees the same batches and views as an
    uninterrupted one.

    Validation uses the dataset's own test split where it has one. ``val_fraction > 0`` holds
    out that share of the training images instead (stratified by class, chosen by
    ``split_seed``, logged), e.g. for image folders without a test split, or to keep a test
    split untouched while tuning.

    Args:
        batch_size: images per batch and per process.
        corruption: training corruption; ``None`` uses the model's default.
        seed: augmentation and shuffle seed; ``None`` takes the global seed (``seed_everything``).
        num_workers: loader worker processes; batches are one tensor index, so 0 is usually
            fastest.
        val_fraction: share of the training images to hold out for validation, in ``[0, 1)``.
        split_seed: seed of the hold-out choice, independent of ``seed``.
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __init__(
        self,
        batch_size: int = 256,
        corruption: Corruption | None = None,
        seed: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.0,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size} (set data.batch_size)")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(
                f"val_fraction={val_fraction!r} is invalid: expected a share of the training "
                "images in [0, 1) (set data.val_fraction; 0 keeps them all for training)"
            )
        self.batch_size = batch_size
        self.corruption = corruption
        self.seed = seed
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.train_set: InMemoryDataset | None = None
        self.val_set: InMemoryDataset | None = None
        self._resolved_corruption: Corruption | None = None
        self._base_seed: int | None = None
        self._batches_drawn = 0
        self._position = EpochPosition()

    def load_split(self, split: Split) -> tuple[Tensor, Tensor] | None:
        """Returns ``(images uint8 [N, 3, H, W], labels int64 [N])`` of a split, or ``None``."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when unlabeled)."""
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        return int(self.train_set.source_labels.max().item()) + 1

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        loaded = self.load_split("train")
        if loaded is None:
            raise ValueError(f"{type(self).__name__} has no training split")
        images, labels = loaded
        if self.val_fraction == 0.0:
            self.train_set = InMemoryDataset(images, labels)
            val = self.load_split("val")
            self.val_set = None if val is None else InMemoryDataset(*val)
            return
        keep, held = stratified_holdout(labels.long(), self.val_fraction, self.split_seed)
        if held.numel() == 0 or keep.numel() == 0:
            raise ValueError(
                f"val_fraction={self.val_fraction} of {labels.shape[0]} training images holds "
                f"out {held.numel()} of them; set data.val_fraction so that both parts keep "
                "at least one image"
            )
        self.train_set = InMemoryDataset(images, labels, rows=keep)
        self.val_set = InMemoryDataset(images, labels, rows=held)
        classes = int(torch.unique(labels).numel())
        rank_zero_info(
            f"{type(self).__name__}: held out {held.numel()} of {labels.shape[0]} training "
            f"images ({self.val_fraction:.1%}, stratified over {classes} "
            f"{'class' if classes == 1 else 'classes'}, split_seed={self.split_seed}) as the "
            f"validation split; training uses the other {keep.numel()}. The dataset's own "
            "test split, if any, is not used."
        )

    def train_dataloader(self) -> DataLoader[Any]:
        assert self.train_set is not None, "call setup() first"
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"the training split has {len(self.train_set)} images, fewer than one batch of "
                f"{self.batch_size}; lower data.batch_size"
            )
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(self.train_set, self._resolve_seed()),
            drop_last=True,
            position=self._position,
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader[Any] | list[Any]:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, **self._loader_kwargs())

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "collate_fn": keep_batch,
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Batch:
        images, labels = batch
        x = images.float().div_(255)  # [B, 3, H, W] in [0, 1], on the device
        trainer = self.trainer
        if trainer is not None and trainer.training:
            self._position.count(getattr(trainer, "current_epoch", 0))
            out = self.train_corruption()(x, labels, self._next_generator())
        else:
            out = Batch(views=[x], labels=labels)
        return out.map_images(lambda t: normalize(t, self.mean, self.std))

    def train_corruption(self) -> Corruption:
        """The corruption applied to training batches (config's, else the model's default)."""
        if self.corruption is not None:
            return self.corruption
        if self._resolved_corruption is None:
            model = self.trainer.lightning_module if self.trainer is not None else None
            default = getattr(model, "default_corruption", None)
            self._resolved_corruption = default() if callable(default) else CleanView()
        return self._resolved_corruption

    def _resolve_seed(self) -> int:
        if self._base_seed is None:
            self._base_seed = self.seed if self.seed is not None else torch.initial_seed()
        return self._base_seed

    def _next_generator(self) -> torch.Generator:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        seed = _mix_seed(self._resolve_seed(), rank, self._batches_drawn)
        self._batches_drawn += 1
        return torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self._base_seed,
            "batches_drawn": self._batches_drawn,
            "position": self._position.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._base_seed = state_dict["seed"]
        self._batches_drawn = state_dict["batches_drawn"]
        if "position" in state_dict:
            self._position.load_state_dict(state_dict["position"])
