"""SparK: masked image modelling for CNNs with sparse convolutions and a hierarchical decoder."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn

from ssl_lightning.backbones.sparse import is_sparse, sparsify
from ssl_lightning.corruptions import Batch, Corruption, PatchMask
from ssl_lightning.corruptions.masking import check_mask_ratio, require_mask
from ssl_lightning.corruptions.recipes import crop_flip_view
from ssl_lightning.decoders import SparseDecoder
from ssl_lightning.layers import (
    eval_mode,
    mask_to_pixels,
    patch_statistics,
    patchify,
    unpatchify,
)
from ssl_lightning.losses import reconstruction_loss
from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.outputs import PretextOutput
from ssl_lightning.optim import OptimizerName, param_groups

__all__ = ["SparK"]


class SparK(SSLMethod):
    """Sparse masked modelling for CNNs: encode the visible units only, decode all scales.

    Tian et al., ICLR 2023, "Designing BERT for Convolutional Networks: Sparse and
    Hierarchical Masked Modeling", https://arxiv.org/abs/2301.03580.

    The image is cut into square units (``patch_size``) and ``mask_ratio`` of them are hidden
    (:class:`~ssl_lightning.corruptions.PatchMask`, after a random crop and flip). The
    backbone runs sparsely (:func:`~ssl_lightning.backbones.sparse.sparsify`): the hidden
    positions stay empty after every convolution and pooling and BatchNorm sees the visible
    positions only, so the encoder never reads the hidden pixels and never learns the mask's
    zeros. A :class:`~ssl_lightning.decoders.SparseDecoder` fills each stage's hidden
    positions with a mask token and upsamples the stages back to the image.

    Loss: mean over hidden units of ``mean((pred_patch - target_patch)^2)``, each target
    unit normalized by its own mean and std (``norm_pix_loss``).

    The backbone is any CNN of the registry with ``forward_stages`` (ResNets, ``convnet``);
    its layers are converted in place, with unchanged ``state_dict`` keys, and compute
    densely outside the pretext pass: the features handed to callbacks come from a no-grad
    dense pass over the clean images in eval mode (as evaluation computes them, leaving the
    BatchNorm running statistics to the sparse pass), and the exported backbone is the plain
    one.

    Args:
        backbone: registered CNN backbone name or module (see :class:`SSLMethod`).
        backbone_kwargs: arguments for the registered backbone.
        image_size: side of the (square) training images.
        patch_size: side of a mask unit. ``None``: the backbone's total stride (SparK's
            choice: one unit per position of the last map; 8 for the CIFAR ResNet-18, 16 for
            the 4-block ``convnet``), halved only while the image would hold fewer than 2x2
            units.
        mask_ratio: hidden fraction of the units. The method owns it and the unit size: a
            configured ``data.corruption`` must agree with both.
        decoder_channels: decoder width at the finest stage, doubling per coarser stage.
            ``None``: the backbone's channels at its finest stage.
        norm_pix_loss: normalize each target unit by its own mean and std.
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = SparK(backbone="resnet18", mask_ratio=0.6)
    """

    pretext_settings = {"patch_size": "model.patch_size", "mask_ratio": "model.mask_ratio"}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        image_size: int = 32,
        patch_size: int | None = None,
        mask_ratio: float = 0.6,
        decoder_channels: int | None = None,
        norm_pix_loss: bool = True,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.04,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 1.0,
        **kwargs: Any,
    ) -> None:
        check_mask_ratio(mask_ratio, "model.mask_ratio")
        super().__init__(
            backbone=backbone,
            backbone_kwargs=backbone_kwargs,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            betas=betas,
            warmup_epochs=warmup_epochs,
            **kwargs,
        )
        shapes = self._stage_shapes(image_size)  # (channels, side) per stage
        finest, coarsest = shapes[0][1], shapes[-1][1]
        if patch_size is None:
            patch_size = image_size // coarsest
            while patch_size > 1 and image_size // patch_size < 2:
                patch_size //= 2
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(
                f"patch_size={patch_size} does not divide image_size={image_size}; set "
                "model.patch_size to a divisor of the image size"
            )
        self.image_size, self.patch_size, self.mask_ratio = image_size, patch_size, mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.sparse_mask = sparsify(self.backbone)
        channels = [c for c, _ in shapes]
        width = decoder_channels or channels[0]
        self.decoder = SparseDecoder(channels, image_size // finest, width)

    def _stage_shapes(self, image_size: int) -> list[tuple[int, int]]:
        """``(channels, side)`` of each backbone stage for ``image_size`` images (one probe
        pass in eval mode), checked to halve from stage to stage."""
        stages = getattr(self.backbone, "forward_stages", None)
        name = type(self.backbone).__name__
        if stages is None:
            raise TypeError(
                f"SparK decodes the stages of a CNN, but backbone {name} has no forward_stages; "
                "set model.backbone to resnet18 or convnet"
            )
        with eval_mode(self.backbone), torch.no_grad():
            device = next(self.backbone.parameters()).device
            maps = stages(torch.zeros(1, 3, image_size, image_size, device=device))
        if any(m.ndim != 4 for m in maps):
            raise TypeError(
                f"SparK needs feature maps [B, C, h, w], but backbone {name} returns tokens; "
                "set model.backbone to a CNN (resnet18, convnet), or use model MAE for a ViT"
            )
        sides = [int(m.shape[-1]) for m in maps]
        halving = all(a == 2 * b for a, b in itertools.pairwise(sides))
        factor = image_size // sides[0]
        if not halving or factor * sides[0] != image_size or factor & (factor - 1):
            raise ValueError(
                f"backbone {name} maps {image_size}-pixel images to stages of sides {sides}; "
                "SparK's decoder needs each stage half the previous one and a power-of-two "
                "downsampling: set model.image_size to the training image size"
            )
        return [(int(m.shape[1]), side) for m, side in zip(maps, sides, strict=True)]

    def configure_param_groups(self) -> list[dict[str, Any]]:
        # The mask tokens are learned fill values, not weights: the official code exempts them
        # from weight decay by name, as it does the norm parameters.
        return param_groups(self, self.weight_decay, exempt=self.decoder.mask_tokens)

    def default_corruption(self) -> Corruption:
        return PatchMask(self.patch_size, self.mask_ratio, view=crop_flip_view())

    def on_fit_start(self) -> None:
        if not is_sparse(self.backbone):
            raise RuntimeError(
                "SparK's BatchNorm layers were replaced by dense ones (trainer.sync_batchnorm "
                "converts them), so the statistics would mix the hidden positions in; set "
                "trainer.sync_batchnorm=false"
            )

    def reconstruct(self, images: Tensor, hidden: Tensor) -> Tensor:
        """Decoded images ``[B, 3, H, W]`` from the visible units of ``images`` ``[B, 3, H, W]``
        (hidden pixels are never read); ``hidden`` is the ``[B, h, w]`` unit mask."""
        visible = ~hidden
        with self.sparse_mask.applied(visible):
            x = self._memory_format(self.sparse_mask.keep(images))
            stages = self.backbone.forward_stages(x)  # type: ignore[operator]  # checked
            keeps = [self.sparse_mask.at(s.shape[-2], s.shape[-1]) for s in stages]
        return self.decoder(stages, keeps)

    def _check(self, batch: Batch) -> tuple[Tensor, Tensor]:
        mask, clean = require_mask(batch, "SparK")
        if tuple(clean.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"SparK was built for {self.image_size}x{self.image_size} images, got "
                f"{clean.shape[-2]}x{clean.shape[-1]}; set model.image_size={clean.shape[-1]}"
            )
        return mask, clean

    def pretext_step(self, batch: Batch) -> PretextOutput:
        mask, clean = self._check(batch)
        pred = patchify(self.reconstruct(batch.views[0], mask), self.patch_size)  # [B, N, P]
        target = patchify(clean, self.patch_size)
        if self.norm_pix_loss:
            mean, std = patch_statistics(target)
            target = (target - mean) / std
        loss = reconstruction_loss(pred, target, mask.flatten(1).unsqueeze(-1))
        return PretextOutput(loss=loss, features=self._dense_features(clean), labels=batch.labels)

    @torch.no_grad()
    def _dense_features(self, images: Tensor) -> Tensor:
        """Pooled features ``[B, D]`` of the dense backbone in eval mode, for the monitoring
        callbacks: what evaluation computes, and no change to BatchNorm's running statistics,
        which only the sparse pass updates."""
        with eval_mode(self.backbone):
            return self(images)

    def preview(self, batch: Batch) -> dict[str, Tensor]:
        """Rows to draw: clean input, masked input, reconstruction (visible units pasted in)."""
        mask, clean = self._check(batch)
        pred = patchify(self.reconstruct(batch.views[0], mask), self.patch_size)
        if self.norm_pix_loss:  # back to pixels with each unit's own statistics
            mean, std = patch_statistics(patchify(clean, self.patch_size))
            pred = pred * std + mean
        grid = (mask.shape[-2], mask.shape[-1])
        hidden = mask_to_pixels(mask, self.patch_size)  # [B, 1, H, W]
        return {
            "input": clean,
            "masked": batch.views[0].masked_fill(hidden, 0.0),  # what the encoder reads
            "reconstruction": torch.where(hidden, unpatchify(pred, self.patch_size, grid), clean),
        }
