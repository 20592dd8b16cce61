"""DINO: the loss and center against loops over the paper's definition, the head, the method's
step (one backbone pass per resolution, teacher on the global views), schedules, exact resume
and export of the teacher, 2 processes against 1, errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from ssl_lightning import create_backbone
from ssl_lightning.cli import main
from ssl_lightning.datamodules import Batch, ImageFolderDataModule, MultiCropViews
from ssl_lightning.heads import DINOHead
from ssl_lightning.losses.distillation import dino_loss, teacher_temperature, update_center_
from ssl_lightning.methods.dino import DINO
from tests.distributed_utils import run_distributed
from tests.helpers import SAMPLE, tiny_trainer
from tests.resume_utils import assert_same_state, straight_and_resumed

HEAD = {"num_prototypes": 64, "proj_hidden_dim": 32, "proj_bottleneck_dim": 16}
CONVNET = {"backbone": "convnet", "backbone_kwargs": {"width": 8}, **HEAD}
VIT = {"backbone": "vit_tiny", "backbone_kwargs": {"dim": 32, "depth": 1, "num_heads": 2}, **HEAD}
WORLD = 2


def dino_loss_reference(
    student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, t_s: float, t_t: float
) -> float:
    """Algorithm 1 of the paper, one pair of views and one image at a time, in float64."""
    s, t, c = student.detach().double(), teacher.detach().double(), center.double()
    num_views, batch, k = s.shape
    terms = []
    for g in range(t.shape[0]):
        for v in range(num_views):
            if v == g:  # a view is never its own target
                continue
            pair = 0.0
            for b in range(batch):
                target = [math.exp(float(t[g, b, i] - c[i]) / t_t) for i in range(k)]
                target = [x / sum(target) for x in target]
                log_norm = math.log(sum(math.exp(float(s[v, b, i]) / t_s) for i in range(k)))
                pair -= sum(target[i] * (float(s[v, b, i]) / t_s - log_norm) for i in range(k))
            terms.append(pair / batch)
    return sum(terms) / len(terms)


# --- loss, center, temperature, head --------------------------------------------------------


@pytest.mark.parametrize(("g", "v", "b", "k"), [(2, 2, 3, 5), (2, 6, 4, 7), (1, 3, 2, 4)])
@pytest.mark.parametrize(("t_s", "t_t"), [(0.1, 0.04), (0.2, 0.07), (1.0, 1.0)])
def test_dino_loss_matches_the_per_pair_loop(
    g: int, v: int, b: int, k: int, t_s: float, t_t: float
) -> None:
    gen = torch.Generator().manual_seed(g * 100 + v * 10 + k)
    student, teacher = torch.randn(v, b, k, generator=gen), torch.randn(g, b, k, generator=gen)
    center = 0.5 * torch.randn(k, generator=gen)
    expected = dino_loss_reference(student, teacher, center, t_s, t_t)
    assert dino_loss(student, teacher, center, t_s, t_t).item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_is_float32_and_sends_no_gradient_into_the_teacher() -> None:
    student = torch.randn(4, 3, 8, dtype=torch.bfloat16, requires_grad=True)
    teacher = torch.randn(2, 3, 8, requires_grad=True)
    loss = dino_loss(student, teacher, torch.zeros(8), 0.1, 0.04)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert student.grad is not None and teacher.grad is None


def test_center_update_is_the_ema_of_the_teacher_mean() -> None:
    teacher = torch.randn(2, 5, 6)
    center = torch.randn(6)
    expected = [
        0.9 * float(center[i]) + 0.1 * float(teacher[..., i].double().mean()) for i in range(6)
    ]
    assert update_center_(center, teacher, 0.9) is center
    assert center.tolist() == pytest.approx(expected, rel=1e-6)


def test_teacher_temperature_warms_up_linearly_then_stays() -> None:
    assert teacher_temperature(0.0, 0.04, 0.07, 50) == pytest.approx(0.04)
    assert teacher_temperature(25.0, 0.04, 0.07, 50) == pytest.approx(0.055)
    assert teacher_temperature(50.0, 0.04, 0.07, 50) == teacher_temperature(400.0, 0.04, 0.07, 50)
    assert teacher_temperature(3.0, 0.04, 0.07, 0) == 0.07


def test_dino_losses_reject_bad_input() -> None:
    with pytest.raises(ValueError, match=r"G=3, V=2"):
        dino_loss(torch.randn(2, 4, 8), torch.randn(3, 4, 8), torch.zeros(8))
    with pytest.raises(ValueError, match=r"\[V, B, K\]"):
        dino_loss(torch.randn(2, 4, 8), torch.randn(2, 5, 8), torch.zeros(8))
    with pytest.raises(ValueError, match=r"center must be \[K=8\]"):
        dino_loss(torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.zeros(7))
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        dino_loss(torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.zeros(8), 0.0)
    with pytest.raises(ValueError, match="momentum"):
        update_center_(torch.zeros(8), torch.randn(2, 4, 8), 1.5)


def test_head_is_an_mlp_to_a_normalized_bottleneck_then_unit_norm_prototypes() -> None:
    torch.manual_seed(0)
    head = DINOHead(12, 40, hidden_dim=24, bottleneck_dim=8)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [24, 24, 8]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2
    x = torch.randn(5, 12)
    z = torch.nn.functional.normalize(head.mlp(x), dim=1)
    prototypes = head.last_layer.weight / head.last_layer.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), z @ prototypes.T)  # cosines: the norms are fixed at 1
    assert head.last_layer.scale is None
    learned = DINOHead(12, 40, 24, 8, norm_last_layer=False)
    assert learned.last_layer.scale is not None and learned.last_layer.scale.shape == (40, 1)


# --- 2 processes -----------------------------------------------------------------------------


def _full_logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 3 * WORLD, 16, generator=g), torch.randn(2, 3 * WORLD, 16, generator=g)


def _dino_rank(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    student, teacher = (t.chunk(world_size, dim=1)[rank].clone() for t in _full_logits())
    student.requires_grad_(True)
    center = torch.linspace(-1, 1, 16)
    loss = dino_loss(student, teacher, center, 0.1, 0.05)
    loss.backward()
    update_center_(center, teacher, 0.9)
    return {"loss": loss.detach(), "grad": student.grad, "center": center}


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_whole_batch() -> None:
    results = run_distributed(_dino_rank, WORLD)
    student, teacher = _full_logits()
    student.requires_grad_(True)
    center = torch.linspace(-1, 1, 16)
    loss = dino_loss(student, teacher, center, 0.1, 0.05)
    loss.backward()
    update_center_(center, teacher, 0.9)
    # DDP averages the rank gradients: the mean of the rank losses is the 1-process loss.
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), loss.detach())
    torch.testing.assert_close(torch.cat([r["grad"] for r in results], dim=1) / WORLD, student.grad)
    for r in results:  # every rank holds the all-reduced center of the whole batch
        torch.testing.assert_close(r["center"], center)


# --- method ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tiny", [CONVNET, VIT], ids=["convnet", "vit"])
def test_step_is_the_loss_of_its_heads_with_one_pass_per_resolution(tiny: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = DINO(**tiny)
    with torch.no_grad():  # a teacher that differs from the student, and a non-zero center
        for p in model.teacher_backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.center.normal_()
    calls: dict[str, list[tuple[int, int]]] = {"student": [], "teacher": []}
    for name, net in [("student", model.backbone), ("teacher", model.teacher_backbone)]:
        net.register_forward_hook(lambda m, i, o, n=name: calls[n].append(tuple(i[0].shape[::3])))
    images = torch.rand(4, 3, 32, 32)
    batch = model.default_corruption()(images, torch.arange(4), torch.Generator().manual_seed(0))
    center = model.center.clone()
    out = model.pretext_step(batch)
    # Two global 32-pixel views in one pass, six local 16-pixel views in another; the teacher
    # sees the global views only.
    assert calls == {"student": [(8, 32), (24, 16)], "teacher": [(8, 32)]}
    # BatchNorm normalizes over each pass: the reference groups the views the same way.
    passes = [torch.cat(batch.views[:2]), torch.cat(batch.views[2:])]
    student = torch.cat([model.head(model.backbone(x)) for x in passes]).view(8, 4, -1)
    teacher = model.teacher_head(model.teacher_backbone(torch.cat(batch.views[:2])))
    teacher = teacher.view(2, 4, -1)
    expected = dino_loss_reference(student, teacher, center, 0.1, 0.04)
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)
    torch.testing.assert_close(model.center, 0.9 * center + 0.1 * teacher.mean(dim=(0, 1)))
    assert out.features.shape == (8, model.num_features) and out.labels.tolist() == [0, 1, 2, 3] * 2
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher_backbone.parameters())
    assert model.head.last_layer.weight.grad is not None


def test_defaults_follow_the_documented_recipe() -> None:
    model = DINO(backbone="convnet", backbone_kwargs={"width": 4})
    assert model.head.last_layer.weight.shape == (4096, 256) and model.center.shape == (4096,)
    assert (model.student_temp, model.warmup_teacher_temp, model.teacher_temp) == (0.1, 0.04, 0.07)
    assert (model.base_momentum, model.center_momentum) == (0.996, 0.9)
    assert (model.optimizer_name, model.lr, model.weight_decay, model.lars_eta) == (
        "lars",
        0.3,
        1e-6,
        0.02,
    )
    corruption = model.default_corruption()
    assert isinstance(corruption, MultiCropViews)
    assert (corruption.num_global, corruption.num_local, corruption.local_view.size) == (2, 6, 16)
    assert corruption.global_view.blur_p == 0.0 and corruption.local_view.blur_p == 0.0
    assert DINO.export_module == "teacher_backbone"


def test_teacher_temperature_and_frozen_prototypes_follow_the_epochs(tmp_path: Path) -> None:
    # 120 sample images, batch 16: 7 steps per epoch.
    model = DINO(**CONVNET, optimizer="sgd", lr=0.1, scale_lr=False, warmup_epochs=0)
    model.warmup_teacher_temp_epochs, model.freeze_last_layer_epochs = 1.0, 2 / 7
    seen: list[tuple[float, torch.Tensor]] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, module: DINO, *args: Any) -> None:
            seen.append((module.current_teacher_temp(), module.head.last_layer.weight.clone()))

    data = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    tiny_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[Record()]).fit(model, data)
    assert [t for t, _ in seen] == pytest.approx([0.04 + 0.03 * k / 7 for k in range(4)])
    weights = [w for _, w in seen]
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[1], weights[2])
    assert not torch.equal(weights[2], weights[3])  # step 2 is the first after the freeze


def test_teacher_and_center_are_checkpointed_resumed_exactly_and_exported(
    tmp_path: Path,
) -> None:
    def make() -> DINO:
        model = DINO(**CONVNET, optimizer="sgd", lr=0.05, warmup_epochs=0, scale_lr=False)
        model.warmup_teacher_temp_epochs, model.freeze_last_layer_epochs = 1.0, 0.2
        return model

    straight, resumed, ckpt = straight_and_resumed(make, tmp_path, total=6, stop=3)
    assert_same_state(straight, resumed)
    assert straight.center.abs().sum() > 0
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    assert "center" in saved and saved["center"].abs().sum() > 0
    assert not torch.equal(saved["center"], resumed.center)  # the resumed run went on

    out = tmp_path / "teacher.pt"
    main(["export", str(ckpt), str(out)])
    exported = create_backbone("convnet", weights=out).state_dict()
    for key, value in exported.items():
        assert torch.equal(value, saved[f"teacher_backbone.{key}"])
    key = "features.0.weight"
    assert not torch.equal(exported[key], saved[f"backbone.{key}"])  # the teacher, not the student


def test_bad_arguments_and_views_name_the_fix() -> None:
    for name, value in [
        ("student_temp", 0.0),
        ("teacher_temp", -1.0),
        ("num_prototypes", 0),
        ("center_momentum", 1.5),
        ("base_momentum", -0.1),
        ("warmup_teacher_temp_epochs", -1.0),
    ]:
        with pytest.raises(ValueError, match=rf"{value}.*model\.{name}"):
            DINO(**CONVNET | {name: value})
    model = DINO(**CONVNET)
    one = Batch(views=[torch.rand(2, 3, 32, 32)], labels=torch.arange(2))
    with pytest.raises(ValueError, match=r"made 1.*data\.corruption=MultiCropViews"):
        model.pretext_step(one)
    vit = DINO(**VIT)
    odd = MultiCropViews(num_local=2, local_size=14)  # 14 is not a multiple of the patch 4
    batch = odd(torch.rand(2, 3, 32, 32), torch.arange(2), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"14x14.*patch_size=4.*local_size"):
        vit.pretext_step(batch)
