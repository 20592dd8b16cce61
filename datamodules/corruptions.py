"""Batched, per-image-random, device-agnostic corruptions and augmentations.

Every op takes a float batch ``[B, 3, H, W]`` in ``[0, 1]`` on any device and explicit
per-image parameters, so it can be checked against torchvision's per-image functional op.
Parameters are drawn on the CPU from a ``torch.Generator`` the datamodule owns (seeded per
rank and per batch), then moved to the images' device: the same seed gives the same views
on CPU and GPU.

Layers, bottom up: the ops (``resized_crop``, ``hflip``, ``adjust_*``, ``color_jitter``,
``grayscale``) take per-image parameters and match torchvision's per-image tensor kernels to
float rounding; the ``sample_*`` functions draw those parameters with torchvision's
distributions; :class:`ViewTransform` is one view's recipe; corruptions such as
:class:`SimCLRViews` turn recipes into the :class:`Batch` a method trains on. No op loops over
images in Python: ops applied to a random subset (flip, jitter, grayscale) index the subset,
run once on it, and write it back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from datamodules.batch import Batch


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


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p!r} is not a probability: expected a value in [0, 1].")


def _check_range(name: str, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if not 0.0 < low <= high:
        raise ValueError(
            f"{name}={tuple(bounds)!r} is not a valid range: expected (min, max) with "
            f"0 < min <= max."
        )


def _check_strength(name: str, value: float, maximum: float | None = None) -> None:
    if value < 0.0 or (maximum is not None and value > maximum):
        expected = ">= 0" if maximum is None else f"in [0, {maximum}]"
        raise ValueError(f"{name}={value!r} is not a valid jitter strength: expected {expected}.")


# ---------------------------------------------------------------------------------------------
# Parameter samplers. Every parameter is drawn on the CPU from the caller's generator, so a seed
# gives the same views on any device; ops move what they need to the images' device.
# ---------------------------------------------------------------------------------------------


def sample_bernoulli(n: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Draws an ``[n]`` bool CPU mask, each entry ``True`` with probability ``p``."""
    _check_probability("p", p)
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
    _check_strength("brightness", brightness)
    _check_strength("contrast", contrast)
    _check_strength("saturation", saturation)
    _check_strength("hue", hue, maximum=0.5)
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
    _check_range("scale", scale)
    _check_range("ratio", ratio)
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
    if in_ratio < min(ratio):
        fallback_h, fallback_w = round(width / min(ratio)), width
    elif in_ratio > max(ratio):
        fallback_h, fallback_w = height, round(height * max(ratio))
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


# ---------------------------------------------------------------------------------------------
# Per-image subsets.
# ---------------------------------------------------------------------------------------------


def _apply_at_(images: Tensor, index: Tensor, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """Replaces ``images[index]`` with ``fn(images[index], *args)``, in place.

    Working on the selected subset (index, op, write back) skips the cost for the rest. A CPU
    ``index``, as the samplers' masks give, costs no device sync.
    """
    if index.numel() > 0:
        index_dev = index.to(images.device)
        images.index_copy_(0, index_dev, fn(images.index_select(0, index_dev), *args))
    return images


def _where(mask: Tensor) -> Tensor:
    """``[K]`` indices of the ``True`` entries of a ``[B]`` bool mask."""
    return mask.nonzero()[:, 0]


# ---------------------------------------------------------------------------------------------
# Geometry.
# ---------------------------------------------------------------------------------------------


def _resample_matrix(
    start: Tensor,
    length: Tensor,
    in_size: int,
    out_size: int,
    antialias: bool,
    dtype: torch.dtype,
    flip: Tensor | None = None,
) -> Tensor:
    """Rows that resize the span ``[start, start + length)`` of one axis to ``out_size``.

    The triangle (bilinear) filter of PyTorch's ``interpolate(..., antialias=True)``: output
    pixel ``i`` is centered at ``center = scale * (i + 0.5)`` in crop coordinates; when
    downsampling, the filter is stretched by ``scale`` so every input pixel contributes.
    Pixels outside the span get zero weight and each row is normalized to sum to one, which
    also reproduces the edge clamping of plain bilinear resizing.

    Args:
        start: ``[B]`` first pixel of the span.
        length: ``[B]`` span length (at least 1).
        in_size: axis length of the input.
        out_size: axis length of the output.
        antialias: stretch the filter when downsampling.
        dtype: dtype of the result.
        flip: optional ``[B]`` bool; reverses the output axis of those images.

    Returns:
        ``[B, out_size, in_size]`` resampling matrices.
    """
    device = start.device
    start = start.to(dtype).view(-1, 1, 1)  # [B, 1, 1]
    length = length.to(dtype).view(-1, 1, 1)  # [B, 1, 1]
    scale = length / out_size  # [B, 1, 1]
    support = scale.clamp_min(1.0) if antialias else torch.ones_like(scale)  # [B, 1, 1]
    i = torch.arange(out_size, device=device, dtype=dtype).view(1, -1, 1)  # [1, out, 1]
    if flip is not None:
        # A flipped output reads the span right to left: i -> out - 1 - i.
        i = i + flip.to(device=device, dtype=dtype).view(-1, 1, 1) * (out_size - 1 - 2 * i)
    center = scale * (i + 0.5) / support  # [B, out, 1]
    offset = torch.arange(in_size, device=device, dtype=dtype).view(1, 1, -1) - start  # [B, 1, in]
    # 1 inside the span, 0 outside (offsets are whole numbers); float ops beat bool masks on CPU.
    inside = torch.minimum(offset + 1.0, length - offset).clamp_(0.0, 1.0)  # [B, 1, in]
    weights = ((offset + 0.5) / support - center).abs_().neg_().add_(1.0)  # [B, out, in]
    weights = weights.clamp_min_(0.0).mul_(inside)
    return weights.div_(weights.sum(dim=2, keepdim=True))


def resized_crop(
    images: Tensor,
    boxes: Tensor,
    size: int | tuple[int, int],
    antialias: bool = True,
    flip: Tensor | None = None,
) -> Tensor:
    """Crops one box per image and resizes it bilinearly, like ``F.resized_crop``.

    Equal, up to float rounding, to torchvision's per-image
    ``F.resized_crop(img, top, left, h, w, size, BILINEAR, antialias)``. Resizing is separable,
    so each image becomes ``Wy @ img @ Wx^T`` with per-image matrices that hold both the crop
    and the filter: two batched matmuls, whatever the box sizes.

    Args:
        images: ``[B, C, H, W]`` float images.
        boxes: ``[B, 4]`` int ``(top, left, height, width)`` boxes inside the image.
        size: output ``(height, width)``; an int gives a square output (as
            ``RandomResizedCrop`` reads it, not ``F.resize``'s shorter side).
        antialias: low-pass filter when downsampling, as torchvision's default.
        flip: optional ``[B]`` bool; flips those outputs horizontally at no extra cost by
            reversing the rows of ``Wx``.

    Returns:
        ``[B, C, size_h, size_w]`` images.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    batch, channels, height, width = images.shape
    boxes = boxes.to(images.device)
    dtype = images.dtype
    wy = _resample_matrix(boxes[:, 0], boxes[:, 2], height, out_h, antialias, dtype)  # [B, oh, H]
    wx = _resample_matrix(boxes[:, 1], boxes[:, 3], width, out_w, antialias, dtype, flip)
    # Columns first on the [B, C*H, W] view (no copy), then rows per channel. Both are plain
    # bmm calls: matmul's broadcasting path over channels is ~10x slower on the CPU.
    cols = torch.bmm(images.reshape(batch, channels * height, width), wx.transpose(1, 2))
    cols = cols.view(batch * channels, height, out_w)  # [B*C, H, out_w]
    wy = wy.unsqueeze(1).expand(-1, channels, -1, -1).reshape(batch * channels, out_h, height)
    return torch.bmm(wy, cols).view(batch, channels, out_h, out_w)


def hflip(images: Tensor, flip: Tensor) -> Tensor:
    """Flips ``[B, C, H, W]`` images horizontally where the ``[B]`` bool ``flip`` is set."""
    return _apply_at_(images.clone(), _where(flip), lambda x: x.flip(-1))


# ---------------------------------------------------------------------------------------------
# Color. Formulas follow torchvision's tensor kernels so results agree to float rounding.
# ---------------------------------------------------------------------------------------------


def _per_image(factor: Tensor, images: Tensor) -> Tensor:
    """``[B]`` factors as ``[B, 1, 1, 1]`` on the images' device and dtype."""
    return factor.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)


def rgb_to_grayscale(images: Tensor) -> Tensor:
    """ITU-R 601 luma of ``[B, 3, H, W]`` images, as ``F.rgb_to_grayscale``: ``[B, 1, H, W]``."""
    r, g, b = images.unbind(dim=1)  # [B, H, W] each
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


# The color kernels below work in place: color_jitter runs them on its own gathered copies,
# which saves an allocation and a pass per op. The public ops wrap them around a clone.


def _blend_(images: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """``ratio * images + (1 - ratio) * other``, clamped to ``[0, 1]``; ``ratio`` is ``[B]``."""
    ratio = _per_image(ratio, images)
    return images.mul_(ratio).add_(other * (1.0 - ratio)).clamp_(0.0, 1.0)


def _brightness_(images: Tensor, factor: Tensor) -> Tensor:
    return images.mul_(_per_image(factor, images)).clamp_(0.0, 1.0)


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
    hue.add_(_per_image(hue_factor, images).view(-1, 1, 1), alpha=6.0)
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
    identity = torch.tensor(_JITTER_IDENTITY, dtype=factors.dtype, device=factors.device)
    todo = apply[:, None] & (factors != identity)  # [B, 4], per image and op
    for slot in range(order.shape[1]):
        for op, kernel in enumerate(_JITTER_KERNELS):
            index = _where(todo[:, op] & (order[:, slot] == op))  # [K]
            _apply_at_(images, index, kernel, factors[index, op])
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
    return _apply_at_(images, _where(apply), lambda x: rgb_to_grayscale(x).expand_as(x))


def grayscale(images: Tensor, apply: Tensor) -> Tensor:
    """Replaces images with their 3-channel grayscale where the ``[B]`` bool ``apply`` is set."""
    return _grayscale_(images.clone(), apply)


# ---------------------------------------------------------------------------------------------
# Recipes and corruptions.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewTransform:
    """One view's augmentation recipe: crop -> flip -> color jitter -> grayscale.

    The SimCLR recipe (https://arxiv.org/abs/2002.05709) by default. Every image draws its own
    parameters. New ops (blur, solarization) become new fields with "off" defaults, and
    asymmetric (BYOL) or multi-crop setups combine several recipes, so callers keep calling
    ``transform(images, generator)``.

    Attributes:
        size: output side length; ``None`` keeps the input size.
        crop_scale: (min, max) fraction of the image area kept by the random crop.
        crop_ratio: (min, max) aspect ratio ``w / h`` of the crop.
        flip_p: probability of a horizontal flip.
        jitter_p: probability of color jitter.
        brightness: brightness strength; factor from ``U[max(0, 1 - s), 1 + s]``.
        contrast: contrast strength, same rule.
        saturation: saturation strength, same rule.
        hue: hue strength in ``[0, 0.5]``; shift from ``U[-hue, hue]`` turns.
        grayscale_p: probability of converting to grayscale.

    Examples:
        >>> view = ViewTransform(size=32)
        >>> view(torch.rand(8, 3, 32, 32), torch.Generator().manual_seed(0)).shape
        torch.Size([8, 3, 32, 32])
    """

    size: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 1:
            raise ValueError(f"size={self.size!r} is invalid: expected a positive int or None.")
        _check_range("crop_scale", self.crop_scale)
        _check_range("crop_ratio", self.crop_ratio)
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            _check_probability(name, getattr(self, name))
        for name in ("brightness", "contrast", "saturation"):
            _check_strength(name, getattr(self, name))
        _check_strength("hue", self.hue, maximum=0.5)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augments every image with its own random parameters.

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``, on any device.
            generator: CPU generator to draw the parameters from.

        Returns:
            ``[B, 3, size, size]`` (or ``[B, 3, H, W]``) views in ``[0, 1]``.
        """
        batch, _, height, width = images.shape
        size = (height, width) if self.size is None else (self.size, self.size)
        boxes = sample_crop_boxes(
            batch, height, width, self.crop_scale, self.crop_ratio, generator
        )  # [B, 4]
        flip = sample_bernoulli(batch, self.flip_p, generator)  # [B]
        jitter = sample_bernoulli(batch, self.jitter_p, generator)  # [B]
        factors = sample_jitter_factors(
            batch, self.brightness, self.contrast, self.saturation, self.hue, generator
        )  # [B, 4]
        order = sample_permutations(batch, 4, generator)  # [B, 4]
        gray = sample_bernoulli(batch, self.grayscale_p, generator)  # [B]

        # resized_crop returns a new tensor, so the color ops can work on it in place.
        views = resized_crop(images, boxes, size, flip=flip)
        _color_jitter_(views, factors, order, jitter)
        _grayscale_(views, gray)
        # Bilinear weights sum to one only up to rounding: keep views exactly in [0, 1].
        return views.clamp_(0.0, 1.0)


class SimCLRViews(Corruption):
    """``num_views`` independently augmented views of every image (SimCLR's recipe).

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    https://arxiv.org/abs/2002.05709. Each view is an independent draw of one
    :class:`ViewTransform` whose fields are this class's arguments.

    Args:
        num_views: number of views per image (at least 1).
        size: output side length; ``None`` keeps the input size.
        crop_scale: (min, max) fraction of the image area kept by the random crop.
        crop_ratio: (min, max) aspect ratio ``w / h`` of the crop.
        flip_p: probability of a horizontal flip.
        jitter_p: probability of color jitter.
        brightness: brightness jitter strength.
        contrast: contrast jitter strength.
        saturation: saturation jitter strength.
        hue: hue jitter strength, in ``[0, 0.5]``.
        grayscale_p: probability of converting to grayscale.

    Examples:
        >>> batch = SimCLRViews()(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long),
        ...                       torch.Generator().manual_seed(0))
        >>> [v.shape for v in batch.views]
        [torch.Size([4, 3, 32, 32]), torch.Size([4, 3, 32, 32])]
    """

    def __init__(
        self,
        num_views: int = 2,
        size: int | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        grayscale_p: float = 0.2,
    ) -> None:
        if num_views < 1:
            raise ValueError(f"num_views={num_views!r} is invalid: expected an int >= 1.")
        self.num_views = num_views
        self.view = ViewTransform(
            size=size,
            crop_scale=crop_scale,
            crop_ratio=crop_ratio,
            flip_p=flip_p,
            jitter_p=jitter_p,
            brightness=brightness,
            contrast=contrast,
            saturation=saturation,
            hue=hue,
            grayscale_p=grayscale_p,
        )

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Batch:
        views = [self.view(images, generator) for _ in range(self.num_views)]
        return Batch(views=views, labels=labels)
