"""Typed outputs of a method's steps: what the loss came from, and what callbacks read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from torch import Tensor

__all__ = ["PretextOutput", "StepOutput"]


@dataclass
class PretextOutput:
    """What :meth:`SSLMethod.pretext_step` returns: the scalar ``loss``, the ``[N, D]`` pooled
    ``features`` it came from with their ``[N]`` ``labels`` (``-1`` = unlabeled), and extra
    scalar ``metrics`` logged as ``train/<name>``."""

    loss: Tensor
    features: Tensor
    labels: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class StepOutput(TypedDict):
    """``training_step``'s output, read by callbacks (no second forward pass needed)."""

    loss: Tensor
    features: Tensor  # [N, D], detached
    labels: Tensor  # [N]
