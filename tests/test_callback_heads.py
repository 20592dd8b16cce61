"""The online probe and the kNN monitor reading the projector (``head=``) instead of the
backbone: against a probe and a kNN written out on projector outputs computed by hand, side by
side with monitors of the backbone, through a checkpoint, and without a device sync."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from ssl_lightning import SimCLR
from ssl_lightning.callbacks import KNNMonitor, OnlineLinearProbe
from ssl_lightning.cli import main
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.knn import knn_predict
from tests.helpers import SAMPLE, tiny_trainer
from tests.test_linear_probe import _reference_probe
from tests.test_no_sync import CountedData, StopCounting, SyncCounter

# The backbone gives 8 features; the projector maps them to 12 (its first Linear), then 16.
TINY = {"backbone": "convnet", "backbone_kwargs": {"width": 4, "depth": 2}}
HIDDEN, PROJECTED = 12, 16


def _model() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(**TINY, proj_hidden_dim=HIDDEN, proj_output_dim=PROJECTED)


def _data(tmp_path: Path) -> ImageFolderDataModule:
    """120 training images (3 whole batches of 32 an epoch); the 30 test images validate."""
    return ImageFolderDataModule(SAMPLE, batch_size=32, cache_dir=tmp_path / "cache")


def _project(model: SimCLR, features: Tensor) -> Tensor:
    """``features`` through a copy of the projector in eval mode: the model is left alone."""
    projector = copy.deepcopy(model.projector).eval()
    with torch.no_grad():
        return projector(features)


class Recorder(L.Callback):
    """Keeps each training step's features projected by the projector of that moment (after
    the step's update, when ``on_train_batch_end`` runs), and the validation features."""

    def __init__(self) -> None:
        self.train: list[tuple[Tensor, Tensor]] = []
        self.val: list[tuple[Tensor, Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        projected = _project(pl_module, outputs["features"])
        self.train.append((projected, outputs["labels"].clone()))

    def on_validation_batch_end(self, trainer, pl_module, outputs, *args) -> None:
        self.val.append((outputs["features"].clone(), outputs["labels"].clone()))

    def val_rows(self) -> tuple[Tensor, Tensor]:
        return torch.cat([f for f, _ in self.val]), torch.cat([y for _, y in self.val])


def test_a_probe_of_the_projector_trains_on_its_output(tmp_path: Path) -> None:
    recorder = Recorder()
    probes = [
        OnlineLinearProbe(lr=0.05),
        OnlineLinearProbe(lr=0.05, head="projector"),
        OnlineLinearProbe(lr=0.05, head="projector.layers.0"),  # the first Linear only
    ]
    trainer = tiny_trainer(tmp_path, max_steps=3, callbacks=[recorder, *probes])
    model = _model()
    trainer.fit(model, _data(tmp_path))
    widths = [p.head.in_features if p.head is not None else None for p in probes]
    assert widths == [8, PROJECTED, HIDDEN]

    # The probe's rule, written out on projector outputs computed by hand.
    head, _ = _reference_probe(recorder.train, 10, lr=0.05)
    assert probes[1].head is not None
    torch.testing.assert_close(probes[1].head.weight, head.weight)
    torch.testing.assert_close(probes[1].head.bias, head.bias)
    assert head.weight.abs().sum() > 0

    features, labels = recorder.val_rows()
    with torch.no_grad():
        logits = probes[1].head(_project(model, features))  # [N, 10]
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    top1 = (logits.argmax(1) == labels).float().mean().item()
    assert metrics["probe_projector/val_acc_top1"] == pytest.approx(top1)
    for prefix in ("probe", "probe_projector", "probe_projector.layers.0"):
        assert {f"{prefix}/train_acc", f"{prefix}/val_acc_top1"} <= set(metrics), prefix
    assert model.projector.training  # the probe put the projector back in training mode

    trainer.test(model, _data(tmp_path))
    assert "test/probe_projector_acc_top1" in trainer.callback_metrics


def test_knn_of_the_projector_scores_projected_banks_and_queries(tmp_path: Path) -> None:
    recorder = Recorder()
    monitors = [
        KNNMonitor(k=5),
        KNNMonitor(k=5, head="projector"),
        KNNMonitor(k=5, head="projector", bank="augmented", prefix="knn_augmented"),
    ]
    trainer = tiny_trainer(tmp_path, max_steps=3, callbacks=[recorder, *monitors])
    model = _model()
    data = _data(tmp_path)
    trainer.fit(model, data)
    # One validation, after the last step: the model now is the one that embedded the bank.
    assert data.train_set is not None
    images, bank_labels = data.train_set.images, data.train_set.labels
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    model.eval()
    with torch.no_grad():
        clean = model((images.float() / 255 - mean) / std)  # [120, 8]
    features, labels = recorder.val_rows()

    def accuracy(queries: Tensor, bank: Tensor, bank_labels: Tensor) -> float:
        predicted = knn_predict(queries, F.normalize(bank, dim=1), bank_labels, 10, k=5)
        return (predicted == labels).float().mean().item()

    augmented = torch.cat([z for z, _ in recorder.train])
    augmented_labels = torch.cat([y for _, y in recorder.train])
    expected = {
        "knn/val_acc": accuracy(features, clean, bank_labels),
        "knn_projector/val_acc": accuracy(
            _project(model, features), _project(model, clean), bank_labels
        ),
        "knn_augmented/val_acc": accuracy(_project(model, features), augmented, augmented_labels),
    }
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if k in expected}
    assert metrics == pytest.approx(expected)


@pytest.mark.parametrize(
    ("callback", "match"),
    [
        (
            OnlineLinearProbe(head="projektor"),
            r"OnlineLinearProbe\(head='projektor'\): SimCLR has no submodule 'projektor'; "
            r"expected one of \['backbone', 'projector'\]",
        ),
        (
            KNNMonitor(head="projector.layerz"),
            r"KNNMonitor\(head='projector.layerz'\): SimCLR has no submodule "
            r"'projector.layerz'; expected one of \['projector.layers'\]",
        ),
    ],
    ids=["probe", "knn-dotted"],
)
def test_a_missing_head_fails_at_setup_naming_the_children(
    tmp_path: Path, callback: L.Callback, match: str
) -> None:
    recorder = Recorder()
    trainer = tiny_trainer(tmp_path, max_steps=1, callbacks=[recorder, callback])
    with pytest.raises(ValueError, match=match):
        trainer.fit(_model(), _data(tmp_path))
    assert recorder.train == []  # before the first step


@pytest.mark.parametrize("make", [OnlineLinearProbe, KNNMonitor])
def test_a_head_on_other_stages_is_refused(make: Any) -> None:
    with pytest.raises(ValueError, match=r"head='projector'.*stages='all'; set stages='last'"):
        make(head="projector", stages="all")


def test_probes_of_backbone_and_projector_resume_from_one_checkpoint(tmp_path: Path) -> None:
    probes = [OnlineLinearProbe(lr=0.05), OnlineLinearProbe(lr=0.05, head="projector")]
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2)
    # Two kNN monitors too: callbacks of one class on one trainer need distinct state keys.
    monitors = [KNNMonitor(k=5), KNNMonitor(k=5, head="projector")]
    tiny_trainer(
        tmp_path,
        max_steps=2,
        limit_val_batches=0,
        enable_checkpointing=True,
        callbacks=[*probes, *monitors, checkpoint],
    ).fit(_model(), _data(tmp_path))
    ckpt_path = next((tmp_path / "ckpt").glob("*.ckpt"))
    saved = torch.load(ckpt_path, weights_only=True)["callbacks"]
    # Without a head the key is the one checkpoints held before heads existed.
    keys = ["OnlineLinearProbe{'prefix': 'probe'}"]
    keys.append("OnlineLinearProbe{'prefix': 'probe_projector', 'head': 'projector'}")
    assert [p.state_key for p in probes] == keys
    assert [saved[key]["num_features"] for key in keys] == [8, PROJECTED]

    recorder = Recorder()
    resumed = [OnlineLinearProbe(lr=0.05), OnlineLinearProbe(lr=0.05, head="projector")]
    tiny_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[recorder, *resumed]).fit(
        _model(), _data(tmp_path), ckpt_path=ckpt_path
    )
    assert len(recorder.train) == 1  # one step after the resume point
    for probe in resumed:
        assert probe.optimizer is not None
        assert probe.optimizer.state_dict()["state"][0]["step"] == 3  # 2 restored + 1
    head, _ = _reference_probe(recorder.train, 10, lr=0.05, state=saved[keys[1]])
    assert resumed[1].head is not None
    torch.testing.assert_close(resumed[1].head.weight, head.weight)


def test_the_command_line_sets_the_head_of_each_callback(capsys) -> None:
    args = ["fit", "--model=SimCLR", "--data=ImageFolderDataModule", f"--data.data_dir={SAMPLE}"]
    args += ["--trainer.callbacks+=OnlineLinearProbe", "--trainer.callbacks.head=projector"]
    args += ["--trainer.callbacks+=KNNMonitor", "--trainer.callbacks.head=projector"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert printed.count("head: projector") == 2


def test_reading_the_projector_adds_no_device_sync_to_a_step(tmp_path: Path) -> None:
    counter = SyncCounter()
    data = CountedData(SAMPLE, batch_size=8, cache_dir=tmp_path / "cache", seed=0)
    data.counter = counter
    stop = StopCounting(counter)
    callbacks = [
        OnlineLinearProbe(head="projector"),
        KNNMonitor(k=5, bank="augmented", head="projector"),
        stop,
    ]
    trainer = tiny_trainer(tmp_path, max_steps=3, callbacks=callbacks, log_every_n_steps=1000)
    with counter:
        trainer.fit(_model(), data)
    assert stop.steps == 3
    assert counter.calls == [], "\n".join(sorted(set(counter.calls)))
