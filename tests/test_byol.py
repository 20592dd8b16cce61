"""BYOL: the normalized-MSE loss against the paper's per-sample definition, the step against its
own heads, the EMA target (the formula at the run's progress, once per optimizer step, in the
checkpoint, exact resume), the exported encoder, 2 processes against 1, and errors that name
the fix."""

from __future__ import annotations

import math
from itertools import chain
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ssl_lightning import create_backbone
from ssl_lightning.datamodules import Batch, BYOLViews, ImageFolderDataModule
from ssl_lightning.export import export_backbone
from ssl_lightning.losses.similarity import byol_loss
from ssl_lightning.methods.byol import BYOL
from tests.distributed_utils import run_distributed
from tests.helpers import SAMPLE, tiny_trainer
from tests.resume_utils import assert_same_state, straight_and_resumed

TINY: dict[str, Any] = {
    "backbone": "convnet",
    "backbone_kwargs": {"width": 4},
    "proj_hidden_dim": 32,
    "proj_output_dim": 16,
    "pred_hidden_dim": 32,
}
WORLD = 2


def byol_reference(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> float:
    """The paper's loss, image by image: the squared distance between the l2-normalized
    prediction and the other view's normalized target, averaged over images, per direction."""

    def direction(p: list[list[float]], z: list[list[float]]) -> float:
        total = 0.0
        for p_row, z_row in zip(p, z, strict=True):
            p_norm = math.sqrt(sum(v * v for v in p_row))
            z_norm = math.sqrt(sum(v * v for v in z_row))
            total += sum((a / p_norm - b / z_norm) ** 2 for a, b in zip(p_row, z_row, strict=True))
        return total / len(p)

    rows = [t.double().tolist() for t in (p1, p2, z1, z2)]
    return direction(rows[0], rows[3]) + direction(rows[1], rows[2])


@pytest.mark.parametrize(("batch", "dim"), [(1, 3), (5, 8), (16, 32)])
def test_loss_matches_the_per_sample_definition(batch: int, dim: int) -> None:
    g = torch.Generator().manual_seed(batch * dim)
    p1, p2, z1, z2 = (torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(4))
    z1 = z1 * 7.0  # the targets' scale must not matter
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(
        byol_reference(p1, p2, z1, z2), rel=1e-12
    )
    float32 = byol_loss(p1.float(), p2.float(), z1.float(), z2.float())
    assert float32.item() == pytest.approx(byol_reference(p1, p2, z1, z2), rel=1e-5)


def test_loss_bounds_and_gradients_reach_the_predictions_only() -> None:
    g = torch.Generator().manual_seed(0)
    p1, p2 = (torch.randn(6, 8, generator=g, dtype=torch.float64) for _ in range(2))
    assert byol_loss(p1, p2, 3 * p2, 0.5 * p1).item() == pytest.approx(0.0, abs=1e-12)
    assert byol_loss(p1, p2, -p2, -p1).item() == pytest.approx(8.0)  # sum, not mean, of 2 terms
    p1.requires_grad_(True)
    z1 = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 8, generator=g, dtype=torch.float64)
    byol_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None  # stop-gradient on the targets
    assert torch.autograd.gradcheck(lambda p: byol_loss(p, p2, z1, z2), (p1,))
    with pytest.raises(ValueError, match=r"\[B, D\].*\(4, 8\) and \(4, 9\)"):
        byol_loss(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 9))


def _views(batch_size: int = 4, num_views: int = 2, size: int = 16) -> Batch:
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(batch_size, 3, size, size, generator=g) for _ in range(num_views)]
    return Batch(views=views, labels=torch.arange(batch_size))


def test_step_is_the_loss_of_its_own_heads_with_one_pass_per_network() -> None:
    torch.manual_seed(0)
    model = BYOL(**TINY).eval()  # running BatchNorm statistics: one image at a time is exact
    with torch.no_grad():  # a target that differs from the online network
        for p in chain(model.teacher_backbone.parameters(), model.teacher_projector.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    online_calls: list[int] = []
    target_calls: list[int] = []
    model.backbone.register_forward_hook(lambda m, i, o: online_calls.append(i[0].shape[0]))
    model.teacher_backbone.register_forward_hook(lambda m, i, o: target_calls.append(i[0].shape[0]))
    batch = _views(batch_size=4)
    out = model.pretext_step(batch)
    assert online_calls == [8] and target_calls == [8]  # both views in one pass each

    with torch.no_grad():
        x1, x2 = batch.views
        p1, p2 = (model.predictor(model.projector(model.backbone(x))) for x in (x1, x2))
        z1, z2 = (model.teacher_projector(model.teacher_backbone(x)) for x in (x1, x2))
        features = torch.cat([model.backbone(x1), model.backbone(x2)])
    assert out.loss.item() == pytest.approx(byol_reference(p1, p2, z1, z2), rel=1e-5)
    torch.testing.assert_close(out.features, features)  # the online backbone's, for callbacks
    assert out.labels.tolist() == [0, 1, 2, 3] * 2
    assert out.metrics["ema_momentum"].item() == pytest.approx(0.99)  # progress 0, no trainer

    out.loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.teacher_backbone.parameters())
    assert isinstance(model.default_corruption(), BYOLViews)


def _datamodule(tmp_path: Path, batch_size: int = 16) -> ImageFolderDataModule:
    return ImageFolderDataModule(SAMPLE, batch_size=batch_size, cache_dir=tmp_path / "cache")


def _target(model: BYOL) -> list[torch.Tensor]:
    params = chain(model.teacher_backbone.parameters(), model.teacher_projector.parameters())
    return [p.detach().clone() for p in params]


def _online(model: BYOL) -> list[torch.Tensor]:
    params = chain(model.backbone.parameters(), model.projector.parameters())
    return [p.detach().clone() for p in params]


class TargetSnapshots(Callback):
    """Per batch: the optimizer steps before and after it, the target before and after it, and
    the online network after it."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, list, list, list]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = (trainer.global_step, _target(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, before = self.start
        self.rows.append(
            (step, trainer.global_step, before, _target(pl_module), _online(pl_module))
        )


def test_target_moves_by_the_ema_formula_once_per_optimizer_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base, total = 0.5, 3  # a low momentum, so that one update is far from none
    model = BYOL(**TINY, base_momentum=base, optimizer="sgd", lr=0.5, scale_lr=False)
    snapshots = TargetSnapshots()
    trainer = tiny_trainer(
        tmp_path,
        max_steps=total,
        accumulate_grad_batches=2,
        limit_val_batches=0,
        callbacks=[snapshots],
    )
    trainer.fit(model, _datamodule(tmp_path, batch_size=8))

    assert len(snapshots.rows) == 2 * total
    updates = 0
    for step, step_after, before, after, online in snapshots.rows:
        if step_after == step:  # an accumulation batch: no optimizer step, no update
            for a, b in zip(after, before, strict=True):
                assert torch.equal(a, b)
            continue
        updates += 1
        # BYOL's schedule at progress k / K, written out: 1 - (1 - base) (cos(pi k / K) + 1) / 2
        m = 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2
        for a, b, o in zip(after, before, online, strict=True):
            expected = m * b.double() + (1 - m) * o.double()
            torch.testing.assert_close(a.double(), expected, rtol=1e-6, atol=1e-7)
        moved = max((a - b).abs().max().item() for a, b in zip(after, before, strict=True))
        assert moved > 1e-3
    assert updates == total


def test_checkpoint_holds_the_target_and_a_resumed_run_continues_exactly(tmp_path: Path) -> None:
    straight, resumed, ckpt = straight_and_resumed(
        lambda: BYOL(**TINY, base_momentum=0.9), tmp_path, total=4, stop=2
    )

    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    for online in ("backbone", "projector"):  # every target tensor, parameters and buffers
        for key in getattr(resumed, online).state_dict():
            assert f"teacher_{online}.{key}" in saved
    target, online_weight = (
        saved["teacher_backbone.features.0.weight"],
        saved["backbone.features.0.weight"],
    )
    assert not torch.equal(target, online_weight)  # the target is its own state, not a copy
    assert_same_state(straight, resumed)

    # ssl-lightning export writes the online backbone, not the target.
    weights = export_backbone(ckpt, tmp_path / "byol.pt")
    exported = create_backbone("convnet", weights=weights).state_dict()
    for key, value in exported.items():
        assert torch.equal(value, saved[f"backbone.{key}"]), key


def _full_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4 * WORLD, 8, generator=g, dtype=torch.float64) for _ in range(4)]


def _loss_rank(rank: int, world_size: int) -> dict:
    p1, p2, z1, z2 = (t.chunk(world_size)[rank].clone() for t in _full_inputs())
    p1.requires_grad_(True)
    p2.requires_grad_(True)
    loss = byol_loss(p1, p2, z1, z2)
    loss.backward()
    return {"loss": loss.detach(), "grads": (p1.grad, p2.grad)}


@pytest.mark.distributed
def test_two_ranks_with_half_the_batch_each_equal_one_process() -> None:
    results = run_distributed(_loss_rank, WORLD)
    p1, p2, z1, z2 = _full_inputs()
    p1.requires_grad_(True)
    p2.requires_grad_(True)
    loss = byol_loss(p1, p2, z1, z2)
    loss.backward()
    # DDP averages gradients over ranks, and the mean of the rank losses is the logged loss:
    # a mean of per-sample terms needs no collective to equal the 1-process result.
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), loss.detach())
    for i, full_grad in enumerate((p1.grad, p2.grad)):
        ddp_grad = torch.cat([r["grads"][i] for r in results]) / WORLD
        torch.testing.assert_close(ddp_grad, full_grad)


def test_bad_arguments_and_batches_name_the_fix() -> None:
    with pytest.raises(
        ValueError, match=r"base_momentum must be in \[0, 1\], got 1.5.*model\.base_momentum"
    ):
        BYOL(**TINY, base_momentum=1.5)
    with pytest.raises(ValueError, match=r"got -0.1 \(set model\.final_momentum\)"):
        BYOL(**TINY, final_momentum=-0.1)
    with pytest.raises(ValueError, match=r"got 0 \(set model\.pred_hidden_dim\)"):
        BYOL(**{**TINY, "pred_hidden_dim": 0})
    model = BYOL(**TINY)
    with pytest.raises(ValueError, match=r"exactly 2 views.*made 3.*data\.corruption=BYOLViews"):
        model.pretext_step(_views(num_views=3))
    with pytest.raises(ValueError, match="made 1"):
        model.pretext_step(_views(num_views=1))


def test_default_views_are_byols_without_blur_for_small_images() -> None:
    view1, view2 = BYOL(**TINY).default_corruption().views  # type: ignore[attr-defined]
    assert (view1.blur_p, view1.solarize_p) == (0.0, 0.0)
    assert (view2.blur_p, view2.solarize_p) == (0.0, 0.2)
    # The rest is the paper's Table 6, written out: jitter (0.4, 0.4, 0.2, 0.1) with p 0.8,
    # grayscale p 0.2, crops from (0.08, 1) of the area, flips with p 0.5.
    for view in (view1, view2):
        jitter = (view.brightness, view.contrast, view.saturation, view.hue, view.jitter_p)
        assert jitter == (0.4, 0.4, 0.2, 0.1, 0.8)
        assert (view.grayscale_p, view.crop_scale, view.flip_p) == (0.2, (0.08, 1.0), 0.5)
    images = torch.rand(4, 3, 32, 32)
    plain = BYOLViews(view1=view1, view2=view2)(images, torch.zeros(4), torch.Generator())
    assert [v.shape for v in plain.views] == [images.shape, images.shape]
