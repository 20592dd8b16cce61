"""Batched, per-image-random, device-agnostic corruptions and augmentations.

Every op takes a float batch ``[B, 3, H, W]`` in ``[0, 1]`` on any device and explicit
per-image parameters, so it can be checked against torchvision's per-image functional op.
Parameters are drawn on the CPU from a ``torch.Generator`` the datamodule owns (seeded per
rank and per batch), then moved to the images' device: the same seed gives the same views
on CPU and GPU.

Layers, bottom up:

- ops take per-image parameters and match torchvision's per-image tensor kernels to float
  rounding: :mod:`.geometry` (``resized_crop``, ``hflip``), :mod:`.color` (``adjust_*``,
  ``color_jitter``, ``grayscale``, ``solarize``), :mod:`.blur` (``gaussian_blur``);
- the ``sample_*`` functions in :mod:`.sampling` draw those parameters with torchvision's
  distributions;
- :class:`ViewTransform` in :mod:`.view` is one view's recipe, built from the ops and samplers;
- the corruptions in :mod:`.recipes`, :class:`SimCLRViews`, :class:`BYOLViews` and
  :class:`MultiCropViews`, take ``ViewTransform`` values and turn them into the
  :class:`~ssl_lightning.corruptions.batch.Batch` a method trains on;
- the pretext corruptions: :class:`PatchMask` in :mod:`.masking` (random patch masks, the
  clean image as target) and :class:`Rotations` in :mod:`.rotation` (rotated copies, the
  rotation index as target);
- :class:`PretextModel` in :mod:`.interface`: what the datamodules and callbacks read from
  the model they serve (its default corruption, its check of a configured one, the module
  it exports, its preview rows).

No op loops over images in Python: ops applied to a random subset (flip, jitter, grayscale,
blur) index the subset, run once on it, and write it back.
"""

from ssl_lightning.corruptions.base import (
    CleanView,
    Corruption,
    corrupt_batch,
    normalize,
    to_unit_float,
)
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.corruptions.blur import blur_kernel_sizes, gaussian_blur
from ssl_lightning.corruptions.color import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    grayscale,
    rgb_to_grayscale,
    solarize,
)
from ssl_lightning.corruptions.geometry import hflip, resized_crop
from ssl_lightning.corruptions.interface import PretextModel
from ssl_lightning.corruptions.masking import (
    PatchMask,
    sample_patch_mask,
)
from ssl_lightning.corruptions.recipes import BYOLViews, MultiCropViews, SimCLRViews
from ssl_lightning.corruptions.rotation import Rotations, rotate
from ssl_lightning.corruptions.sampling import (
    sample_bernoulli,
    sample_crop_boxes,
    sample_jitter_factors,
    sample_permutations,
    sample_uniform,
)
from ssl_lightning.corruptions.view import ViewTransform

__all__ = [
    "BYOLViews",
    "Batch",
    "CleanView",
    "Corruption",
    "MultiCropViews",
    "PatchMask",
    "PretextModel",
    "Rotations",
    "SimCLRViews",
    "ViewTransform",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_kernel_sizes",
    "color_jitter",
    "corrupt_batch",
    "gaussian_blur",
    "grayscale",
    "hflip",
    "normalize",
    "resized_crop",
    "rgb_to_grayscale",
    "rotate",
    "sample_bernoulli",
    "sample_crop_boxes",
    "sample_jitter_factors",
    "sample_patch_mask",
    "sample_permutations",
    "sample_uniform",
    "solarize",
    "to_unit_float",
]
