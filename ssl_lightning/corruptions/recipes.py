"""The view corruptions, composed of one-view recipes (:class:`.view.ViewTransform`).

:class:`SimCLRViews` (one recipe, symmetric views), :class:`BYOLViews` (two recipes, one per
view) and :class:`MultiCropViews` (one recipe at two crop sizes) take ``ViewTransform`` values
rather than its fields, so a new op needs a new ``ViewTransform`` field only. On the command
line the nested fields are dotted: ``--data.corruption.view.blur_p 0.5``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ssl_lightning.corruptions.base import Corruption, check_size
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.corruptions.view import ViewTransform


class SimCLRViews(Corruption):
    """``num_views`` independently augmented views of every image (SimCLR's recipe).

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    https://arxiv.org/abs/2002.05709. Each view is an independent draw of ``view``; all views
    are made in one batched call (:meth:`ViewTransform.__call__` with ``num_views``), so many
    views (EMP-SSL's 20, FastSiam's 4) cost one pass of each op over ``num_views x B`` images.
    The default is the paper's CIFAR recipe (Appendix B.9): color distortion strength 0.5, so
    jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, no blur.
    The ImageNet recipe is strength 1 with blur: ``view=simclr_view(1.0, blur_p=0.5)``.

    Args:
        num_views: number of views per image (at least 1).
        view: the recipe every view is drawn from.

    Examples:
        >>> batch = SimCLRViews()(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long),
        ...                       torch.Generator().manual_seed(0))
        >>> [v.shape for v in batch.views]
        [torch.Size([4, 3, 32, 32]), torch.Size([4, 3, 32, 32])]
        >>> SimCLRViews(num_views=3, view=ViewTransform(size=16, blur_p=0.5)).view.size
        16
    """

    accepts_uint8 = returns_new_tensors = True

    def __init__(
        self,
        num_views: int = 2,
        view: ViewTransform = ViewTransform(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
    ) -> None:
        if num_views < 1:
            raise ValueError(f"num_views={num_views!r} is invalid: expected an int >= 1.")
        self.num_views = num_views
        self.view = view

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Batch:
        views = self.view(images, generator, self.num_views).chunk(self.num_views)
        return Batch(views=list(views), labels=labels)


class BYOLViews(Corruption):
    """Two views from two different recipes: BYOL's asymmetric augmentation.

    Grill et al., "Bootstrap Your Own Latent", https://arxiv.org/abs/2006.07733 (Table 6):
    both views crop, flip, jitter (p 0.8) and gray (p 0.2) alike; the first is always blurred
    and never solarized, the second blurred with p 0.1 and solarized with p 0.2. Produces
    ``[view1(images), view2(images)]``, drawn in that order from the one generator. BYOL blurs
    224-pixel images with a 23-pixel kernel (about ``+-3 sigma`` at the largest sigma): set
    ``blur_kernel_size=23`` in both recipes to match it.

    Args:
        view1: recipe of the first view.
        view2: recipe of the second view.

    Examples:
        >>> batch = BYOLViews()(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long),
        ...                     torch.Generator().manual_seed(0))
        >>> len(batch.views), batch.views[0].shape
        (2, torch.Size([4, 3, 32, 32]))
        >>> [v.solarize_p for v in BYOLViews(view2=ViewTransform(solarize_p=0.5)).views]
        [0.0, 0.5]
    """

    accepts_uint8 = returns_new_tensors = True

    def __init__(
        self,
        view1: ViewTransform = ViewTransform(blur_p=1.0),
        view2: ViewTransform = ViewTransform(blur_p=0.1, solarize_p=0.2),
    ) -> None:
        self.views = (view1, view2)

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Batch:
        return Batch(views=[view(images, generator) for view in self.views], labels=labels)


class MultiCropViews(Corruption):
    """``num_global`` large views and ``num_local`` small ones of every image (multi-crop).

    Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments" (SwAV), https://arxiv.org/abs/2006.09882: 2 global crops of 224 pixels from
    ``crop_scale (0.14, 1)`` and 6 local crops of 96 pixels from ``(0.05, 0.14)``, all with the
    same color distortion (jitter strength 0.8/0.8/0.8/0.2 with p 0.8, gray p 0.2, blur p 0.5),
    the default ``global_view``. Local views are ``global_view`` with ``size=local_size`` and
    ``crop_scale=local_scale``. Small images (CIFAR) usually go without blur: pass a
    ``global_view`` with ``blur_p=0``. Views come global first, then local, so a method embeds
    each size in one backbone pass; each size is also made in one batched call.

    Args:
        num_global: number of global views (at least 1).
        num_local: number of local views (0 or more).
        global_view: recipe of the global views; its ``size`` is the global side (``None``
            keeps the input size), and the local views copy everything else but the crop scale.
        local_size: local view side, smaller than the global one; ``None`` takes 3/7 of the
            global side (SwAV's 96/224).
        local_scale: (min, max) area fraction of the local crops.

    Examples:
        >>> corruption = MultiCropViews(
        ...     num_local=4, global_view=ViewTransform(crop_scale=(0.14, 1.0)), local_size=16)
        >>> batch = corruption(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long),
        ...                    torch.Generator().manual_seed(0))
        >>> [tuple(v.shape[-2:]) for v in batch.views]
        [(32, 32), (32, 32), (16, 16), (16, 16), (16, 16), (16, 16)]
    """

    accepts_uint8 = returns_new_tensors = True

    def __init__(
        self,
        num_global: int = 2,
        num_local: int = 6,
        global_view: ViewTransform = ViewTransform(
            crop_scale=(0.14, 1.0),
            brightness=0.8,
            contrast=0.8,
            saturation=0.8,
            hue=0.2,
            blur_p=0.5,
        ),
        local_size: int | None = None,
        local_scale: tuple[float, float] = (0.05, 0.14),
    ) -> None:
        if num_global < 1:
            raise ValueError(f"num_global={num_global!r} is invalid: expected an int >= 1.")
        if num_local < 0:
            raise ValueError(f"num_local={num_local!r} is invalid: expected an int >= 0.")
        check_size("local_size", local_size)
        global_size = global_view.size
        if global_size is not None and local_size is not None and local_size >= global_size:
            raise ValueError(
                f"local_size={local_size} must be smaller than global_size={global_size} "
                "(global_view.size): local views are the small crops of multi-crop"
            )
        self.num_global = num_global
        self.num_local = num_local
        self.global_view = global_view
        self.local_view = replace(global_view, size=local_size, crop_scale=local_scale)

    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Batch:
        height, width = images.shape[-2:]
        global_size = self.global_view.size
        if global_size is not None and global_size > min(height, width):
            raise ValueError(
                f"MultiCropViews global_size={global_size} is larger than the {height}x{width} "
                f"training images; lower global_view.size or give the images at least "
                f"{global_size} pixels a side (data.image_size for image folders)"
            )
        local_view = self.local_view
        if local_view.size is None:
            side = min(height, width) if global_size is None else global_size
            local_view = replace(local_view, size=max(1, round(side * 3 / 7)))
        views = list(self.global_view(images, generator, self.num_global).chunk(self.num_global))
        if self.num_local:
            views += local_view(images, generator, self.num_local).chunk(self.num_local)
        return Batch(views=views, labels=labels)


def small_image_byol_views() -> BYOLViews:
    """BYOL's asymmetric pair for 32-pixel images, as solo-learn's CIFAR recipes (BYOL, MoCo v3,
    Barlow Twins) use it: no Gaussian blur (at 32 pixels it erases the image), solarization
    with p 0.2 on the second view only; crops, flips, jitter and grayscale as in BYOL."""
    return BYOLViews(
        view1=ViewTransform(blur_p=0.0),
        view2=ViewTransform(blur_p=0.0, solarize_p=0.2),
    )


def simclr_view(strength: float = 0.5, **fields: Any) -> ViewTransform:
    """SimCLR's one-view recipe at color distortion ``strength`` s (arXiv:2002.05709, App. A).

    The paper's ``get_color_distortion(s)``: ``ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s)`` with
    p 0.8 and grayscale with p 0.2. CIFAR uses s = 0.5 (the :class:`SimCLRViews` default),
    ImageNet s = 1 with Gaussian blur (``blur_p=0.5``). ``fields`` set other
    :class:`ViewTransform` fields (``size``, ``blur_p``, ...).

    Examples:
        >>> view = simclr_view(1.0, blur_p=0.5)
        >>> view.brightness, view.saturation, view.hue
        (0.8, 0.8, 0.2)
    """
    jitter = 0.8 * strength
    return ViewTransform(
        brightness=jitter, contrast=jitter, saturation=jitter, hue=0.2 * strength, **fields
    )


def small_image_multicrop_views(
    global_view: ViewTransform, num_local: int = 4, local_size: int = 16, num_global: int = 2
) -> MultiCropViews:
    """Multi-crop for 32-pixel images, for a short run: ``num_global`` views of ``global_view``
    and ``num_local`` local crops of 10-40 % of the image at ``local_size`` pixels, with the global
    recipe's color ops (SwAV's multi-crop, Caron et al. 2020, arXiv:2006.09882, at scales
    measured on CIFAR-10: benchmarks/README.md, "Short budgets").

    A 16-pixel view costs about a quarter of a 32-pixel one, and is the smallest a 4-block
    ``convnet`` (total stride 16) takes.

    Examples:
        >>> views = small_image_multicrop_views(ViewTransform(crop_scale=(0.2, 1.0)))
        >>> views.num_global, views.num_local, views.local_view.crop_scale, views.local_view.size
        (2, 4, (0.1, 0.4), 16)
    """
    return MultiCropViews(
        num_global=num_global,
        num_local=num_local,
        global_view=global_view,
        local_size=local_size,
        local_scale=(0.1, 0.4),
    )


def simclr_multicrop_views(
    num_local: int = 4, local_size: int = 16, num_global: int = 2
) -> MultiCropViews:
    """SimCLR's views with multi-crop for 32-pixel images (:func:`small_image_multicrop_views`):
    ``num_global`` crops of 20-100 % of the image and ``num_local`` local crops, all with
    SimCLR's CIFAR color distortion (:func:`simclr_view` at strength 0.5), no blur.

    Examples:
        >>> views = simclr_multicrop_views(num_local=4)
        >>> views.num_global, views.num_local, views.global_view.crop_scale
        (2, 4, (0.2, 1.0))
    """
    view = simclr_view(crop_scale=(0.2, 1.0))
    return small_image_multicrop_views(view, num_local, local_size, num_global)


def crop_flip_view(min_scale: float = 0.35) -> ViewTransform:
    """A random resized crop (``min_scale`` to all of the area) and a horizontal flip, no color
    change: the augmentation before a pretext corruption (RotNet's rotations, inpainting's
    masks), which need no color invariance. The default is the setting measured on CIFAR-10
    (README, Results)."""
    return ViewTransform(crop_scale=(min_scale, 1.0), jitter_p=0.0, grayscale_p=0.0)


def emp_ssl_views(num_views: int = 20, patch_scale: float = 0.25) -> SimCLRViews:
    """EMP-SSL's patches for 32-pixel images: ``num_views`` square crops of a fixed
    ``patch_scale`` of the image area resized back to full size, flipped, jittered
    (0.4, 0.4, 0.4, 0.2 with p 0.8), gray with p 0.2, blurred with p 0.1 and solarized with
    p 0.1 (Tong et al. 2023, arXiv:2304.03977; its CIFAR code); all drawn in one batched call.

    Examples:
        >>> emp_ssl_views(num_views=8).view.crop_scale
        (0.25, 0.25)
    """
    view = ViewTransform(
        crop_scale=(patch_scale, patch_scale),
        crop_ratio=(1.0, 1.0),
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.2,
        blur_p=0.1,
        solarize_p=0.1,
    )
    return SimCLRViews(num_views=num_views, view=view)
