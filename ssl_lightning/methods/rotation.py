"""Rotation prediction: classify by how much each image was rotated."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from ssl_lightning.corruptions import Corruption
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.corruptions.recipes import crop_flip_view
from ssl_lightning.corruptions.rotation import NUM_ROTATIONS, Rotations
from ssl_lightning.heads import ProjectionHead
from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.outputs import PretextOutput
from ssl_lightning.optim import OptimizerName

__all__ = ["RotationPrediction"]


class RotationPrediction(SSLMethod):
    """RotNet (Gidaris et al. 2018, "Unsupervised Representation Learning by Predicting Image
    Rotations", https://arxiv.org/abs/1803.07728).

    Loss: cross-entropy of ``head(backbone(rotated image))`` against the rotation index
    ``k`` (rotation by ``k * 90`` degrees, ``k = 0..3``).

    The datamodule's :class:`~ssl_lightning.corruptions.Rotations` makes the rotated copies,
    by default of a random crop (35-100% of the area) and flip of each image
    (``crop_flip_view()``, as RotNet augments CIFAR); all views go through the backbone in
    one pass. The default two-layer head lets the head, not the backbone's last stage,
    specialize on rotations: on CIFAR-10 this recipe learns more than rotating unaugmented
    images under a linear head (README, Results). The pretext accuracy is logged as
    ``train/rotation_acc``.

    The default optimizer is AdamW at lr 5e-3 (weight decay 1e-4), which learns more than the
    paper's SGD (lr 0.1, momentum 0.9, weight decay 5e-4) in a short run on CIFAR-10 (README,
    Results); ``configs/rotation_cifar10.yaml`` keeps the paper's SGD for its 100 epochs.

    Args:
        backbone: registered backbone name or module (see :class:`SSLMethod`).
        backbone_kwargs: arguments for the registered backbone.
        head: ``"linear"`` (one Linear layer on the pooled features) or ``"mlp"``
            (Linear-BatchNorm-ReLU-Linear).
        head_hidden_dim: hidden width of the ``"mlp"`` head.
        mode: rotations of the :class:`~ssl_lightning.corruptions.Rotations`: ``"all"`` four
            copies of every image (the paper's choice) or ``"random"`` one per image. The
            method owns it: a configured ``data.corruption`` must agree.
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = RotationPrediction(backbone="resnet18", head="mlp")
    """

    pretext_settings = {"mode": "model.mode"}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        head: Literal["linear", "mlp"] = "mlp",
        head_hidden_dim: int = 512,
        mode: Literal["all", "random"] = "all",
        optimizer: OptimizerName = "adamw",
        lr: float = 5e-3,
        weight_decay: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r} (set model.head)")
        if mode not in ("all", "random"):
            raise ValueError(f"mode must be 'all' or 'random', got {mode!r} (set model.mode)")
        super().__init__(
            backbone=backbone,
            backbone_kwargs=backbone_kwargs,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            **kwargs,
        )
        self.mode: Literal["all", "random"] = mode
        num_layers = 1 if head == "linear" else 2
        self.head = ProjectionHead(self.num_features, head_hidden_dim, NUM_ROTATIONS, num_layers)

    def default_corruption(self) -> Corruption:
        return Rotations(mode=self.mode, view=crop_flip_view())

    def pretext_step(self, batch: Batch) -> PretextOutput:
        targets = batch.targets
        num_images = sum(v.shape[0] for v in batch.views)
        if targets is None or targets.shape != (num_images,):
            got = "none" if targets is None else f"shape {tuple(targets.shape)}"
            raise ValueError(
                f"RotationPrediction needs one rotation index per image of the views "
                f"({num_images}), got {got}; unset data.corruption to use the default "
                "(Rotations), or set data.corruption=Rotations"
            )
        features = self.embed_views(batch.views)  # [V*B, D], one backbone pass for all views
        logits = self.head(features)  # [V*B, 4]
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(dim=1) == targets).float().mean()
        return PretextOutput(
            loss=loss,
            features=features,
            labels=batch.labels.repeat(len(batch.views)),
            metrics={"rotation_acc": accuracy.detach()},
        )

    def preview(self, batch: Batch) -> dict[str, Tensor]:
        """Rows to draw: the rotated inputs, one row per view."""
        if len(batch.views) == NUM_ROTATIONS:
            return {f"rotated {90 * k}": view for k, view in enumerate(batch.views)}
        return {"rotated": batch.views[0]}
