"""Datamodules that keep images in memory as uint8 and corrupt whole batches on the device."""

from datamodules.base import InMemoryDataModule, InMemoryDataset
from datamodules.batch import Batch
from datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from datamodules.corruptions import (
    BYOLViews,
    CleanView,
    Corruption,
    MultiCropViews,
    SimCLRViews,
    ViewTransform,
)
from datamodules.folder import ImageFolderDataModule
from datamodules.masking import PatchMask
from datamodules.rotation import Rotations

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
