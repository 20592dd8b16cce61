"""The in-memory dataset that serves whole batches, and its collate function."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset


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
