"""Tests named for plausible bugs that once passed the rest of the suite: each fails when its bug
is planted (an edited image served stale from the cache, an export written straight to its
path, a top-left crop, a learning rate blind to the world size, training curves that restart
after a resume, kNN votes that overflow at small temperatures), against a reference that does
not come from the code under test."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from PIL import Image
from torchvision.transforms import InterpolationMode

from ssl_lightning import SimCLR
from ssl_lightning.callbacks import TrainingCurves
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.datamodules.base import InMemoryDataModule
from ssl_lightning.export import export_backbone
from ssl_lightning.knn import knn_predict
from ssl_lightning.methods import schedule
from tests.helpers import SAMPLE, tiny_trainer
from tests.test_evaluation import simclr_checkpoint  # noqa: F401  (a shared fixture)
from tests.test_linear_probe import CountingMethod


def noise_png(path: Path, width: int, height: int, seed: int) -> np.ndarray:
    """Writes a random RGB PNG (lossless, so decoding gives these pixels back); returns them."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1)


# --- the image-folder cache ------------------------------------------------------------------


def test_an_edited_image_is_decoded_again_not_served_from_the_cache(tmp_path: Path) -> None:
    # Bug: a cache key of the file names alone serves the old pixels of an edited image.
    root, cache = tmp_path / "images", tmp_path / "cache"
    first = noise_png(root / "train" / "a" / "0.png", 8, 8, seed=0)
    noise_png(root / "train" / "a" / "1.png", 8, 8, seed=1)
    ImageFolderDataModule(root, cache_dir=cache).setup("fit")
    edited = root / "train" / "a" / "1.png"
    stat = edited.stat()
    new = noise_png(edited, 8, 8, seed=2)  # same name, same size, other pixels
    # A later modification time, as an editor saving seconds later leaves it.
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = ImageFolderDataModule(root, cache_dir=cache)
    again.setup("fit")
    assert again.train_set is not None
    assert torch.equal(again.train_set.images[0], chw(first))
    assert torch.equal(again.train_set.images[1], chw(new))


def test_the_cache_goes_where_ssl_lightning_cache_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_LIGHTNING_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dm = ImageFolderDataModule(SAMPLE)  # no cache_dir: the environment decides
    dm.setup("fit")
    assert dm.cache_dir == tmp_path / "env-cache"
    assert len(list((tmp_path / "env-cache").glob("*.u8"))) == 2  # train and test
    assert not (tmp_path / "xdg").exists()
    monkeypatch.delenv("SSL_LIGHTNING_CACHE")
    assert ImageFolderDataModule(SAMPLE).cache_dir == tmp_path / "xdg" / "ssl_lightning"


# --- image folders: splits and resizing --------------------------------------------------------


def test_validation_reads_val_when_there_is_no_test_folder(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for i in range(4):
        noise_png(root / "train" / "a" / f"{i}.png", 8, 8, seed=i)
        noise_png(root / "train" / "b" / f"{i}.png", 8, 8, seed=10 + i)
    val = [noise_png(root / "val" / "b" / f"{i}.png", 8, 8, seed=20 + i) for i in range(3)]
    dm = ImageFolderDataModule(root, use_cache=False)
    dm.setup("fit")
    assert dm.val_set is not None and dm.train_set is not None
    assert len(dm.train_set) == 8
    assert dm.val_set.labels.tolist() == [1, 1, 1]  # val/b is train's class 1
    expected = sorted(chw(p).flatten().tolist() for p in val)
    assert sorted(img.flatten().tolist() for img in dm.val_set.images) == expected
    # A test/ folder wins over val/.
    noise_png(root / "test" / "a" / "0.png", 8, 8, seed=30)
    both = ImageFolderDataModule(root, use_cache=False)
    both.setup("fit")
    assert both.val_set is not None and both.val_set.labels.tolist() == [0]


@pytest.mark.parametrize(("width", "height"), [(60, 40), (40, 60), (48, 32)])
def test_folder_images_are_center_cropped_as_torchvision_does(
    tmp_path: Path, width: int, height: int
) -> None:
    # Bug: a top-left crop after resizing. The reference is torchvision's per-image Resize
    # (shorter side) then CenterCrop on the PIL image. Sizes where both round the resized side
    # and the crop offset alike, so the pixels agree exactly.
    path = tmp_path / "images" / "train" / "a" / "0.png"
    noise_png(path, width, height, seed=width)
    dm = ImageFolderDataModule(tmp_path / "images", image_size=20, use_cache=False)
    dm.setup("fit")
    assert dm.train_set is not None
    with Image.open(path) as img:
        resized = TF.resize(img.convert("RGB"), 20, interpolation=InterpolationMode.BILINEAR)
        expected = TF.pil_to_tensor(TF.center_crop(resized, [20, 20]))
    assert torch.equal(dm.train_set.images[0], expected)


# --- export ------------------------------------------------------------------------------------


def test_a_failed_export_leaves_the_previous_file_whole(
    simclr_checkpoint: tuple[Path, SimCLR],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Bug: writing straight to the output path, so a failure mid-write (a full disk, a kill)
    # leaves a truncated file where the previous weights were.
    ckpt, _ = simclr_checkpoint
    out = export_backbone(ckpt, tmp_path / "backbone.pt")
    before = out.read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(half)
        else:
            f.write(half)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export_backbone(ckpt, out, overwrite=True)
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert torch.load(out, weights_only=True)["name"] == "convnet"
    assert [p.name for p in tmp_path.iterdir()] == ["backbone.pt"]  # no temporary left


# --- the learning rate follows the global batch -----------------------------------------------


@pytest.mark.parametrize(("world_size", "accumulate"), [(1, 1), (2, 1), (4, 3)])
def test_scaled_lr_follows_the_global_batch(world_size: int, accumulate: int) -> None:
    # Goyal et al. 2017: lr x (per-process batch x processes x accumulation) / 256. The stand-in
    # has the three attributes of a Lightning Trainer the rule reads.
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(batch_size=64),
        world_size=world_size,
        accumulate_grad_batches=accumulate,
    )
    expected = 0.3 * (64 * world_size * accumulate) / 256
    assert schedule.scaled_lr(0.3, trainer) == pytest.approx(expected)


class RandomImages(InMemoryDataModule):
    """64 random 8x8 training images, no validation split."""

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if split == "val":
            return None
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g), torch.zeros(
            64, dtype=torch.long
        )


class PeakLR(Callback):
    """Saves each rank's peak learning rate (before the schedule's factor) and world size."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        group = trainer.optimizers[0].param_groups[0]
        state = {"lr": group["initial_lr"], "world_size": trainer.world_size}
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}.pt")


@pytest.mark.distributed
def test_a_two_process_run_scales_the_lr_by_the_global_batch(tmp_path: Path) -> None:
    # A real 2-process DDP run (gloo): 8 images per process x 2 processes x 2 accumulated
    # batches = a global batch of 32.
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        max_steps=1,
        accumulate_grad_batches=2,
        default_root_dir=tmp_path,
        logger=False,
        callbacks=[PeakLR(tmp_path)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = SimCLR(backbone="convnet", backbone_kwargs={"width": 4}, proj_hidden_dim=8, lr=0.3)
    trainer.fit(model, RandomImages(batch_size=8, seed=0))
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert state["world_size"] == 2
        assert state["lr"] == pytest.approx(0.3 * 32 / 256)


# --- training curves across a resume -----------------------------------------------------------


class StopAfterFirstEpoch(Callback):
    """Ends the run after its first epoch, as a crash would, keeping the 2-epoch schedule."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.should_stop = True


def _curves_run(root: Path, stop: bool = False, ckpt: Path | None = None) -> TrainingCurves:
    L.seed_everything(0, verbose=False)
    curves = TrainingCurves()
    callbacks: list[Callback] = [curves, ModelCheckpoint(root / "ckpt", save_last=True)]
    if stop:
        callbacks.append(StopAfterFirstEpoch())
    trainer = tiny_trainer(
        root,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        enable_checkpointing=True,
        callbacks=callbacks,
    )
    data = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=root.parent / "cache")
    trainer.fit(CountingMethod(), data, ckpt_path=ckpt)
    return curves


def test_training_curves_continue_after_a_resume(tmp_path: Path) -> None:
    # Bug: a load_state_dict that keeps nothing draws only the epochs after the resume.
    straight = _curves_run(tmp_path / "straight")
    first = _curves_run(tmp_path / "first", stop=True)
    assert first.history["epoch"] == [1]
    resumed = _curves_run(tmp_path / "resumed", ckpt=tmp_path / "first/ckpt/last.ckpt")
    assert straight.history["epoch"] == resumed.history["epoch"] == [1, 2]
    assert resumed.history["loss"] == pytest.approx(straight.history["loss"])


# --- kNN votes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-3, 5e-3, 0.1])
def test_knn_votes_do_not_overflow_at_small_temperatures(temperature: float) -> None:
    # Bug: weights exp(sim / T) overflow float32 (exp(88.7)) below T of about 0.011, several
    # classes tie at inf and argmax takes the first. Each query is a bank entry nudged a little:
    # its own entry is by far the nearest, so a small temperature must vote for its class.
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(60, 16, generator=g), dim=1)
    labels = torch.arange(60) % 6
    queries = bank[:30] + 0.01 * torch.randn(30, 16, generator=g)
    predicted = knn_predict(queries, bank, labels, num_classes=6, k=20, temperature=temperature)
    assert predicted.tolist() == labels[:30].tolist()
