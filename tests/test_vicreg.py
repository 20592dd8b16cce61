"""VICReg: the loss against a per-element loop (and over every pair of views for multi-crop),
the method's step, the defaults, 2 processes against 1, and errors that name the fix (resume
and training on real images: test_method_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_lightning import VICReg
from ssl_lightning.corruptions import MultiCropViews
from ssl_lightning.datamodules import Batch, BYOLViews
from ssl_lightning.losses import multiview_vicreg_loss, vicreg_loss
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


@pytest.mark.parametrize("num_views", [2, 3, 6])
def test_many_views_are_the_mean_of_the_loop_over_every_pair(num_views: int) -> None:
    g = torch.Generator().manual_seed(num_views)
    base = torch.randn(7, 5, generator=g) * torch.linspace(0.3, 2.5, 5)
    z = torch.stack([base + 0.4 * torch.randn(7, 5, generator=g) for _ in range(num_views)])
    loss, terms = multiview_vicreg_loss(z, 2.0, 3.0, 0.5)
    pairs = [(i, j) for i in range(num_views) for j in range(i + 1, num_views)]
    expected = sum(vicreg_reference(z[i], z[j], 2.0, 3.0, 0.5) for i, j in pairs) / len(pairs)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(sum(terms.values()), loss.detach())


def test_many_views_refuse_fewer_than_two() -> None:
    with pytest.raises(ValueError, match=r"V >= 2 views, got \(1, 4, 8\)"):
        multiview_vicreg_loss(torch.randn(1, 4, 8))


def test_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        vicreg_loss(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match=">= 2 rows"):
        vicreg_loss(torch.randn(1, 8), torch.randn(1, 8))


# --- 2 processes against 1 ---------------------------------------------------------------------


def _full_embeddings() -> torch.Tensor:
    """Three views ``[3, 6 * WORLD, 10]``: the many-view loss, two views' loss included."""
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6 * WORLD, 10, generator=g) * torch.linspace(0.2, 2.0, 10)
    return torch.stack([z1 + 0.5 * torch.randn(6 * WORLD, 10, generator=g) for _ in range(3)])


def _loss_rank(rank: int, world_size: int) -> dict:
    local = _full_embeddings().chunk(world_size, dim=1)[rank].clone().requires_grad_(True)
    loss, terms = multiview_vicreg_loss(local, 25.0, 25.0, 1.0)
    loss.backward()
    return {"loss": loss.detach(), "terms": terms, "grad": local.grad}


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_whole_batch() -> None:
    results = run_distributed(_loss_rank, WORLD)
    full = _full_embeddings().requires_grad_(True)
    loss, terms = multiview_vicreg_loss(full, 25.0, 25.0, 1.0)
    loss.backward()
    # Variance and covariance come from the global batch: the same on every rank. The
    # invariance is each rank's own mean; their mean is the global one.
    for r in results:
        torch.testing.assert_close(r["terms"]["variance"], terms["variance"])
        torch.testing.assert_close(r["terms"]["covariance"], terms["covariance"])
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), loss.detach())
    # DDP averages gradients over ranks: the 1-process gradient.
    ddp_grad = torch.cat([r["grad"] for r in results], dim=1) / WORLD
    assert full.grad is not None
    torch.testing.assert_close(ddp_grad, full.grad)


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


def test_local_crops_are_pulled_to_every_view_and_callbacks_get_the_global_ones() -> None:
    assert VICReg(**TINY).num_local_views == 0
    model = VICReg(**TINY, num_local_views=3, invariance_weight=3.0, covariance_weight=5.0)
    corruption = model.default_corruption()
    assert isinstance(corruption, MultiCropViews)
    assert (corruption.num_global, corruption.num_local, corruption.local_view.size) == (2, 3, 16)
    assert corruption.global_view.solarize_p == corruption.local_view.solarize_p == 0.1
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    batch = corruption(images, torch.arange(6), torch.Generator().manual_seed(0))
    model.eval()  # running statistics: one pass per view equals one pass per resolution
    with torch.no_grad():
        out = model.pretext_step(batch)
        z = [model.projector(model.backbone(v)) for v in batch.views]
        globals_only = torch.cat([model.backbone(v) for v in batch.views[:2]])
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    expected = sum(vicreg_reference(z[i], z[j], 3.0, 25.0, 5.0) for i, j in pairs) / len(pairs)
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)
    torch.testing.assert_close(out.features, globals_only)
    assert out.labels.tolist() == list(range(6)) * 2
    with pytest.raises(ValueError, match=r"got -1.*model\.num_local_views"):
        VICReg(**TINY, num_local_views=-1)
