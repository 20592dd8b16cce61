"""Checks of a training batch against what a method needs, with errors that say what to set."""

from __future__ import annotations

from ssl_lightning import distributed
from ssl_lightning.datamodules import Batch

__all__ = ["check_batch_size", "check_two_views"]


def check_two_views(batch: Batch, method: str, views: str = "BYOLViews") -> None:
    """Raises unless ``batch`` holds exactly two views, naming the corruption that makes them."""
    if len(batch.views) != 2:
        raise ValueError(
            f"{method} needs exactly 2 views per image, but the datamodule's corruption made "
            f"{len(batch.views)}; unset data.corruption to use the method's default views, or "
            f"set data.corruption={views}"
        )


def check_batch_size(batch: Batch, method: str, why: str, gathered: bool) -> None:
    """Raises on a batch of one image, unless ``gathered`` across several ranks: batch
    statistics and in-batch negatives need at least two."""
    size = batch.views[0].shape[0]
    if size < 2 and not (gathered and distributed.is_distributed()):
        raise ValueError(
            f"{method} needs >= 2 images per batch ({why}), got {size}; set data.batch_size >= 2"
        )
