"""Similarity losses of the "predict the other view" family: a prediction from one view is
pulled towards a stop-gradient target from the other view, with no negatives.

Both losses are means of per-sample terms, so under DDP each rank's loss on its shard and the
DDP-averaged gradient equal the one-process loss and gradient on the whole batch: no collective
is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["byol_loss", "fastsiam_loss", "simsiam_loss"]


def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """BYOL's symmetric normalized MSE (Grill et al. 2020, arXiv:2006.07733, Section 3.1).

    The prediction of each view regresses the target projection of the other view, both
    l2-normalized; ``||p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z)``::

        loss = mean_b [2 - 2 cos(p1_b, sg(z2_b))] + mean_b [2 - 2 cos(p2_b, sg(z1_b))]

    The two terms are summed, as the paper's ``L^BYOL = L + L~`` does, so the loss lies in
    ``[0, 8]``. The targets get no gradient (``sg``): the target network is an EMA.

    Args:
        p1: ``[B, D]`` online predictions of the first view.
        p2: ``[B, D]`` online predictions of the second view.
        z1: ``[B, D]`` target projections of the first view.
        z2: ``[B, D]`` target projections of the second view.

    Returns:
        Scalar loss.

    Examples:
        >>> p, z = torch.randn(4, 8), torch.randn(4, 8)
        >>> round(byol_loss(p, p, p, p).item(), 4)  # each view predicts the other exactly
        0.0
        >>> round(byol_loss(p, p, -p, -p).item(), 4)  # and the opposite
        8.0
    """
    return 2 * (1 - _cosine(p1, z2)).mean() + 2 * (1 - _cosine(p2, z1)).mean()


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """SimSiam's symmetric negative cosine (Chen & He 2021, arXiv:2011.10566, Eq. 1-2).

    With ``D(p, z) = -mean_b cos(p_b, sg(z_b))``::

        loss = D(p1, z2) / 2 + D(p2, z1) / 2

    the two terms averaged, as in the paper, so the loss lies in ``[-1, 1]``. The stop-gradient
    on the projections is what keeps SimSiam from collapsing (the paper's Section 4.1).

    Args:
        p1: ``[B, D]`` predictions of the first view.
        p2: ``[B, D]`` predictions of the second view.
        z1: ``[B, D]`` projections of the first view.
        z2: ``[B, D]`` projections of the second view.

    Returns:
        Scalar loss.

    Examples:
        >>> z = torch.randn(4, 8)
        >>> round(simsiam_loss(z, z, z, z).item(), 4)
        -1.0
    """
    return -(_cosine(p1, z2).mean() + _cosine(p2, z1).mean()) / 2


def fastsiam_loss(p: Tensor, z: Tensor) -> Tensor:
    """FastSiam's loss (Pototzky, Sultan & Schmidt-Thieme 2022, "FastSiam: Resource-Efficient
    Self-supervised Learning on a Single GPU", DAGM GCPR 2022): SimSiam's negative cosine with
    ``V`` views, each view's prediction matching the mean of the other views' projections
    under stop-gradient::

        loss = mean_v D(p_v, mean_{u != v} z_u),   D(p, z) = -mean_b cos(p_b, sg(z_b))

    With two views it is :func:`simsiam_loss`. A target averaged over ``V - 1`` views is less
    noisy than one view, which is what lets FastSiam learn in few steps with small batches.

    Args:
        p: ``[V, B, D]`` predictions of the ``V >= 2`` views.
        z: ``[V, B, D]`` projections of the same views.

    Returns:
        Scalar loss in ``[-1, 1]``.

    Examples:
        >>> p, z = torch.randn(2, 8, 16), torch.randn(2, 8, 16)
        >>> torch.allclose(fastsiam_loss(p, z), simsiam_loss(p[0], p[1], z[0], z[1]))
        True
    """
    if p.ndim != 3 or p.shape != z.shape or p.shape[0] < 2:
        raise ValueError(
            f"predictions and projections must both be [V, B, D] with V >= 2 views, got "
            f"{tuple(p.shape)} and {tuple(z.shape)}"
        )
    views = p.shape[0]
    z = z.detach()
    others = (z.sum(dim=0, keepdim=True) - z) / (views - 1)  # [V, B, D]
    return -_cosine(p.flatten(0, 1), others.flatten(0, 1)).mean()


def _cosine(p: Tensor, z: Tensor) -> Tensor:
    """Row-wise cosine similarity ``[B, D], [B, D] -> [B]``, no gradient to ``z``."""
    if p.ndim != 2 or p.shape != z.shape:
        raise ValueError(
            f"predictions and targets must both be [B, D], got {tuple(p.shape)} and "
            f"{tuple(z.shape)}"
        )
    # Under bf16 autocast the heads give bf16, whose 8-bit mantissa is too coarse for a loss
    # that approaches its minimum as cos -> 1; normalize in at least float32.
    dtype = torch.promote_types(p.dtype, torch.float32)
    p = F.normalize(p.to(dtype), dim=1)
    z = F.normalize(z.detach().to(dtype), dim=1)
    return (p * z).sum(dim=1)
