"""The in-memory dataset that serves whole batches, its collate function, and hold-out splits."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ssl_lightning.datamodules.resume import mix_seed


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
    generator = torch.Generator().manual_seed(mix_seed(seed))
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


def class_interleaved(labels: Tensor, seed: int) -> Tensor:
    """A seeded order of the rows in which every prefix is a class-balanced sample.

    Rows are shuffled within each class (from ``seed``), then merged by their position in
    their class: the ``r``-th of ``n_c`` rows of class ``c`` goes at ``(r + 1/2) / n_c`` (the
    Sainte-Lague divisor sequence), classes that tie in a random order. The first ``m`` rows
    then hold every class within about one row of its share ``m * n_c / N``, so
    ``limit_val_batches`` (or any prefix) scores all classes in proportion instead of the
    first ones.

    Args:
        labels: ``[N]`` int labels (``-1`` = unlabeled counts as one class).
        seed: seed of the order; the same seed gives the same order on every run.

    Returns:
        ``[N]`` int64, a permutation of the rows.
    """
    generator = torch.Generator().manual_seed(mix_seed(seed, 1))
    perm = torch.randperm(labels.shape[0], generator=generator)  # [N]
    grouped = perm[torch.sort(labels[perm], stable=True).indices]  # [N], by class
    _, inverse, counts = torch.unique(labels[grouped], return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts  # [C]
    rank = torch.arange(labels.shape[0]) - starts[inverse]  # [N], position within its class
    key = (rank.double() + 0.5) / counts[inverse].double()  # [N] in (0, 1)
    # Ties (classes of equal size) go in a random class order: sort by it, then stably by key.
    tie_order = torch.randperm(counts.shape[0], generator=generator)[inverse]  # [N]
    by_tie = torch.sort(tie_order, stable=True).indices
    return grouped[by_tie[torch.sort(key[by_tie], stable=True).indices]]
