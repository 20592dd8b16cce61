"""SimSiam: the negative-cosine loss against the paper's pseudo-code written as loops, the step
against its own heads (stop-gradient included), the paper's head shapes, 2 processes against 1,
and errors that name the fix."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from ssl_lightning.datamodules import Batch, SimCLRViews
from ssl_lightning.losses.similarity import simsiam_loss
from ssl_lightning.methods.simsiam import SimSiam
from tests.distributed_utils import run_distributed

TINY: dict[str, Any] = {
    "backbone": "convnet",
    "backbone_kwargs": {"width": 4},
    "proj_hidden_dim": 32,
    "proj_output_dim": 16,
    "pred_hidden_dim": 16,
}
WORLD = 2


def simsiam_reference(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
) -> float:
    """The paper's Algorithm 1, image by image: ``D(p, z) = -mean_b <p_b/|p_b|, z_b/|z_b|>``,
    ``L = D(p1, z2) / 2 + D(p2, z1) / 2``."""

    def d(p: list[list[float]], z: list[list[float]]) -> float:
        total = 0.0
        for p_row, z_row in zip(p, z, strict=True):
            p_norm = math.sqrt(sum(v * v for v in p_row))
            z_norm = math.sqrt(sum(v * v for v in z_row))
            total += sum(a / p_norm * b / z_norm for a, b in zip(p_row, z_row, strict=True))
        return -total / len(p)

    rows = [t.double().tolist() for t in (p1, p2, z1, z2)]
    return d(rows[0], rows[3]) / 2 + d(rows[1], rows[2]) / 2


@pytest.mark.parametrize(("batch", "dim"), [(1, 3), (5, 8), (16, 64)])
def test_loss_matches_the_papers_pseudo_code(batch: int, dim: int) -> None:
    g = torch.Generator().manual_seed(batch * dim)
    p1, p2, z1, z2 = (torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(4))
    p2 = p2 * 0.01  # the predictions' scale must not matter
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(
        simsiam_reference(p1, p2, z1, z2), rel=1e-12
    )
    float32 = simsiam_loss(p1.float(), p2.float(), z1.float(), z2.float())
    assert float32.item() == pytest.approx(simsiam_reference(p1, p2, z1, z2), rel=1e-5)


def test_loss_bounds_and_stop_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(6, 8, generator=g, dtype=torch.float64) for _ in range(2))
    assert simsiam_loss(z2, z1, z1, z2).item() == pytest.approx(-1.0)
    assert simsiam_loss(-z2, -z1, z1, z2).item() == pytest.approx(1.0)  # the terms are averaged
    p1 = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    z2.requires_grad_(True)
    simsiam_loss(p1, z1, z1, z2).backward()
    assert z2.grad is None  # sg(z)
    assert torch.autograd.gradcheck(lambda p: simsiam_loss(p, z1, z1, z2.detach()), (p1,))


def _views(batch_size: int = 4, num_views: int = 2) -> Batch:
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(batch_size, 3, 16, 16, generator=g) for _ in range(num_views)]
    return Batch(views=views, labels=torch.arange(batch_size))


def test_step_is_the_loss_of_its_own_heads_with_one_backbone_pass() -> None:
    torch.manual_seed(0)
    model = SimSiam(**TINY).eval()  # running BatchNorm statistics: one image at a time is exact
    calls: list[int] = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batch = _views(batch_size=4)
    out = model.pretext_step(batch)
    assert calls == [8]  # both views in one pass

    # The same network view by view, the targets detached by hand, as in the paper's Algorithm 1.
    x1, x2 = batch.views
    z1, z2 = (model.projector(model.backbone(x)) for x in (x1, x2))
    p1, p2 = model.predictor(z1), model.predictor(z2)
    assert out.loss.item() == pytest.approx(simsiam_reference(p1, p2, z1, z2), rel=1e-5)

    def d(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # Algorithm 1's D(p, z), in torch
        z = z.detach()  # the stop-gradient
        return -((p * z).sum(dim=1) / (p.norm(dim=1) * z.norm(dim=1))).mean()

    expected = d(p1, z2) / 2 + d(p2, z1) / 2
    weight = model.projector.layers[0].weight
    (grad_step,) = torch.autograd.grad(out.loss, weight)
    (grad_expected,) = torch.autograd.grad(expected, weight)
    torch.testing.assert_close(grad_step, grad_expected)  # no gradient through the targets

    with torch.no_grad():
        features = torch.cat([model.backbone(x1), model.backbone(x2)])
        unit = torch.cat([z1, z2]) / torch.cat([z1, z2]).norm(dim=1, keepdim=True)
        stds = [unit[:, c].std().item() for c in range(unit.shape[1])]
    torch.testing.assert_close(out.features, features)
    assert out.labels.tolist() == [0, 1, 2, 3] * 2
    assert out.metrics["z_std"].item() == pytest.approx(sum(stds) / len(stds), rel=1e-5)
    assert isinstance(model.default_corruption(), SimCLRViews)


def test_heads_have_the_papers_shapes() -> None:
    model = SimSiam(**TINY)
    projector = [type(m) for m in model.projector.layers]
    assert projector == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert not model.projector.layers[-1].affine  # BN on the output, no learned scale/shift
    predictor = [m for m in model.predictor.layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in predictor] == [(16, 16), (16, 16)]
    assert isinstance(model.predictor.layers[-1], nn.Linear)  # no BN or ReLU on the output
    default = SimSiam(backbone="convnet", backbone_kwargs={"width": 4})
    predictor = [m for m in default.predictor.layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in predictor] == [(2048, 512), (512, 2048)]
    deep = SimSiam(**TINY, proj_num_layers=3)  # the ImageNet projector
    assert sum(isinstance(m, nn.BatchNorm1d) for m in deep.projector.layers) == 3


def _full_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4 * WORLD, 8, generator=g, dtype=torch.float64) for _ in range(4)]


def _loss_rank(rank: int, world_size: int) -> dict:
    p1, p2, z1, z2 = (t.chunk(world_size)[rank].clone() for t in _full_inputs())
    p1.requires_grad_(True)
    p2.requires_grad_(True)
    loss = simsiam_loss(p1, p2, z1, z2)
    loss.backward()
    return {"loss": loss.detach(), "grads": (p1.grad, p2.grad)}


@pytest.mark.distributed
def test_two_ranks_with_half_the_batch_each_equal_one_process() -> None:
    results = run_distributed(_loss_rank, WORLD)
    p1, p2, z1, z2 = _full_inputs()
    p1.requires_grad_(True)
    p2.requires_grad_(True)
    loss = simsiam_loss(p1, p2, z1, z2)
    loss.backward()
    # A mean of per-sample terms: the mean rank loss and the DDP-averaged gradient are exact.
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), loss.detach())
    for i, full_grad in enumerate((p1.grad, p2.grad)):
        ddp_grad = torch.cat([r["grads"][i] for r in results]) / WORLD
        torch.testing.assert_close(ddp_grad, full_grad)


def test_bad_arguments_and_batches_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"got 0 \(set model\.proj_num_layers\)"):
        SimSiam(**TINY, proj_num_layers=0)
    with pytest.raises(ValueError, match=r"got -1 \(set model\.pred_hidden_dim\)"):
        SimSiam(**{**TINY, "pred_hidden_dim": -1})
    model = SimSiam(**TINY)
    with pytest.raises(ValueError, match=r"exactly 2 views.*made 3.*data\.corruption"):
        model.pretext_step(_views(num_views=3))
    with pytest.raises(ValueError, match="made 1"):
        model.pretext_step(_views(num_views=1))
