import itertools
import math

import pytest
import torch
from torch import nn

from ssl_lightning.optim import LARS, build_optimizer, param_groups, warmup_cosine


def test_param_groups_exclude_biases_and_norms_from_decay() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(no_decay["params"]) == 4  # conv bias, bn weight, bn bias, linear bias
    assert no_decay["lars_exclude"] is True


def test_exempt_parameters_join_the_undecayed_group_whatever_their_shape() -> None:
    token = nn.Parameter(torch.zeros(1, 4, 1, 1))
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    model.register_parameter("token", token)
    decay, no_decay = param_groups(model, weight_decay=0.1, exempt=[token])
    assert {id(p) for p in decay["params"]} == {id(model[0].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(token)}


def test_lars_step_matches_hand_computed_update() -> None:
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    opt = LARS([w], lr=0.1, momentum=0.9, weight_decay=0.5, eta=0.01)
    w.grad = torch.tensor([1.0, 0.0])
    opt.step()
    # g = [1, 0] + 0.5 * [3, 4] = [2.5, 2]; ||g|| = sqrt(10.25)
    g = torch.tensor([2.5, 2.0])
    trust = 0.01 * 5 / math.sqrt(10.25)
    v1 = 0.1 * trust * g
    expected = torch.tensor([3.0, 4.0]) - v1
    torch.testing.assert_close(w.data, expected)

    # Second step: momentum carries the first update.
    w.grad = torch.tensor([0.0, 1.0])
    opt.step()
    g2 = torch.tensor([0.0, 1.0]) + 0.5 * expected
    trust2 = 0.01 * expected.norm() / g2.norm()
    v2 = 0.9 * v1 + 0.1 * trust2 * g2
    torch.testing.assert_close(w.data, expected - v2)


@pytest.mark.parametrize(
    ("lr", "grad"),
    [(0.1, [1.0, 0.0]), (0.001, [1.0, 0.0]), (0.1, [1e-4, 0.0])],
    ids=["adapted-rate-below-lr", "lr-below-adapted-rate", "tiny-gradient"],
)
def test_lars_clip_lr_caps_the_adapted_rate_at_lr(lr: float, grad: list[float]) -> None:
    # solo-learn's clip_lr: the step is min(eta * ||w|| / ||g||, lr) * g.
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    opt = LARS([w], lr=lr, momentum=0.0, eta=0.01, clip_lr=True)
    w.grad = torch.tensor(grad)
    opt.step()
    g = torch.tensor(grad)
    rate = min(0.01 * 5 / g.norm().item(), lr)
    torch.testing.assert_close(w.data, torch.tensor([3.0, 4.0]) - rate * g)


def test_build_optimizer_passes_lars_clip() -> None:
    model = nn.Linear(2, 2)
    opt = build_optimizer("lars", param_groups(model, 1e-4), 0.3, lars_clip=True)
    assert all(group["clip_lr"] for group in opt.param_groups)
    assert not any(
        g["clip_lr"] for g in build_optimizer("lars", [{"params": []}], 0.3).param_groups
    )


def test_lars_excluded_group_is_plain_sgd_with_momentum() -> None:
    a = nn.Parameter(torch.tensor([1.0, -2.0]))
    b = nn.Parameter(a.detach().clone())
    lars = LARS([{"params": [a], "lars_exclude": True}], lr=0.3, momentum=0.9)
    sgd = torch.optim.SGD([b], lr=0.3, momentum=0.9)
    for grad in ([0.5, 1.0], [-1.0, 2.0], [0.1, 0.1]):
        a.grad, b.grad = torch.tensor(grad), torch.tensor(grad)
        lars.step()
        sgd.step()
    torch.testing.assert_close(a.data, b.data)


def test_lars_trust_ratio_is_one_for_zero_weights() -> None:
    w = nn.Parameter(torch.zeros(3))
    opt = LARS([w], lr=1.0, momentum=0.0, eta=0.001)
    w.grad = torch.ones(3)
    opt.step()
    torch.testing.assert_close(w.data, -torch.ones(3))


def test_lars_nesterov() -> None:
    w = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "lars_exclude": True}], lr=0.1, momentum=0.5, nesterov=True)
    w.grad = torch.tensor([2.0])
    opt.step()  # buf = 0.2; update = 0.2 + 0.5 * 0.2 = 0.3
    torch.testing.assert_close(w.data, torch.tensor([0.7]))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": 0.1, "momentum": 1.0}, "momentum"),
        ({"lr": 0.1, "eta": 0}, "eta"),
    ],
)
def test_lars_rejects_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LARS([nn.Parameter(torch.zeros(1))], **kwargs)


def test_warmup_cosine_values() -> None:
    warmup, total = 4, 14
    factors = [warmup_cosine(s, warmup, total, final_factor=0.1) for s in range(16)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factors[4] == pytest.approx(1.0)
    # Halfway through the decay the cosine is at its midpoint.
    assert factors[9] == pytest.approx(0.1 + 0.9 * 0.5)
    assert factors[14] == pytest.approx(0.1) and factors[15] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))


def test_warmup_cosine_without_warmup_starts_at_one() -> None:
    assert warmup_cosine(0, 0, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 0, 10) == pytest.approx(0.0)
