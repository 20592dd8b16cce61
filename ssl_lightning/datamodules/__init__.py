"""Datamodules that keep images in memory as uint8 and corrupt whole batches on the device.

The corruptions they apply live in :mod:`ssl_lightning.corruptions`; their names are
re-exported here, so ``ssl_lightning.datamodules.SimCLRViews`` (older configs) still resolves.
"""

from ssl_lightning.corruptions import (
    Batch,
    BYOLViews,
    CleanView,
    Corruption,
    MultiCropViews,
    PatchMask,
    Rotations,
    SimCLRViews,
    ViewTransform,
)
from ssl_lightning.datamodules.base import InMemoryDataModule
from ssl_lightning.datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from ssl_lightning.datamodules.dataset import InMemoryDataset
from ssl_lightning.datamodules.folder import ImageFolderDataModule

__all__ = [
    "BYOLViews",
    "Batch",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CleanView",
    "Corruption",
    "ImageFolderDataModule",
    "InMemoryDataModule",
    "InMemoryDataset",
    "MultiCropViews",
    "PatchMask",
    "Rotations",
    "SimCLRViews",
    "ViewTransform",
]
