"""Run a dense CNN backbone as a sparse one over the visible units of a mask (SparK).

Tian et al., ICLR 2023, "Designing BERT for Convolutional Networks: Sparse and Hierarchical
Masked Modeling", https://arxiv.org/abs/2301.03580. A dense CNN sees a masked image as an
image with holes of zeros: every convolution smears the visible pixels into the holes, and
BatchNorm mixes the holes' values into its statistics, so the network learns the mask pattern
and its features shift between masked pre-training and dense evaluation. SparK keeps the
hidden positions empty instead: after every convolution and pooling the hidden positions of
the output are zeroed again, and BatchNorm normalizes with statistics over the visible
positions only.

:func:`sparsify` gives any registry CNN (the ResNets, ``convnet``) these semantics without
forking it: each ``Conv2d``, ``BatchNorm2d``, ``MaxPool2d`` and ``AvgPool2d`` becomes its
masked subclass in place, with the same parameters and ``state_dict`` keys. While no mask is
set the backbone computes exactly what it did before, so the same module serves the masked
pre-training, the dense monitoring and evaluation, and the export.

Examples:
    >>> import torch
    >>> from ssl_lightning.backbones import create_backbone
    >>> backbone = create_backbone("convnet", width=8, depth=2)
    >>> mask = sparsify(backbone)
    >>> visible = torch.rand(2, 4, 4) > 0.5  # [B, h, w] units, True = visible
    >>> with mask.applied(visible):
    ...     stages = backbone.forward_stages(torch.randn(2, 3, 32, 32) * mask.at(32, 32))
    >>> [tuple(s.shape) for s in stages]
    [(2, 8, 16, 16), (2, 16, 8, 8)]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SparseMask", "is_sparse", "sparsify"]


class SparseMask:
    """The visible units of the current batch, at any resolution of the network.

    ``visible`` is a ``[B, h, w]`` bool grid of mask units (``True`` = visible) or ``None``
    (dense). :meth:`at` gives it at a layer's resolution ``H x W``: each unit repeated when
    ``H`` is a multiple of ``h``; a coarser position is visible when any unit it covers is.
    """

    def __init__(self) -> None:
        self.visible: Tensor | None = None
        self._cache: dict[tuple[int, int], Tensor] = {}

    @contextmanager
    def applied(self, visible: Tensor) -> Iterator[SparseMask]:
        """Runs the sparsified layers on the ``[B, h, w]`` bool ``visible`` units inside."""
        if visible.ndim != 3 or visible.dtype != torch.bool:
            raise ValueError(
                f"visible must be a [B, h, w] bool mask of units, got {visible.dtype} "
                f"{tuple(visible.shape)}"
            )
        self.visible, self._cache = visible, {}
        try:
            yield self
        finally:
            self.visible, self._cache = None, {}

    def at(self, height: int, width: int) -> Tensor:
        """The visible positions at ``height x width``: ``[B, 1, height, width]`` float 0/1."""
        if self.visible is None:
            raise RuntimeError("no mask is set: call SparseMask.at inside `with mask.applied(...)`")
        key = (height, width)
        if key not in self._cache:
            self._cache[key] = _resize(self.visible, height, width)
        return self._cache[key]

    def keep(self, x: Tensor) -> Tensor:
        """``x`` ``[B, C, H, W]`` with its hidden positions zeroed (unchanged while dense)."""
        if self.visible is None:
            return x
        return x * self.at(x.shape[-2], x.shape[-1]).to(x.dtype)


def _resize(visible: Tensor, height: int, width: int) -> Tensor:
    grid_h, grid_w = visible.shape[-2:]
    units = visible.unsqueeze(1).float()  # [B, 1, h, w]
    if height % grid_h == 0 and width % grid_w == 0:
        return F.interpolate(units, size=(height, width), mode="nearest")
    if grid_h % height == 0 and grid_w % width == 0:
        return F.max_pool2d(units, (grid_h // height, grid_w // width))
    raise ValueError(
        f"a {height}x{width} feature map does not tile the {grid_h}x{grid_w} mask units; "
        "choose model.patch_size so that the image size divides into units that every "
        "stage's map either repeats or pools evenly"
    )


class _Masked:
    """Mixin of the masked layers: the :class:`SparseMask` they read."""

    sparse_mask: SparseMask


class MaskedConv2d(nn.Conv2d, _Masked):
    """``Conv2d`` whose output keeps only the visible positions."""

    def forward(self, x: Tensor) -> Tensor:
        return self.sparse_mask.keep(super().forward(x))


class MaskedMaxPool2d(nn.MaxPool2d, _Masked):
    """``MaxPool2d`` whose output keeps only the visible positions."""

    def forward(self, x: Tensor) -> Tensor:
        return self.sparse_mask.keep(super().forward(x))


class MaskedAvgPool2d(nn.AvgPool2d, _Masked):
    """``AvgPool2d`` whose output keeps only the visible positions."""

    def forward(self, x: Tensor) -> Tensor:
        return self.sparse_mask.keep(super().forward(x))


class MaskedBatchNorm2d(nn.BatchNorm2d, _Masked):
    """``BatchNorm2d`` with statistics over the visible positions only.

    In training, the mean and (biased) variance are taken over the visible positions of the
    batch, and the running statistics follow them as ``BatchNorm2d``'s follow the dense batch
    (unbiased variance, ``momentum``); the output keeps only the visible positions. The sums
    run on the device without a host sync (no boolean indexing).
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.sparse_mask.visible is None:
            return super().forward(x)
        keep = self.sparse_mask.at(x.shape[-2], x.shape[-1])  # [B, 1, H, W]
        if self.training or self.running_mean is None or self.running_var is None:
            count = keep.sum().clamp(min=2.0)
            xf = x.float() * keep
            mean = xf.sum(dim=(0, 2, 3)) / count  # [C]
            centered = (x.float() - mean.view(1, -1, 1, 1)) * keep
            var = centered.square().sum(dim=(0, 2, 3)) / count
            if self.training and self.track_running_stats:
                self._update_running(mean, var * count / (count - 1))
        else:
            mean, var = self.running_mean, self.running_var
        scale = torch.rsqrt(var.float() + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.float()
        shift = -mean.float() * scale
        if self.bias is not None:
            shift = shift + self.bias.float()
        out = x.float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        return (out * keep).to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, unbiased_var: Tensor) -> None:
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), momentum)


_MASKED: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: MaskedConv2d,
    nn.BatchNorm2d: MaskedBatchNorm2d,
    nn.MaxPool2d: MaskedMaxPool2d,
    nn.AvgPool2d: MaskedAvgPool2d,
}


def sparsify(backbone: nn.Module) -> SparseMask:
    """Turns ``backbone``'s dense layers into their masked versions, in place; returns the mask.

    Every ``Conv2d``, ``BatchNorm2d``, ``MaxPool2d`` and ``AvgPool2d`` (exactly these classes)
    becomes :class:`MaskedConv2d`, :class:`MaskedBatchNorm2d`, ... sharing one
    :class:`SparseMask`. Parameters, buffers and ``state_dict`` keys are unchanged, and so is
    the output while the mask is unset.

    Raises:
        TypeError: if the backbone has none of these layers (it is not a CNN), or has
            ``SyncBatchNorm`` layers, whose statistics would mix the hidden positions in.
    """
    mask = SparseMask()
    converted = 0
    for module in backbone.modules():
        if isinstance(module, nn.SyncBatchNorm):
            raise TypeError(
                "SparK computes BatchNorm statistics over the visible positions, but the "
                "backbone has SyncBatchNorm layers; set trainer.sync_batchnorm=false"
            )
        masked = _MASKED.get(type(module))
        if masked is not None:
            module.__class__ = masked
        if isinstance(module, _Masked):
            module.sparse_mask = mask
            converted += 1
    if not converted:
        raise TypeError(
            f"backbone {type(backbone).__name__} has no Conv2d, BatchNorm2d or pooling layer "
            "to sparsify; SparK needs a CNN (set model.backbone to resnet18 or convnet), use "
            "model MAE for a ViT"
        )
    return mask


def is_sparse(backbone: nn.Module) -> bool:
    """Whether every BatchNorm of ``backbone`` is still masked (``sync_batchnorm`` replaces
    them with dense ``SyncBatchNorm`` layers after the model is built)."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return all(isinstance(m, MaskedBatchNorm2d) for m in norms)
