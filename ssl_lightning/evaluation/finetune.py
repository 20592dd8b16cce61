"""Fine-tuning evaluation: the whole backbone and a linear head trained on labelled images for
a fixed number of steps, then scored on the validation split.

Masked-image models are judged this way (MAE, He et al. 2021, arXiv:2111.06377: 68 % linear
but 83.6 % fine-tuned on ImageNet), and with few labels (``label_fraction`` of the
datamodule) it measures what a user with many images and few labels gets. The same recipe
from a random initialization is the baseline: pretraining pays off when it beats that at
equal steps.

The recipe is :class:`~ssl_lightning.evaluation.LinearEvaluation` with ``fine_tune=True``:
random resized crop and flip, AdamW, cosine decay per step, optionally a layer-wise learning
rate decay (:func:`~ssl_lightning.optim.layer_decay_groups`).

Examples:
    >>> result = fine_tune(BackboneCheckpoint.read_any("simclr.pt"), datamodule, steps=500)
    ... # doctest: +SKIP
    >>> result.top1  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from ssl_lightning.evaluation.linear import LinearEvaluation
from ssl_lightning.export import BackboneCheckpoint

if TYPE_CHECKING:  # it reads a datamodule's splits; importing the datamodules is not needed
    from ssl_lightning.datamodules import InMemoryDataModule

__all__ = ["FineTuneResult", "fine_tune"]


@dataclass
class FineTuneResult:
    """Validation accuracy after fine-tuning, and the optimizer steps it took."""

    top1: float
    top5: float
    steps: int


def fine_tune(
    source: BackboneCheckpoint | None,
    data: InMemoryDataModule,
    steps: int,
    *,
    backbone: tuple[str, dict[str, Any]] | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    layer_decay: float | None = None,
    seed: int = 0,
    accelerator: str = "auto",
    progress: bool = False,
) -> FineTuneResult:
    """Fine-tunes a backbone with a linear head on ``data``'s training split for ``steps``
    optimizer steps and scores it on its validation split.

    Args:
        source: the pretrained backbone (from :meth:`BackboneCheckpoint.read_any`); ``None``
            trains the architecture ``backbone`` from a random initialization (seeded).
        data: the labelled data, its ``batch_size`` and ``label_fraction`` as set; its
            training stream restarts from ``seed`` (the same batches and views every run).
        steps: optimizer steps (the same for a pretrained and a scratch run).
        backbone: ``(name, kwargs)`` of the architecture when ``source`` is ``None``.
        lr: AdamW learning rate of the head (the backbone's is scaled by ``layer_decay``).
        weight_decay: AdamW weight decay.
        layer_decay: layer-wise learning-rate decay (BEiT, MAE: 0.65-0.75); ``None`` = one
            rate for every layer.
        seed: seed of the head's (and a scratch backbone's) initialization and of the data.
        accelerator: Lightning's accelerator.
        progress: show a progress bar.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps} (set --steps)")
    if source is not None:
        name, kwargs = source.name, source.kwargs
    elif backbone is not None:
        name, kwargs = backbone
    else:
        raise ValueError("fine_tune needs a pretrained source or a backbone (name, kwargs)")
    L.seed_everything(seed, verbose=False)
    data.setup("fit")
    # Every run sees the same batches and augmentations: a pretrained backbone and its scratch
    # baseline are trained on one stream.
    data.load_state_dict({"seed": seed, "batches_drawn": 0, "position": {"epoch": 0, "batches": 0}})
    model = LinearEvaluation(
        backbone=name,
        backbone_kwargs=kwargs,
        num_classes=data.num_classes,
        fine_tune=True,
        layer_decay=layer_decay,
        backbone_lr_factor=1.0,
        optimizer="adamw",
        lr=lr,
        weight_decay=weight_decay,
        scale_lr=False,
    )
    if source is not None:
        model.backbone.load_state_dict(source.state_dict, strict=True)
    quiet: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": progress,
        "enable_model_summary": False,
    }
    # Validation only after the last step: it is the score, not a monitor.
    trainer = L.Trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, **quiet)
    trainer.fit(model, data)
    (metrics,) = L.Trainer(**quiet).validate(model, data, verbose=False)
    top5 = metrics.get("val/acc_top5", torch.nan)
    return FineTuneResult(float(metrics["val/acc_top1"]), float(top5), trainer.global_step)
