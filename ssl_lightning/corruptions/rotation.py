"""Rotated copies of images with their rotation index: the corruption of rotation prediction."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ssl_lightning.corruptions.base import Corruption
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.corruptions.view import ViewTransform

__all__ = ["Rotations", "rotate"]

NUM_ROTATIONS = 4


def rotate(images: Tensor, k: Tensor) -> Tensor:
    """Rotates each image counter-clockwise by ``k * 90`` degrees, as ``torch.rot90(img, k)``.

    One ``rot90`` per distinct angle over the images that need it (gather, rotate, write
    back), never a loop over images.

    Args:
        images: ``[B, C, S, S]`` square images, on any device.
        k: ``[B]`` int rotation indices in ``0..3``; a CPU tensor costs no device sync.

    Returns:
        ``[B, C, S, S]`` rotated images.
    """
    out = images.clone()
    k = k.cpu()
    for angle in range(1, NUM_ROTATIONS):
        index = (k == angle).nonzero()[:, 0].to(images.device)  # [K]
        if index.numel() > 0:
            out.index_copy_(0, index, images.index_select(0, index).rot90(angle, dims=(2, 3)))
    return out


class Rotations(Corruption):
    """Rotations by 0, 90, 180 and 270 degrees, with the rotation index as the target.

    Gidaris et al., "Unsupervised Representation Learning by Predicting Image Rotations",
    https://arxiv.org/abs/1803.07728.

    - ``mode="all"``: four views, view ``k`` holds every image rotated by ``k * 90`` degrees
      (counter-clockwise, as ``torch.rot90``); ``targets`` is ``[4 * B]``, the rotation index
      of each image of ``torch.cat(views)`` (``0`` x B, then ``1`` x B, ...). The paper trains
      on all four copies of each image at once.
    - ``mode="random"``: one view, each image rotated by its own random angle drawn from the
      datamodule's CPU generator; ``targets`` is ``[B]``.

    In both modes ``labels`` stays ``[B]``, aligned with each view. Images must be square.
    With a ``view``, every image is first augmented once (e.g. cropped and flipped, as RotNet
    trains on CIFAR) and its rotated copies are copies of that augmented image.

    Args:
        mode: ``"all"`` (four copies of every image) or ``"random"`` (one per image).
        view: augmentation applied before rotating; ``None`` rotates the images as they are.

    Examples:
        >>> batch = Rotations()(torch.rand(2, 3, 32, 32), torch.tensor([3, 5]),
        ...                     torch.Generator().manual_seed(0))
        >>> len(batch.views), batch.targets.tolist()
        (4, [0, 0, 1, 1, 2, 2, 3, 3])
    """

    returns_new_tensors = True

    def __init__(
        self, mode: Literal["all", "random"] = "all", view: ViewTransform | None = None
    ) -> None:
        if mode not in ("all", "random"):
            raise ValueError(
                f"mode={mode!r} is invalid: expected 'all' or 'random' "
                "(set data.corruption.init_args.mode)"
            )
        self.mode = mode
        self.view = view

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Batch:
        if self.view is not None:
            images = self.view(images, generator)
        batch, _, height, width = images.shape
        if height != width:
            raise ValueError(
                f"Rotations needs square images to stack rotated copies, got {height}x{width}; "
                "set data.image_size to resize them to a square"
            )
        if self.mode == "all":
            views = [images.rot90(k, dims=(2, 3)) if k else images for k in range(NUM_ROTATIONS)]
            targets = torch.arange(NUM_ROTATIONS).repeat_interleave(batch)  # [4 * B]
        else:
            targets = torch.randint(NUM_ROTATIONS, (batch,), generator=generator)  # [B]
            views = [rotate(images, targets)]
        return Batch(views=views, labels=labels, targets=targets.to(images.device))
