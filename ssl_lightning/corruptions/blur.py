"""Gaussian blur with a sigma (and kernel size) per image, as two batched matmuls."""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_lightning.corruptions.base import apply_at_, mask_indices


def blur_kernel_sizes(sigma: Tensor, max_size: int | None = None) -> Tensor:
    """Odd kernel sizes ``2 * ceil(3 * sigma) + 1`` (the Gaussian's +-3 sigma), per image.

    Args:
        sigma: ``[B]`` positive standard deviations in pixels.
        max_size: largest allowed size (reflect padding needs ``size // 2 < side``); larger
            sizes are lowered to the largest odd size that fits.

    Returns:
        ``[B]`` int64 odd kernel sizes.
    """
    sizes = (3.0 * sigma.double()).ceil_().long() * 2 + 1  # [B]
    if max_size is not None:
        sizes.clamp_(max=max_size - (1 - max_size % 2))
    return sizes


def _reflect_blur_matrix(
    sigma: Tensor, radius: Tensor, max_radius: int, n: int, dtype: torch.dtype
) -> Tensor:
    """Per-image ``[B, n, n]`` matrices of a 1-D Gaussian blur with reflect padding.

    Row ``i`` holds the kernel taps ``w[j] ~ exp(-j^2 / (2 sigma^2))`` for ``|j| <= radius``
    (normalized to sum to one), each added at column ``reflect(i + j)``, where reflection
    mirrors about the edge pixels (``-1 -> 1``, ``n -> n - 2``) like ``F.pad(mode="reflect")``.
    Taps beyond an image's own radius are zero, so one matrix shape serves the whole batch.
    """
    device = sigma.device
    offsets = torch.arange(-max_radius, max_radius + 1, device=device)  # [K]
    taps = (offsets.to(dtype).view(1, -1) / sigma.to(dtype).view(-1, 1)).square_()  # [B, K]
    taps = taps.mul_(-0.5).exp_().mul_(offsets.abs().view(1, -1) <= radius.view(-1, 1))
    taps = taps.div_(taps.sum(dim=1, keepdim=True))  # [B, K]
    source = torch.arange(n, device=device).view(-1, 1) + offsets  # [n, K]
    source = source.abs()  # mirror the left edge: -j -> j
    source = torch.where(source > n - 1, 2 * (n - 1) - source, source)  # and the right one
    batch, k = taps.shape
    matrix = torch.zeros(batch, n, n, dtype=dtype, device=device)
    return matrix.scatter_add_(
        2, source.expand(batch, n, k), taps.view(batch, 1, k).expand(batch, n, k)
    )


def _gaussian_blur(images: Tensor, sigma: Tensor, kernel_size: Tensor) -> Tensor:
    """Blurs every image; ``[B]`` CPU ``sigma`` and ``kernel_size``."""
    batch, channels, height, width = images.shape
    device, dtype = images.device, images.dtype
    radius = kernel_size // 2  # [B], on the CPU
    max_radius = int(radius.max())
    sigma, radius = sigma.to(device), radius.to(device)
    by = _reflect_blur_matrix(sigma, radius, max_radius, height, dtype)  # [B, H, H]
    bx = by
    if width != height:
        bx = _reflect_blur_matrix(sigma, radius, max_radius, width, dtype)  # [B, W, W]
    # Columns on the [B, C*H, W] view, then rows per channel: plain bmm calls (see resized_crop).
    # A contiguous Bx^T makes the first one faster than a transposed view would.
    bx_t = bx.transpose(1, 2).contiguous()  # [B, W, W]
    cols = torch.bmm(images.reshape(batch, channels * height, width), bx_t)
    cols = cols.view(batch * channels, height, width)
    by = by.unsqueeze(1).expand(-1, channels, -1, -1).reshape(batch * channels, height, height)
    return torch.bmm(by, cols).view(batch, channels, height, width)


def gaussian_blur(
    images: Tensor,
    sigma: Tensor,
    kernel_size: int | Tensor | None = None,
    apply: Tensor | None = None,
) -> Tensor:
    """Blurs every image with its own Gaussian, like torchvision's ``F.gaussian_blur``.

    Per image, equal to float rounding to ``F.gaussian_blur(img, [k, k], [s, s])``: the
    separable kernel ``exp(-x^2 / (2 s^2))`` over ``k`` taps, normalized, with reflect padding
    of ``k // 2`` pixels. Blurring is separable and linear, so each image becomes
    ``By @ img @ Bx^T`` with per-image ``[H, H]`` and ``[W, W]`` matrices that hold the kernel
    and the padding: two batched matmuls whatever the sigmas and kernel sizes. That costs
    ``O(H + W)`` per pixel instead of ``O(k)``, which for the small images this library
    trains on is far cheaper than a per-image convolution.

    Args:
        images: ``[B, C, H, W]`` float images.
        sigma: ``[B]`` positive standard deviations in pixels.
        kernel_size: odd kernel size, one for all (int) or ``[B]`` per image; ``None`` derives
            it from each sigma with :func:`blur_kernel_sizes`, capped to fit the image.
        apply: optional ``[B]`` bool; images where it is ``False`` are returned unchanged.

    Returns:
        ``[B, C, H, W]`` blurred images.

    Examples:
        >>> out = gaussian_blur(torch.rand(4, 3, 32, 32), torch.tensor([0.5, 1.0, 1.5, 2.0]))
        >>> out.shape
        torch.Size([4, 3, 32, 32])
    """
    batch, _, height, width = images.shape
    side = min(height, width)
    sigma = sigma.cpu()
    if (sigma <= 0).any():
        raise ValueError(f"blur sigma must be > 0, got {float(sigma.min())}")
    if kernel_size is None:
        sizes = blur_kernel_sizes(sigma, max_size=2 * side - 1)
    else:
        sizes = torch.as_tensor(kernel_size, dtype=torch.long).cpu().expand(batch)
        check_kernel_size(sizes, height, width)
    apply = torch.ones(batch, dtype=torch.bool) if apply is None else apply.cpu()
    return blur_(images.clone(), sigma, sizes, apply)


def check_kernel_size(sizes: Tensor, height: int, width: int) -> None:
    """Raises ``ValueError`` unless every size is odd, positive and fits ``height x width``."""
    side = min(height, width)
    bad = sizes[(sizes < 1) | (sizes % 2 == 0) | (sizes // 2 >= side)]
    if bad.numel() > 0:
        raise ValueError(
            f"blur_kernel_size={int(bad[0])} is invalid for {height}x{width} images: expected "
            f"an odd size with size // 2 < {side} (reflect padding needs it); lower "
            f"blur_kernel_size or set it to None to derive it from sigma"
        )


def blur_(images: Tensor, sigma: Tensor, kernel_size: Tensor, apply: Tensor) -> Tensor:
    """In-place :func:`gaussian_blur` of the images where ``apply`` is set; CPU parameters."""
    index = mask_indices(apply)
    return apply_at_(images, index, _gaussian_blur, sigma[index], kernel_size[index])
