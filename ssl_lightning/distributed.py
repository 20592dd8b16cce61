"""Every collective the library uses. Each one is correct with no process group (one process)
and with N processes; none of them scales gradients behind the caller's back."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's global rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank's gradient back to the rank that owns the
    slice: the gradient of ``sum_r loss_r`` w.r.t. the local input. DDP then averages over
    ranks, which gives the gradient of the mean loss, as on one process."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather(x: Tensor) -> Tensor:
    """Concatenates ``x`` ``[B, ...]`` from all ranks in rank order: ``[world_size * B, ...]``.

    Gradients flow back to every rank's input. Every rank must pass the same shape.
    Without a process group this returns ``x`` itself.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (a new tensor, no gradient); ``x`` itself on one process."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / dist.get_world_size()


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks (a new tensor, no gradient); ``x`` itself on one process."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def gather_variable(x: Tensor) -> Tensor:
    """Concatenates ``x`` ``[n_r, ...]`` from all ranks in rank order, ``n_r`` may differ.

    Built on :func:`gather`: sizes first, then every rank pads to the largest. Without a
    process group this returns ``x``.
    """
    if not is_distributed():
        return x
    sizes = gather(torch.tensor([x.shape[0]], device=x.device))  # [W]
    largest = int(sizes.max())
    padded = x.new_zeros(largest, *x.shape[1:])
    padded[: x.shape[0]] = x
    parts = gather(padded).split(largest)  # W x [largest, ...]
    return torch.cat([part[: int(n)] for part, n in zip(parts, sizes.tolist(), strict=True)])
