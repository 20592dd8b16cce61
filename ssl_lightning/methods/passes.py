"""Backbone passes over a list of views: one pass per resolution, or, when ``V x B`` images do not
fit one pass, chunks of views whose activations are recomputed in the backward pass.

A chunk run under activation checkpointing keeps only its input and output until the backward
pass recomputes its activations, so the memory of the saved activations is that of one chunk,
not of all ``V`` views (the price is one more forward pass per chunk). BatchNorm then sees one
chunk's statistics, as it would in separate passes, and its running statistics are updated once
per chunk: the recomputation leaves them as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["embed_in_passes", "num_global_views", "view_groups"]


def view_groups(views: list[Tensor], views_per_pass: int | None = None) -> list[list[Tensor]]:
    """Consecutive views of one shape, split into groups of at most ``views_per_pass`` views
    (``None``: no limit): the views of each backbone pass, in order."""
    groups: list[list[Tensor]] = []
    for view in views:
        last = groups[-1] if groups else None
        full = last is not None and views_per_pass is not None and len(last) >= views_per_pass
        if last is None or full or last[0].shape != view.shape:
            groups.append([view])
        else:
            last.append(view)
    return groups


def num_global_views(views: list[Tensor]) -> int:
    """The number of leading views of the first view's size: multi-crop's global views (all
    of them when every view has one size)."""
    groups = view_groups(views)
    return len(groups[0]) if groups else 0


def embed_in_passes(
    encoder: nn.Module,
    views: list[Tensor],
    views_per_pass: int | None = None,
    prepare: Callable[[Tensor], Tensor] = lambda x: x,
) -> Tensor:
    """Pooled features ``[V * B, D]`` of ``views`` (``V`` tensors ``[B, 3, H, W]``) in order.

    Views of one size share one pass; with ``views_per_pass``, a pass holds at most that many
    views, and when the encoder is trained (gradients enabled) and a size needs more than one
    pass, each pass runs under activation checkpointing (see the module docstring).

    Args:
        encoder: the backbone (or a teacher) mapping ``[N, 3, H, W] -> [N, D]``.
        views: the views, same-size views next to each other.
        views_per_pass: the most views in one pass; ``None`` puts each size in one pass.
        prepare: applied to each pass's input (the memory format).
    """
    groups = view_groups(views, views_per_pass)
    chunked = len(groups) > len(view_groups(views))
    trains = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
    features = []
    for group in groups:
        x = prepare(torch.cat(group))
        if chunked and trains:
            keep = _keep_norm_statistics(encoder)
            features.append(checkpoint(encoder, x, use_reentrant=False, context_fn=keep))
        else:
            features.append(encoder(x))
    return torch.cat(features)


def _keep_norm_statistics(
    encoder: nn.Module,
) -> Callable[[], tuple[AbstractContextManager[None], AbstractContextManager[None]]]:
    """``checkpoint``'s ``context_fn``: nothing around the forward pass, and the BatchNorm
    running statistics restored after the recomputation, which would count the chunk twice."""

    @contextmanager
    def restored() -> Iterator[None]:
        norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [[b.clone() for b in m.buffers()] for m in norms]
        try:
            yield
        finally:
            with torch.no_grad():
                for module, buffers in zip(norms, saved, strict=True):
                    for buffer, value in zip(module.buffers(), buffers, strict=True):
                        buffer.copy_(value)

    return lambda: (nullcontext(), restored())
