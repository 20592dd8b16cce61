"""VICReg: the loss against a per-element loop, the method's step, the defaults, 2 processes
against 1, and errors that name the fix (resume and training on real images:
test_method_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_lightning import VICReg
from ssl_lightning.datamodules import Batch, BYOLViews
from ssl_lightning.losses import vicreg_loss
from tests.distributed_utils import run_distributed

TINY = {
    "backbone": "convnet",
    "backbone_kwargs": {"width": 8},
    "proj_hidden_dim": 32,
    "proj_output_dim": 16,
}
WORLD = 2


def vicreg_reference(
    z1: torch.Tensor,
    z2: torch.Tensor,
    lam: float,
    mu: float,
    nu: float,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> float:
    """The paper's Algorithm 1 in Python loops over samples and dimensions, in float64."""
    n, d = z1.shape
    a, b = z1.double().tolist(), z2.double().tolist()
    invariance = sum((a[s][j] - b[s][j]) ** 2 for s in range(n) for j in range(d)) / (n * d)

    def cov(z: list[list[float]], i: int, j: int) -> float:  # unbiased, as torch.var
        mean_i, mean_j = sum(z[s][i] for s in range(n)) / n, sum(z[s][j] for s in range(n)) / n
        return sum((z[s][i] - mean_i) * (z[s][j] - mean_j) for s in range(n)) / (n - 1)

    def variance(z: list[list[float]]) -> float:
        return sum(max(0.0, gamma - math.sqrt(cov(z, j, j) + eps)) for j in range(d)) / d

    def covariance(z: list[list[float]]) -> float:
        return sum(cov(z, i, j) ** 2 for i in range(d) for j in range(d) if i != j) / d

    return (
        lam * invariance + mu * (variance(a) + variance(b)) + nu * (covariance(a) + covariance(b))
    )


# --- the loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(4, 3), (8, 16), (17, 5)])
@pytest.mark.parametrize(
    ("lam", "mu", "nu", "gamma"),
    [(25.0, 25.0, 1.0, 1.0), (1.0, 0.0, 3.0, 1.0), (0.5, 2.0, 0.0, 2.0)],
)
def test_loss_matches_the_per_element_loop(
    n: int, d: int, lam: float, mu: float, nu: float, gamma: float
) -> None:
    g = torch.Generator().manual_seed(n * d)
    # Column scales on both sides of gamma, so the hinge is active on some dimensions only.
    z1 = torch.randn(n, d, generator=g) * torch.linspace(0.2, 3.0, d)
    z2 = z1 + 0.5 * torch.randn(n, d, generator=g)
    loss, terms = vicreg_loss(z1, z2, lam, mu, nu, gamma)
    expected = vicreg_reference(z1, z2, lam, mu, nu, gamma)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(sum(terms.values()), loss.detach())
    assert terms["invariance"].item() == pytest.approx(
        vicreg_reference(z1, z2, lam, 0.0, 0.0), rel=1e-5, abs=1e-6
    )
    assert terms["variance"].item() == pytest.approx(
        vicreg_reference(z1, z2, 0.0, mu, 0.0, gamma), rel=1e-5, abs=1e-6
    )


def test_collapsed_embeddings_pay_the_full_variance_hinge() -> None:
    z = torch.ones(8, 4) * torch.randn(4)  # every row the same: zero variance, zero covariance
    loss, terms = vicreg_loss(z, z, 25.0, 25.0, 1.0, gamma=1.0, eps=1e-4)
    assert terms["invariance"].item() == 0.0
    assert terms["covariance"].item() == pytest.approx(0.0, abs=1e-12)
    assert loss.item() == pytest.approx(25.0 * 2 * (1.0 - math.sqrt(1e-4)), rel=1e-6)


def test_loss_runs_in_float32_under_bf16_autocast() -> None:
    z1, z2 = (torch.randn(16, 8).bfloat16() for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = vicreg_loss(z1, z2)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, vicreg_loss(z1.float(), z2.float())[0])


def test_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        vicreg_loss(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match=">= 2 rows"):
        vicreg_loss(torch.randn(1, 8), torch.randn(1, 8))


# --- 2 processes against 1 ---------------------------------------------------------------------


def _full_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6 * WORLD, 10, generator=g) * torch.linspace(0.2, 2.0, 10)
    return z1, z1 + 0.5 * torch.randn(6 * WORLD, 10, generator=g)


def _loss_rank(rank: int, world_size: int) -> dict:
    local = [z.chunk(world_size)[rank].clone().requires_grad_(True) for z in _full_embeddings()]
    loss, terms = vicreg_loss(*local, 25.0, 25.0, 1.0)
    loss.backward()
    return {"loss": loss.detach(), "terms": terms, "grads": [z.grad for z in local]}


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_whole_batch() -> None:
    results = run_distributed(_loss_rank, WORLD)
    full = [z.requires_grad_(True) for z in _full_embeddings()]
    loss, terms = vicreg_loss(*full, 25.0, 25.0, 1.0)
    loss.backward()
    # Variance and covariance come from the global batch: the same on every rank. The
    # invariance is each rank's own mean; their mean is the global one.
    for r in results:
        torch.testing.assert_close(r["terms"]["variance"], terms["variance"])
        torch.testing.assert_close(r["terms"]["covariance"], terms["covariance"])
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), loss.detach())
    # DDP averages gradients over ranks: the 1-process gradient.
    for view in range(2):
        ddp_grad = torch.cat([r["grads"][view] for r in results]) / WORLD
        torch.testing.assert_close(ddp_grad, full[view].grad)


# --- the method --------------------------------------------------------------------------------


def _batch(num_views: int = 2, batch_size: int = 6) -> Batch:
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(batch_size, 3, 16, 16, generator=g) for _ in range(num_views)]
    return Batch(views=views, labels=torch.arange(batch_size))


def test_defaults_are_the_cifar_recipe() -> None:
    model = VICReg(backbone="resnet18")
    linears = [m for m in model.projector.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (512, 2048),
        (2048, 2048),
        (2048, 2048),
    ]
    weights = (model.invariance_weight, model.variance_weight, model.covariance_weight)
    assert weights == (25.0, 25.0, 1.0) and (model.gamma, model.eps) == (1.0, 1e-4)
    assert (model.optimizer_name, model.lr, model.weight_decay) == ("lars", 0.3, 1e-4)
    assert (model.lars_eta, model.warmup_epochs, model.scale_lr) == (0.02, 10.0, True)
    assert isinstance(model.default_corruption(), BYOLViews)


def test_step_is_the_loss_of_its_projections_with_one_backbone_pass() -> None:
    torch.manual_seed(0)
    model = VICReg(**TINY, invariance_weight=3.0, variance_weight=2.0, covariance_weight=5.0)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batch = _batch()
    out = model.pretext_step(batch)
    assert calls == [12]  # both views in one pass
    with torch.no_grad():
        f1, f2 = model.backbone(torch.cat(batch.views)).chunk(2)
        z1, z2 = model.projector(f1), model.projector(f2)
    # The loss from the paper's loops, not from vicreg_loss; the logged terms are vicreg_loss's,
    # which test_loss_matches_the_per_element_loop checks against the same loops.
    assert out.loss.item() == pytest.approx(vicreg_reference(z1, z2, 3.0, 2.0, 5.0), rel=1e-4)
    torch.testing.assert_close(out.metrics, vicreg_loss(z1, z2, 3.0, 2.0, 5.0)[1])
    assert out.features.shape == (12, model.num_features)
    assert out.labels.tolist() == list(range(6)) * 2


def test_bad_arguments_name_the_fix() -> None:
    for name in ("invariance_weight", "variance_weight", "covariance_weight"):
        with pytest.raises(ValueError, match=rf"got -1\.0.*model\.{name}"):
            VICReg(**TINY, **{name: -1.0})
    with pytest.raises(ValueError, match=r"all 0.*model\.invariance_weight"):
        VICReg(**TINY, invariance_weight=0.0, variance_weight=0.0, covariance_weight=0.0)
    for name in ("gamma", "eps"):
        with pytest.raises(ValueError, match=rf"got 0\.0.*model\.{name}"):
            VICReg(**TINY, **{name: 0.0})
    with pytest.raises(ValueError, match=r"got 0.*model\.proj_num_layers"):
        VICReg(**TINY, proj_num_layers=0)
    model = VICReg(**TINY)
    with pytest.raises(ValueError, match=r"made 1.*data\.corruption"):
        model.pretext_step(_batch(num_views=1))
    with pytest.raises(ValueError, match=r"got 1.*data\.batch_size"):
        model.pretext_step(_batch(batch_size=1))
