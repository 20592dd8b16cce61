"""``SSLMethod``: the thin LightningModule every pretext method subclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import lightning as L
import torch
from torch import Tensor, nn

from ssl_lightning.backbones import create_backbone
from ssl_lightning.backbones.registry import num_features_of
from ssl_lightning.datamodules.batch import Batch
from ssl_lightning.datamodules.corruptions import CleanView, Corruption
from ssl_lightning.optim import LARS, param_groups, scaled_lr, warmup_cosine


@dataclass
class PretextOutput:
    """What a method's :meth:`SSLMethod.pretext_step` returns.

    Attributes:
        loss: scalar pretext loss.
        features: ``[N, D]`` pooled backbone features the loss was computed from.
        labels: ``[N]`` class labels of those features (``-1`` = unlabeled).
        metrics: extra scalars to log under ``train/<name>``.
    """

    loss: Tensor
    features: Tensor
    labels: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class StepOutput(TypedDict):
    """``training_step``'s output, read by callbacks (no second forward pass needed)."""

    loss: Tensor
    features: Tensor  # [N, D], detached
    labels: Tensor  # [N]


class SSLMethod(L.LightningModule):
    """Base of all pretext methods: holds the backbone, the optimizer recipe and the step template.

    A subclass builds its heads in ``__init__``, names its corruption in
    :meth:`default_corruption` and computes its loss in :meth:`pretext_step`; everything else
    (logging, the outputs callbacks read, optimizers and schedules) lives here.

    Args:
        backbone: a registered backbone name (see ``list_backbones()``) or a module that
            honours the backbone contract (``num_features``, pooled ``forward``).
        backbone_kwargs: keyword arguments for ``create_backbone`` when ``backbone`` is a name.
        optimizer: ``"sgd"``, ``"lars"`` or ``"adamw"``.
        lr: base learning rate (per 256 images when ``scale_lr``).
        weight_decay: weight decay of weights; biases and norm parameters get none.
        momentum: SGD/LARS momentum.
        betas: AdamW betas.
        lars_eta: LARS trust coefficient.
        warmup_epochs: linear warmup length, in epochs (fractions allowed).
        final_lr_factor: the cosine decay ends at ``lr * final_lr_factor``.
        scale_lr: multiply ``lr`` by global batch size / 256 (Goyal et al. 2017).
        channels_last: run the backbone in channels-last memory format (faster on GPUs).
        compile: compile the backbone with ``torch.compile``.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        optimizer: Literal["sgd", "lars", "adamw"] = "sgd",
        lr: float = 0.1,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.95),
        lars_eta: float = 1e-3,
        warmup_epochs: float = 0.0,
        final_lr_factor: float = 0.0,
        scale_lr: bool = False,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else None)
        if optimizer not in ("sgd", "lars", "adamw"):
            raise ValueError(
                f"optimizer must be 'sgd', 'lars' or 'adamw', got {optimizer!r} "
                "(set model.optimizer)"
            )
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr} (set model.lr)")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if isinstance(backbone, str):
            backbone = create_backbone(backbone, **(backbone_kwargs or {}))
        elif backbone_kwargs:
            raise ValueError("backbone_kwargs only apply when backbone is a registered name")
        self.num_features = num_features_of(backbone)
        self.backbone = backbone
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.betas = betas
        self.lars_eta = lars_eta
        self.warmup_epochs = warmup_epochs
        self.final_lr_factor = final_lr_factor
        self.scale_lr = scale_lr
        self.channels_last = channels_last
        self.compile_backbone = compile

    def default_corruption(self) -> Corruption:
        """The corruption the datamodule applies when its config sets none."""
        return CleanView()

    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if self.compile_backbone:
            self.backbone.compile()

    def forward(self, x: Tensor) -> Tensor:
        """Pooled backbone features: ``[B, 3, H, W] -> [B, num_features]``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def embed_views(self, views: list[Tensor]) -> Tensor:
        """Pooled features of all views, ``[V * B, num_features]`` in view order.

        Consecutive views of one size share a single backbone pass (``torch.cat`` then split):
        one pass for SimCLR's two views, one per resolution for multi-crop.
        """
        features, start = [], 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape == views[start].shape:
                end += 1
            features.append(self(torch.cat(views[start:end])))
            start = end
        return torch.cat(features)

    def pretext_step(self, batch: Batch) -> PretextOutput:
        """Computes the pretext loss of one training batch; subclasses implement it."""
        raise NotImplementedError

    def training_step(self, batch: Batch, batch_idx: int) -> StepOutput:
        out = self.pretext_step(batch)
        batch_size = batch.labels.shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch_size)
        for name, value in out.metrics.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return {"loss": out.loss, "features": out.features.detach(), "labels": out.labels}

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        return {"features": self(batch.views[0]), "labels": batch.labels}

    def configure_optimizers(self) -> Any:
        lr = scaled_lr(self.lr, self.trainer) if self.scale_lr else self.lr
        groups = param_groups(self, self.weight_decay)
        optimizer: torch.optim.Optimizer
        if self.optimizer_name == "lars":
            optimizer = LARS(groups, lr=lr, momentum=self.momentum, eta=self.lars_eta)
        elif self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=self.momentum)
        else:
            optimizer = torch.optim.AdamW(groups, lr=lr, betas=self.betas)

        total_steps, steps_per_epoch = self._schedule_length()
        warmup_steps = min(total_steps, round(self.warmup_epochs * steps_per_epoch))
        final = self.final_lr_factor
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, final)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _schedule_length(self) -> tuple[int, int]:
        """Optimizer steps in the whole run and per epoch."""
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ValueError(
                "the cosine schedule needs a finite run: set trainer.max_epochs or "
                "trainer.max_steps"
            )
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()  # as estimated_stepping_batches does, for per-epoch size
        batches = trainer.num_training_batches
        if batches == float("inf"):
            raise ValueError("warmup_epochs needs a training loader with a length")
        return int(total), max(1, int(batches) // trainer.accumulate_grad_batches)
