"""In-memory uint8 datamodule: whole-batch indexing on the host, corruption on the device."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.batch import Batch
from datamodules.corruptions import CleanView, Corruption, normalize

Split = Literal["train", "val"]


class InMemoryDataset(Dataset[tuple[Tensor, Tensor]]):
    """A uint8 image tensor ``[N, 3, H, W]`` with labels ``[N]`` that serves whole batches.

    ``DataLoader`` calls ``__getitems__`` with a batch of indices: one tensor index, no
    per-sample Python work. Any sampler works, Lightning's ``DistributedSampler`` included.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be [{images.shape[0]}], got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]  # [B, 3, H, W] uint8, [B]


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


class InMemoryDataModule(L.LightningDataModule):
    """Base of the datamodules: the whole dataset in host memory as uint8, corrupted on device.

    Subclasses implement :meth:`load_split` (and ``prepare_data`` if they download).
    Training batches get the ``corruption`` (the model's ``default_corruption()`` when
    ``None``) on the training device in ``on_after_batch_transfer``; validation batches are
    only normalized. Random parameters come from a generator seeded by ``(seed, global rank,
    batch number)``, so ranks differ, runs repeat, and a resumed run continues the same stream.

    Args:
        batch_size: images per batch and per process.
        corruption: training corruption; ``None`` uses the model's default.
        seed: augmentation seed; ``None`` takes the global seed (``seed_everything``).
        num_workers: loader worker processes; batches are one tensor index, so 0 is usually
            fastest.
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __init__(
        self,
        batch_size: int = 256,
        corruption: Corruption | None = None,
        seed: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size} (set data.batch_size)")
        self.batch_size = batch_size
        self.corruption = corruption
        self.seed = seed
        self.num_workers = num_workers
        self.train_set: InMemoryDataset | None = None
        self.val_set: InMemoryDataset | None = None
        self._resolved_corruption: Corruption | None = None
        self._base_seed: int | None = None
        self._batches_drawn = 0

    def load_split(self, split: Split) -> tuple[Tensor, Tensor] | None:
        """Returns ``(images uint8 [N, 3, H, W], labels int64 [N])`` of a split, or ``None``."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when unlabeled)."""
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        return int(self.train_set.labels.max().item()) + 1

    def setup(self, stage: str) -> None:
        if self.train_set is None:
            loaded = self.load_split("train")
            if loaded is None:
                raise ValueError(f"{type(self).__name__} has no training split")
            self.train_set = InMemoryDataset(*loaded)
            val = self.load_split("val")
            self.val_set = None if val is None else InMemoryDataset(*val)

    def train_dataloader(self) -> DataLoader[Any]:
        assert self.train_set is not None, "call setup() first"
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"the training split has {len(self.train_set)} images, fewer than one batch of "
                f"{self.batch_size}; lower data.batch_size"
            )
        return self._loader(self.train_set, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader[Any] | list[Any]:
        return [] if self.val_set is None else self._loader(self.val_set, False, False)

    def _loader(self, dataset: InMemoryDataset, shuffle: bool, drop_last: bool) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Batch:
        images, labels = batch
        x = images.float().div_(255)  # [B, 3, H, W] in [0, 1], on the device
        trainer = self.trainer
        if trainer is not None and trainer.training:
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

    def _next_generator(self) -> torch.Generator:
        if self._base_seed is None:
            self._base_seed = self.seed if self.seed is not None else torch.initial_seed()
        rank = self.trainer.global_rank if self.trainer is not None else 0
        seed = _mix_seed(self._base_seed, rank, self._batches_drawn)
        self._batches_drawn += 1
        return torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self._base_seed, "batches_drawn": self._batches_drawn}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._base_seed = state_dict["seed"]
        self._batches_drawn = state_dict["batches_drawn"]
