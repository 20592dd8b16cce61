"""Masked reconstruction: conv inpainting (context encoders) and MAE on a Vision Transformer.

Both train on :class:`~ssl_lightning.datamodules.PatchMask` batches (masked image, patch mask,
clean target) and reconstruct the hidden patches; they differ in what the encoder sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, cast

import torch
from torch import Tensor, nn

from ssl_lightning.backbones.vit import patchify, unpatchify
from ssl_lightning.datamodules.batch import Batch
from ssl_lightning.datamodules.corruptions import Corruption
from ssl_lightning.datamodules.corruptions.masking import (
    PatchMask,
    check_mask_ratio,
    mask_to_pixels,
)
from ssl_lightning.heads import ConvDecoder, MAEDecoder
from ssl_lightning.methods.base import PretextOutput, SSLMethod

__all__ = [
    "MAE",
    "MaskedReconstruction",
    "PatchEncoder",
    "reconstruction_loss",
    "visible_index",
]

LossKind = Literal["mse", "l1"]


def reconstruction_loss(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, kind: LossKind = "mse"
) -> Tensor:
    """Mean squared (or absolute) error, over the positions where ``weight`` is set.

    Args:
        pred: predictions, any shape ``S``.
        target: targets, shape ``S``.
        weight: 0/1 (or bool) weights broadcastable to ``S``, e.g. a ``[B, 1, H, W]`` pixel
            mask for ``[B, 3, H, W]`` images; ``None`` averages over everything.
        kind: ``"mse"`` or ``"l1"``.

    Returns:
        Scalar ``sum(weight * err) / sum(weight)``, counted over the broadcast shape.
    """
    err = (pred - target).square() if kind == "mse" else (pred - target).abs()
    if weight is None:
        return err.mean()
    weight = weight.to(err.dtype).expand_as(err)
    return (err * weight).sum() / weight.sum()


def visible_index(mask: Tensor) -> Tensor:
    """Row-major indices of the visible patches of each image.

    Args:
        mask: ``[B, N]`` bool, ``True`` = hidden; every row hides the same number of patches.

    Returns:
        ``[B, N - hidden]`` int64, the visible patch indices of each image in increasing order.
    """
    hidden = mask.sum(dim=1)  # [B]
    if not bool((hidden == hidden[0]).all()):
        raise ValueError(
            f"every image must hide the same number of patches to batch the visible ones, got "
            f"{sorted(set(hidden.tolist()))}; use PatchMask, which hides an exact count"
        )
    # A stable sort of 0 (visible) / 1 (hidden) keys puts the visible patches first, in order.
    order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices  # [B, N]
    return order[:, : mask.shape[1] - int(hidden[0])]


class PatchEncoder(Protocol):
    """What MAE needs of its backbone (:class:`~ssl_lightning.backbones.VisionTransformer`)."""

    image_size: int
    patch_size: int
    grid_size: tuple[int, int]

    def forward_tokens(self, x: Tensor, keep_index: Tensor | None = None) -> Tensor: ...


def _require_mask(method: str, batch: Batch) -> tuple[Tensor, Tensor]:
    """The batch's patch mask and clean image, or an error that says how to get them."""
    if batch.mask is None or batch.clean is None:
        raise ValueError(
            f"{method} needs a patch mask and the clean image in each batch, but the "
            "datamodule's corruption gave neither; unset data.corruption to use the method's "
            "default (PatchMask), or set data.corruption=PatchMask"
        )
    return batch.mask, batch.clean


class MaskedReconstruction(SSLMethod):
    """Conv inpainting: reconstruct hidden patches of an image from the rest with a CNN.

    Context encoders (Pathak et al. 2016, "Context Encoders: Feature Learning by Inpainting",
    https://arxiv.org/abs/1604.07379) with random square patches instead of one central
    region, and no adversarial term.

    Loss: ``mean over hidden pixels of (decoder(backbone.forward_features(masked)) - clean)^2``
    (``|.|`` with ``loss="l1"``; every pixel with ``masked_only=False``), in normalized pixels.

    The encoder is any backbone whose ``forward_features`` returns a map ``[B, C, h, w]`` with
    ``image_size / h`` a power of two; a :class:`~ssl_lightning.heads.ConvDecoder` upsamples it
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
        patch_size: patch side of the default :class:`~ssl_lightning.datamodules.PatchMask`.
        mask_ratio: hidden fraction of the default :class:`~ssl_lightning.datamodules.PatchMask` (a
            ``data.corruption`` from the config replaces that default, and these two
            arguments with it).
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = MaskedReconstruction(backbone="resnet18", loss="l1")
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        image_size: int = 32,
        decoder_channels: int = 64,
        loss: LossKind = "mse",
        masked_only: bool = True,
        patch_size: int = 4,
        mask_ratio: float = 0.5,
        optimizer: Literal["sgd", "lars", "adamw"] = "adamw",
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
        was_training = self.backbone.training
        self.backbone.eval()  # leaves BatchNorm statistics untouched
        with torch.no_grad():
            device = next(self.backbone.parameters(), torch.empty(0)).device
            fmap = self._feature_map(torch.zeros(1, 3, image_size, image_size, device=device))
        self.backbone.train(was_training)
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
        return PatchMask(patch_size=self.patch_size, mask_ratio=self.mask_ratio)

    def reconstruct(self, images: Tensor) -> Tensor:
        """Decoded images ``[B, 3, H, W]`` (normalized pixels) from ``[B, 3, H, W]`` inputs."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.decoder(self._feature_map(images))

    def _feature_map(self, images: Tensor) -> Tensor:
        forward_features = cast(Callable[[Tensor], Tensor], self.backbone.forward_features)
        return forward_features(images)

    def pretext_step(self, batch: Batch) -> PretextOutput:
        mask, clean = _require_mask("MaskedReconstruction", batch)
        pred = self.reconstruct(batch.views[0])  # [B, 3, H, W]
        if pred.shape != clean.shape:
            raise ValueError(
                f"the decoder outputs {pred.shape[-2]}x{pred.shape[-1]} images for "
                f"{clean.shape[-2]}x{clean.shape[-1]} inputs; set "
                f"model.image_size={clean.shape[-1]} to build the decoder for this size, or "
                f"resize the images with data.image_size (a multiple of "
                f"{self.decoder.upsample_factor} suits this decoder)"
            )
        weight = (
            mask_to_pixels(mask, clean.shape[-1] // mask.shape[-1]) if self.masked_only else None
        )
        loss = reconstruction_loss(pred, clean, weight, self.loss_kind)
        with torch.no_grad():
            features = self(clean)  # [B, D], for the monitoring callbacks
        return PretextOutput(loss=loss, features=features, labels=batch.labels)

    def preview(self, batch: Batch) -> dict[str, Tensor]:
        """Rows to draw: clean input, masked input, reconstruction (visible pixels pasted in)."""
        mask, clean = _require_mask("MaskedReconstruction", batch)
        pred = self.reconstruct(batch.views[0])
        hidden = mask_to_pixels(mask, clean.shape[-1] // mask.shape[-1])  # [B, 1, H, W]
        return {
            "input": clean,
            "masked": batch.views[0],
            "reconstruction": torch.where(hidden, pred, clean),
        }


class MAE(SSLMethod):
    """Masked autoencoder on a Vision Transformer: encode the visible patches, decode all.

    He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners",
    https://arxiv.org/abs/2111.06377.

    Loss: ``mean over hidden patches of mean((decoder(encoder(visible)) - target)^2)``, where
    ``target`` is each patch's pixels, normalized by the patch's own mean and std when
    ``norm_pix_loss``.

    The encoder is a ViT from the registry (``vit_tiny``, ``vit_small``) that encodes only the
    visible patches (``forward_tokens(images, keep_index)``); the mask comes from
    :class:`~ssl_lightning.datamodules.PatchMask` with the ViT's patch size. A
    :class:`~ssl_lightning.heads.MAEDecoder` fills the hidden positions with a mask token and
    predicts every patch. The features handed to callbacks come from an extra no-grad pass of
    the encoder over all patches of the clean images, as evaluation sees them.

    Args:
        backbone: registered ViT name or module with ``forward_tokens``, ``patch_size``,
            ``image_size`` and ``grid_size``.
        backbone_kwargs: arguments for the registered backbone (``image_size``, ``depth``, ...).
        mask_ratio: hidden fraction of the default :class:`~ssl_lightning.datamodules.PatchMask`.
        decoder_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder attention heads.
        norm_pix_loss: normalize each target patch by its own mean and std.
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = MAE(backbone="vit_small", mask_ratio=0.75)
    """

    def __init__(
        self,
        backbone: str | nn.Module = "vit_small",
        backbone_kwargs: dict[str, Any] | None = None,
        mask_ratio: float = 0.75,
        decoder_dim: int = 256,
        decoder_depth: int = 4,
        decoder_num_heads: int = 8,
        norm_pix_loss: bool = True,
        optimizer: Literal["sgd", "lars", "adamw"] = "adamw",
        lr: float = 1.5e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40.0,
        scale_lr: bool = True,
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
        mask, clean = _require_mask("MAE", batch)
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
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, unbiased=False, keepdim=True)
        return (patches - mean) / (var + 1e-6).sqrt()

    def reconstruct_patches(self, images: Tensor, mask: Tensor) -> Tensor:
        """Decoder predictions ``[B, N, p*p*3]`` from the visible patches of ``images``.

        Args:
            images: ``[B, 3, H, W]``; only the patches where ``mask`` is ``False`` are read.
            mask: ``[B, N]`` bool, ``True`` = hidden.
        """
        keep = visible_index(mask)  # [B, K]
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
            patches = patchify(clean, self.patch_size)
            std = (patches.var(dim=-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
            pred = pred * std + patches.mean(dim=-1, keepdim=True)
        pred_images = unpatchify(pred, self.patch_size, self.grid_size)  # [B, 3, H, W]
        hidden = mask_to_pixels(mask.view(-1, *self.grid_size), self.patch_size)
        return {
            "input": clean,
            "masked": batch.views[0],
            "reconstruction": torch.where(hidden, pred_images, clean),
        }
