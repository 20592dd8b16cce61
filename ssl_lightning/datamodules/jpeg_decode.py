"""Batched JPEG decoding into the fixed-size uint8 batches the corruptions take.

:func:`decode_batch` decodes a list of JPEG byte tensors with one
``torchvision.io.decode_jpeg`` call, on the CPU or on a CUDA device (nvJPEG), then cuts each
image's center square and resizes only that square to the batch's side (no resize at all when
the square already has that side, as for shards stored at the training size), so the
corruption code sees the same ``[B, 3, S, S]`` uint8 batch as from the in-memory cache.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

__all__ = ["BadImageError", "center_square", "decode_batch"]


class BadImageError(ValueError):
    """A JPEG in a shard that cannot be decoded: the message names the shard, image and file."""


def center_square(image: Tensor, size: int) -> Tensor:
    """The center square of ``image`` (``[3, h, w]`` uint8) resized to ``[3, size, size]``.

    The square is cut before resizing, so only its pixels are resampled (antialiased
    bilinear, as the uint8 cache resizes); on the CPU torch resizes uint8 directly, on a GPU
    in float, rounded back.
    """
    _, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[:, top : top + side, left : left + side]
    if side == size:
        return square
    x = square.unsqueeze(0)  # [1, 3, side, side]
    if x.device.type != "cpu":
        x = x.float()
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if y.dtype != torch.uint8:
        y = y.round_().clamp_(0, 255).to(torch.uint8)
    return y[0]  # [3, size, size]


def _decode(data: Tensor | list[Tensor], device: torch.device) -> Any:
    with warnings.catch_warnings():  # torchvision 0.29 marks its decoders as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _message(err: Exception) -> str:
    # torchvision's messages start with its source file and line: keep the reason only.
    return str(err).rsplit(", ", 1)[-1]


def decode_batch(
    data: list[Tensor],
    size: int,
    device: torch.device | str,
    describe: Callable[[int], str],
    skip_bad_files: bool = False,
) -> tuple[Tensor, list[int]]:
    """Decodes JPEG bytes into one uint8 batch of center squares on ``device``.

    Args:
        data: ``B`` one-dimensional uint8 CPU tensors, each one JPEG file's bytes.
        size: side ``S`` of the output images.
        device: where to decode: ``"cpu"`` or a CUDA device.
        describe: names the ``i``-th image for messages (its shard, index and file).
        skip_bad_files: leave out images that cannot be decoded, with a warning naming each;
            otherwise the first one is an error.

    Returns:
        ``(images [K, 3, S, S] uint8 on device, channels-last on the CPU, positions in data
        of those K images)``.

    Raises:
        BadImageError: naming the image, unless ``skip_bad_files``.
    """
    device = torch.device(device)
    try:
        decoded = _decode(data, device)
        kept = list(range(len(data)))
    except RuntimeError:  # one bad file fails the whole call: find it
        decoded, kept = [], []
        for i, jpeg in enumerate(data):
            try:
                decoded.append(_decode(jpeg, device))
            except RuntimeError as err:
                reason = f"cannot decode {describe(i)}: {_message(err)}"
                if not skip_bad_files:
                    raise BadImageError(
                        f"{reason}; set data.skip_bad_files=true to skip such images"
                    ) from err
                warnings.warn(f"skipped {reason} (skip_bad_files=True)", stacklevel=2)
                continue
            kept.append(i)
    # On the CPU the batch is channels-last, the decoder's own H x W x 3 layout: each copy is
    # a plain memcpy (not a transpose), and the uint8 resize of the views' crops runs its
    # native kernel on it (benchmarks/jpeg_storage.py).
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    out = torch.empty(
        (len(decoded), 3, size, size), dtype=torch.uint8, device=device, memory_format=layout
    )
    for i, image in enumerate(decoded):
        out[i] = center_square(image, size)
    return out, kept
