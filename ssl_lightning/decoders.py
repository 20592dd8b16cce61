"""Decoders from a backbone's features back to image pixels, one per masked-image method.

- :class:`ConvDecoder`: up-convolutions from one feature map (conv inpainting).
- :class:`MAEDecoder`: a light transformer over visible tokens and mask tokens (MAE).
- :class:`SparseDecoder`: a light U-Net over several stages of a sparse CNN, a mask token
  at every scale (SparK).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssl_lightning.layers import Block, init_transformer_weights, sincos_pos_embed_2d

__all__ = ["ConvDecoder", "MAEDecoder", "SparseDecoder"]


class ConvDecoder(nn.Module):
    """Light convolutional decoder from a backbone's feature map back to image pixels.

    ``log2(upsample_factor)`` stages of a stride-2 4x4 transposed convolution (each doubles the
    resolution), BatchNorm and ReLU, then a 3x3 convolution to ``out_channels``. The output is
    linear, to match normalized image targets. Used by conv inpainting
    (:class:`ssl_lightning.methods.MaskedReconstruction`), in the spirit of the context
    encoder's up-convolutional decoder (Pathak et al. 2016, arXiv:1604.07379).

    Args:
        in_channels: channels ``C`` of the feature map (the backbone's ``num_features``).
        upsample_factor: image size / feature-map size, a power of two (1 = no upsampling).
        hidden_channels: channels of every upsampling stage.
        out_channels: output channels (3 for RGB).

    Shapes: ``[B, C, h, w] -> [B, out_channels, h * upsample_factor, w * upsample_factor]``.

    Examples:
        >>> import torch
        >>> decoder = ConvDecoder(64, upsample_factor=4, hidden_channels=32)
        >>> decoder(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        in_channels: int,
        upsample_factor: int,
        hidden_channels: int = 64,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        if upsample_factor < 1 or upsample_factor & (upsample_factor - 1):
            raise ValueError(f"upsample_factor must be a power of two, got {upsample_factor}")
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(upsample_factor.bit_length() - 1):
            layers += [
                nn.ConvTranspose2d(channels, hidden_channels, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(hidden_channels),
                nn.ReLU(inplace=True),
            ]
            channels = hidden_channels
        layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)
        self.upsample_factor = upsample_factor

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class MAEDecoder(nn.Module):
    """MAE's light transformer decoder: encoded visible tokens + mask tokens -> patch pixels.

    He et al. 2021, arXiv:2111.06377. The encoder's tokens are projected to ``dim``; a shared
    learned mask token fills every hidden patch position, the visible tokens go back to their
    own positions, fixed 2D sin-cos positional embeddings are added, and pre-norm blocks and a
    Linear predict each patch's pixels.

    Args:
        encoder_dim: width of the encoder tokens ``D_e``.
        grid_size: patch grid ``(h, w)``; ``N = h * w``.
        patch_dim: values per patch to predict ``P`` (``patch_size**2 * 3``).
        dim: decoder width ``D``.
        depth: decoder blocks.
        num_heads: attention heads per block.
        num_prefix_tokens: tokens in front of the patch tokens in the encoder output (the
            class token); they pass through the decoder without a position.

    Shapes: ``latent [B, prefix + K, D_e]``, ``keep_index [B, K] -> [B, N, P]``.

    Examples:
        >>> decoder = MAEDecoder(64, (8, 8), 48, dim=32, depth=1, num_heads=2)
        >>> decoder(torch.randn(2, 1 + 16, 64), torch.randint(64, (2, 16))).shape
        torch.Size([2, 64, 48])
    """

    pos_embed: Tensor

    def __init__(
        self,
        encoder_dim: int,
        grid_size: tuple[int, int],
        patch_dim: int,
        dim: int = 256,
        depth: int = 4,
        num_heads: int = 8,
        num_prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        self.num_patches = grid_size[0] * grid_size[1]
        self.num_prefix_tokens = num_prefix_tokens
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(*grid_size, dim).unsqueeze(0), persistent=False
        )  # [1, N, D]
        self.blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_dim)
        init_transformer_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: Tensor, keep_index: Tensor) -> Tensor:
        x = self.embed(latent)  # [B, prefix + K, D]
        prefix, visible = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        batch, _, dim = visible.shape
        index = keep_index.unsqueeze(-1).expand(-1, -1, dim)  # [B, K, D]
        # Mask tokens everywhere, then each visible token back at its own patch position (in the
        # visible tokens' dtype, which autocast may have lowered).
        mask_tokens = self.mask_token.to(visible.dtype).expand(batch, self.num_patches, dim)
        tokens = mask_tokens.scatter(1, index, visible)  # [B, N, D]
        x = torch.cat([prefix, tokens + self.pos_embed], dim=1)  # [B, prefix + N, D]
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, self.num_prefix_tokens :]  # [B, N, P]


class SparseDecoder(nn.Module):
    """SparK's light hierarchical (U-Net-like) decoder: sparse encoder stages -> pixels.

    Tian et al., ICLR 2023, arXiv:2301.03580. Each encoder stage's map has its hidden
    positions filled with the stage's learned mask token (a sparse encoder leaves them empty)
    and is projected by a 1x1 convolution to the decoder's width at that scale. Starting from
    the coarsest stage, each upsampling block (2x2 transposed convolution with stride 2, then
    3x3 convolution, BatchNorm and ReLU) doubles the resolution, and the next finer stage is
    added; more upsampling blocks reach the image resolution, and a 1x1 convolution predicts
    the pixels. The width halves at every upsampling: ``channels * 2**i`` at stage ``i``
    (finest ``i = 0``).

    Args:
        stage_channels: channels of the encoder stages, finest first; each stage's map is half
            the size of the previous one.
        upsample_factor: image size / the finest stage's map size, a power of two.
        channels: decoder width at the finest stage.
        out_channels: output channels (3 for RGB).

    Shapes: ``stages[i] [B, C_i, h / 2^i, w / 2^i]``, ``visible[i] [B, 1, h / 2^i, w / 2^i]``
    (1 = visible) ``-> [B, out_channels, h * upsample_factor, w * upsample_factor]``.

    Examples:
        >>> decoder = SparseDecoder([8, 16], upsample_factor=2, channels=8)
        >>> stages = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
        >>> visible = [torch.ones(2, 1, 16, 16), torch.ones(2, 1, 8, 8)]
        >>> decoder(stages, visible).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        stage_channels: list[int],
        upsample_factor: int,
        channels: int = 64,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        if upsample_factor < 1 or upsample_factor & (upsample_factor - 1):
            raise ValueError(f"upsample_factor must be a power of two, got {upsample_factor}")
        widths = [channels * 2**i for i in range(len(stage_channels))]
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(torch.randn(1, c, 1, 1) * 0.02) for c in stage_channels
        )
        self.projections = nn.ModuleList(
            nn.Conv2d(c, w, 1) for c, w in zip(stage_channels, widths, strict=True)
        )
        # Block i upsamples from stage i + 1's scale to stage i's; then to the image.
        self.stage_ups = nn.ModuleList(
            _up(widths[i + 1], widths[i]) for i in range(len(widths) - 1)
        )
        extra = upsample_factor.bit_length() - 1
        self.image_ups = nn.Sequential(*(_up(channels, channels) for _ in range(extra)))
        self.head = nn.Conv2d(channels, out_channels, 1)
        self.upsample_factor = upsample_factor

    def forward(self, stages: list[Tensor], visible: list[Tensor]) -> Tensor:
        if len(stages) != len(self.projections) or len(visible) != len(stages):
            raise ValueError(
                f"the decoder was built for {len(self.projections)} stages, got "
                f"{len(stages)} stages and {len(visible)} masks"
            )
        dense = [
            proj(torch.where(keep.bool(), stage, token.to(stage.dtype)))
            for stage, keep, token, proj in zip(
                stages, visible, self.mask_tokens, self.projections, strict=True
            )
        ]
        x = dense[-1]
        for i in reversed(range(len(self.stage_ups))):
            x = self.stage_ups[i](x) + dense[i]
        return self.head(self.image_ups(x))


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    """Doubles the resolution: ``[B, in, h, w] -> [B, out, 2h, 2w]``."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )
