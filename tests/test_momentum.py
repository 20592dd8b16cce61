"""EMA teacher helpers against their formulas."""

import math

import pytest
import torch
from torch import nn

from ssl_lightning.momentum import cosine_momentum, ema_copy, ema_update_


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_ema_copy_is_an_independent_frozen_copy() -> None:
    student = _net()
    teacher = ema_copy(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for t, s in zip(teacher.state_dict().values(), student.state_dict().values(), strict=True):
        assert torch.equal(t, s) and t.data_ptr() != s.data_ptr()


def test_ema_update_follows_the_formula_for_parameters_and_buffers() -> None:
    student = _net()
    teacher = ema_copy(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p))
    student.train()(torch.randn(8, 3))  # moves the BatchNorm statistics and the step count
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    m = 0.9
    ema_update_(teacher, student, m)
    for key, value in teacher.state_dict().items():
        target = student.state_dict()[key]
        if value.is_floating_point():
            torch.testing.assert_close(value, m * before[key] + (1 - m) * target)
        else:
            assert torch.equal(value, target)  # num_batches_tracked is copied


def test_ema_update_bounds_and_structure() -> None:
    student = _net()
    teacher = ema_copy(student)
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update_(teacher, student, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    ema_update_(teacher, student, 0.0)
    assert all(
        torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters(), strict=True)
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ema_update_(teacher, student, 1.5)
    with pytest.raises(ValueError, match="ema_copy"):
        ema_update_(nn.Linear(3, 4), student, 0.5)


def test_cosine_momentum_is_byols_schedule() -> None:
    base, total = 0.99, 10
    for k in range(total + 1):
        expected = 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2  # BYOL, eq. in 3.2
        assert cosine_momentum(k / total, base) == pytest.approx(expected)
    assert cosine_momentum(0.0, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(1.0, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(2.0, 0.99) == pytest.approx(1.0)  # clamped past the end
    assert cosine_momentum(0.5, 0.9, final=0.95) == pytest.approx(0.925)
