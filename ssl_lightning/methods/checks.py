"""Checks of a training batch and of the run against what a method needs, with errors that say
what to set."""

from __future__ import annotations

from torch import nn

from ssl_lightning import distributed
from ssl_lightning.corruptions import Batch

__all__ = [
    "check_batch_size",
    "check_sync_batchnorm",
    "check_views",
    "require_at_least",
    "require_positive",
    "require_unit_interval",
]


def check_views(
    batch: Batch, method: str, corruption: str, exact: bool = True, what: str = ""
) -> None:
    """Raises unless ``batch`` holds exactly two views per image (at least two when not
    ``exact``), naming the ``corruption`` that makes them; ``what`` says which views."""
    made = len(batch.views)
    if made == 2 or (not exact and made > 2):
        return
    raise ValueError(
        f"{method} needs {'exactly' if exact else '>='} 2 views per image{what}, but the "
        f"datamodule's corruption made {made}; unset data.corruption to use the method's "
        f"default views, or set data.corruption={corruption}"
    )


def check_batch_size(batch: Batch, method: str, why: str, gathered: bool) -> None:
    """Raises on a batch of one image, unless ``gathered`` across several ranks: batch
    statistics and in-batch negatives need at least two."""
    size = batch.views[0].shape[0]
    if size < 2 and not (gathered and distributed.is_distributed()):
        raise ValueError(
            f"{method} needs >= 2 images per batch ({why}), got {size}; set data.batch_size >= 2"
        )


def check_sync_batchnorm(module: nn.Module, stage: str) -> None:
    """Raises when ``trainer.sync_batchnorm`` would turn ``module``'s BatchNorm layers into
    SyncBatchNorm for a fit on the CPU, before DDP fails on it with torch's "SyncBatchNorm
    layers only work with GPU modules". (On one device, or outside fit, Lightning leaves
    BatchNorm as it is: nothing to refuse.)"""
    trainer = getattr(module, "_trainer", None)
    strategy = getattr(trainer, "strategy", None)
    # Lightning keeps the flag as the strategy's layer-sync plugin (set only for DDP-like ones).
    if stage != "fit" or strategy is None or getattr(strategy, "_layer_sync", None) is None:
        return
    device = strategy.root_device.type
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    if device in ("cpu", "mps") and has_batchnorm:
        raise ValueError(
            f"trainer.sync_batchnorm=true synchronizes BatchNorm statistics across processes "
            f"with SyncBatchNorm, which runs on GPUs only, but this run trains on {device} with "
            f"{strategy.world_size} processes; set --trainer.sync_batchnorm false (each process "
            "then normalizes by its own batch)"
        )


def _require(test: str, passes: bool, name: str, value: float) -> None:
    if not passes:
        raise ValueError(f"{name} must be {test}, got {value} (set model.{name})")


def require_positive(**values: float) -> None:
    """Raises for the first ``name=value`` that is not > 0, naming ``model.<name>``."""
    for name, value in values.items():
        _require("> 0", value > 0, name, value)


def require_at_least(low: int, **values: float) -> None:
    """Raises for the first ``name=value`` below ``low``, naming ``model.<name>``."""
    for name, value in values.items():
        _require(f">= {low}", value >= low, name, value)


def require_unit_interval(**values: float) -> None:
    """Raises for the first ``name=value`` outside ``[0, 1]``, naming ``model.<name>``."""
    for name, value in values.items():
        _require("in [0, 1]", 0.0 <= value <= 1.0, name, value)
