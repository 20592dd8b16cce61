"""Momentum (EMA) encoders: the teacher/target networks of BYOL, MoCo and DINO. No Lightning.

- :func:`ema_copy`: a frozen copy of a module to serve as the teacher.
- :func:`ema_update_`: ``teacher = m * teacher + (1 - m) * student``, in place.
- :func:`cosine_momentum`: BYOL's schedule, ``m`` rising from ``base`` to ``final`` over the run.

Examples:
    >>> student = torch.nn.Linear(4, 2)
    >>> teacher = ema_copy(student)
    >>> ema_update_(teacher, student, cosine_momentum(progress=0.5, base=0.99))
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

__all__ = ["cosine_momentum", "ema_copy", "ema_update_"]


def ema_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with no gradients: parameters change only by EMA updates."""
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter, in place.

    Floating-point buffers (BatchNorm running statistics) follow the same average; integer
    buffers (``num_batches_tracked``) are copied. Both modules must have the same structure.

    Args:
        teacher: the EMA copy, updated in place.
        student: the trained module.
        momentum: ``m`` in ``[0, 1]``; 1 leaves the teacher unchanged, 0 copies the student.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    teacher_params: list[Tensor] = list(teacher.parameters())
    student_params: list[Tensor] = list(student.parameters())
    teacher_buffers = list(teacher.buffers())
    student_buffers = list(student.buffers())
    if len(teacher_params) != len(student_params) or len(teacher_buffers) != len(student_buffers):
        raise ValueError(
            f"teacher and student differ in structure: {len(teacher_params)} vs "
            f"{len(student_params)} parameters, {len(teacher_buffers)} vs "
            f"{len(student_buffers)} buffers; build the teacher with ema_copy(student)"
        )
    torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)
    for t, s in zip(teacher_buffers, student_buffers, strict=True):
        if t.is_floating_point():
            t.lerp_(s, 1.0 - momentum)
        else:
            t.copy_(s)


def cosine_momentum(progress: float, base: float = 0.996, final: float = 1.0) -> float:
    """EMA momentum at ``progress`` in ``[0, 1]`` of the run: a cosine ramp from ``base`` to
    ``final``, ``final - (final - base) * (cos(pi * progress) + 1) / 2`` (BYOL, Grill et al.
    2020, https://arxiv.org/abs/2006.07733, section 3.2)."""
    progress = min(max(progress, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
