"""Reconstruction losses: predicted pixels against targets, over the hidden positions."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

__all__ = ["LossKind", "reconstruction_loss"]

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

    Examples:
        >>> reconstruction_loss(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([[1], [0]]))
        tensor(1.)
    """
    err = (pred - target).square() if kind == "mse" else (pred - target).abs()
    if weight is None:
        return err.mean()
    weight = weight.to(err.dtype).expand_as(err)
    return (err * weight).sum() / weight.sum()
