"""A non-finite loss stops the run with an error naming the step, the method and the causes
(read from a device flag, not synced every step), or, with ``on_nonfinite="skip"``, its step
leaves the parameters untouched and is counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ssl_lightning import BYOL, LinearEvaluation, SimCLR, methods
from ssl_lightning.cli import main
from ssl_lightning.corruptions import PretextModel
from ssl_lightning.datamodules import Batch, ImageFolderDataModule
from ssl_lightning.methods import PretextOutput, SSLMethod
from tests.helpers import SAMPLE, sample_fit_args, tiny_trainer

TINY = {"backbone": "convnet", "backbone_kwargs": {"width": 4}, "proj_hidden_dim": 16}


class NaNAt(SimCLR):
    """SimCLR whose loss is NaN during the optimizer steps in ``bad_steps``."""

    def __init__(self, bad_steps: tuple[int, ...] = (2,), **kwargs: Any) -> None:
        super().__init__(**{**TINY, **kwargs})
        self.bad_steps = bad_steps

    def pretext_step(self, batch: Batch) -> PretextOutput:
        out = super().pretext_step(batch)
        if self.trainer.global_step in self.bad_steps:
            out.loss = out.loss * float("nan")
        return out


class Snapshots(L.Callback):
    """The backbone's parameters before every training batch and after the last one."""

    def __init__(self) -> None:
        self.params: list[list[torch.Tensor]] = []

    def _take(self, pl_module: L.LightningModule) -> None:
        self.params.append([p.detach().clone() for p in pl_module.backbone.parameters()])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._take(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._take(pl_module)


def _data(tmp_path: Path) -> ImageFolderDataModule:
    return ImageFolderDataModule(SAMPLE, batch_size=8, cache_dir=tmp_path / "cache", seed=0)


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_nan_loss_stops_the_run_naming_the_first_step_and_the_causes(tmp_path: Path) -> None:
    model = NaNAt(bad_steps=(2, 3, 4))
    with pytest.raises(FloatingPointError) as info:
        tiny_trainer(tmp_path, max_steps=6).fit(model, _data(tmp_path))
    message = str(info.value)
    assert "NaNAt" in message and "step 2" in message
    assert "model.lr" in message and "trainer.precision" in message
    assert "model.on_nonfinite=skip" in message


def test_the_flag_is_read_every_check_every_batches_not_every_step(tmp_path: Path) -> None:
    model = NaNAt(bad_steps=(1,))
    model.nonfinite.check_every = 4
    seen: list[int] = []

    class StepsDone(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
            seen.append(trainer.global_step)

    with pytest.raises(FloatingPointError, match="step 1"):
        tiny_trainer(tmp_path, max_steps=20, callbacks=[StepsDone()]).fit(model, _data(tmp_path))
    assert seen == [1, 2, 3, 4]  # stopped at the first check after the bad step, not at it


def test_no_checkpoint_of_nan_weights_is_written(tmp_path: Path) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1)
    trainer = tiny_trainer(
        tmp_path, max_steps=4, enable_checkpointing=True, callbacks=[checkpoints]
    )
    with pytest.raises(FloatingPointError, match="step 2"):
        trainer.fit(NaNAt(bad_steps=(2, 3)), _data(tmp_path))
    names = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert names and all("step=3" not in n and "step=4" not in n for n in names)


def test_a_huge_learning_rate_fails_from_the_command_line(tmp_path: Path) -> None:
    args = sample_fit_args(
        tmp_path,
        "SimCLR",
        "--model.backbone=convnet",
        "--model.backbone_kwargs={width: 8}",
        "--model.proj_hidden_dim=32",
        "--model.lr=1e30",  # the weights overflow within a few steps
    )
    args = [a if a != "--trainer.max_steps=2" else "--trainer.max_steps=8" for a in args]
    with pytest.raises(FloatingPointError, match=r"SimCLR.*non-finite.*model.lr=1e\+30"):
        main(args)


def test_skip_leaves_the_parameters_of_a_bad_step_untouched_and_counts_it(
    tmp_path: Path,
) -> None:
    model = NaNAt(bad_steps=(1, 3), on_nonfinite="skip")
    snapshots = Snapshots()
    with pytest.warns(UserWarning, match="non-finite loss at step 1, skipped"):
        tiny_trainer(tmp_path, max_steps=5, callbacks=[snapshots]).fit(model, _data(tmp_path))
    before = snapshots.params
    assert len(before) == 6  # before each of the 5 steps, and at the end
    changed = [not _same(before[i], before[i + 1]) for i in range(5)]
    assert changed == [True, False, True, False, True]
    assert model.nonfinite.skipped_steps == 2
    assert model.trainer.callback_metrics["train/skipped_steps"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_also_skips_the_ema_update(tmp_path: Path) -> None:
    class BYOLNaNAt(BYOL):
        def pretext_step(self, batch: Batch) -> PretextOutput:
            out = super().pretext_step(batch)
            if self.trainer.global_step == 1:
                out.loss = out.loss * float("inf")
            return out

    model = BYOLNaNAt(**TINY, on_nonfinite="skip")
    teacher: list[list[torch.Tensor]] = []

    class TeacherSnapshots(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
            teacher.append([p.detach().clone() for p in pl_module.teacher_backbone.parameters()])

    trainer = tiny_trainer(tmp_path, max_steps=3, callbacks=[TeacherSnapshots()])
    with pytest.warns(UserWarning, match="skipped"):
        trainer.fit(model, _data(tmp_path))
    assert not _same(teacher[0], teacher[2]) and _same(teacher[0], teacher[1])


def test_an_unknown_policy_names_the_key() -> None:
    with pytest.raises(ValueError, match="model.on_nonfinite"):
        SimCLR(**TINY, on_nonfinite="ignore")  # type: ignore[arg-type]


class NaNWithOverrides(NaNAt):
    """Overrides every Lightning hook the guard uses, none of them calling ``super()``."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        pass

    def on_train_epoch_end(self) -> None:
        pass

    def on_train_end(self) -> None:
        pass

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pass


def test_hook_overrides_without_super_cannot_switch_the_guard_off(tmp_path: Path) -> None:
    model = NaNWithOverrides(bad_steps=(1,))
    model.nonfinite.check_every = 2
    with pytest.raises(FloatingPointError, match="NaNWithOverrides.*step 1"):
        tiny_trainer(tmp_path, max_steps=6).fit(model, _data(tmp_path))
    skipping = NaNWithOverrides(bad_steps=(1,), on_nonfinite="skip")
    with pytest.warns(UserWarning, match="skipped"):
        tiny_trainer(tmp_path, max_steps=3).fit(skipping, _data(tmp_path))
    assert skipping.nonfinite.skipped_steps == 1


@pytest.mark.parametrize("name", sorted(methods.method_classes()))
def test_every_method_attaches_its_guard_and_is_a_pretext_model(name: str) -> None:
    cls = methods.method_classes()[name]
    assert cls.configure_callbacks is SSLMethod.configure_callbacks
    # What isinstance(model, PretextModel) checks on an instance, checked on the class.
    members = ("export_module", "default_corruption", "check_corruption", "preview")
    assert all(hasattr(cls, member) for member in members)


def test_a_method_and_linear_evaluation_are_pretext_models() -> None:
    assert isinstance(SimCLR(**TINY), PretextModel)
    tiny = {"backbone": "convnet", "backbone_kwargs": {"width": 4}}
    assert isinstance(LinearEvaluation(**tiny), PretextModel)
