"""Datamodules that keep images in memory as uint8 and corrupt whole batches on the device."""

from datamodules.base import InMemoryDataModule, InMemoryDataset
from datamodules.batch import Batch
from datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from datamodules.corruptions import CleanView, Corruption, SimCLRViews
from datamodules.folder import ImageFolderDataModule
from datamodules.masking import PatchMask
from datamodules.rotation import Rotations

__all__ = [
    "Batch",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CleanView",
    "Corruption",
    "ImageFolderDataModule",
    "InMemoryDataModule",
    "InMemoryDataset",
    "PatchMask",
    "Rotations",
    "SimCLRViews",
]
