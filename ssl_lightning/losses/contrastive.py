"""Contrastive losses: an embedding against positives and negatives, gathered from all ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_lightning import distributed

__all__ = ["info_nce", "nt_xent"]


def nt_xent(z: Tensor, temperature: float = 0.2, gather_distributed: bool = True) -> Tensor:
    """Normalized-temperature cross entropy (SimCLR, Chen et al. 2020, arXiv:2002.05709).

    Every embedding is an anchor; its positives are the other views of the same image, its
    negatives every other embedding (from all ranks when ``gather_distributed``). With ``V``
    views the loss of an anchor is the mean over its ``V - 1`` positives of
    ``-log softmax(sim / t)`` taken over all embeddings but itself; with two views this is the
    usual NT-Xent. Computed with ``log_softmax`` (never sums of ``exp``), so it stays finite at
    small temperatures.

    Args:
        z: ``[V, B, D]`` embeddings of ``V`` views of ``B`` images (not yet normalized).
        temperature: softmax temperature ``t > 0``.
        gather_distributed: take negatives from every rank (gradients flow to all of them).

    Returns:
        Scalar mean loss over this rank's ``V * B`` anchors.

    Examples:
        >>> z = torch.randn(2, 8, 16)
        >>> nt_xent(z, temperature=0.5).shape
        torch.Size([])
    """
    if z.ndim != 3 or z.shape[0] < 2:
        raise ValueError(f"nt_xent expects z of shape [V >= 2, B, D], got {tuple(z.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    num_views, batch, _ = z.shape
    z = F.normalize(z, dim=-1).flatten(0, 1)  # [V*B, D], view-major
    ids = torch.arange(batch, device=z.device).repeat(num_views)  # [V*B] image id per row

    offset = 0
    candidates, candidate_ids = z, ids
    if gather_distributed and distributed.is_distributed():
        candidates = distributed.gather(z)  # [R*V*B, D]
        offset = distributed.rank() * num_views * batch
        # Image ids are made globally unique by the rank that owns them.
        rank_of = torch.arange(distributed.world_size(), device=z.device)
        candidate_ids = (ids[None, :] + batch * rank_of[:, None]).flatten()
        ids = ids + batch * distributed.rank()

    logits = z @ candidates.T / temperature  # [V*B, N]
    rows = torch.arange(z.shape[0], device=z.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, rows + offset] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = F.log_softmax(logits, dim=1)
    positive = (ids[:, None] == candidate_ids[None, :]) & ~self_mask  # [V*B, N]
    # Masked entries are -inf; zero them before the product so 0 * -inf never appears.
    positive_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob))
    return -(positive_log_prob.sum(1) / (num_views - 1)).mean()


def info_nce(
    q: Tensor, k: Tensor, temperature: float = 0.2, gather_distributed: bool = True
) -> Tensor:
    """InfoNCE of queries against momentum keys, scaled by ``2 t`` (MoCo v3, Chen, Xie & He
    2021, "An Empirical Study of Training Self-Supervised Vision Transformers",
    arXiv:2104.02057, Algorithm 1).

    With ``q`` and ``k`` L2-normalized, query ``i``'s positive is key ``i`` and its negatives
    are all other keys of the batch, from every rank when ``gather_distributed``::

        loss = 2 t * mean_i -log( exp(q_i . k_i / t) / sum_j exp(q_i . k_j / t) )

    The keys come from the momentum encoder and are constants: no gradient flows into ``k``.
    The factor ``2 t`` is the paper's; it keeps the gradient scale independent of ``t``.
    MoCo v3's symmetric loss is ``info_nce(q1, k2) + info_nce(q2, k1)``.

    Args:
        q: ``[B, D]`` queries (the online encoder's predictions), not yet normalized.
        k: ``[B, D]`` keys of the other view (the momentum encoder's projections).
        temperature: softmax temperature ``t > 0``.
        gather_distributed: take the keys of every rank as negatives; this rank's queries
            then point at their keys at offset ``rank * B``.

    Returns:
        Scalar mean loss over this rank's ``B`` queries.

    Examples:
        >>> info_nce(torch.randn(8, 16), torch.randn(8, 16), temperature=0.2).shape
        torch.Size([])
    """
    if q.ndim != 2 or q.shape != k.shape:
        raise ValueError(
            f"info_nce expects q and k of one shape [B, D], got {tuple(q.shape)} and "
            f"{tuple(k.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = q.shape[0]
    q = F.normalize(q, dim=1)  # [B, D]
    k = F.normalize(k.detach(), dim=1)  # [B, D]
    labels = torch.arange(batch, device=q.device)
    if gather_distributed and distributed.is_distributed():
        k = distributed.gather(k)  # [R*B, D]
        labels = labels + distributed.rank() * batch
    logits = q @ k.T / temperature  # [B, R*B]
    return F.cross_entropy(logits.float(), labels) * (2 * temperature)
