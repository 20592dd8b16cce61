"""TrainingCurves: a PNG of loss and probe accuracy per epoch in the logger's directory."""

from __future__ import annotations

import builtins
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from ssl_lightning.callbacks import OnlineLinearProbe, TrainingCurves, curves
from ssl_lightning.datamodules import ImageFolderDataModule
from tests.helpers import SAMPLE, tiny_trainer
from tests.test_linear_probe import CountingMethod


def test_curves_png_in_the_log_dir_with_per_epoch_values(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    losses: list[float] = []

    class LossRecorder(TrainingCurves):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    curve = LossRecorder()
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=2,
        limit_train_batches=3,
        logger=CSVLogger(tmp_path),
        callbacks=[OnlineLinearProbe(), curve],
    )
    torch.manual_seed(0)
    trainer.fit(CountingMethod(), ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path))
    assert curve.path == Path(trainer.log_dir) / "training_curves.png"
    assert curve.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert curve.history["epoch"] == [1, 2]
    assert curve.history["loss"] == pytest.approx([sum(losses[:3]) / 3, sum(losses[3:]) / 3])
    assert curve.history["probe/val_acc_top1"][-1] == pytest.approx(
        trainer.callback_metrics["probe/val_acc_top1"].item()
    )
    assert curve.state_dict()["history"] == curve.history


def test_without_matplotlib_it_warns_once_and_skips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr(curves, "_warned", False)
    history = {"epoch": [1], "loss": [1.0]}
    with pytest.warns(UserWarning, match=r"ssl-lightning\[plot\]"):
        assert curves.plot_curves(history, tmp_path / "a.png") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert curves.plot_curves(history, tmp_path / "b.png") is None
    assert not list(tmp_path.iterdir())
