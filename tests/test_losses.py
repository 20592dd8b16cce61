import math

import pytest
import torch
import torch.nn.functional as F

from ssl_lightning.losses import nt_xent


def nt_xent_reference(z: torch.Tensor, temperature: float) -> float:
    """Per-pair loop: for every anchor and each positive, -log(exp(s_ap) / sum_k!=a exp(s_ak))."""
    num_views, batch, _ = z.shape
    flat = F.normalize(z.double(), dim=-1).flatten(0, 1)
    ids = [i % batch for i in range(num_views * batch)]
    total, count = 0.0, 0
    for a in range(len(flat)):
        denom = sum(
            math.exp(float(flat[a] @ flat[k]) / temperature) for k in range(len(flat)) if k != a
        )
        per_anchor = 0.0
        for p in range(len(flat)):
            if p != a and ids[p] == ids[a]:
                per_anchor += -math.log(math.exp(float(flat[a] @ flat[p]) / temperature) / denom)
        total += per_anchor / (num_views - 1)
        count += 1
    return total / count


@pytest.mark.parametrize("num_views", [2, 3, 4])
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_per_pair_loop(num_views: int, temperature: float) -> None:
    torch.manual_seed(0)
    z = torch.randn(num_views, 5, 8)
    expected = nt_xent_reference(z, temperature)
    assert nt_xent(z, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_two_views_equals_cross_entropy_formulation() -> None:
    # The textbook form: 2B x 2B logits, self masked, the target of row i is its other view.
    torch.manual_seed(1)
    z = torch.randn(2, 6, 4)
    t = 0.2
    flat = F.normalize(z.flatten(0, 1), dim=1)
    logits = flat @ flat.T / t
    logits.fill_diagonal_(float("-inf"))
    targets = torch.arange(12).roll(6)
    expected = F.cross_entropy(logits, targets)
    torch.testing.assert_close(nt_xent(z, t), expected)


def test_nt_xent_is_finite_and_differentiable_at_tiny_temperature() -> None:
    z = torch.randn(2, 16, 32, requires_grad=True)
    loss = nt_xent(z, temperature=1e-4)
    loss.backward()
    assert torch.isfinite(loss)
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_nt_xent_is_low_for_matching_views() -> None:
    base = torch.randn(8, 16)
    aligned = nt_xent(torch.stack([base, base]), 0.1)
    shuffled = nt_xent(torch.stack([base, base[torch.randperm(8)]]), 0.1)
    assert aligned < shuffled


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_nt_xent_rejects_non_positive_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(2, 4, 8), temperature)


def test_nt_xent_rejects_single_view() -> None:
    with pytest.raises(ValueError, match=r"\[V >= 2, B, D\]"):
        nt_xent(torch.randn(1, 4, 8))
