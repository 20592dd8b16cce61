"""Pictures of what a method trains on and what it makes of it, logged while training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

from ssl_lightning.corruptions import Batch, PretextModel
from ssl_lightning.layers import eval_mode

__all__ = ["PreviewImages", "preview_rows"]


def preview_rows(pl_module: L.LightningModule, batch: Batch) -> dict[str, Tensor]:
    """The named image rows to draw for ``batch``, each ``[B_r, 3, H_r, W_r]`` (normalized).

    A :class:`~ssl_lightning.corruptions.PretextModel` shows what matters to it through its
    ``preview(batch)`` (masked reconstruction: input, masked input, reconstruction; rotation:
    the rotated inputs; by default the batch's views, then its clean image). Another model
    gets the batch's own rows (:meth:`Batch.image_rows`).
    """
    if isinstance(pl_module, PretextModel):
        return dict(pl_module.preview(batch))
    return batch.image_rows()


def _label_margin(grid: Image.Image, names: list[str], row_height: int, pad: int) -> Image.Image:
    """Prepends a white column with each row's name, vertically centered on the row."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(grid)
    width = max(int(measure.textlength(name, font=font)) for name in names) + 2 * pad + 4
    out = Image.new("RGB", (grid.width + width, grid.height), "white")
    out.paste(grid, (width, 0))
    draw = ImageDraw.Draw(out)
    for i, name in enumerate(names):
        center = pad + i * (row_height + pad) + row_height // 2
        draw.text((pad + 2, center), name, fill="black", font=font, anchor="lm")
    return out


class PreviewImages(L.Callback):
    """Every ``every_n_epochs`` epochs, draws a grid of the method's preview rows.

    The first training batch of each epoch is kept; at the end of every N-th epoch (and at the
    end of training, when it stopped after the last drawing, e.g. at ``max_steps``) the method
    previews it in eval mode without gradients (see :func:`preview_rows`). Each row holds the
    first ``num_images`` images, un-normalized with the datamodule's ``mean``/``std`` and
    labeled with the row's name. The grid goes to every logger: as a TensorBoard image
    (``add_image("preview", ...)``) where the logger's experiment has ``add_image``, otherwise
    as ``<log_dir>/images/preview-epoch=E-step=S.png`` (the CSV logger); without a logger, under
    ``default_root_dir/images``. Only global rank 0 draws.

    Args:
        every_n_epochs: draw after every this many epochs.
        num_images: images per row.
        scale: nearest-neighbour upscaling of the images, so 32x32 inputs stay legible.

    Attributes:
        saved: paths of the PNG files written so far.

    Examples:
        >>> trainer = L.Trainer(callbacks=[PreviewImages(every_n_epochs=5, num_images=8)])
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 8, scale: int = 2) -> None:
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("num_images", num_images),
            ("scale", scale),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.scale = scale
        self.saved: list[Path] = []
        self._batch: Batch | None = None
        self._batch_epoch = 0
        self._drawn_step = -1

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batch = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._batch is None and isinstance(batch, Batch) and trainer.is_global_zero:
            self._batch, self._batch_epoch = batch, trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._draw(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._drawn_step != trainer.global_step:
            self._draw(trainer, pl_module)

    def render(self, rows: dict[str, Tensor], mean: Any = None, std: Any = None) -> Tensor:
        """The labeled grid ``[3, H, W]`` in ``[0, 1]`` of named rows of normalized images."""
        if not rows:
            raise ValueError("preview returned no rows to draw")
        n = min(self.num_images, *(r.shape[0] for r in rows.values()))
        size = next(iter(rows.values())).shape[-2:]
        images = []
        for row in rows.values():
            row = row[:n].detach().float()
            if mean is not None and std is not None:
                mean_t = torch.as_tensor(mean, dtype=row.dtype, device=row.device).view(-1, 1, 1)
                std_t = torch.as_tensor(std, dtype=row.dtype, device=row.device).view(-1, 1, 1)
                row = row * std_t + mean_t
            if row.shape[-2:] != size:
                row = F.interpolate(row, size=tuple(size), mode="bilinear", antialias=True)
            images.append(row.clamp(0.0, 1.0).cpu())
        grid_images = torch.cat(images)  # [R * n, 3, H, W]
        if self.scale > 1:
            grid_images = F.interpolate(grid_images, scale_factor=self.scale, mode="nearest")
        pad = 2
        grid = make_grid(grid_images, nrow=n, padding=pad, pad_value=1.0)  # [3, H', W']
        array = grid.mul(255).round().byte().permute(1, 2, 0).numpy()
        labeled = _label_margin(Image.fromarray(array), list(rows), grid_images.shape[-2], pad)
        return torch.from_numpy(np.array(labeled)).permute(2, 0, 1).float().div(255)

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is None or not trainer.is_global_zero:
            return
        with eval_mode(pl_module), torch.no_grad():
            rows = preview_rows(pl_module, self._batch)
        datamodule = getattr(trainer, "datamodule", None)
        grid = self.render(
            rows, getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        )
        self._drawn_step = step = trainer.global_step
        name = f"preview-epoch={self._batch_epoch}-step={step}.png"
        if not trainer.loggers:
            self._save_png(grid, Path(trainer.default_root_dir) / "images" / name)
        for logger in trainer.loggers:
            add_image = getattr(getattr(logger, "experiment", None), "add_image", None)
            if callable(add_image):
                add_image("preview", grid, global_step=step)
            else:
                folder = logger.log_dir or logger.save_dir or trainer.default_root_dir
                self._save_png(grid, Path(folder) / "images" / name)

    def _save_png(self, grid: Tensor, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        array = grid.mul(255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(array).save(path)
        self.saved.append(path)
