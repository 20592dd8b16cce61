"""SSLMethod's extension hooks: after_optimizer_step, progress, parameter groups, embed_views
with another encoder, the exported module, and the pretext settings a method owns."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from ssl_lightning import MaskedReconstruction, RotationPrediction, SimCLR, create_backbone
from ssl_lightning.cli import main
from ssl_lightning.datamodules import ImageFolderDataModule, PatchMask, Rotations
from ssl_lightning.export import export_backbone
from ssl_lightning.methods.simsiam import SimSiam
from ssl_lightning.momentum import ema_copy, ema_update_
from tests.helpers import SAMPLE, sample_fit_args, tiny_trainer

TINY = {"backbone": "convnet", "backbone_kwargs": {"width": 4}, "proj_hidden_dim": 16}


def _datamodule(tmp_path: Path, **kwargs: Any) -> ImageFolderDataModule:
    return ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path / "cache", **kwargs)


class Recording(SimCLR):
    """Records the hook's calls with the progress and step each saw."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[int, float]] = []

    def after_optimizer_step(self) -> None:
        self.calls.append((self.trainer.global_step, self.progress))


def test_after_optimizer_step_runs_once_per_real_step_with_the_run_progress(
    tmp_path: Path,
) -> None:
    model = Recording(**TINY)
    assert model.progress == 0.0  # no trainer yet
    trainer = tiny_trainer(tmp_path, max_steps=3, accumulate_grad_batches=2, limit_val_batches=0)
    batches = []
    trainer.callbacks.append(  # type: ignore[attr-defined]
        type("Count", (L.Callback,), {"on_train_batch_end": lambda *a: batches.append(1)})()
    )
    trainer.fit(model, _datamodule(tmp_path))
    assert len(batches) == 6  # two batches per optimizer step
    # Everything that runs during optimizer step k (0-based) of K sees progress k / K.
    assert model.calls == [(0, 0.0), (1, 1 / 3), (2, 2 / 3)]


class SlowHead(SimCLR):
    """Trains its projection head at a tenth of the backbone's learning rate."""

    def configure_param_groups(self) -> list[dict[str, Any]]:
        head = {id(p) for p in self.projector.parameters()}
        return [
            {"params": [p for p in self.parameters() if id(p) not in head]},
            {"params": list(self.projector.parameters()), "lr_factor": 0.1, "weight_decay": 0.0},
        ]


def test_overridden_param_groups_keep_their_lr_ratio_through_the_schedule(tmp_path: Path) -> None:
    model = SlowHead(**TINY, optimizer="sgd", lr=0.5, scale_lr=False, warmup_epochs=0)
    lrs: list[tuple[float, float]] = []

    class RecordLR(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
            groups = trainer.optimizers[0].param_groups
            lrs.append((groups[0]["lr"], groups[1]["lr"]))

    tiny_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[RecordLR()]).fit(
        model, _datamodule(tmp_path)
    )
    assert lrs[0] == pytest.approx((0.5, 0.05))
    for backbone_lr, head_lr in lrs:
        assert head_lr == pytest.approx(0.1 * backbone_lr)
    assert lrs[-1][0] < lrs[0][0]  # the cosine decay scales both groups


def test_embed_views_with_another_encoder() -> None:
    model = SimCLR(**TINY).eval()
    teacher = ema_copy(model.backbone)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(2.0)
    calls: list[int] = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    views = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)]
    features = model.embed_views(views, encoder=teacher)
    assert calls == [4, 2]  # one pass per resolution, through the teacher only
    torch.testing.assert_close(features, torch.cat([teacher(v) for v in views]))


class WithTeacher(SimCLR):
    """A method that keeps an EMA teacher and exports it (as DINO does)."""

    export_module = "teacher"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.teacher = ema_copy(self.backbone)

    def after_optimizer_step(self) -> None:
        ema_update_(self.teacher, self.backbone, 0.5)


def test_export_writes_the_named_export_module(tmp_path: Path) -> None:
    model = WithTeacher(**TINY)
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0, enable_checkpointing=True)
    trainer.fit(model, _datamodule(tmp_path))
    ckpt = next(tmp_path.rglob("*.ckpt"))
    exported = create_backbone("convnet", weights=export_backbone(ckpt, tmp_path / "t.pt"))
    for key, value in exported.state_dict().items():
        assert torch.equal(value, model.teacher.state_dict()[key])
    assert not torch.equal(  # the teacher, not the student, was written
        exported.state_dict()["features.0.weight"], model.backbone.state_dict()["features.0.weight"]
    )


def test_a_configured_corruption_that_disagrees_with_the_method_is_an_error(
    tmp_path: Path,
) -> None:
    model = MaskedReconstruction(
        backbone="convnet", backbone_kwargs={"width": 4}, patch_size=4, mask_ratio=0.5
    )
    dm = _datamodule(tmp_path, corruption=PatchMask(patch_size=4, mask_ratio=0.75))
    with pytest.raises(ValueError, match=r"mask_ratio=0.75.*model\.mask_ratio=0\.5"):
        tiny_trainer(tmp_path, max_steps=1).fit(model, dm)
    rotation = RotationPrediction(backbone="convnet", backbone_kwargs={"width": 4}, mode="all")
    with pytest.raises(ValueError, match=r"model\.mode"):
        rotation.check_corruption(Rotations(mode="random"))
    with pytest.raises(ValueError, match=r"data\.corruption.*model\.mask_ratio"):
        fit = sample_fit_args(tmp_path, "MaskedReconstruction", "--model.backbone=convnet")
        corruption = ["--data.corruption=PatchMask", "--data.corruption.patch_size=16"]
        main([*fit, *corruption, "--data.corruption.mask_ratio=0.75"])


def test_the_corruption_used_is_saved_with_the_run(tmp_path: Path) -> None:
    model = MaskedReconstruction(
        backbone="convnet", backbone_kwargs={"width": 4}, patch_size=4, mask_ratio=0.5
    )
    agreeing = PatchMask(patch_size=4, mask_ratio=0.5, fill="noise")  # fill is not the method's
    trainer = tiny_trainer(
        tmp_path, max_steps=1, logger=CSVLogger(tmp_path), enable_checkpointing=True
    )
    trainer.fit(model, _datamodule(tmp_path, corruption=agreeing))
    ckpt = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=False)
    assert ckpt["ImageFolderDataModule"]["corruption"] == repr(agreeing)
    assert "fill='noise'" in repr(agreeing)
    hparams = next(tmp_path.rglob("hparams.yaml")).read_text()
    assert "fill='noise'" in hparams and "mask_ratio=0.5" in hparams

    default_run = tiny_trainer(tmp_path / "default", max_steps=1, enable_checkpointing=True)
    default_run.fit(SimCLR(**TINY), _datamodule(tmp_path))
    ckpt = torch.load(next((tmp_path / "default").rglob("*.ckpt")), weights_only=False)
    assert ckpt["ImageFolderDataModule"]["corruption"].startswith("SimCLRViews(")


def test_fixed_lr_groups_keep_their_rate_while_the_others_follow_the_schedule(
    tmp_path: Path,
) -> None:
    model = SimSiam(
        backbone="convnet",
        backbone_kwargs={"width": 4},
        proj_hidden_dim=16,
        proj_output_dim=16,
        pred_hidden_dim=8,
        lr=0.05,
        scale_lr=False,
    )
    seen: list[list[tuple[float, bool]]] = []

    class RecordLR(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
            groups = trainer.optimizers[0].param_groups
            seen.append([(g["lr"], bool(g.get("fixed_lr"))) for g in groups])

    tiny_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[RecordLR()]).fit(
        model, _datamodule(tmp_path)
    )
    fixed = {
        id(p) for g in model.configure_param_groups() if g.get("fixed_lr") for p in g["params"]
    }
    assert fixed == {id(p) for p in model.predictor.parameters()}
    for step, groups in enumerate(seen):
        # SimSiam's schedule: no warmup, cosine decay from 1 to 0 over the 4 steps.
        expected = 0.05 * 0.5 * (1 + math.cos(math.pi * step / 4))
        for lr, is_fixed in groups:
            assert lr == pytest.approx(0.05 if is_fixed else expected)
