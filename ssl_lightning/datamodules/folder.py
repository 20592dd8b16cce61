"""The ``ImageFolderDataModule``: a user's own image folders as an in-memory uint8 dataset.

Images are listed and decoded by :mod:`ssl_lightning.datamodules.decode` and cached on disk
by :mod:`ssl_lightning.datamodules.image_cache`, so a second run starts from the cache.
Splits that exceed the memory budget are memory-mapped: folders larger than RAM decode
straight into the mapped cache file and train from it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor
from torch.utils.data import Dataset

from ssl_lightning.corruptions import Corruption
from ssl_lightning.datamodules.base import InMemoryDataModule, PredictSplit, Split
from ssl_lightning.datamodules.dataset import InMemoryDataset
from ssl_lightning.datamodules.decode import (
    IMAGE_EXTENSIONS,
    decode_images,
    drop_rows_,
    first_size,
    list_split,
    report_bad_files,
)
from ssl_lightning.datamodules.image_cache import (
    cache_path,
    create_mapped,
    default_cache_dir,
    default_memory_budget_gb,
    read_cache,
    write_cache,
)
from ssl_lightning.datamodules.shard_dataset import EncodedJpegs, ShardDataset, open_split
from ssl_lightning.datamodules.shards import MANIFEST, JpegShards


class ImageFolderDataModule(InMemoryDataModule):
    """Images from ``data_dir/train/<class>/...`` (and ``data_dir/test`` or ``data_dir/val``).

    Images are decoded once (converted to RGB, optionally resized) into a uint8 tensor that
    is cached under ``cache_dir`` keyed by the folder's file list, sizes and modification
    times, so a second run starts from the cache. A ``train`` folder without class
    sub-folders is unlabeled (labels -1, ``num_classes`` 0). Without a ``test``/``val``
    folder, ``val_fraction`` holds out a stratified share of ``train`` for validation.

    Images that do not fit in ``memory_budget_gb`` stay on disk: they are decoded straight
    into the cache file and memory-mapped from it (the operating system pages them in as
    batches touch them), so folders larger than RAM train instead of failing. At cluster
    scale, ``storage="jpeg"`` decodes each batch from JPEG shards instead (nothing before).

    Args:
        data_dir: root folder holding ``train/`` and optionally ``test/`` or ``val/``.
        image_size: resize (shorter side) and center-crop every image to this square size;
            ``None`` keeps the images' own size, which must then be the same for all.
        batch_size: images per batch and per process.
        corruption: training corruption; ``None`` uses the model's default.
        seed: augmentation seed; ``None`` takes the global seed.
        num_workers: loader worker processes.
        mean: per-channel normalization mean (ImageNet's by default).
        std: per-channel normalization std.
        cache_dir: where decoded tensors are cached; ``None`` =
            :func:`~ssl_lightning.datamodules.image_cache.default_cache_dir`.
        use_cache: read and write the decoded-image cache. Without it, images over the
            memory budget are decoded into a temporary file in ``cache_dir``.
        decode_workers: threads that decode images (``None`` = number of CPUs).
        val_fraction: share of ``train`` to hold out for validation when there is no
            ``test``/``val`` folder (see :class:`InMemoryDataModule`).
        split_seed: seed of the hold-out choice.
        predict_split: the split ``trainer.predict`` embeds: train, val or test.
        label_fraction: train on this class-balanced share of the labelled training images
            (see :class:`InMemoryDataModule`); 1 keeps them all.
        memory_budget_gb: most decoded bytes (10^9) to hold in RAM per process, train and
            validation together; beyond it splits are memory-mapped. ``None`` = half the RAM.
        skip_bad_files: skip files that cannot be decoded (listed in a warning and in
            ``skipped_files``; with shards, left out of their batch with a warning naming the
            shard, index and file) instead of raising an error that names the first one.
        storage: ``"uint8"`` (the cache above), ``"jpeg"`` (``data_dir`` holds shards of
            ``ssl-lightning prepare``; each batch is decoded to center squares of side
            ``image_size``, default the stored size), ``None``: jpeg for shards, else uint8.
        decode: where JPEG training batches are decoded: ``"loader"`` (CPU, loader workers:
            set ``num_workers``), ``"device"`` (the training device after the transfer: nvJPEG
            on a GPU) or ``"auto"`` (the device if it is a GPU, else the loader).

    Examples:
        >>> dm = ImageFolderDataModule("path/to/images", image_size=64, batch_size=256)
    """

    def __init__(
        self,
        data_dir: str | Path,
        image_size: int | None = None,
        batch_size: int = 256,
        corruption: Corruption | None = None,
        seed: int | None = None,
        num_workers: int = 0,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        decode_workers: int | None = None,
        val_fraction: float = 0.0,
        split_seed: int = 0,
        predict_split: PredictSplit = "test",
        label_fraction: float = 1.0,
        memory_budget_gb: float | None = None,
        skip_bad_files: bool = False,
        storage: Literal["uint8", "jpeg"] | None = None,
        decode: Literal["auto", "loader", "device"] = "auto",
    ) -> None:
        super().__init__(
            batch_size,
            corruption,
            seed,
            num_workers,
            val_fraction,
            split_seed,
            predict_split,
            label_fraction,
        )
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1 or None, got {image_size}")
        if storage not in (None, "uint8", "jpeg") or decode not in ("auto", "loader", "device"):
            raise ValueError(
                f"storage={storage!r}, decode={decode!r}: expected data.storage uint8, jpeg or "
                "null, and data.decode auto, loader or device"
            )
        if memory_budget_gb is not None and memory_budget_gb < 0:
            raise ValueError(
                f"memory_budget_gb={memory_budget_gb!r} is invalid: expected >= 0 (0 maps "
                "every split from disk) or None for half the RAM"
            )
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)  # type: ignore[assignment]
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.use_cache = use_cache
        self.decode_workers = decode_workers or os.cpu_count() or 1
        self.memory_budget_gb = memory_budget_gb
        self.skip_bad_files = skip_bad_files
        self.storage, self.decode = storage, decode
        self.classes: list[str] = []
        self.skipped_files: list[Path] = []
        self.memory_mapped: dict[Split, bool] = {}
        self._bytes_in_memory = 0
        self._stored_size = 0

    @property
    def num_classes(self) -> int:
        if not self.classes and self.train_set is None:
            self.setup("fit")
        return len(self.classes)

    def split_dir(self, split: Split) -> Path | None:
        """The folder of a split: ``train``; ``test`` or else ``val`` for validation."""
        names = ["train"] if split == "train" else ["test", "val"]
        return next((self.data_dir / n for n in names if (self.data_dir / n).is_dir()), None)

    def load_split(self, split: Split) -> tuple[Tensor, Tensor] | None:
        if self.resolved_storage() == "jpeg":
            opened = open_split(self.data_dir, split)
            if opened is None:
                return None
            shards, self.classes, stored = opened
            self._stored_size = self._stored_size or stored  # validation decodes as training
            return shards, shards.labels  # type: ignore[return-value]
        folder = self.split_dir(split)
        if folder is None:
            if split == "val":
                return None
            if not self.data_dir.is_dir():
                raise FileNotFoundError(
                    f"data_dir={str(self.data_dir)!r} does not exist; set data.data_dir"
                )
            raise FileNotFoundError(
                f"no train/ folder in data_dir={str(self.data_dir)!r}; expected "
                f"{self.data_dir}/train/<class>/<image> (and optionally test/ or val/)"
            )
        files, classes, labels = list_split(folder, None if split == "train" else self.classes)
        if not files:
            raise ValueError(
                f"no images found under {folder} (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                f"set data.data_dir to a folder with train/<class>/<image> files"
            )
        if split == "train":
            self.classes = classes
        side = self.image_size
        size = (side, side) if side else first_size(files, self.skip_bad_files)
        nbytes = len(files) * 3 * size[0] * size[1]
        in_memory = nbytes <= self._memory_budget_bytes() - self._bytes_in_memory
        self.memory_mapped[split] = not in_memory
        cache = cache_path(self.cache_dir, folder, files, size) if self.use_cache else None
        loaded = read_cache(cache, len(files), size, in_memory) if cache else None
        if loaded is None:
            images, bad = self._decode(folder, files, size, in_memory, cache)
        else:
            images, bad = loaded
        if bad:
            self.skipped_files += report_bad_files(
                folder, [files[i] for i in bad], self.skip_bad_files
            )
            dropped = set(bad)
            labels = [label for i, label in enumerate(labels) if i not in dropped]
        if in_memory:
            self._bytes_in_memory += images.numel()
        else:
            rank_zero_info(
                f"{folder}: {nbytes / 1e9:.2f} GB of decoded images exceed the memory budget "
                f"({self._memory_budget_bytes() / 1e9:.2f} GB, data.memory_budget_gb): "
                "memory-mapped from the cache file (or see `ssl-lightning prepare --help`)"
            )
        return images, torch.as_tensor(labels, dtype=torch.long)

    def resolved_storage(self) -> Literal["uint8", "jpeg"]:
        """``storage``, or for ``None`` ``"jpeg"`` when ``data_dir`` is a shard folder."""
        sharded = (self.data_dir / MANIFEST).is_file()
        if self.storage == "uint8" and sharded:
            raise ValueError(
                f"data_dir={str(self.data_dir)!r} holds JPEG shards ({MANIFEST}), not images: "
                "set data.storage=jpeg (or leave it unset), or point data.data_dir at the images"
            )
        return self.storage or ("jpeg" if sharded else "uint8")

    def make_dataset(self, images: Any, labels: Tensor, rows: Tensor | None) -> InMemoryDataset:
        if not isinstance(images, JpegShards):
            return super().make_dataset(images, labels, rows)
        size = self.image_size or self._stored_size
        return ShardDataset(images, labels, rows, size, self.skip_bad_files)

    def train_loader_dataset(self) -> Dataset[Any]:
        dataset = super().train_loader_dataset()
        device = self.trainer.strategy.root_device.type if self.trainer is not None else "cpu"
        on_device = self.decode == "device" or (self.decode == "auto" and device == "cuda")
        return dataset.encoded() if isinstance(dataset, ShardDataset) and on_device else dataset

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        images, labels = batch
        if isinstance(images, EncodedJpegs):  # JPEG bytes: decoded on the training device
            assert isinstance(self.train_set, ShardDataset)
            decoded, kept = self.train_set.decode(images, device)
            return decoded, labels[kept].to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _memory_budget_bytes(self) -> float:
        budget = self.memory_budget_gb
        return (default_memory_budget_gb() if budget is None else budget) * 1e9

    def _decode(
        self,
        folder: Path,
        files: list[str],
        size: tuple[int, int],
        in_memory: bool,
        cache: Path | None,
    ) -> tuple[Tensor, list[int]]:
        """Decodes into RAM, or straight into a memory-mapped (cache or temporary) file."""
        shape = (len(files), 3, *size)
        tmp: Path | None = None
        if in_memory:
            images = torch.empty(shape, dtype=torch.uint8)
        else:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            if cache is not None:
                tmp = create_mapped(cache, int(np.prod(shape)))
            else:
                fd, name = tempfile.mkstemp(prefix="decoded-", suffix=".u8", dir=self.cache_dir)
                os.close(fd)
                tmp = Path(name)
            size_bytes = int(np.prod(shape))
            images = torch.from_file(str(tmp), shared=True, size=size_bytes, dtype=torch.uint8)
            images = images.view(shape)
            if cache is None:
                tmp.unlink()  # the mapping stays valid; the disk space goes with the process
        try:
            bad = decode_images(
                files,
                images,
                self.image_size is not None,
                self.decode_workers,
                self.skip_bad_files,
                f"decoding {folder}",
            )
        except BaseException:
            if tmp is not None and cache is not None:
                tmp.unlink(missing_ok=True)
            raise
        images = drop_rows_(images, bad) if bad else images
        if cache is not None:
            skipped = [os.path.relpath(files[i], folder) for i in bad]
            write_cache(cache, images, bad, skipped, tmp)
        return images, bad
