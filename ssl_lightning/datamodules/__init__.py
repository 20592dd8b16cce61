"""Datamodules that keep images in memory as uint8 and corrupt whole batches on the device."""

from ssl_lightning.datamodules.base import InMemoryDataModule
from ssl_lightning.datamodules.batch import Batch
from ssl_lightning.datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from ssl_lightning.datamodules.corruptions import (
    BYOLViews,
    CleanView,
    Corruption,
    MultiCropViews,
    PatchMask,
    Rotations,
    SimCLRViews,
    ViewTransform,
)
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
