"""What the monitoring callbacks share: reading step outputs and backbone stages, and the
warning when there is nothing to validate on."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from ssl_lightning.backbones.stages import Stages, stage_features
from ssl_lightning.corruptions import PretextModel

__all__ = ["embed_stages", "stage_step_features", "step_features", "warn_if_no_validation"]


def step_features(outputs: Any, hook: str) -> tuple[Tensor, Tensor]:
    """``(features [N, D], labels [N])`` from a step's output dict, or a clear error."""
    if not isinstance(outputs, dict) or "features" not in outputs or "labels" not in outputs:
        found = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise ValueError(
            f"the callback reads `features` and `labels` from the output of {hook}, but it "
            f"returned {found}; use an SSLMethod (its steps return {{'features', 'labels'}}) or "
            "return them from your own step"
        )
    features, labels = outputs["features"], outputs["labels"]
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"{hook} returned features {tuple(features.shape)} and labels "
            f"{tuple(labels.shape)}; expected pooled features [N, D] and labels [N]"
        )
    return features, labels


def embed_stages(pl_module: L.LightningModule, images: Tensor, stages: Stages) -> Tensor:
    """Pooled ``stages`` ``[B, D']`` of the method's exported backbone (the teacher where it
    exports one) for normalized ``images``, in eval mode, without gradients."""
    name = pl_module.export_module if isinstance(pl_module, PretextModel) else "backbone"
    backbone = getattr(pl_module, name)
    was_training = backbone.training
    backbone.eval()  # batch statistics would change BatchNorm's running averages
    try:
        with torch.no_grad():
            return stage_features(backbone, images, stages)
    finally:
        backbone.train(was_training)


def stage_step_features(
    outputs: Any, batch: Any, pl_module: L.LightningModule, hook: str, stages: Stages
) -> tuple[Tensor, Tensor]:
    """The step's own ``(features, labels)`` for ``stages="last"``; else the chosen stages of
    the batch's clean image (``batch.clean``, else its first view) and ``batch.labels``: one
    extra backbone pass per step."""
    if stages == "last":
        return step_features(outputs, hook)
    images = getattr(batch, "clean", None)
    images = batch.views[0] if images is None else images
    return embed_stages(pl_module, images, stages), batch.labels


def warn_if_no_validation(trainer: L.Trainer, callback: str, metrics: str) -> None:
    """Warns (once per fit) that ``metrics`` will not be logged when there is no validation."""
    datamodule = getattr(trainer, "datamodule", None)
    no_split = datamodule is not None and getattr(datamodule, "val_set", "") is None
    if no_split or trainer.limit_val_batches == 0:
        rank_zero_warn(
            f"{callback}: there is no validation split, so {metrics} will not be logged; set "
            "data.val_fraction (e.g. 0.1) to hold out a stratified share of the training images "
            "for validation, or give the data a test/ or val/ folder"
        )
