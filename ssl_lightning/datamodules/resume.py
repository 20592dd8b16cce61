"""Seeded, resumable loading: the epoch shuffle, the position in an epoch, and its loader.

The shuffle order of an epoch depends on ``(seed, epoch)`` alone, and the training loader
skips the batches a checkpointed run already trained on, so a resumed run sees the same
batches as an uninterrupted one. :func:`~ssl_lightning.splits.mix_seed` hashes integers into
the seeds of the shuffle and the per-batch corruption generators.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from ssl_lightning.splits import mix_seed


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
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
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


class _SkipFirst:
    """A batch sampler whose next iteration leaves out its first ``skip`` batches of indices."""

    def __init__(self, batches: Any, skip: int) -> None:
        self.batches, self.skip = batches, skip

    def __iter__(self) -> Iterator[Any]:
        skip, self.skip = self.skip, 0  # once: persistent workers iterate it again next epoch
        return itertools.islice(iter(self.batches), skip, None)

    def __len__(self) -> int:
        return len(self.batches)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that continues an epoch where a checkpointed run stopped.

    After a restore (:meth:`EpochPosition.load_state_dict`, from the datamodule's state or
    from Lightning's loader state), the first iteration of the same epoch (the sampler's
    ``epoch``, which Lightning sets before batches are fetched) leaves out the index batches
    already trained on, so the sampler's order, and with it the rest of the epoch, continues
    exactly. The skipped batches are never read or decoded: their indices are dropped before
    they reach the dataset or the workers. Lightning's ``DistributedSampler`` replacement
    keeps ``position``.

    Args:
        *args: ``DataLoader`` arguments.
        position: the datamodule's :class:`EpochPosition`.
        **kwargs: ``DataLoader`` keyword arguments.
    """

    def __init__(self, *args: Any, position: EpochPosition | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position if position is not None else EpochPosition()
        self._skip = 0

    def state_dict(self) -> dict[str, int]:
        return self.position.state_dict()

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.position.load_state_dict(state_dict)

    @property
    def _index_sampler(self) -> Any:
        batches = super()._index_sampler
        if not self._skip:
            return batches
        skip, self._skip = self._skip, 0
        return _SkipFirst(batches, skip)

    # After a restore this returns a generator rather than a _BaseDataLoaderIter; Lightning and
    # torch only ever call next() on the iterator.
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._resumed() if self.position.has_pending() else super().__iter__()

    def _resumed(self) -> Iterator[Any]:
        # A generator: this runs at the first batch, after Lightning's set_epoch, and only then
        # creates the iterator. One dropped before its first batch leaves the position pending.
        pending = self.position.take_pending()
        if pending is not None:
            epoch, batches = pending
            if getattr(self.sampler, "epoch", None) == epoch and 0 < batches < len(self):
                self._skip = batches
        yield from super().__iter__()
