"""Heads on top of a backbone's pooled features: MLPs, projection heads, DINO's head.

The decoders back to pixels live in :mod:`ssl_lightning.decoders`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
