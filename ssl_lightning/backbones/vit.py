"""A small Vision Transformer for 32x32 images (patch 4), with encoding of a subset of patches.

Dosovitskiy et al., "An Image is Worth 16x16 Words", https://arxiv.org/abs/2010.11929. Pre-norm
blocks, a class token, fixed 2D sin-cos positional embeddings (as MAE uses them) and a final
LayerNorm. :meth:`VisionTransformer.forward_tokens` encodes only the patches named by an index,
which is what MAE's encoder needs: it never sees the masked patches.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ssl_lightning.backbones.registry import register_backbone
from ssl_lightning.layers import Block, init_transformer_weights, sincos_pos_embed_2d

__all__ = ["VisionTransformer", "vit_small", "vit_tiny"]


class VisionTransformer(nn.Module):
    """ViT encoder: patch embedding, class token, fixed 2D sin-cos positions, pre-norm blocks.

    Built for ``image_size`` (``image_size / patch_size`` patches per side) but accepts any
    input whose sides ``patch_size`` divides: the positions are fixed sin-cos functions of the
    patch grid, so another grid (DINO's small local crops) gets its own, computed once per grid
    and cached. MAE, whose decoder is built for one grid, checks the exact size itself.

    Args:
        image_size: side of the square images the ViT is built for (its ``grid_size``).
        patch_size: side of a square patch; must divide ``image_size``.
        dim: token width ``D``.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width over ``D``.
        pool: pooled feature of ``forward``: ``"mean"`` of the patch tokens or the ``"cls"``
            token.

    Attributes:
        num_features: ``D``.
        num_patches: ``N = (image_size / patch_size) ** 2``.
        grid_size: ``(h, w)`` patch grid.
        num_prefix_tokens: 1, the class token in front of the patch tokens.

    Examples:
        >>> model = VisionTransformer(dim=64, depth=2, num_heads=2)
        >>> model.forward_features(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 65, 64])
        >>> model.forward_tokens(torch.randn(2, 3, 32, 32), torch.tensor([[0, 5], [1, 2]])).shape
        torch.Size([2, 3, 64])
        >>> model(torch.randn(2, 3, 16, 16)).shape  # a 4x4 grid of patches
        torch.Size([2, 64])
    """

    num_prefix_tokens = 1
    pos_embed: Tensor

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        pool: Literal["mean", "cls"] = "mean",
    ) -> None:
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(
                f"patch_size={patch_size} does not divide image_size={image_size}; set "
                "model.backbone_kwargs.patch_size to a divisor of the image size"
            )
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_features: int = dim
        self.pool = pool

        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Fixed, not learned: a non-persistent buffer follows the module's device and dtype,
        # is rebuilt on construction and stays out of checkpoints.
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(*self.grid_size, dim).unsqueeze(0), persistent=False
        )  # [1, N, D]
        # Other grids' positions; a plain dict, so they stay out of state dicts too.
        self._pos_embed_cache: dict[tuple[int, int], Tensor] = {}
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

        init_transformer_weights(self)
        # The patch embedding is a linear map of a flattened patch: initialize it like one.
        nn.init.xavier_uniform_(self.patch_embed.weight.view(dim, -1))
        nn.init.normal_(self.cls_token, std=0.02)

    def embed_patches(self, x: Tensor) -> Tensor:
        """Patch tokens with positions, before any block: ``[B, 3, H, W] -> [B, N, D]``, with
        ``N = (H / patch_size) * (W / patch_size)``."""
        height, width, patch = x.shape[-2], x.shape[-1], self.patch_size
        if height % patch or width % patch:
            raise ValueError(
                f"a {height}x{width} input does not split into {patch}x{patch} patches: "
                f"patch_size={patch} must divide both sides; make the view sizes multiples of "
                f"{patch} (data.corruption's local_size or view size, or data.image_size), or "
                "set model.backbone_kwargs.patch_size to a divisor of them"
            )
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
        return tokens + self.pos_embed_for(height // patch, width // patch)

    def pos_embed_for(self, grid_h: int, grid_w: int) -> Tensor:
        """Sin-cos positions ``[1, grid_h * grid_w, D]`` of a patch grid, row-major: the built
        buffer for the built grid, else computed once per grid (in the buffer's device and
        dtype) and cached."""
        if (grid_h, grid_w) == self.grid_size:
            return self.pos_embed
        cached = self._pos_embed_cache.get((grid_h, grid_w))
        if cached is None or (cached.device, cached.dtype) != (
            self.pos_embed.device,
            self.pos_embed.dtype,
        ):
            cached = sincos_pos_embed_2d(grid_h, grid_w, self.num_features).unsqueeze(0)
            cached = cached.to(self.pos_embed)
            self._pos_embed_cache[(grid_h, grid_w)] = cached
        return cached

    def forward_tokens(self, x: Tensor, keep_index: Tensor | None = None) -> Tensor:
        """Encodes the class token and the patches ``keep_index`` selects (all by default).

        Args:
            x: images ``[B, 3, H, W]``.
            keep_index: ``[B, K]`` int64 row-major patch indices to encode, per image; the
                other patches are dropped before the first block.

        Returns:
            Normalized tokens ``[B, 1 + K, D]``: the class token, then the kept patches in the
            order of ``keep_index``.
        """
        tokens = self.embed_patches(x)  # [B, N, D]
        if keep_index is not None:
            index = keep_index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])  # [B, K, D]
            tokens = tokens.gather(1, index)  # [B, K, D]
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # [B, 1, D]
        tokens = torch.cat([cls, tokens], dim=1)  # [B, 1 + K, D]
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Every block's tokens ``[B, 1 + N, D]`` (class token first); the last one normalized,
        as :meth:`forward_features` returns it."""
        tokens = self.embed_patches(x)  # [B, N, D]
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        stages = []
        for block in self.blocks:
            tokens = block(tokens)
            stages.append(tokens)
        stages[-1] = self.norm(tokens)
        return stages

    def forward_features(self, x: Tensor) -> Tensor:
        """All tokens: ``[B, 3, H, W] -> [B, 1 + N, D]``, class token first."""
        return self.forward_tokens(x)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features ``[B, D]``: mean of the patch tokens, or the class token."""
        tokens = self.forward_tokens(x)  # [B, 1 + N, D]
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)


@register_backbone
def vit_tiny(
    image_size: int = 32,
    patch_size: int = 4,
    dim: int = 192,
    depth: int = 12,
    num_heads: int = 3,
    pool: Literal["mean", "cls"] = "mean",
) -> VisionTransformer:
    """ViT-Tiny (width 192, 12 blocks, 3 heads) for 32x32 images, patch 4: 64 patch tokens."""
    return VisionTransformer(image_size, patch_size, dim, depth, num_heads, pool=pool)


@register_backbone
def vit_small(
    image_size: int = 32,
    patch_size: int = 4,
    dim: int = 384,
    depth: int = 12,
    num_heads: int = 6,
    pool: Literal["mean", "cls"] = "mean",
) -> VisionTransformer:
    """ViT-Small (width 384, 12 blocks, 6 heads) for 32x32 images, patch 4: 64 patch tokens."""
    return VisionTransformer(image_size, patch_size, dim, depth, num_heads, pool=pool)
