"""Many views per image: the batched view call, EMP-SSL's and FastSiam's losses against slow
float64 loops, the chunked backbone passes against plain per-chunk passes, and the coding rate
of 2 processes against 1."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_lightning.corruptions import MultiCropViews, SimCLRViews, ViewTransform
from ssl_lightning.corruptions.geometry import resized_crop
from ssl_lightning.losses import emp_ssl_loss, fastsiam_loss, simsiam_loss, total_coding_rate
from ssl_lightning.methods import EMPSSL, FastSiam, SimCLR
from ssl_lightning.methods.passes import embed_in_passes, num_global_views, view_groups
from tests.distributed_utils import run_distributed
from tests.test_losses import nt_xent_reference

VIEW = ViewTransform(size=24, blur_p=0.5, solarize_p=0.3)


def test_many_views_in_one_call_equal_the_transform_of_the_repeated_batch() -> None:
    images = torch.rand(5, 3, 32, 32)
    many = VIEW(images, torch.Generator().manual_seed(3), num_views=4)
    repeated = VIEW(images.repeat(4, 1, 1, 1), torch.Generator().manual_seed(3))
    assert many.shape == (20, 3, 24, 24)
    torch.testing.assert_close(many, repeated, atol=1e-6, rtol=0)


def test_each_view_of_each_image_draws_its_own_parameters() -> None:
    images = torch.rand(1, 3, 32, 32).expand(3, 3, 32, 32).contiguous()  # one image, 3 times
    views = SimCLRViews(num_views=8, view=VIEW)(
        images, torch.zeros(3, dtype=torch.long), torch.Generator().manual_seed(0)
    ).views
    rows = torch.cat(views).flatten(1)  # [24, ...]: the same image's 24 views
    distance = torch.cdist(rows, rows) + torch.eye(24) * 1e9
    assert distance.min() > 1e-3


def test_multi_crop_makes_each_size_in_one_call() -> None:
    corruption = MultiCropViews(num_local=6, global_view=ViewTransform(), local_size=12)
    batch = corruption(torch.rand(4, 3, 32, 32), torch.zeros(4), torch.Generator().manual_seed(0))
    assert [v.shape[-1] for v in batch.views] == [32, 32] + [12] * 6
    assert all(v.shape[0] == 4 for v in batch.views)


def test_resized_crop_refuses_boxes_that_are_not_a_multiple_of_the_batch() -> None:
    with pytest.raises(ValueError, match="multiple of the 4 images"):
        resized_crop(torch.rand(4, 3, 8, 8), torch.tensor([[0, 0, 4, 4]] * 6), 4)


def test_num_views_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="num_views=0"):
        VIEW(torch.rand(2, 3, 32, 32), torch.Generator(), num_views=0)


# ---- losses against float64 loops ------------------------------------------------------------


def _rate_reference(z: Tensor, eps: float) -> float:
    """1/2 logdet(I + D/(N eps) Z^T Z) by Sylvester's identity on the [N, N] side, in float64."""
    n, d = z.shape
    z = z.double()
    return 0.5 * torch.logdet(torch.eye(n, dtype=torch.float64) + d / (n * eps) * z @ z.T).item()


def test_total_coding_rate_equals_the_log_determinant_formula() -> None:
    z = F.normalize(torch.randn(3, 12, 6), dim=-1)
    rates = total_coding_rate(z, eps=0.2)
    for v in range(3):
        assert rates[v].item() == pytest.approx(_rate_reference(z[v], 0.2), rel=1e-5)
    assert total_coding_rate(z[0], 0.2).item() == pytest.approx(rates[0].item())


def test_a_collapsed_embedding_has_the_least_coding_rate() -> None:
    d = 8
    collapsed = F.normalize(torch.ones(16, d), dim=1)
    rate = total_coding_rate(collapsed, eps=0.5)
    assert rate.item() == pytest.approx(0.5 * math.log(1 + d / 0.5), rel=1e-5)
    assert total_coding_rate(F.normalize(torch.randn(16, d), dim=1), eps=0.5) > rate


def _emp_reference(z: Tensor, eps: float, weight: float) -> Tensor:
    """EMP-SSL's loss with a loop over views and images, in float64."""
    views, batch, _ = z.shape
    z = F.normalize(z.double(), dim=-1)
    similarity = z.new_zeros(())
    for b in range(batch):
        mean = sum(z[v, b] for v in range(views)) / views
        for v in range(views):
            similarity = similarity + torch.dot(z[v, b], mean) / mean.norm() / (views * batch)
    rate = sum(_rate_reference_t(z[v], eps) for v in range(views)) / views
    return -rate - weight * similarity


def _rate_reference_t(z: Tensor, eps: float) -> Tensor:
    n, d = z.shape
    return 0.5 * torch.logdet(torch.eye(n, dtype=z.dtype) + d / (n * eps) * z @ z.T)


def test_emp_ssl_loss_and_gradient_equal_a_float64_loop() -> None:
    z = torch.randn(4, 10, 6, requires_grad=True)
    loss, terms = emp_ssl_loss(z, eps=0.2, invariance_weight=200.0)
    (grad,) = torch.autograd.grad(loss, z)
    z64 = z.detach().double().requires_grad_()
    reference = _emp_reference(z64, 0.2, 200.0)
    (grad64,) = torch.autograd.grad(reference, z64)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(grad, grad64.float(), rtol=1e-4, atol=1e-4)
    assert -terms["coding_rate"] - 200 * terms["similarity"] == pytest.approx(loss.item())


def test_emp_ssl_loss_needs_two_views() -> None:
    with pytest.raises(ValueError, match="V >= 2"):
        emp_ssl_loss(torch.randn(1, 4, 3))


def test_fastsiam_loss_equals_a_float64_loop_and_simsiam_at_two_views() -> None:
    p, z = torch.randn(4, 6, 5, requires_grad=True), torch.randn(4, 6, 5, requires_grad=True)
    loss = fastsiam_loss(p, z)
    reference = 0.0
    for v in range(4):
        for b in range(6):
            target = sum(z[u, b].double() for u in range(4) if u != v) / 3
            cos = torch.dot(p[v, b].double(), target) / (p[v, b].double().norm() * target.norm())
            reference -= cos.item() / 24
    assert loss.item() == pytest.approx(reference, rel=1e-5)
    loss.backward()
    assert z.grad is None  # the targets are under stop-gradient
    two_p, two_z = p.detach()[:2], z.detach()[:2]
    torch.testing.assert_close(
        fastsiam_loss(two_p, two_z), simsiam_loss(two_p[0], two_p[1], two_z[0], two_z[1])
    )


# ---- chunked backbone passes -----------------------------------------------------------------


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def test_view_groups_split_by_shape_then_by_views_per_pass() -> None:
    views = [torch.zeros(2, 3, 8, 8)] * 5 + [torch.zeros(2, 3, 4, 4)] * 2
    assert [len(g) for g in view_groups(views)] == [5, 2]
    assert [len(g) for g in view_groups(views, 2)] == [2, 2, 1, 2]


def test_the_global_views_are_the_leading_views_of_the_first_size() -> None:
    big, small = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4)
    assert num_global_views([big, big, small, small, small]) == 2
    assert num_global_views([big, big, big]) == 3


def test_chunked_passes_equal_plain_passes_per_chunk_and_count_batch_norm_once() -> None:
    views = [torch.rand(3, 3, 8, 8) for _ in range(5)]
    checkpointed, plain = _encoder(), _encoder()
    out = embed_in_passes(checkpointed, views, views_per_pass=2)
    reference = torch.cat([plain(torch.cat(views[i : i + 2])) for i in range(0, 5, 2)])
    torch.testing.assert_close(out, reference)
    out.square().sum().backward()
    reference.square().sum().backward()
    for (name, a), b in zip(checkpointed.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    for a, b in zip(checkpointed.buffers(), plain.buffers(), strict=True):
        assert torch.equal(a, b)  # the recomputation did not move the running statistics


def test_one_pass_per_size_without_views_per_pass() -> None:
    views = [torch.rand(3, 3, 8, 8) for _ in range(4)]
    encoder, reference = _encoder(), _encoder()
    torch.testing.assert_close(embed_in_passes(encoder, views), reference(torch.cat(views)))


@pytest.mark.parametrize("method", [EMPSSL, FastSiam])
def test_views_per_pass_leaves_a_method_step_to_a_chunk_of_views(method: type) -> None:
    tiny = {"backbone": "convnet", "backbone_kwargs": {"width": 4}, "proj_hidden_dim": 16}
    model = method(**tiny, proj_output_dim=8, views_per_pass=2)
    model.log = lambda *args, **kwargs: None
    batch = model.default_corruption()(
        torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long), torch.Generator()
    )
    out = model.pretext_step(batch)
    assert out.features.shape[0] == 4 * len(batch.views)
    out.loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())


@pytest.mark.parametrize("num_local", [0, 2])
def test_simclr_contrasts_every_global_and_local_view_and_hands_callbacks_the_global_ones(
    num_local: int,
) -> None:
    tiny = {"backbone": "convnet", "backbone_kwargs": {"width": 4}, "proj_hidden_dim": 16}
    model = SimCLR(**tiny, temperature=0.3, num_global_views=3, num_local_views=num_local)
    corruption = model.default_corruption()
    kind = MultiCropViews if num_local else SimCLRViews
    assert isinstance(corruption, kind)
    batch = corruption(torch.rand(4, 3, 32, 32), torch.arange(4), torch.Generator())
    assert [v.shape[-1] for v in batch.views] == [32] * 3 + [16] * num_local
    model.eval()  # running statistics: one pass per size equals one pass per view
    with torch.no_grad():
        out = model.pretext_step(batch)
        per_view = [model.backbone(v) for v in batch.views]
    z = torch.stack([model.projector(f) for f in per_view])  # [V, B, P]
    assert out.loss.item() == pytest.approx(nt_xent_reference(z, temperature=0.3), rel=1e-5)
    torch.testing.assert_close(out.features, torch.cat(per_view[:3]))
    assert out.labels.tolist() == [0, 1, 2, 3] * 3


def test_simclr_refuses_fewer_than_two_global_views() -> None:
    with pytest.raises(ValueError, match=r"num_global_views"):
        SimCLR(backbone="convnet", num_global_views=1)


# ---- 2 processes against 1 -------------------------------------------------------------------


def _rate_and_grad(rank: int, world_size: int, z: Tensor) -> tuple[float, Tensor]:
    part = z.chunk(world_size, dim=1)[rank].clone().requires_grad_()  # [V, B / R, D]
    rate = total_coding_rate(part, eps=0.2).mean()
    rate.backward()
    return rate.item(), part.grad


@pytest.mark.distributed
def test_coding_rate_of_two_processes_equals_one_process() -> None:
    z = F.normalize(torch.randn(3, 8, 5), dim=-1)
    whole = z.clone().requires_grad_()
    rate = total_coding_rate(whole, eps=0.2).mean()
    rate.backward()
    results = run_distributed(_rate_and_grad, 2, z)
    for value, _ in results:
        assert value == pytest.approx(rate.item(), rel=1e-6)
    # DDP averages the ranks' gradients: that average is the one-process gradient.
    ddp_grad = torch.cat([grad for _, grad in results], dim=1) / 2
    torch.testing.assert_close(ddp_grad, whole.grad, rtol=1e-5, atol=1e-6)
