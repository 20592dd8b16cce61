"""Weighted k-nearest-neighbour classification of features (the InstDisc protocol), shared by
the kNN monitor callback and the frozen evaluation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knn_predict"]


def knn_predict(
    queries: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted kNN class predictions (Wu et al. 2018, "Unsupervised Feature Learning via
    Non-Parametric Instance Discrimination", https://arxiv.org/abs/1805.01978).

    Each query's ``k`` most cosine-similar bank entries vote for their class with weight
    ``exp(similarity / temperature)``; the class with the largest total wins. The weights are
    computed relative to each query's nearest neighbour (``exp((s - s_max) / T)``, the same
    vote up to a factor), so no temperature overflows them.

    Args:
        queries: ``[Q, D]`` features (any scale; they are L2-normalized here).
        bank: ``[N, D]`` L2-normalized reference features.
        bank_labels: ``[N]`` int64 labels of the bank, in ``[0, num_classes)``.
        num_classes: number of classes.
        k: neighbours per query (capped at ``N``).
        temperature: vote temperature, > 0.
        chunk_size: queries scored at once; memory is ``chunk_size * N`` similarities.

    Returns:
        ``[Q]`` int64 predicted classes.
    """
    k = min(k, bank.shape[0])
    queries = F.normalize(queries.float(), dim=1)
    predictions = []
    for chunk in queries.split(chunk_size):
        similarity = chunk @ bank.T  # [q, N]
        top_sim, top_idx = similarity.topk(k, dim=1)  # [q, k]
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()  # [q, k], at most 1
        votes = torch.zeros(chunk.shape[0], num_classes, device=chunk.device)  # [q, C]
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions) if predictions else queries.new_zeros(0, dtype=torch.long)
