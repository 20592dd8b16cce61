"""Transformer layers and patch geometry shared by the ViT backbone, MAE's decoder and the
patch-mask corruption. Plain PyTorch, no Lightning.

- :class:`Attention`, :class:`Block`, :func:`init_transformer_weights`: pre-norm transformer
  blocks (Dosovitskiy et al. 2020, https://arxiv.org/abs/2010.11929).
- :func:`sincos_pos_embed_2d`: fixed 2D sin-cos positions (as MAE uses them).
- :func:`eval_mode`: a module in eval mode for a block, its own mode restored after.
- Patch geometry, all row-major: :func:`patchify` / :func:`unpatchify` (images <-> patch
  vectors), :func:`mask_to_pixels` (patch mask -> pixel mask) and :func:`visible_index`
  (patch mask -> indices of the visible patches).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Attention",
    "Block",
    "eval_mode",
    "init_transformer_weights",
    "mask_to_pixels",
    "patch_statistics",
    "patchify",
    "sincos_pos_embed_2d",
    "unpatchify",
    "visible_index",
]


class Attention(nn.Module):
    """Multi-head self-attention (``scaled_dot_product_attention``) over ``[B, N, D]`` tokens."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"width {dim} is not divisible by num_heads={num_heads}; set a width and head "
                "count that divide (model.backbone_kwargs dim/num_heads for the ViT, "
                "model.decoder_dim/decoder_num_heads for MAE's decoder)"
            )
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # [B, heads, N, D/heads] each
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, D/heads]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    Args:
        dim: token width ``D``.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP over ``D``.

    Shapes: ``[B, N, D] -> [B, N, D]``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module) -> None:
    """Xavier-uniform Linear weights, zero biases, unit LayerNorms (ViT/MAE practice)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def sincos_pos_embed_2d(grid_h: int, grid_w: int, dim: int) -> Tensor:
    """Fixed 2D sine-cosine positional embeddings ``[grid_h * grid_w, dim]``, row-major.

    Half of the channels encode the row, half the column; each half is ``sin`` and ``cos`` of
    the position times ``dim / 4`` frequencies ``1 / 10000^(i / (dim / 4))``.

    Args:
        grid_h: patch rows.
        grid_w: patch columns.
        dim: embedding width, divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positional embeddings need a width divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # [D/4]
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):  # [N] each
        angles = pos[:, None] * freqs[None, :]  # [N, D/4]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()  # [N, D]


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cuts ``[B, C, H, W]`` images into row-major patches ``[B, N, patch_size**2 * C]``.

    Each patch is flattened as ``(row, column, channel)``.
    """
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # [B, h, w, p, p, C]
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int]) -> Tensor:
    """Inverse of :func:`patchify`: ``[B, N, patch_size**2 * C] -> [B, C, H, W]``."""
    b, _, dim = patches.shape
    p, (h, w) = patch_size, grid
    c = dim // (p * p)
    x = patches.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)  # [B, C, h, p, w, p]
    return x.reshape(b, c, h * p, w * p)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block (BatchNorm reads its running statistics and
    leaves them unchanged), then back in the mode it was in, also on an error."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def patch_statistics(patches: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Each patch's own mean and std ``[B, N, 1]`` of ``[B, N, P]`` patches (the normalized
    pixel targets of MAE and SparK: ``(patches - mean) / std``); ``std = sqrt(var + eps)``."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, unbiased=False, keepdim=True)
    return mean, (var + eps).sqrt()


def mask_to_pixels(mask: Tensor, patch_size: int) -> Tensor:
    """Expands a ``[B, h, w]`` patch mask to pixels: ``[B, 1, h * patch_size, w * patch_size]``."""
    pixels = mask.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2)
    return pixels.unsqueeze(1)


def visible_index(mask: Tensor, num_hidden: int) -> Tensor:
    """Row-major indices of the visible patches of each image.

    The count of hidden patches comes from the caller (the mask's maker knows it): reading it
    from the mask would make the host wait for the device every step. A row that hides
    another count fails an asynchronous device check (a ``RuntimeError`` on the CPU, a
    device-side assert on an accelerator) instead of silently feeding hidden patches.

    Args:
        mask: ``[B, N]`` bool, ``True`` = hidden; every row hides ``num_hidden`` patches.
        num_hidden: hidden patches per image, in ``[0, N]``.

    Returns:
        ``[B, N - num_hidden]`` int64, the visible patch indices of each image in increasing
        order.
    """
    if not 0 <= num_hidden <= mask.shape[1]:
        raise ValueError(f"num_hidden must be in [0, {mask.shape[1]}], got {num_hidden}")
    torch._assert_async(
        (mask.sum(dim=1) == num_hidden).all(),
        f"every image must hide the same number of patches ({num_hidden}) to batch the visible "
        "ones; use PatchMask, which hides an exact count",
    )
    # A stable sort of 0 (visible) / 1 (hidden) keys puts the visible patches first, in order.
    order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices  # [B, N]
    return order[:, : mask.shape[1] - num_hidden]
