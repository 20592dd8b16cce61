"""Label-free signs of collapse in a batch of embeddings: their effective rank (RankMe) and the
spread of their L2-normalized dimensions (SimSiam's std). Plain PyTorch; with
``gather_distributed=True`` each statistic is taken over the rows of all ranks, the number one
process would compute on the concatenated rows.

Examples:
    >>> import torch
    >>> z = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))
    >>> 15 < rankme(z).item() <= 16
    True
    >>> rankme(torch.ones(100, 16)).item() < 1.001  # every row the same: rank one
    True
    >>> std, _ = embedding_std(z)
    >>> abs(std.item() - 16**-0.5) < 0.01  # healthy: about 1 / sqrt(D)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_lightning import distributed

__all__ = ["embedding_std", "rankme"]


def rankme(embeddings: Tensor, eps: float = 1e-7, gather_distributed: bool = False) -> Tensor:
    """RankMe, the effective rank of an embedding matrix.

    Garrido et al., "RankMe: Assessing the downstream performance of pretrained
    self-supervised representations by their rank", ICML 2023
    (https://arxiv.org/abs/2210.02885): with the singular values ``sigma`` of ``Z`` and
    ``p_k = sigma_k / ||sigma||_1 + eps``, ``RankMe(Z) = exp(-sum_k p_k log p_k)``. It lies in
    ``[1, min(N, D)]`` up to ``eps`` (about 1 for identical rows, ``min(N, D)`` for equal
    singular values); a matrix of zeros has no direction and scores 0. The singular values are
    computed in float64.

    Args:
        embeddings: ``[N, D]`` rows (the paper uses 25,600 of them).
        eps: the paper's smoothing term added to each ``p_k``.
        gather_distributed: take the rows of all ranks (``N`` may differ between ranks; every
            rank must call it, and every rank gets the same value).

    Returns:
        A float64 scalar tensor on the embeddings' device.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"rankme takes embeddings [N, D], got shape {tuple(embeddings.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if gather_distributed:
        embeddings = distributed.gather_variable(embeddings)
    sigma = torch.linalg.svdvals(embeddings.detach().double())  # [min(N, D)]
    total = sigma.sum()
    p = sigma / total.clamp(min=torch.finfo(torch.float64).tiny) + eps  # [min(N, D)]
    rank = torch.exp(-(p * p.log()).sum())
    return torch.where(total > 0, rank, torch.zeros_like(rank))


def embedding_std(
    embeddings: Tensor, threshold: float = 0.1, gather_distributed: bool = False
) -> tuple[Tensor, Tensor]:
    """Per-dimension standard deviation of the L2-normalized embeddings.

    Chen and He, "Exploring Simple Siamese Representation Learning", CVPR 2021
    (https://arxiv.org/abs/2011.10566), section 4.1: for ``z / ||z||_2`` with ``D`` dimensions
    the mean of the per-dimension std is about ``1 / sqrt(D)`` when the rows spread over the
    sphere like a Gaussian, and 0 when every row is the same (collapse). The dimensions whose
    std falls below ``threshold / sqrt(D)`` are counted as collapsed: dimensional collapse shows
    in that fraction before the mean moves much. The std is the unbiased one (``N - 1``),
    computed in float64 in two passes (the mean first), so identical rows give 0 up to
    float64 rounding (about 1e-17).

    Args:
        embeddings: ``[N, D]`` rows, ``N >= 2`` over all ranks.
        threshold: a dimension is collapsed below ``threshold / sqrt(D)``.
        gather_distributed: take the rows of all ranks (``N`` may differ between ranks; two
            all-reduces of ``D + 1`` and ``D`` numbers; every rank must call it).

    Returns:
        ``(mean std over dimensions, fraction of collapsed dimensions)``, float64 scalars.
    """
    if embeddings.ndim != 2:
        raise ValueError(
            f"embedding_std takes embeddings [N, D], got shape {tuple(embeddings.shape)}"
        )
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    reduce = distributed.all_reduce_sum if gather_distributed else (lambda x: x)
    z = F.normalize(embeddings.detach().double(), dim=1)  # [N, D]
    count = z.new_tensor([z.shape[0]])  # [1]
    sums = reduce(torch.cat([z.sum(dim=0), count]))  # [D + 1]
    n = sums[-1]
    if n.item() < 2:  # once per call: a host sync is fine here
        raise ValueError(f"embedding_std needs at least 2 rows over all ranks, got {int(n)}")
    mean = sums[:-1] / n  # [D]
    std = (reduce((z - mean).pow(2).sum(dim=0)) / (n - 1)).sqrt()  # [D]
    collapsed = (std < threshold / z.shape[1] ** 0.5).double().mean()
    return std.mean(), collapsed
