"""Geometry: random resized crop (batched separable matmuls, or one resize per box on a CPU)
and horizontal flip."""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_lightning.corruptions.base import apply_at_, mask_indices


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
    out: Tensor | None = None,
) -> Tensor:
    """Crops one box per image and resizes it bilinearly, like ``F.resized_crop``.

    Equal, up to float rounding, to torchvision's per-image
    ``F.resized_crop(img, top, left, h, w, size, BILINEAR, antialias)``. Resizing is separable,
    so each image becomes ``Wy @ img @ Wx^T`` with per-image matrices that hold both the crop
    and the filter: two batched matmuls, whatever the box sizes. Their cost grows with input
    side x input side x output side, which a GPU hides and a CPU does not: on a CPU, outputs of
    64 x 64 pixels or more are resized one box at a time (``F.interpolate`` on the crop, 1.1x
    the matmuls' speed at 64 px, 2.8x at 224 px from 256 px; ``benchmarks/resized_crop.py``).

    uint8 images give uint8 crops, as torchvision's uint8 resize does (on a CPU, one resize
    per box is PIL-speed integer arithmetic, 2x the float kernel at 224 px).

    Args:
        images: ``[B, C, H, W]`` float or uint8 images.
        boxes: ``[V * B, 4]`` int ``(top, left, height, width)`` boxes inside the image: one
            per image, or ``V`` views of the batch, view-major (box ``i`` crops image
            ``i % B``).
        size: output ``(height, width)``; an int gives a square output (as
            ``RandomResizedCrop`` reads it, not ``F.resize``'s shorter side).
        antialias: low-pass filter when downsampling, as torchvision's default.
        flip: optional ``[V * B]`` bool; flips those outputs horizontally (the matmuls do it
            at no extra cost by reversing the rows of ``Wx``).
        out: optional contiguous ``[V * B, C, size_h, size_w]`` tensor to write the crops into.

    Returns:
        ``[V * B, C, size_h, size_w]`` images of the input's dtype (``out`` when given).
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    batch = images.shape[0]
    if boxes.shape[0] % batch:
        raise ValueError(
            f"resized_crop needs one box per image or several per image (a multiple of the "
            f"{batch} images), got {boxes.shape[0]} boxes"
        )
    per_box = resizes_per_box(images.device, (out_h, out_w))
    if out is None:
        # Per box, in the images' layout: channels-last uint8 (decoded JPEGs) is the integer
        # kernel's native one, 4x faster than contiguous at 256 -> 224 px.
        channels_last = per_box and images.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        shape = (boxes.shape[0], images.shape[1], out_h, out_w)
        out = torch.empty(shape, dtype=images.dtype, device=images.device, memory_format=layout)
    if per_box:
        return _resized_crop_per_box(images, boxes, out, antialias, flip)
    if images.dtype == torch.uint8:
        # The matmuls need floats: resize in float and round, like a uint8 resize.
        crops = _resized_crop_matmul(images.float(), boxes, out.float(), antialias, flip)
        return out.copy_(crops.round_().clamp_(0, 255))
    return _resized_crop_matmul(images, boxes, out, antialias, flip)


# On a CPU, one resize per box beats the batched matmuls from 64 x 64 outputs up; below, the
# per-call overhead of a Python loop wins (0.5x at 32 px). Measured by benchmarks/resized_crop.py.
PER_BOX_MIN_PIXELS = 64 * 64


def resizes_per_box(device: torch.device, size: tuple[int, int]) -> bool:
    """Whether :func:`resized_crop` resizes each box on its own (else by batched matmuls)."""
    return device.type == "cpu" and size[0] * size[1] >= PER_BOX_MIN_PIXELS


def _resized_crop_per_box(
    images: Tensor, boxes: Tensor, out: Tensor, antialias: bool, flip: Tensor | None
) -> Tensor:
    """:func:`resized_crop` as one resize per box (``F.interpolate``'s bilinear kernel): cost
    per output pixel, not per input pixel x output side."""
    batch, size = images.shape[0], list(out.shape[-2:])
    flips = [False] * boxes.shape[0] if flip is None else flip.tolist()
    # F.interpolate's own kernels (bilinear, align_corners=False), in their out= form: each
    # crop is resized straight into its row of the batch, without a temporary and a copy
    # (15-20 % of a 224 px view on a CPU).
    aten = torch.ops.aten
    resize = aten._upsample_bilinear2d_aa.out if antialias else aten.upsample_bilinear2d.out
    for i, (top, left, height, width) in enumerate(boxes.tolist()):
        crop = images[i % batch, None, :, top : top + height, left : left + width]
        row = out[i : i + 1]
        resize(crop, size, False, None, None, out=row)
        if flips[i]:
            row.copy_(row.flip(-1))
    return out


def _resized_crop_matmul(
    images: Tensor, boxes: Tensor, out: Tensor, antialias: bool, flip: Tensor | None
) -> Tensor:
    """:func:`resized_crop` as two batched matmuls per view of the batch."""
    (out_h, out_w), (batch, channels, height, width) = out.shape[-2:], images.shape
    boxes = boxes.to(images.device)
    dtype, crops = images.dtype, boxes.shape[0]  # crops = V * B
    wy = _resample_matrix(boxes[:, 0], boxes[:, 2], height, out_h, antialias, dtype)  # [VB, oh, H]
    wx = _resample_matrix(boxes[:, 1], boxes[:, 3], width, out_w, antialias, dtype, flip)
    # Columns first on the [B, C*H, W] view (no copy), then rows per channel. Both are plain
    # bmm calls: matmul's broadcasting path over channels is ~10x slower on the CPU. Several
    # views of a batch read the one input, one pair of bmm per view: the intermediate of one
    # view stays cache-sized (20-35 % faster on a CPU than one pair over all views).
    flat = images.reshape(batch, channels * height, width)
    for start in range(0, crops, batch):
        rows = slice(start, start + batch)
        cols = torch.bmm(flat, wx[rows].transpose(1, 2)).view(batch * channels, height, out_w)
        wy_c = wy[rows].unsqueeze(1).expand(-1, channels, -1, -1)
        wy_c = wy_c.reshape(batch * channels, out_h, height)
        torch.bmm(wy_c, cols, out=out[rows].view(batch * channels, out_h, out_w))
    return out


def hflip(images: Tensor, flip: Tensor) -> Tensor:
    """Flips ``[B, C, H, W]`` images horizontally where the ``[B]`` bool ``flip`` is set."""
    return apply_at_(images.clone(), mask_indices(flip), lambda x: x.flip(-1))
