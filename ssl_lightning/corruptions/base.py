"""The corruption interface, normalization, argument checks and per-image subset helpers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ssl_lightning.corruptions.batch import Batch


class Corruption:
    """Maps a batch of clean images to the :class:`Batch` a pretext method trains on.

    Subclasses take typed ``__init__`` arguments (so configs can build them) and implement
    ``__call__``. The images returned stay in ``[0, 1]``: the datamodule normalizes them.
    """

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Batch:
        """Corrupts a batch.

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``, on the training device.
            labels: ``[B]`` int64 class labels (``-1`` = unlabeled).
            generator: CPU generator to draw every random parameter from.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class CleanView(Corruption):
    """No corruption: one view, the clean image (used for validation and evaluation)."""

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Batch:
        return Batch(views=[images], labels=labels)


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Per-channel ``(x - mean) / std`` of ``[B, C, H, W]`` images, like ``F.normalize``."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


# ---------------------------------------------------------------------------------------------
# Argument checks. They run on plain Python numbers when a recipe is built (and again, cheaply,
# in the samplers), so a bad config fails before the first batch.
# ---------------------------------------------------------------------------------------------


def check_probability(name: str, p: float) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``0 <= p <= 1``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p!r} is not a probability: expected a value in [0, 1].")


def check_range(name: str, bounds: tuple[float, float]) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``bounds`` is ``(min, max)``, 0 < min <= max."""
    low, high = bounds
    if not 0.0 < low <= high:
        raise ValueError(
            f"{name}={tuple(bounds)!r} is not a valid range: expected (min, max) with "
            f"0 < min <= max."
        )


def check_strength(name: str, value: float, maximum: float | None = None) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``0 <= value (<= maximum)``."""
    if value < 0.0 or (maximum is not None and value > maximum):
        expected = ">= 0" if maximum is None else f"in [0, {maximum}]"
        raise ValueError(f"{name}={value!r} is not a valid jitter strength: expected {expected}.")


def check_size(name: str, size: int | None) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``size`` is ``None`` or a positive int."""
    if size is not None and size < 1:
        raise ValueError(f"{name}={size!r} is invalid: expected a positive int or None.")


# ---------------------------------------------------------------------------------------------
# Per-image subsets.
# ---------------------------------------------------------------------------------------------


def apply_at_(images: Tensor, index: Tensor, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """Replaces ``images[index]`` with ``fn(images[index], *args)``, in place.

    Working on the selected subset (index, op, write back) skips the cost for the rest. A CPU
    ``index`` (sorted, unique: as :func:`mask_indices` gives it) costs no device sync.
    """
    if index.numel() == images.shape[0]:  # all of them: no gather, no scatter
        images.copy_(fn(images, *args))
    elif index.numel() > 0:
        index_dev = index.to(images.device)
        images.index_copy_(0, index_dev, fn(images.index_select(0, index_dev), *args))
    return images


def mask_indices(mask: Tensor) -> Tensor:
    """``[K]`` indices of the ``True`` entries of a ``[B]`` bool mask."""
    return mask.nonzero()[:, 0]


def per_image(factor: Tensor, images: Tensor) -> Tensor:
    """``[B]`` factors as ``[B, 1, 1, 1]`` on the images' device and dtype."""
    return factor.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
