"""The dataset over JPEG shards: whole batches decoded in the loader, or left encoded for the
training device to decode.

It serves rows by the same indices as :class:`InMemoryDataset` (the same samplers, the same
epoch order, the same rank split under DDP, the same mid-epoch resume); only where the pixels
come from differs: each row's JPEG bytes are read from its shard
(:class:`~ssl_lightning.datamodules.shards.JpegShards`) when a batch asks for it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ssl_lightning.datamodules.dataset import InMemoryDataset
from ssl_lightning.datamodules.jpeg_decode import decode_batch
from ssl_lightning.datamodules.shards import JpegShards, read_manifest

_CHUNK = 256  # images decoded at a time by ShardDataset.images


@dataclass
class EncodedJpegs:
    """A batch still encoded, as the loader yields it when the training device decodes.

    Attributes:
        data: ``B`` uint8 CPU tensors, the JPEG bytes of each image.
        rows: ``B`` rows of the shards they come from (for messages).
    """

    data: list[Tensor]
    rows: list[int]


class ShardDataset(InMemoryDataset):
    """The images of JPEG shards, served a whole batch at a time like :class:`InMemoryDataset`.

    ``__getitems__`` reads each row's bytes (one positioned read, CRC-checked) and decodes
    the batch with one ``decode_jpeg`` call into ``[B, 3, size, size]`` uint8 center squares
    (:func:`~ssl_lightning.datamodules.jpeg_decode.decode_batch`), in the loader's workers; a
    copy made by :meth:`encoded` yields the bytes instead (:class:`EncodedJpegs`), for
    :meth:`decode` on the training device after the transfer.

    Args:
        shards: the split's shards.
        labels: ``[N]`` labels of the shards' rows (``-1`` = unlabeled).
        rows: optional ``[M]`` int64 rows of the shards that make up this dataset.
        size: side of the decoded images.
        skip_bad_files: leave undecodable images out of their batch (with a warning naming
            shard, index and file) instead of raising.
    """

    def __init__(
        self,
        shards: JpegShards,
        labels: Tensor,
        rows: Tensor | None = None,
        size: int = 224,
        skip_bad_files: bool = False,
    ) -> None:
        Dataset.__init__(self)
        if labels.shape != (len(shards),):
            raise ValueError(f"labels must be [{len(shards)}], got {tuple(labels.shape)}")
        self.shards = shards
        self.source_labels = labels.long()
        self.rows = rows
        self.size = size
        self.skip_bad_files = skip_bad_files
        self.yields_encoded = False

    def encoded(self) -> ShardDataset:
        """A copy whose batches are :class:`EncodedJpegs` (same rows, same order)."""
        view = copy.copy(self)
        view.yields_encoded = True
        return view

    def __len__(self) -> int:
        return len(self.shards) if self.rows is None else int(self.rows.shape[0])

    def _source_rows(self, indices: list[int]) -> list[int]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return (index if self.rows is None else self.rows.index_select(0, index)).tolist()

    def __getitems__(self, indices: list[int]) -> tuple[Any, Tensor]:
        rows = self._source_rows(indices)
        labels = self.source_labels[rows]  # [B]
        encoded = EncodedJpegs([self.shards.read(r) for r in rows], rows)
        if self.yields_encoded:
            return encoded, labels
        images, kept = self.decode(encoded, torch.device("cpu"))
        return images, labels[kept]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        images, labels = self.decode_rows([index])
        return images[0], labels[0]

    def decode(self, batch: EncodedJpegs, device: torch.device) -> tuple[Tensor, list[int]]:
        """``(images [K, 3, size, size] uint8 on device, kept positions)`` of a batch."""
        return decode_batch(
            batch.data,
            self.size,
            device,
            lambda i: self.shards.describe(batch.rows[i]),
            self.skip_bad_files,
        )

    def decode_rows(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """Decoded ``(images [B, 3, size, size] uint8, labels [B])`` of dataset indices; an
        image that cannot be decoded is an error even with ``skip_bad_files`` (callers need
        one image per index)."""
        rows = self._source_rows(indices)
        batch = EncodedJpegs([self.shards.read(r) for r in rows], rows)
        describe = self.shards.describe
        images, _ = decode_batch(batch.data, self.size, "cpu", lambda i: describe(rows[i]))
        return images, self.source_labels[rows]

    @property
    def images(self) -> Tensor:
        """``[M, 3, size, size]`` uint8: every image of this dataset decoded (for the frozen
        evaluation of small splits; a large split does not fit in memory this way)."""
        indices = list(range(len(self)))
        chunks = [indices[i : i + _CHUNK] for i in range(0, len(indices), _CHUNK)]
        if not chunks:
            return torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        return torch.cat([self.decode_rows(chunk)[0] for chunk in chunks])


def open_split(root: Path, split: str) -> tuple[JpegShards, list[str], int] | None:
    """``(shards, class names, side)`` of a shard folder's split, or ``None``; ``side`` is the
    stored size, or the longest stored shorter side if smaller (images smaller than the
    stored size keep their own).

    ``split`` is ``"train"`` or ``"val"`` (the folder's ``test`` split, else its ``val``),
    as :meth:`ImageFolderDataModule.split_dir` reads image folders.
    """
    manifest = read_manifest(root)
    names = ["train"] if split == "train" else ["test", "val"]
    name = next((n for n in names if n in manifest["splits"]), None)
    if name is None:
        return None
    entry = manifest["splits"][name]
    side = min(manifest["size"], entry["max_side"])
    return JpegShards(root, entry), manifest["classes"], side
