"""CIFAR-10 and CIFAR-100, through torchvision's verified download, held in memory as uint8."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor
from torchvision import datasets

from datamodules.base import InMemoryDataModule, Split
from datamodules.corruptions import Corruption


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test images, 32x32, 10 classes.

    The test split is the validation set. The whole dataset takes 184 MB as uint8.

    Args:
        data_dir: folder holding (or receiving) ``cifar-10-python.tar.gz`` and its contents.
        download: download and verify the archive when it is missing.
        batch_size: images per batch and per process.
        corruption: training corruption; ``None`` uses the model's default.
        seed: augmentation seed; ``None`` takes the global seed.
        num_workers: loader worker processes.

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
    ) -> None:
        super().__init__(batch_size, corruption, seed, num_workers)
        self.data_dir = Path(data_dir)
        self.download = download

    @property
    def num_classes(self) -> int:
        return 100 if issubclass(self.dataset_cls, datasets.CIFAR100) else 10

    def prepare_data(self) -> None:
        cls = self.dataset_cls
        if not self.download:
            self._open(train=True)  # fail early, on one process, with the fix in the message
            return
        try:
            cls(str(self.data_dir), train=True, download=True)
        except (OSError, RuntimeError) as err:
            raise RuntimeError(
                f"could not download {cls.__name__} into data_dir={str(self.data_dir)!r} "
                f"({err}). Without network access, fetch {cls.url} on another machine and "
                f"place {cls.filename} (md5 {cls.tgz_md5}) in {self.data_dir}/, then rerun."
            ) from err

    def load_split(self, split: Split) -> tuple[Tensor, Tensor] | None:
        data = self._open(train=split == "train")
        images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()  # [N, 3, 32, 32]
        labels = torch.as_tensor(data.targets, dtype=torch.long)  # [N]
        return images, labels

    def _open(self, train: bool) -> datasets.CIFAR10:
        cls = self.dataset_cls
        try:
            return cls(str(self.data_dir), train=train, download=False)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            hint = "" if self.download else "set data.download=true, or "
            raise FileNotFoundError(
                f"{cls.__name__} not found (or corrupted) in data_dir={str(self.data_dir)!r}; "
                f"{hint}place {cls.filename} (md5 {cls.tgz_md5}) in that folder and extract it "
                f"there (torchvision does both with download=True)"
            ) from err


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (Krizhevsky 2009): like CIFAR-10 with 100 fine-grained classes."""

    dataset_cls: ClassVar[type[datasets.CIFAR10]] = datasets.CIFAR100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
