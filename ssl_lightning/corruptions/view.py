"""One view's augmentation recipe, :class:`ViewTransform`, the unit every view corruption composes.

:class:`~ssl_lightning.corruptions.recipes.SimCLRViews`, ``BYOLViews`` and
``MultiCropViews`` take :class:`ViewTransform` values: a new op is a new field with an "off"
default, and every corruption gets it without a new argument.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from ssl_lightning.corruptions.base import (
    check_probability,
    check_range,
    check_size,
    check_strength,
    to_unit_float,
)
from ssl_lightning.corruptions.blur import blur_, blur_kernel_sizes, check_kernel_size
from ssl_lightning.corruptions.color import _color_jitter_, _grayscale_, _solarize_
from ssl_lightning.corruptions.geometry import resized_crop, resizes_per_box
from ssl_lightning.corruptions.sampling import (
    sample_bernoulli,
    sample_crop_boxes,
    sample_jitter_factors,
    sample_permutations,
    sample_uniform,
)

# On a CPU, views of at least this many pixels are augmented one at a time (ViewTransform);
# below it the batched ops win, their per-call overhead spread over the batch (level at 128 px,
# 1.2-1.3x faster one at a time at 160 px from uint8 images; benchmarks/per_view.py).
PER_VIEW_MIN_PIXELS = 160 * 160


@dataclass(frozen=True)
class _ViewParams:
    """The random parameters of ``B`` views, CPU tensors with one row per view."""

    boxes: Tensor  # [B, 4] (top, left, height, width)
    flip: Tensor  # [B] bool
    jitter: Tensor  # [B] bool
    factors: Tensor  # [B, 4] brightness, contrast, saturation, hue
    order: Tensor  # [B, 4] the jitter ops' order
    gray: Tensor  # [B] bool
    blur: Tensor | None  # [B] bool, None when blur is off
    sigma: Tensor | None  # [B]
    kernel: Tensor | None  # [B] int
    solarize: Tensor | None  # [B] bool, None when solarization is off

    def row(self, i: int) -> _ViewParams:
        """The parameters of view ``i`` alone."""
        rows: dict[str, Any] = {}
        for f in fields(self):
            t = getattr(self, f.name)
            rows[f.name] = None if t is None else t[i : i + 1]
        return _ViewParams(**rows)


@dataclass(frozen=True)
class ViewTransform:
    """One view's augmentation recipe: crop -> flip -> jitter -> grayscale -> blur -> solarize.

    SimCLR's crop, flip, jitter and grayscale (https://arxiv.org/abs/2002.05709) with BYOL's
    jitter strengths (0.4, 0.4, 0.2, 0.1; https://arxiv.org/abs/2006.07733) by default; blur
    and solarization are off by default. SimCLR's own strengths (0.8 s, 0.8 s, 0.8 s, 0.2 s)
    are ``recipes.simclr_view(s)`` (``SimCLRViews`` uses s = 0.5). Every image draws its own
    parameters from the caller's CPU generator; the parameters of an op that is off are not
    drawn, so adding an op leaves the views of recipes without it unchanged.

    Attributes:
        size: output side length; ``None`` keeps the input size. Must not exceed the input's
            shorter side (a view is a crop, not an upsampling of the whole image).
        crop_scale: (min, max) fraction of the image area kept by the random crop.
        crop_ratio: (min, max) aspect ratio ``w / h`` of the crop.
        flip_p: probability of a horizontal flip.
        jitter_p: probability of color jitter.
        brightness: brightness strength; factor from ``U[max(0, 1 - s), 1 + s]``.
        contrast: contrast strength, same rule.
        saturation: saturation strength, same rule.
        hue: hue strength in ``[0, 0.5]``; shift from ``U[-hue, hue]`` turns.
        grayscale_p: probability of converting to grayscale.
        blur_p: probability of a Gaussian blur.
        blur_sigma: (min, max) of the blur's standard deviation in pixels, drawn uniformly.
        blur_kernel_size: odd kernel size; ``None`` uses ``2 * ceil(3 * sigma) + 1`` per image.
        solarize_p: probability of solarization.
        solarize_threshold: pixels at or above it are inverted, in ``[0, 1]``.

    Examples:
        >>> view = ViewTransform(size=32, blur_p=0.5)
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
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int | None = None
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self) -> None:
        check_size("size", self.size)
        check_range("crop_scale", self.crop_scale)
        check_range("crop_ratio", self.crop_ratio)
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            check_probability(name, getattr(self, name))
        for name in ("brightness", "contrast", "saturation"):
            check_strength(name, getattr(self, name))
        check_strength("hue", self.hue, maximum=0.5)
        check_range("blur_sigma", self.blur_sigma)
        k = self.blur_kernel_size
        if k is not None and (k < 1 or k % 2 == 0):
            raise ValueError(
                f"blur_kernel_size={k!r} is invalid: expected an odd positive int, or None to "
                "derive it from sigma."
            )
        if not 0.0 <= self.solarize_threshold <= 1.0:
            raise ValueError(
                f"solarize_threshold={self.solarize_threshold!r} is invalid: expected a value "
                "in [0, 1] (images are in [0, 1] when augmented)."
            )

    def __call__(self, images: Tensor, generator: torch.Generator, num_views: int = 1) -> Tensor:
        """Augments every image ``num_views`` times, each view with its own random parameters.

        All views are one batch for every op (one call each, whatever ``num_views``), and the
        crops read the input without copying it per view; the result equals this transform
        applied once to ``images.repeat(num_views, 1, 1, 1)``.

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``, or uint8 in ``[0, 255]``, on any
                device. Where crops are resized one box at a time (a CPU, views of 64 x 64 or
                more), uint8 crops are resized as uint8, as PIL and torchvision do, then
                scaled to ``[0, 1]``: a quarter of the bytes to read, and no float copy of
                the whole images; elsewhere the images are made float first.
            generator: CPU generator to draw the parameters from.
            num_views: views per image (at least 1).

        Returns:
            ``[V * B, 3, size, size]`` (or ``[V * B, 3, H, W]``) views in ``[0, 1]``, view-major:
            rows ``v * B`` to ``(v + 1) * B`` are view ``v`` of the batch.
        """
        if num_views < 1:
            raise ValueError(f"num_views={num_views!r} is invalid: expected an int >= 1.")
        _, _, height, width = images.shape
        batch = num_views * images.shape[0]
        if self.size is not None and self.size > min(height, width):
            raise ValueError(
                f"view size={self.size} is larger than the {height}x{width} training images; "
                f"lower the corruption's size, or give the images at least {self.size} pixels "
                "a side (data.image_size for image folders)"
            )
        size = (height, width) if self.size is None else (self.size, self.size)
        params = self._sample(batch, height, width, size, generator)
        if images.dtype == torch.uint8 and not resizes_per_box(images.device, size):
            images = to_unit_float(images)
        if images.device.type != "cpu" or size[0] * size[1] < PER_VIEW_MIN_PIXELS:
            return self._augment(images, params, size)
        # On a CPU, one view at a time through every op: its pixels stay in the cache, where
        # each batched op streams all the views through memory (1.3x to 1.8x faster from 160 px;
        # benchmarks/per_view.py). The same parameters give the same views.
        dtype = images.dtype if images.is_floating_point() else torch.float32
        views = images.new_empty(batch, images.shape[1], *size, dtype=dtype)
        for i in range(batch):
            j = i % images.shape[0]
            self._augment(images[j : j + 1], params.row(i), size, out=views[i : i + 1])
        return views

    def _sample(
        self, batch: int, height: int, width: int, size: tuple[int, int], generator: torch.Generator
    ) -> _ViewParams:
        """Draws the parameters of ``batch`` views, always in this order (views reproduce)."""
        boxes = sample_crop_boxes(batch, height, width, self.crop_scale, self.crop_ratio, generator)
        flip = sample_bernoulli(batch, self.flip_p, generator)  # [B]
        jitter = sample_bernoulli(batch, self.jitter_p, generator)  # [B]
        factors = sample_jitter_factors(
            batch, self.brightness, self.contrast, self.saturation, self.hue, generator
        )  # [B, 4]
        order = sample_permutations(batch, 4, generator)  # [B, 4]
        gray = sample_bernoulli(batch, self.grayscale_p, generator)  # [B]
        blur = sigma = kernel = solarize = None
        if self.blur_p > 0.0:
            blur = sample_bernoulli(batch, self.blur_p, generator)  # [B]
            sigma = sample_uniform(batch, self.blur_sigma, generator)  # [B]
            kernel = self._kernel_sizes(sigma, size)  # [B]
        if self.solarize_p > 0.0:
            solarize = sample_bernoulli(batch, self.solarize_p, generator)  # [B]
        return _ViewParams(boxes, flip, jitter, factors, order, gray, blur, sigma, kernel, solarize)

    def _augment(
        self, images: Tensor, p: _ViewParams, size: tuple[int, int], out: Tensor | None = None
    ) -> Tensor:
        """The views of ``p`` (row ``i`` of image ``i % B``), batched per op, into ``out``."""
        # resized_crop writes a new tensor (or out), so the other ops can work on it in place.
        if images.dtype == torch.uint8:
            # uint8 crops (one resize per box, integer arithmetic, in the images' layout), then
            # one copy into contiguous floats in [0, 1].
            crops = resized_crop(images, p.boxes, size, flip=p.flip)
            if out is None:
                out = torch.empty(crops.shape, device=crops.device)
            views = torch.div(crops, 255, out=out)
        else:
            views = resized_crop(images, p.boxes, size, flip=p.flip, out=out)
        _color_jitter_(views, p.factors, p.order, p.jitter)
        _grayscale_(views, p.gray)
        if p.blur is not None and p.sigma is not None and p.kernel is not None:
            # Bilinear weights sum to one only up to rounding: blur inputs in [0, 1] as well.
            blur_(views.clamp_(0.0, 1.0), p.sigma, p.kernel, p.blur)
        if p.solarize is not None:
            _solarize_(views.clamp_(0.0, 1.0), self.solarize_threshold, p.solarize)
        return views.clamp_(0.0, 1.0)

    def _kernel_sizes(self, sigma: Tensor, size: tuple[int, int]) -> Tensor:
        if self.blur_kernel_size is None:
            return blur_kernel_sizes(sigma, max_size=2 * min(size) - 1)
        kernel = torch.full_like(sigma, self.blur_kernel_size, dtype=torch.long)
        check_kernel_size(kernel, *size)
        return kernel
