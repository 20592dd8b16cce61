"""Random patch masks: the corruption of masked-reconstruction pretext tasks.

:class:`PatchMask` hides a fixed fraction of square patches in every image, independently per
image, and keeps the clean image as the reconstruction target. The conv inpainting method
(:class:`ssl_lightning.methods.MaskedReconstruction`) reads the masked image and the mask; MAE
(:class:`ssl_lightning.methods.MAE`) reads only the mask and encodes the visible patches.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ssl_lightning.corruptions.base import Corruption
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.corruptions.view import ViewTransform
from ssl_lightning.layers import mask_to_pixels

__all__ = ["PatchMask", "check_mask_ratio", "require_mask", "sample_patch_mask"]

Fill = Literal["zero", "noise", "mean"]


def sample_patch_mask(
    batch: int, height: int, width: int, num_masked: int, generator: torch.Generator | None = None
) -> Tensor:
    """Draws ``batch`` masks, each hiding exactly ``num_masked`` of ``height * width`` patches.

    Every image gets its own uniformly random subset (the first ``num_masked`` entries of a
    random permutation), drawn on the CPU.

    Args:
        batch: number of masks ``B``.
        height: patch rows ``h``.
        width: patch columns ``w``.
        num_masked: hidden patches per image, in ``[0, h * w]``.
        generator: CPU generator to draw from.

    Returns:
        ``[B, h, w]`` bool CPU mask, ``True`` = hidden.

    Examples:
        >>> mask = sample_patch_mask(2, 8, 8, 48, torch.Generator().manual_seed(0))
        >>> mask.sum(dim=(1, 2)).tolist()
        [48, 48]
    """
    num_patches = height * width
    if not 0 <= num_masked <= num_patches:
        raise ValueError(f"num_masked={num_masked} is not in [0, {num_patches}]")
    order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)  # [B, L]
    mask = torch.zeros(batch, num_patches, dtype=torch.bool)
    mask.scatter_(1, order[:, :num_masked], True)
    return mask.view(batch, height, width)


def check_mask_ratio(mask_ratio: float, setting: str) -> None:
    """Raises if ``mask_ratio`` is not in ``(0, 1)``, naming the ``setting`` that fixes it."""
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(
            f"mask_ratio={mask_ratio!r} is invalid: expected a value in (0, 1) (set {setting})"
        )


class PatchMask(Corruption):
    """Hides ``round(mask_ratio * h * w)`` random square patches of every image.

    The image is cut into a ``h x w`` grid of ``patch_size`` patches; each image draws its own
    subset of exactly that many patches (from the datamodule's CPU generator, so a seed gives
    the same masks on any device). Hidden pixels are replaced by ``fill``:

    - ``"zero"``: black (0 before normalization);
    - ``"noise"``: uniform noise in ``[0, 1]`` per pixel, drawn on the images' device from a
      generator seeded from the CPU one (the masks repeat across devices, the noise values
      only on the same kind of device);
    - ``"mean"``: each image's per-channel mean over its *visible* pixels, so the fill carries
      no information about the hidden ones.

    Returns ``Batch(views=[masked], labels, mask=[B, h, w] bool, clean=images)``; with a
    ``view``, ``images`` are first augmented (e.g. cropped and flipped) and ``clean`` is the
    augmented image, the reconstruction target.

    Args:
        patch_size: side of a square patch in pixels; must divide the image height and width.
        mask_ratio: fraction of the patches to hide, in ``(0, 1)``.
        fill: value of the hidden pixels, ``"zero"``, ``"noise"`` or ``"mean"``.
        view: augmentation applied before masking; ``None`` masks the images as they are.

    Examples:
        >>> batch = PatchMask(patch_size=4, mask_ratio=0.75)(
        ...     torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long),
        ...     torch.Generator().manual_seed(0))
        >>> batch.mask.shape, batch.mask.sum(dim=(1, 2)).tolist()
        (torch.Size([2, 8, 8]), [48, 48])
    """

    returns_new_tensors = True

    def __init__(
        self,
        patch_size: int = 4,
        mask_ratio: float = 0.75,
        fill: Fill = "zero",
        view: ViewTransform | None = None,
    ) -> None:
        if patch_size < 1:
            raise ValueError(
                f"patch_size={patch_size!r} is invalid: expected a positive int "
                "(set data.corruption.init_args.patch_size)"
            )
        check_mask_ratio(mask_ratio, "data.corruption.init_args.mask_ratio")
        if fill not in ("zero", "noise", "mean"):
            raise ValueError(
                f"fill={fill!r} is invalid: expected 'zero', 'noise' or 'mean' "
                "(set data.corruption.init_args.fill)"
            )
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.fill = fill
        self.view = view

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid ``(h, w)`` of ``height x width`` images; raises if the patch misfits."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"patch_size={p} does not divide the {height}x{width} images; set "
                f"data.corruption.init_args.patch_size to a divisor of both sides (or resize "
                "the images with data.image_size)"
            )
        return height // p, width // p

    def num_masked(self, height: int, width: int) -> int:
        """Hidden patches per image: ``round(mask_ratio * h * w)``, at least 1, below ``h * w``."""
        h, w = self.grid_size(height, width)
        count = round(self.mask_ratio * h * w)
        if not 0 < count < h * w:
            raise ValueError(
                f"mask_ratio={self.mask_ratio} hides {count} of the {h * w} patches of "
                f"{height}x{width} images with patch_size={self.patch_size}; each image needs "
                "hidden and visible patches: change data.corruption.init_args.mask_ratio or "
                "patch_size"
            )
        return count

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Batch:
        if self.view is not None:
            images = self.view(images, generator)
        batch, _, height, width = images.shape
        h, w = self.grid_size(height, width)
        mask = sample_patch_mask(batch, h, w, self.num_masked(height, width), generator)
        mask = mask.to(images.device)  # [B, h, w]
        hidden = mask_to_pixels(mask, self.patch_size)  # [B, 1, H, W]
        if self.fill == "zero":
            masked = images.masked_fill(hidden, 0.0)
        elif self.fill == "noise":
            seed = int(torch.randint(2**62, (1,), generator=generator).item())
            device_generator = torch.Generator(device=images.device).manual_seed(seed)
            noise = torch.rand(
                images.shape, generator=device_generator, device=images.device, dtype=images.dtype
            )  # [B, 3, H, W]
            masked = torch.where(hidden, noise, images)
        else:
            visible = (~hidden).to(images.dtype)  # [B, 1, H, W]
            mean = (images * visible).sum(dim=(2, 3), keepdim=True) / visible.sum(
                dim=(2, 3), keepdim=True
            )  # [B, 3, 1, 1]
            masked = torch.where(hidden, mean, images)
        return Batch(views=[masked], labels=labels, mask=mask, clean=images)


def require_mask(batch: Batch, method: str) -> tuple[Tensor, Tensor]:
    """The ``[B, h, w]`` patch mask and ``[B, 3, H, W]`` clean image of a :class:`PatchMask`
    batch, or an error telling the user of ``method`` how to get them."""
    if batch.mask is None or batch.clean is None:
        raise ValueError(
            f"{method} needs a patch mask and the clean image in each batch, but the "
            "datamodule's corruption gave neither; unset data.corruption to use the method's "
            "default (PatchMask), or set data.corruption=PatchMask"
        )
    return batch.mask, batch.clean
