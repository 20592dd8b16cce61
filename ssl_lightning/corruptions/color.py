"""Color: brightness, contrast, saturation, hue, color jitter, grayscale and solarization.

Formulas follow torchvision's tensor kernels so results agree to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ssl_lightning.corruptions.base import apply_at_, mask_indices, per_image


def rgb_to_grayscale(images: Tensor) -> Tensor:
    """ITU-R 601 luma of ``[B, 3, H, W]`` images, as ``F.rgb_to_grayscale``: ``[B, 1, H, W]``."""
    r, g, b = images.unbind(dim=1)  # [B, H, W] each
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


# The color kernels below work in place: color_jitter runs them on its own gathered copies,
# which saves an allocation and a pass per op. The public ops wrap them around a clone.


def _blend_(images: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """``ratio * images + (1 - ratio) * other``, clamped to ``[0, 1]``; ``ratio`` is ``[B]``."""
    ratio = per_image(ratio, images)
    return images.mul_(ratio).add_(other * (1.0 - ratio)).clamp_(0.0, 1.0)


def _brightness_(images: Tensor, factor: Tensor) -> Tensor:
    return images.mul_(per_image(factor, images)).clamp_(0.0, 1.0)


def _contrast_(images: Tensor, factor: Tensor) -> Tensor:
    mean = rgb_to_grayscale(images).mean(dim=(1, 2, 3), keepdim=True)  # [B, 1, 1, 1]
    return _blend_(images, mean, factor)


def _saturation_(images: Tensor, factor: Tensor) -> Tensor:
    return _blend_(images, rgb_to_grayscale(images), factor)


def _hue_(images: Tensor, hue_factor: Tensor) -> Tensor:
    r, g, b = images.unbind(dim=1)  # [B, H, W] each
    maxc = torch.maximum(r, g)  # [B, H, W]
    torch.maximum(maxc, b, out=maxc)
    delta = torch.minimum(r, g)  # [B, H, W]
    torch.minimum(delta, b, out=delta)
    torch.sub(maxc, delta, out=delta)  # max - min = V * S
    # 0 where the channel holds the max, 1 elsewhere: exact 0/1 floats, which are much faster
    # than bool masks on the CPU.
    not_r = (maxc - r).sign_()
    not_g = (maxc - g).sign_()
    # delta * hue in sextants for max = r, g, b; ties go to red, then green, as in torchvision.
    hue = torch.add(b - r, delta, alpha=2.0)
    hue.lerp_(torch.add(r - g, delta, alpha=4.0), not_g)
    hue = torch.lerp(g - b, hue, not_r)
    # Gray pixels (delta == 0) have a zero numerator, so any positive divisor gives hue 0.
    hue.div_(delta.clamp_min(1e-12))
    hue.add_(per_image(hue_factor, images).view(-1, 1, 1), alpha=6.0)
    hue.sub_(hue.div(6.0).floor_().mul_(6.0))  # mod 6, into [0, 6)
    # With a = |hue - c|, c = (2 - n) mod 6 = 3, 5, 1: clamp(min(k, 4 - k)) = clamp(|a - 3| - 1).
    # The input is no longer needed, so k is computed in its memory.
    c = torch.tensor([3.0, 5.0, 1.0], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    k = torch.sub(hue.unsqueeze(1), c, out=images)  # [B, 3, H, W]
    k.abs_().sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    return k.mul_(delta.unsqueeze(1)).neg_().add_(maxc.unsqueeze(1))


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """Scales ``[B, 3, H, W]`` images by the ``[B]`` ``factor``, as ``F.adjust_brightness``."""
    return _brightness_(images.clone(), factor)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blends each image with its mean gray by ``[B]`` ``factor``, as ``F.adjust_contrast``."""
    return _contrast_(images.clone(), factor)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blends each image with its grayscale by ``[B]`` ``factor``, as ``F.adjust_saturation``."""
    return _saturation_(images.clone(), factor)


def adjust_hue(images: Tensor, hue_factor: Tensor) -> Tensor:
    """Rotates the HSV hue of ``[B, 3, H, W]`` images by ``[B]`` ``hue_factor`` turns.

    Same result as ``F.adjust_hue`` (RGB -> HSV, shift, HSV -> RGB) with fewer passes: hue is
    kept in sextants ``[0, 6)`` and converted back with the closed form
    ``c = V - V * S * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6 * hue) mod 6``, where
    ``n = 5, 3, 1`` for red, green, blue and ``V * S = max - min``. ``hue_factor`` is in
    ``[-0.5, 0.5]`` as for torchvision (other values wrap around).
    """
    return _hue_(images.clone(), hue_factor)


# Index = the op id used by ``order`` in color_jitter; value = the factor that leaves images as
# they are (ColorJitter skips an op whose strength is zero, and so do we, per image).
_JITTER_KERNELS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    _brightness_,
    _contrast_,
    _saturation_,
    _hue_,
)
_JITTER_IDENTITY = (1.0, 1.0, 1.0, 0.0)


def _color_jitter_(images: Tensor, factors: Tensor, order: Tensor, apply: Tensor) -> Tensor:
    if images.shape[0] == 1:  # one view (the CPU path of ViewTransform): no masks, no gathers
        if bool(apply[0]):
            values = factors[0].tolist()
            for op in order[0].tolist():
                if values[op] != _JITTER_IDENTITY[op]:
                    _JITTER_KERNELS[op](images, factors[:, op])
        return images
    identity = torch.tensor(_JITTER_IDENTITY, dtype=factors.dtype, device=factors.device)
    todo = apply[:, None] & (factors != identity)  # [B, 4], per image and op
    for slot in range(order.shape[1]):
        for op, kernel in enumerate(_JITTER_KERNELS):
            index = mask_indices(todo[:, op] & (order[:, slot] == op))  # [K]
            apply_at_(images, index, kernel, factors[index, op])
    return images


def color_jitter(images: Tensor, factors: Tensor, order: Tensor, apply: Tensor) -> Tensor:
    """Applies brightness, contrast, saturation and hue in a per-image order, like ``ColorJitter``.

    For each of the four slots, the images whose op in that slot is ``j`` are gathered, get op
    ``j``, and are written back: every image pays for its own four ops, not sixteen. An op is
    skipped where its factor is the identity, as ``ColorJitter`` skips a zero strength. Pass
    the parameters on the CPU (as the samplers return them) to avoid device syncs.

    Args:
        images: ``[B, 3, H, W]`` float images in ``[0, 1]``.
        factors: ``[B, 4]`` brightness, contrast, saturation factors and hue shift.
        order: ``[B, 4]`` int, a permutation of ``0..3`` per image: ``order[b, s]`` is the op
            applied in slot ``s`` (0 brightness, 1 contrast, 2 saturation, 3 hue).
        apply: ``[B]`` bool; images where it is ``False`` are returned unchanged, bit for bit.

    Returns:
        ``[B, 3, H, W]`` jittered images.
    """
    return _color_jitter_(images.clone(), factors, order, apply)


def _grayscale_(images: Tensor, apply: Tensor) -> Tensor:
    return apply_at_(images, mask_indices(apply), lambda x: rgb_to_grayscale(x).expand_as(x))


def grayscale(images: Tensor, apply: Tensor) -> Tensor:
    """Replaces images with their 3-channel grayscale where the ``[B]`` bool ``apply`` is set."""
    return _grayscale_(images.clone(), apply)


def _solarize_(images: Tensor, threshold: float, apply: Tensor) -> Tensor:
    return apply_at_(images, mask_indices(apply), lambda x: torch.where(x >= threshold, 1.0 - x, x))


def solarize(images: Tensor, threshold: float, apply: Tensor) -> Tensor:
    """Inverts the pixels ``>= threshold`` of the images where ``[B]`` bool ``apply`` is set.

    Equal to torchvision's ``F.solarize(img, threshold)`` per image (``1 - x`` where
    ``x >= threshold``) on float images in ``[0, 1]``; other images are returned unchanged.

    Args:
        images: ``[B, C, H, W]`` float images in ``[0, 1]``.
        threshold: pixels at or above it are inverted, in ``[0, 1]``.
        apply: ``[B]`` bool, which images to solarize.

    Returns:
        ``[B, C, H, W]`` images.
    """
    return _solarize_(images.clone(), threshold, apply)
