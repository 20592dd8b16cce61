"""Pooled features of a chosen backbone stage, or of several stages concatenated.

Self-supervised features are not always best at the last stage: rotation prediction's best
CIFAR features come from an intermediate block (Gidaris et al. 2018, table 1), and
masked-image features gain most from earlier layers. Every backbone's ``forward_stages(x)``
returns its stages' outputs, from the first to the last (maps ``[B, C, h, w]`` or tokens
``[B, 1 + N, D]``); this module pools and concatenates the chosen ones.

A selection (the ``stages`` argument of the frozen evaluation, the probe and the kNN
monitor) is ``"last"`` (the backbone's own pooled ``forward``), ``"all"`` (every stage,
pooled and concatenated), one stage index or a list of them (negative indices count from the
last stage).

Examples:
    >>> import torch
    >>> from ssl_lightning.backbones import create_backbone
    >>> backbone = create_backbone("convnet", width=8, depth=3)
    >>> stage_features(backbone, torch.randn(2, 3, 32, 32), "all").shape  # 8 + 16 + 32
    torch.Size([2, 56])
    >>> stage_features(backbone, torch.randn(2, 3, 32, 32), [0, -1]).shape
    torch.Size([2, 40])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ssl_lightning.layers import eval_mode

__all__ = ["Stages", "pool_stage", "resolve_stages", "stage_features", "stage_widths"]

Stages = Literal["last", "all"] | int | Sequence[int]


def resolve_stages(stages: Stages, num_stages: int) -> list[int]:
    """Non-negative stage indices of a selection, in the order given."""
    if stages == "last":
        return [num_stages - 1]
    if stages == "all":
        return list(range(num_stages))
    if isinstance(stages, str):
        raise ValueError(
            f"stages={stages!r} is not a selection: expected 'last', 'all', a stage index or a "
            "list of them (set the `stages` argument)"
        )
    indices = [stages] if isinstance(stages, int) else list(stages)
    if not indices or any(not -num_stages <= i < num_stages for i in indices):
        raise ValueError(
            f"stages={stages!r} is out of range for a backbone with {num_stages} stages: "
            f"expected indices in [{-num_stages}, {num_stages - 1}] (set the `stages` argument)"
        )
    return [i % num_stages for i in indices]


def pool_stage(stage: Tensor, num_prefix_tokens: int = 0) -> Tensor:
    """Global average of a map ``[B, C, h, w] -> [B, C]`` or of the patch tokens
    ``[B, P + N, D] -> [B, D]`` (the ``P`` prefix tokens, e.g. a class token, left out)."""
    if stage.ndim == 4:
        return stage.mean(dim=(2, 3))
    if stage.ndim == 3:
        return stage[:, num_prefix_tokens:].mean(dim=1)
    raise ValueError(f"a stage must be a map [B, C, h, w] or tokens [B, N, D], got {stage.shape}")


def stage_features(backbone: nn.Module, x: Tensor, stages: Stages = "last") -> Tensor:
    """Pooled features ``[B, D']`` of the selected stages of ``backbone`` for images ``x``.

    ``"last"`` is ``backbone(x)`` itself (its own pooling, e.g. a ViT's class token); any
    other selection runs ``forward_stages`` once and concatenates the pooled stages, so
    ``D'`` is the sum of their widths.
    """
    if stages == "last":
        return backbone(x)
    outputs: list[Tensor] = backbone.forward_stages(x)  # type: ignore[operator]  # the contract
    prefix = int(getattr(backbone, "num_prefix_tokens", 0))
    indices = resolve_stages(stages, len(outputs))
    return torch.cat([pool_stage(outputs[i], prefix) for i in indices], dim=1)


@torch.no_grad()
def stage_widths(backbone: nn.Module, x: Tensor) -> list[int]:
    """The width of each stage's pooled features, from one pass over images ``x``
    ``[B, 3, H, W]`` in eval mode (BatchNorm statistics untouched; the mode is restored)."""
    with eval_mode(backbone):
        device = next(backbone.parameters()).device
        outputs: list[Tensor] = backbone.forward_stages(x.to(device))  # type: ignore[operator]
    prefix = int(getattr(backbone, "num_prefix_tokens", 0))
    return [pool_stage(output, prefix).shape[1] for output in outputs]
