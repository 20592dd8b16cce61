"""Recipes: one view's augmentation (:class:`ViewTransform`) and the corruptions built from it.

:class:`SimCLRViews` (symmetric views), :class:`BYOLViews` (two asymmetric recipes) and
:class:`MultiCropViews` (global and local crops of two sizes) all call :class:`ViewTransform`,
the single recipe type: a new op is a new field with an "off" default.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ssl_lightning.datamodules.batch import Batch
from ssl_lightning.datamodules.corruptions.base import (
    Corruption,
    check_probability,
    check_range,
    check_size,
    check_strength,
)
from ssl_lightning.datamodules.corruptions.blur import blur_, blur_kernel_sizes, check_kernel_size
from ssl_lightning.datamodules.corruptions.color import _color_jitter_, _grayscale_, _solarize_
from ssl_lightning.datamodules.corruptions.geometry import resized_crop
from ssl_lightning.datamodules.corruptions.sampling import (
    sample_bernoulli,
    sample_crop_boxes,
    sample_jitter_factors,
    sample_permutations,
    sample_uniform,
)


@dataclass(frozen=True)
class ViewTransform:
    """One view's augmentation recipe: crop -> flip -> jitter -> grayscale -> blur -> solarize.

    The SimCLR recipe (https://arxiv.org/abs/2002.05709) by default; blur and solarization
    (BYOL, https://arxiv.org/abs/2006.07733) are off by default. Every image draws its own
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

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augments every image with its own random parameters.

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``, on any device.
            generator: CPU generator to draw the parameters from.

        Returns:
            ``[B, 3, size, size]`` (or ``[B, 3, H, W]``) views in ``[0, 1]``.
        """
        batch, _, height, width = images.shape
        if self.size is not None and self.size > min(height, width):
            raise ValueError(
                f"view size={self.size} is larger than the {height}x{width} training images; "
                f"lower the corruption's size, or give the images at least {self.size} pixels "
                "a side (data.image_size for image folders)"
            )
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

        # resized_crop returns a new tensor, so the other ops can work on it in place.
        views = resized_crop(images, boxes, size, flip=flip)
        _color_jitter_(views, factors, order, jitter)
        _grayscale_(views, gray)
        if self.blur_p > 0.0:
            blur = sample_bernoulli(batch, self.blur_p, generator)  # [B]
            sigma = sample_uniform(batch, self.blur_sigma, generator)  # [B]
            kernel = self._kernel_sizes(sigma, size)  # [B]
            # Bilinear weights sum to one only up to rounding: blur inputs in [0, 1] as well.
            blur_(views.clamp_(0.0, 1.0), sigma, kernel, blur)
        if self.solarize_p > 0.0:
            solarize = sample_bernoulli(batch, self.solarize_p, generator)  # [B]
            _solarize_(views.clamp_(0.0, 1.0), self.solarize_threshold, solarize)
        return views.clamp_(0.0, 1.0)

    def _kernel_sizes(self, sigma: Tensor, size: tuple[int, int]) -> Tensor:
        if self.blur_kernel_size is None:
            return blur_kernel_sizes(sigma, max_size=2 * min(size) - 1)
        kernel = torch.full_like(sigma, self.blur_kernel_size, dtype=torch.long)
        check_kernel_size(kernel, *size)
        return kernel


class SimCLRViews(Corruption):
    """``num_views`` independently augmented views of every image (SimCLR's recipe).

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    https://arxiv.org/abs/2002.05709. Each view is an independent draw of one
    :class:`ViewTransform` whose fields are this class's arguments. The paper blurs ImageNet
    views (``blur_p=0.5``) but not CIFAR's, hence the default.

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
        blur_p: probability of a Gaussian blur.
        blur_sigma: (min, max) blur standard deviation in pixels.
        blur_kernel_size: odd blur kernel size; ``None`` derives it from sigma.

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
        blur_p: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel_size: int | None = None,
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
            blur_p=blur_p,
            blur_sigma=blur_sigma,
            blur_kernel_size=blur_kernel_size,
        )

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Batch:
        views = [self.view(images, generator) for _ in range(self.num_views)]
        return Batch(views=views, labels=labels)


def _check_pair(name: str, values: tuple[float, float]) -> None:
    if len(values) != 2:
        raise ValueError(f"{name}={tuple(values)!r} is invalid: expected one value per view (2).")
    for i, p in enumerate(values):
        check_probability(f"{name}[{i}]", p)


class BYOLViews(Corruption):
    """Two views from two different recipes: BYOL's asymmetric augmentation.

    Grill et al., "Bootstrap Your Own Latent", https://arxiv.org/abs/2006.07733 (Table 6):
    both views crop, flip, jitter (p 0.8) and gray (p 0.2) alike; the first is always blurred
    and never solarized, the second blurred with p 0.1 and solarized with p 0.2. Arguments
    given as pairs hold one value per view.

    Args:
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
        blur_p: blur probability of view 1 and view 2.
        blur_sigma: (min, max) blur standard deviation in pixels.
        blur_kernel_size: odd blur kernel size; ``None`` derives it from sigma (BYOL uses 23
            on 224-pixel images, about ``+-3 sigma`` at the largest sigma).
        solarize_p: solarization probability of view 1 and view 2.
        solarize_threshold: pixels at or above it are inverted.

    Examples:
        >>> batch = BYOLViews()(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long),
        ...                     torch.Generator().manual_seed(0))
        >>> len(batch.views), batch.views[0].shape
        (2, torch.Size([4, 3, 32, 32]))
    """

    def __init__(
        self,
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
        blur_p: tuple[float, float] = (1.0, 0.1),
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel_size: int | None = None,
        solarize_p: tuple[float, float] = (0.0, 0.2),
        solarize_threshold: float = 0.5,
    ) -> None:
        _check_pair("blur_p", blur_p)
        _check_pair("solarize_p", solarize_p)
        common = ViewTransform(
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
            blur_sigma=blur_sigma,
            blur_kernel_size=blur_kernel_size,
            solarize_threshold=solarize_threshold,
        )
        self.views = tuple(
            replace(common, blur_p=b, solarize_p=s) for b, s in zip(blur_p, solarize_p, strict=True)
        )

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Batch:
        return Batch(views=[view(images, generator) for view in self.views], labels=labels)


class MultiCropViews(Corruption):
    """``num_global`` large views and ``num_local`` small ones of every image (multi-crop).

    Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments" (SwAV), https://arxiv.org/abs/2006.09882: 2 global crops of 224 pixels from
    ``crop_scale (0.14, 1)`` and 6 local crops of 96 pixels from ``(0.05, 0.14)``, all with the
    same color distortion (jitter strength 0.8/0.8/0.8/0.2 with p 0.8, gray p 0.2, blur p 0.5).
    Small images (CIFAR) usually go without blur: set ``blur_p=0``. Views come global first,
    then local, so a method embeds each size in one backbone pass.

    Args:
        num_global: number of global views (at least 1).
        global_size: global view side; ``None`` keeps the input size.
        global_scale: (min, max) area fraction of the global crops.
        num_local: number of local views (0 or more).
        local_size: local view side, smaller than the global one; ``None`` takes 3/7 of the
            global side (SwAV's 96/224).
        local_scale: (min, max) area fraction of the local crops.
        crop_ratio: (min, max) aspect ratio ``w / h`` of every crop.
        flip_p: probability of a horizontal flip.
        jitter_p: probability of color jitter.
        brightness: brightness jitter strength.
        contrast: contrast jitter strength.
        saturation: saturation jitter strength.
        hue: hue jitter strength, in ``[0, 0.5]``.
        grayscale_p: probability of converting to grayscale.
        blur_p: probability of a Gaussian blur.
        blur_sigma: (min, max) blur standard deviation in pixels.
        solarize_p: probability of solarization.

    Examples:
        >>> batch = MultiCropViews(num_local=4, local_size=16, blur_p=0.0)(
        ...     torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long),
        ...     torch.Generator().manual_seed(0))
        >>> [tuple(v.shape[-2:]) for v in batch.views]
        [(32, 32), (32, 32), (16, 16), (16, 16), (16, 16), (16, 16)]
    """

    def __init__(
        self,
        num_global: int = 2,
        global_size: int | None = None,
        global_scale: tuple[float, float] = (0.14, 1.0),
        num_local: int = 6,
        local_size: int | None = None,
        local_scale: tuple[float, float] = (0.05, 0.14),
        crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        brightness: float = 0.8,
        contrast: float = 0.8,
        saturation: float = 0.8,
        hue: float = 0.2,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_p: float = 0.0,
    ) -> None:
        if num_global < 1:
            raise ValueError(f"num_global={num_global!r} is invalid: expected an int >= 1.")
        if num_local < 0:
            raise ValueError(f"num_local={num_local!r} is invalid: expected an int >= 0.")
        check_size("global_size", global_size)
        check_size("local_size", local_size)
        if global_size is not None and local_size is not None and local_size >= global_size:
            raise ValueError(
                f"local_size={local_size} must be smaller than global_size={global_size}: local "
                "views are the small crops of multi-crop"
            )
        self.num_global = num_global
        self.num_local = num_local
        self.global_view = ViewTransform(
            size=global_size,
            crop_scale=global_scale,
            crop_ratio=crop_ratio,
            flip_p=flip_p,
            jitter_p=jitter_p,
            brightness=brightness,
            contrast=contrast,
            saturation=saturation,
            hue=hue,
            grayscale_p=grayscale_p,
            blur_p=blur_p,
            blur_sigma=blur_sigma,
            solarize_p=solarize_p,
        )
        self.local_view = replace(self.global_view, size=local_size, crop_scale=local_scale)

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Batch:
        height, width = images.shape[-2:]
        global_size = self.global_view.size
        if global_size is not None and global_size > min(height, width):
            raise ValueError(
                f"MultiCropViews global_size={global_size} is larger than the {height}x{width} "
                f"training images; lower global_size or give the images at least {global_size} "
                "pixels a side (data.image_size for image folders)"
            )
        local_view = self.local_view
        if local_view.size is None:
            side = min(height, width) if global_size is None else global_size
            local_view = replace(local_view, size=max(1, round(side * 3 / 7)))
        views = [self.global_view(images, generator) for _ in range(self.num_global)]
        views += [local_view(images, generator) for _ in range(self.num_local)]
        return Batch(views=views, labels=labels)
