"""OnlineLinearProbe: trains on the step's own features, syncs under DDP, resumes exactly."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from ssl_lightning.callbacks import OnlineLinearProbe
from ssl_lightning.datamodules import Batch, ImageFolderDataModule, InMemoryDataModule
from ssl_lightning.methods.base import PretextOutput, SSLMethod
from tests.distributed_utils import run_distributed
from tests.helpers import SAMPLE, tiny_trainer


class CountingMethod(SSLMethod):
    """A tiny method that counts backbone passes; its loss pulls features toward zero."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(backbone="convnet", backbone_kwargs={"width": 4}, **kwargs)
        self.forward_calls = 0
        self.backbone.register_forward_hook(lambda *_: self._count())

    def _count(self) -> None:
        self.forward_calls += 1

    def pretext_step(self, batch: Batch) -> PretextOutput:
        features = self(batch.views[0])  # [B, D]
        return PretextOutput(features.pow(2).mean(), features, batch.labels)


class Recorder(L.Callback):
    """Keeps copies of every training step's features and labels."""

    def __init__(self) -> None:
        self.steps: list[tuple[Tensor, Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((outputs["features"].clone(), outputs["labels"].clone()))


class SyntheticDataModule(InMemoryDataModule):
    """Random 8x8 images with the given training labels (-1 = unlabeled)."""

    def __init__(self, labels: list[int], batch_size: int = 8) -> None:
        super().__init__(batch_size=batch_size, seed=0)
        self.labels = torch.tensor(labels)

    def load_split(self, split: str) -> tuple[Tensor, Tensor] | None:
        g = torch.Generator().manual_seed(len(split))
        n = len(self.labels)
        images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
        return (images, self.labels) if split == "train" else None


def _reference_probe(
    steps: list[tuple[Tensor, Tensor]], num_classes: int, lr: float, state: dict | None = None
) -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    """The probe's rule written out: zero-init head, Adam, mean CE over labeled samples."""
    head = torch.nn.Linear(steps[0][0].shape[1], num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    if state is not None:
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
    for features, labels in steps:
        keep = labels >= 0
        if not keep.any():
            continue
        optimizer.zero_grad()
        F.cross_entropy(head(features[keep]), labels[keep]).backward()
        optimizer.step()
    return head, optimizer


def test_probe_trains_on_the_step_features_with_no_extra_forward(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    recorder, probe = Recorder(), OnlineLinearProbe(lr=0.05)
    torch.manual_seed(0)
    model = CountingMethod()
    tiny_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[recorder, probe]).fit(
        model, dm
    )
    assert model.forward_calls == 4  # one backbone pass per step: the method's own
    assert probe.num_classes == 10  # from the datamodule
    head, _ = _reference_probe(recorder.steps, 10, lr=0.05)
    assert probe.head is not None
    torch.testing.assert_close(probe.head.weight, head.weight)
    torch.testing.assert_close(probe.head.bias, head.bias)
    assert probe.head.weight.abs().sum() > 0


def test_validation_accuracy_is_logged_from_the_validation_features(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    val_features: list[tuple[Tensor, Tensor]] = []

    class ValRecorder(L.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, *args) -> None:
            val_features.append((outputs["features"].clone(), outputs["labels"].clone()))

    probe = OnlineLinearProbe(lr=0.05)
    trainer = tiny_trainer(
        tmp_path, max_epochs=1, limit_train_batches=3, callbacks=[ValRecorder(), probe]
    )
    torch.manual_seed(0)
    trainer.fit(CountingMethod(), dm)
    features = torch.cat([f for f, _ in val_features])
    labels = torch.cat([y for _, y in val_features])
    assert probe.head is not None
    with torch.no_grad():
        logits = probe.head(features)
    top1 = (logits.argmax(1) == labels).float().mean()
    top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean()
    metrics = trainer.callback_metrics
    assert metrics["probe/val_acc_top1"].item() == pytest.approx(top1.item())
    assert metrics["probe/val_acc_top5"].item() == pytest.approx(top5.item())
    assert {"probe/train_acc", "probe/train_loss"} <= set(metrics)


def test_unlabeled_samples_and_batches_are_skipped(tmp_path: Path) -> None:
    # Most images unlabeled: with batches of 4, some batches hold no label at all.
    labels = [0, 1, 2] + [-1] * 29
    recorder, probe = Recorder(), OnlineLinearProbe(num_classes=3, lr=0.1)
    torch.manual_seed(0)
    tiny_trainer(tmp_path, max_steps=8, callbacks=[recorder, probe]).fit(
        CountingMethod(), SyntheticDataModule(labels, batch_size=4)
    )
    assert any((y < 0).all() for _, y in recorder.steps)  # really had an unlabeled batch
    head, _ = _reference_probe(recorder.steps, 3, lr=0.1)
    assert probe.head is not None
    torch.testing.assert_close(probe.head.weight, head.weight)

    # A step without labels is undone on the device (no sync): head and optimizer state stay
    # as a fresh Adam's, and the logged loss is NaN (there is none).
    only_unlabeled = OnlineLinearProbe(num_classes=3)
    loss, accuracy = only_unlabeled.update(torch.randn(4, 8), torch.full((4,), -1))
    assert loss.isnan() and accuracy.isnan()
    assert only_unlabeled.head is not None and not only_unlabeled.head.weight.any()
    assert only_unlabeled.optimizer is not None
    for state in only_unlabeled.optimizer.state.values():
        assert all(not value.any() for value in state.values())


def test_labels_beyond_num_classes_name_the_fix(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"num_classes=3\).*at least"):
        tiny_trainer(tmp_path, max_steps=1, callbacks=[OnlineLinearProbe(num_classes=3)]).fit(
            CountingMethod(), dm
        )
    with pytest.raises(ValueError, match="needs labels"):
        tiny_trainer(tmp_path, max_steps=1, callbacks=[OnlineLinearProbe()]).fit(
            CountingMethod(), SyntheticDataModule([-1] * 16)
        )


def test_head_is_float32_under_autocast() -> None:
    probe = OnlineLinearProbe(num_classes=4)
    features = torch.randn(8, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert probe.update(features, torch.arange(8) % 4)[0].isfinite()
    assert probe.head is not None and probe.head.weight.dtype == torch.float32
    reference, _ = _reference_probe([(features.float(), torch.arange(8) % 4)], 4, lr=1e-3)
    torch.testing.assert_close(probe.head.weight, reference.weight)


def _probe_on_rank(rank: int, world_size: int, batches: list[tuple[Tensor, Tensor]]) -> dict:
    """Each rank trains on its slice of every batch, then scores its slice of a val set."""
    probe = OnlineLinearProbe(num_classes=5, lr=0.05)
    for features, labels in batches:
        n = features.shape[0] // world_size
        sl = slice(rank * n, (rank + 1) * n)
        probe.update(features[sl], labels[sl])
    g = torch.Generator().manual_seed(7)
    val_x, val_y = torch.randn(12, 6, generator=g), torch.randint(0, 5, (12,), generator=g)
    n = 12 // world_size
    probe.update_val(val_x[rank * n : (rank + 1) * n], val_y[rank * n : (rank + 1) * n])
    assert probe.head is not None
    return {"head": probe.head.state_dict(), "val": probe.compute_val()}


def _probe_batches() -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        labels = torch.randint(0, 5, (8,), generator=g)
        labels[5:] = -1  # rank 1 holds fewer labeled samples: the mean must be global
        batches.append((torch.randn(8, 6, generator=g), labels))
    batches.append((torch.randn(8, 6, generator=g), torch.full((8,), -1)))
    return batches


def _ddp_worker(rank: int, world_size: int) -> dict[str, Any]:
    from tests.test_knn import _knn_data, _knn_on_rank

    return {
        "probe": _probe_on_rank(rank, world_size, _probe_batches()),
        "knn": _knn_on_rank(rank, world_size, *_knn_data()),
    }


@functools.cache
def two_process_results() -> list[dict[str, Any]]:
    """The probe's and the kNN monitor's 2-process checks, in one spawn (it costs seconds)."""
    return run_distributed(_ddp_worker, 2)


@pytest.mark.distributed
def test_ddp_heads_agree_and_equal_one_process_on_the_whole_batch() -> None:
    single = _probe_on_rank(0, 1, _probe_batches())
    for result in two_process_results():
        for key, value in single["head"].items():
            torch.testing.assert_close(result["probe"]["head"][key], value, rtol=1e-5, atol=1e-6)
        assert result["probe"]["val"] == pytest.approx(single["val"])
    assert single["head"]["weight"].abs().sum() > 0


def test_checkpoint_round_trip_restores_head_and_optimizer(tmp_path: Path) -> None:
    def datamodule() -> ImageFolderDataModule:
        return ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path / "cache")

    probe = OnlineLinearProbe(lr=0.05)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2)
    torch.manual_seed(0)
    tiny_trainer(
        tmp_path,
        max_steps=2,
        limit_val_batches=0,
        enable_checkpointing=True,
        callbacks=[probe, checkpoint],
    ).fit(CountingMethod(), datamodule())
    ckpt_path = next((tmp_path / "ckpt").glob("*.ckpt"))
    saved = torch.load(ckpt_path, weights_only=True)["callbacks"][probe.state_key]
    # The checkpoint holds the probe after the same step as the model (checkpointing runs last).
    for key, value in probe.state_dict()["head"].items():
        torch.testing.assert_close(saved["head"][key], value)
    assert saved["optimizer"]["state"][0]["step"] == 2

    resumed, recorder = OnlineLinearProbe(lr=0.05), Recorder()
    tiny_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[recorder, resumed]).fit(
        CountingMethod(), datamodule(), ckpt_path=ckpt_path
    )
    assert len(recorder.steps) == 1  # one step after the resume point
    head, optimizer = _reference_probe(recorder.steps, 10, lr=0.05, state=saved)
    assert resumed.head is not None and resumed.optimizer is not None
    torch.testing.assert_close(resumed.head.weight, head.weight)
    torch.testing.assert_close(resumed.head.bias, head.bias)
    for mine, theirs in zip(
        resumed.optimizer.state_dict()["state"].values(),
        optimizer.state_dict()["state"].values(),
        strict=True,
    ):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(mine[key], theirs[key])

    # A checkpoint written before the head is rebuilt keeps the loaded state.
    pending = OnlineLinearProbe()
    pending.load_state_dict(saved)
    assert pending.state_dict() == saved
