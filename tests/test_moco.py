"""MoCo v3: the InfoNCE loss against a per-query loop, the method's step and momentum encoder,
exact resume, 2 processes against 1, errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ssl_lightning.datamodules import Batch, BYOLViews
from ssl_lightning.losses.contrastive import info_nce
from ssl_lightning.methods.moco import MoCoV3
from tests.distributed_utils import run_distributed
from tests.resume_utils import assert_same_state, straight_and_resumed

HEADS = {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32}
CONVNET = {"backbone": "convnet", "backbone_kwargs": {"width": 8}, **HEADS}
VIT = {"backbone": "vit_tiny", "backbone_kwargs": {"dim": 32, "depth": 1, "num_heads": 2}, **HEADS}
WORLD = 2


def info_nce_reference(q: torch.Tensor, k: torch.Tensor, temperature: float) -> float:
    """Algorithm 1 of the paper, one query at a time in float64: the cross entropy of query i
    over all keys with key i as its label, times 2t, averaged over the queries."""
    q = F.normalize(q.detach().double(), dim=1)
    k = F.normalize(k.detach().double(), dim=1)
    total = 0.0
    for i in range(len(q)):
        logits = [float(q[i] @ k[j]) / temperature for j in range(len(k))]
        log_denominator = math.log(sum(math.exp(x) for x in logits))
        total += -(logits[i] - log_denominator) * 2 * temperature
    return total / len(q)


def _batch(batch_size: int = 4, size: int = 16) -> Batch:
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(batch_size, 3, size, size, generator=g) for _ in range(2)]
    return Batch(views=views, labels=torch.arange(batch_size))


# --- loss ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "dim"), [(2, 3), (5, 8), (16, 32)])
@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
def test_info_nce_matches_the_per_query_loop(batch: int, dim: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(batch * dim)
    q, k = torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)
    expected = info_nce_reference(q, k, temperature)
    assert info_nce(q, k, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_sends_no_gradient_into_the_keys() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 8, generator=g, requires_grad=True)
    k = torch.randn(6, 8, generator=g, requires_grad=True)
    info_nce(q, k).backward()
    assert q.grad is not None and k.grad is None
    aligned = info_nce(k.detach(), k.detach(), 0.1)
    # Every query paired with another image's key (a shift, never the identity).
    assert aligned < info_nce(k.detach(), k.detach().roll(1, dims=0), 0.1)


def test_info_nce_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"one shape \[B, D\]"):
        info_nce(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(4, 8), torch.randn(4, 8), temperature=0.0)


def _full_qk() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(4 * WORLD, 8, generator=g) for _ in range(4))  # q1, q2, k1, k2


def _symmetric_rank(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    q1, q2, k1, k2 = (t.chunk(world_size)[rank].clone() for t in _full_qk())
    q1.requires_grad_(True)
    q2.requires_grad_(True)
    loss = info_nce(q1, k2, 0.2) + info_nce(q2, k1, 0.2)
    loss.backward()
    assert q1.grad is not None and q2.grad is not None
    return {"loss": loss.detach(), "grad1": q1.grad, "grad2": q2.grad}


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_whole_batch() -> None:
    results = run_distributed(_symmetric_rank, WORLD)
    q1, q2, k1, k2 = _full_qk()
    q1.requires_grad_(True)
    q2.requires_grad_(True)
    loss = info_nce(q1, k2, 0.2) + info_nce(q2, k1, 0.2)
    loss.backward()
    # DDP averages the rank gradients: the mean of the rank losses is the 1-process loss.
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), loss.detach())
    for name, full in [("grad1", q1.grad), ("grad2", q2.grad)]:
        torch.testing.assert_close(torch.cat([r[name] for r in results]) / WORLD, full)


# --- method ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tiny", [CONVNET, VIT], ids=["convnet", "vit"])
def test_step_is_the_symmetric_loss_of_its_heads_with_one_pass_per_encoder(
    tiny: dict[str, Any],
) -> None:
    torch.manual_seed(0)
    model = MoCoV3(**tiny)
    with torch.no_grad():  # a momentum encoder that differs from the query encoder
        for p in model.momentum_backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    calls: dict[str, list[int]] = {"online": [], "momentum": []}
    model.backbone.register_forward_hook(lambda m, i, o: calls["online"].append(len(i[0])))
    model.momentum_backbone.register_forward_hook(
        lambda m, i, o: calls["momentum"].append(len(i[0]))
    )
    batch = _batch()
    out = model.pretext_step(batch)
    assert calls == {"online": [8], "momentum": [8]}  # both views in one pass per encoder
    x = torch.cat(batch.views)
    q1, q2 = model.predictor(model.projector(model.backbone(x))).chunk(2)
    k1, k2 = model.momentum_projector(model.momentum_backbone(x)).chunk(2)
    expected = info_nce_reference(q1, k2, 0.2) + info_nce_reference(q2, k1, 0.2)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.features.shape == (8, model.num_features) and out.labels.tolist() == [0, 1, 2, 3] * 2
    out.loss.backward()
    assert all(p.grad is None for p in model.momentum_backbone.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())


def _widths_and_last_bn(head: torch.nn.Module) -> tuple[list[int], bool]:
    linears = [m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear)]
    return linears, isinstance(head.layers[-1], torch.nn.BatchNorm1d)  # type: ignore[index]


@pytest.mark.parametrize(
    ("tiny", "projector", "predictor"),
    [
        (CONVNET, ([32, 16], True), ([32, 16], False)),  # moco-v3's MoCo_ResNet
        (VIT, ([32, 32, 16], True), ([32, 16], True)),  # moco-v3's MoCo_ViT
    ],
    ids=["cnn", "vit"],
)
def test_heads_have_the_papers_shapes_for_each_backbone_family(
    tiny: dict[str, Any],
    projector: tuple[list[int], bool],
    predictor: tuple[list[int], bool],
) -> None:
    model = MoCoV3(**tiny)
    assert _widths_and_last_bn(model.projector) == projector
    assert _widths_and_last_bn(model.predictor) == predictor
    deeper = MoCoV3(**tiny, proj_num_layers=4).projector
    assert _widths_and_last_bn(deeper) == ([32, 32, 32, 16], True)


def test_defaults_are_solo_learns_cifar_recipe() -> None:
    model = MoCoV3(backbone="convnet", backbone_kwargs={"width": 4})
    assert _widths_and_last_bn(model.projector)[0] == [4096, 256]
    assert _widths_and_last_bn(model.predictor)[0] == [4096, 256]
    assert isinstance(model.default_corruption(), BYOLViews)
    assert (model.temperature, model.base_momentum) == (0.2, 0.99)
    assert (model.optimizer_name, model.lr, model.weight_decay, model.lars_eta) == (
        "lars",
        0.3,
        1e-6,
        0.02,
    )


def test_momentum_encoder_follows_the_ema_formula() -> None:
    model = MoCoV3(**CONVNET)
    before = [p.clone() for p in model.momentum_projector.parameters()]
    with torch.no_grad():
        for p in model.projector.parameters():
            p.add_(1.0)
    model.after_optimizer_step()  # no trainer: progress 0, momentum = base
    m = 0.99  # the base momentum: the cosine ramp starts there
    for old, new, student in zip(
        before, model.momentum_projector.parameters(), model.projector.parameters(), strict=True
    ):
        torch.testing.assert_close(new, m * old + (1 - m) * student)


def test_momentum_encoder_is_checkpointed_and_a_resume_continues_exactly(tmp_path: Path) -> None:
    def make() -> MoCoV3:
        return MoCoV3(**CONVNET, optimizer="sgd", lr=0.05, warmup_epochs=0, scale_lr=False)

    straight, resumed, ckpt = straight_and_resumed(make, tmp_path, total=6, stop=3)
    assert_same_state(straight, resumed)
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    assert any(key.startswith("momentum_backbone.") for key in saved)
    assert any(key.startswith("momentum_projector.") for key in saved)
    assert not torch.equal(  # the momentum encoder moved, but not as far as the query encoder
        straight.momentum_backbone.features[0].weight, straight.backbone.features[0].weight
    )


def test_bad_arguments_and_batches_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"-0\.1.*model\.temperature"):
        MoCoV3(**CONVNET | {"temperature": -0.1})
    with pytest.raises(ValueError, match=r"1\.5.*model\.base_momentum"):
        MoCoV3(**CONVNET | {"base_momentum": 1.5})
    with pytest.raises(ValueError, match=r"0.*model\.pred_hidden_dim"):
        MoCoV3(**CONVNET | {"pred_hidden_dim": 0})
    with pytest.raises(ValueError, match=r"0.*model\.proj_num_layers"):
        MoCoV3(**CONVNET | {"proj_num_layers": 0})
    model = MoCoV3(**CONVNET)
    three = Batch(views=[*_batch().views, _batch().views[0]], labels=torch.arange(4))
    with pytest.raises(ValueError, match=r"2 views.*made 3.*data\.corruption=BYOLViews"):
        model.pretext_step(three)
    with pytest.raises(ValueError, match=r"got 1.*data\.batch_size"):
        model.pretext_step(_batch(batch_size=1))
