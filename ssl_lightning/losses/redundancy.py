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

__all__ = ["barlow_twins_loss", "vicreg_loss"]


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
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = z1.float(), z2.float()
        invariance = invariance_weight * F.mse_loss(z1, z2)
        g1, g2 = _global(z1, gather_distributed), _global(z2, gather_distributed)
        variance = variance_weight * (_std_hinge(g1, gamma, eps) + _std_hinge(g2, gamma, eps))
        covariance = covariance_weight * (_off_diag_cov(g1) + _off_diag_cov(g2))
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
