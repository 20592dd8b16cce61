"""MAE: a masked autoencoder on a Vision Transformer, encoding the visible patches only."""

from __future__ import annotations

from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from ssl_lightning.corruptions import Batch, Corruption, PatchMask
from ssl_lightning.corruptions.masking import check_mask_ratio, require_mask
from ssl_lightning.decoders import MAEDecoder
from ssl_lightning.layers import (
    mask_to_pixels,
    patch_statistics,
    patchify,
    unpatchify,
    visible_index,
)
from ssl_lightning.losses import reconstruction_loss
from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.outputs import PretextOutput
from ssl_lightning.methods.schedule import LRScaling
from ssl_lightning.optim import OptimizerName

__all__ = ["MAE", "PatchEncoder"]


class PatchEncoder(Protocol):
    """What MAE needs of its backbone (:class:`~ssl_lightning.backbones.VisionTransformer`)."""

    image_size: int
    patch_size: int
    grid_size: tuple[int, int]

    def forward_tokens(self, x: Tensor, keep_index: Tensor | None = None) -> Tensor: ...


class MAE(SSLMethod):
    """Masked autoencoder on a Vision Transformer: encode the visible patches, decode all.

    He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners",
    https://arxiv.org/abs/2111.06377.

    Loss: ``mean over hidden patches of mean((decoder(encoder(visible)) - target)^2)``, where
    ``target`` is each patch's pixels, normalized by the patch's own mean and std when
    ``norm_pix_loss``.

    The encoder is a ViT from the registry (``vit_tiny``, ``vit_small``) that encodes only the
    visible patches (``forward_tokens(images, keep_index)``); the mask comes from
    :class:`~ssl_lightning.corruptions.PatchMask` with the ViT's patch size. A
    :class:`~ssl_lightning.decoders.MAEDecoder` fills the hidden positions with a mask token and
    predicts every patch. The features handed to callbacks come from an extra no-grad pass of
    the encoder over all patches of the clean images, as evaluation sees them.

    Args:
        backbone: registered ViT name or module with ``forward_tokens``, ``patch_size``,
            ``image_size`` and ``grid_size``.
        backbone_kwargs: arguments for the registered backbone (``image_size``, ``depth``, ...).
        mask_ratio: hidden fraction of the patches. The method owns it and the patch size
            (the ViT's): a configured ``data.corruption`` must agree with both.
        decoder_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder attention heads.
        norm_pix_loss: normalize each target patch by its own mean and std.
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = MAE(backbone="vit_small", mask_ratio=0.75)
    """

    pretext_settings = {
        "patch_size": "model.backbone_kwargs.patch_size",
        "mask_ratio": "model.mask_ratio",
    }

    def __init__(
        self,
        backbone: str | nn.Module = "vit_small",
        backbone_kwargs: dict[str, Any] | None = None,
        mask_ratio: float = 0.75,
        decoder_dim: int = 256,
        decoder_depth: int = 4,
        decoder_num_heads: int = 8,
        norm_pix_loss: bool = True,
        optimizer: OptimizerName = "adamw",
        lr: float = 1.5e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40.0,
        scale_lr: LRScaling = True,
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
            scale_lr=scale_lr,
            **kwargs,
        )
        required = ("forward_tokens", "patch_size", "image_size", "grid_size")
        missing = [name for name in required if not hasattr(self.backbone, name)]
        if missing:
            raise TypeError(
                f"MAE needs a ViT backbone that encodes a subset of patches, but "
                f"{type(self.backbone).__name__} has no {', '.join(missing)}; set "
                "model.backbone=vit_small (or vit_tiny), or use MaskedReconstruction for a CNN"
            )
        vit = cast(PatchEncoder, self.backbone)
        self.patch_size = int(vit.patch_size)
        self.grid_size = (int(vit.grid_size[0]), int(vit.grid_size[1]))
        self.image_size = int(vit.image_size)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.decoder = MAEDecoder(
            self.num_features,
            self.grid_size,
            self.patch_size**2 * 3,
            dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            num_prefix_tokens=getattr(self.backbone, "num_prefix_tokens", 1),
        )

    def default_corruption(self) -> Corruption:
        return PatchMask(patch_size=self.patch_size, mask_ratio=self.mask_ratio)

    def _check_batch(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The ``[B, N]`` flattened mask and clean images, after checking their geometry."""
        mask, clean = require_mask(batch, "MAE")
        size = self.image_size
        if clean.shape[-2:] != (size, size):
            raise ValueError(
                f"the ViT was built for {size}x{size} images, got {clean.shape[-2]}x"
                f"{clean.shape[-1]}; set model.backbone_kwargs.image_size={clean.shape[-1]} "
                f"(or data.image_size={size})"
            )
        if tuple(mask.shape[1:]) != self.grid_size:
            raise ValueError(
                f"the patch mask has a {mask.shape[1]}x{mask.shape[2]} grid, but the ViT cuts "
                f"images into {self.grid_size[0]}x{self.grid_size[1]} patches of "
                f"{self.patch_size} pixels; set data.corruption.init_args.patch_size="
                f"{self.patch_size} (or unset data.corruption to use the default)"
            )
        return mask.flatten(1), clean  # [B, N], [B, 3, H, W]

    def patch_targets(self, images: Tensor) -> Tensor:
        """Per-patch targets ``[B, N, p*p*3]``, normalized per patch when ``norm_pix_loss``."""
        patches = patchify(images, self.patch_size)  # [B, N, P]
        if not self.norm_pix_loss:
            return patches
        mean, std = patch_statistics(patches)
        return (patches - mean) / std

    def reconstruct_patches(self, images: Tensor, mask: Tensor) -> Tensor:
        """Decoder predictions ``[B, N, p*p*3]`` from the visible patches of ``images``.

        Args:
            images: ``[B, 3, H, W]``; only the patches where ``mask`` is ``False`` are read.
            mask: ``[B, N]`` bool, ``True`` = hidden.
        """
        num_hidden = PatchMask(self.patch_size, self.mask_ratio).num_masked(*images.shape[-2:])
        keep = visible_index(mask, num_hidden)  # [B, K]
        latent = cast(PatchEncoder, self.backbone).forward_tokens(images, keep)  # [B, 1 + K, D]
        return self.decoder(latent, keep)

    def pretext_step(self, batch: Batch) -> PretextOutput:
        mask, clean = self._check_batch(batch)
        pred = self.reconstruct_patches(batch.views[0], mask)  # [B, N, P]
        loss = reconstruction_loss(pred, self.patch_targets(clean), mask.unsqueeze(-1))
        with torch.no_grad():
            features = self(clean)  # [B, D], all patches, for the monitoring callbacks
        return PretextOutput(loss=loss, features=features, labels=batch.labels)

    def preview(self, batch: Batch) -> dict[str, Tensor]:
        """Rows to draw: clean input, masked input, reconstruction (visible patches pasted in)."""
        mask, clean = self._check_batch(batch)
        pred = self.reconstruct_patches(batch.views[0], mask)  # [B, N, P]
        if self.norm_pix_loss:  # back to pixels with each patch's own statistics
            mean, std = patch_statistics(patchify(clean, self.patch_size))
            pred = pred * std + mean
        pred_images = unpatchify(pred, self.patch_size, self.grid_size)  # [B, 3, H, W]
        hidden = mask_to_pixels(mask.view(-1, *self.grid_size), self.patch_size)
        return {
            "input": clean,
            "masked": batch.views[0],
            "reconstruction": torch.where(hidden, pred_images, clean),
        }
