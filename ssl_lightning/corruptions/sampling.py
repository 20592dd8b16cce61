"""Parameter samplers.

Every parameter is drawn on the CPU from the caller's generator, so a seed gives the same views
on any device; ops move what they need to the images' device. Distributions follow
torchvision's transforms.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssl_lightning.corruptions.base import (
    check_probability,
    check_range,
    check_strength,
)


def sample_bernoulli(n: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Draws an ``[n]`` bool CPU mask, each entry ``True`` with probability ``p``."""
    check_probability("p", p)
    return torch.rand(n, generator=generator) < p


def sample_permutations(n: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Draws ``[n, k]`` int64: one uniformly random permutation of ``0..k-1`` per row."""
    return torch.rand(n, k, generator=generator).argsort(dim=1)


def sample_jitter_factors(
    n: int,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.2,
    hue: float = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draws ``[n, 4]`` color-jitter factors the way ``ColorJitter`` does.

    Columns are brightness, contrast and saturation factors from ``U[max(0, 1 - s), 1 + s]``
    and the hue shift from ``U[-hue, hue]``. A zero strength gives the identity factor
    (1, or 0 for hue), which :func:`color_jitter` skips, as ``ColorJitter`` does.
    """
    check_strength("brightness", brightness)
    check_strength("contrast", contrast)
    check_strength("saturation", saturation)
    check_strength("hue", hue, maximum=0.5)
    bounds = [(max(0.0, 1.0 - s), 1.0 + s) for s in (brightness, contrast, saturation)]
    bounds.append((-hue, hue))
    low = torch.tensor([b[0] for b in bounds])  # [4]
    high = torch.tensor([b[1] for b in bounds])  # [4]
    return torch.rand(n, 4, generator=generator) * (high - low) + low  # [n, 4]


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draws ``n`` crop boxes with the distribution of ``RandomResizedCrop.get_params``.

    Each image tries 10 (area, aspect ratio) pairs, area from ``U(scale) * H * W`` and ratio
    ``w / h`` log-uniform in ``ratio``; the first pair that fits the image wins and its corner
    is uniform over the valid positions. Images with no fitting pair get the centered
    whole-image crop clamped to the ratio range. All attempts are drawn at once.

    Args:
        n: number of boxes.
        height: image height ``H``.
        width: image width ``W``.
        scale: (min, max) fraction of the image area.
        ratio: (min, max) aspect ratio ``w / h``.
        generator: CPU generator to draw from.

    Returns:
        ``[n, 4]`` int64 CPU boxes ``(top, left, height, width)``, inside the image.
    """
    check_range("scale", scale)
    check_range("ratio", ratio)
    attempts = 10
    # float64 so that rounding to whole pixels agrees with torchvision's Python floats.
    draws = torch.rand(n, attempts, 2, generator=generator, dtype=torch.float64)  # [n, 10, 2]
    area = height * width * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])  # [n, 10]
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * draws[..., 1])  # [n, 10]
    # torch.round rounds half to even, like Python's round().
    w = torch.sqrt(area * aspect).round_().long()  # [n, 10]
    h = torch.sqrt(area / aspect).round_().long()  # [n, 10]
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # [n, 10]
    # argmax returns the first maximal index, i.e. the first attempt that fits.
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # [n, 1]
    found = valid.any(dim=1)  # [n]
    h = h.gather(1, first).squeeze(1)  # [n]
    w = w.gather(1, first).squeeze(1)  # [n]

    in_ratio = width / height
    # At least one pixel: a 1-pixel side clamped to a far-off ratio would round to 0.
    if in_ratio < min(ratio):
        fallback_h, fallback_w = max(1, round(width / min(ratio))), width
    elif in_ratio > max(ratio):
        fallback_h, fallback_w = height, max(1, round(height * max(ratio)))
    else:
        fallback_h, fallback_w = height, width
    h = torch.where(found, h, fallback_h)
    w = torch.where(found, w, fallback_w)

    # Uniform corner, as torch.randint(0, H - h + 1); the fallback crop is centered instead.
    corner = torch.rand(n, 2, generator=generator, dtype=torch.float64)  # [n, 2]
    slack = torch.stack([height - h, width - w], dim=1)  # [n, 2]
    top_left = (corner * (slack + 1)).floor_().long().minimum(slack)  # [n, 2]
    top_left = torch.where(found[:, None], top_left, slack // 2)
    return torch.cat([top_left, h[:, None], w[:, None]], dim=1)  # [n, 4]


def sample_uniform(
    n: int, bounds: tuple[float, float], generator: torch.Generator | None = None
) -> Tensor:
    """Draws ``[n]`` float32 CPU values from ``U[low, high]``, e.g. blur sigmas.

    Like ``GaussianBlur``'s ``uniform_(sigma_min, sigma_max)``, one value per image.
    """
    low, high = bounds
    return torch.rand(n, generator=generator) * (high - low) + low
