"""Redundancy-reduction losses: statistics of the embedding dimensions over the global batch.

Both losses take their batch statistics over every rank's embeddings (gathered with
gradients, :func:`ssl_lightning.distributed.gather`), so N processes with ``B`` images each
compute the loss of one process on all ``N * B`` images. They run in float32 with autocast
off: a ``[D, D]`` matrix of sums over the batch in bfloat16 would lose the ``1 - C_ii`` terms
to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_lightning import distributed

__all__ = ["barlow_twins_loss", "multiview_vicreg_loss", "vicreg_loss"]


def barlow_twins_loss(
    z1: Tensor,
    z2: Tensor,
    lambda_offdiag: float = 0.0051,
    gather_distributed: bool = True,
    eps: float = 1e-5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Barlow Twins loss (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", arXiv:2103.03230).

    Each embedding dimension is standardized over the batch (mean 0, std 1, the population
    std as BatchNorm takes it, so ``C`` is exactly the correlation matrix and identical views
    reach ``C_ii = 1``), then::

        C = z1_n^T z2_n / N                                  # [D, D] cross-correlation
        loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2

    Args:
        z1: ``[B, D]`` embeddings of the first view.
        z2: ``[B, D]`` embeddings of the second view (row ``b`` is the same image).
        lambda_offdiag: weight ``lambda >= 0`` of the redundancy (off-diagonal) term.
        gather_distributed: standardize and correlate over the batch of all ranks (``N = R *
            B``); otherwise over this rank's ``B`` rows.
        eps: added to the variance before the square root (BatchNorm's default), so a
            constant dimension gives 0 rather than NaN.

    Returns:
        The scalar loss (the same value on every rank) and its two terms as they enter it:
        ``{"on_diag": sum_i (1 - C_ii)^2, "off_diag": lambda * sum_{i != j} C_ij^2}``
        (detached).

    Examples:
        >>> loss, terms = barlow_twins_loss(torch.randn(8, 16), torch.randn(8, 16))
        >>> sorted(terms)
        ['off_diag', 'on_diag']
    """
    _check_pair(z1, z2, "barlow_twins_loss", gather_distributed)
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = _global(z1.float(), gather_distributed), _global(z2.float(), gather_distributed)
        n = z1.shape[0]
        c = _standardize(z1, eps).T @ _standardize(z2, eps) / n  # [D, D]
        on_diag = (1 - torch.diagonal(c)).square().sum()
        off_diag = lambda_offdiag * _off_diagonal_square_sum(c)
    return on_diag + off_diag, {"on_diag": on_diag.detach(), "off_diag": off_diag.detach()}


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather_distributed: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """VICReg loss (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance
    Regularization for Self-Supervised Learning", arXiv:2105.04906)::

        loss = lambda * MSE(z1, z2) + mu * [v(z1) + v(z2)] + nu * [c(z1) + c(z2)]
        v(z) = mean_j relu(gamma - sqrt(Var(z_j) + eps))
        c(z) = sum_{i != j} Cov(z)_ij^2 / D

    ``MSE`` is the mean over this rank's ``B x D`` entries (per sample: the mean over ranks
    is the global mean); ``Var`` and ``Cov`` are the unbiased (``N - 1``) estimates over the
    batch of all ranks, as in the paper's pseudo-code.

    Args:
        z1: ``[B, D]`` embeddings of the first view.
        z2: ``[B, D]`` embeddings of the second view (row ``b`` is the same image).
        invariance_weight: ``lambda >= 0``.
        variance_weight: ``mu >= 0``.
        covariance_weight: ``nu >= 0``.
        gamma: target standard deviation of every dimension, > 0.
        eps: added to the variance before the square root, > 0.
        gather_distributed: variance and covariance over the batch of all ranks (``N = R *
            B``); otherwise over this rank's ``B`` rows.

    Returns:
        The scalar loss and its three weighted terms as they enter it, ``{"invariance",
        "variance", "covariance"}`` (detached; they sum to the loss).

    Examples:
        >>> loss, terms = vicreg_loss(torch.randn(8, 16), torch.randn(8, 16))
        >>> sorted(terms)
        ['covariance', 'invariance', 'variance']
    """
    _check_pair(z1, z2, "vicreg_loss", gather_distributed)
    return multiview_vicreg_loss(
        torch.stack([z1, z2]),
        invariance_weight,
        variance_weight,
        covariance_weight,
        gamma,
        eps,
        gather_distributed,
    )


def multiview_vicreg_loss(
    z: Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather_distributed: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`vicreg_loss` of ``V >= 2`` views ``z`` ``[V, B, D]``: its mean over every pair
    of views, with each view's variance and covariance computed once::

        loss = lambda * mean_{i < j} MSE(z_i, z_j) + 2 / V * sum_v [mu * v(z_v) + nu * c(z_v)]

    (each view is in ``V - 1`` of the ``V (V - 1) / 2`` pairs). For two views it is
    :func:`vicreg_loss`; for multi-crop (VICReg with local crops) every crop is pulled toward
    every other, as SimCLR's multi-crop views are positives of each other.

    Args:
        z: ``[V, B, D]`` embeddings, ``z[v, b]`` view ``v`` of image ``b``.
        invariance_weight, variance_weight, covariance_weight, gamma, eps,
            gather_distributed: as in :func:`vicreg_loss`.

    Returns:
        The scalar loss and its three weighted terms ``{"invariance", "variance",
        "covariance"}`` (detached; they sum to the loss).

    Examples:
        >>> loss, terms = multiview_vicreg_loss(torch.randn(4, 8, 16))
        >>> sorted(terms)
        ['covariance', 'invariance', 'variance']
    """
    if z.ndim != 3 or z.shape[0] < 2:
        raise ValueError(
            f"multiview_vicreg_loss expects [V, B, D] embeddings of V >= 2 views, got "
            f"{tuple(z.shape)}"
        )
    _check_pair(z[0], z[1], "multiview_vicreg_loss", gather_distributed)
    num_views = z.shape[0]
    with torch.autocast(z.device.type, enabled=False):
        z = z.float()
        pairs = [(i, j) for i in range(num_views) for j in range(i + 1, num_views)]
        mse = torch.stack([F.mse_loss(z[i], z[j]) for i, j in pairs]).mean()
        invariance = invariance_weight * mse
        # [V, R*B, D]: every view's rows from all ranks, in one gather rather than V.
        stats = _global(z.transpose(0, 1).contiguous(), gather_distributed).transpose(0, 1)
        # Each view is in V - 1 of the V (V - 1) / 2 pairs: the pair mean weighs it 2 / V.
        hinges = torch.stack([_std_hinge(g, gamma, eps) for g in stats])
        variance = variance_weight * 2 * hinges.mean()
        covariance = covariance_weight * 2 * torch.stack([_off_diag_cov(g) for g in stats]).mean()
    terms = {"invariance": invariance, "variance": variance, "covariance": covariance}
    return invariance + variance + covariance, {k: v.detach() for k, v in terms.items()}


def _check_pair(z1: Tensor, z2: Tensor, name: str, gather_distributed: bool) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"{name} expects two [B, D] embeddings of one shape, got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}"
        )
    ranks = distributed.world_size() if gather_distributed else 1
    if z1.shape[0] * ranks < 2:
        raise ValueError(
            f"{name} takes statistics over the batch and needs >= 2 rows in it, got "
            f"{z1.shape[0]} on {ranks} rank(s)"
        )


def _global(z: Tensor, gather_distributed: bool) -> Tensor:
    return distributed.gather(z) if gather_distributed else z


def _standardize(z: Tensor, eps: float) -> Tensor:
    """``[N, D]`` -> each column with mean 0 and population std 1."""
    centered = z - z.mean(dim=0)
    return centered / (centered.square().mean(dim=0) + eps).sqrt()


def _std_hinge(z: Tensor, gamma: float, eps: float) -> Tensor:
    return F.relu(gamma - (z.var(dim=0) + eps).sqrt()).mean()


def _off_diag_cov(z: Tensor) -> Tensor:
    centered = z - z.mean(dim=0)
    cov = centered.T @ centered / (z.shape[0] - 1)  # [D, D]
    return _off_diagonal_square_sum(cov) / z.shape[1]


def _off_diagonal_square_sum(m: Tensor) -> Tensor:
    # Masked rather than (total - diagonal): the diagonal dominates the total, and subtracting
    # it would cancel most of the small off-diagonal sum's float32 digits.
    eye = torch.eye(m.shape[0], dtype=torch.bool, device=m.device)
    return m.square().masked_fill(eye, 0).sum()
