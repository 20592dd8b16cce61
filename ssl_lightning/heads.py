"""Heads on top of a backbone: projection heads on pooled features, decoders back to pixels."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_lightning.layers import Block, init_transformer_weights, sincos_pos_embed_2d


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int,
    activation: Callable[[], nn.Module],
    batch_norm: bool,
    hidden_bias: bool = True,
    last_bias: bool = True,
) -> nn.Sequential:
    """``num_layers`` Linear layers; each but the last is followed by a BatchNorm (when
    ``batch_norm``) and ``activation()``. Shapes: ``[B, in_dim] -> [B, out_dim]``."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=hidden_bias))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(activation())
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=last_bias))
    return nn.Sequential(*layers)


class ProjectionHead(nn.Module):
    """MLP projection head: ``num_layers - 1`` blocks of Linear-BatchNorm-ReLU, then a Linear.

    SimCLR (arXiv:2002.05709) trains its contrastive loss on this projection and keeps the
    features before it; BYOL, SimSiam, MoCo v3, Barlow Twins and VICReg use the same shape
    for their projectors and predictors (SimSiam and MoCo v3 with ``last_batch_norm``).

    Args:
        in_dim: input features ``D_in`` (the backbone's ``num_features``).
        hidden_dim: width of the hidden layers.
        out_dim: output features ``D_out``.
        num_layers: number of Linear layers, >= 1.
        batch_norm: BatchNorm after each hidden Linear (SimCLR v2, solo-learn do).
        last_batch_norm: a non-affine BatchNorm after the last Linear (SimSiam's projector,
            MoCo v3's projector).

    Shapes: ``[B, D_in] -> [B, D_out]``.

    Examples:
        >>> import torch
        >>> head = ProjectionHead(512, 2048, 128)
        >>> head(torch.randn(4, 512)).shape
        torch.Size([4, 128])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        # A BatchNorm right after a Linear makes its bias redundant.
        self.layers = mlp(
            in_dim,
            hidden_dim,
            out_dim,
            num_layers,
            partial(nn.ReLU, inplace=True),
            batch_norm,
            hidden_bias=not batch_norm,
            last_bias=not last_batch_norm,
        )
        if last_batch_norm:
            self.layers.append(nn.BatchNorm1d(out_dim, affine=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DINOHead(nn.Module):
    """DINO's projection head: an MLP to a bottleneck, L2-normalized, then prototype logits.

    Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
    arXiv:2104.14294 (section 3.1): ``num_layers`` Linear layers with GELU between them (hidden
    width ``hidden_dim``, output ``bottleneck_dim``), ``normalize``, then a weight-normalized
    Linear without bias, ``w_k = g_k v_k / ||v_k||``, to ``out_dim`` prototypes. With
    ``norm_last_layer`` the scales ``g_k`` are fixed at 1 (the paper's default: it stabilizes
    training), so the logits are cosine similarities to the prototypes.

    Args:
        in_dim: input features ``D_in`` (the backbone's ``num_features``).
        out_dim: prototypes ``K``.
        hidden_dim: width of the hidden layers.
        bottleneck_dim: width of the normalized bottleneck.
        num_layers: Linear layers of the MLP, >= 1.
        batch_norm: BatchNorm after each hidden Linear (the paper's head has none).
        norm_last_layer: fix the prototype scales at 1 instead of learning them.

    Attributes:
        last_layer: the weight-normalized prototypes (:class:`NormalizedLinear`).

    Shapes: ``[B, D_in] -> [B, K]``.

    Examples:
        >>> head = DINOHead(512, 4096)
        >>> head(torch.randn(4, 512)).shape
        torch.Size([4, 4096])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = mlp(in_dim, hidden_dim, bottleneck_dim, num_layers, nn.GELU, batch_norm)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):  # the ViT initialization the paper's head uses
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = NormalizedLinear(bottleneck_dim, out_dim, learn_scale=not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))  # [B, K]


class NormalizedLinear(nn.Module):
    """Weight-normalized Linear without bias (Salimans & Kingma 2016, arXiv:1602.07868):
    ``y = x (g * v / ||v||)^T`` with each output row ``v_k`` normalized; ``g`` is learned
    when ``learn_scale``, else fixed at 1.

    Shapes: ``[B, in_dim] -> [B, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, learn_scale: bool = False) -> None:
        super().__init__()
        # Only the rows' directions matter (they are normalized): any isotropic draw will do.
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / in_dim**0.5)  # [K, D]
        self.scale = nn.Parameter(torch.ones(out_dim, 1)) if learn_scale else None

    def forward(self, x: Tensor) -> Tensor:
        weight = F.normalize(self.weight, dim=1)  # [K, D]
        return F.linear(x, weight if self.scale is None else self.scale * weight)


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
