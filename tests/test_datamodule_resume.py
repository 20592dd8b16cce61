"""A real Trainer resumed from a checkpoint sees the same batches, views and losses as an
uninterrupted run: the shuffle order, the mid-epoch position and the augmentation stream are
all restored from the checkpoint."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ssl_lightning import SimCLR
from ssl_lightning.datamodules import ImageFolderDataModule, SimCLRViews, ViewTransform
from tests.helpers import SAMPLE

TINY = {"backbone": "convnet", "backbone_kwargs": {"width": 8}, "proj_hidden_dim": 32}
BATCHES_PER_EPOCH = 7  # 120 training images, batch 16, last partial batch dropped


class Recorder(Callback):
    """Keeps, per optimizer step, the loss and the first view of the batch trained on."""

    def __init__(self) -> None:
        self.steps: dict[int, tuple[float, torch.Tensor, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps[trainer.global_step] = (
            float(outputs["loss"]),
            batch.views[0].clone(),
            batch.labels.clone(),
        )


class StopAt(Callback):
    """Ends the run after ``step`` optimizer steps, as a crash or a time limit would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def _fit(tmp_path: Path, max_steps: int, stop: int | None = None, ckpt_path=None) -> Recorder:
    """Trains SimCLR on the real sample; with ``stop``, checkpoints and ends at that step."""
    L.seed_everything(0, verbose=False)
    recorder = Recorder()
    callbacks: list[Callback] = [recorder]
    if stop is not None:
        callbacks += [
            StopAt(stop),
            ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=stop, save_top_k=-1),
        ]
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        default_root_dir=tmp_path,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=stop is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    data = ImageFolderDataModule(
        SAMPLE,
        batch_size=16,
        cache_dir=tmp_path / "cache",
        corruption=SimCLRViews(view=ViewTransform(size=16)),
    )
    trainer.fit(SimCLR(**TINY, lr=0.05), data, ckpt_path=ckpt_path)
    return recorder


@pytest.mark.parametrize(
    "stop", [BATCHES_PER_EPOCH + 3, BATCHES_PER_EPOCH], ids=["mid-epoch", "epoch-end"]
)
def test_resumed_run_continues_the_same_batches_views_and_losses(tmp_path: Path, stop) -> None:
    total = 2 * BATCHES_PER_EPOCH + 2  # the resumed part also crosses an epoch boundary
    uninterrupted = _fit(tmp_path / "a", total)
    first = _fit(tmp_path / "b", total, stop=stop)
    (ckpt,) = (tmp_path / "b" / "ckpt").glob("*.ckpt")
    resumed = _fit(tmp_path / "c", total, ckpt_path=ckpt)

    assert sorted(first.steps) == list(range(1, stop + 1))
    assert sorted(resumed.steps) == list(range(stop + 1, total + 1))
    for step in range(1, total + 1):
        loss, view, labels = uninterrupted.steps[step]
        run = first if step <= stop else resumed
        other_loss, other_view, other_labels = run.steps[step]
        assert torch.equal(other_labels, labels), f"step {step}: another batch of images"
        assert torch.equal(other_view, view), f"step {step}: other views"
        assert other_loss == loss, f"step {step}: loss {other_loss} != {loss}"
    # The order changes between epochs, and so do the views of the same batch position.
    assert not torch.equal(uninterrupted.steps[1][2], uninterrupted.steps[8][2])
