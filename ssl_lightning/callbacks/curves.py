"""A picture of the run: training loss and probe accuracy per epoch, written at the end of fit."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

__all__ = ["TrainingCurves"]


class TrainingCurves(L.Callback):
    """Writes a PNG of the mean training loss and the accuracies per epoch when fit ends.

    The loss is averaged from ``training_step``'s ``loss`` over each epoch (on rank 0); the
    accuracies are read from the logged metrics at the end of each epoch
    (``probe/val_acc_top1`` and ``knn/val_acc`` by default: add :class:`OnlineLinearProbe`
    and :class:`KNNMonitor`). The picture goes to the logger's log directory (the trainer's
    ``default_root_dir`` without a logger). Its history is stored in checkpoints, so a
    resumed run draws the whole run.

    Needs matplotlib (``pip install "ssl-lightning[plot]"``); without it the callback warns
    once and draws nothing.

    Args:
        filename: name of the PNG inside the log directory.
        metrics: logged metric names to draw as accuracies, each as it stands at the end of
            the epoch (metrics never logged are left out).
    """

    def __init__(
        self,
        filename: str = "training_curves.png",
        metrics: tuple[str, ...] = ("probe/val_acc_top1", "probe/val_acc_top5", "knn/val_acc"),
    ) -> None:
        self.filename = filename
        self.metrics = tuple(metrics)
        self.history: dict[str, list[float]] = {"epoch": [], "loss": []}
        self.history.update({name: [] for name in self.metrics})
        self.path: Path | None = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum, self._loss_count = None, 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # Summed on the device: no host sync per step.
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._loss_sum is None:
            return
        self.history["epoch"].append(trainer.current_epoch + 1)
        self.history["loss"].append(self._loss_sum.item() / self._loss_count)
        for name in self.metrics:
            value = trainer.callback_metrics.get(name)
            self.history[name].append(float(value) if value is not None else math.nan)
        self._loss_sum = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.history["epoch"]:
            log_dir = trainer.log_dir or trainer.default_root_dir
            self.path = plot_curves(self.history, Path(log_dir) / self.filename)

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        history = state_dict.get("history", {})
        for key in self.history:
            self.history[key] = list(history.get(key, []))
        # Metrics this run draws that the checkpointed run did not: gaps for its epochs.
        epochs = len(self.history["epoch"])
        for values in self.history.values():
            values.extend([math.nan] * (epochs - len(values)))


_warned = False


def plot_curves(history: dict[str, list[float]], path: Path) -> Path | None:
    """Draws loss (left) and accuracies (right) per epoch into ``path``; ``None`` without
    matplotlib (warned once per process)."""
    global _warned
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        if not _warned:
            warnings.warn(
                "TrainingCurves needs matplotlib to draw; install it with "
                '`pip install "ssl-lightning[plot]"` (no picture written)',
                stacklevel=2,
            )
            _warned = True
        return None

    epochs = history["epoch"]
    fig = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, history["loss"], marker="o", color="tab:blue")
    loss_ax.set(title="Pretext loss (epoch mean)", xlabel="epoch", ylabel="loss")
    drawn = False
    for name, values in history.items():
        if name in ("epoch", "loss") or all(math.isnan(v) for v in values):
            continue
        acc_ax.plot(epochs, [100 * v for v in values], marker="o", label=name)
        drawn = True
    acc_ax.set(title="Representation quality", xlabel="epoch", ylabel="accuracy (%)")
    if drawn:
        acc_ax.legend()
    else:
        acc_ax.text(0.5, 0.5, "no accuracy logged", ha="center", va="center")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if len(epochs) < 12:
            ax.set_xticks(epochs)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
