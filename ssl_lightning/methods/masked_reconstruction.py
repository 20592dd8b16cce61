"""Conv inpainting: reconstruct the hidden patches of an image from the rest with a CNN."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from ssl_lightning.corruptions import Batch, Corruption, PatchMask
from ssl_lightning.corruptions.masking import check_mask_ratio, require_mask
from ssl_lightning.corruptions.recipes import crop_flip_view
from ssl_lightning.decoders import ConvDecoder
from ssl_lightning.layers import eval_mode, mask_to_pixels
from ssl_lightning.losses import LossKind, reconstruction_loss
from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.outputs import PretextOutput
from ssl_lightning.optim import OptimizerName

__all__ = ["MaskedReconstruction"]


class MaskedReconstruction(SSLMethod):
    """Conv inpainting: reconstruct hidden patches of an image from the rest with a CNN.

    Context encoders (Pathak et al. 2016, "Context Encoders: Feature Learning by Inpainting",
    https://arxiv.org/abs/1604.07379) with random square patches instead of one central
    region, and no adversarial term.

    The default hole is large, as the context encoder's: a quarter of the image in 16x16
    patches (on 32x32 images one random quadrant), hidden after a random crop (35-100% of the
    area) and flip of each image (``crop_flip_view()``). Filling a whole quadrant takes more
    than interpolating from neighbouring pixels; on CIFAR-10 this recipe learns more than small
    4x4 holes (README, Results).

    Loss: ``mean over hidden pixels of (decoder(backbone.forward_features(masked)) - clean)^2``
    (``|.|`` with ``loss="l1"``; every pixel with ``masked_only=False``), in normalized pixels.

    The encoder is any backbone whose ``forward_features`` returns a map ``[B, C, h, w]`` with
    ``image_size / h`` a power of two; a :class:`~ssl_lightning.decoders.ConvDecoder` upsamples it
    back to the image. The features handed to callbacks (linear probe, kNN) come from an extra
    no-grad pass of the backbone over the *clean* images, so monitoring sees the same kind of
    input as evaluation; BatchNorm layers also see that pass in training mode.

    Args:
        backbone: registered CNN backbone name or module (see :class:`SSLMethod`).
        backbone_kwargs: arguments for the registered backbone.
        image_size: side of the (square) training images; sets the decoder's upsampling.
        decoder_channels: channels of the decoder's upsampling stages.
        loss: ``"mse"`` or ``"l1"``.
        masked_only: average the loss over the hidden pixels only; ``False`` uses all pixels.
        patch_size: patch side of the :class:`~ssl_lightning.corruptions.PatchMask`.
        mask_ratio: hidden fraction of the patches. The method owns both: a configured
            ``data.corruption`` must agree with them (its ``fill`` and ``view`` are free).
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = MaskedReconstruction(backbone="resnet18", loss="l1")
    """

    pretext_settings = {"patch_size": "model.patch_size", "mask_ratio": "model.mask_ratio"}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        image_size: int = 32,
        decoder_channels: int = 64,
        loss: LossKind = "mse",
        masked_only: bool = True,
        patch_size: int = 16,
        mask_ratio: float = 0.25,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if loss not in ("mse", "l1"):
            raise ValueError(f"loss must be 'mse' or 'l1', got {loss!r} (set model.loss)")
        check_mask_ratio(mask_ratio, "model.mask_ratio")
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(
                f"patch_size={patch_size} does not divide image_size={image_size}; set "
                "model.patch_size to a divisor of the image size"
            )
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
        self.image_size = image_size
        self.loss_kind: LossKind = loss
        self.masked_only = masked_only
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        channels, factor = self._feature_map_geometry(image_size)
        self.decoder = ConvDecoder(channels, factor, decoder_channels)

    def _feature_map_geometry(self, image_size: int) -> tuple[int, int]:
        """Channels and downsampling factor of the backbone's map, from one probe pass."""
        with eval_mode(self.backbone), torch.no_grad():  # BatchNorm statistics untouched
            device = next(self.backbone.parameters(), torch.empty(0)).device
            fmap = self._feature_map(torch.zeros(1, 3, image_size, image_size, device=device))
        name = type(self.backbone).__name__
        if fmap.ndim != 4:
            raise TypeError(
                f"MaskedReconstruction decodes a feature map [B, C, h, w], but backbone {name} "
                f"returns {tuple(fmap.shape)} tokens; set model.backbone to a CNN (resnet18, "
                "convnet), or use model MAE for a ViT"
            )
        height, width = fmap.shape[-2:]
        factor = image_size // height
        if height != width or factor * height != image_size or factor & (factor - 1):
            raise ValueError(
                f"backbone {name} maps {image_size}x{image_size} images to a {height}x{width} "
                "map, which is not a power-of-two downsampling the decoder can invert; set "
                "model.image_size to the training image size (or choose another backbone)"
            )
        return int(fmap.shape[1]), factor

    def default_corruption(self) -> Corruption:
        return PatchMask(self.patch_size, self.mask_ratio, view=crop_flip_view())

    def reconstruct(self, images: Tensor) -> Tensor:
        """Decoded images ``[B, 3, H, W]`` (normalized pixels) from ``[B, 3, H, W]`` inputs."""
        return self.decoder(self._feature_map(self._memory_format(images)))

    def _feature_map(self, images: Tensor) -> Tensor:
        forward_features = cast(Callable[[Tensor], Tensor], self.backbone.forward_features)
        return forward_features(images)

    def pretext_step(self, batch: Batch) -> PretextOutput:
        mask, clean = require_mask(batch, "MaskedReconstruction")
        pred = self.reconstruct(batch.views[0])  # [B, 3, H, W]
        if pred.shape != clean.shape:
            raise ValueError(
                f"the decoder outputs {pred.shape[-2]}x{pred.shape[-1]} images for "
                f"{clean.shape[-2]}x{clean.shape[-1]} inputs; set "
                f"model.image_size={clean.shape[-1]} to build the decoder for this size, or "
                f"resize the images with data.image_size (a multiple of "
                f"{self.decoder.upsample_factor} suits this decoder)"
            )
        patch = clean.shape[-1] // mask.shape[-1]
        weight = mask_to_pixels(mask, patch) if self.masked_only else None  # [B, 1, H, W]
        loss = reconstruction_loss(pred, clean, weight, self.loss_kind)
        with torch.no_grad():
            features = self(clean)  # [B, D], for the monitoring callbacks
        return PretextOutput(loss=loss, features=features, labels=batch.labels)

    def preview(self, batch: Batch) -> dict[str, Tensor]:
        """Rows to draw: clean input, masked input, reconstruction (visible pixels pasted in)."""
        mask, clean = require_mask(batch, "MaskedReconstruction")
        pred = self.reconstruct(batch.views[0])
        hidden = mask_to_pixels(mask, clean.shape[-1] // mask.shape[-1])  # [B, 1, H, W]
        return {
            "input": clean,
            "masked": batch.views[0],
            "reconstruction": torch.where(hidden, pred, clean),
        }
