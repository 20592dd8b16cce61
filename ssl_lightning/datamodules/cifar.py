"""CIFAR-10 and CIFAR-100, through torchvision's verified download, held in memory as uint8."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor
from torchvision import datasets
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from ssl_lightning.corruptions import Corruption
from ssl_lightning.datamodules.base import InMemoryDataModule, PredictSplit, Split


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test images, 32x32, 10 classes.

    The test split is the validation set (or, with ``val_fraction``, a stratified hold-out of
    the training images). The whole dataset takes 184 MB as uint8, held once.

    Args:
        data_dir: folder holding (or receiving) ``cifar-10-python.tar.gz`` and its contents.
        download: download and verify the archive when it is missing.
        batch_size: images per batch and per process.
        corruption: training corruption; ``None`` uses the model's default.
        seed: augmentation seed; ``None`` takes the global seed.
        num_workers: loader worker processes.
        val_fraction: share of the training images to hold out for validation instead of the
            test split; 0 validates on the test split.
        split_seed: seed of the hold-out choice.
        predict_split: the split ``trainer.predict`` embeds: train, val or test.
        label_fraction: train on this class-balanced share of the labelled training images
            (see :class:`InMemoryDataModule`); 1 keeps them all.

    Examples:
        >>> dm = CIFAR10DataModule(data_dir="data", batch_size=512)
    """

    dataset_cls: ClassVar[type[datasets.CIFAR10]] = datasets.CIFAR10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def __init__(
        self,
        data_dir: str | Path = "data",
        download: bool = True,
        batch_size: int = 256,
        corruption: Corruption | None = None,
        seed: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.0,
        split_seed: int = 0,
        predict_split: PredictSplit = "test",
        label_fraction: float = 1.0,
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
        self.data_dir = Path(data_dir)
        self.download = download

    @property
    def num_classes(self) -> int:
        return 100 if issubclass(self.dataset_cls, datasets.CIFAR100) else 10

    def prepare_data(self) -> None:
        cls = self.dataset_cls
        if self._verified(cls.train_list + cls.test_list):
            return
        if not self.download:
            raise self._not_found()  # fail early, on one process, with the fix in the message
        try:
            # What torchvision's download=True does: fetch (or reuse) the archive, check its
            # md5, extract it.
            download_and_extract_archive(
                cls.url, str(self.data_dir), filename=cls.filename, md5=cls.tgz_md5
            )
        except (OSError, RuntimeError) as err:
            raise RuntimeError(
                f"could not download {cls.__name__} into data_dir={str(self.data_dir)!r} "
                f"({err}). Without network access, fetch {cls.url} on another machine and "
                f"place {cls.filename} (md5 {cls.tgz_md5}) in {self.data_dir}/, then rerun."
            ) from err
        if not self._verified(cls.train_list + cls.test_list):
            raise self._not_found()

    def load_split(self, split: Split) -> tuple[Tensor, Tensor] | None:
        """Reads the verified python batches straight into one ``[N, 3, 32, 32]`` tensor.

        torchvision's dataset stacks all batches into a new array (twice the memory while
        loading); here each batch is copied into place and released, so loading needs the
        dataset plus one batch.
        """
        cls = self.dataset_cls
        files = cls.train_list if split == "train" else cls.test_list
        if not self._verified(files):
            raise self._not_found()
        images: Tensor | None = None
        labels: list[int] = []
        for i, (name, _) in enumerate(files):
            with open(self.data_dir / cls.base_folder / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            batch = torch.from_numpy(entry["data"]).view(-1, 3, 32, 32)  # [n, 3, 32, 32]
            filled = len(labels)
            if images is None:
                # The official batches are of equal size: the first one sizes the tensor.
                images = torch.empty(len(batch) * len(files), 3, 32, 32, dtype=torch.uint8)
            if filled + len(batch) > len(images):
                images.resize_(filled + len(batch) * (len(files) - i), 3, 32, 32)
            images[filled : filled + len(batch)] = batch
            labels += entry["labels" if "labels" in entry else "fine_labels"]
            del entry, batch
        assert images is not None
        return images[: len(labels)], torch.as_tensor(labels, dtype=torch.long)

    def _verified(self, files: list[list[str]]) -> bool:
        cls = self.dataset_cls
        folder = self.data_dir / cls.base_folder
        meta = [cls.meta["filename"], cls.meta["md5"]]
        return all(check_integrity(str(folder / name), md5) for name, md5 in [*files, meta])

    def _not_found(self) -> FileNotFoundError:
        cls = self.dataset_cls
        hint = "" if self.download else "set data.download=true, or "
        return FileNotFoundError(
            f"{cls.__name__} not found (or corrupted) in data_dir={str(self.data_dir)!r}; "
            f"{hint}place {cls.filename} (md5 {cls.tgz_md5}) in that folder and extract it "
            f"there (download=True does both)"
        )


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (Krizhevsky 2009): like CIFAR-10 with 100 fine-grained classes."""

    dataset_cls: ClassVar[type[datasets.CIFAR10]] = datasets.CIFAR100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
