"""Barlow Twins: the loss against a per-element loop, the method's step, the defaults, 2
processes against 1, and errors that name the fix (resume and training on real images:
test_method_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_lightning import BarlowTwins
from ssl_lightning.datamodules import Batch, BYOLViews
from ssl_lightning.losses import barlow_twins_loss
from tests.distributed_utils import run_distributed

TINY = {
    "backbone": "convnet",
    "backbone_kwargs": {"width": 8},
    "proj_hidden_dim": 32,
    "proj_output_dim": 16,
}
WORLD = 2


def barlow_reference(z1: torch.Tensor, z2: torch.Tensor, lam: float, eps: float = 1e-5) -> float:
    """The paper's Algorithm 1 in Python loops over samples and dimensions, in float64.

    Standardization takes the population variance, as BatchNorm does in the official
    implementation (the pseudo-code's ``std`` would leave ``C_ii < 1`` for identical views).
    """
    n, d = z1.shape

    def standardize(z: list[list[float]]) -> list[list[float]]:  # -> [D][N]
        columns = []
        for j in range(d):
            mean = sum(z[s][j] for s in range(n)) / n
            var = sum((z[s][j] - mean) ** 2 for s in range(n)) / n
            columns.append([(z[s][j] - mean) / math.sqrt(var + eps) for s in range(n)])
        return columns

    a, b = standardize(z1.double().tolist()), standardize(z2.double().tolist())
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][s] * b[j][s] for s in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lam * c_ij**2
    return loss


# --- the loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(4, 3), (8, 16), (17, 5)])
@pytest.mark.parametrize("lam", [0.0, 0.0051, 0.5])
def test_loss_matches_the_per_element_loop(n: int, d: int, lam: float) -> None:
    g = torch.Generator().manual_seed(n * d)
    z1 = torch.randn(n, d, generator=g) * 3 + 1
    z2 = z1 + torch.randn(n, d, generator=g)
    loss, terms = barlow_twins_loss(z1, z2, lam)
    assert loss.item() == pytest.approx(barlow_reference(z1, z2, lam), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(terms["on_diag"] + terms["off_diag"], loss.detach())
    assert terms["off_diag"].item() == pytest.approx(
        barlow_reference(z1, z2, lam) - barlow_reference(z1, z2, 0.0), rel=1e-4, abs=1e-6
    )


def test_loss_is_zero_for_identical_decorrelated_views() -> None:
    # Centered orthogonal columns: the correlation matrix is exactly the identity.
    a = torch.randn(32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = torch.linalg.qr(a - a.mean(0))[0] * 5.0
    loss, _ = barlow_twins_loss(z.float(), z.float(), lambda_offdiag=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-4)


def test_loss_ignores_per_dimension_scale_and_shift() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g)
    scale = torch.rand(6, generator=g) * 10 + 0.5
    shift = torch.randn(6, generator=g) * 5
    # Exact but for eps (1e-5) against variances of at least ~0.1: relative changes ~1e-4.
    torch.testing.assert_close(
        barlow_twins_loss(z1 * scale + shift, z2, 0.1)[0],
        barlow_twins_loss(z1, z2, 0.1)[0],
        rtol=1e-3,
        atol=0.0,
    )


def test_loss_runs_in_float32_under_bf16_autocast() -> None:
    z1, z2 = (torch.randn(16, 8).bfloat16() for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = barlow_twins_loss(z1, z2)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, barlow_twins_loss(z1.float(), z2.float())[0])


def test_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        barlow_twins_loss(torch.randn(4, 8), torch.randn(4, 7))
    with pytest.raises(ValueError, match=">= 2 rows"):
        barlow_twins_loss(torch.randn(1, 8), torch.randn(1, 8))


# --- 2 processes against 1 ---------------------------------------------------------------------


def _full_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6 * WORLD, 10, generator=g)
    return z1, z1 + 0.5 * torch.randn(6 * WORLD, 10, generator=g)


def _loss_rank(rank: int, world_size: int) -> dict:
    local = [z.chunk(world_size)[rank].clone().requires_grad_(True) for z in _full_embeddings()]
    loss, terms = barlow_twins_loss(*local, lambda_offdiag=0.05)
    loss.backward()
    return {"loss": loss.detach(), "terms": terms, "grads": [z.grad for z in local]}


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_whole_batch() -> None:
    results = run_distributed(_loss_rank, WORLD)
    full = [z.requires_grad_(True) for z in _full_embeddings()]
    loss, terms = barlow_twins_loss(*full, lambda_offdiag=0.05)
    loss.backward()
    for r in results:  # every rank computes the global loss
        torch.testing.assert_close(r["loss"], loss.detach())
        torch.testing.assert_close(r["terms"], terms)
    # The gather's backward sums every rank's gradient into the owner; DDP's average over the
    # ranks then divides by WORLD: the 1-process gradient.
    for view in range(2):
        ddp_grad = torch.cat([r["grads"][view] for r in results]) / WORLD
        torch.testing.assert_close(ddp_grad, full[view].grad)


# --- the method --------------------------------------------------------------------------------


def _batch(num_views: int = 2, batch_size: int = 6) -> Batch:
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(batch_size, 3, 16, 16, generator=g) for _ in range(num_views)]
    return Batch(views=views, labels=torch.arange(batch_size))


def test_defaults_are_the_cifar_recipe() -> None:
    model = BarlowTwins(backbone="resnet18")
    linears = [m for m in model.projector.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (512, 2048),
        (2048, 2048),
        (2048, 2048),
    ]
    assert (model.lambda_offdiag, model.scale_loss) == (0.0051, 0.1)
    assert (model.optimizer_name, model.lr, model.weight_decay) == ("lars", 0.3, 1e-4)
    assert (model.lars_eta, model.warmup_epochs, model.scale_lr) == (0.02, 10.0, True)
    assert isinstance(model.default_corruption(), BYOLViews)


def test_step_is_the_loss_of_its_projections_with_one_backbone_pass() -> None:
    torch.manual_seed(0)
    model = BarlowTwins(**TINY, scale_loss=0.3)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batch = _batch()
    out = model.pretext_step(batch)
    assert calls == [12]  # both views in one pass
    with torch.no_grad():
        f1, f2 = model.backbone(torch.cat(batch.views)).chunk(2)
        z1, z2 = model.projector(f1), model.projector(f2)
    # The loss from the paper's loops, not from barlow_twins_loss; the logged terms are the loss
    # function's, which test_loss_matches_the_per_element_loop checks against the same loops.
    assert out.loss.item() == pytest.approx(0.3 * barlow_reference(z1, z2, 0.0051), rel=1e-4)
    torch.testing.assert_close(out.metrics, barlow_twins_loss(z1, z2, 0.0051)[1])
    assert out.features.shape == (12, model.num_features)
    assert out.labels.tolist() == list(range(6)) * 2


def test_bad_arguments_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"-1\.0.*model\.lambda_offdiag"):
        BarlowTwins(**TINY, lambda_offdiag=-1.0)
    with pytest.raises(ValueError, match=r"got 0\.0.*model\.scale_loss"):
        BarlowTwins(**TINY, scale_loss=0.0)
    with pytest.raises(ValueError, match=r"got 0.*model\.proj_num_layers"):
        BarlowTwins(**TINY, proj_num_layers=0)
    model = BarlowTwins(**TINY)
    with pytest.raises(ValueError, match=r"made 3.*data\.corruption"):
        model.pretext_step(_batch(num_views=3))
    with pytest.raises(ValueError, match=r"got 1.*data\.batch_size"):
        model.pretext_step(_batch(batch_size=1))
