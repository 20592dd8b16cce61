"""Heads that sit on top of a backbone's pooled features."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """MLP projection head: ``num_layers - 1`` blocks of Linear-BatchNorm-ReLU, then a Linear.

    SimCLR (arXiv:2002.05709) trains its contrastive loss on this projection and keeps the
    features before it.

    Args:
        in_dim: input features ``D_in`` (the backbone's ``num_features``).
        hidden_dim: width of the hidden layers.
        out_dim: output features ``D_out``.
        num_layers: number of Linear layers, >= 1.
        batch_norm: BatchNorm after each hidden Linear (SimCLR v2, solo-learn do).

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
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
