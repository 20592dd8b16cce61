"""Coding-rate losses: EMP-SSL's total coding rate of each view and invariance to the mean view.

The coding rate takes its ``[D, D]`` statistics over every rank's embeddings (gathered with
gradients, :func:`ssl_lightning.distributed.gather`), so N processes with ``B`` images each
compute the loss of one process on all ``N * B`` images. It runs in float32 with autocast off:
a log-determinant of a matrix of sums over the batch needs more than bfloat16's mantissa.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_lightning import distributed

__all__ = ["emp_ssl_loss", "total_coding_rate"]


def total_coding_rate(z: Tensor, eps: float = 0.2) -> Tensor:
    """Total coding rate of each view's embeddings (Ma et al. 2007; Yu et al. 2020, MCR2,
    arXiv:2006.08558), as EMP-SSL computes it (Tong et al. 2023, arXiv:2304.03977)::

        R(Z) = 1/2 logdet(I_D + D / (N eps) Z^T Z)        # Z: [N, D], N rows over all ranks

    The rate grows as the rows spread over more directions: maximizing it is a covariance
    regularizer (a collapsed, constant ``Z`` has ``R = 1/2 log(1 + D / eps)``, the least a
    unit-norm ``Z`` can have). EMP-SSL's code divides by ``eps``, not MCR2's ``eps^2``; so do we.

    Args:
        z: ``[V, B, D]`` embeddings of ``V`` views (or ``[B, D]``, one view), usually
            l2-normalized; every rank passes the same ``V`` and ``B``.
        eps: the distortion ``eps > 0``.

    Returns:
        ``[V]`` rates (a scalar for ``[B, D]``), the same on every rank.

    Examples:
        >>> z = torch.nn.functional.normalize(torch.randn(64, 8), dim=1)
        >>> bool(total_coding_rate(z) > total_coding_rate(z[:1].expand(64, 8)))
        True
    """
    if eps <= 0:
        raise ValueError(f"eps={eps!r} is invalid: expected a distortion > 0 (model.tcr_eps)")
    if z.ndim not in (2, 3):
        raise ValueError(f"z must be [B, D] or [V, B, D], got {tuple(z.shape)}")
    one_view = z.ndim == 2
    with torch.autocast(z.device.type, enabled=False):
        z = z.float().unsqueeze(0) if one_view else z.float()  # [V, B, D]
        views, batch, dim = z.shape
        # Gather along the batch: [V, B, D] -> [B, V * D] rows, then back to [V, N, D].
        rows = distributed.gather(z.transpose(0, 1).reshape(batch, views * dim))
        z = rows.view(-1, views, dim).transpose(0, 1)  # [V, N, D]
        scale = dim / (z.shape[1] * eps)
        gram = torch.eye(dim, device=z.device) + scale * z.transpose(1, 2) @ z  # [V, D, D]
        # Symmetric positive definite: the Cholesky factor's diagonal gives the log-determinant.
        diagonal = torch.linalg.cholesky(gram).diagonal(dim1=-2, dim2=-1)  # [V, D]
        rate = diagonal.log().sum(dim=-1)  # 1/2 logdet = sum log diag(L)
    return rate[0] if one_view else rate


def emp_ssl_loss(
    z: Tensor, eps: float = 0.2, invariance_weight: float = 200.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """EMP-SSL's loss (Tong et al. 2023, "EMP-SSL: Towards Self-Supervised Learning in One
    Training Epoch", arXiv:2304.03977, Eq. 3): for ``V`` views of each image, with ``z`` l2-
    normalized and ``zbar_b = mean_v z_vb`` (gradients flow through the mean, as in the paper)::

        loss = -mean_v R(Z_v) - lambda * mean_v mean_b cos(z_vb, zbar_b)

    Args:
        z: ``[V, B, D]`` projections of the ``V`` views (normalized here).
        eps: the coding rate's distortion (the paper: 0.2).
        invariance_weight: ``lambda`` (the paper: 200).

    Returns:
        The scalar loss and its terms, detached: ``{"coding_rate": mean_v R(Z_v),
        "similarity": mean cos(z, zbar)}``.

    Examples:
        >>> loss, terms = emp_ssl_loss(torch.randn(4, 16, 8))
        >>> sorted(terms)
        ['coding_rate', 'similarity']
    """
    if z.ndim != 3 or z.shape[0] < 2:
        raise ValueError(f"z must be [V, B, D] with V >= 2 views, got {tuple(z.shape)}")
    with torch.autocast(z.device.type, enabled=False):
        z = F.normalize(z.float(), dim=-1)
        similarity = F.cosine_similarity(z, z.mean(dim=0, keepdim=True), dim=-1).mean()
        rate = total_coding_rate(z, eps).mean()
        loss = -rate - invariance_weight * similarity
    return loss, {"coding_rate": rate.detach(), "similarity": similarity.detach()}
