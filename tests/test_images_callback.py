"""PreviewImages: what each method draws, un-normalization, PNG and TensorBoard outputs."""

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from PIL import Image

from ssl_lightning import MaskedReconstruction, RotationPrediction, SimCLR
from ssl_lightning.callbacks import PreviewImages
from ssl_lightning.callbacks.images import preview_rows
from ssl_lightning.datamodules import (
    Batch,
    ImageFolderDataModule,
    PatchMask,
    Rotations,
    SimCLRViews,
)
from tests.helpers import SAMPLE

CONV = {"backbone": "convnet", "backbone_kwargs": {"width": 8}}


class _Board:
    def __init__(self) -> None:
        self.images: list[tuple[str, torch.Tensor, int]] = []

    def add_image(self, tag: str, image: torch.Tensor, global_step: int) -> None:
        self.images.append((tag, image, global_step))


class FakeTensorBoardLogger(Logger):
    """A logger whose experiment has TensorBoard's ``add_image``."""

    def __init__(self) -> None:
        super().__init__()
        self.board = _Board()

    @property
    def name(self) -> str:
        return "fake"

    @property
    def version(self) -> int:
        return 0

    @property
    def experiment(self) -> _Board:
        return self.board

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def _fit(tmp_path: Path, model: L.LightningModule, callback: PreviewImages, **kwargs) -> None:
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path / "cache")
    trainer = L.Trainer(
        accelerator="cpu",
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[callback],
        **kwargs,
    )
    trainer.fit(model, dm)


def test_render_unnormalizes_and_lays_out_one_row_per_name() -> None:
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    images = torch.rand(3, 3, 4, 4)
    normalized = (images - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    callback = PreviewImages(num_images=2, scale=1)
    grid = callback.render({"a": normalized, "b": normalized.flip(0)}, mean, std)
    # Two rows of two 4x4 images with 2-pixel white padding, after a label column.
    assert grid.shape[1] == 2 + 2 * (4 + 2)
    width = 2 + 2 * (4 + 2)
    label = grid.shape[2] - width
    first = grid[:, 2:6, label + 2 : label + 6]  # row "a", image 0
    torch.testing.assert_close(first, images[0], atol=1 / 255, rtol=0)
    second_row = grid[:, 8:12, label + 8 : label + 12]  # row "b", image 1 = images[1]
    torch.testing.assert_close(second_row, images[1], atol=1 / 255, rtol=0)
    assert (grid[:, :, :label] < 0.5).any()  # the row names are drawn in the margin


def test_masked_reconstruction_png_in_the_csv_log_dir(tmp_path: Path) -> None:
    torch.manual_seed(0)
    callback = PreviewImages(every_n_epochs=1, num_images=4)
    logger = CSVLogger(tmp_path, name="logs")
    model = MaskedReconstruction(**CONV)
    _fit(tmp_path, model, callback, max_epochs=2, limit_train_batches=2, logger=logger)
    names = [p.name for p in callback.saved]
    assert names == ["preview-epoch=0-step=2.png", "preview-epoch=1-step=4.png"]
    assert all(p.parent == Path(logger.log_dir) / "images" for p in callback.saved)
    png = np.asarray(Image.open(callback.saved[-1]))
    pad, side = 2, 32 * 2  # scale 2
    assert png.shape[0] == pad + 3 * (side + pad)  # input / masked / reconstruction


def test_every_n_epochs_and_a_final_drawing_at_max_steps(tmp_path: Path) -> None:
    callback = PreviewImages(every_n_epochs=2, num_images=2)
    model = MaskedReconstruction(**CONV)
    _fit(tmp_path, model, callback, max_steps=5, limit_train_batches=3, logger=False)
    # Epoch 0 (step 3) is skipped; training stops in epoch 1 at step 5 and draws then.
    assert [p.name for p in callback.saved] == ["preview-epoch=1-step=5.png"]
    assert callback.saved[0].parent == tmp_path / "images"


def test_tensorboard_logger_gets_an_image(tmp_path: Path) -> None:
    logger = FakeTensorBoardLogger()
    callback = PreviewImages(num_images=3)
    model = RotationPrediction(**CONV)
    _fit(tmp_path, model, callback, max_steps=2, logger=logger)
    assert callback.saved == []
    [(tag, image, step)] = logger.board.images
    assert tag == "preview" and step == 2
    assert image.shape[0] == 3 and image.shape[1] == 2 + 4 * (64 + 2)  # four rotations
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_each_method_names_its_rows() -> None:
    images, labels, g = torch.rand(4, 3, 32, 32), torch.arange(4), torch.Generator()
    masked = MaskedReconstruction(**CONV).eval()
    assert list(preview_rows(masked, PatchMask()(images, labels, g))) == [
        "input",
        "masked",
        "reconstruction",
    ]
    rotation = RotationPrediction(**CONV)
    rows = preview_rows(rotation, Rotations()(images, labels, g))
    assert list(rows) == ["rotated 0", "rotated 90", "rotated 180", "rotated 270"]
    torch.testing.assert_close(rows["rotated 90"][2], torch.rot90(images[2], 1, dims=(1, 2)))
    assert list(preview_rows(rotation, Rotations("random")(images, labels, g))) == ["rotated"]
    # SimCLR has no preview method: its augmented views are drawn.
    simclr = SimCLR(**CONV, proj_hidden_dim=16)
    batch = SimCLRViews()(images, labels, g)
    rows = preview_rows(simclr, batch)
    assert list(rows) == ["view 0", "view 1"] and rows["view 1"] is batch.views[1]
    clean = Batch(views=[images], labels=labels, clean=images)
    assert list(preview_rows(simclr, clean)) == ["view 0", "clean"]


def test_bad_arguments() -> None:
    for kwargs in ({"every_n_epochs": 0}, {"num_images": 0}, {"scale": 0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            PreviewImages(**kwargs)
