"""Self-distillation losses: a student's distributions against a momentum teacher's (DINO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_lightning import distributed

__all__ = ["dino_loss", "teacher_temperature", "update_center_"]


def dino_loss(
    student: Tensor,
    teacher: Tensor,
    center: Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> Tensor:
    """DINO's cross entropy between the teacher's and the student's views (Caron et al. 2021,
    "Emerging Properties in Self-Supervised Vision Transformers", arXiv:2104.14294, Algorithm 1).

    The teacher's distribution over the ``K`` prototypes is sharpened and centered, the
    student's only sharpened::

        P_t(g, b) = softmax((teacher[g, b] - center) / t_t)          (a constant: no gradient)
        log P_s(v, b) = log_softmax(student[v, b] / t_s)
        loss = mean over pairs (g, v) with g != v of mean_b -sum_k P_t(g, b)_k log P_s(v, b)_k

    Teacher view ``g`` is student view ``g``: the teacher sees the ``G`` global views, the
    student every view (global first, then the local crops), and a view is never its own
    target. Every term is a mean over this rank's images, so under DDP the mean of the rank
    losses is the loss of the whole batch; the only cross-rank statistic, ``center``, is
    all-reduced by :func:`update_center_`. Computed in float32 whatever the logits' dtype:
    ``exp`` of logits divided by ``t_t = 0.04`` overflows half precision.

    Args:
        student: ``[V, B, K]`` student logits of all ``V >= 2`` views.
        teacher: ``[G, B, K]`` teacher logits of the first ``G <= V`` (global) views.
        center: ``[K]`` running mean of the teacher's logits.
        student_temperature: ``t_s > 0``.
        teacher_temperature: ``t_t > 0`` (low: a sharp target).

    Returns:
        Scalar mean loss over the ``G * V - G`` view pairs and this rank's ``B`` images.

    Examples:
        >>> dino_loss(torch.randn(4, 8, 32), torch.randn(2, 8, 32), torch.zeros(32)).shape
        torch.Size([])
    """
    if student.ndim != 3 or teacher.ndim != 3 or teacher.shape[1:] != student.shape[1:]:
        raise ValueError(
            f"dino_loss expects student [V, B, K] and teacher [G, B, K] logits, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    num_views, batch, num_prototypes = student.shape
    num_global = teacher.shape[0]
    if not 1 <= num_global <= num_views or num_views < 2:
        raise ValueError(
            f"dino_loss needs 1 <= G <= V teacher views and V >= 2 student views (a view is "
            f"never its own target), got G={num_global}, V={num_views}"
        )
    if center.shape != (num_prototypes,):
        raise ValueError(f"center must be [K={num_prototypes}], got {tuple(center.shape)}")
    if student_temperature <= 0 or teacher_temperature <= 0:
        raise ValueError(
            f"temperatures must be > 0, got student {student_temperature}, teacher "
            f"{teacher_temperature}"
        )
    targets = F.softmax((teacher.detach().float() - center) / teacher_temperature, dim=-1)
    # At least float32 (bf16 logits), float64 when training in float64 (the center's dtype).
    log_probs = F.log_softmax(student.to(targets.dtype) / student_temperature, dim=-1)  # [V, B, K]
    cross_entropy = -torch.einsum("gbk,vbk->gv", targets, log_probs) / batch  # [G, V]
    # The mean over pairs of different views; a boolean index would wait for the device.
    same_view = torch.eye(num_global, num_views, dtype=cross_entropy.dtype, device=student.device)
    return (cross_entropy * (1 - same_view)).sum() / (num_global * (num_views - 1))


@torch.no_grad()
def update_center_(center: Tensor, teacher: Tensor, momentum: float = 0.9) -> Tensor:
    """DINO's center update, in place: ``center = m * center + (1 - m) * mean(teacher)``.

    The mean is over all teacher views and images of every rank (all-reduced, so every rank
    keeps the same center; ranks hold equal batches under DDP). Call it after the loss: the
    batch is centered with the center of the batches before it.

    Args:
        center: ``[K]`` running center, updated in place.
        teacher: ``[G, B, K]`` (or ``[N, K]``) teacher logits of this rank.
        momentum: ``m`` in ``[0, 1]``.

    Returns:
        ``center``.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"center momentum must be in [0, 1], got {momentum}")
    batch_mean = teacher.detach().float().flatten(0, -2).mean(dim=0)  # [K]
    batch_mean = distributed.all_reduce_mean(batch_mean)
    return center.mul_(momentum).add_(batch_mean.to(center.dtype), alpha=1.0 - momentum)


def teacher_temperature(
    epoch: float, warmup_temperature: float, final_temperature: float, warmup_epochs: float
) -> float:
    """DINO's teacher temperature at ``epoch`` (fractional: optimizer steps / steps per epoch):
    linear from ``warmup_temperature`` to ``final_temperature`` over ``warmup_epochs``, then
    constant (the paper: 0.04 -> 0.07 over the first 30 epochs; a temperature too high at the
    start makes training unstable)."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return final_temperature
    fraction = max(epoch, 0.0) / warmup_epochs
    return warmup_temperature + (final_temperature - warmup_temperature) * fraction
